//! `audit` (checks §7): is the implemented dynamics really the maximisation of an energy? Everything is
//! measured on the **production** code paths (the analytic drives, the cached relaxation step, the update
//! maps), against autograd of the Φ implementation:
//!
//! * A1 drive consistency: `Model::drive` vs ∇_sΦ_β by autograd, per layer;
//! * A2 update consistency: the relaxation's step (constant drives cached) vs G of the drives, group by group;
//! * A3 drive-Jacobian symmetry: random probe pairs (v, w) through the VJP of the production drive map,
//!   asym = |⟨V(v), w⟩ − ⟨V(w), v⟩| / (‖V(v)‖‖w‖ + ‖V(w)‖‖v‖), on all layers at once and per block pair (i, j);
//!   the worst block is named. Nothing assumes a diagonal or elementwise structure;
//! * A4 update-map symmetry per layer: the same statistic for the VJP of G_k at u_k (autograd of
//!   `Model::activate`); `jacobian_apply` (the J used by BPTT) vs that VJP is reported as info;
//! * A5 potential consistency G = ∇ψ and convexity σ′ ≥ 0 (info; where ψ is known);
//! * A5m update-map potential consistency G_k = ∇ψ_k per layer, at the drives (autograd of the map's ψ; maps whose
//!   ψ is not known, e.g. a scripted map without `potential`, are skipped);
//! * A6 nudge consistency: the production nudge term vs −β∇_sℓ by autograd of ℓ;
//! * A7 (info): the hand-rolled step VJP vs autograd of one step.
use super::local::{phase_states, probe_batch, random_states};
use super::metrics as mx;
use super::{CheckReport, Rows, Verdict};
use crate::config::RunConfig;
use crate::instance::Instance;
use crate::model::activation::Activation;
use crate::model::{Batch, Beta, Model, State};
use crate::tensor_util::{grads_or_zeros, sum_per_example, to_vec_f64};
use serde_json::json;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Threshold of A1–A4 and A6.
    pub tol: f64,
    /// Threshold of A5.
    pub potential_tol: f64,
    pub pairs: usize,
    pub n_rand: usize,
    pub beta: f64,
    pub t_free: i64,
    pub k_nudge: i64,
    pub seed: u64,
}

impl AuditOptions {
    pub fn from_config(cfg: &RunConfig) -> Self {
        let a = &cfg.checks.audit;
        AuditOptions {
            tol: cfg.audit_tol(),
            potential_tol: a.potential_tol,
            pairs: a.pairs,
            n_rand: a.n_rand,
            beta: cfg.beta,
            t_free: cfg.t_free,
            k_nudge: cfg.k_nudge,
            seed: cfg.seed,
        }
    }
}

/// ⟨a, b⟩ per example over all layers, (B,) on the host.
fn dot_b(a: &[Tensor], b: &[Tensor]) -> Vec<f64> {
    let mut acc: Option<Tensor> = None;
    for (x, y) in a.iter().zip(b) {
        let d = sum_per_example(&(x * y)).to_kind(Kind::Double);
        acc = Some(match acc {
            Some(s) => s + d,
            None => d,
        });
    }
    to_vec_f64(&acc.expect("at least one layer"))
}

/// V(v) = VJP of the production drive map s ↦ (u_1(s; β), …, u_N(s; β)) at s.
pub fn drive_vjp(m: &Model, p: &[Tensor], batch: &Batch, s: &[Tensor], beta: f64, v: &[Tensor]) -> State {
    let leaves: Vec<Tensor> = s.iter().map(|t| t.detach().set_requires_grad(true)).collect();
    let pd: Vec<Tensor> = p.iter().map(|t| t.detach()).collect();
    let mut c: Option<Tensor> = None;
    for (k, vk) in v.iter().enumerate() {
        let u = m.drive(&pd, batch, &leaves, k, beta);
        let term = (u * vk).sum(Kind::Double);
        c = Some(match c {
            Some(a) => a + term,
            None => term,
        });
    }
    let refs: Vec<&Tensor> = leaves.iter().collect();
    grads_or_zeros(&c.expect("at least one layer"), &refs)
}

