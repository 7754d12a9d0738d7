//! `epcheck verify PATH…`: certification suites for CI. A suite (`verify/*.toml`) names a model (a preset
//! with overrides), seeds, a dtype and the checks to run with their thresholds:
//!
//! ```toml
//! name = "p-mlp-small"          # default: the file stem
//! seeds = [0]                   # one instance per seed
//! dtype = "f64"
//! figure_format = "svg"         # checks.figure_format of the run folders
//! threads = 1                   # optional: libtorch intra-op threads for this suite (1 for tiny instances)
//! [model]                       # any configuration key of the preset (conventions §13, §14)
//! preset = "p-mlp"              # or graph = "graphs/tiny.toml": an architecture graph file (src/graph.rs),
//!                               # relative to the suite file
//! archi = [6, 5, 5, 3]
//! [checks.gdu]                  # the checks to run; keys are the `checks.<check>.*` configuration keys
//! bias_const = 10
//! cos_min = 0.999               # optional verify gate: every cos row ≥ cos_min (best over β)
//! [checks.conformance]          # external tensors (path relative to the suite file) and a name map
//! file = "../fixtures/conformance/pmlp_reference.safetensors"
//! ```
//!
//! Checks: `converge`, `local`, `audit`, `gdu`, `bias`, `refs`, `conformance`, run in that order; `fuzz`
//! (`property = "…"`: one fuzz property, the suites `epcheck fuzz` writes for shrunk cases, docs/fuzz.md). Every
//! suite is parsed and validated before anything runs (bad input → exit 2, no report). Prints one line per
//! check and instance, then `N passed, N failed`; writes a run folder per instance and one JUnit XML file
//! (one test case per check and instance) and `<out>/index.html` (one row per check, linking each run's
//! `index.html`). Exit code (docs/verdicts.md): 0 when every check passed or only
//! reported (info), 1 when one failed or was inconclusive, 2 when one could not run (error).
use crate::checks::{self, audit, bias, conformance, converge, gdu, local, refs, CheckReport, Verdict};
use crate::config::{merge, RunConfig};
use crate::instance::Instance;
use crate::{Error, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Suite files, or folders whose `*.toml` files are suites.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output folder: a run folder per instance (each with index.html), junit.xml and index.html (one row per
    /// check, linking every run).
    #[arg(long, default_value = "reports/runs")]
    pub out: PathBuf,
    /// JUnit XML file (default: <out>/junit.xml).
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Run only shard i of n (0 ≤ i < n) of the sorted suite files: suites i, i + n, …; default:
    /// SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT when set. Every suite is still validated.
    #[arg(long, value_name = "i/n")]
    pub shard: Option<String>,
}

/// The checks a suite may list, in the order they run.
pub const CHECKS: [&str; 7] = ["converge", "local", "audit", "gdu", "bias", "refs", "conformance"];

/// Keys of a suite's check table that belong to verify, not to the configuration.
pub const VERIFY_KEYS: [&str; 3] = ["cos_min", "file", "names"];

/// One check of a suite, with its verify-level options.
#[derive(Clone, Debug)]
pub struct SuiteCheck {
    pub name: String,
    pub cos_min: Option<f64>,
    pub file: Option<PathBuf>,
    pub names: Option<PathBuf>,
}

/// A parsed, validated suite.
#[derive(Clone, Debug)]
pub struct Suite {
    pub path: PathBuf,
    pub name: String,
    pub seeds: Vec<u64>,
    pub checks: Vec<SuiteCheck>,
    /// Resolved configuration per seed.
    pub configs: Vec<RunConfig>,
    /// The configuration without a seed override (conformance instances come from the external file).
    pub base: RunConfig,
    /// libtorch intra-op threads while this suite runs (`threads = 1` for tiny instances: on a busy machine a
    /// thread pool around kernels of a few hundred elements costs far more than it saves).
    pub threads: Option<i32>,
}

fn bad(path: &Path, msg: impl ToString) -> Error {
    Error::file(path, msg)
}

/// Expands folders into their `*.toml` files (sorted).
pub fn suite_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p).map_err(|e| bad(p, e))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|f| f.extension().is_some_and(|x| x == "toml")).collect();
            v.sort();
            if v.is_empty() {
                return Err(bad(p, "no suite files (*.toml) in this folder"));
            }
            out.extend(v);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(bad(p, "no such file"));
        }
    }
    Ok(out)
}

