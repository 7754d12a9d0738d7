//! Oracle tests of the convolutional Hopfield nets (conv-hopfield.md), float64, tiny instances: operator
//! identities (adjoint, output padding, first-index tie-break), drives and local gradients against autograd of Φ
//! and an independent im2col form, step VJP against autograd, BPTT against finite differences, symmetric EP
//! against BPTT, and the GDU check on a tiny Hopfield-ResNet13.
mod common;
use common::*;
use epcheck::checks::{self, gdu};
use epcheck::config::RunConfig;
use epcheck::estimators::{self, bptt, Estimator, PhaseLengths};
use epcheck::instance::Instance;
use epcheck::model::terms::conv::ConvGeom;
use epcheck::model::terms::conv_pool::{backend_first_index_ties, pool_first_max, unpool};
use epcheck::model::{Batch, Model};
use tch::{Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Double, Device::Cpu);

fn random_state(m: &Model, b: i64, seed: i64) -> Vec<Tensor> {
    let _rng = epcheck::tensor_util::rng_lock();
    tch::manual_seed(epcheck::tensor_util::test_seed(seed));
    m.layers
        .iter()
        .map(|l| {
            let mut shape = vec![b];
            shape.extend(&l.shape);
            Tensor::rand(&shape[..], CPU) * 2.0 - 0.3
        })
        .collect()
}

fn inner(a: &Tensor, b: &Tensor) -> f64 {
    (a * b).sum(Kind::Double).double_value(&[])
}

#[test]
fn conv_adjoint_is_exact_with_output_padding_per_axis() {
    let _rng = epcheck::tensor_util::rng_lock();
    tch::manual_seed(epcheck::tensor_util::test_seed(0));
    // (kernel, stride, pad, H_pre): stride-2 3×3 and 1×1 on even and odd sizes, stride 1.
    for (k, st, p, h) in [(3, 2, 1, 8), (3, 2, 1, 7), (1, 2, 0, 8), (1, 2, 0, 9), (3, 1, 1, 6), (3, 2, 1, 2), (1, 2, 0, 1)] {
        let g = ConvGeom::new(k, st, p, [h, h]);
        let expect_op = if st == 1 { 0 } else if h % 2 == 0 { 1 } else { 0 };
        assert_eq!(g.out_pad, [expect_op, expect_op], "k={k} st={st} H={h}");
        let w = Tensor::randn([4, 3, k, k], CPU);
        let x = Tensor::randn([2, 3, h, h], CPU);
        let z = g.forward(&x, &w);
        let ho = ConvGeom::out_size(k, st, p, h);
        assert_eq!(z.size(), [2, 4, ho, ho]);
        let y = Tensor::randn(&z.size()[..], CPU);
        let back = g.adjoint(&y, &w);
        assert_eq!(back.size(), x.size(), "adjoint restores the pre size");
        let (l, r) = (inner(&z, &y), inner(&x, &back));
        assert!((l - r).abs() <= 1e-12 * l.abs().max(1.0), "⟨conv x, y⟩ = {l} vs ⟨x, convT y⟩ = {r}");
        // Positions that no forward output reads receive exactly zero.
        if k == 1 && st == 2 && h > 1 {
            let odd = back.narrow(2, 1, 1);
            assert_eq!(odd.abs().max().double_value(&[]), 0.0, "1×1 stride 2: odd rows get nothing");
        }
    }
}

#[test]
fn conv_weight_gradient_equals_im2col_correlation() {
    let _rng = epcheck::tensor_util::rng_lock();
    tch::manual_seed(epcheck::tensor_util::test_seed(1));
    for (k, st, p, h) in [(3, 2, 1, 8), (3, 2, 1, 7), (1, 2, 0, 8), (3, 1, 1, 5)] {
        let g = ConvGeom::new(k, st, p, [h, h]);
        let pre = Tensor::randn([3, 2, h, h], CPU);
        let ho = ConvGeom::out_size(k, st, p, h);
        let post = Tensor::randn([3, 4, ho, ho], CPU);
        // Independent form: dW[o, (c, ky, kx)] = Σ_{b, l} post[b, o, l] · unfold(pre)[b, (c, ky, kx), l].
        let cols = pre.im2col([k, k], [1, 1], [p, p], [st, st]);
        let dw = post.reshape([3, 4, -1]).matmul(&cols.transpose(1, 2)).sum_dim_intlist(Some(&[0i64][..]), false, Kind::Double).reshape([4, 2, k, k]);
        let e = rel_linf(&flat(&[g.weight_grad(&pre, &post)]), &flat(&[dw]));
        assert!(e <= 1e-13, "k={k} st={st} H={h}: {e}");
    }
}

