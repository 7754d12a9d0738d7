//! The one relaxation loop: runs `n` iterations of the model's schedule at strength β from a given state,
//! optionally recording the trajectory, Φ per step, and stopping early at a tolerance. Residuals are kept
//! on the device as a (n, B) tensor and read by the caller once. With `tol`, the per-phase maxima are reduced
//! on the device and read back once every `check_every` iterations (the states of that window are kept, so
//! the phase still ends at the first iteration whose residual is ≤ tol, exactly as a per-iteration check).
//!
//! [`relax_stacked`] runs several phases as ONE relaxation over a batch stacked along the batch axis (the ±β
//! phases of centered EP, the points of holomorphic EP), one β per row; with `tol` each phase stops on its own
//! (its rows leave the stacked batch), so the result equals the phases run one after the other.
use crate::model::{Batch, Beta, Model, State};
use crate::tensor_util::absmax_per_example;
use tch::{Kind, Tensor};

#[derive(Clone, Debug, Default)]
pub struct RelaxOptions {
    /// Maximum number of iterations.
    pub iters: i64,
    /// Stop as soon as r_∞ ≤ tol over the whole phase (every row of it), evaluated after every iteration.
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
    /// Keep complex states in libtorch's interleaved complex dtype throughout. By default a complex phase on the
    /// CPU without `tol`, recording or traces runs in the planar form instead ([`relax_planar`]); the two are
    /// equal up to rounding (tests/holomorphic.rs).
    pub interleaved_complex: bool,
    /// With `tol`: read the device-side residual maxima back to the host once every `check_every`
    /// iterations instead of after each one (a host read waits for the device). 0 = automatic: 1 on the CPU
    /// (where a read costs nothing), 16 on CUDA. The result does not depend on it.
    pub check_every: i64,
}

impl RelaxOptions {
    pub fn fixed(iters: i64) -> Self {
        RelaxOptions { iters, ..Default::default() }
    }
}

pub struct Phase {
    /// NaN for per-row (holomorphic, stacked) phases unless the caller sets it.
    pub beta: f64,
    pub state: State,
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
        let d = if crate::tensor_util::is_complex(x.kind()) {
            absmax_per_example(&(x - y))
        } else {
            // max |x − y| = max(max d, −min d) with both extremes from one reduction over d = x − y (no |d|
            // pass); NaN propagates through both.
            let n = x.size()[0];
            let (lo, hi) = (x - y).reshape([n, -1]).aminmax(1, false);
            hi.maximum(&lo.neg())
        };
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
    let mut ph = relax_stacked(model, p, batch, init, beta, &[batch.size()], opts).pop().expect("one phase");
    ph.beta = beta.real();
    ph
}

fn sub_batch(batch: &Batch, idx: &Tensor) -> Batch {
    Batch { x: batch.x.iter().map(|x| x.index_select(0, idx)).collect(), y: batch.y.index_select(0, idx), y_onehot: batch.y_onehot.index_select(0, idx) }
}

fn shallow_batch(batch: &Batch) -> Batch {
    Batch { x: batch.x.iter().map(|x| x.shallow_clone()).collect(), y: batch.y.shallow_clone(), y_onehot: batch.y_onehot.shallow_clone() }
}

fn clone_state(s: &[Tensor]) -> State {
    s.iter().map(|t| t.shallow_clone()).collect()
}

fn narrow_state(s: &[Tensor], start: i64, len: i64) -> State {
    s.iter().map(|t| t.narrow(0, start, len)).collect()
}

/// Φ_β per example at a real or per-row real nudge (None for complex rows).
fn phi_rows(model: &Model, p: &[Tensor], batch: &Batch, s: &[Tensor], beta: &Beta) -> Option<Tensor> {
    match beta {
        Beta::Real(b) => Some(model.nudged_primitive(p, batch, s, *b)),
        Beta::Rows(r) if !crate::tensor_util::is_complex(r.kind()) => Some(model.primitive(p, batch, s) - model.loss_per_example(p, batch, s) * r.reshape([-1])),
        Beta::Rows(_) | Beta::Planar(_) => None,
    }
}

