//! `epcheck curves`: training curves over several training run folders (docs/figures.md#training-curves). Folders are
//! given as TAG=FOLDER; folders with the same tag are seeds of one group (e.g. `ep=run-s0 ep=run-s1 bp=run-bp-s0
//! bp=run-bp-s1`). Per group and epoch: the mean over the group's runs (line with markers) and the spread
//! (band: min–max, or mean ± one standard deviation), every group on the same axes (EP vs BP overlay).
//! Reads only each folder's `tables/epochs.csv` (and `config.toml` for the seed); writes a run folder with
//! `tables/curves.{parquet,csv}`, `figures/curves.*`, `summary.md` and `index.html`.
use super::{read_epoch_csv, EpochRow};
use crate::report::style::{self, Band, Figure, FigureOptions, LegendEntry, Line, Marker, Panel, Scale, Style};
use crate::{Error, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct CurvesArgs {
    /// Training run folders as TAG=FOLDER (folders of `epcheck train`); a tag given several times groups seeds.
    #[arg(required = true, value_name = "TAG=FOLDER")]
    pub runs: Vec<String>,
    /// Spread drawn around each group's mean: minmax (min–max over the runs) or std (mean ± one standard deviation).
    #[arg(long, default_value = "minmax")]
    pub spread: String,
    /// y axis of the loss panel: auto (log when the losses span more than a decade), linear or log.
    #[arg(long, default_value = "auto")]
    pub loss_scale: String,
    /// y axis of the error panel: linear (percent) or log.
    #[arg(long, default_value = "linear")]
    pub error_scale: String,
    /// Output folder for the run folder.
    #[arg(long, default_value = "reports/runs")]
    pub out: PathBuf,
    /// Figure formats: svg, png, pdf, both (svg+png), all, or a comma-separated list.
    #[arg(long, default_value = "svg")]
    pub figure_format: String,
    /// Panel size of the figures, WxH in px (default 420x320).
    #[arg(long, value_name = "WxH")]
    pub figure_size: Option<String>,
}

/// One group's curve of one split and metric: per epoch (1-based), the values of its runs.
pub struct GroupCurve {
    pub tag: String,
    pub split: String,
    pub metric: String,
    pub per_epoch: BTreeMap<usize, Vec<f64>>,
}

/// Mean, spread (lo, hi) and count of the values of one epoch.
pub fn stats(v: &[f64], spread: &str) -> (f64, f64, f64, usize) {
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    if spread == "std" {
        // Sample standard deviation (n − 1); a single run has no spread.
        let sd = if n > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        (mean, mean - sd, mean + sd, n)
    } else {
        (mean, v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(f64::NEG_INFINITY, f64::max), n)
    }
}

/// Groups the runs' `all`-scope rows by (tag, split, metric).
pub fn group(runs: &[(String, Vec<EpochRow>)]) -> Vec<GroupCurve> {
    let mut out: Vec<GroupCurve> = vec![];
    for (tag, rows) in runs {
        for r in rows.iter().filter(|r| r.scope == "all") {
            let i = match out.iter().position(|g| &g.tag == tag && g.split == r.split && g.metric == r.metric) {
                Some(i) => i,
                None => {
                    out.push(GroupCurve { tag: tag.clone(), split: r.split.clone(), metric: r.metric.clone(), per_epoch: BTreeMap::new() });
                    out.len() - 1
                }
            };
            out[i].per_epoch.entry(r.epoch + 1).or_default().push(r.value);
        }
    }
    out
}

fn scale_of(flag: &str, what: &str, values: &[f64], linear: Scale) -> Result<Scale> {
    Ok(match flag {
        "linear" => linear,
        "log" => Scale::Log,
        "auto" => {
            let pos: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0 && v.is_finite()).collect();
            let (lo, hi) = pos.iter().fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(*v), b.max(*v)));
            if hi > 10.0 * lo {
                Scale::Log
            } else {
                linear
            }
        }
        o => return Err(Error::Config(format!("--{what} must be auto, linear or log, got '{o}'"))),
    })
}