/// Parses and validates a suite file.
pub fn parse_suite(path: &Path) -> Result<Suite> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, e))?;
    let mut t: toml::Table = toml::from_str(&text).map_err(|e| bad(path, format!("malformed TOML: {}", e.to_string().lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" "))))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = match t.remove("name") {
        None => path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "suite".into()),
        Some(toml::Value::String(s)) => s,
        Some(_) => return Err(bad(path, "name must be a string")),
    };
    let seeds: Vec<u64> = match t.remove("seeds") {
        None => vec![0],
        Some(toml::Value::Array(a)) if !a.is_empty() => a.iter().map(|v| v.as_integer().filter(|&i| i >= 0).map(|i| i as u64).ok_or_else(|| bad(path, "seeds must be a non-empty list of integers ≥ 0"))).collect::<Result<_>>()?,
        Some(toml::Value::Integer(i)) if i >= 0 => vec![i as u64],
        Some(_) => return Err(bad(path, "seeds must be a non-empty list of integers ≥ 0")),
    };
    let mut model = match t.remove("model") {
        Some(toml::Value::Table(m)) => m,
        None => return Err(bad(path, "missing [model] table (preset and overrides)")),
        Some(_) => return Err(bad(path, "model must be a table")),
    };
    // An architecture graph file (relative to the suite file) instead of a preset: validated here, so that a
    // bad graph stops the run before anything runs.
    let graph = match (model.remove("graph"), t.remove("graph")) {
        (Some(_), Some(_)) => return Err(bad(path, "graph is given twice (top level and [model])")),
        (Some(toml::Value::String(g)), None) | (None, Some(toml::Value::String(g))) => {
            let p = dir.join(g);
            if !p.exists() {
                return Err(bad(path, format!("graph: {} does not exist", p.display())));
            }
            crate::graph::load_file(&p)?;
            Some(p)
        }
        (None, None) => None,
        _ => return Err(bad(path, "graph must be a path string")),
    };
    // A scripted energy (docs/scripted.md), relative to the suite file: loaded here for the same reason.
    let energy = match (model.remove("energy"), t.remove("energy")) {
        (Some(_), Some(_)) => return Err(bad(path, "energy is given twice (top level and [model])")),
        (Some(toml::Value::String(g)), None) | (None, Some(toml::Value::String(g))) => {
            let p = dir.join(g);
            crate::model::terms::scripted::load_file(&p, tch::Device::Cpu).map_err(|e| bad(path, e))?;
            model.insert("energy".into(), toml::Value::String(p.to_string_lossy().to_string()));
            Some(p)
        }
        (None, None) => None,
        _ => return Err(bad(path, "energy must be a path string")),
    };
    let preset = match (model.remove("preset"), &graph) {
        (Some(toml::Value::String(s)), _) => s,
        (None, _) if energy.is_some() => "energy".to_string(),
        (None, Some(_)) => "graph".to_string(),
        (None, None) => return Err(bad(path, "model.preset (or graph = \"file.toml\") is required")),
        (Some(_), _) => return Err(bad(path, "model.preset must be a string")),
    };
    if let Some(g) = &graph {
        model.insert("graph".into(), toml::Value::String(g.to_string_lossy().to_string()));
    }
    if model.contains_key("checks") || model.contains_key("seed") {
        return Err(bad(path, "model must not set checks or seed (use [checks.*] and seeds)"));
    }
    for key in ["dtype", "device"] {
        if let Some(v) = t.remove(key) {
            model.insert(key.into(), v);
        }
    }
    let figure_format = t.remove("figure_format");
    let threads = match t.remove("threads") {
        None => None,
        Some(toml::Value::Integer(n)) if n >= 1 => Some(n as i32),
        Some(_) => return Err(bad(path, "threads must be an integer ≥ 1")),
    };
    let checks_t = match t.remove("checks") {
        Some(toml::Value::Table(c)) if !c.is_empty() => c,
        _ => return Err(bad(path, format!("missing [checks.<check>] tables (known checks: {})", CHECKS.join(", ")))),
    };
    if let Some(k) = t.keys().next() {
        return Err(bad(path, format!("unknown key '{k}' (known: name, seeds, dtype, device, figure_format, threads, model, checks)")));
    }
    let mut checks = vec![];
    let mut cfg_checks = toml::Table::new();
    if let Some(f) = figure_format {
        cfg_checks.insert("figure_format".into(), f);
    }
    for (cname, v) in &checks_t {
        // `fuzz`: one fuzz property on the suite's instance (the suites `epcheck fuzz` writes for shrunk cases).
        if !CHECKS.contains(&cname.as_str()) && cname != "fuzz" {
            return Err(bad(path, format!("unknown check '{cname}' (known: {}, fuzz)", CHECKS.join(", "))));
        }
        let mut tb = match v {
            toml::Value::Table(tb) => tb.clone(),
            _ => return Err(bad(path, format!("checks.{cname} must be a table"))),
        };
        let cos_min = match tb.remove("cos_min") {
            None => None,
            Some(v) => {
                let c = v.as_float().or_else(|| v.as_integer().map(|i| i as f64)).ok_or_else(|| bad(path, format!("checks.{cname}.cos_min must be a number")))?;
                if !(-1.0..=1.0).contains(&c) {
                    return Err(bad(path, format!("checks.{cname}.cos_min must be a cosine in [-1, 1], got {c}")));
                }
                Some(c)
            }
        };
        let mut file_of = |key: &str| -> Result<Option<PathBuf>> {
            match tb.remove(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) if key == "names" && conformance::BUILTIN_MAPS.contains(&s.as_str()) => Ok(Some(PathBuf::from(s))),
                Some(toml::Value::String(s)) => {
                    let p = dir.join(s);
                    if !p.exists() {
                        return Err(bad(path, format!("checks.{cname}.{key}: {} does not exist", p.display())));
                    }
                    Ok(Some(p))
                }
                Some(_) => Err(bad(path, format!("checks.{cname}.{key} must be a path string"))),
            }
        };
        let file = file_of("file")?;
        let names = file_of("names")?;
        if cname == "fuzz" && !tb.get("property").and_then(|v| v.as_str()).is_some_and(|p| crate::fuzz::PROPERTIES.contains(&p)) {
            return Err(bad(path, format!("checks.fuzz needs property = one of {}", crate::fuzz::PROPERTIES.join(", "))));
        }
        if cname == "conformance" && file.is_none() {
            return Err(bad(path, "checks.conformance needs file = \"…\" (external tensors)"));
        }
        if cname != "conformance" && (file.is_some() || names.is_some()) {
            return Err(bad(path, format!("checks.{cname}: file and names belong to conformance only")));
        }
        if cname == "conformance" {
            // Conformance keys are the tolerance classes.
            let mut c = toml::Table::new();
            c.insert("tol".into(), toml::Value::Table(tb));
            cfg_checks.insert(cname.clone(), toml::Value::Table(c));
        } else {
            cfg_checks.insert(cname.clone(), toml::Value::Table(tb));
        }
        checks.push(SuiteCheck { name: cname.clone(), cos_min, file, names });
    }
    checks.sort_by_key(|c| CHECKS.iter().position(|k| *k == c.name));
    // Validate the thresholds through the configuration (unknown keys, out-of-range values).
    let resolve = |seed: Option<u64>| -> Result<RunConfig> {
        let mut over = model.clone();
        let mut ch = toml::Table::new();
        ch.insert("checks".into(), toml::Value::Table(cfg_checks.clone()));
        merge(&mut over, ch);
        if let Some(s) = seed {
            over.insert("seed".into(), toml::Value::Integer(s as i64));
        }
        RunConfig::resolve(Some(&preset), None, over).map_err(|e| bad(path, e))
    };
    let base = resolve(None)?;
    let configs = seeds.iter().map(|&s| resolve(Some(s))).collect::<Result<Vec<_>>>()?;
    // Names maps are parsed up front too.
    for c in &checks {
        if let Some(n) = &c.names {
            if conformance::read_name_map(n)?.metrics_only {
                return Err(bad(path, "checks.conformance: names = \"ernoult_gdu\" is a metrics-only map (nothing to certify); run `epcheck compare FILE --names ernoult_gdu`"));
            }
        }
    }
    Ok(Suite { path: path.to_path_buf(), name, seeds, checks, configs, base, threads })
}