/// Per-phase record while a phase is running.
struct GroupRec {
    size: i64,
    traj: Option<Vec<State>>,
    phi: Option<Vec<Tensor>>,
    res: Vec<Tensor>,
    done: Option<(State, i64)>,
}

/// Runs the phases whose rows are the consecutive blocks of `groups` (row counts summing to B) of the stacked
/// `batch`/`init`, at the per-row nudge `beta`, as one relaxation. Returns one [`Phase`] per block (its
/// `beta` is NaN: the caller names it). Rows never interact, so each block evolves exactly as it would alone.
pub fn relax_stacked(model: &Model, p: &[Tensor], batch: &Batch, init: &[Tensor], beta: &Beta, groups: &[i64], opts: &RelaxOptions) -> Vec<Phase> {
    relax_stacked_with_drives(model, p, batch, init, beta, groups, opts, None)
}

/// The constant drives (input couplings and biases, [`Model::constant_drives`]) of a batch stacked `copies` times,
/// computed on ONE copy and repeated: the stacked phases of an estimator all read the same clamped input, so
/// e.g. the 784 × 512 input product of a P-MLP is formed once instead of once per phase.
pub fn stacked_constant_drives(model: &Model, p: &[Tensor], batch: &Batch, s0: &[Tensor], copies: i64) -> Vec<Option<Tensor>> {
    tch::no_grad(|| model.constant_drives(p, batch, s0).into_iter().map(|t| t.map(|t| crate::tensor_util::repeat_batch(&t, copies))).collect())
}

