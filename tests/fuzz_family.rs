//! Issue 18: architecture families, shrinking in the CLI, the new properties, sharding and `merge`.
//!
//! Oracles: the planted bug (`test_bad_dense`, a dense coupling whose pre drive reads W in the transposed layout,
//! src/model/terms/planted.rs) must be found, shrunk to ≤ 2 layers with one planted coupling, and reproduced by
//! the written verify suite — and the same family with the planted kind replaced by `dense` must not fail; the
//! sequential SplitMix64 stream (case seeds); an unsharded run's table (the merged shards must equal it row for
//! row, timing column excepted); hand-built graphs whose preconditions are known to fail (divergent identity
//! dynamics, clamp units, async schedule) for the `skip` reasons.
use epcheck::fuzz::{self, family::Family, Case, Rng};
use epcheck::run::Shard;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{bin, cases_table as table, run_dirs, text};

fn run(c: &mut Command) -> Output {
    c.output().expect("the binary runs")
}

#[test]
fn builtin_family_is_the_shipped_file_and_draws_are_deterministic() {
    let shipped = std::fs::read_to_string("fixtures/families/builtin.toml").unwrap();
    assert_eq!(shipped, fuzz::family::BUILTIN);
    let f = Family::builtin();
    assert_eq!(f.name, "builtin");
    for seed in [0u64, 7, 123_456] {
        let (a, _) = f.tree(seed).current().graph();
        let (b, _) = f.tree(seed).current().graph();
        assert_eq!(a, b, "a case depends on its seed only");
        epcheck::graph::parse_str(&a).expect("every drawn graph builds");
    }
    assert_ne!(f.tree(1).current().graph().0, f.tree(2).current().graph().0);
    // Case seeds: the i-th output of the sequential SplitMix64 stream, computed directly.
    let mut stream = Rng::new(42);
    for i in 0..20 {
        assert_eq!(fuzz::case_seed(42, i), stream.next_u64());
    }
}

#[test]
fn shards_partition_the_cases() {
    let n = 4;
    let mut seen = vec![0; 11];
    for i in 0..n {
        for c in Shard::parse(&format!("{i}/{n}")).unwrap().select(11) {
            seen[c] += 1;
        }
    }
    assert!(seen.iter().all(|&k| k == 1), "every case in exactly one shard: {seen:?}");
    for bad in ["4/4", "1", "a/2", "0/0", "-1/3"] {
        assert!(Shard::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn bad_family_and_planted_kind_without_the_switch_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    // The planted kind is unknown unless EPCHECK_TEST_PLANT=1.
    let o = run(bin().args(["fuzz", "--family", "fixtures/families/planted.toml", "--cases", "2", "--out"]).arg(&out));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("EPCHECK_TEST_PLANT=1") && err.contains("planted.toml"), "{err}");
    assert!(!out.exists(), "nothing written");
    // A family with an out-of-range key.
    let f = d.path().join("bad.toml");
    std::fs::write(&f, fuzz::family::BUILTIN.replace("gain = [0.1, 0.5]", "gain = [0.1, 1.5]")).unwrap();
    let o = run(bin().args(["fuzz", "--cases", "2", "--family"]).arg(&f).arg("--out").arg(&out));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("gain must be"), "{}", text(&o));
    assert!(!out.exists());
}

