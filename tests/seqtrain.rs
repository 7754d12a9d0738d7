//! Training of the Hopfield-attention presets (`hopfield-attention.md` §9–10): Adam against its closed form for
//! two steps, the learning-rate schedule against the spec's closed form, one training step on a tiny attention
//! instance against the autograd (BPTT) gradient and a first-order Taylor prediction of the loss change, the text
//! DataSource against independently parsed review files and word vectors, and bad input (wrong embedding
//! dimension → exit 2, malformed jsonl lines counted, sequences longer than L truncated and counted).
use epcheck::config::RunConfig;
use epcheck::data::Split;
use epcheck::estimators::bptt;
use epcheck::instance::Instance;
use epcheck::model::presets;
use epcheck::relax::{relax, RelaxOptions};
use epcheck::train::data::DataSource;
use epcheck::train::optim::{Kind as OptKind, Optimizer};
use epcheck::train::text_datasets::{self, split_report};
use epcheck::train::{Acc, Trainer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data").join(p)
}

fn vals(t: &Tensor) -> Vec<f64> {
    let t = t.to_kind(Kind::Double).flatten(0, -1);
    (0..t.numel() as i64).map(|i| t.double_value(&[i])).collect()
}

fn dot(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x * y).sum(Kind::Double).double_value(&[])).sum()
}

// ---------------------------------------------------------------------------------------------------------------
// Adam (§9.2) against the closed form of two steps.

#[test]
fn adam_two_steps_match_closed_form() {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let theta0 = [[0.3, -1.2, 0.0, 2.5], [1.0, -0.5, 0.25, 0.0]];
    let g1 = [[0.2, -0.7, 1e-9, 3.0], [-0.01, 0.4, 0.0, 5.0]];
    let g2 = [[-0.1, -0.7, 2e-9, 1.0], [0.02, -0.3, 0.5, -5.0]];
    let lr = [1e-3, 5e-4];
    let mut p: Vec<Tensor> = theta0.iter().map(|r| Tensor::from_slice(r).to_kind(Kind::Double)).collect();
    let mut opt = Optimizer::new(OptKind::parse("adam", 0.0, false).unwrap(), 0.0, 2);
    assert_eq!(opt.kind, OptKind::Adam { beta1: b1, beta2: b2, eps });
    let gs = |g: &[[f64; 4]; 2]| g.iter().map(|r| Tensor::from_slice(r).to_kind(Kind::Double)).collect::<Vec<_>>();
    opt.step(&mut p, &gs(&g1), &lr);
    let after1: Vec<Vec<f64>> = p.iter().map(vals).collect();
    opt.step(&mut p, &gs(&g2), &lr);
    let after2: Vec<Vec<f64>> = p.iter().map(vals).collect();
    for k in 0..2 {
        for i in 0..4 {
            let (a, b) = (g1[k][i], g2[k][i]);
            // Step 1: m̂ = g, √v̂ = |g|.  θ₁ = θ₀ − lr·g/(|g| + ε).
            let t1 = theta0[k][i] - lr[k] * a / (a.abs() + eps);
            // Step 2: m = 0.09 g₁ + 0.1 g₂, bc1 = 0.19; v = 0.000999 g₁² + 0.001 g₂², bc2 = 1 − 0.999².
            let m = (1.0 - b1) * b1 * a + (1.0 - b1) * b;
            let v = b2 * (1.0 - b2) * a * a + (1.0 - b2) * b * b;
            let (bc1, bc2) = (1.0 - b1 * b1, 1.0 - b2 * b2);
            let t2 = t1 - lr[k] / bc1 * m / ((v / bc2).sqrt() + eps);
            let close = |got: f64, want: f64, base: f64| (got - want).abs() <= 1e-12 * (want - base).abs().max(1e-300) + 1e-18;
            assert!(close(after1[k][i], t1, theta0[k][i]), "step 1 [{k}][{i}]: {} vs {t1}", after1[k][i]);
            assert!(close(after2[k][i], t2, t1), "step 2 [{k}][{i}]: {} vs {t2}", after2[k][i]);
        }
    }
    assert_eq!(opt.steps, 2);
}

