//! Dense coupling from the concatenated row-major flattening of one or more layers into a vector layer
//! (`hopfield-attention.md` §2.3, §3.4): v = cat(vec(s_pre_1), …, vec(s_pre_n)) (B, N), post (B, n_post),
//! W (n_post, N) in `Linear` layout. With one 2-D pre layer it is [`super::dense::Dense`].
//!
//! Φ term: ⟨W v, s_post⟩. Drives: W v into post; into each pre, s_post times that pre layer's column block of W
//! (unvec'd).
//! Local gradient: ∂Φ̄/∂W = (1/B) Σ_b s_post,b ⊗ v_b (this returns the batch sum).
use super::{Node, Term};
use crate::tensor_util::matmul;
use tch::Tensor;

pub struct FlattenDense {
    /// pre_1 … pre_n, then post.
    slots: Vec<Node>,
    params: [usize; 1],
}

impl FlattenDense {
    pub fn new(pre: Vec<Node>, post: Node, weight: usize) -> Self {
        let mut slots = pre;
        slots.push(post);
        FlattenDense { slots, params: [weight] }
    }
    fn n_pre(&self) -> usize {
        self.slots.len() - 1
    }
    fn flat(t: &Tensor) -> Tensor {
        t.reshape([t.size()[0], -1])
    }
    /// cat(vec(t_i)) over the pre slots, with zeros for missing entries (shaped like `like`).
    fn cat(&self, ts: &[Option<&Tensor>], like: &[&Tensor]) -> Tensor {
        let parts: Vec<Tensor> = (0..self.n_pre()).map(|i| Self::flat(&ts[i].map(|t| t.shallow_clone()).unwrap_or_else(|| like[i].zeros_like()))).collect();
        Tensor::cat(&parts, 1)
    }
    /// (Wᵀ u) restricted to pre slot i, reshaped like that slot's state: u (B, n_post) times the slot's column
    /// block W[:, off..off + n] only (a strided view, no copy), not the whole (B, N) product narrowed afterwards —
    /// with n pre slots the latter multiplied n times the FLOPs (the four attention layers of SNLI).
    fn slot_back(&self, u: &Tensor, w: &Tensor, s: &[&Tensor], i: usize) -> Tensor {
        let off: i64 = (0..i).map(|j| s[j].size()[1..].iter().product::<i64>()).sum();
        let n: i64 = s[i].size()[1..].iter().product();
        let block = if self.n_pre() == 1 { w.shallow_clone() } else { w.narrow(1, off, n) };
        matmul(u, &block).reshape(s[i].size())
    }
}

impl Term for FlattenDense {
    fn describe(&self) -> Option<super::TermSpec> {
        Some(super::TermSpec::FlattenDense)
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
        let v = self.cat(&s[..self.n_pre()].iter().map(|t| Some(*t)).collect::<Vec<_>>(), s);
        (matmul(&v, &p[self.params[0]].tr()) * s[self.n_pre()]).sum_dim_intlist(Some(&[1i64][..]), false, None)
    }
    fn drive(&self, p: &[Tensor], s: &[&Tensor], slot: usize) -> Tensor {
        let w = &p[self.params[0]];
        if slot == self.n_pre() {
            let v = self.cat(&s[..self.n_pre()].iter().map(|t| Some(*t)).collect::<Vec<_>>(), s);
            matmul(&v, &w.tr())
        } else {
            self.slot_back(s[self.n_pre()], w, s, slot)
        }
    }
    fn hvp(&self, p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>], slot: usize) -> Option<Tensor> {
        let w = &p[self.params[0]];
        if slot == self.n_pre() {
            if mu[..self.n_pre()].iter().all(|m| m.is_none()) {
                return None;
            }
            Some(matmul(&self.cat(&mu[..self.n_pre()], s), &w.tr()))
        } else {
            mu[self.n_pre()].map(|m| self.slot_back(m, w, s, slot))
        }
    }
    fn param_grad(&self, _p: &[Tensor], s: &[&Tensor]) -> Vec<Tensor> {
        let v = self.cat(&s[..self.n_pre()].iter().map(|t| Some(*t)).collect::<Vec<_>>(), s);
        vec![matmul(&s[self.n_pre()].tr(), &v)]
    }
    fn param_vjp(&self, _p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>]) -> Vec<Option<Tensor>> {
        let mut g = None;
        if let Some(m) = mu[self.n_pre()] {
            let v = self.cat(&s[..self.n_pre()].iter().map(|t| Some(*t)).collect::<Vec<_>>(), s);
            super::accumulate(&mut g, matmul(&m.tr(), &v));
        }
        if mu[..self.n_pre()].iter().any(|m| m.is_some()) {
            super::accumulate_product(&mut g, &s[self.n_pre()].tr(), &self.cat(&mu[..self.n_pre()], s));
        }
        vec![g]
    }
}
