//! `conformance` (checks §10): another implementation's tensors (safetensors or npz) are recomputed by
//! epcheck from the same parameters and input and compared per key (`rel_linf` against the key's tolerance
//! class), and trajectories are replayed from the external initial state to find the first point of
//! divergence and separate genuine one-step discrepancies from amplified round-off.
//!
//! External names are mapped to canonical names (conventions §12) by an optional name map (TOML):
//!
//! ```toml
//! [names]
//! W0 = "param.synapses.0.weight"                    # theirs = ours
//! "fc1/w" = { key = "param.synapses.0.weight", transforms = ["transpose(0, 1)"] }
//! notes = "-"                                        # not compared
//! [run]                                              # run options the producer used (config keys)
//! t_free = 40
//! ```
//!
//! Transforms are applied to the **epcheck** tensor to bring it into the external layout. Keys without an
//! entry are read under the canonical names and the aliases of conventions §12.1.
use super::metrics as mx;
use super::{CheckReport, Rows, Verdict};
use crate::config::RunConfig;
use crate::estimators::{self, bptt, implicit, Estimator, PhaseLengths};
use crate::instance::{instance_id, Instance};
use crate::model::{Batch, Model, State};
use crate::precision::{DeviceChoice, Dtype, Precision};
use crate::relax::{relax, RelaxOptions};
use crate::tensor_util::{all_finite, norm2, to_vec_f64};
use crate::{Error, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// Reads safetensors or npz (by content: a zip archive starts with "PK").
pub fn read_external(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let head = {
        let mut f = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
        let mut b = [0u8; 2];
        use std::io::Read;
        let _ = f.read(&mut b);
        b
    };
    let npz_name = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    if head == *b"PK" || npz_name {
        super::npz::read_npz(path)
    } else {
        crate::io::read_tensors(path)
    }
}

/// One mapping entry of a name map.
#[derive(Clone, Debug)]
pub struct MapEntry {
    pub key: String,
    pub transforms: Vec<String>,
}

/// A parsed name map: external key → entry (`None` = not compared), plus run options.
#[derive(Clone, Debug, Default)]
pub struct NameMap {
    pub names: BTreeMap<String, Option<MapEntry>>,
    pub run: toml::Table,
    /// Prefix rules of a built-in map (`BPTT.` → `gdu.bptt.`), applied to keys without an exact entry, before the
    /// aliases of conventions §12.1.
    pub prefixes: Vec<(String, String)>,
    /// Name rule of a built-in map (a reference's own object names, e.g. Haiku's `xphi/~/fc_1/w`): external key →
    /// (canonical key, transforms), applied to keys without an exact entry, before the prefixes.
    pub resolver: Option<fn(&str) -> Option<(String, Vec<String>)>>,
    /// A metrics-only map (checks §10, `ernoult_gdu`): the file pairs BPTT and EP series that epcheck does not
    /// recompute (the reference's models are not implemented); `compare` scores the pairs against each other.
    pub metrics_only: bool,
}

/// The built-in name maps (docs/interop.md gives the Python lines that make a matching dump).
pub const BUILTIN_MAPS: [&str; 6] = ["laborieux_state_dict", "laborieux_check_gdu", "seqlearning_check_gdu", "holomorphic_xp_mlp", "brainseek_hopfield_resnet13", "ernoult_gdu"];

/// Replaces the last dot-separated component of `key` by `f(last)`; a bare key gets `bare_prefix`.
fn rename_last(key: &str, bare_prefix: &str, f: impl Fn(&str) -> Option<String>) -> Option<String> {
    match key.rsplit_once('.') {
        Some((head, last)) => f(last).map(|n| format!("{head}.{n}")),
        None => f(key).map(|n| format!("{bare_prefix}{n}")),
    }
}

/// `holomorphic_xp_mlp`: Haiku `xphi/~/fc_<i>/w` (in, out) ↔ `synapses.<i−1>.weight` with `transpose(0, 1)`
/// (`transpose(1, 2)` in a per-step series), `xphi/~/fc_<i>/b` ↔ `synapses.<i−1>.bias`; under any prefix
/// (`grad.ep_plus.xphi/~/fc_1/w`).
fn resolve_haiku_xp_mlp(key: &str) -> Option<(String, Vec<String>)> {
    let at = key.find("xphi/~/fc_")?;
    let (head, tail) = key.split_at(at);
    let rest = &tail["xphi/~/fc_".len()..];
    let (i, what) = rest.split_once('/')?;
    let i: usize = i.parse().ok().filter(|&i| i >= 1)?;
    let series = head.starts_with("gdu.");
    let (name, tr) = match what {
        "w" => (format!("synapses.{}.weight", i - 1), vec![if series { "transpose(1, 2)" } else { "transpose(0, 1)" }.to_string()]),
        "b" => (format!("synapses.{}.bias", i - 1), vec![]),
        _ => return None,
    };
    let head = if head.is_empty() { "param." } else { head };
    Some((format!("{head}{name}"), tr))
}

/// `brainseek_hopfield_resnet13`: the Scaling-EP code's object names. `Bias_<k>` ↔ `b.L<k+1>`, `ConvWeight_<j>` ↔
/// the j-th convolutional edge, `DenseWeight_0` ↔ `W.8_9` (its creation order is epcheck's canonical order),
/// `Layer_<k>` ↔ `L<k>` (`Layer_0`, the input, ↔ `input.x`); bare names are parameters, `<group>.<name>` keeps the
/// group (`grad.ep_centered.Bias_0` → `grad.ep_centered.b.L1`, `state.free.Layer_3` → `state.free.L3`).
fn resolve_brainseek_resnet13(key: &str) -> Option<(String, Vec<String>)> {
    const EDGES: [&str; 12] = ["W.0_1", "W.1_2", "W.0_2", "W.2_3", "W.2_4", "W.3_4", "W.4_5", "W.4_6", "W.5_6", "W.6_7", "W.6_8", "W.7_8"];
    if key == "Layer_0" {
        return Some(("input.x".into(), vec![]));
    }
    let name = |last: &str| -> Option<String> {
        let num = |p: &str| last.strip_prefix(p).and_then(|n| n.parse::<usize>().ok());
        if let Some(k) = num("Bias_").filter(|&k| k < 9) {
            Some(format!("b.L{}", k + 1))
        } else if let Some(j) = num("ConvWeight_") {
            EDGES.get(j).map(|e| e.to_string())
        } else if num("DenseWeight_") == Some(0) {
            Some("W.8_9".into())
        } else {
            num("Layer_").filter(|&k| k >= 1).map(|k| format!("L{k}"))
        }
    };
    rename_last(key, "param.", name).map(|c| (c, vec![]))
}

/// `ernoult_gdu` (metrics only): the Ernoult code's series `NT.<w>`, `DT.<w>` (cumulative, weights) and `nS.<i>`,
/// `dS.<i>` (per step, batch-summed neurons, layer i counted from the output) are paired with each other.
pub fn ernoult_pairs(keys: &[String]) -> Vec<(String, String, &'static str)> {
    let mut v = vec![];
    for k in keys {
        if let Some(rest) = k.strip_prefix("NT.") {
            let d = format!("DT.{rest}");
            if keys.contains(&d) {
                v.push((k.clone(), d, "cum"));
            }
        } else if let Some(rest) = k.strip_prefix("nS.") {
            let d = format!("dS.{rest}");
            if keys.contains(&d) {
                v.push((k.clone(), d, "step"));
            }
        }
    }
    v
}

/// A built-in name map by name.
pub fn builtin_map(name: &str) -> Option<NameMap> {
    let mut m = NameMap::default();
    match name {
        // Laborieux et al. 2021, `model.state_dict()` saved with safetensors: `synapses.<k>.weight|bias` are
        // epcheck's canonical P-MLP names already.
        "laborieux_state_dict" => {}
        // Its `check_gdu` dictionaries BPTT, EP (the +β series) and EP_2 (the −β series), saved as
        // `BPTT.<name>`, `EP.<name>`, `EP_2.<name>`; `neurons_<i>` is layer L<i+1> (an alias).
        // The sequence-learning code's `check_gdu` is Laborieux's: the same dictionaries, `neurons_0` the attention
        // layer.
        "laborieux_check_gdu" | "seqlearning_check_gdu" => {
            m.prefixes = vec![("BPTT.".into(), "gdu.bptt.".into()), ("EP_2.".into(), "gdu.ep_minus.".into()), ("EP.".into(), "gdu.ep_plus.".into())];
        }
        // The holomorphic-EP JAX code's `xp_mlp`: Haiku names, softmax readout with cross-entropy; its BPTT loss
        // reads out s_{T−1} (estimators §4.1, quirk H2).
        "holomorphic_xp_mlp" => {
            m.resolver = Some(resolve_haiku_xp_mlp);
            for (k, v) in [("loss", "ce"), ("readout", "softmax"), ("bptt_loss_state", "previous")] {
                m.run.insert(k.into(), toml::Value::String(v.into()));
            }
        }
        "brainseek_hopfield_resnet13" => m.resolver = Some(resolve_brainseek_resnet13),
        "ernoult_gdu" => m.metrics_only = true,
        _ => return None,
    }
    Some(m)
}

/// Reads a name map file, or a built-in map by name ([`BUILTIN_MAPS`]).
pub fn read_name_map(path: &Path) -> Result<NameMap> {
    if !path.exists() {
        if let Some(m) = path.to_str().and_then(builtin_map) {
            return Ok(m);
        }
        return Err(Error::file(path, format!("no such file, and not a built-in name map ({})", BUILTIN_MAPS.join(", "))));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let t: toml::Table = toml::from_str(&text).map_err(|e| Error::file(path, format!("malformed TOML: {}", e.to_string().lines().next().unwrap_or(""))))?;
    let mut map = NameMap::default();
    for (k, v) in t {
        match (k.as_str(), v) {
            ("names", toml::Value::Table(names)) => {
                for (theirs, ours) in names {
                    let e = match ours {
                        toml::Value::String(s) if s == "-" => None,
                        toml::Value::String(s) => Some(MapEntry { key: s, transforms: vec![] }),
                        toml::Value::Table(tb) => {
                            let key = tb.get("key").and_then(|x| x.as_str()).ok_or_else(|| Error::file(path, format!("names.{theirs}: a table entry needs key = \"…\"")))?;
                            let transforms = match tb.get("transforms") {
                                None => vec![],
                                Some(toml::Value::Array(a)) => a.iter().map(|x| x.as_str().map(str::to_string).ok_or_else(|| Error::file(path, format!("names.{theirs}.transforms: strings expected")))).collect::<Result<_>>()?,
                                Some(_) => return Err(Error::file(path, format!("names.{theirs}.transforms must be a list of strings"))),
                            };
                            for tr in &transforms {
                                parse_transform(tr).map_err(|m| Error::file(path, format!("names.{theirs}: {m}")))?;
                            }
                            Some(MapEntry { key: key.to_string(), transforms })
                        }
                        _ => return Err(Error::file(path, format!("names.{theirs}: expected a canonical name, \"-\" or a table"))),
                    };
                    map.names.insert(theirs, e);
                }
            }
            ("run", toml::Value::Table(run)) => map.run = run,
            (other, _) => return Err(Error::file(path, format!("unknown section '{other}' (known: names, run)"))),
        }
    }
    Ok(map)
}

/// Canonical name of an external key under the aliases of conventions §12.1 (model-independent part).
pub fn canonical_alias(key: &str) -> String {
    let lname = |s: &str| -> String {
        match s.strip_prefix('s').and_then(|k| k.parse::<usize>().ok()) {
            Some(k) => format!("L{k}"),
            None => s.to_string(),
        }
    };
    match key {
        "x" => return "input.x".into(),
        "y" => return "input.y".into(),
        "input.target_onehot" => return "input.y_onehot".into(),
        "free.phi_traj" => return "phi_traj.free".into(),
        _ => {}
    }
    for (pre, phase) in [("free.traj.", "free"), ("nudge_pos.traj.", "plus"), ("nudge_neg.traj.", "minus")] {
        if let Some(rest) = key.strip_prefix(pre) {
            return format!("traj.{phase}.{}", lname(rest));
        }
    }
    if let Some(rest) = key.strip_prefix("free.dphi_ds.") {
        return format!("drive.free.{}", lname(rest));
    }
    for (pre, canon) in [
        ("ep.two_phase_neg.", "grad.ep_minus."),
        ("ep.two_phase.", "grad.ep_plus."),
        ("ep.three_phase.", "grad.ep_centered."),
        ("bptt.full.", "grad.bptt."),
        ("bptt.trunc.", "grad.bptt_trunc."),
        ("grad.bptt_free.", "grad.bptt."),
        ("cost.", "loss."),
    ] {
        if let Some(rest) = key.strip_prefix(pre) {
            return format!("{canon}{rest}");
        }
    }
    // SeqLearning-style GDU series: `gdu.ep.<p>` / `gdu.ep_neg.<p>`, `gdu.<series>.neurons_<j>` (0-based j).
    if let Some(rest) = key.strip_prefix("gdu.") {
        if let Some((series, tail)) = rest.split_once('.') {
            let (series, tail) = seq_gdu_alias(series, tail);
            return format!("gdu.{series}.{tail}");
        }
    }
    // Conv-reference layout: `grad.ep_conv_beta<β>.<p>` → `grad.ep_centered@<β>.<p>`.
    if let Some(rest) = key.strip_prefix("grad.ep_conv_beta") {
        for (j, _) in rest.match_indices('.') {
            if rest[..j].parse::<f64>().is_ok() {
                return format!("grad.ep_centered@{}.{}", &rest[..j], &rest[j + 1..]);
            }
        }
    }
    // `s<k>` as a layer name in state/traj/drive keys.
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() == 3 && ["state", "traj", "drive"].contains(&parts[0]) {
        return format!("{}.{}.{}", parts[0], parts[1], lname(parts[2]));
    }
    key.to_string()
}

/// The sequence-learning code's GDU names: series `ep`/`ep_neg` are `ep_plus`/`ep_minus`, and `neurons_<j>`
/// (0-based) is layer `L<j+1>`; anything else is kept.
fn seq_gdu_alias<'a>(series: &'a str, tail: &str) -> (&'a str, String) {
    let series = match series {
        "ep" => "ep_plus",
        "ep_neg" => "ep_minus",
        s => s,
    };
    let tail = match tail.strip_prefix("neurons_").and_then(|j| j.parse::<usize>().ok()) {
        Some(j) => format!("neurons.L{}", j + 1),
        None => tail.to_string(),
    };
    (series, tail)
}

/// What a canonical key asks epcheck to recompute.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Param(usize),
    InputX,
    InputY,
    InputOnehot,
    State(String, usize),
    Traj(String, usize),
    Drive(String, usize),
    DPhi(String, usize, f64),
    Grad(String, Option<f64>, usize),
    PerExample(String, String),
    PhiTraj(String),
    /// A per-step GDU parameter series (K, parameter shape): series, β (None = the run's), parameter.
    GduParam(String, Option<f64>, usize),
    /// A per-step GDU neuron series (K, B, layer shape).
    GduNeurons(String, Option<f64>, usize),
    /// Slice n of a trajectory (the conv-reference layout `traj.<phase>.t<n>.<l>`).
    TrajSlice(String, usize, i64),
    /// The last K + 1 free states s_{T−K} … s_T (`traj_window.free.<l>`, written by `gdu --dump`).
    TrajWindow(usize),
    /// `async2` half states (`traj.<phase>.half.<l>`, (n, B, …)): after the group-A update of iteration t + 1.
    TrajHalf(String, usize),
    /// One half state (`traj.<phase>.half<n>.<l>`, the conv-reference layout): slice n − 1 of the above.
    TrajHalfSlice(String, usize, i64),
}

