//! `weights` — weight-distribution statistics (checks.md §9, conv-hopfield.md §10): per tensor of one or more
//! checkpoints (tagged `ep`, `bp`, …), in float64: moments, |w| quantiles, excess kurtosis, the init bound a and
//! std_ratio, near-zero fractions relative to a and absolute, filter-norm quantiles of conv weights; EP vs BP per
//! matched tensor (std ratio, near-zero differences, the exact two-sample KS statistic); the Spearman depth trend
//! of `near_zero_frac@0.1` over main-path weights. Verdict `info`. Figures: `weights_hist` (shared bins when
//! several models are compared) and `weights_trend`.
use crate::config::RunConfig;
use crate::report::figures::{Line, Panel, Style};
use crate::report::style::{self, Figure, FigureOptions, HLine, LegendEntry, Marker, Scale};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One parameter set: tag, checkpoint path, the configuration it was made with, and its tensors.
pub struct WeightSet {
    pub tag: String,
    pub path: PathBuf,
    /// `ep` (an epcheck energy model) or `bp` (a BP baseline checkpoint).
    pub family: String,
    pub cfg: RunConfig,
    pub epoch: Option<usize>,
    pub tensors: Vec<(String, Vec<f64>, Vec<i64>)>,
}

#[derive(Clone, Debug)]
pub struct StatRow {
    pub model: String,
    pub param: String,
    pub role: String,
    pub depth: i64,
    pub epoch: i64,
    pub stat: String,
    pub value: f64,
}

/// Reads a checkpoint written by `epcheck train` (EP or BP): parameters `param.<name>` and the configuration in
/// the metadata.
pub fn load_set(tag: &str, path: &Path) -> Result<WeightSet> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| crate::io::not_safetensors(path, &bytes, e))?;
    let md = meta.metadata().clone().unwrap_or_default();
    let cfg_json = md.get("epcheck.config").ok_or_else(|| Error::file(path, "no epcheck.config metadata: not a checkpoint written by epcheck train"))?;
    // The recorded configuration holds only the keys the model reads: resolve it over the preset defaults.
    let table: toml::Table = serde_json::from_str::<serde_json::Value>(cfg_json)
        .ok()
        .and_then(|v| toml::Table::try_from(v).ok())
        .ok_or_else(|| Error::file(path, "epcheck.config metadata is not a configuration table"))?;
    let preset = table.get("preset").and_then(|v| v.as_str()).unwrap_or("p-mlp").to_string();
    let cfg: RunConfig = RunConfig::resolve(Some(&preset), None, table).map_err(|e| Error::file(path, format!("epcheck.config metadata: {e}")))?;
    let family = if md.get("epcheck.preset").is_some_and(|p| p.starts_with("bp:")) { "bp" } else { "ep" };
    let epoch = md.get("epcheck.train.epochs_done").and_then(|v| v.parse().ok());
    let map = crate::io::read_tensors(path)?;
    let mut tensors = vec![];
    for (k, t) in &map {
        if let Some(name) = k.strip_prefix("param.") {
            tensors.push((name.to_string(), crate::tensor_util::to_vec_f64(t), t.size()));
        }
    }
    if tensors.is_empty() {
        return Err(Error::file(path, "no param.* tensors"));
    }
    Ok(WeightSet { tag: tag.into(), path: path.into(), family: family.into(), cfg, epoch, tensors })
}

