//! Oracle tests of holomorphic EP and the exact references (implicit differentiation, finite differences),
//! float64 / complex128.
mod common;
use common::*;
use epcheck::estimators::ep_holomorphic::{self as holo, HoloOptions, HoloSchedule};
use epcheck::estimators::{self, bptt, ep_centered, ep_one_sided, fd, implicit, Estimator, PhaseLengths};
use tch::{Kind, Tensor};

#[test]
fn wirtinger_recipe_z_squared_at_1_plus_2i() {
    let z = Tensor::complex(&Tensor::from_slice(&[1.0f64]), &Tensor::from_slice(&[2.0f64])).set_requires_grad(true);
    let phi = (&z * &z).sum(None::<Kind>);
    let g = epcheck::tensor_util::holomorphic_grads(&phi, &[&z]);
    let (re, im) = (g[0].real().double_value(&[0]), g[0].imag().double_value(&[0]));
    assert_eq!((re, im), (2.0, 4.0), "the holomorphic derivative 2z at 1+2i");
    // libtorch's raw answer is the conjugate: this is what the recipe corrects.
    let raw = Tensor::run_backward(&[(&z * &z).sum(None::<Kind>)], &[&z], false, false);
    assert_eq!(raw[0].imag().double_value(&[0]), -4.0);
}


#[test]
fn holomorphic_closed_form_oracle_all_n_both_schedules() {
    let (inst, g) = scalar_oracle();
    let len = PhaseLengths { t_free: 5, k_nudge: 400, tol: None };
    let free = estimators::free_phase(&inst.model, &inst.params, &inst.batch, len, false);
    for r in [0.05, 0.2, 0.5] {
        for n in [1usize, 2, 3, 4, 8] {
            let want = g / (1.0 - (-r as f64).powi(n as i32));
            let mut variants = vec![HoloOptions::restart(n, true), HoloOptions::restart(n, false)];
            if n >= 2 {
                variants.push(HoloOptions { schedule: HoloSchedule::Carry, ..HoloOptions::restart(n, false) });
            }
            for o in variants {
                let e = holo::estimate(&inst.model, &inst.params, &inst.batch, &free.state, r, len, &o).unwrap();
                let got = flat(&e.grad.tensors)[0];
                assert!((got - want).abs() <= 1e-13 * want.abs(), "N={n} r={r} {:?} shortcut={}: {got} vs {want}", o.schedule, o.shortcut);
            }
        }
    }
}

#[test]
fn holomorphic_identities_n1_is_ep_plus_n2_is_centered_and_leak_vanishes() {
    let inst = tiny("tanh", "mse");
    let len = PhaseLengths { t_free: 800, k_nudge: 800, tol: None };
    let free = estimators::free_phase(&inst.model, &inst.params, &inst.batch, len, false);
    let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
    for beta in [1e-3, 0.1] {
        let plus = flat(&ep_one_sided::estimate(m, p, b, &free, beta, len).0.tensors);
        let cen = flat(&ep_centered::estimate(m, p, b, &free, beta, len).0.tensors);
        let h1 = holo::estimate(m, p, b, &free.state, beta, len, &HoloOptions::restart(1, true)).unwrap();
        let h2 = holo::estimate(m, p, b, &free.state, beta, len, &HoloOptions::restart(2, false)).unwrap();
        assert!(rel_linf(&flat(&h1.grad.tensors), &plus) <= 1e-10, "N=1 vs ep_plus at β={beta}");
        assert!(rel_linf(&flat(&h2.grad.tensors), &cen) <= 1e-10, "N=2 vs ep_centered at β={beta}");
        for n in [3usize, 4, 8] {
            let on = holo::estimate(m, p, b, &free.state, beta, len, &HoloOptions::restart(n, true)).unwrap();
            let off = holo::estimate(m, p, b, &free.state, beta, len, &HoloOptions::restart(n, false)).unwrap();
            assert!(rel_linf(&flat(&on.grad.tensors), &flat(&off.grad.tensors)) <= 1e-11, "shortcut on/off N={n}");
            let leak = off.im_leak.unwrap().1;
            assert!(leak <= 1e-10, "im_leak {leak} at N={n}, β={beta}");
            let auto = holo::estimate(m, p, b, &free.state, beta, len, &HoloOptions { autograd: true, ..HoloOptions::restart(n, false) }).unwrap();
            assert!(rel_linf(&flat(&auto.grad.tensors), &flat(&off.grad.tensors)) <= 1e-12, "autograd (Wirtinger) vs local forms N={n}");
        }
    }
}

