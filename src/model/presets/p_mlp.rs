//! Preset `p-mlp`: the layered Hopfield MLP (estimators §1). Layers L1…LD with D = L, dense couplings
//! W_k = `synapses.<k>.weight` (n_{k+1}, n_k) from L_k (L_0 = input) to L_{k+1}, biases `synapses.<k>.bias`,
//! schedule `sync`. Φ = Σ_k ⟨s_{k+1}, W_k s_k + b_k⟩.
use crate::config::RunConfig as ModelConfig;
use crate::model::activation::Activation;
use crate::model::loss::Loss;
use crate::model::schedule::Schedule;
use crate::model::terms::{bias::Bias, dense::Dense, Node, Term};
use crate::model::{Init, LayerSpec, Model, ParamSpec};
use crate::{Error, Result};

pub fn build(cfg: &ModelConfig) -> Result<Model> {
    let archi = &cfg.archi;
    if archi.len() < 2 {
        return Err(Error::Config(format!("p-mlp: archi needs at least 2 sizes, got {archi:?}")));
    }
    if let Some(&bad) = archi.iter().find(|&&n| n < 1) {
        return Err(Error::Config(format!("p-mlp: layer sizes must be ≥ 1, got {bad}")));
    }
    let act = Activation::parse(&cfg.activation)?;
    let loss = Loss::parse(&cfg.loss)?;
    let d = archi.len() - 1;
    let mut layers = Vec::new();
    let mut params = Vec::new();
    let mut terms: Vec<Box<dyn Term>> = Vec::new();
    for k in 0..d {
        let (n_pre, n_post) = (archi[k], archi[k + 1]);
        let out_act = if k == d - 1 && loss == Loss::Ce { Activation::Identity } else { act };
        layers.push(LayerSpec { name: format!("L{}", k + 1), shape: vec![n_post], activation: out_act });
        // PyTorch Linear default init, computed in double precision exactly as estimators §1.2 lists it.
        let fan_in = n_pre as f64;
        let a = 5f64.sqrt();
        let gain = (2.0 / (1.0 + a * a)).sqrt();
        let std = gain / fan_in.sqrt();
        let a_w = 3f64.sqrt() * std;
        let a_b = 1.0 / fan_in.sqrt();
        let group = format!("synapses.{k}");
        params.push(ParamSpec { name: format!("{group}.weight"), shape: vec![n_post, n_pre], group: group.clone(), init: Init::Uniform(a_w) });
        params.push(ParamSpec { name: format!("{group}.bias"), shape: vec![n_post], group, init: Init::Uniform(a_b) });
        let pre = if k == 0 { Node::Input(0) } else { Node::Layer(k - 1) };
        terms.push(Box::new(Dense::new(pre, Node::Layer(k), 2 * k)));
        terms.push(Box::new(Bias::new(Node::Layer(k), 2 * k + 1)));
    }
    let schedule = match cfg.schedule.as_deref() {
        None | Some("sync") => Schedule::sync(d),
        Some(other) => Schedule::parse(other, d)?,
    };
    let mut m = Model::new("p-mlp", vec![vec![archi[0]]], layers, params, terms, loss, schedule)?;
    m.init_scale = cfg.init_scale;
    Ok(m)
}
