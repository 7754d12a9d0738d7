//! Oracle tests of the Hopfield-attention presets (`hopfield-attention.md`), float64, tiny instances: the attention
//! update against autograd of (1/c)·logsumexp, its Jacobian against autograd's, drives and local gradients
//! against autograd of Φ, the step VJP against autograd, BPTT against central finite differences, symmetric EP
//! against BPTT, and the GDU series against BPTT / J·BPTT_s.
mod common;
use common::*;
use epcheck::checks::{self, gdu};
use epcheck::config::RunConfig;
use epcheck::estimators::{self, bptt, Estimator, PhaseLengths};
use epcheck::instance::Instance;
use epcheck::model::attention::{Attention, AttentionMask, SeqSlice};
use epcheck::model::update_map::UpdateMap;
use epcheck::model::{Batch, Model, State};
use tch::{Kind, Tensor};

const CPU: (Kind, tch::Device) = (Kind::Double, tch::Device::Cpu);
const PRESETS: [&str; 2] = ["imdb-hopfield", "snli-hopfield"];

/// Tiny instances: IMDB L = 5, d = 4, fc 6-4-2; SNLI L = 4 (+4), d = 3, fc 6-3; B = 3.
fn tiny_seq(preset: &str, f: impl FnOnce(&mut RunConfig)) -> Instance {
    // Tiny tensors: libtorch's intra-op threads only add contention on a shared machine.
    tch::set_num_threads(1);
    let mut cfg = RunConfig::preset_defaults(preset).unwrap();
    cfg.batch = 3;
    if preset == "imdb-hopfield" {
        cfg.seq_len = Some(5);
        cfg.embed_dim = Some(4);
        cfg.widths = Some(vec![6, 4, 2]);
    } else {
        cfg.seq_len = Some(4);
        cfg.embed_dim = Some(3);
        cfg.widths = Some(vec![6, 3]);
    }
    f(&mut cfg);
    Instance::from_config(cfg).unwrap()
}

/// A random state: attention layers s = G(u) with u ~ N(0, 1), dense layers U[−0.25, 1.25].
fn random_state(m: &Model, batch: &Batch, seed: i64) -> State {
    let _rng = epcheck::tensor_util::rng_lock();
    tch::manual_seed(epcheck::tensor_util::test_seed(seed));
    let b = batch.size();
    (0..m.layers.len())
        .map(|k| {
            let mut shape = vec![b];
            shape.extend(&m.layers[k].shape);
            match m.update_map(k) {
                Some(map) => map.apply(batch, &Tensor::randn(&shape[..], CPU)),
                None => Tensor::rand(&shape[..], CPU) * 1.5 - 0.25,
            }
        })
        .collect()
}

/// Keys with padding: example 0 full, example 1 with its last 2 rows zero, example 2 all zero (no valid key).
fn keys_with_padding(b: i64, l: i64, d: i64) -> Tensor {
    let _rng = epcheck::tensor_util::rng_lock();
    tch::manual_seed(epcheck::tensor_util::test_seed(5));
    let x = Tensor::randn([b, l, d], CPU) * 0.8;
    let keep = Tensor::ones([b, l, 1], CPU);
    let _ = keep.get(1).narrow(0, l - 2, 2).fill_(0.0);
    if b >= 3 {
        let _ = keep.get(2).fill_(0.0);
    }
    x * keep
}

fn batch_of(x: Tensor) -> Batch {
    let b = x.size()[0];
    Batch::new(x, Tensor::zeros([b], (Kind::Int64, tch::Device::Cpu)), 2)
}

