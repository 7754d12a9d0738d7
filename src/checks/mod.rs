//! Checks as contracts (checks.md): each produces long-format metric, verdict and series rows, an overall
//! verdict, and (optionally) tensors to dump.
pub mod bias;
pub mod converge;
pub mod estimate;
pub mod gdu;
pub mod audit;
pub mod conformance;
pub mod kinks;
pub mod local;
pub mod npz;
pub mod metrics;
pub mod refs;
pub mod weights;

use serde_json::json;
use tch::Tensor;

/// Verdicts of checks §0.2.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Pass,
    Fail(String),
    Inconclusive(String),
    Error(String),
    Info,
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "fail",
            Verdict::Inconclusive(_) => "inconclusive",
            Verdict::Error(_) => "error",
            Verdict::Info => "info",
        }
    }
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Fail(r) | Verdict::Inconclusive(r) | Verdict::Error(r) => Some(r),
            _ => None,
        }
    }
    /// "pass", "fail: reason", …
    pub fn display(&self) -> String {
        match self.reason() {
            Some(r) => format!("{}: {r}", self.label()),
            None => self.label().to_string(),
        }
    }
    fn rank(&self) -> u8 {
        match self {
            Verdict::Info => 0,
            Verdict::Pass => 1,
            Verdict::Inconclusive(_) => 2,
            Verdict::Fail(_) => 3,
            Verdict::Error(_) => 4,
        }
    }
}

/// Scopes that are bookkeeping, not evidence: identities (two computations of the same quantity, e.g. gdu's
/// I1–I4, bias's B1–B6), a verify gate, and compare's loaded parameters and inputs. They can fail a check but never make it pass on their own.
pub fn is_bookkeeping_scope(scope: &str) -> bool {
    matches!(scope, "identity" | "gate" | "check" | "loaded")
}

/// Overall verdict (docs/verdicts.md) with the precedence error > fail > inconclusive > pass. `pass` needs at
/// least one scored scope that passed; scopes that only report (`info`) give `info`.
pub fn overall<'a>(vs: impl IntoIterator<Item = &'a Verdict>) -> Verdict {
    overall_scoped(vs.into_iter().map(|v| ("tensor", v)))
}

/// [`overall`] over (scope, verdict) pairs: a `pass` of a bookkeeping scope ([`is_bookkeeping_scope`]) counts
/// as `info`, so identities alone never make a pass (replay-mode gdu: identities pass, the series are info →
/// `info`).
pub fn overall_scoped<'a>(vs: impl IntoIterator<Item = (&'a str, &'a Verdict)>) -> Verdict {
    let mut worst = Verdict::Info;
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for (scope, v) in vs {
        let v = if *v == Verdict::Pass && is_bookkeeping_scope(scope) { &Verdict::Info } else { v };
        *counts.entry(v.label()).or_default() += 1;
        if v.rank() > worst.rank() {
            worst = v.clone();
        }
    }
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    match worst {
        Verdict::Fail(r) if n("fail") == 1 => Verdict::Fail(r),
        Verdict::Fail(r) => Verdict::Fail(format!("{r} (and {} more scope(s))", n("fail") - 1)),
        Verdict::Error(r) => Verdict::Error(r),
        Verdict::Inconclusive(r) if n("inconclusive") == 1 => Verdict::Inconclusive(r),
        Verdict::Inconclusive(r) => Verdict::Inconclusive(format!("{r} ({} scope(s))", n("inconclusive"))),
        v => v,
    }
}

/// The verdict of a verdicts-table row.
pub fn row_verdict(r: &VerdictRow) -> Verdict {
    let reason = r.reason.clone().unwrap_or_default();
    match r.verdict.as_str() {
        "pass" => Verdict::Pass,
        "fail" => Verdict::Fail(reason),
        "inconclusive" => Verdict::Inconclusive(reason),
        "error" => Verdict::Error(reason),
        _ => Verdict::Info,
    }
}

