//! Training, optimisers, schedules and weight statistics: closed forms, hand computations, and the binary end to
//! end (a tiny training run on the shipped digits, resume, the BP baseline, `weights`, and bad input → exit 2).
mod common;
use epcheck::checks::weights::{ks_statistic, spearman, tensor_stats};
use epcheck::train::lr::{cosine_closed, cosine_recursive};
use epcheck::train::optim::{clip_global_norm, Kind as OptKind, Optimizer};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};

fn epcheck(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_epcheck")).args(args).env("OMP_NUM_THREADS", "1").output().expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn report_dir(stdout: &str) -> PathBuf {
    PathBuf::from(stdout.lines().find_map(|l| l.strip_prefix("report: ")).expect("report line").trim())
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|rd| rd.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
}

#[test]
fn sgd_nesterov_with_coupled_decay_matches_pytorch_recursion() {
    // Two steps by hand (conv-hopfield.md §6.2): d = g + λθ; buf = d, then μ·buf + d; d ← d + μ·buf; θ −= η·d.
    let (mu, wd, eta) = (0.9, 0.1, 0.5);
    let mut p = vec![Tensor::from_slice(&[1.0f64, -2.0])];
    let mut opt = Optimizer::new(OptKind::Sgd { momentum: mu, nesterov: true }, wd, 1);
    let (g1, g2) = ([0.3, 0.4], [-0.1, 0.2]);
    let mut theta = [1.0f64, -2.0];
    let mut buf = [0.0f64; 2];
    for (step, g) in [g1, g2].iter().enumerate() {
        opt.step(&mut p, &[Tensor::from_slice(g)], &[eta]);
        for i in 0..2 {
            let d = g[i] + wd * theta[i];
            buf[i] = if step == 0 { d } else { mu * buf[i] + d };
            theta[i] -= eta * (d + mu * buf[i]);
        }
    }
    let got = Vec::<f64>::try_from(&p[0]).unwrap();
    for i in 0..2 {
        assert!((got[i] - theta[i]).abs() < 1e-15, "{got:?} vs {theta:?}");
    }
}

#[test]
fn adam_two_steps_match_closed_form() {
    let (b1, b2, eps, eta, wd) = (0.9, 0.999, 1e-8, 0.01, 0.0);
    let mut p = vec![Tensor::from_slice(&[0.5f64])];
    let mut opt = Optimizer::new(OptKind::Adam { beta1: b1, beta2: b2, eps }, wd, 1);
    let (g1, g2) = (0.2f64, -0.4f64);
    opt.step(&mut p, &[Tensor::from_slice(&[g1])], &[eta]);
    opt.step(&mut p, &[Tensor::from_slice(&[g2])], &[eta]);
    let m1 = (1.0 - b1) * g1;
    let v1 = (1.0 - b2) * g1 * g1;
    let th1 = 0.5 - eta * (m1 / (1.0 - b1)) / ((v1 / (1.0 - b2)).sqrt() + eps);
    let m2 = b1 * m1 + (1.0 - b1) * g2;
    let v2 = b2 * v1 + (1.0 - b2) * g2 * g2;
    let th2 = th1 - eta * (m2 / (1.0 - b1 * b1)) / ((v2 / (1.0 - b2 * b2)).sqrt() + eps);
    assert!((p[0].double_value(&[0]) - th2).abs() < 1e-15);
}

#[test]
fn cosine_recursion_equals_closed_form_and_clip_rescales() {
    for t in [1usize, 5, 300] {
        for e in 0..=t {
            let (r, c) = (cosine_recursive(0.03, 2e-6, t, e), cosine_closed(0.03, 2e-6, t, e));
            assert!((r - c).abs() <= 1e-12, "T={t} e={e}: {r} vs {c}");
        }
    }
    let g = vec![Tensor::from_slice(&[3.0f64]), Tensor::from_slice(&[4.0f64])];
    let (c, n, f) = clip_global_norm(&g, 1.0);
    assert_eq!(n, 5.0);
    assert!((f - 1.0 / (5.0 + 1e-6)).abs() < 1e-15);
    assert!((c[1].double_value(&[0]) - 4.0 / (5.0 + 1e-6)).abs() < 1e-15);
    let (_, _, f) = clip_global_norm(&g, 10.0);
    assert_eq!(f, 1.0);
}

