//! Built-in presets (conventions §14). New architectures are compositions of terms, not copies.
pub mod conv_common;
pub mod hopfield_resnet13;
pub mod imdb_hopfield;
pub mod p_mlp;
pub mod seq_common;
pub mod snli_hopfield;
pub mod vgg5_dchn;

use crate::config::RunConfig as ModelConfig;
use crate::model::{Batch, Model};
use crate::precision::Precision;
use crate::{Error, Result};

pub const PRESETS: &[&str] = &["p-mlp", "p-mlp-holo-toy", "hopfield-resnet13", "vgg5-dchn", "vgg5-dchn-rain", "imdb-hopfield", "snli-hopfield"];

/// Builds the model a configuration names.
pub fn build(cfg: &ModelConfig) -> Result<Model> {
    let mut m = build_model(cfg)?;
    m.apply_run_options(cfg);
    Ok(m)
}

fn build_model(cfg: &ModelConfig) -> Result<Model> {
    let base = cfg.base_preset();
    match base {
        "p-mlp" => p_mlp::build(cfg),
        "hopfield-resnet13" => hopfield_resnet13::build(cfg),
        "vgg5-dchn" | "vgg5-dchn-rain" => vgg5_dchn::build(cfg),
        imdb_hopfield::NAME => imdb_hopfield::build(cfg),
        snli_hopfield::NAME => snli_hopfield::build(cfg),
        other => Err(Error::UnknownPreset(other.to_string(), PRESETS.join(", "))),
    }
}

/// Number of hidden (non-output) layers of a conv preset, for per-layer options such as `relu_alpha`.
pub fn hidden_layer_count(preset: &str) -> usize {
    match preset.strip_suffix("-train").unwrap_or(preset) {
        "hopfield-resnet13" => 8,
        "vgg5-dchn" | "vgg5-dchn-rain" => 4,
        _ => 0,
    }
}

/// The preset's own synthetic batch, when it has one (attention presets: `hopfield-attention.md` §10.3);
/// None = the generic draw of `instance::synthetic_batch`.
pub fn synthetic_batch(model: &Model, b: i64, seed: u64, prec: Precision) -> Option<Batch> {
    let shape = &model.input_shapes[0];
    match model.preset.as_str() {
        imdb_hopfield::NAME => Some(seq_common::synthetic_sequences(b, shape[0], shape[1], 1, model.classes(), seed, prec)),
        snli_hopfield::NAME => Some(seq_common::synthetic_sequences(b, shape[0] / 2, shape[1], 2, model.classes(), seed, prec)),
        _ => None,
    }
}