impl Target {
    /// Tolerance class (checks §10).
    pub fn class(&self) -> &'static str {
        match self {
            Target::Param(_) => "param",
            Target::InputX | Target::InputY | Target::InputOnehot => "input",
            Target::Grad(e, _, _) if e.starts_with("ep_") => "grad_ep",
            Target::Grad(..) => "grad_exact",
            Target::GduParam(s, _, _) | Target::GduNeurons(s, _, _) if s.starts_with("ep_") => "grad_ep",
            Target::GduParam(..) | Target::GduNeurons(..) => "grad_exact",
            _ => "state",
        }
    }
}

const PHASES: [&str; 5] = ["init", "free", "plus", "minus", "star"];

/// Parses a canonical key against the model's parameter and layer names.
pub fn parse_target(m: &Model, key: &str) -> Option<Target> {
    let pidx = |n: &str| -> Option<usize> {
        m.params.iter().position(|s| s.name == n).or_else(|| n.parse::<usize>().ok().filter(|&i| i < m.params.len()))
    };
    let lidx = |n: &str| m.layers.iter().position(|l| l.name == n);
    match key {
        "input.x" => return Some(Target::InputX),
        "input.y" => return Some(Target::InputY),
        "input.y_onehot" => return Some(Target::InputOnehot),
        _ => {}
    }
    if let Some(n) = key.strip_prefix("param.") {
        return pidx(n).map(Target::Param);
    }
    if let Some(i) = m.params.iter().position(|s| s.name == key) {
        return Some(Target::Param(i));
    }
    let (head, rest) = key.split_once('.')?;
    match head {
        "state" | "traj" | "drive" | "dPhidtheta" | "dEdtheta" => {
            let (phase, name) = rest.split_once('.')?;
            if !PHASES.contains(&phase) {
                return None;
            }
            // `traj.<phase>.t<n>.<l>`: slice n of the trajectory; `traj.<phase>.half.<l>` and
            // `traj.<phase>.half<n>.<l>`: the async2 half states.
            if head == "traj" {
                if let Some((tn, l)) = name.split_once('.') {
                    if tn == "half" {
                        return lidx(l).map(|k| Target::TrajHalf(phase.into(), k));
                    }
                    if let Some(n) = tn.strip_prefix("half").and_then(|n| n.parse::<i64>().ok()).filter(|&n| n >= 1) {
                        return lidx(l).map(|k| Target::TrajHalfSlice(phase.into(), k, n));
                    }
                    if let Some(n) = tn.strip_prefix('t').and_then(|n| n.parse::<i64>().ok()) {
                        return lidx(l).map(|k| Target::TrajSlice(phase.into(), k, n));
                    }
                }
            }
            match head {
                "state" => lidx(name).map(|k| Target::State(phase.into(), k)),
                "traj" => lidx(name).map(|k| Target::Traj(phase.into(), k)),
                "drive" => lidx(name).map(|k| Target::Drive(phase.into(), k)),
                "dPhidtheta" => pidx(name).map(|i| Target::DPhi(phase.into(), i, 1.0)),
                _ => pidx(name).map(|i| Target::DPhi(phase.into(), i, -1.0)),
            }
        }
        "grad" => {
            let (est, beta, name) = split_beta(rest, |n| pidx(n).is_some())?;
            let known = ["ep_plus", "ep_minus", "ep_centered", "ep_centered_clipped", "bptt", "bptt_trunc", "implicit"].contains(&est.as_str()) || est.strip_prefix("ep_holomorphic").is_some_and(|n| n.parse::<usize>().is_ok());
            if !known {
                return None;
            }
            pidx(&name).map(|i| Target::Grad(est, beta, i))
        }
        "gdu" => {
            let neuron = |n: &str| n.strip_prefix("neurons.").and_then(lidx);
            let (series, beta, name) = split_beta(rest, |n| pidx(n).is_some() || neuron(n).is_some())?;
            if !["bptt", "bptt_j", "ep_plus", "ep_minus", "ep_sym"].contains(&series.as_str()) || (series == "bptt_j" && neuron(&name).is_none()) {
                return None;
            }
            match neuron(&name) {
                Some(k) => Some(Target::GduNeurons(series, beta, k)),
                None => pidx(&name).map(|i| Target::GduParam(series, beta, i)),
            }
        }
        "traj_window" => {
            let (phase, name) = rest.split_once('.')?;
            (phase == "free").then(|| lidx(name).map(Target::TrajWindow)).flatten()
        }
        "phi" | "energy" | "loss" => PHASES.contains(&rest).then(|| Target::PerExample(head.into(), rest.into())),
        "phi_traj" => PHASES.contains(&rest).then(|| Target::PhiTraj(rest.into())),
        _ => None,
    }
}

