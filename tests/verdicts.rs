//! The verdict layer (docs/verdicts.md): each test plants a failure the verdicts once hid and asserts the
//! headline verdict, the exit code, the JUnit counts or the recorded configuration. Every run is tiny and
//! seeded (the model draws come from `--seed`; nothing here draws from libtorch's global generator outside an
//! instance build).
use std::path::{Path, PathBuf};
use std::process::Command;

fn epcheck(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_epcheck")).args(args).env("OMP_NUM_THREADS", "1").output().expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn runs(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => vec![],
    }
}

/// The headline line `<check> <instance>: <verdict>…` of a command's stdout.
fn headline<'a>(stdout: &'a str, check: &str) -> &'a str {
    stdout.lines().find(|l| l.starts_with(&format!("{check} "))).unwrap_or_else(|| panic!("no {check} headline in:\n{stdout}"))
}

fn verdict_of(line: &str) -> &str {
    let after = line.split_once(": ").expect("verdict").1;
    after.split([':', ' ']).next().unwrap()
}

fn one_run(out: &Path) -> PathBuf {
    let r: Vec<PathBuf> = runs(out).into_iter().filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')).collect();
    assert_eq!(r.len(), 1, "{r:?}");
    r[0].clone()
}

fn config_of(run: &Path) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap()
}

const TINY: &[&str] = &["--preset", "p-mlp", "--archi", "6-5-5-3", "--batch", "3", "--set", "init_scale=0.5", "--activation", "logistic4", "--seed", "0"];

fn args<'a>(cmd: &'a str, base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![cmd];
    v.extend_from_slice(base);
    v.extend_from_slice(extra);
    v
}

// Item 1: identities alone never make a pass.
#[test]
fn replay_gdu_with_disagreeing_series_is_info_not_pass() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    // The example: at T = 30, K = 20 the replayed series are far from BPTT (r_∞ ≈ 0.19 at T − K).
    let (code, stdout, stderr) = epcheck(&["gdu", "--mode", "replay", "--archi", "30-20-20-5", "--K", "20", "--seed", "0", "--out", s(&out)]);
    let h = headline(&stdout, "gdu");
    assert_eq!(verdict_of(h), "info", "{stdout}\n{stderr}");
    assert!(!h.contains(": pass"), "{h}");
    assert!(h.contains("replay mode scores nothing"), "the digest says why: {h}");
    assert_eq!(code, 0);
    // The identity rows are labelled uniquely.
    let v = std::fs::read_to_string(one_run(&out).join("tables/verdicts.csv")).unwrap();
    let ids: Vec<&str> = v.lines().filter(|l| l.contains(",identity,")).map(|l| l.split(",identity,").nth(1).unwrap().split(':').next().unwrap()).collect();
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(uniq.len(), ids.len(), "identity labels repeat: {ids:?}");
}

#[test]
fn theorem_gdu_with_series_beyond_threshold_fails_with_its_evidence() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    // At β = 0.01 the one-sided series are O(β) away from BPTT: a bias constant 1e-3 (threshold 1e-5, far above
    // the round-off floor) makes them disagree.
    let (code, stdout, stderr) = epcheck(&args("gdu", TINY, &["--K", "20", "--beta", "0.01", "--bias-const", "1e-3", "--out", s(&out)]));
    let h = headline(&stdout, "gdu");
    assert_eq!(verdict_of(h), "fail", "{stdout}\n{stderr}");
    assert!(h.contains("rel_l2") && h.contains(" > "), "digest names the deciding metric: {h}");
    assert_eq!(code, 1);
}

#[test]
fn overall_rule_identities_and_info() {
    use epcheck::checks::{overall_scoped, Verdict};
    let pass = Verdict::Pass;
    let info = Verdict::Info;
    let fail = Verdict::Fail("x".into());
    assert_eq!(overall_scoped([("identity", &pass), ("tensor", &info)]), Verdict::Info);
    assert_eq!(overall_scoped([("identity", &pass), ("tensor", &pass)]), Verdict::Pass);
    assert_eq!(overall_scoped([("identity", &fail), ("tensor", &pass)]).label(), "fail");
    assert_eq!(overall_scoped(std::iter::empty()), Verdict::Info);
    assert!(!epcheck::checks::within(f64::NAN, 1.0));
    assert!(!epcheck::checks::within(1.0, f64::INFINITY));
    assert!(!epcheck::checks::within(f64::INFINITY, f64::INFINITY));
}

