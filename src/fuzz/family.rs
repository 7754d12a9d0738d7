//! Architecture families (`epcheck fuzz --family FILE`): a TOML file of ranges over a graph — input (image or
//! vector, channels, size), depth, widths and channel counts, the coupling kind of every layer (dense, conv with
//! strides, conv + pool; conv kinds after image layers only), skip couplings between any two layers, activations,
//! gain, bias, schedule, loss, batch. A family is a proptest [`Strategy`] over [`Recipe`]s, so a failing case
//! shrinks with proptest's value trees (fewer layers, smaller widths, fewer skips, smaller batch, the earlier
//! activation of the list — list the simplest first). The built-in generator is the family
//! `fixtures/families/builtin.toml`, compiled in as [`BUILTIN`]. Schema: docs/fuzz.md.
use super::{Hidden, Recipe, CLAMP, SMOOTH};
use crate::{Error, Result};
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde::Deserialize;
use std::path::Path;

/// The built-in family (the generator `epcheck fuzz` uses without `--family`).
pub const BUILTIN: &str = include_str!("../../fixtures/families/builtin.toml");

/// Hidden-layer coupling kinds a family may name (`test_bad_dense` only with EPCHECK_TEST_PLANT=1).
pub const HIDDEN_KINDS: [&str; 4] = ["dense", "conv", "conv_pool", crate::model::terms::planted::KIND];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Probability of an image input [C, H, H] (else a vector input).
    #[serde(default)]
    pub image: f64,
    #[serde(default = "one_three")]
    pub channels: [i64; 2],
    #[serde(default = "three_eight")]
    pub size: [i64; 2],
    #[serde(default = "one_six")]
    pub features: [i64; 2],
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiddenSpec {
    pub depth: [i64; 2],
    /// The main coupling of each hidden layer, drawn uniformly (conv kinds need an image pre layer; after a
    /// vector layer they become dense layers of the drawn channel count).
    pub kinds: Vec<String>,
    #[serde(default = "one_six")]
    pub width: [i64; 2],
    #[serde(default = "one_four")]
    pub channels: [i64; 2],
    #[serde(default = "strides")]
    pub strides: Vec<i64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub classes: [i64; 2],
    /// The output layer's main coupling: `dense` or the planted `test_bad_dense`.
    #[serde(default = "dense")]
    pub kinds: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skips {
    /// Probability of each candidate skip coupling i → j (j ≥ i + 2), in enumeration order.
    pub probability: f64,
    /// Number of candidates drawn (enough for the deepest graph: D(D−1)/2 with D the number of layers).
    #[serde(default = "six")]
    pub max: usize,
}

/// Fixed parts of a family: the user's own layers and couplings, written as in a graph file (docs/graph.md),
/// that every drawn case contains. They may refer to the input `x`, the drawn output layer `out` and each other;
/// fixed layers follow the drawn layers in model order, and the loss stays on `out`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixed {
    #[serde(default)]
    pub layers: Vec<toml::Table>,
    #[serde(default)]
    pub couplings: Vec<toml::Table>,
}

/// The fixed parts as graph-file text: `[[layers]]` and `[[couplings]]` entries, and the fixed layers' names.
#[derive(Clone, Debug, PartialEq)]
pub struct FixedText {
    pub layers: String,
    pub couplings: String,
    pub names: Vec<String>,
}

impl Fixed {
    fn text(&self) -> Option<FixedText> {
        if self.layers.is_empty() && self.couplings.is_empty() {
            return None;
        }
        let array = |key: &str, v: &[toml::Table]| {
            let mut t = toml::Table::new();
            if !v.is_empty() {
                t.insert(key.into(), toml::Value::Array(v.iter().cloned().map(toml::Value::Table).collect()));
            }
            toml::to_string(&t).expect("toml tables serialize")
        };
        let names = self.layers.iter().map(|l| l.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_string()).collect();
        Some(FixedText { layers: array("layers", &self.layers), couplings: array("couplings", &self.couplings), names })
    }
}

/// Attention blocks: with `probability`, a case's input is a sequence x [tokens, dim] and its first layer `A` an
/// attention layer over x (keys and queries: every token of x; scale 1/√dim; no mask) fed by an attention
/// projection of x (weight (dim, dim)); the next layer reads A through a flatten_dense coupling.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionSpec {
    pub probability: f64,
    #[serde(default = "two_four")]
    pub tokens: [i64; 2],
    #[serde(default = "one_four")]
    pub dim: [i64; 2],
}

fn two_four() -> [i64; 2] {
    [2, 4]
}

