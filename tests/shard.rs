//! Issue 18: `bias --shard i/n` and `epcheck merge` of bias shards.
//!
//! Oracles: the unsharded run of the same configuration — the merged run's metrics and verdict tables must equal
//! it bit for bit (both are computed by the same `finish` from the same per-β numbers, which the shard records
//! carry exactly), and its slopes are the error laws of estimators §6 (1 one-sided, 2 centered, N holomorphic);
//! a planted configuration mismatch must be refused (one stderr line naming the key, exit 2, nothing written).
use epcheck::checks::bias::{BetaRec, IdentityRec, PointRec, ScopeErr};
use polars::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{bin, run_dirs, text};

/// A Parquet table as text rows, without `run_id`; every f64 as its bit pattern (equality is bit for bit).
fn table(dir: &Path, name: &str) -> Vec<String> {
    let p = dir.join("tables").join(format!("{name}.parquet"));
    let df = ParquetReader::new(std::fs::File::open(&p).unwrap()).finish().unwrap();
    let cols: Vec<Vec<String>> = df
        .columns()
        .iter()
        .filter(|c| c.name().as_str() != "run_id")
        .map(|c| match c.dtype() {
            DataType::Float64 => c.f64().unwrap().into_iter().map(|v| v.map(|x| format!("{:016x}", x.to_bits())).unwrap_or_default()).collect(),
            _ => c.cast(&DataType::String).unwrap().str().unwrap().into_iter().map(|v| v.unwrap_or("").to_string()).collect(),
        })
        .collect();
    (0..df.height()).map(|i| cols.iter().map(|c| c[i].as_str()).collect::<Vec<_>>().join(",")).collect()
}

/// A smooth, converged instance (tanh, small weights) whose error laws fit on this grid.
fn base() -> Vec<&'static str> {
    vec!["bias", "--archi", "6-5-3", "--activation", "tanh", "--batch", "2", "--set", "init_scale=0.5", "--grid", "1e-3,2e-3,5e-3,1e-2,2e-2,5e-2,0.1", "--N-list", "1,2"]
}

#[test]
fn bias_shards_merged_equal_the_unsharded_sweep_and_mismatches_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let single = d.path().join("single");
    let o = bin().args(base()).arg("--out").arg(&single).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let digest = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string();
    let shards = d.path().join("shards");
    for i in 0..4 {
        let o = bin().args(base()).args(["--shard", &format!("{i}/4")]).arg("--out").arg(&shards).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "shard {i}/4: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("info — shard {i}/4")), "{}", text(&o));
    }
    let parts = run_dirs(&shards);
    assert_eq!(parts.len(), 4);
    // Each shard's per-β rows are its own β points only (grid indices i, i + 4, …).
    let grid = [1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1];
    let mut owned = vec![];
    for p in &parts {
        let rec: epcheck::checks::bias::ShardRecord = serde_json::from_str(&std::fs::read_to_string(p.join("bias-shard.json")).unwrap()).unwrap();
        assert_eq!(rec.betas.iter().map(|b| b.index).collect::<Vec<_>>(), (rec.shard[0]..7).step_by(4).collect::<Vec<_>>());
        owned.extend(rec.betas.iter().map(|b| (b.index, b.beta)));
    }
    owned.sort_by_key(|x| x.0);
    assert_eq!(owned, grid.iter().cloned().enumerate().collect::<Vec<_>>(), "every β point in exactly one shard");
    let merged = d.path().join("merged");
    let o = bin().arg("merge").args(&parts).arg("--out").arg(&merged).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (m, s) = (run_dirs(&merged), run_dirs(&single));
    assert_eq!(m.len(), 1);
    let (tm, ts) = (table(&m[0], "metrics"), table(&s[0], "metrics"));
    assert_eq!(tm.len(), ts.len());
    for (a, b) in tm.iter().zip(&ts) {
        assert_eq!(a, b, "merged row ≠ unsharded row");
    }
    assert_eq!(table(&m[0], "verdicts"), table(&s[0], "verdicts"), "merged verdicts = unsharded verdicts");
    // The slopes: fitted in both, and the laws of estimators §6 (the unsharded run passed with them).
    let slopes: Vec<&String> = ts.iter().filter(|r| r.contains(",fit,total,") && r.contains(",slope,")).collect();
    assert_eq!(slopes.len(), 5, "ep_plus, ep_minus, ep_centered, N = 1, N = 2: {slopes:?}");
    let summary = |p: &Path| std::fs::read_to_string(p.join("summary.md")).unwrap().lines().skip(3).map(String::from).collect::<Vec<_>>();
    assert_eq!(summary(&m[0]), summary(&s[0]), "merged summary (slopes, identities, verdicts) = unsharded summary");
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default(), digest, "same digest line");

    // Planted mismatch: shard 3/4 of another N list; a missing shard; a fuzz shard among bias shards.
    let other = d.path().join("other");
    let mut args = base();
    args[12] = "1,2,4";
    let o = bin().args(&args).args(["--shard", "3/4"]).arg("--out").arg(&other).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let refused = d.path().join("refused");
    let cases: Vec<(Vec<PathBuf>, &str)> = vec![
        ([&parts[..3], &run_dirs(&other)[..]].concat(), "checks.bias.N: [1, 2] vs [1, 2, 4]"),
        (parts[..3].to_vec(), "shard 3/4 is missing"),
        ([&parts[..], &parts[..1]].concat(), "shard 0/4 is given twice"),
    ];
    for (dirs, want) in cases {
        let o = bin().arg("merge").args(&dirs).arg("--out").arg(&refused).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(want), "{want}: {err}");
        assert!(!refused.exists(), "nothing written");
    }
}

