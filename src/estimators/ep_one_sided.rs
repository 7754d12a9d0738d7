//! Vanilla one-sided EP (`ep_plus`, `ep_minus`): one nudged phase of strength ±β from the free state,
//! ĝ = −[f(±β) − f(0)] / (±β), i.e. `ep_plus` = −[f(β) − f(0)]/β and `ep_minus` = +[f(−β) − f(0)]/β.
use super::{nudged_phase, two_point_states, Gradient, PhaseLengths};
use crate::model::{Batch, Model};
use crate::relax::Phase;
use tch::Tensor;

/// `beta` is signed: > 0 gives `ep_plus`, < 0 gives `ep_minus` (magnitude |beta|).
pub fn estimate(model: &Model, p: &[Tensor], batch: &Batch, free: &Phase, beta: f64, len: PhaseLengths) -> (Gradient, Phase) {
    let nudged = nudged_phase(model, p, batch, free, beta, len);
    let key = if beta > 0.0 { "ep_plus" } else { "ep_minus" };
    let g = two_point_states(model, p, batch, &free.state, 0.0, &nudged.state, beta);
    (Gradient { key: key.into(), beta: Some(beta.abs()), tensors: g }, nudged)
}
