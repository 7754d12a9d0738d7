//! Criterion benchmarks on the 784-512-512-10 P-MLP, batch 128, float32 (CPU): one relaxation step with
//! analytic drives vs autograd drives, and one GDU check (K = 10) with the hand-rolled vs autograd step VJP.
//! Run: `scripts/bench` (or `cargo bench --bench relax`).
use criterion::{criterion_group, criterion_main, Criterion};
use epcheck::adjoint::reverse_sweep;
use epcheck::checks::gdu;
use epcheck::config::RunConfig;
use epcheck::instance::Instance;

fn instance() -> Instance {
    let mut cfg = RunConfig::preset_defaults("p-mlp").unwrap();
    cfg.archi = vec![784, 512, 512, 10];
    cfg.batch = 128;
    cfg.dtype = "f32".into();
    Instance::from_config(cfg).unwrap()
}

fn bench(c: &mut Criterion) {
    let inst = instance();
    let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
    let s = epcheck::estimators::free_phase(m, p, b, epcheck::estimators::PhaseLengths { t_free: 30, k_nudge: 10, tol: None }, false).state;
    let mut g = c.benchmark_group("p-mlp 784-512-512-10 B128 f32");
    g.sample_size(20);
    g.bench_function("step/analytic drives", |bch| bch.iter(|| tch::no_grad(|| m.step_with(p, b, &s, 0.01, false))));
    g.bench_function("step/autograd drives", |bch| bch.iter(|| m.step_with(p, b, &s, 0.01, true)));
    let o = gdu::GduOptions::replay(30, 10, 0.01);
    g.bench_function("gdu K=10/series (hand-rolled VJP)", |bch| bch.iter(|| gdu::compute_series(m, p, b, m.zeros_state(128, inst.prec), &o)));
    let (traj, _) = gdu::free_phase(m, p, b, m.zeros_state(128, inst.prec), &o);
    let lam = m.loss_state_grad(p, b, &traj[10]);
    g.bench_function("gdu K=10/BPTT sweep (hand-rolled VJP)", |bch| {
        bch.iter(|| reverse_sweep(m, p, b, &traj, lam.iter().map(|t| t.shallow_clone()).collect(), 10, true, false))
    });
    g.bench_function("gdu K=10/BPTT sweep (autograd VJP)", |bch| {
        bch.iter(|| reverse_sweep(m, p, b, &traj, lam.iter().map(|t| t.shallow_clone()).collect(), 10, true, true))
    });
    g.bench_function("gdu K=10/full check (tables, metrics)", |bch| bch.iter(|| gdu::run(&inst, &o)));
    g.finish();
}

/// GDU series cost against K on the default p-mlp (784-512-10, B = 20, f64): the one-sweep method (O(K)) and
/// the published K + 1 re-run definition (O(K²)) on the same stored trajectory.
fn bench_k(c: &mut Criterion) {
    let inst = Instance::from_config(RunConfig::preset_defaults("p-mlp").unwrap()).unwrap();
    let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
    let mut g = c.benchmark_group("p-mlp 784-512-10 B20 f64, GDU series vs K");
    g.sample_size(10);
    for k in [10i64, 30, 100] {
        let o = gdu::GduOptions::replay(300, k, 1e-3);
        let (traj, _) = gdu::free_phase(m, p, b, m.zeros_state(20, inst.prec), &o);
        let lam = m.loss_state_grad(p, b, &traj[k as usize]);
        g.bench_function(format!("one sweep K={k}"), |bch| {
            bch.iter(|| reverse_sweep(m, p, b, &traj, lam.iter().map(|t| t.shallow_clone()).collect(), k as usize, true, false))
        });
        g.bench_function(format!("published K+1 re-runs K={k}"), |bch| bch.iter(|| gdu::published_series(m, p, b, &traj)));
    }
    g.finish();
}

criterion_group!(benches, bench, bench_k);
criterion_main!(benches);
