//! Scripted energies (docs/scripted.md, issue 17): Φ written in PyTorch, loaded as TorchScript, run through the
//! engine by autograd. Oracles: the native presets on the same parameters and batch (an independent
//! implementation of the same Φ: the hand-written terms), planted non-energies, planted bad modules.
//!
//! The modules are written by `fixtures/scripted/models.py` with the repository's `.venv` python (torch only);
//! without it the tests print `skipped` and return.
mod common;
use common::{epcheck, python, root};

use epcheck::config::RunConfig;
use epcheck::estimators::{self, bptt, Estimator, PhaseLengths};
use epcheck::instance::Instance;
use epcheck::model::terms::scripted;
use epcheck::model::Model;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Tensor};

/// Writes fixture module `kind` (with `key=value` options) into `dir`.
fn module(py: &Path, dir: &Path, kind: &str, opts: &[&str]) -> PathBuf {
    let out = dir.join(format!("{kind}.pt"));
    let o = Command::new(py).args(["-W", "ignore"]).arg(root().join("fixtures/scripted/models.py")).arg(kind).arg(&out).args(opts).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Writes several fixture modules (default options) with one interpreter start: `dir/<kind>.pt`.
fn modules(py: &Path, dir: &Path, kinds: &[&str]) {
    let o = Command::new(py).args(["-W", "ignore"]).arg(root().join("fixtures/scripted/models.py")).arg("many").arg(dir).args(kinds).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn rel(a: &[Tensor], r: &[Tensor]) -> f64 {
    common::rel_linf(&common::flat(a), &common::flat(r))
}

/// The scripted model, with the native model's parameters (after checking the two declare the same layers
/// and parameters) and the native instance's batch.
fn scripted_twin(native: &Instance, file: &Path) -> Model {
    let mut m = scripted::load_file(file, Device::Cpu).unwrap();
    assert!(scripted::is_scripted(&m) && m.terms.len() == 1, "the twin is one scripted term, not the native terms");
    assert_eq!(m.layer_names(), native.model.layer_names());
    assert_eq!(m.param_names(), native.model.param_names());
    for (a, b) in m.params.iter().zip(&native.model.params) {
        assert_eq!(a.shape, b.shape, "{}", a.name);
    }
    for (a, b) in m.layers.iter().zip(&native.model.layers) {
        assert_eq!((a.shape.clone(), a.activation.key()), (b.shape.clone(), b.activation.key()), "{}", a.name);
    }
    assert_eq!(m.schedule.groups, native.model.schedule.groups);
    m.init_scale = native.model.init_scale;
    m.validate_terms(&native.params, &native.batch).unwrap();
    m
}

/// Implicit differentiation at the fixed point, the same for both paths (relative ∞-norm ≤ 1e-10, as the estimators
/// in [`assert_same_engine`]).
fn assert_same_implicit(native: &Instance, m: &Model) {
    let io = estimators::implicit::ImplicitOptions::for_dtype(native.prec.dtype);
    let a = estimators::implicit::implicit(&native.model, &native.params, &native.batch, &io).unwrap();
    let s = estimators::implicit::implicit(&m, &native.params, &native.batch, &io).unwrap();
    let r = rel(&s.grad.tensors, &a.grad.tensors);
    assert!(r <= 1e-10, "implicit: {r:e}");
}

/// States ≤ 1e-12, gradients ≤ 1e-10 (relative ∞-norm, float64): the two paths differ only in the order of
/// floating-point sums (hand-written drives vs autograd), ~1e-16 per operation, amplified by at most the
/// contraction of the relaxation over T steps.
fn assert_same_engine(native: &Instance, m: &Model, len: PhaseLengths, ests: &[Estimator]) {
    let (p, b) = (&native.params[..], &native.batch);
    let nf = estimators::free_phase(&native.model, p, b, len, false);
    let sf = estimators::free_phase(m, p, b, len, false);
    let r = rel(&sf.state, &nf.state);
    println!("free state rel_linf {r:.2e}");
    assert!(r <= 1e-12, "free states differ: {r:e}");
    for &est in ests {
        let a = estimators::estimate(est, &native.model, p, b, native.cfg.beta, len).unwrap();
        let s = estimators::estimate(est, m, p, b, native.cfg.beta, len).unwrap();
        for ((name, pa), (_, ps)) in a.phases.iter().zip(&s.phases) {
            let r = rel(&ps.state, &pa.state);
            assert!(r <= 1e-12, "{est:?} phase {name}: states differ {r:e}");
        }
        let r = rel(&s.grad.tensors, &a.grad.tensors);
        println!("{est:?} rel_linf {r:.2e}");
        assert!(r <= 1e-10, "{est:?}: gradients differ {r:e}");
    }
    // The GDU series (BPTT per step by the hand-rolled step VJP, EP per step), theorem mode.
    let o = epcheck::checks::gdu::GduOptions::theorem(len.t_free, len.k_nudge, native.cfg.beta);
    let prec = native.prec;
    let ns = epcheck::checks::gdu::compute_series(&native.model, p, b, native.model.zeros_state(b.size(), prec), &o);
    let ss = epcheck::checks::gdu::compute_series(m, p, b, m.zeros_state(b.size(), prec), &o);
    assert_eq!(ns.t_run, ss.t_run);
    // Per step, relative to the series' peak over the K steps: late EP increments are differences
    // (f(s_{t+1}) − f(s_t))/β of nearly equal f, whose rounding floor is ε·‖f‖/β, not ε·‖increment‖.
    let peak = |series: &[Vec<Tensor>]| series.iter().map(|x| common::flat(x).iter().fold(0.0f64, |m, v| m.max(v.abs()))).fold(0.0, f64::max);
    let err = |a: &[Tensor], r: &[Tensor]| common::flat(a).iter().zip(common::flat(r)).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    let mut worst = 0.0f64;
    for (name, a, r) in [("bptt_θ", &ss.bptt_theta, &ns.bptt_theta), ("bptt_s", &ss.bptt_s, &ns.bptt_s), ("ep_plus", &ss.plus.theta, &ns.plus.theta), ("ep_minus", &ss.minus.theta, &ns.minus.theta)] {
        let scale = peak(r);
        for t in 0..ns.k {
            let e = err(&a[t], &r[t]) / scale;
            worst = worst.max(e);
            assert!(e <= 1e-10, "gdu {name} step {t}: {e:e} of the series peak");
        }
        // The summed series (the K-step estimate) as a gradient.
        let sum = |x: &Vec<Vec<Tensor>>| (0..x[0].len()).map(|i| x.iter().map(|st| st[i].shallow_clone()).reduce(|u, v| u + v).unwrap()).collect::<Vec<_>>();
        let r_sum = rel(&sum(a), &sum(r));
        assert!(r_sum <= 1e-10, "gdu {name} summed over K: {r_sum:e}");
    }
    println!("gdu series ok over K = {}: worst step error {worst:.2e} of the series peak", ns.k);
}

#[test]
fn pmlp_as_scripted_energy_matches_the_native_preset() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let native = common::tiny("tanh", "mse");
    let file = module(&py, d.path(), "pmlp", &["archi=6-5-5-3"]);
    let m = scripted_twin(&native, &file);
    // Same spec → same seeded draws.
    assert_eq!(rel(&m.init_params(3, native.prec), &native.model.init_params(3, native.prec)), 0.0);
    let len = PhaseLengths { t_free: 30, k_nudge: 10, tol: None };
    assert_same_engine(&native, &m, len, &[Estimator::EpPlus, Estimator::EpMinus, Estimator::EpCentered, Estimator::Bptt, Estimator::BpttTrunc]);
    assert_same_implicit(&native, &m);
}

/// The comparison is sensitive: a scripted P-MLP whose output bias is scaled by 1 + 1e-6 inside Φ (a planted bug)
/// moves the states and the gradients far beyond the tolerances above.
#[test]
fn a_planted_difference_in_the_scripted_pmlp_is_detected() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let native = common::tiny("tanh", "mse");
    let file = module(&py, d.path(), "pmlp", &["archi=6-5-5-3", "bias_gain=1.000001"]);
    let m = scripted_twin(&native, &file);
    let len = PhaseLengths { t_free: 30, k_nudge: 10, tol: None };
    let (p, b) = (&native.params[..], &native.batch);
    let r = rel(&estimators::free_phase(&m, p, b, len, false).state, &estimators::free_phase(&native.model, p, b, len, false).state);
    assert!(r > 1e-10, "free states: {r:e}");
    let a = estimators::estimate(Estimator::Bptt, &native.model, p, b, 0.01, len).unwrap();
    let s = estimators::estimate(Estimator::Bptt, &m, p, b, 0.01, len).unwrap();
    let r = rel(&s.grad.tensors, &a.grad.tensors);
    assert!(r > 1e-8, "bptt: {r:e}");
}

