//! `compare` as a user checking another implementation meets it (issue: interop): epcheck's own dumps read back
//! with no flags, β-suffixed keys with dots, GDU series compared per step with the first divergence located,
//! every unsupported key listed in one run, graph models, and a wrong preset named as such. Oracles: epcheck's
//! dumps are an independent path (written by `gdu`/`estimate`, recomputed by `compare`); planted perturbations.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Tensor;

fn epcheck(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_epcheck")).args(args).env("OMP_NUM_THREADS", "1").output().expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn one_run(out: &Path) -> PathBuf {
    let r: Vec<PathBuf> = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')).collect();
    assert_eq!(r.len(), 1, "{r:?}");
    r[0].clone()
}

/// Tensors and metadata of a safetensors file.
fn read_with_meta(p: &Path) -> (Vec<(String, Tensor)>, HashMap<String, String>) {
    let t = epcheck::io::read_tensors(p).unwrap();
    let bytes = std::fs::read(p).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (t.into_iter().collect(), meta.metadata().clone().unwrap_or_default())
}

const TINY: &[&str] = &["--archi", "6-5-3", "--batch", "2", "--activation", "logistic4", "--set", "init_scale=0.5", "--seed", "0"];

fn run_gdu_dump(dir: &Path) -> PathBuf {
    let dump = dir.join("gdu.safetensors");
    let mut a = vec!["gdu"];
    a.extend_from_slice(TINY);
    let out = dir.join("gdu-runs");
    a.extend(["--K", "20", "--out", s(&out), "--dump", s(&dump)]);
    let (code, stdout, stderr) = epcheck(&a);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    dump
}

