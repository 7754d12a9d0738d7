//! The streaming GDU check (running device reductions, no K×P buffer) against the former host path used as an
//! oracle: the buffered series of `gdu::compute_series` copied to host float64 and scored by the O(K·E) host
//! functions of `checks::metrics`, exactly as `gdu::run` computed them before streaming. Every metric row and
//! every plotted series row must agree to 1e-12 relative — except the parameter-tensor metrics of float32 runs,
//! whose per-element running sums are float32 (docs/checks.md, "Precision of the GDU metrics"): those agree within
//! the round-off floor the run reports for the tensor (`floor_rel`, an absolute bound: the metrics are errors
//! relative to the reference, and no error below floor_rel is resolved by a float32 series — a verdict within
//! 10·floor_rel of its threshold is `inconclusive: round-off floor`).
mod common;
use common::{tiny, tiny_resnet, tiny_with};
use epcheck::checks::metrics::{self as mx, Series};
use epcheck::checks::{gdu, largest_elements};
use epcheck::config::RunConfig;
use epcheck::instance::Instance;
use epcheck::tensor_util::to_vec_f64;
use std::collections::BTreeMap;
use tch::Tensor;

type Key = (String, String, String, String, String, String, i64);

fn key(scope: &str, name: &str, metric: &str, series: &str, reference: &str, form: &str, t: i64) -> Key {
    (scope.into(), name.into(), metric.into(), series.into(), reference.into(), form.into(), t)
}

fn to_series(steps: &[Tensor]) -> Series {
    let data: Vec<f64> = steps.iter().flat_map(to_vec_f64).collect();
    let k = steps.len();
    Series::new(k, data.len() / k.max(1), data)
}

fn column(steps: &[Vec<Tensor>], i: usize) -> Series {
    to_series(&steps.iter().map(|st| st[i].shallow_clone()).collect::<Vec<_>>())
}

/// Exclusive prefix sums over t (conventions §7.6): cum_excl[0] = 0, cum_excl[k] = Σ_{t<k} a[t].
fn cumsum_excl(a: &Series) -> Series {
    let c = a.cumsum();
    let mut data = vec![0.0; a.e];
    data.extend_from_slice(&c.data[..(a.k.saturating_sub(1)) * a.e]);
    Series::new(a.k, a.e, data)
}

/// The cumulative form the run uses: inclusive, or exclusive under `prefix = exclusive`.
fn cum_of(a: &Series, excl: bool) -> Series {
    if excl {
        cumsum_excl(a)
    } else {
        a.cumsum()
    }
}

fn avg(a: &[Tensor], b: &[Tensor]) -> Vec<Tensor> {
    a.iter().zip(b).map(|(x, y)| (x + y) * 0.5).collect()
}

