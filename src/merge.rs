//! `epcheck merge DIR…`: joins the run folders of a sharded campaign (`fuzz --shard i/n`, e.g. the tasks of a
//! Slurm array, docs/slurm.md) into one run folder; `bias --shard` run folders (`bias-shard.json`) into the run
//! of the whole β grid (`merge_bias`), and `verify --shard` output folders (`verify-shard.json`) into one job
//! (`merge_verify`). For fuzz shards: one run folder — one cases table (rows in the unsharded order), one summary,
//! one JUnit file and one index.html, the shards' regression files and shrunk graphs. It refuses, before
//! writing anything, folders that are not shard run folders, shards of different campaigns (the recorded
//! `campaign.json` must match: family and its hash, seed, cases, properties, shrinking), shards of different
//! splits, duplicate or missing shards, and tables that do not hold exactly the shard's cases.
use crate::checks::bias::{BetaRec, BiasOptions, ShardRecord};
use crate::fuzz::{self, CampaignRecord, Row};
use crate::verify::{SuiteRec, VerifyShardRecord, VERIFY_SHARD};
use crate::{Error, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct MergeArgs {
    /// The shards' run folders (fuzz, bias) or output folders (verify): one per shard, every shard of the split.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Output folder for the merged run folder.
    #[arg(long, default_value = "reports/runs")]
    pub out: PathBuf,
}

fn record(dir: &Path) -> Result<CampaignRecord> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "not a run folder (no such folder)"));
    }
    let p = dir.join("campaign.json");
    let text = std::fs::read_to_string(&p).map_err(|_| Error::file(dir, "not a shard run folder of `epcheck fuzz` (no campaign.json)"))?;
    serde_json::from_str(&text).map_err(|e| Error::file(&p, format!("malformed campaign record: {e}")))
}

/// The first key where two campaigns differ, as `key: a vs b`.
fn difference(a: &CampaignRecord, b: &CampaignRecord) -> Option<String> {
    if a.command != b.command {
        return Some(format!("command: {} vs {}", a.command, b.command));
    }
    let (va, vb) = (serde_json::to_value(&a.campaign).ok()?, serde_json::to_value(&b.campaign).ok()?);
    let (ma, mb) = (va.as_object()?, vb.as_object()?);
    ma.iter().find(|(k, v)| mb.get(*k) != Some(*v)).map(|(k, v)| format!("{k}: {} vs {}", mb.get(k).map(|x| x.to_string()).unwrap_or_default(), v))
}

/// Validates the shards and reads their tables: (the campaign, rows in the unsharded order, wall times).
pub fn load_shards(dirs: &[PathBuf]) -> Result<(CampaignRecord, Vec<Row>, Vec<f64>)> {
    let recs = dirs.iter().map(|d| record(d)).collect::<Result<Vec<_>>>()?;
    let first = &recs[0];
    for (d, r) in dirs.iter().zip(&recs).skip(1) {
        if let Some(diff) = difference(first, r) {
            return Err(Error::file(d, format!("a shard of a different campaign than {} ({diff})", dirs[0].display())));
        }
    }
    let n = shard_set(dirs, &recs.iter().map(|r| r.shard).collect::<Vec<_>>(), "run folders")?;
    let props = &first.campaign.properties;
    let mut rows = vec![];
    for (d, r) in dirs.iter().zip(&recs) {
        let t = d.join("tables").join("cases.parquet");
        let mut got = fuzz::read_cases(&t)?;
        let shard = crate::run::Shard { index: r.shard[0], count: n };
        let want: Vec<(usize, &str)> = shard.select(first.campaign.cases).into_iter().flat_map(|c| props.iter().map(move |p| (c, p.as_str()))).collect();
        let have: Vec<(usize, &str)> = got.iter().map(|r| (r.case, r.outcome.property.as_str())).collect();
        if have != want {
            return Err(Error::file(&t, format!("holds {} rows, not the {} rows (case × property) of shard {}/{n}", have.len(), want.len(), r.shard[0])));
        }
        rows.append(&mut got);
    }
    let order = |p: &str| props.iter().position(|q| q == p).unwrap_or(usize::MAX);
    rows.sort_by(|a, b| a.case.cmp(&b.case).then(order(&a.outcome.property).cmp(&order(&b.outcome.property))));
    Ok((first.clone(), rows, recs.iter().map(|r| r.wall_s).collect()))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(to).map_err(|e| Error::file(to, e))?;
    for e in std::fs::read_dir(from).map_err(|e| Error::file(from, e))?.flatten() {
        let p = e.path();
        if p.is_file() {
            let q = to.join(e.file_name());
            std::fs::copy(&p, &q).map_err(|e| Error::file(&q, e))?;
        }
    }
    Ok(())
}