// Item 2: JUnit agrees with the terminal and the exit code.
#[test]
fn verify_junit_counts_inconclusive_as_failed_like_the_terminal_and_exit_code() {
    let d = tempfile::tempdir().unwrap();
    let suite = d.path().join("planted.toml");
    // local passes; gdu under an async2 schedule is `inconclusive: schedule not sync`.
    std::fs::write(
        &suite,
        "name = \"planted\"\nseeds = [0]\ndtype = \"f64\"\nthreads = 1\n[model]\npreset = \"p-mlp\"\narchi = [6, 5, 3]\nbatch = 2\nactivation = \"logistic4\"\ninit_scale = 0.5\nschedule = \"async2\"\nt_free = 60\nk_nudge = 10\n[checks.local]\n[checks.gdu]\nbeta = 1e-3\n",
    )
    .unwrap();
    let out = d.path().join("runs");
    let junit = d.path().join("j.xml");
    let (code, stdout, stderr) = epcheck(&["verify", s(&suite), "--out", s(&out), "--junit", s(&junit)]);
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("INCONCLUSIVE planted/gdu")), "{stdout}");
    assert_eq!(code, 1, "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    let root = xml.lines().find(|l| l.contains("<testsuites")).unwrap();
    assert!(root.contains("tests=\"2\"") && root.contains("failures=\"1\""), "{root}");
    assert!(!xml.contains("<skipped"), "inconclusive is not a skip: {xml}");
    assert!(xml.contains("type=\"inconclusive\""), "{xml}");
    for p in ["name=\"seed\" value=\"0\"", "name=\"model\" value=\"p-mlp\"", "name=\"dtype\" value=\"f64\"", "name=\"device\""] {
        assert!(xml.contains(p), "missing property {p}: {xml}");
    }
    assert!(xml.contains("<system-out>"), "scope rows in system-out: {xml}");
    // The single command agrees: the same gdu run exits 1 with an inconclusive headline.
    let (code1, stdout1, _) = epcheck(&["gdu", "--archi", "6-5-3", "--batch", "2", "--activation", "logistic4", "--set", "init_scale=0.5", "--schedule", "async2", "--T", "60", "--K", "10", "--out", s(&out)]);
    assert_eq!(verdict_of(headline(&stdout1, "gdu")), "inconclusive", "{stdout1}");
    assert_eq!(code1, 1);
}

// Item 3: an all-zero external tensor is judged absolutely, never against an infinite threshold.
#[test]
fn compare_with_an_all_zero_reference_tensor_fails() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let dump = d.path().join("d.safetensors");
    let (code, stdout, stderr) = epcheck(&args("estimate", TINY, &["--estimator", "ep_centered", "--beta", "0.01", "--T", "200", "--K", "100", "--out", s(&out), "--dump", s(&dump)]));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // Keep parameters, batch and one EP gradient; zero that gradient.
    let t = epcheck::io::read_tensors(&dump).unwrap();
    let key = "grad.ep_centered.synapses.0.weight";
    assert!(t[key].abs().max().double_value(&[]) > 0.0);
    let mut keep: Vec<(String, tch::Tensor)> = t.iter().filter(|(k, _)| k.starts_with("param.") || k.starts_with("input.")).map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    keep.push((key.to_string(), t[key].zeros_like()));
    let ext = d.path().join("zeroed.safetensors");
    epcheck::io::write_tensors(&ext, &keep, Default::default()).unwrap();
    let out2 = d.path().join("runs2");
    let (code, stdout, stderr) =
        epcheck(&["compare", s(&ext), "--preset", "p-mlp", "--activation", "logistic4", "--set", "init_scale=0.5", "--beta", "0.01", "--T", "200", "--K", "100", "--out", s(&out2)]);
    let h = headline(&stdout, "conformance");
    assert_eq!(verdict_of(h), "fail", "{stdout}\n{stderr}");
    assert_eq!(code, 1);
    let v = std::fs::read_to_string(one_run(&out2).join("tables/verdicts.csv")).unwrap();
    let row = v.lines().find(|l| l.contains(key)).unwrap();
    assert!(row.contains(",fail,") && row.contains("judged absolutely"), "{row}");
    assert!(!v.contains("\"\"threshold\"\":null"), "no infinite or NaN threshold anywhere: {v}");
}