/// The figure: loss and error panels, one colour per group, train solid ● and test dashed ■, bands for the spread.
pub fn figure(dir: &Path, curves: &[GroupCurve], tags: &[(String, usize)], spread: &str, loss_scale: Scale, error_scale: Scale, opts: &FigureOptions) -> Result<Vec<PathBuf>> {
    let mut panels = vec![];
    for (metric, title, y_label, scale) in [("loss", "loss (mean ℓ at the free state)", "loss", loss_scale), ("error", "error", "error", error_scale)] {
        let mut p = Panel::new(title, "epoch", y_label).scales(Scale::Integer, scale);
        for (k, (tag, _)) in tags.iter().enumerate() {
            for (split, st, mk) in [("train", Style::Solid, Marker::Circle), ("test", Style::Dashed, Marker::Square)] {
                let Some(g) = curves.iter().find(|g| &g.tag == tag && g.split == split && g.metric == metric) else { continue };
                let s: Vec<(usize, (f64, f64, f64, usize))> = g.per_epoch.iter().map(|(e, v)| (*e, stats(v, spread))).collect();
                p.lines.push(Line::new(s.iter().map(|(e, x)| (*e as f64, x.0)).collect(), style::color(k), st, None).marker(mk));
                if s.iter().any(|(_, x)| x.3 > 1) {
                    p.bands.push(Band { points: s.iter().map(|(e, x)| (*e as f64, x.1, x.2)).collect(), color: style::color(k) });
                }
            }
        }
        panels.push(p);
    }
    let mut legend = vec![];
    for (k, (tag, n)) in tags.iter().enumerate() {
        legend.push(LegendEntry::line(style::color(k), Style::Solid, Some(Marker::Circle), format!("{tag} ({n} run{})", if *n == 1 { "" } else { "s" })));
    }
    legend.push(LegendEntry::line(style::GREY, Style::Solid, Some(Marker::Circle), "train (mean over runs)"));
    legend.push(LegendEntry::line(style::GREY, Style::Dashed, Some(Marker::Square), "test (mean over runs)"));
    if tags.iter().any(|t| t.1 > 1) {
        legend.push(LegendEntry::band(style::GREY, if spread == "std" { "mean ± 1 standard deviation over runs" } else { "min–max over runs" }));
    }
    let n_ep = curves.iter().flat_map(|g| g.per_epoch.keys().copied()).max().unwrap_or(0);
    let what: Vec<String> = tags.iter().map(|(t, n)| format!("{t} ({n})")).collect();
    let title = format!("training curves — {} — {n_ep} epochs", what.join(" vs "));
    style::write_figure(dir, &Figure { stem: "curves".into(), title, panels, legend }, opts)
}

fn frame(curves: &[GroupCurve], spread: &str) -> Result<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let (mut tag, mut split, mut metric, mut epoch, mut n, mut mean, mut lo, mut hi) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for g in curves {
        for (e, v) in &g.per_epoch {
            let s = stats(v, spread);
            tag.push(g.tag.clone());
            split.push(g.split.clone());
            metric.push(g.metric.clone());
            epoch.push(*e as i64);
            n.push(s.3 as i64);
            mean.push(s.0);
            lo.push(s.1);
            hi.push(s.2);
        }
    }
    let len = tag.len();
    let cols = vec![
        Column::new("tag".into(), tag),
        Column::new("split".into(), split),
        Column::new("metric".into(), metric),
        Column::new("epoch".into(), epoch),
        Column::new("runs".into(), n),
        Column::new("mean".into(), mean),
        Column::new("lo".into(), lo),
        Column::new("hi".into(), hi),
    ];
    Ok(DataFrame::new(len, cols)?)
}