/// The overall verdict of a report's scope rows (the `check` row excluded).
pub fn overall_of_rows(rows: &[VerdictRow]) -> Verdict {
    let vs: Vec<(String, Verdict)> = rows.iter().filter(|r| r.scope != "check").map(|r| (r.scope.clone(), row_verdict(r))).collect();
    overall_scoped(vs.iter().map(|(s, v)| (s.as_str(), v)))
}

/// A threshold comparison that never passes on a NaN or infinite value or threshold: `value ≤ threshold`
/// with both finite (a non-finite threshold is a defect of the check, reported as a failure).
pub fn within(value: f64, threshold: f64) -> bool {
    value.is_finite() && threshold.is_finite() && value <= threshold
}

/// One row of the `metrics` table (checks §0.3); `run_id` is added when the run is written.
#[derive(Clone, Debug, Default)]
pub struct MetricRow {
    pub check: String,
    pub instance: String,
    pub preset: String,
    pub dtype: String,
    pub estimator: Option<String>,
    pub n_points: Option<i64>,
    pub beta: Option<f64>,
    pub series: Option<String>,
    pub reference: Option<String>,
    pub phase: Option<String>,
    pub scope: String,
    pub name: String,
    pub series_form: Option<String>,
    pub t: Option<i64>,
    pub example: Option<i64>,
    pub metric: String,
    pub value: f64,
    pub threshold: Option<f64>,
    pub verdict: Option<String>,
}

#[derive(Clone, Debug)]
pub struct VerdictRow {
    pub check: String,
    pub instance: String,
    pub scope: String,
    pub name: String,
    pub verdict: String,
    pub reason: Option<String>,
    pub details: String,
}

#[derive(Clone, Debug)]
pub struct SeriesRow {
    pub check: String,
    pub instance: String,
    pub series: String,
    pub kind: String,
    pub name: String,
    pub element: i64,
    pub t: i64,
    pub value: f64,
}

/// Everything one check run produced.
pub struct CheckReport {
    pub check: String,
    pub instance: String,
    pub metrics: Vec<MetricRow>,
    pub verdicts: Vec<VerdictRow>,
    pub series: Vec<SeriesRow>,
    pub overall: Verdict,
    /// Markdown lines for the run summary.
    pub summary: Vec<String>,
    /// Tensors for `--dump`, under canonical names.
    pub dump: Vec<(String, Tensor)>,
    /// The evidence behind the overall verdict, one line for the terminal (see [`CheckReport::digest_line`]).
    pub digest: String,
    /// What to do next, or notes the user must see (non-convergence, divergence); printed on stderr.
    pub notes: Vec<String>,
}

/// Builds rows that share check, instance, preset and dtype.
#[derive(Clone)]
pub struct Rows {
    pub check: String,
    pub instance: String,
    pub preset: String,
    pub dtype: String,
    pub metrics: Vec<MetricRow>,
    pub verdicts: Vec<VerdictRow>,
    pub series: Vec<SeriesRow>,
}

