#![allow(dead_code)]
use epcheck::config::RunConfig;
use epcheck::instance::Instance;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::Tensor;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The repository's `.venv` python when it can import torch; otherwise prints `skipped: …` and gives None
/// (the tests that need it return).
pub fn python() -> Option<PathBuf> {
    let py = root().join(".venv/bin/python");
    let ok = Command::new(&py).args(["-c", "import torch"]).output().map(|o| o.status.success()).unwrap_or(false);
    if ok {
        Some(py)
    } else {
        println!("skipped: {} cannot import torch", py.display());
        None
    }
}

/// The epcheck binary as a command: one OpenMP thread, and none of the variables that would change what it does
/// when the tests themselves run inside a Slurm job array (SLURM_ARRAY_*: a run would shard itself) or with the
/// planted-bug switch of the fuzz tests set.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_epcheck"));
    for k in ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "EPCHECK_TEST_PLANT"] {
        c.env_remove(k);
    }
    c.env("OMP_NUM_THREADS", "1");
    c
}

/// Runs the epcheck binary ([`bin`]): (exit code, stdout, stderr).
pub fn epcheck(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// stdout then stderr of a finished command, as text.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The folders directly under `out`, sorted (a command's run folders; no staging folder may be left).
pub fn run_dirs(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out).map(|r| r.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// A fuzz run's cases table (tables/cases.csv) as CSV lines without its last column, `millis` (wall time is not
/// a result).
pub fn cases_table(dir: &Path) -> Vec<String> {
    let t = std::fs::read_to_string(dir.join("tables").join("cases.csv")).unwrap();
    t.lines().map(|l| l.rsplit_once(',').map(|(a, _)| a.to_string()).unwrap_or_default()).collect()
}

/// A tiny P-MLP instance (checks F1-style): archi [6, 5, 5, 3], B = 3, init_scale 0.5.
pub fn tiny(activation: &str, loss: &str) -> Instance {
    tiny_with(activation, loss, |_| {})
}

pub fn tiny_with(activation: &str, loss: &str, f: impl FnOnce(&mut RunConfig)) -> Instance {
    let mut cfg = RunConfig::preset_defaults("p-mlp").unwrap();
    cfg.archi = vec![6, 5, 5, 3];
    cfg.activation = activation.into();
    cfg.loss = loss.into();
    cfg.batch = 3;
    cfg.init_scale = Some(0.5);
    f(&mut cfg);
    Instance::from_config(cfg).unwrap()
}

pub fn flat(ts: &[Tensor]) -> Vec<f64> {
    ts.iter().flat_map(|t| epcheck::tensor_util::to_vec_f64(t)).collect()
}

pub fn rel_l2(a: &[f64], r: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(r).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let den: f64 = r.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den
}

pub fn rel_linf(a: &[f64], r: &[f64]) -> f64 {
    let num = a.iter().zip(r).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let den = r.iter().map(|y| y.abs()).fold(0.0, f64::max);
    num / den
}

/// Least-squares slope of log10 y against log10 x.
pub fn loglog_slope(x: &[f64], y: &[f64]) -> f64 {
    let lx: Vec<f64> = x.iter().map(|v| v.log10()).collect();
    let ly: Vec<f64> = y.iter().map(|v| v.log10()).collect();
    let n = lx.len() as f64;
    let mx = lx.iter().sum::<f64>() / n;
    let my = ly.iter().sum::<f64>() / n;
    let sxy: f64 = lx.iter().zip(&ly).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = lx.iter().map(|a| (a - mx).powi(2)).sum();
    sxy / sxx
}

/// The scalar sign oracle of conventions §8.3: Φ = θ·x·s (P-MLP [1, 1], identity, MSE, target ŷ = 1),
/// θ = 0.7, x = 1.3, with dL/dθ = x(θx − 1).
pub fn scalar_oracle() -> (Instance, f64) {
    let mut inst = tiny_with("identity", "mse", |c| {
        c.archi = vec![1, 1];
        c.batch = 1;
    });
    let (theta, x) = (0.7, 1.3);
    inst.params = vec![Tensor::from_slice(&[theta]).reshape([1, 1]), Tensor::zeros([1], (tch::Kind::Double, tch::Device::Cpu))];
    inst.batch = epcheck::model::Batch::new(Tensor::from_slice(&[x]).reshape([1, 1]), Tensor::from_slice(&[0i64]), 1);
    (inst, x * (theta * x - 1.0))
}

/// Oracle for [`epcheck::model::Model::param_derivative_weighted`] (and `estimators::combine_f`, which every EP
/// estimator uses): Σ_i c_i f(s_i) for three different states of `inst`'s batch must equal the same combination of
/// plain `param_derivative`s, one per state, with and without the copies shortcut, and its real part under
/// `real_only`. `complex`: the states get random imaginary parts and the coefficients are complex.
pub fn check_weighted_derivative(inst: &Instance, complex: bool) {
    use epcheck::estimators::{self, PhaseLengths};
    use tch::Kind;
    let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
    let len = PhaseLengths { t_free: 6, k_nudge: 4, tol: None };
    let s_a = estimators::free_phase(m, p, b, len, false).state;
    let s_b = epcheck::relax::relax(m, p, b, &s_a, 0.3, &epcheck::relax::RelaxOptions::fixed(4)).state;
    let _rng = epcheck::tensor_util::rng_lock();
    tch::manual_seed(11);
    let s_c: Vec<Tensor> = s_a.iter().map(|t| t + t.randn_like() * 0.1).collect();
    let ck = epcheck::tensor_util::complex_kind(p[0].kind());
    let states: Vec<Vec<Tensor>> = [s_a, s_b, s_c]
        .into_iter()
        .map(|s| if complex { s.iter().map(|t| Tensor::complex(t, &(t.randn_like() * 0.2))).collect() } else { s })
        .collect();
    let coeffs = if complex { [(0.7, 0.0), (-1.3, 0.4), (0.25, -0.6)] } else { [(0.7, 0.0), (-1.3, 0.0), (0.25, 0.0)] };
    // Oracle: one plain derivative per state, combined afterwards.
    let mut want: Vec<Tensor> = vec![];
    for (s, &(cr, ci)) in states.iter().zip(&coeffs) {
        let f = m.param_derivative(p, b, s);
        let c = Tensor::complex(&Tensor::from_slice(&[cr]), &Tensor::from_slice(&[ci])).reshape([] as [i64; 0]);
        for (i, fi) in f.into_iter().enumerate() {
            let term = if complex { fi.to_kind(ck) * &c } else { fi * cr };
            if want.len() <= i {
                want.push(term);
            } else {
                want[i] = &want[i] + term;
            }
        }
    }
    let refs: Vec<&[Tensor]> = states.iter().map(|s| &s[..]).collect();
    let scale = want.iter().map(|t| t.abs().max().to_kind(Kind::Double).double_value(&[])).fold(0.0, f64::max);
    let close = |got: &[Tensor], want: &[Tensor], what: &str| {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.size(), w.size(), "{what}: tensor {i} shape");
            let d = (g - w).abs().max().to_kind(Kind::Double).double_value(&[]);
            assert!(d <= 1e-12 * scale, "{what}: tensor {i}: max |weighted − combined| = {d:e} (scale {scale:e})");
        }
    };
    close(&estimators::combine_f(m, p, b, &refs, &coeffs, &vec![(0.0, 0.0); coeffs.len()], false), &want, "copies shortcut");
    let re: Vec<Tensor> = want.iter().map(|t| if complex { t.real() } else { t.shallow_clone() }).collect();
    let got_re = estimators::combine_f(m, p, b, &refs, &coeffs, &vec![(0.0, 0.0); coeffs.len()], true);
    assert!(got_re.iter().all(|t| !epcheck::tensor_util::is_complex(t.kind())), "real_only gives real tensors");
    close(&got_re, &re, "real_only");
    // Without the copies shortcut: the stacked batch as one batch of 3B rows.
    let n = states.len() as i64;
    let rows = b.size();
    let rep = |t: &Tensor| epcheck::tensor_util::repeat_batch(t, n);
    let sb = epcheck::model::Batch { x: b.x.iter().map(rep).collect(), y: rep(&b.y), y_onehot: rep(&b.y_onehot) };
    let kind = if complex { ck } else { p[0].kind() };
    let stacked: Vec<Tensor> = (0..states[0].len()).map(|l| Tensor::cat(&states.iter().map(|s| s[l].to_kind(kind)).collect::<Vec<_>>(), 0)).collect();
    let col = |k: fn(&(f64, f64)) -> f64| Tensor::from_slice(&coeffs.iter().flat_map(|c| std::iter::repeat_n(k(c) / rows as f64, rows as usize)).collect::<Vec<f64>>());
    let w = if complex { Tensor::complex(&col(|c| c.0), &col(|c| c.1)) } else { col(|c| c.0) };
    close(&m.param_derivative_weighted(p, &sb, &stacked, &w, 1, false), &want, "no copies shortcut");
}

