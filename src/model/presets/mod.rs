//! Built-in presets (conventions §14). New architectures are compositions of terms, not copies.
pub mod conv_common;
pub mod hopfield_resnet13;
pub mod p_mlp;
pub mod vgg5_dchn;

use crate::config::RunConfig as ModelConfig;
use crate::model::Model;
use crate::{Error, Result};

pub const PRESETS: &[&str] = &["p-mlp", "hopfield-resnet13", "vgg5-dchn", "vgg5-dchn-rain"];

/// Builds the model a configuration names.
pub fn build(cfg: &ModelConfig) -> Result<Model> {
    match cfg.preset.strip_suffix("-train").unwrap_or(&cfg.preset) {
        "p-mlp" => p_mlp::build(cfg),
        "hopfield-resnet13" => hopfield_resnet13::build(cfg),
        "vgg5-dchn" | "vgg5-dchn-rain" => vgg5_dchn::build(cfg),
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