#[test]
fn holomorphic_n8_at_half_is_exact_to_1e6_and_error_falls_with_n() {
    // Instance: P-MLP [6, 5, 5, 3], sigmoid, MSE, B = 3, init_scale 0.5, seed 0, output bias shifted by −3.
    // The saturated output (σ′ ≈ 0.05) widens the disc of analyticity of s*(β) (estimators §3.9): with
    // r = 0.5 well inside it, the error falls geometrically with N. (Without the shift R ≈ 2.1 and N = 8
    // gives ≈ 2e-6; tanh/MSE instances have R < 0.5 and their error plateaus, as the spec predicts.)
    let mut inst = tiny("sigmoid", "mse");
    let last = inst.params.len() - 1;
    inst.params[last] = &inst.params[last] - 3.0;
    let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
    let imp = implicit::implicit(m, p, b, &implicit::ImplicitOptions::for_dtype(inst.prec.dtype)).unwrap();
    let gref = flat(&imp.grad.tensors);
    let len = PhaseLengths { t_free: 800, k_nudge: 1500, tol: None };
    let free = estimators::free_phase(m, p, b, len, false);
    let mut errs = vec![];
    for n in [1usize, 2, 4, 8] {
        let e = holo::estimate(m, p, b, &free.state, 0.5, len, &HoloOptions::restart(n, true)).unwrap();
        errs.push(rel_l2(&flat(&e.grad.tensors), &gref));
    }
    eprintln!("holomorphic EP at |β| = 0.5 vs implicit, rel_l2 for N = 1, 2, 4, 8: {errs:?}");
    for w in errs.windows(2) {
        assert!(w[1] < w[0], "error must fall with N: {errs:?}");
    }
    assert!(errs[3] <= 1e-6, "N=8 at |β|=0.5: rel err {}", errs[3]);
}

#[test]
fn preflight_refuses_clamp_naming_the_layer() {
    let inst = tiny("my_hard_sig", "mse");
    let len = PhaseLengths { t_free: 30, k_nudge: 30, tol: None };
    let free = estimators::free_phase(&inst.model, &inst.params, &inst.batch, len, false);
    let e = holo::estimate(&inst.model, &inst.params, &inst.batch, &free.state, 0.1, len, &HoloOptions::restart(4, true)).err().unwrap();
    assert_eq!(e.to_string(), "unsupported estimator for this model: L1: my_hard_sig");
}

#[test]
fn implicit_agrees_with_bptt_at_large_t_and_with_finite_differences() {
    for act in ["tanh", "logistic4"] {
        let inst = tiny(act, "mse");
        let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
        let o = implicit::ImplicitOptions::for_dtype(inst.prec.dtype);
        let imp = implicit::implicit(m, p, b, &o).unwrap();
        let g = flat(&imp.grad.tensors);
        let (bp, _) = bptt::full(m, p, b, 500);
        let e = rel_l2(&g, &flat(&bp.tensors));
        assert!(e <= 1e-10, "{act}: implicit vs bptt(T=500) rel_l2 {e}");
        let theta_norm = flat(p).iter().map(|v| v * v).sum::<f64>().sqrt();
        let gnorm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        for v in fd::directions(p, 4, 0) {
            let d = fd::central(m, p, b, &imp.star.state, &v, 1e-5 * theta_norm, fd::FdMode::Converged, o.star_tol).unwrap();
            let proj = fd::project(&imp.grad.tensors, &v);
            let err = (d.richardson - proj).abs() / proj.abs().max(gnorm / (g.len() as f64).sqrt());
            assert_eq!(d.kink_changes, 0);
            assert!(err <= 1e-6, "{act}: FD {} vs implicit {proj}: {err}", d.richardson);
        }
    }
}

#[test]
fn implicit_reports_fixed_point_not_reached() {
    let inst = tiny("tanh", "mse");
    let mut o = implicit::ImplicitOptions::for_dtype(inst.prec.dtype);
    o.star_max_iter = 3;
    let e = implicit::implicit(&inst.model, &inst.params, &inst.batch, &o).err().unwrap();
    assert!(e.to_string().starts_with("fixed point not reached: r_inf"), "{e}");
    let _ = Estimator::EpPlus;
}