/// Holomorphic EP (restart, shortcut) with N = 1, 2, 4, 8 at radius `r` from a free phase of `iters` iterations
/// (each point also runs `iters`), against implicit differentiation of the same model: asserts the model is
/// admissible, every point converged (r_∞ ≤ 1e-13), the error falls with N and N = 8 is within 1e-6 (the issue's
/// standard); returns the four rel_l2 errors.
pub fn check_holomorphic_vs_implicit(inst: &Instance, r: f64, iters: i64, what: &str) -> Vec<f64> {
    use epcheck::estimators::ep_holomorphic::{self as holo, HoloOptions};
    use epcheck::estimators::{self, implicit, PhaseLengths};
    let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
    holo::preflight(m).unwrap();
    let imp = implicit::implicit(m, p, b, &implicit::ImplicitOptions::for_dtype(inst.prec.dtype)).unwrap();
    let gref = flat(&imp.grad.tensors);
    let len = PhaseLengths { t_free: iters, k_nudge: iters, tol: None };
    let free = estimators::free_phase(m, p, b, len, false);
    let mut errs = vec![];
    for n in [1usize, 2, 4, 8] {
        let e = holo::estimate(m, p, b, &free.state, r, len, &HoloOptions::restart(n, true)).unwrap();
        assert!(e.point_residuals.iter().all(|x| x.1 <= 1e-13), "{what}: points converged: {:?}", e.point_residuals);
        errs.push(rel_l2(&flat(&e.grad.tensors), &gref));
    }
    eprintln!("{what}: holomorphic EP at |β| = {r} vs implicit, rel_l2 for N = 1, 2, 4, 8: {errs:?}");
    for w in errs.windows(2) {
        assert!(w[1] < w[0], "{what}: error must fall with N: {errs:?}");
    }
    assert!(errs[3] <= 1e-6, "{what}: N = 8 at |β| = {r}: {}", errs[3]);
    errs
}