/// The former host computation of the metric rows (and the plotted series rows) of `gdu::run`.
fn oracle(inst: &Instance, o: &gdu::GduOptions) -> (BTreeMap<Key, f64>, Vec<(String, String, String, i64, i64, f64)>) {
    let (m, p, batch) = (&inst.model, &inst.params[..], &inst.batch);
    let g = gdu::compute_series(m, p, batch, m.zeros_state(batch.size(), inst.prec), o);
    let k = g.k;
    let mut out = BTreeMap::new();
    let sym_theta: Vec<Vec<Tensor>> = (0..k).map(|t| avg(&g.plus.theta[t], &g.minus.theta[t])).collect();
    let sym_neurons: Vec<Vec<Tensor>> = (0..k).map(|t| avg(&g.plus.neurons[t], &g.minus.neurons[t])).collect();
    let bptt_ref: Vec<Series> = (0..p.len()).map(|i| column(&g.bptt_theta, i)).collect();
    let bptt_j_ref: Vec<Series> = (0..m.layers.len()).map(|j| column(&g.bptt_j, j)).collect();
    let bptt_raw: Vec<Series> = (0..m.layers.len()).map(|j| column(&g.bptt_s, j)).collect();
    let series = [("ep_plus", &g.plus.theta, &g.plus.neurons, 1.0), ("ep_minus", &g.minus.theta, &g.minus.neurons, 1.0), ("ep_sym", &sym_theta, &sym_neurons, 2.0)];
    let score = |out: &mut BTreeMap<Key, f64>, scope: &str, name: &str, s: &str, rf: &str, a: &Series, r: &Series, tau: f64| {
        let (lab, lab_std, guard, both_zero) = mx::lab_rmse(a, r);
        let (ern_m, ern_s) = mx::ern_rel(a, r);
        let sig = mx::sign_err_sig(&a.data, &r.data, tau);
        let mut put = |metric: &str, form: &str, v: f64| {
            out.insert(key(scope, name, metric, s, rf, form, -1), v);
        };
        put("rel_l2", "step", mx::rel_l2(&a.data, &r.data));
        put("lab_rmse", "step", lab);
        put("lab_rmse_std", "step", lab_std);
        put("lab_rmse_guard_frac", "step", guard);
        put("both_zero_elems", "step", both_zero as f64);
        put("sign_err", "step", mx::sign_err(&a.data, &r.data));
        if !sig.is_nan() {
            put("sign_err_sig", "step", sig);
        }
        put("ern_rel_mean", "step", ern_m);
        put("ern_rel_std", "step", ern_s);
        put("cos", "step", mx::cos(&a.data, &r.data));
        if scope == "tensor" {
            let excl = o.prefix_exclusive;
            let form = if excl { "cum_excl" } else { "cum" };
            let (ca, cr) = (cum_of(a, excl), cum_of(r, excl));
            let (em, es) = mx::ern_rel(&ca, &cr);
            let (same, zero) = mx::sign_agreement(ca.step(a.k - 1), cr.step(a.k - 1));
            put("ern_rel_mean", form, em);
            put("ern_rel_std", form, es);
            put("same_sign_frac", form, same);
            put("both_zero_frac", form, zero);
        }
        for t in 0..a.k {
            let v = mx::rel_l2(a.step(t), r.step(t));
            if v.is_finite() {
                out.insert(key(scope, name, "rel_l2", s, rf, "step", t as i64), v);
            }
        }
    };
    for (s, theta, neurons, pw) in series {
        let tau = o.sign_floor.unwrap_or((1e-3f64).max(10.0 * o.bias_const * o.beta.powf(pw)));
        for (i, spec) in m.params.iter().enumerate() {
            let a = column(theta, i);
            score(&mut out, "tensor", &spec.name, s, "bptt", &a, &bptt_ref[i], tau);
            if spec.shape.len() >= 2 && s == "ep_sym" {
                let excl = o.prefix_exclusive;
                let last = |x: &Series| cum_of(x, excl).step(k - 1).to_vec();
                let v = mx::sym_ratio(&last(&column(&g.plus.theta, i)), &last(&column(&g.minus.theta, i)), &last(&bptt_ref[i]));
                out.insert(key("tensor", &spec.name, "sym_ratio", s, "", if excl { "cum_excl" } else { "cum" }, -1), v);
            }
        }
        for (j, l) in m.layers.iter().enumerate() {
            let a = column(neurons, j);
            score(&mut out, "neuron_layer", &l.name, s, "bptt_j", &a, &bptt_j_ref[j], tau);
            // Against raw BPTT_s (info): every step-form metric, as the Laborieux printout's neurons.
            score(&mut out, "neuron_layer", &l.name, s, "bptt_raw", &a, &bptt_raw[j], tau);
        }
    }
    if o.verify_quadratic {
        let q = gdu::published_series(m, p, batch, &g.traj);
        let a: Vec<f64> = g.bptt_theta.iter().flat_map(|st| st.iter().flat_map(to_vec_f64).collect::<Vec<_>>()).collect();
        let r: Vec<f64> = q.iter().flat_map(|st| st.iter().flat_map(to_vec_f64).collect::<Vec<_>>()).collect();
        out.insert(key("identity", "Q:one-sweep = published K+1 re-run", "rel_linf", "", "", "", -1), mx::rel_linf(&a, &r));
    }
    // Plotted elements: the largest max_t |reference| (figures show the signal), every series at them.
    let mut rows = vec![];
    for (i, spec) in m.params.iter().enumerate() {
        let (r, a, pl, mi) = (&bptt_ref[i], column(&sym_theta, i), column(&g.plus.theta, i), column(&g.minus.theta, i));
        let score: Vec<f64> = (0..r.e).map(|e| (0..k).map(|t| r.at(t, e).abs()).fold(0.0, f64::max)).collect();
        for e in largest_elements(&score, o.n_elem) {
            for t in 0..k {
                rows.push(("bptt".into(), "param".into(), spec.name.clone(), e as i64, t as i64, r.at(t, e)));
                rows.push(("ep_plus".into(), "param".into(), spec.name.clone(), e as i64, t as i64, pl.at(t, e)));
                rows.push(("ep_minus".into(), "param".into(), spec.name.clone(), e as i64, t as i64, mi.at(t, e)));
                rows.push(("ep_sym".into(), "param".into(), spec.name.clone(), e as i64, t as i64, a.at(t, e)));
            }
        }
    }
    for (j, l) in m.layers.iter().enumerate() {
        let (rj, raw, a, pl, mi) = (&bptt_j_ref[j], &bptt_raw[j], column(&sym_neurons, j), column(&g.plus.neurons, j), column(&g.minus.neurons, j));
        let score: Vec<f64> = (0..rj.e).map(|e| (0..k).map(|t| rj.at(t, e).abs()).fold(0.0, f64::max)).collect();
        for e in largest_elements(&score, o.n_elem) {
            for t in 0..k {
                rows.push(("bptt_j".into(), "neuron".into(), l.name.clone(), e as i64, t as i64, rj.at(t, e)));
                rows.push(("bptt_raw".into(), "neuron".into(), l.name.clone(), e as i64, t as i64, raw.at(t, e)));
                rows.push(("ep_plus".into(), "neuron".into(), l.name.clone(), e as i64, t as i64, pl.at(t, e)));
                rows.push(("ep_minus".into(), "neuron".into(), l.name.clone(), e as i64, t as i64, mi.at(t, e)));
                rows.push(("ep_sym".into(), "neuron".into(), l.name.clone(), e as i64, t as i64, a.at(t, e)));
            }
        }
    }
    (out, rows)
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    a == b || (a - b).abs() <= rel * a.abs().max(b.abs())
}