/// Splits `<name>[@<β>].<rest>` where β may itself contain dots (`ep_centered@0.001.W.0_1`): the first split
/// whose β parses as a number and whose rest is accepted by `is_name`. Returns (name, β, rest).
fn split_beta(s: &str, is_name: impl Fn(&str) -> bool) -> Option<(String, Option<f64>, String)> {
    match s.split_once('@') {
        None => s.split_once('.').map(|(a, b)| (a.to_string(), None, b.to_string())),
        Some((name, tail)) => {
            let dots: Vec<usize> = tail.match_indices('.').map(|(j, _)| j).collect();
            // Prefer a split whose rest is a known name; else the first numeric one (the caller rejects it).
            let numeric: Vec<usize> = dots.into_iter().filter(|&j| tail[..j].parse::<f64>().is_ok()).collect();
            let j = numeric.iter().copied().find(|&j| is_name(&tail[j + 1..])).or(numeric.first().copied())?;
            Some((name.to_string(), Some(tail[..j].parse().ok()?), tail[j + 1..].to_string()))
        }
    }
}

/// A parsed transform (checks §10); applied to the epcheck tensor.
#[derive(Clone, Debug)]
pub enum Transform {
    Transpose(i64, i64),
    Permute(Vec<i64>),
    Reshape(Vec<i64>),
    Neg,
    Scale(f64),
    MulBatch,
    DivBatch,
    MeanBatch(bool),
    SumBatch(bool),
    CumsumIncl(i64),
    CumsumExcl(i64),
    Diff(i64),
    Reverse(i64),
    Slice(i64, i64, i64),
    Select(i64, i64),
    /// Permute a flattened (C, H, W) last axis into (H, W, C) order.
    HwcFromChw(i64, i64, i64),
    Real,
    Imag,
}

pub fn parse_transform(s: &str) -> std::result::Result<Transform, String> {
    let s = s.trim();
    let (name, args) = match s.split_once('(') {
        Some((n, rest)) => (n.trim(), rest.trim_end_matches(')').split(',').map(str::trim).filter(|a| !a.is_empty()).collect::<Vec<_>>()),
        None => (s, vec![]),
    };
    let ints = || -> std::result::Result<Vec<i64>, String> { args.iter().map(|a| a.parse::<i64>().map_err(|_| format!("transform '{s}': '{a}' is not an integer"))).collect() };
    let n_args = |n: usize| -> std::result::Result<Vec<i64>, String> {
        let v = ints()?;
        if v.len() == n {
            Ok(v)
        } else {
            Err(format!("transform '{s}' takes {n} argument(s)"))
        }
    };
    let keep = || args.first().map(|a| *a == "true" || *a == "keepdim").unwrap_or(false);
    Ok(match name {
        "transpose" => {
            let v = n_args(2)?;
            Transform::Transpose(v[0], v[1])
        }
        "permute" => Transform::Permute(ints()?),
        "reshape" => Transform::Reshape(ints()?),
        "neg" => Transform::Neg,
        "scale" => Transform::Scale(args.first().and_then(|a| a.parse::<f64>().ok()).ok_or(format!("transform '{s}' needs a number"))?),
        "mul_batch" => Transform::MulBatch,
        "div_batch" => Transform::DivBatch,
        "mean_batch" => Transform::MeanBatch(keep()),
        "sum_batch" => Transform::SumBatch(keep()),
        "cumsum_incl" => Transform::CumsumIncl(n_args(1)?[0]),
        "cumsum_excl" => Transform::CumsumExcl(n_args(1)?[0]),
        "diff" => Transform::Diff(n_args(1)?[0]),
        "reverse" => Transform::Reverse(n_args(1)?[0]),
        "slice" => {
            let v = n_args(3)?;
            Transform::Slice(v[0], v[1], v[2])
        }
        "select" => {
            let v = n_args(2)?;
            Transform::Select(v[0], v[1])
        }
        "hwc_from_chw" => {
            let v = n_args(3)?;
            if v.iter().any(|&d| d < 1) {
                return Err(format!("transform '{s}': C, H, W must be ≥ 1"));
            }
            Transform::HwcFromChw(v[0], v[1], v[2])
        }
        "real" => Transform::Real,
        "imag" => Transform::Imag,
        other => return Err(format!("unknown transform '{other}'")),
    })
}

/// The small β of `gdu_small.*` keys: the safetensors metadata entry `gdu_small.beta`.
fn small_beta(file: &Path) -> Result<f64> {
    let bytes = std::fs::read(file).map_err(|e| Error::file(file, e))?;
    let meta = safetensors::SafeTensors::read_metadata(&bytes).ok().and_then(|(_, m)| m.metadata().clone()).unwrap_or_default();
    let v = meta.get("gdu_small.beta").ok_or_else(|| Error::file(file, "gdu_small.* keys need their β: metadata entry 'gdu_small.beta' (a number) is missing"))?;
    v.trim().parse::<f64>().ok().filter(|b| b.is_finite() && *b != 0.0).ok_or_else(|| Error::file(file, format!("metadata 'gdu_small.beta' = '{v}': expected a non-zero number")))
}

/// The external tensor brought back to epcheck's layout when every transform is a transpose or a permutation.
fn invert_layout(ext: &Tensor, trs: &[Transform]) -> Option<Tensor> {
    let mut t = ext.shallow_clone();
    for tr in trs.iter().rev() {
        t = match tr {
            Transform::Transpose(i, j) if (*i as usize) < t.dim() && (*j as usize) < t.dim() => t.transpose(*i, *j).contiguous(),
            Transform::Permute(d) if d.len() == t.dim() => {
                let mut inv = vec![0i64; d.len()];
                for (k, &p) in d.iter().enumerate() {
                    *inv.get_mut(usize::try_from(p).ok()?)? = k as i64;
                }
                t.permute(&inv[..]).contiguous()
            }
            _ => return None,
        };
    }
    Some(t)
}

fn apply_transform(t: &Tensor, tr: &Transform, b: i64) -> Tensor {
    match tr {
        Transform::Transpose(i, j) => t.transpose(*i, *j).contiguous(),
        Transform::Permute(d) => t.permute(&d[..]).contiguous(),
        Transform::Reshape(d) => t.reshape(&d[..]),
        Transform::Neg => -t,
        Transform::Scale(c) => t * *c,
        Transform::MulBatch => t * b as f64,
        Transform::DivBatch => t / b as f64,
        Transform::MeanBatch(k) => t.mean_dim(Some(&[0i64][..]), *k, None::<Kind>),
        Transform::SumBatch(k) => t.sum_dim_intlist(Some(&[0i64][..]), *k, None::<Kind>),
        Transform::CumsumIncl(a) => t.cumsum(*a, None::<Kind>),
        Transform::CumsumExcl(a) => t.cumsum(*a, None::<Kind>) - t,
        Transform::Diff(a) => {
            let n = t.size()[*a as usize];
            let first = t.narrow(*a, 0, 1);
            if n <= 1 {
                first
            } else {
                Tensor::cat(&[first, t.narrow(*a, 1, n - 1) - t.narrow(*a, 0, n - 1)], *a)
            }
        }
        Transform::Reverse(a) => t.flip([*a]),
        Transform::Slice(a, s, e) => t.narrow(*a, *s, e - s),
        Transform::Select(a, i) => t.select(*a, *i),
        // A last axis of another size is left as it is: the shape check then names the key (never a panic).
        Transform::HwcFromChw(c, h, w) if t.dim() == 0 || t.size()[t.dim() - 1] != c * h * w => t.shallow_clone(),
        Transform::HwcFromChw(c, h, w) => {
            let lead: Vec<i64> = t.size()[..t.dim() - 1].to_vec();
            let nd = lead.len() as i64;
            let perm: Vec<i64> = (0..nd).chain([nd + 1, nd + 2, nd]).collect();
            let shape: Vec<i64> = lead.iter().copied().chain([*c, *h, *w]).collect();
            let flat: Vec<i64> = lead.iter().copied().chain([c * h * w]).collect();
            t.reshape(&shape[..]).permute(&perm[..]).contiguous().reshape(&flat[..])
        }
        Transform::Real => if t.is_complex() { t.real().contiguous() } else { t.shallow_clone() },
        Transform::Imag => if t.is_complex() { t.imag().contiguous() } else { t.zeros_like() },
    }
}

/// One external key, resolved.
struct Item {
    ext_key: String,
    canon: String,
    target: Target,
    transforms: Vec<Transform>,
    ext: Tensor,
}

/// The tolerances of the classes.
#[derive(Clone, Debug)]
pub struct ConformanceOptions {
    pub tol_state: f64,
    pub tol_grad_exact: f64,
    pub tol_grad_ep: f64,
    pub grad_ep_floor_factor: f64,
    pub lengths: PhaseLengths,
    pub beta: f64,
}

impl ConformanceOptions {
    pub fn from_config(cfg: &RunConfig) -> Self {
        let t = &cfg.checks.conformance.tol;
        ConformanceOptions {
            tol_state: t.state,
            tol_grad_exact: t.grad_exact,
            tol_grad_ep: t.grad_ep,
            grad_ep_floor_factor: t.grad_ep_floor_factor,
            lengths: PhaseLengths { t_free: cfg.t_free, k_nudge: cfg.k_nudge, tol: cfg.tol },
            beta: cfg.beta,
        }
    }
}

/// A loaded conformance case: the instance (external parameters and input) and the resolved keys.
pub struct Case {
    pub inst: Instance,
    items: Vec<Item>,
    pub skipped: Vec<String>,
    /// The file is a `bias --dump`: `grad.<estimator>@<β>` keys are recomputed as the bias sweep computes them.
    pub bias_phases: bool,
}