pub fn command(a: MergeArgs) -> Result<i32> {
    if a.dirs[0].join(BIAS_SHARD).is_file() {
        return merge_bias(&a.dirs, &a.out);
    }
    if a.dirs[0].join(VERIFY_SHARD).is_file() {
        return merge_verify(&a.dirs, &a.out);
    }
    let (rec, rows, walls) = load_shards(&a.dirs)?;
    crate::run::check_output_dir(&a.out)?;
    let c = &rec.campaign;
    let n = walls.len();
    let rf = crate::report::RunFolder::new(&a.out, "fuzz", &format!("{}-seed{}-n{}-merged{n}", c.family, c.seed, c.cases))?;
    for d in &a.dirs {
        copy_dir(&d.join("regressions"), &rf.dir().join("regressions"))?;
        copy_dir(&d.join("shrunk"), &rf.dir().join("shrunk"))?;
    }
    let total: f64 = walls.iter().sum();
    let max = walls.iter().cloned().fold(0.0, f64::max);
    let merged = CampaignRecord { command: rec.command.clone(), campaign: c.clone(), shard: [0, 1], wall_s: total };
    let what = format!("{} cases merged from {n} shards (wall time: longest shard {max:.1} s, sum {total:.1} s)", c.cases);
    let (code, line) = fuzz::write_campaign(&rf, &merged, &rows, &what)?;
    let sources = a.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join("\n");
    rf.write("shards.txt", &(sources + "\n"))?;
    let dir = rf.commit()?;
    println!("{line}");
    println!("report: {}", dir.display());
    Ok(code)
}

/// The record of a `bias --shard i/n` run folder.
pub const BIAS_SHARD: &str = "bias-shard.json";

/// The record of a `bias` shard, as written into its run folder (with the run, `run::complete_with`).
pub fn bias_shard_json(rec: &ShardRecord) -> String {
    serde_json::to_string(rec).expect("json")
}

fn bias_record(dir: &Path) -> Result<ShardRecord> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "not a run folder (no such folder)"));
    }
    let p = dir.join(BIAS_SHARD);
    let text = std::fs::read_to_string(&p).map_err(|_| Error::file(dir, format!("not a run folder of `epcheck bias --shard` (no {BIAS_SHARD})")))?;
    serde_json::from_str(&text).map_err(|e| Error::file(&p, format!("malformed bias shard record: {e}")))
}

/// The first dotted key where two TOML tables differ, as `key: a vs b` (`(none)` where a key is absent).
fn toml_difference(a: &toml::Table, b: &toml::Table, prefix: &str) -> Option<String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                if let Some(d) = toml_difference(x, y, &key) {
                    return Some(d);
                }
            }
            (x, y) if x != y => {
                let show = |v: Option<&toml::Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "(none)".into());
                return Some(format!("{key}: {} vs {}", show(x), show(y)));
            }
            _ => {}
        }
    }
    None
}

/// Checks that the shards `[i, n]` read from `dirs` form one split, each shard once and none missing; returns n.
fn shard_set(dirs: &[PathBuf], shards: &[[usize; 2]], what: &str) -> Result<usize> {
    let (first, n) = (shards[0], shards[0][1]);
    for (d, s) in dirs.iter().zip(shards) {
        if s[1] != n {
            return Err(Error::file(d, format!("shard {}/{} of a different split than {} ({}/{n})", s[0], s[1], dirs[0].display(), first[0])));
        }
    }
    let mut seen = vec![None::<&PathBuf>; n];
    for (d, s) in dirs.iter().zip(shards) {
        if let Some(other) = seen[s[0]] {
            return Err(Error::file(d, format!("shard {}/{n} is given twice (also {})", s[0], other.display())));
        }
        seen[s[0]] = Some(d);
    }
    if let Some(i) = seen.iter().position(|s| s.is_none()) {
        return Err(Error::Config(format!("merge: shard {i}/{n} is missing (give the {what} of all {n} shards)")));
    }
    Ok(n)
}

