//! The binary end to end: reports are written, bad input is a one-line error with exit code 2 and no report.
mod common;
use epcheck::io::write_tensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};

fn epcheck(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_epcheck")).args(args).output().expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn runs(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => vec![],
    }
}

const TINY: &[&str] = &["--preset", "p-mlp", "--archi", "6-5-5-3", "--batch", "3", "--set", "init_scale=0.5", "--activation", "logistic4"];

fn with(base: &[&str], extra: &[&str]) -> Vec<String> {
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn run_args(a: &[String]) -> (i32, String, String) {
    epcheck(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn gdu_writes_tables_figures_and_dump() {
    let d = tmp();
    let out = d.path().join("runs");
    let dump = d.path().join("dump.safetensors");
    let mut a = vec!["gdu".to_string()];
    a.extend(with(TINY, &["--K", "20", "--out", out.to_str().unwrap(), "--dump", dump.to_str().unwrap()]));
    let (code, stdout, stderr) = run_args(&a);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("gdu p-mlp-") && stdout.contains(": pass"), "{stdout}");
    let run = &runs(&out)[0];
    for f in ["config.toml", "manifest.json", "summary.md", "tables/metrics.parquet", "tables/metrics.csv", "tables/verdicts.csv", "tables/series.parquet"] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let figs: Vec<_> = walk(&run.join("figures"));
    assert!(figs.iter().any(|p| p.ends_with("gdu.svg")) && figs.iter().any(|p| p.ends_with("gdu.png")), "{figs:?}");
    let csv = std::fs::read_to_string(run.join("tables/metrics.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    for c in ["run_id", "check", "instance", "estimator", "beta", "scope", "name", "t", "metric", "value", "threshold", "verdict"] {
        assert!(header.split(',').any(|h| h == c), "metrics.csv lacks column {c}: {header}");
    }
    let t = epcheck::io::read_tensors(&dump).unwrap();
    // EP keys carry the β of the run (checks.gdu.beta = 1e-3 in theorem mode); the K + 1 window is traj_window.
    for k in ["param.synapses.0.weight", "input.x", "gdu.bptt.synapses.1.weight", "gdu.ep_sym@0.001.neurons.L2", "gdu.bptt_j.neurons.L1", "grad.ep_centered@0.001.synapses.2.bias", "traj_window.free.L3", "gdu.t_free_run"] {
        assert!(t.contains_key(k), "dump lacks {k}");
    }
    assert_eq!(t["gdu.bptt.synapses.1.weight"].size(), vec![20, 5, 5]);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in runs(dir) {
        if e.is_dir() {
            out.extend(walk(&e));
        } else {
            out.push(e);
        }
    }
    out
}

fn expect_bad_input(args: Vec<String>, needle: &str, out: &Path) {
    let (code, stdout, stderr) = run_args(&args);
    assert_eq!(code, 2, "exit code for {args:?}: stdout {stdout} stderr {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one-line error expected, got: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "error '{}' should mention '{needle}'", lines[0]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(runs(out).is_empty(), "no report may be written on bad input: {:?}", runs(out));
}

fn params_file(dir: &Path, name: &str, tensors: Vec<(&str, Tensor)>) -> PathBuf {
    let p = dir.join(name);
    write_tensors(&p, &tensors.into_iter().map(|(n, t)| (n.to_string(), t)).collect::<Vec<_>>(), HashMap::new()).unwrap();
    p
}

fn good_params() -> Vec<(&'static str, Tensor)> {
    let o = (Kind::Double, tch::Device::Cpu);
    let _rng = epcheck::tensor_util::rng_lock();
    tch::manual_seed(epcheck::tensor_util::test_seed(1));
    // Each weight scaled to spectral norm 0.4: with tanh (slope ≤ 1) every layer's update is a contraction of
    // factor ≤ 0.8 whatever the draw, so T = 100 reaches r_∞ ≈ 0.8¹⁰⁰ ≪ tol under every EPCHECK_TEST_SEED.
    let spectral = |w: Tensor| {
        let n = w.linalg_norm(2.0, [-2i64, -1].as_slice(), false, Kind::Double);
        &w * 0.4 / n
    };
    vec![
        ("param.synapses.0.weight", spectral(Tensor::randn([5, 6], o))),
        ("param.synapses.0.bias", Tensor::zeros([5], o)),
        ("param.synapses.1.weight", spectral(Tensor::randn([3, 5], o))),
        ("param.synapses.1.bias", Tensor::zeros([3], o)),
    ]
}

#[test]
fn bad_input_is_a_one_line_error_with_exit_2_and_no_report() {
    let _rng = epcheck::tensor_util::rng_lock();
    let d = tmp();
    let out = d.path().join("runs");
    let o = out.to_str().unwrap();
    let bad_toml = d.path().join("bad.toml");
    std::fs::write(&bad_toml, "preset = \"p-mlp\"\nbeta = [1,\n").unwrap();
    expect_bad_input(with(&["gdu", "--config", bad_toml.to_str().unwrap(), "--out", o], &[]), "malformed TOML", &out);
    let unknown_key = d.path().join("unknown.toml");
    std::fs::write(&unknown_key, "bta = 0.1\n").unwrap();
    expect_bad_input(with(&["estimate", "--config", unknown_key.to_str().unwrap(), "--out", o], &[]), "unknown field", &out);
    expect_bad_input(with(&["converge", "--preset", "no-such-preset", "--out", o], &[]), "unknown preset 'no-such-preset'", &out);
    expect_bad_input(with(&["estimate", "--params", "/nonexistent/p.safetensors", "--out", o], &[]), "no such file", &out);
    expect_bad_input(with(&["estimate", "--beta", "0", "--out", o], &[]), "beta must be", &out);
    expect_bad_input(with(&["estimate", "--estimator", "ep_magic", "--out", o], &[]), "unknown estimator", &out);
    // Wrong shape: the second weight does not chain with the first.
    let mut p = good_params();
    p[2].1 = Tensor::zeros([3, 4], (Kind::Double, tch::Device::Cpu));
    let f = params_file(d.path(), "shape.safetensors", p);
    expect_bad_input(with(&["estimate", "--params", f.to_str().unwrap(), "--out", o], &[]), "synapses.1.weight", &out);
    // Missing tensor.
    let mut p = good_params();
    let _ = p.remove(1);
    let f = params_file(d.path(), "missing.safetensors", p);
    expect_bad_input(with(&["estimate", "--params", f.to_str().unwrap(), "--out", o], &[]), "missing key: param.synapses.0.bias", &out);
    // NaN.
    let mut p = good_params();
    p[3].1 = Tensor::from_slice(&[0.0, f64::NAN, 0.0]);
    let f = params_file(d.path(), "nan.safetensors", p);
    expect_bad_input(with(&["estimate", "--params", f.to_str().unwrap(), "--out", o], &[]), "non-finite value: param.synapses.1.bias", &out);
    // Sizes contradicting an explicit --archi.
    let f = params_file(d.path(), "good.safetensors", good_params());
    expect_bad_input(with(&["estimate", "--params", f.to_str().unwrap(), "--archi", "6-7-3", "--out", o], &[]), "synapses.0.weight", &out);
    // A file that is not safetensors.
    let junk = d.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a tensor file").unwrap();
    expect_bad_input(with(&["estimate", "--params", junk.to_str().unwrap(), "--out", o], &[]), "not a safetensors file", &out);
}

#[test]
fn params_file_sets_layer_sizes_and_runs() {
    let _rng = epcheck::tensor_util::rng_lock();
    let d = tmp();
    let out = d.path().join("runs");
    let f = params_file(d.path(), "good.safetensors", good_params());
    // Phases long enough to converge (at the preset's K = 10 the nudged phase is not, and estimate says so).
    let (code, stdout, stderr) = epcheck(&["estimate", "--params", f.to_str().unwrap(), "--batch", "4", "--T", "100", "--K", "60", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    let cfg = std::fs::read_to_string(runs(&out)[0].join("config.toml")).unwrap();
    assert!(cfg.contains("archi = [\n    6,\n    5,\n    3,\n]") || cfg.contains("archi = [6, 5, 3]"), "{cfg}");
}

#[test]
fn diverging_dynamics_are_reported_as_non_converged_not_nan() {
    let d = tmp();
    let out = d.path().join("runs");
    let o = (Kind::Double, tch::Device::Cpu);
    let huge = vec![
        ("param.synapses.0.weight", Tensor::ones([5, 6], o) * 1e3),
        ("param.synapses.0.bias", Tensor::zeros([5], o)),
        ("param.synapses.1.weight", Tensor::ones([3, 5], o) * 1e3),
        ("param.synapses.1.bias", Tensor::zeros([3], o)),
    ];
    let f = params_file(d.path(), "huge.safetensors", huge);
    let (code, stdout, stderr) = epcheck(&["converge", "--params", f.to_str().unwrap(), "--activation", "identity", "--T", "200", "--batch", "3", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout} {stderr}");
    assert!(stdout.contains("fail"), "{stdout}");
    let run = &runs(&out)[0];
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(summary.contains("not converged: 3/3 examples") && summary.contains("diverged"), "{summary}");
    let csv = std::fs::read_to_string(run.join("tables/metrics.csv")).unwrap();
    assert!(!csv.to_lowercase().contains("nan"), "NaN in metrics table");
    // The GDU check on the same instance is a finding (docs/verdicts.md): inconclusive, not converged, naming the
    // diverged state, exit code 1, with a note on stderr.
    let (code, stdout, stderr) = epcheck(&["gdu", "--params", f.to_str().unwrap(), "--activation", "identity", "--T", "200", "--batch", "3", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout} {stderr}");
    assert!(stdout.contains("inconclusive: not converged: the free phase diverged (non-finite state.free.L1"), "{stdout}");
    assert!(stderr.contains("diverged"), "{stderr}");
}

#[test]
fn dump_round_trips_through_params_and_input() {
    let d = tmp();
    let out = d.path().join("runs");
    let dump = d.path().join("dump.safetensors");
    let mut a = vec!["estimate".to_string()];
    a.extend(with(TINY, &["--estimator", "ep_centered", "--out", out.to_str().unwrap(), "--dump", dump.to_str().unwrap()]));
    assert_eq!(run_args(&a).0, 0);
    // The same parameters and batch read back from the dump (sizes inferred, no --archi) give the same estimate.
    let dump2 = d.path().join("dump2.safetensors");
    let (code, so, se) = epcheck(&[
        "estimate", "--estimator", "ep_centered", "--activation", "logistic4", "--params", dump.to_str().unwrap(), "--input", dump.to_str().unwrap(),
        "--out", out.to_str().unwrap(), "--dump", dump2.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{so} {se}");
    let (t1, t2) = (epcheck::io::read_tensors(&dump).unwrap(), epcheck::io::read_tensors(&dump2).unwrap());
    for k in ["grad.ep_centered.synapses.0.weight", "grad.ep_centered.synapses.2.bias", "grad.bptt.synapses.1.weight", "input.x"] {
        assert!(t1[k].equal(&t2[k]), "{k} differs after the round trip");
    }
    let meta = safetensors::SafeTensors::read_metadata(&std::fs::read(&dump).unwrap()).unwrap().1;
    let md = meta.metadata().as_ref().unwrap();
    assert_eq!(md["epcheck.schema"], "1");
    assert_eq!(md["epcheck.preset"], "p-mlp");
}

#[test]
fn holomorphic_bad_input_is_exit_2_with_no_report() {
    let d = tmp();
    let out = d.path().join("runs");
    let o = out.to_str().unwrap();
    // A clamp activation: refused, naming the layer.
    expect_bad_input(
        with(&["estimate", "--estimator", "ep_holomorphic", "--archi", "6-5-3", "--activation", "my_hard_sig", "--out", o], &[]),
        "unsupported estimator for this model: L1: my_hard_sig",
        &out,
    );
    expect_bad_input(with(&["estimate", "--estimator", "ep_holomorphic", "--archi", "6-5-3", "--N", "0", "--out", o], &[]), "holo_points (N) must be ≥ 1", &out);
    expect_bad_input(with(&["estimate", "--estimator", "ep_holomorphic", "--archi", "6-5-3", "--beta", "0", "--out", o], &[]), "beta must be", &out);
    expect_bad_input(with(&["bias", "--archi", "6-5-3", "--grid", "0.1,abc", "--out", o], &[]), "--grid expects", &out);
    // NaN during the complex relaxation: with an identity output and |β| = 1e6 the nudged map diverges
    // (overflow to inf, then NaN); the error names the point.
    expect_bad_input(
        with(&["estimate", "--estimator", "ep_holomorphic", "--archi", "6-5-3", "--activation", "identity", "--beta", "1e6", "--K", "100", "--N", "4", "--no-shortcut", "--out", o], &[]),
        "non-finite value: state of holomorphic point k = ",
        &out,
    );
}

#[test]
fn bias_and_refs_write_reports_and_pass_on_a_smooth_converged_instance() {
    let d = tmp();
    let out = d.path().join("runs");
    let o = out.to_str().unwrap();
    let base = ["--archi", "6-5-5-3", "--activation", "tanh", "--batch", "3", "--set", "init_scale=0.5"];
    let (code, stdout, stderr) = run_args(&with(&["bias"], &[&base[..], &["--grid", "1e-4,2e-4,5e-4,1e-3,2e-3,5e-3,1e-2,2e-2,5e-2,0.1", "--N-list", "1,2,4", "--out", o]].concat()));
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains("bias p-mlp-") && stdout.contains(": pass"), "{stdout}");
    let (code, stdout, stderr) = run_args(&with(&["refs"], &[&base[..], &["--T", "500", "--out", o]].concat()));
    assert_eq!(code, 0, "{stdout} {stderr}");
    let figs = walk(&out);
    for f in ["bias_err.svg", "bias_cos.png", "im_leak.svg", "refs.svg"] {
        assert!(figs.iter().any(|p| p.ends_with(f)), "missing {f}");
    }
    // The fitted slopes are in the metrics table.
    let csv: String = figs.iter().filter(|p| p.ends_with("metrics.csv")).map(|p| std::fs::read_to_string(p).unwrap()).collect();
    assert!(csv.lines().any(|l| l.contains(",fit,total,") && l.contains(",slope,")), "no slope rows");
}

/// Issue 14 item 8: the bytes of a written safetensors file depend only on its tensors and metadata, not on the
/// iteration order of the metadata `HashMap` (which changes from map to map and from process to process).
#[test]
fn safetensors_bytes_are_reproducible_with_sorted_metadata() {
    let d = tmp();
    let o = (Kind::Double, tch::Device::Cpu);
    let tensors = vec![("param.b".to_string(), Tensor::arange(6, o).reshape([2, 3])), ("input.y".to_string(), Tensor::arange(2, (Kind::Int64, tch::Device::Cpu)))];
    let keys: Vec<String> = (0..40).map(|i| format!("epcheck.key{i:02}")).collect();
    let mut bytes = vec![];
    for (n, order) in [(0, keys.clone()), (1, keys.iter().rev().cloned().collect::<Vec<_>>())] {
        // A fresh map (a fresh RandomState) per write, filled in another order.
        let mut m: HashMap<String, String> = HashMap::with_capacity(n * 100);
        for k in order {
            m.insert(k.clone(), format!("value of {k}"));
        }
        let p = d.path().join(format!("{n}.safetensors"));
        write_tensors(&p, &tensors, m).unwrap();
        bytes.push(std::fs::read(&p).unwrap());
    }
    assert_eq!(bytes[0], bytes[1], "same tensors and metadata, different bytes");
    // The header is valid safetensors with the metadata intact, keys in sorted order.
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes[0]).unwrap();
    let md = meta.metadata().as_ref().unwrap();
    assert_eq!(md.len(), 40);
    assert_eq!(md["epcheck.key07"], "value of epcheck.key07");
    let n = u64::from_le_bytes(bytes[0][..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[0][8..8 + n]).unwrap();
    let pos: Vec<usize> = keys.iter().map(|k| header.find(&format!("\"{k}\"")).unwrap()).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "metadata keys not sorted: {header}");
    let back = epcheck::io::read_tensors(&d.path().join("0.safetensors")).unwrap();
    assert!(back["param.b"].equal(&tensors[0].1) && back["input.y"].equal(&tensors[1].1));
}