#[test]
fn planted_bug_is_found_shrunk_and_reproduced_by_verify() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let o = run(bin().env("EPCHECK_TEST_PLANT", "1").args(["fuzz", "--family", "fixtures/families/planted.toml", "--cases", "6", "--seed", "1", "--properties", "audit,ep_bptt", "--out"]).arg(&out));
    assert_eq!(o.status.code(), Some(1), "the campaign finds the bug: {}", text(&o));
    let dirs = run_dirs(&out);
    assert_eq!(dirs.len(), 1);
    let shrunk = dirs[0].join("shrunk");
    let mut suites = vec![];
    for e in std::fs::read_dir(&shrunk).unwrap().flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".graph.toml") {
            let g = std::fs::read_to_string(&p).unwrap();
            let (layers, planted) = fuzz::shrink::census(&g, "test_bad_dense");
            assert!(layers <= 2 && planted == 1, "{name}: {layers} layers, {planted} planted couplings:\n{g}");
        }
        if name.ends_with(".verify.toml") {
            suites.push(p);
        }
    }
    assert!(suites.iter().any(|p| p.to_string_lossy().contains("audit-")), "the audit failure is shrunk: {suites:?}");
    // `epcheck verify` on the written suites fails the same way (the same error as the shrunk case's).
    for s in &suites {
        let header = std::fs::read_to_string(s).unwrap();
        let err = header.split("error ").nth(1).and_then(|x| x.split(',').next()).unwrap().to_string();
        let o = run(bin().env("EPCHECK_TEST_PLANT", "1").arg("verify").arg(s).arg("--out").arg(d.path().join("verify")));
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let t = text(&o);
        assert!(t.contains("FAIL") && t.contains(&format!("error {err}")), "{}: expected error {err}:\n{t}", s.display());
    }
    // The control: the same family with the planted kind replaced by dense does not fail.
    let fam = std::fs::read_to_string("fixtures/families/planted.toml").unwrap().replace("\"test_bad_dense\"", "\"dense\"");
    let f = d.path().join("clean.toml");
    std::fs::write(&f, fam).unwrap();
    let o = run(bin().args(["fuzz", "--cases", "6", "--seed", "1", "--properties", "audit,ep_bptt", "--family"]).arg(&f).arg("--out").arg(d.path().join("clean")));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn sharded_campaign_merges_to_the_unsharded_table() {
    let d = tempfile::tempdir().unwrap();
    let common = ["fuzz", "--cases", "6", "--seed", "5", "--properties", "local,audit,converge"];
    let o = run(bin().args(common).arg("--out").arg(d.path().join("single")));
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    let shards = d.path().join("shards");
    for i in 0..3 {
        let o = run(bin().args(common).args(["--shard", &format!("{i}/3")]).arg("--out").arg(&shards));
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    }
    let parts = run_dirs(&shards);
    assert_eq!(parts.len(), 3);
    let merged = d.path().join("merged");
    let o = run(bin().arg("merge").args(&parts).arg("--out").arg(&merged));
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    let m = run_dirs(&merged);
    assert_eq!(m.len(), 1);
    let single = run_dirs(&d.path().join("single"));
    assert_eq!(table(&m[0]), table(&single[0]), "merged table = unsharded table, row for row");
    for f in ["summary.md", "junit.xml", "index.html", "campaign.json"] {
        assert!(m[0].join(f).exists(), "{f}");
    }
    // Refusals: a shard of another campaign, a missing shard; one line, exit 2, nothing written.
    let other = d.path().join("other");
    let o = run(bin().args(["fuzz", "--cases", "6", "--seed", "6", "--properties", "local,audit,converge", "--shard", "2/3", "--out"]).arg(&other));
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    let refused = d.path().join("refused");
    let o = run(bin().arg("merge").args(&parts[..2]).args(run_dirs(&other)).arg("--out").arg(&refused));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.trim().lines().count() == 1 && err.contains("different campaign") && err.contains("seed"), "{err}");
    let o = run(bin().arg("merge").args(&parts[..2]).arg("--out").arg(&refused));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing"), "{}", text(&o));
    assert!(!refused.exists(), "nothing written on refusal");
}

fn graph(activation: &str, schedule: &str, init: f64) -> String {
    format!(
        "name = \"t\"\nloss = \"mse\"\nschedule = \"{schedule}\"\n[[inputs]]\nname = \"x\"\nshape = [3]\n[[layers]]\nname = \"L1\"\nshape = [4]\nactivation = \"{activation}\"\n[[layers]]\nname = \"out\"\nshape = [2]\nactivation = \"{activation}\"\n[[couplings]]\nkind = \"dense\"\npre = \"x\"\npost = \"L1\"\nweight = {{ name = \"W1\", shape = [4, 3], init = {init:?} }}\n[[couplings]]\nkind = \"dense\"\npre = \"L1\"\npost = \"out\"\nweight = {{ name = \"W2\", shape = [2, 4], init = {init:?} }}\n[[couplings]]\nkind = \"bias\"\nlayer = \"L1\"\nbias = {{ name = \"b1\", shape = [4], init = 0.1 }}\n"
    )
}