#[test]
fn weight_statistics_oracles() {
    let _rng = epcheck::tensor_util::rng_lock();
    // Uniform on (−a, a): near_zero_frac@ε → ε, std_ratio → 1, excess kurtosis → −1.2.
    tch::manual_seed(epcheck::tensor_util::test_seed(0));
    let a = 0.3;
    let w: Vec<f64> = Vec::try_from(&(Tensor::rand([200_000], (Kind::Double, tch::Device::Cpu)) * (2.0 * a) - a)).unwrap();
    let st: std::collections::HashMap<String, f64> = tensor_stats(&w, &[200_000], a, false).into_iter().collect();
    for eps in [0.01, 0.05, 0.1, 0.25] {
        let f = st[&format!("near_zero_frac@{eps}")];
        assert!((f - eps).abs() < 4.0 * (eps * (1.0 - eps) / 2e5f64).sqrt() + 1e-4, "ε={eps}: {f}");
    }
    assert!((st["std_ratio"] - 1.0).abs() < 0.01);
    assert!((st["excess_kurtosis"] + 1.2).abs() < 0.02);
    // Quantiles by linear interpolation at q·(n − 1).
    let st: std::collections::HashMap<String, f64> = tensor_stats(&[1.0, -2.0, 3.0, -4.0, 5.0], &[5], 1.0, false).into_iter().collect();
    assert_eq!(st["abs_q50"], 3.0);
    assert!((st["abs_q90"] - 4.6).abs() < 1e-12);
    // KS: disjoint samples → 1; identical → 0; a hand case → 0.5.
    assert_eq!(ks_statistic(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
    assert_eq!(ks_statistic(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), 0.0);
    assert_eq!(ks_statistic(&[1.0, 2.0], &[1.5, 2.0]), 0.5);
    assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-15);
    assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-15);
}

const TINY_VGG: &[&str] = &[
    "--preset", "vgg5-dchn", "--set", "height=16", "--set", "in_channels=1", "--set", "widths=[3,4,4,4]", "--set", "classes=10",
    "--dataset", "digits", "--set", "train.pad=4", "--set", "train.train_limit=48", "--set", "train.test_limit=32",
    "--batch", "16", "--dtype", "f32", "--T", "6", "--K", "3",
];