#[test]
fn compare_reads_back_a_gdu_dump_with_no_flags_and_locates_a_planted_series_divergence() {
    let d = tempfile::tempdir().unwrap();
    let dump = run_gdu_dump(d.path());
    // As written: every key (states, the K + 1 window, BPTT and EP series with their β, estimates) agrees.
    let out = d.path().join("c0");
    let (code, stdout, stderr) = epcheck(&["compare", s(&dump), "--out", s(&out)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("conformance ") && stdout.contains(": pass"), "{stdout}");
    let v = std::fs::read_to_string(one_run(&out).join("tables/verdicts.csv")).unwrap();
    for key in ["gdu.bptt.synapses.1.weight", "gdu.ep_sym@0.001.synapses.1.weight", "gdu.bptt.neurons.L2", "traj_window.free.L1", "grad.ep_centered@0.001.synapses.0.weight"] {
        assert!(v.lines().any(|l| l.contains(&format!(",key,{key},pass"))), "{key}:\n{v}");
    }
    // Planted: one element of one step of the symmetric EP series.
    let (mut t, meta) = read_with_meta(&dump);
    let key = "gdu.ep_sym@0.001.synapses.1.weight";
    let pos = t.iter().position(|(k, _)| k == key).unwrap();
    let x = t[pos].1.copy();
    let _ = x.get(7).get(1).get(2).g_add_scalar_(1e-6);
    t[pos].1 = x;
    let planted = d.path().join("planted.safetensors");
    epcheck::io::write_tensors(&planted, &t, meta).unwrap();
    let out = d.path().join("c1");
    let (code, stdout, stderr) = epcheck(&["compare", s(&planted), "--out", s(&out)]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let md = std::fs::read_to_string(one_run(&out).join("summary.md")).unwrap();
    assert!(md.contains("first divergence of the series at step t = 7 (of 20), element [1, 2]"), "{md}");
}

#[test]
fn compare_lists_every_unsupported_key_at_once_with_the_closest_names() {
    let d = tempfile::tempdir().unwrap();
    let dump = run_gdu_dump(d.path());
    let (mut t, meta) = read_with_meta(&dump);
    let o = (tch::Kind::Double, tch::Device::Cpu);
    t.push(("bogus.one".into(), Tensor::zeros([2], o)));
    t.push(("grad.ep_pluss.synapses.0.weight".into(), Tensor::zeros([5, 6], o)));
    t.push(("state.fre.L1".into(), Tensor::zeros([2, 5], o)));
    let bad = d.path().join("bad3.safetensors");
    epcheck::io::write_tensors(&bad, &t, meta).unwrap();
    let out = d.path().join("c");
    let (code, stdout, stderr) = epcheck(&["compare", s(&bad), "--out", s(&out)]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("3 key(s)"), "{stderr}");
    for k in ["'bogus.one'", "'grad.ep_pluss.synapses.0.weight'", "'state.fre.L1'"] {
        assert!(stderr.contains(k), "{k} not listed: {stderr}");
    }
    assert!(stderr.contains("closest: 'grad.ep_plus.synapses.0.weight'") && stderr.contains("'state.free.L1'"), "{stderr}");
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0);
}

#[test]
fn beta_suffixed_keys_with_dots_and_aliases_parse() {
    use epcheck::checks::conformance::{canonical_alias, parse_target, Target};
    let cfg = epcheck::config::RunConfig::resolve(Some("hopfield-resnet13"), None, toml::from_str("height = 8\nin_channels = 2\nwidths = [3, 4, 4, 5]\nclasses = 3").unwrap()).unwrap();
    let m = epcheck::model::presets::build(&cfg).unwrap();
    let w01 = m.params.iter().position(|p| p.name == "W.0_1").unwrap();
    // The spec's own example: β with a dot, a parameter name with a dot.
    assert_eq!(parse_target(&m, "grad.ep_centered@0.001.W.0_1"), Some(Target::Grad("ep_centered".into(), Some(0.001), w01)));
    assert_eq!(parse_target(&m, "grad.ep_centered@1e-3.W.0_1"), Some(Target::Grad("ep_centered".into(), Some(0.001), w01)));
    assert_eq!(parse_target(&m, &canonical_alias("grad.ep_conv_beta0.05.W.0_1")), Some(Target::Grad("ep_centered".into(), Some(0.05), w01)));
    assert_eq!(parse_target(&m, "gdu.ep_sym@0.001.W.0_1"), Some(Target::GduParam("ep_sym".into(), Some(0.001), w01)));
    assert_eq!(parse_target(&m, "traj.free.t3.L2"), Some(Target::TrajSlice("free".into(), 1, 3)));
    // Sequence layout aliases.
    assert_eq!(canonical_alias("gdu.ep.W.0_1"), "gdu.ep_plus.W.0_1");
    assert_eq!(canonical_alias("gdu.ep_neg.W.0_1"), "gdu.ep_minus.W.0_1");
    assert_eq!(canonical_alias("gdu.bptt.neurons_0"), "gdu.bptt.neurons.L1");
    assert_eq!(parse_target(&m, "gdu.bptt.neurons.L1"), Some(Target::GduNeurons("bptt".into(), None, 0)));
}

#[test]
fn compare_builds_graph_models_and_names_a_wrong_preset() {
    let d = tempfile::tempdir().unwrap();
    let graph = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/graphs/tiny-conv-skip.toml");
    let dump = d.path().join("g.safetensors");
    let (code, stdout, stderr) = epcheck(&["estimate", "--graph", graph, "--batch", "2", "--T", "40", "--K", "20", "--out", s(&d.path().join("r")), "--dump", s(&dump)]);
    assert!(code <= 1, "{stdout}\n{stderr}");
    // With --graph (the file's metadata also names it; --graph wins).
    let out = d.path().join("c");
    let (code, stdout, stderr) = epcheck(&["compare", s(&dump), "--graph", graph, "--batch", "2", "--T", "40", "--K", "20", "--out", s(&out)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // A p-mlp dump against the wrong preset: the error says which model it assumed.
    let pm = d.path().join("p.safetensors");
    let mut a = vec!["estimate"];
    a.extend_from_slice(TINY);
    let r2 = d.path().join("r2");
    a.extend(["--out", s(&r2), "--dump", s(&pm)]);
    let (code, _, stderr) = epcheck(&a);
    assert!(code <= 1, "{stderr}");
    let (code, _, stderr) = epcheck(&["compare", s(&pm), "--preset", "vgg5-dchn", "--out", s(&d.path().join("c2"))]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("do not fit preset vgg5-dchn"), "{stderr}");
}

#[test]
fn layer_sizes_follow_from_params_for_conv_and_attention_presets() {
    let d = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], &[(&str, toml::Value)]); 2] = [
        (
            "hopfield-resnet13",
            &["--set", "height=8", "--set", "in_channels=2", "--set", "widths=[3,4,4,5]", "--set", "classes=3"],
            &[("height", toml::Value::Integer(8)), ("in_channels", toml::Value::Integer(2)), ("classes", toml::Value::Integer(3))],
        ),
        ("imdb-hopfield", &["--set", "seq_len=5", "--set", "embed_dim=4", "--set", "widths=[6,4,2]"], &[("seq_len", toml::Value::Integer(5)), ("embed_dim", toml::Value::Integer(4))]),
    ];
    for (preset, sizes, want) in cases {
        let dump = d.path().join(format!("{preset}.safetensors"));
        let out = d.path().join(format!("{preset}-a"));
        let mut a = vec!["estimate", "--preset", preset, "--batch", "2", "--T", "5", "--K", "2", "--out", s(&out), "--dump", s(&dump)];
        a.extend_from_slice(sizes);
        let (code, stdout, stderr) = epcheck(&a);
        assert!(code <= 1, "{stdout}\n{stderr}");
        // No size flag: the parameters and the input give every size.
        let out2 = d.path().join(format!("{preset}-b"));
        let (code, stdout, stderr) = epcheck(&["estimate", "--preset", preset, "--params", s(&dump), "--input", s(&dump), "--T", "5", "--K", "2", "--out", s(&out2)]);
        assert!(code <= 1, "{preset}: {stdout}\n{stderr}");
        let cfg: toml::Table = toml::from_str(&std::fs::read_to_string(one_run(&out2).join("config.toml")).unwrap()).unwrap();
        for (k, v) in want {
            assert_eq!(cfg.get(*k), Some(v), "{preset}: {k} in {cfg:?}");
        }
    }
    // The input height of a conv net is not fixed by its weights alone: asked for by name.
    let (code, _, stderr) = epcheck(&["estimate", "--preset", "hopfield-resnet13", "--params", s(&d.path().join("hopfield-resnet13.safetensors")), "--out", s(&d.path().join("c"))]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("set height"), "{stderr}");
}

