//! `epcheck train`: trains an energy model with any estimator (conv-hopfield.md §6, hopfield-attention.md §9):
//! free phase (zeros, or warm from the previous batch's last nudged state), the estimator's nudged phases,
//! optional global-norm clip, an optimiser step per tensor, the cosine schedule per epoch, evaluation from zeros.
//!
//! The run folder is written **in place** so that a long run can be resumed: every file is written atomically
//! (temporary name, then rename), `checkpoints/last.safetensors` holds parameters, optimiser buffers and the
//! number of completed epochs, and `summary.md` appears only when the last epoch is done.
pub mod baseline;
pub mod curves;
pub mod datasets;
pub mod data;
pub mod lr;
pub mod optim;
pub mod text_datasets;

use crate::config::RunConfig;
use crate::estimators::{bptt, ep_centered, ep_holomorphic, ep_one_sided, Estimator, PhaseLengths};
use crate::model::{Batch, Model, State};
use crate::precision::Precision;
use crate::relax::{relax, RelaxOptions};
use crate::report::figures::{Line, Panel, Style};
use crate::report::style::{self, Figure, LegendEntry, Marker, Scale};
use crate::{Error, Result};
use data::DataSource;
use polars::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// One row of the per-epoch metrics table (long format): epoch, split (`train`/`test`), metric, scope
/// (`all`, a layer or a parameter name), value.
#[derive(Clone, Debug)]
pub struct EpochRow {
    pub epoch: usize,
    pub split: String,
    pub metric: String,
    pub scope: String,
    pub value: f64,
}

/// Sums of per-example / per-element statistics over an epoch (conv-hopfield.md §6.8): each metric is the sum
/// of its values divided by their count.
#[derive(Default)]
pub struct Acc {
    sums: Vec<((String, String), (f64, f64))>,
}

impl Acc {
    pub fn add(&mut self, metric: &str, scope: &str, sum: f64, count: f64) {
        let key = (metric.to_string(), scope.to_string());
        match self.sums.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => {
                v.0 += sum;
                v.1 += count;
            }
            None => self.sums.push((key, (sum, count))),
        }
    }
    pub fn rows(&self, epoch: usize, split: &str) -> Vec<EpochRow> {
        self.sums
            .iter()
            .map(|((m, s), (sum, n))| EpochRow { epoch, split: split.into(), metric: m.clone(), scope: s.clone(), value: if *n > 0.0 { sum / n } else { f64::NAN } })
            .collect()
    }
}

fn sum_f64(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[])
}

/// Statistics at a free state: energy, loss, error, top-5 error, per-layer mean |s| (input included),
/// per-hidden-layer saturation at the lower and upper bound.
fn state_stats(acc: &mut Acc, m: &Model, p: &[Tensor], batch: &Batch, s: &State) {
    let b = batch.size() as f64;
    acc.add("energy", "all", sum_f64(&m.energy(p, batch, s)), b);
    acc.add("loss", "all", sum_f64(&m.loss_per_example(p, batch, s)), b);
    // The prediction scores: the output state, or the readout's logits (estimators §1.5).
    let out = &m.loss_input(p, &s[m.output]);
    let pred = out.argmax(-1, false);
    acc.add("error", "all", 100.0 * sum_f64(&pred.ne_tensor(&batch.y)), b);
    let c = m.classes();
    if c >= 5 {
        let top5 = out.topk(5, -1, true, true).1;
        let hit = top5.eq_tensor(&batch.y.unsqueeze(-1)).any_dim(-1, false);
        acc.add("top5_error", "all", 100.0 * (b - sum_f64(&hit)), b);
    }
    for (i, x) in batch.x.iter().enumerate() {
        acc.add("norm", &format!("input{}", if i == 0 { String::new() } else { i.to_string() }), sum_f64(&x.abs()), x.numel() as f64);
    }
    for (k, l) in m.layers.iter().enumerate() {
        let t = &s[k];
        let n = t.numel() as f64;
        acc.add("norm", &l.name, sum_f64(&t.abs()), n);
        if k != m.output {
            if let Some(_) = l.activation.kinks() {
                let (lo, hi) = l.activation.range();
                acc.add("sat_low", &l.name, sum_f64(&t.eq(lo)), n);
                acc.add("sat_high", &l.name, sum_f64(&t.eq(hi)), n);
            }
        }
    }
}

