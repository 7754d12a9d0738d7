//! Issue 18: a fuzz campaign as a 4-task Slurm job array on a real single-node Slurm (Debian's slurm-wlm with
//! munge, started by `scripts/slurm/start` under a private folder and ports, stopped at the end), merged with
//! `epcheck merge`: the merged table must equal an unsharded run's row for row (the timing column excepted).
//! The tasks find their shard from SLURM_ARRAY_TASK_ID/COUNT/MIN (no --shard). Skips — with a message — only
//! where Slurm cannot be installed (`start` exits 3: no root or no apt). The same daemons then run a bias sweep as
//! a 4-task array over its β points (`scripts/slurm/bias-array.sbatch`), merged and compared with the unsharded sweep.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{bin, cases_table as table, run_dirs};

struct Daemons(PathBuf);

impl Drop for Daemons {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg("scripts/slurm/stop").env("EPCHECK_SLURM_DIR", &self.0).status();
    }
}

/// Two TCP ports free on localhost now (the OS picks it): two test runs on one machine (or a Slurm already running on
/// the default ports) do not collide on fixed ports.
fn free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free localhost port");
    // Both held at once, so that the two differ.
    let (a, b) = (bind(), bind());
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

#[test]
fn slurm_array_campaign_merges_to_the_unsharded_table() {
    let d = tempfile::tempdir().unwrap();
    let sd = d.path().join("slurm");
    let (ctld_port, slurmd_port) = free_ports();
    let start = Command::new("bash")
        .arg("scripts/slurm/start")
        .env("EPCHECK_SLURM_DIR", &sd)
        .env("EPCHECK_SLURMCTLD_PORT", ctld_port.to_string())
        .env("EPCHECK_SLURMD_PORT", slurmd_port.to_string())
        .output()
        .expect("bash runs");
    if start.status.code() == Some(3) {
        eprintln!("SKIP slurm test: {}", String::from_utf8_lossy(&start.stderr).trim());
        return;
    }
    let _daemons = Daemons(sd.clone());
    assert_eq!(start.status.code(), Some(0), "scripts/slurm/start: {}", String::from_utf8_lossy(&start.stderr));
    let conf = sd.join("slurm.conf");
    let (cases, seed, props) = ("8", "3", "local,audit,converge,ep_bptt");
    let shards = d.path().join("shards");
    let t0 = Instant::now();
    let sub = Command::new("sbatch")
        .env("SLURM_CONF", &conf)
        // The job's variables travel with --export=ALL (inside --export, a comma would split PROPERTIES).
        .envs([("EPCHECK", env!("CARGO_BIN_EXE_epcheck").to_string()), ("CASES", cases.into()), ("SEED", seed.into()), ("OUT", shards.display().to_string()), ("PROPERTIES", props.into())])
        .args(["--parsable", "--wait", "--array=0-3", "--time=10", "--export=ALL"])
        .arg(format!("--output={}/slurm-%A_%a.out", d.path().display()))
        .arg("scripts/slurm/fuzz-array.sbatch")
        .output()
        .expect("sbatch runs");
    let logs: String = std::fs::read_dir(d.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("slurm-")).map(|e| std::fs::read_to_string(e.path()).unwrap_or_default()).collect();
    assert!(sub.status.success(), "sbatch --wait: {}{}\n{logs}", String::from_utf8_lossy(&sub.stdout), String::from_utf8_lossy(&sub.stderr));
    assert!(t0.elapsed() < Duration::from_secs(300));
    let parts = run_dirs(&shards);
    assert_eq!(parts.len(), 4, "one run folder per array task: {parts:?}\n{logs}");
    for (i, p) in parts.iter().enumerate() {
        assert!(p.to_string_lossy().contains(&format!("shard{i}of4")), "{}", p.display());
    }
    let merged = d.path().join("merged");
    let o = bin().arg("merge").args(&parts).arg("--out").arg(&merged).output().unwrap();
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let single = d.path().join("single");
    let o = bin().args(["fuzz", "--cases", cases, "--seed", seed, "--properties", props, "--out"]).arg(&single).output().unwrap();
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", String::from_utf8_lossy(&o.stderr));
    let (m, s) = (run_dirs(&merged), run_dirs(&single));
    assert_eq!(table(&m[0]), table(&s[0]), "the merged array equals the unsharded run, row for row");
    assert_eq!(table(&m[0]).len(), 1 + 8 * 4);

    // A bias sweep as a 4-task array sharded over its β points (scripts/slurm/bias-array.sbatch), merged: the same
    // metrics table as the unsharded sweep (every f64 compared by its CSV text, the run_id column excepted).
    let (grid, nlist) = ("1e-3:3e-3:1e-2:3e-2:0.1", "1:2");
    let extra = "--archi 6-5-3 --activation tanh --batch 2 --set init_scale=0.5";
    let bshards = d.path().join("bias-shards");
    let sub = Command::new("sbatch")
        .env("SLURM_CONF", &conf)
        .envs([("EPCHECK", env!("CARGO_BIN_EXE_epcheck").to_string()), ("GRID", grid.into()), ("NLIST", nlist.into()), ("ARGS", extra.into()), ("OUT", bshards.display().to_string())])
        .args(["--parsable", "--wait", "--array=0-3", "--time=10", "--export=ALL"])
        .arg(format!("--output={}/slurm-bias-%A_%a.out", d.path().display()))
        .arg("scripts/slurm/bias-array.sbatch")
        .output()
        .expect("sbatch runs");
    let logs: String = std::fs::read_dir(d.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("slurm-bias-")).map(|e| std::fs::read_to_string(e.path()).unwrap_or_default()).collect();
    assert!(sub.status.success(), "sbatch --wait (bias): {}{}\n{logs}", String::from_utf8_lossy(&sub.stdout), String::from_utf8_lossy(&sub.stderr));
    let parts = run_dirs(&bshards);
    assert_eq!(parts.len(), 4, "one run folder per array task: {parts:?}\n{logs}");
    let bmerged = d.path().join("bias-merged");
    let o = bin().arg("merge").args(&parts).arg("--out").arg(&bmerged).output().unwrap();
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let bsingle = d.path().join("bias-single");
    let o = bin().args(["bias", "--grid", &grid.replace(':', ","), "--N-list", &nlist.replace(':', ",")]).args(extra.split(' ')).arg("--out").arg(&bsingle).output().unwrap();
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", String::from_utf8_lossy(&o.stderr));
    let metrics = |dir: &Path| -> Vec<String> {
        let t = std::fs::read_to_string(dir.join("tables").join("metrics.csv")).unwrap();
        t.lines().map(|l| l.split_once(',').map(|(_, rest)| rest.to_string()).unwrap_or_default()).collect()
    };
    let (bm, bs) = (metrics(&run_dirs(&bmerged)[0]), metrics(&run_dirs(&bsingle)[0]));
    assert!(bs.iter().any(|r| r.contains(",fit,total,") && r.contains(",slope,")), "the sweep fits slopes");
    assert_eq!(bm, bs, "the merged bias array equals the unsharded sweep, row for row");
}
