//! Criterion benchmarks of every preset: one relaxation step (analytic drives, no trace) and one full
//! centered-EP estimate (free phase T = 30 from zeros, batched ±β phases K = 10, f(±β)).
//! Sizes: `small` (the default; conv presets 16×16 with widths [16, 32, 32, 64], attention presets L = 20/10,
//! d = 16) or `paper` (EPCHECK_BENCH_SIZE=paper; the preset defaults, batch 8 on the CPU). EPCHECK_BENCH_DEVICE=cuda
//! runs on a GPU (batch 128 at paper size). Run: `scripts/bench --bench presets [filter]`.
use criterion::{criterion_group, criterion_main, Criterion};
use epcheck::config::RunConfig;
use epcheck::estimators::{ep_centered, free_phase, PhaseLengths};
use epcheck::instance::Instance;
use epcheck::model::presets::PRESETS;
use epcheck::relax::{relax, RelaxOptions};

fn config(preset: &str, paper: bool, device: &str) -> RunConfig {
    let mut cfg = RunConfig::preset_defaults(preset).unwrap();
    cfg.device = device.into();
    cfg.dtype = "f32".into();
    if paper {
        cfg.batch = if device == "cpu" { 8 } else { 128 };
        return cfg;
    }
    cfg.batch = 16;
    cfg.use_small_sizes();
    cfg
}

fn bench(c: &mut Criterion) {
    let paper = std::env::var("EPCHECK_BENCH_SIZE").is_ok_and(|s| s == "paper");
    let device = std::env::var("EPCHECK_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    for preset in PRESETS {
        let inst = Instance::from_config(config(preset, paper, &device)).unwrap();
        let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
        let dev = inst.prec.device;
        let sync = || {
            if let tch::Device::Cuda(i) = dev {
                tch::Cuda::synchronize(i as i64)
            }
        };
        let len = PhaseLengths { t_free: 30, k_nudge: 10, tol: None };
        let s = free_phase(m, p, b, PhaseLengths { t_free: 3, ..len }, false).state;
        let mut g = c.benchmark_group(format!("{preset} ({}) B{} f32 {}", if paper { "paper" } else { "small" }, b.size(), inst.prec.device_name()));
        g.sample_size(10);
        g.bench_function("relaxation step", |bch| {
            bch.iter(|| {
                relax(m, p, b, &s, 0.01, &RelaxOptions { iters: 1, no_trace: true, ..Default::default() });
                sync()
            })
        });
        g.bench_function("ep_centered estimate T=30 K=10", |bch| {
            bch.iter(|| {
                let free = free_phase(m, p, b, len, false);
                ep_centered::estimate(m, p, b, &free, inst.cfg.beta, len);
                sync()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
