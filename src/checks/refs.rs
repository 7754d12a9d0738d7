//! `refs` (checks §5): the exact references agree with each other (`bptt` over T, `bptt_trunc` over K,
//! `implicit`) and with central finite differences along random directions.
use super::metrics as mx;
use super::{CheckReport, Rows, Verdict};
use crate::estimators::fd::{self, FdMode};
use crate::estimators::{bptt, implicit};
use crate::instance::Instance;
use crate::tensor_util::{norm2, to_vec_f64};
use crate::Result;
use serde_json::json;
use tch::Tensor;

pub struct RefsOptions {
    pub t_free: i64,
    pub k: i64,
    pub fd_tol: f64,
    pub n_dir: usize,
    pub h: f64,
    pub h_select: bool,
    pub mode_converged: bool,
    pub seed: u64,
}

impl RefsOptions {
    /// The options of `checks.refs` and the run's phase lengths.
    pub fn from_config(cfg: &crate::config::RunConfig) -> RefsOptions {
        let r = &cfg.checks.refs;
        RefsOptions { t_free: cfg.t_free, k: cfg.k_nudge, fd_tol: r.fd_tol, n_dir: r.n_dir, h: r.h, h_select: r.h_select, mode_converged: r.fd_mode == "converged", seed: cfg.seed }
    }
}

/// Scopes `tensor`, `layer_group` and `total`: (scope, name, flattened values) for a gradient.
pub fn scopes(inst: &Instance, g: &[Tensor]) -> Vec<(String, String, Vec<f64>)> {
    let mut out: Vec<(String, String, Vec<f64>)> = inst.model.params.iter().zip(g).map(|(s, t)| ("tensor".into(), s.name.clone(), to_vec_f64(t))).collect();
    let mut groups: Vec<String> = vec![];
    for s in &inst.model.params {
        if !groups.contains(&s.group) {
            groups.push(s.group.clone());
        }
    }
    for gname in groups {
        let v: Vec<f64> = inst.model.params.iter().zip(g).filter(|(s, _)| s.group == gname).flat_map(|(_, t)| to_vec_f64(t)).collect();
        out.push(("layer_group".into(), gname, v));
    }
    out.push(("total".into(), "total".into(), g.iter().flat_map(to_vec_f64).collect()));
    out
}