#[test]
fn pmlp_async2_and_ce_as_scripted_energy_match_the_native_preset() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    // The async2 schedule (Gauss–Seidel between the two groups) with the cross-entropy loss on an identity output.
    let native = common::tiny_with("tanh", "ce", |c| c.schedule = Some("async2".into()));
    let file = module(&py, d.path(), "pmlp", &["archi=6-5-5-3", "loss=ce", "schedule=async2"]);
    let m = scripted_twin(&native, &file);
    assert_same_engine(&native, &m, PhaseLengths { t_free: 20, k_nudge: 6, tol: None }, &[Estimator::EpPlus, Estimator::EpCentered, Estimator::Bptt]);
}

#[test]
fn resnet13_as_scripted_energy_matches_the_native_preset() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let mut cfg = RunConfig::preset_defaults("hopfield-resnet13").unwrap();
    cfg.height = Some(6);
    cfg.widths = Some(vec![2, 3, 3, 4]);
    cfg.in_channels = Some(2);
    cfg.classes = Some(3);
    cfg.batch = 2;
    cfg.dtype = "f64".into();
    cfg.t_free = 20;
    cfg.k_nudge = 5;
    let native = Instance::from_config(cfg).unwrap();
    let file = module(&py, d.path(), "resnet13", &["c0=2", "height=6", "widths=2-3-3-4", "classes=3"]);
    let m = scripted_twin(&native, &file);
    assert_eq!(rel(&m.init_params(0, native.prec), &native.params), 0.0, "same spec → same seeded draws");
    assert_same_engine(&native, &m, PhaseLengths { t_free: 20, k_nudge: 5, tol: None }, &[Estimator::EpCentered, Estimator::Bptt]);
    let (a, _) = bptt::truncated(&native.model, &native.params, &native.batch, 20, 5).unwrap();
    let (s, _) = bptt::truncated(&m, &native.params, &native.batch, 20, 5).unwrap();
    assert!(rel(&s.tensors, &a.tensors) <= 1e-10);
}