/// A parsed family.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub input: Input,
    pub hidden: HiddenSpec,
    pub output: Output,
    pub skips: Skips,
    pub activations: Vec<String>,
    pub gain: [f64; 2],
    /// Probability of bias couplings on every layer.
    pub biases: f64,
    pub schedules: Vec<String>,
    pub losses: Vec<String>,
    pub batch: [i64; 2],
    #[serde(default)]
    pub fixed: Fixed,
    #[serde(default)]
    pub attention: Option<AttentionSpec>,
}

fn one_three() -> [i64; 2] {
    [1, 3]
}
fn three_eight() -> [i64; 2] {
    [3, 8]
}
fn one_six() -> [i64; 2] {
    [1, 6]
}
fn one_four() -> [i64; 2] {
    [1, 4]
}
fn strides() -> Vec<i64> {
    vec![1, 2]
}
fn dense() -> Vec<String> {
    vec!["dense".into()]
}
fn six() -> usize {
    6
}

impl Family {
    /// Parses and validates a family (`what` names the file in errors).
    pub fn parse(text: &str, what: &Path) -> Result<Family> {
        let bad = |m: String| Error::file(what, m);
        let f: Family = toml::from_str(text).map_err(|e| bad(format!("malformed family: {}", e.to_string().lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" "))))?;
        let range = |key: &str, r: [i64; 2], lo: i64, hi: i64| -> Result<()> {
            if r[0] < lo || r[1] > hi || r[0] > r[1] {
                return Err(bad(format!("{key} must be [min, max] with {lo} ≤ min ≤ max ≤ {hi}, got {r:?}")));
            }
            Ok(())
        };
        range("input.channels", f.input.channels, 1, 16)?;
        range("input.size", f.input.size, 3, 32)?;
        range("input.features", f.input.features, 1, 64)?;
        range("hidden.depth", f.hidden.depth, 0, 6)?;
        range("hidden.width", f.hidden.width, 1, 64)?;
        range("hidden.channels", f.hidden.channels, 1, 16)?;
        range("output.classes", f.output.classes, 1, 64)?;
        range("batch", f.batch, 1, 64)?;
        if let Some(a) = &f.attention {
            range("attention.tokens", a.tokens, 1, 16)?;
            range("attention.dim", a.dim, 1, 16)?;
            if !(0.0..=1.0).contains(&a.probability) {
                return Err(bad(format!("attention.probability must be a probability in [0, 1], got {}", a.probability)));
            }
        }
        for (key, p) in [("input.image", f.input.image), ("skips.probability", f.skips.probability), ("biases", f.biases)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(bad(format!("{key} must be a probability in [0, 1], got {p}")));
            }
        }
        if !(f.gain[0] > 0.0 && f.gain[0] <= f.gain[1] && f.gain[1] < 1.0) {
            return Err(bad(format!("gain must be [min, max] with 0 < min ≤ max < 1 (contracting draws), got {:?}", f.gain)));
        }
        if f.skips.max > 64 {
            return Err(bad(format!("skips.max must be ≤ 64, got {}", f.skips.max)));
        }
        let planted = crate::model::terms::planted::KIND;
        let kinds_ok = |key: &str, v: &[String], known: &[&str]| -> Result<()> {
            if v.is_empty() {
                return Err(bad(format!("{key} must list at least one of {}", known.join(", "))));
            }
            for k in v {
                if !known.contains(&k.as_str()) {
                    return Err(bad(format!("{key}: unknown '{k}' (known: {})", known.iter().filter(|x| **x != planted).cloned().collect::<Vec<_>>().join(", "))));
                }
                if k == planted && !crate::model::terms::planted::enabled() {
                    return Err(bad(format!("{key}: '{k}' is a test-only planted bug, available only with {}=1", crate::model::terms::planted::ENV)));
                }
            }
            Ok(())
        };
        kinds_ok("hidden.kinds", &f.hidden.kinds, &HIDDEN_KINDS)?;
        kinds_ok("output.kinds", &f.output.kinds, &["dense", planted])?;
        if f.hidden.strides.is_empty() || f.hidden.strides.iter().any(|s| !(1..=3).contains(s)) {
            return Err(bad(format!("hidden.strides must list strides in 1..=3, got {:?}", f.hidden.strides)));
        }
        let acts: Vec<&str> = SMOOTH.iter().chain(CLAMP.iter()).copied().collect();
        kinds_ok("activations", &f.activations, &acts)?;
        kinds_ok("schedules", &f.schedules, &["sync", "async2"])?;
        kinds_ok("losses", &f.losses, &["mse", "ce"])?;
        if f.losses.iter().all(|l| l == "ce") && f.output.classes[1] < 2 {
            return Err(bad("losses = [\"ce\"] needs output.classes with max ≥ 2".into()));
        }
        if f.fixed.text().is_some() {
            // The fixed parts must build with the family's graphs: the simplest draw (every choice at its simple
            // end) and one ordinary draw are parsed as graphs before anything runs.
            for seed in [None, Some(1u64)] {
                let mut r = match seed {
                    Some(s) => f.tree(s).current(),
                    None => {
                        let mut t = f.tree(0);
                        while t.simplify() {}
                        t.current()
                    }
                };
                r.batch = f.batch[0];
                crate::graph::parse_str(&r.graph().0).map_err(|e| bad(format!("fixed: the fixed parts do not build with the family's graphs: {e}")))?;
            }
        }
        Ok(f)
    }

    pub fn load(path: &Path) -> Result<Family> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        Family::parse(&text, path)
    }

    pub fn builtin() -> Family {
        Family::parse(BUILTIN, Path::new("fixtures/families/builtin.toml")).expect("the built-in family parses")
    }

    fn hidden_strategy(&self, image: bool) -> BoxedStrategy<Hidden> {
        let h = &self.hidden;
        let (w, c) = (h.width, h.channels);
        (prop::sample::select(h.kinds.clone()), w[0]..=w[1], c[0]..=c[1], prop::sample::select(h.strides.clone()))
            .prop_map(move |(k, width, channels, stride)| match (k.as_str(), image) {
                ("conv", true) => Hidden::Conv { channels, stride },
                ("conv_pool", true) => Hidden::ConvPool { channels },
                ("conv", false) | ("conv_pool", false) => Hidden::Dense(channels),
                ("dense", _) => Hidden::Dense(width),
                _ => Hidden::Planted(width),
            })
            .boxed()
    }

    /// The family as a strategy over recipes. Every choice shrinks towards the simpler end: no image, the low
    /// end of every range, fewer hidden layers, no skip, the first entry of every list.
    pub fn strategy(&self) -> BoxedStrategy<Recipe> {
        let f = self.clone();
        let i = &f.input;
        let sizes = (i.channels[0]..=i.channels[1], i.size[0]..=i.size[1]);
        // proptest's weighted option refuses the weights 0 and 1 (a union with a zero weight): image = 0 or 1 is
        // a fixed choice.
        let image: BoxedStrategy<Option<(i64, i64)>> = if i.image <= 0.0 {
            Just(None).boxed()
        } else if i.image >= 1.0 {
            sizes.prop_map(Some).boxed()
        } else {
            prop::option::weighted(i.image, sizes).boxed()
        };
        image
            .prop_flat_map(move |image| {
                let f = f.clone();
                let attention: BoxedStrategy<Option<(i64, i64)>> = match &f.attention {
                    Some(a) if a.probability > 0.0 => {
                        let sizes = (a.tokens[0]..=a.tokens[1], a.dim[0]..=a.dim[1]);
                        if a.probability >= 1.0 { sizes.prop_map(Some).boxed() } else { prop::option::weighted(a.probability, sizes).boxed() }
                    }
                    _ => Just(None).boxed(),
                };
                let head = (
                    Just(image),
                    f.input.features[0]..=f.input.features[1],
                    prop::collection::vec(f.hidden_strategy(image.is_some()), f.hidden.depth[0] as usize..=f.hidden.depth[1] as usize),
                    prop::collection::vec(prop::bool::weighted(f.skips.probability), f.skips.max),
                    prop::sample::select(f.activations.clone()),
                    f.gain[0]..=f.gain[1],
                    prop::bool::weighted(f.biases),
                );
                let tail = (
                    prop::sample::select(f.schedules.clone()),
                    prop::sample::select(f.losses.clone()),
                    f.batch[0]..=f.batch[1],
                    0u64..1_000_000,
                    f.output.classes[0]..=f.output.classes[1],
                    prop::sample::select(f.output.kinds.clone()),
                    attention,
                );
                let fixed = f.fixed.text();
                (head, tail).prop_map(move |((image, n_in, hidden, skips, activation, gain, biases), (schedule, loss, batch, seed, classes, out_kind, attention))| Recipe {
                    image,
                    n_in,
                    hidden,
                    classes: if loss == "ce" { classes.max(2) } else { classes },
                    skips,
                    activation,
                    gain,
                    biases,
                    schedule,
                    loss,
                    batch,
                    seed,
                    planted_output: out_kind != "dense",
                    fixed: fixed.clone(),
                    attention,
                })
            })
            .boxed()
    }

    /// The value tree of case `seed` (a ChaCha generator seeded from the case seed: a case's recipe depends on
    /// its seed only, not on the cases drawn before it — what makes sharding deterministic).
    pub fn tree(&self, seed: u64) -> Box<dyn ValueTree<Value = Recipe>> {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..16].copy_from_slice(b"epcheckF");
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
        let mut runner = TestRunner::new_with_rng(Config::default(), rng);
        self.strategy().new_tree(&mut runner).expect("family strategies never reject")
    }
}
