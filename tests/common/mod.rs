#![allow(dead_code)]
use epcheck::config::RunConfig;
use epcheck::instance::Instance;
use tch::Tensor;

/// A tiny P-MLP instance (checks F1-style): archi [6, 5, 5, 3], B = 3, init_scale 0.5.
pub fn tiny(activation: &str, loss: &str) -> Instance {
    tiny_with(activation, loss, |_| {})
}

pub fn tiny_with(activation: &str, loss: &str, f: impl FnOnce(&mut RunConfig)) -> Instance {
    let mut cfg = RunConfig::preset_defaults("p-mlp").unwrap();
    cfg.archi = vec![6, 5, 5, 3];
    cfg.activation = activation.into();
    cfg.loss = loss.into();
    cfg.batch = 3;
    cfg.init_scale = Some(0.5);
    f(&mut cfg);
    Instance::from_config(cfg).unwrap()
}

pub fn flat(ts: &[Tensor]) -> Vec<f64> {
    ts.iter().flat_map(|t| epcheck::tensor_util::to_vec_f64(t)).collect()
}

pub fn rel_l2(a: &[f64], r: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(r).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let den: f64 = r.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den
}

pub fn rel_linf(a: &[f64], r: &[f64]) -> f64 {
    let num = a.iter().zip(r).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let den = r.iter().map(|y| y.abs()).fold(0.0, f64::max);
    num / den
}

/// Least-squares slope of log10 y against log10 x.
pub fn loglog_slope(x: &[f64], y: &[f64]) -> f64 {
    let lx: Vec<f64> = x.iter().map(|v| v.log10()).collect();
    let ly: Vec<f64> = y.iter().map(|v| v.log10()).collect();
    let n = lx.len() as f64;
    let mx = lx.iter().sum::<f64>() / n;
    let my = ly.iter().sum::<f64>() / n;
    let sxy: f64 = lx.iter().zip(&ly).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = lx.iter().map(|a| (a - mx).powi(2)).sum();
    sxy / sxx
}

/// The scalar sign oracle of conventions §8.3: Φ = θ·x·s (P-MLP [1, 1], identity, MSE, target ŷ = 1),
/// θ = 0.7, x = 1.3, with dL/dθ = x(θx − 1).
pub fn scalar_oracle() -> (Instance, f64) {
    let mut inst = tiny_with("identity", "mse", |c| {
        c.archi = vec![1, 1];
        c.batch = 1;
    });
    let (theta, x) = (0.7, 1.3);
    inst.params = vec![Tensor::from_slice(&[theta]).reshape([1, 1]), Tensor::zeros([1], (tch::Kind::Double, tch::Device::Cpu))];
    inst.batch = epcheck::model::Batch::new(Tensor::from_slice(&[x]).reshape([1, 1]), Tensor::from_slice(&[0i64]), 1);
    (inst, x * (theta * x - 1.0))
}
