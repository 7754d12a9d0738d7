//! An instance (checks §0.1): a model, its parameters, a batch, a precision, and its id.
use crate::config::RunConfig;
use crate::model::{presets, Batch, Model};
use crate::precision::{DeviceChoice, Dtype, Precision};
use crate::Result;
use sha2::{Digest, Sha256};
use std::path::Path;
use tch::{Kind, Tensor};

pub struct Instance {
    pub cfg: RunConfig,
    pub model: Model,
    pub params: Vec<Tensor>,
    pub batch: Batch,
    pub prec: Precision,
    /// `<preset>-<h12>`
    pub id: String,
}

impl Instance {
    /// Builds the model of `cfg`; parameters come from `params_file` or the seeded initialisation, the batch
    /// from `input_file` or the seeded synthetic batch (pixels U[0, 1], labels uniform; estimators §1.8).
    pub fn build(mut cfg: RunConfig, params_file: Option<&Path>, input_file: Option<&Path>) -> Result<Instance> {
        // Seeded draws (parameters, α, the synthetic batch) from the process-global generator: one instance at a time.
        let _rng = crate::tensor_util::rng_lock();
        let dtype = Dtype::parse(&cfg.dtype)?;
        let device = DeviceChoice::parse(&cfg.device)?.resolve()?;
        let prec = Precision::new(dtype, device);
        if let Some(path) = params_file {
            // The input fixes the sizes the parameters may not (a conv net's input height, a sequence length).
            if let Some(inp) = input_file {
                crate::io::sizes_from_input(&mut cfg, inp)?;
            }
            // Layer sizes follow from the tensors; an explicit contradicting size is an error naming the tensor.
            let loaded = crate::io::read_tensors(path)?;
            crate::io::infer_sizes(&mut cfg, &loaded, path)?;
        }
        let mut model = Self::model_for(&mut cfg)?;
        if let Some([lo, hi]) = cfg.input_range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(crate::Error::Config(format!("input_range must be [lo, hi] with lo < hi, got [{lo}, {hi}]")));
            }
            model.input_range = (lo, hi);
        }
        let params = match params_file {
            Some(path) => crate::io::load_params(&model, path, prec)?,
            None => {
                // A graph may leave init bounds out when parameters come from a file; a seeded draw needs them.
                if let Some(p) = model.params.iter().find(|p| matches!(p.init, crate::model::Init::Uniform(a) if a.is_nan())) {
                    return Err(crate::Error::Config(format!("parameter '{}' has no init bound in the graph file: give init = a (U(−a, a)), or the parameters with --params", p.name)));
                }
                model.init_params(cfg.seed, prec)
            }
        };
        let batch = match input_file {
            Some(path) => crate::io::load_batch(&model, path, prec)?,
            None => synthetic_batch(&model, cfg.batch, cfg.seed, prec),
        };
        record_what_ran(&mut cfg, &model, &batch, input_file)?;
        let mut id = instance_id(&cfg, &params, &batch);
        if cfg.graph.is_some() {
            // Graph runs are named after the graph.
            id = format!("{}-{}", model.preset, &id[cfg.preset.len() + 1..]);
        }
        Ok(Instance { cfg, model, params, batch, prec, id })
    }

    /// The model a configuration names: its architecture graph file (`graph`), else its preset (drawing the
    /// ReLU-α values from the seed when they are needed and absent, recorded in `cfg`).
    pub fn model_for(cfg: &mut RunConfig) -> Result<Model> {
        if let Some(g) = &cfg.graph {
            let mut m = crate::graph::load_file(Path::new(g))?;
            if cfg.init_scale.is_some() {
                m.init_scale = cfg.init_scale;
            }
            return Ok(m);
        }
        if cfg.activation == "relu_alpha" && cfg.relu_alpha.is_none() && cfg.preset != "p-mlp" {
            // One α per hidden layer, drawn from the seed and recorded in the resolved configuration.
            let n = presets::hidden_layer_count(&cfg.preset);
            cfg.relu_alpha = Some(presets::conv_common::draw_relu_alpha(n, cfg.seed));
        }
        presets::build(cfg)
    }

    pub fn from_config(cfg: RunConfig) -> Result<Instance> {
        Self::build(cfg, None, None)
    }
}

