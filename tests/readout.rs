//! The softmax readout (estimators §1: θ-dependent loss), `bptt_loss_state = previous` (§4.1), the preset
//! `p-mlp-holo-toy` (§1.8) and `reference_casts` (conventions §11.3), float64, against independent oracles:
//! autograd of Φ_β and of the T-step graph, central finite differences of the loss, implicit differentiation,
//! and the float32 cast path computed by autograd.
mod common;
use common::*;
use epcheck::checks::gdu;
use epcheck::estimators::ep_holomorphic::{self as holo, HoloOptions, HoloSchedule};
use epcheck::estimators::{self, bptt, ep_centered, ep_one_sided, fd, implicit, PhaseLengths};
use epcheck::instance::Instance;
use tch::{Kind, Tensor};

/// F3 of checks.md: archi [6, 5, 5, 3] with `readout = softmax`, `loss = ce` (free layers L1, L2 and a readout of 3).
fn f3(activation: &str) -> Instance {
    tiny_with(activation, "ce", |c| {
        c.readout = Some("softmax".into());
        c.batch = 4;
        c.init_scale = Some(1.0);
    })
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The readout tensors' entries of a flattened gradient (the last two tensors, synapses.2.weight and .bias).
fn readout_part(inst: &Instance, g: &[Tensor]) -> Vec<f64> {
    let r = inst.model.readout.expect("a readout");
    flat(&[g[r.weight].shallow_clone(), g[r.bias].shallow_clone()])
}

#[test]
fn readout_layout_follows_the_spec() {
    let inst = f3("tanh");
    let m = &inst.model;
    assert_eq!(m.layer_names(), vec!["L1", "L2"], "D = L − 1 free layers");
    assert_eq!(m.param_names(), vec!["synapses.0.weight", "synapses.0.bias", "synapses.1.weight", "synapses.1.bias", "synapses.2.weight", "synapses.2.bias"]);
    assert_eq!(inst.params[4].size(), vec![3, 5]);
    assert_eq!(m.layers[1].activation.key(), "tanh", "s_D gets σ with the readout");
    // The logits are the readout of s_D: z = W_ro s_D + b_ro, by hand.
    let s: Vec<Tensor> = m.zeros_state(4, inst.prec).iter().map(|t| t.rand_like() - 0.5).collect();
    let z = m.loss_input(&inst.params, &s[1]);
    let want = s[1].matmul(&inst.params[4].tr()) + &inst.params[5];
    assert!(rel_linf(&flat(&[z]), &flat(&[want])) == 0.0);
}

#[test]
fn readout_drives_and_step_vjp_equal_autograd() {
    // The analytic nudge W_roᵀ β (softmax(z) − ŷ) against autograd of Σ_b Φ_β,b, at random states; the
    // hand-rolled step VJP (readout's θ-dependence at β ≠ 0 included) against autograd of one step.
    let inst = f3("logistic4");
    let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
    let s: Vec<Tensor> = epcheck::tensor_util::seeded(11, || m.zeros_state(4, inst.prec).iter().map(|t| t.rand_like() * 2.0 - 1.0).collect());
    for beta in [0.0, 0.3, -0.7] {
        let auto = m.drives_autograd(p, b, &s, beta);
        for k in 0..m.layers.len() {
            let d = m.drive(p, b, &s, k, beta);
            assert!(rel_linf(&flat(&[d]), &flat(&[auto[k].shallow_clone()])) <= 1e-14, "drive L{} at β = {beta}", k + 1);
        }
        let lam: Vec<Tensor> = epcheck::tensor_util::seeded(12, || s.iter().map(|t| t.randn_like()).collect());
        let (hs, hp) = tch::no_grad(|| m.step_vjp(p, b, &s, &lam, beta));
        let (as_, ap) = m.step_vjp_autograd(p, b, &s, &lam, beta);
        assert!(rel_linf(&flat(&hs), &flat(&as_)) <= 1e-13, "step VJP (state) at β = {beta}");
        assert!(rel_linf(&flat(&hp), &flat(&ap)) <= 1e-13, "step VJP (params) at β = {beta}");
    }
}

#[test]
fn readout_bptt_equals_autograd_and_finite_differences_including_the_readout() {
    let inst = f3("tanh");
    let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
    let t = 40;
    let (g, _) = bptt::full(m, p, b, t);
    let auto = bptt::autograd(m, p, b, t, None);
    assert!(rel_linf(&flat(&g.tensors), &flat(&auto)) <= 1e-13, "hand-rolled sweep vs autograd through T steps");
    let ro = readout_part(&inst, &g.tensors);
    assert!(norm(&ro) > 1e-3, "the readout tensors get a gradient");
    // FD of L after exactly T steps (fd_mode = fixed_T), along seeded directions and along the readout weight
    // alone. Error floor: Richardson truncation O(ε⁴) + round-off ε_mach·|L|/ε ≈ 1e-11 with ε = 1e-5‖θ‖.
    let theta_norm = norm(&flat(p));
    let mut dirs = fd::directions(p, 3, 0);
    let mut only_ro: Vec<Tensor> = p.iter().map(|t| t.zeros_like()).collect();
    only_ro[4] = epcheck::tensor_util::seeded(3, || p[4].randn_like());
    let n = norm(&flat(&only_ro));
    dirs.push(only_ro.into_iter().map(|t| t / n).collect());
    let gn = norm(&flat(&g.tensors));
    for v in dirs {
        let d = fd::central(m, p, b, &m.zeros_state(4, inst.prec), &v, 1e-5 * theta_norm, fd::FdMode::FixedT(t), 1e-13).unwrap();
        let proj = fd::project(&g.tensors, &v);
        assert!((d.richardson - proj).abs() <= 1e-8 * gn, "FD {} vs BPTT {proj}", d.richardson);
    }
}

#[test]
fn readout_implicit_equals_fd_at_the_fixed_point_and_bptt_at_large_t() {
    let inst = f3("tanh");
    let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
    let o = implicit::ImplicitOptions::for_dtype(inst.prec.dtype);
    let imp = implicit::implicit(m, p, b, &o).unwrap();
    let g = flat(&imp.grad.tensors);
    let (bp, _) = bptt::full(m, p, b, 400);
    assert!(rel_l2(&g, &flat(&bp.tensors)) <= 1e-10, "implicit vs bptt(T = 400)");
    let gn = norm(&g);
    let theta_norm = norm(&flat(p));
    for v in fd::directions(p, 4, 1) {
        let d = fd::central(m, p, b, &imp.star.state, &v, 1e-5 * theta_norm, fd::FdMode::Converged, o.star_tol).unwrap();
        let proj = fd::project(&imp.grad.tensors, &v);
        assert!((d.richardson - proj).abs() <= 1e-8 * gn, "FD {} vs implicit {proj}", d.richardson);
    }
}

#[test]
fn readout_ep_estimates_converge_to_the_gradient_as_beta_goes_to_zero() {
    // estimators §2.3: at a converged free state ep_plus/ep_minus are O(β), ep_centered and holomorphic N = 2 are
    // O(β²), holomorphic N = 4 is O(β⁴); the readout rows are ∂L̄/∂θ_ro at the nudged states (§2.2).
    let inst = f3("tanh");
    let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
    let imp = implicit::implicit(m, p, b, &implicit::ImplicitOptions::for_dtype(inst.prec.dtype)).unwrap();
    let g = flat(&imp.grad.tensors);
    let len = PhaseLengths { t_free: 400, k_nudge: 400, tol: None };
    let free = estimators::free_phase(m, p, b, len, false);
    let err = |betas: &[f64], est: &dyn Fn(f64) -> Vec<Tensor>| -> Vec<f64> { betas.iter().map(|&beta| rel_l2(&flat(&est(beta)), &g)).collect() };
    let betas = [0.04, 0.02, 0.01];
    let plus = err(&betas, &|beta| ep_one_sided::estimate(m, p, b, &free, beta, len).0.tensors);
    let cen = err(&betas, &|beta| ep_centered::estimate(m, p, b, &free, beta, len).0.tensors);
    let h4 = err(&[0.2, 0.1, 0.05], &|beta| holo::estimate(m, p, b, &free.state, beta, len, &HoloOptions::restart(4, true)).unwrap().grad.tensors);
    let sp = loglog_slope(&betas, &plus);
    let sc = loglog_slope(&betas, &cen);
    let sh = loglog_slope(&[0.2, 0.1, 0.05], &h4);
    assert!((sp - 1.0).abs() < 0.15 && (sc - 2.0).abs() < 0.15 && (sh - 4.0).abs() < 0.3, "slopes {sp} {sc} {sh} (errors {plus:?} {cen:?} {h4:?})");
    assert!(plus[2] < 2e-2 && cen[2] < 1e-4 && h4[2] < 1e-5, "{plus:?} {cen:?} {h4:?}");
    // ep_plus's readout rows are exactly ∂L̄/∂θ_ro at s⁺ (§2.2), computed here from z = W_ro s + b_ro by hand.
    let (e, plus_ph) = ep_one_sided::estimate(m, p, b, &free, 0.01, len);
    let s_d = &plus_ph.state[1];
    let z = s_d.matmul(&p[4].tr()) + &p[5];
    let q = z.softmax(1, Kind::Double) - &b.y_onehot;
    let want = flat(&[q.tr().matmul(s_d) / 4.0, q.sum_dim_intlist(Some(&[0i64][..]), false, None) / 4.0]);
    assert!(rel_linf(&readout_part(&inst, &e.tensors), &want) <= 1e-13, "ep_plus readout rows");
}

#[test]
fn readout_holomorphic_paths_agree_and_carry_matches_restart() {
    let inst = f3("logistic4");
    let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
    let len = PhaseLengths { t_free: 300, k_nudge: 300, tol: None };
    let free = estimators::free_phase(m, p, b, len, false);
    let r = 0.2;
    let on = holo::estimate(m, p, b, &free.state, r, len, &HoloOptions::restart(6, true)).unwrap();
    let off = holo::estimate(m, p, b, &free.state, r, len, &HoloOptions::restart(6, false)).unwrap();
    let auto = holo::estimate(m, p, b, &free.state, r, len, &HoloOptions { autograd: true, ..HoloOptions::restart(6, false) }).unwrap();
    let carry = holo::estimate(m, p, b, &free.state, r, len, &HoloOptions { schedule: HoloSchedule::Carry, ..HoloOptions::restart(6, false) }).unwrap();
    let g = flat(&on.grad.tensors);
    assert!(rel_linf(&flat(&off.grad.tensors), &g) <= 1e-11, "shortcut on/off");
    assert!(rel_linf(&flat(&auto.grad.tensors), &g) <= 1e-11, "autograd f_k (Wirtinger recipe) vs local forms");
    assert!(rel_linf(&flat(&carry.grad.tensors), &g) <= 1e-10, "carry vs restart at converged points");
    assert!(off.im_leak.unwrap().1 <= 1e-10, "imaginary leakage");
    // N = 1 is ep_plus and N = 2 is ep_centered, readout rows included (§3.10).
    let plus = flat(&ep_one_sided::estimate(m, p, b, &free, r, len).0.tensors);
    let cen = flat(&ep_centered::estimate(m, p, b, &free, r, len).0.tensors);
    let h1 = holo::estimate(m, p, b, &free.state, r, len, &HoloOptions::restart(1, true)).unwrap();
    let h2 = holo::estimate(m, p, b, &free.state, r, len, &HoloOptions::restart(2, false)).unwrap();
    assert!(rel_linf(&flat(&h1.grad.tensors), &plus) <= 1e-12);
    assert!(rel_linf(&flat(&h2.grad.tensors), &cen) <= 1e-12);
}

#[test]
fn readout_gdu_series_match_and_telescope() {
    // The GDU theorem with a θ-dependent loss (estimators §5.1): BPTT_θ[0] holds ∂L̄/∂θ_ro(s_T), EP_θ[0] holds
    // ∂L̄/∂θ_ro(s^β_1); the EP series telescope to the one-sided estimate from s_T over K steps.
    let inst = f3("tanh");
    let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
    let o = gdu::GduOptions::replay(400, 6, 1e-4);
    let s = gdu::compute_series(m, p, b, m.zeros_state(4, inst.prec), &o);
    let sum = |series: &[Vec<Tensor>]| -> Vec<f64> {
        let mut acc = vec![0.0; flat(p).len()];
        for st in series {
            for (a, v) in acc.iter_mut().zip(flat(st)) {
                *a += v;
            }
        }
        acc
    };
    // Σ_t BPTT_θ[t] = bptt_trunc over the last K steps, by autograd through those steps.
    let auto = {
        let pl: Vec<Tensor> = p.iter().map(|t| t.detach().set_requires_grad(true)).collect();
        let mut st = epcheck::model::detach_state(&s.traj[0]);
        for _ in 0..6 {
            st = m.step(&pl, b, &st, 0.0);
        }
        let refs: Vec<&Tensor> = pl.iter().collect();
        epcheck::tensor_util::grads_or_zeros(&m.mean_loss(&pl, b, &st), &refs)
    };
    assert!(rel_linf(&sum(&s.bptt_theta), &flat(&auto)) <= 1e-13);
    let free_t = epcheck::relax::Phase { beta: 0.0, state: s.traj[6].iter().map(|t| t.shallow_clone()).collect(), iters: 0, traj: None, residuals: Tensor::zeros([0, 4], (Kind::Double, tch::Device::Cpu)), phi: None };
    let plus = ep_one_sided::estimate(m, p, b, &free_t, 1e-4, PhaseLengths { t_free: 0, k_nudge: 6, tol: None }).0.tensors;
    assert!(rel_linf(&sum(&s.plus.theta), &flat(&plus)) <= 1e-9, "telescoping (EP difference quotient, floor ε·‖f‖/β ≈ 1e-12 relative to f)");
    // Per step, at a converged s_T, the symmetric EP series matches BPTT to O(β²) (+ round-off ε‖f‖/β ≈ 1e-11).
    let bt0 = readout_part(&inst, &s.bptt_theta[0]);
    let ep0: Vec<f64> = readout_part(&inst, &s.plus.theta[0]).iter().zip(readout_part(&inst, &s.minus.theta[0])).map(|(a, c)| (a + c) / 2.0).collect();
    assert!(norm(&bt0) > 1e-3 && rel_linf(&ep0, &bt0) <= 1e-7, "readout step 0: {} vs {}", ep0[0], bt0[0]);
    for t in 0..6 {
        let bt = flat(&s.bptt_theta[t]);
        let ep: Vec<f64> = flat(&s.plus.theta[t]).iter().zip(flat(&s.minus.theta[t])).map(|(a, c)| (a + c) / 2.0).collect();
        assert!(rel_linf(&ep, &bt) <= 1e-6, "step {t}");
    }
}

#[test]
fn bptt_loss_state_previous_is_the_gradient_of_the_loss_at_t_minus_1() {
    // estimators §4.1 (holomorphic reference's off-by-one): with `previous` the loss is read at s_{T−1}; FD of L
    // after exactly T − 1 iterations is the oracle (the same floor as above).
    let t = 12;
    let prev = tiny_with("tanh", "ce", |c| {
        c.readout = Some("softmax".into());
        c.bptt_loss_state = Some("previous".into());
        c.batch = 2;
    });
    assert!(prev.model.bptt_loss_previous);
    let (m, p, b) = (&prev.model, &prev.params, &prev.batch);
    let (g, free) = bptt::full(m, p, b, t);
    assert_eq!(free.iters, t, "the free phase still runs T iterations");
    let auto = bptt::autograd(m, p, b, t, None);
    assert!(rel_linf(&flat(&g.tensors), &flat(&auto)) <= 1e-13);
    let gn = norm(&flat(&g.tensors));
    let theta_norm = norm(&flat(p));
    for v in fd::directions(p, 3, 2) {
        let d = fd::central(m, p, b, &m.zeros_state(2, prev.prec), &v, 1e-5 * theta_norm, fd::FdMode::FixedT(t - 1), 1e-13).unwrap();
        assert!((d.richardson - fd::project(&g.tensors, &v)).abs() <= 1e-8 * gn);
    }
    // Truncation counts back from s_{T−1}: bptt_trunc with K = T − 1 is the full gradient.
    let (tr, _) = bptt::truncated(m, p, b, t, t - 1).unwrap();
    assert!(rel_linf(&flat(&tr.tensors), &flat(&g.tensors)) <= 1e-14);
    // And it is not the `final` gradient (the planted off-by-one is visible).
    let mut fin = Instance::from_config(prev.cfg.clone()).unwrap();
    fin.model.bptt_loss_previous = false;
    let (gf, _) = bptt::full(&fin.model, p, b, t);
    assert!(rel_l2(&flat(&gf.tensors), &flat(&g.tensors)) > 1e-4);
}

#[test]
fn p_mlp_holo_toy_builds_and_its_holomorphic_estimate_matches_bptt() {
    let cfg = epcheck::config::RunConfig::preset_defaults("p-mlp-holo-toy").unwrap();
    let inst = Instance::from_config(cfg.clone()).unwrap();
    let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
    assert_eq!(m.param_names().len(), 4);
    assert_eq!((m.layers.len(), inst.params[2].size()), (1, vec![4, 4]), "6-4-4 with a readout of 4: one free layer");
    assert_eq!(b.size(), 1);
    // init = trunc_normal, σ₀ = 0.5: weights within ±2σ₀, biases 0.
    assert!(flat(&[p[0].shallow_clone(), p[2].shallow_clone()]).iter().all(|v| v.abs() <= 1.0) && flat(&[p[1].shallow_clone(), p[3].shallow_clone()]).iter().all(|v| *v == 0.0));
    let o = cfg.holo_options(cfg.holo_points);
    assert_eq!((o.n, o.schedule), (24, HoloSchedule::Carry));
    let len = PhaseLengths { t_free: cfg.t_free, k_nudge: cfg.k_nudge, tol: None };
    let free = estimators::free_phase(m, p, b, len, false);
    let e = holo::estimate(m, p, b, &free.state, cfg.beta, len, &o).unwrap();
    let (g, _) = bptt::full(m, p, b, cfg.t_free);
    // Bias O(r^24) ≈ 1e-24 and the per-point contraction after K = 100 steps are below round-off here; the floor
    // is ε·‖f‖/β ≈ 1e-14.
    let err = rel_l2(&flat(&e.grad.tensors), &flat(&g.tensors));
    assert!(err <= 1e-10, "p-mlp-holo-toy: holomorphic vs bptt rel_l2 {err}");
}

#[test]
fn reference_casts_bptt_is_the_float32_loss_path_and_differs_by_the_float32_floor() {
    // conventions §11.3: with `reference_casts = on` in a float64 run, the BPTT loss is computed on float32 copies.
    // Independent path: autograd through the T-step graph of the cast loss (the same float32 roundings).
    for (loss, readout) in [("mse", None), ("ce", Some("softmax"))] {
        let mk = |casts: bool| {
            tiny_with("tanh", loss, |c| {
                c.readout = readout.map(str::to_string);
                c.reference_casts = casts.then(|| "on".to_string());
            })
        };
        let (on, off) = (mk(true), mk(false));
        assert!(on.model.reference_casts && !off.model.reference_casts);
        let (m, p, b) = (&on.model, &on.params, &on.batch);
        let t = 30;
        let g_on = flat(&bptt::full(m, p, b, t).0.tensors);
        let g_off = flat(&bptt::full(&off.model, p, b, t).0.tensors);
        let auto = flat(&bptt::autograd(m, p, b, t, None));
        let d = rel_linf(&g_on, &g_off);
        // The cast moves each loss-gradient entry by ≤ ε₃₂ = 6e-8 relative; the sweep is linear in it.
        assert!(d > 1e-12 && d < 1e-6, "{loss}: cast vs no cast {d}");
        // MSE: the same roundings in the same order, so equal to the last bit; CE: autograd's softmax backward
        // rounds p·g − ŷ·g instead of (p − ŷ)·g, which moves the result at the ε₃₂ level only.
        let tol = if loss == "mse" { 1e-15 } else { 1e-6 };
        assert!(rel_linf(&g_on, &auto) <= tol, "{loss}: sweep vs autograd of the cast loss {}", rel_linf(&g_on, &auto));
        // The nudge under casts is float32 arithmetic (β, the loss input and ŷ rounded): equal to autograd of Φ − βℓ₃₂.
        let s: Vec<Tensor> = epcheck::tensor_util::seeded(5, || m.zeros_state(b.size(), on.prec).iter().map(|t| t.rand_like()).collect());
        let out = m.output;
        let auto_u = m.drives_autograd(p, b, &s, 0.1)[out].shallow_clone();
        let u = m.drive(p, b, &s, out, 0.1);
        let u_off = off.model.drive(p, b, &s, out, 0.1);
        let nudge_diff = rel_linf(&flat(&[u.shallow_clone()]), &flat(&[u_off.shallow_clone()]));
        assert!(nudge_diff > 0.0 && nudge_diff < 1e-7, "{loss}: nudge moved by {nudge_diff}");
        if loss == "mse" {
            assert!(rel_linf(&flat(&[u]), &flat(&[auto_u])) <= 1e-15, "{loss}: nudge vs autograd of the cast loss");
        }
    }
}

#[test]
fn reference_casts_apply_to_float64_only() {
    let mk = |casts: bool| {
        tiny_with("tanh", "mse", |c| {
            c.dtype = "f32".into();
            c.reference_casts = casts.then(|| "on".to_string());
        })
    };
    let (on, off) = (mk(true), mk(false));
    let g_on = flat(&bptt::full(&on.model, &on.params, &on.batch, 10).0.tensors);
    let g_off = flat(&bptt::full(&off.model, &off.params, &off.batch, 10).0.tensors);
    assert_eq!(g_on, g_off, "a float32 run already is the cast path");
}

/// max |a − b| / max |b| for complex (or real) tensors.
fn crel(a: &Tensor, b: &Tensor) -> f64 {
    let num = (a - b).abs().max().to_kind(Kind::Double).double_value(&[]);
    num / b.abs().max().to_kind(Kind::Double).double_value(&[])
}

fn epcheck(args: &[&str], out: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_epcheck")).args(args).arg("--out").arg(out).output().unwrap()
}

#[test]
fn bad_readout_options_are_one_line_did_you_mean_errors() {
    let cases: [(&[&str], &str); 5] = [
        (&["estimate", "--archi", "6-5-3", "--loss", "ce", "--set", "readout=sofmax"], "readout = 'sofmax' is not one of none, softmax; did you mean 'softmax'?"),
        (&["estimate", "--archi", "6-5-3", "--set", "bptt_loss_state=previus"], "did you mean 'previous'?"),
        (&["estimate", "--archi", "6-5-3", "--set", "reference_casts=yes"], "reference_casts = 'yes' is not one of off, on"),
        (&["estimate", "--archi", "6-5-3", "--set", "readout=softmax"], "readout = 'softmax' needs loss = 'ce'"),
        (&["estimate", "--archi", "6-3", "--loss", "ce", "--set", "readout=softmax"], "readout = 'softmax' needs at least 3 sizes"),
    ];
    for (args, want) in cases {
        let d = tempfile::tempdir().unwrap();
        let o = epcheck(args, d.path());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "{args:?}: nothing written");
    }
}

