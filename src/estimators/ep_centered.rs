//! Symmetric (centered, 3-phase) EP: nudged phases at +β and −β from the same free state,
//! ĝ = −[f(β) − f(−β)] / (2β) = (`ep_plus` + `ep_minus`)/2; bias O(β²).
//!
//! By default the two nudged phases run as ONE relaxation: two copies of s⁰ stacked along the batch axis with
//! one β per row (+β on the first B rows, −β on the last B), split afterwards ([`NudgedPhases::Batched`]).
//! Rows do not interact, so this equals the two phases run one after the other ([`NudgedPhases::Sequential`]),
//! including `tol` early exit, which stays per phase (each phase stops when all of its rows are below tol).
use super::{nudged_phase, two_point_states, Gradient, PhaseLengths};
use crate::model::{Batch, Beta, Model};
use crate::relax::{relax_stacked_with_drives, stacked_constant_drives, Phase, RelaxOptions};
use crate::tensor_util::repeat_batch;
use tch::Tensor;

/// How the ±β phases are run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NudgedPhases {
    /// One relaxation over the stacked batch (2B rows).
    #[default]
    Batched,
    /// +β, then −β.
    Sequential,
}

/// `beta` is the magnitude. Returns the estimate and the +β and −β phases.
pub fn estimate(model: &Model, p: &[Tensor], batch: &Batch, free: &Phase, beta: f64, len: PhaseLengths) -> (Gradient, Phase, Phase) {
    estimate_with(model, p, batch, free, beta, len, NudgedPhases::Batched)
}

pub fn estimate_with(model: &Model, p: &[Tensor], batch: &Batch, free: &Phase, beta: f64, len: PhaseLengths, how: NudgedPhases) -> (Gradient, Phase, Phase) {
    let (plus, minus) = match how {
        NudgedPhases::Sequential => (nudged_phase(model, p, batch, free, beta, len), nudged_phase(model, p, batch, free, -beta, len)),
        NudgedPhases::Batched => nudged_pair(model, p, batch, &free.state, beta, &RelaxOptions { iters: len.k_nudge, tol: len.tol, no_trace: true, ..Default::default() }),
    };
    let g = two_point_states(model, p, batch, &minus.state, -beta, &plus.state, beta);
    (Gradient { key: "ep_centered".into(), beta: Some(beta), tensors: g }, plus, minus)
}

/// The +β and −β phases from `s0` as one relaxation over the batch stacked twice (rows 0..B at +β, B..2B at
/// −β). Returns (plus, minus) with their `beta` set.
pub fn nudged_pair(model: &Model, p: &[Tensor], batch: &Batch, s0: &[Tensor], beta: f64, opts: &RelaxOptions) -> (Phase, Phase) {
    let b = batch.size();
    let stacked = Batch { x: batch.x.iter().map(|x| repeat_batch(x, 2)).collect(), y: repeat_batch(&batch.y, 2), y_onehot: repeat_batch(&batch.y_onehot, 2) };
    let init: Vec<Tensor> = s0.iter().map(|t| repeat_batch(t, 2)).collect();
    let real = s0[0].kind();
    let rows = Tensor::cat(&[Tensor::full([b, 1], beta, (real, s0[0].device())), Tensor::full([b, 1], -beta, (real, s0[0].device()))], 0);
    let constant = stacked_constant_drives(model, p, batch, s0, 2);
    let mut phases = relax_stacked_with_drives(model, p, &stacked, &init, &Beta::Rows(rows), &[b, b], opts, Some(&constant));
    let mut minus = phases.pop().expect("two phases");
    let mut plus = phases.pop().expect("two phases");
    plus.beta = beta;
    minus.beta = -beta;
    (plus, minus)
}