/// The oracle: ∇_u Σ (1/c)·logsumexp(c·u Xᵀ) by autograd, with padded keys at −∞ under a key mask (rows of an
/// example without any valid key: the zero map), and padded query rows zeroed under `keys_and_queries`.
fn lse_gradient(u: &Tensor, x: &Tensor, c: f64, mask: AttentionMask) -> Tensor {
    let ul = u.detach().set_requires_grad(true);
    let z = ul.matmul(&x.transpose(1, 2)) * c;
    let valid = x.ne(0.0).any_dim(-1, false);
    let z = if mask == AttentionMask::Off { z } else { z.masked_fill(&valid.unsqueeze(1).logical_not(), -1e300) };
    let mut lse = z.logsumexp([-1i64], false) / c;
    let has = valid.any_dim(-1, false).unsqueeze(-1);
    if mask != AttentionMask::Off {
        lse = lse * has.to_kind(Kind::Double);
    }
    if mask == AttentionMask::KeysAndQueries {
        lse = lse * valid.to_kind(Kind::Double);
    }
    let g = epcheck::tensor_util::grads_or_zeros(&lse.sum(Kind::Double), &[&ul]);
    g[0].shallow_clone()
}

const MASKS: [AttentionMask; 3] = [AttentionMask::Off, AttentionMask::Keys, AttentionMask::KeysAndQueries];

#[test]
fn attention_update_equals_autograd_of_scaled_logsumexp() {
    let _rng = epcheck::tensor_util::rng_lock();
    let (b, l, d, c) = (3, 5, 4, 0.7);
    let x = keys_with_padding(b, l, d);
    let batch = batch_of(x.shallow_clone());
    let u = Tensor::randn([b, l, d], CPU) * 2.0;
    for mask in MASKS {
        let a = Attention::new(SeqSlice::new(0, 0, l), SeqSlice::new(0, 0, l), c, mask);
        let got = a.apply(&batch, &u);
        let want = lse_gradient(&u, &x, c, mask);
        let e = rel_linf(&flat(&[got.shallow_clone()]), &flat(&[want]));
        assert!(e <= 1e-13, "{mask:?}: A_c vs ∇ψ: {e}");
        // And the closed form p X row by row, for one row of example 1.
        let p = (u.get(1).get(0).unsqueeze(0).matmul(&x.get(1).tr()) * c).softmax(-1, Kind::Double);
        let row = p.matmul(&x.get(1));
        if mask == AttentionMask::Off {
            assert!(rel_linf(&flat(&[row]), &flat(&[got.get(1).get(0).unsqueeze(0)])) <= 1e-14);
        }
        if mask != AttentionMask::Off {
            assert!(flat(&[got.get(2)]).iter().all(|v| *v == 0.0), "{mask:?}: no valid key gives the zero map");
        }
        if mask == AttentionMask::KeysAndQueries {
            assert!(flat(&[got.get(1).narrow(0, l - 2, 2)]).iter().all(|v| *v == 0.0), "padded queries held at 0");
        }
    }
}

/// The full Jacobian of example `b` ((Lq·d) × (Lq·d)) by autograd of the update map, column by column.
fn autograd_jacobian(a: &Attention, batch: &Batch, u: &Tensor, b: i64) -> Vec<Vec<f64>> {
    let n = u.get(b).numel() as i64;
    (0..n)
        .map(|i| {
            let ul = u.detach().set_requires_grad(true);
            let out = a.apply(batch, &ul).get(b).reshape([-1]).get(i);
            let g = epcheck::tensor_util::grads_or_zeros(&out, &[&ul]);
            flat(&[g[0].get(b)])
        })
        .collect()
}

