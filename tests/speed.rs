//! The fast paths against plain ones, float64, tiny instances of every coupling family (P-MLP dense, conv
//! Hopfield-ResNet13, conv+pool VGG5, Hopfield attention IMDB/SNLI):
//! * centered EP with its ±β phases batched into one relaxation = the two phases run one after the other
//!   (to ≤ 1e-13), with fixed K and with `tol` early exit (per-phase iteration counts equal);
//! * the stacked relaxation (per-row β, one phase per block, tol, window of host reads) against a naive loop of
//!   `Model::step` written here (the oracle: a phase stops at the first iteration with max r ≤ tol);
//! * `check_every` does not change a result.
mod common;
use common::*;
use epcheck::config::RunConfig;
use epcheck::estimators::ep_centered::{self, NudgedPhases};
use epcheck::estimators::{free_phase, PhaseLengths};
use epcheck::instance::Instance;
use epcheck::model::{Beta, Model, State};
use epcheck::relax::{relax, relax_stacked, state_distance, RelaxOptions};
use tch::{Kind, Tensor};

fn instances() -> Vec<(&'static str, Instance)> {
    tch::set_num_threads(1);
    let pmlp = tiny("tanh", "mse");
    let resnet = tiny_resnet(8, |_| {});
    let vgg = tiny_vgg(|_| {});
    let imdb = {
        let mut cfg = RunConfig::preset_defaults("imdb-hopfield").unwrap();
        cfg.batch = 3;
        cfg.seq_len = Some(5);
        cfg.embed_dim = Some(4);
        cfg.widths = Some(vec![6, 4, 2]);
        Instance::from_config(cfg).unwrap()
    };
    let snli = {
        let mut cfg = RunConfig::preset_defaults("snli-hopfield").unwrap();
        cfg.batch = 3;
        cfg.seq_len = Some(4);
        cfg.embed_dim = Some(3);
        cfg.widths = Some(vec![6, 3]);
        Instance::from_config(cfg).unwrap()
    };
    vec![("p-mlp", pmlp), ("hopfield-resnet13", resnet), ("vgg5-dchn", vgg), ("imdb-hopfield", imdb), ("snli-hopfield", snli)]
}

fn max_abs_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs().max().double_value(&[])).fold(0.0, f64::max)
}

/// The oracle loop: `Model::step` until the phase's max residual is ≤ tol (checked after every iteration).
fn naive_phase(m: &Model, p: &[Tensor], inst: &Instance, s0: &[Tensor], beta: f64, k: i64, tol: Option<f64>) -> (State, i64) {
    let mut s: State = s0.iter().map(|t| t.copy()).collect();
    for t in 1..=k {
        let next = tch::no_grad(|| m.step(p, &inst.batch, &s, beta));
        let r = state_distance(&next, &s).max().double_value(&[]);
        s = next;
        if tol.is_some_and(|tol| r <= tol) {
            return (s, t);
        }
    }
    (s, k)
}

#[test]
fn centered_ep_batched_equals_sequential_fixed_k() {
    for (name, inst) in instances() {
        let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
        let len = PhaseLengths { t_free: 40, k_nudge: 25, tol: None };
        let free = free_phase(m, p, b, len, false);
        let beta = 0.05;
        let (gb, pb, mb) = ep_centered::estimate_with(m, p, b, &free, beta, len, NudgedPhases::Batched);
        let (gs, ps, ms) = ep_centered::estimate_with(m, p, b, &free, beta, len, NudgedPhases::Sequential);
        let e = rel_linf(&flat(&gb.tensors), &flat(&gs.tensors));
        assert!(e <= 1e-13, "{name}: batched vs sequential gradient rel_linf {e:.3e}");
        assert!(max_abs_diff(&pb.state, &ps.state) <= 1e-13 && max_abs_diff(&mb.state, &ms.state) <= 1e-13, "{name}: phase states differ");
        assert_eq!((pb.iters, mb.iters, pb.beta, mb.beta), (25, 25, beta, -beta), "{name}");
        // Oracle for the phases themselves.
        let (sp, _) = naive_phase(m, p, &inst, &free.state, beta, 25, None);
        let (sm, _) = naive_phase(m, p, &inst, &free.state, -beta, 25, None);
        let d = max_abs_diff(&pb.state, &sp).max(max_abs_diff(&mb.state, &sm));
        assert!(d <= 1e-13, "{name}: batched phases vs naive loop {d:.3e}");
    }
}

