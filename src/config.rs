//! Run configuration: preset defaults, then a TOML file, then command-line flags (`--set key=value` for any
//! key), merged as TOML tables and validated once. Keys follow the option registry (conventions §13) and the
//! check keys of `checks.md` §12. The resolved configuration is written into every run folder.
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Keys that define the model (as opposed to the run): each preset reads some of them
/// ([`RunConfig::applicable_model_keys`]).
pub const MODEL_KEYS: &[&str] = &[
    "archi", "activation", "loss", "schedule", "init_scale", "input_range", "height", "in_channels", "widths", "classes", "skips", "gains", "relu_alpha", "seq_len", "embed_dim", "attention_scale", "attention_mask",
    "readout", "init", "init_std",
];

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub preset: String,
    /// Layer sizes [n_0, …, n_L] (P-MLP).
    pub archi: Vec<i64>,
    /// Whether `archi` was given explicitly (file or flag), not taken from the preset defaults.
    #[serde(skip)]
    pub archi_explicit: bool,
    /// Top-level keys given explicitly (file or flags), for the "applied or refused" rule ([`RunConfig::check_applicable`]).
    #[serde(skip)]
    pub explicit: Vec<String>,
    pub activation: String,
    pub loss: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_scale: Option<f64>,
    pub batch: i64,
    pub seed: u64,
    /// T: free-phase iterations.
    pub t_free: i64,
    /// K: iterations of each nudged phase.
    pub k_nudge: i64,
    pub beta: f64,
    pub estimator: String,
    pub dtype: String,
    pub device: String,
    /// Early exit of a phase when r_∞ ≤ tol (off by default: fixed iteration counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tol: Option<f64>,
    /// Holomorphic EP: N (`holo_points`), schedule, conjugate-symmetry shortcut, periods (carry).
    #[serde(default = "default_holo_points")]
    pub holo_points: usize,
    #[serde(default = "default_holo_schedule")]
    pub holo_schedule: String,
    #[serde(default = "default_true")]
    pub holo_conj_shortcut: bool,
    #[serde(default = "default_one")]
    pub holo_periods: usize,
    /// Cumulative series and their totals (conventions §7.6): `inclusive` (default) or `exclusive` (the
    /// SeqLearning/Laborieux plots and `bars` statistic: the last increment is dropped; never used for pass/fail).
    /// Recorded only when not the default, so that instance ids of default runs do not change.
    #[serde(default = "default_prefix", skip_serializing_if = "is_default_prefix")]
    pub prefix: String,
    /// `local` (default) or `autograd`: how f and f_k are obtained.
    #[serde(default = "default_param_derivative")]
    pub param_derivative: String,
    /// Implicit differentiation: fixed point and adjoint tolerances (default 1e-13 f64, 1e-6 f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub star_tol: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjoint_tol: Option<f64>,
    /// Size overrides and options of the convolutional presets (conv-hopfield.md §0, conventions §13–14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_channels: Option<i64>,
    /// Hidden widths (conv: [n1, n2, n3, n4]; attention: dense widths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widths: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<i64>,
    /// Hopfield-ResNet13 skip edges: `conv1x1` (default) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skips: Option<String>,
    /// Per-edge init gains (conv presets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gains: Option<Vec<f64>>,
    /// ReLU-α: one α per hidden layer (drawn U[1, 10] from the seed when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relu_alpha: Option<Vec<f64>>,
    /// `minus_first` or `plus_first` (conventions §5.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_order: Option<String>,
    /// Range [lo, hi] of the seeded synthetic inputs (default: the preset's, U[0, 1] for p-mlp, the CIFAR-10
    /// normalised range U(−0.81, 0.92) for the conv presets, conv-hopfield.md §7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_range: Option<[f64; 2]>,
    /// P-MLP readout (estimators §1.1): `none` (default) or `softmax` (needs `loss = ce`, ≥ 3 sizes in `archi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readout: Option<String>,
    /// P-MLP initialisation (estimators §1.2): `pytorch_linear` (default) or `trunc_normal` with `init_std`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_std: Option<f64>,
    /// `final` (default) or `previous`: where `bptt`/`bptt_trunc` put the loss (estimators §4.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bptt_loss_state: Option<String>,
    /// `off` (default) or `on` (true/false accepted): the references' float32 casts of the loss in float64 runs
    /// (conventions §11.3, estimators §7 L1).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "on_off")]
    pub reference_casts: Option<String>,
    // -- attention options (hopfield-attention.md) go below this line --
    /// Sequence length L (per sentence for SNLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<i64>,
    /// Embedding dimension d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_dim: Option<i64>,
    /// Inverse temperature c of the attention (default 1/√d for IMDB, 0.16 for SNLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_scale: Option<f64>,
    /// `off` (default), `keys` or `keys_and_queries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_mask: Option<String>,
    /// Architecture graph file (`src/graph.rs`): the model is built from it instead of the preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<String>,
    /// Scripted energy (TorchScript file, docs/scripted.md): the model is Φ written in PyTorch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<String>,
    #[serde(default)]
    pub checks: ChecksConfig,
    /// `epcheck train` (the `-train` presets set the reference's procedure).
    #[serde(default)]
    pub train: TrainConfig,
}