#[test]
fn max_pool_breaks_ties_at_the_first_position_and_unpool_scatters_there() {
    assert!(backend_first_index_ties(Device::Cpu), "libtorch CPU max-pool is first-index (else epcheck uses the explicit argmax)");
    // Every window planted with ties; the expected argmax is the first maximal position of the row-major scan.
    let windows: [[f64; 4]; 6] = [[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 2.0, 0.0], [0.0, 0.0, 3.0, 3.0], [5.0, 1.0, 5.0, 1.0], [-1.0, -2.0, -1.0, -1.0], [0.0, 0.0, 0.0, 0.0]];
    let expect_q = [0, 1, 2, 0, 0, 0];
    let n = windows.len() as i64;
    let mut z = vec![0.0; 4 * windows.len()];
    for (i, w) in windows.iter().enumerate() {
        z[2 * i] = w[0];
        z[2 * i + 1] = w[1];
        z[2 * n as usize + 2 * i] = w[2];
        z[2 * n as usize + 2 * i + 1] = w[3];
    }
    let z = Tensor::from_slice(&z).reshape([1, 1, 2, 2 * n]);
    let (v, idx) = pool_first_max(&z);
    for (i, q) in expect_q.iter().enumerate() {
        let want = (q / 2) * (2 * n) + 2 * i as i64 + q % 2;
        assert_eq!(idx.int64_value(&[0, 0, 0, i as i64]), want, "window {i}");
        assert_eq!(v.double_value(&[0, 0, 0, i as i64]), windows[i].iter().cloned().fold(f64::NEG_INFINITY, f64::max));
    }
    let up = unpool(&v, &idx, 2, 2 * n);
    assert_eq!(up.sum(Kind::Double).double_value(&[]), v.sum(Kind::Double).double_value(&[]));
    assert_eq!(up.ne(0.0).sum(Kind::Int64).int64_value(&[]), v.ne(0.0).sum(Kind::Int64).int64_value(&[]));
}

#[test]
fn drives_and_local_gradients_equal_autograd_of_phi() {
    let _rng = epcheck::tensor_util::rng_lock();
    let cases: Vec<(&str, Instance)> = vec![
        ("resnet13 H=8", tiny_resnet(8, |_| {})),
        ("resnet13 H=9 (odd, op=0)", tiny_resnet(9, |_| {})),
        ("resnet13 skips=none", tiny_resnet(8, |c| c.skips = Some("none".into()))),
        ("vgg5 H=16", tiny_vgg(|_| {})),
    ];
    for (name, inst) in &cases {
        let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
        for beta in [0.0, 0.3] {
            let s = random_state(m, 2, 7);
            let auto = m.drives_autograd(p, b, &s, beta);
            for k in 0..m.layers.len() {
                let d = m.drive(p, b, &s, k, beta);
                let e = rel_linf(&flat(&[d]), &flat(&[auto[k].shallow_clone()]));
                assert!(e <= 1e-12, "{name} β={beta} L{}: drive vs autograd {e}", k + 1);
            }
        }
        let s = random_state(m, 2, 8);
        let local = m.param_derivative(p, b, &s);
        let auto = m.param_derivative_autograd(p, b, &s);
        for (i, spec) in m.params.iter().enumerate() {
            let e = rel_linf(&flat(&[local[i].shallow_clone()]), &flat(&[auto[i].shallow_clone()]));
            assert!(e <= 1e-12, "{name} {}: local vs autograd {e}", spec.name);
        }
    }
}

