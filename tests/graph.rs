//! Architecture graphs (`src/graph.rs`): every preset, written out as a graph file and built back, is the same
//! model — same parameter draws, Φ, drives, states after T steps, local and BPTT gradients, step VJPs (exact
//! equality: the same term constructors run the same kernels in the same order) — and bad graphs are clear
//! one-line errors (exit code 2 from the binary). The fuzzer's regression cases are replayed here too.
use epcheck::config::RunConfig;
use epcheck::estimators::bptt;
use epcheck::graph;
use epcheck::instance::Instance;
use epcheck::model::{Model, State};
use std::process::Command;
use tch::{Kind, Tensor};

/// libtorch's generator is global: tests that seed and draw hold the library's lock on it (the harness runs
/// tests in threads, and instance construction takes the same lock).
fn seeded() -> epcheck::tensor_util::RngGuard {
    epcheck::tensor_util::rng_lock()
}

fn preset(name: &str, f: impl FnOnce(&mut RunConfig)) -> RunConfig {
    let mut cfg = RunConfig::preset_defaults(name).unwrap();
    match name {
        "p-mlp" => {
            cfg.archi = vec![6, 5, 5, 3];
            cfg.activation = "logistic4".into();
            cfg.init_scale = Some(0.5);
        }
        "hopfield-resnet13" | "vgg5-dchn" | "vgg5-dchn-rain" => {
            cfg.height = Some(if name == "hopfield-resnet13" { 8 } else { 16 });
            cfg.in_channels = Some(2);
            cfg.widths = Some(vec![3, 4, 4, 5]);
            cfg.classes = Some(3);
            if name == "hopfield-resnet13" {
                cfg.gains = Some(vec![0.6, 0.7, 0.3]);
            } else {
                cfg.input_range = Some([0.1, 1.0]);
            }
        }
        "imdb-hopfield" => {
            cfg.seq_len = Some(5);
            cfg.embed_dim = Some(4);
            cfg.widths = Some(vec![6, 4, 2]);
        }
        "snli-hopfield" => {
            cfg.seq_len = Some(4);
            cfg.embed_dim = Some(3);
            cfg.widths = Some(vec![6, 3]);
        }
        _ => panic!("unknown preset {name}"),
    }
    cfg.batch = 2;
    f(&mut cfg);
    cfg
}

/// The instances of the round trip: every preset, plus the variants that change the graph's shape.
fn cases() -> Vec<(String, RunConfig)> {
    vec![
        ("p-mlp".into(), preset("p-mlp", |_| {})),
        ("p-mlp ce async2".into(), preset("p-mlp", |c| {
            c.loss = "ce".into();
            c.schedule = Some("async2".into());
        })),
        ("hopfield-resnet13".into(), preset("hopfield-resnet13", |_| {})),
        ("hopfield-resnet13 H=9 groups relu_alpha".into(), preset("hopfield-resnet13", |c| {
            c.height = Some(9);
            c.schedule = Some("groups".into());
            c.activation = "relu_alpha".into();
        })),
        ("hopfield-resnet13 skips=none sync".into(), preset("hopfield-resnet13", |c| {
            c.skips = Some("none".into());
            c.schedule = Some("sync".into());
        })),
        ("vgg5-dchn".into(), preset("vgg5-dchn", |_| {})),
        ("vgg5-dchn-rain".into(), preset("vgg5-dchn-rain", |c| c.preset = "vgg5-dchn-rain".into())),
        ("imdb-hopfield".into(), preset("imdb-hopfield", |_| {})),
        ("imdb-hopfield keys ce".into(), preset("imdb-hopfield", |c| {
            c.attention_mask = Some("keys".into());
            c.loss = "ce".into();
        })),
        ("snli-hopfield keys_and_queries".into(), preset("snli-hopfield", |c| c.attention_mask = Some("keys_and_queries".into()))),
    ]
}

fn random_state(m: &Model, b: i64, seed: i64) -> State {
    let _rng = epcheck::tensor_util::rng_lock();
    tch::manual_seed(epcheck::tensor_util::test_seed(seed));
    m.layers
        .iter()
        .map(|l| {
            let mut shape = vec![b];
            shape.extend(&l.shape);
            Tensor::rand(&shape[..], (Kind::Double, tch::Device::Cpu)) * 1.2 - 0.1
        })
        .collect()
}

