//! One process-wide progress bar, set by the CLI and ticked by the relaxation loop once per iteration, so
//! anything that takes more than a second shows progress without threading a handle through every API.
//! Hidden when stderr is not a terminal.
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Starts a spinner with a message; it shows the iterations run so far and the elapsed time.
pub fn start(msg: &str) {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}] {pos} iterations").expect("template"));
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    *BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(pb);
}

pub fn message(msg: &str) {
    if let Some(pb) = BAR.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        pb.set_message(msg.to_string());
    }
}

pub fn tick() {
    if let Ok(g) = BAR.try_lock() {
        if let Some(pb) = g.as_ref() {
            pb.inc(1);
        }
    }
}

pub fn finish() {
    if let Some(pb) = BAR.lock().unwrap_or_else(|e| e.into_inner()).take() {
        pb.finish_and_clear();
    }
}