/// The tiny IMDB attention model of tests/attention.rs (L = 5, d = 4, fc 6-4-2, B = 3), in float64.
fn tiny_imdb() -> Instance {
    let mut cfg = RunConfig::preset_defaults("imdb-hopfield").unwrap();
    cfg.batch = 3;
    cfg.seq_len = Some(5);
    cfg.embed_dim = Some(4);
    cfg.widths = Some(vec![6, 4, 2]);
    cfg.dtype = "f64".into();
    Instance::from_config(cfg).unwrap()
}

/// The scripted IMDB twin with L1's update given as `map` (fixtures/scripted/models.py imdb map=…); the map's
/// key must be `key` (epcheck's attention map by name, or the module's own methods).
fn imdb_twin(py: &Path, dir: &Path, native: &Instance, map: &str, key: &str) -> Model {
    let dir = dir.join(map);
    std::fs::create_dir_all(&dir).unwrap();
    let file = module(py, &dir, "imdb", &[&format!("map={map}")]);
    let m = scripted_twin(native, &file);
    assert_eq!(m.update_map(0).map(|u| u.key()), Some(key), "{map}: L1's update map");
    assert_eq!(native.model.update_map(0).map(|u| u.key()), Some("attention"));
    assert!((1..m.layers.len()).all(|k| m.update_map(k).is_none()));
    m
}