/// max |a − b| over all tensors (0 = bitwise equal values).
fn max_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| {
        assert_eq!(x.size(), y.size());
        (x - y).abs().max().double_value(&[])
    }).fold(0.0, f64::max)
}

#[test]
fn every_preset_round_trips_through_its_graph_file() {
    let _g = seeded();
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    for (name, cfg) in cases() {
        let a = Instance::from_config(cfg.clone()).unwrap();
        let text = graph::emit(&a.model).unwrap();
        let m = graph::parse_str(&text).unwrap_or_else(|e| panic!("{name}: emitted graph does not parse: {e}\n{text}"));
        // Structure: the graph of the rebuilt model is the same text (names, shapes, bounds, schedule, maps).
        assert_eq!(graph::emit(&m).unwrap(), text, "{name}: emit ∘ parse is not the identity");
        assert_eq!(m.output, a.model.output, "{name}: output layer");
        assert_eq!(m.schedule.groups, a.model.schedule.groups, "{name}: schedule");
        // Parameter draws (names, shapes, bounds and order, init_scale).
        let pa = a.model.init_params(7, a.prec);
        let pb = m.init_params(7, a.prec);
        assert_eq!(max_diff(&pa, &pb), 0.0, "{name}: parameter draws differ");
        let (p, batch) = (&a.params, &a.batch);
        let b = batch.size();
        // Φ, Φ_β, 𝓕 pieces and every drive at random states.
        for seed in 0..2 {
            let s = random_state(&a.model, b, seed);
            let (fa, fb) = (a.model.primitive(p, batch, &s), m.primitive(p, batch, &s));
            assert_eq!(max_diff(&[fa], &[fb]), 0.0, "{name}: Φ");
            for beta in [0.0, 0.3] {
                for k in 0..s.len() {
                    let (da, db) = (a.model.drive(p, batch, &s, k, beta), m.drive(p, batch, &s, k, beta));
                    assert_eq!(max_diff(&[da], &[db]), 0.0, "{name}: drive of layer {k} at β = {beta}");
                }
                let (sa, sb) = (a.model.step(p, batch, &s, beta), m.step(p, batch, &s, beta));
                assert_eq!(max_diff(&sa, &sb), 0.0, "{name}: one step at β = {beta}");
            }
            assert_eq!(max_diff(&a.model.param_derivative(p, batch, &s), &m.param_derivative(p, batch, &s)), 0.0, "{name}: local gradient");
            let lam = random_state(&a.model, b, 10 + seed);
            let (la, ga) = a.model.step_vjp(p, batch, &s, &lam, 0.2);
            let (lb, gb) = m.step_vjp(p, batch, &s, &lam, 0.2);
            assert_eq!(max_diff(&la, &lb), 0.0, "{name}: step VJP (states)");
            assert_eq!(max_diff(&ga, &gb), 0.0, "{name}: step VJP (parameters)");
        }
        // States after T steps from zeros and the BPTT gradient.
        let t = 12;
        let (ga, fa) = bptt::full(&a.model, p, batch, t);
        let (gb, fb) = bptt::full(&m, p, batch, t);
        assert_eq!(max_diff(&fa.state, &fb.state), 0.0, "{name}: states after T = {t}");
        assert_eq!(max_diff(&ga.tensors, &gb.tensors), 0.0, "{name}: BPTT gradient");
        assert!(ga.tensors.iter().any(|g| g.abs().max().double_value(&[]) > 0.0), "{name}: degenerate instance");
        // The same instance through the run configuration key `graph`: same parameters and batch.
        let path = dir.path().join(format!("{}.toml", name.replace(' ', "_")));
        std::fs::write(&path, &text).unwrap();
        let mut gcfg = cfg.clone();
        gcfg.graph = Some(path.to_string_lossy().to_string());
        gcfg.init_scale = None;
        let g = Instance::from_config(gcfg).unwrap();
        assert_eq!(max_diff(&g.params, &a.params), 0.0, "{name}: instance parameters via graph = …");
        assert_eq!(max_diff(&g.batch.x, &a.batch.x), 0.0, "{name}: instance batch via graph = …");
        assert!(g.id.starts_with(&a.model.preset), "{name}: graph instance id {}", g.id);
    }
}