/// The parameters and optimiser of a run, and where it stands.
pub struct Trainer<'a> {
    pub cfg: &'a RunConfig,
    pub model: &'a Model,
    pub prec: Precision,
    pub params: Vec<Tensor>,
    pub opt: optim::Optimizer,
    pub estimator: Estimator,
    /// Per-tensor base rates η₀.
    pub lr0: Vec<f64>,
    warm: Option<State>,
}

impl<'a> Trainer<'a> {
    pub fn new(cfg: &'a RunConfig, model: &'a Model, params: Vec<Tensor>, prec: Precision) -> Result<Self> {
        let (estimator, lr0, kind) = setup(cfg, model)?;
        let opt = optim::Optimizer::new(kind, cfg.train.weight_decay, params.len());
        Ok(Trainer { cfg, model, prec, params, opt, estimator, lr0, warm: None })
    }

    fn len(&self) -> PhaseLengths {
        PhaseLengths { t_free: self.cfg.t_free, k_nudge: self.cfg.k_nudge, tol: self.cfg.tol }
    }

    /// The rates of epoch e.
    pub fn rates(&self, e: usize) -> Vec<f64> {
        let t = &self.cfg.train;
        let t_max = t.lr_t_max.unwrap_or(t.epochs);
        self.lr0.iter().map(|&eta0| if t.lr_schedule == "cosine" { lr::cosine_capped(eta0, t.lr_min, t_max, e) } else { eta0 }).collect()
    }

    /// One training step on a batch; accumulates the statistics at s⁰ and of the gradient.
    pub fn step(&mut self, batch: &Batch, lr: &[f64], acc: &mut Acc) -> Result<()> {
        let (m, len) = (self.model, self.len());
        let b = batch.size();
        let init = match self.warm.take() {
            Some(s) if self.cfg.train.state_init == "warm" && s[0].size()[0] == b => s,
            _ => m.zeros_state(b, self.prec),
        };
        let p = &self.params;
        let beta = self.cfg.beta;
        let (g, last, free_state) = match self.estimator {
            Estimator::Bptt | Estimator::BpttTrunc => {
                let (g, free) = if self.estimator == Estimator::Bptt { bptt::full(m, p, batch, len.t_free) } else { bptt::truncated(m, p, batch, len.t_free, len.k_nudge)? };
                let s = free.state;
                (g.tensors, None, s)
            }
            est => {
                let free = relax(m, p, batch, &init, 0.0, &RelaxOptions { iters: len.t_free, tol: len.tol, no_trace: true, ..Default::default() });
                match est {
                    Estimator::EpCentered => {
                        let (g, plus, minus) = ep_centered::estimate(m, p, batch, &free, beta, len);
                        let last = if self.cfg.phase_order.as_deref() == Some("plus_first") { minus.state } else { plus.state };
                        (g.tensors, Some(last), free.state)
                    }
                    Estimator::EpPlus | Estimator::EpMinus => {
                        let sign = if est == Estimator::EpPlus { 1.0 } else { -1.0 };
                        let (g, nudged) = ep_one_sided::estimate(m, p, batch, &free, sign * beta, len);
                        (g.tensors, Some(nudged.state), free.state)
                    }
                    _ => {
                        let holo = ep_holomorphic::HoloOptions::restart(self.cfg.holo_points, self.cfg.holo_conj_shortcut);
                        let e = ep_holomorphic::estimate(m, p, batch, &free.state, beta, len, &holo)?;
                        (e.grad.tensors, None, free.state)
                    }
                }
            }
        };
        state_stats(acc, m, p, batch, &free_state);
        if let Some(bad) = g.iter().position(|t| !crate::tensor_util::all_finite(t)) {
            let pmax = self.params.iter().map(|t| crate::tensor_util::absmax(t)).fold(0.0, f64::max);
            return Err(Error::NonFinite(format!(
                "the {} estimate of {} is not finite after {} optimiser steps (max |θ| = {pmax:.3e}): the training diverged — lower train.lr, set train.grad_clip_norm, or check the dynamics with `epcheck converge`",
                self.estimator.key(),
                m.params[bad].name,
                self.opt.steps
            )));
        }
        let (g, n, factor) = match self.cfg.train.grad_clip_norm {
            Some(c) => optim::clip_global_norm(&g, c),
            None => {
                let n = crate::tensor_util::global_norm(&g);
                (g, n, 1.0)
            }
        };
        acc.add("grad_norm_unclipped", "all", n, 1.0);
        acc.add("clip_factor", "all", factor, 1.0);
        for (spec, t) in m.params.iter().zip(&g) {
            let abs_sum = crate::tensor_util::chunked_sum_f64(t, |c| c.abs().to_kind(Kind::Double)).double_value(&[]);
            acc.add("grad_abs_mean", &spec.name, abs_sum / t.numel() as f64, 1.0);
        }
        self.opt.step(&mut self.params, &g, lr);
        self.warm = last;
        Ok(())
    }

