//! Gradient estimators and exact references. One file per estimator; all return ĝ ≈ +∂L/∂θ in canonical
//! parameter order (see the sign convention in the crate docs).
pub mod bptt;
pub mod ep_centered;
pub mod ep_holomorphic;
pub mod ep_one_sided;
pub mod fd;
pub mod implicit;

use crate::model::{Batch, Model};
use crate::relax::{relax, Phase, RelaxOptions};
use crate::{Error, Result};
use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Estimator {
    EpPlus,
    EpMinus,
    EpCentered,
    EpHolomorphic,
    Bptt,
    BpttTrunc,
}

impl Estimator {
    pub const ALL: [Estimator; 6] = [Estimator::EpPlus, Estimator::EpMinus, Estimator::EpCentered, Estimator::EpHolomorphic, Estimator::Bptt, Estimator::BpttTrunc];

    pub fn key(self) -> &'static str {
        match self {
            Estimator::EpPlus => "ep_plus",
            Estimator::EpMinus => "ep_minus",
            Estimator::EpCentered => "ep_centered",
            Estimator::EpHolomorphic => "ep_holomorphic",
            Estimator::Bptt => "bptt",
            Estimator::BpttTrunc => "bptt_trunc",
        }
    }

    /// Accepts the canonical keys and the field's aliases (conventions §8.1).
    pub fn parse(s: &str) -> Result<Self> {
        let e = match s {
            "ep_plus" | "vanilla" | "one_sided" | "pep" | "positive" => Estimator::EpPlus,
            "ep_minus" | "nep" | "negative" => Estimator::EpMinus,
            "ep_centered" | "symmetric" | "centered" | "cep" | "three_phase" => Estimator::EpCentered,
            "ep_holomorphic" | "holomorphic" | "hep" => Estimator::EpHolomorphic,
            "bptt" => Estimator::Bptt,
            "bptt_trunc" => Estimator::BpttTrunc,
            "ep_random_sign" => {
                return Err(Error::UnsupportedEstimator(format!("'{s}' is not implemented in this version of epcheck")))
            }
            _ => {
                let keys: Vec<_> = Self::ALL.iter().map(|e| e.key()).collect();
                return Err(Error::Config(format!("unknown estimator '{s}' (known: {})", keys.join(", "))));
            }
        };
        Ok(e)
    }

    pub fn is_ep(self) -> bool {
        matches!(self, Estimator::EpPlus | Estimator::EpMinus | Estimator::EpCentered | Estimator::EpHolomorphic)
    }
}

/// A named gradient: tensors in canonical parameter order.
pub struct Gradient {
    pub key: String,
    pub beta: Option<f64>,
    pub tensors: Vec<Tensor>,
}

/// An estimate with the phases it ran (`free`, `plus`, `minus`) and scalar diagnostics (holomorphic:
/// `im_leak`, `point_residual_max`).
pub struct EstimateRun {
    pub grad: Gradient,
    pub phases: Vec<(String, Phase)>,
    pub diagnostics: Vec<(String, f64)>,
    /// Holomorphic EP with `keep_points`: each point's state and f_k.
    pub points: Vec<ep_holomorphic::HoloPoint>,
}

/// The generic two-point form ĝ(β₁, β₂) = −[f(β₂) − f(β₁)] / (β₂ − β₁) (conventions §8.1).
pub fn two_point(f1: &[Tensor], beta1: f64, f2: &[Tensor], beta2: f64) -> Vec<Tensor> {
    f1.iter().zip(f2).map(|(a, b)| (b - a) * (-1.0 / (beta2 - beta1))).collect()
}