/// Runs one check on an instance (conformance excluded).
pub fn run_check(name: &str, inst: &Instance) -> Result<CheckReport> {
    let cfg = &inst.cfg;
    Ok(match name {
        "converge" => converge::run(inst, &converge::ConvergeOptions::from_config(cfg)),
        "local" => local::run(inst, &local::LocalOptions::from_config(cfg)),
        "audit" => audit::run(inst, &audit::AuditOptions::from_config(cfg)),
        "gdu" => {
            let g = &cfg.checks.gdu;
            let beta = if g.mode == "theorem" { g.beta } else { cfg.beta };
            gdu::run(inst, &gdu::GduOptions::from_config(cfg, beta))
        }
        "bias" => bias::run(inst, &bias::BiasOptions::from_config(cfg))?,
        "refs" => refs::run(inst, &refs::RefsOptions::from_config(cfg))?,
        "fuzz" => crate::fuzz::check_report(inst, &cfg.checks.fuzz.property)?,
        other => return Err(Error::Config(format!("unknown check '{other}'"))),
    })
}

/// The verify gate `cos_min`: every group of `cos` rows (same estimator, series, reference, scope and name;
/// per-step rows and the by-design mismatch against raw BPTT neuron series excluded) must reach cos_min at
/// its best point (over β for `bias`). Adds one
/// verdict row (scope `gate`) and re-derives the overall verdict.
pub fn apply_cos_gate(rep: &mut CheckReport, cos_min: f64) {
    let mut best: std::collections::BTreeMap<String, f64> = Default::default();
    for r in &rep.metrics {
        if r.metric != "cos" || r.t.is_some() || r.reference.as_deref() == Some("bptt_raw") {
            continue;
        }
        let key = format!("{}|{}|{}|{}:{}", r.estimator.clone().unwrap_or_default(), r.series.clone().unwrap_or_default(), r.reference.clone().unwrap_or_default(), r.scope, r.name);
        let e = best.entry(key).or_insert(f64::NEG_INFINITY);
        *e = e.max(if r.value.is_nan() { f64::NEG_INFINITY } else { r.value });
    }
    let worst = best.iter().min_by(|a, b| a.1.total_cmp(b.1));
    let verdict = match worst {
        None => Verdict::Inconclusive("no cos rows to gate".into()),
        Some((k, v)) if *v < cos_min => Verdict::Fail(format!("cos={v:.6} < {cos_min} ({k})")),
        _ => Verdict::Pass,
    };
    let v = worst.map(|w| *w.1).unwrap_or(f64::NAN);
    let mut row = checks::MetricRow { check: rep.check.clone(), instance: rep.instance.clone(), scope: "gate".into(), name: "cos_min".into(), metric: "cos".into(), value: v, threshold: Some(cos_min), verdict: Some(verdict.label().into()), ..Default::default() };
    if let Some(m) = rep.metrics.first() {
        row.preset = m.preset.clone();
        row.dtype = m.dtype.clone();
    }
    rep.metrics.push(row);
    let pos = rep.verdicts.iter().position(|r| r.scope == "check").unwrap_or(rep.verdicts.len());
    rep.verdicts.insert(
        pos,
        checks::VerdictRow { check: rep.check.clone(), instance: rep.instance.clone(), scope: "gate".into(), name: "cos_min".into(), verdict: verdict.label().into(), reason: verdict.reason().map(str::to_string), details: json!({ "cos": v, "threshold": cos_min, "groups": best.len() }).to_string() },
    );
    rep.rederive();
    // The gate is a lower bound on cos: its own digest part, before the check's.
    let gate = match (&verdict, worst) {
        (Verdict::Fail(_), Some((k, v))) => format!("gate:cos_min cos {v:.6} < {cos_min} ({k})"),
        (_, Some((_, v))) => format!("gate:cos_min cos {v:.6} ≥ {cos_min}"),
        _ => "gate:cos_min: no cos rows".to_string(),
    };
    rep.digest = if rep.digest.is_empty() { gate } else { format!("{gate}; {}", rep.digest) };
}

