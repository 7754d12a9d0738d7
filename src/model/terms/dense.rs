//! Dense coupling between a pre state (B, pre shape…) and a post state (B, n_post).
//!
//! Two weight layouts:
//! * `Linear`: W of shape (n_post, n_pre), pre flat (torch.nn.Linear layout, estimators §1.2; P-MLP, attention);
//! * `PreFirst`: W of shape (pre shape…, n_post), e.g. (C, H, W, n) for the conv heads (conv-hopfield.md §1): the
//!   pre state is flattened row-major, tensordot(s_pre, W)[b, n] = Σ_{c,h,w} s_pre[b,c,h,w] W[c,h,w,n].
//!
//! Φ term: ⟨s_post, W s_pre⟩. Drives: W s_pre into post, Wᵀ s_post (reshaped to the pre shape) into pre.
//! Local gradient: ∂Φ̄/∂W = (1/B) Σ_b s_post,b s_pre,bᵀ in the weight's layout (this returns the batch sum).
use super::{Node, Term};
use crate::tensor_util::matmul;
use tch::Tensor;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    Linear,
    /// The pre layer's per-example shape.
    PreFirst(Vec<i64>),
}

pub struct Dense {
    slots: [Node; 2],
    params: [usize; 1],
    layout: Layout,
}

impl Dense {
    /// `weight`: index of W in the model's parameter list (Linear layout).
    pub fn new(pre: Node, post: Node, weight: usize) -> Self {
        Dense { slots: [pre, post], params: [weight], layout: Layout::Linear }
    }
    /// Pre-shape-first layout (conv heads).
    pub fn pre_first(pre: Node, post: Node, weight: usize, pre_shape: Vec<i64>) -> Self {
        Dense { slots: [pre, post], params: [weight], layout: Layout::PreFirst(pre_shape) }
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    /// W as an (n_post, n_pre) matrix.
    fn w(&self, p: &[Tensor]) -> Tensor {
        let w = &p[self.params[0]];
        match self.layout {
            Layout::Linear => w.shallow_clone(),
            Layout::PreFirst(_) => {
                let n = *w.size().last().expect("dense weight has a post axis");
                w.reshape([-1, n]).tr()
            }
        }
    }
    fn flat(t: &Tensor) -> Tensor {
        t.reshape([t.size()[0], -1])
    }
    /// A flat pre-sized tensor back to the pre layer's shape.
    fn unflat(&self, t: Tensor) -> Tensor {
        match &self.layout {
            Layout::Linear => t,
            Layout::PreFirst(shape) => {
                let mut s = vec![t.size()[0]];
                s.extend(shape);
                t.reshape(&s[..])
            }
        }
    }
    /// An (n_post, n_pre) gradient in the weight's layout.
    fn to_layout(&self, g: Tensor) -> Tensor {
        match &self.layout {
            Layout::Linear => g,
            Layout::PreFirst(shape) => {
                let mut s = shape.clone();
                s.push(g.size()[0]);
                g.tr().reshape(&s[..])
            }
        }
    }
}

const PRE: usize = 0;
const POST: usize = 1;

impl Term for Dense {
    fn describe(&self) -> Option<super::TermSpec> {
        Some(super::TermSpec::Dense(self.layout.clone()))
    }
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
        (matmul(&Self::flat(s[PRE]), &self.w(p).tr()) * s[POST]).sum_dim_intlist(Some(&[1i64][..]), false, None)
    }
    fn drive(&self, p: &[Tensor], s: &[&Tensor], slot: usize) -> Tensor {
        match slot {
            PRE => self.unflat(matmul(s[POST], &self.w(p))),
            _ => matmul(&Self::flat(s[PRE]), &self.w(p).tr()),
        }
    }
    fn hvp(&self, p: &[Tensor], _s: &[&Tensor], mu: &[Option<&Tensor>], slot: usize) -> Option<Tensor> {
        match slot {
            PRE => mu[POST].map(|m| self.unflat(matmul(m, &self.w(p)))),
            _ => mu[PRE].map(|m| matmul(&Self::flat(m), &self.w(p).tr())),
        }
    }
    fn param_grad(&self, _p: &[Tensor], s: &[&Tensor]) -> Vec<Tensor> {
        vec![self.to_layout(matmul(&s[POST].tr(), &Self::flat(s[PRE])))]
    }
    fn param_vjp(&self, _p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>]) -> Vec<Option<Tensor>> {
        let mut g = None;
        if let Some(m) = mu[POST] {
            super::accumulate(&mut g, matmul(&m.tr(), &Self::flat(s[PRE])));
        }
        if let Some(m) = mu[PRE] {
            super::accumulate_product(&mut g, &s[POST].tr(), &Self::flat(m));
        }
        vec![g.map(|g| self.to_layout(g))]
    }
}
