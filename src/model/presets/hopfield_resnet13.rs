//! Preset `hopfield-resnet13` (conv-hopfield.md §2): 8 convolutional layers in four blocks a→b, stride-2 3×3
//! main edges and 1×1 stride-2 skips from each block's input to its output, no pooling, a dense head.
//!
//! Options: `height`, `in_channels`, `widths` [n1..n4], `classes`, `skips` (`conv1x1` | `none`), `gains`
//! ([main, skip, dense], default [0.6, 0.7, 0.8]), `activation` (relu6 | hard_sigmoid | relu_alpha), `schedule`
//! (async2 | sync | groups = [[1,3,5,7,9], [2,6], [4,8]]).
use super::conv_common::{self, bias_bound, param, weight_bound};
use crate::config::RunConfig;
use crate::model::activation::Activation;
use crate::model::loss::Loss;
use crate::model::terms::{bias::Bias, conv::Conv, conv::ConvGeom, dense::Dense, Node, Term};
use crate::model::{LayerSpec, Model};
use crate::{Error, Result};

const NAME: &str = "hopfield-resnet13";

/// d(h) = ⌈h/2⌉: the size map of both stride-2 couplings.
fn down(h: i64) -> i64 {
    ConvGeom::out_size(3, 2, 1, h)
}

pub fn build(cfg: &RunConfig) -> Result<Model> {
    let sz = conv_common::sizes(cfg, NAME)?;
    let [n1, n2, n3, n4] = sz.widths;
    let gains = cfg.gains.clone().unwrap_or_else(|| vec![0.6, 0.7, 0.8]);
    if gains.len() != 3 || gains.iter().any(|g| !(g.is_finite() && *g > 0.0)) {
        return Err(Error::Config(format!("{NAME}: gains must be [main, skip, dense], each > 0, got {gains:?}")));
    }
    let (g_main, g_skip, g_dense) = (gains[0], gains[1], gains[2]);
    let skips = match cfg.skips.as_deref() {
        None | Some("conv1x1") => true,
        Some("none") => false,
        Some(o) => return Err(Error::Config(format!("{NAME}: skips must be conv1x1 or none, got '{o}'"))),
    };
    let acts = conv_common::hidden_activations(cfg, 8, NAME)?;
    let loss = Loss::parse(&cfg.loss)?;
    // Layer sizes: 1 = H0, 2 = d(1), 3 = 2, 4 = d(3), …
    let mut h = vec![sz.h0];
    let ch = [sz.c0, n1, n1, n2, n2, n3, n3, n4, n4];
    for k in 1..=8 {
        let prev = h[k - 1];
        h.push(if k % 2 == 0 { down(prev) } else { prev });
    }
    let mut layers = Vec::new();
    for k in 1..=8 {
        layers.push(LayerSpec { name: format!("L{k}"), shape: vec![ch[k], h[k], h[k]], activation: acts[k - 1] });
    }
    layers.push(LayerSpec { name: "L9".into(), shape: vec![sz.classes], activation: Activation::Identity });
    let node = |k: usize| if k == 0 { Node::Input(0) } else { Node::Layer(k - 1) };
    // Edge table (§2.2): (pre, post, kernel, stride, pad, role).
    let mut edges: Vec<(usize, usize, i64, i64, i64, &str)> = Vec::new();
    for blk in 0..4 {
        let a = 2 * blk; // block input
        edges.push((a, a + 1, 3, 1, 1, "main"));
        if blk == 0 {
            edges.push((1, 2, 3, 2, 1, "main"));
            edges.push((0, 2, 1, 2, 0, "skip"));
        } else {
            edges.push((a, a + 2, 1, 2, 0, "skip"));
            edges.push((a + 1, a + 2, 3, 2, 1, "main"));
        }
    }
    // Edge order of the table: 0_1, 1_2, 0_2, 2_3, 2_4, 3_4, …: the first block lists main before skip, later
    // blocks list the skip 2_4 before the main 3_4 (pre index order).
    if !skips {
        edges.retain(|e| e.5 != "skip");
    }
    let mut params = Vec::new();
    // Biases b.L1 … b.L9 first. Gain of layer k: 0.5/√(9 × input channels of its main incoming 3×3 conv).
    let bias_in = [sz.c0, n1, n1, n2, n2, n3, n3, n4, n4];
    for k in 1..=9 {
        let c = if k <= 8 { ch[k] } else { sz.classes };
        params.push(param(format!("b.L{k}"), vec![c], &format!("b.L{k}"), bias_bound(9, bias_in[k - 1])));
    }
    let mut terms: Vec<Box<dyn Term>> = Vec::new();
    for k in 1..=9 {
        terms.push(Box::new(Bias::new(Node::Layer(k - 1), k - 1)));
    }
    for &(i, j, kk, st, pad, role) in &edges {
        let name = format!("W.{i}_{j}");
        let gain = if role == "main" { g_main } else { g_skip };
        let pi = params.len();
        params.push(param(name.clone(), vec![ch[j], ch[i], kk, kk], &name, weight_bound(gain, ch[i] * kk * kk)));
        terms.push(Box::new(Conv::new(node(i), node(j), pi, kk, st, pad, [h[i], h[i]])));
    }
    let pi = params.len();
    let head_shape = vec![n4, h[8], h[8]];
    params.push(param("W.8_9".into(), vec![n4, h[8], h[8], sz.classes], "W.8_9", weight_bound(g_dense, n4 * h[8] * h[8])));
    terms.push(Box::new(Dense::pre_first(Node::Layer(7), Node::Layer(8), pi, head_shape)));
    // The output bias bound uses 0.5/√(9·n4) (quirk 11): bias_in[8] = n4 above.
    let schedule = conv_common::schedule(cfg, 9, Some(vec![vec![0, 2, 4, 6, 8], vec![1, 5], vec![3, 7]]))?;
    let mut m = Model::new(NAME, vec![vec![sz.c0, sz.h0, sz.h0]], layers, params, terms, loss, schedule)?;
    m.init_scale = cfg.init_scale;
    m.input_range = (-0.81, 0.92);
    Ok(m)
}
