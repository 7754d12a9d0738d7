//! `test_bad_dense`: a **deliberately wrong** dense coupling for testing the fuzzer (issue 18). It is a
//! `dense` coupling (linear layout, W of shape (n_post, n_pre)) whose drive into the pre layer reads the weight
//! in the transposed layout — `s_post · reshape(W, [n_pre, n_post])ᵀ` instead of `s_post · W` — the classic
//! "reshape where a transpose was meant" bug (for a square W it is exactly a missing transpose). Φ, the drive into
//! the post layer, the Hessian products and the local gradients are those of `dense`, so only the drive map is
//! inconsistent with Φ (the energy audit and EP vs BPTT see it; the local-gradient property does not). When
//! n_pre = 1 or n_post = 1 the reshape equals the transpose and the bug is invisible.
//!
//! Graph files may name this kind only when the environment variable `EPCHECK_TEST_PLANT=1` is set (the tests of
//! the fuzzer set it); otherwise it is an unknown kind. It never appears in a preset or a built-in family.
use super::dense::Dense;
use super::{Node, Term};
use crate::tensor_util::matmul;
use tch::Tensor;

/// The graph-file kind name.
pub const KIND: &str = "test_bad_dense";
/// The environment variable that enables [`KIND`] in graph files.
pub const ENV: &str = "EPCHECK_TEST_PLANT";

/// Whether graph files may name the planted kind.
pub fn enabled() -> bool {
    std::env::var(ENV).is_ok_and(|v| v == "1")
}

pub struct PlantedDense {
    inner: Dense,
    weight: usize,
}

impl PlantedDense {
    pub fn new(pre: Node, post: Node, weight: usize) -> Self {
        PlantedDense { inner: Dense::new(pre, post, weight), weight }
    }
}

impl Term for PlantedDense {
    fn kind(&self) -> &'static str {
        KIND
    }
    fn slots(&self) -> &[Node] {
        self.inner.slots()
    }
    fn params(&self) -> &[usize] {
        self.inner.params()
    }
    fn primitive(&self, p: &[Tensor], s: &[&Tensor]) -> Tensor {
        self.inner.primitive(p, s)
    }
    fn drive(&self, p: &[Tensor], s: &[&Tensor], slot: usize) -> Tensor {
        if slot == 0 {
            // The planted bug: the weight read in the transposed layout.
            let w = &p[self.weight];
            let (n_post, n_pre) = (w.size()[0], w.size()[1]);
            matmul(s[1], &w.reshape([n_pre, n_post]).tr())
        } else {
            self.inner.drive(p, s, slot)
        }
    }
    fn hvp(&self, p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>], slot: usize) -> Option<Tensor> {
        self.inner.hvp(p, s, mu, slot)
    }
    fn param_grad(&self, p: &[Tensor], s: &[&Tensor]) -> Vec<Tensor> {
        self.inner.param_grad(p, s)
    }
    fn param_vjp(&self, p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>]) -> Vec<Option<Tensor>> {
        self.inner.param_vjp(p, s, mu)
    }
}