#[test]
fn training_run_resume_baseline_and_weights_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().to_str().unwrap();
    let mut a: Vec<&str> = vec!["train"];
    a.extend(TINY_VGG);
    a.extend(["--epochs", "1", "--out", out]);
    let (code, so, se) = epcheck(&a);
    assert_eq!(code, 0, "{se}");
    let dir = report_dir(&so);
    for f in ["config.toml", "manifest.json", "summary.md", "tables/epochs.csv", "tables/epochs.parquet", "figures/curves.svg", "checkpoints/last.safetensors", "checkpoints/epoch0001.safetensors"] {
        assert!(dir.join(f).exists(), "missing {f}");
    }
    // Resume to 2 epochs: the table gains epoch 1, a second checkpoint appears.
    let mut cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    cfg = cfg.replace("epochs = 1", "epochs = 2");
    std::fs::write(dir.join("config.toml"), cfg).unwrap();
    let (code, _, se) = epcheck(&["train", "--resume", dir.to_str().unwrap(), "--out", out]);
    assert_eq!(code, 0, "{se}");
    assert!(dir.join("checkpoints/epoch0002.safetensors").exists());
    let csv = std::fs::read_to_string(dir.join("tables/epochs.csv")).unwrap();
    assert!(csv.lines().any(|l| l.starts_with("1,test,error,all,")), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("0,test,error,all,")));
    // BP baseline of the same graph, then weights EP vs BP.
    let mut b: Vec<&str> = vec!["train"];
    b.extend(TINY_VGG);
    b.extend(["--epochs", "1", "--baseline", "bp", "--out", out]);
    let (code, so, se) = epcheck(&b);
    assert_eq!(code, 0, "{se}");
    let bp = report_dir(&so).join("checkpoints/bp-last.safetensors");
    let ep = dir.join("checkpoints/last.safetensors");
    let (code, so, se) = epcheck(&["weights", &format!("ep={}", ep.display()), &format!("bp={}", bp.display()), "--out", out]);
    assert_eq!(code, 0, "{se}");
    let w = report_dir(&so);
    assert!(w.join("figures/weights_hist.svg").exists() && w.join("figures/weights_trend.svg").exists());
    let table = std::fs::read_to_string(w.join("tables/weights.csv")).unwrap();
    for stat in ["std_ratio_ep_bp", "ks", "near_zero_frac@0.1", "filter_norm_q50"] {
        assert!(table.contains(stat), "weights table lacks {stat}");
    }
}

#[test]
fn bad_training_input_is_a_clear_error_with_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let o = out.to_str().unwrap();
    // Images of the wrong size / channel count for the preset.
    let (code, _, se) = epcheck(&["train", "--preset", "vgg5-dchn", "--set", "widths=[2,2,2,2]", "--dataset", "digits", "--epochs", "1", "--out", o]);
    assert_eq!(code, 2, "{se}");
    assert!(se.contains("shape") && se.contains("[1, 8, 8]") && se.contains("[3, 32, 32]"), "{se}");
    // A corrupt (truncated) CIFAR file.
    let (code, _, se) = epcheck(&["train", "--preset", "vgg5-dchn", "--set", "widths=[2,2,2,2]", "--dataset", "cifar10", "--data-root", "fixtures/data/cifar10-truncated", "--epochs", "1", "--out", o]);
    assert_eq!(code, 2, "{se}");
    assert!(se.contains("cifar10-truncated"), "{se}");
    // VGG5 needs H0 to be a multiple of 16.
    let (code, _, se) = epcheck(&["converge", "--preset", "vgg5-dchn", "--set", "height=12", "--out", o]);
    assert_eq!(code, 2);
    assert!(se.contains("multiple of 16"), "{se}");
    // A checkpoint from another architecture.
    let p = d.path().join("pmlp.safetensors");
    let w = Tensor::zeros([3, 4], (Kind::Double, tch::Device::Cpu));
    epcheck::io::write_tensors(&p, &[("param.synapses.0.weight".into(), w)], Default::default()).unwrap();
    let (code, _, se) = epcheck(&["estimate", "--preset", "hopfield-resnet13", "--set", "height=8", "--set", "widths=[2,2,2,2]", "--params", p.to_str().unwrap(), "--out", o]);
    assert_eq!(code, 2, "{se}");
    assert!(se.contains("b.L1") || se.contains("W.0_1"), "the error names a missing tensor: {se}");
    // Learning-rate list of the wrong length (quirk 7: fixed — one rate per tensor).
    let (code, _, se) = epcheck(&["train", "--preset", "vgg5-dchn", "--set", "height=16", "--set", "in_channels=1", "--set", "widths=[2,2,2,2]", "--dataset", "digits", "--set", "train.pad=4", "--lr", "0.1,0.2", "--epochs", "1", "--out", o]);
    assert_eq!(code, 2, "{se}");
    assert!(se.contains("10 parameter tensors"), "{se}");
    assert!(entries(&out).iter().all(|e| !e.file_name().unwrap().to_string_lossy().starts_with("train-vgg")), "no run folder for a run that could not start");
}