#[test]
fn attention_jacobian_equals_autograd_and_is_symmetric_psd() {
    let _rng = epcheck::tensor_util::rng_lock();
    let (b, l, d, c) = (3, 4, 3, 1.3);
    let x = keys_with_padding(b, l, d);
    let batch = batch_of(x);
    let u = Tensor::randn([b, l, d], CPU);
    for mask in MASKS {
        let a = Attention::new(SeqSlice::new(0, 0, l), SeqSlice::new(0, 0, l), c, mask);
        for ex in 0..b {
            let rows = autograd_jacobian(&a, &batch, &u, ex);
            let n = rows.len();
            // Column j of J by jacobian_apply on the basis vector e_j.
            for j in 0..n {
                let e = Tensor::zeros([b, l * d], CPU);
                let _ = e.get(ex).get(j as i64).fill_(1.0);
                let col = flat(&[a.jacobian_apply(&batch, &u, &e.reshape([b, l, d])).get(ex)]);
                let want: Vec<f64> = rows.iter().map(|r| r[j]).collect();
                let scale = want.iter().chain(col.iter()).fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
                let err = col.iter().zip(&want).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max) / scale;
                assert!(err <= 1e-13 || scale == 1e-300, "{mask:?} ex {ex} col {j}: J v vs autograd {err}");
                // Block-diagonal over examples.
                for other in 0..b {
                    if other != ex {
                        let o = flat(&[a.jacobian_apply(&batch, &u, &e.reshape([b, l, d])).get(other)]);
                        assert!(o.iter().all(|v| *v == 0.0));
                    }
                }
            }
            // Symmetric (the Hessian of ψ) and positive semi-definite: vᵀJv ≥ 0 for random v.
            for i in 0..n {
                for j in 0..n {
                    assert!((rows[i][j] - rows[j][i]).abs() <= 1e-14 * (1.0 + rows[i][j].abs()), "{mask:?}: J not symmetric at ({i}, {j})");
                }
            }
        }
        for s in 0..5 {
            tch::manual_seed(epcheck::tensor_util::test_seed(100 + s));
            let v = Tensor::randn([b, l, d], CPU);
            let q = (a.jacobian_apply(&batch, &u, &v) * &v).sum(Kind::Double).double_value(&[]);
            assert!(q >= -1e-15, "{mask:?}: vᵀJv = {q} < 0");
        }
    }
}

#[test]
fn attention_conjugate_potential_satisfies_fenchel_young() {
    let _rng = epcheck::tensor_util::rng_lock();
    // ψ*(A(u)) + ψ(u) = ⟨A(u), u⟩ at interior points (no padding: the hull of the keys is full-dimensional).
    let (b, l, d, c) = (2, 6, 3, 0.9);
    tch::manual_seed(epcheck::tensor_util::test_seed(21));
    let x = Tensor::randn([b, l, d], CPU);
    let batch = batch_of(x);
    let a = Attention::new(SeqSlice::new(0, 0, l), SeqSlice::new(0, 0, l), c, AttentionMask::Off);
    let u = Tensor::randn([b, l, d], CPU) * 0.5;
    let s = a.apply(&batch, &u);
    let lhs = a.conjugate_potential(&batch, &s) + a.potential(&batch, &u);
    let rhs = epcheck::tensor_util::sum_per_example(&(&s * &u));
    let e = rel_linf(&flat(&[lhs]), &flat(&[rhs]));
    assert!(e <= 1e-9, "Fenchel–Young: {e}");
    // Outside the convex hull of the keys: +∞.
    let far = &s + 100.0;
    assert!(flat(&[a.conjugate_potential(&batch, &far)]).iter().all(|v| v.is_infinite() && *v > 0.0));
}

