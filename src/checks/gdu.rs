//! `gdu` (checks §3, estimators §5): EP per-step updates vs BPTT per-step gradients. The BPTT series come out
//! of ONE reverse sweep of K step VJPs (O(K)), the EP series out of one forward sweep per sign.
use super::metrics::{self as mx, Series};
use super::{kinks, largest_elements, CheckReport, Rows, Verdict};
use crate::adjoint::reverse_sweep;
use crate::estimators::{ep_centered, ep_one_sided, PhaseLengths};
use crate::instance::Instance;
use crate::model::schedule::ScheduleKind;
use crate::model::{detach_state, Batch, Model, State};
use crate::relax::{relax, state_distance, RelaxOptions};
use crate::tensor_util::{norm2, to_vec_f64};
use serde_json::json;
use tch::{Kind, Tensor};

#[derive(Clone, Debug)]
pub struct GduOptions {
    pub t_free: i64,
    pub k: i64,
    pub beta: f64,
    /// `theorem` (scored) or `replay` (info).
    pub theorem: bool,
    pub extend_free: bool,
    pub stat_tol: f64,
    pub max_iter: i64,
    pub bias_const: f64,
    pub lab_const: f64,
    pub sign_floor: Option<f64>,
    pub sign_err_max: f64,
    pub n_elem: usize,
    pub plot_seed: u64,
    pub verify_quadratic: bool,
}

impl GduOptions {
    /// Theorem-mode options with the defaults of checks §12 (f64 tolerance 1e-10).
    pub fn theorem(t_free: i64, k: i64, beta: f64) -> Self {
        let d = crate::config::GduConfig::default();
        GduOptions {
            t_free,
            k,
            beta,
            theorem: true,
            extend_free: d.extend_free,
            stat_tol: 1e-10,
            max_iter: d.max_iter,
            bias_const: d.bias_const,
            lab_const: d.lab_const,
            sign_floor: d.sign_floor,
            sign_err_max: d.sign_err_max,
            n_elem: d.n_elem,
            plot_seed: 0,
            verify_quadratic: d.verify_quadratic,
        }
    }

    /// Replay mode: exactly T free iterations, verdicts `info`.
    pub fn replay(t_free: i64, k: i64, beta: f64) -> Self {
        GduOptions { theorem: false, extend_free: false, ..Self::theorem(t_free, k, beta) }
    }

    /// From a resolved configuration; theorem mode uses `beta` (checks.gdu.beta unless given), replay the
    /// preset β.
    pub fn from_config(cfg: &crate::config::RunConfig, beta: f64) -> Self {
        let g = &cfg.checks.gdu;
        GduOptions {
            t_free: cfg.t_free,
            k: cfg.k_nudge,
            beta,
            theorem: g.mode == "theorem",
            extend_free: g.extend_free,
            stat_tol: cfg.converge_tol(),
            max_iter: g.max_iter,
            bias_const: g.bias_const,
            lab_const: g.lab_const,
            sign_floor: g.sign_floor,
            sign_err_max: g.sign_err_max,
            n_elem: g.n_elem,
            plot_seed: cfg.checks.plot_seed,
            verify_quadratic: g.verify_quadratic,
        }
    }
}

/// EP series of one sign: per step, per parameter / per layer.
pub struct EpSeries {
    pub theta: Vec<Vec<Tensor>>,
    pub neurons: Vec<State>,
    /// Regime changes per layer vs s^0 and between consecutive nudged states, summed over the K steps.
    pub kink_changes: i64,
    /// max ‖f‖ over the nudged states, per parameter (for floor_rel).
    pub f_norm: Vec<f64>,
}

/// Every series of the GDU check.
pub struct GduSeries {
    pub k: usize,
    /// Free-phase iterations actually run (T, or the extended T).
    pub t_run: i64,
    /// s_{T−K} … s_T.
    pub traj: Vec<State>,
    /// r_∞ at s_{T−K}.
    pub residual_tk: f64,
    pub bptt_theta: Vec<Vec<Tensor>>,
    pub bptt_s: Vec<State>,
    pub bptt_j: Vec<State>,
    pub plus: EpSeries,
    pub minus: EpSeries,
    /// f(s⁰_K) − f(s^0): the drift of the free phase over K further iterations.
    pub drift: Vec<Tensor>,
    pub f0_norm: Vec<f64>,
}