    /// Evaluation: every batch from zeros, T free iterations, argmax prediction (§6.6).
    pub fn evaluate(&mut self, batches: &mut dyn Iterator<Item = Result<(Tensor, Tensor)>>, acc: &mut Acc) -> Result<()> {
        self.warm = None;
        for item in batches {
            let (x, y) = item?;
            let batch = to_batch(self.model, x, y, self.prec);
            let init = self.model.zeros_state(batch.size(), self.prec);
            let free = relax(self.model, &self.params, &batch, &init, 0.0, &RelaxOptions { iters: self.cfg.t_free, no_trace: true, ..Default::default() });
            state_stats(acc, self.model, &self.params, &batch, &free.state);
        }
        Ok(())
    }
}

/// Checks a training configuration against the model before anything is written (estimator, optimiser, one rate
/// or one per tensor).
pub fn validate(cfg: &RunConfig, model: &Model) -> Result<()> {
    setup(cfg, model).map(|_| ())
}

/// What a training configuration resolves to for a model: the estimator (holomorphic EP preflighted), the base
/// rate of every tensor, the optimiser kind.
fn setup(cfg: &RunConfig, model: &Model) -> Result<(Estimator, Vec<f64>, optim::Kind)> {
    let estimator = Estimator::parse(&cfg.estimator)?;
    if estimator == Estimator::EpHolomorphic {
        ep_holomorphic::preflight(model)?;
    }
    let t = &cfg.train;
    Ok((estimator, per_tensor_rates(model, &t.lr)?, optim::Kind::parse(&t.optimizer, t.momentum, t.nesterov)?))
}

/// The base rate of every parameter tensor from `train.lr`: one rate for all; one per tensor in canonical
/// order; or one per parameter group (synapse) in order of first appearance, weight and bias sharing it
/// (hopfield-attention.md §9.2: "one group per synapse").
pub fn per_tensor_rates(model: &Model, lr: &[f64]) -> Result<Vec<f64>> {
    let n = model.params.len();
    let mut groups: Vec<&str> = vec![];
    for p in &model.params {
        if !groups.contains(&p.group.as_str()) {
            groups.push(&p.group);
        }
    }
    match lr.len() {
        1 => Ok(vec![lr[0]; n]),
        k if k == n => Ok(lr.to_vec()),
        k if k == groups.len() => Ok(model.params.iter().map(|p| lr[groups.iter().position(|g| *g == p.group).expect("group listed")]).collect()),
        k => Err(Error::Config(format!(
            "train.lr lists {k} rates, but {} has {n} parameter tensors in {} groups ({}): give one rate, one per tensor in canonical order, or one per group",
            model.preset,
            groups.len(),
            groups.join(", ")
        ))),
    }
}

/// A data batch in the run's dtype and device.
pub fn to_batch(m: &Model, x: Tensor, y: Tensor, prec: Precision) -> Batch {
    // Images into a dense input layer: flattened per example (DataSource::check_model accepted the sizes).
    let want = &m.input_shapes[0];
    let x = if want.len() == 1 && x.dim() > 2 { x.flatten(1, -1) } else { x };
    Batch::new(x.to_kind(prec.dtype.kind()).to_device(prec.device), y.to_kind(Kind::Int64).to_device(prec.device), m.classes())
}

/// An exclusive lock on a training run folder (`<dir>/.lock`, holding the owner's pid), so that two `train`
/// processes never write one folder. A lock left by a process that no longer runs (SIGKILL) is taken over; the
/// lock file is removed when the guard drops and on SIGINT/SIGTERM.
pub struct FolderLock {
    path: PathBuf,
}

