//! Cost of holomorphic EP against symmetric EP on the same model and batch (issue: N = 8 should cost at most
//! 2.5× symmetric): P-MLP 784-512-10 (the `p-mlp` preset), tanh, batch 20, float64, K = 30 nudged
//! iterations from the same free state. Run: `scripts/bench --bench estimators` or
//! `cargo bench --profile dev --bench estimators`.
use criterion::{criterion_group, criterion_main, Criterion};
use epcheck::config::RunConfig;
use epcheck::estimators::ep_holomorphic::{self as holo, HoloOptions};
use epcheck::estimators::{ep_centered, free_phase, PhaseLengths};
use epcheck::instance::Instance;

fn bench(c: &mut Criterion) {
    let cfg = RunConfig::preset_defaults("p-mlp").unwrap();
    let inst = Instance::from_config(cfg).unwrap();
    let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
    let len = PhaseLengths { t_free: 30, k_nudge: 30, tol: None };
    let free = free_phase(m, p, b, len, false);
    let mut g = c.benchmark_group("p-mlp 784-512-10 B20 f64, K=30");
    g.sample_size(10);
    g.bench_function("ep_centered (2 real phases)", |bch| bch.iter(|| ep_centered::estimate(m, p, b, &free, 0.1, len)));
    for n in [2usize, 4, 8] {
        g.bench_function(format!("ep_holomorphic N={n} (restart, shortcut, batched)"), |bch| {
            bch.iter(|| holo::estimate(m, p, b, &free.state, 0.1, len, &HoloOptions::restart(n, true)).unwrap())
        });
    }
    g.bench_function("ep_holomorphic N=8 (restart, all 8 points, batched)", |bch| {
        bch.iter(|| holo::estimate(m, p, b, &free.state, 0.1, len, &HoloOptions::restart(8, false)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
