//! Preset `imdb-hopfield` (`hopfield-attention.md` §2): x (B, L, d); L1 (B, L, d) = attention A_c(u1; x) with
//! u1 = x W0ᵀ + unvec(W1ᵀ s2); dense layers L2 … L_{n+1} of widths fc (σ = `my_hard_sig`, the output too).
//! Φ = Σ_l ⟨W0 x_l, s1[l]⟩ + Σ_i ⟨W_i vec(s_i) + b_i, s_{i+1}⟩. Synapse 0 = W0 (d, d, no bias), synapse i = W_i,
//! b_i. c = 1/√d unless `attention_scale` is given. Schedule `sync`.
use super::seq_common::{push_dense_stack, push_projection_param, schedule, sizes};
use crate::config::RunConfig as ModelConfig;
use crate::model::activation::Activation;
use crate::model::attention::{Attention, SeqSlice};
use crate::model::terms::{projection::Projection, Node, Term};
use crate::model::{LayerSpec, Model};
use crate::Result;
use std::sync::Arc;

pub const NAME: &str = "imdb-hopfield";

pub fn build(cfg: &ModelConfig) -> Result<Model> {
    let s = sizes(cfg, NAME)?;
    let (l, d) = (s.l, s.d);
    let c = cfg.attention_scale.unwrap_or(1.0 / (d as f64).sqrt());
    let mut layers = vec![LayerSpec { name: "L1".into(), shape: vec![l, d], activation: Activation::Identity }];
    let mut params = Vec::new();
    let mut terms: Vec<Box<dyn Term>> = Vec::new();
    let x = SeqSlice::new(0, 0, l);
    let w0 = push_projection_param(&mut params, 0, d);
    terms.push(Box::new(Projection::new(x, 0, w0)));
    push_dense_stack(&s, vec![Node::Layer(0)], l * d, 1, &mut layers, &mut params, &mut terms);
    let sched = schedule(cfg, layers.len())?;
    let mut m = Model::new(NAME, vec![vec![l, d]], layers, params, terms, s.loss, sched)?.with_update_map(0, Arc::new(Attention::new(x, x, c, s.mask)))?;
    m.init_scale = cfg.init_scale;
    Ok(m)
}
