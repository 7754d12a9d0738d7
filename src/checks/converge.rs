//! `converge` (checks §2): did every phase reach a fixed point? Per example: residual trace, final residual
//! (one more iteration), iterations to tol, drift/oscillation ratio, empirical and power-iteration
//! contraction rates; per phase: the total energy 𝓕 along the iterations and, for the sync schedule at β = 0,
//! the monotone parity-split chains.
use super::{metrics::median, CheckReport, Rows, Verdict};
use crate::instance::Instance;
use crate::model::schedule::ScheduleKind;
use crate::model::State;
use crate::relax::{relax, state_distance, Phase, RelaxOptions};
use crate::tensor_util::to_vec_f64;
use serde_json::json;
use tch::{Kind, Tensor};

pub struct ConvergeOptions {
    pub t_free: i64,
    pub k_nudge: i64,
    pub beta: f64,
    pub tol: f64,
    pub power_iters: usize,
    pub require_contraction: bool,
    /// Nudged phases to certify besides `free` (`plus`, `minus`).
    pub phases: Vec<String>,
    pub seed: u64,
}

impl ConvergeOptions {
    /// The options of `checks.converge` and the run's phase lengths, β and seed.
    pub fn from_config(cfg: &crate::config::RunConfig) -> ConvergeOptions {
        let c = &cfg.checks.converge;
        ConvergeOptions {
            t_free: cfg.t_free,
            k_nudge: cfg.k_nudge,
            beta: cfg.beta,
            tol: cfg.converge_tol(),
            power_iters: c.power_iters,
            require_contraction: c.require_contraction,
            phases: c.phases.clone(),
            seed: cfg.seed,
        }
    }
}

/// Per-example results of one phase.
pub struct PhaseCertificate {
    pub name: String,
    pub r_inf: Vec<f64>,
    pub nonconverged: usize,
    pub verdict: Verdict,
}

pub fn run(inst: &Instance, o: &ConvergeOptions) -> CheckReport {
    let mut rows = Rows::new("converge", &inst.id, &inst.model.preset, inst.prec.dtype.name());
    let (m, p, batch) = (&inst.model, &inst.params[..], &inst.batch);
    let zeros = m.zeros_state(batch.size(), inst.prec);
    let free = relax(m, p, batch, &zeros, 0.0, &RelaxOptions { iters: o.t_free, record: true, trace_phi: true, ..Default::default() });
    let mut phases = vec![("free".to_string(), free)];
    for name in &o.phases {
        let beta = if name == "plus" { o.beta } else { -o.beta };
        let start = &phases[0].1.state;
        let ph = relax(m, p, batch, start, beta, &RelaxOptions { iters: o.k_nudge, record: true, trace_phi: true, ..Default::default() });
        phases.push((name.clone(), ph));
    }
    let mut summary = vec![format!("| phase | β | iterations | non-converged | max r_∞ | median r_∞ | ρ̂ (max) | 𝓕 violations | verdict |"), "|---|---|---|---|---|---|---|---|---|".into()];
    for (name, ph) in &phases {
        let c = certify(inst, name, ph, o, &mut rows);
        let last = rows.metrics.iter().rev().find(|r| r.metric == "rho_hat_max" && r.phase.as_deref() == Some(name)).map(|r| r.value);
        let viol = rows.metrics.iter().rev().find(|r| r.metric == "F_violations" && r.phase.as_deref() == Some(name)).map(|r| r.value);
        summary.push(format!(
            "| {name} | {} | {} | {}/{} | {:.3e} | {:.3e} | {} | {} | {} |",
            ph.beta,
            ph.iters,
            c.nonconverged,
            c.r_inf.len(),
            c.r_inf.iter().cloned().fold(0.0, f64::max),
            median(&c.r_inf),
            last.map(|v| format!("{v:.4}")).unwrap_or("–".into()),
            viol.map(|v| format!("{v}")).unwrap_or("not asserted".into()),
            c.verdict.display()
        ));
    }
    let mut dump = Vec::new();
    for (name, ph) in &phases {
        for (k, l) in m.layers.iter().enumerate() {
            dump.push((format!("state.{name}.{}", l.name), ph.state[k].shallow_clone()));
        }
        if let Some(tr) = &ph.traj {
            for (k, l) in m.layers.iter().enumerate() {
                let st: Vec<Tensor> = tr.iter().map(|s| s[k].shallow_clone()).collect();
                dump.push((format!("traj.{name}.{}", l.name), Tensor::stack(&st, 0)));
            }
        }
    }
    // Digest: per phase, r_∞ against tol, ρ̂, and for an unconverged phase what would reach tol.
    let (mut parts, mut notes) = (vec![], vec![]);
    for (name, ph) in &phases {
        let get = |metric: &str| rows.metrics.iter().rev().find(|r| r.metric == metric && r.phase.as_deref() == Some(name.as_str()) && r.example.is_none()).map(|r| r.value);
        let r = get("r_inf_max").unwrap_or(f64::NAN);
        let rho = get("rho_hat_max");
        let osc = rows.metrics.iter().filter(|x| x.metric == "r2_over_r1" && x.phase.as_deref() == Some(name.as_str())).map(|x| x.value).fold(f64::INFINITY, f64::min);
        let ok = super::within(r, o.tol);
        let mut part = format!("{name}: r_∞ {} {} tol {} at T = {}", super::num(r), if ok { "≤" } else { ">" }, super::num(o.tol), ph.iters);
        if let Some(rho) = rho {
            part += &format!(", ρ̂ = {}", super::num(rho));
        }
        if !ok {
            let hint = if !r.is_finite() {
                "diverged (non-finite state): try a smaller init_scale or a contracting activation".to_string()
            } else if osc < 0.1 {
                format!("a 2-cycle (r2/r1 = {}): try --schedule async2 or a smaller init_scale", super::num(osc))
            } else if let Some(rho) = rho.filter(|x| *x > 0.0 && *x < 1.0) {
                let more = ((o.tol / r).ln() / rho.ln()).ceil().max(1.0);
                format!("T ≈ {} would reach it", ph.iters + more as i64)
            } else {
                "not contracting (ρ̂ ≥ 1): try --schedule async2 or a smaller init_scale".to_string()
            };
            part += &format!("; {hint}");
            notes.push(format!("converge: the {name} phase is not converged: r_∞ {} > tol {} after {} iterations; {hint}", super::num(r), super::num(o.tol), ph.iters));
        }
        parts.push(part);
    }
    rows.finish(summary, dump).with_digest(parts.join("; ")).with_notes(notes)
}

