//! Energy terms of the primitive function Φ. Each term kind lives in its own file and owns, together:
//! its Φ term, its analytic drives into every state slot it touches, its Hessian-vector product (the
//! coupling part of the step VJP), and its local (Hebbian) parameter gradient and its VJP.
//!
//! Every term is **multilinear** in its state slots (bilinear couplings, linear biases and input terms), which
//! is what makes Φ's Hessian in s constant and the local forms exact — except the pooled convolution, which is
//! piecewise multilinear (its Hessian products hold the window argmax fixed, `conv_pool.rs`).
pub mod bias;
pub mod conv;
pub mod conv_pool;
pub mod dense;
pub mod flatten_dense;
pub mod planted;
pub mod projection;
pub mod scripted;

use tch::Tensor;

/// A state slot of a term: a clamped input (never updated) or a free layer (0-based; named `L<k+1>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Input(usize),
    Layer(usize),
}

impl Node {
    pub fn layer(self) -> Option<usize> {
        match self {
            Node::Layer(k) => Some(k),
            Node::Input(_) => None,
        }
    }
}

pub trait Term: Send + Sync {
    /// The coupling kind, e.g. `dense`, `bias`.
    fn kind(&self) -> &'static str;
    /// The state slots, in the order `s` is passed to every method.
    fn slots(&self) -> &[Node];
    /// Indices of the parameters this term owns (into the model's parameter list).
    fn params(&self) -> &[usize];
    /// This term of Φ per example, shape (B,).
    fn primitive(&self, p: &[Tensor], s: &[&Tensor]) -> Tensor;
    /// ∂Φ_term/∂s_slot, shape of that slot's state.
    fn drive(&self, p: &[Tensor], s: &[&Tensor], slot: usize) -> Tensor;
    /// Σ_j ∂²Φ_term/∂s_slot∂s_j · μ_j over the slots with a cotangent; None when it is zero.
    fn hvp(&self, p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>], slot: usize) -> Option<Tensor>;
    /// Σ_b ∂Φ_term,b/∂θ (batch **sum**), one tensor per entry of `params()`.
    fn param_grad(&self, p: &[Tensor], s: &[&Tensor]) -> Vec<Tensor>;
    /// Σ_b Σ_j ∂²Φ_term,b/∂θ∂s_j · μ_j: the parameter part of a step VJP (batch sum; None = zero).
    fn param_vjp(&self, p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>]) -> Vec<Option<Tensor>>;
    /// A free-layer slot in which the per-example parameter gradient is **linear**: scaling that slot's row b
    /// by w_b scales row b's contribution to `param_grad` by w_b. Every term here is multilinear in its slots
    /// and the pooled convolution is linear in its post slot (its window argmax depends on the pre slot only),
    /// so the default — the last slot, which is the post / state slot of every term kind — holds for all of
    /// them. Used by [`crate::model::Model::param_derivative_weighted`].
    fn linear_slot(&self) -> usize {
        self.slots().len() - 1
    }
    /// Whether the term accepts complex states with real parameters (holomorphic EP).
    fn supports_complex(&self) -> bool {
        true
    }
    /// Max-pool couplings: (number of tied windows in the whole batch, the window argmax) at state `s`
    /// (conv-hopfield.md §11); None for every other term.
    fn pool_ties(&self, _p: &[Tensor], _s: &[&Tensor]) -> Option<(i64, Tensor)> {
        None
    }
    /// The kind and geometry of the term, for writing a model out as an architecture graph (`crate::graph`);
    /// None for terms that have no graph form (e.g. test-defined terms).
    fn describe(&self) -> Option<TermSpec> {
        None
    }
    /// Whether the term is NOT multilinear in its slots (a scripted Φ): its drive into a slot may read that
    /// slot, so it is never cached as constant, and [`Term::linear_slot`] does not hold.
    fn nonlinear(&self) -> bool {
        false
    }
    /// Σ_r w_r ∂Φ_term,r/∂θ for per-row weights `w` (R,), for terms without a linear slot; None = use the
    /// linear slot ([`crate::model::Model::param_derivative_weighted`]).
    fn param_grad_weighted(&self, _p: &[Tensor], _s: &[&Tensor], _w: &Tensor) -> Option<Vec<Tensor>> {
        None
    }
    /// Checks the term on a batch at state `s` (zeros) before a run: one line naming what is wrong.
    fn validate(&self, _p: &[Tensor], _s: &[&Tensor]) -> crate::Result<()> {
        Ok(())
    }
}

/// A term's kind and geometry (its slots and parameters come from [`Term::slots`] and [`Term::params`]).
#[derive(Clone, Debug, PartialEq)]
pub enum TermSpec {
    Dense(dense::Layout),
    Bias,
    Conv { kernel: i64, stride: i64, pad: i64 },
    ConvPool,
    Projection(crate::model::attention::SeqSlice),
    FlattenDense,
}

/// Adds `b` into an optional accumulator.
pub fn accumulate(acc: &mut Option<Tensor>, b: Tensor) {
    *acc = Some(match acc.take() {
        Some(a) => a + b,
        None => b,
    });
}

/// acc += a·b for a 2-D product, where `acc` is a fresh product this term made (never a caller's tensor), with
/// no third parameter-sized tensor for the sum (a 30 M-weight attention projection's step VJP allocated three):
/// * float32 (the speed path): into acc's buffer by `addmm_` — no second product tensor either; the sum order
///   inside the GEMM differs from a separate product and add by float32 round-off, far below the float32 floor;
/// * float64 (verification): the product, then an in-place add — the same bits as `acc + a·b`;
/// * anything else (complex or mixed operands, autograd): [`accumulate`] of [`matmul`](crate::tensor_util::matmul).
pub fn accumulate_product(acc: &mut Option<Tensor>, a: &Tensor, b: &Tensor) {
    let plain = |t: &Tensor, k: tch::Kind| t.kind() == k && !t.requires_grad();
    match acc {
        Some(g) if [&*g, a, b].iter().all(|t| plain(t, tch::Kind::Float)) && a.dim() == 2 && b.dim() == 2 => {
            let _ = g.addmm_(a, b);
        }
        Some(g) if [&*g, a, b].iter().all(|t| plain(t, tch::Kind::Double)) => {
            let _ = g.g_add_(&crate::tensor_util::matmul(a, b));
        }
        _ => accumulate(acc, crate::tensor_util::matmul(a, b)),
    }
}
