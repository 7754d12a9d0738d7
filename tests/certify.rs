//! Certification features: `local`, `audit`, `compare` (conformance against an independent PyTorch
//! implementation written from the spec), `verify` suites with JUnit, and bad input (exit 2, no report).
mod common;
use common::*;
use epcheck::checks::{audit, conformance, local, Verdict};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Tensor;

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Bad input: exit 2, one `error:` line mentioning `needle`, nothing written under `out`.
fn expect_bad(args: &[&str], needle: &str, out: &Path) {
    let (code, stdout, stderr) = epcheck(args);
    assert_eq!(code, 2, "{args:?}: stdout {stdout} stderr {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one-line error expected: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "'{}' should mention '{needle}'", lines[0]);
    assert_eq!(entries(out), 0, "no report may be written on bad input");
}

// ---------------------------------------------------------------------------------------------------------
// local and audit on the unmutated model (oracle: autograd of the Φ implementation; closed forms).

#[test]
fn local_passes_for_every_activation_and_tests_complex_states() {
    for act in ["logistic4", "tanh", "my_hard_sig", "identity"] {
        let inst = tiny(act, "mse");
        let rep = local::run(&inst, &local::LocalOptions::from_config(&inst.cfg));
        assert_eq!(rep.overall, Verdict::Pass, "{act}: {:?}", rep.summary);
        let worst = rep.metrics.iter().filter(|r| r.metric == "rel_linf" && r.scope == "tensor").map(|r| r.value).fold(0.0, f64::max);
        assert!(worst < 1e-14, "{act}: local vs autograd {worst}");
        let complex = rep.metrics.iter().any(|r| r.phase.as_deref() == Some("complex0"));
        assert_eq!(complex, act != "my_hard_sig", "{act}: complex states only for holomorphic-admissible models");
    }
    assert_eq!(local::conjugation_unit(), (2.0, 4.0));
}

#[test]
fn local_uses_at_least_two_examples() {
    let inst = tiny_with("tanh", "mse", |c| c.batch = 1);
    assert_eq!(local::probe_batch(&inst).size(), 2);
}

#[test]
fn audit_passes_and_finds_the_coupled_blocks() {
    for act in ["logistic4", "my_hard_sig"] {
        let inst = tiny(act, "mse");
        let rep = audit::run(&inst, &audit::AuditOptions::from_config(&inst.cfg));
        assert_eq!(rep.overall, Verdict::Pass, "{act}: {:?}", rep.summary);
        let scored: Vec<&str> = rep.verdicts.iter().filter(|v| v.scope == "layer_pair").map(|v| v.name.as_str()).collect();
        // Layered chain: L1–L2 and L2–L3 coupled; L3–L3 through the nudge Hessian; L1–L3 not coupled.
        for b in ["A3:L1,L2", "A3:L2,L3", "A3:L3,L3", "A3:all"] {
            assert!(scored.contains(&b), "{act}: {b} not scored: {scored:?}");
        }
        assert!(!scored.contains(&"A3:L1,L3"));
        // A5: the potentials are consistent with the update maps.
        let a5 = rep.metrics.iter().find(|r| r.name.starts_with("A5:")).unwrap();
        assert!(a5.value <= 1e-10, "{act}: A5 {}", a5.value);
    }
}

#[test]
fn audit_potential_is_the_integral_of_sigma() {
    // ψ(u) − ψ(0) = ∫₀ᵘ σ by the trapezoid rule on a fine grid (an independent oracle for `potential`).
    use epcheck::model::activation::Activation;
    for act in [Activation::Tanh, Activation::Logistic4, Activation::MyHardSig, Activation::CtrdHardSig, Activation::Identity] {
        let u = 2.7;
        let n = 200_000;
        let grid = Tensor::linspace(0.0, u, n + 1, (tch::Kind::Double, tch::Device::Cpu));
        let s = act.apply(&grid);
        let v = epcheck::tensor_util::to_vec_f64(&s);
        let h = u / n as f64;
        let integral: f64 = (0..n as usize).map(|i| 0.5 * h * (v[i] + v[i + 1])).sum();
        let psi = |x: f64| audit::potential(act, &Tensor::from_slice(&[x])).unwrap().double_value(&[0]);
        assert!((psi(u) - psi(0.0) - integral).abs() < 1e-8, "{}: {} vs {integral}", act.key(), psi(u) - psi(0.0));
    }
}

// ---------------------------------------------------------------------------------------------------------
// conformance against the independent PyTorch implementation.

fn reference(py: &Path, dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (st, npz) = (dir.join("ref.safetensors"), dir.join("ref.npz"));
    let out = Command::new(py)
        .arg(root().join("fixtures/conformance/pmlp_reference.py"))
        .args(["--out", st.to_str().unwrap(), "--npz", npz.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (st, npz)
}

const RUN: &[&str] = &["--activation", "logistic4", "--T", "200", "--K", "60", "--beta", "0.01"];

fn compare(file: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut a = vec!["compare", file.to_str().unwrap(), "--out", out.to_str().unwrap()];
    a.extend(RUN);
    a.extend(extra);
    epcheck(&a)
}

#[test]
fn compare_agrees_with_the_independent_pytorch_reference() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let (st, npz) = reference(&py, d.path(), &[]);
    for f in [&st, &npz] {
        let out = d.path().join(format!("runs-{}", f.extension().unwrap().to_string_lossy()));
        let (code, stdout, stderr) = compare(f, &out, &[]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        // Every key compared; the class thresholds hold per tensor.
        let run = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
        let verdicts = std::fs::read_to_string(run.join("tables/verdicts.csv")).unwrap();
        for key in ["grad.bptt.synapses.0.weight", "grad.ep_centered.synapses.2.bias", "state.minus.L2", "phi.free"] {
            assert!(verdicts.lines().any(|l| l.contains(&format!(",key,{key},pass"))), "{key} not passed:\n{verdicts}");
        }
        // Loaded parameters and inputs are checked too, as bookkeeping (scope `loaded`, never evidence).
        assert!(verdicts.lines().any(|l| l.contains(",loaded,input.y,pass")), "{verdicts}");
        assert!(verdicts.lines().any(|l| l.contains(",trajectory,free,pass")), "{verdicts}");
    }
    // Per-tensor agreement through the library, with the committed fixture's tolerances.
    let cfg = epcheck::config::RunConfig::resolve(Some("p-mlp"), None, toml::from_str("activation = \"logistic4\"\nt_free = 200\nk_nudge = 60\nbeta = 0.01").unwrap()).unwrap();
    let case = conformance::load_case(&st, &conformance::NameMap::default(), cfg, None, None).unwrap();
    let rep = conformance::run(&case, &conformance::ConformanceOptions::from_config(&case.inst.cfg)).unwrap();
    for r in rep.metrics.iter().filter(|r| r.metric == "rel_linf" && r.scope == "key") {
        assert!(r.value <= r.threshold.unwrap(), "{}: {} > {:?}", r.name, r.value, r.threshold);
        if r.name.starts_with("grad.bptt") {
            assert!(r.value < 1e-12, "{}: {}", r.name, r.value);
        }
    }
}

#[test]
fn compare_with_a_name_map_and_aliases() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let (st, _) = reference(&py, d.path(), &["--style", "theirs"]);
    // Without the map the parameters are not found under any accepted name: an error naming the key.
    let out = d.path().join("runs");
    let (code, _, stderr) = compare(&st, &out, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("missing key: param.synapses.0.weight"), "{stderr}");
    let map = d.path().join("names.toml");
    let mut m = String::from("[names]\n");
    for k in 0..3 {
        m += &format!("W{k} = \"param.synapses.{k}.weight\"\nb{k} = \"param.synapses.{k}.bias\"\n");
        m += &format!("h{} = \"-\"\nh{}_free = \"state.free.L{}\"\n", k + 1, k + 1, k + 1);
        m += &format!("dW{} = \"grad.ep_centered.synapses.{k}.weight\"\ndW{} = \"grad.ep_centered.synapses.{k}.bias\"\n", 2 * k, 2 * k + 1);
    }
    m = m.replace("h1 = \"-\"\n", "").replace("h2 = \"-\"\n", "").replace("h3 = \"-\"\n", "");
    m += "[run]\nt_free = 200\n";
    std::fs::write(&map, m).unwrap();
    let (code, stdout, stderr) = compare(&st, &out, &["--names", map.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
}

fn rewrite(src: &Path, dst: &Path, f: impl Fn(&str, Tensor) -> Option<Tensor>) {
    let t = epcheck::io::read_tensors(src).unwrap();
    let v: Vec<(String, Tensor)> = t.into_iter().filter_map(|(k, x)| f(&k, x).map(|x| (k, x))).collect();
    epcheck::io::write_tensors(dst, &v, HashMap::new()).unwrap();
}

#[test]
fn compare_fails_on_a_perturbed_gradient_and_locates_a_trajectory_divergence() {
    let st = root().join("fixtures/conformance/pmlp_small.safetensors");
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.safetensors");
    // A 1e-7 relative error in one gradient, and a one-step error injected at t = 50 of traj.free.L2.
    rewrite(&st, &bad, |k, x| {
        Some(match k {
            "grad.bptt.synapses.1.weight" => &x * (1.0 + 1e-7),
            "traj.free.L2" => {
                let y = x.copy();
                let _ = y.get(50).get(0).get(0).g_add_scalar_(1e-6);
                y
            }
            _ => x,
        })
    });
    let out = d.path().join("runs");
    let (code, stdout, stderr) = compare(&bad, &out, &["--archi", "6-5-5-3"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let run = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let verdicts = std::fs::read_to_string(run.join("tables/verdicts.csv")).unwrap();
    assert!(verdicts.lines().any(|l| l.contains("key,grad.bptt.synapses.1.weight,fail")), "{verdicts}");
    assert!(verdicts.lines().any(|l| l.contains("key,grad.bptt.synapses.0.weight,pass")), "{verdicts}");
    let traj = verdicts.lines().find(|l| l.contains(",trajectory,free,")).unwrap();
    assert!(traj.contains(",fail,") && traj.contains("\"\"t_star\"\":50"), "{traj}");
    assert!(traj.contains("L2"), "{traj}");
}

#[test]
fn compare_bad_input_exits_2_naming_the_key() {
    let st = root().join("fixtures/conformance/pmlp_small.safetensors");
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let missing = d.path().join("missing.safetensors");
    rewrite(&st, &missing, |k, x| (k != "param.synapses.1.bias").then_some(x));
    let a = |f: &Path| -> Vec<String> {
        let mut v = vec!["compare".to_string(), f.to_str().unwrap().into(), "--out".into(), out.to_str().unwrap().into()];
        v.extend(RUN.iter().map(|s| s.to_string()));
        v
    };
    let run = |f: &Path, needle: &str| expect_bad(&a(f).iter().map(String::as_str).collect::<Vec<_>>(), needle, &out);
    run(&missing, "param.synapses.1.bias");
    let shape = d.path().join("shape.safetensors");
    rewrite(&st, &shape, |k, x| Some(if k == "state.free.L1" { x.narrow(1, 0, 4) } else { x }));
    run(&shape, "state.free.L1");
    let badx = d.path().join("nox.safetensors");
    rewrite(&st, &badx, |k, x| (k != "input.x").then_some(x));
    run(&badx, "input.x");
    let unknown = d.path().join("unknown.safetensors");
    let mut t: Vec<(String, Tensor)> = epcheck::io::read_tensors(&st).unwrap().into_iter().collect();
    t.push(("mystery.tensor".into(), Tensor::zeros([2], (tch::Kind::Double, tch::Device::Cpu))));
    epcheck::io::write_tensors(&unknown, &t, HashMap::new()).unwrap();
    run(&unknown, "mystery.tensor");
    let map = d.path().join("map.toml");
    std::fs::write(&map, "[names]\nabsent = \"state.free.L1\"\n").unwrap();
    let mut v = a(&st);
    v.extend(["--names".into(), map.to_str().unwrap().into()]);
    expect_bad(&v.iter().map(String::as_str).collect::<Vec<_>>(), "absent", &out);
}

// ---------------------------------------------------------------------------------------------------------
// verify suites.

#[test]
fn verify_shipped_suite_passes_and_writes_junit() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let junit = d.path().join("ci/junit.xml");
    // The p-mlp suite (the whole folder, every preset at tiny size, runs in CI as `epcheck verify verify/`).
    let (code, stdout, stderr) = epcheck(&["verify", root().join("verify/p-mlp.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--junit", junit.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    for c in epcheck::verify::CHECKS {
        assert!(lines.iter().any(|l| l.starts_with(&format!("PASS p-mlp/{c} "))), "no PASS line for {c}:\n{stdout}");
    }
    assert!(stdout.contains("7 passed, 0 failed"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<testsuite name=\"p-mlp\"") && xml.contains("failures=\"0\"") && xml.contains("errors=\"0\""), "{xml}");
    // One test case per check and instance (docs/verdicts.md), the scope rows in its system-out.
    assert!(xml.contains("name=\"p-mlp/audit/p-mlp-") && xml.contains("layer_pair:A3:L1,L2 pass"), "{xml}");
    assert!(xml.contains("tests=\"7\""), "{xml}");
    let runs = std::fs::read_dir(&out).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count();
    assert_eq!(runs, 2, "one run folder per instance (seeded + conformance)");
    assert!(out.join("index.html").is_file() && entries(&out) == 3, "the job page beside the run folders");
}

/// `epcheck verify verify/` exactly as CI certifies: every shipped suite (every preset at tiny size and a custom
/// graph) passes, one PASS line per check, the closing count, and a JUnit file without failures.
#[test]
fn verify_folder_every_suite_passes() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let t0 = std::time::Instant::now();
    let (code, stdout, stderr) = epcheck(&["verify", root().join("verify").to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let pass = stdout.lines().filter(|l| l.starts_with("PASS ")).count();
    assert!(stdout.contains(&format!("{pass} passed, 0 failed")), "{stdout}");
    for suite in ["p-mlp", "hopfield-resnet13", "vgg5-dchn", "imdb-hopfield", "snli-hopfield", "graph"] {
        assert!(stdout.lines().any(|l| l.starts_with(&format!("PASS {suite}/"))), "no PASS line for suite {suite}:\n{stdout}");
    }
    let xml = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(!xml.contains("<failure") && !xml.contains("<error"), "JUnit has failures");
    println!("epcheck verify verify/: {pass} checks passed in {:.1} s", t0.elapsed().as_secs_f64());
}

fn suite(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

const MODEL: &str = "[model]\npreset = \"p-mlp\"\narchi = [6, 5, 5, 3]\nactivation = \"logistic4\"\nbatch = 3\ninit_scale = 0.5\n";

#[test]
fn verify_failing_check_exits_1_with_junit_failure() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    // A free phase of 3 iterations cannot converge: converge fails (and the failure reaches JUnit).
    let s = suite(d.path(), "short.toml", &format!("name = \"short\"\n{}t_free = 3\n[checks.converge]\n[checks.local]\n", MODEL));
    let (code, stdout, stderr) = epcheck(&["verify", s.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("FAIL short/converge ") && l.contains("not converged")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("PASS short/local ")), "{stdout}");
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
    let xml = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(xml.contains("failures=\"1\"") && xml.contains("type=\"fail\"") && xml.contains("not converged"), "{xml}");
}

#[test]
fn verify_cos_gate() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    // BPTT truncated to the last K = 2 steps gives exactly zero for synapses.0.weight (the input layer is 3
    // steps from the output): cos(bptt_trunc, implicit) = 0 on that tensor, so the gate must fail …
    let s = suite(d.path(), "g.toml", &format!("{MODEL}t_free = 200\nk_nudge = 2\n[checks.refs]\nn_dir = 2\ncos_min = 0.9999\n"));
    let (code, stdout, _) = epcheck(&["verify", s.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("gate:cos_min") && stdout.contains("bptt_trunc"), "{stdout}");
    // … and pass with K = 60 (converged: every pair agrees to cos ≥ 0.9999).
    let s = suite(d.path(), "g.toml", &format!("{MODEL}t_free = 200\nk_nudge = 60\n[checks.refs]\nn_dir = 2\ncos_min = 0.9999\n"));
    let (code, stdout, _) = epcheck(&["verify", s.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn verify_bad_input_exits_2_without_reports() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed.toml", "[model\npreset = 1".into(), "malformed TOML"),
        ("unknown_check.toml", format!("{MODEL}[checks.speed]\n"), "unknown check 'speed'"),
        ("negative_tol.toml", format!("{MODEL}[checks.local]\ntol = -1e-11\n"), "checks.local.tol"),
        ("cos.toml", format!("{MODEL}[checks.gdu]\ncos_min = 1.5\n"), "cos_min"),
        ("gdu_const.toml", format!("{MODEL}[checks.gdu]\nbias_const = -10\n"), "checks.gdu.bias_const"),
        ("unknown_key.toml", format!("{MODEL}[checks.audit]\nsymmetry = 3\n"), "symmetry"),
        ("preset.toml", "[model]\npreset = \"resnet9000\"\n[checks.local]\n".into(), "unknown preset 'resnet9000'"),
        ("graph.toml", format!("{MODEL}graph = \"arch.toml\"\n[checks.local]\n"), "arch.toml does not exist"),
        ("no_checks.toml", MODEL.to_string(), "checks"),
        ("conformance.toml", format!("{MODEL}[checks.conformance]\n"), "needs file"),
        ("seeds.toml", format!("seeds = [-1]\n{MODEL}[checks.local]\n"), "seeds"),
    ];
    for (name, body, needle) in cases {
        let s = suite(d.path(), name, &body);
        expect_bad(&["verify", s.to_str().unwrap(), "--out", out.to_str().unwrap()], needle, &out);
    }
    expect_bad(&["verify", d.path().join("absent.toml").to_str().unwrap(), "--out", out.to_str().unwrap()], "no such file", &out);
}