#[test]
fn parameter_counts_at_paper_size() {
    // conv-hopfield.md §2.3 and §3.2: 9,742,858 and 3,859,210 scalars at the defaults.
    for (preset, want, tensors) in [("hopfield-resnet13", 9_742_858i64, 22usize), ("vgg5-dchn", 3_859_210, 10)] {
        let cfg = RunConfig::preset_defaults(preset).unwrap();
        let m = epcheck::model::presets::build(&cfg).unwrap();
        let n: i64 = m.params.iter().map(|p| p.shape.iter().product::<i64>()).sum();
        assert_eq!((n, m.params.len()), (want, tensors), "{preset}");
    }
    let mut cfg = RunConfig::preset_defaults("hopfield-resnet13").unwrap();
    cfg.skips = Some("none".into());
    assert_eq!(epcheck::model::presets::build(&cfg).unwrap().params.len(), 18);
}

#[test]
fn step_vjp_equals_autograd_async2_sync_and_pool() {
    let _rng = epcheck::tensor_util::rng_lock();
    for (name, inst) in [("resnet13", tiny_resnet(8, |_| {})), ("vgg5", tiny_vgg(|_| {})), ("resnet13 sync", tiny_resnet(9, |c| c.schedule = Some("sync".into())))] {
        for beta in [0.0, 0.4] {
            let s = random_state(&inst.model, 2, 3);
            let lam = random_state(&inst.model, 2, 5);
            let (hs, hp) = inst.model.step_vjp(&inst.params, &inst.batch, &s, &lam, beta);
            let (as_, ap) = inst.model.step_vjp_autograd(&inst.params, &inst.batch, &s, &lam, beta);
            let (e_s, e_p) = (rel_linf(&flat(&hs), &flat(&as_)), rel_linf(&flat(&hp), &flat(&ap)));
            assert!(e_s <= 1e-12 && e_p <= 1e-12, "{name} β={beta}: state {e_s}, params {e_p}");
        }
    }
}

fn loss_fixed_t(m: &Model, p: &[Tensor], batch: &Batch, t: i64) -> f64 {
    let f = estimators::free_phase(m, p, batch, PhaseLengths { t_free: t, k_nudge: 1, tol: None }, false);
    m.mean_loss(p, batch, &f.state).double_value(&[])
}

#[test]
fn bptt_equals_central_finite_differences_away_from_ties() {
    let _rng = epcheck::tensor_util::rng_lock();
    for (name, inst) in [("resnet13", tiny_resnet(8, |_| {})), ("vgg5", tiny_vgg(|_| {}))] {
        let t = 30;
        let (g, _) = bptt::full(&inst.model, &inst.params, &inst.batch, t);
        let g = flat(&g.tensors);
        let gnorm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        tch::manual_seed(epcheck::tensor_util::test_seed(99));
        for dir in 0..3 {
            let v: Vec<Tensor> = inst.params.iter().map(|p| p.randn_like()).collect();
            let vn = flat(&v).iter().map(|x| x * x).sum::<f64>().sqrt();
            let v: Vec<Tensor> = v.into_iter().map(|x| x / vn).collect();
            let d = |e: f64| {
                let pp: Vec<Tensor> = inst.params.iter().zip(&v).map(|(p, v)| p + v * e).collect();
                let pm: Vec<Tensor> = inst.params.iter().zip(&v).map(|(p, v)| p - v * e).collect();
                (loss_fixed_t(&inst.model, &pp, &inst.batch, t) - loss_fixed_t(&inst.model, &pm, &inst.batch, t)) / (2.0 * e)
            };
            // Piecewise-linear units (relu6, max-pool): a small step stays inside one linear piece, where the
            // central difference is exact up to rounding.
            let eps = 1e-6;
            let (d1, d2) = (d(eps), d(eps / 2.0));
            let proj: f64 = g.iter().zip(flat(&v)).map(|(a, b)| a * b).sum();
            let scale = proj.abs().max(gnorm / (g.len() as f64).sqrt());
            assert!((d1 - d2).abs() / scale <= 1e-6, "{name} direction {dir}: FD unstable ({d1} vs {d2}): a kink or tie inside the step");
            let err = (d2 - proj).abs() / scale;
            assert!(err <= 1e-6, "{name} direction {dir}: FD {d2} vs BPTT {proj} (rel {err})");
        }
    }
}

