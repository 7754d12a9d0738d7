//! Feed-forward BP baselines for the same graphs (conv-hopfield.md §8), trained with autograd so that weight
//! distributions can be compared with EP:
//! * **ResNet13 + BatchNorm** (for `hopfield-resnet13`): the same 13 edges, each Conv2d(bias) → BatchNorm2d
//!   (ε 1e-5, momentum 0.1); n_j = ReLU(Σ_{i→j} BN(conv_ij(n_i))); output = Linear(flatten(n8)). PyTorch default
//!   init (U(±1/√fan_in)). Adam, lr 1e-3, coupled weight decay 2.5e-4, no schedule, cross-entropy.
//! * **VGG "7"** (for the VGG5 presets): 4 × [Conv3×3 pad 1 (no bias) → BN → ReLU → MaxPool 2], Linear. Convs
//!   kaiming-normal (fan_out, ReLU gain), Linear PyTorch default. SGD lr 0.1, momentum 0.9, Nesterov, weight decay
//!   5e-4, cosine (η_min 0), cross-entropy.
//!
//! Checkpoints use the EP names where the spec maps them (conv `W.i_j` same layout; the Linear weight
//! [n, c·H·W + h·W + w] ↔ W[c, h, w, n]), and `bp.*` names for the rest (conv biases, BN parameters and running
//! statistics, the Linear bias), so `epcheck weights` compares BP and EP tensors by name.
use super::data::DataSource;
use super::{EpochRow, TrainOutcome};
use crate::config::RunConfig;
use crate::{Error, Result};
use std::path::Path;
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Kind, Tensor};

struct Edge {
    name: String,
    pre: usize,
    post: usize,
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

pub struct BpNet {
    pub vs: nn::VarStore,
    vgg: bool,
    edges: Vec<Edge>,
    linear: nn::Linear,
    /// (C, H, W) of the flattened layer feeding the Linear head, and the EP name of the head.
    head: (Vec<i64>, String),
    layers: usize,
}

fn uniform(b: f64) -> nn::Init {
    nn::Init::Uniform { lo: -b, up: b }
}

impl BpNet {
    /// The baseline for an EP preset's graph (sizes from `cfg`).
    pub fn new(cfg: &RunConfig, device: tch::Device) -> Result<BpNet> {
        let base = cfg.preset.strip_suffix("-train").unwrap_or(&cfg.preset);
        let sz = crate::model::presets::conv_common::sizes(cfg, base)?;
        let [n1, n2, n3, n4] = sz.widths;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut edges = vec![];
        let bn_cfg = nn::BatchNormConfig { eps: 1e-5, momentum: 0.1, ..Default::default() };
        let (vgg, head, layers) = match base {
            "hopfield-resnet13" => {
                let ch = [sz.c0, n1, n1, n2, n2, n3, n3, n4, n4];
                let mut h = vec![sz.h0];
                for k in 1..=8 {
                    let prev = h[k - 1];
                    h.push(if k % 2 == 0 { crate::model::terms::conv::ConvGeom::out_size(3, 2, 1, prev) } else { prev });
                }
                let list = [(0, 1, 3, 1, 1), (1, 2, 3, 2, 1), (0, 2, 1, 2, 0), (2, 3, 3, 1, 1), (2, 4, 1, 2, 0), (3, 4, 3, 2, 1), (4, 5, 3, 1, 1), (4, 6, 1, 2, 0), (5, 6, 3, 2, 1), (6, 7, 3, 1, 1), (6, 8, 1, 2, 0), (7, 8, 3, 2, 1)];
                for (i, j, k, st, p) in list {
                    let name = format!("W.{i}_{j}");
                    let fan_in = ch[i] * k * k;
                    let b = 1.0 / (fan_in as f64).sqrt();
                    let conv = nn::conv2d(&root / format!("conv{i}_{j}"), ch[i], ch[j], k, nn::ConvConfig { stride: st, padding: p, bias: true, ws_init: uniform(b), bs_init: uniform(b), ..Default::default() });
                    let bn = nn::batch_norm2d(&root / format!("bn{i}_{j}"), ch[j], bn_cfg);
                    edges.push(Edge { name, pre: i, post: j, conv, bn });
                }
                (false, (vec![n4, h[8], h[8]], "W.8_9".to_string()), 8)
            }
            "vgg5-dchn" | "vgg5-dchn-rain" => {
                if sz.h0 % 16 != 0 {
                    return Err(Error::Config(format!("{base}: height must be a multiple of 16, got {}", sz.h0)));
                }
                let ch = [sz.c0, n1, n2, n3, n4];
                for e in 0..4 {
                    let std = 2f64.sqrt() / ((9 * ch[e + 1]) as f64).sqrt();
                    let conv = nn::conv2d(&root / format!("conv{e}_{}", e + 1), ch[e], ch[e + 1], 3, nn::ConvConfig { padding: 1, bias: false, ws_init: nn::Init::Randn { mean: 0.0, stdev: std }, ..Default::default() });
                    let bn = nn::batch_norm2d(&root / format!("bn{e}_{}", e + 1), ch[e + 1], bn_cfg);
                    edges.push(Edge { name: format!("W.{e}_{}", e + 1), pre: e, post: e + 1, conv, bn });
                }
                let h4 = sz.h0 / 16;
                (true, (vec![n4, h4, h4], "W.4_5".to_string()), 4)
            }
            other => return Err(Error::Config(format!("no BP baseline for preset '{other}' (hopfield-resnet13, vgg5-dchn, vgg5-dchn-rain)"))),
        };
        let fan: i64 = head.0.iter().product();
        let b = 1.0 / (fan as f64).sqrt();
        let linear = nn::linear(&root / "linear", fan, sz.classes, nn::LinearConfig { ws_init: uniform(b), bs_init: Some(uniform(b)), bias: true });
        Ok(BpNet { vs, vgg, edges, linear, head, layers })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut n: Vec<Option<Tensor>> = vec![Some(x.shallow_clone())];
        n.resize_with(self.layers + 1, || None);
        if self.vgg {
            for e in &self.edges {
                let z = e.bn.forward_t(&e.conv.forward_t(n[e.pre].as_ref().expect("pre computed"), train), train).relu();
                n[e.post] = Some(z.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false));
            }
        } else {
            for j in 1..=self.layers {
                let mut acc: Option<Tensor> = None;
                for e in self.edges.iter().filter(|e| e.post == j) {
                    let z = e.bn.forward_t(&e.conv.forward_t(n[e.pre].as_ref().expect("pre computed"), train), train);
                    acc = Some(match acc {
                        Some(a) => a + z,
                        None => z,
                    });
                }
                n[j] = Some(acc.expect("every layer has an incoming edge").relu());
            }
        }
        let last = n[self.layers].take().expect("last layer");
        self.linear.forward_t(&last.flatten(1, -1), train)
    }