/// Replaces NaN by +∞ (a diverged example has an infinite residual, never a NaN row).
fn finite_or_inf(v: f64) -> f64 {
    if v.is_nan() {
        f64::INFINITY
    } else {
        v
    }
}

fn certify(inst: &Instance, name: &str, ph: &Phase, o: &ConvergeOptions, rows: &mut Rows) -> PhaseCertificate {
    let (m, p, batch) = (&inst.model, &inst.params[..], &inst.batch);
    let b = batch.size() as usize;
    let n = ph.iters as usize;
    let traj = ph.traj.as_ref().expect("recorded");
    let s_n = &ph.state;
    let res: Vec<f64> = to_vec_f64(&ph.residuals).into_iter().map(finite_or_inf).collect(); // (n, B)
    let s_next = tch::no_grad(|| m.step(p, batch, s_n, ph.beta));
    let r_inf: Vec<f64> = to_vec_f64(&state_distance(&s_next, s_n)).into_iter().map(finite_or_inf).collect();
    // r_rel per example = ‖s' − s‖ / ‖s'‖ over all layers: per-example float64 sums on the device, one read-back.
    let r_rel: Vec<f64> = {
        let per_ex = |x: &Tensor| x.reshape([b as i64, -1]).square().sum_dim_intlist(Some(&[1i64][..]), false, Kind::Double);
        let (mut d, mut nn) = (Tensor::zeros([b as i64], (Kind::Double, s_n[0].device())), Tensor::zeros([b as i64], (Kind::Double, s_n[0].device())));
        for (a, c) in s_next.iter().zip(s_n) {
            let a = a.to_kind(Kind::Double);
            d += per_ex(&(&a - c.to_kind(Kind::Double)));
            nn += per_ex(&a);
        }
        let v = to_vec_f64(&Tensor::stack(&[d, nn], 0));
        (0..b).map(|ex| finite_or_inf(v[ex].sqrt() / v[b + ex].sqrt().max(1e-300))).collect()
    };
    let finite: Vec<bool> = r_inf.iter().map(|v| v.is_finite()).collect();
    let row = |metric: &str, ex: Option<usize>, value: f64| {
        let mut r = rows.row(if ex.is_some() { "example" } else { "phase" }, name, metric, value);
        r.phase = Some(name.into());
        r.beta = Some(ph.beta);
        r.example = ex.map(|e| e as i64);
        r
    };
    let mut out_rows = Vec::new();
    // Drift vs oscillation and empirical rate, per example.
    let dist_b = |a: &State, c: &State| to_vec_f64(&state_distance(a, c));
    let r2 = if n >= 2 { dist_b(&traj[n], &traj[n - 2]) } else { vec![f64::NAN; b] };
    for ex in 0..b {
        out_rows.push(row("r_inf", Some(ex), r_inf[ex]));
        out_rows.push(row("r_rel", Some(ex), r_rel[ex]));
        let itt = (0..n).find(|&t| res[t * b + ex] <= o.tol).map(|t| (t + 1) as f64);
        if let Some(itt) = itt {
            out_rows.push(row("iters_to_tol", Some(ex), itt));
        }
        if n >= 2 && finite[ex] {
            let r1 = res[(n - 1) * b + ex];
            if r1 > 0.0 {
                out_rows.push(row("r2_over_r1", Some(ex), r2[ex] / r1));
            }
            let mm = 10.min(n - 1);
            let (rn, rnm) = (res[(n - 1) * b + ex], res[(n - 1 - mm) * b + ex]);
            if rnm > 0.0 && rn > 0.0 {
                out_rows.push(row("rho_emp", Some(ex), (rn / rnm).powf(1.0 / mm as f64)));
            }
        }
    }
    // Power-iteration contraction estimate ρ̂ through the step VJP at s_n.
    let mut rho_max = f64::NEG_INFINITY;
    if o.power_iters >= 2 && finite.iter().all(|&f| f) {
        for (ex, rho) in rho_hat(inst, s_n, ph.beta, o.power_iters, o.seed).into_iter().enumerate() {
            rho_max = rho_max.max(rho);
            out_rows.push(row("rho_hat", Some(ex), rho));
        }
        out_rows.push(row("rho_hat_max", None, rho_max));
    }
    // Total energy 𝓕_β along the iterations, and the parity-split chains (sync, β = 0).
    let mut violations = None;
    // 𝓕 needs every σ to be the gradient of a convex ψ (not the holomorphic surrogates, estimators §3.6).
    let energy_defined = inst.model.layers.iter().all(|l| l.activation.has_convex_potential()) && (0..inst.model.layers.len()).all(|k| inst.model.update_map(k).map_or(true, |u| u.has_conjugate_potential()));
    let asserted = ph.beta == 0.0 && inst.model.schedule.kind == ScheduleKind::Sync && finite.iter().all(|&f| f) && energy_defined;
    if asserted {
        let (v, max_inc) = parity_chain_violations(inst, traj);
        violations = Some(v);
        out_rows.push(row("F_violations", None, v as f64));
        out_rows.push(row("F_max_increase", None, max_inc));
    }
    let nonconverged = r_inf.iter().filter(|&&r| !(r <= o.tol)).count();
    let diverged = finite.iter().filter(|&&f| !f).count();
    out_rows.push(row("nonconverged_count", None, nonconverged as f64));
    out_rows.push(row("diverged_count", None, diverged as f64));
    out_rows.push(row("iters", None, n as f64));
    out_rows.push(row("r_inf_max", None, r_inf.iter().cloned().fold(0.0, f64::max)));
    out_rows.push(row("r_inf_median", None, median(&r_inf)));
    for (k, l) in inst.model.layers.iter().enumerate() {
        let d = crate::tensor_util::absmax_per_example(&(&s_next[k] - &s_n[k]));
        let v = to_vec_f64(&d).into_iter().map(finite_or_inf).fold(0.0, f64::max);
        let mut r = row("r_inf_layer", None, v);
        r.scope = "layer".into();
        r.name = l.name.clone();
        out_rows.push(r);
    }
    let verdict = if nonconverged > 0 {
        let extra = if diverged > 0 { format!(", {diverged} diverged (non-finite state)") } else { String::new() };
        Verdict::Fail(format!("not converged: {nonconverged}/{b} examples{extra}"))
    } else if violations.unwrap_or(0) > 0 {
        Verdict::Fail("energy increased".into())
    } else if o.require_contraction && rho_max >= 1.0 {
        Verdict::Fail(format!("not contracting: rho_hat = {rho_max:.4}"))
    } else {
        Verdict::Pass
    };
    for mut r in out_rows {
        if r.metric == "nonconverged_count" {
            r.threshold = Some(0.0);
            r.verdict = Some(verdict.label().into());
        }
        rows.push(r);
    }
    // Residual traces for the figure: one element per example.
    for ex in 0..b {
        for t in 0..n {
            rows.series_row(name, "residual", name, ex as i64, (t + 1) as i64, res[t * b + ex]);
        }
    }
    // Φ_β per example along the phase (t = 0 is the phase's initial state).
    if let Some(phi) = &ph.phi {
        let v = to_vec_f64(phi);
        for t in 0..=n {
            for ex in 0..b {
                rows.series_row(name, "phi", name, ex as i64, t as i64, finite_or_inf(v[t * b + ex]));
            }
        }
    }
    rows.verdict("phase", name, &verdict, json!({ "nonconverged": nonconverged, "diverged": diverged, "tol": o.tol, "iters": n, "beta": ph.beta }));
    PhaseCertificate { name: name.into(), r_inf, nonconverged, verdict }
}