#[test]
fn holomorphic_points_are_dumped_with_the_spec_names_and_reassemble_the_estimate() {
    // estimators §8: `state.holo<N>_<k>.<l>.re/.im`, `dPhidtheta.holo<N>_<k>.<p>.re/.im`. Oracles from the file
    // alone: f_k of the input coupling is the local form (1/B) s_kᵀ x at the dumped state, the readout bias's is
    // −β_k (1/B) Σ_b (softmax(z_k) − ŷ) (§1.4, §3.2), and (1/N) Σ_k Re[−f_k/β_k] is the dumped estimate (§3.3).
    let d = tempfile::tempdir().unwrap();
    let dump = d.path().join("h.safetensors");
    for (schedule, extra) in [("carry", vec![]), ("restart", vec!["--set", "holo_conj_shortcut=true"])] {
        let mut args = vec!["estimate", "--preset", "p-mlp-holo-toy", "--N", "4", "--T", "60", "--K", "60", "--holo-schedule", schedule, "--dump", dump.to_str().unwrap()];
        args.extend(extra);
        let o = epcheck(&args, &d.path().join(format!("runs-{schedule}")));
        assert!(o.status.success(), "{schedule}: {}", String::from_utf8_lossy(&o.stderr));
        let t = epcheck::io::read_tensors(&dump).unwrap();
        let get = |k: &str| t.get(k).unwrap_or_else(|| panic!("{schedule}: missing {k}")).shallow_clone();
        let cx = |name: &str| Tensor::complex(&get(&format!("{name}.re")), &get(&format!("{name}.im")));
        let (x, y) = (get("input.x"), get("input.y"));
        let onehot = y.onehot(4).to_kind(Kind::Double);
        let (w1, b1) = (get("param.synapses.1.weight"), get("param.synapses.1.bias"));
        let r = 0.1;
        let names = ["synapses.0.weight", "synapses.0.bias", "synapses.1.weight", "synapses.1.bias"];
        for k in 0..4 {
            let a = 2.0 * std::f64::consts::PI * k as f64 / 4.0;
            let (br, bi) = [(r, 0.0), (0.0, r), (-r, 0.0), (0.0, -r)][k];
            assert!((br - r * a.cos()).abs() < 1e-15 && (bi - r * a.sin()).abs() < 1e-15);
            let beta = Tensor::complex(&Tensor::from_slice(&[br]), &Tensor::from_slice(&[bi]));
            let s = cx(&format!("state.holo4_{k}.L1"));
            assert_eq!(s.size(), vec![1, 4]);
            let f_w0 = cx(&format!("dPhidtheta.holo4_{k}.synapses.0.weight"));
            let want_w0 = s.tr().matmul(&x.to_kind(Kind::ComplexDouble));
            assert!(crel(&f_w0, &want_w0) <= 1e-14, "{schedule} k={k}: f_k(W_0)");
            let z = s.matmul(&w1.tr().to_kind(Kind::ComplexDouble)) + b1.to_kind(Kind::ComplexDouble);
            let e = (&z - z.real().amax([1i64], true)).exp();
            let p = &e / e.sum_dim_intlist(Some(&[1i64][..]), true, None);
            let want_b1 = -(&beta) * (p - &onehot).sum_dim_intlist(Some(&[0i64][..]), false, None);
            let f_b1 = cx(&format!("dPhidtheta.holo4_{k}.synapses.1.bias"));
            assert!(crel(&f_b1, &want_b1) <= 1e-14, "{schedule} k={k}: f_k(b_ro)");
        }
        // The estimate from the points, tensor by tensor.
        for n in names {
            let mut sum: Option<Tensor> = None;
            for k in 0..4 {
                let (br, bi) = [(r, 0.0), (0.0, r), (-r, 0.0), (0.0, -r)][k];
                let beta = Tensor::complex(&Tensor::from_slice(&[br]), &Tensor::from_slice(&[bi])).reshape([] as [i64; 0]);
                let term = -cx(&format!("dPhidtheta.holo4_{k}.{n}")) / beta;
                sum = Some(match sum {
                    Some(a) => a + term,
                    None => term,
                });
            }
            let est = sum.unwrap().real() / 4.0;
            let got = get(&format!("grad.ep_holomorphic4.{n}"));
            assert!(rel_linf(&flat(&[got]), &flat(&[est])) <= 1e-13, "{schedule}: {n} from the dumped points");
        }
    }
}