/// Σ_i c_i f(β_i; s_i) for states s_i of the same batch reached at nudges β_i, c_i and β_i = (re, im): ONE weighted
/// parameter derivative over the states stacked along the batch axis ([`Model::param_derivative_weighted`])
/// instead of one derivative per state, plus, for a θ-dependent loss (readout), Σ_i c_i (−β_i) ∂L̄/∂θ|explicit(s_i)
/// (estimators §2.1). The states may mix real and complex dtypes (real ones are cast). `real_only` returns the
/// real part.
pub fn combine_f(model: &Model, p: &[Tensor], batch: &Batch, states: &[&[Tensor]], coeffs: &[(f64, f64)], betas: &[(f64, f64)], real_only: bool) -> Vec<Tensor> {
    assert_eq!(states.len(), coeffs.len());
    assert_eq!(states.len(), betas.len());
    let f = combine_phi_f(model, p, batch, states, coeffs, real_only);
    if model.readout.is_none() {
        return f;
    }
    let mut f = f;
    for ((s, &(cr, ci)), &(br, bi)) in states.iter().zip(coeffs).zip(betas) {
        // c·(−β) as a complex product.
        let c = (-(cr * br - ci * bi), -(cr * bi + ci * br));
        if c != (0.0, 0.0) {
            f = model.add_loss_param_grad(f, p, batch, s, c);
        }
    }
    if real_only {
        f = f.into_iter().map(|t| if crate::tensor_util::is_complex(t.kind()) { t.real().contiguous() } else { t }).collect();
    }
    f
}

/// Σ_i c_i ∂Φ̄/∂θ(s_i) (the θ-independent part of [`combine_f`]).
fn combine_phi_f(model: &Model, p: &[Tensor], batch: &Batch, states: &[&[Tensor]], coeffs: &[(f64, f64)], real_only: bool) -> Vec<Tensor> {
    let n = states.len() as i64;
    let b = batch.size();
    let complex = coeffs.iter().any(|c| c.1 != 0.0) || states.iter().any(|s| crate::tensor_util::is_complex(s[0].kind()));
    let real = crate::tensor_util::real_kind(p[0].kind());
    let kind = if complex { crate::tensor_util::complex_kind(real) } else { real };
    let stacked: Vec<Tensor> = (0..states[0].len()).map(|l| Tensor::cat(&states.iter().map(|s| s[l].to_kind(kind)).collect::<Vec<_>>(), 0)).collect();
    let dev = p[0].device();
    let col = |part: fn(&(f64, f64)) -> f64| {
        let v: Vec<f64> = coeffs.iter().flat_map(|c| std::iter::repeat_n(part(c) / b as f64, b as usize)).collect();
        Tensor::from_slice(&v).to_kind(real).to_device(dev)
    };
    let w = if complex { Tensor::complex(&col(|c| c.0), &col(|c| c.1)) } else { col(|c| c.0) };
    let sb = Batch { x: batch.x.iter().map(|x| crate::tensor_util::repeat_batch(x, n)).collect(), y: crate::tensor_util::repeat_batch(&batch.y, n), y_onehot: crate::tensor_util::repeat_batch(&batch.y_onehot, n) };
    model.param_derivative_weighted(p, &sb, &stacked, &w, n, real_only)
}

/// The two-point form of [`two_point`] from the two states directly, as one weighted derivative
/// ([`combine_f`]): −[f(s₂) − f(s₁)] / (β₂ − β₁).
pub fn two_point_states(model: &Model, p: &[Tensor], batch: &Batch, s1: &[Tensor], beta1: f64, s2: &[Tensor], beta2: f64) -> Vec<Tensor> {
    let c = 1.0 / (beta2 - beta1);
    combine_f(model, p, batch, &[s1, s2], &[(c, 0.0), (-c, 0.0)], &[(beta1, 0.0), (beta2, 0.0)], false)
}

/// Lengths of the phases of an estimate.
#[derive(Clone, Copy, Debug)]
pub struct PhaseLengths {
    pub t_free: i64,
    pub k_nudge: i64,
    pub tol: Option<f64>,
}