/// Compares the streamed report with the oracle; returns the largest difference seen, in units of its tolerance.
fn compare(what: &str, inst: &Instance, o: &gdu::GduOptions) -> f64 {
    let (want, want_series) = oracle(inst, o);
    let rep = gdu::run(inst, o);
    // Float32 runs: the tolerance of a tensor's rows is the floor the run states for it (floor_rel of that tensor and
    // series; sym_ratio: the largest of its series').
    let f32_run = inst.params[0].kind() == tch::Kind::Float;
    let floors: BTreeMap<(String, String), f64> = rep.metrics.iter().filter(|r| r.metric == "floor_rel" && r.scope == "tensor").map(|r| ((r.name.clone(), r.series.clone().unwrap_or_default()), r.value)).collect();
    let tol = |k: &Key| -> f64 {
        if !f32_run || k.0 != "tensor" {
            return 1e-12;
        }
        let f = |s: &str| floors.get(&(k.1.clone(), s.to_string())).copied().unwrap_or(f64::NAN);
        let fl = if k.3.is_empty() || k.2 == "sym_ratio" { f("ep_plus").max(f("ep_minus")).max(f("ep_sym")) } else { f(&k.3) };
        assert!(fl.is_finite() && fl > 0.0 && fl < 1e-2, "{what}: floor_rel of {k:?}: {fl}");
        if k.2 == "sym_ratio" {
            // A ratio of errors (|e₃ − e_B| over |e₁ − e_B| + |e₂ − e_B|): each resolved to floor_rel, so the ratio to
            // floor_rel / (the one-sided errors, rel_l2 of EP± against BPTT).
            let rel = |s: &str| want[&key("tensor", &k.1, "rel_l2", s, "bptt", "step", -1)];
            return fl / rel("ep_plus").min(rel("ep_minus"));
        }
        fl
    };
    let mut got: BTreeMap<Key, f64> = BTreeMap::new();
    for r in &rep.metrics {
        if matches!(r.metric.as_str(), "floor_rel" | "drift_rel") || r.scope == "check" || (r.scope == "identity" && !r.name.starts_with("Q:")) {
            continue;
        }
        let k = key(&r.scope, &r.name, &r.metric, r.series.as_deref().unwrap_or(""), r.reference.as_deref().unwrap_or(""), r.series_form.as_deref().unwrap_or(""), r.t.unwrap_or(-1));
        assert!(got.insert(k.clone(), r.value).is_none(), "{what}: duplicate row {k:?}");
    }
    assert_eq!(got.len(), want.len(), "{what}: row sets differ: streamed {:?} vs oracle {:?}", got.keys().filter(|k| !want.contains_key(*k)).collect::<Vec<_>>(), want.keys().filter(|k| !got.contains_key(*k)).collect::<Vec<_>>());
    let mut worst = 0.0f64;
    for (k, w) in &want {
        let v = got[k];
        let tol = tol(k);
        // 1e-12 relative, or (float32 tensor rows) within the stated floor in absolute terms.
        let ok = close(v, *w, tol) || (tol > 1e-12 && (v - w).abs() <= tol);
        assert!(ok, "{what}: {k:?}: streamed {v:e} vs oracle {w:e} (tolerance {tol:e})");
        if v != *w && v.is_finite() {
            worst = worst.max((v - w).abs() / v.abs().max(w.abs()).min(1.0) / tol);
        }
    }
    // Identities I1–I4 are round-off measurements (|Σ series − estimator| at 1e-16): their sums were taken in
    // the run dtype by libtorch's stack-sum, now in float64 running sums; they must pass as before.
    for v in rep.verdicts.iter().filter(|v| v.scope == "identity") {
        assert_eq!(v.verdict, "pass", "{what}: identity {} {}", v.name, v.details);
    }
    assert_eq!(rep.series.len(), want_series.len(), "{what}: series rows");
    for (r, w) in rep.series.iter().zip(&want_series) {
        assert_eq!((&r.series, &r.kind, &r.name, r.element, r.t), (&w.0, &w.1, &w.2, w.3, w.4), "{what}: series row order");
        assert_eq!(r.value, w.5, "{what}: series value {w:?}");
    }
    eprintln!("{what}: {} metric rows, {} series rows, max relative difference / its tolerance {worst:.2e}", want.len(), want_series.len());
    worst
}

