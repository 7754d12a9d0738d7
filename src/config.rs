//! Run configuration: preset defaults, then a TOML file, then command-line flags (`--set key=value` for any
//! key), merged as TOML tables and validated once. Keys follow the option registry (conventions §13) and the
//! check keys of `checks.md` §12. The resolved configuration is written into every run folder.
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub preset: String,
    /// Layer sizes [n_0, …, n_L] (P-MLP).
    pub archi: Vec<i64>,
    /// Whether `archi` was given explicitly (file or flag), not taken from the preset defaults.
    #[serde(skip)]
    pub archi_explicit: bool,
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
    #[serde(default)]
    pub checks: ChecksConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksConfig {
    #[serde(default)]
    pub plot_seed: u64,
    /// `svg` (default), `png`, or `both`.
    #[serde(default = "default_figure_format")]
    pub figure_format: String,
    #[serde(default)]
    pub converge: ConvergeConfig,
    #[serde(default)]
    pub gdu: GduConfig,
}

fn default_figure_format() -> String {
    "both".into()
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig { plot_seed: 0, figure_format: default_figure_format(), converge: Default::default(), gdu: Default::default() }
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
fn default_n_elem() -> usize {
    3
}

impl Default for GduConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

impl RunConfig {
    /// The defaults of a preset (conventions §14, estimators §1.8).
    pub fn preset_defaults(preset: &str) -> Result<RunConfig> {
        match preset {
            "p-mlp" => Ok(RunConfig {
                preset: preset.into(),
                archi: vec![784, 512, 10],
                archi_explicit: false,
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
                checks: ChecksConfig::default(),
            }),
            other => Err(Error::UnknownPreset(other.into(), crate::model::presets::PRESETS.join(", "))),
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
        let preset = preset_flag
            .map(str::to_string)
            .or_else(|| file_table.get("preset").and_then(|v| v.as_str()).map(str::to_string))
            .unwrap_or_else(|| "p-mlp".to_string());
        let defaults = Self::preset_defaults(&preset)?;
        let mut table = toml::Table::try_from(&defaults).map_err(|e| Error::Config(e.to_string()))?;
        let archi_explicit = file_table.contains_key("archi") || overrides.contains_key("archi");
        merge(&mut table, file_table);
        merge(&mut table, overrides);
        table.insert("preset".into(), toml::Value::String(preset));
        let cfg: RunConfig = table.try_into().map_err(|e: toml::de::Error| {
            let where_ = file.map(|p| format!("{}: ", p.display())).unwrap_or_default();
            Error::Config(format!("{where_}{}", first_line(&e.to_string())))
        })?;
        let mut cfg = cfg;
        cfg.archi_explicit = archi_explicit;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return bad(format!("beta must be a finite number > 0 (it is the nudge magnitude), got {}", self.beta));
        }
        if self.t_free < 1 || self.k_nudge < 1 {
            return bad(format!("T and K must be ≥ 1, got T = {}, K = {}", self.t_free, self.k_nudge));
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
        if !["svg", "png", "both"].contains(&self.checks.figure_format.as_str()) {
            return bad(format!("checks.figure_format must be svg, png or both, got '{}'", self.checks.figure_format));
        }
        for p in &self.checks.converge.phases {
            if !["plus", "minus"].contains(&p.as_str()) {
                return bad(format!("checks.converge.phases: unknown phase '{p}' (known: plus, minus)"));
            }
        }
        crate::precision::Dtype::parse(&self.dtype)?;
        crate::precision::DeviceChoice::parse(&self.device)?;
        Ok(())
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

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
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
