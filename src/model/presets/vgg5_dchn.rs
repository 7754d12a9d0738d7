//! Presets `vgg5-dchn` and `vgg5-dchn-rain` (conv-hopfield.md §3): four conv + 2×2 max-pool couplings and a
//! dense head. H0 must be a multiple of 16.
//!
//! Options: `height`, `in_channels`, `widths` [n1..n4], `classes`, `gains` (5 per-edge values; defaults per
//! preset), `activation` (relu6 for `vgg5-dchn`, hard_sigmoid for `-rain`, or relu_alpha), `schedule`
//! (async2 | sync).
use super::conv_common::{self, bias_bound, param, weight_bound};
use crate::config::RunConfig;
use crate::model::activation::Activation;
use crate::model::loss::Loss;
use crate::model::terms::{bias::Bias, conv_pool::ConvPool, dense::Dense, Node, Term};
use crate::model::{LayerSpec, Model};
use crate::{Error, Result};

pub fn build(cfg: &RunConfig) -> Result<Model> {
    let name = cfg.preset.strip_suffix("-train").unwrap_or(&cfg.preset);
    let sz = conv_common::sizes(cfg, name)?;
    if sz.h0 % 16 != 0 {
        return Err(Error::Config(format!("{name}: height must be a multiple of 16 (every pooled size must be even), got {}", sz.h0)));
    }
    let [n1, n2, n3, n4] = sz.widths;
    let default_gains = if name == "vgg5-dchn-rain" { vec![0.4, 0.7, 0.6, 0.3, 0.4] } else { vec![0.4, 0.7, 0.6, 0.3, 0.6] };
    let gains = cfg.gains.clone().unwrap_or(default_gains);
    if gains.len() != 5 || gains.iter().any(|g| !(g.is_finite() && *g > 0.0)) {
        return Err(Error::Config(format!("{name}: gains must list 5 per-edge values > 0, got {gains:?}")));
    }
    let acts = conv_common::hidden_activations(cfg, 4, name)?;
    let loss = Loss::parse(&cfg.loss)?;
    let ch = [sz.c0, n1, n2, n3, n4];
    let h: Vec<i64> = (0..5).map(|k| sz.h0 >> k).collect();
    let mut layers = Vec::new();
    for k in 1..=4 {
        layers.push(LayerSpec { name: format!("L{k}"), shape: vec![ch[k], h[k], h[k]], activation: acts[k - 1] });
    }
    layers.push(LayerSpec { name: "L5".into(), shape: vec![sz.classes], activation: Activation::Identity });
    let mut params = Vec::new();
    for k in 1..=5 {
        let (c, bound) = if k <= 4 { (ch[k], bias_bound(9, ch[k - 1])) } else { (sz.classes, bias_bound(4, n4)) };
        params.push(param(format!("b.L{k}"), vec![c], &format!("b.L{k}"), bound));
    }
    let mut terms: Vec<Box<dyn Term>> = Vec::new();
    for k in 1..=5 {
        terms.push(Box::new(Bias::new(Node::Layer(k - 1), k - 1)));
    }
    let node = |k: usize| if k == 0 { Node::Input(0) } else { Node::Layer(k - 1) };
    for e in 0..4 {
        let w = format!("W.{e}_{}", e + 1);
        let pi = params.len();
        params.push(param(w.clone(), vec![ch[e + 1], ch[e], 3, 3], &w, weight_bound(gains[e], 9 * ch[e])));
        // The conv runs at the pre layer's size (pad 1, stride 1); the pool halves it.
        terms.push(Box::new(ConvPool::new(node(e), node(e + 1), pi, [h[e], h[e]])));
    }
    let pi = params.len();
    params.push(param("W.4_5".into(), vec![n4, h[4], h[4], sz.classes], "W.4_5", weight_bound(gains[4], n4 * h[4] * h[4])));
    terms.push(Box::new(Dense::pre_first(Node::Layer(3), Node::Layer(4), pi, vec![n4, h[4], h[4]])));
    let schedule = conv_common::schedule(cfg, 5, None)?;
    let mut m = Model::new(name, vec![vec![sz.c0, sz.h0, sz.h0]], layers, params, terms, loss, schedule)?;
    m.init_scale = cfg.init_scale;
    m.input_range = (-0.81, 0.92);
    Ok(m)
}
