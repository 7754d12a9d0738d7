//! Run plumbing shared by the command line and `verify`, below both: validating output paths before any work,
//! writing the run folder and the `--dump` file (dump first, so a failed dump leaves nothing), printing the
//! verdict digests, and the exit code of docs/verdicts.md.
use crate::checks::{self, CheckReport};
use crate::instance::Instance;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Checks, before any work, that `path` can be written as a file: its folder exists and takes a file, and the
/// path is not a folder. Nothing is left behind.
pub fn check_output_file(path: &Path, what: &str) -> Result<()> {
    if path.is_dir() {
        return Err(Error::file(path, format!("{what} must be a file path, not a folder")));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The folder exists and is writable, or can be created (it is created when the file is written).
    check_output_dir(&dir).map_err(|e| Error::file(path, format!("{what}: {e}")))
}

/// Checks, before any work, that the output folder exists and is writable, or can be created (its nearest
/// existing ancestor is a writable folder). Creates nothing.
pub fn check_output_dir(out: &Path) -> Result<()> {
    let mut p = out.to_path_buf();
    loop {
        if p.exists() {
            if !p.is_dir() {
                return Err(Error::file(out, format!("output folder: {} is not a folder", p.display())));
            }
            let probe = p.join(format!(".epcheck-probe-{}", std::process::id()));
            std::fs::write(&probe, b"").map_err(|e| Error::file(out, format!("output folder: {} is not writable: {e}", p.display())))?;
            let _ = std::fs::remove_file(&probe);
            return Ok(());
        }
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q.to_path_buf(),
            _ => p = PathBuf::from("."),
        }
    }
}

/// The `--dump` tensors of a run: parameters, batch, then every report's tensors.
pub fn dump_tensors(inst: &Instance, reports: &[CheckReport]) -> Vec<(String, tch::Tensor)> {
    let mut tensors: Vec<(String, tch::Tensor)> = vec![];
    for (i, s) in inst.model.params.iter().enumerate() {
        tensors.push((format!("param.{}", s.name), inst.params[i].shallow_clone()));
    }
    tensors.push(("input.x".into(), inst.batch.x[0].shallow_clone()));
    tensors.push(("input.y".into(), inst.batch.y.shallow_clone()));
    for r in reports {
        tensors.extend(r.dump.iter().map(|(n, t)| (n.clone(), t.shallow_clone())));
    }
    tensors
}

/// Prints the digest line of each report on stdout and its notes on stderr (`note: …`).
pub fn print_digests(reports: &[CheckReport]) {
    for r in reports {
        println!("{}", r.digest_line());
        for n in &r.notes {
            eprintln!("note: {n}");
        }
    }
}

/// Writes the dump (when asked) and the run folder, prints the digests, returns the folder and the exit code.
/// A failing dump leaves no run folder; a failing run folder removes the dump it just wrote.
pub fn complete(out: &Path, dump: Option<&Path>, command: &str, inst: &Instance, reports: &[CheckReport]) -> Result<(PathBuf, i32)> {
    complete_with(out, dump, command, inst, reports, &[])
}

/// [`complete`] with extra files committed atomically with the run folder ([`crate::report::write_run_with`]).
pub fn complete_with(out: &Path, dump: Option<&Path>, command: &str, inst: &Instance, reports: &[CheckReport], extra: &[(&str, String)]) -> Result<(PathBuf, i32)> {
    let args: Vec<String> = std::env::args().collect();
    crate::progress::message("writing report");
    if let Some(path) = dump {
        // Its folder was checked to be creatable before the run (check_output_file).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
        }
        crate::io::write_tensors(path, &dump_tensors(inst, reports), crate::io::metadata(&inst.model, &inst.cfg))?;
    }
    let dir = match crate::report::write_run_with(out, command, inst, reports, &args, extra) {
        Ok(d) => d,
        Err(e) => {
            if let Some(path) = dump {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    crate::progress::finish();
    print_digests(reports);
    let code = checks::exit_code(reports.iter().map(|r| &r.overall));
    println!("report: {}", dir.display());
    Ok((dir, code))
}

/// One shard of a campaign (`--shard i/n`, 0 ≤ i < n): the items i, i + n, i + 2n, … of a deterministic
/// enumeration (fuzz cases, β points, verify suites) — every item belongs to exactly one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/n`.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || Error::Config(format!("--shard expects i/n with 0 ≤ i < n (e.g. 0/4), got '{s}'"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if n == 0 || i >= n {
            return Err(bad());
        }
        Ok(Shard { index: i, count: n })
    }

    /// `--shard` when given; else a Slurm array task's (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN of
    /// SLURM_ARRAY_TASK_COUNT) when those are set; else the whole campaign.
    pub fn from_arg_or_env(arg: Option<&str>) -> Result<Shard> {
        if let Some(s) = arg {
            return Shard::parse(s);
        }
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT")) {
            (Some(id), Some(n)) => {
                let num = |k: &str, v: &str| v.parse::<usize>().map_err(|_| Error::Config(format!("{k} must be an integer, got '{v}'")));
                let (id, n) = (num("SLURM_ARRAY_TASK_ID", &id)?, num("SLURM_ARRAY_TASK_COUNT", &n)?);
                let min = match var("SLURM_ARRAY_TASK_MIN") {
                    Some(m) => num("SLURM_ARRAY_TASK_MIN", &m)?,
                    None => 0,
                };
                if n == 0 || id < min || id - min >= n {
                    return Err(Error::Config(format!("SLURM_ARRAY_TASK_ID {id} is outside the array {min}..{} (submit a contiguous array, e.g. --array=0-{})", min + n, n.max(1) - 1)));
                }
                Ok(Shard { index: id - min, count: n })
            }
            _ => Ok(Shard::ALL),
        }
    }

    /// Whether item `i` belongs to this shard.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }

    /// The indices of `0..n` this shard owns.
    pub fn select(&self, n: usize) -> Vec<usize> {
        (0..n).filter(|&i| self.owns(i)).collect()
    }
}
