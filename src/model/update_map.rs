//! Vector-valued update maps G_k (conventions §5.1, §7.1): a layer whose update is not an elementwise σ but a
//! map that may read the clamped inputs of the batch (the modern-Hopfield attention of
//! `hopfield-attention.md` §4, whose keys and values are the raw input embeddings).
//!
//! A layer without an update map uses its [`crate::model::activation::Activation`]. A layer with one is
//! updated, differentiated and given its conjugate potential through this trait only, so the relaxation loop,
//! the step VJP (BPTT), the GDU neuron series (J·BPTT_s), implicit differentiation and `converge` work on it
//! unchanged. Attach one with [`crate::model::Model::with_update_map`].
//!
//! EP stays exact when G_k = ∇ψ_k for a convex ψ_k that does not depend on θ (conventions §7.1): its Jacobian
//! is then the symmetric Hessian of ψ_k, and the engine uses [`UpdateMap::jacobian_apply`] for the VJP as well.
//! A map whose Jacobian is not symmetric must override [`UpdateMap::vjp`] (and is then no longer EP-exact,
//! conventions §7.4).
use super::Batch;
use tch::Tensor;

pub trait UpdateMap: Send + Sync + std::fmt::Debug {
    /// A short name for reports and errors, e.g. `attention`.
    fn key(&self) -> &'static str;
    /// s = G(u; batch), shape of u (B, …).
    fn apply(&self, batch: &Batch, u: &Tensor) -> Tensor;
    /// J(u)·v with J = ∂G/∂u at u (batch-block-diagonal), without forming J.
    fn jacobian_apply(&self, batch: &Batch, u: &Tensor, v: &Tensor) -> Tensor;
    /// vᵀJ(u). Default: J v (J symmetric, the gradient-of-a-convex-potential case).
    fn vjp(&self, batch: &Batch, u: &Tensor, v: &Tensor) -> Tensor {
        self.jacobian_apply(batch, u, v)
    }
    /// ψ(u) summed over the non-batch axes, shape (B,), with G = ∇ψ.
    fn potential(&self, batch: &Batch, u: &Tensor) -> Tensor;
    /// ψ*(s) summed over the non-batch axes, shape (B,): the conjugate used by the total energy 𝓕
    /// (conventions §7.2); +∞ where s is outside the domain of ψ*.
    fn conjugate_potential(&self, batch: &Batch, s: &Tensor) -> Tensor;
    /// Whether [`UpdateMap::conjugate_potential`] is computed (false: NaN, so the total energy 𝓕 is undefined
    /// and `converge` does not assert its monotonicity; a scripted map, `scripted_update.rs`).
    fn has_conjugate_potential(&self) -> bool {
        true
    }
    /// Whether the map accepts complex drives (holomorphic EP, estimators §3.6).
    fn is_holomorphic(&self) -> bool {
        false
    }
    /// The map's kind and options, for writing a model out as an architecture graph (`crate::graph`); None
    /// for maps that have no graph form.
    fn describe(&self) -> Option<MapSpec> {
        None
    }
}

/// An update map's kind and options.
#[derive(Clone, Debug)]
pub enum MapSpec {
    Attention(super::attention::Attention),
}
