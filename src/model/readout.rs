//! The softmax readout of the P-MLP (estimators §1.1, §1.4): logits z = W_ro s_D + b_ro, recomputed from the
//! loss-bearing layer s_D whenever they are needed (z is not a state), and the cross-entropy on z,
//! ℓ = logsumexp(z) − z_y. The readout parameters θ_ro = (W_ro, b_ro) (`synapses.<L−1>.weight/bias`, torch
//! `nn.Linear` layout) enter only the loss, so ℓ depends on θ: ∂ℓ/∂W_ro = (p − ŷ) s_Dᵀ, ∂ℓ/∂b_ro = p − ŷ with
//! p = softmax(z), and ∂ℓ/∂s_D = W_roᵀ (p − ŷ).
//!
//! Every function here is in batch form and works on real or complex s_D (the parameters stay real; the
//! products are the plain, non-conjugated ones of estimators §3.7).
use crate::tensor_util::matmul;
use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readout {
    /// Index of W_ro, shape (C, n_D), in the model's parameter list.
    pub weight: usize,
    /// Index of b_ro, shape (C,).
    pub bias: usize,
}

impl Readout {
    /// z = flat(s_D) W_roᵀ + b_ro, shape (B, C); a multi-axis layer (a conv layer of a P-CNN) is flattened
    /// row-major, as `view(mbs, -1)` does.
    pub fn logits(&self, p: &[Tensor], s: &Tensor) -> Tensor {
        matmul(&s.flatten(1, -1), &p[self.weight].tr()) + &p[self.bias]
    }

    /// A cotangent on z, g (B, C), pulled back to s_D: g W_ro, in the shape of `s`.
    pub fn pullback(&self, p: &[Tensor], g: &Tensor, s: &Tensor) -> Tensor {
        matmul(g, &p[self.weight]).reshape(s.size())
    }

    /// A tangent of s_D, v (B, layer shape), pushed to z: flat(v) W_roᵀ.
    pub fn push(&self, p: &[Tensor], v: &Tensor) -> Tensor {
        matmul(&v.flatten(1, -1), &p[self.weight].tr())
    }

    /// Σ_b of the explicit parameter derivatives for per-example cotangents g_b on z (e.g. p_b − ŷ_b):
    /// (Σ_b g_b flat(s_D,b)ᵀ, Σ_b g_b), the weight's and the bias's.
    pub fn param_grad(&self, s: &Tensor, g: &Tensor) -> (Tensor, Tensor) {
        (matmul(&g.tr(), &s.flatten(1, -1)), g.sum_dim_intlist(Some(&[0i64][..]), false, None))
    }
}