impl FolderLock {
    pub fn acquire(dir: &Path) -> Result<FolderLock> {
        let path = dir.join(".lock");
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = write!(f, "{}", std::process::id());
                    crate::report::cleanup::register(&path);
                    return Ok(FolderLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u32>().ok());
                    let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists()) || (owner.is_none() && !Path::new("/proc/self").exists());
                    if alive {
                        return Err(Error::file(dir, format!("another epcheck train (pid {}) is writing this run folder; wait for it to finish (or remove {} if it no longer runs)", owner.map(|p| p.to_string()).unwrap_or("?".into()), path.display())));
                    }
                    // Stale: its owner is gone.
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(Error::file(&path, format!("cannot lock the run folder: {e}"))),
            }
        }
        Err(Error::file(&path, "cannot lock the run folder"))
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        crate::report::cleanup::unregister(&self.path);
    }
}

pub use crate::io::write_atomic;

pub fn rows_frame(rows: &[EpochRow]) -> Result<DataFrame> {
    let n = rows.len();
    let cols = vec![
        Column::new("epoch".into(), rows.iter().map(|r| r.epoch as i64).collect::<Vec<_>>()),
        Column::new("split".into(), rows.iter().map(|r| r.split.clone()).collect::<Vec<_>>()),
        Column::new("metric".into(), rows.iter().map(|r| r.metric.clone()).collect::<Vec<_>>()),
        Column::new("scope".into(), rows.iter().map(|r| r.scope.clone()).collect::<Vec<_>>()),
        Column::new("value".into(), rows.iter().map(|r| r.value).collect::<Vec<_>>()),
    ];
    Ok(DataFrame::new(n, cols)?)
}

/// Writes `tables/epochs.{parquet,csv}` atomically.
pub fn write_epoch_table(dir: &Path, rows: &[EpochRow]) -> Result<()> {
    let tdir = dir.join("tables");
    std::fs::create_dir_all(&tdir).map_err(|e| Error::file(&tdir, e))?;
    let stage = dir.join(".tables.partial");
    crate::report::cleanup::register(&stage);
    std::fs::create_dir_all(&stage).map_err(|e| Error::file(&stage, e))?;
    crate::report::tables::write_both(&mut rows_frame(rows)?, &stage, "epochs")?;
    for ext in ["parquet", "csv"] {
        let (from, to) = (stage.join(format!("epochs.{ext}")), tdir.join(format!("epochs.{ext}")));
        std::fs::rename(&from, &to).map_err(|e| Error::file(&to, e))?;
    }
    let _ = std::fs::remove_dir_all(&stage);
    crate::report::cleanup::unregister(&stage);
    Ok(())
}

/// Curves: loss and error per epoch, train (solid, ●) and test (dashed, ■); integer epoch ticks, error in %,
/// loss on a log axis when it spans more than a decade.
pub fn curve_figure(dir: &Path, rows: &[EpochRow], checks: &crate::config::ChecksConfig) -> Result<Vec<PathBuf>> {
    let opts = style::FigureOptions::parse(&checks.figure_format, &checks.figure_size)?;
    let pick = |split: &str, metric: &str| -> Vec<(f64, f64)> {
        rows.iter().filter(|r| r.split == split && r.metric == metric && r.scope == "all").map(|r| ((r.epoch + 1) as f64, r.value)).collect()
    };
    let pair = |metric: &str| {
        vec![
            Line::new(pick("train", metric), style::color(0), Style::Solid, Some("train".into())).marker(Marker::Circle),
            Line::new(pick("test", metric), style::color(1), Style::Dashed, Some("test".into())).marker(Marker::Square),
        ]
    };
    let losses: Vec<f64> = rows.iter().filter(|r| r.metric == "loss" && r.value > 0.0 && r.value.is_finite()).map(|r| r.value).collect();
    let (lo, hi) = losses.iter().fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(*v), b.max(*v)));
    let loss_scale = if hi > 10.0 * lo { Scale::Log } else { Scale::Linear };
    let panels = vec![
        Panel::new("loss (mean ℓ at the free state)", "epoch", "loss").scales(Scale::Integer, loss_scale).lines(pair("loss")),
        Panel::new("error", "epoch", "error").scales(Scale::Integer, Scale::Percent).lines(pair("error")),
    ];
    let n_ep = rows.iter().map(|r| r.epoch + 1).max().unwrap_or(0);
    let fig = Figure { stem: "curves".into(), title: format!("training curves — {n_ep} epochs"), panels, legend: vec![LegendEntry::text("one run (one seed)")] };
    let fdir = dir.join("figures");
    let stage = dir.join(".figures.partial");
    crate::report::cleanup::register(&stage);
    let made = style::write_figure(&stage, &fig, &opts)?;
    std::fs::create_dir_all(&fdir).map_err(|e| Error::file(&fdir, e))?;
    let mut out = vec![];
    for f in made {
        let to = fdir.join(f.file_name().expect("file name"));
        std::fs::rename(&f, &to).map_err(|e| Error::file(&to, e))?;
        out.push(to);
    }
    let _ = std::fs::remove_dir_all(&stage);
    crate::report::cleanup::unregister(&stage);
    Ok(out)
}

