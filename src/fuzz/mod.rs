//! Fuzzing random architecture graphs against the engine's invariants (checks §11.3 in spirit, over graphs
//! instead of P-MLPs). A [`Recipe`] (depth, widths, coupling kinds — dense, conv with stride 1 or 2, conv+pool
//! where the size allows —, skip couplings, activation, gain, schedule, loss, batch, seed) is written out as a
//! graph file ([`crate::graph`]) and built from it, so every case is a reproducible graph TOML. Weights are
//! drawn with bound gain/√fan-in (gain ≤ 0.5, split over the couplings into a layer) so the dynamics contract.
//!
//! Properties ([`PROPERTIES`]):
//! * `local`: the local (Hebbian) parameter derivative equals autograd of Φ̄ at random states (rel_linf ≤ 1e-11);
//! * `bptt_fd`: BPTT through T = 10 steps projected on a random direction equals Richardson central finite
//!   differences of the T-step loss (smooth activations only; |error| ≤ 1e-7·‖g‖);
//! * `ep_bptt`: on converged (r_∞ ≤ 1e-13), kink-free instances (smooth, or clamp units that change no regime
//!   between the free and nudged fixed points), symmetric EP at β = 1e-3 vs implicit differentiation (= BPTT at
//!   the fixed point): rel_l2 ≤ c·β² with c = 100, plus the convergence floor 1e-9/(β·‖g‖∞);
//! * `holo_n2`: holomorphic EP with N = 2 equals symmetric EP with the same phases (holomorphic activations,
//!   dense couplings only; rel_linf ≤ 1e-9).
//!
//! * `audit`, `converge`, `gdu`, `holo_bias`: the energy audit, convergence within the T a contraction bound
//!   predicts, the GDU identity and the holomorphic bias law ([`properties`]).
//!
//! A property that does not apply to a graph (or whose preconditions fail, e.g. no convergence) is `skip`.
//! `epcheck fuzz` draws cases from an architecture family ([`family`]; the built-in one is
//! `fixtures/families/builtin.toml`), shrinks the first failure of every property ([`shrink`]) to a smallest
//! graph that still fails it, and writes a run folder (cases table, summary, JUnit, index.html, regression files
//! and the shrunk graph with a verify suite). `--shard i/n` runs the cases i, i + n, … of the campaign
//! (`epcheck merge` joins the shards). The proptests in `proptests/` shrink failures of the built-in generator
//! and write them under `fixtures/regressions/`, which `tests/graph.rs` replays.
pub mod family;
pub mod properties;
pub mod shrink;

use crate::checks::kinks;
use crate::checks::metrics::{rel_l2, rel_linf};
use crate::estimators::{ep_centered, ep_holomorphic, fd, implicit, PhaseLengths};
use crate::model::{Batch, Model, State};
use crate::precision::{Dtype, Precision};
use crate::relax::{relax_until_stationary, Phase, RelaxOptions};
use crate::tensor_util::{norm2, to_vec_f64};
use crate::{Error, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

pub const PROPERTIES: [&str; 8] = ["local", "bptt_fd", "ep_bptt", "holo_n2", "audit", "converge", "gdu", "holo_bias"];

pub const SMOOTH: [&str; 4] = ["logistic4", "sigmoid", "tanh", "identity"];
pub const CLAMP: [&str; 5] = ["my_hard_sig", "hard_sigmoid_2u", "ctrd_hard_sig", "hard_sigmoid", "relu6"];

/// A hidden layer of a recipe. Conv kinds after a vector layer become dense layers of that width.
#[derive(Clone, Debug, PartialEq)]
pub enum Hidden {
    Dense(i64),
    /// 3×3 conv, pad 1, stride 1 or 2, to `channels`.
    Conv { channels: i64, stride: i64 },
    /// 3×3 conv + 2×2 max-pool (needs an even size; else a stride-2 conv).
    ConvPool { channels: i64 },
    /// A dense layer whose main coupling is the test-only planted kind `test_bad_dense` (a pre-first dense
    /// after an image layer, which the planted kind does not cover).
    Planted(i64),
}

/// Everything that determines a fuzz case's graph.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// (channels, height) of an image input; None = a vector input of `n_in`.
    pub image: Option<(i64, i64)>,
    pub n_in: i64,
    /// 0–3 hidden layers (depth D = hidden + 1).
    pub hidden: Vec<Hidden>,
    pub classes: i64,
    /// Candidate skip couplings (i → j, j ≥ i + 2, in enumeration order): which are present.
    pub skips: Vec<bool>,
    pub activation: String,
    pub gain: f64,
    pub biases: bool,
    /// `sync` or `async2`.
    pub schedule: String,
    /// `mse` or `ce` (ce: identity output).
    pub loss: String,
    pub batch: i64,
    pub seed: u64,
    /// The output layer's main coupling is the test-only planted kind (families only).
    pub planted_output: bool,
    /// The family's fixed parts (families only): layers and couplings every case contains.
    pub fixed: Option<family::FixedText>,
    /// An attention block (families only): the input is a sequence x [tokens, dim] and the first layer `A` an
    /// attention layer over it (the update map of the IMDB/SNLI presets) fed by an attention projection of x.
    pub attention: Option<(i64, i64)>,
}

/// SplitMix64: the fuzzer's own seeded stream (independent of libtorch's).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in lo..=hi.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.int(0, xs.len() as i64 - 1) as usize]
    }
}

impl Recipe {
    /// A random recipe from a seed (half the cases image graphs with conv couplings, half vector graphs;
    /// 60 % smooth activations).
    pub fn random(seed: u64) -> Recipe {
        let mut r = Rng::new(seed);
        let image = if r.unit() < 0.5 { Some((r.int(1, 3), r.int(3, 8))) } else { None };
        let n_in = r.int(1, 6);
        let depth = r.int(0, 3) as usize;
        let hidden = (0..depth)
            .map(|_| match (image.is_some(), r.int(0, 2)) {
                (true, 0) => Hidden::Conv { channels: r.int(1, 4), stride: r.int(1, 2) },
                (true, 1) => Hidden::ConvPool { channels: r.int(1, 4) },
                _ => Hidden::Dense(r.int(1, 6)),
            })
            .collect();
        let activation = if r.unit() < 0.6 { r.pick(&SMOOTH) } else { r.pick(&CLAMP) }.to_string();
        let loss = if r.unit() < 0.25 { "ce" } else { "mse" }.to_string();
        let classes = r.int(if loss == "ce" { 2 } else { 1 }, 4);
        let skips = (0..6).map(|_| r.unit() < 0.3).collect();
        let gain = 0.1 + 0.4 * r.unit();
        let biases = r.unit() < 0.7;
        let schedule = if r.unit() < 0.5 { "sync" } else { "async2" }.to_string();
        let batch = r.int(1, 3);
        Recipe { image, n_in, hidden, classes, skips, activation, gain, biases, schedule, loss, batch, seed: r.next_u64() % 1_000_000, planted_output: false, fixed: None, attention: None }
    }

