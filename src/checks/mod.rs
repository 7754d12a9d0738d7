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

/// Overall verdict with the precedence error > fail > inconclusive > pass; only `info` scopes give `info`.
pub fn overall<'a>(vs: impl IntoIterator<Item = &'a Verdict>) -> Verdict {
    let mut worst = Verdict::Info;
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for v in vs {
        *counts.entry(v.label()).or_default() += 1;
        if v.rank() > worst.rank() {
            worst = v.clone();
        }
    }
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    match worst {
        Verdict::Fail(_) => Verdict::Fail(format!("{} scope(s) failed", n("fail"))),
        Verdict::Error(r) => Verdict::Error(r),
        Verdict::Inconclusive(r) => Verdict::Inconclusive(format!("{r} ({} scope(s))", n("inconclusive"))),
        v => v,
    }
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
    /// Closes the run: the overall verdict row (scope `check`) and the report.
    pub fn finish(mut self, summary: Vec<String>, dump: Vec<(String, Tensor)>) -> CheckReport {
        let scored: Vec<Verdict> = self
            .verdicts
            .iter()
            .map(|r| match r.verdict.as_str() {
                "pass" => Verdict::Pass,
                "fail" => Verdict::Fail(r.reason.clone().unwrap_or_default()),
                "inconclusive" => Verdict::Inconclusive(r.reason.clone().unwrap_or_default()),
                "error" => Verdict::Error(r.reason.clone().unwrap_or_default()),
                _ => Verdict::Info,
            })
            .collect();
        let overall = overall(&scored);
        let (check, instance) = (self.check.clone(), self.instance.clone());
        self.verdict("check", &check, &overall, json!({ "scopes": scored.len() }));
        CheckReport { check, instance, metrics: self.metrics, verdicts: self.verdicts, series: self.series, overall, summary, dump }
    }
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
