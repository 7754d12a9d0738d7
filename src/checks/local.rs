//! `local` (checks §6): the local (Hebbian) parameter derivative of every term equals autograd of Φ̄, per
//! parameter tensor and test state (random states, s^0, s^{±β}, and complex states when the model is
//! holomorphic-admissible); the EP estimates assembled from either path agree; the conjugation recipe of the
//! complex autograd path returns z ↦ z² at 1 + 2i as 2 + 4i exactly. Generic over the model's terms: the
//! coupling kind of a parameter is the `kind()` of the term that owns it.
use super::metrics as mx;
use super::{CheckReport, Rows, Verdict};
use crate::config::RunConfig;
use crate::instance::Instance;
use crate::model::{Batch, Model, State};
use crate::relax::{relax, RelaxOptions};
use crate::tensor_util::{is_complex, to_vec_f64};
use serde_json::json;
use tch::{Kind, Tensor};

#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// rel_linf threshold (`checks.local.tol`).
    pub tol: f64,
    pub n_rand: usize,
    /// Also test complex states when the model is holomorphic-admissible.
    pub complex: bool,
    pub beta: f64,
    pub t_free: i64,
    pub k_nudge: i64,
    pub seed: u64,
}

impl LocalOptions {
    pub fn from_config(cfg: &RunConfig) -> Self {
        LocalOptions {
            tol: cfg.local_tol(),
            n_rand: cfg.checks.local.n_rand,
            complex: cfg.checks.local.complex,
            beta: cfg.beta,
            t_free: cfg.t_free,
            k_nudge: cfg.k_nudge,
            seed: cfg.seed,
        }
    }
}

/// The coupling kind of every parameter: the `kind()` of the (first) term that owns it.
pub fn coupling_kinds(m: &Model) -> Vec<String> {
    let mut kinds = vec![String::from("unowned"); m.params.len()];
    for t in m.terms.iter().rev() {
        for &pi in t.params() {
            kinds[pi] = t.kind().to_string();
        }
    }
    kinds
}

/// A batch with B ≥ 2 (checks §6: a sum/mean mix-up must not pass): the instance's batch, or, for B = 1, the
/// example repeated twice.
pub fn probe_batch(inst: &Instance) -> Batch {
    let b = &inst.batch;
    if b.size() >= 2 {
        return Batch { x: b.x.iter().map(|t| t.shallow_clone()).collect(), y: b.y.shallow_clone(), y_onehot: b.y_onehot.shallow_clone() };
    }
    let rep = |t: &Tensor| crate::tensor_util::repeat_batch(t, 2);
    Batch { x: b.x.iter().map(rep).collect(), y: rep(&b.y), y_onehot: rep(&b.y_onehot) }
}

/// Random test states: s_k = G_k(u_k) with u_k ~ N(0, 1) elementwise (real), or u_k = N(0,1) + i·N(0, 0.1²)
/// (complex). Drawn from libtorch's generator seeded with `seed`.
pub fn random_states(m: &Model, batch: &Batch, kind: Kind, device: tch::Device, n: usize, seed: u64, complex: bool) -> Vec<State> {
    let b = batch.size();
    let _rng = crate::tensor_util::rng_lock();
    tch::manual_seed(seed as i64);
    (0..n)
        .map(|_| {
            m.layers
                .iter()
                .enumerate()
                .map(|(k, l)| {
                    let mut shape = vec![b];
                    shape.extend(&l.shape);
                    let re = Tensor::randn(&shape[..], (kind, device));
                    let u = if complex { Tensor::complex(&re, &(Tensor::randn(&shape[..], (kind, device)) * 0.1)) } else { re };
                    tch::no_grad(|| m.activate(k, batch, &u))
                })
                .collect()
        })
        .collect()
}

/// The phase states s^0 (T iterations from zeros), s^{+β} and s^{−β} (K iterations from s^0).
pub fn phase_states(m: &Model, p: &[Tensor], batch: &Batch, prec: crate::precision::Precision, beta: f64, t_free: i64, k_nudge: i64) -> Vec<(String, f64, State)> {
    let zeros = m.zeros_state(batch.size(), prec);
    let free = relax(m, p, batch, &zeros, 0.0, &RelaxOptions { iters: t_free, no_trace: true, ..Default::default() }).state;
    let plus = relax(m, p, batch, &free, beta, &RelaxOptions { iters: k_nudge, no_trace: true, ..Default::default() }).state;
    let minus = relax(m, p, batch, &free, -beta, &RelaxOptions { iters: k_nudge, no_trace: true, ..Default::default() }).state;
    vec![("free".into(), 0.0, free), ("plus".into(), beta, plus), ("minus".into(), -beta, minus)]
}

