//! The modern-Hopfield attention update map (`hopfield-attention.md` §4) as a generalised activation:
//! row by row, s = A_c(u; X) = softmax(c·u Xᵀ) X = ∇_u ψ(u) with ψ(u) = (1/c)·log Σ_m exp(c⟨x_m, u⟩).
//!
//! * Keys = values = X, rows of a clamped input (the raw embeddings); constants in every mode.
//! * The query is the layer's full drive u (bottom-up projection plus top-down feedback).
//! * Softmax with max-subtraction; logits by a batched product (B, Lq, d)·(B, d, Lk), output (B, Lq, Lk)·(B, Lk, d).
//! * Jacobian (§4.4): J(u) = c·Xᵀ(diag p − ppᵀ)X per query row, symmetric PSD; J v without forming J:
//!   w = X v, r = p ⊙ w − p (pᵀw), J v = c·Xᵀ r.
//! * Padding (§4.3): `off` (reference: zero key rows take attention mass), `keys` (padded keys get logit −∞;
//!   an example without any valid key gets the zero map), `keys_and_queries` (also: rows at padded query
//!   positions are held at 0). A row is padding when it is exactly zero.
use super::update_map::UpdateMap;
use super::Batch;
use crate::tensor_util::sum_per_example;
use crate::{Error, Result};
use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionMask {
    Off,
    Keys,
    KeysAndQueries,
}

impl AttentionMask {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(AttentionMask::Off),
            "keys" => Ok(AttentionMask::Keys),
            "keys_and_queries" => Ok(AttentionMask::KeysAndQueries),
            other => Err(Error::Config(format!("attention_mask must be off, keys or keys_and_queries, got '{other}'"))),
        }
    }
    pub fn key(self) -> &'static str {
        match self {
            AttentionMask::Off => "off",
            AttentionMask::Keys => "keys",
            AttentionMask::KeysAndQueries => "keys_and_queries",
        }
    }
}

/// Rows `start .. start + len` along the sequence axis (axis 1) of clamped input `input`: (B, len, d).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqSlice {
    pub input: usize,
    pub start: i64,
    pub len: i64,
}

impl SeqSlice {
    pub fn new(input: usize, start: i64, len: i64) -> Self {
        SeqSlice { input, start, len }
    }
    /// The rows, (B, len, d).
    pub fn of(&self, batch: &Batch) -> Tensor {
        batch.x[self.input].narrow(1, self.start, self.len)
    }
    /// Per example and row, whether the row is a real token (not exactly zero), (B, len) bool.
    pub fn valid_rows(&self, batch: &Batch) -> Tensor {
        self.of(batch).ne(0.0).any_dim(-1, false)
    }
}

#[derive(Clone, Debug)]
pub struct Attention {
    /// Keys = values.
    pub keys: SeqSlice,
    /// The input rows whose positions the query rows share (the query mask of `keys_and_queries`).
    pub queries: SeqSlice,
    /// Inverse temperature c (`attention_scale`).
    pub scale: f64,
    pub mask: AttentionMask,
}

impl Attention {
    pub fn new(keys: SeqSlice, queries: SeqSlice, scale: f64, mask: AttentionMask) -> Self {
        Attention { keys, queries, scale, mask }
    }

    /// Attention weights p (B, Lq, Lk) at drive u, and the keys X (B, Lk, d).
    pub fn weights(&self, batch: &Batch, u: &Tensor) -> (Tensor, Tensor) {
        let x = self.keys.of(batch);
        if crate::tensor_util::is_complex(u.kind()) {
            return (self.complex_weights(batch, u, &x), x);
        }
        let z = u.matmul(&x.transpose(1, 2)) * self.scale;
        let p = match self.mask {
            AttentionMask::Off => z.softmax(-1, None::<Kind>),
            _ => {
                // Padded keys get logit −∞; rows without any valid key get p = 0 (the zero map). The shift m is
                // a constant (max-subtraction), so no gradient flows through it.
                let valid = self.keys.valid_rows(batch).unsqueeze(1);
                let zm = z.masked_fill(&valid.logical_not(), f64::NEG_INFINITY);
                let m = zm.amax([-1i64], true).detach();
                let m = m.masked_fill(&m.isinf(), 0.0);
                let e = (zm - m).exp();
                let den = e.sum_dim_intlist(Some(&[-1i64][..]), true, None::<Kind>);
                let den = den.where_self(&den.gt(0.0), &den.ones_like());
                e / den
            }
        };
        (p, x)
    }

