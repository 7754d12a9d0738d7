//! Exact references by backpropagation through the same iterations (estimators §4.1–4.2): `bptt` (L at s_T,
//! gradient through all T iterations from zeros) and `bptt_trunc` (s_{T−K} treated as a constant). The
//! hand-rolled reverse sweep is the default; `autograd` is an independent path (the whole T-step graph).
use super::{free_phase, Gradient, PhaseLengths};
use crate::adjoint::reverse_sweep;
use crate::model::{Batch, Model};
use crate::relax::Phase;
use crate::{Error, Result};
use tch::{Kind, Tensor};

fn sweep(model: &Model, p: &[Tensor], batch: &Batch, t_free: i64, steps: i64, key: &str) -> (Gradient, Phase) {
    let len = PhaseLengths { t_free, k_nudge: 1, tol: None };
    let free = free_phase(model, p, batch, len, true);
    let traj = free.traj.as_ref().expect("recorded");
    // `bptt_loss_state = previous` (estimators §4.1): the loss at s_{T−1}, i.e. BPTT through T − 1 iterations.
    let (traj, steps) = if model.bptt_loss_previous { (&traj[..traj.len() - 1], steps.min(t_free - 1)) } else { (&traj[..], steps) };
    let s_last = traj.last().expect("T + 1 states");
    let lambda = model.loss_state_grad(p, batch, s_last);
    let sw = reverse_sweep(model, p, batch, traj, lambda, steps as usize, false, false);
    // + ∂L/∂θ|explicit at the loss state (the readout's tensors, estimators §4.1).
    let grad = match model.loss_param_grad(p, batch, s_last) {
        Some(e) => sw.grad.iter().zip(e).map(|(g, e)| g + e).collect(),
        None => sw.grad,
    };
    (Gradient { key: key.into(), beta: None, tensors: grad }, free)
}

/// Full BPTT through T iterations.
pub fn full(model: &Model, p: &[Tensor], batch: &Batch, t_free: i64) -> (Gradient, Phase) {
    sweep(model, p, batch, t_free, t_free, "bptt")
}

/// BPTT truncated to the last K of T iterations.
pub fn truncated(model: &Model, p: &[Tensor], batch: &Batch, t_free: i64, k: i64) -> Result<(Gradient, Phase)> {
    if k > t_free {
        return Err(Error::Config(format!("bptt_trunc needs K ≤ T, got K = {k}, T = {t_free}")));
    }
    Ok(sweep(model, p, batch, t_free, k, "bptt_trunc"))
}

/// BPTT by autograd through the whole graph of T iterations (detached at T − K when `trunc` = Some(K)).
pub fn autograd(model: &Model, p: &[Tensor], batch: &Batch, t_free: i64, trunc: Option<i64>) -> Vec<Tensor> {
    let pl: Vec<Tensor> = p.iter().map(|t| t.detach().set_requires_grad(true)).collect();
    let prec = crate::precision::Precision { dtype: super::dtype_of(p), device: p[0].device() };
    let mut s = model.zeros_state(batch.size(), prec);
    // `bptt_loss_state = previous`: the loss at s_{T−1}.
    let t_free = if model.bptt_loss_previous { t_free - 1 } else { t_free };
    for t in 0..t_free {
        if trunc == Some(t_free - t) {
            s = crate::model::detach_state(&s);
        }
        s = model.step(&pl, batch, &s, 0.0);
    }
    let loss = model.mean_loss(&pl, batch, &s).to_kind(Kind::Double);
    let refs: Vec<&Tensor> = pl.iter().collect();
    crate::tensor_util::grads_or_zeros(&loss, &refs)
}
