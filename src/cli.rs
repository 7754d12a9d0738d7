//! The command line: a thin layer over the library. Exit codes: 0 = the run completed and no scored scope
//! failed, 1 = a check failed, 2 = the run could not be done (bad input, error verdict); errors are one line.
use crate::checks::{self, gdu};
use crate::config::{parse_set, RunConfig};
use crate::estimators::{Estimator, PhaseLengths};
use crate::instance::Instance;
use crate::{Error, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "epcheck", version, about = "Is this Equilibrium Propagation gradient right? EP estimators vs BPTT, convergence and GDU checks.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convergence certificate of the free phase (and optionally the nudged phases).
    #[command(mut_arg("estimator", |a| a.hide(true)), mut_arg("n", |a| a.hide(true)), mut_arg("holo_schedule", |a| a.hide(true)), mut_arg("no_shortcut", |a| a.hide(true)), mut_arg("tol", |a| a.hide(true)), after_help = "Example:\n  epcheck converge --preset p-mlp --T 30 --set 'checks.converge.phases=[\"plus\",\"minus\"]'\n\nMetrics and verdicts: docs/checks.md#converge")]
    Converge(Common),
    /// Run one estimator and compare it with BPTT and truncated BPTT.
    #[command(after_help = "Example:\n  epcheck estimate --preset p-mlp --estimator ep_centered --beta 0.01 --T 30 --K 10\n\nEstimators and signs: docs/conventions.md")]
    Estimate(Common),
    /// GDU check: EP per-step updates vs BPTT per-step gradients (one reverse sweep).
    #[command(mut_arg("estimator", |a| a.hide(true)), mut_arg("n", |a| a.hide(true)), mut_arg("holo_schedule", |a| a.hide(true)), mut_arg("no_shortcut", |a| a.hide(true)), mut_arg("tol", |a| a.hide(true)), after_help = "Example:\n  epcheck gdu --preset p-mlp --archi 20-10-5 --K 10 --plot-series ep_sym,ep_plus --figure-format png\n\nMetrics, identities I1–I4 and the figure: docs/checks.md#gdu")]
    Gdu(GduArgs),
    /// Estimator bias sweep over a β grid × N against an exact reference; slopes, identities, figures.
    #[command(mut_arg("estimator", |a| a.hide(true)), mut_arg("beta", |a| a.hide(true)), mut_arg("tol", |a| a.hide(true)), after_help = "Example:\n  epcheck bias --config fixtures/f2.toml --grid 1e-4,1e-3,1e-2,0.1 --N-list 1,2,4,8\n\nMetrics, slopes and identities B1–B6: docs/checks.md#bias")]
    Bias(BiasArgs),
    /// Agreement of the exact references (bptt, bptt_trunc, implicit) and finite differences.
    #[command(mut_arg("estimator", |a| a.hide(true)), mut_arg("n", |a| a.hide(true)), mut_arg("holo_schedule", |a| a.hide(true)), mut_arg("no_shortcut", |a| a.hide(true)), mut_arg("beta", |a| a.hide(true)), mut_arg("tol", |a| a.hide(true)), after_help = "Example:\n  epcheck refs --config fixtures/f2.toml --T 500 --n-dir 8\n\nMetrics: docs/checks.md#refs")]
    Refs(RefsArgs),
    /// Local-update equivalence: the local (Hebbian) parameter derivatives vs autograd of Φ̄.
    #[command(mut_arg("estimator", |a| a.hide(true)), mut_arg("n", |a| a.hide(true)), mut_arg("holo_schedule", |a| a.hide(true)), mut_arg("no_shortcut", |a| a.hide(true)), mut_arg("tol", |a| a.hide(true)), after_help = "Example:\n  epcheck local --preset p-mlp --archi 20-10-5\n\nMetrics: docs/checks.md#local")]
    Local(Common),
    /// Energy audit: drives = ∂Φ_β/∂s, symmetric drive Jacobian, gradient update maps, nudge.
    #[command(mut_arg("estimator", |a| a.hide(true)), mut_arg("n", |a| a.hide(true)), mut_arg("holo_schedule", |a| a.hide(true)), mut_arg("no_shortcut", |a| a.hide(true)), mut_arg("tol", |a| a.hide(true)), after_help = "Example:\n  epcheck audit --preset p-mlp --archi 20-10-5\n\nProperties A1–A6: docs/checks.md#audit")]
    Audit(Common),
    /// Conformance: recompute another implementation's tensors and compare them.
    #[command(mut_arg("estimator", |a| a.hide(true)), after_help = "Example:\n  epcheck compare fixtures/conformance/pmlp_reference.safetensors --preset p-mlp\n\nInterchange names and name maps: docs/interchange.md")]
    Compare(CompareArgs),
    /// Run certification suites (`verify/*.toml`): every listed check, JUnit XML, one line per check.
    #[command(after_help = "Example:\n  epcheck verify verify/ --out reports/verify\n\nWrites a run folder per instance, junit.xml and <out>/index.html. Exit codes: docs/verdicts.md")]
    Verify(crate::verify::VerifyArgs),
    /// Train with EP (any estimator) or BPTT, or the feed-forward BP baseline: per-epoch table, curves,
    /// checkpoints; resumable.
    #[command(mut_arg("holo_schedule", |a| a.hide(true)), mut_arg("dump", |a| a.hide(true)), after_help = "Example:\n  epcheck train --preset p-mlp --archi 64-32-10 --dataset synthetic --epochs 3 --batch 16 --lr 0.05")]
    Train(TrainArgs),
    /// Weight-distribution statistics of checkpoints (TAG=PATH …): per-tensor table, EP vs BP, histograms.
    #[command(after_help = "Example:\n  epcheck weights ep=RUN/checkpoints/last.safetensors bp=RUN2/checkpoints/bp-last.safetensors --figure-format png")]
    Weights(WeightsArgs),
    /// Describe a preset, or write it out as an architecture graph file (--emit-toml).
    #[command(after_help = "Example:\n  epcheck preset p-mlp --emit-toml\n\nThe graph schema: docs/graph.md; the presets: docs/presets.md")]
    Preset(PresetArgs),
    /// Training curves over several training runs (TAG=FOLDER; one tag per group, repeated for seeds): mean and
    /// spread per group, EP vs BP on the same axes.
    #[command(after_help = "Example:\n  epcheck curves ep=reports/runs/train-a ep=reports/runs/train-b bp=reports/runs/train-bp-c --loss-scale log\n\nThe figure: docs/figures.md#training-curves")]
    Curves(crate::train::curves::CurvesArgs),
    /// Write <DIR>/index.html: one row per run folder (and job page) in DIR with its verdict and digest.
    #[command(after_help = "Example:\n  epcheck index reports/runs\n\nscripts/main-job ends with it; the page: docs/reports.md")]
    Index(IndexArgs),
    /// Fuzz random architecture graphs of a family (built-in, or --family FILE) against the properties (local,
    /// BPTT = FD, EP → BPTT, holomorphic N = 2, audit, converge, gdu, holo_bias); failures are shrunk.
    #[command(after_help = "Example:\n  epcheck fuzz --cases 20 --seed 1\n\nFamilies, properties and shrinking: docs/fuzz.md")]
    Fuzz(crate::fuzz::FuzzArgs),
    /// Join the run folders of a sharded campaign (`fuzz`, `bias` or `verify` with --shard i/n) into one run folder:
    /// one table, summary, JUnit file and index.html; refuses shards of different campaigns.
    #[command(after_help = "Example:\n  epcheck merge reports/runs/fuzz-*-shard*of4-* --out reports/merged\n\nSharding and Slurm arrays: docs/slurm.md")]
    Merge(crate::merge::MergeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// External tensors (safetensors, or npz).
    pub file: PathBuf,
    /// Name map (TOML): `[names] theirs = "ours"` (or a table with `key` and `transforms`), `[run]` options; or a
    /// built-in map: laborieux_state_dict, laborieux_check_gdu, seqlearning_check_gdu, holomorphic_xp_mlp,
    /// brainseek_hopfield_resnet13, ernoult_gdu (docs/interop.md).
    #[arg(long)]
    pub names: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}


#[derive(Args, Debug, Clone)]
pub struct IndexArgs {
    /// Folder of run folders (e.g. reports/runs).
    pub dir: PathBuf,
    /// Page title.
    #[arg(long, default_value = "epcheck runs")]
    pub title: String,
}

#[derive(Args, Debug, Clone)]
pub struct PresetArgs {
    /// Preset name: p-mlp, p-mlp-holo-toy, hopfield-resnet13, vgg5-dchn, vgg5-dchn-rain, imdb-hopfield, snli-hopfield, or a
    /// training variant NAME-train, imdb-hopfield-train-paper, snli-hopfield-train-paper.
    pub name: String,
    /// Override any configuration key (sizes, options), e.g. --set height=8 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the architecture graph TOML of the preset.
    #[arg(long)]
    pub emit_toml: bool,
    /// Write the graph TOML to this file instead of printing it (default: print it).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of epochs (default: the preset's train.epochs; p-mlp 10).
    #[arg(long, allow_negative_numbers = true)]
    pub epochs: Option<usize>,
    /// Learning rate (every tensor), or comma-separated: one per tensor in canonical order, or one per synapse
    /// (parameter group) (default: the preset's train.lr).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<String>,
    /// Dataset: digits (shipped; the default), synthetic (random inputs and labels drawn from --seed, for
    /// timing and smoke tests), cifar10, cifar100, cifar100-coarse, fashion-mnist, mnist, imdb, snli.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Folder holding the dataset files (default: fixtures/data/digits for digits, data/<name> otherwise).
    #[arg(long)]
    pub data_root: Option<String>,
    /// none, flip_crop (Rain) or randaugment (BrainSeek) (default: the preset's; none for p-mlp).
    #[arg(long)]
    pub augment: Option<String>,
    /// Train the feed-forward BP baseline of the preset's graph instead: bp (default: none, train the energy model).
    #[arg(long)]
    pub baseline: Option<String>,
    /// Resume the training run in this folder from its last checkpoint (default: a new run folder).
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct WeightsArgs {
    /// Checkpoints as TAG=PATH (e.g. ep=run/checkpoints/last.safetensors bp=run2/checkpoints/bp-last.safetensors).
    #[arg(required = true)]
    pub sets: Vec<String>,
    /// Also plot bias histograms.
    #[arg(long)]
    pub plot_biases: bool,
    #[arg(long, default_value = "reports/runs")]
    pub out: PathBuf,
    /// Figure formats: svg, png, pdf, both (svg+png), all, or a comma-separated list.
    #[arg(long, default_value = "svg")]
    pub figure_format: String,
    /// Panel size of the figures, WxH in px (default 420x320).
    #[arg(long, value_name = "WxH")]
    pub figure_size: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct BiasArgs {
    #[command(flatten)]
    pub common: Common,
    /// β grid, comma-separated (default 1-2-5 from 1e-4 to 1).
    #[arg(long, allow_negative_numbers = true)]
    pub grid: Option<String>,
    /// Holomorphic N values, comma-separated (default 1,2,3,4,8).
    #[arg(long = "N-list", allow_negative_numbers = true)]
    pub n_list: Option<String>,
    /// implicit (default), bptt or bptt_trunc.
    #[arg(long)]
    pub reference: Option<String>,
    /// until_tol (default) or fixed (K iterations).
    #[arg(long)]
    pub nudge: Option<String>,
    /// Run only shard i of n (0 ≤ i < n) of the β grid: points i, i + n, …; default: SLURM_ARRAY_TASK_ID /
    /// SLURM_ARRAY_TASK_COUNT when set. `epcheck merge` joins the shards into the whole sweep (docs/slurm.md).
    #[arg(long, value_name = "i/n")]
    pub shard: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RefsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of finite-difference directions (default 8).
    #[arg(long, allow_negative_numbers = true)]
    pub n_dir: Option<usize>,
    /// converged (default) or fixed_t.
    #[arg(long)]
    pub fd_mode: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Preset: p-mlp (default), p-mlp-holo-toy, hopfield-resnet13, vgg5-dchn, vgg5-dchn-rain, imdb-hopfield, snli-hopfield;
    /// training variants NAME-train of each, imdb-hopfield-train-paper, snli-hopfield-train-paper
    /// (docs/presets.md; `epcheck preset NAME` describes one).
    #[arg(long)]
    pub preset: Option<String>,
    /// TOML configuration file; flags override it (default: none, the preset's values).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Architecture graph file (TOML, see `epcheck preset NAME --emit-toml`): the model comes from it.
    #[arg(long)]
    pub graph: Option<PathBuf>,
    /// Scripted energy: Φ written in PyTorch, saved as TorchScript (docs/scripted.md): the model comes from it (default: none).
    #[arg(long)]
    pub energy: Option<PathBuf>,
    /// Override any configuration key, e.g. --set checks.gdu.bias_const=5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Layer sizes of p-mlp, e.g. 784-512-10 (default 784-512-10).
    #[arg(long)]
    pub archi: Option<String>,
    /// Activation of every neuron layer (default: the preset's): identity, tanh, sigmoid, logistic4, hard_sigmoid,
    /// hard_sigmoid_2u, my_hard_sig, ctrd_hard_sig, relu6, relu_alpha(a), silu, holotanh(a), my_holotanh(a),
    /// my_cos(a).
    #[arg(long)]
    pub activation: Option<String>,
    /// Loss: mse or ce (default: the preset's; mse for p-mlp).
    #[arg(long)]
    pub loss: Option<String>,
    /// Update schedule: sync or async2 (default: the preset's).
    #[arg(long)]
    pub schedule: Option<String>,
    /// Batch size B: examples of the synthetic check batch, or of each training mini-batch (default: the
    /// preset's; p-mlp 20).
    #[arg(long, allow_negative_numbers = true)]
    pub batch: Option<i64>,
    /// Seed of every draw: the parameters, the synthetic batch, the data order in training (default 0).
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// T: free-phase iterations (default: the preset's; p-mlp 30).
    #[arg(long = "T", visible_alias = "T1", allow_negative_numbers = true)]
    pub t: Option<i64>,
    /// K: iterations of each nudged phase (default: the preset's; p-mlp 10).
    #[arg(long = "K", visible_alias = "T2", allow_negative_numbers = true)]
    pub k: Option<i64>,
    /// β: nudge magnitude (default: the preset's; p-mlp 0.01).
    #[arg(long, allow_negative_numbers = true)]
    pub beta: Option<f64>,
    /// Estimator: ep_plus, ep_minus, ep_centered, ep_holomorphic, bptt, bptt_trunc (aliases: vanilla,
    /// symmetric) (default: the preset's; p-mlp ep_plus).
    #[arg(long)]
    pub estimator: Option<String>,
    /// Holomorphic EP: number of points N (default 4).
    #[arg(long = "N", allow_negative_numbers = true)]
    pub n: Option<i64>,
    /// Holomorphic EP: restart (default; points batched) or carry.
    #[arg(long)]
    pub holo_schedule: Option<String>,
    /// Holomorphic EP: compute all N points (measures the imaginary leakage) instead of the shortcut.
    #[arg(long)]
    pub no_shortcut: bool,
    /// Floating-point type: f64 (default) or f32.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Device: cpu (default), cuda or auto.
    #[arg(long)]
    pub device: Option<String>,
    /// Early exit of each phase when r_∞ ≤ tol (default: unset, every phase runs its T or K iterations).
    #[arg(long, allow_negative_numbers = true)]
    pub tol: Option<f64>,
    /// Parameters (safetensors, canonical names); layer sizes follow from their shapes.
    #[arg(long)]
    pub params: Option<PathBuf>,
    /// Batch (safetensors: input.x, input.y).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Write every state, estimate and series under canonical names to this safetensors file.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Output folder for run folders.
    #[arg(long, default_value = "reports/runs")]
    pub out: PathBuf,
    /// Figure formats: svg (default), png, pdf, both (svg+png), all, or a comma-separated list.
    #[arg(long)]
    pub figure_format: Option<String>,
    /// Panel size of the figures, WxH in px (default 420x320; PNG is drawn at twice this).
    #[arg(long, value_name = "WxH")]
    pub figure_size: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct GduArgs {
    #[command(flatten)]
    pub common: Common,
    /// theorem (default: scored, extended free phase, β = checks.gdu.beta) or replay (preset β, exactly T, info).
    #[arg(long)]
    pub mode: Option<String>,
    /// Bias constant c of the thresholds c·β^p (default: checks.gdu.bias_const, docs/checks.md#gdu).
    #[arg(long, allow_negative_numbers = true)]
    pub bias_const: Option<f64>,
    /// Constant of the lab_rmse thresholds (default: checks.gdu.lab_const, docs/checks.md#gdu).
    #[arg(long, allow_negative_numbers = true)]
    pub lab_const: Option<f64>,
    /// Also compute the published O(K²) series and report the difference.
    #[arg(long)]
    pub verify_quadratic: bool,
    /// Tensors and neuron layers drawn in gdu.svg, comma-separated canonical names (default: all).
    #[arg(long, value_name = "NAMES")]
    pub plot_tensors: Option<String>,
    /// Elements drawn per panel: the N with the largest max_t |BPTT| (default 3).
    #[arg(long, value_name = "N")]
    pub plot_elements: Option<usize>,
    /// EP series drawn: comma-separated ep_sym, ep_plus, ep_minus (default ep_sym).
    #[arg(long, value_name = "SERIES")]
    pub plot_series: Option<String>,
}

impl Common {
    pub fn overrides(&self) -> Result<toml::Table> {
        let mut t = toml::Table::new();
        let mut put = |k: &str, v: toml::Value| {
            t.insert(k.into(), v);
        };
        if let Some(a) = &self.archi {
            let sizes: std::result::Result<Vec<i64>, _> = a.split(['-', ',', 'x']).map(|s| s.trim().parse::<i64>()).collect();
            let sizes = sizes.map_err(|_| Error::Config(format!("--archi expects sizes like 784-512-10, got '{a}'")))?;
            put("archi", toml::Value::Array(sizes.into_iter().map(toml::Value::Integer).collect()));
        }
        for (k, v) in [("activation", &self.activation), ("loss", &self.loss), ("schedule", &self.schedule), ("estimator", &self.estimator), ("dtype", &self.dtype), ("device", &self.device)] {
            if let Some(v) = v {
                put(k, toml::Value::String(v.clone()));
            }
        }
        if let Some(g) = &self.graph {
            put("graph", toml::Value::String(g.to_string_lossy().to_string()));
        }
        if let Some(e) = &self.energy {
            put("energy", toml::Value::String(e.to_string_lossy().to_string()));
        }
        if let Some(n) = self.n {
            put("holo_points", toml::Value::Integer(n));
        }
        if self.no_shortcut {
            put("holo_conj_shortcut", toml::Value::Boolean(false));
        }
        if let Some(h) = &self.holo_schedule {
            put("holo_schedule", toml::Value::String(h.clone()));
        }
        for (k, v) in [("batch", self.batch), ("t_free", self.t), ("k_nudge", self.k)] {
            if let Some(v) = v {
                put(k, toml::Value::Integer(v));
            }
        }
        if let Some(s) = self.seed {
            let s = i64::try_from(s).map_err(|_| Error::Config(format!("--seed must be ≤ {} (i64::MAX, libtorch's seed range), got {s}", i64::MAX)))?;
            put("seed", toml::Value::Integer(s));
        }
        if let Some(b) = self.beta {
            put("beta", toml::Value::Float(b));
        }
        if let Some(x) = self.tol {
            put("tol", toml::Value::Float(x));
        }
        for kv in &self.set {
            crate::config::merge(&mut t, parse_set(kv)?);
        }
        if let Some(f) = &self.figure_format {
            crate::config::merge(&mut t, parse_set(&format!("checks.figure_format=\"{f}\""))?);
        }
        if let Some(f) = &self.figure_size {
            crate::config::merge(&mut t, parse_set(&format!("checks.figure_size=\"{f}\""))?);
        }
        Ok(t)
    }

    pub fn instance(&self, extra: toml::Table) -> Result<Instance> {
        check_outputs(self)?;
        for p in [&self.config, &self.graph, &self.energy, &self.params, &self.input].into_iter().flatten() {
            if !p.exists() {
                return Err(Error::file(p, "no such file"));
            }
        }
        let mut over = self.overrides()?;
        crate::config::merge(&mut over, extra);
        let cfg = RunConfig::resolve(self.preset.as_deref(), self.config.as_deref(), over)?;
        Instance::build(cfg, self.params.as_deref(), self.input.as_deref())
    }

    fn lengths(cfg: &RunConfig) -> PhaseLengths {
        PhaseLengths { t_free: cfg.t_free, k_nudge: cfg.k_nudge, tol: cfg.tol }
    }
}

/// Validates the output paths of a command before any work (docs/verdicts.md: nothing is written on bad input).
pub fn check_outputs(common: &Common) -> Result<()> {
    crate::run::check_output_dir(&common.out)?;
    if let Some(d) = &common.dump {
        crate::run::check_output_file(d, "--dump")?;
    }
    Ok(())
}

/// Writes the run folder and the dump, prints the verdict digests, returns the exit code.
pub fn finish(common: &Common, command: &str, inst: &Instance, reports: Vec<checks::CheckReport>) -> Result<i32> {
    Ok(crate::run::complete(&common.out, common.dump.as_deref(), command, inst, &reports)?.1)
}

/// A check whose options all come from the resolved configuration: one instance, the check as
/// `epcheck verify` runs it ([`crate::verify::run_check`]), one report.
fn check_command(c: &Common, name: &str, extra: toml::Table) -> Result<i32> {
    let inst = c.instance(extra)?;
    crate::progress::start(name);
    let rep = crate::verify::run_check(name, &inst)?;
    finish(c, name, &inst, vec![rep])
}

pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Converge(c) => check_command(&c, "converge", toml::Table::new()),
        Command::Estimate(c) => {
            let inst = c.instance(toml::Table::new())?;
            let est = Estimator::parse(&inst.cfg.estimator)?;
            crate::progress::start(&format!("estimate {}", est.key()));
            let rep = checks::estimate::run_with(&inst, est, inst.cfg.beta, Common::lengths(&inst.cfg), c.dump.is_some())?;
            finish(&c, "estimate", &inst, vec![rep])
        }
        Command::Gdu(g) => {
            let mut extra = toml::Table::new();
            if let Some(m) = &g.mode {
                crate::config::merge(&mut extra, parse_set(&format!("checks.gdu.mode=\"{m}\""))?);
            }
            if let Some(v) = g.bias_const {
                crate::config::merge(&mut extra, parse_set(&format!("checks.gdu.bias_const={v:e}"))?);
            }
            if let Some(v) = g.lab_const {
                crate::config::merge(&mut extra, parse_set(&format!("checks.gdu.lab_const={v:e}"))?);
            }
            if g.verify_quadratic {
                crate::config::merge(&mut extra, parse_set("checks.gdu.verify_quadratic=true")?);
            }
            let list = |v: &str| format!("[{}]", v.split(',').map(|x| format!("\"{}\"", x.trim())).collect::<Vec<_>>().join(", "));
            if let Some(v) = &g.plot_tensors {
                crate::config::merge(&mut extra, parse_set(&format!("checks.gdu.plot_tensors={}", list(v)))?);
            }
            if let Some(v) = &g.plot_series {
                crate::config::merge(&mut extra, parse_set(&format!("checks.gdu.plot_series={}", list(v)))?);
            }
            if let Some(n) = g.plot_elements {
                crate::config::merge(&mut extra, parse_set(&format!("checks.gdu.n_elem={n}"))?);
            }
            let inst = g.common.instance(extra)?;
            let cfg = &inst.cfg;
            let gc = &cfg.checks.gdu;
            let theorem = gc.mode == "theorem";
            if cfg.k_nudge > cfg.t_free && !(theorem && gc.extend_free) {
                return Err(Error::Config(format!("gdu needs K ≤ T without an extended free phase (K = {}, T = {})", cfg.k_nudge, cfg.t_free)));
            }
            // Theorem mode uses checks.gdu.beta unless --beta was given explicitly; replay uses the preset β.
            let beta = if theorem { g.common.beta.unwrap_or(gc.beta) } else { cfg.beta };
            crate::progress::start("gdu");
            let o = gdu::GduOptions { dump: g.common.dump.is_some(), ..gdu::GduOptions::from_config(cfg, beta) };
            let rep = gdu::run(&inst, &o);
            finish(&g.common, "gdu", &inst, vec![rep])
        }
        Command::Bias(b) => {
            let mut extra = toml::Table::new();
            let list = |s: &str, what: &str| -> Result<String> {
                let items: Vec<&str> = s.split(',').map(str::trim).filter(|x| !x.is_empty()).collect();
                if items.iter().any(|x| x.parse::<f64>().is_err()) {
                    return Err(Error::Config(format!("--{what} expects comma-separated numbers, got '{s}'")));
                }
                Ok(format!("[{}]", items.join(", ")))
            };
            if let Some(g) = &b.grid {
                let v: Vec<String> = g.split(',').map(|x| x.trim().parse::<f64>().map(|f| format!("{f:e}"))).collect::<std::result::Result<_, _>>().map_err(|_| Error::Config(format!("--grid expects comma-separated numbers, got '{g}'")))?;
                crate::config::merge(&mut extra, parse_set(&format!("checks.bias.grid=[{}]", v.join(", ")))?);
            }
            if let Some(n) = &b.n_list {
                crate::config::merge(&mut extra, parse_set(&format!("checks.bias.N={}", list(n, "N-list")?))?);
            }
            if let Some(r) = &b.reference {
                crate::config::merge(&mut extra, parse_set(&format!("checks.bias.reference=\"{r}\""))?);
            }
            if let Some(r) = &b.nudge {
                crate::config::merge(&mut extra, parse_set(&format!("checks.bias.nudge=\"{r}\""))?);
            }
            let shard = crate::run::Shard::from_arg_or_env(b.shard.as_deref())?;
            if shard.count == 1 {
                return check_command(&b.common, "bias", extra);
            }
            let inst = b.common.instance(extra)?;
            crate::progress::start("bias");
            let o = checks::bias::BiasOptions { shard, ..checks::bias::BiasOptions::from_config(&inst.cfg) };
            let (rep, rec) = checks::bias::run_shard(&inst, &o, b.common.params.as_deref(), b.common.input.as_deref())?;
            // The shard's record is committed with its run folder (atomically), not written after it.
            let record = [(crate::merge::BIAS_SHARD, crate::merge::bias_shard_json(&rec))];
            let (_, code) = crate::run::complete_with(&b.common.out, b.common.dump.as_deref(), "bias", &inst, &[rep], &record)?;
            Ok(code)
        }
        Command::Refs(r) => {
            let mut extra = toml::Table::new();
            if let Some(n) = r.n_dir {
                crate::config::merge(&mut extra, parse_set(&format!("checks.refs.n_dir={n}"))?);
            }
            if let Some(m) = &r.fd_mode {
                crate::config::merge(&mut extra, parse_set(&format!("checks.refs.fd_mode=\"{m}\""))?);
            }
            check_command(&r.common, "refs", extra)
        }
        Command::Train(t) => run_train(t),
        Command::Weights(w) => run_weights(w),
        Command::Local(c) => check_command(&c, "local", toml::Table::new()),
        Command::Audit(c) => check_command(&c, "audit", toml::Table::new()),
        Command::Compare(a) => run_compare(a),
        Command::Verify(v) => crate::verify::command(v),
        Command::Preset(a) => run_preset(a),
        Command::Fuzz(a) => crate::fuzz::command(a),
        Command::Curves(a) => crate::train::curves::command(a),
        Command::Index(a) => {
            if !a.dir.is_dir() {
                return Err(Error::file(&a.dir, "no such folder (expected a folder of run folders)"));
            }
            let p = crate::report::html::write_folder_index(&a.dir, &a.title)?;
            println!("index: {}", p.display());
            Ok(0)
        }
        Command::Merge(a) => crate::merge::command(a),
    }
}

fn run_preset(a: PresetArgs) -> Result<i32> {
    let mut over = toml::Table::new();
    for kv in &a.set {
        crate::config::merge(&mut over, parse_set(kv)?);
    }
    let mut cfg = RunConfig::resolve(Some(&a.name), None, over)?;
    let model = Instance::model_for(&mut cfg)?;
    if a.emit_toml || a.out.is_some() {
        let text = crate::graph::emit(&model)?;
        match &a.out {
            Some(p) => {
                let tmp = p.with_extension("toml.partial");
                std::fs::write(&tmp, &text).map_err(|e| Error::file(&tmp, e))?;
                std::fs::rename(&tmp, p).map_err(|e| Error::file(p, e))?;
                println!("graph: {}", p.display());
            }
            None => print!("{text}"),
        }
        return Ok(0);
    }
    let n: i128 = model.params.iter().map(|p| p.shape.iter().map(|&d| d as i128).product::<i128>()).sum();
    println!("{}: {} layers, {} terms, {} parameter tensors ({n} values), loss {}, schedule {}", model.preset, model.layers.len(), model.terms.len(), model.params.len(), model.loss.key(), model.schedule.key());
    for (k, l) in model.layers.iter().enumerate() {
        println!("  {} {:?} {}", l.name, l.shape, model.update_key(k));
    }
    println!("(--emit-toml writes it as an architecture graph file)");
    Ok(0)
}

fn run_train(t: TrainArgs) -> Result<i32> {
    let mut extra = toml::Table::new();
    if let Some(e) = t.epochs {
        crate::config::merge(&mut extra, parse_set(&format!("train.epochs={e}"))?);
    }
    if let Some(lr) = &t.lr {
        let v: Vec<String> = lr.split(',').map(|x| x.trim().parse::<f64>().map(|f| format!("{f:e}"))).collect::<std::result::Result<_, _>>().map_err(|_| Error::Config(format!("--lr expects a number or comma-separated numbers, got '{lr}'")))?;
        crate::config::merge(&mut extra, parse_set(&format!("train.lr=[{}]", v.join(", ")))?);
    }
    for (k, v) in [("dataset", &t.dataset), ("data_root", &t.data_root), ("augment", &t.augment)] {
        if let Some(v) = v {
            crate::config::merge(&mut extra, parse_set(&format!("train.{k}=\"{v}\""))?);
        }
    }
    let bp = match t.baseline.as_deref() {
        None => false,
        Some("bp") => true,
        Some(o) => return Err(Error::Config(format!("--baseline must be bp, got '{o}'"))),
    };
    let mut common = t.common.clone();
    let dir = match &t.resume {
        Some(d) => {
            let cfg_path = d.join("config.toml");
            if !cfg_path.exists() {
                return Err(Error::file(&cfg_path, "no such file: --resume needs a training run folder"));
            }
            common.config = Some(cfg_path);
            d.clone()
        }
        None => PathBuf::new(),
    };
    let inst = common.instance(extra)?;
    let cfg = &inst.cfg;
    let mut data = crate::train::datasets::open(cfg, &inst.model)?;
    data.check_model(&inst.model)?;
    if bp {
        crate::train::baseline::validate(cfg)?;
    } else {
        crate::train::validate(cfg, &inst.model)?;
    }
    let dir = if t.resume.is_some() {
        dir
    } else {
        std::fs::create_dir_all(&common.out).map_err(|e| Error::file(&common.out, e))?;
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace([':', '-'], "").replace('Z', "");
        let kind = if bp { "train-bp" } else { "train" };
        // Created atomically: a second run in the same second gets -2, -3, … rather than the same folder.
        let mut i = 1;
        let dir = loop {
            let dir = common.out.join(if i == 1 { format!("{kind}-{}-{stamp}", inst.id) } else { format!("{kind}-{}-{stamp}-{i}", inst.id) });
            i += 1;
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    // Removed on SIGINT/SIGTERM until config.toml and manifest.json make it resumable.
                    crate::report::cleanup::register(&dir);
                    break dir;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && i < 10_000 => continue,
                Err(e) => return Err(Error::file(&dir, e)),
            }
        };
        let args: Vec<String> = std::env::args().collect();
        let m = crate::report::manifest(&inst, kind, &dir.file_name().unwrap_or_default().to_string_lossy(), &args);
        let made = crate::train::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())
            .and_then(|()| crate::train::write_atomic(&dir.join("manifest.json"), serde_json::to_string_pretty(&m).expect("json").as_bytes()));
        crate::report::cleanup::unregister(&dir);
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        dir
    };
    let _lock = crate::train::FolderLock::acquire(&dir)?;
    let outcome = if bp {
        crate::train::baseline::run(cfg, inst.prec.device, data.as_mut(), &dir)?
    } else {
        let params = inst.params.iter().map(|p| p.shallow_clone()).collect();
        crate::train::run(cfg, &inst.model, params, inst.prec, data.as_mut(), &dir, t.resume.is_some())?
    };
    let last = |split: &str, metric: &str| outcome.rows.iter().rev().find(|r| r.split == split && r.metric == metric && r.scope == "all").map(|r| r.value).unwrap_or(f64::NAN);
    let first = |split: &str, metric: &str| outcome.rows.iter().find(|r| r.split == split && r.metric == metric && r.scope == "all").map(|r| r.value).unwrap_or(f64::NAN);
    let md = format!(
        "# epcheck train — {}\n\n{} on `{}`, {} epochs, estimator `{}`, β = {}, T = {}, K = {}, batch {}, {} / {}\n\n| | first epoch | last epoch |\n|---|---|---|\n| train loss | {:.4} | {:.4} |\n| train error % | {:.2} | {:.2} |\n| test loss | {:.4} | {:.4} |\n| test error % | {:.2} | {:.2} |\n\nTables: `tables/epochs.{{parquet,csv}}`; curves: `figures/curves.*`; checkpoints: `checkpoints/`.\n",
        inst.id,
        if bp { "BP baseline" } else if cfg.estimator.starts_with("bptt") { "BPTT training" } else { "EP training" },
        cfg.train.dataset,
        cfg.train.epochs,
        if bp { "autograd" } else { cfg.estimator.as_str() },
        cfg.beta,
        cfg.t_free,
        cfg.k_nudge,
        cfg.batch,
        cfg.dtype,
        inst.prec.device_name(),
        first("train", "loss"),
        last("train", "loss"),
        first("train", "error"),
        last("train", "error"),
        first("test", "loss"),
        last("test", "loss"),
        first("test", "error"),
        last("test", "error"),
    );
    crate::train::write_atomic(&dir.join("summary.md"), md.as_bytes())?;
    println!("train {}: test error {:.2}% after {} epochs", inst.id, last("test", "error"), cfg.train.epochs);
    println!("report: {}", dir.display());
    Ok(0)
}