/// The P-CNN fixture (fixtures/graphs/p-cnn-softmax.toml) with a smooth activation (finite differences and the EP
/// limit need no kink between the phases), its init bounds halved (a contracting sync map: at full scale the
/// max-pool couplings settle into a period-2 cycle), B = 3, float64.
fn p_cnn(activation: &str) -> (epcheck::model::Model, Vec<Tensor>, epcheck::model::Batch) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/graphs/p-cnn-softmax.toml")).unwrap();
    let m = epcheck::graph::parse_str(&text.replace("hard_sigmoid_2u", activation)).unwrap();
    let prec = epcheck::precision::Precision::new(epcheck::precision::Dtype::F64, tch::Device::Cpu);
    let p: Vec<Tensor> = m.init_params(3, prec).into_iter().map(|t| t * 0.5).collect();
    let b = epcheck::instance::synthetic_batch(&m, 3, 3, prec);
    (m, p, b)
}

#[test]
fn p_cnn_softmax_graph_readout_of_a_conv_layer_gradients_agree() {
    let (m, p, b) = p_cnn("tanh");
    assert_eq!(m.classes(), 4);
    assert_eq!(m.param_names().last().unwrap(), "synapses.2.bias");
    assert_eq!(m.layers[m.output].shape, vec![3, 2, 2], "the readout reads a conv layer, flattened");
    // Round trip through the graph form keeps the readout.
    let again = epcheck::graph::parse_str(&epcheck::graph::emit(&m).unwrap()).unwrap();
    assert_eq!(again.readout, m.readout);
    assert_eq!(again.param_names(), m.param_names());
    let s: Vec<Tensor> = epcheck::tensor_util::seeded(4, || m.zeros_state(3, epcheck::precision::Precision::new(epcheck::precision::Dtype::F64, tch::Device::Cpu)).iter().map(|t| t.rand_like()).collect());
    let auto = m.drives_autograd(&p, &b, &s, 0.4);
    assert!(rel_linf(&flat(&[m.drive(&p, &b, &s, 1, 0.4)]), &flat(&[auto[1].shallow_clone()])) <= 1e-14, "nudge through the flattened readout");
    let o = implicit::ImplicitOptions::for_dtype(epcheck::precision::Dtype::F64);
    let imp = implicit::implicit(&m, &p, &b, &o).unwrap();
    let g = flat(&imp.grad.tensors);
    let (bp, _) = bptt::full(&m, &p, &b, 300);
    assert!(rel_l2(&flat(&bp.tensors), &g) <= 1e-10, "bptt(T = 300) vs implicit");
    let theta_norm = norm(&flat(&p));
    for v in fd::directions(&p, 3, 4) {
        let d = fd::central(&m, &p, &b, &imp.star.state, &v, 1e-5 * theta_norm, fd::FdMode::Converged, o.star_tol).unwrap();
        assert_eq!(d.kink_changes, 0, "max-pool argmax unchanged");
        assert!((d.richardson - fd::project(&imp.grad.tensors, &v)).abs() <= 1e-8 * norm(&g), "FD vs implicit");
    }
    let len = PhaseLengths { t_free: 300, k_nudge: 300, tol: None };
    let free = estimators::free_phase(&m, &p, &b, len, false);
    let errs: Vec<f64> = [0.02, 0.01].iter().map(|&beta| rel_l2(&flat(&ep_centered::estimate(&m, &p, &b, &free, beta, len).0.tensors), &g)).collect();
    assert!(errs[1] < 1e-3 && (errs[0] / errs[1] - 4.0).abs() < 0.5, "ep_centered → gradient as β² (errors {errs:?})");
}