    pub fn smooth(&self) -> bool {
        SMOOTH.contains(&self.activation.as_str())
    }

    /// The graph TOML and a one-line summary.
    pub fn graph(&self) -> (String, String) {
        #[derive(Clone)]
        struct N {
            name: String,
            shape: Vec<i64>,
        }
        let fmt_shape = |s: &[i64]| format!("[{}]", s.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "));
        let input = match (self.attention, self.image) {
            (Some((t, d)), _) => N { name: "x".into(), shape: vec![t, d] },
            (None, Some((c, h))) => N { name: "x".into(), shape: vec![c, h, h] },
            (None, None) => N { name: "x".into(), shape: vec![self.n_in] },
        };
        let mut nodes = vec![input];
        // (layer shape, main coupling text without weight, fan-in, weight shape, summary)
        let mut layers: Vec<(N, String, i64, Vec<i64>, String)> = vec![];
        if let Some((t, d)) = self.attention {
            let a = N { name: "A".into(), shape: vec![t, d] };
            nodes.push(a.clone());
            layers.push((a, format!("kind = \"attention_projection\"\ninput = \"x\"\nstart = 0\nlen = {t}\npost = \"A\""), d, vec![d, d], "attention".into()));
        }
        let out = if self.planted_output { Hidden::Planted(self.classes) } else { Hidden::Dense(self.classes) };
        let all: Vec<Hidden> = self.hidden.iter().cloned().chain([out]).collect();
        for (j, h) in all.iter().enumerate() {
            let prev = nodes.last().expect("input").clone();
            let name = if j + 1 == all.len() { "out".to_string() } else { format!("L{}", j + 1) };
            let image = prev.shape.len() == 3;
            let (shape, text, fan, wshape, summ) = match (h, image) {
                (Hidden::Conv { channels, stride }, true) => {
                    let o = crate::model::terms::conv::ConvGeom::out_size(3, *stride, 1, prev.shape[1]);
                    (vec![*channels, o, o], format!("kind = \"conv\"\npre = \"{}\"\npost = \"{name}\"\nkernel = 3\nstride = {stride}\npad = 1", prev.name), prev.shape[0] * 9, vec![*channels, prev.shape[0], 3, 3], format!("conv3/s{stride}"))
                }
                (Hidden::ConvPool { channels }, true) if prev.shape[1] % 2 == 0 => {
                    let o = prev.shape[1] / 2;
                    (vec![*channels, o, o], format!("kind = \"conv_pool\"\npre = \"{}\"\npost = \"{name}\"", prev.name), prev.shape[0] * 9, vec![*channels, prev.shape[0], 3, 3], "conv_pool".into())
                }
                (Hidden::ConvPool { channels }, true) => {
                    let o = crate::model::terms::conv::ConvGeom::out_size(3, 2, 1, prev.shape[1]);
                    (vec![*channels, o, o], format!("kind = \"conv\"\npre = \"{}\"\npost = \"{name}\"\nkernel = 3\nstride = 2\npad = 1", prev.name), prev.shape[0] * 9, vec![*channels, prev.shape[0], 3, 3], "conv3/s2".into())
                }
                (Hidden::Planted(n), false) if prev.shape.len() == 1 => {
                    let n_pre: i64 = prev.shape.iter().product();
                    (vec![*n], format!("kind = \"{}\"\npre = \"{}\"\npost = \"{name}\"", crate::model::terms::planted::KIND, prev.name), n_pre, vec![*n, n_pre], "test_bad_dense".into())
                }
                (h, _) => {
                    let n = match h {
                        Hidden::Dense(n) | Hidden::Planted(n) => *n,
                        Hidden::Conv { channels, .. } | Hidden::ConvPool { channels } => *channels,
                    };
                    let n_pre: i64 = prev.shape.iter().product();
                    if prev.shape.len() == 2 {
                        (vec![n], format!("kind = \"flatten_dense\"\npre = [\"{}\"]\npost = \"{name}\"", prev.name), n_pre, vec![n, n_pre], "flatten_dense".into())
                    } else if image {
                        let mut w = prev.shape.clone();
                        w.push(n);
                        (vec![n], format!("kind = \"dense\"\npre = \"{}\"\npost = \"{name}\"\nlayout = \"pre_first\"", prev.name), n_pre, w, "dense_pf".into())
                    } else {
                        (vec![n], format!("kind = \"dense\"\npre = \"{}\"\npost = \"{name}\"", prev.name), n_pre, vec![n, n_pre], "dense".into())
                    }
                }
            };
            let node = N { name, shape };
            nodes.push(node.clone());
            layers.push((node, text, fan, wshape, summ));
        }
        // Skip couplings i → j (node i, layer j as node j + 1), j + 1 ≥ i + 2.
        let mut skips: Vec<Vec<(String, i64, Vec<i64>, String)>> = vec![vec![]; layers.len()];
        let mut cand = 0;
        let mut n_skips = 0;
        let first = layers.len() - all.len();
        for j in first..layers.len() {
            for i in 0..j {
                // node i → layer j (node j + 1); the main coupling is node j → layer j.
                let on = cand < self.skips.len() && self.skips[cand];
                cand += 1;
                if !on {
                    continue;
                }
                let (pre, post) = (&nodes[i], &layers[j].0);
                let t = if pre.shape.len() == 2 {
                    // Sequence nodes (the input and the attention layer) feed only through the main couplings.
                    None
                } else if post.shape.len() == 1 {
                    let n_pre: i64 = pre.shape.iter().product();
                    if pre.shape.len() == 3 {
                        let mut w = pre.shape.clone();
                        w.push(post.shape[0]);
                        Some((format!("kind = \"dense\"\npre = \"{}\"\npost = \"{}\"\nlayout = \"pre_first\"", pre.name, post.name), n_pre, w))
                    } else {
                        Some((format!("kind = \"dense\"\npre = \"{}\"\npost = \"{}\"", pre.name, post.name), n_pre, vec![post.shape[0], n_pre]))
                    }
                } else if pre.shape.len() == 3 {
                    // A 1×1 conv whose stride maps the sizes onto each other.
                    (1..=pre.shape[1]).find(|&st| crate::model::terms::conv::ConvGeom::out_size(1, st, 0, pre.shape[1]) == post.shape[1]).map(|st| {
                        (format!("kind = \"conv\"\npre = \"{}\"\npost = \"{}\"\nkernel = 1\nstride = {st}\npad = 0", pre.name, post.name), pre.shape[0], vec![post.shape[0], pre.shape[0], 1, 1])
                    })
                } else {
                    None
                };
                if let Some((text, fan, w)) = t {
                    skips[j].push((text, fan, w, pre.name.clone()));
                    n_skips += 1;
                }
            }
        }
        let act_of = |j: usize| if j + 1 == layers.len() && self.loss == "ce" { "identity".to_string() } else { self.activation.clone() };
        let layer_line = |j: usize, n: &N| match (self.attention, n.name.as_str()) {
            (Some((t, d)), "A") => format!("update = {{ kind = \"attention\", keys = {{ input = \"x\", start = 0, len = {t} }}, queries = {{ input = \"x\", start = 0, len = {t} }}, scale = {:?}, mask = \"off\" }}", 1.0 / (d as f64).sqrt()),
            _ => format!("activation = \"{}\"", act_of(j)),
        };
        let mut o = vec![
            "name = \"fuzz\"".to_string(),
            format!("loss = \"{}\"", self.loss),
            format!("schedule = \"{}\"", self.schedule),
            "input_range = [0.0, 1.0]".into(),
            String::new(),
            "[[inputs]]".into(),
            "name = \"x\"".into(),
            format!("shape = {}", fmt_shape(&nodes[0].shape)),
        ];
        for (j, (n, ..)) in layers.iter().enumerate() {
            o.extend([String::new(), "[[layers]]".into(), format!("name = \"{}\"", n.name), format!("shape = {}", fmt_shape(&n.shape)), layer_line(j, n)]);
        }
        if let Some(f) = &self.fixed {
            // The fixed layers follow the drawn ones; the loss stays on the drawn output layer.
            o.insert(3, "output = \"out\"".into());
            o.extend([String::new(), f.layers.clone()]);
        }
        let mut summ = vec![format!("x{}", fmt_shape(&nodes[0].shape))];
        for (j, (n, text, fan, w, s)) in layers.iter().enumerate() {
            let share = ((1 + skips[j].len()) as f64).sqrt();
            let bound = |fan: i64| self.gain / (fan as f64).sqrt() / share;
            o.extend([String::new(), "[[couplings]]".into(), text.clone(), format!("weight = {{ name = \"W.{}\", shape = {}, init = {:?} }}", n.name, fmt_shape(w), bound(*fan))]);
            for (text, fan, w, pre) in &skips[j] {
                o.extend([String::new(), "[[couplings]]".into(), text.clone(), format!("weight = {{ name = \"S.{pre}_{}\", shape = {}, init = {:?} }}", n.name, fmt_shape(w), bound(*fan))]);
            }
            if self.biases && n.shape.len() != 2 {
                o.extend([String::new(), "[[couplings]]".into(), "kind = \"bias\"".into(), format!("layer = \"{}\"", n.name), format!("bias = {{ name = \"b.{}\", shape = [{}], init = {:?} }}", n.name, n.shape[0], 0.5 * self.gain)]);
            }
            summ.push(format!("{}{} {s}", n.name, fmt_shape(&n.shape)));
        }
        if let Some(f) = &self.fixed {
            o.extend([String::new(), f.couplings.clone()]);
            summ.push(format!("fixed {}", f.names.join(", ")));
        }
        let summary = format!("{} | {} skip(s) | {} {} {} g={:.2} B={}", summ.join(" → "), n_skips, self.activation, self.schedule, self.loss, self.gain, self.batch);
        (o.join("\n") + "\n", summary)
    }

    /// Only dense couplings (the holomorphic property needs complex-capable terms).
    pub fn dense_only(&self) -> bool {
        self.image.is_none() && self.attention.is_none()
    }

    /// The case of one property on this recipe's graph.
    pub fn case(&self, property: &str) -> Case {
        let (graph, summary) = self.graph();
        Case { property: property.to_string(), seed: self.seed, batch: self.batch, graph, summary, expect: None }
    }
}

/// One fuzz case: a property, a graph (TOML text), the parameter/batch seed and the batch size. Regression
/// files hold exactly this.
#[derive(Clone, Debug)]
pub struct Case {
    pub property: String,
    pub seed: u64,
    pub batch: i64,
    pub graph: String,
    pub summary: String,
    /// The verdict a hand-made regression case must get (`expect = "pass"`); None = anything but fail/error.
    pub expect: Option<String>,
}

/// The result of checking one case.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub property: String,
    /// `pass`, `fail`, `skip` (not applicable / preconditions not met) or `error` (the graph did not build).
    pub verdict: String,
    pub error: f64,
    pub threshold: f64,
    pub detail: String,
}

