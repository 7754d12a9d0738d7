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
