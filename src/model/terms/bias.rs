//! Bias of a free layer: Φ term ⟨b, s⟩ (b broadcast over the batch and over any spatial axes after the
//! channel axis). Drive: b. Local gradient: ∂Φ̄/∂b = (1/B) Σ_b s_b (this returns the batch sum, reduced over
//! spatial axes for per-channel biases).
use super::{Node, Term};
use tch::Tensor;

pub struct Bias {
    slots: [Node; 1],
    params: [usize; 1],
}

impl Bias {
    pub fn new(layer: Node, bias: usize) -> Self {
        Bias { slots: [layer], params: [bias] }
    }
    /// The bias viewed with the state's rank: (C,) → (1, C, 1, …).
    fn broadcast(b: &Tensor, state_rank: usize) -> Tensor {
        let mut shape = vec![1i64, b.size()[0]];
        shape.resize(state_rank, 1);
        b.reshape(shape)
    }
    /// Reduces (B, C, …) to (C,).
    fn reduce(t: &Tensor) -> Tensor {
        let dims: Vec<i64> = (0..t.dim() as i64).filter(|&d| d != 1).collect();
        t.sum_dim_intlist(Some(&dims[..]), false, None)
    }
}

impl Term for Bias {
    fn describe(&self) -> Option<super::TermSpec> {
        Some(super::TermSpec::Bias)
    }
    fn kind(&self) -> &'static str {
        "bias"
    }
    fn slots(&self) -> &[Node] {
        &self.slots
    }
    fn params(&self) -> &[usize] {
        &self.params
    }
    fn primitive(&self, p: &[Tensor], s: &[&Tensor]) -> Tensor {
        let b = Self::broadcast(&p[self.params[0]], s[0].dim());
        crate::tensor_util::sum_per_example(&(s[0] * b))
    }
    fn drive(&self, p: &[Tensor], s: &[&Tensor], _slot: usize) -> Tensor {
        Self::broadcast(&p[self.params[0]], s[0].dim()).expand_as(s[0])
    }
    fn hvp(&self, _p: &[Tensor], _s: &[&Tensor], _mu: &[Option<&Tensor>], _slot: usize) -> Option<Tensor> {
        None
    }
    fn param_grad(&self, _p: &[Tensor], s: &[&Tensor]) -> Vec<Tensor> {
        vec![Self::reduce(s[0])]
    }
    fn param_vjp(&self, _p: &[Tensor], _s: &[&Tensor], mu: &[Option<&Tensor>]) -> Vec<Option<Tensor>> {
        vec![mu[0].map(Self::reduce)]
    }
}