#[test]
fn streaming_metrics_equal_the_host_oracle() {
    tch::set_num_threads(1);
    let o = |k: i64| gdu::GduOptions { verify_quadratic: true, ..gdu::GduOptions::theorem(40, k, 1e-3) };
    compare("p-mlp tanh f64 K=20", &tiny("tanh", "mse"), &o(20));
    compare("p-mlp logistic4 f64 K=7", &tiny("logistic4", "mse"), &o(7));
    compare("p-mlp hardsigmoid xent f64 K=17 replay", &tiny("hard_sigmoid", "mse"), &gdu::GduOptions::replay(30, 17, 1e-2));
    compare("p-mlp tanh f32 K=20", &tiny_with("tanh", "mse", |c: &mut RunConfig| c.dtype = "float32".into()), &gdu::GduOptions::replay(40, 20, 1e-2));
    compare("hopfield-resnet13 tiny K=5", &tiny_resnet(8, |_| {}), &gdu::GduOptions { verify_quadratic: true, ..gdu::GduOptions::replay(20, 5, 1e-3) });
    let mut cfg = RunConfig::preset_defaults("imdb-hopfield").unwrap();
    cfg.batch = 3;
    cfg.seq_len = Some(5);
    cfg.embed_dim = Some(4);
    cfg.widths = Some(vec![6, 4, 2]);
    compare("imdb-hopfield tiny K=6", &Instance::from_config(cfg).unwrap(), &gdu::GduOptions::replay(20, 6, 0.5));
    // prefix = exclusive: the cumulative forms and sym_ratio on exclusive prefix sums (rows `cum_excl`).
    let excl = |o: gdu::GduOptions| gdu::GduOptions { prefix_exclusive: true, ..o };
    compare("p-mlp tanh f64 K=20 prefix=exclusive", &tiny("tanh", "mse"), &excl(o(20)));
    compare("p-mlp tanh f32 K=9 prefix=exclusive", &tiny_with("tanh", "mse", |c: &mut RunConfig| c.dtype = "float32".into()), &excl(gdu::GduOptions::replay(40, 9, 1e-2)));
}

