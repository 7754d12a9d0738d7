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
use crate::cli::Common;
use crate::config::RunConfig;
use crate::estimators::{self, bptt, implicit, Estimator, PhaseLengths};
use crate::instance::{instance_id, Instance};
use crate::model::{Batch, Model, State};
use crate::precision::{DeviceChoice, Dtype, Precision};
use crate::relax::{relax, RelaxOptions};
use crate::tensor_util::{all_finite, norm2, to_vec_f64};
use crate::{Error, Result};
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// External tensors (safetensors, or npz).
    pub file: PathBuf,
    /// Name map (TOML): `[names] theirs = "ours"` (or a table with `key` and `transforms`), `[run]` options.
    #[arg(long)]
    pub names: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

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
}

pub fn read_name_map(path: &Path) -> Result<NameMap> {
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
    // `s<k>` as a layer name in state/traj/drive keys.
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() == 3 && ["state", "traj", "drive"].contains(&parts[0]) {
        return format!("{}.{}.{}", parts[0], parts[1], lname(parts[2]));
    }
    key.to_string()
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
}

impl Target {
    /// Tolerance class (checks §10).
    pub fn class(&self) -> &'static str {
        match self {
            Target::Param(_) => "param",
            Target::InputX | Target::InputY | Target::InputOnehot => "input",
            Target::Grad(e, _, _) if e.starts_with("ep_") => "grad_ep",
            Target::Grad(..) => "grad_exact",
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
            match head {
                "state" => lidx(name).map(|k| Target::State(phase.into(), k)),
                "traj" => lidx(name).map(|k| Target::Traj(phase.into(), k)),
                "drive" => lidx(name).map(|k| Target::Drive(phase.into(), k)),
                "dPhidtheta" => pidx(name).map(|i| Target::DPhi(phase.into(), i, 1.0)),
                _ => pidx(name).map(|i| Target::DPhi(phase.into(), i, -1.0)),
            }
        }
        "grad" => {
            let (est, name) = rest.split_once('.')?;
            let (est, beta) = match est.split_once('@') {
                Some((e, b)) => (e, Some(b.parse::<f64>().ok()?)),
                None => (est, None),
            };
            let known = ["ep_plus", "ep_minus", "ep_centered", "bptt", "bptt_trunc", "implicit"].contains(&est) || est.strip_prefix("ep_holomorphic").is_some_and(|n| n.parse::<usize>().is_ok());
            if !known {
                return None;
            }
            pidx(name).map(|i| Target::Grad(est.into(), beta, i))
        }
        "phi" | "energy" | "loss" => PHASES.contains(&rest).then(|| Target::PerExample(head.into(), rest.into())),
        "phi_traj" => PHASES.contains(&rest).then(|| Target::PhiTraj(rest.into())),
        _ => None,
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
        other => return Err(format!("unknown transform '{other}'")),
    })
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
            None => resolved.push((k.clone(), canonical_alias(k), vec![])),
        }
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
    let model = crate::model::presets::build(&cfg)?;
    let mut items = vec![];
    for (e, c, tr) in resolved {
        let target = parse_target(&model, &c).ok_or_else(|| {
            Error::file(file, format!("key '{e}' (canonical '{c}') is not an interchange name epcheck can recompute; map it in the name map, or to \"-\" to skip it"))
        })?;
        items.push(Item { ext_key: e.clone(), canon: c, target, transforms: tr, ext: ext[&e].shallow_clone() });
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
    let case = Case { inst, items, skipped };
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
    f_norm: f64,
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
        let beta = beta.unwrap_or(self.o.beta);
        let key = (est.to_string(), beta.to_bits());
        if let Some(g) = self.grads.get(&key) {
            return Ok(g.iter().map(|t| t.shallow_clone()).collect());
        }
        let (m, p, batch) = (&self.inst.model, &self.inst.params[..], &self.inst.batch);
        let len = self.o.lengths;
        let g = match est {
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
                    _ => m.loss_per_example(batch, &s),
                })
            }
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
    let mut rc = Recompute { inst, o, phases: BTreeMap::new(), grads: BTreeMap::new(), f_norm: 0.0 };
    let b = batch.size();
    let mut summary = vec![
        format!("Conformance: {} external keys compared ({} skipped by the name map); T = {}, K = {}, β = {}", case.items.len(), case.skipped.len(), o.lengths.t_free, o.lengths.k_nudge, o.beta),
        String::new(),
        "| external key | canonical | class | rel_linf | rel_l2 | max_abs | threshold | verdict |".into(),
        "|---|---|---|---|---|---|---|---|".into(),
    ];
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
        let thr = class_threshold(class, o, ext_f32, floor_rel);
        let finite = r.iter().all(|v| v.is_finite());
        let (rl, r2, ma) = (mx::rel_linf(&a, &r), mx::rel_l2(&a, &r), mx::max_abs(&a, &r));
        let verdict = if !finite {
            Verdict::Error(format!("non-finite value: {}", it.ext_key))
        } else if rl <= thr {
            Verdict::Pass
        } else {
            Verdict::Fail(format!("rel_linf={rl:.3e} > {thr:.3e}"))
        };
        for (metric, v) in [("shape_match", 1.0), ("rel_linf", rl), ("rel_l2", r2), ("max_abs", ma), ("floor_rel", floor_rel)] {
            let mut row = rows.row("key", &it.ext_key, metric, v);
            row.reference = Some("external".into());
            if metric == "rel_linf" {
                row.threshold = Some(thr);
                row.verdict = Some(verdict.label().into());
            }
            rows.push(row);
        }
        rows.verdict("key", &it.ext_key, &verdict, json!({ "canonical": it.canon, "class": class, "rel_linf": rl, "threshold": thr }));
        summary.push(format!("| {} | {} | {class} | {rl:.3e} | {r2:.3e} | {ma:.3e} | {thr:.1e} | {} |", it.ext_key, it.canon, verdict.display()));
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
        let verdict = if e1_max <= tol { Verdict::Pass } else { Verdict::Fail(format!("one-step error e1={e1_max:.3e} > {tol:.1e}")) };
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
    if !case.skipped.is_empty() {
        summary.push(String::new());
        summary.push(format!("Not compared (name map): {}", case.skipped.join(", ")));
    }
    Ok(rows.finish(summary, vec![]))
}

/// `epcheck compare FILE [--names MAP] [instance flags]`.
pub fn command(a: CompareArgs) -> Result<i32> {
    for p in [Some(&a.file), a.names.as_ref(), a.common.config.as_ref(), a.common.params.as_ref(), a.common.input.as_ref()].into_iter().flatten() {
        if !p.exists() {
            return Err(Error::file(p, "no such file"));
        }
    }
    let map = match &a.names {
        Some(p) => read_name_map(p)?,
        None => NameMap::default(),
    };
    let mut over = map.run.clone();
    crate::config::merge(&mut over, a.common.overrides()?);
    let cfg = RunConfig::resolve(a.common.preset.as_deref(), a.common.config.as_deref(), over)?;
    let case = load_case(&a.file, &map, cfg, a.common.params.as_deref(), a.common.input.as_deref())?;
    crate::progress::start("conformance");
    let o = ConformanceOptions::from_config(&case.inst.cfg);
    let rep = run(&case, &o)?;
    crate::cli::finish(&a.common, "compare", &case.inst, vec![rep])
}