/// Validates the shards of a bias sweep: same configuration (the differing key is named), same instance and
/// input files, one split, each shard once, each holding exactly its β points. Returns the records, in shard order.
pub fn load_bias_shards(dirs: &[PathBuf]) -> Result<Vec<ShardRecord>> {
    let recs = dirs.iter().map(|d| bias_record(d)).collect::<Result<Vec<_>>>()?;
    let first = &recs[0];
    let parse = |d: &Path, text: &str| -> Result<toml::Table> { text.parse::<toml::Table>().map_err(|e| Error::file(&d.join(BIAS_SHARD), format!("malformed configuration: {e}"))) };
    let c0 = parse(&dirs[0], &first.config)?;
    for (d, r) in dirs.iter().zip(&recs).skip(1) {
        let differ = |what: String| Err(Error::file(d, format!("a shard of a different configuration than {} ({what})", dirs[0].display())));
        if let Some(k) = toml_difference(&c0, &parse(d, &r.config)?, "") {
            return differ(k);
        }
        if r.params != first.params {
            return differ(format!("--params: {:?} vs {:?}", first.params, r.params));
        }
        if r.input != first.input {
            return differ(format!("--input: {:?} vs {:?}", first.input, r.input));
        }
        if r.instance != first.instance {
            return differ(format!("instance: {} vs {}", first.instance, r.instance));
        }
        if r.context != first.context {
            return differ("reference gradient: the shards computed different references".into());
        }
    }
    let n = shard_set(dirs, &recs.iter().map(|r| r.shard).collect::<Vec<_>>(), "run folders")?;
    for (d, r) in dirs.iter().zip(&recs) {
        let want = crate::run::Shard { index: r.shard[0], count: n }.select(r.grid_len);
        let have: Vec<usize> = r.betas.iter().map(|b| b.index).collect();
        if have != want {
            return Err(Error::file(&d.join(BIAS_SHARD), format!("holds β points {have:?}, not the grid indices {want:?} of shard {}/{n}", r.shard[0])));
        }
    }
    let mut recs = recs;
    recs.sort_by_key(|r| r.shard[0]);
    Ok(recs)
}

/// `epcheck merge` of `bias --shard` run folders: the sweep's report computed from the merged per-β records,
/// exactly as one unsharded run computes it from its own.
fn merge_bias(dirs: &[PathBuf], out: &Path) -> Result<i32> {
    let recs = load_bias_shards(dirs)?;
    crate::run::check_output_dir(out)?;
    let first = &recs[0];
    // The instance (model, parameters, batch) from the shards' resolved configuration.
    let cfg = crate::config::RunConfig::resolve(None, Some(&dirs[0].join("config.toml")), toml::Table::new())?;
    for p in [&first.params, &first.input].into_iter().flatten() {
        if !p.exists() {
            return Err(Error::file(p, "no such file (a file the shards were run with)"));
        }
    }
    let inst = crate::instance::Instance::build(cfg, first.params.as_deref(), first.input.as_deref())?;
    if inst.id != first.instance {
        return Err(Error::file(&dirs[0].join("config.toml"), format!("rebuilds instance {}, not the shards' {}", inst.id, first.instance)));
    }
    let o = BiasOptions::from_config(&inst.cfg);
    if o.grid.len() != first.grid_len {
        return Err(Error::file(&dirs[0].join("config.toml"), format!("checks.bias.grid has {} points, the shards {}", o.grid.len(), first.grid_len)));
    }
    let mut betas: Vec<BetaRec> = recs.iter().flat_map(|r| r.betas.iter().cloned()).collect();
    betas.sort_by_key(|b| b.index);
    let rep = crate::checks::bias::finish(&inst, &o, &first.context, &betas, vec![]);
    let (dir, code) = crate::run::complete(out, None, "bias", &inst, &[rep])?;
    let sources = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join("\n");
    let p = dir.join("shards.txt");
    std::fs::write(&p, sources + "\n").map_err(|e| Error::file(&p, e))?;
    Ok(code)
}

fn verify_record(dir: &Path) -> Result<VerifyShardRecord> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "not an output folder of `epcheck verify --shard` (no such folder)"));
    }
    let p = dir.join(VERIFY_SHARD);
    let text = std::fs::read_to_string(&p).map_err(|_| Error::file(dir, format!("not an output folder of `epcheck verify --shard` (no {VERIFY_SHARD})")))?;
    serde_json::from_str(&text).map_err(|e| Error::file(&p, format!("malformed verify shard record: {e}")))
}