/// Training options (conv-hopfield.md §6, hopfield-attention.md §9, conventions §13).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    /// One rate for every tensor, or one per tensor in canonical order (a list of another length is an error).
    /// A single number (`lr = 0.01`) is the one-rate list.
    #[serde(deserialize_with = "one_or_many")]
    pub lr: Vec<f64>,
    /// η_min of the cosine schedule (`none` schedule: constant rates).
    pub lr_min: f64,
    /// `cosine` or `none`.
    pub lr_schedule: String,
    /// T_max of the cosine schedule (None: the number of epochs). The schedule is stepped only while the
    /// epoch index is below T_max, so the rate stays at η_min afterwards (hopfield-attention.md §9.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_t_max: Option<usize>,
    /// `sgd`, `adam` or `adamw`.
    pub optimizer: String,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Global-norm clip of the estimate (off unless set; 1.0 in the BrainSeek `-train` presets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip_norm: Option<f64>,
    /// `zeros` or `warm` (conventions §5.4).
    pub state_init: String,
    /// `digits`, `cifar10`, `cifar100`, `fashion_mnist`; text: `imdb`, `snli` (hopfield-attention.md §10).
    pub dataset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_root: Option<String>,
    /// Text datasets: the word2vec file (binary or text, optionally gzip) whose vectors embed the tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<String>,
    /// `none`, `flip_crop` or `randaugment` (the dataset's reference pipeline).
    pub augment: String,
    /// Use only the first n training / test examples (0 = all; the `synthetic` dataset: its size, default 64 / 32).
    pub train_limit: usize,
    pub test_limit: usize,
    /// Zero padding at load time (pixels per side), overriding the dataset's default (e.g. 4: 8×8 digits → 16×16
    /// for VGG5, whose input size must be a multiple of 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            lr: vec![0.03],
            lr_min: 2e-6,
            lr_schedule: "cosine".into(),
            lr_t_max: None,
            optimizer: "sgd".into(),
            momentum: 0.9,
            nesterov: true,
            weight_decay: 2.5e-4,
            grad_clip_norm: None,
            state_init: "zeros".into(),
            dataset: "digits".into(),
            data_root: None,
            embeddings: None,
            augment: "none".into(),
            train_limit: 0,
            test_limit: 0,
            pad: None,
        }
    }
}

/// An on/off option: `on`/`off` or a boolean (kept as `on`/`off`; other strings are refused by `validate`).
fn on_off<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        B(bool),
        S(String),
    }
    Ok(Some(match V::deserialize(d)? {
        V::B(b) => if b { "on" } else { "off" }.to_string(),
        V::S(s) => s,
    }))
}