/// Runs the free phase of the check: exactly T (replay), or T then until r_∞ ≤ stat_tol, then K more
/// (theorem mode with `extend_free`). Returns the last K + 1 states and the iterations run.
pub fn free_phase(m: &Model, p: &[Tensor], batch: &Batch, init: State, o: &GduOptions) -> (Vec<State>, i64) {
    if o.theorem && o.extend_free {
        let a = relax(m, p, batch, &init, 0.0, &RelaxOptions::fixed(o.t_free));
        // Extend until the state itself is stationary: its residual r_∞ = max|step(s) − s| ≤ stat_tol.
        let (s, ext, _, _) = crate::relax::relax_until_stationary(m, p, batch, &a.state, 0.0, o.stat_tol, (o.max_iter - o.t_free - o.k).max(0));
        let n = a.iters + ext;
        let last = relax(m, p, batch, &s, 0.0, &RelaxOptions { iters: o.k, record: true, ..Default::default() });
        (last.traj.unwrap(), n + last.iters)
    } else {
        let skip = relax(m, p, batch, &init, 0.0, &RelaxOptions::fixed(o.t_free - o.k));
        let last = relax(m, p, batch, &skip.state, 0.0, &RelaxOptions { iters: o.k, record: true, ..Default::default() });
        (last.traj.unwrap(), skip.iters + last.iters)
    }
}

/// EP series of one sign from s_T: EP_θ[t] = −(f(s_{t+1}) − f(s_t))/β_signed, EP_s[t] = (s_{t+1} − s_t)/β_signed.
pub fn ep_series(m: &Model, p: &[Tensor], batch: &Batch, s_t: &State, beta_signed: f64, k: usize) -> EpSeries {
    tch::no_grad(|| {
        let r0 = kinks::regimes(m, p, batch, s_t, 0.0);
        let mut s = s_t.iter().map(|t| t.shallow_clone()).collect::<State>();
        let mut f_prev = m.param_derivative(p, batch, &s);
        let mut f_norm: Vec<f64> = f_prev.iter().map(norm2).collect();
        let mut r_prev = r0.iter().map(|r| r.as_ref().map(|t| t.shallow_clone())).collect::<Vec<_>>();
        let (mut theta, mut neurons, mut kink_changes) = (Vec::new(), Vec::new(), 0);
        for _ in 0..k {
            let next = m.step(p, batch, &s, beta_signed);
            let f = m.param_derivative(p, batch, &next);
            theta.push(f.iter().zip(&f_prev).map(|(a, b)| (a - b) / (-beta_signed)).collect());
            neurons.push(next.iter().zip(&s).map(|(a, b)| (a - b) / beta_signed).collect());
            let r = kinks::regimes(m, p, batch, &next, beta_signed);
            kink_changes += kinks::changes(&r0, &r).iter().sum::<i64>() + kinks::changes(&r_prev, &r).iter().sum::<i64>();
            for (n, fi) in f_norm.iter_mut().zip(&f) {
                *n = n.max(norm2(fi));
            }
            r_prev = r;
            f_prev = f;
            s = next;
        }
        EpSeries { theta, neurons, kink_changes, f_norm }
    })
}