/// Makes the configuration say exactly what ran (docs/verdicts.md): a graph's own activation, loss and
/// schedule (an explicit different value is refused: it is set in the graph file), and the batch size of an
/// `--input` file (an explicit different `batch` is refused).
fn record_what_ran(cfg: &mut RunConfig, model: &Model, batch: &Batch, input_file: Option<&Path>) -> Result<()> {
    let explicit = |k: &str| cfg.explicit.iter().any(|e| e == k);
    if cfg.graph.is_some() {
        let acts: Vec<&str> = (0..model.layers.len()).map(|k| model.update_key(k)).collect();
        let uniform = acts.windows(2).all(|w| w[0] == w[1]).then(|| acts.first().copied()).flatten();
        let schedule = model.schedule.key();
        let checks: [(&str, &str, Option<&str>); 3] = [("activation", cfg.activation.as_str(), uniform), ("loss", cfg.loss.as_str(), Some(model.loss.key())), ("schedule", cfg.schedule.as_deref().unwrap_or(""), Some(schedule))];
        for (key, given, graph_value) in checks {
            if explicit(key) && Some(given) != graph_value && !(graph_value.is_none() && given == "per_layer") {
                return Err(crate::Error::Config(format!(
                    "{key} = '{given}' does not apply: the {key} is set in the graph file ({}); edit the graph file instead",
                    graph_value.map(str::to_string).unwrap_or_else(|| format!("per layer: {}", acts.join(", ")))
                )));
            }
        }
        cfg.activation = uniform.unwrap_or("per_layer").to_string();
        cfg.loss = model.loss.key().to_string();
        cfg.schedule = Some(schedule.to_string());
    }
    if input_file.is_some() {
        let b = batch.size();
        if explicit("batch") && cfg.batch != b {
            return Err(crate::Error::Config(format!("batch = {} contradicts the --input file, whose input.x has batch size {b}", cfg.batch)));
        }
        cfg.batch = b;
    }
    Ok(())
}

/// The seeded synthetic batch: x ~ U[lo, hi] (the model's input range), y uniform over the classes (drawn after the parameters, from a
/// generator seeded with seed + 1 so the parameter stream is unchanged).
pub fn synthetic_batch(model: &Model, b: i64, seed: u64, prec: Precision) -> Batch {
    if let Some(batch) = presets::synthetic_batch(model, b, seed, prec) {
        return batch;
    }
    tch::manual_seed(seed as i64 + 1);
    let mut shape = vec![b];
    shape.extend(&model.input_shapes[0]);
    let (lo, hi) = model.input_range;
    let mut x = Tensor::rand(&shape[..], (Kind::Float, tch::Device::Cpu));
    if (lo, hi) != (0.0, 1.0) {
        x = x * (hi - lo) + lo;
    }
    let x = x.to_kind(prec.dtype.kind()).to_device(prec.device);
    let y = Tensor::randint(model.classes(), [b], (Kind::Int64, tch::Device::Cpu)).to_device(prec.device);
    Batch::new(x, y, model.classes())
}

/// SHA-256 of the canonical JSON of the resolved configuration followed by the raw bytes of every input and
/// parameter tensor in canonical order; the first 12 hex digits.
pub fn instance_id(cfg: &RunConfig, params: &[Tensor], batch: &Batch) -> String {
    let mut h = Sha256::new();
    h.update(cfg.recorded_json().as_bytes());
    let mut feed = |t: &Tensor| {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let mut buf = vec![0u8; n];
        t.copy_data_u8(&mut buf, t.numel());
        h.update(&buf);
    };
    for x in &batch.x {
        feed(x);
    }
    feed(&batch.y);
    for p in params {
        feed(p);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}", cfg.preset, &hex[..12])
}