impl Rows {
    pub fn new(check: &str, instance: &str, preset: &str, dtype: &str) -> Self {
        Rows {
            check: check.into(),
            instance: instance.into(),
            preset: preset.into(),
            dtype: dtype.into(),
            metrics: vec![],
            verdicts: vec![],
            series: vec![],
        }
    }
    /// A metric row template with the shared columns filled in.
    pub fn row(&self, scope: &str, name: &str, metric: &str, value: f64) -> MetricRow {
        MetricRow {
            check: self.check.clone(),
            instance: self.instance.clone(),
            preset: self.preset.clone(),
            dtype: self.dtype.clone(),
            scope: scope.into(),
            name: name.into(),
            metric: metric.into(),
            value,
            ..Default::default()
        }
    }
    pub fn push(&mut self, r: MetricRow) {
        self.metrics.push(r);
    }
    pub fn verdict(&mut self, scope: &str, name: &str, v: &Verdict, details: serde_json::Value) {
        self.verdicts.push(VerdictRow {
            check: self.check.clone(),
            instance: self.instance.clone(),
            scope: scope.into(),
            name: name.into(),
            verdict: v.label().into(),
            reason: v.reason().map(str::to_string),
            details: details.to_string(),
        });
    }
    pub fn series_row(&mut self, series: &str, kind: &str, name: &str, element: i64, t: i64, value: f64) {
        self.series.push(SeriesRow {
            check: self.check.clone(),
            instance: self.instance.clone(),
            series: series.into(),
            kind: kind.into(),
            name: name.into(),
            element,
            t,
            value,
        });
    }
    /// Closes the run: the overall verdict row (scope `check`) and the report. The digest is derived from the
    /// scored metric rows ([`digest_from_rows`]); a check may replace it with [`CheckReport::with_digest`].
    pub fn finish(mut self, summary: Vec<String>, dump: Vec<(String, Tensor)>) -> CheckReport {
        let overall = overall_of_rows(&self.verdicts);
        let scored = self.verdicts.iter().filter(|r| r.scope != "check").count();
        let (check, instance) = (self.check.clone(), self.instance.clone());
        self.verdict("check", &check, &overall, json!({ "scopes": scored }));
        let digest = digest_from_rows(&self.metrics, &self.verdicts);
        CheckReport { check, instance, metrics: self.metrics, verdicts: self.verdicts, series: self.series, overall, summary, dump, digest, notes: vec![] }
    }
}

impl CheckReport {
    /// Replaces the digest (checks whose deciding numbers are not threshold rows: converge, bias, …).
    pub fn with_digest(mut self, d: String) -> Self {
        if !d.is_empty() {
            self.digest = d;
        }
        self
    }
    pub fn with_notes(mut self, notes: Vec<String>) -> Self {
        self.notes.extend(notes);
        self
    }
    /// Re-derives the overall verdict from the scope rows (after a verify gate added one) and the digest.
    pub fn rederive(&mut self) {
        self.overall = overall_of_rows(&self.verdicts);
        if let Some(r) = self.verdicts.iter_mut().find(|r| r.scope == "check") {
            r.verdict = self.overall.label().into();
            r.reason = self.overall.reason().map(str::to_string);
        }
    }
    /// `gdu p-mlp-…: pass — worst ep_sym rel_l2 4.6e-06 ≤ 1.0e-05 (tensor synapses.0.weight); …`
    pub fn digest_line(&self) -> String {
        let head = format!("{} {}: {}", self.check, self.instance, self.overall.display());
        if self.digest.is_empty() {
            head
        } else {
            format!("{head} — {}", self.digest)
        }
    }
}

/// Formats a number for digests: 3 significant digits, scientific outside [1e-3, 1e4).
pub fn num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if !v.is_finite() {
        format!("{v}")
    } else if (1e-3..1e4).contains(&v.abs()) {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{v:.2e}")
    }
}

