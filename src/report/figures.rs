//! Figures drawn with plotters from the tables only (checks §0.4): SVG and/or PNG (2× scale), the bundled
//! DejaVu Sans font (no system fontconfig), panels of 420 × 320 px, min(4, n) columns, the fixed palette.
use crate::checks::{MetricRow, SeriesRow};
use crate::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

pub const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static FONT_ONCE: std::sync::Once = std::sync::Once::new();

fn register_font() {
    FONT_ONCE.call_once(|| {
        // Registration of a valid bundled TTF cannot fail; if it did, text would be missing, not a crash.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn err<E: std::fmt::Debug>(e: E) -> Error {
    Error::Report(format!("figure: {e:?}"))
}

/// A line of a panel: points, colour, style.
pub struct Line {
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    pub style: Style,
    pub label: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Style {
    Solid,
    Dashed,
    /// Dashed with hollow markers (EP series in GDU plots, which often lie exactly on the solid BPTT line).
    DashedMarked,
    Dotted,
    ThinDotted,
    /// Markers only (scatter).
    Markers,
}

pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub lines: Vec<Line>,
    /// Horizontal reference lines (y, label).
    pub hlines: Vec<(f64, String)>,
}

/// Writes `<stem>.svg` and/or `<stem>.png` (format: svg, png, both).
pub fn write_panels(dir: &Path, stem: &str, panels: &[Panel], format: &str) -> Result<Vec<std::path::PathBuf>> {
    // A figure with no data is not written (an empty panel grid reads as a result).
    if panels.iter().all(|p| p.lines.iter().all(|l| !l.points.iter().any(|(x, y)| x.is_finite() && y.is_finite()))) {
        return Ok(vec![]);
    }
    register_font();
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let cols = panels.len().clamp(1, 4);
    let rows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (420 * cols as u32, 320 * rows as u32);
    let mut out = vec![];
    if format == "svg" || format == "both" {
        let path = dir.join(format!("{stem}.svg"));
        {
            let root = SVGBackend::new(&path, (w, h)).into_drawing_area();
            draw(&root, panels, rows, cols, 1)?;
            root.present().map_err(err)?;
        }
        out.push(path);
    }
    if format == "png" || format == "both" {
        let path = dir.join(format!("{stem}.png"));
        {
            let root = BitMapBackend::new(&path, (2 * w, 2 * h)).into_drawing_area();
            draw(&root, panels, rows, cols, 2)?;
            root.present().map_err(err)?;
        }
        out.push(path);
    }
    Ok(out)
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, panels: &[Panel], rows: usize, cols: usize, scale: u32) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((rows, cols));
    for (area, p) in areas.iter().zip(panels) {
        let all: Vec<(f64, f64)> = p.lines.iter().flat_map(|l| l.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        let (mut x0, mut x1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
        let ys = all.iter().map(|(_, y)| *y).chain(p.hlines.iter().map(|(y, _)| *y)).filter(|y| y.is_finite());
        let (mut y0, mut y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if !y0.is_finite() {
            (y0, y1) = (0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let pad = if y1 > y0 { 0.05 * (y1 - y0) } else { y0.abs().max(1e-30) * 0.1 };
        let (y0, y1) = (y0 - pad, y1 + pad);
        let fs = 13 * scale;
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 14 * scale).into_font())
            .margin(6 * scale)
            .x_label_area_size(34 * scale)
            .y_label_area_size(64 * scale)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(p.x_label.as_str())
            .y_desc(p.y_label.as_str())
            .label_style(("sans-serif", fs))
            .y_label_formatter(&|v| if v.abs() < 1e-12 * (y1 - y0).abs() { "0".into() } else { format!("{v:.1e}") })
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        for (y, _label) in &p.hlines {
            let pts = vec![(x0, *y), (x1, *y)];
            chart.draw_series(LineSeries::new(pts, RGBColor(150, 150, 150).stroke_width(scale))).map_err(err)?;
        }
        for l in &p.lines {
            let pts: Vec<(f64, f64)> = l.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
            let c = l.color;
            match l.style {
                Style::Solid => {
                    let s = chart.draw_series(LineSeries::new(pts, c.stroke_width(2 * scale))).map_err(err)?;
                    if let Some(lb) = &l.label {
                        s.label(lb.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
                    }
                }
                Style::Dashed | Style::DashedMarked => {
                    if l.style == Style::DashedMarked {
                        chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 3 * scale, c.stroke_width(scale)))).map_err(err)?;
                    }
                    let s = chart.draw_series(DashedLineSeries::new(pts, 6 * scale, 4 * scale, c.stroke_width(2 * scale))).map_err(err)?;
                    if let Some(lb) = &l.label {
                        s.label(lb.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(1)));
                    }
                }
                Style::Dotted => {
                    chart.draw_series(DashedLineSeries::new(pts, 2 * scale, 3 * scale, c.stroke_width(2 * scale))).map_err(err)?;
                }
                Style::Markers => {
                    let s = chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 4 * scale, c.filled()))).map_err(err)?;
                    if let Some(lb) = &l.label {
                        s.label(lb.clone()).legend(move |(x, y)| Circle::new((x + 8, y), 4, c.filled()));
                    }
                }
                Style::ThinDotted => {
                    chart.draw_series(DashedLineSeries::new(pts, scale, 3 * scale, RGBColor(140, 140, 140).stroke_width(scale))).map_err(err)?;
                }
            }
        }
        if p.lines.iter().any(|l| l.label.is_some()) {
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 11 * scale))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Groups series rows by (name) → (series) → (element) → points.
type Grouped = BTreeMap<String, BTreeMap<String, BTreeMap<i64, Vec<(f64, f64)>>>>;