/// The libtorch path of the streaming sums (the one CUDA runs; the CPU takes the fused kernels) against the same
/// oracle: f64 at 1e-12, f32 within the floor, `prefix = exclusive` included.
#[test]
fn libtorch_path_of_the_streaming_sums_equals_the_host_oracle() {
    tch::set_num_threads(1);
    gdu::set_fused_kernels(false);
    let o = |k: i64| gdu::GduOptions { verify_quadratic: true, ..gdu::GduOptions::theorem(40, k, 1e-3) };
    compare("libtorch path: p-mlp tanh f64 K=20", &tiny("tanh", "mse"), &o(20));
    compare("libtorch path: p-mlp tanh f32 K=20", &tiny_with("tanh", "mse", |c: &mut RunConfig| c.dtype = "float32".into()), &gdu::GduOptions::replay(40, 20, 1e-2));
    let excl = |o: gdu::GduOptions| gdu::GduOptions { prefix_exclusive: true, ..o };
    compare("libtorch path: p-mlp tanh f64 K=20 prefix=exclusive", &tiny("tanh", "mse"), &excl(o(20)));
    gdu::set_fused_kernels(true);
}

fn row_value(rep: &epcheck::checks::CheckReport, name: &str, metric: &str, series: &str, reference: &str, form: &str) -> f64 {
    let hits: Vec<f64> = rep
        .metrics
        .iter()
        .filter(|r| r.name == name && r.metric == metric && r.t.is_none())
        .filter(|r| r.series.as_deref() == Some(series) && r.reference.as_deref().unwrap_or("") == reference && r.series_form.as_deref() == Some(form))
        .map(|r| r.value)
        .collect();
    assert_eq!(hits.len(), 1, "one row {name} {metric} {series} {reference} {form}: {hits:?}");
    hits[0]
}