#[test]
fn centered_ep_batched_equals_sequential_with_tol_per_phase() {
    let mut distinct = 0;
    for (name, inst) in instances() {
        let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
        let free = free_phase(m, p, b, PhaseLengths { t_free: 60, k_nudge: 0, tol: None }, false);
        // A large β makes the two phases converge at different iterations.
        let beta = 0.5;
        let tol = 1e-9;
        let len = PhaseLengths { t_free: 60, k_nudge: 400, tol: Some(tol) };
        let (gb, pb, mb) = ep_centered::estimate_with(m, p, b, &free, beta, len, NudgedPhases::Batched);
        let (gs, ps, ms) = ep_centered::estimate_with(m, p, b, &free, beta, len, NudgedPhases::Sequential);
        assert_eq!((pb.iters, mb.iters), (ps.iters, ms.iters), "{name}: iterations per phase");
        let (sp, kp) = naive_phase(m, p, &inst, &free.state, beta, 400, Some(tol));
        let (sm, km) = naive_phase(m, p, &inst, &free.state, -beta, 400, Some(tol));
        assert_eq!((pb.iters, mb.iters), (kp, km), "{name}: iterations vs the naive loop");
        let e = rel_linf(&flat(&gb.tensors), &flat(&gs.tensors));
        assert!(e <= 1e-13, "{name}: batched vs sequential gradient rel_linf {e:.3e}");
        let d = max_abs_diff(&pb.state, &sp).max(max_abs_diff(&mb.state, &sm));
        assert!(d <= 1e-13, "{name}: phases vs naive loop {d:.3e}");
        distinct += (pb.iters != mb.iters) as usize;
        eprintln!("{name}: +β {} iterations, −β {} iterations", pb.iters, mb.iters);
    }
    assert!(distinct >= 2, "the instances should exercise phases that stop at different iterations");
}

/// Three blocks at β = 0.3, −0.3, 0.1 with traces and tol, read back every 1 and every 7 iterations: each block
/// equals its own phase (the naive loop; `relax` with record and Φ trace for the traces).
#[test]
fn stacked_blocks_equal_single_phases_with_traces_and_windows() {
    for (name, inst) in instances().into_iter().take(3) {
        let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
        let n = b.size();
        let s0 = free_phase(m, p, b, PhaseLengths { t_free: 30, k_nudge: 0, tol: None }, false).state;
        let betas = [0.3, -0.3, 0.1];
        let rep = |t: &Tensor| epcheck::tensor_util::repeat_batch(t, 3);
        let stacked = epcheck::model::Batch { x: b.x.iter().map(rep).collect(), y: rep(&b.y), y_onehot: rep(&b.y_onehot) };
        let init: State = s0.iter().map(rep).collect();
        let rows = Tensor::cat(&betas.iter().map(|&x| Tensor::full([n, 1], x, (Kind::Double, tch::Device::Cpu))).collect::<Vec<_>>(), 0);
        let tol = 1e-8;
        let mut results = vec![];
        for every in [1, 7] {
            let o = RelaxOptions { iters: 300, tol: Some(tol), record: true, trace_phi: true, check_every: every, ..Default::default() };
            results.push(relax_stacked(m, p, &stacked, &init, &Beta::Rows(rows.shallow_clone()), &[n, n, n], &o));
        }
        for (j, &beta) in betas.iter().enumerate() {
            let (s_ref, k_ref) = naive_phase(m, p, &inst, &s0, beta, 300, Some(tol));
            let single = relax(m, p, b, &s0, beta, &RelaxOptions { iters: 300, tol: Some(tol), record: true, trace_phi: true, ..Default::default() });
            assert_eq!(single.iters, k_ref, "{name}: relax vs naive loop");
            for res in &results {
                let ph = &res[j];
                assert_eq!(ph.iters, k_ref, "{name} β = {beta}");
                assert!(max_abs_diff(&ph.state, &s_ref) <= 1e-13, "{name} β = {beta}: state");
                let traj = ph.traj.as_ref().unwrap();
                assert_eq!(traj.len() as i64, k_ref + 1);
                assert!(max_abs_diff(&traj[traj.len() - 1], &s_ref) <= 1e-13);
                assert_eq!(ph.residuals.size(), vec![k_ref, n]);
                assert!((&ph.residuals - &single.residuals).abs().max().double_value(&[]) <= 1e-13, "{name}: residual trace");
                let phi = ph.phi.as_ref().unwrap();
                assert_eq!(phi.size(), vec![k_ref + 1, n]);
                let dphi = (phi - single.phi.as_ref().unwrap()).abs().max().double_value(&[]);
                assert!(dphi <= 1e-12, "{name}: Φ_β trace differs by {dphi:.3e}");
            }
        }
    }
}

