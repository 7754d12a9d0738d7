//! Preset `snli-hopfield` (`hopfield-attention.md` §3): x (B, 2L, d) = [P; H]. Attention layers L1 … L4
//! (B, L, d): L1 = A_c(P W0ᵀ + F₀; H), L2 = A_c(H W1ᵀ + F₁; P), L3 = A_c(P W2ᵀ + F₂; P), L4 = A_c(H W3ᵀ + F₃; H),
//! with F = W4ᵀ s5 split by vec(S), S = cat(s1, s2, s3, s4) along the sequence axis. Dense layers L5 … L_{4+m}
//! of widths fc (σ = `my_hard_sig`, the output too). Synapses 0–3 = the projections (d, d, no bias), 3 + j =
//! the dense weight and bias. c = 0.16 for every d unless `attention_scale` is given. Schedule `sync`.
use super::seq_common::{push_dense_stack, push_projection_param, schedule, sizes};
use crate::config::RunConfig as ModelConfig;
use crate::model::activation::Activation;
use crate::model::attention::{Attention, SeqSlice};
use crate::model::terms::{projection::Projection, Node, Term};
use crate::model::{LayerSpec, Model};
use crate::Result;
use std::sync::Arc;

pub const NAME: &str = "snli-hopfield";

/// The reference's hard-coded inverse temperature (§4.2).
pub const SCALE: f64 = 0.16;

pub fn build(cfg: &ModelConfig) -> Result<Model> {
    let s = sizes(cfg, NAME)?;
    let (l, d) = (s.l, s.d);
    let c = cfg.attention_scale.unwrap_or(SCALE);
    let (prem, hyp) = (SeqSlice::new(0, 0, l), SeqSlice::new(0, l, l));
    // (query source, keys) for L1 … L4.
    let roles = [(prem, hyp), (hyp, prem), (prem, prem), (hyp, hyp)];
    let mut layers = Vec::new();
    let mut params = Vec::new();
    let mut terms: Vec<Box<dyn Term>> = Vec::new();
    for (k, (q, _)) in roles.iter().enumerate() {
        layers.push(LayerSpec { name: format!("L{}", k + 1), shape: vec![l, d], activation: Activation::Identity });
        let w = push_projection_param(&mut params, k, d);
        terms.push(Box::new(Projection::new(*q, k, w)));
    }
    let pre: Vec<Node> = (0..4).map(Node::Layer).collect();
    push_dense_stack(&s, pre, 4 * l * d, 4, &mut layers, &mut params, &mut terms);
    let sched = schedule(cfg, layers.len())?;
    let mut m = Model::new(NAME, vec![vec![2 * l, d]], layers, params, terms, s.loss, sched)?;
    for (k, (q, kv)) in roles.into_iter().enumerate() {
        m = m.with_update_map(k, Arc::new(Attention::new(kv, q, c, s.mask)))?;
    }
    m.init_scale = cfg.init_scale;
    Ok(m)
}