/// A number or a list of numbers, read as a list (`lr = 0.01` and `lr = [0.01]` are the same).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<f64>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<f64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number or a list of numbers")
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Vec<f64>, E> {
            Ok(vec![v])
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Vec<f64>, E> {
            Ok(vec![v as f64])
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Vec<f64>, E> {
            Ok(vec![v as f64])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Vec<f64>, A::Error> {
            let mut out = vec![];
            while let Some(x) = seq.next_element::<f64>()? {
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// The longest run of iterations a phase may be asked for (T, K, `checks.gdu.max_iter`): longer is refused
/// up front rather than run until killed.
pub const MAX_ITERATIONS: i64 = 1_000_000;

/// The largest value of a size key of the conv and attention presets (`height`, `in_channels`, `widths`,
/// `classes`, `seq_len`, `embed_dim`): their products (e.g. n · H · H) stay within i64.
pub const MAX_DIM: i64 = 1 << 20;

fn default_holo_points() -> usize {
    4
}
fn default_prefix() -> String {
    "inclusive".into()
}
fn is_default_prefix(p: &str) -> bool {
    p == "inclusive"
}
fn default_holo_schedule() -> String {
    "restart".into()
}
fn default_one() -> usize {
    1
}
fn default_param_derivative() -> String {
    "local".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksConfig {
    #[serde(default)]
    pub plot_seed: u64,
    /// `svg` (default), `png`, `pdf`, `both` (svg + png), `all`, or a comma-separated list.
    #[serde(default = "default_figure_format")]
    pub figure_format: String,
    /// Panel size `WxH` in px (default 420x320; PNG is drawn at twice this).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub figure_size: String,
    #[serde(default)]
    pub converge: ConvergeConfig,
    #[serde(default)]
    pub gdu: GduConfig,
    #[serde(default)]
    pub bias: BiasConfig,
    #[serde(default)]
    pub refs: RefsConfig,
    #[serde(default)]
    pub local: LocalConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub conformance: ConformanceConfig,
    /// `checks.fuzz` (verify suites of shrunk fuzz cases, docs/fuzz.md).
    #[serde(default, skip_serializing_if = "FuzzCheckConfig::is_unset")]
    pub fuzz: FuzzCheckConfig,
}

/// `checks.fuzz`: the fuzz property a verify suite runs on its instance (`crate::fuzz::PROPERTIES`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FuzzCheckConfig {
    #[serde(default)]
    pub property: String,
}

impl FuzzCheckConfig {
    fn is_unset(&self) -> bool {
        self.property.is_empty()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BiasConfig {
    /// β grid (default: the 1-2-5 grid from 1e-4 to 1).
    #[serde(default = "default_grid")]
    pub grid: Vec<f64>,
    /// Holomorphic N values.
    #[serde(default = "default_n_list", rename = "N")]
    pub n: Vec<usize>,
    /// `implicit` (default), `bptt` or `bptt_trunc`.
    #[serde(default = "default_reference")]
    pub reference: String,
    /// `until_tol` (default) or `fixed` (preset K).
    #[serde(default = "default_nudge")]
    pub nudge: String,
    #[serde(default = "default_consistency_max")]
    pub consistency_max: f64,
    /// Slope tolerance; default max(0.25, 0.1·p).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slope_tol: Option<f64>,
    #[serde(default = "default_r2_min")]
    pub r2_min: f64,
    #[serde(default = "default_err_max")]
    pub err_max: f64,
    #[serde(default = "default_floor_factor")]
    pub floor_factor: f64,
}

fn default_grid() -> Vec<f64> {
    vec![1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
}
fn default_n_list() -> Vec<usize> {
    vec![1, 2, 3, 4, 8]
}
fn default_reference() -> String {
    "implicit".into()
}
fn default_nudge() -> String {
    "until_tol".into()
}
fn default_consistency_max() -> f64 {
    1e-3
}
fn default_r2_min() -> f64 {
    0.98
}
fn default_err_max() -> f64 {
    0.1
}
fn default_floor_factor() -> f64 {
    10.0
}

impl Default for BiasConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefsConfig {
    #[serde(default = "default_fd_tol")]
    pub fd_tol: f64,
    #[serde(default = "default_n_dir")]
    pub n_dir: usize,
    #[serde(default = "default_h")]
    pub h: f64,
    /// Select the step per direction among h·{100, 10, 1, 0.1} by the smallest Richardson error estimate
    /// (default on); off uses h.
    #[serde(default = "default_true")]
    pub h_select: bool,
    /// `converged` (default; compares with implicit) or `fixed_t` (compares with bptt).
    #[serde(default = "default_fd_mode")]
    pub fd_mode: String,
}

fn default_fd_tol() -> f64 {
    1e-6
}
fn default_n_dir() -> usize {
    8
}
fn default_h() -> f64 {
    1e-5
}
fn default_fd_mode() -> String {
    "converged".into()
}

impl Default for RefsConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

fn default_figure_format() -> String {
    "both".into()
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            plot_seed: 0,
            figure_format: default_figure_format(),
            figure_size: String::new(),
            converge: Default::default(),
            gdu: Default::default(),
            bias: Default::default(),
            refs: Default::default(),
            local: Default::default(),
            audit: Default::default(),
            conformance: Default::default(),
            fuzz: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvergeConfig {
    /// Residual tolerance; default 1e-10 (f64) / 1e-5 (f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tol: Option<f64>,
    #[serde(default = "default_power_iters")]
    pub power_iters: usize,
    #[serde(default)]
    pub require_contraction: bool,
    /// Phases to certify besides `free`: any of `plus`, `minus`.
    #[serde(default)]
    pub phases: Vec<String>,
}

fn default_power_iters() -> usize {
    50
}

impl Default for ConvergeConfig {
    fn default() -> Self {
        ConvergeConfig { tol: None, power_iters: 50, require_contraction: false, phases: vec![] }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GduConfig {
    /// `theorem` (default: f64, β = `beta`, extended free phase, scored) or `replay` (preset β, exactly T, info).
    #[serde(default = "default_gdu_mode")]
    pub mode: String,
    /// β of theorem mode.
    #[serde(default = "default_gdu_beta")]
    pub beta: f64,
    #[serde(default = "default_bias_const")]
    pub bias_const: f64,
    #[serde(default = "default_lab_const")]
    pub lab_const: f64,
    /// Fixed τ_sign; default max(1e-3, 10·c·β^p).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_floor: Option<f64>,
    #[serde(default = "default_sign_err_max")]
    pub sign_err_max: f64,
    /// Extend the free phase until stationary, then K more (theorem mode).
    #[serde(default = "default_true")]
    pub extend_free: bool,
    #[serde(default = "default_max_iter")]
    pub max_iter: i64,
    #[serde(default = "default_n_elem")]
    pub n_elem: usize,
    /// EP series drawn in the gdu figure: any of `ep_sym` (default), `ep_plus`, `ep_minus`.
    #[serde(default = "default_plot_series")]
    pub plot_series: Vec<String>,
    /// Tensors and neuron layers drawn in the gdu figure (canonical names; empty: all).
    #[serde(default)]
    pub plot_tensors: Vec<String>,
    /// Also compute the published O(K²) series and report their difference (tiny instances).
    #[serde(default)]
    pub verify_quadratic: bool,
}

fn default_gdu_mode() -> String {
    "theorem".into()
}
fn default_gdu_beta() -> f64 {
    1e-3
}
fn default_bias_const() -> f64 {
    10.0
}
fn default_lab_const() -> f64 {
    100.0
}
fn default_sign_err_max() -> f64 {
    0.01
}
fn default_true() -> bool {
    true
}
fn default_max_iter() -> i64 {
    10_000
}
fn default_plot_series() -> Vec<String> {
    vec!["ep_sym".into()]
}
fn default_n_elem() -> usize {
    3
}

impl Default for GduConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

/// `checks.local` (checks §6, §12).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// rel_linf threshold; default 1e-11 (f64) / 1e-4 (f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tol: Option<f64>,
    /// Number of random test states.
    #[serde(default = "default_three")]
    pub n_rand: usize,
    /// Also test complex states when the model is holomorphic-admissible.
    #[serde(default = "default_true")]
    pub complex: bool,
}

/// `checks.audit` (checks §7, §12).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Threshold of A1–A4 and A6; default 1e-12 (f64) / 1e-5 (f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tol: Option<f64>,
    /// Probe pairs (v, w).
    #[serde(default = "default_pairs")]
    pub pairs: usize,
    #[serde(default = "default_three")]
    pub n_rand: usize,
    /// Threshold of A5 (potential consistency).
    #[serde(default = "default_a5_tol")]
    pub potential_tol: f64,
}

/// `checks.conformance.tol` (checks §10): tolerance classes, `rel_linf`, f64 external vs an f64 run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConformanceTol {
    #[serde(default = "default_tol_state")]
    pub state: f64,
    #[serde(default = "default_tol_grad")]
    pub grad_exact: f64,
    /// Base of the `grad_ep` class; the class threshold is grad_ep + grad_ep_floor_factor · floor_rel.
    #[serde(default = "default_tol_grad")]
    pub grad_ep: f64,
    #[serde(default = "default_grad_ep_floor_factor")]
    pub grad_ep_floor_factor: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConformanceConfig {
    #[serde(default)]
    pub tol: ConformanceTol,
}

fn default_three() -> usize {
    3
}
fn default_pairs() -> usize {
    8
}
fn default_a5_tol() -> f64 {
    1e-10
}
fn default_tol_state() -> f64 {
    1e-12
}
fn default_tol_grad() -> f64 {
    1e-10
}
fn default_grad_ep_floor_factor() -> f64 {
    100.0
}

impl Default for LocalConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}
impl Default for AuditConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}
impl Default for ConformanceTol {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

impl RunConfig {
    /// The defaults of a preset (conventions §14, estimators §1.8).
    pub fn preset_defaults(preset: &str) -> Result<RunConfig> {
        let base = Self::p_mlp_defaults();
        let conv = |activation: &str, t: i64, k: i64| RunConfig {
            preset: preset.into(),
            archi: Vec::new(),
            activation: activation.into(),
            loss: "mse".into(),
            batch: 128,
            t_free: t,
            k_nudge: k,
            beta: 0.1,
            estimator: "ep_centered".into(),
            phase_order: Some("minus_first".into()),
            ..base.clone()
        };
        if let Some(model) = preset.strip_suffix("-train-paper").filter(|m| matches!(*m, "imdb-hopfield" | "snli-hopfield")) {
            // hopfield-attention.md §9.4: the paper's batch sizes and epochs where they differ from the README.
            let mut c = Self::preset_defaults(&format!("{model}-train"))?;
            c.preset = preset.into();
            if model == "imdb-hopfield" {
                c.batch = 128;
                c.train.epochs = 40;
            } else {
                c.batch = 256;
            }
            return Ok(c);
        }
        if let Some(model) = preset.strip_suffix("-train") {
            // The reference's training procedure on top of the model preset (conv-hopfield.md §6).
            let mut c = Self::preset_defaults(model)?;
            c.preset = preset.into();
            if matches!(model, "imdb-hopfield" | "snli-hopfield") {
                // hopfield-attention.md §9 (the README commands): Adam, one rate per synapse, cosine with
                // T_max = 100 and η_min = 1e-5, float32, batches from zeros.
                let imdb = model == "imdb-hopfield";
                c.dtype = "f32".into();
                c.batch = if imdb { 100 } else { 200 };
                c.train.epochs = 50;
                c.train.optimizer = "adam".into();
                c.train.weight_decay = 0.0;
                c.train.lr = if imdb { vec![1e-4, 5e-5, 5e-5, 5e-5] } else { vec![5e-4, 5e-4, 5e-4, 5e-4, 2e-4, 2e-4] };
                c.train.lr_min = 1e-5;
                c.train.lr_schedule = "cosine".into();
                c.train.lr_t_max = Some(100);
                c.train.dataset = if imdb { "imdb" } else { "snli" }.into();
                c.train.state_init = "zeros".into();
                c.train.augment = "none".into();
            } else if model != "p-mlp" {
                c.dtype = "f32".into();
                c.train.epochs = 300;
                c.train.augment = "randaugment".into();
                c.train.dataset = "cifar10".into();
                c.train.state_init = "warm".into();
                if model == "vgg5-dchn-rain" {
                    c.train.nesterov = false;
                    c.train.augment = "flip_crop".into();
                } else {
                    c.train.grad_clip_norm = Some(1.0);
                }
            }
            return Ok(c);
        }
        match preset {
            "p-mlp" => Ok(base),
            // estimators §1.8: the holomorphic reference's Fig. 2a/2c toy.
            "p-mlp-holo-toy" => Ok(RunConfig {
                preset: preset.into(),
                archi: vec![6, 4, 4],
                activation: "logistic4".into(),
                loss: "ce".into(),
                readout: Some("softmax".into()),
                init: Some("trunc_normal".into()),
                init_std: Some(0.5),
                batch: 1,
                t_free: 100,
                k_nudge: 100,
                beta: 0.1,
                estimator: "ep_holomorphic".into(),
                holo_points: 24,
                holo_schedule: "carry".into(),
                holo_conj_shortcut: false,
                ..base
            }),
            // A model from an architecture graph file (`graph = "…"`): the run defaults of p-mlp.
            "graph" => Ok(RunConfig { preset: "graph".into(), ..base }),
            // A scripted energy (`energy = "…"`, docs/scripted.md): the run defaults of p-mlp.
            "energy" => Ok(RunConfig { preset: "energy".into(), ..base }),
            "hopfield-resnet13" | "vgg5-dchn" => Ok(conv("relu6", 120, 50)),
            "vgg5-dchn-rain" => Ok(conv("hard_sigmoid", 60, 20)),
            // hopfield-attention.md §0 (`widths` = the dense widths fc, last = C).
            "imdb-hopfield" | "snli-hopfield" => {
                let imdb = preset == "imdb-hopfield";
                Ok(RunConfig {
                    preset: preset.into(),
                    activation: "my_hard_sig".into(),
                    loss: "mse".into(),
                    schedule: Some("sync".into()),
                    t_free: if imdb { 50 } else { 60 },
                    k_nudge: if imdb { 25 } else { 30 },
                    beta: if imdb { 0.1 } else { 0.5 },
                    estimator: "ep_centered".into(),
                    widths: Some(if imdb { vec![1000, 40, 2] } else { vec![400, 3] }),
                    phase_order: Some("plus_first".into()),
                    seq_len: Some(if imdb { 600 } else { 25 }),
                    embed_dim: Some(300),
                    attention_mask: Some("off".into()),
                    ..base
                })
            }
            other => Err(Error::UnknownPreset(other.into(), crate::model::presets::PRESETS.join(", "))),
        }
    }

    fn p_mlp_defaults() -> RunConfig {
            RunConfig {
                preset: "p-mlp".into(),
                archi: vec![784, 512, 10],
                archi_explicit: false,
                explicit: vec![],
                activation: "tanh".into(),
                loss: "mse".into(),
                schedule: None,
                init_scale: None,
                batch: 20,
                seed: 0,
                t_free: 30,
                k_nudge: 10,
                beta: 0.01,
                estimator: "ep_plus".into(),
                dtype: "f64".into(),
                device: "cpu".into(),
                tol: None,
                holo_points: default_holo_points(),
                holo_schedule: default_holo_schedule(),
                holo_conj_shortcut: true,
                holo_periods: 1,
                prefix: default_prefix(),
                param_derivative: default_param_derivative(),
                star_tol: None,
                adjoint_tol: None,
                height: None,
                in_channels: None,
                widths: None,
                classes: None,
                skips: None,
                gains: None,
                relu_alpha: None,
                phase_order: None,
                input_range: None,
                readout: None,
                init: None,
                init_std: None,
                bptt_loss_state: None,
                reference_casts: None,
                seq_len: None,
                embed_dim: None,
                attention_scale: None,
                attention_mask: None,
                graph: None,
                energy: None,
                checks: ChecksConfig::default(),
                train: TrainConfig::default(),
            }
    }

    /// The "small" sizes of a preset that the benchmarks (`benches/presets.rs`) and the performance board
    /// (`examples/perf.rs`) time: the P-MLP as is; IMDB L = 20, d = 16, 64-16-2; SNLI L = 10, d = 16, 32-3; the conv
    /// nets at H = 16 with widths 16-32-32-64.
    pub fn use_small_sizes(&mut self) {
        match self.preset.as_str() {
            "p-mlp" => {}
            "imdb-hopfield" => {
                self.seq_len = Some(20);
                self.embed_dim = Some(16);
                self.widths = Some(vec![64, 16, 2]);
            }
            "snli-hopfield" => {
                self.seq_len = Some(10);
                self.embed_dim = Some(16);
                self.widths = Some(vec![32, 3]);
            }
            _ => {
                self.height = Some(16);
                self.widths = Some(vec![16, 32, 32, 64]);
            }
        }
    }

    /// Resolves preset defaults ← file ← overrides. `overrides` is a TOML table built from flags.
    pub fn resolve(preset_flag: Option<&str>, file: Option<&Path>, overrides: toml::Table) -> Result<RunConfig> {
        let file_table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
                toml::from_str::<toml::Table>(&text).map_err(|e| Error::file(path, format!("malformed TOML: {}", first_line(&e.to_string()))))?
            }
            None => toml::Table::new(),
        };
        let mut file_table = file_table;
        // A relative graph path in a configuration file is relative to that file.
        if let (Some(path), Some(toml::Value::String(g))) = (file, file_table.get_mut("graph")) {
            if Path::new(g.as_str()).is_relative() {
                *g = path.parent().unwrap_or(Path::new("")).join(g.as_str()).to_string_lossy().to_string();
            }
        }
        if let (Some(path), Some(toml::Value::String(g))) = (file, file_table.get_mut("energy")) {
            if Path::new(g.as_str()).is_relative() {
                *g = path.parent().unwrap_or(Path::new("")).join(g.as_str()).to_string_lossy().to_string();
            }
        }
        let has_energy = file_table.contains_key("energy") || overrides.contains_key("energy");
        let has_graph = file_table.contains_key("graph") || overrides.contains_key("graph");
        for (table, what) in [(&file_table, file.map(|p| p.display().to_string())), (&overrides, None)] {
            if let Some(v) = table.get("preset").filter(|v| !v.is_str()) {
                let where_ = what.map(|w| format!("{w}: ")).unwrap_or_default();
                return Err(Error::Config(format!("{where_}preset must be a string (a preset name such as \"p-mlp\"), got {} {v}", v.type_str())));
            }
        }
        let preset = preset_flag
            .map(str::to_string)
            .or_else(|| overrides.get("preset").and_then(|v| v.as_str()).map(str::to_string))
            .or_else(|| file_table.get("preset").and_then(|v| v.as_str()).map(str::to_string))
            .unwrap_or_else(|| if has_energy { "energy" } else if has_graph { "graph" } else { "p-mlp" }.to_string());
        let defaults = Self::preset_defaults(&preset)?;
        let mut table = toml::Table::try_from(&defaults).map_err(|e| Error::Config(e.to_string()))?;
        let archi_explicit = file_table.contains_key("archi") || overrides.contains_key("archi");
        let mut explicit: Vec<String> = file_table.keys().chain(overrides.keys()).filter(|k| k.as_str() != "preset").cloned().collect();
        explicit.sort();
        explicit.dedup();
        merge(&mut table, file_table);
        merge(&mut table, overrides);
        // `grad_clip_norm` (conventions §13) is the training option train.grad_clip_norm; the top-level name is
        // accepted too (it also defines `grad.ep_centered_clipped` in estimate and compare).
        if let Some(v) = table.remove("grad_clip_norm") {
            let mut t = toml::Table::new();
            t.insert("grad_clip_norm".into(), v);
            let mut tr = toml::Table::new();
            tr.insert("train".into(), toml::Value::Table(t));
            merge(&mut table, tr);
        }
        table.insert("preset".into(), toml::Value::String(preset));
        let cfg: RunConfig = table.try_into().map_err(|e: toml::de::Error| {
            let where_ = file.map(|p| format!("{}: ", p.display())).unwrap_or_default();
            Error::Config(format!("{where_}{}", with_suggestion(&first_line(&e.to_string()))))
        })?;
        let mut cfg = cfg;
        cfg.archi_explicit = archi_explicit;
        cfg.explicit = explicit;
        cfg.validate()?;
        cfg.check_applicable()?;
        Ok(cfg)
    }

    /// The model keys that the model of this configuration reads (docs/verdicts.md, "a flag is applied or
    /// refused"): a model key outside this list that was given explicitly is refused. For a graph, `activation`,
    /// `loss` and `schedule` are set in the graph file: given explicitly they must equal the graph's
    /// (checked in `Instance::build`).
    pub fn applicable_model_keys(&self) -> &'static [&'static str] {
        if self.graph.is_some() || self.energy.is_some() {
            return &["init_scale", "input_range", "activation", "loss", "schedule"];
        }
        let base = self.base_preset();
        match base {
            "p-mlp" => &["archi", "activation", "loss", "schedule", "init_scale", "input_range", "readout", "init", "init_std"],
            "hopfield-resnet13" => &["activation", "loss", "schedule", "init_scale", "input_range", "height", "in_channels", "widths", "classes", "skips", "gains", "relu_alpha"],
            "vgg5-dchn" | "vgg5-dchn-rain" => &["activation", "loss", "schedule", "init_scale", "input_range", "height", "in_channels", "widths", "classes", "gains", "relu_alpha"],
            "imdb-hopfield" | "snli-hopfield" => &["activation", "loss", "schedule", "init_scale", "input_range", "widths", "classes", "seq_len", "embed_dim", "attention_scale", "attention_mask"],
            _ => MODEL_KEYS,
        }
    }

    /// The model preset without its training variant suffix (`-train`, `-train-paper`).
    pub fn base_preset(&self) -> &str {
        if self.preset == "p-mlp-holo-toy" {
            return "p-mlp";
        }
        self.preset.strip_suffix("-train-paper").or_else(|| self.preset.strip_suffix("-train")).unwrap_or(&self.preset)
    }

    /// Refuses a model key given explicitly that the model does not read (it would be recorded but not used).
    pub fn check_applicable(&self) -> Result<()> {
        let ok = self.applicable_model_keys();
        for k in &self.explicit {
            if MODEL_KEYS.contains(&k.as_str()) && !ok.contains(&k.as_str()) {
                let what = if self.energy.is_some() { "a scripted energy (it is set in the module's spec)".to_string() } else if self.graph.is_some() { "a graph model (it is set in the graph file)".to_string() } else { format!("preset {}", self.preset) };
                return Err(Error::Config(format!("{k} does not apply to {what}; the keys that apply: {}", ok.join(", "))));
            }
        }
        Ok(())
    }

    /// The resolved configuration as it is recorded (config.toml, dump metadata): model keys the model does
    /// not read are left out, so the record says exactly what ran.
    pub fn recorded_table(&self) -> toml::Table {
        let mut t = toml::Table::try_from(self).expect("config serialises");
        let ok = self.applicable_model_keys();
        for k in MODEL_KEYS {
            if !ok.contains(k) {
                t.remove(*k);
            }
        }
        t
    }

    pub fn recorded_json(&self) -> String {
        serde_json::to_string(&self.recorded_table()).expect("config serialises")
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let t = &self.train;
        if t.epochs < 1 {
            return bad("train.epochs must be ≥ 1".into());
        }
        if t.lr.is_empty() || t.lr.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return bad(format!("train.lr must be one rate or a list of rates ≥ 0, got {:?}", t.lr));
        }
        if !(t.lr_min.is_finite() && t.lr_min >= 0.0) || !(0.0..1.0).contains(&t.momentum) || !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return bad(format!("train: need lr_min ≥ 0, 0 ≤ momentum < 1, weight_decay ≥ 0 (got {}, {}, {})", t.lr_min, t.momentum, t.weight_decay));
        }
        if let Some(c) = t.grad_clip_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("train.grad_clip_norm must be > 0, got {c}"));
            }
        }
        if t.lr_t_max == Some(0) {
            return bad("train.lr_t_max must be ≥ 1".into());
        }
        for (k, v, ok) in [
            ("train.state_init", &t.state_init, &["zeros", "warm"][..]),
            ("train.lr_schedule", &t.lr_schedule, &["cosine", "none"][..]),
            ("train.optimizer", &t.optimizer, &["sgd", "adam", "adamw"][..]),
            ("train.augment", &t.augment, &["none", "flip_crop", "randaugment"][..]),
        ] {
            if !ok.contains(&v.as_str()) {
                return bad(format!("{k} must be one of {}, got '{v}'", ok.join(", ")));
            }
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return bad(format!("beta must be a finite number > 0 (it is the nudge magnitude), got {}", self.beta));
        }
        if self.t_free < 1 || self.k_nudge < 1 {
            return bad(format!("T and K must be ≥ 1, got T = {}, K = {}", self.t_free, self.k_nudge));
        }
        for (k, v) in [("T (t_free)", self.t_free), ("K (k_nudge)", self.k_nudge), ("checks.gdu.max_iter", self.checks.gdu.max_iter)] {
            if v > MAX_ITERATIONS {
                return bad(format!("{k} = {v} exceeds the limit of {MAX_ITERATIONS} iterations per phase"));
            }
        }
        if self.checks.gdu.max_iter < 1 {
            return bad(format!("checks.gdu.max_iter must be ≥ 1, got {}", self.checks.gdu.max_iter));
        }
        let mut dims: Vec<(&str, i64)> = [("height", self.height), ("in_channels", self.in_channels), ("classes", self.classes), ("seq_len", self.seq_len), ("embed_dim", self.embed_dim)].into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
        dims.extend(self.widths.iter().flatten().map(|&v| ("widths", v)));
        for (k, v) in dims {
            if !(1..=MAX_DIM).contains(&v) {
                return bad(format!("{k} = {v} is out of range: sizes must be between 1 and {MAX_DIM}"));
            }
        }
        if let Some(&a) = self.archi.iter().find(|&&a| a < 1) {
            return bad(format!("archi: layer sizes must be ≥ 1, got {a} in {:?}", self.archi));
        }
        if self.seed > i64::MAX as u64 {
            return bad(format!("seed must be ≤ {} (i64::MAX, libtorch's seed range), got {}", i64::MAX, self.seed));
        }
        if self.checks.refs.n_dir < 1 {
            return bad("checks.refs.n_dir (--n-dir) must be ≥ 1, got 0".into());
        }
        if !["inclusive", "exclusive"].contains(&self.prefix.as_str()) {
            return bad(format!("prefix must be inclusive or exclusive, got '{}'", self.prefix));
        }
        if self.holo_periods < 1 {
            return bad("holo_periods must be ≥ 1, got 0".into());
        }
        let opt_pos = [
            ("star_tol", self.star_tol),
            ("adjoint_tol", self.adjoint_tol),
            ("checks.bias.slope_tol", self.checks.bias.slope_tol),
            ("checks.gdu.sign_floor", self.checks.gdu.sign_floor),
        ];
        for (k, v) in [("init_scale", self.init_scale), ("attention_scale", self.attention_scale)] {
            if let Some(v) = v.filter(|v| !v.is_finite()) {
                return bad(format!("{k} must be a finite number, got {v}"));
            }
        }
        for (k, v) in opt_pos {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return bad(format!("{k} must be a finite number > 0, got {v}"));
                }
            }
        }
        if self.batch < 1 {
            return bad(format!("batch must be ≥ 1, got {}", self.batch));
        }
        if let Some(t) = self.tol {
            if !(t.is_finite() && t > 0.0) {
                return bad(format!("tol must be > 0, got {t}"));
            }
        }
        let g = &self.checks.gdu;
        for (k, v) in [("checks.gdu.beta", g.beta), ("checks.gdu.bias_const", g.bias_const), ("checks.gdu.lab_const", g.lab_const)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{k} must be a finite number > 0, got {v}"));
            }
        }
        if !(0.0..=1.0).contains(&g.sign_err_max) {
            return bad(format!("checks.gdu.sign_err_max must be in [0, 1], got {}", g.sign_err_max));
        }
        if !["theorem", "replay"].contains(&g.mode.as_str()) {
            return bad(format!("checks.gdu.mode must be theorem or replay, got '{}'", g.mode));
        }
        if let Some(t) = self.checks.converge.tol {
            if !(t.is_finite() && t > 0.0) {
                return bad(format!("checks.converge.tol must be > 0, got {t}"));
            }
        }
        if let Err(e) = crate::report::style::FigureOptions::parse(&self.checks.figure_format, &self.checks.figure_size) {
            return Err(e);
        }
        if let Some(s) = self.checks.gdu.plot_series.iter().find(|s| !["ep_sym", "ep_plus", "ep_minus"].contains(&s.as_str())) {
            return bad(format!("checks.gdu.plot_series: '{s}' is not one of ep_sym, ep_plus, ep_minus"));
        }
        for p in &self.checks.converge.phases {
            if !["plus", "minus"].contains(&p.as_str()) {
                return bad(format!("checks.converge.phases: unknown phase '{p}' (known: plus, minus)"));
            }
        }
        if self.holo_points < 1 {
            return bad(format!("holo_points (N) must be ≥ 1, got {}", self.holo_points));
        }
        if !["restart", "carry"].contains(&self.holo_schedule.as_str()) {
            return bad(format!("holo_schedule must be restart or carry, got '{}'", self.holo_schedule));
        }
        if self.holo_schedule == "carry" && self.holo_points < 2 {
            return bad("holo_schedule = carry needs holo_points (N) ≥ 2".into());
        }
        if !["local", "autograd"].contains(&self.param_derivative.as_str()) {
            return bad(format!("param_derivative must be local or autograd, got '{}'", self.param_derivative));
        }
        let b = &self.checks.bias;
        if b.grid.is_empty() || b.grid.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
            return bad(format!("checks.bias.grid must be a non-empty list of β > 0, got {:?}", b.grid));
        }
        if b.n.iter().any(|&n| n < 1) {
            return bad(format!("checks.bias.N values must be ≥ 1, got {:?}", b.n));
        }
        if !["implicit", "bptt", "bptt_trunc"].contains(&b.reference.as_str()) {
            return bad(format!("checks.bias.reference must be implicit, bptt or bptt_trunc, got '{}'", b.reference));
        }
        if !["until_tol", "fixed"].contains(&b.nudge.as_str()) {
            return bad(format!("checks.bias.nudge must be until_tol or fixed, got '{}'", b.nudge));
        }
        if !(b.r2_min >= 0.0 && b.r2_min <= 1.0) {
            return bad(format!("checks.bias.r2_min must be in [0, 1], got {}", b.r2_min));
        }
        for (k, v) in [("checks.bias.consistency_max", b.consistency_max), ("checks.bias.err_max", b.err_max), ("checks.bias.floor_factor", b.floor_factor), ("checks.refs.fd_tol", self.checks.refs.fd_tol), ("checks.refs.h", self.checks.refs.h)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{k} must be a finite number > 0, got {v}"));
            }
        }
        if !["converged", "fixed_t"].contains(&self.checks.refs.fd_mode.as_str()) {
            return bad(format!("checks.refs.fd_mode must be converged or fixed_t, got '{}'", self.checks.refs.fd_mode));
        }
        self.validate_certification()?;
        self.validate_readout_options()?;
        crate::precision::Dtype::parse(&self.dtype)?;
        crate::precision::DeviceChoice::parse(&self.device)?;
        Ok(())
    }

    /// `readout`, `init`, `init_std`, `bptt_loss_state`, `reference_casts`: one of their values, with a
    /// did-you-mean suggestion for a typo.
    fn validate_readout_options(&self) -> Result<()> {
        let keyed: [(&str, Option<&String>, &[&str]); 4] = [
            ("readout", self.readout.as_ref(), &["none", "softmax"]),
            ("init", self.init.as_ref(), &["pytorch_linear", "trunc_normal"]),
            ("bptt_loss_state", self.bptt_loss_state.as_ref(), &["final", "previous"]),
            ("reference_casts", self.reference_casts.as_ref(), &["off", "on"]),
        ];
        for (k, v, ok) in keyed {
            let Some(v) = v else { continue };
            if !ok.contains(&v.as_str()) {
                let hint = closest(v, ok.iter().copied()).map(|c| format!("; did you mean '{c}'?")).unwrap_or_default();
                return Err(Error::Config(format!("{k} = '{v}' is not one of {}{hint}", ok.join(", "))));
            }
        }
        if let Some(s) = self.init_std {
            if !(s.is_finite() && s > 0.0) {
                return Err(Error::Config(format!("init_std must be a finite number > 0, got {s}")));
            }
        }
        match (self.init.as_deref(), self.init_std) {
            (Some("trunc_normal"), None) => return Err(Error::Config("init = 'trunc_normal' needs init_std (σ₀ of the truncated normal)".into())),
            (Some("pytorch_linear") | None, Some(_)) => return Err(Error::Config("init_std applies only with init = 'trunc_normal'".into())),
            _ => {}
        }
        Ok(())
    }

    /// Whether `reference_casts` is on.
    pub fn reference_casts_on(&self) -> bool {
        self.reference_casts.as_deref() == Some("on")
    }

    /// Ranges of the `local`, `audit` and `conformance` keys.
    fn validate_certification(&self) -> Result<()> {
        let c = &self.checks;
        let t = &c.conformance.tol;
        let mut pos = vec![("checks.audit.potential_tol", c.audit.potential_tol), ("checks.conformance.tol.state", t.state), ("checks.conformance.tol.grad_exact", t.grad_exact), ("checks.conformance.tol.grad_ep", t.grad_ep)];
        if let Some(x) = c.local.tol {
            pos.push(("checks.local.tol", x));
        }
        if let Some(x) = c.audit.tol {
            pos.push(("checks.audit.tol", x));
        }
        for (k, v) in pos {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::Config(format!("{k} must be a finite number > 0, got {v}")));
            }
        }
        if !(t.grad_ep_floor_factor.is_finite() && t.grad_ep_floor_factor >= 0.0) {
            return Err(Error::Config(format!("checks.conformance.tol.grad_ep_floor_factor must be ≥ 0, got {}", t.grad_ep_floor_factor)));
        }
        if c.audit.pairs < 1 {
            return Err(Error::Config("checks.audit.pairs must be ≥ 1".into()));
        }
        Ok(())
    }

    /// `checks.local.tol`, else 1e-11 (f64) / 1e-4 (f32).
    pub fn local_tol(&self) -> f64 {
        self.checks.local.tol.unwrap_or(match self.dtype() {
            crate::precision::Dtype::F64 => 1e-11,
            crate::precision::Dtype::F32 => 1e-4,
        })
    }

    /// `checks.audit.tol`, else 1e-12 (f64) / 1e-5 (f32).
    pub fn audit_tol(&self) -> f64 {
        self.checks.audit.tol.unwrap_or(match self.dtype() {
            crate::precision::Dtype::F64 => 1e-12,
            crate::precision::Dtype::F32 => 1e-5,
        })
    }

    pub fn dtype(&self) -> crate::precision::Dtype {
        crate::precision::Dtype::parse(&self.dtype).expect("validated")
    }

    /// Convergence tolerance of checks: `checks.converge.tol`, else 1e-10 (f64) / 1e-5 (f32).
    pub fn converge_tol(&self) -> f64 {
        self.checks.converge.tol.unwrap_or(match self.dtype() {
            crate::precision::Dtype::F64 => 1e-10,
            crate::precision::Dtype::F32 => 1e-5,
        })
    }

    pub fn implicit_options(&self) -> crate::estimators::implicit::ImplicitOptions {
        let mut o = crate::estimators::implicit::ImplicitOptions::for_dtype(self.dtype());
        if let Some(t) = self.star_tol {
            o.star_tol = t;
        }
        if let Some(t) = self.adjoint_tol {
            o.adjoint_tol = t;
        }
        o
    }

    pub fn holo_options(&self, n: usize) -> crate::estimators::ep_holomorphic::HoloOptions {
        use crate::estimators::ep_holomorphic::{HoloOptions, HoloSchedule};
        HoloOptions {
            n,
            schedule: if self.holo_schedule == "carry" { HoloSchedule::Carry } else { HoloSchedule::Restart },
            shortcut: self.holo_conj_shortcut && self.holo_schedule == "restart",
            periods: self.holo_periods,
            carry_from_zeros: false,
            carry_last_only: false,
            autograd: self.param_derivative == "autograd",
            keep_points: false,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.recorded_table()).expect("config serialises")
    }
}