/// The first failing (or inconclusive / erring) scope of a report, for the one-line output.
fn first_problem(rep: &CheckReport) -> Option<String> {
    rep.verdicts.iter().find(|r| r.scope != "check" && ["fail", "error", "inconclusive"].contains(&r.verdict.as_str())).map(|r| format!("{}:{} {}: {}", r.scope, r.name, r.verdict, r.reason.clone().unwrap_or_default()))
}

/// How `verify` counts a check (docs/verdicts.md): `passed`; `failed` = fail or inconclusive (nothing was
/// certified); `error` (the check could not run); `info` (reported, not scored).
pub fn tally(v: &Verdict) -> &'static str {
    match v {
        Verdict::Pass => "passed",
        Verdict::Fail(_) | Verdict::Inconclusive(_) => "failed",
        Verdict::Error(_) => "error",
        Verdict::Info => "info",
    }
}

/// The JUnit test case of one check on one instance (docs/verdicts.md): named `<suite>/<check>/<instance>`;
/// `fail` and `inconclusive` are `<failure>` (type = the verdict), `error` is `<error>`, `pass` and `info` are
/// plain; the scope rows go to `<system-out>`; verdict, seed, model, dtype and device are properties.
pub fn junit_case(suite: &str, rep: &CheckReport, cfg: &RunConfig, device: &str, time: Duration) -> quick_junit::TestCase {
    case_rec(suite, rep, cfg, device, time).to_junit()
}

