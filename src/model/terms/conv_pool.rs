//! Convolution followed by 2×2 / stride-2 max-pool (VGG5 / DCHN, conv-hopfield.md §1, §3): pre (B, C_i, H_i, H_i),
//! post (B, C_j, H_i/2, H_i/2), weight W (C_j, C_i, 3, 3), conv stride 1, pad 1.
//!
//! Φ term: ⟨P(conv(s_pre, W)), s_post⟩, with P the max over each window scanned (0,0), (0,1), (1,0), (1,1) and
//! ties broken by the **first** position attaining the maximum. idx(z) is that argmax, recomputed from the state at
//! which the term is evaluated. Drives: P(conv(s_pre, W)) into post; convT(unpool(s_post, idx), W) into pre.
//! Φ is linear in s_post and piecewise linear in s_pre (the argmax is piecewise constant), so the Hessian-vector
//! products hold the argmax fixed: ∂²Φ/∂s_post∂s_pre·μ = gather(conv(μ), idx), and ∂²Φ/∂s_pre² = 0 a.e.
//! Local gradient: ∂Φ̄/∂W = (1/B) Σ_b weight gradient of conv(s_pre, ·) contracted with unpool(s_post, idx).
use super::conv::ConvGeom;
use super::{Node, Term};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

pub struct ConvPool {
    slots: [Node; 2],
    params: [usize; 1],
    geom: ConvGeom,
}

impl ConvPool {
    pub fn new(pre: Node, post: Node, weight: usize, pre_hw: [i64; 2]) -> Self {
        ConvPool { slots: [pre, post], params: [weight], geom: ConvGeom::new(3, 1, 1, pre_hw) }
    }
    fn w<'a>(&self, p: &'a [Tensor]) -> &'a Tensor {
        &p[self.params[0]]
    }
    /// (P(z), idx(z)) for z = conv(s_pre, W).
    fn pooled(&self, p: &[Tensor], pre: &Tensor) -> (Tensor, Tensor) {
        pool_first_max(&self.geom.forward(pre, self.w(p)))
    }
}

/// Whether libtorch's max-pool on `device` breaks ties at the first position of the row-major window scan
/// (conv-hopfield.md §1: verified once per device on a tensor with planted ties).
pub fn backend_first_index_ties(device: Device) -> bool {
    static CPU: OnceLock<bool> = OnceLock::new();
    static CUDA: OnceLock<bool> = OnceLock::new();
    let cell = if device == Device::Cpu { &CPU } else { &CUDA };
    *cell.get_or_init(|| {
        // Windows with every tie pattern: all equal, pairs (0,1), (0,2), (0,3), (1,2), (1,3), (2,3), triples.
        let patterns: [[f64; 4]; 10] = [
            [1.0, 1.0, 1.0, 1.0],
            [2.0, 2.0, 0.0, 0.0],
            [2.0, 0.0, 2.0, 0.0],
            [2.0, 0.0, 0.0, 2.0],
            [0.0, 2.0, 2.0, 0.0],
            [0.0, 2.0, 0.0, 2.0],
            [0.0, 0.0, 2.0, 2.0],
            [0.0, 3.0, 3.0, 3.0],
            [0.0, 0.0, 0.0, 0.0],
            [-1.0, -1.0, -5.0, -1.0],
        ];
        let n = patterns.len() as i64;
        // One row of windows: z has shape (1, 1, 2, 2n).
        let mut z = vec![0f64; (4 * n) as usize];
        for (i, w) in patterns.iter().enumerate() {
            let c = 2 * i;
            z[c] = w[0];
            z[c + 1] = w[1];
            z[2 * n as usize + c] = w[2];
            z[2 * n as usize + c + 1] = w[3];
        }
        let z = Tensor::from_slice(&z).reshape([1, 1, 2, 2 * n]).to_device(device);
        let (_, idx) = z.max_pool2d_with_indices([2, 2], [2, 2], [0, 0], [1, 1], false);
        let explicit = explicit_first_max(&z);
        idx.eq_tensor(&explicit).all().int64_value(&[]) != 0
    })
}

/// The first-position argmax of every 2×2 window as a flat index into the (Hc·Wc) plane, computed explicitly.
fn explicit_first_max(z: &Tensor) -> Tensor {
    let sz = z.size();
    let (b, o, hc, wc) = (sz[0], sz[1], sz[2], sz[3]);
    let (hp, wp) = (hc / 2, wc / 2);
    let win = z.reshape([b, o, hp, 2, wp, 2]).permute([0, 1, 2, 4, 3, 5]).reshape([b, o, hp, wp, 4]);
    // argmax returns the first maximal position.
    let q = win.argmax(-1, false);
    let dy = q.divide_scalar_mode(2, "floor");
    let dx = q.remainder(2);
    let rows = Tensor::arange(hp, (Kind::Int64, z.device())).reshape([1, 1, hp, 1]) * 2;
    let cols = Tensor::arange(wp, (Kind::Int64, z.device())).reshape([1, 1, 1, wp]) * 2;
    (rows + dy) * wc + cols + dx
}