/// Edit distance with adjacent transpositions counted as one edit (optimal string alignment, `strsim`), so that
/// `mnsit` is one edit from `mnist`: for "did you mean" suggestions (unknown config keys, presets, datasets,
/// compare's unmapped keys).
pub fn edit_distance(a: &str, b: &str) -> usize {
    strsim::osa_distance(a, b)
}

/// The closest of `candidates` to `word`, if it is close enough to be a plausible typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&w, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.chars().count().max(w.chars().count()) / 3).max(1) || c.to_lowercase().contains(&w) && w.len() >= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Appends "did you mean `x`?" to serde's "unknown field `y`, expected one of `a`, `b`, …" message.
fn with_suggestion(msg: &str) -> String {
    let Some(rest) = msg.split("unknown field `").nth(1) else { return msg.to_string() };
    let Some((field, tail)) = rest.split_once('`') else { return msg.to_string() };
    let candidates: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    match closest(field, candidates.iter().copied()) {
        Some(c) => format!("{msg}; did you mean `{c}`?"),
        None => msg.to_string(),
    }
}

fn first_line(s: &str) -> String {
    s.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" ").replace("  ", " ")
}

/// Deep merge of TOML tables: values of `over` replace those of `base`, tables merge recursively.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Parses `a.b.c=value` into a nested table; the value is read as TOML, or as a string if that fails.
pub fn parse_set(kv: &str) -> Result<toml::Table> {
    let (key, val) = kv.split_once('=').ok_or_else(|| Error::Config(format!("--set expects key=value, got '{kv}'")))?;
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {val}")) {
        Ok(mut t) => t.remove("v").expect("key v"),
        Err(_) => toml::Value::String(val.to_string()),
    };
    let mut parts: Vec<&str> = key.trim().split('.').collect();
    let last = parts.pop().filter(|s| !s.is_empty()).ok_or_else(|| Error::Config(format!("--set: empty key in '{kv}'")))?;
    let mut table = toml::Table::new();
    table.insert(last.to_string(), value);
    for p in parts.into_iter().rev() {
        let mut outer = toml::Table::new();
        outer.insert(p.to_string(), toml::Value::Table(table));
        table = outer;
    }
    Ok(table)
}