    /// The weights at a complex drive (holomorphic EP, estimators §3.7): logits c·u Xᵀ (X real), minus the real
    /// constant m = max over keys of Re z, exponentiated and normalised — the holomorphic extension of the
    /// softmax. Padded keys get weight 0 (a mask on the exponentials); rows without a valid key get p = 0.
    fn complex_weights(&self, batch: &Batch, u: &Tensor, x: &Tensor) -> Tensor {
        let z = crate::tensor_util::matmul(u, &x.transpose(1, 2)) * self.scale;
        let invalid = match self.mask {
            AttentionMask::Off => None,
            _ => Some(self.keys.valid_rows(batch).unsqueeze(1).logical_not()),
        };
        let re = z.real();
        let re = match &invalid {
            Some(inv) => re.masked_fill(inv, f64::NEG_INFINITY),
            None => re.shallow_clone(),
        };
        let m = re.amax([-1i64], true);
        let m = m.masked_fill(&m.isinf(), 0.0);
        let e = (z - m).exp();
        let e = match &invalid {
            Some(inv) => e.masked_fill(inv, 0.0),
            None => e,
        };
        let den = e.sum_dim_intlist(Some(&[-1i64][..]), true, None::<Kind>);
        let den = den.where_self(&den.abs().gt(0.0), &den.ones_like());
        e / den
    }

    /// (B, Lq, 1) factor 1/0 of the query rows that are updated (all rows unless `keys_and_queries`).
    fn query_factor(&self, batch: &Batch, like: &Tensor) -> Option<Tensor> {
        (self.mask == AttentionMask::KeysAndQueries).then(|| self.queries.valid_rows(batch).unsqueeze(-1).to_kind(like.kind()))
    }

    /// Whether each example has at least one valid key, (B,) bool (always true without a key mask).
    pub fn has_keys(&self, batch: &Batch) -> Tensor {
        let v = self.keys.valid_rows(batch).any_dim(-1, false);
        match self.mask {
            AttentionMask::Off => v.ones_like(),
            _ => v,
        }
    }

    /// Per row: ⟨s, u⟩ − ψ_row(u), the concave dual objective of ψ*(s), (B, Lq); rows without valid keys get 0.
    fn dual_objective(&self, batch: &Batch, u: &Tensor, s: &Tensor) -> Tensor {
        let x = self.keys.of(batch);
        let z = u.matmul(&x.transpose(1, 2)) * self.scale;
        let z = match self.mask {
            AttentionMask::Off => z,
            _ => z.masked_fill(&self.keys.valid_rows(batch).unsqueeze(1).logical_not(), f64::NEG_INFINITY),
        };
        let lse = z.logsumexp([-1i64], false);
        let lse = lse.masked_fill(&lse.isinf(), 0.0);
        (s * u).sum_dim_intlist(Some(&[-1i64][..]), false, None::<Kind>) - lse / self.scale
    }

    /// Solves (J(u) + δI) d = g row by row by conjugate gradients (matrix-free, J v by §4.4).
    fn cg(&self, batch: &Batch, u: &Tensor, g: &Tensor, delta: f64, iters: usize) -> Tensor {
        let dot = |a: &Tensor, b: &Tensor| (a * b).sum_dim_intlist(Some(&[-1i64][..]), true, None::<Kind>);
        let mut x = g.zeros_like();
        let mut r = g.copy();
        let mut p = g.copy();
        let mut rr = dot(&r, &r);
        for _ in 0..iters {
            let ap = self.jacobian_apply(batch, u, &p) + &p * delta;
            let pap = dot(&p, &ap);
            let alpha = (&rr / &pap).where_self(&pap.gt(0.0), &pap.zeros_like());
            x = x + &alpha * &p;
            r = r - &alpha * &ap;
            let rr_new = dot(&r, &r);
            if rr_new.max().double_value(&[]) <= 1e-300 {
                break;
            }
            let beta = (&rr_new / &rr).where_self(&rr.gt(0.0), &rr.zeros_like());
            p = &r + beta * &p;
            rr = rr_new;
        }
        x
    }
}