/// The evidence of a report from its scored metric rows (rows with a verdict and a threshold): per group
/// (series, else estimator, else metric) the row closest to (or furthest over) its threshold, failing groups
/// first, at most three groups; then the count of scopes by verdict. Empty when nothing was scored.
pub fn digest_from_rows(metrics: &[MetricRow], verdicts: &[VerdictRow]) -> String {
    let mut groups: std::collections::BTreeMap<String, (f64, &MetricRow)> = Default::default();
    // Evidence first: bookkeeping rows (identities) enter the digest only when they fail or nothing else was scored.
    let evidence = metrics.iter().any(|r| r.threshold.is_some() && matches!(r.verdict.as_deref(), Some("pass" | "fail")) && r.t.is_none() && !is_bookkeeping_scope(&r.scope));
    for r in metrics {
        let (Some(v), Some(thr)) = (r.verdict.as_deref(), r.threshold) else { continue };
        if !["pass", "fail"].contains(&v) || r.t.is_some() || r.scope == "gate" {
            continue;
        }
        if evidence && v == "pass" && is_bookkeeping_scope(&r.scope) {
            continue;
        }
        let key = r.series.clone().or_else(|| r.estimator.clone()).unwrap_or_else(|| r.metric.clone());
        // Ratio to the threshold (∞ for a non-finite value); a fail always outranks a pass.
        let ratio = if !r.value.is_finite() || !thr.is_finite() {
            f64::INFINITY
        } else if thr > 0.0 {
            r.value / thr
        } else if r.value > thr {
            f64::INFINITY
        } else {
            0.0
        };
        let rank = if v == "fail" { 1e300f64.max(ratio) } else { ratio };
        let e = groups.entry(key).or_insert((f64::NEG_INFINITY, r));
        if rank > e.0 {
            *e = (rank, r);
        }
    }
    let mut v: Vec<(f64, &MetricRow)> = groups.into_values().collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    let parts: Vec<String> = v
        .iter()
        .take(3)
        .map(|(_, r)| {
            let op = if r.verdict.as_deref() == Some("fail") { ">" } else { "≤" };
            let label = r.series.clone().or_else(|| r.estimator.clone()).map(|s| format!("{s} ")).unwrap_or_default();
            format!("worst {label}{} {} {op} {} ({} {})", r.metric, num(r.value), num(r.threshold.unwrap_or(f64::NAN)), r.scope, r.name)
        })
        .collect();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for r in verdicts.iter().filter(|r| r.scope != "check") {
        *counts.entry(r.verdict.as_str()).or_default() += 1;
    }
    let mut out = parts.join("; ");
    if !counts.is_empty() {
        let c: Vec<String> = ["pass", "fail", "inconclusive", "error", "info"].iter().filter_map(|k| counts.get(k).map(|n| format!("{n} {k}"))).collect();
        if !out.is_empty() {
            out += "; ";
        }
        out += &format!("scopes: {}", c.join(", "));
    }
    out
}

/// Exit code of a command from the overall verdicts of its reports (docs/verdicts.md): 0 when every check
/// passed or only reported (`info`), 1 when one failed or was inconclusive (nothing certified), 2 on `error`.
pub fn exit_code<'a>(vs: impl IntoIterator<Item = &'a Verdict>) -> i32 {
    vs.into_iter()
        .map(|v| match v {
            Verdict::Pass | Verdict::Info => 0,
            Verdict::Fail(_) | Verdict::Inconclusive(_) => 1,
            Verdict::Error(_) => 2,
        })
        .max()
        .unwrap_or(0)
}

/// The `n` elements with the largest score (e.g. max_t |BPTT[t, e]|), largest first; ties by index. Elements
/// whose score is zero or not finite come last, so they are shown only when nothing else is left.
pub fn largest_elements(score: &[f64], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..score.len()).collect();
    let key = |e: usize| if score[e].is_finite() { score[e] } else { -1.0 };
    idx.sort_by(|&a, &b| key(b).partial_cmp(&key(a)).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    idx.truncate(n);
    idx
}

/// Seeded sampling of plotted elements (checks §0.6): `n` indices among those whose reference series is not
/// identically zero, filled up from the rest. A dedicated SplitMix64 stream, so plotting never perturbs the
/// run's random stream.
pub fn sample_elements(nonzero: &[bool], n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed ^ 0x5EED_0F_9107;
    let mut next = move || {
        state = state.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    };
    let mut pick = |pool: Vec<usize>, k: usize| -> Vec<usize> {
        let mut pool = pool;
        let mut out = Vec::new();
        for _ in 0..k.min(pool.len()) {
            let i = (next() % pool.len() as u64) as usize;
            out.push(pool.swap_remove(i));
        }
        out
    };
    let nz: Vec<usize> = (0..nonzero.len()).filter(|&i| nonzero[i]).collect();
    let z: Vec<usize> = (0..nonzero.len()).filter(|&i| !nonzero[i]).collect();
    let mut out = pick(nz, n);
    let rest = n.saturating_sub(out.len());
    out.extend(pick(z, rest));
    out.sort_unstable();
    out
}
