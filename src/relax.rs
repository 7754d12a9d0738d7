//! The one relaxation loop: runs `n` iterations of the model's schedule at strength β from a given state,
//! optionally recording the trajectory, Φ per step, and stopping early at a tolerance. Residuals are kept
//! on the device as a (n, B) tensor and read by the caller once (no host synchronisation inside the loop
//! unless `tol` is set).
use crate::model::{Batch, Beta, Model, State};
use crate::tensor_util::absmax_per_example;
use tch::{Kind, Tensor};

#[derive(Clone, Debug, Default)]
pub struct RelaxOptions {
    /// Maximum number of iterations.
    pub iters: i64,
    /// Stop as soon as r_∞ ≤ tol over the whole batch (checked after every iteration).
    pub tol: Option<f64>,
    /// Keep every state (index 0 = the initial state).
    pub record: bool,
    /// Record Φ_β per example after every iteration (index 0 = initial).
    pub trace_phi: bool,
    /// Compute drives by autograd of Φ instead of the analytic drives.
    pub autograd_drives: bool,
    /// Skip the per-iteration residual trace (`Phase::residuals` is then empty) when no tolerance is set and
    /// nobody reads it — saves one pass over the states per iteration.
    pub no_trace: bool,
}

impl RelaxOptions {
    pub fn fixed(iters: i64) -> Self {
        RelaxOptions { iters, ..Default::default() }
    }
}

pub struct Phase {
    pub beta: f64,
    pub state: State,
    /// NaN for per-row (holomorphic) phases.
    /// Iterations actually run.
    pub iters: i64,
    pub traj: Option<Vec<State>>,
    /// r_{t,b} = max over layers and units of |s_t − s_{t−1}|, shape (iters, B); t = 1…iters.
    pub residuals: Tensor,
    /// Φ_β per example along the phase, shape (iters + 1, B).
    pub phi: Option<Tensor>,
}

/// Per-example max |a − b| over all layers, shape (B,).
pub fn state_distance(a: &[Tensor], b: &[Tensor]) -> Tensor {
    let mut r: Option<Tensor> = None;
    for (x, y) in a.iter().zip(b) {
        let d = absmax_per_example(&(x - y));
        r = Some(match r {
            Some(r) => r.maximum(&d),
            None => d,
        });
    }
    r.expect("a model has at least one layer")
}

pub fn relax(model: &Model, p: &[Tensor], batch: &Batch, init: &[Tensor], beta: f64, opts: &RelaxOptions) -> Phase {
    relax_nudged(model, p, batch, init, &Beta::Real(beta), opts)
}

/// The loop at a real or per-row (complex) nudge. Φ is traced only for real phases; residuals use the
/// modulus for complex states.
pub fn relax_nudged(model: &Model, p: &[Tensor], batch: &Batch, init: &[Tensor], beta: &Beta, opts: &RelaxOptions) -> Phase {
    let real_beta = beta.real();
    tch::no_grad(|| {
        let mut s: State = init.iter().map(|t| t.shallow_clone()).collect();
        let mut traj = opts.record.then(|| vec![s.iter().map(|t| t.shallow_clone()).collect::<State>()]);
        let mut phi = (opts.trace_phi && !real_beta.is_nan()).then(|| vec![model.nudged_primitive(p, batch, &s, real_beta)]);
        let mut res = Vec::with_capacity(opts.iters.max(0) as usize);
        let mut iters = 0;
        // Input couplings and biases contribute the same drive at every iteration: computed once.
        let cache = (!opts.autograd_drives).then(|| model.constant_drives(p, batch, &s));
        for _ in 0..opts.iters {
            let next = model.step_cached(p, batch, &s, beta, opts.autograd_drives, cache.as_deref());
            crate::progress::tick();
            let r = (!opts.no_trace || opts.tol.is_some()).then(|| state_distance(&next, &s));
            s = next;
            iters += 1;
            if let Some(tr) = traj.as_mut() {
                tr.push(s.iter().map(|t| t.shallow_clone()).collect());
            }
            if let Some(ph) = phi.as_mut() {
                ph.push(model.nudged_primitive(p, batch, &s, real_beta));
            }
            let stop = opts.tol.zip(r.as_ref()).map(|(tol, r)| {
                let m = r.max().to_kind(Kind::Double).double_value(&[]);
                m <= tol
            });
            if let Some(r) = r {
                res.push(r);
            }
            if stop == Some(true) {
                break;
            }
        }
        let residuals = if res.is_empty() {
            Tensor::zeros([0, batch.size()], (crate::tensor_util::real_kind(init[0].kind()), init[0].device()))
        } else {
            Tensor::stack(&res, 0)
        };
        Phase { beta: real_beta, state: s, iters, traj, residuals, phi: phi.map(|v| Tensor::stack(&v, 0)) }
    })
}

/// The residual of a state at strength β (conventions §5.5): r_∞ per example after one more iteration.
pub fn residual(model: &Model, p: &[Tensor], batch: &Batch, s: &[Tensor], beta: f64) -> Tensor {
    tch::no_grad(|| state_distance(&model.step(p, batch, s, beta), s))
}

/// Iterates from `init` until the state itself is stationary — its residual r_∞ = max|step(s) − s| ≤ tol —
/// or until `max_iter` iterations. Returns (state, iterations run, its residual r_∞, r2/r1 at the end).
pub fn relax_until_stationary(model: &Model, p: &[Tensor], batch: &Batch, init: &[Tensor], beta: f64, tol: f64, max_iter: i64) -> (State, i64, f64, f64) {
    tch::no_grad(|| {
        let mut s: State = init.iter().map(|t| t.shallow_clone()).collect();
        let mut prev: Option<State> = None;
        let mut n = 0;
        let cache = model.constant_drives(p, batch, &s);
        loop {
            let next = model.step_cached(p, batch, &s, &Beta::Real(beta), false, Some(&cache));
            crate::progress::tick();
            let r = state_distance(&next, &s).max().to_kind(Kind::Double).double_value(&[]);
            if r <= tol || n >= max_iter || r.is_nan() {
                let r2 = prev.as_ref().map(|q| state_distance(&next, q).max().to_kind(Kind::Double).double_value(&[])).unwrap_or(f64::NAN);
                return (s, n, r, r2 / r);
            }
            prev = Some(s);
            s = next;
            n += 1;
        }
    })
}