/// Loads external tensors and a name map, resolves every key and builds the instance from the external
/// parameters and input (or `params_file`/`input_file` when given). Missing parameters or inputs, unknown
/// keys and shape mismatches are errors naming the key.
pub fn load_case(file: &Path, map: &NameMap, mut cfg: RunConfig, params_file: Option<&Path>, input_file: Option<&Path>) -> Result<Case> {
    let ext = read_external(file)?;
    // External key → (canonical key, transforms).
    let mut resolved: Vec<(String, String, Vec<Transform>)> = vec![];
    let mut skipped = vec![];
    for k in map.names.keys() {
        if !ext.contains_key(k) {
            return Err(Error::file(file, format!("missing key: '{k}' (named in the name map)")));
        }
    }
    for k in ext.keys() {
        match map.names.get(k) {
            Some(None) => skipped.push(k.clone()),
            Some(Some(e)) => resolved.push((k.clone(), e.key.clone(), e.transforms.iter().map(|t| parse_transform(t).expect("validated")).collect())),
            None => match map.resolver.and_then(|f| f(k)) {
                Some((c, tr)) => resolved.push((k.clone(), canonical_alias(&c), tr.iter().map(|t| parse_transform(t).expect("built-in transforms parse")).collect())),
                None => {
                    let ruled = map.prefixes.iter().find_map(|(from, to)| k.strip_prefix(from.as_str()).map(|rest| format!("{to}{rest}")));
                    resolved.push((k.clone(), canonical_alias(ruled.as_deref().unwrap_or(k)), vec![]))
                }
            },
        }
    }
    // SeqLearning-style small-β series `gdu_small.ep.<p>`, `gdu_small.ep_neg.<p>` (conventions §12.1): β from the
    // file's metadata (`gdu_small.beta`).
    if resolved.iter().any(|(_, c, _)| c.starts_with("gdu_small.")) {
        let beta = small_beta(file)?;
        for (e, c, _) in resolved.iter_mut() {
            if let Some(rest) = c.strip_prefix("gdu_small.") {
                let (series, tail) = rest.split_once('.').ok_or_else(|| Error::file(file, format!("'{e}': expected gdu_small.<ep|ep_neg>.<name>")))?;
                let (series, tail) = seq_gdu_alias(series, tail);
                *c = format!("gdu.{series}@{beta}.{tail}");
            }
        }
    }
    // A parameter mapped through layout transforms only (Haiku's (in, out) weights) is read back through their
    // inverse, so that it can define the instance.
    let mut ext = ext;
    for (e, c, tr) in resolved.iter_mut() {
        if (c.starts_with("param.") || c.starts_with("synapses.")) && !tr.is_empty() {
            if let Some(inv) = invert_layout(&ext[e.as_str()], tr) {
                ext.insert(e.clone(), inv);
                tr.clear();
            }
        }
    }
    // `gdu --dump` records the free iterations it ran (theorem mode extends T): recompute with that T.
    if let Some(pos) = resolved.iter().position(|(_, c, _)| c == "gdu.t_free_run") {
        let (e, _, _) = resolved.remove(pos);
        let t = &ext[&e];
        if t.numel() != 1 || t.is_floating_point() {
            return Err(Error::file(file, format!("'{e}' must be one integer (the free iterations run)")));
        }
        cfg.t_free = t.int64_value(&[]);
        skipped.push(format!("{e} (read as t_free = {})", cfg.t_free));
    }
    // `bias --dump` marks its β points as the sweep's phases (free state s*, nudged per checks.bias.nudge).
    let mut bias_phases = false;
    if let Some(pos) = resolved.iter().position(|(_, c, _)| c == "bias.phases") {
        let (e, _, _) = resolved.remove(pos);
        bias_phases = true;
        skipped.push(format!("{e} (β points recomputed with the bias sweep's phases)"));
    }
    // Parameters under canonical names (`param.<name>`), for size inference and loading.
    let canon_map: BTreeMap<String, Tensor> = resolved.iter().filter(|(_, c, tr)| tr.is_empty() && (c.starts_with("param.") || c.starts_with("synapses."))).map(|(e, c, _)| (c.clone(), ext[e].shallow_clone())).collect();
    if params_file.is_none() {
        crate::io::infer_sizes(&mut cfg, &canon_map, file)?;
    } else if let Some(pf) = params_file {
        crate::io::infer_sizes(&mut cfg, &crate::io::read_tensors(pf)?, pf)?;
    }
    let dtype = Dtype::parse(&cfg.dtype)?;
    let prec = Precision::new(dtype, DeviceChoice::parse(&cfg.device)?.resolve()?);
    let model = crate::instance::Instance::model_for(&mut cfg)?;
    let mut items = vec![];
    // Every key that cannot be recomputed is listed at once, with the closest canonical names.
    let mut unmapped = vec![];
    for (e, c, tr) in resolved {
        match parse_target(&model, &c) {
            Some(target) => items.push(Item { ext_key: e.clone(), canon: c, target, transforms: tr, ext: ext[&e].shallow_clone() }),
            None => unmapped.push((e, c)),
        }
    }
    if !unmapped.is_empty() {
        let names = canonical_names(&model);
        let list: Vec<String> = unmapped
            .iter()
            .map(|(e, c)| {
                let alias = if e != c { format!(" (read as '{c}')") } else { String::new() };
                format!("'{e}'{alias}, closest: {}", closest(c, &names, 2).join(" or "))
            })
            .collect();
        let model_name = if cfg.graph.is_some() { format!("graph {}", model.preset) } else { format!("preset {}", cfg.preset) };
        return Err(Error::file(
            file,
            format!(
                "{} key(s) are not interchange names epcheck can recompute for {model_name}: {}; map them in a name map (--names), or to \"-\" to skip them ({} keys in the file)",
                unmapped.len(),
                list.join("; "),
                ext.len()
            ),
        ));
    }
    let params = match params_file {
        Some(pf) => crate::io::load_params(&model, pf, prec)?,
        None => {
            let mut ps = vec![];
            for (i, spec) in model.params.iter().enumerate() {
                let it = items.iter().find(|it| it.target == Target::Param(i) && it.transforms.is_empty()).ok_or_else(|| Error::file(file, format!("missing key: param.{}", spec.name)))?;
                if it.ext.size() != spec.shape {
                    return Err(Error::file(file, format!("shape mismatch: '{}' has shape {:?}, expected {:?}", it.ext_key, it.ext.size(), spec.shape)));
                }
                if !it.ext.is_floating_point() || !all_finite(&it.ext) {
                    return Err(Error::file(file, format!("'{}' must be a finite floating tensor", it.ext_key)));
                }
                ps.push(it.ext.to_kind(dtype.kind()).to_device(prec.device));
            }
            ps
        }
    };
    let batch = match input_file {
        Some(inp) => crate::io::load_batch(&model, inp, prec)?,
        None => {
            let get = |t: Target, name: &str| items.iter().find(|it| it.target == t).map(|it| it.ext.shallow_clone()).ok_or_else(|| Error::file(file, format!("missing key: {name}")));
            let x = get(Target::InputX, "input.x")?;
            let y = get(Target::InputY, "input.y")?;
            let mut want = vec![x.size().first().copied().unwrap_or(0)];
            want.extend(&model.input_shapes[0]);
            if x.size() != want {
                return Err(Error::file(file, format!("shape mismatch: input.x has shape {:?}, expected (B, {:?})", x.size(), model.input_shapes[0])));
            }
            if !all_finite(&x) {
                return Err(Error::file(file, "non-finite value: input.x"));
            }
            if y.size() != [want[0]] {
                return Err(Error::file(file, format!("shape mismatch: input.y has shape {:?}, expected ({},)", y.size(), want[0])));
            }
            if y.is_floating_point() && y.frac().abs().max().double_value(&[]) != 0.0 {
                return Err(Error::file(file, "input.y holds non-integral float labels"));
            }
            let y = y.to_kind(Kind::Int64);
            if y.numel() > 0 && (y.min().int64_value(&[]) < 0 || y.max().int64_value(&[]) >= model.classes()) {
                return Err(Error::file(file, format!("input.y has a label outside 0…{}", model.classes() - 1)));
            }
            Batch::new(x.to_kind(dtype.kind()).to_device(prec.device), y.to_device(prec.device), model.classes())
        }
    };
    cfg.batch = batch.size();
    let id = instance_id(&cfg, &params, &batch);
    let inst = Instance { cfg, model, params, batch, prec, id };
    // Shapes are checked before anything is recomputed (cheap: epcheck's shapes are known).
    let case = Case { inst, items, skipped, bias_phases };
    for it in &case.items {
        if matches!(it.target, Target::Traj(..) | Target::PhiTraj(_)) {
            continue;
        }
        let ours = case.expected_shape(it);
        if ours != it.ext.size() {
            return Err(Error::Shape(format!("{}: '{}' has shape {:?}, epcheck's '{}' (after transforms) has {:?}", file.display(), it.ext_key, it.ext.size(), it.canon, ours)));
        }
    }
    Ok(case)
}

/// The canonical names a model can recompute (for suggestions).
pub fn canonical_names(m: &Model) -> Vec<String> {
    let mut v = vec!["input.x".to_string(), "input.y".into(), "input.y_onehot".into()];
    for p in &m.params {
        v.push(format!("param.{}", p.name));
        for e in ["ep_plus", "ep_minus", "ep_centered", "bptt", "bptt_trunc", "implicit"] {
            v.push(format!("grad.{e}.{}", p.name));
        }
        for s in ["bptt", "ep_plus", "ep_minus", "ep_sym"] {
            v.push(format!("gdu.{s}.{}", p.name));
        }
        for ph in ["free", "plus", "minus"] {
            v.push(format!("dPhidtheta.{ph}.{}", p.name));
        }
    }
    for l in &m.layers {
        for ph in PHASES {
            v.push(format!("state.{ph}.{}", l.name));
            v.push(format!("traj.{ph}.{}", l.name));
            v.push(format!("drive.{ph}.{}", l.name));
        }
        for s in ["bptt", "ep_plus", "ep_minus", "ep_sym"] {
            v.push(format!("gdu.{s}.neurons.{}", l.name));
        }
    }
    for ph in PHASES {
        for w in ["phi", "energy", "loss", "phi_traj"] {
            v.push(format!("{w}.{ph}"));
        }
    }
    v
}