/// Saves parameters (canonical names), optimiser buffers and the number of completed epochs.
pub fn save_checkpoint(path: &Path, model: &Model, cfg: &RunConfig, params: &[Tensor], opt: Option<&optim::Optimizer>, epochs_done: usize, extra: Vec<(String, Tensor)>) -> Result<()> {
    let names = model.param_names();
    let mut ts: Vec<(String, Tensor)> = names.iter().zip(params).map(|(n, t)| (format!("param.{n}"), t.shallow_clone())).collect();
    if let Some(o) = opt {
        ts.extend(o.state_tensors(&names));
    }
    ts.extend(extra);
    let mut meta: HashMap<String, String> = crate::io::metadata(model, cfg);
    meta.insert("epcheck.train.epochs_done".into(), epochs_done.to_string());
    if let Some(o) = opt {
        meta.insert("epcheck.train.optimizer_steps".into(), o.steps.to_string());
    }
    crate::io::write_tensors(path, &ts, meta)
}

/// Reads the number of completed epochs of a checkpoint.
pub fn checkpoint_epochs(path: &Path) -> Result<usize> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| crate::io::not_safetensors(path, &bytes, e))?;
    meta.metadata()
        .as_ref()
        .and_then(|m| m.get("epcheck.train.epochs_done"))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::file(path, "not an epcheck training checkpoint (no epcheck.train.epochs_done)"))
}

/// Summary of a finished or running training run.
pub struct TrainOutcome {
    pub dir: PathBuf,
    pub rows: Vec<EpochRow>,
}