fn run_weights(w: WeightsArgs) -> Result<i32> {
    use crate::checks::weights;
    let mut sets = vec![];
    let mut tags = std::collections::BTreeSet::new();
    for s in &w.sets {
        let (tag, path) = s.split_once('=').ok_or_else(|| Error::Config(format!("weights: expected TAG=PATH, got '{s}'")))?;
        if tag.trim().is_empty() {
            return Err(Error::Config(format!("weights: empty tag in '{s}' (expected TAG=PATH, e.g. ep=run/checkpoints/last.safetensors)")));
        }
        if path.trim().is_empty() {
            return Err(Error::Config(format!("weights: empty path in '{s}' (expected TAG=PATH, e.g. ep=run/checkpoints/last.safetensors)")));
        }
        if !tags.insert(tag.to_string()) {
            return Err(Error::Config(format!("weights: duplicate tag '{tag}' (every TAG=PATH needs its own tag)")));
        }
    }
    for s in &w.sets {
        let (tag, path) = s.split_once('=').unwrap_or_default();
        sets.push(weights::load_set(tag, std::path::Path::new(path))?);
    }
    let fig_opts = crate::report::style::FigureOptions::parse(&w.figure_format, w.figure_size.as_deref().unwrap_or(""))?;
    let rows = weights::compute(&sets);
    let id = sets.iter().map(|s| s.tag.as_str()).collect::<Vec<_>>().join("-");
    let rf = crate::report::RunFolder::new(&w.out, "weights", &format!("{}-{id}", sets[0].cfg.preset))?;
    crate::report::tables::write_both(&mut weights::frame(&rows)?, &rf.dir().join("tables"), "weights")?;
    let figs = weights::figures(&rf.dir().join("figures"), &sets, &rows, w.plot_biases, &fig_opts)?;
    let mut md = vec![format!("# epcheck weights — {}", rf.run_id), String::new(), "| model | checkpoint | epoch |".into(), "|---|---|---|".into()];
    for s in &sets {
        md.push(format!("| {} | `{}` | {} |", s.tag, s.path.display(), s.epoch.map(|e| e.to_string()).unwrap_or("?".into())));
    }
    md.push(String::new());
    md.push("| model | tensor | role | std | std_ratio | near_zero_frac@0.1 | abs_q99 |".into());
    md.push("|---|---|---|---|---|---|---|".into());
    for s in &sets {
        for (name, _, _) in &s.tensors {
            let g = |stat: &str| rows.iter().find(|r| r.model == s.tag && &r.param == name && r.stat == stat).map(|r| r.value).unwrap_or(f64::NAN);
            let role = rows.iter().find(|r| r.model == s.tag && &r.param == name).map(|r| r.role.clone()).unwrap_or_default();
            let f = |v: f64, p: usize| if v.is_nan() { "– (init bound unknown)".to_string() } else { format!("{v:.p$}") };
            md.push(format!("| {} | {name} | {role} | {:.4e} | {} | {} | {:.4e} |", s.tag, g("std"), f(g("std_ratio"), 3), f(g("near_zero_frac@0.1"), 3), g("abs_q99")));
        }
    }
    let cmp: Vec<_> = rows.iter().filter(|r| r.stat == "std_ratio_ep_bp" || r.stat == "ks").collect();
    if !cmp.is_empty() {
        md.push(String::new());
        md.push("| pair | tensor | std_EP/std_BP | KS |".into());
        md.push("|---|---|---|---|".into());
        let mut seen = std::collections::BTreeSet::new();
        for r in &cmp {
            if seen.insert((r.model.clone(), r.param.clone())) {
                let ks = rows.iter().find(|x| x.model == r.model && x.param == r.param && x.stat == "ks").map(|x| x.value).unwrap_or(f64::NAN);
                let sr = rows.iter().find(|x| x.model == r.model && x.param == r.param && x.stat == "std_ratio_ep_bp").map(|x| x.value).unwrap_or(f64::NAN);
                md.push(format!("| {} | {} | {sr:.3} | {ks:.3} |", r.model, r.param));
            }
        }
    }
    for r in rows.iter().filter(|r| r.stat == "depth_trend") {
        md.push(format!("\ndepth trend (Spearman of near_zero_frac@0.1 vs depth, main path) of {}: {:.3}", r.model, r.value));
    }
    md.push("\n## Figures\n".into());
    for f in &figs {
        md.push(format!("- `{}`", f.strip_prefix(rf.dir()).unwrap_or(f).display()));
    }
    rf.write("summary.md", &(md.join("\n") + "\n"))?;
    let dir = rf.commit()?;
    println!("weights {id}: info");
    println!("report: {}", dir.display());
    Ok(0)
}

