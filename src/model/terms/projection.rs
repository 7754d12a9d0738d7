//! Bias-free projection of a clamped sequence into a sequence layer (`hopfield-attention.md` §2.3, §3.4):
//! Xin = rows `start .. start + len` of a clamped input (B, L, d_in), state s (B, L, d_out), weight W
//! (d_out, d_in) in `Linear` layout.
//!
//! Φ term: Σ_l ⟨W x_l, s_l⟩ = ⟨Xin Wᵀ, s⟩. Drive into the state: Xin Wᵀ (constant during a relaxation).
//! Local gradient (§6): ∂Φ̄/∂W[i, j] = (1/B) Σ_b Σ_l s[b, l, i] · Xin[b, l, j] (this returns the batch sum).
use super::{Node, Term};
use crate::model::attention::SeqSlice;
use crate::tensor_util::{matmul, sum_per_example};
use tch::Tensor;

pub struct Projection {
    slots: [Node; 2],
    params: [usize; 1],
    rows: SeqSlice,
}

const INPUT: usize = 0;
const STATE: usize = 1;

impl Projection {
    /// Projects `rows` of clamped input `rows.input` into free layer `layer` with weight `weight`.
    pub fn new(rows: SeqSlice, layer: usize, weight: usize) -> Self {
        Projection { slots: [Node::Input(rows.input), Node::Layer(layer)], params: [weight], rows }
    }
    fn xin(&self, s: &[&Tensor]) -> Tensor {
        s[INPUT].narrow(1, self.rows.start, self.rows.len)
    }
    /// (B, L, k) → (B·L, k)
    fn flat(t: &Tensor) -> Tensor {
        let k = *t.size().last().expect("rank ≥ 1");
        t.reshape([-1, k])
    }
}

impl Term for Projection {
    fn describe(&self) -> Option<super::TermSpec> {
        Some(super::TermSpec::Projection(self.rows))
    }
    fn kind(&self) -> &'static str {
        "attention_projection"
    }
    fn slots(&self) -> &[Node] {
        &self.slots
    }
    fn params(&self) -> &[usize] {
        &self.params
    }
    fn primitive(&self, p: &[Tensor], s: &[&Tensor]) -> Tensor {
        sum_per_example(&(matmul(&self.xin(s), &p[self.params[0]].tr()) * s[STATE]))
    }
    fn drive(&self, p: &[Tensor], s: &[&Tensor], slot: usize) -> Tensor {
        match slot {
            STATE => matmul(&self.xin(s), &p[self.params[0]].tr()),
            // The input is clamped and never updated; its "drive" would be s W on the selected rows only.
            _ => {
                let full = s[INPUT].zeros_like();
                let _ = full.narrow(1, self.rows.start, self.rows.len).copy_(&matmul(s[STATE], &p[self.params[0]]));
                full
            }
        }
    }
    fn hvp(&self, _p: &[Tensor], _s: &[&Tensor], _mu: &[Option<&Tensor>], _slot: usize) -> Option<Tensor> {
        // Linear in the state and the other slot is clamped: no state–state second derivative.
        None
    }
    fn param_grad(&self, _p: &[Tensor], s: &[&Tensor]) -> Vec<Tensor> {
        vec![matmul(&Self::flat(s[STATE]).tr(), &Self::flat(&self.xin(s)))]
    }
    fn param_vjp(&self, _p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>]) -> Vec<Option<Tensor>> {
        vec![mu[STATE].map(|m| matmul(&Self::flat(m).tr(), &Self::flat(&self.xin(s))))]
    }
}