impl Outcome {
    fn new(p: &str, verdict: &str, error: f64, threshold: f64, detail: impl Into<String>) -> Self {
        Outcome { property: p.into(), verdict: verdict.into(), error, threshold, detail: detail.into() }
    }
    fn scored(p: &str, error: f64, threshold: f64, detail: impl Into<String>) -> Self {
        let v = if crate::checks::within(error, threshold) { "pass" } else { "fail" };
        Self::new(p, v, error, threshold, detail)
    }
    fn skip(p: &str, why: impl Into<String>) -> Self {
        Self::new(p, "skip", f64::NAN, f64::NAN, why)
    }
}

/// Writes a case as a regression file: `property`, `seed`, `batch` and the graph TOML verbatim.
pub fn write_case(path: &Path, c: &Case, note: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::file(d, e))?;
    }
    let text = format!(
        "# epcheck fuzz regression case ({note})\n# {}\nproperty = \"{}\"\nseed = {}\nbatch = {}\ngraph = '''\n{}'''\n",
        c.summary.replace('\n', " "),
        c.property,
        c.seed,
        c.batch,
        c.graph
    );
    let tmp = path.with_extension("toml.partial");
    std::fs::write(&tmp, text).map_err(|e| Error::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

/// Reads a regression file.
pub fn read_case(path: &Path) -> Result<Case> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let t: toml::Table = toml::from_str(&text).map_err(|e| Error::file(path, format!("malformed TOML: {}", e.to_string().lines().next().unwrap_or(""))))?;
    let s = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_string).ok_or_else(|| Error::file(path, format!("missing string key '{k}'")));
    let i = |k: &str| t.get(k).and_then(|v| v.as_integer()).filter(|&v| v >= 0).ok_or_else(|| Error::file(path, format!("missing integer key '{k}' (≥ 0)")));
    let property = s("property")?;
    if !PROPERTIES.contains(&property.as_str()) {
        return Err(Error::file(path, format!("unknown property '{property}' (known: {})", PROPERTIES.join(", "))));
    }
    Ok(Case { property, seed: i("seed")? as u64, batch: i("batch")?.max(1), graph: s("graph")?, summary: String::new(), expect: t.get("expect").and_then(|v| v.as_str()).map(str::to_string) })
}