/// (role, depth, init bound a) of a tensor of a conv preset (or P-MLP), EP or BP (conv-hopfield.md §10).
fn tags(set: &WeightSet, name: &str, shape: &[i64]) -> (String, i64, f64) {
    let base = set.cfg.preset.strip_suffix("-train").unwrap_or(&set.cfg.preset).to_string();
    let ep_bound = || -> f64 {
        // The model the checkpoint was trained with (a preset or an architecture graph file).
        crate::instance::Instance::model_for(&mut set.cfg.clone())
            .ok()
            .and_then(|m| m.params.iter().find(|p| p.name == name).map(|p| match p.init {
                crate::model::Init::Uniform(a) => a,
            }))
            .unwrap_or(f64::NAN)
    };
    if let Some(rest) = name.strip_prefix("W.") {
        let (i, j) = rest.split_once('_').map(|(a, b)| (a.parse::<i64>().unwrap_or(0), b.parse::<i64>().unwrap_or(0))).unwrap_or((0, 0));
        let dense = (base.starts_with("vgg5") && name == "W.4_5") || (base == "hopfield-resnet13" && name == "W.8_9");
        let role = if dense { "dense" } else if shape.len() == 4 && shape[2] == 1 && shape[3] == 1 { "skip" } else { "main" };
        let depth = if base == "hopfield-resnet13" { if dense { 5 } else { (j + 1) / 2 } } else { i + 1 };
        let a = if set.family == "bp" {
            if role == "dense" {
                let fan: i64 = shape[..shape.len() - 1].iter().product();
                1.0 / (fan as f64).sqrt()
            } else if base.starts_with("vgg5") {
                // kaiming-normal, fan_out, ReLU gain: a = √3 × std.
                3f64.sqrt() * 2f64.sqrt() / ((9 * shape[0]) as f64).sqrt()
            } else {
                1.0 / ((shape[1] * shape[2] * shape[3]) as f64).sqrt()
            }
        } else {
            ep_bound()
        };
        (role.into(), depth, a)
    } else if let Some(k) = name.strip_prefix("synapses.").and_then(|r| r.split('.').next()).and_then(|k| k.parse::<i64>().ok()) {
        let role = if name.ends_with(".bias") { "bias" } else { "dense" };
        (role.into(), k + 1, ep_bound())
    } else {
        let depth = name.strip_prefix("b.L").and_then(|k| k.parse().ok()).unwrap_or(0);
        ("bias".into(), depth, ep_bound())
    }
}

fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The statistics of conv-hopfield.md §10 for one tensor.
pub fn tensor_stats(w: &[f64], shape: &[i64], a: f64, conv: bool) -> Vec<(String, f64)> {
    let n = w.len() as f64;
    let mean = w.iter().sum::<f64>() / n;
    let m2 = w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let m4 = w.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n;
    let std = m2.sqrt();
    let l2 = w.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut abs: Vec<f64> = w.iter().map(|x| x.abs()).collect();
    abs.sort_by(|x, y| x.total_cmp(y));
    let frac = |thr: f64| abs.partition_point(|x| *x < thr) as f64 / n;
    let mut out = vec![
        ("n".to_string(), n),
        ("mean".into(), mean),
        ("std".into(), std),
        ("rms".into(), (l2 * l2 / n).sqrt()),
        ("min".into(), w.iter().cloned().fold(f64::INFINITY, f64::min)),
        ("max".into(), w.iter().cloned().fold(f64::NEG_INFINITY, f64::max)),
        ("l2".into(), l2),
        ("abs_q50".into(), quantile_sorted(&abs, 0.5)),
        ("abs_q90".into(), quantile_sorted(&abs, 0.9)),
        ("abs_q99".into(), quantile_sorted(&abs, 0.99)),
        ("abs_q999".into(), quantile_sorted(&abs, 0.999)),
        ("abs_max".into(), *abs.last().unwrap_or(&f64::NAN)),
        ("excess_kurtosis".into(), m4 / (m2 * m2) - 3.0),
    ];
    // Statistics relative to the init bound a exist only where a is known (omitted otherwise, never NaN).
    if a.is_finite() && a > 0.0 {
        out.push(("init_bound".into(), a));
        out.push(("std_ratio".into(), std / (a / 3f64.sqrt())));
        for eps in [0.01, 0.05, 0.1, 0.25] {
            out.push((format!("near_zero_frac@{eps}"), frac(eps * a)));
        }
    }
    for tau in [1e-4, 1e-3] {
        out.push((format!("abs_near_zero_frac@{tau}"), frac(tau)));
    }
    if conv && shape.len() == 4 {
        let per = (shape[1] * shape[2] * shape[3]) as usize;
        let mut norms: Vec<f64> = w.chunks(per).map(|c| c.iter().map(|x| x * x).sum::<f64>().sqrt()).collect();
        norms.sort_by(|x, y| x.total_cmp(y));
        for q in [10, 50, 90] {
            out.push((format!("filter_norm_q{q}"), quantile_sorted(&norms, q as f64 / 100.0)));
        }
    }
    out
}