#[test]
fn complex_activations_equal_libtorch_native_kernels() {
    let _rng = epcheck::tensor_util::rng_lock();
    use epcheck::model::activation::Activation;
    tch::manual_seed(epcheck::tensor_util::test_seed(3));
    let o = (Kind::Double, tch::Device::Cpu);
    // Moderate drives (where the native kernels are accurate), plus large real parts for the clamp/select.
    let re = Tensor::cat(&[Tensor::randn([200], o) * 3.0, Tensor::from_slice(&[40.0, -40.0, 300.0, -300.0])], 0);
    let im = Tensor::cat(&[Tensor::randn([200], o) * 0.7, Tensor::from_slice(&[0.3, -0.2, 0.1, 0.0])], 0);
    let z = Tensor::complex(&re, &im);
    for (act, native) in [(Activation::Tanh, z.tanh()), (Activation::Sigmoid, z.sigmoid()), (Activation::Logistic4, ((&z - 0.5) * 4.0).sigmoid())] {
        let got = act.apply(&z);
        assert!(epcheck::tensor_util::all_finite(&got), "{:?}: non-finite", act);
        // Relative to max(1, |σ|): near a pole (tanh at x ≈ 0, y ≈ π/2) both are large.
        let d = ((&got - &native).abs() / native.abs().clamp_min(1.0)).max().double_value(&[]);
        assert!(d <= 1e-14, "{:?}: max |ours − native| / max(1, |native|) = {d}", act);
    }
    // Real inputs through the complex path equal the real maps.
    let x = Tensor::randn([100], o) * 4.0;
    for act in [Activation::Tanh, Activation::Sigmoid, Activation::Logistic4, Activation::Identity] {
        let c = act.apply(&Tensor::complex(&x, &x.zeros_like()));
        let d = (c.real() - act.apply(&x)).abs().max().double_value(&[]) + c.imag().abs().max().double_value(&[]);
        assert!(d <= 1e-15, "{:?}: complex path on real inputs differs by {d}", act);
    }
}

#[test]
fn weighted_param_derivative_equals_plain_derivatives_combined() {
    let _rng = epcheck::tensor_util::rng_lock();
    // The path every EP estimator now takes for f: real (one-sided, centered) and complex (holomorphic).
    for act in ["tanh", "logistic4"] {
        let inst = tiny(act, "mse");
        check_weighted_derivative(&inst, false);
        check_weighted_derivative(&inst, true);
    }
    check_weighted_derivative(&tiny("tanh", "ce"), true);
}

#[test]
fn mixed_real_complex_products_equal_the_complex_gemm() {
    let _rng = epcheck::tensor_util::rng_lock();
    let o = (Kind::Double, tch::Device::Cpu);
    tch::manual_seed(epcheck::tensor_util::test_seed(5));
    let c = |shape: &[i64]| Tensor::complex(&Tensor::randn(shape, o), &Tensor::randn(shape, o));
    let cplx = |t: &Tensor| t.to_kind(Kind::ComplexDouble);
    let cases: Vec<(Tensor, Tensor)> = vec![
        (c(&[7, 5]), Tensor::randn([5, 3], o)),
        (c(&[5, 7]).tr(), Tensor::randn([5, 3], o)),
        (c(&[2, 7, 5]), Tensor::randn([5, 3], o)),
        (c(&[7, 5]), Tensor::randn([3, 5], o).tr()),
        (Tensor::randn([7, 5], o), c(&[5, 3])),
        (Tensor::randn([5, 7], o).tr(), c(&[3, 5]).tr()),
        (Tensor::randn([2, 7, 5], o), c(&[5, 3])),
        (Tensor::randn([2, 7, 5], o), c(&[2, 5, 3])),
    ];
    for (i, (a, b)) in cases.iter().enumerate() {
        let got = epcheck::tensor_util::matmul(a, b);
        let want = cplx(a).matmul(&cplx(b));
        assert_eq!(got.size(), want.size(), "case {i}");
        let d = (&got - &want).abs().max().double_value(&[]);
        assert!(d <= 1e-13, "case {i}: {d}");
    }
}

