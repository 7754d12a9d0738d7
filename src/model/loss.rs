//! Losses and the nudge (conventions §3). The nudge enters only the output drive:
//! u_out = ∂Φ/∂s_out − β·∂ℓ/∂s_out(s_out,t), evaluated at the **current** output state.
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// ½ Σ_c (s_c − ŷ_c)²
    #[default]
    Mse,
    /// logsumexp(s) − s_y
    Ce,
}

impl Loss {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "mse" => Ok(Loss::Mse),
            "ce" => Ok(Loss::Ce),
            _ => Err(Error::Config(format!("loss '{s}' is not one of mse, ce"))),
        }
    }
    pub fn key(self) -> &'static str {
        match self {
            Loss::Mse => "mse",
            Loss::Ce => "ce",
        }
    }
    /// ℓ per example, shape (B,).
    pub fn value(self, out: &Tensor, onehot: &Tensor) -> Tensor {
        match self {
            Loss::Mse => {
                let d = out - onehot;
                (&d * &d).sum_dim_intlist(Some(&[1i64][..]), false, None) * 0.5
            }
            Loss::Ce => {
                // logsumexp(s) − ⟨ŷ, s⟩; logsumexp subtracts the max internally.
                out.logsumexp([1i64], false) - (out * onehot).sum_dim_intlist(Some(&[1i64][..]), false, None)
            }
        }
    }
    /// ∂ℓ/∂s_out per example, shape (B, C).
    pub fn grad(self, out: &Tensor, onehot: &Tensor) -> Tensor {
        match self {
            Loss::Mse => out - onehot,
            Loss::Ce => softmax(out) - onehot,
        }
    }
    /// ∂²ℓ/∂s_out² · v per example.
    pub fn hvp(self, out: &Tensor, v: &Tensor) -> Tensor {
        match self {
            Loss::Mse => v.shallow_clone(),
            Loss::Ce => {
                let p = softmax(out);
                let pv = (&p * v).sum_dim_intlist(Some(&[1i64][..]), true, None);
                &p * v - &p * pv
            }
        }
    }
}

/// softmax over classes with max-subtraction; for complex logits the subtracted m is the max of the real
/// parts, a real constant (estimators §3.7).
pub fn softmax(z: &Tensor) -> Tensor {
    if crate::tensor_util::is_complex(z.kind()) {
        let m = z.real().amax([1i64], true);
        let e = (z - m).exp();
        let s = e.sum_dim_intlist(Some(&[1i64][..]), true, None);
        e / s
    } else {
        z.softmax(1, z.kind())
    }
}