pub fn compute_series(m: &Model, p: &[Tensor], batch: &Batch, init: State, o: &GduOptions) -> GduSeries {
    let k = o.k as usize;
    let (traj, t_run) = free_phase(m, p, batch, init, o);
    let s_t = traj[k].iter().map(|t| t.shallow_clone()).collect::<State>();
    let residual_tk = state_distance(&traj[1], &traj[0]).max().to_kind(Kind::Double).double_value(&[]);
    // One reverse sweep: λ ← ∂L/∂s_T; BPTT_s[t] = −B·λ_{T−t}; BPTT_θ[t] = the VJP of transition T−t−1 → T−t.
    let lambda = m.loss_state_grad(batch, &s_t);
    let sw = reverse_sweep(m, p, batch, &traj, lambda, k, true, false);
    let b = batch.size() as f64;
    let bptt_s: Vec<State> = sw.per_step_lambda.iter().map(|l| l.iter().map(|x| x * (-b)).collect()).collect();
    let bptt_j: Vec<State> = tch::no_grad(|| {
        let drives: Vec<Tensor> = (0..m.layers.len()).map(|j| m.drive(p, batch, &s_t, j, 0.0)).collect();
        bptt_s.iter().map(|st| st.iter().enumerate().map(|(j, x)| m.jacobian_apply(j, batch, &drives[j], x)).collect()).collect()
    });
    let plus = ep_series(m, p, batch, &s_t, o.beta, k);
    let minus = ep_series(m, p, batch, &s_t, -o.beta, k);
    let (drift, f0_norm) = tch::no_grad(|| {
        let cont = relax(m, p, batch, &s_t, 0.0, &RelaxOptions::fixed(o.k));
        let f0 = m.param_derivative(p, batch, &s_t);
        let fk = m.param_derivative(p, batch, &cont.state);
        (fk.iter().zip(&f0).map(|(a, b)| a - b).collect(), f0.iter().map(norm2).collect())
    });
    GduSeries { k, t_run, traj, residual_tk, bptt_theta: sw.per_step_theta, bptt_s, bptt_j, plus, minus, drift, f0_norm }
}

/// The published O(K²) definition (Laborieux `check_gdu`): for K′ = 1…K, backpropagate L through the last K′
/// steps only; consecutive differences of these partial sums are the per-step contributions (t = 0 = last).
pub fn published_series(m: &Model, p: &[Tensor], batch: &Batch, traj: &[State]) -> Vec<Vec<Tensor>> {
    let k = traj.len() - 1;
    let mut partial: Vec<Vec<Tensor>> = vec![p.iter().map(|t| t.zeros_like()).collect()];
    for kp in 1..=k {
        let pl: Vec<Tensor> = p.iter().map(|t| t.detach().set_requires_grad(true)).collect();
        let mut s = detach_state(&traj[k - kp]);
        for _ in 0..kp {
            s = m.step(&pl, batch, &s, 0.0);
        }
        let loss = m.mean_loss(batch, &s);
        let refs: Vec<&Tensor> = pl.iter().collect();
        partial.push(crate::tensor_util::grads_or_zeros(&loss, &refs));
    }
    (0..k).map(|t| partial[t + 1].iter().zip(&partial[t]).map(|(a, b)| a - b).collect()).collect()
}

/// Truncated BPTT by an independent autograd backward through the stored last K steps (identity I1).
fn bptt_trunc_autograd(m: &Model, p: &[Tensor], batch: &Batch, traj: &[State]) -> Vec<Tensor> {
    let pl: Vec<Tensor> = p.iter().map(|t| t.detach().set_requires_grad(true)).collect();
    let mut s = detach_state(&traj[0]);
    for _ in 1..traj.len() {
        s = m.step(&pl, batch, &s, 0.0);
    }
    let refs: Vec<&Tensor> = pl.iter().collect();
    crate::tensor_util::grads_or_zeros(&m.mean_loss(batch, &s), &refs)
}

/// The (K, E) host series of item `i` (a parameter or a layer) of per-step tensors.
fn column(steps: &[Vec<Tensor>], i: usize) -> Series {
    to_series(&steps.iter().map(|st| st[i].shallow_clone()).collect::<Vec<_>>())
}

fn to_series(steps: &[Tensor]) -> Series {
    let data: Vec<f64> = steps.iter().flat_map(to_vec_f64).collect();
    let k = steps.len();
    Series::new(k, data.len() / k.max(1), data)
}

fn avg(a: &[Tensor], b: &[Tensor]) -> Vec<Tensor> {
    a.iter().zip(b).map(|(x, y)| (x + y) * 0.5).collect()
}

fn concat(ts: &[Tensor]) -> Vec<f64> {
    ts.iter().flat_map(to_vec_f64).collect()
}