/// [`relax_stacked`] with the constant drives of the stacked batch given by the caller (from
/// [`stacked_constant_drives`]); None computes them.
#[allow(clippy::too_many_arguments)]
pub fn relax_stacked_with_drives(model: &Model, p: &[Tensor], batch: &Batch, init: &[Tensor], beta: &Beta, groups: &[i64], opts: &RelaxOptions, constant: Option<&[Option<Tensor>]>) -> Vec<Phase> {
    assert_eq!(groups.iter().sum::<i64>(), batch.size(), "phase blocks must cover the stacked batch");
    // (Not for a nonlinear term — a scripted Φ —, whose drive is not a real product of the planes.)
    if let (true, Beta::Rows(rows)) = (planar_applies(init, beta, opts) && !model.terms.iter().any(|t| t.nonlinear()), beta) {
        return relax_planar(model, p, batch, init, rows, groups, opts.iters, constant);
    }
    assert!(!(opts.autograd_drives && matches!(beta, Beta::Rows(_))), "autograd drives take one real β");
    let trace_res = !opts.no_trace || opts.tol.is_some();
    let check_every = match opts.check_every {
        n if n >= 1 => n,
        _ if init[0].device().is_cuda() => 16,
        _ => 1,
    };
    tch::no_grad(|| {
        let mut s: State = clone_state(init);
        let mut cur_batch = shallow_batch(batch);
        let mut cur_beta = match beta {
            Beta::Real(b) => Beta::Real(*b),
            Beta::Rows(r) => Beta::Rows(r.shallow_clone()),
            Beta::Planar(_) => panic!("planar states are relaxed by relax_planar only"),
        };
        let phi0 = if opts.trace_phi { phi_rows(model, p, &cur_batch, &s, &cur_beta) } else { None };
        let mut recs: Vec<GroupRec> = Vec::with_capacity(groups.len());
        let mut off = 0;
        for &g in groups {
            recs.push(GroupRec {
                size: g,
                traj: opts.record.then(|| vec![narrow_state(&s, off, g)]),
                phi: phi0.as_ref().map(|f| vec![f.narrow(0, off, g)]),
                res: Vec::new(),
                done: None,
            });
            off += g;
        }
        // Active phases, in row order of the current (possibly reduced) stacked state.
        let mut active: Vec<usize> = (0..groups.len()).collect();
        // Input couplings and biases contribute the same drive at every iteration: computed once.
        let mut cache = (!opts.autograd_drives).then(|| match constant {
            Some(c) => c.iter().map(|t| t.as_ref().map(|t| t.shallow_clone())).collect(),
            None => model.constant_drives(p, &cur_batch, &s),
        });
        // The tol window: (iteration, per-active-phase max residual (G,), state after it).
        let mut window: Vec<(i64, Tensor, State)> = Vec::new();
        let mut iters = 0;
        while iters < opts.iters && !active.is_empty() {
            let next = model.step_cached(p, &cur_batch, &s, &cur_beta, opts.autograd_drives, cache.as_deref());
            crate::progress::tick();
            let r = trace_res.then(|| state_distance(&next, &s));
            s = next;
            iters += 1;
            let ph = if opts.trace_phi { phi_rows(model, p, &cur_batch, &s, &cur_beta) } else { None };
            let mut off = 0;
            let mut maxima = Vec::new();
            for &gi in &active {
                let rec = &mut recs[gi];
                let g = rec.size;
                if let Some(tr) = rec.traj.as_mut() {
                    tr.push(narrow_state(&s, off, g));
                }
                if let (Some(v), Some(f)) = (rec.phi.as_mut(), ph.as_ref()) {
                    v.push(f.narrow(0, off, g));
                }
                if let Some(r) = r.as_ref() {
                    let rg = r.narrow(0, off, g);
                    if opts.tol.is_some() {
                        maxima.push(rg.max());
                    }
                    rec.res.push(rg);
                }
                off += g;
            }
            let Some(tol) = opts.tol else { continue };
            window.push((iters, Tensor::stack(&maxima, 0), clone_state(&s)));
            if (window.len() as i64) < check_every && iters < opts.iters {
                continue;
            }
            // One host read for the whole window: (n, G) maxima.
            let m = Tensor::stack(&window.iter().map(|w| w.1.shallow_clone()).collect::<Vec<_>>(), 0).to_kind(Kind::Double).to_device(tch::Device::Cpu);
            let m = Vec::<f64>::try_from(m.reshape([-1])).expect("f64 maxima");
            let na = active.len();
            let mut keep = Vec::new();
            let mut off = 0;
            for (ai, &gi) in active.iter().enumerate() {
                let g = recs[gi].size;
                match (0..window.len()).find(|&j| m[j * na + ai] <= tol) {
                    Some(j) => {
                        let (t, _, st) = &window[j];
                        let rec = &mut recs[gi];
                        rec.done = Some((narrow_state(st, off, g), *t));
                        let t = *t as usize;
                        rec.res.truncate(t);
                        if let Some(tr) = rec.traj.as_mut() {
                            tr.truncate(t + 1);
                        }
                        if let Some(v) = rec.phi.as_mut() {
                            v.truncate(t + 1);
                        }
                    }
                    None => keep.push((gi, off, g)),
                }
                off += g;
            }
            window.clear();
            if keep.len() < active.len() && !keep.is_empty() {
                // The converged phases leave the stacked batch; the others go on with their rows only.
                let rows: Vec<i64> = keep.iter().flat_map(|&(_, o, g)| o..o + g).collect();
                let idx = Tensor::from_slice(&rows).to_device(s[0].device());
                s = s.iter().map(|t| t.index_select(0, &idx)).collect();
                cur_batch = sub_batch(&cur_batch, &idx);
                if let Beta::Rows(r) = &cur_beta {
                    cur_beta = Beta::Rows(r.index_select(0, &idx));
                }
                if let Some(c) = cache.as_mut() {
                    for t in c.iter_mut().flatten() {
                        *t = t.index_select(0, &idx);
                    }
                }
            }
            active = keep.into_iter().map(|k| k.0).collect();
        }
        let mut off = 0;
        for &gi in &active {
            let g = recs[gi].size;
            recs[gi].done = Some((narrow_state(&s, off, g), iters));
            off += g;
        }
        let real = crate::tensor_util::real_kind(init[0].kind());
        recs.into_iter()
            .map(|rec| {
                let (state, iters) = rec.done.expect("every phase ends");
                let residuals = if rec.res.is_empty() { Tensor::zeros([0, rec.size], (real, init[0].device())) } else { Tensor::stack(&rec.res, 0) };
                Phase { beta: f64::NAN, state, iters, traj: rec.traj, residuals, phi: rec.phi.map(|v| Tensor::stack(&v, 0)) }
            })
            .collect()
    })
}