#[test]
fn shapes_counts_and_synthetic_inputs() {
    let _rng = epcheck::tensor_util::rng_lock();
    for preset in PRESETS {
        let inst = tiny_seq(preset, |_| {});
        let m = &inst.model;
        let (l, d) = if preset == "imdb-hopfield" { (5, 4) } else { (4, 3) };
        let n_attn = if preset == "imdb-hopfield" { 1 } else { 4 };
        let count: i64 = m.params.iter().map(|p| p.shape.iter().product::<i64>()).sum();
        // §11: d² + Σ (a_{i−1}+1)·a_i (IMDB), 4d² + … (SNLI).
        let want = if preset == "imdb-hopfield" { d * d + (l * d + 1) * 6 + 7 * 4 + 5 * 2 } else { 4 * d * d + (4 * l * d + 1) * 6 + 7 * 3 };
        assert_eq!(count, want, "{preset}: parameter count");
        for k in 0..n_attn {
            assert_eq!(m.update_key(k), "attention");
            assert_eq!(m.layers[k].shape, vec![l, d]);
        }
        let x = &inst.batch.x[0];
        let segments = if preset == "imdb-hopfield" { 1 } else { 2 };
        assert_eq!(x.size(), vec![3, segments * l, d]);
        // Post-padding per sentence; example 0 unpadded, example 1 padded.
        let valid = x.ne(0.0).any_dim(-1, false).to_kind(Kind::Int64).reshape([3, segments, l]);
        for g in 0..segments {
            assert_eq!(valid.get(0).get(g).sum(Kind::Int64).int64_value(&[]), l, "{preset}: example 0 unpadded");
            assert!(valid.get(1).get(g).sum(Kind::Int64).int64_value(&[]) < l, "{preset}: example 1 padded");
            for ex in 0..3 {
                let v: Vec<i64> = Vec::<i64>::try_from(&valid.get(ex).get(g)).unwrap();
                assert!(v[0] == 1 && v.windows(2).all(|w| w[0] >= w[1]), "{preset}: post-padding, ≥ 1 token: {v:?}");
            }
        }
        let std = x.masked_select(&x.ne(0.0)).std(true).double_value(&[]);
        assert!((0.08..0.25).contains(&std), "{preset}: token std {std}");
    }
    // c: 1/√d for IMDB (kept when d is overridden), 0.16 for SNLI.
    let imdb = tiny_seq("imdb-hopfield", |_| {});
    let u = Tensor::randn([3, 5, 4], CPU);
    let a = Attention::new(SeqSlice::new(0, 0, 5), SeqSlice::new(0, 0, 5), 0.5, AttentionMask::Off);
    assert!(imdb.model.activate(0, &imdb.batch, &u).equal(&a.apply(&imdb.batch, &u)));
    // SNLI L1: the premise attends over the hypothesis (keys = rows L…2L of x), c = 0.16 at d = 3.
    let snli = tiny_seq("snli-hopfield", |_| {});
    let u = Tensor::randn([3, 4, 3], CPU);
    let a = Attention::new(SeqSlice::new(0, 4, 4), SeqSlice::new(0, 0, 4), 0.16, AttentionMask::Off);
    assert!(snli.model.activate(0, &snli.batch, &u).equal(&a.apply(&snli.batch, &u)));
}

#[test]
fn drives_and_local_gradients_equal_autograd_of_phi() {
    let _rng = epcheck::tensor_util::rng_lock();
    for preset in PRESETS {
        for mask in ["off", "keys_and_queries"] {
            let inst = tiny_seq(preset, |c| c.attention_mask = Some(mask.into()));
            let (m, p, batch) = (&inst.model, &inst.params, &inst.batch);
            for seed in [3, 4] {
                let s = random_state(m, batch, seed);
                for beta in [0.0, 0.3, -0.2] {
                    let auto = m.drives_autograd(p, batch, &s, beta);
                    for k in 0..s.len() {
                        let u = m.drive(p, batch, &s, k, beta);
                        let e = rel_linf(&flat(&[u]), &flat(&[auto[k].shallow_clone()]));
                        assert!(e <= 1e-12, "{preset}/{mask} β={beta} L{}: drive rel err {e}", k + 1);
                    }
                }
                let local = m.param_derivative(p, batch, &s);
                let auto = m.param_derivative_autograd(p, batch, &s);
                for (i, (a, b)) in local.iter().zip(&auto).enumerate() {
                    let e = rel_linf(&flat(&[a.shallow_clone()]), &flat(&[b.shallow_clone()]));
                    assert!(e <= 1e-12, "{preset}/{mask} {}: local vs autograd {e}", m.params[i].name);
                }
            }
        }
    }
}

#[test]
fn step_vjp_equals_autograd() {
    let _rng = epcheck::tensor_util::rng_lock();
    for preset in PRESETS {
        for (mask, schedule) in [("off", "sync"), ("keys", "sync"), ("off", "async2")] {
            let inst = tiny_seq(preset, |c| {
                c.attention_mask = Some(mask.into());
                c.schedule = Some(schedule.into());
            });
            let (m, p, batch) = (&inst.model, &inst.params, &inst.batch);
            let s = random_state(m, batch, 8);
            tch::manual_seed(epcheck::tensor_util::test_seed(9));
            let lam: State = s.iter().map(|t| t.randn_like()).collect();
            for beta in [0.0, 0.4] {
                let (hs, hp) = m.step_vjp(p, batch, &s, &lam, beta);
                let (as_, ap) = m.step_vjp_autograd(p, batch, &s, &lam, beta);
                let e_s = rel_linf(&flat(&hs), &flat(&as_));
                let e_p = rel_linf(&flat(&hp), &flat(&ap));
                assert!(e_s <= 1e-12 && e_p <= 1e-12, "{preset}/{mask}/{schedule} β={beta}: state {e_s}, params {e_p}");
            }
        }
    }
}