/// The `n` names closest to `key`.
pub fn closest(key: &str, names: &[String], n: usize) -> Vec<String> {
    let mut v: Vec<(usize, &String)> = names.iter().map(|c| (crate::config::edit_distance(key, c), c)).collect();
    v.sort();
    v.into_iter().take(n).map(|(_, c)| format!("'{c}'")).collect()
}

impl Case {
    fn expected_shape(&self, it: &Item) -> Vec<i64> {
        let m = &self.inst.model;
        let b = self.inst.batch.size();
        let base: Vec<i64> = match &it.target {
            Target::Param(i) | Target::DPhi(_, i, _) | Target::Grad(_, _, i) => m.params[*i].shape.clone(),
            Target::InputX => self.inst.batch.x[0].size(),
            Target::InputY => vec![b],
            Target::InputOnehot => vec![b, m.classes()],
            Target::State(_, k) | Target::Drive(_, k) | Target::Traj(_, k) => {
                let mut s = vec![b];
                s.extend(&m.layers[*k].shape);
                s
            }
            Target::PerExample(..) | Target::PhiTraj(_) => vec![b],
            Target::GduParam(_, _, i) => std::iter::once(self.inst.cfg.k_nudge).chain(m.params[*i].shape.iter().copied()).collect(),
            Target::GduNeurons(_, _, k) => [self.inst.cfg.k_nudge, b].into_iter().chain(m.layers[*k].shape.iter().copied()).collect(),
            Target::TrajSlice(_, k, _) => std::iter::once(b).chain(m.layers[*k].shape.iter().copied()).collect(),
            Target::TrajWindow(k) => [self.inst.cfg.k_nudge + 1, b].into_iter().chain(m.layers[*k].shape.iter().copied()).collect(),
            Target::TrajHalf(_, k) => [it.ext.size().first().copied().unwrap_or(0), b].into_iter().chain(m.layers[*k].shape.iter().copied()).collect(),
            Target::TrajHalfSlice(_, k, _) => std::iter::once(b).chain(m.layers[*k].shape.iter().copied()).collect(),
        };
        let z = Tensor::zeros(&base[..], (Kind::Double, tch::Device::Cpu));
        it.transforms.iter().fold(z, |t, tr| apply_transform(&t, tr, b)).size()
    }
}

/// Lazily computed phases and estimates.
struct Recompute<'a> {
    inst: &'a Instance,
    o: &'a ConformanceOptions,
    phases: BTreeMap<String, (State, f64)>,
    grads: BTreeMap<(String, u64), Vec<Tensor>>,
    /// GDU series per β: canonical `gdu.<series>.<p>` / `gdu.<series>.neurons.<l>` → (K, …).
    gdu: BTreeMap<u64, BTreeMap<String, Tensor>>,
    f_norm: f64,
    /// With a `bias --dump`: the sweep's options and its free state s*.
    bias: Option<(super::bias::BiasOptions, State)>,
    /// Length n of the `traj.<phase>.half.*` tensor being recomputed.
    half_len: i64,
}

impl<'a> Recompute<'a> {
    fn phase(&mut self, name: &str) -> Result<(State, f64)> {
        if let Some((s, b)) = self.phases.get(name) {
            return Ok((s.iter().map(|t| t.shallow_clone()).collect(), *b));
        }
        let (m, p, batch) = (&self.inst.model, &self.inst.params[..], &self.inst.batch);
        let len = self.o.lengths;
        let got = match name {
            "init" => (m.zeros_state(batch.size(), self.inst.prec), 0.0),
            "free" => (estimators::free_phase(m, p, batch, len, false).state, 0.0),
            "plus" | "minus" => {
                let beta = if name == "plus" { self.o.beta } else { -self.o.beta };
                let (free, _) = self.phase("free")?;
                (relax(m, p, batch, &free, beta, &RelaxOptions { iters: len.k_nudge, tol: len.tol, ..Default::default() }).state, beta)
            }
            _ => (implicit::star(m, p, batch, None, &self.inst.cfg.implicit_options())?.state, 0.0),
        };
        self.phases.insert(name.into(), (got.0.iter().map(|t| t.shallow_clone()).collect(), got.1));
        Ok(got)
    }

    fn grad(&mut self, est: &str, beta: Option<f64>) -> Result<Vec<Tensor>> {
        if let (Some(b), Some((bo, s0)), true) = (beta, &self.bias, est.starts_with("ep_")) {
            let key = (format!("bias:{est}"), b.to_bits());
            if let Some(g) = self.grads.get(&key) {
                return Ok(g.iter().map(|t| t.shallow_clone()).collect());
            }
            let (m, p, batch) = (&self.inst.model, &self.inst.params[..], &self.inst.batch);
            let f = m.param_derivative(p, batch, s0);
            self.f_norm = self.f_norm.max(f.iter().map(norm2).fold(0.0, f64::max));
            let g = super::bias::point_estimate(m, p, batch, s0, est, b, bo)?;
            self.grads.insert(key, g.iter().map(|t| t.shallow_clone()).collect());
            return Ok(g);
        }
        let beta = beta.unwrap_or(self.o.beta);
        let key = (est.to_string(), beta.to_bits());
        if let Some(g) = self.grads.get(&key) {
            return Ok(g.iter().map(|t| t.shallow_clone()).collect());
        }
        let (m, p, batch) = (&self.inst.model, &self.inst.params[..], &self.inst.batch);
        let len = self.o.lengths;
        let g = match est {
            // The Hopfield-ResNet code's clipped centered estimate: one global-norm clip (train.grad_clip_norm).
            "ep_centered_clipped" => {
                let c = self.inst.cfg.train.grad_clip_norm.ok_or_else(|| Error::Config("grad.ep_centered_clipped needs the clip norm the producer used: --set grad_clip_norm=…".into()))?;
                crate::train::optim::clip_global_norm(&self.grad("ep_centered", Some(beta))?, c).0
            }
            "implicit" => implicit::implicit(m, p, batch, &self.inst.cfg.implicit_options())?.grad.tensors,
            "bptt" => bptt::full(m, p, batch, len.t_free).0.tensors,
            "bptt_trunc" => bptt::truncated(m, p, batch, len.t_free, len.k_nudge)?.0.tensors,
            e => {
                let (est, holo) = match e.strip_prefix("ep_holomorphic") {
                    Some(n) => (Estimator::EpHolomorphic, self.inst.cfg.holo_options(n.parse().unwrap_or(4))),
                    None => (Estimator::parse(e)?, self.inst.cfg.holo_options(self.inst.cfg.holo_points)),
                };
                let run = estimators::estimate_with(est, m, p, batch, beta, len, &holo)?;
                for (_, ph) in &run.phases {
                    self.f_norm = self.f_norm.max(m.param_derivative(p, batch, &ph.state).iter().map(norm2).fold(0.0, f64::max));
                }
                run.grad.tensors
            }
        };
        self.grads.insert(key, g.iter().map(|t| t.shallow_clone()).collect());
        Ok(g)
    }

    /// The GDU series of the instance at β (replay: exactly T free iterations, the last K steps; checks §3).
    fn gdu_series(&mut self, beta: Option<f64>) -> Result<&BTreeMap<String, Tensor>> {
        let beta = beta.unwrap_or(self.o.beta);
        if !self.gdu.contains_key(&beta.to_bits()) {
            let (m, p, batch) = (&self.inst.model, &self.inst.params[..], &self.inst.batch);
            let (t, k) = (self.o.lengths.t_free, self.o.lengths.k_nudge);
            if k > t {
                return Err(Error::Config(format!("gdu.* keys need K ≤ T (K = {k}, T = {t}): set t_free and k_nudge as the producer ran them")));
            }
            let g = super::gdu::compute_series(m, p, batch, m.zeros_state(batch.size(), self.inst.prec), &super::gdu::GduOptions::replay(t, k, beta));
            let stack = |ts: Vec<Tensor>| Tensor::stack(&ts, 0);
            let mut out = BTreeMap::new();
            for (i, spec) in m.params.iter().enumerate() {
                let col = |th: &Vec<Vec<Tensor>>| stack(th.iter().map(|st| st[i].shallow_clone()).collect());
                let (plus, minus) = (col(&g.plus.theta), col(&g.minus.theta));
                out.insert(format!("gdu.bptt.{}", spec.name), col(&g.bptt_theta));
                out.insert(format!("gdu.ep_sym.{}", spec.name), (&plus + &minus) * 0.5);
                out.insert(format!("gdu.ep_plus.{}", spec.name), plus);
                out.insert(format!("gdu.ep_minus.{}", spec.name), minus);
            }
            for (j, l) in m.layers.iter().enumerate() {
                let col = |ss: &Vec<State>| stack(ss.iter().map(|st| st[j].shallow_clone()).collect());
                let (plus, minus) = (col(&g.plus.neurons), col(&g.minus.neurons));
                out.insert(format!("gdu.bptt.neurons.{}", l.name), col(&g.bptt_s));
                out.insert(format!("gdu.bptt_j.neurons.{}", l.name), col(&g.bptt_j));
                out.insert(format!("gdu.ep_sym.neurons.{}", l.name), (&plus + &minus) * 0.5);
                out.insert(format!("gdu.ep_plus.neurons.{}", l.name), plus);
                out.insert(format!("gdu.ep_minus.neurons.{}", l.name), minus);
            }
            self.gdu.insert(beta.to_bits(), out);
        }
        Ok(&self.gdu[&beta.to_bits()])
    }