pub fn run(inst: &Instance, o: &GduOptions) -> CheckReport {
    let (m, p, batch) = (&inst.model, &inst.params[..], &inst.batch);
    let mut rows = Rows::new("gdu", &inst.id, &m.preset, inst.prec.dtype.name());
    let eps = inst.prec.dtype.eps();
    let iota = if inst.prec.dtype == crate::precision::Dtype::F64 { 1e-12 } else { 1e-5 };
    let zeros = m.zeros_state(batch.size(), inst.prec);
    let g = compute_series(m, p, batch, zeros, o);
    // Diverging dynamics: report an error verdict naming the first non-finite state, never NaN series.
    for (k, l) in m.layers.iter().enumerate() {
        if g.traj.iter().any(|s| !crate::tensor_util::all_finite(&s[k])) {
            let v = Verdict::Inconclusive(format!("not converged: the free phase diverged (non-finite state.free.{} within {} iterations)", l.name, g.t_run));
            rows.verdict("phase", "free", &v, json!({ "iters": g.t_run }));
            let rep = rows.finish(vec![format!("**{}**", v.display())], vec![]);
            let note = format!("gdu: the free phase diverged (non-finite state.free.{}); try a smaller init_scale or a contracting activation", l.name);
            return rep.with_digest("the free phase diverged: no series".into()).with_notes(vec![note]);
        }
    }
    let k = g.k;
    let sync = m.schedule.kind == ScheduleKind::Sync;
    let converged = g.residual_tk <= o.stat_tol;
    let sym_theta: Vec<Vec<Tensor>> = (0..k).map(|t| avg(&g.plus.theta[t], &g.minus.theta[t])).collect();
    let sym_neurons: Vec<State> = (0..k).map(|t| avg(&g.plus.neurons[t], &g.minus.neurons[t])).collect();
    let series: [(&str, &Vec<Vec<Tensor>>, &Vec<State>, f64, i64); 3] = [
        ("ep_plus", &g.plus.theta, &g.plus.neurons, 1.0, g.plus.kink_changes),
        ("ep_minus", &g.minus.theta, &g.minus.neurons, 1.0, g.minus.kink_changes),
        ("ep_sym", &sym_theta, &sym_neurons, 2.0, g.plus.kink_changes + g.minus.kink_changes),
    ];
    let mut summary = vec![
        format!(
            "GDU, {} mode: β = {}, K = {}, free iterations run = {} (r_∞ at T−K = {:.3e}, stat_tol = {:.1e}), schedule {}",
            if o.theorem { "theorem" } else { "replay" },
            o.beta,
            k,
            g.t_run,
            g.residual_tk,
            o.stat_tol,
            m.schedule.key()
        ),
        String::new(),
        "| series | scope | name | rel_l2 | lab_rmse | sign_err_sig | threshold (rel_l2) | verdict |".into(),
        "|---|---|---|---|---|---|---|---|".into(),
    ];
    // References converted to host series once, shared by the three EP series.
    let bptt_ref: Vec<Series> = (0..p.len()).map(|i| column(&g.bptt_theta, i)).collect();
    let bptt_j_ref: Vec<Series> = (0..m.layers.len()).map(|j| column(&g.bptt_j, j)).collect();
    let bptt_raw: Vec<Series> = (0..m.layers.len()).map(|j| column(&g.bptt_s, j)).collect();
    let f_norm_max: Vec<f64> = (0..p.len()).map(|i| g.plus.f_norm[i].max(g.minus.f_norm[i]).max(g.f0_norm[i])).collect();
    for (sname, theta, neurons, pw, kinks) in series {
        let thr = o.bias_const * o.beta.powf(pw);
        let thr_lab = o.lab_const * o.beta.powf(pw);
        let tau = o.sign_floor.unwrap_or((1e-3f64).max(10.0 * o.bias_const * o.beta.powf(pw)));
        let precondition = |floor_rel: f64| -> Option<Verdict> {
            if !o.theorem {
                Some(Verdict::Info)
            } else if !sync {
                Some(Verdict::Inconclusive("schedule not sync".into()))
            } else if !converged {
                Some(Verdict::Inconclusive("not converged".into()))
            } else if kinks > 0 {
                Some(Verdict::Inconclusive("kink crossing".into()))
            } else if 10.0 * floor_rel > thr {
                Some(Verdict::Inconclusive("round-off floor".into()))
            } else {
                None
            }
        };
        // Parameter tensors.
        for (i, spec) in m.params.iter().enumerate() {
            let a = column(theta, i);
            let r = &bptt_ref[i];
            let rn = mx::norm(&r.data);
            let floor_rel = mx::ratio(eps * f_norm_max[i], o.beta * rn);
            let drift_rel = mx::ratio(norm2(&g.drift[i]), o.beta * rn);
            let v = score(&mut rows, "tensor", &spec.name, sname, "bptt", &a, r, o, thr, thr_lab, tau, floor_rel, drift_rel, precondition(floor_rel), &mut summary);
            let _ = v;
            if spec.shape.len() >= 2 && sname == "ep_sym" {
                let e1 = column(&g.plus.theta, i).total();
                let e2 = column(&g.minus.theta, i).total();
                let mut row = rows.row("tensor", &spec.name, "sym_ratio", mx::sym_ratio(&e1, &e2, &r.total()));
                row.series = Some(sname.into());
                row.series_form = Some("cum".into());
                rows.push(row);
            }
        }
        // Neuron layers, against J·BPTT_s (scored) and raw BPTT_s (info).
        for (j, l) in m.layers.iter().enumerate() {
            let a = column(neurons, j);
            let (rj, raw) = (&bptt_j_ref[j], &bptt_raw[j]);
            let smax = g.traj.iter().map(|s| norm2(&s[j])).fold(0.0, f64::max);
            let floor_rel = mx::ratio(eps * smax, o.beta * mx::norm(&rj.data));
            score(&mut rows, "neuron_layer", &l.name, sname, "bptt_j", &a, rj, o, thr, thr_lab, tau, floor_rel, f64::NAN, precondition(floor_rel), &mut summary);
            for (metric, value) in [("rel_l2", mx::rel_l2(&a.data, &raw.data)), ("cos", mx::cos(&a.data, &raw.data))] {
                let mut row = rows.row("neuron_layer", &l.name, metric, value);
                row.series = Some(sname.into());
                row.reference = Some("bptt_raw".into());
                row.series_form = Some("step".into());
                row.verdict = Some("info".into());
                rows.push(row);
            }
        }
    }
    // Identities I1–I3 (always scored).
    let bptt_total: Vec<Tensor> = (0..p.len()).map(|i| Tensor::stack(&g.bptt_theta.iter().map(|st| st[i].shallow_clone()).collect::<Vec<_>>(), 0).sum_dim_intlist(Some(&[0i64][..]), false, None)).collect();
    let trunc = bptt_trunc_autograd(m, p, batch, &g.traj);
    let s_t = &g.traj[k];
    let start = relax(m, p, batch, s_t, 0.0, &RelaxOptions::fixed(0));
    let len = PhaseLengths { t_free: 0, k_nudge: o.k, tol: None };
    let (ep_plus, _) = ep_one_sided::estimate(m, p, batch, &start, o.beta, len);
    let (ep_minus, _) = ep_one_sided::estimate(m, p, batch, &start, -o.beta, len);
    let (ep_c, _, _) = ep_centered::estimate(m, p, batch, &start, o.beta, len);
    let sum_of = |th: &Vec<Vec<Tensor>>| -> Vec<f64> {
        (0..p.len()).flat_map(|i| to_vec_f64(&Tensor::stack(&th.iter().map(|st| st[i].shallow_clone()).collect::<Vec<_>>(), 0).sum_dim_intlist(Some(&[0i64][..]), false, None))).collect()
    };
    let fmax = f_norm_max.iter().cloned().fold(0.0, f64::max);
    let mut identity = |rows: &mut Rows, id: &str, name: &str, a: Vec<f64>, r: Vec<f64>, ep: bool| {
        let v = mx::rel_linf(&a, &r);
        // The floor is relative to the larger of the two sides, so an all-zero reference gives a finite floor
        // (and 0 when both sides are exactly zero).
        let scale = mx::norm(&r).max(mx::norm(&a));
        let floor_rel = if ep && scale > 0.0 { mx::ratio(eps * fmax, o.beta * scale) } else { 0.0 };
        let thr = iota + 10.0 * k as f64 * floor_rel;
        let verdict = if super::within(v, thr) { Verdict::Pass } else { Verdict::Fail(format!("{id} rel_linf={v:.3e} > {thr:.3e}")) };
        let mut row = rows.row("identity", &format!("{id}:{name}"), "rel_linf", v);
        row.threshold = Some(thr);
        row.verdict = Some(verdict.label().into());
        rows.push(row);
        rows.verdict("identity", &format!("{id}:{name}"), &verdict, json!({ "rel_linf": v, "threshold": thr }));
        summary.push(format!("| identity | {id} | {name} | {v:.3e} (rel_linf) | | | {thr:.1e} | {} |", verdict.display()));
    };
    identity(&mut rows, "I1", "sum(bptt series) = bptt_trunc", concat(&bptt_total), concat(&trunc), false);
    identity(&mut rows, "I2", "sum(ep_plus series) = ep_plus", sum_of(&g.plus.theta), concat(&ep_plus.tensors), true);
    identity(&mut rows, "I3", "sum(ep_minus series) = ep_minus", sum_of(&g.minus.theta), concat(&ep_minus.tensors), true);
    identity(&mut rows, "I4", "sum(ep_sym series) = ep_centered", sum_of(&sym_theta), concat(&ep_c.tensors), true);
    if o.verify_quadratic {
        let q = published_series(m, p, batch, &g.traj);
        let a: Vec<f64> = g.bptt_theta.iter().flat_map(|st| concat(st)).collect();
        let r: Vec<f64> = q.iter().flat_map(|st| concat(st)).collect();
        identity(&mut rows, "Q", "one-sweep = published K+1 re-run", a, r, false);
    }
    // Plotted elements: series rows (BPTT, EP⁺, EP⁻, EP_sym) for the n_elem elements with the largest BPTT
    // signal max_t |BPTT[t, e]| (ties by index), so a figure never shows structural zeros while a signal exists.
    for (i, spec) in m.params.iter().enumerate() {
        let r = &bptt_ref[i];
        let (pl, mi, a) = (column(&g.plus.theta, i), column(&g.minus.theta, i), column(&sym_theta, i));
        let score: Vec<f64> = (0..r.e).map(|e| (0..k).map(|t| r.at(t, e).abs()).fold(0.0, f64::max)).collect();
        for e in largest_elements(&score, o.n_elem) {
            for t in 0..k {
                rows.series_row("bptt", "param", &spec.name, e as i64, t as i64, r.at(t, e));
                rows.series_row("ep_plus", "param", &spec.name, e as i64, t as i64, pl.at(t, e));
                rows.series_row("ep_minus", "param", &spec.name, e as i64, t as i64, mi.at(t, e));
                rows.series_row("ep_sym", "param", &spec.name, e as i64, t as i64, a.at(t, e));
            }
        }
    }
    for (j, l) in m.layers.iter().enumerate() {
        let (rj, raw) = (&bptt_j_ref[j], &bptt_raw[j]);
        let (pl, mi, a) = (column(&g.plus.neurons, j), column(&g.minus.neurons, j), column(&sym_neurons, j));
        let score: Vec<f64> = (0..rj.e).map(|e| (0..k).map(|t| rj.at(t, e).abs()).fold(0.0, f64::max)).collect();
        for e in largest_elements(&score, o.n_elem) {
            for t in 0..k {
                rows.series_row("bptt_j", "neuron", &l.name, e as i64, t as i64, rj.at(t, e));
                rows.series_row("bptt_raw", "neuron", &l.name, e as i64, t as i64, raw.at(t, e));
                rows.series_row("ep_plus", "neuron", &l.name, e as i64, t as i64, pl.at(t, e));
                rows.series_row("ep_minus", "neuron", &l.name, e as i64, t as i64, mi.at(t, e));
                rows.series_row("ep_sym", "neuron", &l.name, e as i64, t as i64, a.at(t, e));
            }
        }
    }
    let mut r = rows.row("check", "gdu", "t_free_run", g.t_run as f64);
    r.phase = Some("free".into());
    rows.push(r);
    let mut r = rows.row("check", "gdu", "residual_at_T_minus_K", g.residual_tk);
    r.phase = Some("free".into());
    r.threshold = Some(o.stat_tol);
    rows.push(r);
    // Tensors for --dump under canonical names.
    // The free iterations actually run (theorem mode extends T): `compare` reads this back as t_free.
    let mut dump = vec![("gdu.t_free_run".to_string(), Tensor::from(g.t_run))];
    let stack_p = |th: &Vec<Vec<Tensor>>, i: usize| Tensor::stack(&th.iter().map(|st| st[i].shallow_clone()).collect::<Vec<_>>(), 0);
    let stack_s = |ss: &Vec<State>, j: usize| Tensor::stack(&ss.iter().map(|st| st[j].shallow_clone()).collect::<Vec<_>>(), 0);
    for (i, spec) in m.params.iter().enumerate() {
        // EP series and estimates carry their β (conventions §12.1), so a dump reads back whatever β the run had.
        let b = o.beta;
        dump.push((format!("gdu.bptt.{}", spec.name), stack_p(&g.bptt_theta, i)));
        dump.push((format!("gdu.ep_plus@{b}.{}", spec.name), stack_p(&g.plus.theta, i)));
        dump.push((format!("gdu.ep_minus@{b}.{}", spec.name), stack_p(&g.minus.theta, i)));
        dump.push((format!("gdu.ep_sym@{b}.{}", spec.name), stack_p(&sym_theta, i)));
        dump.push((format!("grad.bptt_trunc.{}", spec.name), trunc[i].shallow_clone()));
        dump.push((format!("grad.ep_plus@{b}.{}", spec.name), ep_plus.tensors[i].shallow_clone()));
        dump.push((format!("grad.ep_minus@{b}.{}", spec.name), ep_minus.tensors[i].shallow_clone()));
        dump.push((format!("grad.ep_centered@{b}.{}", spec.name), ep_c.tensors[i].shallow_clone()));
    }
    for (j, l) in m.layers.iter().enumerate() {
        let b = o.beta;
        dump.push((format!("gdu.bptt.neurons.{}", l.name), stack_s(&g.bptt_s, j)));
        dump.push((format!("gdu.bptt_j.neurons.{}", l.name), stack_s(&g.bptt_j, j)));
        dump.push((format!("gdu.ep_plus@{b}.neurons.{}", l.name), stack_s(&g.plus.neurons, j)));
        dump.push((format!("gdu.ep_minus@{b}.neurons.{}", l.name), stack_s(&g.minus.neurons, j)));
        dump.push((format!("gdu.ep_sym@{b}.neurons.{}", l.name), stack_s(&sym_neurons, j)));
        dump.push((format!("state.free.{}", l.name), g.traj[k][j].shallow_clone()));
        // The last K + 1 free states s_{T−K} … s_T: a window, not the canonical trajectory (whose index 0 is the
        // phase's initial state).
        dump.push((format!("traj_window.free.{}", l.name), stack_s(&g.traj, j)));
    }
    // The digest: the worst per-step rel_l2 of each series against its reference, and what the mode means.
    let mut worst: std::collections::BTreeMap<String, (f64, String)> = Default::default();
    for r in rows.metrics.iter().filter(|r| r.metric == "rel_l2" && r.t.is_none() && matches!(r.reference.as_deref(), Some("bptt") | Some("bptt_j"))) {
        let e = worst.entry(r.series.clone().unwrap_or_default()).or_insert((f64::NEG_INFINITY, String::new()));
        let v = if r.value.is_nan() { f64::INFINITY } else { r.value };
        if v > e.0 {
            *e = (v, r.name.clone());
        }
    }
    let series_txt = ["ep_sym", "ep_plus", "ep_minus"]
        .iter()
        .filter_map(|s| worst.get(*s).map(|(v, n)| format!("{s} {} ({n})", super::num(*v))))
        .collect::<Vec<_>>()
        .join(", ");
    let mut notes = vec![];
    if !converged && o.theorem {
        notes.push(format!(
            "gdu: the free phase is not converged: r_∞ at T−K = {} > stat_tol {} after {} iterations; raise checks.gdu.max_iter or --T",
            super::num(g.residual_tk),
            super::num(o.stat_tol),
            g.t_run
        ));
    }
    let rep = rows.finish(summary, dump);
    let digest = if o.theorem {
        rep.digest.clone()
    } else {
        format!(
            "replay mode scores nothing (identities only): worst rel_l2 vs BPTT {series_txt}; r_∞ at T−K = {}; run --mode theorem for a verdict",
            super::num(g.residual_tk)
        )
    };
    rep.with_digest(digest).with_notes(notes)
}

