//! `compare` on tensors dumped by the five published reference codes (fixtures/conformance/, made by the driver
//! scripts in fixtures/conformance/drivers/ from the reference code itself, float64 tiny instances), each read
//! through its built-in name map with no renaming. Oracles: the reference codes' own tensors and their own metric
//! printouts (Ernoult's `compute_Hist`); planted perturbations of those tensors for the failing verdicts.
//! Tolerances are the classes of checks §10 (state 1e-12, exact gradients 1e-10, EP 1e-10 + 100·floor_rel); the
//! float-cast dumps are bounded by the float32 floor 100·ε₃₂ (the references' `.float()` casts, quirk L1).
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Tensor;

fn epcheck(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_epcheck")).args(args).env("OMP_NUM_THREADS", "1").output().expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn fixture(name: &str) -> String {
    format!("{}/fixtures/conformance/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn one_run(out: &Path) -> PathBuf {
    let r: Vec<PathBuf> = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')).collect();
    assert_eq!(r.len(), 1, "{r:?}");
    r[0].clone()
}

/// (scope, name, metric) → value from tables/metrics.csv (first row of each triple; per-step rows have a t).
fn metrics(run: &Path) -> Vec<(String, String, String, f64)> {
    let text = std::fs::read_to_string(run.join("tables/metrics.csv")).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
    let (sc, nm, me, va, t) = (col("scope"), col("name"), col("metric"), col("value"), col("t"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[t].is_empty())
        .map(|f| (f[sc].to_string(), f[nm].to_string(), f[me].to_string(), f[va].parse::<f64>().unwrap_or(f64::NAN)))
        .collect()
}

fn verdicts(run: &Path) -> String {
    std::fs::read_to_string(run.join("tables/verdicts.csv")).unwrap()
}

fn passes(v: &str, key: &str) -> bool {
    v.lines().any(|l| l.contains(&format!(",{key},pass")))
}

const LAB: &[&str] = &["--names", "laborieux_check_gdu", "--preset", "p-mlp", "--activation", "tanh", "--T", "30", "--K", "10", "--beta", "0.05"];

#[test]
fn laborieux_pmlp_dump_agrees_through_its_builtin_map_and_a_planted_step_is_located() {
    let d = tempfile::tempdir().unwrap();
    let o = d.path().join("c");
    let f = fixture("laborieux_pmlp_f64.safetensors");
    let mut a = vec!["compare", f.as_str()];
    a.extend_from_slice(LAB);
    a.extend(["--out", s(&o)]);
    let (code, stdout, stderr) = epcheck(&a);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let run = one_run(&o);
    let v = verdicts(&run);
    // Its check_gdu dictionaries (±β), the training loop's states and estimates, its state_dict.
    for key in ["BPTT.synapses.0.weight", "BPTT.neurons_0", "EP.synapses.2.bias", "EP_2.neurons_1", "state.free.L2", "state.plus.L3", "grad.ep_plus.synapses.1.weight", "grad.ep_centered.synapses.0.bias"] {
        assert!(passes(&v, key), "{key}:\n{v}");
    }
    let sm = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(sm.contains("| gdu.bptt (parameters) | 6 | grad_exact |") && sm.contains("| states |"), "{sm}");
    // Float64 throughout: every compared key agrees far inside its class (1e-10), here to < 1e-12.
    let worst = metrics(&run).iter().filter(|r| r.0 == "key" && r.2 == "rel_linf").map(|r| r.3).fold(0.0, f64::max);
    assert!(worst < 1e-12, "worst rel_linf {worst:e}");
    assert!(run.join("figures/conformance").read_dir().unwrap().next().unwrap().unwrap().path().join("conformance.svg").exists());

    // Planted: one element of one step of the reference's +β parameter series, relative change 1e-6.
    let mut t: Vec<(String, Tensor)> = epcheck::io::read_tensors(Path::new(&f)).unwrap().into_iter().collect();
    let (_, ep) = t.iter_mut().find(|(k, _)| k == "EP.synapses.1.weight").unwrap();
    let _ = ep.get(3).get(2).get(1).g_mul_scalar_(1.0 + 1e-6);
    let planted = d.path().join("planted.safetensors");
    epcheck::io::write_tensors(&planted, &t, Default::default()).unwrap();
    let o2 = d.path().join("c2");
    let mut a = vec!["compare", s(&planted)];
    a.extend_from_slice(LAB);
    a.extend(["--out", s(&o2)]);
    let (code, stdout, stderr) = epcheck(&a);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let run = one_run(&o2);
    let v = verdicts(&run);
    assert!(v.lines().any(|l| l.contains(",key,EP.synapses.1.weight,fail")), "{v}");
    assert!(passes(&v, "EP.synapses.1.bias") && passes(&v, "EP_2.synapses.1.weight"), "{v}");
    let sm = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(sm.contains("first divergence of the series at step t = 3 (of 10), element [2, 1]"), "{sm}");
}

#[test]
fn laborieux_float_cast_dump_differs_by_less_than_the_float32_floor() {
    // The code as published computes the nudge and GDU losses on float32 copies (quirk L1): against an f64 run
    // the keys fail the f64 classes, every one stays within 100·ε₃₂ (the float32 floor), and the casts are
    // visible (> 1e-10). `reference_casts = on` (estimators §11 L1, another branch) models them exactly.
    let d = tempfile::tempdir().unwrap();
    let o = d.path().join("c");
    let f = fixture("laborieux_pmlp_casts.safetensors");
    let mut a = vec!["compare", f.as_str()];
    a.extend_from_slice(LAB);
    a.extend(["--out", s(&o)]);
    let (code, stdout, stderr) = epcheck(&a);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let m = metrics(&one_run(&o));
    let rl: Vec<(String, f64)> = m.iter().filter(|r| r.0 == "key" && r.2 == "rel_linf").map(|r| (r.1.clone(), r.3)).collect();
    let floor32 = 100.0 * f32::EPSILON as f64;
    for (k, v) in &rl {
        assert!(*v <= floor32, "{k}: {v:e} > 100·ε₃₂");
    }
    let worst = rl.iter().map(|r| r.1).fold(0.0, f64::max);
    assert!(worst > 1e-10, "the casts must show: worst {worst:e}");
    // Parameters, inputs and the free state do not see the loss: exact.
    for k in ["synapses.0.weight", "x", "state.free.L1"] {
        assert_eq!(rl.iter().find(|r| r.0 == k).unwrap().1, 0.0, "{k}");
    }
}

#[test]
fn seqlearning_imdb_dump_agrees_with_trajectories_and_writes_the_figures() {
    let d = tempfile::tempdir().unwrap();
    let args = |f: &str, o: &Path| -> Vec<String> {
        let mut a: Vec<String> = ["compare", f, "--names", "seqlearning_check_gdu", "--preset", "imdb-hopfield", "--activation", "tanh", "--T", "30", "--K", "10", "--beta", "0.05", "--out"].iter().map(|x| x.to_string()).collect();
        a.push(s(o).to_string());
        a
    };
    let o = d.path().join("c");
    let a = args(&fixture("seqlearning_imdb_f64.safetensors"), &o);
    let (code, stdout, stderr) = epcheck(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let run = one_run(&o);
    let v = verdicts(&run);
    // Sizes (L, d, widths) follow from its state_dict; its trajectories replay step by step.
    for key in ["BPTT.synapses.0.weight", "EP.neurons_0", "EP_2.synapses.2.bias", "ep.two_phase.synapses.1.weight", "ep.three_phase.synapses.0.weight", "synapses.0.weight"] {
        assert!(passes(&v, key), "{key}:\n{v}");
    }
    assert!(v.lines().any(|l| l.contains(",trajectory,free,pass")) && v.lines().any(|l| l.contains(",trajectory,plus,pass")), "{v}");
    let figs = run.join("figures/conformance").read_dir().unwrap().next().unwrap().unwrap().path();
    for f in ["conformance.svg", "divergence_free.svg", "divergence_plus.svg"] {
        assert!(figs.join(f).exists(), "{f}");
    }
    // As published (float32 casts of the loss): the nudged trajectory diverges from its first step, by one-step
    // errors (not amplified round-off) that stay within the float32 floor.
    let o2 = d.path().join("c2");
    let a = args(&fixture("seqlearning_imdb_casts.safetensors"), &o2);
    let (code, stdout, stderr) = epcheck(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let run = one_run(&o2);
    let m = metrics(&run);
    let e1 = m.iter().find(|r| r.0 == "trajectory" && r.1 == "plus" && r.2 == "e1_max").unwrap().3;
    let t_star = m.iter().find(|r| r.0 == "trajectory" && r.1 == "plus" && r.2 == "t_star").unwrap().3;
    assert!(e1 > 1e-12 && e1 < 100.0 * f32::EPSILON as f64, "e1_max {e1:e}");
    assert_eq!(t_star, 1.0);
    assert!(verdicts(&run).lines().any(|l| l.contains(",trajectory,free,pass")));
}

const BS: &[&str] = &["--names", "brainseek_hopfield_resnet13", "--preset", "hopfield-resnet13", "--activation", "relu6", "--T", "30", "--K", "15", "--beta", "0.1"];

#[test]
fn brainseek_resnet13_dump_agrees_including_its_clipped_estimate() {
    let f = fixture("brainseek_resnet13.safetensors");
    // The fixture's clip acts (oracle on the reference's own tensors): ‖g‖ > 1, clipped = g / (‖g‖ + 1e-6).
    let t = epcheck::io::read_tensors(Path::new(&f)).unwrap();
    let raw: Vec<&String> = t.keys().filter(|k| k.starts_with("grad.ep_centered.")).collect();
    assert_eq!(raw.len(), 22);
    let norm: f64 = raw.iter().map(|k| t[*k].square().sum(tch::Kind::Double).double_value(&[])).sum::<f64>().sqrt();
    assert!(norm > 1.0, "‖g‖ = {norm}");
    for k in &raw {
        let c = &t[&k.replace("ep_centered.", "ep_centered_clipped.")];
        let d = (c - &t[*k] * (1.0 / (norm + 1e-6))).abs().max().double_value(&[]);
        assert!(d < 1e-15, "{k}: {d:e}");
    }
    let d = tempfile::tempdir().unwrap();
    let run_with = |extra: &[&str], o: &Path| {
        let mut a = vec!["compare", f.as_str()];
        a.extend_from_slice(BS);
        a.extend_from_slice(extra);
        a.extend(["--out", s(o)]);
        epcheck(&a)
    };
    let o = d.path().join("c");
    let (code, stdout, stderr) = run_with(&["--set", "grad_clip_norm=1"], &o);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let run = one_run(&o);
    let v = verdicts(&run);
    for key in ["Layer_0", "Bias_8", "ConvWeight_2", "DenseWeight_0", "state.free.Layer_1", "state.free.Layer_9", "grad.ep_centered.ConvWeight_0", "grad.ep_centered.DenseWeight_0", "grad.ep_centered_clipped.Bias_4"] {
        assert!(passes(&v, key), "{key}:\n{v}");
    }
    // Its own trajectory (`compute_trajectory`): full states replayed step by step, the async2 half states (after
    // its first group, Layer_1, Layer_3, …) and the conv-reference slices `t<n>` / `half<n>`.
    for key in ["traj.free.half.Layer_7", "traj.free.half.Layer_8", "traj.free.half20.Layer_9", "traj.free.t15.Layer_6"] {
        assert!(passes(&v, key), "{key}:\n{v}");
    }
    assert!(v.lines().any(|l| l.contains(",trajectory,free,pass")), "{v}");
    // Its object names map onto the canonical order: ConvWeight_2 is the block-1 skip W.0_2.
    let sm = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(sm.contains("| ConvWeight_2 | param.W.0_2 |") && sm.contains("| state.free.Layer_8 | state.free.L8 |"), "{sm}");
    // Planted: one element of one half state of the reference, relative change 1e-9 (above the 1e-12 class).
    let mut tt: Vec<(String, Tensor)> = t.iter().map(|(k, v)| (k.clone(), v.copy())).collect();
    let (_, h) = tt.iter_mut().find(|(k, _)| k == "traj.free.half.Layer_8").unwrap();
    let _ = h.get(20).get(1).get(0).get(1).get(1).g_mul_scalar_(1.0 + 1e-9);
    let planted = d.path().join("planted.safetensors");
    epcheck::io::write_tensors(&planted, &tt, Default::default()).unwrap();
    let op = d.path().join("cp");
    let mut a = vec!["compare", s(&planted)];
    a.extend_from_slice(BS);
    a.extend(["--set", "grad_clip_norm=1", "--out", s(&op)]);
    let (code, stdout, stderr) = epcheck(&a);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let vp = verdicts(&one_run(&op));
    assert!(vp.lines().any(|l| l.contains(",key,traj.free.half.Layer_8,fail")) && passes(&vp, "traj.free.half.Layer_7"), "{vp}");
    // Without the clip norm the clipped keys cannot be recomputed: the option is named, nothing is written.
    let o2 = d.path().join("c2");
    let (code, _, stderr) = run_with(&[], &o2);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("grad_clip_norm") && !o2.exists(), "{stderr}");
    // Planted: the wrong clip norm fails exactly the clipped keys.
    let o3 = d.path().join("c3");
    let (code, stdout, stderr) = run_with(&["--set", "grad_clip_norm=2"], &o3);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let v = verdicts(&one_run(&o3));
    assert!(v.lines().any(|l| l.contains(",key,grad.ep_centered_clipped.ConvWeight_0,fail")) && passes(&v, "grad.ep_centered.ConvWeight_0"), "{v}");
}

#[test]
fn ernoult_series_metrics_reproduce_its_own_compute_hist() {
    let f = fixture("ernoult_gdu.safetensors");
    let d = tempfile::tempdir().unwrap();
    let o = d.path().join("c");
    let (code, stdout, stderr) = epcheck(&["compare", &f, "--names", "ernoult_gdu", "--out", s(&o)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains(": info"), "{stdout}");
    let m = metrics(&one_run(&o));
    let t = epcheck::io::read_tensors(Path::new(&f)).unwrap();
    let get = |name: &str, metric: &str| m.iter().find(|r| r.0 == "pair" && r.1 == name && r.2 == metric).unwrap_or_else(|| panic!("{name} {metric}")).3;
    let mut n = 0;
    for (b, e, r) in [("nS", "dS", "S"), ("NT", "DT", "T")] {
        for k in t.keys().filter_map(|k| k.strip_prefix(&format!("{b}.")).map(str::to_string)) {
            let pair = format!("{b}.{k} vs {e}.{k}");
            let (mean, std) = (t[&format!("ref.hist_{r}_mean.{k}")].double_value(&[]), t[&format!("ref.hist_{r}_std.{k}")].double_value(&[]));
            // Its std is torch's sample std; epcheck reports the population std of the same per-element errors.
            let sz = t[&format!("{b}.{k}")].size();
            let elems = sz[1..].iter().product::<i64>() as f64;
            let pop = std * ((elems - 1.0) / elems).sqrt();
            // Both sum the same K squares per element in f64: agreement to a few ulps of the mean (1e-12 relative).
            assert!((get(&pair, "ern_rel_mean") - mean).abs() <= 1e-12 * mean.abs(), "{pair}: {} vs {mean}", get(&pair, "ern_rel_mean"));
            assert!((get(&pair, "ern_rel_std") - pop).abs() <= 1e-12 * pop.abs().max(1e-300), "{pair}: {} vs {pop}", get(&pair, "ern_rel_std"));
            n += 1;
        }
    }
    assert_eq!(n, 4);
    // A file without those pairs: one line naming the map and what it expected, exit 2, no run folder.
    let o2 = d.path().join("c2");
    let lab = fixture("laborieux_pmlp_f64.safetensors");
    let (code, _, stderr) = epcheck(&["compare", &lab, "--names", "ernoult_gdu", "--out", s(&o2)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("ernoult_gdu: no NT.<w>/DT.<w> or nS.<i>/dS.<i> pairs") && !o2.exists(), "{stderr}");
}

#[test]
fn holomorphic_map_reads_haiku_names_and_transposed_weights() {
    let m = epcheck::checks::conformance::builtin_map("holomorphic_xp_mlp").unwrap();
    let r = m.resolver.unwrap();
    assert_eq!(r("xphi/~/fc_1/w"), Some(("param.synapses.0.weight".to_string(), vec!["transpose(0, 1)".to_string()])));
    assert_eq!(r("grad.ep_plus.xphi/~/fc_3/b"), Some(("grad.ep_plus.synapses.2.bias".to_string(), vec![])));
    assert_eq!(r("gdu.bptt.xphi/~/fc_2/w"), Some(("gdu.bptt.synapses.1.weight".to_string(), vec!["transpose(1, 2)".to_string()])));
    assert_eq!(r("xphi/~/fc_0/w"), None);
    assert_eq!(m.run.get("readout").and_then(|v| v.as_str()), Some("softmax"));
    // The fixture written by the JAX code holds (in, out) weights: the transposes of P-MLP's (out, in).
    let t = epcheck::io::read_tensors(Path::new(&fixture("holomorphic_xp_mlp.safetensors"))).unwrap();
    assert_eq!(t["xphi/~/fc_1/w"].size(), vec![4, 5]);
    assert_eq!(t["grad.ep_holomorphic4.xphi/~/fc_1/w"].kind(), tch::Kind::Float);
}

#[test]
fn holomorphic_xp_mlp_dump_agrees_through_its_builtin_map() {
    let d = tempfile::tempdir().unwrap();
    let o = d.path().join("c");
    let f = fixture("holomorphic_xp_mlp.safetensors");
    let (code, stdout, stderr) = epcheck(&["compare", &f, "--names", "holomorphic_xp_mlp", "--preset", "p-mlp", "--archi", "4-5-4-3", "--activation", "logistic4", "--T", "80", "--K", "40", "--beta", "0.1", "--out", s(&o)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let v = verdicts(&one_run(&o));
    for key in ["xphi/~/fc_1/w", "state.free.L2", "grad.bptt.xphi/~/fc_3/w", "grad.ep_plus.xphi/~/fc_2/b", "grad.ep_centered.xphi/~/fc_1/w", "grad.ep_holomorphic4.xphi/~/fc_3/w"] {
        assert!(passes(&v, key), "{key}:\n{v}");
    }
}

#[test]
fn compare_reads_back_a_bias_dump_and_names_a_planted_beta_point() {
    let d = tempfile::tempdir().unwrap();
    let dump = d.path().join("bias.safetensors");
    let r = d.path().join("r");
    let (code, stdout, stderr) = epcheck(&[
        "bias", "--archi", "6-5-3", "--batch", "2", "--activation", "logistic4", "--set", "init_scale=0.5", "--seed", "0", "--set", "checks.bias.grid=[0.001,0.01,0.1]", "--set", "checks.bias.N=[1,4]", "--out", s(&r), "--dump", s(&dump),
    ]);
    // The sweep's own verdict on this short grid is not the point here (3 points: its consistency may fail).
    assert!(code <= 1 && dump.exists(), "{stdout}\n{stderr}");
    let o = d.path().join("c");
    let (code, stdout, stderr) = epcheck(&["compare", s(&dump), "--out", s(&o)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let v = verdicts(&one_run(&o));
    // `@<β>` keys with dots in β (the spec's own form), every estimator of the sweep, the reference.
    for key in ["grad.ep_centered@0.001.synapses.0.weight", "grad.ep_plus@0.1.synapses.1.bias", "grad.ep_holomorphic4@0.01.synapses.1.weight", "grad.implicit.synapses.0.weight"] {
        assert!(passes(&v, key), "{key}:\n{v}");
    }
    let mut t: Vec<(String, Tensor)> = epcheck::io::read_tensors(&dump).unwrap().into_iter().collect();
    let (_, g) = t.iter_mut().find(|(k, _)| k == "grad.ep_minus@0.01.synapses.0.weight").unwrap();
    let _ = g.get(1).get(2).g_mul_scalar_(1.0 + 1e-6);
    let planted = d.path().join("planted.safetensors");
    let bytes = std::fs::read(&dump).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    epcheck::io::write_tensors(&planted, &t, meta.metadata().clone().unwrap_or_default()).unwrap();
    let o2 = d.path().join("c2");
    let (code, stdout, stderr) = epcheck(&["compare", s(&planted), "--out", s(&o2)]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let v = verdicts(&one_run(&o2));
    let fails: Vec<&str> = v.lines().filter(|l| l.contains(",key,") && l.contains(",fail")).collect();
    assert_eq!(fails.len(), 1, "{fails:?}");
    assert!(fails[0].contains(",key,grad.ep_minus@0.01.synapses.0.weight,fail"), "{fails:?}");
}

#[test]
fn float_cast_dumps_agree_to_float64_classes_under_reference_casts() {
    // The as-published dumps (float32 copies of the nudge and GDU losses) agree at the f64 classes once epcheck
    // makes the same casts: the ~1e-7 differences of `laborieux_float_cast_dump_…` are those casts and nothing else.
    let d = tempfile::tempdir().unwrap();
    for (f, map, preset) in [("laborieux_pmlp_casts.safetensors", "laborieux_check_gdu", "p-mlp"), ("seqlearning_imdb_casts.safetensors", "seqlearning_check_gdu", "imdb-hopfield")] {
        let o = d.path().join(f);
        let f = fixture(f);
        let (code, stdout, stderr) = epcheck(&["compare", &f, "--names", map, "--preset", preset, "--activation", "tanh", "--T", "30", "--K", "10", "--beta", "0.05", "--set", "reference_casts=on", "--out", s(&o)]);
        assert_eq!(code, 0, "{f}: {stdout}\n{stderr}");
    }
}

#[test]
fn seqlearning_small_beta_series_read_their_beta_from_the_metadata() {
    // The SeqLearning layout's `gdu_small.ep.<p>` / `gdu_small.ep_neg.<p>` (conventions §12.1): the reference's own
    // +β and −β series (β = 0.05), renamed, with β in the metadata; the run's β differs (0.1), so only the
    // metadata can make them agree.
    let f = fixture("seqlearning_imdb_f64.safetensors");
    let t = epcheck::io::read_tensors(Path::new(&f)).unwrap();
    let mut out: Vec<(String, Tensor)> = vec![];
    for (k, v) in &t {
        let k = if let Some(r) = k.strip_prefix("EP_2.") {
            format!("gdu_small.ep_neg.{r}")
        } else if let Some(r) = k.strip_prefix("EP.") {
            format!("gdu_small.ep.{r}")
        } else if k.starts_with("BPTT.") || k.starts_with("ep.") || k.contains(".traj.") {
            continue;
        } else {
            k.clone()
        };
        out.push((k, v.shallow_clone()));
    }
    let d = tempfile::tempdir().unwrap();
    let with = d.path().join("small.safetensors");
    epcheck::io::write_tensors(&with, &out, [("gdu_small.beta".to_string(), "0.05".to_string())].into_iter().collect()).unwrap();
    let args = |file: &Path, o: &Path| -> Vec<String> {
        ["compare", s(file), "--preset", "imdb-hopfield", "--activation", "tanh", "--T", "30", "--K", "10", "--beta", "0.1", "--out", s(o)].iter().map(|x| x.to_string()).collect()
    };
    let o = d.path().join("c");
    let (code, stdout, stderr) = epcheck(&args(&with, &o).iter().map(|x| x.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let v = verdicts(&one_run(&o));
    for key in ["gdu_small.ep.synapses.0.weight", "gdu_small.ep_neg.neurons_0", "gdu_small.ep.synapses.2.bias"] {
        assert!(passes(&v, key), "{key}:\n{v}");
    }
    let sm = std::fs::read_to_string(one_run(&o).join("summary.md")).unwrap();
    assert!(sm.contains("| gdu_small.ep_neg.neurons_0 | gdu.ep_minus@0.05.neurons.L1 |"), "{sm}");
    // Without the metadata entry: one line naming it, exit 2, nothing written.
    let without = d.path().join("nometa.safetensors");
    epcheck::io::write_tensors(&without, &out, Default::default()).unwrap();
    let o2 = d.path().join("c2");
    let (code, _, stderr) = epcheck(&args(&without, &o2).iter().map(|x| x.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("gdu_small.beta") && !o2.exists(), "{stderr}");
}

#[test]
fn hwc_from_chw_reads_a_channels_last_dense_head_and_names_a_wrong_size() {
    // The Scaling-EP dense head W.8_9 is stored (C, H, W, classes); a channels-last producer stores it flattened
    // (H·W·C, classes). Oracle: the permutation made here with tch, independently of the transform's code.
    let f = fixture("brainseek_resnet13.safetensors");
    let t = epcheck::io::read_tensors(Path::new(&f)).unwrap();
    let w = &t["DenseWeight_0"]; // (2, 2, 2, 10)
    let hwc = w.permute([1, 2, 0, 3]).contiguous().reshape([8, 10]).transpose(0, 1).contiguous(); // (10, H·W·C)
    // Canonical names for the rest (through the built-in map's own rule), so that the test's map only adds head_hwc.
    let rule = epcheck::checks::conformance::builtin_map("brainseek_hopfield_resnet13").unwrap().resolver.unwrap();
    let mut out: Vec<(String, Tensor)> =
        t.iter().filter(|(k, _)| !k.contains("grad.") && !k.contains("traj.")).map(|(k, v)| (rule(k).map(|r| r.0).unwrap_or_else(|| k.clone()), v.shallow_clone())).collect();
    out.push(("head_hwc".into(), hwc));
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("hwc.safetensors");
    epcheck::io::write_tensors(&file, &out, Default::default()).unwrap();
    let map = d.path().join("map.toml");
    let write_map = |tr: &str| std::fs::write(&map, format!("[names]\nhead_hwc = {{ key = \"param.W.8_9\", transforms = [\"reshape(8, 10)\", \"transpose(0, 1)\", \"{tr}\"] }}\n")).unwrap();
    // epcheck's (C·H·W, 10) → (10, C·H·W) → channels-last order.
    write_map("hwc_from_chw(2, 2, 2)");
    let o = d.path().join("c");
    let mut a = vec!["compare", s(&file), "--names", s(&map)];
    a.extend_from_slice(&BS[2..]);
    a.extend(["--out", s(&o)]);
    let (code, stdout, stderr) = epcheck(&a);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(passes(&verdicts(&one_run(&o)), "head_hwc"));
    // Planted: the wrong axis sizes leave the layout unchanged, and the key fails by value.
    write_map("hwc_from_chw(4, 2, 1)");
    let o2 = d.path().join("c2");
    let mut a = vec!["compare", s(&file), "--names", s(&map)];
    a.extend_from_slice(&BS[2..]);
    a.extend(["--out", s(&o2)]);
    let (code, stdout, stderr) = epcheck(&a);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let v2 = verdicts(&one_run(&o2));
    assert!(v2.lines().any(|l| l.contains(",loaded,head_hwc,fail")), "{v2}");
}

#[test]
fn laborieux_pcnn_softmax_dump_agrees_through_the_graph_file() {
    // The Laborieux P-CNN with cross-entropy and its softmax readout (`P_CNN(..., softmax=True)`), built as the
    // graph file fixtures/graphs/p-cnn-softmax.toml; its state_dict names are the graph's parameter names.
    let d = tempfile::tempdir().unwrap();
    let o = d.path().join("c");
    let f = fixture("laborieux_pcnn_softmax.safetensors");
    let g = format!("{}/fixtures/graphs/p-cnn-softmax.toml", env!("CARGO_MANIFEST_DIR"));
    let (code, stdout, stderr) = epcheck(&["compare", &f, "--graph", &g, "--T", "30", "--K", "10", "--beta", "0.05", "--out", s(&o)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let v = verdicts(&one_run(&o));
    // The readout's gradient comes from the loss only (θ-dependent loss): synapses.2.* included.
    for key in ["state.free.L1", "state.plus.L2", "grad.ep_plus.synapses.0.weight", "grad.ep_plus.synapses.2.weight", "grad.ep_centered.synapses.2.bias", "grad.ep_centered.synapses.1.weight"] {
        assert!(passes(&v, key), "{key}:\n{v}");
    }
}