    /// The `async2` half states of a phase, iterations 1…n: from s_{t−1}, the group-A layers updated (their drives all
    /// from s_{t−1}), group B left as in s_{t−1}. The phase starts as `traj.<phase>.*` does (free: zeros; ±β: the
    /// free state).
    fn half_states(&mut self, ph: &str, n: i64) -> Result<Vec<State>> {
        let (m, p, batch) = (&self.inst.model, &self.inst.params[..], &self.inst.batch);
        if m.schedule.kind != crate::model::schedule::ScheduleKind::Async2 {
            return Err(Error::Config(format!("traj.{ph}.half* keys are async2 half states; this model's schedule is {}", m.schedule.key())));
        }
        let (init, beta) = match ph {
            "plus" | "minus" => (self.phase("free")?.0, if ph == "plus" { self.o.beta } else { -self.o.beta }),
            _ => (m.zeros_state(batch.size(), self.inst.prec), 0.0),
        };
        let full = relax(m, p, batch, &init, beta, &RelaxOptions { iters: n - 1, record: true, ..Default::default() }).traj.expect("recorded");
        let group_a = &m.schedule.groups[0];
        Ok(full
            .iter()
            .take(n as usize)
            .map(|s| {
                tch::no_grad(|| {
                    let us: Vec<Tensor> = group_a.iter().map(|&k| m.drive(p, batch, s, k, beta)).collect();
                    let mut h: State = s.iter().map(|t| t.shallow_clone()).collect();
                    for (&k, u) in group_a.iter().zip(us) {
                        h[k] = m.activate(k, batch, &u);
                    }
                    h
                })
            })
            .collect())
    }

    /// epcheck's value of a (non-trajectory) target, in the run dtype.
    fn value(&mut self, t: &Target) -> Result<Tensor> {
        let (m, p, batch) = (&self.inst.model, &self.inst.params[..], &self.inst.batch);
        Ok(match t {
            Target::Param(i) => p[*i].shallow_clone(),
            Target::InputX => batch.x[0].shallow_clone(),
            Target::InputY => batch.y.shallow_clone(),
            Target::InputOnehot => batch.y_onehot.shallow_clone(),
            Target::State(ph, k) => self.phase(ph)?.0[*k].shallow_clone(),
            Target::Drive(ph, k) => {
                let (s, beta) = self.phase(ph)?;
                tch::no_grad(|| m.drive(p, batch, &s, *k, beta))
            }
            Target::DPhi(ph, i, sign) => {
                let (s, _) = self.phase(ph)?;
                tch::no_grad(|| m.param_derivative(p, batch, &s))[*i].shallow_clone() * *sign
            }
            Target::Grad(e, b, i) => self.grad(e, *b)?[*i].shallow_clone(),
            Target::PerExample(what, ph) => {
                let (s, _) = self.phase(ph)?;
                tch::no_grad(|| match what.as_str() {
                    "phi" => m.primitive(p, batch, &s),
                    "energy" => m.energy(p, batch, &s),
                    _ => m.loss_per_example(p, batch, &s),
                })
            }
            Target::GduParam(series, beta, i) => {
                let name = format!("gdu.{series}.{}", m.params[*i].name);
                self.gdu_series(*beta)?[&name].shallow_clone()
            }
            Target::GduNeurons(series, beta, k) => {
                let name = format!("gdu.{series}.neurons.{}", m.layers[*k].name);
                self.gdu_series(*beta)?[&name].shallow_clone()
            }
            Target::TrajSlice(ph, k, n) => {
                let (init, beta) = match ph.as_str() {
                    "plus" | "minus" => (self.phase("free")?.0, if ph == "plus" { self.o.beta } else { -self.o.beta }),
                    _ => (m.zeros_state(batch.size(), self.inst.prec), 0.0),
                };
                relax(m, p, batch, &init, beta, &RelaxOptions::fixed(*n)).state[*k].shallow_clone()
            }
            Target::TrajWindow(k) => {
                let (t, kk) = (self.o.lengths.t_free, self.o.lengths.k_nudge);
                let skip = relax(m, p, batch, &m.zeros_state(batch.size(), self.inst.prec), 0.0, &RelaxOptions::fixed((t - kk).max(0)));
                let w = relax(m, p, batch, &skip.state, 0.0, &RelaxOptions { iters: kk, record: true, ..Default::default() });
                Tensor::stack(&w.traj.expect("recorded").iter().map(|s| s[*k].shallow_clone()).collect::<Vec<_>>(), 0)
            }
            Target::TrajHalf(ph, k) => {
                let n = self.half_len.max(1);
                Tensor::stack(&self.half_states(ph, n)?.iter().map(|s| s[*k].shallow_clone()).collect::<Vec<_>>(), 0)
            }
            Target::TrajHalfSlice(ph, k, n) => self.half_states(ph, *n)?.pop().expect("n ≥ 1")[*k].shallow_clone(),
            Target::PhiTraj(_) | Target::Traj(..) => unreachable!("trajectories are replayed"),
        })
    }
}

/// The threshold of a class for an external tensor of the given dtype.
fn class_threshold(class: &str, o: &ConformanceOptions, ext_f32: bool, floor_rel: f64) -> f64 {
    let e32 = 100.0 * f32::EPSILON as f64;
    match class {
        "param" | "input" => 0.0,
        "state" => if ext_f32 { e32 } else { o.tol_state },
        "grad_exact" => if ext_f32 { e32 } else { o.tol_grad_exact },
        _ => (if ext_f32 { e32 } else { o.tol_grad_ep }) + o.grad_ep_floor_factor * floor_rel,
    }
}

