//! Holomorphic EP (estimators §3): N teaching points β_k = r·e^{2πik/N} on a circle, complex states, real
//! parameters; ĝ_N = (1/N) Σ_k Re[−(f_k − f(0))/β_k], the first Fourier coefficient of f around the circle.
//! `restart` runs the points as ONE relaxation with the points folded into the batch axis (one β per row);
//! `carry` goes around the circle, each point starting from the previous point's final state.
use super::{Gradient, PhaseLengths};
use crate::model::{Batch, Beta, Model, State};
use crate::relax::{relax_nudged, relax_stacked_with_drives, state_distance, RelaxOptions};
use crate::tensor_util::{complex_kind, to_vec_f64};
use crate::{Error, Result};
use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoloSchedule {
    Restart,
    Carry,
}

#[derive(Clone, Debug)]
pub struct HoloOptions {
    /// N ≥ 1.
    pub n: usize,
    pub schedule: HoloSchedule,
    /// Conjugate-symmetry shortcut (restart only): ⌊N/2⌋ + 1 phases instead of N.
    pub shortcut: bool,
    /// `carry`: periods around the circle.
    pub periods: usize,
    /// `carry`: start from zeros instead of the free state.
    pub carry_from_zeros: bool,
    /// `carry`: average only the last period.
    pub carry_last_only: bool,
    /// Obtain f_k by autograd (with the Wirtinger conjugation) instead of the local forms.
    pub autograd: bool,
    /// Keep every point's final state and f_k ([`HoloEstimate::point_data`], for `--dump`; estimators §8).
    pub keep_points: bool,
}

impl HoloOptions {
    pub fn restart(n: usize, shortcut: bool) -> Self {
        HoloOptions { n, schedule: HoloSchedule::Restart, shortcut, periods: 1, carry_from_zeros: false, carry_last_only: false, autograd: false, keep_points: false }
    }
}

pub struct HoloEstimate {
    pub grad: Gradient,
    /// im_leak = ‖Im Λ‖/‖Re Λ‖ per tensor and in total; None when not measured (shortcut).
    pub im_leak: Option<(Vec<f64>, f64)>,
    /// (k, max r_∞ of the point's final state, modulus).
    pub point_residuals: Vec<(usize, f64)>,
    /// (k, pole margin of the drives at the point's final state, §3.11); +∞ when no layer's σ has poles. A value
    /// below [`POLE_MARGIN_FLAG`] is flagged by the checks.
    pub pole_margins: Vec<(usize, f64)>,
    pub points: Vec<(f64, f64)>,
    /// Iterations run per point phase.
    pub iters: i64,
    /// With [`HoloOptions::keep_points`]: every point k = 0…N−1 (the last period under `carry`), its final state and
    /// f_k = ∂Φ̄_{β_k}/∂θ there; under the shortcut the points k > N/2 are the conjugates of their partners (§3.5).
    pub point_data: Vec<HoloPoint>,
}

/// One holomorphic point's final state and parameter derivative (complex, or real on the real axis).
pub struct HoloPoint {
    pub k: usize,
    pub beta: (f64, f64),
    pub state: State,
    pub f: Vec<Tensor>,
}

/// Pole margins below this are flagged (estimators §3.11).
pub const POLE_MARGIN_FLAG: f64 = 0.25;