/// The free phase from zeros. No per-iteration residual trace (nothing downstream reads it; `converge` runs its
/// own traced phases): it cost +17 % per iteration at Hopfield-ResNet13 paper size on an H100.
pub fn free_phase(model: &Model, p: &[Tensor], batch: &Batch, len: PhaseLengths, record: bool) -> Phase {
    let init = model.zeros_state(batch.size(), crate::precision::Precision { dtype: dtype_of(p), device: p[0].device() });
    relax(model, p, batch, &init, 0.0, &RelaxOptions { iters: len.t_free, tol: len.tol, record, no_trace: true, ..Default::default() })
}

/// A nudged phase of strength `beta` (signed) started from a copy of the free state.
pub fn nudged_phase(model: &Model, p: &[Tensor], batch: &Batch, free: &Phase, beta: f64, len: PhaseLengths) -> Phase {
    relax(model, p, batch, &free.state, beta, &RelaxOptions { iters: len.k_nudge, tol: len.tol, no_trace: true, ..Default::default() })
}

pub fn dtype_of(p: &[Tensor]) -> crate::precision::Dtype {
    if p[0].kind() == tch::Kind::Float {
        crate::precision::Dtype::F32
    } else {
        crate::precision::Dtype::F64
    }
}

/// Runs one estimator end to end (free phase from zeros, then what it needs); holomorphic EP with N = 4,
/// `restart`, shortcut on.
pub fn estimate(est: Estimator, model: &Model, p: &[Tensor], batch: &Batch, beta: f64, len: PhaseLengths) -> Result<EstimateRun> {
    estimate_with(est, model, p, batch, beta, len, &ep_holomorphic::HoloOptions::restart(4, true))
}

pub fn estimate_with(est: Estimator, model: &Model, p: &[Tensor], batch: &Batch, beta: f64, len: PhaseLengths, holo: &ep_holomorphic::HoloOptions) -> Result<EstimateRun> {
    let run = |grad, phases| Ok(EstimateRun { grad, phases, diagnostics: vec![], points: vec![] });
    match est {
        Estimator::EpHolomorphic => {
            ep_holomorphic::preflight(model)?;
            let free = free_phase(model, p, batch, len, false);
            let e = ep_holomorphic::estimate(model, p, batch, &free.state, beta, len, holo)?;
            let mut diagnostics = vec![("point_residual_max".to_string(), e.point_residuals.iter().map(|x| x.1).fold(0.0, f64::max))];
            if let Some((_, leak)) = e.im_leak {
                diagnostics.push(("im_leak".into(), leak));
            }
            diagnostics.push(("point_iterations".into(), e.iters as f64));
            diagnostics.push(("pole_margin_min".into(), e.pole_margins.iter().map(|x| x.1).fold(f64::INFINITY, f64::min)));
            Ok(EstimateRun { grad: e.grad, phases: vec![("free".into(), free)], diagnostics, points: e.point_data })
        }
        Estimator::EpPlus | Estimator::EpMinus => {
            let free = free_phase(model, p, batch, len, false);
            let sign = if est == Estimator::EpPlus { 1.0 } else { -1.0 };
            let (grad, nudged) = ep_one_sided::estimate(model, p, batch, &free, sign * beta, len);
            let name = if sign > 0.0 { "plus" } else { "minus" };
            run(grad, vec![("free".into(), free), (name.into(), nudged)])
        }
        Estimator::EpCentered => {
            let free = free_phase(model, p, batch, len, false);
            let (grad, plus, minus) = ep_centered::estimate(model, p, batch, &free, beta, len);
            run(grad, vec![("free".into(), free), ("plus".into(), plus), ("minus".into(), minus)])
        }
        Estimator::Bptt => {
            let (grad, free) = bptt::full(model, p, batch, len.t_free);
            run(grad, vec![("free".into(), free)])
        }
        Estimator::BpttTrunc => {
            let (grad, free) = bptt::truncated(model, p, batch, len.t_free, len.k_nudge)?;
            run(grad, vec![("free".into(), free)])
        }
    }
}