/// The two numbers of the Laborieux printout (`model_utils.RMSE`) for `neurons_<i>` and its `bars` statistic under
/// `prefix = exclusive`, computed here from the buffered series with tensor operations written as the reference
/// writes them (stack over t, reduce over dim 0), against the streamed rows.
#[test]
fn laborieux_rmse_of_neurons_and_exclusive_bars() {
    tch::set_num_threads(1);
    let inst = tiny("tanh", "mse");
    let o = gdu::GduOptions { prefix_exclusive: true, ..gdu::GduOptions::replay(30, 8, 1e-2) };
    let (m, p, batch) = (&inst.model, &inst.params[..], &inst.batch);
    let g = gdu::compute_series(m, p, batch, m.zeros_state(batch.size(), inst.prec), &o);
    let rep = gdu::run(&inst, &o);
    let stack = |steps: &[Vec<Tensor>], i: usize| Tensor::stack(&steps.iter().map(|s| s[i].to_kind(tch::Kind::Double)).collect::<Vec<_>>(), 0);
    let k = o.k as f64;
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() <= 1e-12 * a.abs().max(b.abs()), "{what}: streamed {a:e} vs reference formula {b:e}");
    let mut checked = 0;
    for (j, l) in m.layers.iter().enumerate() {
        // BPTT['neurons_j'] = −B·∂L/∂s (raw, not J-corrected); EP['neurons_j'] = (s_{t+1} − s_t)/β.
        let bptt = stack(&g.bptt_s, j);
        for (sname, series) in [("ep_plus", &g.plus.neurons), ("ep_minus", &g.minus.neurons)] {
            let ep = stack(series, j);
            let f_g = (&ep - &bptt).pow_tensor_scalar(2).sum_dim_intlist(&[0i64][..], false, None::<tch::Kind>).divide_scalar(k).pow_tensor_scalar(0.5);
            let f = ep.pow_tensor_scalar(2).sum_dim_intlist(&[0i64][..], false, None::<tch::Kind>).divide_scalar(k).pow_tensor_scalar(0.5);
            let gg = bptt.pow_tensor_scalar(2).sum_dim_intlist(&[0i64][..], false, None::<tch::Kind>).divide_scalar(k).pow_tensor_scalar(0.5);
            let comp = f_g / (f.maximum(&gg) + 1e-10);
            let rmse = comp.mean(None::<tch::Kind>).double_value(&[]);
            let sign = (&ep * &bptt).lt(0.0).to_kind(tch::Kind::Double).mean(None::<tch::Kind>).double_value(&[]);
            close(row_value(&rep, &l.name, "lab_rmse", sname, "bptt_raw", "step"), rmse, &format!("{} {sname} RMSE", l.name));
            close(row_value(&rep, &l.name, "sign_err", sname, "bptt_raw", "step"), sign, &format!("{} {sname} SIGN err", l.name));
            assert!(rmse > 0.0 && rmse.is_finite(), "a non-trivial RMSE ({rmse})");
            checked += 1;
        }
    }
    // bars: e₁, e₂, e_B = exclusive prefix sums at the last index (the last increment omitted).
    for (i, spec) in m.params.iter().enumerate().filter(|(_, s)| s.shape.len() >= 2) {
        let kk = o.k;
        let excl_last = |steps: &[Vec<Tensor>]| stack(steps, i).narrow(0, 0, kk - 1).sum_dim_intlist(&[0i64][..], false, None::<tch::Kind>);
        let (e1, e2, eb) = (excl_last(&g.plus.theta), excl_last(&g.minus.theta), excl_last(&g.bptt_theta));
        let e3 = (&e1 + &e2) / 2.0;
        let den = (&e1 - &eb).abs() + (&e2 - &eb).abs();
        let r = ((&e3 - &eb).abs() * 2.0 / &den).masked_fill(&den.eq(0.0), 1.0);
        let bars = r.mean(None::<tch::Kind>).double_value(&[]);
        close(row_value(&rep, &spec.name, "sym_ratio", "ep_sym", "", "cum_excl"), bars, &format!("{} bars", spec.name));
        // The inclusive statistic differs (the last increment counts): the option changes the number.
        let incl = gdu::run(&inst, &gdu::GduOptions { prefix_exclusive: false, ..o.clone() });
        let v = row_value(&incl, &spec.name, "sym_ratio", "ep_sym", "", "cum");
        assert!((v - bars).abs() > 1e-9, "{}: inclusive {v} vs exclusive {bars}", spec.name);
        checked += 1;
    }
    assert!(checked >= 6, "checked {checked} numbers");
}

/// `--dump` keeps the series: the streamed run's dump equals the buffered series of `compute_series`.
#[test]
fn dump_series_equal_the_buffered_series() {
    let inst = tiny("tanh", "mse");
    let o = gdu::GduOptions { dump: true, ..gdu::GduOptions::replay(30, 9, 1e-3) };
    let g = gdu::compute_series(&inst.model, &inst.params, &inst.batch, inst.model.zeros_state(3, inst.prec), &o);
    let rep = gdu::run(&inst, &o);
    let d: BTreeMap<String, Tensor> = rep.dump.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    for (i, spec) in inst.model.params.iter().enumerate() {
        let want = Tensor::stack(&g.bptt_theta.iter().map(|s| s[i].shallow_clone()).collect::<Vec<_>>(), 0);
        assert!(d[&format!("gdu.bptt.{}", spec.name)].equal(&want), "{}", spec.name);
        let want = Tensor::stack(&g.minus.theta.iter().map(|s| s[i].shallow_clone()).collect::<Vec<_>>(), 0);
        assert!(d[&format!("gdu.ep_minus@0.001.{}", spec.name)].equal(&want), "{}", spec.name);
    }
    for (j, l) in inst.model.layers.iter().enumerate() {
        let want = Tensor::stack(&g.bptt_j.iter().map(|s| s[j].shallow_clone()).collect::<Vec<_>>(), 0);
        assert!(d[&format!("gdu.bptt_j.neurons.{}", l.name)].equal(&want), "{}", l.name);
    }
    let none = gdu::run(&inst, &gdu::GduOptions { dump: false, ..o });
    assert!(none.dump.is_empty(), "no series kept without --dump");
}

