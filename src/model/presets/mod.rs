//! Built-in presets (conventions §14). New architectures are compositions of terms, not copies.
pub mod p_mlp;

use crate::config::RunConfig as ModelConfig;
use crate::model::Model;
use crate::{Error, Result};

pub const PRESETS: &[&str] = &["p-mlp"];

/// Builds the model a configuration names.
pub fn build(cfg: &ModelConfig) -> Result<Model> {
    match cfg.preset.as_str() {
        "p-mlp" => p_mlp::build(cfg),
        other => Err(Error::UnknownPreset(other.to_string(), PRESETS.join(", "))),
    }
}