pub(crate) fn flat(ts: &[Tensor]) -> Vec<f64> {
    ts.iter().flat_map(to_vec_f64).collect()
}

/// Builds the model, parameters and seeded synthetic batch of a case (float64, CPU).
pub fn instance(c: &Case) -> Result<(Model, Vec<Tensor>, Batch)> {
    let m = crate::graph::parse_str(&c.graph)?;
    let prec = Precision::new(Dtype::F64, tch::Device::Cpu);
    crate::instance::check_sizes(&m, c.batch, 8)?;
    let p = m.init_params(c.seed, prec);
    let b = crate::instance::synthetic_batch(&m, c.batch, c.seed, prec);
    Ok((m, p, b))
}

/// Checks one case.
pub fn check(c: &Case) -> Outcome {
    let (m, p, batch) = match instance(c) {
        Ok(x) => x,
        Err(e) => return Outcome::new(&c.property, "error", f64::NAN, f64::NAN, e.to_string()),
    };
    check_model(&c.property, &m, &p, &batch, c.seed)
}

/// Checks one property on a model, its parameters and batch (float64, CPU); `seed` seeds the random states.
pub fn check_model(property: &str, m: &Model, p: &[Tensor], batch: &Batch, seed: u64) -> Outcome {
    match property {
        "local" => local(m, p, batch, seed),
        "bptt_fd" => bptt_fd(m, p, batch, seed),
        "ep_bptt" => ep_bptt(m, p, batch),
        "holo_n2" => holo_n2(m, p, batch),
        "audit" => properties::audit(m, p, batch, seed),
        "converge" => properties::converge(m, p, batch),
        "gdu" => properties::gdu(m, p, batch),
        "holo_bias" => properties::holo_bias(m, p, batch),
        other => Outcome::new(other, "error", f64::NAN, f64::NAN, format!("unknown property '{other}'")),
    }
}

/// The `fuzz` check of `epcheck verify` (a shrunk case's suite): one fuzz property on the suite's instance
/// (`checks.fuzz.property`). pass → pass, fail → fail, error → error, skip → inconclusive (nothing certified).
pub fn check_report(inst: &crate::instance::Instance, property: &str) -> Result<crate::checks::CheckReport> {
    use crate::checks::Verdict;
    if !PROPERTIES.contains(&property) {
        return Err(Error::Config(format!("checks.fuzz.property: unknown property '{property}' (known: {})", PROPERTIES.join(", "))));
    }
    let o = if inst.prec.dtype != Dtype::F64 || inst.prec.device != tch::Device::Cpu {
        Outcome::new(property, "error", f64::NAN, f64::NAN, "fuzz properties run in float64 on the CPU (dtype = \"f64\", device = \"cpu\")")
    } else {
        check_model(property, &inst.model, &inst.params, &inst.batch, inst.cfg.seed)
    };
    let mut rows = crate::checks::Rows::new("fuzz", &inst.id, &inst.model.preset, inst.prec.dtype.name());
    let mut r = rows.row("property", property, "error", o.error);
    r.threshold = Some(o.threshold);
    let v = match o.verdict.as_str() {
        "pass" => Verdict::Pass,
        "fail" => Verdict::Fail(format!("error {:.3e} > {:.3e}: {}", o.error, o.threshold, o.detail)),
        "skip" => Verdict::Inconclusive(format!("precondition not met: {}", o.detail)),
        _ => Verdict::Error(o.detail.clone()),
    };
    r.verdict = Some(v.label().into());
    rows.push(r);
    rows.verdict("property", property, &v, serde_json::json!({ "error": o.error, "threshold": o.threshold, "detail": o.detail }));
    let digest = format!("{property} {} — error {:.3e} (threshold {:.3e}): {}", o.verdict, o.error, o.threshold, o.detail);
    Ok(rows.finish(vec![format!("Fuzz property `{property}`: {} — {}", o.verdict, o.detail)], vec![]).with_digest(digest))
}

pub(crate) fn smooth_model(m: &Model) -> bool {
    (0..m.layers.len()).all(|k| m.update_map(k).is_none() && m.layers[k].activation.kinks().is_none())
}

pub(crate) fn random_state(m: &Model, b: i64, seed: i64) -> State {
    let _rng = crate::tensor_util::rng_lock();
    tch::manual_seed(seed);
    m.layers
        .iter()
        .map(|l| {
            let mut shape = vec![b];
            shape.extend(&l.shape);
            Tensor::randn(&shape[..], (tch::Kind::Double, tch::Device::Cpu)) * 0.7 + 0.3
        })
        .collect()
}