#[test]
fn complex_tanh_forms_agree_and_stay_finite_at_large_real_parts() {
    let _rng = epcheck::tensor_util::rng_lock();
    use epcheck::model::activation::{complex_tanh_exp, complex_tanh_real};
    let o = (Kind::Double, tch::Device::Cpu);
    tch::manual_seed(epcheck::tensor_util::test_seed(9));
    let re = Tensor::cat(&[Tensor::randn([500], o) * 3.0, Tensor::from_slice(&[0.0, 1e-12, -1e-9, 25.0, -25.0, 400.0, -400.0, 1e300, -1e300])], 0);
    let im = Tensor::cat(&[Tensor::randn([500], o) * 1.5, Tensor::from_slice(&[0.3, -0.2, 1.0, 1.5, -3.0, 2.0, -7.0, 0.5, 100.0])], 0);
    let z = Tensor::complex(&re, &im);
    let (a, b, native) = (complex_tanh_real(&z), complex_tanh_exp(&z), z.narrow(0, 0, 500).tanh());
    assert!(epcheck::tensor_util::all_finite(&a) && epcheck::tensor_util::all_finite(&b));
    // Relative to max(1, |tanh|): near a pole (x ≈ 0, y ≈ π/2) the values, and their rounding, are large.
    let d = |x: &Tensor, y: &Tensor| ((x - y).abs() / y.abs().clamp_min(1.0)).max().double_value(&[]);
    assert!(d(&a, &b) <= 1e-14, "real form vs exp form: {}", d(&a, &b));
    assert!(d(&a.narrow(0, 0, 500), &native) <= 1e-14, "real form vs libtorch complex tanh");
    // Closed forms: tanh(iy) = i tan y; tanh(±large + iy) = ±1.
    let t = complex_tanh_real(&Tensor::complex(&Tensor::zeros([1], o), &Tensor::from_slice(&[0.3])));
    assert!((t.imag().double_value(&[0]) - 0.3f64.tan()).abs() <= 1e-16 && t.real().double_value(&[0]) == 0.0);
    let big = a.narrow(0, 505, 4);
    for (j, want) in [1.0, -1.0, 1.0, -1.0].iter().enumerate() {
        assert_eq!((big.real().double_value(&[j as i64]), big.imag().double_value(&[j as i64])), (*want, 0.0));
    }
}

#[test]
fn planar_complex_relaxation_equals_the_interleaved_one() {
    let _rng = epcheck::tensor_util::rng_lock();
    // Complex phases on the CPU run in planar form (real parts then imaginary parts as 2R real rows); the
    // interleaved complex dtype is the independent path. tanh has its own planar form; logistic4 and sigmoid go
    // through the complex rows; MSE and CE nudges.
    use epcheck::model::Beta;
    use epcheck::relax::{relax_stacked, RelaxOptions};
    for (act, loss) in [("tanh", "mse"), ("tanh", "ce"), ("logistic4", "mse"), ("sigmoid", "ce"), ("identity", "mse")] {
        let inst = tiny(act, loss);
        let (m, p, b) = (&inst.model, &inst.params, &inst.batch);
        let len = PhaseLengths { t_free: 40, k_nudge: 0, tol: None };
        let free = estimators::free_phase(m, p, b, len, false);
        tch::manual_seed(epcheck::tensor_util::test_seed(2));
        let init: Vec<Tensor> = free.state.iter().map(|t| Tensor::complex(t, &(t.randn_like() * 0.05))).collect();
        let n = b.size();
        let re = Tensor::from_slice(&(0..n).map(|i| 0.3 * (i as f64 + 1.0) / n as f64).collect::<Vec<_>>()).reshape([n, 1]);
        let im = Tensor::from_slice(&(0..n).map(|i| if i % 2 == 0 { 0.2 } else { -0.25 }).collect::<Vec<_>>()).reshape([n, 1]);
        let beta = Beta::Rows(Tensor::complex(&re, &im));
        let groups = [1, n - 1];
        let opts = RelaxOptions { iters: 25, no_trace: true, ..Default::default() };
        assert!(epcheck::relax::planar_applies(&init, &beta, &opts));
        let inter_opts = RelaxOptions { interleaved_complex: true, ..opts.clone() };
        assert!(!epcheck::relax::planar_applies(&init, &beta, &inter_opts));
        let planar = relax_stacked(m, p, b, &init, &beta, &groups, &opts);
        let inter = relax_stacked(m, p, b, &init, &beta, &groups, &inter_opts);
        for (g, (a, c)) in planar.iter().zip(&inter).enumerate() {
            assert_eq!(a.iters, c.iters);
            for (l, (x, y)) in a.state.iter().zip(&c.state).enumerate() {
                assert!(epcheck::tensor_util::is_complex(x.kind()), "{act}/{loss}: states come back complex");
                let d = (x - y).abs().max().double_value(&[]);
                assert!(d <= 1e-14, "{act}/{loss}: phase {g} layer {l}: planar vs interleaved differ by {d:e}");
            }
        }
    }
}