// Item 4: non-convergence is never quiet.
#[test]
fn oscillating_estimate_is_inconclusive_with_phase_example_and_residual_on_stderr() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let (code, stdout, stderr) = epcheck(&["estimate", "--archi", "6-5-3", "--batch", "2", "--seed", "0", "--set", "init_scale=1e6", "--out", s(&out)]);
    let h = headline(&stdout, "estimate");
    assert_eq!(verdict_of(h), "inconclusive", "{stdout}\n{stderr}");
    assert!(h.contains("not converged"), "{h}");
    assert_eq!(code, 1);
    let note = stderr.lines().find(|l| l.contains("not converged")).unwrap_or_else(|| panic!("stderr: {stderr}"));
    assert!(note.contains("free phase") && note.contains("example") && note.contains("r_∞"), "{note}");
    let md = std::fs::read_to_string(one_run(&out).join("summary.md")).unwrap();
    assert!(md.contains("inconclusive: not converged"), "{md}");
}

#[test]
fn diverging_estimate_is_a_reported_finding_not_an_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let (code, stdout, stderr) = epcheck(&["estimate", "--archi", "6-5-3", "--batch", "2", "--seed", "0", "--activation", "identity", "--set", "init_scale=50", "--T", "400", "--out", s(&out)]);
    let h = headline(&stdout, "estimate");
    assert_eq!(verdict_of(h), "inconclusive", "{stdout}\n{stderr}");
    assert!(h.contains("diverged"), "{h}");
    assert!(stderr.contains("diverged"), "{stderr}");
    assert_eq!(code, 1);
    assert_eq!(runs(&out).len(), 1, "the finding is reported in a run folder");
}

// Item 5: a flag is applied or refused, never ignored; the record says what ran.
#[test]
fn graph_overrides_are_refused_and_nothing_is_written() {
    let graph = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/graphs/tiny-conv-skip.toml");
    for cmd in ["converge", "estimate", "gdu", "local", "audit"] {
        for (flag, value, needle) in [("--schedule", "async2", "schedule"), ("--activation", "sigmoid", "activation"), ("--archi", "6-5-3", "archi"), ("--loss", "ce", "loss"), ("--set", "height=8", "height")] {
            let d = tempfile::tempdir().unwrap();
            let out = d.path().join("runs");
            let (code, stdout, stderr) = epcheck(&[cmd, "--graph", graph, flag, value, "--batch", "2", "--T", "5", "--K", "2", "--out", s(&out)]);
            assert_eq!(code, 2, "{cmd} {flag} {value}: {stdout}\n{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains(needle) && (stderr.contains("graph") || stderr.contains("does not apply")), "{stderr}");
            assert!(runs(&out).is_empty(), "{cmd} {flag}: nothing written");
        }
    }
}

#[test]
fn recorded_config_equals_what_ran_for_every_override() {
    let d = tempfile::tempdir().unwrap();
    for cmd in ["converge", "estimate", "gdu", "local", "audit"] {
        for (flag, value, key, want) in [
            ("--archi", "6-4-3", "archi", toml::Value::Array(vec![6.into(), 4.into(), 3.into()])),
            ("--activation", "sigmoid", "activation", "sigmoid".into()),
            ("--schedule", "async2", "schedule", "async2".into()),
            ("--loss", "ce", "loss", "ce".into()),
            ("--batch", "4", "batch", 4.into()),
            ("--seed", "3", "seed", 3.into()),
        ] {
            let out = d.path().join(format!("{cmd}{key}"));
            let dump = d.path().join(format!("{cmd}{key}.safetensors"));
            let mut a = vec![cmd, "--preset", "p-mlp", "--T", "6", "--K", "3", "--out", s(&out), "--dump", s(&dump)];
            // The base sizes unless this case overrides them.
            if key != "archi" {
                a.extend(["--archi", "6-5-3"]);
            }
            if key != "batch" {
                a.extend(["--batch", "2"]);
            }
            a.extend([flag, value]);
            let (code, stdout, stderr) = epcheck(&a);
            assert!(code == 0 || code == 1, "{cmd} {flag}: {stdout}\n{stderr}");
            let cfg = config_of(&one_run(&out));
            assert_eq!(cfg.get(key), Some(&want), "{cmd} {flag} {value}: config.toml records {:?}", cfg.get(key));
            // The model used it: sizes and batch are visible in the dumped tensors; the dump metadata agrees.
            let t = epcheck::io::read_tensors(&dump).unwrap();
            match key {
                "archi" => assert_eq!(t["param.synapses.0.weight"].size(), vec![4, 6]),
                "batch" => assert_eq!(t["input.x"].size()[0], 4),
                _ => {}
            }
            let bytes = std::fs::read(&dump).unwrap();
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            let md: serde_json::Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["epcheck.config"]).unwrap();
            assert_eq!(md[key].to_string(), serde_json::to_value(&want).unwrap().to_string(), "{cmd}: dump metadata {key}");
        }
    }
}