/// A JUnit test case as data: what [`junit_case`] writes, recorded by `verify --shard` for `epcheck merge`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseRec {
    pub name: String,
    pub classname: String,
    pub time_s: f64,
    /// `success`, `failure` or `error`.
    pub kind: String,
    pub message: Option<String>,
    pub ty: Option<String>,
    pub description: Option<String>,
    pub system_out: String,
    pub properties: Vec<(String, String)>,
}

impl CaseRec {
    pub fn to_junit(&self) -> quick_junit::TestCase {
        use quick_junit::{NonSuccessKind, Property, TestCase, TestCaseStatus};
        let mut status = match self.kind.as_str() {
            "failure" => TestCaseStatus::non_success(NonSuccessKind::Failure),
            "error" => TestCaseStatus::non_success(NonSuccessKind::Error),
            _ => TestCaseStatus::success(),
        };
        if let TestCaseStatus::NonSuccess { .. } = status {
            if let Some(m) = &self.message {
                status.set_message(m.as_str());
            }
            if let Some(t) = &self.ty {
                status.set_type(t.as_str());
            }
            if let Some(d) = &self.description {
                status.set_description(d.as_str());
            }
        }
        let mut tc = TestCase::new(self.name.as_str(), status);
        tc.set_classname(self.classname.as_str());
        tc.set_time(Duration::from_secs_f64(self.time_s));
        tc.set_system_out(self.system_out.as_str());
        for (k, v) in &self.properties {
            tc.add_property(Property::new(k.as_str(), v.as_str()));
        }
        tc
    }
}