/// (P(z), idx(z)): the 2×2 / stride-2 max and its first-position argmax (flat index into the Hc·Wc plane).
pub fn pool_first_max(z: &Tensor) -> (Tensor, Tensor) {
    let idx = if backend_first_index_ties(z.device()) && !crate::tensor_util::is_complex(z.kind()) {
        z.max_pool2d_with_indices([2, 2], [2, 2], [0, 0], [1, 1], false).1
    } else {
        explicit_first_max(z)
    };
    (gather(z, &idx), idx)
}

/// z[b, o, idx[b, o, i, j]] over the flattened plane: shape of idx.
pub fn gather(z: &Tensor, idx: &Tensor) -> Tensor {
    let si = idx.size();
    z.flatten(2, 3).gather(2, &idx.flatten(2, 3), false).reshape(&si[..])
}

/// unpool(v, idx): v scattered to its argmax positions of a (Hc, Wc) plane, zero elsewhere.
pub fn unpool(v: &Tensor, idx: &Tensor, hc: i64, wc: i64) -> Tensor {
    let sv = v.size();
    let out = Tensor::zeros([sv[0], sv[1], hc * wc], (v.kind(), v.device()));
    out.scatter(2, &idx.flatten(2, 3), &v.flatten(2, 3)).reshape([sv[0], sv[1], hc, wc])
}

const PRE: usize = 0;
const POST: usize = 1;

impl ConvPool {
    /// unpool(v, idx) on the conv-output plane of this edge (same size as the pre layer).
    fn unpool_pre(&self, v: &Tensor, idx: &Tensor, pre: &Tensor) -> Tensor {
        let sp = pre.size();
        unpool(v, idx, sp[2], sp[3])
    }
    /// The number of windows whose maximum is attained more than once, per example (tie report, §11).
    pub fn tied_windows(&self, p: &[Tensor], pre: &Tensor) -> Tensor {
        let z = self.geom.forward(pre, self.w(p));
        let sz = z.size();
        let win = z.reshape([sz[0], sz[1], sz[2] / 2, 2, sz[3] / 2, 2]).permute([0, 1, 2, 4, 3, 5]).reshape([sz[0], sz[1], sz[2] / 2, sz[3] / 2, 4]);
        let m = win.amax([-1i64], true);
        let count = win.eq_tensor(&m).sum_dim_intlist(Some(&[-1i64][..]), false, Kind::Int64);
        count.gt(1).reshape([sz[0], -1]).sum_dim_intlist(Some(&[1i64][..]), false, Kind::Int64)
    }
    /// The argmax of every window at state `pre` (for counting argmax changes between phases).
    pub fn argmax(&self, p: &[Tensor], pre: &Tensor) -> Tensor {
        self.pooled(p, pre).1
    }
}

impl Term for ConvPool {
    fn describe(&self) -> Option<super::TermSpec> {
        Some(super::TermSpec::ConvPool)
    }
    fn kind(&self) -> &'static str {
        "conv_pool"
    }
    fn slots(&self) -> &[Node] {
        &self.slots
    }
    fn params(&self) -> &[usize] {
        &self.params
    }
    fn primitive(&self, p: &[Tensor], s: &[&Tensor]) -> Tensor {
        crate::tensor_util::sum_per_example(&(self.pooled(p, s[PRE]).0 * s[POST]))
    }
    fn drive(&self, p: &[Tensor], s: &[&Tensor], slot: usize) -> Tensor {
        let (v, idx) = self.pooled(p, s[PRE]);
        match slot {
            PRE => self.geom.adjoint(&self.unpool_pre(s[POST], &idx, s[PRE]), self.w(p)),
            _ => v,
        }
    }
    fn hvp(&self, p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>], slot: usize) -> Option<Tensor> {
        let m = match slot {
            PRE => mu[POST],
            _ => mu[PRE],
        }?;
        let (_, idx) = self.pooled(p, s[PRE]);
        Some(match slot {
            PRE => self.geom.adjoint(&self.unpool_pre(m, &idx, s[PRE]), self.w(p)),
            _ => gather(&self.geom.forward(m, self.w(p)), &idx),
        })
    }
    fn param_grad(&self, p: &[Tensor], s: &[&Tensor]) -> Vec<Tensor> {
        let (_, idx) = self.pooled(p, s[PRE]);
        vec![self.geom.weight_grad(s[PRE], &self.unpool_pre(s[POST], &idx, s[PRE]))]
    }
    fn param_vjp(&self, p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>]) -> Vec<Option<Tensor>> {
        if mu.iter().all(|m| m.is_none()) {
            return vec![None];
        }
        let (_, idx) = self.pooled(p, s[PRE]);
        let mut g = None;
        if let Some(m) = mu[POST] {
            super::accumulate(&mut g, self.geom.weight_grad(s[PRE], &self.unpool_pre(m, &idx, s[PRE])));
        }
        if let Some(m) = mu[PRE] {
            super::accumulate(&mut g, self.geom.weight_grad(m, &self.unpool_pre(s[POST], &idx, s[PRE])));
        }
        vec![g]
    }
    fn supports_complex(&self) -> bool {
        false
    }
    fn pool_ties(&self, p: &[Tensor], s: &[&Tensor]) -> Option<(i64, Tensor)> {
        Some((self.tied_windows(p, s[PRE]).sum(Kind::Int64).int64_value(&[]), self.argmax(p, s[PRE])))
    }
}