fn local(m: &Model, p: &[Tensor], batch: &Batch, seed: u64) -> Outcome {
    let mut worst: f64 = 0.0;
    for k in 0..2 {
        let s = random_state(m, batch.size(), (seed as i64).wrapping_add(17 * k));
        let a = flat(&m.param_derivative(p, batch, &s));
        let b = flat(&m.param_derivative_autograd(p, batch, &s));
        worst = worst.max(rel_linf(&a, &b));
    }
    Outcome::scored("local", worst, 1e-11, "rel_linf(local, autograd of Φ̄) at 2 random states")
}

fn bptt_fd(m: &Model, p: &[Tensor], batch: &Batch, seed: u64) -> Outcome {
    const P: &str = "bptt_fd";
    if !smooth_model(m) {
        return Outcome::skip(P, "clamp units: finite differences may cross kinks");
    }
    let t = 10;
    let (g, free) = crate::estimators::bptt::full(m, p, batch, t);
    let gn = norm2_all(&g.tensors);
    if !(gn > 0.0 && gn.is_finite()) {
        return Outcome::skip(P, format!("degenerate gradient (‖g‖ = {gn:.1e})"));
    }
    let theta = norm2_all(p);
    let v = fd::directions(p, 1, seed).remove(0);
    match fd::central_selected(m, p, batch, &free.state, &v, theta, &[1e-3, 1e-4], fd::FdMode::FixedT(t), 1e-13) {
        Ok((h, d)) => {
            let proj = fd::project(&g.tensors, &v);
            Outcome::scored(P, (d.richardson - proj).abs() / gn, 1e-7, format!("|FD − ⟨g, v⟩|/‖g‖ at T = {t}, h = {h:.0e} (⟨g, v⟩ = {proj:.4e})"))
        }
        Err(e) => Outcome::new(P, "error", f64::NAN, f64::NAN, e.to_string()),
    }
}

fn norm2_all(ts: &[Tensor]) -> f64 {
    ts.iter().map(|t| norm2(t).powi(2)).sum::<f64>().sqrt()
}

const STAR_TOL: f64 = 1e-13;
const MAX_ITER: i64 = 3000;

fn ep_bptt(m: &Model, p: &[Tensor], batch: &Batch) -> Outcome {
    const P: &str = "ep_bptt";
    let beta = 1e-3;
    let zeros = m.zeros_state(batch.size(), Precision::new(Dtype::F64, tch::Device::Cpu));
    let (s0, n0, r0, _) = relax_until_stationary(m, p, batch, &zeros, 0.0, STAR_TOL, MAX_ITER);
    if !(r0 <= STAR_TOL) {
        return Outcome::skip(P, format!("free phase not converged (r_∞ = {r0:.1e} after {n0})"));
    }
    let nudged = |b: f64| relax_until_stationary(m, p, batch, &s0, b, STAR_TOL, MAX_ITER);
    let (sp, _, rp, _) = nudged(beta);
    let (sm, _, rm, _) = nudged(-beta);
    if !(rp <= STAR_TOL && rm <= STAR_TOL) {
        return Outcome::skip(P, format!("nudged phases not converged (r_∞ = {rp:.1e}, {rm:.1e})"));
    }
    let mut kink_note = String::new();
    if !smooth_model(m) {
        let r = kinks::regimes(m, p, batch, &s0, 0.0);
        let changes: i64 = [(&sp, beta), (&sm, -beta)].iter().map(|(s, b)| kinks::changes(&r, &kinks::regimes(m, p, batch, s, *b)).iter().sum::<i64>()).sum();
        let margin = kinks::min_margin(m, p, batch, &s0);
        if changes > 0 || margin == 0.0 {
            return Outcome::skip(P, format!("clamp regime changes between phases ({changes}) or a unit at a kink (margin {margin:.1e})"));
        }
        kink_note = format!(", min kink margin {margin:.2e}");
    }
    let o = implicit::ImplicitOptions { star_tol: STAR_TOL, star_max_iter: MAX_ITER, adjoint_tol: 1e-14, adjoint_max_iter: 20_000 };
    let star = implicit::Star { state: s0.iter().map(|t| t.shallow_clone()).collect(), iters: n0, residual: r0 };
    let g = match implicit::at_star(m, p, batch, star, &o) {
        Ok(g) => flat(&g.grad.tensors),
        Err(e) => return Outcome::skip(P, format!("implicit: {e}")),
    };
    let ginf = g.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    if !(ginf > 1e-12) {
        return Outcome::skip(P, format!("degenerate gradient (‖g‖∞ = {ginf:.1e})"));
    }
    let fp = flat(&m.param_derivative(p, batch, &sp));
    let fm = flat(&m.param_derivative(p, batch, &sm));
    let ep: Vec<f64> = fp.iter().zip(&fm).map(|(a, b)| -(a - b) / (2.0 * beta)).collect();
    let err = rel_l2(&ep, &g);
    let floor = 1e-9 / (beta * ginf);
    Outcome::scored(P, err, 100.0 * beta * beta + floor, format!("rel_l2(ep_centered(β = {beta}), implicit); c·β² = {:.1e}, floor {floor:.1e}, free iters {n0}{kink_note}", 100.0 * beta * beta))
}

fn holo_n2(m: &Model, p: &[Tensor], batch: &Batch) -> Outcome {
    const P: &str = "holo_n2";
    if let Err(e) = ep_holomorphic::preflight(m) {
        return Outcome::skip(P, format!("not holomorphic: {e}"));
    }
    let len = PhaseLengths { t_free: 60, k_nudge: 40, tol: None };
    let beta = 0.05;
    let zeros = m.zeros_state(batch.size(), Precision::new(Dtype::F64, tch::Device::Cpu));
    let free: Phase = crate::relax::relax(m, p, batch, &zeros, 0.0, &RelaxOptions { iters: len.t_free, ..Default::default() });
    let (sym, _, _) = ep_centered::estimate(m, p, batch, &free, beta, len);
    let holo = match ep_holomorphic::estimate(m, p, batch, &free.state, beta, len, &ep_holomorphic::HoloOptions::restart(2, false)) {
        Ok(h) => h,
        Err(e) => return Outcome::new(P, "error", f64::NAN, f64::NAN, e.to_string()),
    };
    let (a, b) = (flat(&holo.grad.tensors), flat(&sym.tensors));
    if b.iter().all(|x| *x == 0.0) {
        return Outcome::skip(P, "degenerate gradient");
    }
    Outcome::scored(P, rel_linf(&a, &b), 1e-9, format!("rel_linf(ep_holomorphic N = 2, ep_centered) at β = {beta}, K = {}", len.k_nudge))
}

