//! `estimate`: runs one estimator and reports it (info): per tensor and in total, its norm and its agreement
//! with the exact references on the same instance (`bptt` through T, `bptt_trunc` over the last K), with the
//! residual of every phase it used and the round-off floor of EP estimates.
use super::metrics as mx;
use super::{kinks, CheckReport, Rows, Verdict};
use crate::estimators::{self, bptt, Estimator, PhaseLengths};
use crate::instance::Instance;
use crate::relax::residual;
use crate::tensor_util::{all_finite, norm2, to_vec_f64};
use serde_json::json;
use tch::Tensor;

pub fn run(inst: &Instance, est: Estimator, beta: f64, len: PhaseLengths) -> crate::Result<CheckReport> {
    run_with(inst, est, beta, len, false)
}

/// `points`: keep the holomorphic points' states and f_k for the dump (`state.holo<N>_<k>.<lname>.re/.im`,
/// `dPhidtheta.holo<N>_<k>.<pname>.re/.im`, estimators §8).
pub fn run_with(inst: &Instance, est: Estimator, beta: f64, len: PhaseLengths, points: bool) -> crate::Result<CheckReport> {
    let (m, p, batch) = (&inst.model, &inst.params[..], &inst.batch);
    let mut rows = Rows::new("estimate", &inst.id, &m.preset, inst.prec.dtype.name());
    let holo = estimators::ep_holomorphic::HoloOptions { keep_points: points, ..inst.cfg.holo_options(inst.cfg.holo_points) };
    let run = estimators::estimate_with(est, m, p, batch, beta, len, &holo)?;
    let mut summary = vec![];
    // Convergence of every phase the estimator ran (docs/verdicts.md): r_∞ per example after the phase against
    // the estimate's tolerance (tol if given, else max(converge tol, 1e-4·|β|): a state error r moves an EP
    // estimate by about r/β). A diverged (non-finite) or unconverged phase makes the verdict
    // `inconclusive: not converged`, naming the phase, the example and r_∞; a converged one is reported (info).
    let tol = inst.cfg.tol.unwrap_or_else(|| inst.cfg.converge_tol().max(1e-4 * beta.abs()));
    let mut notes = vec![];
    let mut phase_r = vec![];
    for (phase, ph) in &run.phases {
        let diverged = m.layers.iter().enumerate().find(|(k, _)| !all_finite(&ph.state[*k])).map(|(_, l)| l.name.clone());
        let per_ex: Vec<f64> = if diverged.is_some() {
            vec![f64::INFINITY]
        } else if ph.beta.is_finite() {
            to_vec_f64(&residual(m, p, batch, &ph.state, ph.beta).to_kind(tch::Kind::Double))
        } else if ph.iters > 0 {
            to_vec_f64(&ph.residuals.get(ph.iters - 1).to_kind(tch::Kind::Double))
        } else {
            vec![]
        };
        let (ex, r) = per_ex.iter().enumerate().fold((0usize, 0.0f64), |(bi, bv), (i, v)| if !(*v <= bv) { (i, if v.is_nan() { f64::INFINITY } else { *v }) } else { (bi, bv) });
        phase_r.push((phase.clone(), r));
        let mut row = rows.row("phase", phase, "r_inf_max", r);
        row.phase = Some(phase.clone());
        row.beta = ph.beta.is_finite().then_some(ph.beta);
        row.threshold = Some(tol);
        let v = if let Some(layer) = &diverged {
            Verdict::Inconclusive(format!("not converged: the {phase} phase diverged (non-finite state.{phase}.{layer} after {} iterations)", ph.iters))
        } else if crate::checks::within(r, tol) || per_ex.is_empty() {
            Verdict::Info
        } else {
            Verdict::Inconclusive(format!("not converged: {phase} phase, example {ex}, r_∞ {} > tol {} after {} iterations", crate::checks::num(r), crate::checks::num(tol), ph.iters))
        };
        row.verdict = Some(v.label().into());
        rows.push(row);
        rows.verdict("phase", phase, &v, json!({ "iters": ph.iters, "r_inf": r, "example": ex, "tol": tol }));
        if let Verdict::Inconclusive(reason) = &v {
            summary.push(format!("**{}**", v.display()));
            notes.push(format!("estimate: {reason}; raise --T/--K, or try --schedule async2 or a smaller init_scale"));
        }
        if diverged.is_some() {
            // Nothing below is meaningful on non-finite states.
            let rep = rows.finish(summary, vec![]);
            let d = format!("the {phase} phase diverged: no estimate; try a smaller init_scale or a contracting activation");
            return Ok(rep.with_digest(d).with_notes(notes));
        }
    }
    // Holomorphic points are phases too: their worst residual against the same tolerance.
    if let Some((_, r)) = run.diagnostics.iter().find(|(n, _)| n == "point_residual_max") {
        let v = if crate::checks::within(*r, tol) {
            Verdict::Info
        } else {
            Verdict::Inconclusive(format!("complex point not converged: max point r_∞ {} > tol {}", crate::checks::num(*r), crate::checks::num(tol)))
        };
        rows.verdict("phase", "holomorphic_points", &v, json!({ "r_inf": r, "tol": tol }));
        if let Verdict::Inconclusive(reason) = &v {
            summary.push(format!("**{}**", v.display()));
            notes.push(format!("estimate: {reason}; raise --K, or lower --beta"));
        }
        phase_r.push(("holomorphic points".into(), *r));
    }
    let key = run.grad.key.clone();
    let refs: Vec<(&str, Vec<Tensor>)> = match est {
        Estimator::Bptt => vec![("bptt_trunc", bptt::truncated(m, p, batch, len.t_free, len.k_nudge.min(len.t_free))?.0.tensors)],
        Estimator::BpttTrunc => vec![("bptt", bptt::full(m, p, batch, len.t_free).0.tensors)],
        _ => vec![("bptt", bptt::full(m, p, batch, len.t_free).0.tensors), ("bptt_trunc", bptt::truncated(m, p, batch, len.t_free, len.k_nudge.min(len.t_free))?.0.tensors)],
    };
    summary.push(format!("estimator `{key}`, β = {beta}, T = {}, K = {}", len.t_free, len.k_nudge));
    summary.push(String::new());
    let mut head = "| tensor | ‖ĝ‖ |".to_string();
    let mut sep = "|---|---|".to_string();
    for (rname, _) in &refs {
        head += &format!(" rel_l2 vs {rname} | cos vs {rname} |");
        sep += "---|---|";
    }
    summary.push(head);
    summary.push(sep);
    let fmax = run.phases.iter().map(|(_, ph)| m.param_derivative(p, batch, &ph.state).iter().map(norm2).fold(0.0, f64::max)).fold(0.0, f64::max);
    let mut scopes: Vec<(String, String, Vec<f64>, Vec<Vec<f64>>)> = m
        .params
        .iter()
        .enumerate()
        .map(|(i, s)| ("tensor".into(), s.name.clone(), to_vec_f64(&run.grad.tensors[i]), refs.iter().map(|(_, r)| to_vec_f64(&r[i])).collect()))
        .collect();
    let total_a: Vec<f64> = scopes.iter().flat_map(|s| s.2.clone()).collect();
    let total_r: Vec<Vec<f64>> = (0..refs.len()).map(|j| scopes.iter().flat_map(|s| s.3[j].clone()).collect()).collect();
    scopes.push(("total".into(), "total".into(), total_a, total_r));
    for (scope, name, a, rs) in &scopes {
        let mut r = rows.row(scope, name, "norm", mx::norm(a));
        r.estimator = Some(key.clone());
        r.beta = run.grad.beta;
        rows.push(r);
        let mut line = format!("| {name} | {:.4e} |", mx::norm(a));
        for ((rname, _), rv) in refs.iter().zip(rs) {
            for (metric, value) in [("rel_l2", mx::rel_l2(a, rv)), ("cos", mx::cos(a, rv))] {
                let mut r = rows.row(scope, name, metric, value);
                r.estimator = Some(key.clone());
                r.beta = run.grad.beta;
                r.reference = Some(rname.to_string());
                r.verdict = Some("info".into());
                rows.push(r);
            }
            line += &format!(" {:.3e} | {:.6} |", mx::rel_l2(a, rv), mx::cos(a, rv));
        }
        summary.push(line);
        if let (Some(b), true) = (run.grad.beta, scope == "total") {
            let mut r = rows.row(scope, name, "floor_rel", mx::ratio(inst.prec.dtype.eps() * fmax, b * mx::norm(&rs[0])));
            r.estimator = Some(key.clone());
            rows.push(r);
        }
    }
    for (name, v) in &run.diagnostics {
        let mut r = rows.row("total", "total", name, *v);
        r.estimator = Some(key.clone());
        rows.push(r);
        summary.push(format!("\n{name} = {v:.3e}"));
        if name == "pole_margin_min" && *v < crate::estimators::ep_holomorphic::POLE_MARGIN_FLAG {
            summary.push(format!(
                "\n**flag:** a point's drives come within {v:.3} pole distances of a pole of σ (< {}, docs/checks.md#estimate): the point may sit outside the disc where s*(β) is holomorphic.",
                crate::estimators::ep_holomorphic::POLE_MARGIN_FLAG
            ));
        }
    }
    // Regime report (conventions §10): units whose activation regime differs between the free fixed point and
    // each nudged one, shown next to the total error vs the first reference.
    if let Some((_, free)) = run.phases.iter().find(|(n, _)| n == "free") {
        let nudged: Vec<&(String, crate::relax::Phase)> = run.phases.iter().filter(|(n, _)| n != "free").collect();
        if !nudged.is_empty() && m.layers.iter().any(|l| l.activation.kinks().is_some()) {
            let r0 = kinks::regimes(m, p, batch, &free.state, 0.0);
            let err = scopes.last().map(|(_, _, a, rs)| mx::rel_l2(a, &rs[0])).unwrap_or(f64::NAN);
            summary.push(String::new());
            summary.push(format!("| phase | β | regime changes vs free (all layers) | per layer | total rel_l2 vs {} |", refs[0].0));
            summary.push("|---|---|---|---|---|".into());
            for (phase, ph) in nudged {
                let per_layer = kinks::changes(&r0, &kinks::regimes(m, p, batch, &ph.state, ph.beta));
                let total: i64 = per_layer.iter().sum();
                let mut row = rows.row("phase", phase, "crossings", total as f64);
                row.phase = Some(phase.clone());
                row.beta = Some(ph.beta);
                row.estimator = Some(key.clone());
                rows.push(row);
                let mut detail = vec![];
                for (k, (l, n)) in m.layers.iter().zip(&per_layer).enumerate() {
                    if l.activation.kinks().is_some() && m.update_map(k).is_none() {
                        let mut row = rows.row("layer", &l.name, "crossings", *n as f64);
                        row.phase = Some(phase.clone());
                        row.beta = Some(ph.beta);
                        row.estimator = Some(key.clone());
                        rows.push(row);
                        detail.push(format!("{}: {n}", l.name));
                    }
                }
                summary.push(format!("| {phase} | {} | {total} | {} | {err:.3e} |", ph.beta, detail.join(", ")));
            }
        }
    }
    // Max-pool ties (conv-hopfield.md §11): tied windows at each state and argmax changes between the free state and
    // each nudged one. BPTT follows the first-index subgradient, EP re-evaluates the argmax at the nudged state.
    if let Some((_, free)) = run.phases.iter().find(|(n, _)| n == "free") {
        let t0 = m.pool_ties(p, batch, &free.state);
        if !t0.is_empty() {
            summary.push(String::new());
            summary.push("| phase | β | tied max-pool windows | argmax changes vs free |".into());
            summary.push("|---|---|---|---|".into());
            summary.push(format!("| free | 0 | {} | – |", t0.iter().map(|x| x.1).sum::<i64>()));
            let mut row = rows.row("phase", "free", "tied_windows", t0.iter().map(|x| x.1).sum::<i64>() as f64);
            row.phase = Some("free".into());
            rows.push(row);
            for (phase, ph) in run.phases.iter().filter(|(n, _)| n != "free") {
                let t1 = m.pool_ties(p, batch, &ph.state);
                let tied: i64 = t1.iter().map(|x| x.1).sum();
                let changed: i64 = t0.iter().zip(&t1).map(|(a, b)| a.2.ne_tensor(&b.2).sum(tch::Kind::Int64).int64_value(&[])).sum();
                summary.push(format!("| {phase} | {} | {tied} | {changed} |", ph.beta));
                for (metric, v) in [("tied_windows", tied), ("argmax_changes", changed)] {
                    let mut row = rows.row("phase", phase, metric, v as f64);
                    row.phase = Some(phase.clone());
                    row.beta = Some(ph.beta);
                    rows.push(row);
                }
            }
        }
    }
    summary.push(String::new());
    summary.push(format!("| phase | β | iterations | max r_∞ after the phase | tol |"));
    summary.push("|---|---|---|---|---|".into());
    for ((phase, ph), (_, r)) in run.phases.iter().zip(&phase_r) {
        summary.push(format!("| {phase} | {} | {} | {r:.3e} | {tol:.1e} |", ph.beta, ph.iters));
    }
    rows.verdict("estimate", &key, &Verdict::Info, json!({ "beta": beta }));
    let mut dump = vec![];
    // With a clip norm, the clipped centered estimate of the Hopfield-ResNet code too (grad.ep_centered_clipped).
    let clipped = match (est, inst.cfg.train.grad_clip_norm) {
        (Estimator::EpCentered, Some(c)) => {
            let (g, n, factor) = crate::train::optim::clip_global_norm(&run.grad.tensors, c);
            summary.push(format!("\nclipped centered estimate: global norm {n:.4e}, clip norm {c}, factor {factor:.4}"));
            Some(g)
        }
        _ => None,
    };
    for (i, s) in m.params.iter().enumerate() {
        if let Some(g) = &clipped {
            dump.push((format!("grad.ep_centered_clipped.{}", s.name), g[i].shallow_clone()));
        }
        dump.push((format!("grad.{key}.{}", s.name), run.grad.tensors[i].shallow_clone()));
        for (rname, r) in &refs {
            dump.push((format!("grad.{rname}.{}", s.name), r[i].shallow_clone()));
        }
    }
    for (phase, ph) in &run.phases {
        for (k, l) in m.layers.iter().enumerate() {
            dump.push((format!("state.{phase}.{}", l.name), ph.state[k].shallow_clone()));
        }
        dump.push((format!("phi.{phase}"), m.primitive(p, batch, &ph.state)));
        dump.push((format!("energy.{phase}"), m.energy(p, batch, &ph.state)));
        dump.push((format!("loss.{phase}"), m.loss_per_example(p, batch, &ph.state)));
    }
    // Holomorphic points: complex tensors as two float tensors, `.re` and `.im` (estimators §3.7, §8).
    let n = inst.cfg.holo_points;
    let planes = |t: &Tensor| -> (Tensor, Tensor) {
        if crate::tensor_util::is_complex(t.kind()) {
            (t.real().contiguous(), t.imag().contiguous())
        } else {
            (t.shallow_clone(), t.zeros_like())
        }
    };
    for pt in &run.points {
        let named = m.layers.iter().map(|l| format!("state.holo{n}_{}.{}", pt.k, l.name)).zip(&pt.state);
        let named = named.chain(m.params.iter().map(|s| format!("dPhidtheta.holo{n}_{}.{}", pt.k, s.name)).zip(&pt.f));
        for (name, t) in named {
            let (re, im) = planes(t);
            dump.push((format!("{name}.re"), re));
            dump.push((format!("{name}.im"), im));
        }
    }
    // Digest: the estimate against its first reference, and the worst phase residual.
    let (rname, total) = (refs[0].0, scopes.last().map(|(_, _, a, rs)| (mx::rel_l2(a, &rs[0]), mx::cos(a, &rs[0]))).unwrap_or((f64::NAN, f64::NAN)));
    let worst_phase = phase_r.iter().fold((String::new(), f64::NEG_INFINITY), |acc, (n, r)| if *r > acc.1 { (n.clone(), *r) } else { acc });
    let rep = rows.finish(summary, dump);
    let scored = if rep.overall == Verdict::Info { "not scored (estimate reports)" } else { "" };
    let digest = format!(
        "{key} vs {rname}: total rel_l2 {}, cos {}; worst phase r_∞ {} ({}) vs tol {}{}",
        crate::checks::num(total.0),
        crate::checks::num(total.1),
        crate::checks::num(worst_phase.1),
        worst_phase.0,
        crate::checks::num(tol),
        if scored.is_empty() { String::new() } else { format!("; {scored}") }
    );
    Ok(rep.with_digest(digest).with_notes(notes))
}