#[test]
fn graph_files_need_no_init_bounds_when_params_supply_every_tensor() {
    let d = tempfile::tempdir().unwrap();
    let graph = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/graphs/tiny-conv-skip.toml");
    let dump = d.path().join("g.safetensors");
    let (code, stdout, stderr) = epcheck(&["estimate", "--graph", graph, "--batch", "2", "--T", "5", "--K", "2", "--out", s(&d.path().join("a")), "--dump", s(&dump)]);
    assert!(code <= 1, "{stdout}\n{stderr}");
    // The same graph with every `init = …` removed.
    let text = std::fs::read_to_string(graph).unwrap();
    let stripped: String = text
        .lines()
        .map(|l| {
            let mut l = l.to_string();
            while let Some(i) = l.find(", init = ") {
                let end = l[i + 2..].find([',', '}']).map(|j| i + 2 + j).unwrap_or(l.len());
                l.replace_range(i..end, "");
            }
            if l.trim_start().starts_with("init =") {
                String::new()
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!stripped.contains("init ="), "{stripped}");
    let g2 = d.path().join("noinit.toml");
    std::fs::write(&g2, stripped).unwrap();
    let out = d.path().join("b");
    let (code, stdout, stderr) = epcheck(&["estimate", "--graph", s(&g2), "--params", s(&dump), "--input", s(&dump), "--T", "5", "--K", "2", "--out", s(&out)]);
    assert!(code <= 1, "{stdout}\n{stderr}");
    // Without --params the seeded draw needs the bounds: refused, naming a parameter.
    let (code, _, stderr) = epcheck(&["estimate", "--graph", s(&g2), "--batch", "2", "--out", s(&d.path().join("c"))]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("has no init bound"), "{stderr}");
}

#[test]
fn builtin_laborieux_maps_read_the_check_gdu_layout() {
    // A dump in the layout of Laborieux's `check_gdu` (dictionaries BPTT / EP / EP_2 keyed by parameter names and
    // `neurons_<i>`, parameters under their state_dict names, x and y), made here by renaming epcheck's own
    // replay-mode dump (T free steps, the last K steps, the run's β) — the layout the driver in docs/interop.md writes.
    let d = tempfile::tempdir().unwrap();
    let dump = d.path().join("gdu.safetensors");
    let mut a = vec!["gdu", "--mode", "replay", "--T", "40", "--K", "10", "--beta", "0.05"];
    a.extend_from_slice(TINY);
    let r = d.path().join("r");
    a.extend(["--out", s(&r), "--dump", s(&dump)]);
    let (code, stdout, stderr) = epcheck(&a);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let t = epcheck::io::read_tensors(&dump).unwrap();
    let mut out: Vec<(String, Tensor)> = vec![];
    for (k, v) in &t {
        let renamed = if let Some(p) = k.strip_prefix("param.") {
            Some(p.to_string())
        } else if k == "input.x" || k == "input.y" {
            Some(k[6..].to_string())
        } else if let Some(rest) = k.strip_prefix("gdu.bptt.") {
            Some(format!("BPTT.{}", rest.replace("neurons.L", "neurons_")))
        } else if let Some(rest) = k.strip_prefix("gdu.ep_plus@0.05.") {
            Some(format!("EP.{}", rest.replace("neurons.L", "neurons_")))
        } else if let Some(rest) = k.strip_prefix("gdu.ep_minus@0.05.") {
            Some(format!("EP_2.{}", rest.replace("neurons.L", "neurons_")))
        } else {
            None
        };
        if let Some(n) = renamed {
            // neurons_<i> is 0-based: L1 → neurons_0.
            let n = match n.rsplit_once("neurons_") {
                Some((head, l)) => format!("{head}neurons_{}", l.parse::<usize>().unwrap() - 1),
                None => n,
            };
            out.push((n, v.shallow_clone()));
        }
    }
    assert!(out.iter().any(|(k, _)| k == "EP_2.neurons_1") && out.iter().any(|(k, _)| k == "synapses.0.weight"));
    let ext = d.path().join("check_gdu.safetensors");
    epcheck::io::write_tensors(&ext, &out, Default::default()).unwrap();
    let o = d.path().join("c");
    let (code, stdout, stderr) = epcheck(&[
        "compare", s(&ext), "--names", "laborieux_check_gdu", "--preset", "p-mlp", "--activation", "logistic4", "--T", "40", "--K", "10", "--beta", "0.05", "--out", s(&o),
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let v = std::fs::read_to_string(one_run(&o).join("tables/verdicts.csv")).unwrap();
    for key in ["BPTT.synapses.1.weight", "EP.synapses.0.bias", "EP_2.neurons_1", "BPTT.neurons_0"] {
        assert!(v.lines().any(|l| l.contains(&format!(",key,{key},pass"))), "{key}:\n{v}");
    }
    // An unknown built-in name is refused with the list.
    let (code, _, stderr) = epcheck(&["compare", s(&ext), "--names", "laborieux_nope", "--out", s(&o)]);
    assert_eq!(code, 2);
    assert!(stderr.contains("laborieux_check_gdu"), "{stderr}");
}

#[test]
fn clipped_centered_estimate_is_dumped_and_compared() {
    let d = tempfile::tempdir().unwrap();
    let dump = d.path().join("e.safetensors");
    let mut a = vec!["estimate", "--estimator", "ep_centered", "--T", "100", "--K", "60", "--set", "grad_clip_norm=1e-3"];
    a.extend_from_slice(TINY);
    let r = d.path().join("r");
    a.extend(["--out", s(&r), "--dump", s(&dump)]);
    let (code, stdout, stderr) = epcheck(&a);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let t = epcheck::io::read_tensors(&dump).unwrap();
    // Oracle: the global-norm clip of the dumped centered estimate, computed here.
    let names: Vec<&String> = t.keys().filter(|k| k.starts_with("grad.ep_centered.")).collect();
    let norm: f64 = names.iter().map(|k| t[*k].square().sum(tch::Kind::Double).double_value(&[])).sum::<f64>().sqrt();
    assert!(norm > 1e-3, "the clip must act: ‖g‖ = {norm}");
    for k in names {
        let c = &t[&k.replace("ep_centered.", "ep_centered_clipped.")];
        let want = &t[k.as_str()] * (1e-3 / (norm + 1e-6));
        assert!((c - want).abs().max().double_value(&[]) < 1e-15, "{k}");
    }
    let o = d.path().join("c");
    let (code, stdout, stderr) = epcheck(&["compare", s(&dump), "--out", s(&o)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let v = std::fs::read_to_string(one_run(&o).join("tables/verdicts.csv")).unwrap();
    assert!(v.lines().any(|l| l.contains(",key,grad.ep_centered_clipped.synapses.0.weight,pass")), "{v}");
}