#[derive(Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Number of random graphs (each checked against every property).
    #[arg(long, default_value_t = 200)]
    pub cases: usize,
    /// Seed of the case stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Architecture family file (TOML, docs/fuzz.md); default: the built-in family
    /// (fixtures/families/builtin.toml).
    #[arg(long)]
    pub family: Option<PathBuf>,
    /// Run only shard i of n (0 ≤ i < n): the cases i, i + n, i + 2n, …; default: SLURM_ARRAY_TASK_ID /
    /// SLURM_ARRAY_TASK_COUNT when set. `epcheck merge` joins the shards' run folders.
    #[arg(long, value_name = "i/n")]
    pub shard: Option<String>,
    /// Shrinking steps per failing property (0: no shrinking).
    #[arg(long, default_value_t = 300)]
    pub shrink_steps: usize,
    /// Output folder for the run folder.
    #[arg(long, default_value = "reports/runs")]
    pub out: PathBuf,
    /// Also write failing cases as regression files into this folder (e.g. fixtures/regressions).
    #[arg(long)]
    pub regressions: Option<PathBuf>,
    /// Only these properties (comma-separated; default all).
    #[arg(long)]
    pub properties: Option<String>,
    /// Replay regression files (or folders of them) instead of drawing cases; prints one line per case.
    #[arg(long, num_args = 1..)]
    pub replay: Vec<PathBuf>,
}

fn replay(paths: &[PathBuf]) -> Result<i32> {
    let mut files = vec![];
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p).map_err(|e| Error::file(p, e))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|f| f.extension().is_some_and(|x| x == "toml")).collect();
            v.sort();
            files.extend(v);
        } else {
            files.push(p.clone());
        }
    }
    let cases = files.iter().map(|f| read_case(f).map(|c| (f, c))).collect::<Result<Vec<_>>>()?;
    let mut failed = 0;
    for (f, c) in &cases {
        let o = check(c);
        if o.verdict == "fail" || o.verdict == "error" || c.expect.as_ref().is_some_and(|e| *e != o.verdict) {
            failed += 1;
        }
        println!("{} {} {}: error {:.3e} (threshold {:.3e}) — {}", o.verdict.to_uppercase(), f.display(), o.property, o.error, o.threshold, o.detail);
    }
    println!("{} replayed, {failed} failed", cases.len());
    Ok(if failed > 0 { 1 } else { 0 })
}

/// One row of the cases table.
#[derive(Clone, Debug)]
pub struct Row {
    pub case: usize,
    pub seed: u64,
    pub graph: String,
    pub outcome: Outcome,
    pub millis: f64,
}

/// The seed of case `i` of the stream from `seed`: the i-th output of SplitMix64 from `seed`, computed directly
/// (a case depends on the stream seed and its index only, whichever shard runs it).
pub fn case_seed(seed: u64, i: usize) -> u64 {
    Rng::new(seed.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))).next_u64()
}

/// Runs every listed property on the recipe of case `i`: check, time, row, progress; appends to `out`.
fn run_properties(i: usize, r: &Recipe, properties: &[&str], progress: &mut impl FnMut(usize, &Row), out: &mut Vec<(Row, Case)>) {
    for &prop in properties {
        let c = r.case(prop);
        let t0 = Instant::now();
        let o = check(&c);
        let row = Row { case: i, seed: r.seed, graph: c.summary.clone(), outcome: o, millis: t0.elapsed().as_secs_f64() * 1e3 };
        progress(i, &row);
        out.push((row, c));
    }
}

/// Runs the cases `indices` of the campaign (every listed property on each graph).
pub fn run_family_cases(fam: &family::Family, seed: u64, indices: &[usize], properties: &[&str], mut progress: impl FnMut(usize, &Row)) -> Vec<(Row, Case)> {
    let mut out = vec![];
    for &i in indices {
        run_properties(i, &fam.tree(case_seed(seed, i)).current(), properties, &mut progress, &mut out);
    }
    out
}

/// Runs `n` random cases of the legacy generator ([`Recipe::random`]) from `seed` (every listed property).
pub fn run_cases(n: usize, seed: u64, properties: &[&str], mut progress: impl FnMut(usize, &Row)) -> Vec<(Row, Case)> {
    let mut stream = Rng::new(seed);
    let mut out = vec![];
    for i in 0..n {
        run_properties(i, &Recipe::random(stream.next_u64()), properties, &mut progress, &mut out);
    }
    out
}

/// What determines a campaign's table (recorded as `campaign.json`; `epcheck merge` joins only shards whose
/// campaigns are equal).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Campaign {
    pub family: String,
    /// SHA-256 of the family file's text.
    pub family_sha256: String,
    pub seed: u64,
    pub cases: usize,
    pub properties: Vec<String>,
    pub shrink_steps: usize,
}

/// `campaign.json` of a run folder: the campaign, the shard that ran and its wall time.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CampaignRecord {
    pub command: String,
    pub campaign: Campaign,
    pub shard: [usize; 2],
    pub wall_s: f64,
}

pub fn parse_properties(arg: Option<&str>) -> Result<Vec<&'static str>> {
    match arg {
        None => Ok(PROPERTIES.to_vec()),
        Some(s) => {
            let mut v = vec![];
            for x in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                match PROPERTIES.iter().find(|p| **p == x) {
                    Some(p) => v.push(*p),
                    None => return Err(Error::Config(format!("--properties: unknown property '{x}' (known: {})", PROPERTIES.join(", ")))),
                }
            }
            if v.is_empty() {
                return Err(Error::Config("--properties: empty list".into()));
            }
            Ok(v)
        }
    }
}