/// The IMDB model with L1's update named from epcheck's list (`attention`, with its keys, queries and scale in
/// the spec): the same engine as the native preset, implicit differentiation included.
#[test]
fn imdb_with_the_attention_map_by_name_matches_the_native_preset() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let native = tiny_imdb();
    let m = imdb_twin(&py, d.path(), &native, "attention", "attention");
    let len = PhaseLengths { t_free: 30, k_nudge: 10, tol: None };
    assert_same_engine(&native, &m, len, &[Estimator::EpPlus, Estimator::EpCentered, Estimator::Bptt, Estimator::BpttTrunc]);
    assert_same_implicit(&native, &m);
}

/// L1's update as the module's own TorchScript functions: G(u, x) and ψ(u, x) both written out (`scripted`), or
/// only ψ with G = ∇ψ by autograd (`potential`). J·v by double backward; the native attention map's closed-form
/// Jacobian (hopfield-attention §4.4) is the oracle through BPTT, the GDU series and implicit differentiation.
#[test]
fn imdb_with_scripted_update_functions_matches_the_native_preset() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let native = tiny_imdb();
    let len = PhaseLengths { t_free: 25, k_nudge: 8, tol: None };
    for map in ["scripted", "potential"] {
        let m = imdb_twin(&py, d.path(), &native, map, "scripted");
        println!("map = {map}");
        assert_same_engine(&native, &m, len, &[Estimator::EpCentered, Estimator::Bptt]);
        // J·v of the scripted map (autograd double backward) against the closed form, at a random drive.
        let _rng = epcheck::tensor_util::rng_lock();
        tch::manual_seed(17);
        let u = native.model.zeros_state(native.batch.size(), native.prec)[0].randn_like();
        let v = u.randn_like();
        let (a, s) = (native.model.jacobian_apply(0, &native.batch, &u, &v), m.jacobian_apply(0, &native.batch, &u, &v));
        let r = rel(&[s], &[a]);
        assert!(r <= 1e-12, "{map}: J·v differs from the closed form: {r:e}");
        let (a, s) = (native.model.activate(0, &native.batch, &u), m.activate(0, &native.batch, &u));
        assert!(rel(&[s], &[a]) <= 1e-12, "{map}: G differs");
    }
}

/// A planted non-energy in the update map: G(u) = softmax(c·u xᵀ) x + 0.2·u K with K antisymmetric (not ∇ψ, and
/// not the gradient of anything): `audit` fails on L1 (A4 Jacobian asymmetry, A5m G ≠ ∇ψ) and `gdu` fails (EP,
/// which assumes a gradient map, ≠ BPTT, which differentiates what runs). The same module without the rotation
/// (`map=scripted`) passes audit.
#[test]
fn a_scripted_update_that_is_not_a_gradient_is_caught_by_audit_and_gdu() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let (ds, dg) = (d.path().join("skew"), d.path().join("good"));
    std::fs::create_dir_all(&ds).unwrap();
    std::fs::create_dir_all(&dg).unwrap();
    let skew = module(&py, &ds, "imdb", &["map=skew"]);
    let out = d.path().join("runs");
    let o = out.to_str().unwrap();
    // One random probe state and one probe pair (plus the free and nudged states): the skew is O(1), far above 1e-12.
    let light = ["--batch", "3", "--T", "20", "--K", "5", "--set", "checks.audit.pairs=1", "--set", "checks.audit.n_rand=1"];
    let (code, stdout, stderr) = epcheck(&[&["audit", "--energy", skew.to_str().unwrap(), "--out", o][..], &light[..]].concat());
    assert_eq!(code, 1, "audit: {stdout}\n{stderr}");
    assert!(stdout.contains("update map not a gradient map: layer L1") && stdout.contains("A5m:L1"), "audit must name L1: {stdout}");
    let (code, stdout, stderr) = epcheck(&["gdu", "--energy", skew.to_str().unwrap(), "--out", o, "--batch", "3", "--T", "20", "--K", "5"]);
    assert_eq!(code, 1, "gdu: {stdout}\n{stderr}");
    assert!(stdout.contains("fail") && stdout.contains("synapses.0.weight"), "gdu must name the failing tensor: {stdout}");
    let good = module(&py, &dg, "imdb", &["map=scripted"]);
    let (code, stdout, _) = epcheck(&[&["audit", "--energy", good.to_str().unwrap(), "--out", o][..], &light[..]].concat());
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("pass"), "{stdout}");
}

