//! The performance board behind `reports/performance.md`: plain wall-clock timings (median of repeats, the
//! device synchronised inside every timed region) and peak memory, printed as markdown rows.
//!
//! Build: `cargo build --locked --example perf` (the dev profile is fine: the time is spent in libtorch).
//! Run:   `target/debug/examples/perf <section> [--device cpu|cuda] …`, sections:
//! * `ratios`  — analytic vs autograd step; batched vs sequential ±β phases; tol early exit vs fixed T; host
//!   reads of the tol check every iteration vs every 16.
//! * `presets --size small|paper --batch B --dtype f32|f64 --T n --K n` — per preset: one relaxation step, one
//!   centered-EP estimate (free T + ±β K), one GDU series (replay, K = min(10, T)), one BPTT(T).
//! * `floor --preset P --size paper --batch B --dtype f32` — one free-phase iteration against its coupling
//!   operators (every conv / convT / matmul that reads a free layer) run back to back, and the parts of a step.
//! * `holo [--device cpu|cuda] [--batch 20] [--reps 21]` — holomorphic EP with N = 2, 4, 8 against symmetric EP on
//!   the default P-MLP (784-512-10, tanh, f64, β = 0.1): the whole estimator (free T + nudged phases + f) at the
//!   preset's T = 30, K = 10 and at T = K = 30, and the nudged part alone (K = 30 from one free state). The
//!   estimators are timed round-robin, one sample each per round, so machine drift hits them alike.
//! * `train --preset P --size paper --batch B --T n --K n` — one centered-EP training step (`Trainer::step`).
//! * `floor`, `train` (and every section built on `instance`) take `--sets 'k=v;k=v'`: the CLI's `--set` overrides,
//!   `;`-separated (e.g. the attention presets at the sizes of issue 15).
//! * `mem --preset P … --est ep|bptt --T n --K n` — peak memory of one estimate in this process (CPU: peak RSS
//!   growth, VmHWM reset through /proc/self/clear_refs; CUDA: growth of the device memory in use, which the
//!   caching allocator never gives back, so it is the peak it reserved). `memtable … --Ts 30,120,480` runs one
//!   child process per (estimator, T) and prints the table.
use epcheck::checks::gdu;
use epcheck::config::RunConfig;
use epcheck::estimators::ep_centered::{self, NudgedPhases};
use epcheck::estimators::{bptt, free_phase, PhaseLengths};
use epcheck::instance::Instance;
use epcheck::model::terms::Node;
use epcheck::model::Model;
use epcheck::relax::{relax, RelaxOptions};
use std::collections::HashMap;
use std::time::Instant;
use tch::{Device, Tensor};

struct Args {
    section: String,
    kv: HashMap<String, String>,
}

impl Args {
    fn parse() -> Args {
        let a: Vec<String> = std::env::args().skip(1).collect();
        let section = a.first().cloned().unwrap_or_else(|| "ratios".into());
        let mut kv = HashMap::new();
        let mut i = 1;
        while i < a.len() {
            let k = a[i].trim_start_matches("--").to_string();
            let v = a.get(i + 1).cloned().unwrap_or_default();
            kv.insert(k, v);
            i += 2;
        }
        Args { section, kv }
    }
    fn get(&self, k: &str, d: &str) -> String {
        self.kv.get(k).cloned().unwrap_or_else(|| d.to_string())
    }
    fn int(&self, k: &str, d: i64) -> i64 {
        self.get(k, &d.to_string()).parse().expect("integer option")
    }
}