/// Host values of a real or complex tensor (complex as interleaved re, im).
pub fn host(t: &Tensor) -> Vec<f64> {
    if is_complex(t.kind()) {
        to_vec_f64(&t.detach().resolve_conj().view_as_real())
    } else {
        to_vec_f64(t)
    }
}

/// z ↦ z² at 1 + 2i through the conjugation recipe; must be 2 + 4i exactly. Returns (re, im).
pub fn conjugation_unit() -> (f64, f64) {
    let z = Tensor::complex(&Tensor::from_slice(&[1.0f64]), &Tensor::from_slice(&[2.0f64])).set_requires_grad(true);
    let phi = (&z * &z).sum(None::<Kind>);
    let g = crate::tensor_util::holomorphic_grads(&phi, &[&z]);
    let v = host(&g[0]);
    (v[0], v[1])
}

pub fn run(inst: &Instance, o: &LocalOptions) -> CheckReport {
    let (m, p) = (&inst.model, &inst.params[..]);
    let mut rows = Rows::new("local", &inst.id, &m.preset, inst.prec.dtype.name());
    if crate::model::terms::scripted::is_scripted(m) {
        // Nothing to compare: the local forms of a scripted energy ARE autograd of its Φ (no term decomposition).
        let reason = "does not apply: a scripted energy has no term decomposition, so its parameter gradient is autograd of Φ on both sides of the identity (nothing independent to compare); audit and gdu check it instead";
        rows.verdict("model", "scripted", &Verdict::Info, serde_json::json!({ "reason": reason }));
        return rows.finish(vec![format!("local {reason}.")], vec![]).with_digest(reason.into());
    }
    let batch = probe_batch(inst);
    let kinds = coupling_kinds(m);
    let kind = inst.prec.dtype.kind();
    let eps = inst.prec.dtype.eps();
    // Test states: random, the three phase states, and complex ones when admissible.
    let mut states: Vec<(String, f64, State)> = random_states(m, &batch, kind, inst.prec.device, o.n_rand, o.seed, false)
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("rand{i}"), 0.0, s))
        .collect();
    let phases = phase_states(m, p, &batch, inst.prec, o.beta, o.t_free, o.k_nudge);
    let phase_f: Vec<(Vec<Tensor>, Vec<Tensor>)> = phases.iter().map(|(_, _, s)| (tch::no_grad(|| m.param_derivative(p, &batch, s)), m.param_derivative_autograd(p, &batch, s))).collect();
    states.extend(phases.iter().map(|(n, b, s)| (n.clone(), *b, s.iter().map(|t| t.shallow_clone()).collect())));
    let admissible = crate::estimators::ep_holomorphic::preflight(m).is_ok();
    if o.complex && admissible {
        for (i, s) in random_states(m, &batch, kind, inst.prec.device, 2, o.seed.wrapping_add(1), true).into_iter().enumerate() {
            states.push((format!("complex{i}"), 0.0, s));
        }
    }
    let mut worst: Vec<(f64, String)> = vec![(0.0, String::new()); p.len()];
    for (label, beta, s) in &states {
        let local = tch::no_grad(|| m.param_derivative(p, &batch, s));
        let auto = m.param_derivative_autograd(p, &batch, s);
        for (i, spec) in m.params.iter().enumerate() {
            let (a, r) = (host(&local[i]), host(&auto[i]));
            let rl = if a.iter().chain(&r).all(|v| v.is_finite()) { mx::rel_linf(&a, &r) } else { f64::INFINITY };
            for (metric, value) in [("rel_linf", rl), ("rel_l2", mx::rel_l2(&a, &r))] {
                let mut row = rows.row("tensor", &spec.name, metric, value);
                row.phase = Some(label.clone());
                row.beta = Some(*beta);
                row.reference = Some("autograd".into());
                if metric == "rel_linf" {
                    row.threshold = Some(o.tol);
                }
                rows.push(row);
            }
            if !(rl <= worst[i].0) {
                worst[i] = (rl, label.clone());
            }
        }
    }
    let mut summary = vec![
        format!("Local forms vs autograd of Φ̄ at {} test states (B = {}), threshold rel_linf ≤ {:.1e}", states.len(), batch.size(), o.tol),
        String::new(),
        "| tensor | coupling kind | max rel_linf | at state | verdict |".into(),
        "|---|---|---|---|---|".into(),
    ];
    for (i, spec) in m.params.iter().enumerate() {
        let (v, at) = &worst[i];
        let verdict = if super::within(*v, o.tol) { Verdict::Pass } else { Verdict::Fail(format!("rel_linf={v:.3e} > {:.3e} at state {at}", o.tol)) };
        let mut row = rows.row("tensor", &spec.name, "rel_linf_max", *v);
        row.threshold = Some(o.tol);
        row.verdict = Some(verdict.label().into());
        row.reference = Some("autograd".into());
        rows.push(row);
        rows.verdict("tensor", &spec.name, &verdict, json!({ "kind": kinds[i], "rel_linf": v, "state": at, "threshold": o.tol }));
        summary.push(format!("| {} | {} | {v:.3e} | {at} | {} |", spec.name, kinds[i], verdict.display()));
    }
    // Assembled estimates from the two paths, at the same phase states.
    let assemble = |f: &[&Vec<Tensor>; 3]| -> Vec<(&'static str, Vec<f64>)> {
        let (f0, fp, fm) = (f[0], f[1], f[2]);
        let two = |a: &Vec<Tensor>, b1: f64, c: &Vec<Tensor>, b2: f64| crate::estimators::two_point(a, b1, c, b2).iter().flat_map(host).collect::<Vec<f64>>();
        vec![("ep_plus", two(f0, 0.0, fp, o.beta)), ("ep_minus", two(f0, 0.0, fm, -o.beta)), ("ep_centered", two(fm, -o.beta, fp, o.beta))]
    };
    let loc = assemble(&[&phase_f[0].0, &phase_f[1].0, &phase_f[2].0]);
    let aut = assemble(&[&phase_f[0].1, &phase_f[1].1, &phase_f[2].1]);
    let fmax = phase_f.iter().flat_map(|(f, _)| f.iter().map(crate::tensor_util::norm2)).fold(0.0, f64::max);
    summary.push(String::new());
    summary.push("| assembled estimate | rel_linf | threshold (tol + 10·floor_rel) | verdict |".into());
    summary.push("|---|---|---|---|".into());
    for ((name, a), (_, r)) in loc.iter().zip(&aut) {
        let floor_rel = mx::ratio(eps * fmax, o.beta * mx::norm(r));
        // An exactly-zero autograd estimate has no relative scale: judge the local one absolutely against the
        // round-off floor of an EP difference quotient, 10·ε·max‖f‖/β (0 = 0 passes).
        let (v, thr) = if mx::norm(r) == 0.0 { (mx::max_abs(a, r), 10.0 * eps * fmax / o.beta) } else { (mx::rel_linf(a, r), o.tol + 10.0 * floor_rel) };
        let verdict = if super::within(v, thr) { Verdict::Pass } else { Verdict::Fail(format!("rel_linf={v:.3e} > {thr:.3e}")) };
        let mut row = rows.row("estimate", name, "rel_linf", v);
        row.estimator = Some(name.to_string());
        row.beta = Some(o.beta);
        row.reference = Some("autograd".into());
        row.threshold = Some(thr);
        row.verdict = Some(verdict.label().into());
        rows.push(row);
        let mut row = rows.row("estimate", name, "floor_rel", floor_rel);
        row.estimator = Some(name.to_string());
        rows.push(row);
        rows.verdict("estimate", name, &verdict, json!({ "rel_linf": v, "threshold": thr, "floor_rel": floor_rel }));
        summary.push(format!("| {name} | {v:.3e} | {thr:.3e} | {} |", verdict.display()));
    }
    // The conjugation unit test.
    let (re, im) = conjugation_unit();
    let err = ((re - 2.0).powi(2) + (im - 4.0).powi(2)).sqrt();
    let verdict = if err == 0.0 { Verdict::Pass } else { Verdict::Fail(format!("z² at 1+2i gave {re}+{im}i, expected 2+4i")) };
    let mut row = rows.row("identity", "conjugation", "abs_err", err);
    row.threshold = Some(0.0);
    row.verdict = Some(verdict.label().into());
    rows.push(row);
    rows.verdict("identity", "conjugation", &verdict, json!({ "re": re, "im": im }));
    summary.push(String::new());
    summary.push(format!(
        "Conjugation unit test (z ↦ z² at 1 + 2i): {re} + {im}i — {}. Complex states: {}.",
        verdict.display(),
        if !o.complex { "off" } else if admissible { "tested" } else { "not tested (the model is not holomorphic-admissible)" }
    ));
    rows.finish(summary, vec![])
}
