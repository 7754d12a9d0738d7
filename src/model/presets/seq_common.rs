//! Shared pieces of the attention presets (`hopfield-attention.md`): size resolution, `Linear` initial bounds,
//! the dense stack on top of the attention layers, and the synthetic inputs of §10.3.
use crate::config::RunConfig as ModelConfig;
use crate::model::activation::Activation;
use crate::model::attention::AttentionMask;
use crate::model::loss::Loss;
use crate::model::schedule::Schedule;
use crate::model::terms::{bias::Bias, dense::Dense, flatten_dense::FlattenDense, Node, Term};
use crate::model::{Batch, Init, LayerSpec, ParamSpec};
use crate::precision::Precision;
use crate::{Error, Result};
use tch::{Kind, Tensor};

/// Resolved sizes and options of an attention preset.
pub struct SeqSizes {
    /// L (per sentence for SNLI).
    pub l: i64,
    /// d.
    pub d: i64,
    /// Dense widths, last = C.
    pub fc: Vec<i64>,
    pub mask: AttentionMask,
    pub act: Activation,
    pub loss: Loss,
}

pub fn sizes(cfg: &ModelConfig, name: &str) -> Result<SeqSizes> {
    let bad = |m: String| Error::Config(format!("{name}: {m}"));
    let l = cfg.seq_len.ok_or_else(|| bad("seq_len is required".into()))?;
    let d = cfg.embed_dim.ok_or_else(|| bad("embed_dim is required".into()))?;
    if l < 1 || d < 1 {
        return Err(bad(format!("seq_len and embed_dim must be ≥ 1, got L = {l}, d = {d}")));
    }
    let mut fc = cfg.widths.clone().ok_or_else(|| bad("widths (the dense widths, last = classes) are required".into()))?;
    if fc.is_empty() || fc.iter().any(|&n| n < 1) {
        return Err(bad(format!("widths must be a non-empty list of sizes ≥ 1, got {fc:?}")));
    }
    if let Some(c) = cfg.classes {
        if c != *fc.last().unwrap() {
            if c < 1 {
                return Err(bad(format!("classes must be ≥ 1, got {c}")));
            }
            // An explicit class count replaces the last width.
            *fc.last_mut().unwrap() = c;
        }
    }
    if let Some(c) = cfg.attention_scale {
        if !(c.is_finite() && c > 0.0) {
            return Err(bad(format!("attention_scale must be a finite number > 0, got {c}")));
        }
    }
    let mask = AttentionMask::parse(cfg.attention_mask.as_deref().unwrap_or("off"))?;
    Ok(SeqSizes { l, d, fc, mask, act: Activation::parse(&cfg.activation)?, loss: Loss::parse(&cfg.loss)? })
}

/// `Linear` default bounds in double precision (§2.1): (bw, bb) for a fan-in.
pub fn linear_bounds(fan_in: i64) -> (f64, f64) {
    let fan_in = fan_in as f64;
    let a = 5f64.sqrt();
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    let std = gain / fan_in.sqrt();
    (3f64.sqrt() * std, 1.0 / fan_in.sqrt())
}

/// A bias-free (d, d) projection weight `synapses.<idx>.weight`; returns its parameter index.
pub fn push_projection_param(params: &mut Vec<ParamSpec>, idx: usize, d: i64) -> usize {
    let group = format!("synapses.{idx}");
    params.push(ParamSpec { name: format!("{group}.weight"), shape: vec![d, d], group, init: Init::Uniform(linear_bounds(d).0) });
    params.len() - 1
}

/// The dense layers on top of `first_pre` (flattened and concatenated, total fan-in `fan_in`): synapses
/// `first_syn`, `first_syn + 1`, … each with weight and bias; layer names continue from `layers.len()`.
pub fn push_dense_stack(
    s: &SeqSizes,
    first_pre: Vec<Node>,
    fan_in: i64,
    first_syn: usize,
    layers: &mut Vec<LayerSpec>,
    params: &mut Vec<ParamSpec>,
    terms: &mut Vec<Box<dyn Term>>,
) {
    let mut n_pre = fan_in;
    let mut pre = first_pre;
    for (j, &n) in s.fc.iter().enumerate() {
        let k = layers.len();
        let last = j + 1 == s.fc.len();
        // §12 #22: with loss = ce the output is left un-squashed.
        let act = if last && s.loss == Loss::Ce { Activation::Identity } else { s.act };
        layers.push(LayerSpec { name: format!("L{}", k + 1), shape: vec![n], activation: act });
        let (bw, bb) = linear_bounds(n_pre);
        let group = format!("synapses.{}", first_syn + j);
        params.push(ParamSpec { name: format!("{group}.weight"), shape: vec![n, n_pre], group: group.clone(), init: Init::Uniform(bw) });
        params.push(ParamSpec { name: format!("{group}.bias"), shape: vec![n], group, init: Init::Uniform(bb) });
        let (wi, bi) = (params.len() - 2, params.len() - 1);
        if j == 0 {
            terms.push(Box::new(FlattenDense::new(pre.clone(), Node::Layer(k), wi)));
        } else {
            terms.push(Box::new(Dense::new(pre[0], Node::Layer(k), wi)));
        }
        terms.push(Box::new(Bias::new(Node::Layer(k), bi)));
        pre = vec![Node::Layer(k)];
        n_pre = n;
    }
}

pub fn schedule(cfg: &ModelConfig, n_layers: usize) -> Result<Schedule> {
    match cfg.schedule.as_deref() {
        None | Some("sync") => Ok(Schedule::sync(n_layers)),
        Some(other) => Schedule::parse(other, n_layers),
    }
}

/// Synthetic sequences (§10.3): `segments` sentences of L rows each, concatenated along the sequence axis.
/// Real tokens are i.i.d. N(0, 0.15² I_d), padding rows exactly zero; lengths per example and sentence drawn
/// in [1, L], with example 0 unpadded and example 1 padded (when B ≥ 2 and L ≥ 2); labels uniform. Drawn
/// after the parameters from a generator seeded with seed + 1.
pub fn synthetic_sequences(b: i64, l: i64, d: i64, segments: i64, classes: i64, seed: u64, prec: Precision) -> Batch {
    let _rng = crate::tensor_util::rng_lock();
    tch::manual_seed((seed as i64).wrapping_add(1));
    let cpu = (Kind::Double, tch::Device::Cpu);
    let x = Tensor::randn([b, segments * l, d], cpu) * 0.15;
    let lens = Tensor::randint_low(1, l + 1, [b, segments], (Kind::Int64, tch::Device::Cpu));
    if l >= 2 {
        let _ = lens.get(0).fill_(l);
        if b >= 2 {
            let short = Tensor::randint_low(1, l, [segments], (Kind::Int64, tch::Device::Cpu));
            let _ = lens.get(1).copy_(&short);
        }
    }
    // Row r of segment g is real iff r < len[b, g].
    let pos = Tensor::arange(l, (Kind::Int64, tch::Device::Cpu)).reshape([1, 1, l]);
    let keep = pos.lt_tensor(&lens.unsqueeze(-1)).reshape([b, segments * l, 1]).to_kind(Kind::Double);
    let x = (x * keep).to_kind(prec.dtype.kind()).to_device(prec.device);
    let y = Tensor::randint(classes, [b], (Kind::Int64, tch::Device::Cpu)).to_device(prec.device);
    Batch::new(x, y, classes)
}