pub fn run(case: &Case, o: &ConformanceOptions) -> Result<CheckReport> {
    let inst = &case.inst;
    let (m, p, batch) = (&inst.model, &inst.params[..], &inst.batch);
    let mut rows = Rows::new("conformance", &inst.id, &m.preset, inst.prec.dtype.name());
    let bias = match case.bias_phases {
        true => Some((super::bias::BiasOptions::from_config(&inst.cfg), implicit::star(m, p, batch, None, &inst.cfg.implicit_options())?.state)),
        false => None,
    };
    let mut rc = Recompute { inst, o, phases: BTreeMap::new(), grads: BTreeMap::new(), gdu: BTreeMap::new(), f_norm: 0.0, bias, half_len: 0 };
    let b = batch.size();
    let mut summary = vec![
        format!("Conformance: {} external keys compared ({} skipped by the name map); T = {}, K = {}, β = {}", case.items.len(), case.skipped.len(), o.lengths.t_free, o.lengths.k_nudge, o.beta),
        String::new(),
        "| external key | canonical | class | rel_linf | rel_l2 | max_abs | threshold | verdict |".into(),
        "|---|---|---|---|---|---|---|---|".into(),
    ];
    // Worst rel_linf per group of keys (states, each estimator and β, each GDU series and β).
    let mut groups: BTreeMap<String, (usize, f64, &str)> = BTreeMap::new();
    // Keys first (trajectories are grouped by phase below).
    let mut traj_phases: BTreeMap<String, Vec<&Item>> = BTreeMap::new();
    for it in &case.items {
        if let Target::Traj(ph, _) = &it.target {
            traj_phases.entry(ph.clone()).or_default().push(it);
            continue;
        }
        let ext_f32 = it.ext.kind() == Kind::Float;
        let ours = if let Target::PhiTraj(ph) = &it.target {
            // Φ_β along the phase, recomputed by epcheck from its own initial state.
            let (init, beta) = match ph.as_str() {
                "free" | "init" | "star" => (m.zeros_state(b, inst.prec), 0.0),
                _ => {
                    let beta = if ph == "plus" { o.beta } else { -o.beta };
                    (rc.phase("free")?.0, beta)
                }
            };
            let n = it.ext.size()[0] - 1;
            relax(m, p, batch, &init, beta, &RelaxOptions { iters: n, trace_phi: true, ..Default::default() }).phi.expect("traced")
        } else {
            if let Target::TrajHalf(..) = it.target {
                rc.half_len = it.ext.size()[0];
            }
            rc.value(&it.target)?
        };
        let ours = it.transforms.iter().fold(ours, |t, tr| apply_transform(&t, tr, b));
        if ours.size() != it.ext.size() {
            return Err(Error::Shape(format!("'{}' has shape {:?}, epcheck's '{}' has {:?}", it.ext_key, it.ext.size(), it.canon, ours.size())));
        }
        let (a, r) = (to_vec_f64(&ours), to_vec_f64(&it.ext));
        let class = it.target.class();
        let floor_rel = if class == "grad_ep" {
            let beta = if let Target::Grad(_, Some(bb), _) = &it.target { *bb } else { o.beta };
            mx::ratio(if ext_f32 { f32::EPSILON as f64 } else { inst.prec.dtype.eps() } * rc.f_norm, beta * mx::norm(&r))
        } else {
            0.0
        };
        let finite = r.iter().all(|v| v.is_finite());
        let (rl, r2, ma) = (mx::rel_linf(&a, &r), mx::rel_l2(&a, &r), mx::max_abs(&a, &r));
        // An exactly-zero external tensor has no relative scale: judge it absolutely against the class floor
        // (checks §10), never against an infinite relative threshold.
        let r_max = r.iter().fold(0.0f64, |mm, v| mm.max(v.abs()));
        let eps_ext = if ext_f32 { f32::EPSILON as f64 } else { inst.prec.dtype.eps() };
        let (metric, value, thr) = if r_max == 0.0 && finite {
            let scale = match class {
                "grad_ep" => {
                    let beta = if let Target::Grad(_, Some(bb), _) = &it.target { *bb } else { o.beta };
                    rc.f_norm / (2.0 * beta.abs())
                }
                "grad_exact" => rc.f_norm,
                "param" | "input" => 0.0,
                _ => 1.0,
            };
            ("max_abs", ma, 100.0 * eps_ext * scale)
        } else {
            ("rel_linf", rl, class_threshold(class, o, ext_f32, floor_rel))
        };
        let verdict = if !finite {
            Verdict::Error(format!("non-finite value: {}", it.ext_key))
        } else if !thr.is_finite() {
            Verdict::Error(format!("non-finite threshold for {} (floor_rel = {floor_rel:e})", it.ext_key))
        } else if value.is_finite() && value <= thr {
            Verdict::Pass
        } else {
            Verdict::Fail(format!("{metric}={value:.3e} > {thr:.3e}{}", if metric == "max_abs" { " (external tensor is exactly zero: judged absolutely)" } else { "" }))
        };
        for (mname, v) in [("shape_match", 1.0), ("rel_linf", rl), ("rel_l2", r2), ("max_abs", ma), ("floor_rel", floor_rel)] {
            let mut row = rows.row("key", &it.ext_key, mname, v);
            row.reference = Some("external".into());
            if mname == metric {
                row.threshold = Some(thr);
                row.verdict = Some(verdict.label().into());
            }
            rows.push(row);
        }
        // Parameters and inputs are what the recomputation was loaded from: bookkeeping, never evidence.
        let scope = if matches!(class, "param" | "input") { "loaded" } else { "key" };
        rows.verdict(scope, &it.ext_key, &verdict, json!({ "canonical": it.canon, "class": class, "metric": metric, "value": value, "rel_linf": rl, "threshold": thr }));
        summary.push(format!("| {} | {} | {class} | {rl:.3e} | {r2:.3e} | {ma:.3e} | {thr:.1e} | {} |", it.ext_key, it.canon, verdict.display()));
        if let Some(g) = group_of(&it.target) {
            let e = groups.entry(g).or_insert((0, 0.0f64, class));
            e.0 += 1;
            e.1 = if rl.is_nan() { f64::NAN } else { e.1.max(rl) };
        }
        // GDU series: per step, and the first step and element where they diverge.
        if matches!(it.target, Target::GduParam(..) | Target::GduNeurons(..)) && it.transforms.is_empty() && finite {
            let k = ours.size()[0];
            let d = (ours.to_kind(Kind::Double).to_device(tch::Device::Cpu) - it.ext.to_kind(Kind::Double).to_device(tch::Device::Cpu)).abs().reshape([k, -1]);
            let scale = if metric == "max_abs" { 1.0 } else { r_max };
            let per_step: Vec<f64> = to_vec_f64(&d.amax([1i64].as_slice(), false)).into_iter().map(|v| v / scale).collect();
            for (t, v) in per_step.iter().enumerate() {
                let mut row = rows.row("key", &it.ext_key, metric, *v);
                row.reference = Some("external".into());
                row.t = Some(t as i64);
                rows.push(row);
            }
            if let Some(t) = per_step.iter().position(|v| !(*v <= thr)) {
                let flat = d.get(t as i64).argmax(None, false).int64_value(&[]);
                let mut idx = vec![];
                let mut rem = flat;
                for &n in it.ext.size()[1..].iter().rev() {
                    idx.push(rem % n);
                    rem /= n;
                }
                idx.reverse();
                summary.push(format!("|  | first divergence of the series at step t = {t} (of {k}), element {idx:?}: {metric} {:.3e} > {thr:.1e} | | | | | | |", per_step[t]));
                let mut row = rows.row("key", &it.ext_key, "first_divergent_step", t as f64);
                row.reference = Some("external".into());
                rows.push(row);
            }
        }
    }
    // Trajectories: replay each phase from the external initial state; first divergence; one-step errors.
    for (ph, its) in &traj_phases {
        let n = its[0].ext.size()[0] - 1;
        for it in its {
            let want = {
                let mut s = vec![n + 1, b];
                s.extend(&m.layers[match it.target {
                    Target::Traj(_, k) => k,
                    _ => unreachable!(),
                }]
                .shape);
                s
            };
            if !it.transforms.is_empty() || it.ext.size() != want {
                return Err(Error::Shape(format!("trajectory '{}' has shape {:?}, expected {:?} (trajectories take no transforms)", it.ext_key, it.ext.size(), want)));
            }
        }
        let ext_f32 = its.iter().any(|it| it.ext.kind() == Kind::Float);
        let tol = class_threshold("state", o, ext_f32, 0.0);
        let beta = match ph.as_str() {
            "plus" => o.beta,
            "minus" => -o.beta,
            _ => 0.0,
        };
        let kind = inst.prec.dtype.kind();
        // External states per t (layers the producer did not give come from epcheck's own replay).
        let ext_of: BTreeMap<usize, Tensor> = its.iter().map(|it| (if let Target::Traj(_, k) = it.target { k } else { unreachable!() }, it.ext.to_kind(kind).to_device(inst.prec.device))).collect();
        let own_init = match ph.as_str() {
            "plus" | "minus" => rc.phase("free")?.0,
            _ => m.zeros_state(b, inst.prec),
        };
        let init: State = (0..m.layers.len()).map(|k| ext_of.get(&k).map(|t| t.get(0)).unwrap_or_else(|| own_init[k].shallow_clone())).collect();
        let replay = relax(m, p, batch, &init, beta, &RelaxOptions { iters: n, record: true, ..Default::default() });
        let traj = replay.traj.expect("recorded");
        let (mut rel_t, mut e1_t) = (vec![0.0f64; n as usize + 1], vec![0.0f64; n as usize + 1]);
        for t in 0..=n as usize {
            let mut rel = 0.0f64;
            let mut e1 = 0.0f64;
            let prev_ext: Option<State> = (t > 0).then(|| (0..m.layers.len()).map(|k| ext_of.get(&k).map(|x| x.get(t as i64 - 1)).unwrap_or_else(|| traj[t - 1][k].shallow_clone())).collect());
            let one = prev_ext.map(|s| tch::no_grad(|| m.step(p, batch, &s, beta)));
            for (&k, x) in &ext_of {
                let e = to_vec_f64(&x.get(t as i64));
                rel = rel.max(mx::rel_linf(&to_vec_f64(&traj[t][k]), &e));
                if let Some(one) = &one {
                    e1 = e1.max(mx::rel_linf(&to_vec_f64(&one[k]), &e));
                }
            }
            rel_t[t] = rel;
            e1_t[t] = e1;
            for (series, v) in [("rel_t", rel), ("e1_t", e1)] {
                rows.series_row(series, "divergence", ph, 0, t as i64, v);
            }
        }
        let t_star = rel_t.iter().position(|&r| !(r <= tol));
        let e1_max = e1_t.iter().cloned().fold(0.0, f64::max);
        let verdict = if super::within(e1_max, tol) { Verdict::Pass } else { Verdict::Fail(format!("one-step error e1={e1_max:.3e} > {tol:.1e}")) };
        let mut details = json!({ "tol": tol, "e1_max": e1_max, "rel_max": rel_t.iter().cloned().fold(0.0, f64::max), "steps": n });
        let mut note = String::new();
        if let Some(ts) = t_star {
            // Where the error is largest at t*: layer and example.
            let (mut best, mut where_) = (0.0f64, (String::new(), 0i64));
            for (&k, x) in &ext_of {
                let d = (&traj[ts][k] - x.get(ts as i64)).abs();
                let per_ex = to_vec_f64(&crate::tensor_util::absmax_per_example(&d));
                for (ex, v) in per_ex.into_iter().enumerate() {
                    if v > best {
                        best = v;
                        where_ = (m.layers[k].name.clone(), ex as i64);
                    }
                }
            }
            let growth = mx::ratio(rel_t[n as usize], rel_t[ts]);
            details["t_star"] = json!(ts);
            details["layer"] = json!(where_.0);
            details["example"] = json!(where_.1);
            details["e1_at_t_star"] = json!(e1_t[ts]);
            details["growth"] = json!(growth);
            note = format!("first divergence at t* = {ts} (layer {}, example {}), e1(t*) = {:.3e}, growth rel_n/rel_t* = {growth:.3e}", where_.0, where_.1, e1_t[ts]);
            if verdict == Verdict::Pass {
                note += " — amplified round-off (one-step errors within tolerance)";
                rows.verdict("trajectory", &format!("{ph}:amplified_round_off"), &Verdict::Info, details.clone());
            }
            let mut row = rows.row("trajectory", ph, "t_star", ts as f64);
            row.phase = Some(ph.clone());
            rows.push(row);
        }
        for (metric, v) in [("e1_max", e1_max), ("rel_max", rel_t.iter().cloned().fold(0.0, f64::max))] {
            let mut row = rows.row("trajectory", ph, metric, v);
            row.phase = Some(ph.clone());
            if metric == "e1_max" {
                row.threshold = Some(tol);
                row.verdict = Some(verdict.label().into());
            }
            rows.push(row);
        }
        rows.verdict("trajectory", ph, &verdict, details);
        summary.push(format!(
            "| traj.{ph}.* ({} layers, {n} steps) | replay from the external s_0 | state | max rel_t = {:.3e} | | max e1 = {e1_max:.3e} | {tol:.1e} | {} |",
            ext_of.len(),
            rel_t.iter().cloned().fold(0.0, f64::max),
            verdict.display()
        ));
        if !note.is_empty() {
            summary.push(format!("|  | {note} | | | | | | |"));
        }
    }
    if !groups.is_empty() {
        summary.push(String::new());
        summary.push("| group | keys | class | worst rel_linf |".into());
        summary.push("|---|---|---|---|".into());
        for (g, (n, w, class)) in &groups {
            summary.push(format!("| {g} | {n} | {class} | {w:.3e} |"));
        }
    }
    if !case.skipped.is_empty() {
        summary.push(String::new());
        summary.push(format!("Not compared (name map): {}", case.skipped.join(", ")));
    }
    Ok(rows.finish(summary, vec![]))
}

/// The group of a canonical key for the per-group summary: states, one group per estimator and β, one per GDU
/// series and β; parameters and inputs are not evidence (None).
fn group_of(t: &Target) -> Option<String> {
    let b = |beta: &Option<f64>| beta.map(|b| format!("@{b}")).unwrap_or_default();
    match t {
        Target::Param(_) | Target::InputX | Target::InputY | Target::InputOnehot => None,
        Target::Grad(e, beta, _) => Some(format!("grad.{e}{}", b(beta))),
        Target::GduParam(s, beta, _) => Some(format!("gdu.{s}{} (parameters)", b(beta))),
        Target::GduNeurons(s, beta, _) => Some(format!("gdu.{s}{} (neurons)", b(beta))),
        Target::DPhi(..) => Some("dPhidtheta".into()),
        _ => Some("states".into()),
    }
}

