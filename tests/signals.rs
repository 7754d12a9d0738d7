//! Signals and concurrency (issue 14, docs/reports.md "Interrupted runs"): SIGINT and SIGTERM at random points
//! of a `gdu` and of a `train` run leave no staging folder, no partial file and no lock behind; a `train`
//! interrupted anywhere and resumed with `--resume` ends bit-identical to an uninterrupted run (checkpoints
//! and the epoch table); two identical runs with one `--out` both complete, in two folders.
//!
//! The kill times are drawn from a seeded generator (EPCHECK_TEST_SEED moves them, like every draw of the suite)
//! over [0, the measured uninterrupted wall time], so both the early phases (instance construction, data
//! loading) and the writing of the report are hit.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KILLS: usize = 20;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_epcheck")
}

/// A small deterministic generator (SplitMix64) for the kill times.
struct Draw(u64);
impl Draw {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn run(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(bin()).args(args).env("OMP_NUM_THREADS", "1").output().expect("run epcheck");
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Starts `args`, sends `sig` after `delay`, and returns how it ended: its exit code, or 128 + the signal when the
/// signal arrived before epcheck installed its handler (the default action).
fn interrupt(args: &[&str], sig: &str, delay: Duration) -> i32 {
    let mut child = Command::new(bin()).args(args).env("OMP_NUM_THREADS", "1").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    std::thread::sleep(delay);
    let _ = Command::new("kill").args(["-s", sig, &child.id().to_string()]).status();
    let out = child.wait_with_output().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    let code = out.status.code().or(out.status.signal().map(|s| 128 + s)).unwrap_or(-1);
    assert_ne!(code, 101, "panic after {sig} at {delay:?}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(matches!(code, 0 | 130 | 143), "{sig} at {delay:?}: exit {code}: {}", String::from_utf8_lossy(&out.stderr));
    code
}

/// Every path under `dir` that a finished or interrupted run must not leave: hidden entries (staging folders,
/// `.lock`) and `*.partial` files.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut bad = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else { return bad };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with(".partial") {
            bad.push(p.clone());
        }
        if p.is_dir() {
            bad.extend(leftovers(&p));
        }
    }
    bad
}

fn run_folders(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out).map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()).unwrap_or_default();
    v.sort();
    v
}

fn seed() -> u64 {
    epcheck::tensor_util::test_seed(14) as u64
}

const GDU: &[&str] = &["gdu", "--preset", "p-mlp", "--archi", "20-10-5", "--batch", "4", "--T", "40", "--K", "10"];

#[test]
fn gdu_interrupted_anywhere_leaves_nothing_partial() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    let mut a: Vec<&str> = GDU.to_vec();
    let b = base.to_str().unwrap();
    a.extend(["--out", b]);
    // The shorter of two uninterrupted runs (the first also pays for cold file caches).
    let mut wall = Duration::MAX;
    for _ in 0..2 {
        let t0 = Instant::now();
        let (code, so, se) = run(&a);
        wall = wall.min(t0.elapsed());
        assert!(code <= 1, "uninterrupted gdu: {so}{se}");
    }
    let mut draw = Draw(seed());
    let (mut completed, mut stopped) = (0, 0);
    for i in 0..KILLS {
        let out = d.path().join(format!("k{i}"));
        let o = out.to_str().unwrap().to_string();
        let mut a: Vec<&str> = GDU.to_vec();
        a.extend(["--out", &o]);
        let delay = wall.mul_f64(draw.unit());
        let sig = if i % 2 == 0 { "INT" } else { "TERM" };
        let code = interrupt(&a, sig, delay);
        let left = leftovers(&out);
        assert!(left.is_empty(), "SIG{sig} after {delay:?} (exit {code}) left {left:?}");
        let runs = run_folders(&out);
        if code == 0 {
            completed += 1;
            assert_eq!(runs.len(), 1, "a completed run has its folder");
        } else {
            stopped += 1;
        }
        // Whatever exists is a whole run folder: the report is staged and renamed in one step.
        for r in runs {
            for f in ["summary.md", "manifest.json", "config.toml", "index.html"] {
                assert!(r.join(f).exists(), "SIG{sig} after {delay:?}: {} lacks {f}", r.display());
            }
        }
    }
    assert!(stopped >= KILLS / 4, "most kills must land inside the run ({stopped} stopped, {completed} completed)");
}