fn group(rows: &[SeriesRow], kind: &str) -> Grouped {
    let mut g: Grouped = BTreeMap::new();
    for r in rows.iter().filter(|r| r.kind == kind) {
        g.entry(r.name.clone()).or_default().entry(r.series.clone()).or_default().entry(r.element).or_default().push((r.t as f64, r.value));
    }
    g
}

/// `gdu` figure (checks §3): one panel per parameter tensor (in `param_order`), then per neuron layer; per
/// sampled element, BPTT solid and EP (symmetric) dashed in the same colour; neuron panels use J·BPTT_s as the
/// solid line and show raw BPTT_s thin grey dotted.
pub fn gdu_figure(dir: &Path, rows: &[SeriesRow], param_order: &[String], layer_order: &[String], format: &str) -> Result<Vec<std::path::PathBuf>> {
    let params = group(rows, "param");
    let neurons = group(rows, "neuron");
    let mut panels = vec![];
    let mut add = |name: &str, g: &BTreeMap<String, BTreeMap<i64, Vec<(f64, f64)>>>, reference: &str, y_label: &str| {
        let mut lines = vec![];
        if let Some(rf) = g.get(reference) {
            for (k, (_, pts)) in rf.iter().enumerate() {
                lines.push(Line { points: pts.clone(), color: PALETTE[k % 10], style: Style::Solid, label: (k == 0).then(|| "BPTT".to_string()) });
            }
        }
        if let Some(ep) = g.get("ep_sym") {
            for (k, (_, pts)) in ep.iter().enumerate() {
                lines.push(Line { points: pts.clone(), color: PALETTE[k % 10], style: Style::DashedMarked, label: (k == 0).then(|| "EP (symmetric)".to_string()) });
            }
        }
        if let Some(raw) = g.get("bptt_raw") {
            for pts in raw.values() {
                lines.push(Line { points: pts.clone(), color: PALETTE[7], style: Style::ThinDotted, label: None });
            }
        }
        panels.push(Panel { title: name.to_string(), x_label: "nudged step t".into(), y_label: y_label.into(), lines, hlines: vec![] });
    };
    for name in param_order {
        if let Some(g) = params.get(name) {
            add(name, g, "bptt", "gradient estimate");
        }
    }
    for name in layer_order {
        if let Some(g) = neurons.get(name) {
            add(name, g, "bptt_j", "−∂ℓ/∂s, J-corrected");
        }
    }
    write_panels(dir, "gdu", &panels, format)
}

/// `residual` figure (checks §2): per phase, log10 of the residual vs iteration; median solid, max dashed,
/// min dotted over examples; tol as a grey line.
pub fn residual_figure(dir: &Path, rows: &[SeriesRow], phases: &[(String, i64, usize)], tol: f64, format: &str) -> Result<Vec<std::path::PathBuf>> {
    let g = group(rows, "residual");
    let mut panels = vec![];
    for (k, (phase, iters, nonconv)) in phases.iter().enumerate() {
        let Some(by_series) = g.get(phase) else { continue };
        let Some(by_elem) = by_series.get(phase) else { continue };
        let n = by_elem.values().map(|v| v.len()).max().unwrap_or(0);
        let (mut med, mut mx, mut mn) = (vec![], vec![], vec![]);
        for t in 0..n {
            let vals: Vec<f64> = by_elem.values().filter_map(|v| v.get(t).map(|p| p.1)).collect();
            let x = by_elem.values().next().unwrap()[t].0;
            let lg = |v: f64| if v.is_finite() { v.max(1e-300).log10() } else { f64::NAN };
            med.push((x, lg(crate::checks::metrics::median(&vals))));
            mx.push((x, lg(vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max))));
            mn.push((x, lg(vals.iter().cloned().fold(f64::INFINITY, f64::min))));
        }
        let c = PALETTE[k % 10];
        panels.push(Panel {
            title: format!("{phase}: {iters} iterations, {nonconv} not converged"),
            x_label: "iteration t".into(),
            y_label: "log10 residual max|s_t − s_{t−1}|".into(),
            lines: vec![
                Line { points: med, color: c, style: Style::Solid, label: Some("median".into()) },
                Line { points: mx, color: c, style: Style::Dashed, label: Some("max".into()) },
                Line { points: mn, color: c, style: Style::Dotted, label: None },
            ],
            hlines: vec![(tol.log10(), "tol".into())],
        });
    }
    write_panels(dir, "residual", &panels, format)
}