/// Holomorphic EP on a complex-safe scripted P-MLP: the drive at a complex state is the holomorphic derivative
/// (libtorch's backward gives its conjugate, conj f′(z), for grad_output 1; conjugated back) — checked against
/// the native dense term's closed form W s + b on the same complex state — and `ep_holomorphic` N = 1, 2, 4
/// (shortcut on and off) equals the native preset's to ≤ 1e-10.
#[test]
fn holomorphic_ep_on_a_complex_safe_scripted_pmlp_matches_the_native_preset() {
    use epcheck::estimators::ep_holomorphic::{self as holo, HoloOptions};
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let native = common::tiny("tanh", "mse");
    let file = module(&py, d.path(), "pmlp", &["archi=6-5-5-3", "complex_safe=1"]);
    let m = scripted_twin(&native, &file);
    let (p, b) = (&native.params[..], &native.batch);
    // The Wirtinger convention, against the closed form: drives at a complex state.
    let s: Vec<Tensor> = {
        let _rng = epcheck::tensor_util::rng_lock();
        tch::manual_seed(23);
        native.model.zeros_state(b.size(), native.prec).iter().map(|t| Tensor::complex(&(t.randn_like() * 0.5), &(t.randn_like() * 0.5))).collect()
    };
    for k in 0..m.layers.len() {
        let (a, sc) = tch::no_grad(|| (native.model.drive(p, b, &s, k, 0.0), m.drive(p, b, &s, k, 0.0)));
        let num = (&sc - &a).abs().max().double_value(&[]);
        let den = a.abs().max().double_value(&[]);
        assert!(num <= 1e-13 * den, "layer {k}: scripted drive at a complex state differs from W s + b by {num:e}");
        let wrong = (&sc.conj() - &a).abs().max().double_value(&[]);
        assert!(wrong > 1e-3 * den, "the probe state must tell f′ from conj f′");
    }
    let len = PhaseLengths { t_free: 40, k_nudge: 15, tol: None };
    let free = estimators::free_phase(&native.model, p, b, len, false);
    for n in [1, 2, 4] {
        for shortcut in [true, false] {
            let o = HoloOptions::restart(n, shortcut);
            let a = holo::estimate(&native.model, p, b, &free.state, 0.05, len, &o).unwrap();
            let s = holo::estimate(&m, p, b, &free.state, 0.05, len, &o).unwrap();
            let r = rel(&s.grad.tensors, &a.grad.tensors);
            println!("ep_holomorphic N = {n}, shortcut {shortcut}: rel_linf {r:.2e}");
            assert!(r <= 1e-10, "N = {n}, shortcut {shortcut}: {r:e}");
        }
    }
}

/// A module that claims `complex_safe` but is not holomorphic (a |s|² term, real-analytic only) is refused before
/// anything runs; a module without the claim keeps the clear refusal of holomorphic EP.
#[test]
fn complex_safety_is_verified_and_otherwise_holomorphic_ep_is_refused() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let bad = module(&py, d.path(), "pmlp", &["archi=6-5-5-3", "complex_safe=1", "planted_abs=1"]);
    let out = d.path().join("runs");
    let o = out.to_str().unwrap();
    let (code, _, stderr) = epcheck(&["estimate", "--energy", bad.to_str().unwrap(), "--estimator", "ep_holomorphic", "--batch", "3", "--T", "10", "--K", "5", "--out", o]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.lines().count() == 1 && stderr.contains("complex_safe") && stderr.contains("not holomorphic"), "{stderr}");
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0, "nothing may be written");
    let plain = module(&py, d.path(), "lateral", &[]);
    let (code, _, stderr) = epcheck(&["estimate", "--energy", plain.to_str().unwrap(), "--estimator", "ep_holomorphic", "--batch", "3", "--T", "10", "--K", "5", "--out", o]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("scripted") && stderr.contains("not implemented for complex states"), "{stderr}");
}