/// `epcheck curves TAG=FOLDER …`: validates every argument, then writes one run folder.
pub fn command(a: CurvesArgs) -> Result<i32> {
    if a.spread != "minmax" && a.spread != "std" {
        return Err(Error::Config(format!("--spread must be minmax or std, got '{}'", a.spread)));
    }
    let opts = FigureOptions::parse(&a.figure_format, a.figure_size.as_deref().unwrap_or(""))?;
    let mut runs: Vec<(String, Vec<EpochRow>)> = vec![];
    let mut seeds: Vec<(String, String)> = vec![];
    for s in &a.runs {
        let (tag, dir) = s.split_once('=').ok_or_else(|| Error::Config(format!("curves: expected TAG=FOLDER, got '{s}'")))?;
        if tag.trim().is_empty() || dir.trim().is_empty() {
            return Err(Error::Config(format!("curves: expected TAG=FOLDER with a tag and a folder (e.g. ep=reports/runs/train-…), got '{s}'")));
        }
        let csv = Path::new(dir).join("tables").join("epochs.csv");
        if !csv.is_file() {
            return Err(Error::file(&csv, "no such file: curves needs training run folders (epcheck train writes tables/epochs.csv)"));
        }
        let rows = read_epoch_csv(&csv)?;
        if !rows.iter().any(|r| r.scope == "all") {
            return Err(Error::file(&csv, "no epoch rows (scope all): the training run has not finished an epoch"));
        }
        let seed = std::fs::read_to_string(Path::new(dir).join("config.toml")).ok().and_then(|t| t.parse::<toml::Table>().ok()).and_then(|t| t.get("seed").and_then(|v| v.as_integer())).map(|v| v.to_string()).unwrap_or("?".into());
        seeds.push((tag.to_string(), format!("`{dir}` (seed {seed})")));
        runs.push((tag.to_string(), rows));
    }
    crate::run::check_output_dir(&a.out)?;
    let mut tags: Vec<(String, usize)> = vec![];
    for (t, _) in &runs {
        match tags.iter_mut().find(|x| &x.0 == t) {
            Some(x) => x.1 += 1,
            None => tags.push((t.clone(), 1)),
        }
    }
    let curves = group(&runs);
    let losses: Vec<f64> = curves.iter().filter(|g| g.metric == "loss").flat_map(|g| g.per_epoch.values().flatten().copied()).collect();
    let errors: Vec<f64> = curves.iter().filter(|g| g.metric == "error").flat_map(|g| g.per_epoch.values().flatten().copied()).collect();
    let loss_scale = scale_of(&a.loss_scale, "loss-scale", &losses, Scale::Linear)?;
    let error_scale = match a.error_scale.as_str() {
        "auto" | "linear" => Scale::Percent,
        _ => scale_of(&a.error_scale, "error-scale", &errors, Scale::Percent)?,
    };
    let id = tags.iter().map(|t| t.0.as_str()).collect::<Vec<_>>().join("-");
    let rf = crate::report::RunFolder::new(&a.out, "curves", &id)?;
    crate::report::tables::write_both(&mut frame(&curves, &a.spread)?, &rf.dir().join("tables"), "curves")?;
    let figs = figure(&rf.dir().join("figures"), &curves, &tags, &a.spread, loss_scale, error_scale, &opts)?;
    let groups: Vec<String> = tags.iter().map(|(t, n)| format!("{t} ({n})")).collect();
    let spread_text = if a.spread == "std" { "mean ± one sample standard deviation" } else { "min–max over the runs" };
    let mut md = vec![format!("# epcheck curves — {id}"), String::new(), format!("{} training runs in {} group(s): {}; spread {spread_text}.", runs.len(), tags.len(), groups.join(", ")), String::new(), "| tag | runs |".into(), "|---|---|".into()];
    for (t, _) in &tags {
        let list: Vec<&str> = seeds.iter().filter(|s| &s.0 == t).map(|s| s.1.as_str()).collect();
        md.push(format!("| {t} | {} |", list.join(", ")));
    }
    md.push(String::new());
    md.push("| tag | split | metric | last epoch | runs | mean | lo | hi |".into());
    md.push("|---|---|---|---|---|---|---|---|".into());
    for g in &curves {
        if let Some((e, v)) = g.per_epoch.iter().next_back() {
            let s = stats(v, &a.spread);
            md.push(format!("| {} | {} | {} | {e} | {} | {:.4} | {:.4} | {:.4} |", g.tag, g.split, g.metric, s.3, s.0, s.1, s.2));
        }
    }
    md.push(format!("\nSpread: {}. Table: `tables/curves.{{parquet,csv}}`.\n", if a.spread == "std" { "mean ± one sample standard deviation" } else { "min–max over the runs" }));
    md.push("## Figures\n".into());
    for f in &figs {
        md.push(format!("- `{}`", f.strip_prefix(rf.dir()).unwrap_or(f).display()));
    }
    let summary = md.join("\n") + "\n";
    rf.write("summary.md", &summary)?;
    let args: Vec<String> = std::env::args().collect();
    let manifest = serde_json::json!({ "run_id": rf.run_id, "command": "curves", "args": args, "epcheck_version": env!("CARGO_PKG_VERSION"), "runs": a.runs, "spread": a.spread });
    rf.write("manifest.json", &serde_json::to_string_pretty(&manifest).expect("json"))?;
    crate::report::html::write_run_index(rf.dir(), &rf.run_id, &format!("epcheck curves — {id}"), &[], &summary, &figs, "", "")?;
    let dir = rf.commit()?;
    println!("curves {id}: info ({} runs)", runs.len());
    println!("report: {}", dir.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_spread_against_closed_forms() {
        // Values 1, 2, 3, 6: mean 3, min 1, max 6; sample variance ((4 + 1 + 0 + 9) / 3) = 14/3.
        let v = [1.0, 2.0, 3.0, 6.0];
        let (m, lo, hi, n) = stats(&v, "minmax");
        assert_eq!((m, lo, hi, n), (3.0, 1.0, 6.0, 4));
        let (m, lo, hi, _) = stats(&v, "std");
        let sd = (14.0f64 / 3.0).sqrt();
        assert!((m - 3.0).abs() < 1e-15 && (lo - (3.0 - sd)).abs() < 1e-15 && (hi - (3.0 + sd)).abs() < 1e-15);
        assert_eq!(stats(&[2.5], "std"), (2.5, 2.5, 2.5, 1));
    }

    #[test]
    fn runs_with_one_tag_are_grouped_per_epoch() {
        let row = |epoch, split: &str, value| EpochRow { epoch, split: split.into(), metric: "loss".into(), scope: "all".into(), value };
        let runs = vec![
            ("ep".to_string(), vec![row(0, "train", 1.0), row(1, "train", 0.5), row(0, "test", 9.0)]),
            ("ep".to_string(), vec![row(0, "train", 3.0), row(1, "train", 0.7)]),
            ("bp".to_string(), vec![row(0, "train", 2.0)]),
        ];
        let g = group(&runs);
        let ep = g.iter().find(|c| c.tag == "ep" && c.split == "train").unwrap();
        assert_eq!(ep.per_epoch[&1], vec![1.0, 3.0]);
        assert_eq!(ep.per_epoch[&2], vec![0.5, 0.7]);
        assert_eq!(g.iter().find(|c| c.tag == "bp").unwrap().per_epoch[&1], vec![2.0]);
        assert_eq!(g.iter().find(|c| c.tag == "ep" && c.split == "test").unwrap().per_epoch.len(), 1);
    }
}