fn loss_fixed_t(m: &Model, p: &[Tensor], batch: &Batch, t: i64) -> f64 {
    let f = estimators::free_phase(m, p, batch, PhaseLengths { t_free: t, k_nudge: 1, tol: None }, false);
    m.mean_loss(p, batch, &f.state).double_value(&[])
}

#[test]
fn bptt_equals_autograd_graph_and_central_finite_differences() {
    let _rng = epcheck::tensor_util::rng_lock();
    for preset in PRESETS {
        let inst = tiny_seq(preset, |_| {});
        let (m, p, batch) = (&inst.model, &inst.params, &inst.batch);
        let t = 30;
        let (g, _) = bptt::full(m, p, batch, t);
        let a = bptt::autograd(m, p, batch, t, None);
        let g = flat(&g.tensors);
        assert!(g.iter().any(|v| *v != 0.0), "{preset}: degenerate instance");
        assert!(rel_linf(&g, &flat(&a)) <= 1e-12, "{preset}: sweep vs autograd graph");
        let theta_norm = flat(p).iter().map(|v| v * v).sum::<f64>().sqrt();
        let gnorm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        tch::manual_seed(epcheck::tensor_util::test_seed(99));
        for dir in 0..3 {
            let v: Vec<Tensor> = p.iter().map(|t| t.randn_like()).collect();
            let vn = flat(&v).iter().map(|x| x * x).sum::<f64>().sqrt();
            let v: Vec<Tensor> = v.into_iter().map(|x| x / vn).collect();
            let eps = 1e-5 * theta_norm;
            let d = |e: f64| {
                let pp: Vec<Tensor> = p.iter().zip(&v).map(|(p, v)| p + v * e).collect();
                let pm: Vec<Tensor> = p.iter().zip(&v).map(|(p, v)| p - v * e).collect();
                (loss_fixed_t(m, &pp, batch, t) - loss_fixed_t(m, &pm, batch, t)) / (2.0 * e)
            };
            let richardson = (4.0 * d(eps / 2.0) - d(eps)) / 3.0;
            let proj: f64 = g.iter().zip(flat(&v)).map(|(a, b)| a * b).sum();
            let scale = proj.abs().max(gnorm / (g.len() as f64).sqrt());
            let err = (richardson - proj).abs() / scale;
            assert!(err <= 1e-6, "{preset} direction {dir}: FD {richardson} vs BPTT {proj} (rel {err})");
        }
    }
}

/// ep_centered vs truncated BPTT from a converged free phase (the implicit gradient), at β and 2β.
fn sym_ep_errors(inst: &Instance, betas: &[f64]) -> (Vec<f64>, i64) {
    let (m, p, batch) = (&inst.model, &inst.params, &inst.batch);
    let (g, free) = bptt::truncated(m, p, batch, 200, 100).unwrap();
    let r = epcheck::relax::residual(m, p, batch, &free.state, 0.0).max().double_value(&[]);
    assert!(r <= 1e-13, "{}: free phase not converged (r_∞ = {r})", m.preset);
    let gref = flat(&g.tensors);
    let len = PhaseLengths { t_free: 200, k_nudge: 100, tol: None };
    let mut crossings = 0;
    let errs = betas
        .iter()
        .map(|&b| {
            let run = estimators::estimate(Estimator::EpCentered, m, p, batch, b, len).unwrap();
            let r0 = checks::kinks::regimes(m, p, batch, &run.phases[0].1.state, 0.0);
            for (_, ph) in &run.phases[1..] {
                crossings += checks::kinks::changes(&r0, &checks::kinks::regimes(m, p, batch, &ph.state, ph.beta)).iter().sum::<i64>();
            }
            rel_l2(&flat(&run.grad.tensors), &gref)
        })
        .collect();
    (errs, crossings)
}