/// The helper's `dump_batch` (safetensors written with the `safetensors` package) is read by epcheck's own loaders
/// under the interchange names: parameters and batch come back exactly as Python wrote them (known values
/// 0.01·k per tensor entry, labels k mod C).
#[test]
fn the_helpers_dump_is_read_by_epchecks_loaders() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let file = module(&py, d.path(), "lateral", &[]);
    let st = d.path().join("lateral.safetensors");
    let code = format!(
        "import sys, torch; sys.path.insert(0, {:?}); sys.path.insert(0, {:?})\nimport epcheck_energy, models\nspec = models._lateral_spec(6, 5, 3)\nps = [torch.arange(torch.Size(s).numel(), dtype=torch.float64).reshape(s) * 0.01 for _, s, _ in spec['params']]\nx = torch.arange(24, dtype=torch.float64).reshape(4, 6) * 0.01\nepcheck_energy.dump_batch({:?}, spec, ps, x, torch.arange(4) % 3)",
        root().join("python").to_str().unwrap(),
        root().join("fixtures/scripted").to_str().unwrap(),
        st.to_str().unwrap()
    );
    let o = Command::new(&py).args(["-W", "ignore", "-c", &code]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = scripted::load_file(&file, Device::Cpu).unwrap();
    let prec = epcheck::precision::Precision { dtype: epcheck::precision::Dtype::F64, device: Device::Cpu };
    let p = epcheck::io::load_params(&m, &st, prec).unwrap();
    for (t, spec) in p.iter().zip(&m.params) {
        let n: i64 = spec.shape.iter().product();
        let want = Tensor::arange(n, (tch::Kind::Double, Device::Cpu)).reshape(spec.shape.as_slice()) * 0.01;
        assert!(t.equal(&want), "{}", spec.name);
    }
    let b = epcheck::io::load_batch(&m, &st, prec).unwrap();
    assert!(b.x[0].equal(&(Tensor::arange(24, (tch::Kind::Double, Device::Cpu)).reshape([4, 6]) * 0.01)));
    assert_eq!(epcheck::tensor_util::to_vec_f64(&b.y.to_kind(tch::Kind::Double)), vec![0.0, 1.0, 2.0, 0.0]);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(walk(&p));
            } else {
                v.push(p);
            }
        }
    }
    v
}

fn has_figure(dir: &Path, stem: &str) -> bool {
    walk(dir).iter().any(|p| p.file_stem().map(|s| s.to_string_lossy().starts_with(stem)).unwrap_or(false) && p.extension().map(|e| e == "svg").unwrap_or(false))
}

#[test]
fn a_model_no_preset_expresses_runs_every_check() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let file = module(&py, d.path(), "lateral", &[]);
    let e = file.to_str().unwrap();
    for (check, figure) in [("gdu", "gdu"), ("audit", ""), ("converge", "residual")] {
        let out = d.path().join(format!("runs-{check}"));
        let args = [check, "--energy", e, "--out", out.to_str().unwrap(), "--batch", "4", "--T", "60", "--K", "15"];
        let (code, stdout, stderr) = epcheck(&args);
        println!("{check}: {stdout}");
        assert_eq!(code, 0, "{check}: {stdout}\n{stderr}");
        assert!(stdout.contains(": pass"), "{check}: {stdout}");
        if !figure.is_empty() {
            assert!(has_figure(&out, figure), "{check}: no {figure} figure under {}", out.display());
        }
    }
}

#[test]
fn a_model_no_preset_expresses_has_the_bias_slopes() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let file = module(&py, d.path(), "lateral", &[]);
    let e = file.to_str().unwrap();
    let out = d.path().join("runs-bias");
    let args = ["bias", "--energy", e, "--out", out.to_str().unwrap(), "--batch", "4", "--T", "60", "--K", "15", "--grid", "0.0002,0.0005,0.001,0.002,0.005,0.01,0.02,0.05"];
    let (code, stdout, stderr) = epcheck(&args);
    println!("bias: {stdout}");
    assert_eq!(code, 0, "bias: {stdout}\n{stderr}");
    assert!(stdout.contains(": pass"), "bias: {stdout}");
    assert!(has_figure(&out, "bias_err"), "no bias figure under {}", out.display());
    // The fitted bias slopes: 1 for one-sided EP, 2 for centered (the digest prints `ep_plus 1.00 (1)`).
    for (est, expected) in [("ep_plus", 1.0), ("ep_minus", 1.0), ("ep_centered", 2.0)] {
        let at = stdout.find(&format!("{est} ")).unwrap_or_else(|| panic!("no {est} slope: {stdout}"));
        let slope: f64 = stdout[at + est.len() + 1..].split_whitespace().next().unwrap().parse().unwrap();
        assert!((slope - expected).abs() <= 0.1, "{est}: slope {slope}, expected {expected}");
    }
}