fn train_args(out: &str) -> Vec<String> {
    [
        "train", "--preset", "p-mlp", "--archi", "64-16-10", "--dataset", "digits", "--set", "train.train_limit=320", "--set", "train.test_limit=64", "--batch", "16",
        "--T", "20", "--K", "6", "--epochs", "3", "--estimator", "ep_centered", "--out", out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Tensors and metadata of a safetensors file, for a bitwise comparison.
fn tensors(p: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The epoch table without its wall-time rows.
fn table(dir: &Path) -> Vec<String> {
    let csv = std::fs::read_to_string(dir.join("tables/epochs.csv")).unwrap();
    csv.lines().filter(|l| !l.contains(",seconds")).map(String::from).collect()
}

#[test]
fn train_interrupted_anywhere_resumes_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    let t0 = Instant::now();
    let a = train_args(base.to_str().unwrap());
    let (code, so, se) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let wall = t0.elapsed();
    assert_eq!(code, 0, "uninterrupted train: {so}{se}");
    let reference = run_folders(&base).pop().expect("run folder");
    let mut draw = Draw(seed() ^ 0x5eed);
    let (mut resumed, mut mid_epoch) = (0, 0);
    for i in 0..KILLS {
        let out = d.path().join(format!("k{i}"));
        let a = train_args(out.to_str().unwrap());
        let delay = wall.mul_f64(draw.unit());
        let sig = if i % 2 == 0 { "INT" } else { "TERM" };
        let code = interrupt(&a.iter().map(String::as_str).collect::<Vec<_>>(), sig, delay);
        let left = leftovers(&out);
        assert!(left.is_empty(), "SIG{sig} after {delay:?} (exit {code}) left {left:?}");
        let runs = run_folders(&out);
        assert!(runs.len() <= 1);
        let Some(dir) = runs.into_iter().next() else { continue };
        // A folder that exists is resumable: its configuration and manifest are there.
        for f in ["config.toml", "manifest.json"] {
            assert!(dir.join(f).exists(), "SIG{sig} after {delay:?}: {} lacks {f}", dir.display());
        }
        if code != 0 {
            let done = epcheck::train::checkpoint_epochs(&dir.join("checkpoints/last.safetensors")).unwrap_or(0);
            if done < 3 {
                mid_epoch += 1;
            }
            let (code, so, se) = run(&["train", "--resume", dir.to_str().unwrap(), "--out", out.to_str().unwrap()]);
            assert_eq!(code, 0, "resume after SIG{sig} at {delay:?}: {so}{se}");
            resumed += 1;
        }
        for ck in ["last.safetensors", "epoch0001.safetensors", "epoch0002.safetensors", "epoch0003.safetensors"] {
            assert!(
                tensors(&dir.join("checkpoints").join(ck)) == tensors(&reference.join("checkpoints").join(ck)),
                "SIG{sig} after {delay:?}: {ck} differs from the uninterrupted run's"
            );
        }
        assert_eq!(table(&dir), table(&reference), "SIG{sig} after {delay:?}: the epoch table differs");
        assert!(leftovers(&dir).is_empty());
    }
    assert!(resumed >= KILLS / 4 && mid_epoch >= 1, "kills must land inside training ({resumed} resumed, {mid_epoch} before the last epoch)");
}

#[test]
fn two_identical_runs_with_one_out_both_complete_in_two_folders() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let o = out.to_str().unwrap();
    let mut a: Vec<&str> = GDU.to_vec();
    a.extend(["--out", o]);
    let kids: Vec<_> = (0..2).map(|_| Command::new(bin()).args(&a).env("OMP_NUM_THREADS", "1").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()).collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.code().unwrap_or(-1) <= 1, "{}", String::from_utf8_lossy(&o.stderr));
    }
    let runs = run_folders(&out);
    assert_eq!(runs.len(), 2, "{runs:?}");
    for r in &runs {
        assert!(r.join("summary.md").exists() && r.join("index.html").exists());
    }
    assert!(leftovers(&out).is_empty());
    // Two trains with one --out: two folders; a second train on the same folder (resume) while the first holds
    // it is refused (the lock) — covered by the bad-input corpus.
    let mut kids = vec![];
    for _ in 0..2 {
        let a = train_args(o);
        kids.push(Command::new(bin()).args(&a).env("OMP_NUM_THREADS", "1").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    }
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let trains: Vec<_> = run_folders(&out).into_iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("train-")).collect();
    assert_eq!(trains.len(), 2, "{trains:?}");
    assert_eq!(tensors(&trains[0].join("checkpoints/last.safetensors")), tensors(&trains[1].join("checkpoints/last.safetensors")));
}