/// The JUnit case of one check on one instance (docs/verdicts.md): named `<suite>/<check>/<instance>`;
/// `fail` and `inconclusive` are `<failure>` (type = the verdict), `error` is `<error>`, `pass` and `info` are
/// plain; the scope rows go to `<system-out>`; verdict, seed, model, dtype and device are properties.
pub fn case_rec(suite: &str, rep: &CheckReport, cfg: &RunConfig, device: &str, time: Duration) -> CaseRec {
    let message = rep.digest_line();
    let (kind, ty, description) = match &rep.overall {
        Verdict::Fail(_) | Verdict::Inconclusive(_) => ("failure", Some(rep.overall.label().to_string()), first_problem(rep)),
        Verdict::Error(_) => ("error", Some("error".to_string()), None),
        Verdict::Pass | Verdict::Info => ("success", None, None),
    };
    let mut out = vec![message.clone()];
    for r in rep.verdicts.iter().filter(|r| r.scope != "check") {
        out.push(format!("{}:{} {}{} {}", r.scope, r.name, r.verdict, r.reason.as_ref().map(|x| format!(": {x}")).unwrap_or_default(), r.details));
    }
    let model = match (&cfg.graph, &cfg.energy) {
        (_, Some(e)) => format!("energy {e}"),
        (Some(g), _) => format!("graph {g}"),
        _ => cfg.preset.clone(),
    };
    let properties = [("verdict", rep.overall.label().to_string()), ("seed", cfg.seed.to_string()), ("model", model), ("dtype", cfg.dtype.clone()), ("device", device.to_string())];
    CaseRec {
        name: format!("{suite}/{}/{}", rep.check, rep.instance),
        classname: format!("epcheck.{suite}"),
        time_s: time.as_secs_f64(),
        kind: kind.into(),
        message: (kind != "success").then_some(message),
        ty,
        description,
        system_out: out.join("\n"),
        properties: properties.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

/// One table row of the job page, its run folder named relative to the output folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowRec {
    pub check: String,
    pub instance: String,
    pub verdict: String,
    pub digest: String,
    pub run_dir: Option<String>,
}

/// What one suite produced: its JUnit cases and job-page rows (in order), its wall time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuiteRec {
    /// Position in the sorted suite files.
    pub index: usize,
    pub name: String,
    pub file: String,
    pub time_s: f64,
    pub cases: Vec<CaseRec>,
    pub rows: Vec<RowRec>,
}

/// `verify-shard.json` in the output folder of `verify --shard i/n`: the split, every suite file of the job
/// (path and SHA-256 of its text) and the suites this shard ran; `epcheck merge` joins the shards.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifyShardRecord {
    pub shard: [usize; 2],
    pub suites: Vec<(String, String)>,
    pub ran: Vec<SuiteRec>,
    pub time_s: f64,
}

pub const VERIFY_SHARD: &str = "verify-shard.json";