#[test]
fn symmetric_ep_matches_bptt_at_small_beta() {
    for preset in PRESETS {
        let inst = tiny_seq(preset, |_| {});
        let (errs, crossings) = sym_ep_errors(&inst, &[1e-3, 2e-3]);
        println!("{preset}: ep_centered vs BPTT rel_l2 at β = 1e-3: {:.3e}, at 2e-3: {:.3e}", errs[0], errs[1]);
        assert_eq!(crossings, 0, "{preset}: kink crossing at small β makes the check inconclusive");
        // The bias of the centered estimate is O(β²) (conventions §7.3): bounded by the scored GDU constant
        // c·β² with c = 10 (checks §3), and it quadruples when β doubles (round-off ≈ 1e-16/β is far below).
        assert!(errs[0] <= 10.0 * 1e-3 * 1e-3, "{preset}: rel err {} > 10·β²", errs[0]);
        let ratio = errs[1] / errs[0];
        assert!((3.5..=4.5).contains(&ratio), "{preset}: error ratio for 2β vs β = {ratio} (want ≈ 4)");
    }
}

#[test]
fn gdu_series_match_bptt_and_neurons_match_attention_jacobian_times_bptt() {
    for preset in PRESETS {
        let inst = tiny_seq(preset, |_| {});
        let (m, p, batch) = (&inst.model, &inst.params, &inst.batch);
        let k = 10usize;
        let o = gdu::GduOptions { verify_quadratic: true, ..gdu::GduOptions::theorem(40, k as i64, 1e-3) };
        let g = gdu::compute_series(m, p, batch, m.zeros_state(3, inst.prec), &o);
        assert_eq!(g.plus.kink_changes + g.minus.kink_changes, 0, "{preset}: kink crossing");
        let n_attn = if preset == "imdb-hopfield" { 1 } else { 4 };
        let mut attn_checked = 0;
        for t in 0..k {
            for (i, spec) in m.params.iter().enumerate() {
                let ep = flat(&[(&g.plus.theta[t][i] + &g.minus.theta[t][i]) * 0.5]);
                let bp = flat(&[g.bptt_theta[t][i].shallow_clone()]);
                let series_norm = (0..k).flat_map(|u| flat(&[g.bptt_theta[u][i].shallow_clone()])).map(|v| v * v).sum::<f64>().sqrt();
                let diff = ep.iter().zip(&bp).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
                assert!(diff <= 10.0 * 1e-6 * series_norm, "{preset} t={t} {}: ep_sym vs bptt {diff} vs series norm {series_norm}", spec.name);
            }
            for j in 0..m.layers.len() {
                let ep = flat(&[(&g.plus.neurons[t][j] + &g.minus.neurons[t][j]) * 0.5]);
                let bj = flat(&[g.bptt_j[t][j].shallow_clone()]);
                let series_norm = (0..k).flat_map(|u| flat(&[g.bptt_j[u][j].shallow_clone()])).map(|v| v * v).sum::<f64>().sqrt();
                let diff = ep.iter().zip(&bj).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
                assert!(diff <= 10.0 * 1e-6 * series_norm.max(1e-300), "{preset} t={t} L{}: ep_sym vs J·bptt {diff} vs {series_norm}", j + 1);
                if j < n_attn && bj.iter().any(|v| *v != 0.0) {
                    // On attention layers J is the attention Hessian, far from the identity: the raw series
                    // does not match, the J-corrected one does.
                    let raw = flat(&[g.bptt_s[t][j].shallow_clone()]);
                    assert!(rel_l2(&ep, &raw) > 0.1, "{preset} t={t} L{}: raw BPTT_s should not match", j + 1);
                    attn_checked += 1;
                }
            }
        }
        assert!(attn_checked > 0, "{preset}: no non-zero attention neuron series");
        // J·BPTT_s on attention layers is the map's Jacobian at the free fixed point's drive.
        let s_t = &g.traj[k];
        for j in 0..n_attn {
            let u = m.drive(p, batch, s_t, j, 0.0);
            for t in 0..k {
                let want = m.update_map(j).unwrap().jacobian_apply(batch, &u, &g.bptt_s[t][j]);
                assert!(want.equal(&g.bptt_j[t][j]), "{preset} t={t} L{}: bptt_j is J·bptt_s", j + 1);
            }
        }
        let report = gdu::run(&inst, &o);
        assert_eq!(report.overall, checks::Verdict::Pass, "{preset}: {:?}", report.verdicts.iter().filter(|v| v.verdict != "pass").collect::<Vec<_>>());
    }
}