/// The figures of checks §10: `conformance.svg` (log10 `rel_linf` per key as bars, one panel per tolerance class,
/// the class threshold as a line and each key's own threshold as a grey cross) and `divergence_<phase>.svg`
/// (`rel_t` solid and `e1_t` dotted against t, log y, the tolerance as a line, t* as a vertical grey line).
pub fn figures(dir: &Path, rep: &super::CheckReport, instance: &str, opts: &crate::report::style::FigureOptions) -> Result<Vec<std::path::PathBuf>> {
    use crate::report::style::{self, Figure, HLine, LegendEntry, Line, Marker, Panel, Scale, Style};
    let verdict = rep.overall.label();
    let mut out = vec![];
    // conformance.svg
    let mut by_class: BTreeMap<String, Vec<(String, f64, f64)>> = BTreeMap::new();
    for v in rep.verdicts.iter().filter(|v| v.scope == "key") {
        let d: serde_json::Value = serde_json::from_str(&v.details).unwrap_or_default();
        let (Some(class), Some(rl), Some(thr)) = (d["class"].as_str(), d["rel_linf"].as_f64(), d["threshold"].as_f64()) else { continue };
        by_class.entry(class.to_string()).or_default().push((v.name.clone(), rl, thr));
    }
    let order = ["state", "grad_exact", "grad_ep"];
    let mut classes: Vec<&String> = by_class.keys().collect();
    classes.sort_by_key(|c| order.iter().position(|o| o == c).unwrap_or(order.len()));
    let mut panels = vec![];
    for (ci, class) in classes.iter().enumerate() {
        let keys = &by_class[*class];
        let positive: Vec<f64> = keys.iter().map(|k| k.1).filter(|v| *v > 0.0 && v.is_finite()).collect();
        let base = positive.iter().cloned().fold(f64::INFINITY, f64::min).min(1e-17) / 2.0;
        let mut lines: Vec<Line> = keys.iter().enumerate().filter(|(_, k)| k.1 > 0.0 && k.1.is_finite()).map(|(i, k)| Line::new(vec![(i as f64, base), (i as f64, k.1)], style::color(ci), Style::Solid, None)).collect();
        lines.push(Line::new(keys.iter().enumerate().map(|(i, k)| (i as f64, k.2)).collect(), style::GREY, Style::Markers, Some("threshold of the key".into())).marker(Marker::Cross));
        let mut p = Panel::new(format!("class {class}: {} keys", keys.len()), "key (in the order of the summary table)", "rel_linf").scales(Scale::Integer, Scale::Log).lines(lines);
        let class_thr = keys.iter().map(|k| k.2).fold(f64::INFINITY, f64::min);
        p.hlines = vec![HLine::new(class_thr, format!("class threshold {class_thr:.1e}"))];
        p.x_range = Some((-0.5, keys.len() as f64 - 0.5));
        let zeros = keys.len() - positive.len();
        if zeros > 0 {
            p.note = Some(format!("{zeros} key(s) exactly equal (rel_linf = 0, not drawn)"));
        }
        panels.push(p);
    }
    if !panels.is_empty() {
        let legend = vec![LegendEntry::text("bar = rel_linf of one external key; colour = tolerance class (panel title)")];
        out.extend(style::write_figure(dir, &Figure { stem: "conformance".into(), title: format!("conformance — {instance} — {verdict}"), panels, legend }, opts)?);
    }
    // divergence_<phase>.svg
    let mut phases: BTreeMap<String, (Vec<(f64, f64)>, Vec<(f64, f64)>)> = BTreeMap::new();
    for s in rep.series.iter().filter(|s| s.kind == "divergence") {
        let e = phases.entry(s.name.clone()).or_default();
        match s.series.as_str() {
            "rel_t" => e.0.push((s.t as f64, s.value)),
            "e1_t" if s.t > 0 => e.1.push((s.t as f64, s.value)),
            _ => {}
        }
    }
    for (ph, (rel, e1)) in phases {
        let v = rep.verdicts.iter().find(|v| v.scope == "trajectory" && v.name == ph);
        let d: serde_json::Value = v.map(|v| serde_json::from_str(&v.details).unwrap_or_default()).unwrap_or_default();
        let tol = d["tol"].as_f64().unwrap_or(f64::NAN);
        let mut lines = vec![Line::new(rel.clone(), style::color(0), Style::Solid, Some("rel_t (replay from the external s(0))".into())).marker(Marker::Circle), Line::new(e1.clone(), style::color(1), Style::Dotted, Some("e1_t (one step from the external s(t−1))".into())).marker(Marker::Square)];
        if let Some(ts) = d["t_star"].as_f64() {
            let pos: Vec<f64> = rel.iter().chain(e1.iter()).map(|p| p.1).filter(|v| *v > 0.0).collect();
            let (lo, hi) = (pos.iter().cloned().fold(tol, f64::min), pos.iter().cloned().fold(tol, f64::max));
            lines.push(Line::new(vec![(ts, lo), (ts, hi)], style::GREY, Style::Solid, Some(format!("first divergence t* = {ts}"))));
        }
        // Bitwise agreement at every t has nothing to draw on a log axis: a linear axis then shows the zeros.
        let any_pos = rel.iter().chain(e1.iter()).any(|p| p.1 > 0.0);
        let mut p = Panel::new(format!("phase {ph}"), "iteration t", "relative error (max over layers)").scales(Scale::Integer, if any_pos { Scale::Log } else { Scale::Linear }).lines(lines);
        p.hlines = vec![HLine::new(tol, format!("tol(state) = {tol:.1e}"))];
        let zeros = rel.iter().chain(e1.iter()).filter(|p| p.1 == 0.0).count();
        if !any_pos {
            p.note = Some("exactly equal at every t (linear axis)".into());
        } else if zeros > 0 {
            p.note = Some(format!("{zeros} point(s) exactly 0 (not drawn)"));
        }
        let title = format!("conformance — {instance} — trajectory {ph} — {}", v.map(|v| v.verdict.as_str()).unwrap_or(verdict));
        out.extend(style::write_figure(dir, &Figure { stem: format!("divergence_{ph}"), title, panels: vec![p], legend: vec![] }, opts)?);
    }
    Ok(out)
}

/// `compare` with a metrics-only map (`ernoult_gdu`): the file's BPTT and EP series are paired with each other and
/// scored by the GDU metrics of checks §1 (nothing is recomputed: verdicts are `info`). Cumulative weight series
/// (`NT`/`DT`) give `ern_rel` on the cumulative form (the reference's quirk E1) and `lab_rmse`, `sign_err`, `rel_l2`
/// on the per-step form (`diff`); per-step neuron series (`nS`/`dS`) give all of them on the per-step form.
pub fn run_metrics_only(file: &Path, instance: &str) -> Result<CheckReport> {
    let ext = read_external(file)?;
    let keys: Vec<String> = ext.keys().cloned().collect();
    let pairs = ernoult_pairs(&keys);
    if pairs.is_empty() {
        return Err(Error::file(file, format!("ernoult_gdu: no NT.<w>/DT.<w> or nS.<i>/dS.<i> pairs among the {} keys ({})", keys.len(), keys.iter().take(8).cloned().collect::<Vec<_>>().join(", "))));
    }
    for (n, d, _) in &pairs {
        if ext[n].size() != ext[d].size() || ext[n].dim() < 1 {
            return Err(Error::file(file, format!("shape mismatch: '{n}' has shape {:?}, '{d}' has {:?} (expected equal, time first)", ext[n].size(), ext[d].size())));
        }
        if !all_finite(&ext[n]) || !all_finite(&ext[d]) {
            return Err(Error::file(file, format!("non-finite value in '{n}' or '{d}'")));
        }
    }
    let mut rows = Rows::new("conformance", instance, "external (metrics only)", "f64");
    let mut summary = vec![
        format!("Metrics only (`ernoult_gdu`): {} BPTT/EP series pairs of the file scored against each other; nothing is recomputed (the reference's models are not epcheck models).", pairs.len()),
        String::new(),
        "| BPTT series | EP series | form | ern_rel_mean | ern_rel_std | lab_rmse | sign_err | rel_l2 |".into(),
        "|---|---|---|---|---|---|---|---|".into(),
    ];
    let series = |t: &Tensor| -> mx::Series {
        let k = t.size()[0];
        let e = (t.numel() as i64 / k.max(1)) as usize;
        mx::Series::new(k as usize, e, to_vec_f64(&t.reshape([k, -1])))
    };
    for (n, d, form) in &pairs {
        let (r, a) = (series(&ext[n]), series(&ext[d]));
        let (ern_m, ern_s) = mx::ern_rel(&a, &r);
        let diff = |s: &mx::Series| -> mx::Series {
            let mut v = s.data.clone();
            for t in (1..s.k).rev() {
                for e in 0..s.e {
                    v[t * s.e + e] -= s.data[(t - 1) * s.e + e];
                }
            }
            mx::Series::new(s.k, s.e, v)
        };
        let (rs, as_) = if *form == "cum" { (diff(&r), diff(&a)) } else { (r.clone(), a.clone()) };
        let (lab, _, _, _) = mx::lab_rmse(&as_, &rs);
        let (sg, r2) = (mx::sign_err(&as_.data, &rs.data), mx::rel_l2(&as_.data, &rs.data));
        let name = format!("{n} vs {d}");
        for (m, v) in [("ern_rel_mean", ern_m), ("ern_rel_std", ern_s), ("lab_rmse", lab), ("sign_err", sg), ("rel_l2", r2)] {
            let mut row = rows.row("pair", &name, m, v);
            row.series_form = Some(if m.starts_with("ern_rel") { form.to_string() } else { "step".into() });
            rows.push(row);
        }
        rows.verdict("pair", &name, &Verdict::Info, json!({ "bptt": n, "ep": d, "form": form, "ern_rel_mean": ern_m, "ern_rel_std": ern_s, "lab_rmse": lab }));
        summary.push(format!("| {n} | {d} | {form} | {ern_m:.4e} | {ern_s:.4e} | {lab:.4e} | {sg:.4} | {r2:.4e} |"));
    }
    let used: Vec<&String> = pairs.iter().flat_map(|(n, d, _)| [n, d]).collect();
    let unused: Vec<&String> = keys.iter().filter(|k| !used.contains(k)).collect();
    if !unused.is_empty() {
        summary.push(String::new());
        summary.push(format!("Not used: {}", unused.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
    }
    Ok(rows.finish(summary, vec![]))
}