fn per_example_norm(v: &[Tensor]) -> Vec<f64> {
    let b = v[0].size()[0];
    let mut sq: Option<Tensor> = None;
    for t in v {
        let s = t.reshape([b, -1]).square().sum_dim_intlist(Some(&[1i64][..]), false, Some(Kind::Double));
        sq = Some(match sq {
            Some(a) => a + s,
            None => s,
        });
    }
    to_vec_f64(&sq.unwrap().sqrt())
}

/// Counts increases of the parity-split sequences P₀ ≥ Q₁ ≥ P₂ ≥ … and Q₀ ≥ P₁ ≥ Q₂ ≥ … (checks §2 step 7),
/// per example, larger than 1e-12·max(1, |𝓕|) (f64) or 1e-5·max(1, |𝓕|) (f32). Returns (count, max increase).
fn parity_chain_violations(inst: &Instance, traj: &[State]) -> (usize, f64) {
    let (m, p, batch) = (&inst.model, &inst.params[..], &inst.batch);
    let rel = if inst.prec.dtype == crate::precision::Dtype::F64 { 1e-12 } else { 1e-5 };
    // Mixed state: odd-numbered layers (L1, L3, …: list positions 0, 2, …) from `odd`, the rest from `even`.
    let mix = |odd: &State, even: &State| -> State {
        (0..odd.len()).map(|k| if k % 2 == 0 { odd[k].shallow_clone() } else { even[k].shallow_clone() }).collect()
    };
    let energy = |s: &State| to_vec_f64(&tch::no_grad(|| m.total_energy(p, batch, s, 0.0)));
    let n = traj.len() - 1;
    let pq: Vec<(Vec<f64>, Vec<f64>)> =
        (0..n).map(|t| (energy(&mix(&traj[t + 1], &traj[t])), energy(&mix(&traj[t], &traj[t + 1])))).collect();
    let (mut count, mut max_inc) = (0usize, 0.0f64);
    for start_p in [true, false] {
        // chain: P0, Q1, P2, … (start_p) or Q0, P1, Q2, …
        let seq: Vec<&Vec<f64>> = (0..n).map(|t| if (t % 2 == 0) == start_p { &pq[t].0 } else { &pq[t].1 }).collect();
        for w in seq.windows(2) {
            for (a, c) in w[0].iter().zip(w[1].iter()) {
                if !(a.is_finite() && c.is_finite()) {
                    continue;
                }
                let inc = c - a;
                if inc > rel * a.abs().max(1.0) {
                    count += 1;
                    max_inc = max_inc.max(inc);
                }
            }
        }
    }
    (count, max_inc)
}

