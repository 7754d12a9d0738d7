//! Regimes of clamp-type units and their changes between states (conventions §10). Feeds the theorem
//! verdicts: a kink crossing makes a β → 0 check inconclusive.
use crate::model::{Batch, Model};
use tch::Tensor;

/// Regime tensors per layer at a state (None for smooth layers).
pub fn regimes(model: &Model, p: &[Tensor], batch: &Batch, s: &[Tensor], beta: f64) -> Vec<Option<Tensor>> {
    tch::no_grad(|| {
        (0..model.layers.len())
            .map(|k| {
                let act = model.layers[k].activation;
                act.kinks()?;
                let u = model.drive(p, batch, s, k, beta);
                act.regimes(&u)
            })
            .collect()
    })
}

/// Number of units whose regime differs between two regime maps, per layer.
pub fn changes(a: &[Option<Tensor>], b: &[Option<Tensor>]) -> Vec<i64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => x.ne_tensor(y).sum(tch::Kind::Int64).int64_value(&[]),
            _ => 0,
        })
        .collect()
}

/// Minimum kink margin over all clamp units at a state (+∞ for smooth models).
pub fn min_margin(model: &Model, p: &[Tensor], batch: &Batch, s: &[Tensor]) -> f64 {
    tch::no_grad(|| {
        let mut m = f64::INFINITY;
        for k in 0..model.layers.len() {
            let act = model.layers[k].activation;
            if act.kinks().is_some() {
                let u = model.drive(p, batch, s, k, 0.0);
                if let Some(mg) = act.margins(&u) {
                    m = m.min(mg.min().to_kind(tch::Kind::Double).double_value(&[]));
                }
            }
        }
        m
    })
}

/// Predicted kink-crossing threshold β_c,pred = min_j m_j/|δu_j| over clamp units (estimators §6.5), with
/// δu = (u(s^{β_p}) − u(s^0))/β_p the drive sensitivity from a probe at β_p; +∞ for smooth models.
pub fn beta_c_pred(model: &Model, p: &[Tensor], batch: &Batch, s0: &[Tensor], s_probe: &[Tensor], beta_p: f64) -> f64 {
    tch::no_grad(|| {
        let mut best = f64::INFINITY;
        for k in 0..model.layers.len() {
            let act = model.layers[k].activation;
            if act.kinks().is_none() {
                continue;
            }
            let u0 = model.drive(p, batch, s0, k, 0.0);
            let ub = model.drive(p, batch, s_probe, k, beta_p);
            let du = ((&ub - &u0) / beta_p).abs();
            let m = act.margins(&u0).expect("clamp");
            let ratio = (m / du).nan_to_num(f64::INFINITY, f64::INFINITY, f64::INFINITY);
            best = best.min(ratio.min().to_kind(tch::Kind::Double).double_value(&[]));
        }
        best
    })
}