/// The in-place update of the relaxation loop computes exactly `Activation::apply` (bitwise) on every map.
#[test]
fn in_place_activation_equals_apply() {
    let mut acts = epcheck::model::activation::Activation::ALL.to_vec();
    acts.push(epcheck::model::activation::Activation::ReluAlpha(3.25));
    let u = Tensor::linspace(-8.0, 8.0, 1601, (Kind::Double, tch::Device::Cpu)).reshape([1601, 1]);
    for a in acts {
        let want = a.apply(&u);
        let got = a.apply_owned(u.copy());
        assert!(got.equal(&want), "{}: in-place update differs", a.key());
    }
}

/// The residual r_b = max over layers and units of |a − b| against its definition, NaN included.
#[test]
fn state_distance_equals_its_definition() {
    // The global generator is shared with the instances the other tests build in parallel.
    let _rng = epcheck::tensor_util::rng_lock();
    tch::manual_seed(epcheck::tensor_util::test_seed(3));
    let a = vec![Tensor::randn([4, 3, 5, 5], (Kind::Double, tch::Device::Cpu)), Tensor::randn([4, 7], (Kind::Double, tch::Device::Cpu))];
    let b = vec![Tensor::randn([4, 3, 5, 5], (Kind::Double, tch::Device::Cpu)), Tensor::randn([4, 7], (Kind::Double, tch::Device::Cpu))];
    let _ = a[1].get(2).get(3).fill_(f64::NAN);
    let got = epcheck::tensor_util::to_vec_f64(&state_distance(&a, &b));
    for (e, &g) in got.iter().enumerate() {
        let want = a.iter().zip(&b).flat_map(|(x, y)| epcheck::tensor_util::to_vec_f64(&(x.get(e as i64) - y.get(e as i64)).abs())).fold(0.0f64, |m, v| if m.is_nan() || v.is_nan() { f64::NAN } else { m.max(v) });
        assert!(g == want || (g.is_nan() && want.is_nan()), "example {e}: {g} vs {want}");
    }
    assert!(got[2].is_nan() && !got[0].is_nan());
}

/// A complex state with real constant drives (input coupling + bias, both real) summed before the complex
/// state-dependent drives, without the constant-drive cache: the step must promote, as out of place.
#[test]
fn uncached_complex_step_promotes_real_partial_sums() {
    tch::set_num_threads(1);
    let inst = tiny("tanh", "mse");
    let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
    let s: State = free_phase(m, p, b, PhaseLengths { t_free: 10, k_nudge: 0, tol: None }, false).state;
    let sc: State = s.iter().map(|t| t.to_kind(Kind::ComplexDouble)).collect();
    let beta = Beta::Rows(Tensor::complex(&Tensor::full([3, 1], 0.1, (Kind::Double, tch::Device::Cpu)), &Tensor::full([3, 1], 0.05, (Kind::Double, tch::Device::Cpu))));
    let got = tch::no_grad(|| m.step_nudged(p, b, &sc, &beta, false));
    // Oracle: the same step with the constant drives cached (a different summation path), and its real part at
    // a real β against the real step.
    let cache = m.constant_drives(p, b, &sc);
    let want = tch::no_grad(|| m.step_cached(p, b, &sc, &beta, false, Some(&cache)));
    assert!(max_abs_diff(&got, &want) <= 1e-14);
    let real = tch::no_grad(|| m.step_nudged(p, b, &sc, &Beta::Real(0.1), false));
    let want_real = tch::no_grad(|| m.step(p, b, &s, 0.1));
    let re: State = real.iter().map(|t| t.real()).collect();
    assert!(max_abs_diff(&re, &want_real) <= 1e-14);
}