/// Metrics of one (series, scope) pair and its verdict.
#[allow(clippy::too_many_arguments)]
fn score(
    rows: &mut Rows,
    scope: &str,
    name: &str,
    sname: &str,
    reference: &str,
    a: &Series,
    r: &Series,
    o: &GduOptions,
    thr: f64,
    thr_lab: f64,
    tau: f64,
    floor_rel: f64,
    drift_rel: f64,
    precondition: Option<Verdict>,
    summary: &mut Vec<String>,
) -> Verdict {
    let (lab, lab_std, guard, both_zero) = mx::lab_rmse(a, r);
    let (ern_m, ern_s) = mx::ern_rel(a, r);
    let rel = mx::rel_l2(&a.data, &r.data);
    let sig = mx::sign_err_sig(&a.data, &r.data, tau);
    let scored_param = scope == "tensor";
    let verdict = precondition.unwrap_or_else(|| {
        let mut fails = vec![];
        if !super::within(rel, thr) {
            fails.push(format!("rel_l2={rel:.3e} > {thr:.3e}"));
        }
        if !super::within(lab, thr_lab) {
            fails.push(format!("lab_rmse={lab:.3e} > {thr_lab:.3e}"));
        }
        if scored_param && !(sig.is_nan() || super::within(sig, o.sign_err_max)) {
            fails.push(format!("sign_err_sig={sig:.3e} > {}", o.sign_err_max));
        }
        if fails.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail(fails.join("; "))
        }
    });
    let mut push = |metric: &str, value: f64, form: &str, threshold: Option<f64>, deciding: bool| {
        let mut row = rows.row(scope, name, metric, value);
        row.series = Some(sname.into());
        row.reference = Some(reference.into());
        row.series_form = Some(form.into());
        row.beta = Some(o.beta);
        row.estimator = Some(if sname == "ep_sym" { "ep_centered".into() } else { sname.into() });
        row.threshold = threshold;
        if deciding {
            row.verdict = Some(verdict.label().into());
        }
        rows.push(row);
    };
    push("rel_l2", rel, "step", Some(thr), true);
    push("lab_rmse", lab, "step", Some(thr_lab), false);
    push("lab_rmse_std", lab_std, "step", None, false);
    push("lab_rmse_guard_frac", guard, "step", None, false);
    push("both_zero_elems", both_zero as f64, "step", None, false);
    push("sign_err", mx::sign_err(&a.data, &r.data), "step", None, false);
    if !sig.is_nan() {
        push("sign_err_sig", sig, "step", scored_param.then_some(o.sign_err_max), false);
    }
    push("ern_rel_mean", ern_m, "step", None, false);
    push("ern_rel_std", ern_s, "step", None, false);
    push("cos", mx::cos(&a.data, &r.data), "step", None, false);
    push("floor_rel", floor_rel, "step", None, false);
    if drift_rel.is_finite() {
        push("drift_rel", drift_rel, "step", None, false);
    }
    if scope == "tensor" {
        let (ac, rc) = (a.cumsum(), r.cumsum());
        let (em, es) = mx::ern_rel(&ac, &rc);
        let (same, zero) = mx::sign_agreement(&a.total(), &r.total());
        push("ern_rel_mean", em, "cum", None, false);
        push("ern_rel_std", es, "cum", None, false);
        push("same_sign_frac", same, "cum", None, false);
        push("both_zero_frac", zero, "cum", None, false);
    }
    for t in 0..a.k {
        let v = mx::rel_l2(a.step(t), r.step(t));
        if v.is_finite() {
            let mut row = rows.row(scope, name, "rel_l2", v);
            row.series = Some(sname.into());
            row.reference = Some(reference.into());
            row.series_form = Some("step".into());
            row.t = Some(t as i64);
            rows.push(row);
        }
    }
    rows.verdict(
        scope,
        &format!("{sname}:{name}"),
        &verdict,
        json!({ "series": sname, "reference": reference, "rel_l2": rel, "threshold": thr, "lab_rmse": lab, "sign_err_sig": sig, "floor_rel": floor_rel }),
    );
    summary.push(format!(
        "| {sname} | {scope} | {name} | {rel:.3e} | {lab:.3e} | {} | {thr:.1e} | {} |",
        if sig.is_nan() { "–".to_string() } else { format!("{sig:.3}") },
        verdict.display()
    ));
    verdict
}
