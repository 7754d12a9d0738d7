//! Convolutional coupling between a pre state (B, C_i, H_i, H_i) and a post state (B, C_j, H_j, H_j), weight W of
//! shape (C_j, C_i, k, k), stride st, zero padding p, no bias inside the operator (conv-hopfield.md §1, §2.2).
//! Used for the 3×3 main edges and the 1×1 stride-2 skips of Hopfield-ResNet13.
//!
//! Φ term: ⟨conv(s_pre, W; st, p), s_post⟩. Drives: conv(s_pre, W) into post; the exact adjoint
//! convT(s_post, W; st, p, op) into pre, with the output padding op = H_pre − ((H_post − 1)·st − 2p + k) per axis,
//! so that the positions no forward output reads receive zero.
//! Local gradient: ∂Φ̄/∂W[o, c, ky, kx] = (1/B) Σ_{b,y,x} s_post[b,o,y,x] · s_pre,pad[b,c,y·st+ky,x·st+kx], the
//! weight gradient of conv(s_pre, ·) contracted with s_post (this returns the batch sum).
use super::{Node, Term};
use tch::Tensor;

/// Geometry of one convolution edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub kernel: i64,
    pub stride: i64,
    pub pad: i64,
    /// Output padding of the adjoint, per axis (rows, columns).
    pub out_pad: [i64; 2],
}

impl ConvGeom {
    /// The output size of the forward conv on a (h, w) input.
    pub fn out_size(k: i64, st: i64, p: i64, h: i64) -> i64 {
        (h + 2 * p - k).div_euclid(st) + 1
    }
    /// The geometry for a pre layer of spatial size (h, w): op = H_pre − ((H_post − 1)·st − 2p + k) per axis.
    pub fn new(kernel: i64, stride: i64, pad: i64, pre_hw: [i64; 2]) -> ConvGeom {
        let op = |h: i64| h - ((Self::out_size(kernel, stride, pad, h) - 1) * stride - 2 * pad + kernel);
        ConvGeom { kernel, stride, pad, out_pad: [op(pre_hw[0]), op(pre_hw[1])] }
    }
    /// conv(s, W; st, p). A complex s (holomorphic EP; W stays real) is convolved in planar form: its real and
    /// imaginary parts as 2B rows of one real convolution.
    pub fn forward(&self, s: &Tensor, w: &Tensor) -> Tensor {
        planar(s, w, |x, w| x.conv2d(w, None::<Tensor>, [self.stride, self.stride], [self.pad, self.pad], [1, 1], 1))
    }
    /// convT(z, W; st, p, op): the exact adjoint of `forward` with respect to its input (complex z as in
    /// `forward`).
    pub fn adjoint(&self, z: &Tensor, w: &Tensor) -> Tensor {
        planar(z, w, |x, w| x.conv_transpose2d(w, None::<Tensor>, [self.stride, self.stride], [self.pad, self.pad], self.out_pad, 1, [1, 1]))
    }
    /// Σ_b of the weight gradient of ⟨conv(pre, W), post⟩: a correlation of pre and post, computed as one
    /// convolution of the batch-transposed pre state with the batch-transposed post state as the kernel
    /// (dilation = stride), cropped to k×k. Shape (C_post, C_pre, k, k).
    ///
    /// Complex states: the correlation is bilinear with a batch sum, so with pre = a + ib and post = c + id,
    /// Re = Σ(a·c − b·d) and Im = Σ(a·d + b·c) are each ONE real correlation over the 2B stacked rows.
    pub fn weight_grad(&self, pre: &Tensor, post: &Tensor) -> Tensor {
        use crate::tensor_util::is_complex;
        match (is_complex(pre.kind()), is_complex(post.kind())) {
            (false, false) => self.weight_grad_real(pre, post),
            (true, false) => Tensor::complex(&self.weight_grad_real(&pre.real(), post), &self.weight_grad_real(&pre.imag(), post)),
            (false, true) => Tensor::complex(&self.weight_grad_real(pre, &post.real()), &self.weight_grad_real(pre, &post.imag())),
            (true, true) => {
                let p2 = Tensor::cat(&[pre.real(), pre.imag()], 0);
                let re = self.weight_grad_real(&p2, &Tensor::cat(&[post.real(), post.imag().neg()], 0));
                let im = self.weight_grad_real(&p2, &Tensor::cat(&[post.imag(), post.real()], 0));
                Tensor::complex(&re, &im)
            }
        }
    }