    /// Named tensors for a checkpoint (EP names where mapped, `bp.*` otherwise).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for e in &self.edges {
            out.push((format!("param.{}", e.name), e.conv.ws.detach()));
            if let Some(b) = &e.conv.bs {
                out.push((format!("bp.conv.{}.bias", e.name), b.detach()));
            }
            if let Some(w) = &e.bn.ws {
                out.push((format!("bp.bn.{}.weight", e.name), w.detach()));
            }
            if let Some(b) = &e.bn.bs {
                out.push((format!("bp.bn.{}.bias", e.name), b.detach()));
            }
            out.push((format!("bp.bn.{}.running_mean", e.name), e.bn.running_mean.detach()));
            out.push((format!("bp.bn.{}.running_var", e.name), e.bn.running_var.detach()));
        }
        // Linear.weight[n, c·H·W + h·W + w] ↔ W[c, h, w, n].
        let mut shape = self.head.0.clone();
        shape.push(-1);
        out.push((format!("param.{}", self.head.1), self.linear.ws.detach().tr().reshape(&shape[..])));
        if let Some(b) = &self.linear.bs {
            out.push(("bp.linear.bias".into(), b.detach()));
        }
        out
    }
}

/// Refuses, before a run folder exists, a configuration that has no BP baseline (builds the network once on
/// the CPU: the same constructor as the run).
pub fn validate(cfg: &RunConfig) -> Result<()> {
    tch::no_grad(|| BpNet::new(cfg, tch::Device::Cpu).map(|_| ()))
}