impl UpdateMap for Attention {
    fn key(&self) -> &'static str {
        "attention"
    }

    fn describe(&self) -> Option<super::update_map::MapSpec> {
        Some(super::update_map::MapSpec::Attention(self.clone()))
    }

    fn apply(&self, batch: &Batch, u: &Tensor) -> Tensor {
        let (p, x) = self.weights(batch, u);
        let out = crate::tensor_util::matmul(&p, &x);
        match self.query_factor(batch, &out) {
            Some(q) => out * q,
            None => out,
        }
    }

    /// The map is a softmax of a linear function of u: holomorphic (estimators §3.6).
    fn is_holomorphic(&self) -> bool {
        true
    }

    fn jacobian_apply(&self, batch: &Batch, u: &Tensor, v: &Tensor) -> Tensor {
        let (p, x) = self.weights(batch, u);
        let w = v.matmul(&x.transpose(1, 2));
        let pw = &p * &w;
        let r = &pw - &p * pw.sum_dim_intlist(Some(&[-1i64][..]), true, None::<Kind>);
        let jv = r.matmul(&x) * self.scale;
        match self.query_factor(batch, &jv) {
            Some(q) => jv * q,
            None => jv,
        }
    }

    fn potential(&self, batch: &Batch, u: &Tensor) -> Tensor {
        let zero = u.zeros_like();
        let per_row = -self.dual_objective(batch, u, &zero);
        let per_row = match self.query_factor(batch, u) {
            Some(q) => per_row * q.squeeze_dim(-1),
            None => per_row,
        };
        sum_per_example(&per_row)
    }

    /// ψ*(s) = sup_u ⟨s, u⟩ − ψ(u) per row (a scaled negative entropy over the attention weights, §4.5), by
    /// damped Newton on u with conjugate-gradient solves and per-row backtracking. Rows where the gradient
    /// s − A(u) does not vanish (s outside the convex hull of the keys, or on its boundary) are +∞. Rows held at
    /// zero (no valid key, or a padded query under `keys_and_queries`) contribute 0 if s = 0 there, else +∞.
    fn conjugate_potential(&self, batch: &Batch, s: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let x = self.keys.of(batch);
            let xmax = x.abs().max().double_value(&[]).max(1e-300);
            let d = s.size()[2] as usize;
            let tol = 1e-11 * xmax;
            let delta = 1e-12 * self.scale * xmax * xmax;
            // Rows whose map is the zero map.
            let mut zero_rows = self.has_keys(batch).logical_not().unsqueeze(-1).expand([s.size()[0], s.size()[1]], false);
            if let Some(q) = self.query_factor(batch, s) {
                zero_rows = zero_rows.logical_or(&q.squeeze_dim(-1).eq(0.0));
            }
            let active = zero_rows.logical_not();
            let mut u = s.zeros_like();
            // The map without the query factor (those rows are handled as zero rows).
            let raw = Attention { mask: if self.mask == AttentionMask::Off { AttentionMask::Off } else { AttentionMask::Keys }, ..self.clone() };
            let gnorm = |u: &Tensor| (s - raw.apply(batch, u)).abs().amax([-1i64], false).masked_fill(&zero_rows, 0.0);
            let (mut best, mut stall) = (f64::INFINITY, 0);
            for _ in 0..100 {
                let g = (s - raw.apply(batch, &u)).masked_fill(&zero_rows.unsqueeze(-1), 0.0);
                let gmax = g.abs().max().double_value(&[]);
                // Converged, or no progress for 5 iterations (s outside the hull, or on its boundary).
                if gmax <= tol || stall >= 5 {
                    break;
                }
                if gmax < 0.5 * best {
                    best = gmax;
                    stall = 0;
                } else {
                    stall += 1;
                }
                let step = raw.cg(batch, &u, &g, delta, d + 2);
                let f0 = self.dual_objective(batch, &u, s);
                // Armijo-free backtracking: the step must not decrease the concave objective beyond round-off.
                let slack = f0.abs() * 1e-13 + 1e-300;
                let mut t = f0.ones_like();
                for _ in 0..30 {
                    let fnew = self.dual_objective(batch, &(&u + t.unsqueeze(-1) * &step), s);
                    let worse = fnew.lt_tensor(&(&f0 - &slack)).logical_and(&active);
                    if worse.any().int64_value(&[]) == 0 {
                        break;
                    }
                    t = (&t * 0.5).where_self(&worse, &t);
                }
                u = &u + t.unsqueeze(-1) * &step;
            }
            let value = self.dual_objective(batch, &u, s);
            let unresolved = gnorm(&u).gt(1e-8 * xmax);
            let zero_bad = zero_rows.logical_and(&s.ne(0.0).any_dim(-1, false));
            let value = value.masked_fill(&zero_rows, 0.0).masked_fill(&unresolved.logical_or(&zero_bad), f64::INFINITY);
            sum_per_example(&value)
        })
    }
}
