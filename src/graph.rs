//! Architecture graphs without code: a TOML file declares the clamped input, the state layers (shape and
//! activation or update map), the couplings (every term kind of `model::terms`, each with its parameters'
//! names, shapes and initial bounds), the loss, the schedule and the output layer. Parsing validates the
//! graph (names, shapes, kinds) and builds a [`Model`] from the existing term constructors — a graph model is
//! the same composition a preset builds. [`emit`] writes any model whose terms describe themselves
//! ([`Term::describe`]) back out, so every preset has a graph form (`epcheck preset NAME --emit-toml`).
//!
//! ```toml
//! name = "tiny-graph"            # the model's name in reports (default "graph")
//! loss = "mse"                   # mse | ce
//! schedule = "sync"              # sync | async2 | [["L1", "L3"], ["L2"]] (explicit groups of layer names)
//! output = "L3"                  # the loss-bearing layer, rank 1 unless it has a [readout] (default: the last layer)
//! init_scale = 0.5               # optional: every tensor drawn again and scaled (conventions §11.2)
//! input_range = [0.0, 1.0]       # optional: range of the seeded synthetic inputs
//!
//! [[inputs]]                     # exactly one clamped input (per-example shape)
//! name = "x"
//! shape = [6]
//!
//! [[layers]]                     # free state layers, in model order
//! name = "L1"
//! shape = [5]
//! activation = "tanh"            # any activation key, relu_alpha(α) included
//! # or: update = { kind = "attention", keys = { input = "x", start = 0, len = 5 },
//! #                queries = { input = "x", start = 0, len = 5 }, scale = 0.5, mask = "off" }
//!
//! [[couplings]]                  # in term order; parameters in order of first appearance
//! kind = "dense"                 # W (n_post, n_pre) linear layout, or layout = "pre_first": W (pre shape…, n_post)
//! pre = "x"
//! post = "L1"
//! weight = { name = "W1", shape = [5, 6], init = 0.4, group = "synapses.0" }  # init: U(−init, init)
//!
//! [[couplings]]
//! kind = "bias"                  # ⟨b, s⟩, b per channel (axis 1)
//! layer = "L1"
//! bias = { name = "b1", shape = [5], init = 0.4 }
//! ```
//!
//! Other kinds: `conv` (pre, post, kernel, stride, pad, weight (C_post, C_pre, k, k)), `conv_pool` (3×3 conv,
//! stride 1, pad 1, then 2×2 max-pool; weight (C_post, C_pre, 3, 3)), `attention_projection` (input, start,
//! len, post, weight (d_out, d_in)), `flatten_dense` (pre = [names…], post, weight (n_post, Σ numel pre)).
//! A coupling may name a parameter declared earlier (`weight = "W1"`, shared) or one of a top-level
//! `[[params]]` list (declared there with name, shape, init, group; those come first in canonical order).
use crate::model::activation::Activation;
use crate::model::attention::{Attention, AttentionMask, SeqSlice};
use crate::model::loss::Loss;
use crate::model::schedule::{Schedule, ScheduleKind};
use crate::model::terms::conv::ConvGeom;
use crate::model::terms::dense::Layout;
use crate::model::terms::{bias::Bias, conv::Conv, conv_pool::ConvPool, dense::Dense, flatten_dense::FlattenDense, projection::Projection, Node, Term, TermSpec};
use crate::model::update_map::MapSpec;
use crate::model::{Init, LayerSpec, Model, ParamSpec};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The coupling kinds a graph may name.
pub const KINDS: [&str; 6] = ["dense", "bias", "conv", "conv_pool", "attention_projection", "flatten_dense"];

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputDecl {
    name: String,
    shape: Vec<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SliceDecl {
    input: String,
    start: i64,
    len: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateDecl {
    kind: String,
    keys: SliceDecl,
    queries: SliceDecl,
    scale: f64,
    #[serde(default)]
    mask: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerDecl {
    name: String,
    shape: Vec<i64>,
    #[serde(default)]
    activation: Option<String>,
    #[serde(default)]
    update: Option<UpdateDecl>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamDecl {
    name: String,
    #[serde(default)]
    shape: Option<Vec<i64>>,
    /// Bound a of U(−a, a).
    #[serde(default)]
    init: Option<f64>,
    #[serde(default)]
    group: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum ParamRef {
    Name(String),
    Decl(ParamDecl),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Names {
    One(String),
    Many(Vec<String>),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CouplingDecl {
    kind: String,
    #[serde(default)]
    pre: Option<Names>,
    #[serde(default)]
    post: Option<String>,
    #[serde(default)]
    layer: Option<String>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    start: Option<i64>,
    #[serde(default)]
    len: Option<i64>,
    #[serde(default)]
    layout: Option<String>,
    #[serde(default)]
    kernel: Option<i64>,
    #[serde(default)]
    stride: Option<i64>,
    #[serde(default)]
    pad: Option<i64>,
    #[serde(default)]
    weight: Option<ParamRef>,
    #[serde(default)]
    bias: Option<ParamRef>,
}

/// `[readout]`: the softmax readout of the output layer (estimators §1.1): logits z = W flat(s_out) + b, not a
/// state; `loss = "ce"` reads them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadoutDecl {
    kind: String,
    weight: ParamRef,
    bias: ParamRef,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphDecl {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    loss: Option<String>,
    #[serde(default)]
    schedule: Option<toml::Value>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    init_scale: Option<f64>,
    #[serde(default)]
    input_range: Option<[f64; 2]>,
    #[serde(default)]
    inputs: Vec<InputDecl>,
    #[serde(default)]
    params: Vec<ParamDecl>,
    #[serde(default)]
    layers: Vec<LayerDecl>,
    #[serde(default)]
    couplings: Vec<CouplingDecl>,
    #[serde(default)]
    readout: Option<ReadoutDecl>,
}

fn err(m: impl std::fmt::Display) -> Error {
    Error::Config(format!("graph: {m}"))
}

fn first_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Reads and builds a graph file (errors name the file).
pub fn load_file(path: &Path) -> Result<Model> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    parse_str(&text).map_err(|e| match e {
        Error::Config(m) => Error::file(path, m),
        other => other,
    })
}

/// Parses graph TOML text and builds the model.
pub fn parse_str(text: &str) -> Result<Model> {
    let t: toml::Table = toml::from_str(text).map_err(|e| err(format!("malformed TOML: {}", first_line(&e.to_string()))))?;
    from_table(t)
}

/// Builds the model of a parsed graph table.
pub fn from_table(t: toml::Table) -> Result<Model> {
    let g: GraphDecl = t.try_into().map_err(|e: toml::de::Error| err(first_line(&e.to_string())))?;
    build(g)
}

/// A node of the graph: the clamped input or a state layer, with its per-example shape.
#[derive(Clone)]
struct NodeInfo {
    node: Node,
    shape: Vec<i64>,
}

struct Builder {
    nodes: HashMap<String, NodeInfo>,
    /// Node names in order: inputs, then layers (for error messages).
    params: Vec<ParamSpec>,
    param_idx: HashMap<String, usize>,
}

fn shape_str(s: &[i64]) -> String {
    format!("[{}]", s.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))
}

impl Builder {
    fn node(&self, what: &str, name: &str) -> Result<NodeInfo> {
        self.nodes.get(name).cloned().ok_or_else(|| {
            let mut known: Vec<&String> = self.nodes.keys().collect();
            known.sort();
            err(format!("{what} names unknown layer '{name}' (known: {})", known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")))
        })
    }
    fn layer(&self, what: &str, name: &str) -> Result<(usize, Vec<i64>)> {
        let n = self.node(what, name)?;
        match n.node {
            Node::Layer(k) => Ok((k, n.shape)),
            Node::Input(_) => Err(err(format!("{what}: '{name}' is a clamped input, but this slot must be a state layer"))),
        }
    }
    fn declare(&mut self, what: &str, d: &ParamDecl) -> Result<usize> {
        if self.param_idx.contains_key(&d.name) {
            return Err(err(format!("{what}: duplicate parameter name '{}'", d.name)));
        }
        let shape = d.shape.clone().ok_or_else(|| err(format!("{what}: parameter '{}' has no shape", d.name)))?;
        if shape.is_empty() || shape.iter().any(|&v| v < 1) {
            return Err(err(format!("{what}: parameter '{}' shape {} must be non-empty with sizes ≥ 1", d.name, shape_str(&shape))));
        }
        // No init bound: allowed when the parameters come from a file (--params); a seeded draw refuses it
        // (`Model::check_init_bounds`). NaN marks it.
        let a = d.init.unwrap_or(f64::NAN);
        if d.init.is_some() && !(a.is_finite() && a >= 0.0) {
            return Err(err(format!("{what}: parameter '{}' init bound must be a finite number ≥ 0, got {a}", d.name)));
        }
        let group = d.group.clone().unwrap_or_else(|| d.name.clone());
        self.params.push(ParamSpec { name: d.name.clone(), shape, group, init: Init::Uniform(a) });
        self.param_idx.insert(d.name.clone(), self.params.len() - 1);
        Ok(self.params.len() - 1)
    }
    /// Resolves a parameter (declared inline or named) and checks its shape.
    fn param(&mut self, what: &str, role: &str, r: &Option<ParamRef>, expect: &[i64], why: &str) -> Result<usize> {
        let idx = match r {
            None => return Err(err(format!("{what}: missing {role} parameter ({role} = {{ name, shape, init }})"))),
            Some(ParamRef::Name(n)) => *self.param_idx.get(n).ok_or_else(|| err(format!("{what}: {role} names unknown parameter '{n}' (declare it inline with its shape and init, or in [[params]])")))?,
            Some(ParamRef::Decl(d)) => self.declare(what, d)?,
        };
        let got = &self.params[idx].shape;
        if got.as_slice() != expect {
            return Err(err(format!("{what}: {role} '{}' has shape {}, expected {} ({why})", self.params[idx].name, shape_str(got), shape_str(expect))));
        }
        Ok(idx)
    }
}

fn slice_of(b: &Builder, what: &str, s: &SliceDecl) -> Result<(SeqSlice, i64)> {
    let n = b.node(what, &s.input)?;
    let i = match n.node {
        Node::Input(i) => i,
        Node::Layer(_) => return Err(err(format!("{what}: '{}' must be a clamped input (rows of a sequence)", s.input))),
    };
    if n.shape.len() != 2 {
        return Err(err(format!("{what}: input '{}' has shape {}, a sequence input must be [L, d]", s.input, shape_str(&n.shape))));
    }
    if s.start < 0 || s.len < 1 || s.start + s.len > n.shape[0] {
        return Err(err(format!("{what}: rows {}..{} do not fit input '{}' of {} rows", s.start, s.start + s.len, s.input, n.shape[0])));
    }
    Ok((SeqSlice::new(i, s.start, s.len), n.shape[1]))
}

fn build(g: GraphDecl) -> Result<Model> {
    let name = g.name.clone().unwrap_or_else(|| "graph".into());
    if g.inputs.len() != 1 {
        return Err(err(format!("exactly one [[inputs]] entry (the clamped input) is supported, got {}", g.inputs.len())));
    }
    if g.layers.is_empty() {
        return Err(err("no [[layers]]: a graph needs at least one state layer"));
    }
    let mut b = Builder { nodes: HashMap::new(), params: vec![], param_idx: HashMap::new() };
    let mut input_shapes = vec![];
    for (i, inp) in g.inputs.iter().enumerate() {
        if inp.shape.is_empty() || inp.shape.iter().any(|&v| v < 1) {
            return Err(err(format!("input '{}': shape {} must be non-empty with sizes ≥ 1", inp.name, shape_str(&inp.shape))));
        }
        if b.nodes.insert(inp.name.clone(), NodeInfo { node: Node::Input(i), shape: inp.shape.clone() }).is_some() {
            return Err(err(format!("duplicate name '{}'", inp.name)));
        }
        input_shapes.push(inp.shape.clone());
    }
    let mut layers = vec![];
    for (k, l) in g.layers.iter().enumerate() {
        if l.shape.is_empty() || l.shape.iter().any(|&v| v < 1) {
            return Err(err(format!("layer '{}': shape {} must be non-empty with sizes ≥ 1", l.name, shape_str(&l.shape))));
        }
        if b.nodes.insert(l.name.clone(), NodeInfo { node: Node::Layer(k), shape: l.shape.clone() }).is_some() {
            return Err(err(format!("duplicate name '{}'", l.name)));
        }
        let activation = match (&l.activation, &l.update) {
            (Some(_), Some(_)) => return Err(err(format!("layer '{}': give either activation or update, not both", l.name))),
            (None, None) => return Err(err(format!("layer '{}': missing activation (or update map)", l.name))),
            (Some(a), None) => Activation::parse(a).map_err(|e| err(format!("layer '{}': {}", l.name, e.to_string().trim_start_matches("config: "))))?,
            (None, Some(_)) => Activation::Identity,
        };
        layers.push(LayerSpec { name: l.name.clone(), shape: l.shape.clone(), activation });
    }
    for p in &g.params {
        b.declare("[[params]]", p)?;
    }
    let mut terms: Vec<Box<dyn Term>> = vec![];
    for (ci, c) in g.couplings.iter().enumerate() {
        terms.push(coupling(&mut b, ci, c)?);
    }
    // Update maps.
    let mut maps = vec![];
    for (k, l) in g.layers.iter().enumerate() {
        if let Some(u) = &l.update {
            let what = format!("layer '{}' update", l.name);
            if u.kind != "attention" {
                return Err(err(format!("{what}: unknown update map kind '{}' (known: attention)", u.kind)));
            }
            let (keys, d) = slice_of(&b, &what, &u.keys)?;
            let (queries, dq) = slice_of(&b, &what, &u.queries)?;
            if dq != d {
                return Err(err(format!("{what}: keys have d = {d} but queries d = {dq}")));
            }
            if l.shape != [u.queries.len, d] {
                return Err(err(format!("{what}: layer '{}' has shape {}, the attention over {} query rows of d = {d} gives [{}, {d}]", l.name, shape_str(&l.shape), u.queries.len, u.queries.len)));
            }
            if !(u.scale.is_finite() && u.scale > 0.0) {
                return Err(err(format!("{what}: scale must be a finite number > 0, got {}", u.scale)));
            }
            let mask = AttentionMask::parse(u.mask.as_deref().unwrap_or("off")).map_err(|e| err(format!("{what}: {}", e.to_string().trim_start_matches("config: "))))?;
            maps.push((k, Attention::new(keys, queries, u.scale, mask)));
        }
    }
    let loss = Loss::parse(g.loss.as_deref().unwrap_or("mse")).map_err(|e| err(e.to_string().trim_start_matches("config: ")))?;
    let n = layers.len();
    let layer_index = |what: &str, nm: &str| -> Result<usize> { b.layer(what, nm).map(|x| x.0) };
    let schedule = match &g.schedule {
        None => Schedule::sync(n),
        Some(toml::Value::String(s)) => match s.as_str() {
            "sync" => Schedule::sync(n),
            "async2" => Schedule::async2(n),
            other => return Err(err(format!("schedule '{other}' is not one of sync, async2, or a list of groups of layer names"))),
        },
        Some(toml::Value::Array(groups)) => {
            let mut gs = vec![];
            for grp in groups {
                let names = grp.as_array().ok_or_else(|| err("schedule groups must be lists of layer names, e.g. [[\"L1\", \"L3\"], [\"L2\"]]"))?;
                let mut ks = vec![];
                for nm in names {
                    let nm = nm.as_str().ok_or_else(|| err("schedule groups must be lists of layer names"))?;
                    ks.push(layer_index("schedule", nm)?);
                }
                gs.push(ks);
            }
            let mut seen = vec![0; n];
            for k in gs.iter().flatten() {
                seen[*k] += 1;
            }
            if let Some(k) = seen.iter().position(|&c| c != 1) {
                return Err(err(format!("schedule must list layer '{}' exactly once (got {} times)", layers[k].name, seen[k])));
            }
            Schedule::groups(gs)
        }
        Some(_) => return Err(err("schedule must be \"sync\", \"async2\" or a list of groups of layer names")),
    };
    let output = match &g.output {
        None => n - 1,
        Some(o) => layer_index("output", o)?,
    };
    let readout = match &g.readout {
        None => None,
        Some(r) => {
            let what = format!("readout of '{}'", layers[output].name);
            if r.kind != "softmax" {
                let hint = crate::config::closest(&r.kind, ["softmax"]).map(|c| format!("; did you mean '{c}'?")).unwrap_or_default();
                return Err(err(format!("{what}: kind '{}' is not one of softmax{hint}", r.kind)));
            }
            if loss != Loss::Ce {
                return Err(err(format!("{what}: the softmax readout needs loss = \"ce\", got \"{}\"", loss.key())));
            }
            // C from the weight's declared (or named) shape; the weight is (C, numel of the layer), flattened row-major.
            let c = match &r.weight {
                ParamRef::Decl(d) => d.shape.as_ref().and_then(|s| s.first().copied()),
                ParamRef::Name(n) => b.param_idx.get(n).and_then(|&i| b.params[i].shape.first().copied()),
            };
            let numel: i64 = layers[output].shape.iter().product();
            let c = c.filter(|&c| c >= 1).ok_or_else(|| err(format!("{what}: the weight needs a shape [C, {numel}]")))?;
            let why = format!("the readout maps the {numel} units of '{}' to C = {c} logits", layers[output].name);
            let w = b.param(&what, "weight", &Some(r.weight.clone()), &[c, numel], &why)?;
            let bi = b.param(&what, "bias", &Some(r.bias.clone()), &[c], &why)?;
            Some(crate::model::readout::Readout { weight: w, bias: bi })
        }
    };
    if readout.is_none() && layers[output].shape.len() != 1 {
        return Err(err(format!("output layer '{}' has shape {}; the loss needs a vector layer [C]", layers[output].name, shape_str(&layers[output].shape))));
    }
    let mut m = Model::new(&name, input_shapes, layers, b.params, terms, loss, schedule)?;
    m.output = output;
    m.readout = readout;
    if let Some(s) = g.init_scale {
        if !(s.is_finite() && s > 0.0) {
            return Err(err(format!("init_scale must be a finite number > 0, got {s}")));
        }
        m.init_scale = Some(s);
    }
    if let Some([lo, hi]) = g.input_range {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(err(format!("input_range must be [lo, hi] with lo < hi, got [{lo}, {hi}]")));
        }
        m.input_range = (lo, hi);
    }
    for (k, a) in maps {
        m = m.with_update_map(k, Arc::new(a))?;
    }
    Ok(m)
}

fn coupling(b: &mut Builder, ci: usize, c: &CouplingDecl) -> Result<Box<dyn Term>> {
    let kind = c.kind.as_str();
    if !KINDS.contains(&kind) {
        return Err(err(format!("coupling {ci}: unknown kind '{kind}' (known: {})", KINDS.join(", "))));
    }
    // Fields each kind accepts.
    let allowed: &[&str] = match kind {
        "dense" => &["pre", "post", "layout", "weight"],
        "bias" => &["layer", "bias"],
        "conv" => &["pre", "post", "kernel", "stride", "pad", "weight"],
        "conv_pool" => &["pre", "post", "weight"],
        "attention_projection" => &["input", "start", "len", "post", "weight"],
        _ => &["pre", "post", "weight"],
    };
    let present = [
        ("pre", c.pre.is_some()),
        ("post", c.post.is_some()),
        ("layer", c.layer.is_some()),
        ("input", c.input.is_some()),
        ("start", c.start.is_some()),
        ("len", c.len.is_some()),
        ("layout", c.layout.is_some()),
        ("kernel", c.kernel.is_some()),
        ("stride", c.stride.is_some()),
        ("pad", c.pad.is_some()),
        ("weight", c.weight.is_some()),
        ("bias", c.bias.is_some()),
    ];
    if let Some((f, _)) = present.iter().find(|(f, p)| *p && !allowed.contains(f)) {
        return Err(err(format!("coupling {ci} ({kind}): key '{f}' does not apply (keys: {})", allowed.join(", "))));
    }
    let need = |v: &Option<String>, key: &str| v.clone().ok_or_else(|| err(format!("coupling {ci} ({kind}): missing {key}")));
    let one_pre = |b: &Builder| -> Result<(String, NodeInfo)> {
        match &c.pre {
            Some(Names::One(s)) => Ok((s.clone(), b.node(&format!("coupling {ci} ({kind})"), s)?)),
            Some(Names::Many(_)) => Err(err(format!("coupling {ci} ({kind}): pre must be one layer name"))),
            None => Err(err(format!("coupling {ci} ({kind}): missing pre"))),
        }
    };
    match kind {
        "bias" => {
            let ln = need(&c.layer, "layer")?;
            let what = format!("coupling {ci} (bias on {ln})");
            let (k, shape) = b.layer(&what, &ln)?;
            let bi = b.param(&what, "bias", &c.bias, &[shape[0]], &format!("one per channel of {ln} {}", shape_str(&shape)))?;
            Ok(Box::new(Bias::new(Node::Layer(k), bi)))
        }
        "dense" | "conv" | "conv_pool" => {
            let (pn, pre) = one_pre(b)?;
            let qn = need(&c.post, "post")?;
            let what = format!("coupling {ci} ({kind} {pn} → {qn})");
            let (k, post) = b.layer(&what, &qn)?;
            if pre.node == Node::Layer(k) {
                return Err(err(format!("{what}: couples layer '{qn}' to itself (a layer's self-interaction is its activation, not a coupling)")));
            }
            let both = format!("{pn} {} and {qn} {}", shape_str(&pre.shape), shape_str(&post));
            match kind {
                "dense" => {
                    if post.len() != 1 {
                        return Err(err(format!("{what}: post layer {qn} {} must be a vector layer [n]", shape_str(&post))));
                    }
                    let n_pre: i64 = pre.shape.iter().product();
                    let layout = c.layout.as_deref().unwrap_or("linear");
                    match layout {
                        "linear" => {
                            if pre.shape.len() != 1 && matches!(pre.node, Node::Layer(_)) {
                                return Err(err(format!("{what}: the linear layout needs a vector pre layer, {pn} is {} (use layout = \"pre_first\" or flatten_dense)", shape_str(&pre.shape))));
                            }
                            let wi = b.param(&what, "weight", &c.weight, &[post[0], n_pre], &format!("(n_post, n_pre) from {both}"))?;
                            Ok(Box::new(Dense::new(pre.node, Node::Layer(k), wi)))
                        }
                        "pre_first" => {
                            let mut expect = pre.shape.clone();
                            expect.push(post[0]);
                            let wi = b.param(&what, "weight", &c.weight, &expect, &format!("(pre shape…, n_post) from {both}"))?;
                            Ok(Box::new(Dense::pre_first(pre.node, Node::Layer(k), wi, pre.shape.clone())))
                        }
                        other => Err(err(format!("{what}: layout must be linear or pre_first, got '{other}'"))),
                    }
                }
                _ => {
                    if pre.shape.len() != 3 || post.len() != 3 {
                        return Err(err(format!("{what}: {kind} needs [C, H, W] layers, got {both}")));
                    }
                    let (kk, st, pad) = if kind == "conv" {
                        let kk = c.kernel.ok_or_else(|| err(format!("{what}: missing kernel")))?;
                        let st = c.stride.unwrap_or(1);
                        let pad = c.pad.unwrap_or(0);
                        if kk < 1 || st < 1 || pad < 0 {
                            return Err(err(format!("{what}: need kernel ≥ 1, stride ≥ 1, pad ≥ 0, got {kk}, {st}, {pad}")));
                        }
                        (kk, st, pad)
                    } else {
                        (3, 1, 1)
                    };
                    let (h, w) = (pre.shape[1], pre.shape[2]);
                    if h + 2 * pad < kk || w + 2 * pad < kk {
                        return Err(err(format!("{what}: kernel {kk} does not fit {pn} {} with pad {pad}", shape_str(&pre.shape))));
                    }
                    let mut expect = vec![post[0], ConvGeom::out_size(kk, st, pad, h), ConvGeom::out_size(kk, st, pad, w)];
                    if kind == "conv_pool" {
                        if h % 2 != 0 || w % 2 != 0 {
                            return Err(err(format!("{what}: the 2×2 pool needs an even spatial size, {pn} is {}", shape_str(&pre.shape))));
                        }
                        expect = vec![post[0], h / 2, w / 2];
                    }
                    if post != expect {
                        let op = if kind == "conv" { format!("conv(k={kk}, stride={st}, pad={pad})") } else { "conv(3×3) + 2×2 max-pool".into() };
                        return Err(err(format!("{what}: shape mismatch: {op} of {pn} {} gives {}, but {qn} is {}", shape_str(&pre.shape), shape_str(&expect[1..]), shape_str(&post))));
                    }
                    let wi = b.param(&what, "weight", &c.weight, &[post[0], pre.shape[0], kk, kk], &format!("(C_post, C_pre, k, k) from {both}"))?;
                    Ok(if kind == "conv" { Box::new(Conv::new(pre.node, Node::Layer(k), wi, kk, st, pad, [h, w])) } else { Box::new(ConvPool::new(pre.node, Node::Layer(k), wi, [h, w])) })
                }
            }
        }
        "attention_projection" => {
            let inp = need(&c.input, "input")?;
            let qn = need(&c.post, "post")?;
            let what = format!("coupling {ci} (attention_projection {inp} → {qn})");
            let n = b.node(&what, &inp)?;
            let start = c.start.unwrap_or(0);
            let len = match c.len {
                Some(l) => l,
                None => n.shape[0] - start,
            };
            let (rows, d_in) = slice_of(b, &what, &SliceDecl { input: inp.clone(), start, len })?;
            let (k, post) = b.layer(&what, &qn)?;
            if post.len() != 2 || post[0] != len {
                return Err(err(format!("{what}: shape mismatch: {len} rows of {inp} {} project into [{len}, d_out], but {qn} is {}", shape_str(&n.shape), shape_str(&post))));
            }
            let wi = b.param(&what, "weight", &c.weight, &[post[1], d_in], &format!("(d_out, d_in) from {inp} {} and {qn} {}", shape_str(&n.shape), shape_str(&post)))?;
            Ok(Box::new(Projection::new(rows, k, wi)))
        }
        _ => {
            // flatten_dense
            let pres = match &c.pre {
                Some(Names::Many(v)) if !v.is_empty() => v.clone(),
                Some(Names::One(s)) => vec![s.clone()],
                _ => return Err(err(format!("coupling {ci} (flatten_dense): missing pre (a list of layer names)"))),
            };
            let qn = need(&c.post, "post")?;
            let what = format!("coupling {ci} (flatten_dense [{}] → {qn})", pres.join(", "));
            let (k, post) = b.layer(&what, &qn)?;
            if post.len() != 1 {
                return Err(err(format!("{what}: post layer {qn} {} must be a vector layer [n]", shape_str(&post))));
            }
            let mut nodes = vec![];
            let mut total = 0;
            for p in &pres {
                let n = b.node(&what, p)?;
                if n.node == Node::Layer(k) {
                    return Err(err(format!("{what}: couples layer '{qn}' to itself")));
                }
                if nodes.contains(&n.node) {
                    return Err(err(format!("{what}: '{p}' is listed twice")));
                }
                total += n.shape.iter().product::<i64>();
                nodes.push(n.node);
            }
            let wi = b.param(&what, "weight", &c.weight, &[post[0], total], &format!("(n_post, Σ numel pre) = ({}, {total})", post[0]))?;
            Ok(Box::new(FlattenDense::new(nodes, Node::Layer(k), wi)))
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// Writing a model out.

fn v<T: Into<toml::Value>>(x: T) -> String {
    x.into().to_string()
}

fn ints(s: &[i64]) -> String {
    v(toml::Value::Array(s.iter().map(|&i| toml::Value::Integer(i)).collect()))
}

fn fnum(x: f64) -> String {
    v(toml::Value::Float(x))
}

/// The graph TOML of a model whose terms and update maps describe themselves.
pub fn emit(m: &Model) -> Result<String> {
    let input_name = |i: usize| if m.input_shapes.len() == 1 { "x".to_string() } else { format!("x{i}") };
    let node_name = |n: Node| match n {
        Node::Input(i) => input_name(i),
        Node::Layer(k) => m.layers[k].name.clone(),
    };
    let mut o = vec![format!("# epcheck architecture graph (src/graph.rs); written from the model '{}'.", m.preset)];
    o.push(format!("name = {}", v(m.preset.as_str())));
    o.push(format!("loss = {}", v(m.loss.key())));
    let n = m.layers.len();
    let sched = match m.schedule.kind {
        ScheduleKind::Sync if m.schedule.groups == Schedule::sync(n).groups => v("sync"),
        ScheduleKind::Async2 if m.schedule.groups == Schedule::async2(n).groups => v("async2"),
        _ => {
            let gs: Vec<String> = m.schedule.groups.iter().map(|g| format!("[{}]", g.iter().map(|&k| v(m.layers[k].name.as_str())).collect::<Vec<_>>().join(", "))).collect();
            format!("[{}]", gs.join(", "))
        }
    };
    o.push(format!("schedule = {sched}"));
    o.push(format!("output = {}", v(m.layers[m.output].name.as_str())));
    if let Some(s) = m.init_scale {
        o.push(format!("init_scale = {}", fnum(s)));
    }
    o.push(format!("input_range = [{}, {}]", fnum(m.input_range.0), fnum(m.input_range.1)));
    // Parameters inline (in order of first appearance) when that is the canonical order, else declared first.
    let mut first: Vec<usize> = vec![];
    for t in &m.terms {
        for &p in t.params() {
            if !first.contains(&p) {
                first.push(p);
            }
        }
    }
    if let Some(r) = &m.readout {
        // The readout's tensors come after every term's (they enter only the loss).
        first.extend([r.weight, r.bias]);
    }
    let inline = first == (0..m.params.len()).collect::<Vec<_>>();
    let decl = |pi: usize| -> String {
        let p = &m.params[pi];
        let Init::Uniform(a) = p.init;
        let mut s = format!("{{ name = {}, shape = {}", v(p.name.as_str()), ints(&p.shape));
        if !a.is_nan() {
            s.push_str(&format!(", init = {}", fnum(a)));
        }
        if p.group != p.name {
            s.push_str(&format!(", group = {}", v(p.group.as_str())));
        }
        s + " }"
    };
    if !inline {
        for p in &m.params {
            let Init::Uniform(a) = p.init;
            o.push(String::new());
            o.push("[[params]]".into());
            o.push(format!("name = {}", v(p.name.as_str())));
            o.push(format!("shape = {}", ints(&p.shape)));
            if !a.is_nan() {
                o.push(format!("init = {}", fnum(a)));
            }
            o.push(format!("group = {}", v(p.group.as_str())));
        }
    }
    for (i, s) in m.input_shapes.iter().enumerate() {
        o.push(String::new());
        o.push("[[inputs]]".into());
        o.push(format!("name = {}", v(input_name(i).as_str())));
        o.push(format!("shape = {}", ints(s)));
    }
    for (k, l) in m.layers.iter().enumerate() {
        o.push(String::new());
        o.push("[[layers]]".into());
        o.push(format!("name = {}", v(l.name.as_str())));
        o.push(format!("shape = {}", ints(&l.shape)));
        match m.update_map(k) {
            None => o.push(format!("activation = {}", v(l.activation.describe().as_str()))),
            Some(map) => match map.describe() {
                Some(MapSpec::Attention(a)) => {
                    let sl = |s: &SeqSlice| format!("{{ input = {}, start = {}, len = {} }}", v(input_name(s.input).as_str()), s.start, s.len);
                    o.push(format!("update = {{ kind = \"attention\", keys = {}, queries = {}, scale = {}, mask = {} }}", sl(&a.keys), sl(&a.queries), fnum(a.scale), v(a.mask.key())));
                }
                None => return Err(Error::Config(format!("graph: layer '{}' has an update map ({}) without a graph form", l.name, map.key()))),
            },
        }
    }
    let mut seen = vec![false; m.params.len()];
    let mut pref = |pi: usize| -> String {
        if inline && !seen[pi] {
            seen[pi] = true;
            decl(pi)
        } else {
            v(m.params[pi].name.as_str())
        }
    };
    for (ti, t) in m.terms.iter().enumerate() {
        let spec = t.describe().ok_or_else(|| Error::Config(format!("graph: term {ti} ({}) has no graph form", t.kind())))?;
        let slots = t.slots();
        let ps = t.params();
        o.push(String::new());
        o.push("[[couplings]]".into());
        let pair = |o: &mut Vec<String>| {
            o.push(format!("pre = {}", v(node_name(slots[0]).as_str())));
            o.push(format!("post = {}", v(node_name(slots[1]).as_str())));
        };
        match spec {
            TermSpec::Bias => {
                o.push("kind = \"bias\"".into());
                o.push(format!("layer = {}", v(node_name(slots[0]).as_str())));
                o.push(format!("bias = {}", pref(ps[0])));
            }
            TermSpec::Dense(layout) => {
                o.push("kind = \"dense\"".into());
                pair(&mut o);
                if let Layout::PreFirst(_) = layout {
                    o.push("layout = \"pre_first\"".into());
                }
                o.push(format!("weight = {}", pref(ps[0])));
            }
            TermSpec::Conv { kernel, stride, pad } => {
                o.push("kind = \"conv\"".into());
                pair(&mut o);
                o.push(format!("kernel = {kernel}"));
                o.push(format!("stride = {stride}"));
                o.push(format!("pad = {pad}"));
                o.push(format!("weight = {}", pref(ps[0])));
            }
            TermSpec::ConvPool => {
                o.push("kind = \"conv_pool\"".into());
                pair(&mut o);
                o.push(format!("weight = {}", pref(ps[0])));
            }
            TermSpec::Projection(rows) => {
                o.push("kind = \"attention_projection\"".into());
                o.push(format!("input = {}", v(input_name(rows.input).as_str())));
                o.push(format!("start = {}", rows.start));
                o.push(format!("len = {}", rows.len));
                o.push(format!("post = {}", v(node_name(slots[1]).as_str())));
                o.push(format!("weight = {}", pref(ps[0])));
            }
            TermSpec::FlattenDense => {
                o.push("kind = \"flatten_dense\"".into());
                let (post, pre) = slots.split_last().expect("flatten_dense has slots");
                o.push(format!("pre = [{}]", pre.iter().map(|&n| v(node_name(n).as_str())).collect::<Vec<_>>().join(", ")));
                o.push(format!("post = {}", v(node_name(*post).as_str())));
                o.push(format!("weight = {}", pref(ps[0])));
            }
        }
    }
    if let Some(r) = &m.readout {
        o.push(String::new());
        o.push("[readout]".into());
        o.push("kind = \"softmax\"".into());
        o.push(format!("weight = {}", pref(r.weight)));
        o.push(format!("bias = {}", pref(r.bias)));
    }
    Ok(o.join("\n") + "\n")
}