/// Trains the baseline on `data` for `cfg.train.epochs`, writing the same per-epoch table, curves and
/// checkpoints as EP training (checkpoints named `bp-epoch<NNNN>.safetensors`, `bp-last.safetensors`).
pub fn run(cfg: &RunConfig, device: tch::Device, data: &mut dyn DataSource, dir: &Path) -> Result<TrainOutcome> {
    let net = crate::tensor_util::seeded(cfg.seed as i64, || BpNet::new(cfg, device))?;
    let kind = if cfg.dtype == "f64" { Kind::Double } else { Kind::Float };
    let mut vs = net.vs;
    if kind == Kind::Double {
        vs.double();
    }
    let net = BpNet { vs, ..net };
    let epochs = cfg.train.epochs;
    let (mut opt, lr0) = if net.vgg {
        (nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 5e-4, nesterov: true }.build(&net.vs, 0.1)?, 0.1)
    } else {
        (nn::Adam { wd: 2.5e-4, ..Default::default() }.build(&net.vs, 1e-3)?, 1e-3)
    };
    let ckdir = dir.join("checkpoints");
    std::fs::create_dir_all(&ckdir).map_err(|e| Error::file(&ckdir, e))?;
    let mut rows = vec![];
    crate::progress::start(&format!("train BP baseline on {}", data.name()));
    for e in 0..epochs {
        let lr = if net.vgg { super::lr::cosine_recursive(lr0, 0.0, epochs, e) } else { lr0 };
        opt.set_lr(lr);
        let t0 = std::time::Instant::now();
        let (mut loss_sum, mut err_sum, mut n) = (0.0, 0.0, 0.0);
        for item in data.train_epoch(e, cfg.batch)? {
            let (x, y) = item?;
            let (x, y) = (x.to_kind(kind).to_device(device), y.to_kind(Kind::Int64).to_device(device));
            let logits = net.forward_t(&x, true);
            let loss = logits.cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
            let b = y.size()[0] as f64;
            loss_sum += loss.double_value(&[]) * b;
            err_sum += 100.0 * logits.argmax(-1, false).ne_tensor(&y).to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
            n += b;
        }
        let secs = t0.elapsed().as_secs_f64();
        let (mut tl, mut te, mut tn) = (0.0, 0.0, 0.0);
        {
            let _g = tch::no_grad_guard();
            for item in data.test(cfg.batch)? {
                let (x, y) = item?;
                let (x, y) = (x.to_kind(kind).to_device(device), y.to_kind(Kind::Int64).to_device(device));
                let logits = net.forward_t(&x, false);
                let b = y.size()[0] as f64;
                tl += logits.cross_entropy_for_logits(&y).double_value(&[]) * b;
                te += 100.0 * logits.argmax(-1, false).ne_tensor(&y).to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
                tn += b;
            }
        }
        for (split, metric, v) in [("train", "loss", loss_sum / n), ("train", "error", err_sum / n), ("test", "loss", tl / tn), ("test", "error", te / tn), ("train", "lr", lr), ("train", "seconds", secs)] {
            rows.push(EpochRow { epoch: e, split: split.into(), metric: metric.into(), scope: "all".into(), value: v });
        }
        if !(loss_sum / n).is_finite() {
            return Err(Error::NonFinite(format!("BP baseline loss at epoch {} is not finite", e + 1)));
        }
        eprintln!("BP epoch {:>3}/{epochs}: train loss {:.4} error {:6.2}% | test loss {:.4} error {:6.2}% | {:.1} s", e + 1, loss_sum / n, err_sum / n, tl / tn, te / tn, secs);
        let mut meta = std::collections::HashMap::new();
        meta.insert("epcheck.schema".to_string(), "1".to_string());
        meta.insert("epcheck.preset".to_string(), format!("bp:{}", cfg.preset));
        meta.insert("epcheck.train.epochs_done".to_string(), (e + 1).to_string());
        meta.insert("epcheck.config".to_string(), cfg.recorded_json());
        let ts = net.named_tensors();
        crate::io::write_tensors(&ckdir.join(format!("bp-epoch{:04}.safetensors", e + 1)), &ts, meta.clone())?;
        crate::io::write_tensors(&ckdir.join("bp-last.safetensors"), &ts, meta)?;
        super::write_epoch_table(dir, &rows)?;
        super::curve_figure(dir, &rows, &cfg.checks)?;
    }
    crate::progress::finish();
    Ok(TrainOutcome { dir: dir.to_path_buf(), rows })
}