/// A float32 run keeps the per-element running sums of its parameter tensors in float32 (docs/checks.md, "Precision of
/// the GDU metrics"). Oracle: the same metrics in float64 on the host (`checks::metrics`) from the series the run
/// dumps (`--dump`: the float32 steps themselves). Every tensor metric agrees within the round-off floor the run
/// states for that tensor (`floor_rel` = ε·max‖f‖/(β‖r‖), absolute), at a size where the float32 sums are not exact (the
/// attention preset, K = 24, a 480-element tensor), and the float32 path did run: some metric is not bitwise the
/// float64 one.
///
/// Second instance: an SNLI-style net whose BPTT series decay to ≈ 1e-20 and below within K = 30 steps, where float32
/// squares underflow: the per-step rel_l2 rows (t) must still match the float64 sums (a defect of the first version
/// of the float32 sums gave 0 where float64 gives 1).
#[test]
fn float32_sums_agree_with_float64_sums_of_the_dump_within_the_floor() {
    tch::set_num_threads(1);
    let mut cfg = RunConfig::preset_defaults("imdb-hopfield").unwrap();
    cfg.dtype = "float32".into();
    cfg.batch = 4;
    cfg.seq_len = Some(6);
    cfg.embed_dim = Some(8);
    cfg.widths = Some(vec![10, 6, 2]);
    float32_against_dump(&Instance::from_config(cfg).unwrap(), &gdu::GduOptions { dump: true, ..gdu::GduOptions::replay(40, 24, 0.05) });
    let mut cfg = RunConfig::preset_defaults("snli-hopfield").unwrap();
    cfg.dtype = "float32".into();
    cfg.batch = 4;
    cfg.seq_len = Some(25);
    cfg.embed_dim = Some(30);
    cfg.widths = Some(vec![40, 3]);
    float32_against_dump(&Instance::from_config(cfg).unwrap(), &gdu::GduOptions { dump: true, ..gdu::GduOptions::replay(60, 30, 0.05) });
}