/// Tiny Hopfield-ResNet13: widths [3, 4, 4, 5], 2 input channels, 3 classes, dense gain 0.3 (σ_max(W89) < 1,
/// conv-hopfield.md §2.6), B = 2.
pub fn tiny_resnet(height: i64, f: impl FnOnce(&mut RunConfig)) -> Instance {
    let mut cfg = RunConfig::preset_defaults("hopfield-resnet13").unwrap();
    cfg.height = Some(height);
    cfg.in_channels = Some(2);
    cfg.widths = Some(vec![3, 4, 4, 5]);
    cfg.classes = Some(3);
    cfg.gains = Some(vec![0.6, 0.7, 0.3]);
    cfg.batch = 2;
    f(&mut cfg);
    Instance::from_config(cfg).unwrap()
}

/// Tiny VGG5 on 16×16 with positive inputs, so that no receptive field is entirely zero (no structural ties,
/// conv-hopfield.md §11), B = 2.
pub fn tiny_vgg(f: impl FnOnce(&mut RunConfig)) -> Instance {
    let mut cfg = RunConfig::preset_defaults("vgg5-dchn").unwrap();
    cfg.height = Some(16);
    cfg.in_channels = Some(2);
    cfg.widths = Some(vec![3, 4, 4, 5]);
    cfg.classes = Some(3);
    cfg.input_range = Some([0.1, 1.0]);
    cfg.batch = 2;
    f(&mut cfg);
    Instance::from_config(cfg).unwrap()
}