/// For the `n` stacked points (blocks of `b` rows) at their final `state`: the residual r_∞ of each point (one more
/// iteration of the schedule, conventions §5.5, modulus) and its pole margin (§3.11: the drives of every layer whose
/// σ has poles, all from `state`). Under a one-group (sync) schedule the iteration is made from those same drives,
/// so the margins cost nothing extra.
#[allow(clippy::too_many_arguments)]
fn residuals_and_pole_margins(model: &Model, p: &[Tensor], batch: &Batch, state: &[Tensor], beta: &Beta, constant: Option<&[Option<Tensor>]>, n: i64, b: i64) -> (Vec<f64>, Vec<f64>) {
    tch::no_grad(|| {
        let sync = model.schedule.groups.len() == 1;
        let drives: Vec<Option<Tensor>> = model
            .layers
            .iter()
            .enumerate()
            .map(|(k, l)| (sync || (model.update_map(k).is_none() && !l.activation.pole_families().is_empty())).then(|| model.drive_cached(p, batch, state, k, beta, constant)))
            .collect();
        let next: State = if sync {
            drives.iter().enumerate().map(|(k, u)| model.activate(k, batch, u.as_ref().expect("every drive under sync"))).collect()
        } else {
            model.step_cached(p, batch, state, beta, false, constant)
        };
        let rows = to_vec_f64(&state_distance(&next, state));
        let res = (0..n as usize).map(|j| rows[j * b as usize..(j + 1) * b as usize].iter().cloned().fold(0.0, f64::max)).collect();
        let mut margins = vec![f64::INFINITY; n as usize];
        for (k, u) in drives.iter().enumerate() {
            let (Some(u), None) = (u, model.update_map(k)) else { continue };
            let act = model.layers[k].activation;
            if act.pole_families().is_empty() {
                continue;
            }
            for (j, m) in margins.iter_mut().enumerate() {
                *m = m.min(act.pole_margin(&u.narrow(0, j as i64 * b, b)));
            }
        }
        (res, margins)
    })
}

/// β_k = r·ω^k, computed in double precision with exact axis points and exact conjugate pairs (§3.1).
pub fn points(n: usize, r: f64) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = (0..n)
        .map(|k| {
            let a = 2.0 * std::f64::consts::PI * k as f64 / n as f64;
            (r * a.cos(), r * a.sin())
        })
        .collect();
    for k in 0..n {
        if k == 0 {
            pts[k] = (r, 0.0);
        } else if 2 * k == n {
            pts[k] = (-r, 0.0);
        } else if 4 * k == n {
            pts[k] = (0.0, r);
        } else if 4 * k == 3 * n {
            pts[k] = (0.0, -r);
        }
    }
    for k in 0..n {
        if 2 * k > n {
            let (re, im) = pts[n - k];
            pts[k] = (re, -im);
        }
    }
    pts
}

/// Refuses models whose state path is not holomorphic, naming the layer and its operation (§3.6).
pub fn preflight(model: &Model) -> Result<()> {
    for (k, l) in model.layers.iter().enumerate() {
        if let Some(map) = model.update_map(k) {
            if !map.is_holomorphic() {
                return Err(Error::UnsupportedEstimator(format!("{}: {} update map (no complex evaluation)", l.name, map.key())));
            }
            continue;
        }
        if !l.activation.is_holomorphic() {
            return Err(Error::UnsupportedEstimator(format!("{}: {}", l.name, l.activation.key())));
        }
    }
    for t in &model.terms {
        if !t.supports_complex() {
            return Err(Error::UnsupportedEstimator(format!("coupling {} on {:?}: not implemented for complex states", t.kind(), t.slots())));
        }
    }
    Ok(())
}

fn complex_scalar(re: f64, im: f64, real: Kind, dev: tch::Device) -> Tensor {
    let r = Tensor::from_slice(&[re]).to_kind(real).to_device(dev).reshape([] as [i64; 0]);
    let i = Tensor::from_slice(&[im]).to_kind(real).to_device(dev).reshape([] as [i64; 0]);
    Tensor::complex(&r, &i)
}

/// `reps` copies of a batch, stacked along the batch axis (real; the states carry the complex dtype).
fn stacked_batch(batch: &Batch, reps: i64) -> Batch {
    let cat = |t: &Tensor| crate::tensor_util::repeat_batch(t, reps);
    Batch { x: batch.x.iter().map(cat).collect(), y: cat(&batch.y), y_onehot: cat(&batch.y_onehot) }
}