/// The shard records carry every number exactly: the shortest round-trip text of each f64, including the
/// values JSON numbers cannot hold.
#[test]
fn shard_records_round_trip_every_f64_bit_for_bit() {
    let tricky = [1.0 / 3.0, 1e-300, 5e-324, -0.0, f64::INFINITY, f64::NEG_INFINITY, 0.1 + 0.2, f64::MAX, std::f64::consts::PI];
    let e = |x: f64| ScopeErr { rel_l2: x, one_minus_cos: x * 0.5, dist_l2: -x };
    let rec = BetaRec {
        index: 3,
        beta: 0.1 + 0.2,
        cos_err_pm: -1.0 + 1e-16,
        kinked: true,
        beta_c_pred: Some(f64::INFINITY),
        points: tricky
            .iter()
            .map(|&x| PointRec { est: "ep_plus".into(), n: Some(2), beta: x, converged: true, kinks: 0, floor_rel: x, drift_rel: x / 7.0, conv_rel: x * 3.0, im_leak: Some(x), scopes: vec![e(x), e(x / 9.0)] })
            .collect(),
        identities: vec![IdentityRec { id: "B1".into(), name: "n".into(), value: f64::NAN, threshold: 1e-12 }],
    };
    let back: BetaRec = serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
    let bits = |r: &BetaRec| {
        let mut v = vec![r.beta.to_bits(), r.cos_err_pm.to_bits(), r.beta_c_pred.unwrap().to_bits(), r.identities[0].value.to_bits(), r.identities[0].threshold.to_bits()];
        for p in &r.points {
            v.extend([p.beta, p.floor_rel, p.drift_rel, p.conv_rel, p.im_leak.unwrap()].map(f64::to_bits));
            v.extend(p.scopes.iter().flat_map(|s| [s.rel_l2, s.one_minus_cos, s.dist_l2].map(f64::to_bits)));
        }
        v
    };
    assert_eq!(bits(&back), bits(&rec));
}

/// JUnit XML without its timing attributes (wall times are not results).
fn junit_suites(dir: &Path) -> Vec<String> {
    let x = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    let mut s = String::new();
    let mut rest = x.as_str();
    // Drop every ` time="…"` and ` timestamp="…"` attribute.
    while let Some(i) = rest.find(" time") {
        s += &rest[..i];
        let after = &rest[i + 1..];
        match after.find('"').and_then(|a| after[a + 1..].find('"').map(|b| a + b + 2)) {
            Some(end) if after[..after.find('"').unwrap()].ends_with('=') => rest = &after[end..],
            _ => {
                s += " ";
                rest = after;
            }
        }
    }
    s += rest;
    s.split("<testsuite ").skip(1).map(|b| b.to_string()).collect()
}

