//! Run folders: every command writes `<out>/<run_id>/` with the resolved config, a manifest, the tables,
//! the figures and a Markdown summary. The folder is assembled under a hidden staging name and renamed into
//! place only when complete, so a failed run never leaves a half-written report.
pub mod figures;
pub mod html;
mod pdf;
pub mod style;
pub mod tables;

use crate::checks::CheckReport;
use crate::instance::Instance;
use crate::{Error, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

pub struct RunFolder {
    staging: PathBuf,
    final_dir: PathBuf,
    pub run_id: String,
    committed: bool,
}

impl RunFolder {
    pub fn new(out: &Path, command: &str, instance_id: &str) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| Error::file(out, format!("cannot create output folder: {e}")))?;
        let now = std::time::SystemTime::now();
        let stamp = humantime::format_rfc3339_seconds(now).to_string().replace([':', '-'], "").replace('Z', "");
        // The staging folder is created atomically (`create_dir`, not `create_dir_all`): two processes that pick
        // the same name in the same second get -2, -3, … instead of sharing one staging folder.
        let mut i = 1;
        loop {
            let run_id = if i == 1 { format!("{command}-{instance_id}-{stamp}") } else { format!("{command}-{instance_id}-{stamp}-{i}") };
            i += 1;
            if out.join(&run_id).exists() {
                continue;
            }
            let staging = out.join(format!(".{run_id}.partial"));
            match std::fs::create_dir(&staging) {
                Ok(()) => {
                    cleanup::register(&staging);
                    let rf = RunFolder { final_dir: out.join(&run_id), staging, run_id, committed: false };
                    std::fs::create_dir_all(rf.staging.join("tables")).map_err(|e| Error::file(&rf.staging, e))?;
                    return Ok(rf);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && i < 10_000 => continue,
                Err(e) => return Err(Error::file(&staging, e)),
            }
        }
    }
    pub fn dir(&self) -> &Path {
        &self.staging
    }
    pub fn write(&self, rel: &str, content: &str) -> Result<()> {
        let p = self.staging.join(rel);
        std::fs::write(&p, content).map_err(|e| Error::file(&p, e))
    }
    /// Renames the staging folder to its final name.
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.final_dir.exists() {
            return Err(Error::file(&self.final_dir, "a run folder of this name appeared while the run was written"));
        }
        std::fs::rename(&self.staging, &self.final_dir).map_err(|e| Error::file(&self.final_dir, e))?;
        cleanup::unregister(&self.staging);
        self.committed = true;
        Ok(self.final_dir.clone())
    }
}

impl Drop for RunFolder {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
            cleanup::unregister(&self.staging);
        }
    }
}

/// What a SIGINT or SIGTERM must not leave behind: staging folders (removed) and lock files (removed). The
/// binary installs the handler ([`cleanup::install`]); it removes every registered path, then exits with
/// 128 + the signal number (130, 143).
pub mod cleanup {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    fn paths() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
        PATHS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a staging folder or lock file to remove on SIGINT/SIGTERM.
    pub fn register(p: &Path) {
        paths().push(p.to_path_buf());
    }

    pub fn unregister(p: &Path) {
        paths().retain(|q| q != p);
    }