/// Whether [`relax_stacked`] runs this phase in the planar complex form: complex states on the CPU, per-row β,
/// a fixed iteration count without `tol`, recording or traces, and `interleaved_complex` off.
pub fn planar_applies(init: &[Tensor], beta: &Beta, opts: &RelaxOptions) -> bool {
    let plain = opts.tol.is_none() && !opts.record && !opts.trace_phi && opts.no_trace && !opts.autograd_drives && !opts.interleaved_complex;
    plain && matches!(beta, Beta::Rows(_)) && crate::tensor_util::is_complex(init[0].kind()) && init[0].device() == tch::Device::Cpu
}

/// A complex phase (per-row complex β `rows`) in the planar form (`tensor_util::to_planar`): the states are real
/// tensors of 2R rows (real parts, then imaginary parts), so every coupling's drive is a real product over 2R
/// rows with no interleaving copies; the constant drives (real) go to the real half; the nudge and σ see the
/// complex rows (`Beta::Planar`, `Model::activate_planar`; tanh directly in planar form). Fixed iteration count,
/// no traces; the final states come back in the complex dtype. 1.22–1.24× faster than the interleaved
/// form (30 iterations of 3 × 20 complex rows of the default P-MLP, one CPU core).
#[allow(clippy::too_many_arguments)]
fn relax_planar(model: &Model, p: &[Tensor], batch: &Batch, init: &[Tensor], rows: &Tensor, groups: &[i64], iters: i64, constant: Option<&[Option<Tensor>]>) -> Vec<Phase> {
    use crate::tensor_util::{from_planar, repeat_batch, to_planar};
    tch::no_grad(|| {
        let doubled = Batch { x: batch.x.iter().map(|x| repeat_batch(x, 2)).collect(), y: repeat_batch(&batch.y, 2), y_onehot: repeat_batch(&batch.y_onehot, 2) };
        let one: Vec<Option<Tensor>> = match constant {
            Some(c) => c.iter().map(|t| t.as_ref().map(|t| t.shallow_clone())).collect(),
            None => model.constant_drives(p, batch, init),
        };
        let cache: Vec<Option<Tensor>> = one
            .into_iter()
            .map(|c| c.map(|c| if crate::tensor_util::is_complex(c.kind()) { to_planar(&c) } else { Tensor::cat(&[c.shallow_clone(), c.zeros_like()], 0) }))
            .collect();
        let beta = Beta::Planar(rows.shallow_clone());
        let mut s: State = init.iter().map(to_planar).collect();
        for _ in 0..iters {
            s = model.step_cached(p, &doubled, &s, &beta, false, Some(&cache));
            crate::progress::tick();
        }
        let fin: State = s.iter().map(from_planar).collect();
        let real = crate::tensor_util::real_kind(init[0].kind());
        let mut off = 0;
        groups
            .iter()
            .map(|&g| {
                let state = narrow_state(&fin, off, g);
                off += g;
                Phase { beta: f64::NAN, state, iters, traj: None, residuals: Tensor::zeros([0, g], (real, init[0].device())), phi: None }
            })
            .collect()
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