pub fn command(a: FuzzArgs) -> Result<i32> {
    use sha2::Digest;
    if !a.replay.is_empty() {
        return replay(&a.replay);
    }
    let props = parse_properties(a.properties.as_deref())?;
    if a.cases < 1 {
        return Err(Error::Config("--cases must be ≥ 1".into()));
    }
    let (fam, text) = match &a.family {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| Error::file(f, e))?;
            (family::Family::parse(&text, f)?, text)
        }
        None => (family::Family::builtin(), family::BUILTIN.to_string()),
    };
    let shard = crate::run::Shard::from_arg_or_env(a.shard.as_deref())?;
    crate::run::check_output_dir(&a.out)?;
    if let Some(d) = &a.regressions {
        crate::run::check_output_dir(d)?;
    }
    let campaign = Campaign {
        family: fam.name.clone(),
        family_sha256: format!("{:x}", sha2::Sha256::digest(text.as_bytes())),
        seed: a.seed,
        cases: a.cases,
        properties: props.iter().map(|p| p.to_string()).collect(),
        shrink_steps: a.shrink_steps,
    };
    tch::set_num_threads(1);
    let t0 = Instant::now();
    let indices = shard.select(a.cases);
    crate::progress::start("fuzz");
    let rows = run_family_cases(&fam, a.seed, &indices, &props, |_, _| crate::progress::tick());
    crate::progress::finish();
    // Shrink the first failure of every property to a smallest graph that fails it the same way.
    let mut shrunk = vec![];
    if a.shrink_steps > 0 {
        for p in &props {
            if let Some((r, _)) = rows.iter().find(|(r, _)| r.outcome.property == *p && (r.outcome.verdict == "fail" || r.outcome.verdict == "error")) {
                let s = shrink::shrink(&fam, case_seed(a.seed, r.case), p, a.shrink_steps);
                shrunk.push((r.case, s));
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let tag = if shard.count > 1 { format!("-shard{}of{}", shard.index, shard.count) } else { String::new() };
    let rf = crate::report::RunFolder::new(&a.out, "fuzz", &format!("{}-seed{}-n{}{tag}", fam.name, a.seed, a.cases))?;
    let rec = CampaignRecord { command: "fuzz".into(), campaign, shard: [shard.index, shard.count], wall_s: wall };
    for (case, s) in &shrunk {
        shrink::write(rf.dir(), *case, s)?;
        println!("shrunk {} case {case} in {} steps to: {}", s.property, s.steps, s.summary);
    }
    let regressions: Vec<(String, Case, String)> = rows
        .iter()
        .filter(|(r, _)| r.outcome.verdict == "fail" || r.outcome.verdict == "error")
        .map(|(r, c)| (format!("{}-case{}-seed{}.toml", c.property, r.case, c.seed), c.clone(), format!("epcheck fuzz --family {} --seed {} case {}", fam.name, a.seed, r.case)))
        .collect();
    for (file, c, note) in &regressions {
        write_case(&rf.dir().join("regressions").join(file), c, note)?;
        if let Some(d) = &a.regressions {
            write_case(&d.join(file), c, note)?;
        }
    }
    let rows: Vec<Row> = rows.into_iter().map(|(r, _)| r).collect();
    let (code, line) = write_campaign(&rf, &rec, &rows, &format!("{} cases{} in {wall:.1} s", indices.len(), if shard.count > 1 { format!(" (shard {}/{} of {})", shard.index, shard.count, a.cases) } else { String::new() }))?;
    let dir = rf.commit()?;
    println!("{line}");
    println!("report: {}", dir.display());
    Ok(code)
}

/// The cases table of a campaign's rows.
pub fn cases_frame(rows: &[Row]) -> Result<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let col_s = |name: &str, f: &dyn Fn(&Row) -> String| Column::new(name.into(), rows.iter().map(f).collect::<Vec<_>>());
    let col_f = |name: &str, f: &dyn Fn(&Row) -> f64| Column::new(name.into(), rows.iter().map(f).collect::<Vec<_>>());
    Ok(DataFrame::new(rows.len(), vec![
        Column::new("case".into(), rows.iter().map(|r| r.case as i64).collect::<Vec<_>>()),
        Column::new("seed".into(), rows.iter().map(|r| r.seed as i64).collect::<Vec<_>>()),
        col_s("graph", &|r| r.graph.clone()),
        col_s("property", &|r| r.outcome.property.clone()),
        col_s("verdict", &|r| r.outcome.verdict.clone()),
        col_f("error", &|r| r.outcome.error),
        col_f("threshold", &|r| r.outcome.threshold),
        col_s("detail", &|r| r.outcome.detail.clone()),
        col_f("millis", &|r| r.millis),
    ])?)
}

/// Reads a cases table (Parquet) back into rows.
pub fn read_cases(path: &Path) -> Result<Vec<Row>> {
    use polars::prelude::*;
    let f = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let df = ParquetReader::new(f).finish().map_err(|e| Error::file(path, format!("not a cases table: {e}")))?;
    let bad = |e: PolarsError| Error::file(path, format!("not a cases table: {e}"));
    let i64c = |n: &str| -> Result<Vec<i64>> { Ok(df.column(n).map_err(bad)?.i64().map_err(bad)?.into_iter().map(|v| v.unwrap_or(0)).collect()) };
    let f64c = |n: &str| -> Result<Vec<f64>> { Ok(df.column(n).map_err(bad)?.f64().map_err(bad)?.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect()) };
    let strc = |n: &str| -> Result<Vec<String>> { Ok(df.column(n).map_err(bad)?.str().map_err(bad)?.into_iter().map(|v| v.unwrap_or("").to_string()).collect()) };
    let (case, seed, graph, prop, verdict, error, threshold, detail, millis) = (i64c("case")?, i64c("seed")?, strc("graph")?, strc("property")?, strc("verdict")?, f64c("error")?, f64c("threshold")?, strc("detail")?, f64c("millis")?);
    Ok((0..case.len())
        .map(|i| Row { case: case[i] as usize, seed: seed[i] as u64, graph: graph[i].clone(), outcome: Outcome::new(&prop[i], &verdict[i], error[i], threshold[i], detail[i].clone()), millis: millis[i] })
        .collect())
}

/// Writes a campaign's table, `campaign.json`, summary, JUnit file and index.html into a run folder (shared by
/// `fuzz` and `merge`); returns the exit code and the one-line digest.
pub fn write_campaign(rf: &crate::report::RunFolder, rec: &CampaignRecord, rows: &[Row], what: &str) -> Result<(i32, String)> {
    let props: Vec<&str> = rec.campaign.properties.iter().map(String::as_str).collect();
    let mut df = cases_frame(rows)?;
    crate::report::tables::write_both(&mut df, &rf.dir().join("tables"), "cases")?;
    rf.write("campaign.json", &(serde_json::to_string_pretty(rec).map_err(|e| Error::Report(e.to_string()))? + "\n"))?;
    let c = &rec.campaign;
    let mut md = vec![
        format!("# epcheck fuzz — {}", rf.run_id),
        String::new(),
        format!("Family `{}` (sha256 {}…), seed {}, {}; properties {}.", c.family, &c.family_sha256[..12], c.seed, what, props.join(", ")),
        String::new(),
        "| property | pass | fail | skip | error | worst error/threshold |".into(),
        "|---|---|---|---|---|---|".into(),
    ];
    let mut failed = 0;
    let (mut unexercised, mut digest) = (vec![], vec![]);
    let mut junit = quick_junit::Report::new("epcheck fuzz");
    let mut ts = quick_junit::TestSuite::new(format!("fuzz/{}", c.family));
    let mut index_rows = vec![];
    let mut skip_reasons = vec![];
    for p in &props {
        let of = |v: &str| rows.iter().filter(|r| r.outcome.property == *p && r.outcome.verdict == v).count();
        let worst = rows.iter().filter(|r| r.outcome.property == *p && r.outcome.verdict != "skip" && r.outcome.error.is_finite()).map(|r| r.outcome.error / r.outcome.threshold).fold(0.0, f64::max);
        let bad = of("fail") + of("error");
        failed += bad;
        if of("pass") + bad == 0 {
            unexercised.push(format!("{p} ({} skipped)", of("skip")));
        }
        let line = format!("{p} {}/{}/{} pass/fail/skip, worst error/threshold {}", of("pass"), bad, of("skip"), crate::checks::num(worst));
        md.push(format!("| {p} | {} | {} | {} | {} | {worst:.3e} |", of("pass"), of("fail"), of("skip"), of("error")));
        let v = if bad > 0 {
            crate::checks::Verdict::Fail(format!("{bad} case(s) failed"))
        } else if of("pass") == 0 {
            crate::checks::Verdict::Inconclusive("no case exercised it".into())
        } else {
            crate::checks::Verdict::Pass
        };
        let status = match &v {
            crate::checks::Verdict::Pass => quick_junit::TestCaseStatus::success(),
            other => {
                let mut s = quick_junit::TestCaseStatus::non_success(quick_junit::NonSuccessKind::Failure);
                s.set_message(format!("{}: {line}", other.label()));
                s.set_type(other.label());
                s
            }
        };
        let mut tc = quick_junit::TestCase::new(format!("fuzz/{}/{p}", c.family), status);
        tc.set_classname("epcheck.fuzz");
        tc.set_system_out(line.clone());
        ts.add_test_case(tc);
        index_rows.push(crate::report::html::IndexRow { suite: c.family.clone(), check: p.to_string(), instance: format!("{} rows", of("pass") + bad + of("skip")), verdict: v.label().into(), digest: line.clone(), run_dir: None });
        // The most frequent skip reasons (the precondition a draw did not meet).
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        for r in rows.iter().filter(|r| r.outcome.property == *p && r.outcome.verdict == "skip") {
            let key: String = r.outcome.detail.split(['(', ':']).next().unwrap_or("").trim().to_string();
            *reasons.entry(key).or_default() += 1;
        }
        let mut rv: Vec<(String, usize)> = reasons.into_iter().collect();
        rv.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        if !rv.is_empty() {
            skip_reasons.push(format!("- `{p}`: {}", rv.iter().take(4).map(|(k, n)| format!("{n}× {k}")).collect::<Vec<_>>().join("; ")));
        }
        digest.push(line);
    }
    junit.add_test_suite(ts);
    if !skip_reasons.is_empty() {
        md.extend([String::new(), "## Skips (precondition not met, most frequent reasons)".into(), String::new()]);
        md.extend(skip_reasons);
    }
    let bad: Vec<&Row> = rows.iter().filter(|r| r.outcome.verdict == "fail" || r.outcome.verdict == "error").collect();
    if !bad.is_empty() {
        md.extend([String::new(), "## Failures".into(), String::new()]);
    }
    for r in bad.iter().take(50) {
        md.push(format!("- case {} `{}` {}: {} — error {:.3e} > {:.3e} ({}); `regressions/{}-case{}-seed{}.toml`", r.case, r.outcome.property, r.outcome.verdict, r.graph, r.outcome.error, r.outcome.threshold, r.outcome.detail, r.outcome.property, r.case, r.seed));
    }
    if bad.len() > 50 {
        md.push(format!("- … and {} more (tables/cases.csv)", bad.len() - 50));
    }
    md.push(String::new());
    md.push("Table: `tables/cases.{parquet,csv}` (one row per case and property). A failing case is written as a regression file (graph TOML + seed) under `regressions/`; the first failure of every property is shrunk to `shrunk/<property>-case<i>.graph.toml` with a verify suite `shrunk/<property>-case<i>.verify.toml` (`epcheck verify` on it fails the same way). docs/fuzz.md.".into());
    rf.write("summary.md", &(md.join("\n") + "\n"))?;
    let xml = junit.to_string().map_err(|e| Error::Report(e.to_string()))?;
    rf.write("junit.xml", &xml)?;
    // The campaign's verdict (docs/verdicts.md): a property that no case exercised (all skipped) certifies nothing.
    let verdict = if failed > 0 {
        crate::checks::Verdict::Fail(format!("{failed} case(s) failed"))
    } else if !unexercised.is_empty() {
        crate::checks::Verdict::Inconclusive(format!("no case exercised {}", unexercised.join(", ")))
    } else {
        crate::checks::Verdict::Pass
    };
    crate::report::html::write_job_index(rf.dir(), &format!("epcheck fuzz — {}", rf.run_id), &format!("{} — {what}", verdict.display()), &index_rows)?;
    let line = format!("fuzz: {} — {what} × {} properties: {}", verdict.display(), props.len(), digest.join("; "));
    Ok((crate::checks::exit_code([&verdict]), line))
}