/// VJP of the update map G_k at u (autograd of `Model::activate`).
pub fn update_vjp(m: &Model, k: usize, batch: &Batch, u: &Tensor, v: &Tensor) -> Tensor {
    let leaf = u.detach().set_requires_grad(true);
    let g = m.activate(k, batch, &leaf);
    let c = (g * v).sum(Kind::Double);
    grads_or_zeros(&c, &[&leaf]).remove(0)
}

/// asym per example for the pair (v, w) given V(v), V(w); None where both inner products vanish for every
/// example (no coupling).
fn asym(vv: &[Tensor], w: &[Tensor], vw: &[Tensor], v: &[Tensor]) -> (Vec<f64>, bool) {
    let a = dot_b(vv, w);
    let b = dot_b(vw, v);
    let n_vv: Vec<f64> = dot_b(vv, vv).into_iter().map(f64::sqrt).collect();
    let n_w: Vec<f64> = dot_b(w, w).into_iter().map(f64::sqrt).collect();
    let n_vw: Vec<f64> = dot_b(vw, vw).into_iter().map(f64::sqrt).collect();
    let n_v: Vec<f64> = dot_b(v, v).into_iter().map(f64::sqrt).collect();
    let coupled = a.iter().chain(&b).any(|x| *x != 0.0);
    let vals = (0..a.len()).map(|e| mx::ratio((a[e] - b[e]).abs(), n_vv[e] * n_w[e] + n_vw[e] * n_v[e])).collect();
    (vals, coupled)
}

/// ψ of an elementwise update map (estimators §1.3, conventions §6), where it is known: smooth maps in
/// closed form; a clamp c = clamp(u, lo, hi) (scaled by a) has ψ = a·(c²/2 + c·(u − c)).
pub fn potential(act: Activation, u: &Tensor) -> Option<Tensor> {
    let clamp = |lo: f64, hi: f64, a: f64| {
        let c = u.clamp(lo, hi);
        (&c * &c * 0.5 + &c * (u - &c)) * a
    };
    #[allow(unreachable_patterns)]
    Some(match act {
        Activation::Identity => u * u * 0.5,
        Activation::Tanh => {
            let a = u.abs();
            &a + (&a * -2.0).exp().log1p() - std::f64::consts::LN_2
        }
        Activation::Sigmoid => softplus(u),
        Activation::Logistic4 => softplus(&((u - 0.5) * 4.0)) * 0.25,
        Activation::HardSigmoid | Activation::HardSigmoid2u => clamp(0.0, 1.0, 1.0),
        Activation::MyHardSig => clamp(0.0, 2.0, 0.5),
        Activation::CtrdHardSig => clamp(-0.5, 0.5, 1.0),
        Activation::Relu6 => clamp(0.0, 6.0, 1.0),
        Activation::MyCos(a) => {
            let w = a * std::f64::consts::PI;
            (u - (u * w).sin() / w) * 0.5
        }
        // silu, holotanh, my_holotanh: ψ = ∫σ needs the dilogarithm; reported as "ψ not known".
        _ => return None,
    })
}

/// log(1 + e^z) without libtorch's linear cut-off above z = 20 (whose derivative is exactly 1 there).
fn softplus(z: &Tensor) -> Tensor {
    z.relu() + (-z.abs()).exp().log1p()
}

/// Worst value per named scope.
#[derive(Default)]
struct Worst(BTreeMap<String, (f64, String)>);

impl Worst {
    fn add(&mut self, name: &str, v: f64, at: &str) {
        let e = self.0.entry(name.to_string()).or_insert((0.0, at.to_string()));
        if !(v <= e.0) {
            *e = (v, at.to_string());
        }
    }
}

fn rel_linf_t(a: &Tensor, r: &Tensor) -> f64 {
    let (a, r) = (to_vec_f64(a), to_vec_f64(r));
    if a.iter().chain(&r).all(|v| v.is_finite()) {
        mx::rel_linf(&a, &r)
    } else {
        f64::INFINITY
    }
}

