//! Cost of holomorphic EP against symmetric EP on the same model and batch (issue: N = 8 should cost at most
//! 2.5× symmetric): P-MLP 784-512-10 (the `p-mlp` preset), tanh, batch 20, float64, K = 30 nudged
//! iterations from the same free state (the nudged part alone; `examples/perf.rs holo` times the whole estimator
//! at the preset's T and K as well). Run: `scripts/bench --bench estimators` or
//! `cargo bench --profile dev --bench estimators`.
use criterion::{criterion_group, criterion_main, Criterion};
use epcheck::config::RunConfig;
use epcheck::estimators::ep_holomorphic::{self as holo, HoloOptions};
use epcheck::estimators::{ep_centered, free_phase, PhaseLengths};
use epcheck::instance::Instance;

fn bench(c: &mut Criterion) {
    let mut cfg = RunConfig::preset_defaults("p-mlp").unwrap();
    // EPCHECK_BENCH_DEVICE=cuda runs the same comparison on a GPU.
    if let Ok(d) = std::env::var("EPCHECK_BENCH_DEVICE") {
        cfg.device = d;
    }
    let inst = Instance::from_config(cfg).unwrap();
    let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
    let len = PhaseLengths { t_free: 30, k_nudge: 30, tol: None };
    let free = free_phase(m, p, b, len, false);
    let mut g = c.benchmark_group(format!("p-mlp 784-512-10 B20 f64, K=30, {}", inst.prec.device_name()));
    g.sample_size(10);
    // Every closure reads a scalar back, so queued GPU kernels are inside the timing.
    let sync = |g: &[tch::Tensor]| g[0].sum(tch::Kind::Double).double_value(&[]);
    g.bench_function("ep_centered (2 real phases)", |bch| bch.iter(|| sync(&ep_centered::estimate(m, p, b, &free, 0.1, len).0.tensors)));
    for n in [2usize, 4, 8] {
        g.bench_function(format!("ep_holomorphic N={n} (restart, shortcut, batched)"), |bch| {
            bch.iter(|| sync(&holo::estimate(m, p, b, &free.state, 0.1, len, &HoloOptions::restart(n, true)).unwrap().grad.tensors))
        });
    }
    g.bench_function("ep_holomorphic N=8 (restart, all 8 points, batched)", |bch| {
        bch.iter(|| sync(&holo::estimate(m, p, b, &free.state, 0.1, len, &HoloOptions::restart(8, false)).unwrap().grad.tensors))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