    fn weight_grad_real(&self, pre: &Tensor, post: &Tensor) -> Tensor {
        let k = self.kernel;
        let g = pre.transpose(0, 1).conv2d(&post.transpose(0, 1), None::<Tensor>, [1, 1], [self.pad, self.pad], [self.stride, self.stride], 1);
        g.narrow(2, 0, k).narrow(3, 0, k).transpose(0, 1)
    }
}

/// The convolution `f(x, W)` for real or complex x and W: real W and complex x through the planar form of x
/// (`tensor_util::to_planar`: one real convolution over 2B rows); complex W (the complex parameter leaves of the
/// autograd path, estimators §3.8) by libtorch's complex convolution with x cast; real × real as is.
fn planar(x: &Tensor, w: &Tensor, f: impl Fn(&Tensor, &Tensor) -> Tensor) -> Tensor {
    use crate::tensor_util::is_complex;
    match (is_complex(x.kind()), is_complex(w.kind())) {
        (_, true) => f(&x.to_kind(w.kind()), w),
        (true, false) => crate::tensor_util::from_planar(&f(&crate::tensor_util::to_planar(x), w)),
        (false, false) => f(x, w),
    }
}

pub struct Conv {
    slots: [Node; 2],
    params: [usize; 1],
    geom: ConvGeom,
}

impl Conv {
    /// `weight`: index of W in the model's parameter list; `pre_hw`: the pre layer's spatial size.
    pub fn new(pre: Node, post: Node, weight: usize, kernel: i64, stride: i64, pad: i64, pre_hw: [i64; 2]) -> Self {
        Conv { slots: [pre, post], params: [weight], geom: ConvGeom::new(kernel, stride, pad, pre_hw) }
    }
    pub fn geom(&self) -> ConvGeom {
        self.geom
    }
    fn w<'a>(&self, p: &'a [Tensor]) -> &'a Tensor {
        &p[self.params[0]]
    }
}

const PRE: usize = 0;
const POST: usize = 1;

impl Term for Conv {
    fn describe(&self) -> Option<super::TermSpec> {
        Some(super::TermSpec::Conv { kernel: self.geom.kernel, stride: self.geom.stride, pad: self.geom.pad })
    }
    fn kind(&self) -> &'static str {
        "conv"
    }
    fn slots(&self) -> &[Node] {
        &self.slots
    }
    fn params(&self) -> &[usize] {
        &self.params
    }
    fn primitive(&self, p: &[Tensor], s: &[&Tensor]) -> Tensor {
        crate::tensor_util::sum_per_example(&(self.geom.forward(s[PRE], self.w(p)) * s[POST]))
    }
    fn drive(&self, p: &[Tensor], s: &[&Tensor], slot: usize) -> Tensor {
        match slot {
            PRE => self.geom.adjoint(s[POST], self.w(p)),
            _ => self.geom.forward(s[PRE], self.w(p)),
        }
    }
    fn hvp(&self, p: &[Tensor], _s: &[&Tensor], mu: &[Option<&Tensor>], slot: usize) -> Option<Tensor> {
        match slot {
            PRE => mu[POST].map(|m| self.geom.adjoint(m, self.w(p))),
            _ => mu[PRE].map(|m| self.geom.forward(m, self.w(p))),
        }
    }
    fn param_grad(&self, _p: &[Tensor], s: &[&Tensor]) -> Vec<Tensor> {
        vec![self.geom.weight_grad(s[PRE], s[POST])]
    }
    fn param_vjp(&self, _p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>]) -> Vec<Option<Tensor>> {
        let mut g = None;
        if let Some(m) = mu[POST] {
            super::accumulate(&mut g, self.geom.weight_grad(s[PRE], m));
        }
        if let Some(m) = mu[PRE] {
            super::accumulate(&mut g, self.geom.weight_grad(m, s[POST]));
        }
        vec![g]
    }
}