/// f_k = ∂Φ̄_{β_k}/∂θ at a complex state: ∂Φ̄/∂θ by the local forms with plain products, or by autograd with the
/// conjugation recipe of §3.8, then − β_k ∂L̄/∂θ|explicit for a θ-dependent loss (the readout, §3.2).
fn f_complex(model: &Model, pc: &[Tensor], batch: &Batch, s: &[Tensor], beta: (f64, f64), autograd: bool) -> Vec<Tensor> {
    let f = if autograd { model.param_derivative_autograd(pc, batch, s) } else { model.param_derivative(pc, batch, s) };
    model.add_loss_param_grad(f, pc, batch, s, (-beta.0, -beta.1))
}

/// Runs holomorphic EP from the free state `s0` (real). `r` = |β|.
pub fn estimate(model: &Model, p: &[Tensor], batch: &Batch, s0: &State, r: f64, len: PhaseLengths, o: &HoloOptions) -> Result<HoloEstimate> {
    preflight(model)?;
    if o.n < 1 {
        return Err(Error::Config(format!("holomorphic EP needs N ≥ 1, got {}", o.n)));
    }
    if !(r.is_finite() && r > 0.0) {
        return Err(Error::Config(format!("holomorphic EP needs |β| > 0, got {r}")));
    }
    let real = p[0].kind();
    let ck = complex_kind(real);
    let dev = p[0].device();
    // θ, x and ŷ stay real (§3.7 casts them with zero imaginary part; mixed products are exact and cheaper).
    let pc: Vec<Tensor> = p.iter().map(|t| t.shallow_clone()).collect();
    let pts = points(o.n, r);
    let b = batch.size();
    let opts = RelaxOptions { iters: len.k_nudge, tol: len.tol, no_trace: true, ..Default::default() };
    let nf = o.n as f64;
    // Λ (complex) = Σ_k w_k τ_k, with τ_k = −(f_k − f(0))/β_k.
    let mut lambda: Vec<Option<Tensor>> = (0..p.len()).map(|_| None).collect();
    let mut add = |tau: Vec<Tensor>, w: f64| {
        for (acc, t) in lambda.iter_mut().zip(tau) {
            crate::model::terms::accumulate(acc, t * w);
        }
    };
    let mut point_residuals = vec![];
    let mut pole_margins = vec![];
    let mut iters = 0;
    let mut measured_leak = true;
    let mut point_data: Vec<HoloPoint> = vec![];
    match o.schedule {
        HoloSchedule::Restart => {
            let ks: Vec<usize> = if o.shortcut { (0..=o.n / 2).collect() } else { (0..o.n).collect() };
            measured_leak = !o.shortcut;
            // Points on the real axis (β = ±r) run in the real dtype, the others in the complex dtype; each
            // set is ONE relaxation with its points folded into the batch axis (one β per row).
            let (real_ks, cplx_ks): (Vec<usize>, Vec<usize>) = ks.iter().partition(|&&k| pts[k].1 == 0.0);
            let mut finals: Vec<(usize, State)> = vec![];
            // The input couplings and biases give every point the same (real) constant drive: formed once.
            let one_copy = tch::no_grad(|| model.constant_drives(&pc, batch, s0));
            for (set, complex) in [(real_ks, false), (cplx_ks, true)] {
                if set.is_empty() {
                    continue;
                }
                let nb = set.len() as i64;
                let cb = stacked_batch(batch, nb);
                let kind = if complex { ck } else { real };
                let init: State = s0.iter().map(|t| crate::tensor_util::repeat_batch(t, nb).to_kind(kind)).collect();
                let re: Vec<f64> = set.iter().flat_map(|&k| std::iter::repeat_n(pts[k].0, b as usize)).collect();
                let re_t = Tensor::from_slice(&re).to_kind(real).to_device(dev);
                let rows = if complex {
                    let im: Vec<f64> = set.iter().flat_map(|&k| std::iter::repeat_n(pts[k].1, b as usize)).collect();
                    Tensor::complex(&re_t, &Tensor::from_slice(&im).to_kind(real).to_device(dev))
                } else {
                    re_t
                };
                let beta = Beta::Rows(rows.reshape([nb * b, 1]));
                // Each point is its own phase: with `tol` it stops when all of its rows are below tol.
                let constant: Vec<Option<Tensor>> = one_copy.iter().map(|t| t.as_ref().map(|t| crate::tensor_util::repeat_batch(t, nb))).collect();
                let phs = relax_stacked_with_drives(model, &pc, &cb, &init, &beta, &vec![b; set.len()], &opts, Some(&constant));
                iters = iters.max(phs.iter().map(|ph| ph.iters).max().unwrap_or(0));
                let state: State = (0..s0.len()).map(|l| Tensor::cat(&phs.iter().map(|ph| ph.state[l].shallow_clone()).collect::<Vec<_>>(), 0)).collect();
                let (res, margins) = residuals_and_pole_margins(model, &pc, &cb, &state, &beta, Some(&constant), nb, b);
                for (j, (&k, ph)) in set.iter().zip(phs).enumerate() {
                    if ph.state.iter().any(|t| !crate::tensor_util::all_finite(t)) {
                        return Err(Error::NonFinite(format!("state of holomorphic point k = {k} (β_k = {:.4}{:+.4}i)", pts[k].0, pts[k].1)));
                    }
                    point_residuals.push((k, res[j]));
                    pole_margins.push((k, margins[j]));
                    finals.push((k, ph.state));
                }
            }
            point_residuals.sort_by_key(|x| x.0);
            pole_margins.sort_by_key(|x| x.0);
            if o.keep_points {
                finals.sort_by_key(|x| x.0);
                for (k, st) in &finals {
                    let f = tch::no_grad(|| f_complex(model, &pc, batch, st, pts[*k], o.autograd));
                    if o.shortcut && 2 * k != o.n && *k != 0 {
                        // The partner N − k by conjugate symmetry (§3.5).
                        let conj = |t: &Tensor| t.conj().resolve_conj();
                        point_data.push(HoloPoint { k: o.n - k, beta: pts[o.n - k], state: st.iter().map(conj).collect(), f: f.iter().map(conj).collect() });
                    }
                    point_data.push(HoloPoint { k: *k, beta: pts[*k], state: st.iter().map(|t| t.shallow_clone()).collect(), f });
                }
                point_data.sort_by_key(|x| x.k);
            }
            // Λ = Σ_k w_k τ_k, τ_k = −(f_k − f(0))/β_k, as ONE weighted parameter derivative over the points'
            // final states (the estimate is linear in the per-example terms, §3.3): coefficient −w_k/β_k =
            // −w_k·conj(β_k)/r² on point k. For N ≥ 2, Σ_k w_k/β_k = 0 and the f(0) term is omitted (§3.3);
            // for N = 1 it is the state s⁰ with coefficient +1/β_0. With the shortcut only Re Λ is formed.
            let mut states: Vec<&[Tensor]> = vec![];
            let mut coeffs: Vec<(f64, f64)> = vec![];
            let mut betas: Vec<(f64, f64)> = vec![];
            for (k, st) in &finals {
                let w = if !o.shortcut || *k == 0 || 2 * k == o.n { 1.0 / nf } else { 2.0 / nf };
                states.push(st);
                coeffs.push((-w * pts[*k].0 / (r * r), w * pts[*k].1 / (r * r)));
                betas.push(pts[*k]);
            }
            if o.n == 1 {
                states.push(s0);
                coeffs.push((1.0 / pts[0].0, 0.0));
                betas.push((0.0, 0.0));
            }
            let lam = if o.autograd {
                // The independent path: f_k of each point by autograd (with the Wirtinger conjugation), then
                // the same combination.
                let mut acc: Vec<Option<Tensor>> = (0..p.len()).map(|_| None).collect();
                for ((st, &(cr, ci)), &bk) in states.iter().zip(&coeffs).zip(&betas) {
                    let fk = f_complex(model, &pc, batch, st, bk, true);
                    let c = complex_scalar(cr, ci, real, dev);
                    for (a, f) in acc.iter_mut().zip(fk) {
                        crate::model::terms::accumulate(a, f.to_kind(ck) * &c);
                    }
                }
                acc.into_iter().map(|t| t.expect("at least one point")).collect()
            } else {
                super::combine_f(model, &pc, batch, &states, &coeffs, &betas, o.shortcut)
            };
            for (acc, t) in lambda.iter_mut().zip(lam) {
                // All points real (N ≤ 2): Λ is real and its imaginary part exactly 0.
                *acc = Some(if crate::tensor_util::is_complex(t.kind()) || o.shortcut { t } else { t.to_kind(ck) });
            }
        }
        HoloSchedule::Carry => {
            if o.n < 2 {
                return Err(Error::Config("the carry schedule needs N ≥ 2".into()));
            }
            let mut state: State = if o.carry_from_zeros {
                s0.iter().map(|t| t.zeros_like().to_kind(ck)).collect()
            } else {
                s0.iter().map(|t| t.to_kind(ck)).collect()
            };
            let cb = stacked_batch(batch, 1);
            let periods = o.periods.max(1);
            let w = 1.0 / (nf * if o.carry_last_only { 1.0 } else { periods as f64 });
            for per in 0..periods {
                for (k, &(re, im)) in pts.iter().enumerate() {
                    let beta = Beta::Rows(complex_scalar(re, im, real, dev).reshape([1, 1]).expand([b, 1], false).contiguous());
                    let ph = relax_nudged(model, &pc, &cb, &state, &beta, &opts);
                    iters = ph.iters;
                    if ph.state.iter().any(|t| !crate::tensor_util::all_finite(t)) {
                        return Err(Error::NonFinite(format!("state of holomorphic point k = {k}, period {per}")));
                    }
                    if per + 1 == periods {
                        let (res, margins) = residuals_and_pole_margins(model, &pc, &cb, &ph.state, &beta, None, 1, b);
                        point_residuals.push((k, res[0]));
                        pole_margins.push((k, margins[0]));
                    }
                    if !o.carry_last_only || per + 1 == periods {
                        let fk = f_complex(model, &pc, &cb, &ph.state, (re, im), o.autograd);
                        let inv = complex_scalar(re / (r * r), -im / (r * r), real, dev);
                        add(fk.iter().map(|f| -f * &inv).collect(), w);
                        if o.keep_points && per + 1 == periods {
                            point_data.push(HoloPoint { k, beta: (re, im), state: ph.state.iter().map(|t| t.shallow_clone()).collect(), f: fk });
                        }
                    }
                    state = ph.state;
                }
            }
        }
    }
    let lambda: Vec<Tensor> = lambda.into_iter().map(|t| t.expect("at least one point")).collect();
    let grad: Vec<Tensor> = lambda.iter().map(|t| t.real().contiguous()).collect();
    let im_leak = measured_leak.then(|| {
        let per: Vec<f64> = lambda.iter().map(|t| crate::checks::metrics::ratio(crate::tensor_util::norm2(&t.imag()), crate::tensor_util::norm2(&t.real()))).collect();
        let im: f64 = lambda.iter().map(|t| crate::tensor_util::norm2(&t.imag()).powi(2)).sum::<f64>().sqrt();
        let re: f64 = lambda.iter().map(|t| crate::tensor_util::norm2(&t.real()).powi(2)).sum::<f64>().sqrt();
        (per, crate::checks::metrics::ratio(im, re))
    });
    Ok(HoloEstimate {
        grad: Gradient { key: format!("ep_holomorphic{}", o.n), beta: Some(r), tensors: grad },
        im_leak,
        point_residuals,
        pole_margins,
        points: pts,
        iters,
        point_data,
    })
}