const GOOD: &str = r#"
name = "tiny"
loss = "mse"
schedule = "sync"

[[inputs]]
name = "x"
shape = [2, 4, 4]

[[layers]]
name = "C1"
shape = [3, 2, 2]
activation = "tanh"

[[layers]]
name = "out"
shape = [2]
activation = "identity"

[[couplings]]
kind = "conv"
pre = "x"
post = "C1"
kernel = 3
stride = 2
pad = 1
weight = { name = "W1", shape = [3, 2, 3, 3], init = 0.2 }

[[couplings]]
kind = "dense"
pre = "C1"
post = "out"
layout = "pre_first"
weight = { name = "W2", shape = [3, 2, 2, 2], init = 0.2 }

[[couplings]]
kind = "bias"
layer = "out"
bias = { name = "b2", shape = [2], init = 0.1 }
"#;

fn graph_err(text: &str) -> String {
    match graph::parse_str(text) {
        Ok(_) => panic!("graph should be refused:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_hand_written_graph_builds_the_composition_it_declares() {
    let _g = seeded();
    let m = graph::parse_str(GOOD).unwrap();
    assert_eq!(m.layer_names(), ["C1", "out"]);
    assert_eq!(m.param_names(), ["W1", "W2", "b2"]);
    assert_eq!(m.terms.iter().map(|t| t.kind()).collect::<Vec<_>>(), ["conv", "dense", "bias"]);
    // Φ at a state equals the closed form written with libtorch ops directly (an independent path).
    tch::manual_seed(epcheck::tensor_util::test_seed(3));
    let opts = (Kind::Double, tch::Device::Cpu);
    let p = vec![Tensor::randn([3, 2, 3, 3], opts), Tensor::randn([3, 2, 2, 2], opts), Tensor::randn([2], opts)];
    let x = Tensor::randn([2, 2, 4, 4], opts);
    let batch = epcheck::model::Batch::new(x.shallow_clone(), Tensor::from_slice(&[0i64, 1]), 2);
    let s = vec![Tensor::randn([2, 3, 2, 2], opts), Tensor::randn([2, 2], opts)];
    let conv = x.conv2d(&p[0], None::<Tensor>, [2, 2], [1, 1], [1, 1], 1);
    let want = (conv * &s[0]).sum_dim_intlist(Some(&[1i64, 2, 3][..]), false, None::<Kind>)
        + (s[0].reshape([2, 12]).matmul(&p[1].reshape([12, 2])) * &s[1]).sum_dim_intlist(Some(&[1i64][..]), false, None::<Kind>)
        + (&s[1] * p[2].unsqueeze(0)).sum_dim_intlist(Some(&[1i64][..]), false, None::<Kind>);
    let got = m.primitive(&p, &batch, &s);
    assert!(max_diff(&[got], &[want]) <= 1e-12);
}

#[test]
fn bad_graphs_are_clear_errors() {
    let cases: Vec<(String, &[&str])> = vec![
        (GOOD.replace("pre = \"C1\"", "pre = \"C9\""), &["unknown layer 'C9'", "coupling 1"]),
        (GOOD.replace("shape = [3, 2, 2]\nactivation", "shape = [3, 4, 4]\nactivation"), &["shape mismatch", "x [2, 4, 4]", "C1"]),
        (GOOD.replace("pre = \"C1\"\npost = \"out\"", "pre = \"out\"\npost = \"out\""), &["couples layer 'out' to itself"]),
        (GOOD.replace("name = \"out\"", "name = \"C1\""), &["duplicate name 'C1'"]),
        (GOOD.replace("kind = \"conv\"", "kind = \"convolution\""), &["unknown kind 'convolution'", "known: dense"]),
        (GOOD.replace("{ name = \"b2\", shape = [2], init = 0.1 }", "{ name = \"b2\", init = 0.1 }"), &["parameter 'b2' has no shape"]),
        (GOOD.replace("shape = [3, 2, 2, 2]", "shape = [2, 3, 2, 2]"), &["weight 'W2' has shape [2, 3, 2, 2], expected [3, 2, 2, 2]", "C1 [3, 2, 2] and out [2]"]),
        (GOOD.replace("name = \"W2\"", "name = \"W1\""), &["duplicate parameter name 'W1'"]),
        (GOOD.replace("schedule = \"sync\"", "schedule = [[\"C1\"]]"), &["layer 'out' exactly once"]),
        (GOOD.replace("activation = \"tanh\"", "activation = \"tanhh\""), &["unknown activation 'tanhh'"]),
        (GOOD.replace("kernel = 3\n", ""), &["missing kernel"]),
        (GOOD.replace("layer = \"out\"", "layer = \"x\""), &["clamped input"]),
        (GOOD.replace("loss = \"mse\"", "loss = \"mse\"\nfoo = 1"), &["unknown field `foo`"]),
        (GOOD.replace("schedule = \"sync\"", "schedule = \"sync\"\noutput = \"C1\""), &["output layer 'C1'"]),
        ("name = [".into(), &["malformed TOML"]),
    ];
    for (text, needles) in cases {
        let e = graph_err(&text);
        assert!(e.starts_with("config: graph: "), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        for n in needles {
            assert!(e.contains(n), "error '{e}' lacks '{n}'");
        }
    }
}

#[test]
fn the_binary_refuses_a_bad_graph_with_exit_code_2_and_no_report() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.toml");
    std::fs::write(&bad, GOOD.replace("pre = \"C1\"", "pre = \"C9\"")).unwrap();
    let out = d.path().join("runs");
    let o = Command::new(env!("CARGO_BIN_EXE_epcheck")).args(["local", "--graph", bad.to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.toml") && err.contains("unknown layer 'C9'"), "{err}");
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(), "no report on bad input");
    // The good graph runs end to end from the command line, and `preset --emit-toml` writes a graph file
    // that `--graph` accepts.
    let good = d.path().join("good.toml");
    std::fs::write(&good, GOOD).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_epcheck")).args(["local", "--graph", good.to_str().unwrap(), "--batch", "2", "--out", out.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let emitted = d.path().join("resnet.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_epcheck"))
        .args(["preset", "hopfield-resnet13", "--set", "height=8", "--set", "in_channels=2", "--set", "widths=[3,4,4,5]", "--set", "classes=3", "--emit-toml", "--out", emitted.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let m = graph::load_file(&emitted).unwrap();
    assert_eq!(m.preset, "hopfield-resnet13");
    assert_eq!(m.layers[0].shape, [3, 8, 8]);
}

#[test]
fn fuzz_regression_cases_replay() {
    let _g = seeded();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/regressions");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let case = epcheck::fuzz::read_case(&p).unwrap();
            let o = epcheck::fuzz::check(&case);
            assert!(o.verdict != "fail" && o.verdict != "error", "{}: {} {} (error {:.3e} > {:.3e})", p.display(), o.property, o.detail, o.error, o.threshold);
            if let Some(e) = &case.expect {
                assert_eq!(&o.verdict, e, "{}: {} {}", p.display(), o.property, o.detail);
            }
            n += 1;
        }
    }
    assert!(n >= 1, "at least one regression case is shipped");
}

#[test]
fn the_graph_verify_suite_builds_its_model_from_the_graph_file_and_passes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let suite = epcheck::verify::parse_suite(&root.join("verify/graph.toml")).unwrap();
    assert_eq!(suite.base.preset, "graph");
    assert!(suite.base.graph.as_deref().is_some_and(|g| g.ends_with("fixtures/graphs/tiny-conv-skip.toml")));
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let o = Command::new(env!("CARGO_BIN_EXE_epcheck")).args(["verify", root.join("verify/graph.toml").to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("PASS graph/gdu tiny-conv-skip-") && stdout.contains("6 passed, 0 failed"), "{stdout}");
    // A suite naming a bad graph is refused before anything runs (exit 2, no report).
    let bad = d.path().join("bad-graph.toml");
    std::fs::write(&bad, GOOD.replace("kind = \"conv\"", "kind = \"convolution\"")).unwrap();
    let s = d.path().join("suite.toml");
    std::fs::write(&s, "[model]\ngraph = \"bad-graph.toml\"\n[checks.local]\n").unwrap();
    let out2 = d.path().join("runs2");
    let o = Command::new(env!("CARGO_BIN_EXE_epcheck")).args(["verify", s.to_str().unwrap(), "--out", out2.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown kind 'convolution'") && err.contains("bad-graph.toml"), "{err}");
    assert!(!out2.exists());
}