#[test]
fn holomorphic_preflight_admits_attention_and_refuses_the_clamp_heads() {
    // The attention map is holomorphic (estimators §3.6); the presets' my_hard_sig heads are not, and the refusal
    // names the first of them.
    let inst = tiny_seq("imdb-hopfield", |_| {});
    let len = PhaseLengths { t_free: 5, k_nudge: 5, tol: None };
    let e = estimators::estimate(Estimator::EpHolomorphic, &inst.model, &inst.params, &inst.batch, 0.1, len).err().expect("refused");
    assert_eq!(e.to_string(), "unsupported estimator for this model: L2: my_hard_sig");
    let inst = tiny_seq("imdb-hopfield", |c| c.activation = "tanh".into());
    assert!(estimators::estimate(Estimator::EpHolomorphic, &inst.model, &inst.params, &inst.batch, 0.1, len).is_ok());
}

#[test]
fn wrong_embedding_dimension_is_a_clear_error() {
    let _rng = epcheck::tensor_util::rng_lock();
    let inst = tiny_seq("imdb-hopfield", |_| {});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let x = Tensor::randn([3, 5, 7], CPU);
    let y = Tensor::from_slice(&[0i64, 1, 0]);
    epcheck::io::write_tensors(&path, &[("input.x".into(), x), ("input.y".into(), y)], Default::default()).unwrap();
    let e = epcheck::io::load_batch(&inst.model, &path, inst.prec).err().expect("rejected");
    let msg = e.to_string();
    assert!(msg.contains("shape mismatch") && msg.contains("[5, 4]"), "{msg}");
    // A bad option value is a configuration error, not a panic.
    let mut cfg = RunConfig::preset_defaults("snli-hopfield").unwrap();
    cfg.attention_mask = Some("queries".into());
    assert!(matches!(Instance::from_config(cfg), Err(epcheck::Error::Config(_))));
}

#[test]
fn one_relaxation_step_timing_tiny() {
    for preset in PRESETS {
        let inst = tiny_seq(preset, |_| {});
        let s = inst.model.zeros_state(3, inst.prec);
        let n = 200;
        let t0 = std::time::Instant::now();
        let ph = epcheck::relax::relax(&inst.model, &inst.params, &inst.batch, &s, 0.0, &epcheck::relax::RelaxOptions { iters: n, no_trace: true, ..Default::default() });
        let dt = t0.elapsed().as_secs_f64() / n as f64;
        println!("{preset}: one relaxation step (B = 3, tiny) = {:.1} µs", dt * 1e6);
        assert!(epcheck::tensor_util::all_finite(&ph.state[0]));
    }
}

#[test]
fn total_energy_is_finite_along_the_free_phase_and_converge_passes() {
    use epcheck::checks::converge;
    for preset in PRESETS {
        let inst = tiny_seq(preset, |_| {});
        let (m, p, batch) = (&inst.model, &inst.params, &inst.batch);
        let ph = epcheck::relax::relax(m, p, batch, &m.zeros_state(3, inst.prec), 0.0, &epcheck::relax::RelaxOptions { iters: 40, record: true, ..Default::default() });
        // Every state after the first update lies in the convex hull of its keys: 𝓕 is finite there.
        for (t, s) in ph.traj.as_ref().unwrap().iter().enumerate().skip(1) {
            let f = flat(&[m.total_energy(p, batch, s, 0.0)]);
            assert!(f.iter().all(|v| v.is_finite()), "{preset} t={t}: 𝓕 = {f:?}");
        }
        let o = converge::ConvergeOptions { t_free: 40, k_nudge: 20, beta: 1e-3, tol: 1e-10, power_iters: 20, require_contraction: false, phases: vec!["plus".into()], seed: 0 };
        let report = converge::run(&inst, &o);
        assert_eq!(report.overall, checks::Verdict::Pass, "{preset}");
        let viol: f64 = report.metrics.iter().filter(|r| r.metric == "F_violations").map(|r| r.value).sum();
        assert_eq!(viol, 0.0, "{preset}: 𝓕 increased along a parity chain");
    }
}