/// Runs (or resumes) EP training. `dir` is the run folder (created by the caller, containing `config.toml`);
/// when `resume` is set, training continues after the epochs stored in `checkpoints/last.safetensors`.
pub fn run(cfg: &RunConfig, model: &Model, init_params: Vec<Tensor>, prec: Precision, data: &mut dyn DataSource, dir: &Path, resume: bool) -> Result<TrainOutcome> {
    data.check_model(model)?;
    let ckdir = dir.join("checkpoints");
    std::fs::create_dir_all(&ckdir).map_err(|e| Error::file(&ckdir, e))?;
    let last = ckdir.join("last.safetensors");
    let mut trainer = Trainer::new(cfg, model, init_params, prec)?;
    let mut rows: Vec<EpochRow> = vec![];
    let mut start = 0;
    // A run interrupted before its first checkpoint resumes from the start: its initial parameters are the
    // seeded draw of the instance, so the result is the uninterrupted run's.
    if resume && !last.exists() {
        eprintln!("note: train: {} has no checkpoint yet: starting from epoch 1", dir.display());
    }
    if resume && last.exists() {
        start = checkpoint_epochs(&last)?;
        trainer.params = crate::io::load_params(model, &last, prec)?;
        let map = crate::io::read_tensors(&last)?;
        trainer.opt.load_state(&model.param_names(), &map, &trainer.params);
        let bytes = std::fs::read(&last).map_err(|e| Error::file(&last, e))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(&last, e))?;
        trainer.opt.steps = meta.metadata().as_ref().and_then(|m| m.get("epcheck.train.optimizer_steps")).and_then(|v| v.parse().ok()).unwrap_or(0);
        let csv = dir.join("tables").join("epochs.csv");
        if csv.exists() {
            rows = read_epoch_csv(&csv)?.into_iter().filter(|r| r.epoch < start).collect();
        }
    }
    if let Some(rep) = data.report() {
        eprintln!("data: {}", data.report_line().unwrap_or_default());
        write_atomic(&dir.join("data_report.json"), serde_json::to_string_pretty(&rep).expect("json").as_bytes())?;
    }
    let epochs = cfg.train.epochs;
    crate::progress::start(&format!("train {} on {}", model.preset, data.name()));
    for e in start..epochs {
        let lr = trainer.rates(e);
        let t0 = std::time::Instant::now();
        let mut acc = Acc::default();
        let mut nb = 0;
        for item in data.train_epoch(e, cfg.batch)? {
            let (x, y) = item?;
            let batch = to_batch(model, x, y, prec);
            trainer.step(&batch, &lr, &mut acc)?;
            nb += 1;
            crate::progress::message(&format!("train {} epoch {}/{epochs} batch {nb}", model.preset, e + 1));
        }
        let train_s = t0.elapsed().as_secs_f64();
        let mut test = Acc::default();
        trainer.evaluate(&mut data.test(cfg.batch)?, &mut test)?;
        rows.extend(acc.rows(e, "train"));
        rows.extend(test.rows(e, "test"));
        rows.push(EpochRow { epoch: e, split: "train".into(), metric: "lr".into(), scope: "all".into(), value: lr[0] });
        rows.push(EpochRow { epoch: e, split: "train".into(), metric: "seconds".into(), scope: "all".into(), value: train_s });
        rows.push(EpochRow { epoch: e, split: "train".into(), metric: "seconds_per_step".into(), scope: "all".into(), value: train_s / nb.max(1) as f64 });
        let loss = |s: &str, m: &str| rows.iter().rev().find(|r| r.epoch == e && r.split == s && r.metric == m && r.scope == "all").map(|r| r.value).unwrap_or(f64::NAN);
        if let Some(bad) = ["train", "test"].iter().find(|s| !loss(s, "loss").is_finite()) {
            return Err(Error::NonFinite(format!("{bad} loss at epoch {} is not finite: the dynamics diverged", e + 1)));
        }
        // A training run that learns nothing must say so (docs/verdicts.md): an exactly-zero gradient, or an
        // output layer stuck at its bounds.
        let get = |m: &str, sc: &str| rows.iter().rev().find(|r| r.epoch == e && r.split == "train" && r.metric == m && r.scope == sc).map(|r| r.value);
        let zero = 100.0 * prec.dtype.eps();
        if let Some(g) = get("grad_norm_unclipped", "all").filter(|g| *g <= zero) {
            eprintln!(
                "warning: train: the gradient norm is {g:.1e} (zero to round-off, ≤ {zero:.0e}) in epoch {}: nothing is learned; check the activation's saturation (sat_low/sat_high in tables/epochs.csv) and β",
                e + 1
            );
        }
        let out_name = &model.layers[model.output].name;
        if let (Some(lo), Some(hi)) = (get("sat_low", out_name), get("sat_high", out_name)) {
            if lo + hi >= 0.999 {
                eprintln!("warning: train: the output layer {out_name} is saturated at its bounds for {:.1}% of units in epoch {} (output collapse)", 100.0 * (lo + hi), e + 1);
            }
        }
        crate::progress::message(&format!(
            "epoch {}/{epochs}: train loss {:.4} err {:.2}%, test loss {:.4} err {:.2}%",
            e + 1,
            loss("train", "loss"),
            loss("train", "error"),
            loss("test", "loss"),
            loss("test", "error")
        ));
        eprintln!(
            "epoch {:>3}/{epochs}: train loss {:.4} error {:6.2}% | test loss {:.4} error {:6.2}% | lr {:.3e} | {:.1} s",
            e + 1,
            loss("train", "loss"),
            loss("train", "error"),
            loss("test", "loss"),
            loss("test", "error"),
            lr[0],
            train_s
        );
        // `last` is the commit point of an epoch, written last: a run stopped before it (SIGINT, SIGKILL) resumes
        // at this epoch, recomputes it and rewrites its rows, so the resumed run equals an uninterrupted one.
        save_checkpoint(&ckdir.join(format!("epoch{:04}.safetensors", e + 1)), model, cfg, &trainer.params, None, e + 1, vec![])?;
        write_epoch_table(dir, &rows)?;
        curve_figure(dir, &rows, &cfg.checks)?;
        save_checkpoint(&last, model, cfg, &trainer.params, Some(&trainer.opt), e + 1, vec![])?;
    }
    crate::progress::finish();
    Ok(TrainOutcome { dir: dir.to_path_buf(), rows })
}

/// Reads back `epochs.csv` (for resuming).
pub fn read_epoch_csv(path: &Path) -> Result<Vec<EpochRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let mut out = vec![];
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 5 {
            return Err(Error::file(path, format!("malformed row '{line}'")));
        }
        let num = |s: &str| s.parse::<f64>().map_err(|_| Error::file(path, format!("malformed number '{s}'")));
        out.push(EpochRow { epoch: num(f[0])? as usize, split: f[1].into(), metric: f[2].into(), scope: f[3].into(), value: num(f[4])? });
    }
    Ok(out)
}