#[test]
fn spec_holomorphic_surrogates_values_derivatives_and_complex_forms() {
    let _rng = epcheck::tensor_util::rng_lock();
    use epcheck::model::activation::Activation;
    let o = (Kind::Double, tch::Device::Cpu);
    tch::manual_seed(epcheck::tensor_util::test_seed(4));
    let pi = std::f64::consts::PI;
    // Parsing, aliases and bad parameters.
    assert_eq!(Activation::parse("holotanh(4)").unwrap(), Activation::Holotanh(4.0));
    assert_eq!(Activation::parse("holo_hard_sigmoid(4)").unwrap(), Activation::Holotanh(4.0));
    assert_eq!(Activation::parse("holo_my_hard_sig(1)").unwrap(), Activation::MyHolotanh(1.0));
    assert_eq!(Activation::parse("my_cos(0.5)").unwrap().describe(), "my_cos(0.5)");
    for bad in ["holotanh", "holotanh(0)", "my_cos(-1)", "my_holotanh(x)"] {
        assert!(Activation::parse(bad).is_err(), "{bad}");
    }
    let u = Tensor::randn([400], o) * 3.0;
    let z = Tensor::complex(&(Tensor::randn([400], o) * 3.0), &(Tensor::randn([400], o) * 0.4));
    // Independent forms: libtorch's native complex sigmoid and cos, the spec's formulas written out.
    type Native = fn(&Tensor) -> Tensor;
    let cases: [(&str, Native); 4] = [
        ("silu", |z| z * z.sigmoid()),
        ("holotanh(4)", |z| z * (z * 4.0).sigmoid() + (1.0 - z) * ((z - 1.0) * 4.0).sigmoid()),
        ("my_holotanh(1)", |z| z * z.sigmoid() * 0.5 + (1.0 - z * 0.5) * (z - 2.0).sigmoid()),
        ("my_cos(0.5)", |z| (1.0 - (z * (0.5 * std::f64::consts::PI)).cos()) * 0.5),
    ];
    for (key, native) in cases {
        let act = Activation::parse(key).unwrap();
        assert!(act.is_holomorphic() && act.kinks().is_none(), "{key}");
        // σ′ against autograd of σ.
        let x = u.detach().set_requires_grad(true);
        let g = Tensor::run_backward(&[act.apply(&x).sum(Kind::Double)], &[&x], false, false).remove(0);
        let d = (&g - act.derivative(&u)).abs().max().double_value(&[]);
        assert!(d <= 1e-13, "{key}: σ′ vs autograd {d:e}");
        // Complex σ against the native complex kernels (relative to max(1, |σ|)).
        let want = native(&z);
        let got = act.apply(&z);
        let d = ((&got - &want).abs() / want.abs().clamp_min(1.0)).max().double_value(&[]);
        assert!(d <= 1e-13, "{key}: complex σ vs native {d:e}");
        // The complex path on real inputs is the real map.
        let c = act.apply(&Tensor::complex(&u, &u.zeros_like()));
        let d = (c.real() - act.apply(&u)).abs().max().double_value(&[]) + c.imag().abs().max().double_value(&[]);
        assert!(d <= 1e-14, "{key}: complex path on real inputs {d:e}");
        // The planar form (the CPU's complex relaxation) agrees.
        let planar = act.apply_planar(&epcheck::tensor_util::to_planar(&z));
        let d = (epcheck::tensor_util::from_planar(&planar) - &got).abs().max().double_value(&[]);
        assert!(d <= 1e-15, "{key}: planar {d:e}");
    }
    // holotanh(a) → clamp(u, 0, 1) as a → ∞ (within 0.28/a: its largest gap is at the kinks).
    let grid = Tensor::linspace(-2.0, 3.0, 501, o);
    for a in [10.0, 100.0, 1000.0] {
        let gap = (Activation::Holotanh(a).apply(&grid) - grid.clamp(0.0, 1.0)).abs().max().double_value(&[]);
        assert!(gap <= 0.28 / a, "holotanh({a}) vs clamp: {gap}");
    }
    // my_cos(a): its pole-free closed form at a point.
    let v = Activation::MyCos(0.5).apply(&Tensor::from_slice(&[1.0f64])).double_value(&[0]);
    assert!((v - 0.5 * (1.0 - (0.5 * pi).cos())).abs() <= 1e-16);
}