#[test]
fn graph_runs_record_the_graphs_own_values_and_no_p_mlp_keys() {
    let graph = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/graphs/tiny-conv-skip.toml");
    let d = tempfile::tempdir().unwrap();
    for cmd in ["converge", "estimate", "gdu", "local", "audit"] {
        let out = d.path().join(cmd);
        let (code, stdout, stderr) = epcheck(&[cmd, "--graph", graph, "--batch", "3", "--seed", "2", "--T", "6", "--K", "3", "--out", s(&out)]);
        assert!(code <= 1, "{cmd}: {stdout}\n{stderr}");
        let cfg = config_of(&one_run(&out));
        assert!(cfg.get("archi").is_none(), "{cmd}: a graph has no archi: {cfg:?}");
        assert_eq!(cfg.get("batch"), Some(&toml::Value::Integer(3)));
        assert_eq!(cfg.get("seed"), Some(&toml::Value::Integer(2)));
        // The graph file says schedule = "sync", loss = "mse", and mixes activations.
        assert_eq!(cfg.get("schedule").and_then(|v| v.as_str()), Some("sync"), "{cmd}");
        assert_eq!(cfg.get("loss").and_then(|v| v.as_str()), Some("mse"), "{cmd}");
        assert_eq!(cfg.get("activation").and_then(|v| v.as_str()), Some("per_layer"), "{cmd}");
    }
}