fn verdict(g: &str, property: &str) -> fuzz::Outcome {
    fuzz::check(&Case { property: property.into(), seed: 3, batch: 2, graph: g.to_string(), summary: String::new(), expect: None })
}

#[test]
fn new_properties_pass_on_sound_graphs_and_skip_with_the_reason() {
    // A contracting smooth synchronous graph: every new property applies and passes.
    let ok = graph("tanh", "sync", 0.3);
    for p in ["audit", "converge", "gdu", "holo_bias"] {
        let o = verdict(&ok, p);
        assert_eq!(o.verdict, "pass", "{p}: {o:?}");
    }
    // Identity units with large weights: the dynamics diverge (no contraction, no fixed point).
    let div = graph("identity", "sync", 3.0);
    let o = verdict(&div, "converge");
    assert!(o.verdict == "skip" && o.detail.contains("not a contracting draw"), "{o:?}");
    let o = verdict(&div, "gdu");
    assert!(o.verdict == "skip" && o.detail.contains("not converged"), "{o:?}");
    let o = verdict(&div, "holo_bias");
    assert!(o.verdict == "skip" && o.detail.contains("not converged"), "{o:?}");
    assert_eq!(verdict(&div, "audit").verdict, "pass", "the drive audit needs no convergence");
    // Clamp units: not holomorphic.
    let o = verdict(&graph("hard_sigmoid", "sync", 0.3), "holo_bias");
    assert!(o.verdict == "skip" && o.detail.contains("not holomorphic"), "{o:?}");
    // async2: the per-step GDU identity is stated for synchronous dynamics.
    let o = verdict(&graph("tanh", "async2", 0.3), "gdu");
    assert!(o.verdict == "skip" && o.detail.contains("schedule async2"), "{o:?}");
}

#[test]
fn verify_shard_runs_its_suites_only() {
    let d = tempfile::tempdir().unwrap();
    for name in ["a", "b", "c"] {
        let suite = format!("name = \"{name}\"\nseeds = [0]\ndtype = \"f64\"\nfigure_format = \"svg\"\nthreads = 1\n[model]\npreset = \"p-mlp\"\narchi = [4, 3, 2]\nbatch = 2\n[checks.local]\n");
        std::fs::write(d.path().join(format!("{name}.toml")), suite).unwrap();
    }
    // Sorted suites a, b, c: shard 0/2 runs a and c, shard 1/2 runs b (SLURM_ARRAY_* give the same split).
    for (shard, want) in [("0/2", vec!["a", "c"]), ("1/2", vec!["b"])] {
        let o = run(bin().args(["verify", d.path().to_str().unwrap(), "--shard", shard, "--out"]).arg(d.path().join(format!("out{}", &shard[..1]))));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let ran: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("PASS ")).map(|l| l.split('/').next().unwrap()).collect();
        assert_eq!(ran, want, "{out}");
    }
    let o = run(bin().args(["verify", d.path().to_str().unwrap(), "--out"]).arg(d.path().join("outenv")).env("SLURM_ARRAY_TASK_ID", "1").env("SLURM_ARRAY_TASK_COUNT", "2"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().filter(|l| l.starts_with("PASS ")).all(|l| l.starts_with("PASS b/")) && out.contains("PASS b/"), "{out}");
}

