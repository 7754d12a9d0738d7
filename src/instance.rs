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
        check_sizes(&model, if input_file.is_some() { 1 } else { cfg.batch }, dtype.kind().elt_size_in_bytes())?;
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
            m.apply_run_options(cfg);
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

/// Memory epcheck may ask for before it gives up (bytes): the available memory (`MemAvailable` of
/// `/proc/meminfo`), or 1 TiB where that cannot be read.
pub fn memory_cap() -> u64 {
    let avail = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb.saturating_mul(1024))
    });
    avail.unwrap_or(1 << 40)
}

fn human_bytes(b: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];
    let (mut v, mut u) = (b as f64, 0);
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

/// Validates the sizes of a model and batch before anything is allocated: every dimension ≥ 1, every product
/// computed with checked arithmetic, and the memory the parameters, one batch and one state need at the least
/// (`elt` bytes per value) within [`memory_cap`]. One line naming the sizes and the bytes otherwise.
pub fn check_sizes(model: &Model, batch: i64, elt: usize) -> Result<()> {
    let too_big = |what: String| crate::Error::Config(what);
    let numel = |what: &str, shape: &[i64]| -> Result<u128> {
        let mut n: u128 = 1;
        for &d in shape {
            if d < 1 {
                return Err(too_big(format!("{what} has shape {shape:?}: every size must be ≥ 1")));
            }
            n = n.checked_mul(d as u128).filter(|&n| n <= i64::MAX as u128).ok_or_else(|| too_big(format!("{what} has shape {shape:?}, whose number of values overflows")))?;
        }
        Ok(n)
    };
    if batch < 1 {
        return Err(too_big(format!("batch must be ≥ 1, got {batch}")));
    }
    let mut params: u128 = 0;
    for p in &model.params {
        params += numel(&format!("parameter '{}'", p.name), &p.shape)?;
    }
    let mut per_example: u128 = 0;
    for (i, s) in model.input_shapes.iter().enumerate() {
        per_example += numel(&format!("input {i}"), s)?;
    }
    for l in &model.layers {
        per_example += numel(&format!("layer '{}'", l.name), &l.shape)?;
    }
    let values = per_example.checked_mul(batch as u128).and_then(|v| v.checked_add(params));
    let bytes = values.and_then(|v| v.checked_mul(elt as u128));
    let cap = memory_cap() as u128;
    match bytes {
        Some(b) if b <= cap && values.unwrap_or(u128::MAX) <= i64::MAX as u128 => Ok(()),
        _ => Err(too_big(format!(
            "sizes too large: batch {batch} × {per_example} input and state values per example + {params} parameter values need at least {} bytes ({}), more than the {} of available memory",
            bytes.map(|b| b.to_string()).unwrap_or_else(|| "> 2^128".into()),
            bytes.map(human_bytes).unwrap_or_else(|| "overflow".into()),
            human_bytes(cap)
        ))),
    }
}

/// The seeded synthetic batch: x ~ U[lo, hi] (the model's input range), y uniform over the classes (drawn after the parameters, from a
/// generator seeded with seed + 1 so the parameter stream is unchanged).
pub fn synthetic_batch(model: &Model, b: i64, seed: u64, prec: Precision) -> Batch {
    if let Some(batch) = presets::synthetic_batch(model, b, seed, prec) {
        return batch;
    }
    let _rng = crate::tensor_util::rng_lock();
    tch::manual_seed((seed as i64).wrapping_add(1));
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