fn float32_against_dump(inst: &Instance, o: &gdu::GduOptions) {
    let o = o.clone();
    assert_eq!(inst.params[0].kind(), tch::Kind::Float);
    let rep = gdu::run(&inst, &o);
    let d: BTreeMap<String, Tensor> = rep.dump.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    let k = o.k as usize;
    let series = |name: &str| {
        let t = &d[name];
        assert_eq!(t.kind(), tch::Kind::Float, "{name}: the dumped series are the float32 steps");
        let data = to_vec_f64(t);
        Series::new(k, data.len() / k, data)
    };
    let (mut checked, mut inexact) = (0, 0);
    for spec in &inst.model.params {
        let r = series(&format!("gdu.bptt.{}", spec.name));
        for s in ["ep_plus", "ep_minus", "ep_sym"] {
            let a = series(&format!("gdu.{s}@{}.{}", o.beta, spec.name));
            let floor = row_value(&rep, &spec.name, "floor_rel", s, "bptt", "step");
            assert!(floor > 0.0, "{} {s}: floor_rel {floor}", spec.name);
            if !(floor < 1e-2) {
                // A reference at the round-off level (or zero): nothing to resolve.
                continue;
            }
            let (lab, _, _, _) = mx::lab_rmse(&a, &r);
            let (ern_m, _) = mx::ern_rel(&a, &r);
            let (cern_m, _) = mx::ern_rel(&a.cumsum(), &r.cumsum());
            for t in 0..k {
                let want = mx::rel_l2(a.step(t), r.step(t));
                let got: Vec<f64> = rep.metrics.iter().filter(|x| x.name == spec.name && x.metric == "rel_l2" && x.t == Some(t as i64) && x.series.as_deref() == Some(s) && x.reference.as_deref() == Some("bptt")).map(|x| x.value).collect();
                if want.is_finite() {
                    assert_eq!(got.len(), 1, "{} {s} t = {t}: one per-step rel_l2 row", spec.name);
                    assert!((got[0] - want).abs() <= floor.max(1e-12 * want.abs()), "{} {s} per-step rel_l2 at t = {t}: float32 sums {:e} vs float64 sums {want:e}", spec.name, got[0]);
                } else {
                    assert!(got.is_empty(), "{} {s} t = {t}: no row where float64 gives {want}", spec.name);
                }
            }
            for (metric, form, want) in [("rel_l2", "step", mx::rel_l2(&a.data, &r.data)), ("lab_rmse", "step", lab), ("ern_rel_mean", "step", ern_m), ("cos", "step", mx::cos(&a.data, &r.data)), ("ern_rel_mean", "cum", cern_m)] {
                let got = row_value(&rep, &spec.name, metric, s, "bptt", form);
                // Within the floor (absolute: the metrics are errors relative to the reference, resolved down to
                // floor_rel at best by float32 series).
                assert!((got - want).abs() <= floor, "{} {s} {metric} ({form}): float32 sums {got:e} vs float64 sums {want:e}, floor_rel {floor:e}", spec.name);
                checked += 1;
                inexact += (got != want) as usize;
            }
        }
    }
    assert!(checked >= 60, "checked {checked} metrics");
    assert!(inexact > 0, "every metric bitwise equal to float64 sums: the float32 path did not run");
}

/// `converge`'s per-example r_rel = ‖s' − s‖/‖s'‖ over all layers (s' = one more step from the final state) is
/// reduced on the device with one read-back. Oracle: float64 sums on the host over each example's elements, from the
/// dumped final state and an independent extra step.
#[test]
fn converge_r_rel_per_example_equals_host_sums() {
    use epcheck::checks::converge;
    tch::set_num_threads(1);
    let inst = tiny_with("tanh", "mse", |c: &mut RunConfig| c.dtype = "float32".into());
    let o = converge::ConvergeOptions { t_free: 6, k_nudge: 3, beta: 0.1, tol: 1e-10, power_iters: 0, require_contraction: false, phases: vec![], seed: 0 };
    let rep = converge::run(&inst, &o);
    let (m, b) = (&inst.model, inst.batch.size());
    let s: Vec<Tensor> = m.layers.iter().map(|l| rep.dump.iter().find(|(n, _)| *n == format!("state.free.{}", l.name)).expect("dumped state").1.shallow_clone()).collect();
    let s_next = tch::no_grad(|| m.step(&inst.params, &inst.batch, &s, 0.0));
    let mut checked = 0i64;
    for ex in 0..b {
        let (mut d, mut nn) = (0.0f64, 0.0f64);
        for (a, c) in s_next.iter().zip(&s) {
            let (va, vc) = (to_vec_f64(&a.get(ex)), to_vec_f64(&c.get(ex)));
            d += va.iter().zip(&vc).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
            nn += va.iter().map(|x| x * x).sum::<f64>();
        }
        let want = d.sqrt() / nn.sqrt().max(1e-300);
        let got: Vec<f64> = rep.metrics.iter().filter(|r| r.metric == "r_rel" && r.example == Some(ex) && r.phase.as_deref() == Some("free")).map(|r| r.value).collect();
        assert_eq!(got.len(), 1, "one r_rel row for example {ex}");
        assert!(want > 1e-6, "a non-trivial r_rel after 6 iterations ({want})");
        assert!(close(got[0], want, 1e-12), "example {ex}: device {:e} vs host {want:e}", got[0]);
        checked += 1;
    }
    assert_eq!(checked, b);
}