/// ρ̂ per example (checks §2 step 6): power iteration of the step VJP at `s` and strength β, renormalised
/// every iteration; ρ̂ = exp of the mean of the last two log growth factors (robust to ±λ pairs).
pub fn rho_hat(inst: &Instance, s: &[Tensor], beta: f64, iters: usize, seed: u64) -> Vec<f64> {
    let (m, p, batch) = (&inst.model, &inst.params[..], &inst.batch);
    let mut v: State = crate::tensor_util::seeded(seed as i64, || s.iter().map(|t| t.randn_like()).collect());
    let mut logs: Vec<Vec<f64>> = Vec::new();
    for _ in 0..iters.max(2) {
        let (nv, _) = tch::no_grad(|| m.step_vjp(p, batch, s, &v, beta));
        let norm_b = per_example_norm(&nv);
        let norm_prev = per_example_norm(&v);
        logs.push(norm_b.iter().zip(&norm_prev).map(|(a, c)| if *c > 0.0 && *a > 0.0 { (a / c).ln() } else { f64::NEG_INFINITY }).collect());
        let scale = Tensor::from_slice(&norm_b.iter().map(|x| if *x > 0.0 { 1.0 / x } else { 0.0 }).collect::<Vec<f64>>())
            .to_kind(s[0].kind())
            .to_device(s[0].device());
        v = nv
            .iter()
            .map(|t| {
                let mut sh = vec![t.size()[0]];
                sh.resize(t.dim(), 1);
                t * scale.reshape(&sh[..])
            })
            .collect();
    }
    let l = logs.len();
    (0..logs[0].len()).map(|ex| ((logs[l - 2][ex] + logs[l - 1][ex]) / 2.0).exp()).collect()
}