    /// Removes every registered path (folders recursively).
    pub fn remove_all() {
        for p in paths().drain(..) {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }

    /// Set by the main thread's SIGUSR2 handler once it is parked (see [`install`]).
    static PARKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// Installs the SIGINT/SIGTERM handler (a thread that waits for the signals). Call once, from the main
    /// thread (the one that writes run folders).
    ///
    /// On a signal the handler thread first **parks the main thread** (SIGUSR2 to it; its handler sets a flag
    /// and waits in `pause()`), so nothing can create or write a staged file after the removal; then it removes
    /// every registered path and exits with 128 + the signal (`_exit`: no atexit handlers or C++ static
    /// destructors while the main thread is inside libtorch). Without the parking, a main thread that created
    /// a staging folder between the removal and the exit left it behind (tests/signals.rs found it).
    pub fn install() {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR2};
        use std::sync::atomic::Ordering;
        // SAFETY: the action only stores to an atomic and calls pause(), both async-signal-safe.
        let parked = unsafe {
            signal_hook::low_level::register(SIGUSR2, || {
                PARKED.store(true, Ordering::SeqCst);
                loop {
                    libc::pause();
                }
            })
        };
        let main = unsafe { libc::pthread_self() };
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else { return };
        let _ = std::thread::Builder::new().name("epcheck-signals".into()).spawn(move || {
            if let Some(sig) = signals.forever().next() {
                if parked.is_ok() {
                    // SAFETY: `main` is the thread that called install(); it lives until the process exits.
                    unsafe { libc::pthread_kill(main, SIGUSR2) };
                    let t0 = std::time::Instant::now();
                    while !PARKED.load(Ordering::SeqCst) && t0.elapsed() < std::time::Duration::from_secs(2) {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                remove_all();
                signal_hook::low_level::exit(128 + sig);
            }
        });
    }
}

pub fn manifest(inst: &Instance, command: &str, run_id: &str, args: &[String]) -> serde_json::Value {
    json!({
        "run_id": run_id,
        "command": command,
        "args": args,
        "epcheck_version": env!("CARGO_PKG_VERSION"),
        "libtorch_version": option_env!("EPCHECK_LIBTORCH_VERSION").unwrap_or("unknown"),
        "tch_version": "0.24.0",
        "device": inst.prec.device_name(),
        "cuda_available": tch::Cuda::is_available(),
        "dtype": inst.prec.dtype.name(),
        "threads": tch::get_num_threads(),
        "seed": inst.cfg.seed,
        "plot_seed": inst.cfg.checks.plot_seed,
        "instance": inst.id,
        "preset": inst.model.preset,
        "time": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    })
}

/// Writes a complete run folder for the given check reports and returns its path.
pub fn write_run(out: &Path, command: &str, inst: &Instance, reports: &[CheckReport], args: &[String]) -> Result<PathBuf> {
    write_run_with(out, command, inst, reports, args, &[])
}

/// [`write_run`] with `extra` files (name, contents) written into the staged folder, so that they are committed
/// with the rest of the run or not at all (e.g. a `bias --shard` record).
pub fn write_run_with(out: &Path, command: &str, inst: &Instance, reports: &[CheckReport], args: &[String], extra: &[(&str, String)]) -> Result<PathBuf> {
    let rf = RunFolder::new(out, command, &inst.id)?;
    for (name, contents) in extra {
        rf.write(name, contents)?;
    }
    rf.write("config.toml", &inst.cfg.to_toml())?;
    rf.write("manifest.json", &serde_json::to_string_pretty(&manifest(inst, command, &rf.run_id, args)).expect("json"))?;
    let metrics: Vec<_> = reports.iter().flat_map(|r| r.metrics.iter().cloned()).collect();
    let verdicts: Vec<_> = reports.iter().flat_map(|r| r.verdicts.iter().cloned()).collect();
    let series: Vec<_> = reports.iter().flat_map(|r| r.series.iter().cloned()).collect();
    let tdir = rf.dir().join("tables");
    tables::write_both(&mut tables::metrics_frame(&rf.run_id, &metrics)?, &tdir, "metrics")?;
    tables::write_both(&mut tables::verdicts_frame(&rf.run_id, &verdicts)?, &tdir, "verdicts")?;
    tables::write_both(&mut tables::series_frame(&rf.run_id, &series)?, &tdir, "series")?;
    let opts = style::FigureOptions::parse(&inst.cfg.checks.figure_format, &inst.cfg.checks.figure_size)?;
    let mut figs = vec![];
    for r in reports {
        let fdir = rf.dir().join("figures").join(&r.check).join(&inst.id);
        let verdict = r.overall.label();
        match r.check.as_str() {
            "gdu" => {
                let g = &inst.cfg.checks.gdu;
                let plot = figures::GduPlot { series: &g.plot_series, tensors: &g.plot_tensors, instance: &inst.id, verdict };
                figs.extend(figures::gdu_figure(&fdir, &r.series, &r.metrics, &inst.model.param_names(), &inst.model.layer_names(), &plot, &opts)?)
            }
            "converge" => {
                let phases: Vec<(String, i64, usize)> = r
                    .verdicts
                    .iter()
                    .filter(|v| v.scope == "phase")
                    .map(|v| {
                        let d: serde_json::Value = serde_json::from_str(&v.details).unwrap_or_default();
                        (v.name.clone(), d["iters"].as_i64().unwrap_or(0), d["nonconverged"].as_u64().unwrap_or(0) as usize)
                    })
                    .collect();
                figs.extend(figures::residual_figure(&fdir, &r.series, &phases, inst.cfg.converge_tol(), &inst.id, verdict, &opts)?);
                let names: Vec<String> = phases.iter().map(|p| p.0.clone()).collect();
                figs.extend(figures::phi_figure(&fdir, &r.series, &names, &inst.id, verdict, &opts)?);
            }
            "bias" => {
                let mut order = vec!["total".to_string()];
                for spec in &inst.model.params {
                    if !order.contains(&spec.group) {
                        order.push(spec.group.clone());
                    }
                }
                figs.extend(figures::bias_figures(&fdir, &r.metrics, &order, &inst.id, verdict, &opts)?);
            }
            "refs" => figs.extend(figures::refs_figure(&fdir, &r.metrics, &inst.id, verdict, &opts)?),
            "conformance" => figs.extend(crate::checks::conformance::figures(&fdir, r, &inst.id, &opts)?),
            _ => {}
        }
    }
    let mut md = vec![
        format!("# epcheck {command} — {}", inst.id),
        String::new(),
        format!("run `{}`; preset `{}`; dtype {}; device {}; seed {}", rf.run_id, inst.model.preset, inst.prec.dtype.name(), inst.prec.device_name(), inst.cfg.seed),
        String::new(),
    ];
    for r in reports {
        md.push(format!("## {} — {}", r.check, r.overall.display()));
        md.push(String::new());
        md.extend(r.summary.iter().cloned());
        md.push(String::new());
    }
    if !figs.is_empty() {
        md.push("## Figures".into());
        md.push(String::new());
        for f in &figs {
            let rel = f.strip_prefix(rf.dir()).unwrap_or(f);
            md.push(format!("- `{}`", rel.display()));
        }
    }
    let summary = md.join("\n") + "\n";
    rf.write("summary.md", &summary)?;
    let config = std::fs::read_to_string(rf.dir().join("config.toml")).unwrap_or_default();
    let manifest = std::fs::read_to_string(rf.dir().join("manifest.json")).unwrap_or_default();
    html::write_run_index(rf.dir(), &rf.run_id, &format!("epcheck {command} — {}", inst.id), reports, &summary, &figs, &config, &manifest)?;
    rf.commit()
}