/// Rows, verdicts and summary lines of one audit item (`info` items are reported, not scored).
#[allow(clippy::too_many_arguments)]
fn scored(rows: &mut Rows, summary: &mut Vec<String>, id: &str, metric: &str, scope: &str, w: &Worst, thr: f64, reason: &dyn Fn(&str) -> String, info: bool) {
    for (name, (v, at)) in &w.0 {
        let ok = super::within(*v, thr);
        let verdict = if info {
            Verdict::Info
        } else if ok {
            Verdict::Pass
        } else {
            Verdict::Fail(format!("{}: {metric}={v:.3e} > {thr:.1e} at {at}", reason(name)))
        };
        let key = format!("{id}:{name}");
        let mut row = rows.row(scope, &key, metric, *v);
        row.threshold = Some(thr);
        row.verdict = Some(verdict.label().into());
        rows.push(row);
        rows.verdict(scope, &key, &verdict, json!({ metric: v, "threshold": thr, "at": at, "within": ok }));
        let shown = if info { format!("info ({})", if ok { "within" } else { "exceeds" }) } else { verdict.display() };
        summary.push(format!("| {id} | {name} | {v:.3e} | {at} | {thr:.1e} | {shown} |"));
    }
}

pub fn run(inst: &Instance, o: &AuditOptions) -> CheckReport {
    let (m, p) = (&inst.model, &inst.params[..]);
    let mut rows = Rows::new("audit", &inst.id, &m.preset, inst.prec.dtype.name());
    let batch = probe_batch(inst);
    let kind = inst.prec.dtype.kind();
    let nl = m.layers.len();
    let names = m.layer_names();
    let mut states: Vec<(String, State)> = random_states(m, &batch, kind, inst.prec.device, o.n_rand, o.seed, false)
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("rand{i}"), s))
        .collect();
    states.extend(phase_states(m, p, &batch, inst.prec, o.beta, o.t_free, o.k_nudge).into_iter().map(|(n, _, s)| (n, s)));
    let betas = [0.0, o.beta, -o.beta];
    let (mut a1, mut a2, mut a3, mut a4, mut a4b, mut a6, mut a7) = (Worst::default(), Worst::default(), Worst::default(), Worst::default(), Worst::default(), Worst::default(), Worst::default());
    let mut a5m = Worst::default();
    let mut coupled = vec![vec![false; nl]; nl];
    let rng = crate::tensor_util::rng_lock();
    tch::manual_seed(o.seed as i64 ^ 0x0A0D17);
    for (label, s) in &states {
        for &beta in &betas {
            let at = format!("{label}@β={beta}");
            // A1: production drives vs autograd of Φ_β.
            let prod: Vec<Tensor> = tch::no_grad(|| (0..nl).map(|k| m.drive(p, &batch, s, k, beta)).collect());
            let auto = m.drives_autograd(p, &batch, s, beta);
            for k in 0..nl {
                a1.add(&names[k], rel_linf_t(&prod[k], &auto[k]), &at);
            }
            // A2: the relaxation's step (constant drives cached) vs G of the drives, group by group.
            let stepped = tch::no_grad(|| {
                let cache = m.constant_drives(p, &batch, s);
                m.step_cached(p, &batch, s, &Beta::Real(beta), false, Some(&cache))
            });
            let mut cur: State = s.iter().map(|t| t.shallow_clone()).collect();
            tch::no_grad(|| {
                for group in &m.schedule.groups {
                    let us: Vec<Tensor> = group.iter().map(|&k| m.drive(p, &batch, &cur, k, beta)).collect();
                    for (&k, u) in group.iter().zip(us) {
                        cur[k] = m.activate(k, &batch, &u);
                    }
                }
            });
            for k in 0..nl {
                a2.add(&names[k], rel_linf_t(&stepped[k], &cur[k]), &at);
            }
            // A3: symmetry of the production drive Jacobian, all layers and per block pair.
            for _ in 0..o.pairs {
                let v: State = s.iter().map(|t| t.randn_like()).collect();
                let w: State = s.iter().map(|t| t.randn_like()).collect();
                let (vv, vw) = (drive_vjp(m, p, &batch, s, beta, &v), drive_vjp(m, p, &batch, s, beta, &w));
                let (vals, _) = asym(&vv, &w, &vw, &v);
                a3.add("all", vals.into_iter().fold(0.0, f64::max), &at);
                let only = |x: &State, i: usize| -> State { x.iter().enumerate().map(|(k, t)| if k == i { t.shallow_clone() } else { t.zeros_like() }).collect() };
                let vi: Vec<State> = (0..nl).map(|i| only(&v, i)).collect();
                let wj: Vec<State> = (0..nl).map(|j| only(&w, j)).collect();
                let vvi: Vec<State> = vi.iter().map(|x| drive_vjp(m, p, &batch, s, beta, x)).collect();
                let vwj: Vec<State> = wj.iter().map(|x| drive_vjp(m, p, &batch, s, beta, x)).collect();
                for i in 0..nl {
                    for j in i..nl {
                        let (vals, c) = asym(&vvi[i], &wj[j], &vwj[j], &vi[i]);
                        coupled[i][j] |= c;
                        a3.add(&format!("{},{}", names[i], names[j]), vals.into_iter().fold(0.0, f64::max), &at);
                    }
                }
            }
            // A4: symmetry of each update map's Jacobian at the drives; jacobian_apply vs its VJP (info).
            for k in 0..nl {
                let v = prod[k].randn_like();
                let w = prod[k].randn_like();
                let (jv, jw) = (update_vjp(m, k, &batch, &prod[k], &v), update_vjp(m, k, &batch, &prod[k], &w));
                let (vals, _) = asym(&[jv.shallow_clone()], &[w.shallow_clone()], &[jw], &[v.shallow_clone()]);
                a4.add(&names[k], vals.into_iter().fold(0.0, f64::max), &at);
                let ja = tch::no_grad(|| m.jacobian_apply(k, &batch, &prod[k], &v));
                a4b.add(&names[k], rel_linf_t(&ja, &jv), &at);
            }
            // A5m: an update map's G vs ∇ψ by autograd of its potential, at the drives (where ψ is known).
            for k in 0..nl {
                if let Some(map) = m.update_map(k) {
                    let leaf = prod[k].detach().set_requires_grad(true);
                    let psi = tch::with_grad(|| map.potential(&batch, &leaf));
                    if crate::tensor_util::all_finite(&psi) {
                        let g = grads_or_zeros(&psi.sum(Kind::Double), &[&leaf]).remove(0);
                        a5m.add(&names[k], rel_linf_t(&tch::no_grad(|| m.activate(k, &batch, &prod[k])), &g), &at);
                    }
                }
            }
            // A6: the production nudge term vs −β∇ℓ by autograd, at the current output.
            if beta != 0.0 {
                let u0 = tch::no_grad(|| m.drive(p, &batch, s, m.output, 0.0));
                let nudge = &prod[m.output] - u0;
                let leaf = s[m.output].detach().set_requires_grad(true);
                let st: State = s.iter().enumerate().map(|(k, t)| if k == m.output { leaf.shallow_clone() } else { t.detach() }).collect();
                let l = m.loss_per_example(p, &batch, &st).sum(Kind::Double);
                let want = grads_or_zeros(&l, &[&leaf]).remove(0) * (-beta);
                a6.add("nudge", rel_linf_t(&nudge, &want), &at);
            }
            // A7 (info): hand-rolled step VJP vs autograd of one step.
            let lam: State = s.iter().map(|t| t.randn_like()).collect();
            let (hs, hp) = tch::no_grad(|| m.step_vjp(p, &batch, s, &lam, beta));
            let (as_, ap) = m.step_vjp_autograd(p, &batch, s, &lam, beta);
            let flat = |x: &[Tensor]| x.iter().flat_map(to_vec_f64).collect::<Vec<f64>>();
            a7.add("state", mx::rel_linf(&flat(&hs), &flat(&as_)), &at);
            a7.add("params", mx::rel_linf(&flat(&hp), &flat(&ap)), &at);
        }
    }
    drop(rng);
    let mut summary = vec![
        format!("Energy audit at {} probe states × β ∈ {{0, ±{}}}, {} probe pairs, threshold {:.1e} (A1–A4, A6)", states.len(), o.beta, o.pairs, o.tol),
        String::new(),
        "| id | scope | worst | at | threshold | verdict |".into(),
        "|---|---|---|---|---|---|".into(),
    ];
    scored(&mut rows, &mut summary, "A1", "rel_linf", "layer", &a1, o.tol, &|n| format!("update is not G(∂Φ_β/∂s): layer {n}"), false);
    scored(&mut rows, &mut summary, "A2", "rel_linf", "layer", &a2, o.tol, &|n| format!("update is not G(∂Φ_β/∂s): layer {n}"), false);
    // A3: blocks without coupling are reported as such, not scored.
    let mut a3s = Worst::default();
    let mut uncoupled = vec![];
    for (name, (v, at)) in &a3.0 {
        let is_block = name.contains(',');
        let pair = name.split(',').collect::<Vec<_>>();
        let c = !is_block || {
            let (i, j) = (names.iter().position(|x| x == pair[0]).unwrap(), names.iter().position(|x| x == pair[1]).unwrap());
            coupled[i.min(j)][i.max(j)]
        };
        if c {
            a3s.0.insert(name.clone(), (*v, at.clone()));
        } else {
            uncoupled.push(name.clone());
        }
    }
    scored(&mut rows, &mut summary, "A3", "asym", "layer_pair", &a3s, o.tol, &|n| format!("drive Jacobian not symmetric: layers {}", n.replace(',', ", ")), false);
    for name in &uncoupled {
        let mut row = rows.row("layer_pair", &format!("A3:{name}"), "coupled", 0.0);
        row.verdict = Some("info".into());
        rows.push(row);
    }
    scored(&mut rows, &mut summary, "A4", "asym", "layer", &a4, o.tol, &|n| format!("update map not a gradient map: layer {n}"), false);
    scored(&mut rows, &mut summary, "A5m", "rel_linf", "layer", &a5m, o.tol, &|n| format!("update map is not the gradient of its potential ψ: layer {n}"), false);
    scored(&mut rows, &mut summary, "A4b", "rel_linf", "layer", &a4b, o.tol, &|_| String::new(), true);
    scored(&mut rows, &mut summary, "A6", "rel_linf", "layer", &a6, o.tol, &|_| "nudge inconsistent with ℓ".into(), false);
    scored(&mut rows, &mut summary, "A7", "rel_linf", "total", &a7, 1e3 * o.tol, &|_| String::new(), true);
    // A5: G = ∇ψ and σ′ ≥ 0 on 1000 points u ~ N(0, 2²) plus the kinks ± 1e-3 (info).
    let mut seen: Vec<Activation> = vec![];
    for l in &m.layers {
        if seen.contains(&l.activation) {
            continue;
        }
        seen.push(l.activation);
        let act = l.activation;
        let mut pts = to_vec_f64(&crate::tensor_util::seeded(o.seed as i64 ^ 0xA5, || Tensor::randn([1000], (Kind::Double, tch::Device::Cpu)) * 2.0));
        if let Some((lo, hi)) = act.kinks() {
            pts.extend([lo - 1e-3, lo + 1e-3, hi - 1e-3, hi + 1e-3]);
        }
        let u = Tensor::from_slice(&pts).to_kind(kind).to_device(inst.prec.device).set_requires_grad(true);
        let key = format!("A5:{}", act.key());
        let convex = tch::no_grad(|| act.derivative(&u).min().double_value(&[])) >= 0.0;
        match potential(act, &u) {
            Some(psi) => {
                let g = grads_or_zeros(&psi.sum(Kind::Double), &[&u]).remove(0);
                let v = rel_linf_t(&g, &tch::no_grad(|| act.apply(&u)));
                let ok = super::within(v, o.potential_tol);
                let mut row = rows.row("activation", &key, "rel_linf", v);
                row.threshold = Some(o.potential_tol);
                row.verdict = Some("info".into());
                rows.push(row);
                let note = match (ok, convex) {
                    (true, true) => "G = ∇ψ, ψ convex".to_string(),
                    (false, _) => format!("G ≠ ∇ψ: rel_linf={v:.3e} > {:.1e}", o.potential_tol),
                    (true, false) => "ψ not convex".to_string(),
                };
                rows.verdict("activation", &key, &Verdict::Info, json!({ "rel_linf": v, "threshold": o.potential_tol, "convex": convex, "note": note }));
                summary.push(format!("| A5 | {} | {v:.3e} | 1004 points | {:.1e} | info ({note}) |", act.key(), o.potential_tol));
            }
            None => {
                let note = if convex { "ψ not known" } else { "ψ not known; σ′ < 0 somewhere: ψ not convex" };
                rows.verdict("activation", &key, &Verdict::Info, json!({ "note": note, "convex": convex }));
                summary.push(format!("| A5 | {} | – | – | – | info ({note}) |", act.key()));
            }
        }
    }
    if !uncoupled.is_empty() {
        summary.push(String::new());
        summary.push(format!("Blocks without coupling (not scored): {}", uncoupled.join("; ")));
    }
    rows.finish(summary, vec![])
}
