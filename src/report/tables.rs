//! The long-format tables of checks §0.3 (`metrics`, `verdicts`, `series`) as Polars DataFrames, written as
//! Parquet and CSV.
use crate::checks::{MetricRow, SeriesRow, VerdictRow};
use crate::{Error, Result};
use polars::prelude::*;
use std::path::Path;

fn s(name: &str, v: Vec<String>) -> Column {
    Column::new(name.into(), v)
}
fn os(name: &str, v: Vec<Option<String>>) -> Column {
    Column::new(name.into(), v)
}
fn of(name: &str, v: Vec<Option<f64>>) -> Column {
    Column::new(name.into(), v)
}
fn oi(name: &str, v: Vec<Option<i64>>) -> Column {
    Column::new(name.into(), v)
}

pub fn metrics_frame(run_id: &str, rows: &[MetricRow]) -> Result<DataFrame> {
    let n = rows.len();
    let col = |f: &dyn Fn(&MetricRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let ocol = |f: &dyn Fn(&MetricRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let cols = vec![
        s("run_id", vec![run_id.to_string(); n]),
        s("check", col(&|r| r.check.clone())),
        s("instance", col(&|r| r.instance.clone())),
        s("preset", col(&|r| r.preset.clone())),
        s("dtype", col(&|r| r.dtype.clone())),
        os("estimator", ocol(&|r| r.estimator.clone())),
        oi("n_points", rows.iter().map(|r| r.n_points).collect()),
        of("beta", rows.iter().map(|r| r.beta).collect()),
        os("series", ocol(&|r| r.series.clone())),
        os("reference", ocol(&|r| r.reference.clone())),
        os("phase", ocol(&|r| r.phase.clone())),
        s("scope", col(&|r| r.scope.clone())),
        s("name", col(&|r| r.name.clone())),
        os("series_form", ocol(&|r| r.series_form.clone())),
        oi("t", rows.iter().map(|r| r.t).collect()),
        oi("example", rows.iter().map(|r| r.example).collect()),
        s("metric", col(&|r| r.metric.clone())),
        Column::new("value".into(), rows.iter().map(|r| r.value).collect::<Vec<f64>>()),
        of("threshold", rows.iter().map(|r| r.threshold).collect()),
        os("verdict", ocol(&|r| r.verdict.clone())),
    ];
    Ok(DataFrame::new(n, cols)?)
}

pub fn verdicts_frame(run_id: &str, rows: &[VerdictRow]) -> Result<DataFrame> {
    let n = rows.len();
    let col = |f: &dyn Fn(&VerdictRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let cols = vec![
        s("run_id", vec![run_id.to_string(); n]),
        s("check", col(&|r| r.check.clone())),
        s("instance", col(&|r| r.instance.clone())),
        s("scope", col(&|r| r.scope.clone())),
        s("name", col(&|r| r.name.clone())),
        s("verdict", col(&|r| r.verdict.clone())),
        os("reason", rows.iter().map(|r| r.reason.clone()).collect()),
        s("details", col(&|r| r.details.clone())),
    ];
    Ok(DataFrame::new(n, cols)?)
}

pub fn series_frame(run_id: &str, rows: &[SeriesRow]) -> Result<DataFrame> {
    let n = rows.len();
    let col = |f: &dyn Fn(&SeriesRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let cols = vec![
        s("run_id", vec![run_id.to_string(); n]),
        s("check", col(&|r| r.check.clone())),
        s("instance", col(&|r| r.instance.clone())),
        s("series", col(&|r| r.series.clone())),
        s("kind", col(&|r| r.kind.clone())),
        s("name", col(&|r| r.name.clone())),
        Column::new("element".into(), rows.iter().map(|r| r.element).collect::<Vec<i64>>()),
        Column::new("t".into(), rows.iter().map(|r| r.t).collect::<Vec<i64>>()),
        Column::new("value".into(), rows.iter().map(|r| r.value).collect::<Vec<f64>>()),
    ];
    Ok(DataFrame::new(n, cols)?)
}

/// Writes `<dir>/<stem>.parquet` and `<dir>/<stem>.csv`.
pub fn write_both(df: &mut DataFrame, dir: &Path, stem: &str) -> Result<()> {
    let pq = dir.join(format!("{stem}.parquet"));
    let f = std::fs::File::create(&pq).map_err(|e| Error::file(&pq, e))?;
    ParquetWriter::new(f).finish(df)?;
    let csv = dir.join(format!("{stem}.csv"));
    let mut f = std::fs::File::create(&csv).map_err(|e| Error::file(&csv, e))?;
    CsvWriter::new(&mut f).include_header(true).finish(df)?;
    Ok(())
}