fn sync(dev: Device) {
    if let Device::Cuda(i) = dev {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median seconds of `reps` runs after `warm` unmeasured ones.
fn time(dev: Device, warm: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warm {
        f();
    }
    sync(dev);
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            sync(dev);
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ms(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// A preset at `small` or `paper` size.
fn config(preset: &str, size: &str, batch: i64, dtype: &str, device: &str) -> RunConfig {
    let mut cfg = RunConfig::preset_defaults(preset).unwrap();
    cfg.batch = batch;
    cfg.dtype = dtype.into();
    cfg.device = device.into();
    if size == "small" {
        cfg.use_small_sizes();
    } else if size == "p-mlp-3" {
        cfg.archi = vec![784, 512, 512, 10];
    }
    cfg
}

fn instance(a: &Args, preset: &str) -> Instance {
    let cfg = config(preset, &a.get("size", "paper"), a.int("batch", 8), &a.get("dtype", "f32"), &a.get("device", "cpu"));
    Instance::from_config(with_sets(cfg, a, preset)).unwrap()
}

/// `--sets 'seq_len=100;embed_dim=300;widths=[1000,40,2]'`: the CLI's `--set` overrides, `;`-separated, on top of
/// the preset (batch, dtype and device as given).
fn with_sets(cfg: RunConfig, a: &Args, preset: &str) -> RunConfig {
    let sets = a.get("sets", "");
    if sets.is_empty() {
        return cfg;
    }
    let mut over = toml::Table::new();
    for kv in sets.split(';') {
        epcheck::config::merge(&mut over, epcheck::config::parse_set(kv).unwrap());
    }
    let mut out = RunConfig::resolve(Some(preset), None, over).unwrap();
    (out.batch, out.dtype, out.device) = (cfg.batch, cfg.dtype, cfg.device);
    out
}

fn desc(inst: &Instance, size: &str) -> String {
    format!("{} ({size}) B{} {} {}", inst.model.preset, inst.batch.size(), inst.prec.dtype.name(), inst.prec.device_name())
}

fn ratios(a: &Args) {
    let dev = a.get("device", "cpu");
    println!("| measurement | instance | A | B | A / B |");
    println!("|---|---|---|---|---|");
    let insts = [("p-mlp 784-512-512-10", config("p-mlp", "p-mlp-3", 128, "f32", &dev)), ("hopfield-resnet13 16×16 [16,32,32,64]", config("hopfield-resnet13", "small", 16, "f32", &dev))];
    for (name, cfg) in insts {
        let inst = Instance::from_config(cfg).unwrap();
        let (m, p, b, d) = (&inst.model, &inst.params[..], &inst.batch, inst.prec.device);
        let what = format!("{name} B{} f32 {}", b.size(), inst.prec.device_name());
        let s = free_phase(m, p, b, PhaseLengths { t_free: 30, k_nudge: 0, tol: None }, false).state;
        let n = 10;
        let an = time(d, 2, 9, || {
            relax(m, p, b, &s, 0.01, &RelaxOptions { iters: n, no_trace: true, ..Default::default() });
        }) / n as f64;
        let ag = time(d, 2, 9, || {
            relax(m, p, b, &s, 0.01, &RelaxOptions { iters: n, no_trace: true, autograd_drives: true, ..Default::default() });
        }) / n as f64;
        println!("| relaxation step: autograd drives (A) vs analytic drives (B) | {what} | {} | {} | {:.2} |", ms(ag), ms(an), ag / an);
        let free = free_phase(m, p, b, PhaseLengths { t_free: 30, k_nudge: 0, tol: None }, false);
        let len = PhaseLengths { t_free: 30, k_nudge: 30, tol: None };
        let seq = time(d, 1, 7, || {
            ep_centered::estimate_with(m, p, b, &free, 0.1, len, NudgedPhases::Sequential);
        });
        let bat = time(d, 1, 7, || {
            ep_centered::estimate_with(m, p, b, &free, 0.1, len, NudgedPhases::Batched);
        });
        println!("| ±β phases (K = 30) + f(±β): sequential (A) vs batched (B) | {what} | {} | {} | {:.2} |", ms(seq), ms(bat), seq / bat);
        // Host reads of the tol check: tol never reached (1e-30), 200 iterations.
        let o = |every| RelaxOptions { iters: 200, tol: Some(1e-30), check_every: every, ..Default::default() };
        let e1 = time(d, 1, 5, || {
            relax(m, p, b, &s, 0.01, &o(1));
        });
        let e16 = time(d, 1, 5, || {
            relax(m, p, b, &s, 0.01, &o(16));
        });
        println!("| 200 iterations with tol: host read every iteration (A) vs every 16 (B) | {what} | {} | {} | {:.2} |", ms(e1), ms(e16), e1 / e16);
    }
    // Early exit on a converging instance: the default P-MLP (784-512-10, B20, f64), free phase from zeros.
    let inst = Instance::from_config(config("p-mlp", "small", 20, "f64", &dev)).unwrap();
    let (m, p, b, d) = (&inst.model, &inst.params[..], &inst.batch, inst.prec.device);
    let fixed_t = 300;
    let tol = 1e-10;
    let zeros = m.zeros_state(b.size(), inst.prec);
    let mut ran = 0;
    let ee = time(d, 1, 7, || {
        ran = relax(m, p, b, &zeros, 0.0, &RelaxOptions { iters: fixed_t, tol: Some(tol), ..Default::default() }).iters;
    });
    let fx = time(d, 1, 7, || {
        relax(m, p, b, &zeros, 0.0, &RelaxOptions { iters: fixed_t, ..Default::default() });
    });
    println!("| free phase: fixed T = {fixed_t} (A) vs early exit at tol {tol:e} ({ran} iterations) (B) | p-mlp 784-512-10 B20 f64 {} | {} | {} | {:.2} |", inst.prec.device_name(), ms(fx), ms(ee), fx / ee);
}

/// The state arguments of one term.
fn slot_refs<'a>(m: &Model, ti: usize, x: &'a [Tensor], s: &'a [Tensor]) -> Vec<&'a Tensor> {
    m.terms[ti]
        .slots()
        .iter()
        .map(|n| match *n {
            Node::Input(i) => &x[i],
            Node::Layer(k) => &s[k],
        })
        .collect()
}

fn floor(a: &Args) {
    let preset = a.get("preset", "hopfield-resnet13");
    let inst = instance(a, &preset);
    let (m, p, b, d) = (&inst.model, &inst.params[..], &inst.batch, inst.prec.device);
    let n = a.int("iters", 20);
    let s = free_phase(m, p, b, PhaseLengths { t_free: 5, k_nudge: 0, tol: None }, false).state;
    // The coupling operators of one iteration: every drive of a term into a free layer that reads another
    // free layer (the constant drives of input couplings and biases are cached by the loop).
    let mut ops = vec![];
    for (ti, t) in m.terms.iter().enumerate() {
        let slots = t.slots();
        for (si, n) in slots.iter().enumerate() {
            if n.layer().is_some() && slots.iter().enumerate().any(|(j, o)| j != si && o.layer().is_some()) {
                ops.push((ti, si));
            }
        }
    }
    let floor = time(d, 2, 9, || {
        tch::no_grad(|| {
            for _ in 0..n {
                for &(ti, si) in &ops {
                    let _ = m.terms[ti].drive(p, &slot_refs(m, ti, &b.x, &s), si);
                }
            }
        })
    }) / n as f64;
    let it_notrace = time(d, 2, 9, || {
        relax(m, p, b, &s, 0.0, &RelaxOptions { iters: n, no_trace: true, ..Default::default() });
    }) / n as f64;
    let it_trace = time(d, 2, 9, || {
        relax(m, p, b, &s, 0.0, &RelaxOptions { iters: n, ..Default::default() });
    }) / n as f64;
    let kinds: Vec<&str> = ops.iter().map(|&(ti, _)| m.terms[ti].kind()).collect();
    let what = desc(&inst, &a.get("size", "paper"));
    println!("| {what} | {} coupling operators ({}) | floor {} | iteration {} ({:.2}× floor) | iteration + residual trace {} ({:.2}× floor) |", ops.len(), summarize(&kinds), ms(floor), ms(it_notrace), it_notrace / floor, ms(it_trace), it_trace / floor);
}

fn summarize(k: &[&str]) -> String {
    let mut c: Vec<(String, usize)> = vec![];
    for x in k {
        match c.iter_mut().find(|e| e.0 == *x) {
            Some(e) => e.1 += 1,
            None => c.push((x.to_string(), 1)),
        }
    }
    c.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
}

fn presets(a: &Args) {
    let size = a.get("size", "small");
    let list = a.get("presets", "p-mlp,hopfield-resnet13,vgg5-dchn,vgg5-dchn-rain,imdb-hopfield,snli-hopfield");
    let (t, k) = (a.int("T", 30), a.int("K", 10));
    let reps = a.int("reps", 5) as usize;
    println!("| preset ({size}) | batch | dtype | device | step | ep_centered estimate (T = {t}, K = {k}) | GDU series (T = {t}, K = {}) | BPTT (T = {t}) |", k.min(10));
    println!("|---|---|---|---|---|---|---|---|");
    for preset in list.split(',') {
        let inst = instance(a, preset);
        let (m, p, b, d) = (&inst.model, &inst.params[..], &inst.batch, inst.prec.device);
        let s = free_phase(m, p, b, PhaseLengths { t_free: 3, k_nudge: 0, tol: None }, false).state;
        let step = time(d, 1, reps, || {
            relax(m, p, b, &s, 0.01, &RelaxOptions { iters: 1, no_trace: true, ..Default::default() });
        });
        let len = PhaseLengths { t_free: t, k_nudge: k, tol: None };
        let est = time(d, 0, reps.min(3), || {
            let free = free_phase(m, p, b, len, false);
            let (g, _, _) = ep_centered::estimate(m, p, b, &free, inst.cfg.beta, len);
            let _ = g.tensors[0].sum(tch::Kind::Double).double_value(&[]);
        });
        let o = gdu::GduOptions::replay(t, k.min(10).min(t), 1e-3);
        let gdu_t = time(d, 0, reps.min(3), || {
            gdu::compute_series(m, p, b, m.zeros_state(b.size(), inst.prec), &o);
        });
        let bp = time(d, 0, reps.min(3), || {
            bptt::full(m, p, b, t);
        });
        println!("| {preset} | {} | {} | {} | {} | {} | {} | {} |", b.size(), inst.prec.dtype.name(), inst.prec.device_name(), ms(step), ms(est), ms(gdu_t), ms(bp));
    }
}

fn train(a: &Args) {
    let preset = a.get("preset", "hopfield-resnet13");
    let mut cfg = config(&preset, &a.get("size", "paper"), a.int("batch", 128), &a.get("dtype", "f32"), &a.get("device", "cpu"));
    cfg = with_sets(cfg, a, &preset);
    cfg.t_free = a.int("T", 120);
    cfg.k_nudge = a.int("K", 50);
    cfg.estimator = "ep_centered".into();
    let inst = Instance::from_config(cfg.clone()).unwrap();
    let d = inst.prec.device;
    let mut tr = epcheck::train::Trainer::new(&cfg, &inst.model, inst.params.iter().map(|t| t.copy()).collect(), inst.prec).unwrap();
    let lr = tr.rates(0);
    let t = time(d, 1, a.int("reps", 3) as usize, || {
        let mut acc = epcheck::train::Acc::default();
        tr.step(&inst.batch, &lr, &mut acc).unwrap();
    });
    println!("| {} | centered-EP training step (T = {}, K = {}, β = {}, batched ±β phases) | {} |", desc(&inst, &a.get("size", "paper")), cfg.t_free, cfg.k_nudge, cfg.beta, ms(t));
    if a.get("parts", "") == "yes" {
        // Where the step's time goes: the free phase, the batched ±β phases, f(±β) (the two-point estimate).
        let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
        let reps = a.int("reps", 3) as usize;
        let len = PhaseLengths { t_free: cfg.t_free, k_nudge: cfg.k_nudge, tol: None };
        let init = m.zeros_state(b.size(), inst.prec);
        let free_t = time(d, 1, reps, || {
            relax(m, p, b, &init, 0.0, &RelaxOptions { iters: cfg.t_free, no_trace: true, ..Default::default() });
        });
        let free = free_phase(m, p, b, len, false);
        let opts = RelaxOptions { iters: cfg.k_nudge, no_trace: true, ..Default::default() };
        let nudged_t = time(d, 1, reps, || {
            ep_centered::nudged_pair(m, p, b, &free.state, cfg.beta, &opts);
        });
        let (plus, minus) = ep_centered::nudged_pair(m, p, b, &free.state, cfg.beta, &opts);
        let f_t = time(d, 1, reps, || {
            epcheck::estimators::two_point_states(m, p, b, &minus.state, -cfg.beta, &plus.state, cfg.beta);
        });
        println!("| parts | free phase {} · ±β phases {} · f(±β) {} · rest of the step {} |", ms(free_t), ms(nudged_t), ms(f_t), ms(t - free_t - nudged_t - f_t));
    }
}

// ---- memory ------------------------------------------------------------------------------------------------

fn proc_status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(key).map(|r| r.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))).unwrap_or(0)
}

extern "C" {
    fn dlsym(handle: *mut std::ffi::c_void, symbol: *const std::ffi::c_char) -> *mut std::ffi::c_void;
}

/// Device memory in use (total − free) from the CUDA runtime already loaded by libtorch_cuda.
fn cuda_used_bytes() -> Option<u64> {
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    let f = unsafe { dlsym(std::ptr::null_mut(), c"cudaMemGetInfo".as_ptr()) };
    if f.is_null() {
        return None;
    }
    let f: MemGetInfo = unsafe { std::mem::transmute(f) };
    let (mut free, mut total) = (0usize, 0usize);
    (unsafe { f(&mut free, &mut total) } == 0).then_some((total - free) as u64)
}

fn mem(a: &Args) {
    let preset = a.get("preset", "hopfield-resnet13");
    let inst = instance(a, &preset);
    let (m, p, b, d) = (&inst.model, &inst.params[..], &inst.batch, inst.prec.device);
    let (t, k) = (a.int("T", 30), a.int("K", 10));
    let est = a.get("est", "ep");
    sync(d);
    let cuda = d.is_cuda();
    let before = if cuda {
        cuda_used_bytes().expect("cudaMemGetInfo reachable")
    } else {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        proc_status_kb("VmRSS:") * 1024
    };
    let len = PhaseLengths { t_free: t, k_nudge: k, tol: None };
    let run = || {
        if est == "ep" {
            // The training path: free phase without traces, batched ±β phases.
            let free = relax(m, p, b, &m.zeros_state(b.size(), inst.prec), 0.0, &RelaxOptions { iters: t, no_trace: true, ..Default::default() });
            ep_centered::estimate(m, p, b, &free, 0.1, len).0
        } else {
            bptt::full(m, p, b, t).0
        }
    };
    let g = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
    sync(d);
    let after = if cuda { cuda_used_bytes().unwrap() } else { proc_status_kb("VmHWM:") * 1024 };
    match g {
        Ok(_) => println!("MEM {}", after.saturating_sub(before)),
        Err(_) => println!("MEM OOM"),
    }
}

fn memtable(a: &Args) {
    let exe = std::env::current_exe().unwrap();
    let ts: Vec<i64> = a.get("Ts", "30,120,480").split(',').map(|x| x.parse().unwrap()).collect();
    let preset = a.get("preset", "hopfield-resnet13");
    let base: Vec<String> = ["preset", "size", "batch", "dtype", "device", "K"].iter().flat_map(|k| [format!("--{k}"), a.get(k, match *k { "preset" => "hopfield-resnet13", "size" => "paper", "batch" => "8", "dtype" => "f32", "device" => "cpu", _ => "10" })]).collect();
    let measure = |est: &str, t: i64| -> String {
        let out = std::process::Command::new(&exe).arg("mem").args(&base).args(["--est", est, "--T", &t.to_string()]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().find_map(|l| l.strip_prefix("MEM ")) {
            Some("OOM") => "out of memory".into(),
            Some(v) => format!("{:.1} MiB", v.parse::<f64>().unwrap() / 1048576.0),
            None => format!("failed ({})", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")),
        }
    };
    let what = format!("{preset} ({}) B{} {} {}", a.get("size", "paper"), a.get("batch", "8"), a.get("dtype", "f32"), a.get("device", "cpu"));
    println!("| instance | T | EP (centered, K = {}) peak | BPTT(T) peak |", a.get("K", "10"));
    println!("|---|---|---|---|");
    for t in ts {
        println!("| {what} | {t} | {} | {} |", measure("ep", t), measure("bptt", t));
    }
}

fn holo(a: &Args) {
    use epcheck::estimators::ep_holomorphic::{self as holo, HoloOptions};
    use epcheck::estimators::{estimate_with, Estimator};
    let mut cfg = RunConfig::preset_defaults("p-mlp").unwrap();
    cfg.batch = a.int("batch", 20);
    cfg.device = a.get("device", "cpu");
    let reps = a.int("reps", 21) as usize;
    let inst = Instance::from_config(cfg).unwrap();
    let dev = inst.prec.device;
    let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
    let beta = 0.1;
    let variants: Vec<(&str, Option<HoloOptions>)> = vec![
        ("ep_centered (free + one ±β relaxation over 2B rows)", None),
        ("ep_holomorphic N = 2 (points ±r: real)", Some(HoloOptions::restart(2, true))),
        ("ep_holomorphic N = 4 (shortcut: ±r real + 1 complex point)", Some(HoloOptions::restart(4, true))),
        ("ep_holomorphic N = 8 (shortcut: ±r real + 3 complex points)", Some(HoloOptions::restart(8, true))),
        ("ep_holomorphic N = 8, all 8 points (leakage measured)", Some(HoloOptions::restart(8, false))),
    ];
    println!("P-MLP 784-512-10 tanh f64, B = {}, β = {beta}, {} ({reps} rounds, medians)\n", b.size(), inst.prec.device_name());
    println!("| setting | estimator | time | ratio to ep_centered |\n|---|---|---|---|");
    for (setting, t_free, k, whole) in [("whole estimator, T = 30, K = 10 (preset defaults)", 30, 10, true), ("whole estimator, T = K = 30", 30, 30, true), ("nudged part only, K = 30", 30, 30, false)] {
        let len = PhaseLengths { t_free, k_nudge: k, tol: None };
        let free = free_phase(m, p, b, len, false);
        let sync_grad = |g: &[Tensor]| g[0].sum(tch::Kind::Double).double_value(&[]);
        let mut samples: Vec<Vec<f64>> = vec![vec![]; variants.len()];
        for round in 0..reps + 1 {
            for (i, (_, o)) in variants.iter().enumerate() {
                let t0 = Instant::now();
                let g = match (o, whole) {
                    (None, true) => estimate_with(Estimator::EpCentered, m, p, b, beta, len, &HoloOptions::restart(2, true)).unwrap().grad.tensors,
                    (Some(o), true) => estimate_with(Estimator::EpHolomorphic, m, p, b, beta, len, o).unwrap().grad.tensors,
                    (None, false) => ep_centered::estimate(m, p, b, &free, beta, len).0.tensors,
                    (Some(o), false) => holo::estimate(m, p, b, &free.state, beta, len, o).unwrap().grad.tensors,
                };
                sync_grad(&g);
                sync(dev);
                if round > 0 {
                    samples[i].push(t0.elapsed().as_secs_f64());
                }
            }
        }
        let med: Vec<f64> = samples
            .iter_mut()
            .map(|v| {
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                v[v.len() / 2]
            })
            .collect();
        for (i, (name, _)) in variants.iter().enumerate() {
            println!("| {setting} | {name} | {} | {:.2} |", ms(med[i]), med[i] / med[0]);
        }
    }
}

fn main() {
    let a = Args::parse();
    if let Some(n) = a.kv.get("threads") {
        tch::set_num_threads(n.parse().unwrap());
    }
    match a.section.as_str() {
        "ratios" => ratios(&a),
        "presets" => presets(&a),
        "floor" => floor(&a),
        "train" => train(&a),
        "mem" => mem(&a),
        "memtable" => memtable(&a),
        "holo" => holo(&a),
        s => {
            eprintln!("unknown section {s}: ratios | presets | floor | train | mem | memtable | holo");
            std::process::exit(2);
        }
    }
}