// ---------------------------------------------------------------------------------------------------------------
// The -train presets and the schedule (§9.3, §9.4).

fn closed_cosine(eta0: f64, eta_min: f64, e: usize) -> f64 {
    let e = e.min(100) as f64;
    eta_min + (eta0 - eta_min) * (1.0 + (std::f64::consts::PI * e / 100.0).cos()) / 2.0
}

#[test]
fn train_presets_and_schedule_follow_the_spec() {
    let c = RunConfig::preset_defaults("imdb-hopfield-train").unwrap();
    assert_eq!((c.batch, c.train.epochs, c.t_free, c.k_nudge, c.beta), (100, 50, 50, 25, 0.1));
    assert_eq!((c.estimator.as_str(), c.phase_order.as_deref(), c.dtype.as_str()), ("ep_centered", Some("plus_first"), "f32"));
    assert_eq!((c.train.optimizer.as_str(), c.train.weight_decay, c.train.grad_clip_norm), ("adam", 0.0, None));
    assert_eq!((c.train.lr_schedule.as_str(), c.train.lr_t_max, c.train.lr_min, c.train.dataset.as_str()), ("cosine", Some(100), 1e-5, "imdb"));
    let p = RunConfig::preset_defaults("imdb-hopfield-train-paper").unwrap();
    assert_eq!((p.batch, p.train.epochs, p.train.lr.clone()), (128, 40, c.train.lr.clone()));
    let s = RunConfig::preset_defaults("snli-hopfield-train").unwrap();
    assert_eq!((s.batch, s.train.epochs, s.t_free, s.k_nudge, s.beta, s.train.dataset.as_str()), (200, 50, 60, 30, 0.5, "snli"));
    assert_eq!(RunConfig::preset_defaults("snli-hopfield-train-paper").unwrap().batch, 256);
    assert!(RunConfig::preset_defaults("p-mlp-train-paper").is_err());

    // Per-synapse rates spread over the tensors (weight and bias share their synapse's rate), at a reduced size
    // with the default depth (fc of three widths → four synapses).
    let mut cfg = c.clone();
    (cfg.seq_len, cfg.embed_dim, cfg.widths) = (Some(3), Some(2), Some(vec![4, 3, 2]));
    let model = presets::build(&cfg).unwrap();
    let prec = epcheck::precision::Precision::new(epcheck::precision::Dtype::F64, tch::Device::Cpu);
    let tr = Trainer::new(&cfg, &model, model.init_params(0, prec), prec).unwrap();
    assert_eq!(tr.lr0, vec![1e-4, 5e-5, 5e-5, 5e-5, 5e-5, 5e-5, 5e-5]);
    for e in 0..=130 {
        let r = tr.rates(e);
        for (k, &eta0) in tr.lr0.iter().enumerate() {
            let want = closed_cosine(eta0, 1e-5, e);
            assert!((r[k] - want).abs() <= 1e-12 * want, "epoch {e} tensor {k}: {} vs {want}", r[k]);
        }
    }
    // After T_max the rate stays at η_min (the scheduler is no longer stepped).
    assert!((tr.rates(100)[0] - 1e-5).abs() < 1e-18 && tr.rates(130)[0] == tr.rates(100)[0]);

    let mut snli = s.clone();
    (snli.seq_len, snli.embed_dim, snli.widths) = (Some(2), Some(2), Some(vec![4, 3]));
    let m2 = presets::build(&snli).unwrap();
    let t2 = Trainer::new(&snli, &m2, m2.init_params(0, prec), prec).unwrap();
    assert_eq!(t2.lr0, vec![5e-4, 5e-4, 5e-4, 5e-4, 2e-4, 2e-4, 2e-4, 2e-4]);
    // A list matching neither tensors nor synapses is a configuration error naming both counts.
    snli.train.lr = vec![1e-3; 3];
    let e = Trainer::new(&snli, &m2, m2.init_params(0, prec), prec).err().expect("3 rates rejected").to_string();
    assert!(e.contains("3 rates") && e.contains("8 parameter tensors") && e.contains("6 groups"), "{e}");
}