#[test]
fn symmetric_ep_matches_bptt_at_small_beta() {
    // Converged phases (T = 300, K = 200; the residuals are at rounding level): symmetric EP's error is O(β²).
    let len = PhaseLengths { t_free: 300, k_nudge: 200, tol: None };
    for (name, inst) in [("resnet13", tiny_resnet(8, |_| {})), ("vgg5", tiny_vgg(|_| {}))] {
        let (g, _) = bptt::full(&inst.model, &inst.params, &inst.batch, 300);
        let gref = flat(&g.tensors);
        let mut errs = Vec::new();
        for beta in [1e-3, 1e-2] {
            let est = estimators::estimate(Estimator::EpCentered, &inst.model, &inst.params, &inst.batch, beta, len).unwrap();
            errs.push(rel_l2(&flat(&est.grad.tensors), &gref));
        }
        println!("{name}: symmetric EP rel_l2 vs BPTT at β = 1e-3: {:.3e}, 1e-2: {:.3e}", errs[0], errs[1]);
        assert!(errs[0] <= 1e-5, "{name}: β = 1e-3 error {}", errs[0]);
        // Quadratic: ten times β gives about a hundred times the error.
        let ratio = errs[1] / errs[0];
        assert!((50.0..=200.0).contains(&ratio), "{name}: error ratio {ratio} for β ×10 (expect ≈ 100)");
    }
}

#[test]
fn gdu_check_passes_on_tiny_resnet13_under_sync() {
    let inst = tiny_resnet(8, |c| c.schedule = Some("sync".into()));
    let o = gdu::GduOptions { verify_quadratic: true, ..gdu::GduOptions::theorem(60, 12, 1e-3) };
    let report = gdu::run(&inst, &o);
    assert_eq!(report.overall, checks::Verdict::Pass, "{:?}", report.verdicts.iter().filter(|v| v.verdict != "pass").collect::<Vec<_>>());
    // Under async2 the per-step identity does not hold (conventions §7.5): the check says so instead of failing.
    let inst = tiny_resnet(8, |_| {});
    let report = gdu::run(&inst, &o);
    assert!(matches!(report.overall, checks::Verdict::Inconclusive(_)), "{:?}", report.overall);
}

#[test]
fn structural_max_pool_ties_are_counted() {
    let _rng = epcheck::tensor_util::rng_lock();
    // A pre layer that is exactly zero makes every window of its pooled coupling a 4-way tie (the conv has no
    // bias), conv-hopfield.md §11; random states make none.
    let inst = tiny_vgg(|_| {});
    let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
    let mut s = random_state(m, 2, 4);
    let ties = m.pool_ties(p, b, &s);
    assert_eq!(ties.len(), 4, "one entry per pooled coupling");
    assert!(ties.iter().all(|t| t.1 == 0), "random states: no ties");
    s[0] = s[0].zeros_like();
    let ties = m.pool_ties(p, b, &s);
    // L1 = 0 → every window of W.1_2 (L1 → L2) is tied: B · n2 · (H/4)².
    assert_eq!(ties[1].1, 2 * 4 * 4 * 4);
    // First-index tie-break: every argmax is the top-left position of its window, 2i·W + 2j.
    let w = 8i64;
    let expect = (Tensor::arange(4, (Kind::Int64, Device::Cpu)).reshape([4, 1]) * 2 * w + Tensor::arange(4, (Kind::Int64, Device::Cpu)).reshape([1, 4]) * 2).expand([2, 4, 4, 4], false);
    assert!(ties[1].2.equal(&expect), "first-index argmax on tied windows");
}

#[test]
fn weighted_param_derivative_on_conv_nets() {
    let _rng = epcheck::tensor_util::rng_lock();
    // Centered and one-sided EP take f through the weighted path: conv, pooled conv (linear in its post slot,
    // argmax from pre), skips and dense heads.
    check_weighted_derivative(&tiny_resnet(8, |_| {}), false);
    check_weighted_derivative(&tiny_vgg(|_| {}), false);
}

