//! Dense coupling between a pre state (B, n_pre) and a post state (B, n_post), weight W of shape
//! (n_post, n_pre) (torch.nn.Linear layout, estimators §1.2).
//!
//! Φ term: ⟨s_post, W s_pre⟩. Drives: W s_pre into post, Wᵀ s_post into pre.
//! Local gradient: ∂Φ̄/∂W = (1/B) Σ_b s_post,b s_pre,bᵀ (this returns the batch sum).
use super::{Node, Term};
use crate::tensor_util::matmul;
use tch::Tensor;

pub struct Dense {
    slots: [Node; 2],
    params: [usize; 1],
}

impl Dense {
    /// `weight`: index of W in the model's parameter list.
    pub fn new(pre: Node, post: Node, weight: usize) -> Self {
        Dense { slots: [pre, post], params: [weight] }
    }
    fn w<'a>(&self, p: &'a [Tensor]) -> &'a Tensor {
        &p[self.params[0]]
    }
}

const PRE: usize = 0;
const POST: usize = 1;

impl Term for Dense {
    fn kind(&self) -> &'static str {
        "dense"
    }
    fn slots(&self) -> &[Node] {
        &self.slots
    }
    fn params(&self) -> &[usize] {
        &self.params
    }
    fn primitive(&self, p: &[Tensor], s: &[&Tensor]) -> Tensor {
        (matmul(s[PRE], &self.w(p).tr()) * s[POST]).sum_dim_intlist(Some(&[1i64][..]), false, None)
    }
    fn drive(&self, p: &[Tensor], s: &[&Tensor], slot: usize) -> Tensor {
        match slot {
            PRE => matmul(s[POST], self.w(p)),
            _ => matmul(s[PRE], &self.w(p).tr()),
        }
    }
    fn hvp(&self, p: &[Tensor], _s: &[&Tensor], mu: &[Option<&Tensor>], slot: usize) -> Option<Tensor> {
        match slot {
            PRE => mu[POST].map(|m| matmul(m, self.w(p))),
            _ => mu[PRE].map(|m| matmul(m, &self.w(p).tr())),
        }
    }
    fn param_grad(&self, _p: &[Tensor], s: &[&Tensor]) -> Vec<Tensor> {
        vec![matmul(&s[POST].tr(), s[PRE])]
    }
    fn param_vjp(&self, _p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>]) -> Vec<Option<Tensor>> {
        let mut g = None;
        if let Some(m) = mu[POST] {
            super::accumulate(&mut g, matmul(&m.tr(), s[PRE]));
        }
        if let Some(m) = mu[PRE] {
            super::accumulate(&mut g, matmul(&s[POST].tr(), m));
        }
        vec![g]
    }
}