/// The exact two-sample Kolmogorov–Smirnov statistic sup_x |F_a(x) − F_b(x)|, by merging the sorted arrays.
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    let mut x: Vec<f64> = a.to_vec();
    let mut y: Vec<f64> = b.to_vec();
    x.sort_by(|p, q| p.total_cmp(q));
    y.sort_by(|p, q| p.total_cmp(q));
    let (na, nb) = (x.len() as f64, y.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < x.len() && j < y.len() {
        let v = x[i].min(y[j]);
        while i < x.len() && x[i] <= v {
            i += 1;
        }
        while j < y.len() && y[j] <= v {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    d
}

/// Spearman rank correlation (average ranks for ties).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let rank = |v: &[f64]| -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut r = vec![0.0; v.len()];
        let mut k = 0;
        while k < idx.len() {
            let mut l = k;
            while l + 1 < idx.len() && v[idx[l + 1]] == v[idx[k]] {
                l += 1;
            }
            for m in k..=l {
                r[idx[m]] = (k + l) as f64 / 2.0 + 1.0;
            }
            k = l + 1;
        }
        r
    };
    let (rx, ry) = (rank(x), rank(y));
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// Statistics rows for every set, EP-vs-BP comparisons for matched names, the depth trend per model.
pub fn compute(sets: &[WeightSet]) -> Vec<StatRow> {
    let mut rows = vec![];
    for s in sets {
        let epoch = s.epoch.map(|e| e as i64).unwrap_or(-1);
        let mut trend = (vec![], vec![]);
        for (name, w, shape) in &s.tensors {
            let (role, depth, a) = tags(s, name, shape);
            for (stat, value) in tensor_stats(w, shape, a, role == "main" || role == "skip") {
                if stat == "near_zero_frac@0.1" && role == "main" {
                    trend.0.push(depth as f64);
                    trend.1.push(value);
                }
                rows.push(StatRow { model: s.tag.clone(), param: name.clone(), role: role.clone(), depth, epoch, stat, value });
            }
        }
        if trend.0.len() >= 3 {
            // Undefined (no depth order, e.g. a graph whose tensors carry no depth) → omitted, never NaN.
            let rho = spearman(&trend.0, &trend.1);
            if rho.is_finite() {
                rows.push(StatRow { model: s.tag.clone(), param: "all".into(), role: "main".into(), depth: -1, epoch, stat: "depth_trend".into(), value: rho });
            }
        }
    }
    // EP vs BP per matched tensor (every pair of an `ep` set and a `bp` set).
    for e in sets.iter().filter(|s| s.family == "ep") {
        for b in sets.iter().filter(|s| s.family == "bp") {
            for (name, we, shape) in &e.tensors {
                let Some((_, wb, _)) = b.tensors.iter().find(|t| &t.0 == name) else { continue };
                let get = |model: &str, stat: &str| rows.iter().find(|r| r.model == model && &r.param == name && r.stat == stat).map(|r| r.value).unwrap_or(f64::NAN);
                let (role, depth, _) = tags(e, name, shape);
                let pair = format!("{}/{}", e.tag, b.tag);
                let mut new = vec![("std_ratio_ep_bp".to_string(), get(&e.tag, "std") / get(&b.tag, "std"))];
                for eps in [0.01, 0.05, 0.1, 0.25] {
                    let k = format!("near_zero_frac@{eps}");
                    new.push((format!("near_zero_diff@{eps}"), get(&e.tag, &k) - get(&b.tag, &k)));
                }
                new.push(("ks".into(), ks_statistic(we, wb)));
                for (stat, value) in new {
                    rows.push(StatRow { model: pair.clone(), param: name.clone(), role: role.clone(), depth, epoch: -1, stat, value });
                }
            }
        }
    }
    rows
}

/// Density histogram with `bins` equal bins over [lo, hi] (integral 1), as step points.
fn density(w: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<(f64, f64)> {
    let width = (hi - lo) / bins as f64;
    if !(width > 0.0) {
        return vec![];
    }
    let mut c = vec![0f64; bins];
    let mut n = 0f64;
    for &x in w {
        if x >= lo && x <= hi {
            let k = (((x - lo) / width) as usize).min(bins - 1);
            c[k] += 1.0;
            n += 1.0;
        }
    }
    let mut pts = vec![];
    for (k, v) in c.iter().enumerate() {
        let d = v / (n.max(1.0) * width);
        pts.push((lo + k as f64 * width, d));
        pts.push((lo + (k + 1) as f64 * width, d));
    }
    pts
}

/// `weights_hist` (one panel per weight tensor, ordered by depth then name; shared bins over [−R, R] when
/// several models are compared) and `weights_trend` (near_zero_frac@0.1 and std_ratio vs depth per model and
/// role; the grey dashed line is the value at initialisation).
pub fn figures(dir: &Path, sets: &[WeightSet], rows: &[StatRow], plot_biases: bool, opts: &FigureOptions) -> Result<Vec<PathBuf>> {
    let mut names: Vec<(String, Vec<i64>)> = sets[0].tensors.iter().map(|(n, _, s)| (n.clone(), s.clone())).collect();
    let depth_of = |n: &str| rows.iter().find(|r| r.model == sets[0].tag && r.param == n).map(|r| r.depth).unwrap_or(i64::MAX);
    names.sort_by(|a, b| depth_of(&a.0).cmp(&depth_of(&b.0)).then_with(|| a.0.cmp(&b.0)));
    let mut panels = vec![];
    for (name, shape) in &names {
        let (role, depth, _) = tags(&sets[0], name, shape);
        if role == "bias" && !plot_biases {
            continue;
        }
        let mut lines = vec![];
        let r = sets
            .iter()
            .filter_map(|s| rows.iter().find(|r| r.model == s.tag && &r.param == name && r.stat == "abs_q999").map(|r| r.value))
            .fold(0f64, f64::max);
        for (k, s) in sets.iter().enumerate() {
            let Some((_, w, _)) = s.tensors.iter().find(|t| &t.0 == name) else { continue };
            let (lo, hi) = if sets.len() == 1 {
                (w.iter().cloned().fold(f64::INFINITY, f64::min), w.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
            } else {
                (-r, r)
            };
            lines.push(Line::new(density(w, lo, hi, 100), style::color(k), if k == 0 { Style::Solid } else { Style::Dashed }, Some(s.tag.clone())));
        }
        panels.push(Panel::new(format!("{name} ({role}, depth {depth})"), "weight value", "density").lines(lines));
    }
    panels.retain(|p| p.lines.iter().any(|l| !l.points.is_empty()));
    let title = format!("weights — {}", sets.iter().map(|s| s.tag.as_str()).collect::<Vec<_>>().join(" vs "));
    let mut out = if panels.is_empty() { vec![] } else { style::write_figure(dir, &Figure { stem: "weights_hist".into(), title: format!("{title} — histograms by depth"), panels, legend: vec![] }, opts)? };
    let mut trend = vec![];
    for (stat, init) in [("near_zero_frac@0.1", 0.1), ("std_ratio", 1.0)] {
        let mut lines = vec![];
        for (k, s) in sets.iter().enumerate() {
            for (role, st, mk) in [("main", Style::Solid, Marker::Circle), ("skip", Style::Dashed, Marker::Square)] {
                let mut pts: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
                for r in rows.iter().filter(|r| r.model == s.tag && r.role == role && r.stat == stat) {
                    pts.entry(r.depth).or_default().push(r.value);
                }
                if pts.is_empty() {
                    continue;
                }
                let p: Vec<(f64, f64)> = pts.iter().map(|(d, v)| (*d as f64, v.iter().sum::<f64>() / v.len() as f64)).collect();
                lines.push(Line::new(p, style::color(k), st, Some(format!("{} {role}", s.tag))).marker(mk));
            }
        }
        let mut p = Panel::new(format!("{stat} vs depth"), "depth", stat).scales(Scale::Integer, Scale::Linear).lines(lines);
        p.hlines = vec![HLine::new(init, format!("at initialisation (uniform): {stat} = {init}"))];
        trend.push(p);
    }
    // A panel without data is not drawn, and a figure without panels is not written.
    trend.retain(|p| p.lines.iter().any(|l| !l.points.is_empty()));
    if !trend.is_empty() {
        let legend = vec![LegendEntry::text("mean over the tensors of each depth")];
        out.extend(style::write_figure(dir, &Figure { stem: "weights_trend".into(), title: format!("{title} — trends"), panels: trend, legend }, opts)?);
    }
    Ok(out)
}

pub fn frame(rows: &[StatRow]) -> Result<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let cols = vec![
        Column::new("model".into(), rows.iter().map(|r| r.model.clone()).collect::<Vec<_>>()),
        Column::new("param".into(), rows.iter().map(|r| r.param.clone()).collect::<Vec<_>>()),
        Column::new("role".into(), rows.iter().map(|r| r.role.clone()).collect::<Vec<_>>()),
        Column::new("depth".into(), rows.iter().map(|r| r.depth).collect::<Vec<_>>()),
        Column::new("epoch".into(), rows.iter().map(|r| r.epoch).collect::<Vec<_>>()),
        Column::new("stat".into(), rows.iter().map(|r| r.stat.clone()).collect::<Vec<_>>()),
        Column::new("value".into(), rows.iter().map(|r| r.value).collect::<Vec<_>>()),
    ];
    Ok(DataFrame::new(rows.len(), cols)?)
}