#[test]
fn input_file_batch_is_recorded_and_attention_runs_record_no_archi() {
    let d = tempfile::tempdir().unwrap();
    let dump = d.path().join("b4.safetensors");
    let out = d.path().join("a");
    let (code, stdout, stderr) = epcheck(&["estimate", "--archi", "6-5-3", "--batch", "4", "--T", "5", "--K", "2", "--out", s(&out), "--dump", s(&dump)]);
    assert!(code <= 1, "{stdout}\n{stderr}");
    let out2 = d.path().join("b");
    let dump2 = d.path().join("again.safetensors");
    let (code, stdout, stderr) = epcheck(&["estimate", "--archi", "6-5-3", "--input", s(&dump), "--T", "5", "--K", "2", "--out", s(&out2), "--dump", s(&dump2)]);
    assert!(code <= 1, "{stdout}\n{stderr}");
    assert_eq!(config_of(&one_run(&out2)).get("batch"), Some(&toml::Value::Integer(4)));
    let bytes = std::fs::read(&dump2).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert!(meta.metadata().as_ref().unwrap()["epcheck.config"].contains("\"batch\":4"));
    // An explicit contradicting --batch is refused.
    let out3 = d.path().join("c");
    let (code, _, stderr) = epcheck(&["estimate", "--archi", "6-5-3", "--input", s(&dump), "--batch", "20", "--out", s(&out3)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("batch") && runs(&out3).is_empty(), "{stderr}");
    // Attention presets do not record p-mlp's archi.
    let out4 = d.path().join("e");
    let (code, stdout, stderr) = epcheck(&["converge", "--preset", "imdb-hopfield", "--set", "seq_len=3", "--set", "embed_dim=2", "--set", "widths=[3,2,2]", "--batch", "2", "--T", "5", "--out", s(&out4)]);
    assert!(code <= 1, "{stdout}\n{stderr}");
    let cfg = config_of(&one_run(&out4));
    assert!(cfg.get("archi").is_none(), "{cfg:?}");
    assert_eq!(cfg.get("seq_len"), Some(&toml::Value::Integer(3)));
}

// Item 6: never write an empty or meaningless result.
#[test]
fn refused_combinations_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let (code, _, stderr) = epcheck(&args("refs", TINY, &["--dtype", "f32", "--T", "20", "--out", s(&out)]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("f64") && stderr.lines().count() == 1, "{stderr}");
    assert!(runs(&out).is_empty());
    let (code, _, stderr) = epcheck(&args("train", TINY, &["--baseline", "bp", "--dataset", "synthetic", "--epochs", "1", "--out", s(&out)]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no BP baseline"), "{stderr}");
    assert!(runs(&out).is_empty(), "{:?}", runs(&out));
    let (code, _, stderr) = epcheck(&args("estimate", TINY, &["--dump", "/proc/nope/d.safetensors", "--out", s(&out)]));
    assert_eq!(code, 2, "{stderr}");
    assert!(runs(&out).is_empty(), "a failing --dump path writes no report");
}

#[test]
fn weights_of_a_graph_model_omit_undefined_statistics() {
    // A checkpoint of a graph model: epcheck's own dump of the graph's parameters with its metadata.
    let d = tempfile::tempdir().unwrap();
    let graph = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/graphs/tiny-conv-skip.toml");
    let dump = d.path().join("g.safetensors");
    let out = d.path().join("runs");
    let (code, stdout, stderr) = epcheck(&["estimate", "--graph", graph, "--batch", "2", "--T", "5", "--K", "2", "--out", s(&out), "--dump", s(&dump)]);
    assert!(code <= 1, "{stdout}\n{stderr}");
    let wout = d.path().join("w");
    let (code, stdout, stderr) = epcheck(&["weights", &format!("ep={}", s(&dump)), "--out", s(&wout)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let run = one_run(&wout);
    let csv = std::fs::read_to_string(run.join("tables/weights.csv")).unwrap();
    assert!(!csv.to_lowercase().contains("nan"), "no NaN statistic: {csv}");
    // The graph's init bounds are known, so the statistics relative to them are computed.
    assert!(csv.contains("std_ratio"), "{csv}");
}

// Item 7: the evidence on the terminal.
#[test]
fn digests_state_the_deciding_numbers() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let (_, stdout, _) = epcheck(&args("converge", TINY, &["--T", "30", "--out", s(&out)]));
    let h = headline(&stdout, "converge");
    assert!(h.contains(" — free: r_∞ ") && h.contains("tol") && h.contains("ρ̂"), "{h}");
    let (_, stdout, _) = epcheck(&args("gdu", TINY, &["--K", "20", "--out", s(&out)]));
    let h = headline(&stdout, "gdu");
    assert!(h.contains(": pass — worst ep_sym rel_l2 ") && h.contains(" ≤ "), "{h}");
    let (_, stdout, _) = epcheck(&args("estimate", TINY, &["--estimator", "ep_centered", "--T", "200", "--K", "100", "--out", s(&out)]));
    let h = headline(&stdout, "estimate");
    assert!(h.contains(" — ep_centered vs bptt: total rel_l2 ") && h.contains("r_∞"), "{h}");
    let (_, stdout, _) = epcheck(&args("local", TINY, &["--out", s(&out)]));
    assert!(headline(&stdout, "local").contains(" — worst "), "{stdout}");
}

#[test]
fn training_that_learns_nothing_says_so() {
    // Hard-sigmoid units saturated by a huge init scale: every unit sits on a flat piece, the EP gradient is zero
    // to round-off. The run completes (it is a finding) and warns on stderr.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let (code, stdout, stderr) = epcheck(&["train", "--preset", "p-mlp", "--archi", "6-5-3", "--activation", "hard_sigmoid", "--set", "init_scale=100", "--dataset", "synthetic", "--epochs", "1", "--batch", "4", "--seed", "0", "--out", s(&out)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stderr.contains("warning: train: the gradient norm is") && stderr.contains("nothing is learned"), "{stderr}");
}