/// Validates the shards of a verify job: the same suite files (paths and contents), one split, each shard once,
/// each holding exactly its suites. Returns the folders and records in shard order.
pub fn load_verify_shards(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, VerifyShardRecord)>> {
    let recs = dirs.iter().map(|d| verify_record(d)).collect::<Result<Vec<_>>>()?;
    let first = &recs[0];
    for (d, r) in dirs.iter().zip(&recs).skip(1) {
        let differ = |what: String| Err(Error::file(d, format!("a shard of a different verify job than {} ({what})", dirs[0].display())));
        if r.suites.len() != first.suites.len() {
            return differ(format!("{} suite files vs {}", first.suites.len(), r.suites.len()));
        }
        for ((fa, ha), (fb, hb)) in first.suites.iter().zip(&r.suites) {
            if fa != fb {
                return differ(format!("suite file {fa} vs {fb}"));
            }
            if ha != hb {
                return differ(format!("{fa}: sha256 {}… vs {}… (the suite file changed)", &ha[..12.min(ha.len())], &hb[..12.min(hb.len())]));
            }
        }
    }
    let n = shard_set(dirs, &recs.iter().map(|r| r.shard).collect::<Vec<_>>(), "output folders")?;
    for (d, r) in dirs.iter().zip(&recs) {
        let want = crate::run::Shard { index: r.shard[0], count: n }.select(r.suites.len());
        let have: Vec<usize> = r.ran.iter().map(|s| s.index).collect();
        if have != want {
            return Err(Error::file(&d.join(VERIFY_SHARD), format!("holds suites {have:?}, not the suites {want:?} of shard {}/{n}", r.shard[0])));
        }
        for s in &r.ran {
            for run in s.rows.iter().filter_map(|x| x.run_dir.as_ref()) {
                if !d.join(run).is_dir() {
                    return Err(Error::file(&d.join(run), format!("run folder of suite {} is missing", s.name)));
                }
            }
        }
    }
    let mut v: Vec<(PathBuf, VerifyShardRecord)> = dirs.iter().cloned().zip(recs).collect();
    v.sort_by_key(|(_, r)| r.shard[0]);
    Ok(v)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::file(to, e))?;
    for e in std::fs::read_dir(from).map_err(|e| Error::file(from, e))?.flatten() {
        let (p, q) = (e.path(), to.join(e.file_name()));
        if p.is_dir() {
            copy_tree(&p, &q)?;
        } else {
            std::fs::copy(&p, &q).map_err(|e| Error::file(&q, e))?;
        }
    }
    Ok(())
}

/// `epcheck merge` of `verify --shard` output folders: every shard's run folders copied into `out`, one JUnit file,
/// one `summary.md` and one `index.html` with every suite in the order of the sorted suite files — written by the
/// same code as an unsharded `verify`.
fn merge_verify(dirs: &[PathBuf], out: &Path) -> Result<i32> {
    let recs = load_verify_shards(dirs)?;
    crate::run::check_output_dir(out)?;
    if out.join("junit.xml").exists() || out.join(VERIFY_SHARD).exists() {
        return Err(Error::file(out, "holds a verify job already (junit.xml): give an empty or new --out folder"));
    }
    let mut suites: Vec<SuiteRec> = vec![];
    // Run folders keep their names unless two shards wrote the same one (same instance, same second).
    let mut names: std::collections::BTreeMap<(usize, String), String> = Default::default();
    for (d, r) in &recs {
        let k = r.shard[0];
        for s in &r.ran {
            let mut s = s.clone();
            for row in s.rows.iter_mut() {
                if let Some(run) = row.run_dir.clone() {
                    let name = match names.get(&(k, run.clone())) {
                        Some(n) => n.clone(),
                        None => {
                            let n = if names.values().any(|v| v == &run) { format!("{run}-shard{k}") } else { run.clone() };
                            copy_tree(&d.join(&run), &out.join(&n))?;
                            names.insert((k, run), n.clone());
                            n
                        }
                    };
                    row.run_dir = Some(name);
                }
            }
            suites.push(s);
        }
    }
    suites.sort_by_key(|s| s.index);
    let time = std::time::Duration::from_secs_f64(recs.iter().map(|(_, r)| r.time_s).sum());
    let (code, summary) = crate::verify::finish_job(out, &out.join("junit.xml"), &suites, time)?;
    let p = out.join("summary.md");
    std::fs::write(&p, summary).map_err(|e| Error::file(&p, e))?;
    let sources = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join("\n");
    let p = out.join("shards.txt");
    std::fs::write(&p, sources + "\n").map_err(|e| Error::file(&p, e))?;
    Ok(code)
}
