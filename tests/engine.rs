//! Oracle tests of the engine, float64: closed forms, autograd of Φ, autograd BPTT, finite differences.
mod common;
use common::*;
use epcheck::estimators::{self, bptt, Estimator, PhaseLengths};
use epcheck::model::{Batch, Model};
use epcheck::relax::{relax, RelaxOptions};
use tch::{Kind, Tensor};

const ACTS: [&str; 7] = ["identity", "tanh", "sigmoid", "logistic4", "my_hard_sig", "hard_sigmoid_2u", "ctrd_hard_sig"];

fn random_state(m: &Model, b: i64, seed: i64) -> Vec<Tensor> {
    let _rng = epcheck::tensor_util::rng_lock();
    tch::manual_seed(epcheck::tensor_util::test_seed(seed));
    m.layers.iter().map(|l| Tensor::rand([b, l.shape[0]], (Kind::Double, tch::Device::Cpu)) * 1.5 - 0.25).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Sign convention (conventions §8.3): Φ = θ·x·s, identity, MSE. ep_plus = g/(1+β), ep_minus = g/(1−β),
// ep_centered = g/(1−β²), with g = dL/dθ = x(θx − ŷ).


#[test]
fn sign_oracle_closed_forms() {
    let (inst, g) = scalar_oracle();
    let len = PhaseLengths { t_free: 5, k_nudge: 400, tol: None };
    for beta in [0.05, 0.2, 0.5] {
        for (est, want) in [
            (Estimator::EpPlus, g / (1.0 + beta)),
            (Estimator::EpMinus, g / (1.0 - beta)),
            (Estimator::EpCentered, g / (1.0 - beta * beta)),
        ] {
            let r = estimators::estimate(est, &inst.model, &inst.params, &inst.batch, beta, len).unwrap();
            let got = flat(&r.grad.tensors)[0];
            assert!((got - want).abs() <= 1e-13 * want.abs(), "{} at β={beta}: {got} vs {want}", est.key());
        }
    }
    // BPTT at the fixed point is the exact gradient.
    let r = estimators::estimate(Estimator::Bptt, &inst.model, &inst.params, &inst.batch, 0.1, len).unwrap();
    assert!((flat(&r.grad.tensors)[0] - g).abs() < 1e-14);
}

#[test]
fn sign_sgd_step_along_minus_estimate_decreases_loss() {
    let inst = tiny("tanh", "mse");
    let len = PhaseLengths { t_free: 400, k_nudge: 400, tol: None };
    let loss_at = |p: &[Tensor]| {
        let free = estimators::free_phase(&inst.model, p, &inst.batch, len, false);
        inst.model.mean_loss(&inst.params, &inst.batch, &free.state).double_value(&[])
    };
    let r = estimators::estimate(Estimator::EpCentered, &inst.model, &inst.params, &inst.batch, 1e-3, len).unwrap();
    let norm = flat(&r.grad.tensors).iter().map(|v| v * v).sum::<f64>().sqrt();
    let eta = 1e-2 / norm;
    let stepped: Vec<Tensor> = inst.params.iter().zip(&r.grad.tensors).map(|(p, g)| p - g * eta).collect();
    let (l0, l1) = (loss_at(&inst.params), loss_at(&stepped));
    assert!(l1 < l0, "L did not decrease: {l0} -> {l1}");
}

// ---------------------------------------------------------------------------------------------------------
// Analytic drives and local parameter gradients equal autograd of Φ (≤ 1e-12 relative).

#[test]
fn drives_equal_autograd_of_phi() {
    let _rng = epcheck::tensor_util::rng_lock();
    for act in ACTS {
        for loss in ["mse", "ce"] {
            let inst = tiny(act, loss);
            let s = random_state(&inst.model, 3, 7);
            for beta in [0.0, 0.3, -0.2] {
                let auto = inst.model.drives_autograd(&inst.params, &inst.batch, &s, beta);
                for k in 0..s.len() {
                    let u = inst.model.drive(&inst.params, &inst.batch, &s, k, beta);
                    let e = rel_linf(&flat(&[u]), &flat(&[auto[k].shallow_clone()]));
                    assert!(e <= 1e-12, "{act}/{loss} β={beta} L{}: rel err {e}", k + 1);
                }
            }
        }
    }
}

#[test]
fn local_param_gradients_equal_autograd_of_phi() {
    let _rng = epcheck::tensor_util::rng_lock();
    for act in ACTS {
        let inst = tiny(act, "mse");
        let s = random_state(&inst.model, 3, 11);
        let local = inst.model.param_derivative(&inst.params, &inst.batch, &s);
        let auto = inst.model.param_derivative_autograd(&inst.params, &inst.batch, &s);
        for (i, (a, b)) in local.iter().zip(&auto).enumerate() {
            let e = rel_linf(&flat(&[a.shallow_clone()]), &flat(&[b.shallow_clone()]));
            assert!(e <= 1e-12, "{act} {}: {e}", inst.model.params[i].name);
        }
    }
}

#[test]
fn hand_rolled_step_vjp_equals_autograd_sync_and_async2() {
    // Also the recorded form (`step_vjp_recorded`) and its parameter part replayed from the pieces (`param_vjp_from`).
    let _rng = epcheck::tensor_util::rng_lock();
    for act in ["tanh", "logistic4", "my_hard_sig"] {
        for schedule in ["sync", "async2"] {
            for beta in [0.0, 0.4] {
                let inst = tiny_with(act, "ce", |c| {
                    c.schedule = Some(schedule.into());
                    c.archi = vec![6, 5, 4, 5, 3];
                });
                let s = random_state(&inst.model, 3, 3);
                let lam = random_state(&inst.model, 3, 5);
                let (hs, hp) = inst.model.step_vjp(&inst.params, &inst.batch, &s, &lam, beta);
                let (as_, ap) = inst.model.step_vjp_autograd(&inst.params, &inst.batch, &s, &lam, beta);
                let e_s = rel_linf(&flat(&hs), &flat(&as_));
                let e_p = rel_linf(&flat(&hp), &flat(&ap));
                assert!(e_s <= 1e-12 && e_p <= 1e-12, "{act} {schedule} β={beta}: state {e_s}, params {e_p}");
                // The recorded VJP and the parameter VJP replayed from its pieces (the GDU check's second sweep).
                let (rs, rp, pieces) = inst.model.step_vjp_recorded(&inst.params, &inst.batch, &s, &lam, beta);
                let replay = inst.model.param_vjp_from(&inst.params, &inst.batch, &pieces);
                let (e_rs, e_rp, e_re) = (rel_linf(&flat(&rs), &flat(&as_)), rel_linf(&flat(&rp), &flat(&ap)), rel_linf(&flat(&replay), &flat(&ap)));
                assert!(e_rs <= 1e-12 && e_rp <= 1e-12 && e_re <= 1e-12, "{act} {schedule} β={beta}: recorded state {e_rs}, params {e_rp}, replayed params {e_re}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// BPTT: the hand-rolled sweep equals autograd through the whole graph, and central finite differences.

#[test]
fn bptt_sweep_equals_autograd_graph() {
    // Seed 1 for my_hard_sig: with seed 0 its output layer sits at 0 (saturated) and every gradient is 0.
    for (act, schedule, seed) in [("tanh", "sync", 0), ("my_hard_sig", "sync", 1), ("logistic4", "async2", 0)] {
        let inst = tiny_with(act, "mse", |c| {
            c.schedule = Some(schedule.into());
            c.seed = seed;
        });
        let (g, _) = bptt::full(&inst.model, &inst.params, &inst.batch, 25);
        let a = bptt::autograd(&inst.model, &inst.params, &inst.batch, 25, None);
        assert!(flat(&a).iter().any(|v| *v != 0.0), "{act}: degenerate instance");
        let e = rel_linf(&flat(&g.tensors), &flat(&a));
        assert!(e < 1e-12, "{act} {schedule} full: {e}");
        let (g, _) = bptt::truncated(&inst.model, &inst.params, &inst.batch, 25, 7).unwrap();
        let a = bptt::autograd(&inst.model, &inst.params, &inst.batch, 25, Some(7));
        assert!(rel_linf(&flat(&g.tensors), &flat(&a)) < 1e-12, "{act} {schedule} trunc");
    }
}

fn loss_fixed_t(m: &Model, p: &[Tensor], batch: &Batch, t: i64) -> f64 {
    let f = estimators::free_phase(m, p, batch, PhaseLengths { t_free: t, k_nudge: 1, tol: None }, false);
    m.mean_loss(p, batch, &f.state).double_value(&[])
}

#[test]
fn bptt_equals_central_finite_differences() {
    let _rng = epcheck::tensor_util::rng_lock();
    for act in ["tanh", "logistic4"] {
        let inst = tiny(act, "mse");
        let t = 40;
        let (g, _) = bptt::full(&inst.model, &inst.params, &inst.batch, t);
        let g = flat(&g.tensors);
        let theta = flat(&inst.params);
        let theta_norm = theta.iter().map(|v| v * v).sum::<f64>().sqrt();
        let gnorm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        tch::manual_seed(epcheck::tensor_util::test_seed(99));
        for dir in 0..4 {
            let v: Vec<Tensor> = inst.params.iter().map(|p| p.randn_like()).collect();
            let vn = flat(&v).iter().map(|x| x * x).sum::<f64>().sqrt();
            let v: Vec<Tensor> = v.into_iter().map(|x| x / vn).collect();
            let eps = 1e-5 * theta_norm;
            let d = |e: f64| {
                let pp: Vec<Tensor> = inst.params.iter().zip(&v).map(|(p, v)| p + v * e).collect();
                let pm: Vec<Tensor> = inst.params.iter().zip(&v).map(|(p, v)| p - v * e).collect();
                (loss_fixed_t(&inst.model, &pp, &inst.batch, t) - loss_fixed_t(&inst.model, &pm, &inst.batch, t)) / (2.0 * e)
            };
            let richardson = (4.0 * d(eps / 2.0) - d(eps)) / 3.0;
            let proj: f64 = g.iter().zip(flat(&v)).map(|(a, b)| a * b).sum();
            let scale = proj.abs().max(gnorm / (g.len() as f64).sqrt());
            let err = (richardson - proj).abs() / scale;
            assert!(err <= 1e-6, "{act} direction {dir}: FD {richardson} vs BPTT {proj} (rel {err})");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Bias scaling on a converged, kink-free instance: one-sided slope ≈ 1, symmetric ≈ 2; symmetric EP at
// β = 1e-3 matches BPTT to ≤ 1e-5.

fn converged_reference(inst: &epcheck::instance::Instance) -> Vec<f64> {
    // Truncated BPTT over 600 steps from a converged free state = the Neumann series of the implicit gradient.
    let (g, _) = bptt::truncated(&inst.model, &inst.params, &inst.batch, 1200, 600).unwrap();
    flat(&g.tensors)
}

#[test]
fn ep_bias_slopes_one_sided_linear_symmetric_quadratic() {
    let inst = tiny("tanh", "mse");
    let gref = converged_reference(&inst);
    let len = PhaseLengths { t_free: 1200, k_nudge: 1200, tol: None };
    let betas = [1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2];
    let mut errs = std::collections::BTreeMap::new();
    for est in [Estimator::EpPlus, Estimator::EpMinus, Estimator::EpCentered] {
        let e: Vec<f64> = betas
            .iter()
            .map(|&b| rel_l2(&flat(&estimators::estimate(est, &inst.model, &inst.params, &inst.batch, b, len).unwrap().grad.tensors), &gref))
            .collect();
        errs.insert(est.key(), e);
    }
    for (k, lo, hi) in [("ep_plus", 0.8, 1.2), ("ep_minus", 0.8, 1.2), ("ep_centered", 1.8, 2.2)] {
        let slope = loglog_slope(&betas, &errs[k]);
        assert!((lo..=hi).contains(&slope), "{k}: slope {slope}, errors {:?}", errs[k]);
    }
    let sym = errs["ep_centered"][0];
    assert!(sym <= 1e-5, "symmetric EP at β=1e-3: rel err {sym}");
}

#[test]
fn relax_residuals_and_early_exit() {
    let inst = tiny("tanh", "mse");
    let init = inst.model.zeros_state(3, inst.prec);
    let ph = relax(&inst.model, &inst.params, &inst.batch, &init, 0.0, &RelaxOptions { iters: 500, tol: Some(1e-12), ..Default::default() });
    assert!(ph.iters < 500, "a contracting instance stops early");
    let r = epcheck::relax::residual(&inst.model, &inst.params, &inst.batch, &ph.state, 0.0);
    assert!(r.max().double_value(&[]) <= 1e-12);
    assert_eq!(ph.residuals.size(), vec![ph.iters, 3]);
}


// ---------------------------------------------------------------------------------------------------------
// GDU: parameter series match BPTT step by step, neuron series match J·BPTT_s (not raw BPTT_s), and the
// one-sweep series equal the published O(K²) re-run definition and the autograd-per-step variant.

use epcheck::checks::{self, gdu};

fn gdu_opts(k: i64, beta: f64) -> gdu::GduOptions {
    gdu::GduOptions { verify_quadratic: true, ..gdu::GduOptions::theorem(30, k, beta) }
}

#[test]
fn gdu_series_match_bptt_per_step_and_neurons_match_j_bptt() {
    for act in ["tanh", "logistic4"] {
        let inst = tiny(act, "mse");
        let o = gdu_opts(12, 1e-3);
        let g = gdu::compute_series(&inst.model, &inst.params, &inst.batch, inst.model.zeros_state(3, inst.prec), &o);
        for t in 0..12 {
            for (i, spec) in inst.model.params.iter().enumerate() {
                let ep: Vec<f64> = flat(&[(&g.plus.theta[t][i] + &g.minus.theta[t][i]) * 0.5]);
                let bp = flat(&[g.bptt_theta[t][i].shallow_clone()]);
                if bp.iter().all(|v| *v == 0.0) {
                    // Structural zero of BPTT: the symmetric EP series is O(β²) there.
                    let scale = (0..12).flat_map(|u| flat(&[g.bptt_theta[u][i].shallow_clone()])).fold(0.0f64, |m, v| m.max(v.abs()));
                    assert!(ep.iter().all(|v| v.abs() <= 10.0 * 1e-6 * scale), "{act} t={t} {}: structural zero", spec.name);
                    continue;
                }
                // Per step, the error is within the scored bound c·β² of the whole series' norm (checks §3).
                let series_norm = (0..12).flat_map(|u| flat(&[g.bptt_theta[u][i].shallow_clone()])).map(|v| v * v).sum::<f64>().sqrt();
                let err = rel_l2(&ep, &bp) * bp.iter().map(|v| v * v).sum::<f64>().sqrt() / series_norm;
                assert!(err < 10.0 * 1e-6, "{act} t={t} {}: ep_sym vs bptt error {err} of the series norm", spec.name);
            }
            for j in 0..inst.model.layers.len() {
                let ep: Vec<f64> = flat(&[(&g.plus.neurons[t][j] + &g.minus.neurons[t][j]) * 0.5]);
                let bj = flat(&[g.bptt_j[t][j].shallow_clone()]);
                if bj.iter().all(|v| *v == 0.0) {
                    continue;
                }
                let series_norm = (0..12).flat_map(|u| flat(&[g.bptt_j[u][j].shallow_clone()])).map(|v| v * v).sum::<f64>().sqrt();
                let e = rel_l2(&ep, &bj);
                let err = e * bj.iter().map(|v| v * v).sum::<f64>().sqrt() / series_norm;
                assert!(err < 10.0 * 1e-6, "{act} t={t} L{}: ep_sym vs J·bptt error {err} of the series norm", j + 1);
                // The raw BPTT neuron series differ by the factor J: EP is much closer to J·BPTT_s wherever J
                // differs appreciably from 1.
                let raw = flat(&[g.bptt_s[t][j].shallow_clone()]);
                if rel_l2(&bj, &raw) > 1e-3 {
                    assert!(rel_l2(&ep, &raw) > 100.0 * e, "{act} t={t} L{}: EP neurons should match J·BPTT_s, not raw", j + 1);
                }
            }
        }
        let report = gdu::run(&inst, &o);
        assert_eq!(report.overall, checks::Verdict::Pass, "{act}: {:?}", report.verdicts.iter().filter(|v| v.verdict != "pass").collect::<Vec<_>>());
    }
}

#[test]
fn one_sweep_series_equal_published_rerun_and_autograd_variant() {
    let inst = tiny_with("my_hard_sig", "ce", |c| c.seed = 1);
    let o = gdu_opts(8, 1e-3);
    let g = gdu::compute_series(&inst.model, &inst.params, &inst.batch, inst.model.zeros_state(3, inst.prec), &o);
    let q = gdu::published_series(&inst.model, &inst.params, &inst.batch, &g.traj);
    let lambda = inst.model.loss_state_grad(&inst.params, &inst.batch, &g.traj[8]);
    let auto = epcheck::adjoint::reverse_sweep(&inst.model, &inst.params, &inst.batch, &g.traj, lambda, 8, true, true);
    let a: Vec<f64> = g.bptt_theta.iter().flat_map(|s| flat(s)).collect();
    let b: Vec<f64> = q.iter().flat_map(|s| flat(s)).collect();
    let c: Vec<f64> = auto.per_step_theta.iter().flat_map(|s| flat(s)).collect();
    assert!(a.iter().any(|v| *v != 0.0));
    assert!(rel_linf(&a, &b) <= 1e-12, "one-sweep vs published: {}", rel_linf(&a, &b));
    assert!(rel_linf(&a, &c) <= 1e-12, "hand-rolled vs autograd per step: {}", rel_linf(&a, &c));
}

#[test]
fn gdu_reports_not_converged_instead_of_pass_when_free_phase_is_short() {
    let inst = tiny("tanh", "mse");
    let mut o = gdu_opts(4, 1e-3);
    o.t_free = 4;
    o.extend_free = false;
    let report = gdu::run(&inst, &o);
    assert!(matches!(report.overall, checks::Verdict::Inconclusive(_) | checks::Verdict::Fail(_)), "{:?}", report.overall);
}
