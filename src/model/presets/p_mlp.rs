//! Preset `p-mlp`: the layered Hopfield MLP (estimators §1). Layers L1…LD with D = L, dense couplings
//! W_k = `synapses.<k>.weight` (n_{k+1}, n_k) from L_k (L_0 = input) to L_{k+1}, biases `synapses.<k>.bias`,
//! schedule `sync`. Φ = Σ_k ⟨s_{k+1}, W_k s_k + b_k⟩. With `readout = softmax` the last coupling is the readout
//! (D = L − 1 free layers; `model/readout.rs`).
use crate::config::RunConfig as ModelConfig;
use crate::model::activation::Activation;
use crate::model::loss::Loss;
use crate::model::schedule::Schedule;
use crate::model::terms::{bias::Bias, dense::Dense, Node, Term};
use crate::model::readout::Readout;
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
    // Softmax readout (estimators §1.1): the last coupling maps s_D to the logits; D = L − 1 free layers.
    let readout = cfg.readout.as_deref() == Some("softmax");
    if readout && loss != Loss::Ce {
        return Err(Error::Config(format!("readout = 'softmax' needs loss = 'ce', got loss = '{}'", cfg.loss)));
    }
    if readout && archi.len() < 3 {
        return Err(Error::Config(format!("readout = 'softmax' needs at least 3 sizes in archi (input, a free layer, the classes), got {archi:?}")));
    }
    let l = archi.len() - 1;
    let d = if readout { l - 1 } else { l };
    let mut layers = Vec::new();
    let mut params = Vec::new();
    let mut terms: Vec<Box<dyn Term>> = Vec::new();
    for k in 0..l {
        let (n_pre, n_post) = (archi[k], archi[k + 1]);
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
        if k == d {
            // The readout coupling: no state, no energy term (it enters only the loss).
            break;
        }
        // The output gets σ, except for ce without readout (it holds the logits).
        let out_act = if k == d - 1 && loss == Loss::Ce && !readout { Activation::Identity } else { act };
        layers.push(LayerSpec { name: format!("L{}", k + 1), shape: vec![n_post], activation: out_act });
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
    if readout {
        m.readout = Some(Readout { weight: 2 * d, bias: 2 * d + 1 });
    }
    if cfg.init.as_deref() == Some("trunc_normal") {
        m.init_trunc_std = cfg.init_std;
    }
    Ok(m)
}
