//! Pieces shared by the convolutional presets (conv-hopfield.md): sizes from the configuration, hidden
//! activations (ReLU6, hard sigmoid, ReLU-α with one α per layer), uniform bounds computed in double precision,
//! and the schedule options.
use crate::config::RunConfig;
use crate::model::activation::Activation;
use crate::model::schedule::Schedule;
use crate::model::{Init, ParamSpec};
use crate::{Error, Result};

/// Input size, channels, widths [n1..n4] and classes, with the paper defaults.
pub struct ConvSizes {
    pub h0: i64,
    pub c0: i64,
    pub widths: [i64; 4],
    pub classes: i64,
}

pub fn sizes(cfg: &RunConfig, preset: &str) -> Result<ConvSizes> {
    let h0 = cfg.height.unwrap_or(32);
    let c0 = cfg.in_channels.unwrap_or(3);
    let classes = cfg.classes.unwrap_or(10);
    let w = cfg.widths.clone().unwrap_or_else(|| vec![128, 256, 512, 512]);
    if w.len() != 4 {
        return Err(Error::Config(format!("{preset}: widths must list 4 channel counts [n1, n2, n3, n4], got {w:?}")));
    }
    for (k, v) in [("height", h0), ("in_channels", c0), ("classes", classes)].into_iter().chain(w.iter().map(|&v| ("widths", v))) {
        if v < 1 {
            return Err(Error::Config(format!("{preset}: {k} must be ≥ 1, got {v}")));
        }
    }
    Ok(ConvSizes { h0, c0, widths: [w[0], w[1], w[2], w[3]], classes })
}

/// The hidden activation of each of `n` hidden layers.
pub fn hidden_activations(cfg: &RunConfig, n: usize, preset: &str) -> Result<Vec<Activation>> {
    if cfg.activation == "relu_alpha" {
        let alphas = cfg.relu_alpha.clone().ok_or_else(|| Error::Config(format!("{preset}: relu_alpha needs its α list (drawn from the seed when the instance is built)")))?;
        if alphas.len() != n {
            return Err(Error::Config(format!("{preset}: relu_alpha lists {} values for {n} hidden layers", alphas.len())));
        }
        return alphas
            .iter()
            .map(|&a| if a.is_finite() && a > 0.0 { Ok(Activation::ReluAlpha(a)) } else { Err(Error::Config(format!("{preset}: relu_alpha α must be > 0, got {a}"))) })
            .collect();
    }
    let a = Activation::parse(&cfg.activation)?;
    Ok(vec![a; n])
}

/// α ~ U[1, 10] per hidden layer from epcheck's own seeded stream (conv-hopfield.md §6.7, quirk 10), stored as
/// float32 values like the reference.
pub fn draw_relu_alpha(n: usize, seed: u64) -> Vec<f64> {
    let _rng = crate::tensor_util::rng_lock();
    tch::manual_seed((seed as i64).wrapping_add(7919));
    let t = tch::Tensor::rand([n as i64], (tch::Kind::Double, tch::Device::Cpu)) * 9.0 + 1.0;
    crate::tensor_util::to_vec_f64(&t).into_iter().map(|a| a as f32 as f64).collect()
}

/// Schedules: `async2` (default), `sync`, or the preset's exact independent-set `groups`.
pub fn schedule(cfg: &RunConfig, n_layers: usize, groups: Option<Vec<Vec<usize>>>) -> Result<Schedule> {
    match cfg.schedule.as_deref() {
        None | Some("async2") => Ok(Schedule::async2(n_layers)),
        Some("groups") => groups.map(Schedule::groups).ok_or_else(|| Error::Config("this preset has no `groups` schedule".into())),
        Some(other) => Schedule::parse(other, n_layers),
    }
}

/// A uniform parameter U(−bound, bound).
pub fn param(name: String, shape: Vec<i64>, group: &str, bound: f64) -> ParamSpec {
    ParamSpec { name, shape, group: group.to_string(), init: Init::Uniform(bound) }
}

/// gain · (1/√fan_in), in double precision.
pub fn weight_bound(gain: f64, fan_in: i64) -> f64 {
    gain * (1.0 / (fan_in as f64).sqrt())
}

/// 0.5/√(m·c): the reference's bias bound.
pub fn bias_bound(m: i64, c: i64) -> f64 {
    0.5 / ((m * c) as f64).sqrt()
}