/// Writes a verify job's JUnit file and job page (`index.html`) from its suites' records, prints the summary;
/// returns the exit code and the summary as Markdown (`epcheck merge` writes it as `summary.md`). Used by
/// `verify` and by `epcheck merge` of verify shards.
pub fn finish_job(out: &Path, junit: &Path, suites: &[SuiteRec], time: Duration) -> Result<(i32, String)> {
    let mut report = quick_junit::Report::new("epcheck verify");
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    let mut code = 0;
    let mut rows = vec![];
    let mut dirs: Vec<PathBuf> = vec![];
    let mut md = vec![String::new(), "| suite | check | instance | verdict | digest | run |".to_string(), "|---|---|---|---|---|---|".to_string()];
    for s in suites {
        let mut ts = quick_junit::TestSuite::new(s.name.as_str());
        ts.add_property(quick_junit::Property::new("file", s.file.as_str()));
        for c in &s.cases {
            ts.add_test_case(c.to_junit());
        }
        ts.set_time(Duration::from_secs_f64(s.time_s));
        report.add_test_suite(ts);
        for r in &s.rows {
            let (tally, c) = match r.verdict.as_str() {
                "pass" => ("passed", 0),
                "info" => ("info", 0),
                "fail" | "inconclusive" => ("failed", 1),
                _ => ("error", 2),
            };
            *counts.entry(tally).or_default() += 1;
            code = code.max(c);
            let run_dir = r.run_dir.as_ref().map(|d| out.join(d));
            if let Some(d) = &run_dir {
                if !dirs.contains(d) {
                    dirs.push(d.clone());
                }
            }
            md.push(format!("| {} | {} | {} | {} | {} | {} |", s.name, r.check, r.instance, r.verdict, r.digest.replace('|', "\\|"), r.run_dir.clone().unwrap_or_default()));
            rows.push(crate::report::html::IndexRow { suite: s.name.clone(), check: r.check.clone(), instance: r.instance.clone(), verdict: r.verdict.clone(), digest: r.digest.clone(), run_dir });
        }
    }
    report.set_time(time);
    write_junit(junit, &report)?;
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    let mut line = format!("{} passed, {} failed", n("passed"), n("failed"));
    for k in ["error", "info"] {
        if n(k) > 0 {
            line += &format!(", {} {k}", n(k));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    let summary = format!("# epcheck verify\n\n{line}\n{}\n", md.join("\n"));
    let index = crate::report::html::write_job_index(out, "epcheck verify", &line, &rows)?;
    println!("{line}");
    println!("junit: {} (failures = {}, errors = {})", junit.display(), n("failed"), n("error"));
    println!("index: {}", index.display());
    for d in &dirs {
        println!("report: {}", d.display());
    }
    Ok((code, summary))
}

/// The outcome of one check on one instance.
pub struct Outcome {
    pub suite: String,
    pub check: String,
    pub instance: String,
    pub verdict: Verdict,
    pub line: String,
}

/// Runs every suite; returns the exit code.
pub fn command(a: VerifyArgs) -> Result<i32> {
    let files = suite_files(&a.paths)?;
    // Every suite, external file and output path is validated before anything runs.
    let suites = files.iter().map(|f| parse_suite(f)).collect::<Result<Vec<_>>>()?;
    let shard = crate::run::Shard::from_arg_or_env(a.shard.as_deref())?;
    let files_rec: Vec<(String, String)> = files.iter().map(|f| (f.display().to_string(), sha256_of(f))).collect();
    let suites: Vec<(usize, Suite)> = suites.into_iter().enumerate().filter(|(i, _)| shard.owns(*i)).collect();
    let junit = a.junit.clone().unwrap_or_else(|| a.out.join("junit.xml"));
    crate::run::check_output_dir(&a.out)?;
    if a.junit.is_some() {
        crate::run::check_output_file(&junit, "--junit")?;
    }
    for (_, suite) in &suites {
        for c in suite.checks.iter().filter(|c| c.name == "conformance") {
            conformance::read_external(c.file.as_ref().expect("validated")).map_err(|e| bad(&suite.path, e))?;
        }
    }
    let args: Vec<String> = std::env::args().collect();
    let mut recs: Vec<SuiteRec> = vec![];
    let t_all = Instant::now();
    let mut run_dirs = vec![];
    let mut index_rows: Vec<crate::report::html::IndexRow> = vec![];
    let mut run_counts: Vec<usize> = vec![];
    let default_threads = tch::get_num_threads();
    for (suite_index, suite) in &suites {
        tch::set_num_threads(suite.threads.unwrap_or(default_threads));
        let mut cases: Vec<CaseRec> = vec![];
        let (row0, dir0) = (index_rows.len(), run_dirs.len());
        let t_suite = Instant::now();
        // The cos gate, the JUnit case and the terminal line of one report.
        let mut emit = |rep: &mut CheckReport, cos_min: Option<f64>, dt: Duration, ts: &mut Vec<CaseRec>, inst: &Instance| {
            if let Some(cm) = cos_min {
                apply_cos_gate(rep, cm);
            }
            crate::progress::finish();
            ts.push(case_rec(&suite.name, rep, &inst.cfg, &inst.prec.device_name(), dt));
            let tag = match &rep.overall {
                Verdict::Pass => "PASS",
                Verdict::Info => "INFO",
                Verdict::Inconclusive(_) => "INCONCLUSIVE",
                Verdict::Fail(_) => "FAIL",
                Verdict::Error(_) => "ERROR",
            };
            println!("{tag} {}/{} ({:.1} s)", suite.name, rep.digest_line(), dt.as_secs_f64());
            for n in &rep.notes {
                eprintln!("note: {}/{}: {n}", suite.name, rep.check);
            }
            index_rows.push(crate::report::html::IndexRow { suite: suite.name.clone(), check: rep.check.clone(), instance: rep.instance.clone(), verdict: rep.overall.label().into(), digest: rep.digest_line(), run_dir: None });
        };
        // Seeded instances: every check but conformance.
        let seeded: Vec<&SuiteCheck> = suite.checks.iter().filter(|c| c.name != "conformance").collect();
        if !seeded.is_empty() {
            for cfg in &suite.configs {
                let inst = Instance::from_config(cfg.clone()).map_err(|e| bad(&suite.path, e))?;
                let mut reps = vec![];
                for c in &seeded {
                    crate::progress::start(&format!("{}/{}", suite.name, c.name));
                    let t0 = Instant::now();
                    let mut rep = match run_check(&c.name, &inst) {
                        Ok(r) => r,
                        Err(e) => error_report(&c.name, &inst, &e),
                    };
                    emit(&mut rep, c.cos_min, t0.elapsed(), &mut cases, &inst);
                    reps.push(rep);
                }
                run_dirs.push(crate::report::write_run(&a.out, "verify", &inst, &reps, &args)?);
                run_counts.push(reps.len());
            }
        }
        for c in suite.checks.iter().filter(|c| c.name == "conformance") {
            let map = match &c.names {
                Some(n) => conformance::read_name_map(n)?,
                None => conformance::NameMap::default(),
            };
            let mut cfg = suite.base.clone();
            if !map.run.is_empty() {
                let mut over = toml::Table::try_from(&cfg).map_err(|e| Error::Config(e.to_string()))?;
                merge(&mut over, map.run.clone());
                cfg = RunConfig::resolve(Some(&cfg.preset), None, over).map_err(|e| bad(&suite.path, e))?;
            }
            let file = c.file.as_ref().expect("validated");
            let case = conformance::load_case(file, &map, cfg, None, None)?;
            let t0 = Instant::now();
            crate::progress::start(&format!("{}/conformance", suite.name));
            let mut rep = match conformance::run(&case, &conformance::ConformanceOptions::from_config(&case.inst.cfg)) {
                Ok(r) => r,
                Err(e) => error_report("conformance", &case.inst, &e),
            };
            emit(&mut rep, c.cos_min, t0.elapsed(), &mut cases, &case.inst);
            run_dirs.push(crate::report::write_run(&a.out, "verify", &case.inst, &[rep], &args)?);
            run_counts.push(1);
        }
        // The suite's rows and their run folders (each run folder holds the next run_counts[k] reports, in order).
        let mut rows: Vec<RowRec> = vec![];
        let mut it = index_rows[row0..].iter();
        for (d, c) in run_dirs[dir0..].iter().zip(&run_counts[dir0..]) {
            for r in it.by_ref().take(*c) {
                let rel = d.strip_prefix(&a.out).unwrap_or(d).to_string_lossy().to_string();
                rows.push(RowRec { check: r.check.clone(), instance: r.instance.clone(), verdict: r.verdict.clone(), digest: r.digest.clone(), run_dir: Some(rel) });
            }
        }
        recs.push(SuiteRec { index: *suite_index, name: suite.name.clone(), file: suite.path.display().to_string(), time_s: t_suite.elapsed().as_secs_f64(), cases, rows });
    }
    let time = t_all.elapsed();
    let (code, _) = finish_job(&a.out, &junit, &recs, time)?;
    if shard.count > 1 {
        let rec = VerifyShardRecord { shard: [shard.index, shard.count], suites: files_rec, ran: recs, time_s: time.as_secs_f64() };
        let p = a.out.join(VERIFY_SHARD);
        crate::io::write_atomic(&p, serde_json::to_string_pretty(&rec).expect("json").as_bytes())?;
    }
    Ok(code)
}

fn sha256_of(f: &Path) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(std::fs::read(f).unwrap_or_default()))
}

/// A report holding one `error` verdict (a check that could not run).
fn error_report(check: &str, inst: &Instance, e: &Error) -> CheckReport {
    let mut rows = checks::Rows::new(check, &inst.id, &inst.model.preset, inst.prec.dtype.name());
    rows.verdict("check_run", check, &Verdict::Error(e.to_string()), json!({}));
    rows.finish(vec![format!("error: {e}")], vec![])
}

/// Writes the JUnit XML atomically.
pub fn write_junit(path: &Path, report: &quick_junit::Report) -> Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| Error::file(d, e))?;
    }
    let xml = report.to_string().map_err(|e| Error::Report(e.to_string()))?;
    let tmp = path.with_extension("xml.partial");
    std::fs::write(&tmp, xml).map_err(|e| Error::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}