#[test]
fn weighted_param_derivative_on_attention_presets() {
    let _rng = epcheck::tensor_util::rng_lock();
    for preset in PRESETS {
        check_weighted_derivative(&tiny_seq(preset, |_| {}), false);
    }
}

#[test]
fn complex_attention_equals_the_native_complex_softmax() {
    let _rng = epcheck::tensor_util::rng_lock();
    // Holomorphic EP through the attention map (estimators §3.6–3.7): at a complex drive, our weights (real max
    // shift, masks on the exponentials) against libtorch's native complex exp and complex GEMM with no shift.
    let (b, l, d, c) = (3, 5, 4, 0.7);
    let x = keys_with_padding(b, l, d);
    let batch = batch_of(x.shallow_clone());
    tch::manual_seed(epcheck::tensor_util::test_seed(17));
    let u = Tensor::complex(&(Tensor::randn([b, l, d], CPU) * 1.5), &(Tensor::randn([b, l, d], CPU) * 0.3));
    let xc = x.to_kind(Kind::ComplexDouble);
    let valid = x.ne(0.0).any_dim(-1, false).to_kind(Kind::ComplexDouble); // (B, L)
    for mask in MASKS {
        let a = Attention::new(SeqSlice::new(0, 0, l), SeqSlice::new(0, 0, l), c, mask);
        let got = a.apply(&batch, &u);
        let mut e = (u.matmul(&xc.transpose(1, 2)) * c).exp();
        if mask != AttentionMask::Off {
            e = e * valid.unsqueeze(1);
        }
        let den = e.sum_dim_intlist(Some(&[-1i64][..]), true, None::<Kind>);
        let den = den.where_self(&den.abs().gt(0.0), &den.ones_like());
        let mut want = (e / den).matmul(&xc);
        if mask == AttentionMask::KeysAndQueries {
            want = want * valid.unsqueeze(-1);
        }
        let err = ((&got - &want).abs().max() / want.abs().max()).double_value(&[]);
        assert!(err <= 1e-13, "{mask:?}: complex attention vs native: {err}");
        // On real drives the complex path is the real map.
        let ur = u.real().contiguous();
        let cr = a.apply(&batch, &Tensor::complex(&ur, &ur.zeros_like()));
        let dr = (cr.real() - a.apply(&batch, &ur)).abs().max().double_value(&[]) + cr.imag().abs().max().double_value(&[]);
        assert!(dr <= 1e-14, "{mask:?}: complex path on real drives {dr}");
    }
}

#[test]
fn holomorphic_ep_through_attention_with_smooth_heads_matches_implicit() {
    // The attention presets with their clamp heads replaced by the smooth surrogate holotanh(4) are admissible
    // (estimators §3.6); holomorphic EP N = 1…8 against implicit differentiation of the same model, at a radius
    // inside the disc of analyticity of s*(β): |β| = 0.05 for IMDB; the tiny SNLI instance's disc is smaller
    // (at |β| = 0.05, with converged points: 0.55, 0.31, 9.9e-3, 4.6e-5 for N = 1, 2, 4, 8), so |β| = 0.01.
    for (preset, r) in [("imdb-hopfield", 0.05), ("snli-hopfield", 0.01)] {
        check_holomorphic_vs_implicit(&tiny_seq(preset, |c| c.activation = "holotanh(4)".into()), r, 400, &format!("{preset} holotanh(4)"));
    }
}