/// Issue 18 item 1: fixed parts. Every drawn case of fixtures/families/fixed.toml holds the user's layer `aux` and
/// its couplings (also the simplest case shrinking reaches), the loss stays on the drawn output, and the properties
/// pass on them; fixed parts that cannot fit the family's graphs are refused when the family is read.
#[test]
fn family_fixed_parts_are_in_every_case_and_the_properties_pass() {
    use proptest::strategy::ValueTree;
    let fam = Family::load(Path::new("fixtures/families/fixed.toml")).unwrap();
    let holds = |g: &str| {
        let m = epcheck::graph::parse_str(g).unwrap_or_else(|e| panic!("{e}\n{g}"));
        assert!(m.layers.iter().any(|l| l.name == "aux"), "{g}");
        for p in ["F.x_aux", "F.aux_out", "F.b_aux"] {
            assert!(m.params.iter().any(|s| s.name == p), "no {p}: {g}");
        }
        assert!(g.contains("output = \"out\""), "{g}");
    };
    let mut depths = std::collections::BTreeSet::new();
    for i in 0..12 {
        let r = fam.tree(fuzz::case_seed(5, i)).current();
        depths.insert(r.hidden.len());
        let (g, summary) = r.graph();
        holds(&g);
        assert!(summary.contains("fixed aux"), "{summary}");
    }
    assert!(depths.len() > 1, "the drawn part varies: depths {depths:?}");
    let mut t = fam.tree(fuzz::case_seed(5, 0));
    while t.simplify() {}
    holds(&t.current().graph().0);
    for i in 0..2 {
        let r = fam.tree(fuzz::case_seed(5, i)).current();
        for p in fuzz::PROPERTIES {
            let o = fuzz::check(&r.case(p));
            assert_eq!(o.verdict, "pass", "{p} on case {i} ({}): {}", r.graph().1, o.detail);
        }
    }
    // A fixed weight whose shape contradicts the family's input (5 features, not 4): refused, naming `fixed`.
    let text = std::fs::read_to_string("fixtures/families/fixed.toml").unwrap().replace("shape = [3, 4]", "shape = [3, 5]");
    let e = Family::parse(&text, Path::new("bad.toml")).unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains("fixed:"), "{e}");
}

/// Issue 18 item 1: attention blocks. fixtures/families/attention.toml draws cases with and without an attention
/// layer `A` over a sequence input (sizes within the family's ranges), each with the fixed layer `aux`; on the
/// attention cases the properties run: local, ep_bptt, audit and gdu pass, the others pass or skip with the reason.
#[test]
fn family_attention_blocks_are_drawn_and_the_properties_run_on_them() {
    let fam = Family::load(Path::new("fixtures/families/attention.toml")).unwrap();
    let (mut with, mut without) = (vec![], 0);
    for i in 0..16 {
        let r = fam.tree(fuzz::case_seed(7, i)).current();
        let (g, _) = r.graph();
        let m = epcheck::graph::parse_str(&g).unwrap_or_else(|e| panic!("{e}\n{g}"));
        assert!(m.layers.iter().any(|l| l.name == "aux"), "{g}");
        match r.attention {
            Some((t, d)) => {
                assert!((2..=4).contains(&t) && (1..=3).contains(&d), "{t} {d}");
                let k = m.layers.iter().position(|l| l.name == "A").expect("layer A");
                assert_eq!(m.layers[k].shape, vec![t, d]);
                assert!(g.contains("kind = \"attention\"") && g.contains("kind = \"attention_projection\"") && g.contains("kind = \"flatten_dense\""), "{g}");
                with.push(r);
            }
            None => {
                assert!(!g.contains("attention"), "{g}");
                without += 1;
            }
        }
    }
    assert!(with.len() >= 3 && without >= 3, "both kinds drawn: {} with, {without} without", with.len());
    for r in &with[..2] {
        for p in fuzz::PROPERTIES {
            let o = fuzz::check(&r.case(p));
            let must_pass = ["local", "ep_bptt", "audit", "gdu"].contains(&p);
            assert!(o.verdict == "pass" || (!must_pass && o.verdict == "skip" && !o.detail.is_empty()), "{p} on {}: {} {}", r.graph().1, o.verdict, o.detail);
        }
    }
}
