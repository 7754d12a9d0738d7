//! Optimisers with PyTorch semantics, one group per parameter tensor in canonical order (conv-hopfield.md §6.2,
//! hopfield-attention.md §9.2): SGD with momentum (dampening 0, optional Nesterov) and **coupled** L2 weight
//! decay; Adam with coupled L2 (torch.optim.Adam's `weight_decay`); AdamW with decoupled decay.
use crate::{Error, Result};
use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Sgd { momentum: f64, nesterov: bool },
    Adam { beta1: f64, beta2: f64, eps: f64 },
    AdamW { beta1: f64, beta2: f64, eps: f64 },
}

impl Kind {
    pub fn parse(name: &str, momentum: f64, nesterov: bool) -> Result<Kind> {
        match name {
            "sgd" => Ok(Kind::Sgd { momentum, nesterov }),
            "adam" => Ok(Kind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }),
            "adamw" => Ok(Kind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }),
            o => Err(Error::Config(format!("optimizer must be sgd, adam or adamw, got '{o}'"))),
        }
    }
}

pub struct Optimizer {
    pub kind: Kind,
    pub weight_decay: f64,
    /// SGD: momentum buffers; Adam: first moments.
    pub buf: Vec<Option<Tensor>>,
    /// Adam: second moments.
    pub buf2: Vec<Option<Tensor>>,
    /// Steps taken (Adam bias correction).
    pub steps: i64,
}

impl Optimizer {
    pub fn new(kind: Kind, weight_decay: f64, n: usize) -> Optimizer {
        Optimizer { kind, weight_decay, buf: (0..n).map(|_| None).collect(), buf2: (0..n).map(|_| None).collect(), steps: 0 }
    }

    /// θ ← θ − η_p·d for every tensor, with per-tensor rates `lr` (in place, no autograd).
    pub fn step(&mut self, params: &mut [Tensor], grads: &[Tensor], lr: &[f64]) {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let wd = self.weight_decay;
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            match self.kind {
                Kind::Sgd { momentum, nesterov } => {
                    let mut d = if wd != 0.0 { g + &*p * wd } else { g.shallow_clone() };
                    if momentum != 0.0 {
                        let b = match self.buf[i].take() {
                            None => d.copy(),
                            Some(b) => b * momentum + &d,
                        };
                        d = if nesterov { d + &b * momentum } else { b.shallow_clone() };
                        self.buf[i] = Some(b);
                    }
                    *p = &*p - d * lr[i];
                }
                Kind::Adam { beta1, beta2, eps } | Kind::AdamW { beta1, beta2, eps } => {
                    let decoupled = matches!(self.kind, Kind::AdamW { .. });
                    let g = if wd != 0.0 && !decoupled { g + &*p * wd } else { g.shallow_clone() };
                    if decoupled && wd != 0.0 {
                        *p = &*p * (1.0 - lr[i] * wd);
                    }
                    // torch.optim.Adam, single-tensor path (hopfield-attention.md §9.2): m ← lerp(m, g, 1 − β₁),
                    // v ← β₂·v + (1 − β₂)·g², denom = √v / √bc2 + ε, θ ← θ − (lr / bc1)·m / denom.
                    // In place, one scratch tensor per parameter (the same operations in the same order as the
                    // out-of-place expressions, so the same bits; a 30 M-weight attention projection allocated and
                    // page-faulted eleven fresh tensors per step before).
                    let mut gg = &g * &g;
                    let _ = gg.g_mul_scalar_(1.0 - beta2);
                    let m = match self.buf[i].take() {
                        None => &g * (1.0 - beta1),
                        Some(mut m) => {
                            let _ = m.lerp_(&g, 1.0 - beta1);
                            m
                        }
                    };
                    let v = match self.buf2[i].take() {
                        None => gg.copy(),
                        Some(mut v) => {
                            let _ = v.g_mul_scalar_(beta2).g_add_(&gg);
                            v
                        }
                    };
                    let t = self.steps as f64;
                    let bc1 = 1.0 - beta1.powf(t);
                    let bc2 = 1.0 - beta2.powf(t);
                    // denom = √v / √bc2 + ε, then (m / denom)·(lr / bc1), all in gg's buffer.
                    let mut d = gg;
                    let _ = v.sqrt_out(&d);
                    let _ = d.g_div_scalar_(bc2.sqrt()).g_add_scalar_(eps);
                    let _ = m.div_out(&d, &d);
                    let _ = d.g_mul_scalar_(lr[i] / bc1);
                    *p = &*p - &d;
                    self.buf[i] = Some(m);
                    self.buf2[i] = Some(v);
                }
            }
        }
    }

    /// The optimiser state as named tensors for a checkpoint.
    pub fn state_tensors(&self, names: &[String]) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for (i, n) in names.iter().enumerate() {
            if let Some(b) = &self.buf[i] {
                out.push((format!("optim.buf.{n}"), b.shallow_clone()));
            }
            if let Some(b) = &self.buf2[i] {
                out.push((format!("optim.buf2.{n}"), b.shallow_clone()));
            }
        }
        out
    }

    /// Restores buffers saved by [`Optimizer::state_tensors`].
    pub fn load_state(&mut self, names: &[String], map: &std::collections::BTreeMap<String, Tensor>, like: &[Tensor]) {
        for (i, n) in names.iter().enumerate() {
            self.buf[i] = map.get(&format!("optim.buf.{n}")).map(|t| t.to_kind(like[i].kind()).to_device(like[i].device()));
            self.buf2[i] = map.get(&format!("optim.buf2.{n}")).map(|t| t.to_kind(like[i].kind()).to_device(like[i].device()));
        }
    }
}

/// Global-norm clip (conv-hopfield.md §6.1): N = ‖(‖g_p‖₂)_p‖₂; when N > max, every g_p is multiplied by
/// max/(N + 1e-6). Returns (clipped, N, factor).
pub fn clip_global_norm(g: &[Tensor], max: f64) -> (Vec<Tensor>, f64, f64) {
    let n = crate::tensor_util::global_norm(g);
    if n > max {
        let f = max / (n + 1e-6);
        (g.iter().map(|t| t * f).collect(), n, f)
    } else {
        (g.iter().map(|t| t.shallow_clone()).collect(), n, 1.0)
    }
}