#[test]
fn complex_conv_operators_equal_libtorch_native_complex_convolution() {
    let _rng = epcheck::tensor_util::rng_lock();
    // Holomorphic EP on conv nets: forward, adjoint and weight gradient on complex states (W real) in planar form,
    // against libtorch's native complex conv2d / conv_transpose2d and the autograd weight gradient of
    // Σ conv(pre, W)·post with a complex W leaf (Wirtinger recipe), for stride 1 and 2, even and odd sizes.
    let c = |shape: &[i64]| Tensor::complex(&Tensor::randn(shape, CPU), &Tensor::randn(shape, CPU));
    let cplx = |t: &Tensor| t.to_kind(Kind::ComplexDouble);
    tch::manual_seed(epcheck::tensor_util::test_seed(21));
    for (k, st, p, h) in [(3, 1, 1, 6), (3, 2, 1, 8), (3, 2, 1, 9), (1, 2, 0, 8)] {
        let g = ConvGeom::new(k, st, p, [h, h]);
        let w = Tensor::randn([4, 3, k, k], CPU);
        let x = c(&[2, 3, h, h]);
        let ho = ConvGeom::out_size(k, st, p, h);
        let z = c(&[2, 4, ho, ho]);
        let d = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        let fwd = x.conv2d(&cplx(&w), None::<Tensor>, [st, st], [p, p], [1, 1], 1);
        assert!(d(&g.forward(&x, &w), &fwd) <= 1e-12, "forward k{k} s{st} h{h}");
        let adj = z.conv_transpose2d(&cplx(&w), None::<Tensor>, [st, st], [p, p], g.out_pad, 1, [1, 1]);
        assert!(d(&g.adjoint(&z, &w), &adj) <= 1e-12, "adjoint k{k} s{st} h{h}");
        let wl = cplx(&w).set_requires_grad(true);
        let phi = (x.conv2d(&wl, None::<Tensor>, [st, st], [p, p], [1, 1], 1) * &z).sum(Kind::ComplexDouble);
        let want = epcheck::tensor_util::holomorphic_grads(&phi, &[&wl]).remove(0);
        assert!(d(&g.weight_grad(&x, &z), &want) <= 1e-11, "weight grad complex×complex k{k} s{st} h{h}");
        let xr = x.real().contiguous();
        let want_r = epcheck::tensor_util::holomorphic_grads(&(xr.to_kind(Kind::ComplexDouble).conv2d(&wl, None::<Tensor>, [st, st], [p, p], [1, 1], 1) * &z).sum(Kind::ComplexDouble), &[&wl]).remove(0);
        assert!(d(&g.weight_grad(&xr, &z), &want_r) <= 1e-11, "weight grad real×complex k{k} s{st} h{h}");
    }
}

#[test]
fn holomorphic_ep_on_resnet13_with_holotanh_surrogates_matches_implicit() {
    let _rng = epcheck::tensor_util::rng_lock();
    // Tiny Hopfield-ResNet13 (stride-2 convs, 1×1 skips) with its clamps replaced by the smooth surrogate
    // holotanh(4) (estimators §3.6: admissible; every reference uses the same surrogate), sync schedule.
    let inst = tiny_resnet(8, |c| {
        c.activation = "holotanh(4)".into();
        c.schedule = Some("sync".into());
    });
    check_holomorphic_vs_implicit(&inst, 0.05, 400, "resnet13 holotanh(4)");
    let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
    let free = estimators::free_phase(m, p, b, PhaseLengths { t_free: 400, k_nudge: 0, tol: None }, false);
    // The planar complex relaxation (CPU default) equals the interleaved one on this model too.
    use epcheck::model::Beta;
    use epcheck::relax::{relax_stacked, RelaxOptions};
    tch::manual_seed(epcheck::tensor_util::test_seed(8));
    let init: Vec<Tensor> = free.state.iter().map(|t| Tensor::complex(t, &(t.randn_like() * 0.05))).collect();
    let beta = Beta::Rows(Tensor::complex(&Tensor::full([b.size(), 1], 0.03, CPU), &Tensor::full([b.size(), 1], -0.04, CPU)));
    let opts = RelaxOptions { iters: 20, no_trace: true, ..Default::default() };
    let a = relax_stacked(m, p, b, &init, &beta, &[b.size()], &opts).remove(0);
    let c = relax_stacked(m, p, b, &init, &beta, &[b.size()], &RelaxOptions { interleaved_complex: true, ..opts }).remove(0);
    for (x, y) in a.state.iter().zip(&c.state) {
        assert!((x - y).abs().max().double_value(&[]) <= 1e-13);
    }
}