fn key_of(r: &MetricRow) -> String {
    match r.n_points {
        Some(n) => format!("ep_holomorphic N={n}"),
        None => r.estimator.clone().unwrap_or_default(),
    }
}

/// `bias_err` (log10 rel_l2 vs log10 β with the fitted lines), `bias_cos` (−log10(1 − cos) vs log10 β) and
/// `im_leak` (log10 im_leak vs log10 β per N): one panel per scope (total, then layer groups), one line per
/// estimator / N, drawn from the `metrics` rows.
pub fn bias_figures(dir: &Path, rows: &[MetricRow], scope_order: &[String], format: &str) -> Result<Vec<std::path::PathBuf>> {
    let mut keys: Vec<String> = vec![];
    for r in rows.iter().filter(|r| r.metric == "rel_l2" && r.beta.is_some()) {
        let k = key_of(r);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let lg = |v: f64| if v > 0.0 && v.is_finite() { v.log10() } else { f64::NAN };
    let style_of = |k: &str| if k == "ep_minus" { Style::Dashed } else { Style::Solid };
    let panels_for = |metric: &str, transform: &dyn Fn(f64) -> f64, y_label: &str, with_fits: bool| -> Vec<Panel> {
        scope_order
            .iter()
            .map(|scope| {
                let mut lines = vec![];
                for (ci, k) in keys.iter().enumerate() {
                    let pts: Vec<(f64, f64)> = rows
                        .iter()
                        .filter(|r| r.metric == metric && &r.name == scope && r.t.is_none() && key_of(r) == *k && r.beta.is_some() && r.scope != "fit")
                        .map(|r| (lg(r.beta.unwrap()), transform(r.value)))
                        .collect();
                    if pts.is_empty() {
                        continue;
                    }
                    let color = PALETTE[ci % 10];
                    let mut label = k.clone();
                    if with_fits {
                        let fit = |m: &str| rows.iter().find(|r| r.scope == "fit" && &r.name == scope && r.metric == m && key_of(r) == *k).map(|r| r.value);
                        if let (Some(sl), Some(c), Some(lo), Some(hi), Some(pe)) = (fit("slope"), fit("slope_intercept"), fit("beta_min_fit"), fit("beta_max_fit"), fit("slope_expected")) {
                            label = format!("{k}: slope {sl:.2} (expected {pe})");
                            let (a, b) = (lo.log10(), hi.log10());
                            lines.push(Line { points: vec![(a, c + sl * a), (b, c + sl * b)], color, style: Style::ThinDotted, label: None });
                        }
                    }
                    lines.push(Line { points: pts, color, style: style_of(k), label: Some(label) });
                }
                Panel { title: scope.clone(), x_label: "log10 β".into(), y_label: y_label.into(), lines, hlines: vec![] }
            })
            .collect()
    };
    let mut out = vec![];
    out.extend(write_panels(dir, "bias_err", &panels_for("rel_l2", &lg, "log10 rel_l2 vs reference", true), format)?);
    out.extend(write_panels(dir, "bias_cos", &panels_for("neglog10_one_minus_cos", &|v| v, "−log10(1 − cos)", false), format)?);
    let leak_panels = panels_for("im_leak", &lg, "log10 im_leak", false);
    if leak_panels.iter().any(|p| !p.lines.is_empty()) {
        out.extend(write_panels(dir, "im_leak", &leak_panels[..1], format)?);
    }
    Ok(out)
}

/// `refs` scatter: Richardson FD value (y) against the reference projection ⟨g, v⟩ (x), with y = x.
pub fn refs_figure(dir: &Path, rows: &[MetricRow], format: &str) -> Result<Vec<std::path::PathBuf>> {
    let mut pts = vec![];
    for r in rows.iter().filter(|r| r.metric == "fd_value") {
        if let Some(x) = rows.iter().find(|q| q.metric == "ref_projection" && q.name == r.name) {
            pts.push((x.value, r.value));
        }
    }
    let (lo, hi) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, y)| (a.min(x.min(*y)), b.max(x.max(*y))));
    let lines = vec![
        Line { points: vec![(lo, lo), (hi, hi)], color: PALETTE[7], style: Style::Solid, label: Some("y = x".into()) },
        Line { points: pts, color: PALETTE[0], style: Style::Markers, label: Some("directions".into()) },
    ];
    let panel = Panel { title: "finite differences vs reference".into(), x_label: "⟨g_ref, v⟩".into(), y_label: "D_R (Richardson)".into(), lines, hlines: vec![] };
    write_panels(dir, "refs", &[panel], format)
}
