//! Symmetric (centered, 3-phase) EP: nudged phases at +β and −β from the same free state,
//! ĝ = −[f(β) − f(−β)] / (2β) = (`ep_plus` + `ep_minus`)/2; bias O(β²).
use super::{nudged_phase, two_point, Gradient, PhaseLengths};
use crate::model::{Batch, Model};
use crate::relax::Phase;
use tch::Tensor;

/// `beta` is the magnitude. Returns the estimate and the +β and −β phases.
pub fn estimate(model: &Model, p: &[Tensor], batch: &Batch, free: &Phase, beta: f64, len: PhaseLengths) -> (Gradient, Phase, Phase) {
    let plus = nudged_phase(model, p, batch, free, beta, len);
    let minus = nudged_phase(model, p, batch, free, -beta, len);
    let fp = model.param_derivative(p, batch, &plus.state);
    let fm = model.param_derivative(p, batch, &minus.state);
    (Gradient { key: "ep_centered".into(), beta: Some(beta), tensors: two_point(&fm, -beta, &fp, beta) }, plus, minus)
}