#[test]
fn holomorphic_ep_on_the_spec_surrogates_matches_implicit() {
    // P-MLP [6, 5, 5, 3], MSE, B = 3, init_scale 0.5: holomorphic EP N = 1…8 at |β| = 0.05 against implicit
    // differentiation through the same surrogate (estimators §3.6: a surrogate is a different model, and every
    // reference uses it). holotanh(4)'s poles sit π/4 from the real axis, so its disc of analyticity in β is
    // small (R ≈ 0.4 on this instance: errors 0.16, 2.8e-2, 1.6e-3, 5.5e-6 at |β| = 0.1); |β| = 0.05 is well
    // inside it for all four.
    for act in ["silu", "holotanh(4)", "my_holotanh(1)", "my_cos(0.5)"] {
        check_holomorphic_vs_implicit(&tiny(act, "mse"), 0.05, 800, act);
    }
}

#[test]
fn pole_margin_closed_forms_and_per_point_report() {
    use epcheck::model::activation::Activation;
    use std::f64::consts::PI;
    let z = |re: f64, im: f64| Tensor::complex(&Tensor::from_slice(&[re]), &Tensor::from_slice(&[im]));
    let close = |a: f64, b: f64| assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
    // tanh: poles at iπ(m + ½), d = π/2.
    close(Activation::Tanh.pole_margin(&z(0.0, PI / 2.0 - 0.1)), 0.1 / (PI / 2.0));
    close(Activation::Tanh.pole_margin(&z(0.0, -(PI / 2.0 - 0.1))), 0.1 / (PI / 2.0));
    close(Activation::Tanh.pole_margin(&z(0.3, PI)), (0.09f64 + (PI / 2.0).powi(2)).sqrt() / (PI / 2.0));
    close(Activation::Tanh.pole_margin(&Tensor::from_slice(&[5.0f64])), (25.0f64 + (PI / 2.0).powi(2)).sqrt() / (PI / 2.0));
    // logistic4: ½ + iπ(2m+1)/4; holotanh(4): two families, at 0 and 1, d = π/4; my_holotanh(1) at 0 and 2, d = π.
    close(Activation::Logistic4.pole_margin(&z(0.5, PI / 4.0 + 0.05)), 0.05 / (PI / 4.0));
    close(Activation::Holotanh(4.0).pole_margin(&z(1.0, 3.0 * PI / 4.0 - 0.02)), 0.02 / (PI / 4.0));
    close(Activation::MyHolotanh(1.0).pole_margin(&z(2.1, -PI)), 0.1 / PI);
    // Entire maps: no poles.
    assert_eq!(Activation::MyCos(0.5).pole_margin(&z(0.0, 1.0)), f64::INFINITY);
    assert_eq!(Activation::Identity.pole_margin(&z(0.0, 1.0)), f64::INFINITY);
    // Every estimate reports one margin per point: ≥ 1 on the real points ±r, below 1 off the axis.
    let inst = tiny("tanh", "mse");
    let len = PhaseLengths { t_free: 200, k_nudge: 200, tol: None };
    let free = estimators::free_phase(&inst.model, &inst.params, &inst.batch, len, false);
    let e = holo::estimate(&inst.model, &inst.params, &inst.batch, &free.state, 0.5, len, &HoloOptions::restart(8, true)).unwrap();
    assert_eq!(e.pole_margins.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    for &(k, m) in &e.pole_margins {
        if k == 0 || k == 4 {
            assert!(m >= 1.0, "real point {k}: {m}");
        } else {
            assert!(m < 1.0 && m > 0.0, "complex point {k}: {m}");
        }
    }
}