#[test]
fn verify_shards_merge_to_the_unsharded_job_suite_by_suite() {
    let d = tempfile::tempdir().unwrap();
    let suites = d.path().join("suites");
    std::fs::create_dir_all(&suites).unwrap();
    let write = |name: &str, archi: &str| {
        let s = format!("name = \"{name}\"\nseeds = [0, 1]\ndtype = \"f64\"\nfigure_format = \"svg\"\nthreads = 1\n[model]\npreset = \"p-mlp\"\narchi = {archi}\nbatch = 2\n[checks.local]\n[checks.converge]\n");
        std::fs::write(suites.join(format!("{name}.toml")), s).unwrap();
    };
    for (n, a) in [("a", "[4, 3, 2]"), ("b", "[5, 3, 2]"), ("c", "[4, 4, 2]")] {
        write(n, a);
    }
    let verify = |extra: &[&str], out: &str| bin().arg("verify").arg(&suites).args(extra).arg("--out").arg(d.path().join(out)).output().unwrap();
    let single = verify(&[], "single");
    // converge fails on these (T = 30 stops short of tol): the merged job must carry failures too.
    assert_eq!(single.status.code(), Some(1), "{}", text(&single));
    for i in 0..2 {
        let o = verify(&["--shard", &format!("{i}/2")], &format!("sh{i}"));
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    }
    let merged = d.path().join("merged");
    let o = bin().arg("merge").arg(d.path().join("sh1")).arg(d.path().join("sh0")).arg("--out").arg(&merged).output().unwrap();
    assert_eq!(o.status.code(), single.status.code(), "{}", text(&o));
    let last = |o: &Output, k: usize| String::from_utf8_lossy(&o.stdout).lines().find(|l| l.contains("passed,")).map(|l| l.to_string()).unwrap_or_else(|| panic!("no summary line {k}"));
    assert_eq!(last(&o, 0), last(&single, 1), "same summary line");
    let (js, jm) = (junit_suites(&d.path().join("single")), junit_suites(&merged));
    assert_eq!(js.len(), 3);
    assert_eq!(jm.len(), 3);
    for (a, b) in jm.iter().zip(&js) {
        assert_eq!(a, b, "merged JUnit suite = unsharded JUnit suite");
    }
    // The job page: the same rows (verdict, suite, check, instance, digest) but for the run folders' names, every
    // run folder linked; summary.md holds the same rows.
    let rows = |p: &Path| -> Vec<String> { std::fs::read_to_string(p.join("index.html")).unwrap().lines().filter(|l| l.starts_with("<tr><td>")).map(|l| l.split("<td><a href").next().unwrap().to_string()).collect() };
    assert_eq!(rows(&merged), rows(&d.path().join("single")));
    assert_eq!(rows(&merged).len(), 12);
    let summary = std::fs::read_to_string(merged.join("summary.md")).unwrap();
    assert!(summary.contains(&last(&single, 1)) && summary.lines().filter(|l| l.starts_with("| a |")).count() == 4, "{summary}");
    let index = std::fs::read_to_string(merged.join("index.html")).unwrap();
    let runs = run_dirs(&merged);
    assert_eq!(runs.len(), 6, "one run folder per suite and seed: {runs:?}");
    for r in &runs {
        assert!(r.join("index.html").is_file() && r.join("tables").join("metrics.parquet").is_file());
        assert!(index.contains(&format!("{}/index.html", r.file_name().unwrap().to_string_lossy())), "index links {}", r.display());
    }
    for s in ["a", "b", "c"] {
        assert_eq!(index.matches(&format!("<td>{s}</td>")).count(), 4, "suite {s}: 2 seeds × 2 checks on the page");
    }

    // Planted mismatch: suite c edited after shard 0 ran; a missing shard.
    write("c", "[4, 5, 2]");
    let o = verify(&["--shard", "1/2"], "sh1b");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let refused = d.path().join("refused");
    for (dirs, want) in [(vec!["sh0", "sh1b"], "c.toml: sha256"), (vec!["sh0"], "shard 1/2 is missing")] {
        let o = bin().arg("merge").args(dirs.iter().map(|x| d.path().join(x))).arg("--out").arg(&refused).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(want), "{want}: {err}");
        assert!(!refused.exists(), "nothing written");
    }
}