pub fn run(inst: &Instance, o: &RefsOptions) -> Result<CheckReport> {
    let (m, p, batch) = (&inst.model, &inst.params[..], &inst.batch);
    let mut rows = Rows::new("refs", &inst.id, &m.preset, inst.prec.dtype.name());
    if inst.prec.dtype != crate::precision::Dtype::F64 {
        // Refused before anything runs or is written: finite differences and the f64 identities need float64.
        return Err(crate::Error::Config(format!("refs needs --dtype f64 (finite differences at the f64 floor), got {}", inst.prec.dtype.name())));
    }
    let io = inst.cfg.implicit_options();
    let imp = implicit::implicit(m, p, batch, &io)?;
    let (g_bptt, _) = bptt::full(m, p, batch, o.t_free);
    let (g_trunc, _) = bptt::truncated(m, p, batch, o.t_free, o.k.min(o.t_free))?;
    let rho = super::converge::rho_hat(inst, &imp.star.state, 0.0, 50, o.seed).into_iter().fold(0.0, f64::max);
    let mut summary = vec![
        format!(
            "s*: {} iterations, r_∞ = {:.2e}; adjoint: {} iterations, relative change {:.2e}; ρ̂ = {rho:.4}; predicted tails ρ̂^K/(1−ρ̂) = {:.2e} (K = {}), T·ρ̂^T = {:.2e} (T = {})",
            imp.star.iters,
            imp.star.residual,
            imp.adjoint_iters,
            imp.adjoint_rel_change,
            rho.powi(o.k as i32) / (1.0 - rho),
            o.k,
            o.t_free as f64 * rho.powi(o.t_free as i32),
            o.t_free
        ),
        String::new(),
        "| pair | scope | name | rel_l2 | cos |".into(),
        "|---|---|---|---|---|".into(),
    ];
    for (metric, v) in [("rho_hat", rho), ("star_iters", imp.star.iters as f64), ("adjoint_iters", imp.adjoint_iters as f64), ("adjoint_rel_change", imp.adjoint_rel_change)] {
        rows.push(rows.row("check", "implicit", metric, v));
    }
    let pairs: [(&str, &[Tensor], &str, &[Tensor]); 3] = [
        ("bptt", &g_bptt.tensors, "implicit", &imp.grad.tensors),
        ("bptt_trunc", &g_trunc.tensors, "implicit", &imp.grad.tensors),
        ("bptt_trunc", &g_trunc.tensors, "bptt", &g_bptt.tensors),
    ];
    for (an, a, rn, r) in pairs {
        for ((scope, name, av), (_, _, rv)) in scopes(inst, a).into_iter().zip(scopes(inst, r)) {
            for (metric, value) in [("rel_l2", mx::rel_l2(&av, &rv)), ("cos", mx::cos(&av, &rv))] {
                let mut row = rows.row(&scope, &name, metric, value);
                row.estimator = Some(an.into());
                row.reference = Some(rn.into());
                row.verdict = Some("info".into());
                rows.push(row);
            }
            summary.push(format!("| {an} vs {rn} | {scope} | {name} | {:.3e} | {:.9} |", mx::rel_l2(&av, &rv), mx::cos(&av, &rv)));
        }
    }
    // Finite differences.
    let (g_ref, mode, refname) = if o.mode_converged { (&imp.grad.tensors, FdMode::Converged, "implicit") } else { (&g_bptt.tensors, FdMode::FixedT(o.t_free), "bptt") };
    let theta_norm: f64 = p.iter().map(|t| norm2(t).powi(2)).sum::<f64>().sqrt();
    let gnorm: f64 = g_ref.iter().map(|t| norm2(t).powi(2)).sum::<f64>().sqrt();
    let n_theta: i64 = p.iter().map(|t| t.numel() as i64).sum();
    let candidates: Vec<f64> = if o.h_select { [100.0, 10.0, 1.0, 0.1].iter().map(|c| c * o.h).collect() } else { vec![o.h] };
    summary.push(String::new());
    summary.push(format!(
        "finite differences ({}, ε = h·‖θ‖ with ‖θ‖ = {theta_norm:.4}, h {}) against `{refname}`:",
        if o.mode_converged { "converged" } else { "fixed T" },
        if o.h_select {
            let c: Vec<String> = candidates.iter().map(|h| format!("{h:.0e}")).collect();
            format!("selected per direction from [{}] by the smallest |D(ε) − D(ε/2)|", c.join(", "))
        } else {
            format!("= {}", o.h)
        }
    ));
    summary.push(String::new());
    summary.push("| direction | h | D_R | ⟨g, v⟩ | fd_err | fd_richardson | kink changes | verdict |".into());
    summary.push("|---|---|---|---|---|---|---|---|".into());
    for (i, v) in fd::directions(p, o.n_dir, o.seed).into_iter().enumerate() {
        let (h, d) = fd::central_selected(m, p, batch, &imp.star.state, &v, theta_norm, &candidates, mode, io.star_tol)?;
        let proj = fd::project(g_ref, &v);
        let scale = proj.abs().max(gnorm / (n_theta as f64).sqrt());
        let err = (d.richardson - proj).abs() / scale;
        let rich = (d.d - d.d_half).abs() / scale;
        let verdict = if d.kink_changes > 0 {
            Verdict::Inconclusive("kink crossing".into())
        } else if rich > o.fd_tol {
            Verdict::Inconclusive("round-off floor".into())
        } else if super::within(err, o.fd_tol) {
            Verdict::Pass
        } else {
            Verdict::Fail(format!("fd_err={err:.3e} > {:.1e}", o.fd_tol))
        };
        let name = format!("dir{i}");
        for (metric, value, thr) in [("fd_err", err, Some(o.fd_tol)), ("fd_h", h, None), ("fd_richardson", rich, None), ("fd_value", d.richardson, None), ("ref_projection", proj, None), ("kink_changes", d.kink_changes as f64, None)] {
            let mut row = rows.row("key", &name, metric, value);
            row.reference = Some(refname.into());
            row.threshold = thr;
            if metric == "fd_err" {
                row.verdict = Some(verdict.label().into());
            }
            rows.push(row);
        }
        rows.verdict("key", &name, &verdict, json!({ "fd_err": err, "fd_richardson": rich, "D_R": d.richardson, "projection": proj }));
        summary.push(format!("| {i} | {h:.0e} | {:.12e} | {proj:.12e} | {err:.2e} | {rich:.2e} | {} | {} |", d.richardson, d.kink_changes, verdict.display()));
    }
    let mut dump = vec![];
    for (i, s) in m.params.iter().enumerate() {
        dump.push((format!("grad.implicit.{}", s.name), imp.grad.tensors[i].shallow_clone()));
        dump.push((format!("grad.bptt.{}", s.name), g_bptt.tensors[i].shallow_clone()));
        dump.push((format!("grad.bptt_trunc.{}", s.name), g_trunc.tensors[i].shallow_clone()));
    }
    for (k, l) in m.layers.iter().enumerate() {
        dump.push((format!("state.star.{}", l.name), imp.star.state[k].shallow_clone()));
    }
    Ok(rows.finish(summary, dump))
}
