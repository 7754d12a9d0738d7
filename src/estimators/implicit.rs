//! Implicit differentiation at the fixed point (recurrent backprop / Almeida–Pineda, estimators §4.4):
//! converge the free phase to s*, solve the adjoint λ = g_ℓ + J_Fᵀλ by fixed-point iteration of step VJPs of
//! the **sync** map at s*, then ĝ = (∂F/∂θ)ᵀλ. Only step VJPs are used, so it stays the true gradient of the
//! implemented dynamics even without symmetry.
use super::Gradient;
use crate::model::{Batch, Model, State};
use crate::relax::relax_until_stationary;
use crate::tensor_util::to_vec_f64;
use crate::{Error, Result};
use tch::Tensor;

#[derive(Clone, Copy, Debug)]
pub struct ImplicitOptions {
    pub star_tol: f64,
    pub star_max_iter: i64,
    pub adjoint_tol: f64,
    pub adjoint_max_iter: usize,
}

impl ImplicitOptions {
    /// Defaults of estimators §4.4: 1e-13 / 1e-6 (f64 / f32), 10 000 iterations.
    pub fn for_dtype(dtype: crate::precision::Dtype) -> Self {
        let tol = if dtype == crate::precision::Dtype::F64 { 1e-13 } else { 1e-6 };
        ImplicitOptions { star_tol: tol, star_max_iter: 10_000, adjoint_tol: tol, adjoint_max_iter: 10_000 }
    }
}

pub struct Star {
    pub state: State,
    pub iters: i64,
    pub residual: f64,
}

/// The converged free state s*, from zeros (or `init`), or the error "fixed point not reached".
pub fn star(model: &Model, p: &[Tensor], batch: &Batch, init: Option<&State>, o: &ImplicitOptions) -> Result<Star> {
    let zeros;
    let init = match init {
        Some(s) => s,
        None => {
            zeros = model.zeros_state(batch.size(), crate::precision::Precision { dtype: super::dtype_of(p), device: p[0].device() });
            &zeros
        }
    };
    let (state, iters, r, r2r1) = relax_until_stationary(model, p, batch, init, 0.0, o.star_tol, o.star_max_iter);
    if !(r <= o.star_tol) {
        return Err(Error::FixedPoint(format!(
            "r_inf = {r:.3e} > star_tol = {:.1e} after {iters} iterations (r2/r1 = {r2r1:.3}: ≈2 drift, ≈0 oscillation)",
            o.star_tol
        )));
    }
    Ok(Star { state, iters, residual: r })
}

pub struct Implicit {
    pub grad: Gradient,
    pub star: Star,
    pub adjoint_iters: usize,
    /// Last relative change max|λ_{n+1} − λ_n| / max|λ_{n+1}|.
    pub adjoint_rel_change: f64,
}

fn max_abs(s: &[Tensor]) -> f64 {
    s.iter().map(|t| to_vec_f64(&t.abs().max()).first().copied().unwrap_or(0.0)).fold(0.0, f64::max)
}

/// The adjoint solve and gradient at a given converged state.
pub fn at_star(model: &Model, p: &[Tensor], batch: &Batch, star: Star, o: &ImplicitOptions) -> Result<Implicit> {
    let g_l = model.loss_state_grad(p, batch, &star.state);
    let mut lam: State = g_l.iter().map(|t| t.shallow_clone()).collect();
    let mut rel = f64::INFINITY;
    let mut n = 0;
    tch::no_grad(|| {
        while n < o.adjoint_max_iter {
            let (a_s, _) = model.step_vjp_sync(p, batch, &star.state, &lam);
            let next: State = g_l.iter().zip(&a_s).map(|(g, a)| g + a).collect();
            let d: State = next.iter().zip(&lam).map(|(a, b)| a - b).collect();
            rel = crate::checks::metrics::ratio(max_abs(&d), max_abs(&next));
            lam = next;
            n += 1;
            crate::progress::tick();
            if rel <= o.adjoint_tol {
                break;
            }
        }
    });
    if !(rel <= o.adjoint_tol) {
        return Err(Error::FixedPoint(format!("adjoint not converged: relative change {rel:.3e} after {n} iterations")));
    }
    let (_, g) = tch::no_grad(|| model.step_vjp_sync(p, batch, &star.state, &lam));
    // + ∂L/∂θ|explicit(s*) (the readout's tensors, estimators §4.4).
    let g = match model.loss_param_grad(p, batch, &star.state) {
        Some(e) => g.iter().zip(e).map(|(a, b)| a + b).collect(),
        None => g,
    };
    Ok(Implicit { grad: Gradient { key: "implicit".into(), beta: None, tensors: g }, star, adjoint_iters: n, adjoint_rel_change: rel })
}

pub fn implicit(model: &Model, p: &[Tensor], batch: &Batch, o: &ImplicitOptions) -> Result<Implicit> {
    let s = star(model, p, batch, None, o)?;
    at_star(model, p, batch, s, o)
}
