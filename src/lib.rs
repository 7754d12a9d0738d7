//! # epcheck — is this Equilibrium Propagation gradient right?
//!
//! epcheck implements, for one energy function, the EP estimators and the exact references (BPTT through the
//! same dynamics), and checks convergence and the GDU property. The specification lives in `shared/spec/`.
//!
//! ## Sign convention (the one place it is documented; `tests/engine.rs::sign_*` pins it)
//!
//! * A model is a **primitive function** Φ(θ, x, s), one scalar per example, that the dynamics **maximise**.
//!   The energy is E = −Φ exactly. Code says `primitive` for Φ and `energy` for E.
//! * The nudged primitive is Φ_β = Φ − β·ℓ(s_out, y). β > 0 pulls the output toward the target.
//! * The drive of a layer is u_k = ∂Φ_β/∂s_k; the update is s_k ← σ_k(u_k).
//! * f(β) = ∂Φ̄/∂θ at the end of a nudged phase of strength β (batch mean Φ̄ = (1/B) Σ_b Φ_b).
//! * **Every estimator and every reference returns ĝ ≈ +∂L/∂θ**, the gradient of the batch-mean loss, to be
//!   *subtracted* by an optimiser: `ep_plus` = −[f(β) − f(0)]/β, `ep_minus` = +[f(−β) − f(0)]/β,
//!   `ep_centered` = −[f(β) − f(−β)]/(2β). On the scalar oracle Φ = θ·x·s (identity, MSE) these equal
//!   dL/dθ/(1+β), dL/dθ/(1−β) and dL/dθ/(1−β²).
//! * GDU series estimate a +gradient for parameters and a −gradient (−∂ℓ_b/∂s) for neurons.
//!
//! ## Layout
//! * [`model`]: state layers, update maps ([`model::activation`]), energy terms (one file per coupling kind in
//!   [`model::terms`]), losses and the nudge, presets.
//! * [`relax`]: the one relaxation loop (schedules, trajectories, convergence traces).
//! * [`adjoint`]: the step VJP (hand-rolled and autograd) behind BPTT and the one-sweep GDU series.
//! * [`estimators`]: one file per estimator.
//! * [`checks`]: `converge`, `gdu`, and the metrics they share.
//! * [`report`]: run folders, Polars tables, plotters figures.
//! * [`simd`]: vectorized, threaded CPU loops over tensor memory (the GDU check's fused kernels).
//! * [`io`], [`config`], [`cli`]: safetensors interchange, TOML configuration, the thin command line.

pub mod adjoint;
pub mod checks;
pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod estimators;
pub mod fuzz;
pub mod graph;
pub mod instance;
pub mod io;
pub mod merge;
pub mod model;
pub mod precision;
pub mod progress;
pub mod relax;
pub mod run;
pub mod simd;
pub mod train;
pub mod report;
pub mod tensor_util;
pub mod verify;

pub use error::{Error, Result};