// ---------------------------------------------------------------------------------------------------------------
// One training step on a tiny attention instance.

fn tiny_imdb(estimator: &str) -> Instance {
    tch::set_num_threads(1);
    let mut cfg = RunConfig::preset_defaults("imdb-hopfield").unwrap();
    cfg.batch = 4;
    cfg.seq_len = Some(6);
    cfg.embed_dim = Some(8);
    cfg.widths = Some(vec![10, 5, 2]);
    cfg.beta = 0.01;
    cfg.estimator = estimator.into();
    cfg.train.optimizer = "sgd".into();
    cfg.train.momentum = 0.0;
    cfg.train.weight_decay = 0.0;
    cfg.train.lr_schedule = "none".into();
    cfg.seed = 3;
    // Larger inputs than §10.3 so that the loss depends visibly on the parameters.
    let mut inst = Instance::from_config(cfg).unwrap();
    inst.batch.x[0] = &inst.batch.x[0] * 6.0;
    inst
}

fn free_loss(inst: &Instance, p: &[Tensor]) -> f64 {
    let init = inst.model.zeros_state(inst.batch.size(), inst.prec);
    let free = relax(&inst.model, p, &inst.batch, &init, 0.0, &RelaxOptions { iters: inst.cfg.t_free, no_trace: true, ..Default::default() });
    inst.model.loss_per_example(&inst.params, &inst.batch, &free.state).mean(Kind::Double).double_value(&[])
}

