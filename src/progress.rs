//! One process-wide progress bar, set by the CLI and ticked by the relaxation loop once per iteration, so
//! anything that takes more than a second shows progress without threading a handle through every API.
//! A check whose work is countable (gdu's K steps, bias's β × N points) turns the spinner into a bar with an
//! ETA ([`stage`], [`advance`]); relaxation ticks then no longer move it. Hidden when stderr is not a terminal
//! (indicatif draws to stderr only when it is one).
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);
/// Whether the bar counts work units (set by [`stage`]) rather than relaxation iterations.
static COUNTED: AtomicBool = AtomicBool::new(false);

/// `EPCHECK_TIMING=1` (any value): every progress message also goes to stderr as one line with the seconds since
/// the first one and, on Linux, the process's minor page faults so far (fresh memory being faulted in: the cost
/// of tensor-sized temporaries), terminal or not — the timing probes of reports/performance.md.
fn probe(msg: &str) {
    static T0: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    if std::env::var_os("EPCHECK_TIMING").is_some() {
        // /proc/self/stat field 10 (minflt); the command name (field 2) is parenthesised and may hold spaces.
        let faults = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(7).map(str::to_string)));
        let faults = faults.map(|f| format!(" {f:>9} faults")).unwrap_or_default();
        eprintln!("[timing {:9.3} s{faults}] {msg}", T0.get_or_init(std::time::Instant::now).elapsed().as_secs_f64());
    }
}

/// Starts a spinner with a message; it shows the iterations run so far and the elapsed time.
pub fn start(msg: &str) {
    probe(msg);
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}] {pos} iterations").expect("template"));
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    COUNTED.store(false, Ordering::Relaxed);
    *BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(pb);
}

/// Turns the running bar into a bar of `total` work units with an ETA (no-op when no bar was started).
pub fn stage(total: u64, msg: &str) {
    probe(msg);
    if let Some(pb) = BAR.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        pb.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}] {bar:24} {pos}/{len}, ETA {eta}").expect("template"));
        pb.set_length(total.max(1));
        pb.set_position(0);
        pb.reset_eta();
        pb.set_message(msg.to_string());
        COUNTED.store(true, Ordering::Relaxed);
    }
}

/// `n` work units of the current stage done; the message names what runs next.
pub fn advance(n: u64, msg: &str) {
    probe(msg);
    if let Some(pb) = BAR.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        pb.inc(n);
        pb.set_message(msg.to_string());
    }
}

pub fn message(msg: &str) {
    probe(msg);
    if let Some(pb) = BAR.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        pb.set_message(msg.to_string());
    }
}

pub fn tick() {
    if COUNTED.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(g) = BAR.try_lock() {
        if let Some(pb) = g.as_ref() {
            pb.inc(1);
        }
    }
}

pub fn finish() {
    probe("done");
    if let Some(pb) = BAR.lock().unwrap_or_else(|e| e.into_inner()).take() {
        pb.finish_and_clear();
    }
    COUNTED.store(false, Ordering::Relaxed);
}
