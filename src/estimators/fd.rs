//! Central finite differences of the equilibrium loss along random directions (estimators §4.5): an
//! independent check of the exact references. Directions v_p = ξ_p ⊙ rms(θ_p), normalised; step ε = h·‖θ‖;
//! Richardson extrapolation D_R = [4D(ε/2) − D(ε)]/3; the kink status of every direction.
use crate::checks::kinks;
use crate::model::{Batch, Model, State};
use crate::relax::{relax, relax_until_stationary, RelaxOptions};
use crate::tensor_util::{norm2, to_vec_f64};
use crate::{Error, Result};
use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdMode {
    /// Loss at converged free phases, warm-started from s*(θ) (matches `implicit`).
    Converged,
    /// Loss after exactly T iterations from zeros (matches `bptt`).
    FixedT(i64),
}

pub struct FdDirection {
    pub v: Vec<Tensor>,
    pub d: f64,
    pub d_half: f64,
    pub richardson: f64,
    /// Regime changes between the states at θ ± εv and at θ (0 = a valid derivative).
    pub kink_changes: i64,
}

/// Seeded random directions, one block per parameter tensor scaled by its RMS, unit norm overall.
pub fn directions(p: &[Tensor], n_dir: usize, seed: u64) -> Vec<Vec<Tensor>> {
    let _rng = crate::tensor_util::rng_lock();
    tch::manual_seed(seed as i64);
    (0..n_dir)
        .map(|_| {
            let v: Vec<Tensor> = p
                .iter()
                .map(|t| {
                    let rms = (t.square().mean(Kind::Double).sqrt()).to_kind(t.kind());
                    t.randn_like() * rms
                })
                .collect();
            let n: f64 = v.iter().map(|t| norm2(t).powi(2)).sum::<f64>().sqrt();
            v.into_iter().map(|t| t / n).collect()
        })
        .collect()
}

fn loss(model: &Model, p: &[Tensor], batch: &Batch, mode: FdMode, warm: &State, star_tol: f64) -> Result<(f64, State)> {
    let s = match mode {
        FdMode::FixedT(t) => relax(model, p, batch, &model.zeros_state(batch.size(), crate::precision::Precision { dtype: crate::estimators::dtype_of(p), device: p[0].device() }), 0.0, &RelaxOptions::fixed(t)).state,
        FdMode::Converged => {
            let (s, n, r, _) = relax_until_stationary(model, p, batch, warm, 0.0, star_tol, 10_000);
            if !(r <= star_tol) {
                return Err(Error::FixedPoint(format!("perturbed free phase: r_inf = {r:.3e} after {n} iterations")));
            }
            s
        }
    };
    Ok((model.mean_loss(p, batch, &s).to_kind(Kind::Double).double_value(&[]), s))
}

/// D(ε), D(ε/2) and the Richardson value along v, from the state s*(θ) (`star`).
pub fn central(model: &Model, p: &[Tensor], batch: &Batch, star: &State, v: &[Tensor], eps: f64, mode: FdMode, star_tol: f64) -> Result<FdDirection> {
    let shifted = |e: f64| -> Vec<Tensor> { p.iter().zip(v).map(|(a, b)| a + b * e).collect() };
    let r0 = kinks::regimes(model, p, batch, star, 0.0);
    let mut kink_changes = 0;
    let mut diff = |e: f64| -> Result<f64> {
        let (lp, sp) = loss(model, &shifted(e), batch, mode, star, star_tol)?;
        let (lm, sm) = loss(model, &shifted(-e), batch, mode, star, star_tol)?;
        for (pp, ss) in [(shifted(e), &sp), (shifted(-e), &sm)] {
            kink_changes += kinks::changes(&r0, &kinks::regimes(model, &pp, batch, ss, 0.0)).iter().sum::<i64>();
        }
        Ok((lp - lm) / (2.0 * e))
    };
    let d = diff(eps)?;
    let d_half = diff(eps / 2.0)?;
    Ok(FdDirection { v: v.iter().map(|t| t.shallow_clone()).collect(), d, d_half, richardson: (4.0 * d_half - d) / 3.0, kink_changes })
}

/// ⟨g, v⟩ over all tensors.
pub fn project(g: &[Tensor], v: &[Tensor]) -> f64 {
    g.iter().zip(v).map(|(a, b)| to_vec_f64(a).iter().zip(to_vec_f64(b)).map(|(x, y)| x * y).sum::<f64>()).sum()
}

/// Step-size selection: tries ε = h·‖θ‖ for each candidate h and keeps the one whose Richardson error
/// estimate |D(ε) − D(ε/2)| is smallest (truncation error falls with ε, round-off and convergence error grow as
/// 1/ε). Returns (chosen h, its result).
#[allow(clippy::too_many_arguments)]
pub fn central_selected(
    model: &Model,
    p: &[Tensor],
    batch: &Batch,
    star: &State,
    v: &[Tensor],
    theta_norm: f64,
    candidates: &[f64],
    mode: FdMode,
    star_tol: f64,
) -> Result<(f64, FdDirection)> {
    let mut best: Option<(f64, FdDirection)> = None;
    for &h in candidates {
        let d = central(model, p, batch, star, v, h * theta_norm, mode, star_tol)?;
        let better = match &best {
            None => true,
            Some((_, b)) => (d.d - d.d_half).abs() < (b.d - b.d_half).abs(),
        };
        if better {
            best = Some((h, d));
        }
    }
    best.ok_or_else(|| Error::Config("finite differences need at least one step size".into()))
}