#[test]
fn one_ep_step_follows_the_gradient_and_lowers_the_loss() {
    let inst = tiny_imdb("ep_centered");
    let p0: Vec<Tensor> = inst.params.iter().map(|t| t.copy()).collect();
    // Oracle: the autograd gradient of the loss after T free steps (full BPTT).
    let (g, _) = bptt::full(&inst.model, &p0, &inst.batch, inst.cfg.t_free);
    let g = g.tensors;
    let gn = dot(&g, &g).sqrt();
    assert!(gn > 1e-3, "gradient too small to test: {gn}");
    let eta = 0.05 / gn;
    let mut tr = Trainer::new(&inst.cfg, &inst.model, p0.iter().map(|t| t.copy()).collect(), inst.prec).unwrap();
    let mut acc = Acc::default();
    tr.step(&inst.batch, &vec![eta; p0.len()], &mut acc).unwrap();
    // The SGD update recovers the EP estimate: ĝ = (θ₀ − θ₁)/η.
    let ghat: Vec<Tensor> = p0.iter().zip(&tr.params).map(|(a, b)| (a - b) / eta).collect();
    let err = ghat.iter().zip(&g).map(|(a, b)| (a - b).square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt() / gn;
    assert!(err < 1e-3, "3-phase EP (β = 0.01, error O(β²)) vs BPTT: relative L2 error {err:.3e}");
    let (l0, l1) = (free_loss(&inst, &p0), free_loss(&inst, &tr.params));
    // First-order prediction of the change: −η⟨∇L, ĝ⟩.
    let pred = -eta * dot(&g, &ghat);
    eprintln!("EP vs BPTT rel. L2 {err:.3e}; loss {l0:.6e} → {l1:.6e}, change {:.4e}, first-order {pred:.4e}", l1 - l0);
    assert!(l1 < l0, "loss did not decrease: {l0} → {l1}");
    assert!(((l1 - l0) - pred).abs() < 0.1 * pred.abs(), "loss change {:.4e} vs first-order prediction {pred:.4e}", l1 - l0);
}

#[test]
fn one_bptt_step_is_sgd_on_the_autograd_gradient() {
    // `bptt` (full, T steps) and `bptt_trunc` (the reference's BPTT training, last K of T steps) through the
    // trainer's hand-rolled reverse sweep, against autograd through the unrolled graph (an independent path).
    for trunc in [false, true] {
        let est = if trunc { "bptt_trunc" } else { "bptt" };
        let inst = tiny_imdb(est);
        let trunc = trunc.then_some(inst.cfg.k_nudge);
        let p0: Vec<Tensor> = inst.params.iter().map(|t| t.copy()).collect();
        let g = bptt::autograd(&inst.model, &p0, &inst.batch, inst.cfg.t_free, trunc);
        let eta = 0.05 / dot(&g, &g).sqrt();
        let mut tr = Trainer::new(&inst.cfg, &inst.model, p0.iter().map(|t| t.copy()).collect(), inst.prec).unwrap();
        tr.step(&inst.batch, &vec![eta; p0.len()], &mut Acc::default()).unwrap();
        for ((a, b), gk) in p0.iter().zip(&tr.params).zip(&g) {
            let want = a - gk * eta;
            let d = (b - &want).abs().max().double_value(&[]);
            assert!(d < 1e-14, "{est}: step differs from θ − ηg by {d:.3e}");
        }
        assert!(free_loss(&inst, &tr.params) < free_loss(&inst, &p0), "{est}: loss did not decrease");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The text DataSource.

fn text_cfg(preset: &str, dataset: &str, root: &Path, w2v: &Path, l: i64, d: i64) -> RunConfig {
    let mut c = RunConfig::preset_defaults(preset).unwrap();
    c.seq_len = Some(l);
    c.embed_dim = Some(d);
    c.widths = Some(if preset.starts_with("imdb") { vec![6, 2] } else { vec![6, 3] });
    c.train.dataset = dataset.into();
    c.train.data_root = Some(root.display().to_string());
    c.train.embeddings = Some(w2v.display().to_string());
    c
}

/// The word2vec text file parsed independently: word → f32 vector.
fn read_vectors(path: &Path) -> HashMap<String, Vec<f32>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().skip(1).map(|l| {
        let mut it = l.split_whitespace();
        let w = it.next().unwrap().to_string();
        (w, it.map(|v| v.parse::<f32>().unwrap()).collect())
    }).collect()
}

#[test]
fn text_source_yields_preset_shaped_batches() {
    let root = fixture("seqtask");
    let w2v = root.join("vectors.txt");
    let cfg = text_cfg("imdb-hopfield", "imdb", &root, &w2v, 20, 8);
    let model = presets::build(&cfg).unwrap();
    let mut src = text_datasets::open(&cfg).unwrap();
    assert_eq!((src.input_shape(), src.classes()), (vec![20, 8], 2));
    src.check_model(&model).unwrap();
    let mut labels = vec![];
    let mut first = vec![];
    for (i, item) in src.train_epoch(0, 32).unwrap().enumerate() {
        let (x, y) = item.unwrap();
        let b = if i < 12 { 32 } else { 400 - 12 * 32 };
        assert_eq!((x.size(), y.size(), x.kind(), y.kind()), (vec![b, 20, 8], vec![b], Kind::Float, Kind::Int64), "batch {i}");
        labels.extend(vals(&y));
        if i == 0 {
            first = vals(&y);
        }
    }
    assert_eq!(labels.len(), 400);
    assert_eq!(labels.iter().filter(|&&v| v == 1.0).count(), 200);
    let again: Vec<f64> = vals(&src.train_epoch(1, 32).unwrap().next().unwrap().unwrap().1);
    assert_ne!(first, again, "epochs should be reshuffled");

    // Test order is file order: neg by numeric id, then pos. Example 0 = the review aclImdb/test/neg/0_*.txt,
    // embedded from the vectors file parsed here.
    let vecs = read_vectors(&w2v);
    let f = std::fs::read_dir(root.join("aclImdb/test/neg")).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("0_")).unwrap();
    let text = std::fs::read_to_string(f).unwrap().to_lowercase().replace('.', " ");
    let rows: Vec<&Vec<f32>> = text.split_whitespace().filter_map(|w| vecs.get(w)).take(20).collect();
    let (x, y) = src.test(7).unwrap().next().unwrap().unwrap();
    assert_eq!((x.size(), vals(&y)), (vec![7, 20, 8], vec![0.0; 7]));
    let x0 = vals(&x.get(0));
    for t in 0..20 {
        let want: Vec<f64> = match rows.get(t) {
            Some(v) => v.iter().map(|&a| a as f64).collect(),
            None => vec![0.0; 8],
        };
        assert_eq!(&x0[t * 8..(t + 1) * 8], &want[..], "row {t}");
    }

    // SNLI: x = [P; H] of 2L rows, matching snli-hopfield at the same L and d but not imdb-hopfield.
    let sroot = fixture("snli");
    let sw = fixture("word2vec/vectors.txt");
    let scfg = text_cfg("snli-hopfield", "snli", &sroot, &sw, 5, 4);
    let mut s = text_datasets::open(&scfg).unwrap();
    s.check_model(&presets::build(&scfg).unwrap()).unwrap();
    let (x, y) = s.train_epoch(0, 2).unwrap().next().unwrap().unwrap();
    assert_eq!((x.size(), y.size()), (vec![2, 10, 4], vec![2]));
    assert!(vals(&y).iter().all(|&v| (0.0..3.0).contains(&v)));
    let mut wrong = text_cfg("imdb-hopfield", "snli", &sroot, &sw, 5, 4);
    wrong.widths = Some(vec![6, 3]);
    let e = s.check_model(&presets::build(&wrong).unwrap()).err().unwrap().to_string();
    assert!(e.contains("[10, 4]") && e.contains("[5, 4]"), "{e}");
}

// ---------------------------------------------------------------------------------------------------------------
// Bad input.

fn epcheck(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_epcheck")).args(args).output().expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn wrong_embedding_dimension_is_exit_2_naming_both() {
    let out = tempfile::tempdir().unwrap();
    let root = fixture("seqtask");
    let emb = format!("train.embeddings=\"{}\"", root.join("vectors.txt").display());
    let (code, _, err) = epcheck(&[
        "train", "--preset", "imdb-hopfield", "--dataset", "imdb", "--data-root", root.to_str().unwrap(), "--set", &emb,
        "--set", "seq_len=20", "--set", "embed_dim=16", "--set", "widths=[6,2]", "--epochs", "1", "--out", out.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("embedding dimension 8") && err.contains("embed_dim = 16") && err.contains("vectors.txt"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "no run folder on bad input");
    // Without an embeddings file the error says which key to set.
    let (code, _, err) = epcheck(&[
        "train", "--preset", "imdb-hopfield", "--dataset", "imdb", "--data-root", root.to_str().unwrap(), "--set", "seq_len=20", "--set", "embed_dim=8",
        "--set", "widths=[6,2]", "--out", out.path().to_str().unwrap(),
    ]);
    assert!(code == 2 && err.contains("train.embeddings"), "{code} {err}");
}

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

const VECS: &str = "6 2\ngood 1 0\nbad -1 0\nfilm 0 1\nman 0.5 0.5\ndog 0.25 -0.5\nsleeps 0 -1\n";

#[test]
fn malformed_jsonl_lines_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let w2v = dir.path().join("v.txt");
    write(&w2v, VECS);
    let good = |l: &str| format!("{{\"gold_label\": \"{l}\", \"sentence1\": \"A man sleeps.\", \"sentence2\": \"A dog sleeps!\"}}\n");
    let train = [good("neutral"), "{\"gold_label\": \"entail\n".into(), good("entailment"), "[1, 2, 3]\n".into(), good("-"), "not json at all\n".into(), good("contradiction")].concat();
    write(&dir.path().join("snli_1.0_train.jsonl"), &train);
    write(&dir.path().join("snli_1.0_test.jsonl"), &good("neutral"));
    let cfg = text_cfg("snli-hopfield", "snli", dir.path(), &w2v, 3, 2);
    let src = text_datasets::open(&cfg).unwrap();
    let r = split_report(&src, Split::Train);
    assert_eq!((r.rows_scanned, r.skipped_malformed, r.skipped_label, r.examples), (7, 3, 1, 3));
    assert_eq!(src.train.labels, vec![0, 2, 1]);
    let line = src.report_line().unwrap();
    assert!(line.contains("3 malformed lines skipped") && line.contains("1 rows without a gold label skipped"), "{line}");
    assert_eq!(src.report().unwrap()["train"]["skipped_malformed"], 3);
}

#[test]
fn long_sequences_are_truncated_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let w2v = dir.path().join("v.txt");
    write(&w2v, VECS);
    let root = dir.path().join("aclImdb");
    // Found tokens per review: 5, 4, 2 (train), 6 and 1 (test). With L = 4 only lengths > L are truncated:
    // one train review (5) and one test review (6).
    write(&root.join("train/pos/0_9.txt"), "Good film, good good film.");
    write(&root.join("train/pos/1_8.txt"), "good film good film");
    write(&root.join("train/neg/0_1.txt"), "Bad unknownword film.");
    write(&root.join("test/neg/0_2.txt"), "bad bad film bad film bad");
    write(&root.join("test/pos/0_10.txt"), "good");
    let cfg = text_cfg("imdb-hopfield", "imdb", dir.path(), &w2v, 4, 2);
    let mut src = text_datasets::open(&cfg).unwrap();
    assert_eq!((split_report(&src, Split::Train).truncated, split_report(&src, Split::Test).truncated), (1, 1));
    assert_eq!(split_report(&src, Split::Train).oov_tokens, 4, "',' and '.' (review 1), 'unknownword' and '.' (review 3)");
    // The truncated review keeps its first four found tokens: good film good good.
    let (x, _) = src.test(1).unwrap().next().unwrap().unwrap();
    assert_eq!(vals(&x.get(0)), vec![-1.0, 0.0, -1.0, 0.0, 0.0, 1.0, -1.0, 0.0]);
    let (x, _) = src.train_epoch(0, 3).unwrap().next().unwrap().unwrap();
    assert_eq!(x.size(), vec![3, 4, 2]);

    // Through the CLI the counts reach stderr and data_report.json.
    let out = tempfile::tempdir().unwrap();
    let emb = format!("train.embeddings=\"{}\"", w2v.display());
    let (code, stdout, err) = epcheck(&[
        "train", "--preset", "imdb-hopfield", "--dataset", "imdb", "--data-root", dir.path().to_str().unwrap(), "--set", &emb, "--set", "seq_len=4",
        "--set", "embed_dim=2", "--set", "widths=[3,2]", "--epochs", "1", "--T", "4", "--K", "2", "--batch", "2", "--out", out.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("train: 3 examples, 1 truncated to L") && err.contains("test: 2 examples, 1 truncated to L"), "{err}");
    let run = stdout.lines().find_map(|l| l.strip_prefix("report: ")).expect("report line");
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(run).join("data_report.json")).unwrap()).unwrap();
    assert_eq!((rep["train"]["truncated"].as_u64(), rep["test"]["truncated"].as_u64(), rep["seq_len"].as_u64()), (Some(1), Some(1), Some(4)));
}

// ---------------------------------------------------------------------------------------------------------------
// Timing at the paper's IMDB size (not part of the suite: `cargo test --test seqtrain -- --ignored --nocapture`).

#[test]
#[ignore]
fn time_paper_size_step() {
    let steps: usize = std::env::var("EPCHECK_TIMING_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut cfg = RunConfig::preset_defaults("imdb-hopfield-train").unwrap();
    cfg.batch = 8;
    let inst = Instance::from_config(cfg).unwrap();
    assert_eq!(inst.batch.x[0].size(), vec![8, 600, 300]);
    assert_eq!(inst.batch.x[0].kind(), Kind::Float);
    let mut tr = Trainer::new(&inst.cfg, &inst.model, inst.params.iter().map(|t| t.shallow_clone()).collect(), inst.prec).unwrap();
    let lr = tr.rates(0);
    eprintln!("threads {}, params {}", tch::get_num_threads(), inst.params.iter().map(|t| t.numel()).sum::<usize>());
    for i in 0..steps {
        let t0 = std::time::Instant::now();
        tr.step(&inst.batch, &lr, &mut Acc::default()).unwrap();
        eprintln!("step {i}: {:.2} s", t0.elapsed().as_secs_f64());
    }
}