#[test]
fn a_module_that_is_not_an_energy_is_caught_with_the_layer_named() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    modules(&py, d.path(), &["asym", "lateral"]);
    let file = d.path().join("asym.pt");
    let e = file.to_str().unwrap();
    let out = d.path().join("runs");
    let (code, stdout, stderr) = epcheck(&["audit", "--energy", e, "--out", out.to_str().unwrap(), "--batch", "4"]);
    assert_eq!(code, 1, "audit: {stdout}\n{stderr}");
    assert!(stdout.contains("fail") && stdout.contains("L1"), "audit must name layer L1: {stdout}");
    let (code, stdout, stderr) = epcheck(&["gdu", "--energy", e, "--out", out.to_str().unwrap(), "--batch", "4", "--T", "60", "--K", "15"]);
    assert_eq!(code, 1, "gdu: {stdout}\n{stderr}");
    assert!(stdout.contains("fail") && stdout.contains("W_in.weight"), "gdu must name the failing tensor: {stdout}");
    // The same model with the drives left to autograd (the symmetric lateral coupling) passes audit.
    let file = d.path().join("lateral.pt");
    let (code, stdout, _) = epcheck(&["audit", "--energy", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--batch", "4"]);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn bad_modules_are_refused_with_one_line_and_nothing_written() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("no_spec", "no method spec()"),
        ("no_primitive", "no method primitive("),
        ("bad_shape", "expected Φ per example of shape (B,)"),
        ("per_example", "one scalar per example"),
        ("nan", "non-finite"),
    ];
    modules(&py, d.path(), &cases.iter().map(|c| c.0).collect::<Vec<_>>());
    for (kind, needle) in cases {
        let file = d.path().join(format!("{kind}.pt"));
        let out = d.path().join(format!("runs-{kind}"));
        let (code, stdout, stderr) = epcheck(&["gdu", "--energy", file.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert_eq!(code, 2, "{kind}: stdout {stdout} stderr {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{kind}: one line expected: {stderr}");
        assert!(lines[0].contains(needle) && lines[0].contains(&format!("{kind}.pt")), "{kind}: {stderr}");
        assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0, "{kind}: something was written");
    }
    // Not a TorchScript file at all, and a missing file.
    let junk = d.path().join("junk.pt");
    std::fs::write(&junk, b"not a module").unwrap();
    let out = d.path().join("runs-junk");
    for (f, needle) in [(junk.clone(), "not a TorchScript module"), (d.path().join("missing.pt"), "no such file")] {
        let (code, _, stderr) = epcheck(&["audit", "--energy", f.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!out.exists());
    }
}

#[test]
fn local_says_why_it_does_not_apply() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let file = module(&py, d.path(), "lateral", &[]);
    let out = d.path().join("runs");
    let (code, stdout, stderr) = epcheck(&["local", "--energy", file.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("info") && stdout.contains("no term decomposition"), "{stdout}");
    assert!(!stdout.contains(": pass"), "local must not pass a scripted energy: {stdout}");
}

#[test]
fn a_verify_suite_takes_an_energy_file() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    module(&py, d.path(), "lateral", &[]);
    let suite = d.path().join("suite.toml");
    std::fs::write(&suite, "name = \"lateral\"\nseeds = [0]\n[model]\nenergy = \"lateral.pt\"\nbatch = 3\n[checks.audit]\n[checks.local]\n").unwrap();
    let out = d.path().join("verify");
    let (code, stdout, stderr) = epcheck(&["verify", suite.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("audit") && stdout.contains("local"), "{stdout}");
}