/// Entry point of the binary: parses, runs, prints one-line errors, returns the exit code.
pub fn main() -> i32 {
    crate::report::cleanup::install();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                let _ = e.print();
                return 0;
            }
            if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                use clap::CommandFactory;
                let subs: Vec<String> = Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect();
                eprintln!("error: a command is required, one of: {} (epcheck --help describes them)", subs.join(", "));
                return 2;
            }
            // Errors are one line on stderr (clap's usage and tips follow on further lines: dropped).
            let text = e.render().to_string();
            eprintln!("{}", text.lines().find(|l| !l.trim().is_empty()).unwrap_or("error: bad command line"));
            return 2;
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            crate::progress::finish();
            eprintln!("error: {e}");
            2
        }
    }
}

/// `epcheck compare FILE [--names MAP] [instance flags]`.
fn run_compare(a: CompareArgs) -> Result<i32> {
    let builtin = a.names.as_ref().and_then(|n| n.to_str()).is_some_and(|n| crate::checks::conformance::BUILTIN_MAPS.contains(&n));
    if let Some(n) = a.names.as_ref().filter(|n| !builtin && !n.exists()) {
        return Err(Error::file(n, format!("no such file, and not a built-in name map ({})", crate::checks::conformance::BUILTIN_MAPS.join(", "))));
    }
    for p in [Some(&a.file), a.common.config.as_ref(), a.common.params.as_ref(), a.common.input.as_ref()].into_iter().flatten() {
        if !p.exists() {
            return Err(Error::file(p, "no such file"));
        }
    }
    let map = match &a.names {
        Some(p) => crate::checks::conformance::read_name_map(p)?,
        None => crate::checks::conformance::NameMap::default(),
    };
    check_outputs(&a.common)?;
    if map.metrics_only {
        // `ernoult_gdu`: the file's series are scored against each other; the instance only carries the run folder.
        let inst = a.common.instance(toml::Table::new())?;
        let id = format!("external-{}", a.file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default());
        let rep = crate::checks::conformance::run_metrics_only(&a.file, &id)?;
        return finish(&a.common, "compare", &inst, vec![rep]);
    }
    // The model: --preset/--graph/--config, else the file's own epcheck metadata (a dump epcheck wrote), else
    // p-mlp — said in every error, so a wrong guess is never silent.
    let named = a.common.preset.is_some() || a.common.graph.is_some() || a.common.energy.is_some() || a.common.config.is_some();
    let recorded = if named { None } else { crate::io::recorded_config(&a.file) };
    let mut over = recorded.clone().unwrap_or_default();
    crate::config::merge(&mut over, map.run.clone());
    crate::config::merge(&mut over, a.common.overrides()?);
    let preset = a.common.preset.clone().or_else(|| recorded.as_ref().and_then(|r| r.get("preset")).and_then(|v| v.as_str()).map(str::to_string));
    let assumed = !named && recorded.is_none();
    let cfg = RunConfig::resolve(preset.as_deref(), a.common.config.as_deref(), over)?;
    let model_name = match (&cfg.graph, &cfg.energy) {
        (_, Some(e)) => format!("scripted energy {e}"),
        (Some(g), _) => format!("graph {g}"),
        _ => format!("preset {}", cfg.preset),
    };
    let case = crate::checks::conformance::load_case(&a.file, &map, cfg, a.common.params.as_deref(), a.common.input.as_deref()).map_err(|e| {
        if assumed {
            Error::Config(format!("this file's tensors do not fit {model_name} (assumed: no --preset or --graph given and the file has no epcheck metadata): {e}"))
        } else {
            Error::Config(format!("this file's tensors do not fit {model_name}: {e}"))
        }
    })?;
    crate::progress::start("conformance");
    let o = crate::checks::conformance::ConformanceOptions::from_config(&case.inst.cfg);
    let rep = crate::checks::conformance::run(&case, &o)?;
    finish(&a.common, "compare", &case.inst, vec![rep])
}
