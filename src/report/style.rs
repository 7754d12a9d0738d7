//! The figure style, in one place (docs/figures.md): every figure of epcheck is a [`Figure`] drawn by
//! [`write_figure`].
//!
//! * Axes are linear, integer (steps, epochs, iterations, depth: integer ticks only), percent (ticks `20%`) or
//!   real log (the data are given as values; ticks at powers of ten labelled 10ᵏ, minor grid at 2…9·10ᵏ, values
//!   ≤ 0 are not drawn and counted in the panel's note). Ticks are chosen so that no two labels are equal and
//!   the x labels do not collide.
//! * One legend per figure, below the panels, explaining every line style, colour and marker; its swatches are
//!   drawn with the same stroke and marker as the lines.
//! * Colours: the Okabe–Ito palette (colour-blind safe) for categories, a viridis ramp for ordered quantities
//!   such as the number of points N.
//! * A figure title (instance, β, K, T, verdict), panel titles, the bundled DejaVu Sans font.
//! * Formats: SVG, PNG (2× scale) and PDF (the SVG converted by svg2pdf when built with it; see
//!   [`FigureOptions::formats`]).
use crate::{Error, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Okabe–Ito, in the order used for categories (yellow last: weak on white).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0x00, 0x72, 0xB2), // blue
    RGBColor(0xD5, 0x5E, 0x00), // vermillion
    RGBColor(0x00, 0x9E, 0x73), // bluish green
    RGBColor(0xCC, 0x79, 0xA7), // reddish purple
    RGBColor(0xE6, 0x9F, 0x00), // orange
    RGBColor(0x56, 0xB4, 0xE9), // sky blue
    RGBColor(0x00, 0x00, 0x00), // black
    RGBColor(0xF0, 0xE4, 0x42), // yellow
];
/// Reference lines (thresholds, tol, y = x, init values).
pub const GREY: RGBColor = RGBColor(0x70, 0x70, 0x70);
pub const LIGHT_GREY: RGBColor = RGBColor(0xA8, 0xA8, 0xA8);

/// Category colour k.
pub fn color(k: usize) -> RGBColor {
    PALETTE[k % PALETTE.len()]
}

/// Sequential colour for position `i` of `n` ordered values (viridis from dark purple to green; the pale yellow
/// end is left out so every line stays visible on white).
pub fn sequential(i: usize, n: usize) -> RGBColor {
    const V: [(f64, f64, f64); 5] = [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (170.0, 220.0, 50.0)];
    let u = if n <= 1 { 0.0 } else { i as f64 / (n - 1) as f64 } * 0.92;
    let x = u * (V.len() - 1) as f64;
    let k = (x.floor() as usize).min(V.len() - 2);
    let f = x - k as f64;
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(mix(V[k].0, V[k + 1].0), mix(V[k].1, V[k + 1].1), mix(V[k].2, V[k + 1].2))
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Scale {
    Linear,
    /// Integer quantities (steps, epochs, iterations, depth): integer ticks only.
    Integer,
    /// Values in percent (0–100): ticks labelled `20%`.
    Percent,
    /// Log axis: the data are plain values; ticks 10ᵏ.
    Log,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Style {
    Solid,
    /// Solid, wide and translucent: a reference (BPTT) that a dashed estimate (EP) is drawn on top of.
    Under,
    Dashed,
    /// Dashed with hollow markers (EP series, which often lie exactly on the solid reference).
    DashedMarked,
    Dotted,
    /// Thin grey dotted context line (raw BPTT_s); it does not set the axis range and is clipped to it.
    ThinDotted,
    /// Markers only (scatter).
    Markers,
    /// Legend only: the swatch of a shaded [`Band`].
    Band,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
}

pub const MARKERS: [Marker; 5] = [Marker::Circle, Marker::Square, Marker::Triangle, Marker::Diamond, Marker::Cross];

/// A line of a panel: points (plain values, also on log axes), colour, style, optional marker and legend label.
#[derive(Clone)]
pub struct Line {
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    pub style: Style,
    pub label: Option<String>,
    pub marker: Option<Marker>,
}

impl Line {
    pub fn new(points: Vec<(f64, f64)>, color: RGBColor, style: Style, label: Option<String>) -> Self {
        let marker = match style {
            Style::DashedMarked | Style::Markers => Some(Marker::Circle),
            _ => None,
        };
        Line { points, color, style, label, marker }
    }
    pub fn marker(mut self, m: Marker) -> Self {
        self.marker = Some(m);
        self
    }
}

/// A horizontal reference line (threshold, tol, init value), drawn grey and named in the legend.
#[derive(Clone)]
pub struct HLine {
    pub y: f64,
    pub label: String,
    pub style: Style,
}

impl HLine {
    pub fn new(y: f64, label: impl Into<String>) -> Self {
        HLine { y, label: label.into(), style: Style::Dashed }
    }
}

#[derive(Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub lines: Vec<Line>,
    pub hlines: Vec<HLine>,
    /// Fixed x range (else the data's).
    pub x_range: Option<(f64, f64)>,
    /// A short note under the panel title (e.g. "zero residual from t = 12 on").
    pub note: Option<String>,
    /// Shaded spreads drawn under the lines (e.g. min–max over seeds).
    pub bands: Vec<Band>,
}

/// A shaded spread: at each x, the interval [lo, hi], filled translucent in `color` under the lines.
#[derive(Clone)]
pub struct Band {
    /// (x, lo, hi), plain values (also on log axes).
    pub points: Vec<(f64, f64, f64)>,
    pub color: RGBColor,
}

impl Panel {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        Panel { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), x_scale: Scale::Linear, y_scale: Scale::Linear, lines: vec![], hlines: vec![], x_range: None, note: None, bands: vec![] }
    }
    pub fn scales(mut self, x: Scale, y: Scale) -> Self {
        self.x_scale = x;
        self.y_scale = y;
        self
    }
    pub fn lines(mut self, lines: Vec<Line>) -> Self {
        self.lines = lines;
        self
    }
    pub fn has_data(&self) -> bool {
        self.lines.iter().any(|l| l.style != Style::ThinDotted && l.points.iter().any(|&(x, y)| ok(self.x_scale, x) && ok(self.y_scale, y)))
    }
}

/// A legend entry: a swatch (colour, style, marker) and its text, or text alone.
#[derive(Clone, PartialEq)]
pub struct LegendEntry {
    pub swatch: Option<(RGBColor, Style, Option<Marker>)>,
    pub text: String,
}

impl LegendEntry {
    pub fn line(color: RGBColor, style: Style, marker: Option<Marker>, text: impl Into<String>) -> Self {
        LegendEntry { swatch: Some((color, style, marker)), text: text.into() }
    }
    /// A shaded-band swatch (drawn as a translucent box).
    pub fn band(color: RGBColor, text: impl Into<String>) -> Self {
        LegendEntry { swatch: Some((color, Style::Band, None)), text: text.into() }
    }
    pub fn text(text: impl Into<String>) -> Self {
        LegendEntry { swatch: None, text: text.into() }
    }
}

pub struct Figure {
    pub stem: String,
    /// Figure title: instance, β, K, T, verdict where they apply.
    pub title: String,
    pub panels: Vec<Panel>,
    /// Entries explaining what the lines' labels do not (per-element colours, context lines); the labelled
    /// lines and reference lines of the panels are added after them, once each.
    pub legend: Vec<LegendEntry>,
}

/// Output options: formats and panel size.
#[derive(Clone, Debug)]
pub struct FigureOptions {
    pub svg: bool,
    pub png: bool,
    pub pdf: bool,
    /// Panel size in px (SVG; PNG is drawn at twice this).
    pub panel: (u32, u32),
}

impl Default for FigureOptions {
    fn default() -> Self {
        FigureOptions { svg: true, png: false, pdf: false, panel: (420, 320) }
    }
}

impl FigureOptions {
    /// `format`: svg, png, pdf, both (svg + png), all (svg + png + pdf), or a comma-separated list; `size`:
    /// the panel size `WxH` in px (empty: 420x320).
    pub fn parse(format: &str, size: &str) -> Result<Self> {
        let mut o = FigureOptions { svg: false, png: false, pdf: false, panel: (420, 320) };
        for f in format.split(',').map(str::trim) {
            match f {
                "svg" => o.svg = true,
                "png" => o.png = true,
                "pdf" => o.pdf = true,
                "both" => (o.svg, o.png) = (true, true),
                "all" => (o.svg, o.png, o.pdf) = (true, true, true),
                _ => return Err(Error::Config(format!("figure format must be svg, png, pdf, both or all (or a comma-separated list), got '{format}'"))),
            }
        }
        o.panel = parse_size(size)?;
        Ok(o)
    }
    /// The formats `formats` accepts, for help texts.
    pub const FORMATS: &'static str = "svg, png, pdf, both (svg+png), all (svg+png+pdf), or a comma-separated list";
}

/// Parses a panel size `WxH` (px); empty means 420x320.
pub fn parse_size(size: &str) -> Result<(u32, u32)> {
    if size.trim().is_empty() {
        return Ok((420, 320));
    }
    let bad = || Error::Config(format!("figure size must be WxH in px with W, H in 200…2000 (e.g. 420x320), got '{size}'"));
    let (w, h) = size.split_once(['x', 'X', '×']).ok_or_else(bad)?;
    let (w, h): (u32, u32) = (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
    if !(200..=2000).contains(&w) || !(200..=2000).contains(&h) {
        return Err(bad());
    }
    Ok((w, h))
}

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

fn ok(scale: Scale, v: f64) -> bool {
    v.is_finite() && (scale != Scale::Log || v > 0.0)
}

fn fwd(scale: Scale, v: f64) -> f64 {
    if scale == Scale::Log {
        v.log10()
    } else {
        v
    }
}

// ---------------------------------------------------------------------------------------------------------
// Ticks and labels

const SUP: [char; 10] = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];

/// 10ᵏ with Unicode superscripts.
pub fn pow10(k: i64) -> String {
    let mut s = String::from("10");
    if k < 0 {
        s.push('⁻');
    }
    for c in k.abs().to_string().chars() {
        s.push(SUP[c.to_digit(10).unwrap() as usize]);
    }
    s
}

/// Formats tick value `v` of a sequence with spacing `step`: plain decimals with just enough digits when the
/// magnitudes are moderate, else m×10ᵏ with the digits the step needs (so equal labels cannot occur).
pub fn tick_label(v: f64, step: f64) -> String {
    if v == 0.0 || v.abs() < step * 1e-9 {
        return "0".into();
    }
    let mag = v.abs().log10().floor() as i64;
    let sexp = step.abs().log10().floor() as i64;
    if (-3..5).contains(&mag) && sexp >= -4 {
        let dec = (-sexp).max(0) as usize;
        // One more digit when the step is not a whole multiple at that precision (2.5, 0.25).
        let dec = if ((step / 10f64.powi(sexp as i32)) - (step / 10f64.powi(sexp as i32)).round()).abs() > 1e-6 { dec + 1 } else { dec };
        return format!("{v:.dec$}").replace('-', "−");
    }
    let m = v / 10f64.powi(mag as i32);
    let digits = (mag - sexp).clamp(0, 6) as usize;
    let ms = format!("{m:.digits$}");
    let ms = if ms.contains('.') { ms.trim_end_matches('0').trim_end_matches('.').to_string() } else { ms };
    if ms == "1" {
        return format!("{}{}", if v < 0.0 { "−" } else { "" }, pow10(mag));
    }
    format!("{}×{}", ms.replace('-', "−"), pow10(mag))
}

fn nice_step(span: f64, n: usize) -> f64 {
    let raw = span / n.max(1) as f64;
    if !(raw > 0.0) || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let f = raw / p;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * p
}

/// Tick positions (in axis coordinates: log10 on log axes), labels, and light grid positions.
pub struct Ticks {
    pub pos: Vec<f64>,
    pub labels: Vec<String>,
    pub light: Vec<f64>,
}

/// Ticks of an axis over [lo, hi] (axis coordinates) with at most `n` labels.
pub fn ticks(scale: Scale, lo: f64, hi: f64, n: usize) -> Ticks {
    let n = n.max(2);
    let linear = |lo: f64, hi: f64, integer: bool| -> (Vec<f64>, f64) {
        let mut step = nice_step(hi - lo, n);
        if integer {
            step = step.max(1.0).round().max(1.0);
            if step > 2.0 && step < 5.0 {
                step = 5.0;
            }
        }
        let start = (lo / step).ceil() as i64;
        let end = (hi / step).floor() as i64;
        ((start..=end).map(|k| k as f64 * step).collect(), step)
    };
    match scale {
        Scale::Linear | Scale::Percent | Scale::Integer => {
            let (pos, step) = linear(lo, hi, scale == Scale::Integer);
            let labels = pos
                .iter()
                .map(|&v| match scale {
                    Scale::Percent => format!("{}%", tick_label(v, step)),
                    Scale::Integer => format!("{}", v.round() as i64).replace('-', "−"),
                    _ => tick_label(v, step),
                })
                .collect();
            Ticks { pos, labels, light: vec![] }
        }
        Scale::Log => {
            let (a, b) = (lo.ceil() as i64, hi.floor() as i64);
            if b - a >= 1 {
                let every = ((b - a) as usize).div_ceil(n).max(1) as i64;
                let pos: Vec<f64> = (a..=b).filter(|k| k.rem_euclid(every) == 0).map(|k| k as f64).collect();
                let labels = pos.iter().map(|&k| pow10(k as i64)).collect();
                let mut light = vec![];
                if every == 1 && b - a <= 8 {
                    for k in (lo.floor() as i64)..=(hi.ceil() as i64) {
                        for m in 2..10 {
                            let x = k as f64 + (m as f64).log10();
                            if x > lo && x < hi {
                                light.push(x);
                            }
                        }
                    }
                }
                Ticks { pos, labels, light }
            } else {
                // Less than two decades: linear nice values, placed on the log axis.
                let (vlo, vhi) = (10f64.powf(lo), 10f64.powf(hi));
                let (vals, step) = linear(vlo, vhi, false);
                let vals: Vec<f64> = vals.into_iter().filter(|v| *v > 0.0).collect();
                Ticks { pos: vals.iter().map(|v| v.log10()).collect(), labels: vals.iter().map(|&v| tick_label(v, step)).collect(), light: vec![] }
            }
        }
    }
}

/// A linear axis whose ticks (bold) and minor grid lines (light) are exactly the given positions.
struct Axis {
    lo: f64,
    hi: f64,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let r = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (r * (limit.1 - limit.0) as f64).round() as i32
    }
    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }
    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

// ---------------------------------------------------------------------------------------------------------
// Drawing

/// Draws a polyline in the given style on any drawing area (chart plotting area or the legend).
macro_rules! stroke {
    ($area:expr, $pts:expr, $style:expr, $c:expr, $s:expr) => {{
        let pts = $pts;
        let c: RGBColor = $c;
        let s: u32 = $s;
        match $style {
            Style::Solid => $area.draw(&PathElement::new(pts, c.stroke_width(2 * s))).map_err(err)?,
            Style::Under => $area.draw(&PathElement::new(pts, c.mix(0.45).stroke_width(4 * s))).map_err(err)?,
            Style::Dashed | Style::DashedMarked => $area.draw(&DashedPathElement::new(pts, 6 * s, 4 * s, c.stroke_width(2 * s))).map_err(err)?,
            Style::Dotted => $area.draw(&DashedPathElement::new(pts, 2 * s, 3 * s, c.stroke_width(2 * s))).map_err(err)?,
            Style::ThinDotted => $area.draw(&DashedPathElement::new(pts, 2 * s, 3 * s, LIGHT_GREY.stroke_width(s))).map_err(err)?,
            Style::Markers | Style::Band => {}
        }
    }};
}

macro_rules! mark {
    ($area:expr, $p:expr, $m:expr, $c:expr, $s:expr, $filled:expr) => {{
        let p = $p;
        let c: RGBColor = $c;
        let s: u32 = $s;
        let st = if $filled { c.filled() } else { c.stroke_width(s + s / 2) };
        match $m {
            Marker::Circle => $area.draw(&Circle::new(p, 3 * s + s / 2, st)).map_err(err)?,
            Marker::Square => $area.draw(&(EmptyElement::at(p) + Rectangle::new([(-(3 * s as i32), -(3 * s as i32)), (3 * s as i32, 3 * s as i32)], st))).map_err(err)?,
            Marker::Triangle => $area.draw(&TriangleMarker::new(p, 4 * s, st)).map_err(err)?,
            Marker::Diamond => {
                let d = 4 * s as i32;
                $area.draw(&(EmptyElement::at(p) + Polygon::new(vec![(0, -d), (d, 0), (0, d), (-d, 0)], st))).map_err(err)?
            }
            Marker::Cross => $area.draw(&Cross::new(p, 3 * s, c.stroke_width(s + s / 2))).map_err(err)?,
        }
    }};
}

/// Writes the figure in the requested formats; a figure without data is not written (an empty panel grid
/// reads as a result), and panels without data are left out.
pub fn write_figure(dir: &Path, fig: &Figure, opts: &FigureOptions) -> Result<Vec<PathBuf>> {
    // A panel note that does not fit beside the panel title on one line (13 px font: about 7.5 px per
    // character) goes to the figure legend, prefixed with the panel title, instead of being cut off.
    let mut moved = vec![];
    let owned: Vec<Panel> = fig
        .panels
        .iter()
        .filter(|p| p.has_data())
        .map(|p| {
            let mut q = p.clone();
            if let Some(n) = &p.note {
                if (p.title.chars().count() + n.chars().count() + 3) as f64 * 7.5 + 20.0 > opts.panel.0 as f64 {
                    moved.push(LegendEntry::text(format!("{}: {n}", p.title)));
                    q.note = None;
                }
            }
            q
        })
        .collect();
    let panels: Vec<&Panel> = owned.iter().collect();
    if panels.is_empty() {
        return Ok(vec![]);
    }
    register_font();
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let mut legend = legend_entries(fig, &panels);
    legend.extend(moved);
    let cols = panels.len().clamp(1, 4);
    let rows = panels.len().div_ceil(cols);
    let (pw, ph) = opts.panel;
    let w = pw * cols as u32;
    let title_lines = wrap_title(&fig.title, w);
    let title_h = if title_lines.is_empty() { 0 } else { 12 + 20 * title_lines.len() as u32 };
    let legend_h = legend_height(&legend, w);
    let h = title_h + ph * rows as u32 + legend_h;
    let mut out = vec![];
    let mut svg_text = None;
    if opts.svg || opts.pdf {
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, (w, h)).into_drawing_area();
            draw(&root, &title_lines, &panels, &legend, rows, cols, 1, (title_h, legend_h))?;
            root.present().map_err(err)?;
        }
        svg_text = Some(s);
    }
    if opts.svg {
        let path = dir.join(format!("{}.svg", fig.stem));
        std::fs::write(&path, svg_text.as_deref().unwrap_or_default()).map_err(|e| Error::file(&path, e))?;
        out.push(path);
    }
    if opts.png {
        let path = dir.join(format!("{}.png", fig.stem));
        {
            let root = BitMapBackend::new(&path, (2 * w, 2 * h)).into_drawing_area();
            draw(&root, &title_lines, &panels, &legend, rows, cols, 2, (title_h, legend_h))?;
            root.present().map_err(err)?;
        }
        out.push(path);
    }
    if opts.pdf {
        let path = dir.join(format!("{}.pdf", fig.stem));
        super::pdf::svg_to_pdf(svg_text.as_deref().unwrap_or_default(), FONT, &path)?;
        out.push(path);
    }
    Ok(out)
}

fn legend_entries(fig: &Figure, panels: &[&Panel]) -> Vec<LegendEntry> {
    let mut v: Vec<LegendEntry> = fig.legend.clone();
    let mut push = |e: LegendEntry| {
        if !v.iter().any(|x| x.text == e.text) {
            v.push(e);
        }
    };
    for p in panels {
        for l in &p.lines {
            if let Some(t) = &l.label {
                push(LegendEntry::line(l.color, l.style, l.marker, t.clone()));
            }
        }
        for hl in &p.hlines {
            push(LegendEntry::line(GREY, hl.style, None, hl.label.clone()));
        }
    }
    v
}

/// The title in lines that fit width `w` (px at 1×), broken at " — ".
fn wrap_title(title: &str, w: u32) -> Vec<String> {
    if title.is_empty() {
        return vec![];
    }
    let fits = |t: &str| t.chars().count() as u32 * 9 + 20 <= w;
    let mut lines: Vec<String> = vec![];
    for part in title.split(" — ") {
        match lines.last_mut() {
            Some(l) if fits(&format!("{l} — {part}")) => *l = format!("{l} — {part}"),
            _ => lines.push(part.to_string()),
        }
    }
    lines
}

const SWATCH: u32 = 34;
const LEGEND_FONT: u32 = 12;

fn text_w(t: &str) -> u32 {
    // DejaVu Sans at 12 px: about 7 px per character on average.
    (t.chars().count() as u32 * 7).max(10)
}

fn entry_w(e: &LegendEntry) -> u32 {
    text_w(&e.text) + if e.swatch.is_some() { SWATCH + 8 } else { 0 } + 22
}

/// Rows of entries that fit in width w (each row left to right).
fn legend_rows(entries: &[LegendEntry], w: u32) -> Vec<Vec<usize>> {
    let mut rows: Vec<Vec<usize>> = vec![];
    let mut x = 0;
    for (i, e) in entries.iter().enumerate() {
        let ew = entry_w(e);
        if rows.is_empty() || x + ew > w.saturating_sub(20) {
            rows.push(vec![]);
            x = 0;
        }
        rows.last_mut().unwrap().push(i);
        x += ew;
    }
    rows
}

fn legend_height(entries: &[LegendEntry], w: u32) -> u32 {
    if entries.is_empty() {
        0
    } else {
        12 + 20 * legend_rows(entries, w).len() as u32
    }
}

#[allow(clippy::too_many_arguments)]
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title_lines: &[String], panels: &[&Panel], legend: &[LegendEntry], rows: usize, cols: usize, s: u32, (title_h, legend_h): (u32, u32)) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let (title_area, rest) = root.split_vertically(title_h * s);
    let (w, h) = rest.dim_in_pixel();
    let (grid, legend_area) = rest.split_vertically(h - legend_h * s);
    let style = TextStyle::from(("sans-serif", 15 * s).into_font()).color(&BLACK).pos(plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Center, plotters::style::text_anchor::VPos::Center));
    for (i, line) in title_lines.iter().enumerate() {
        title_area.draw(&Text::new(line.clone(), ((w / 2) as i32, ((16 + 20 * i as u32) * s) as i32), style.clone())).map_err(err)?;
    }
    let areas = grid.split_evenly((rows, cols));
    for (area, p) in areas.iter().zip(panels) {
        draw_panel(area, p, s)?;
    }
    if !legend.is_empty() {
        legend_area.draw(&PathElement::new(vec![(8 * s as i32, 2 * s as i32), ((w - 8 * s) as i32, 2 * s as i32)], RGBColor(220, 220, 220).stroke_width(s))).map_err(err)?;
        let font = ("sans-serif", LEGEND_FONT * s).into_font().color(&BLACK);
        for (r, row) in legend_rows(legend, w / s).iter().enumerate() {
            let y = ((12 + 20 * r as u32) * s) as i32;
            let mut x = (14 * s) as i32;
            for &i in row {
                let e = &legend[i];
                if let Some((c, st, m)) = e.swatch {
                    let pts = vec![(x, y), (x + (SWATCH * s) as i32, y)];
                    if st == Style::Band {
                        let h = (5 * s) as i32;
                        legend_area.draw(&Rectangle::new([(x, y - h), (x + (SWATCH * s) as i32, y + h)], c.mix(0.18).filled())).map_err(err)?;
                    } else if st == Style::Markers {
                        mark!(legend_area, (x + (SWATCH * s / 2) as i32, y), m.unwrap_or(Marker::Circle), c, s, true);
                    } else {
                        stroke!(legend_area, pts, st, c, s);
                        if let Some(m) = m {
                            // Filled on solid lines, hollow on dashed ones: as in the panels.
                            mark!(legend_area, (x + (SWATCH * s / 2) as i32, y), m, c, s, st == Style::Solid || st == Style::Under);
                        }
                    }
                    x += ((SWATCH + 8) * s) as i32;
                }
                legend_area.draw(&Text::new(e.text.clone(), (x, y - (7 * s) as i32), font.clone())).map_err(err)?;
                x += ((text_w(&e.text) + 22) * s) as i32;
            }
        }
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel, s: u32) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (xs, ys) = (p.x_scale, p.y_scale);
    let ranged: Vec<(f64, f64)> = p
        .lines
        .iter()
        .filter(|l| l.style != Style::ThinDotted)
        .flat_map(|l| l.points.iter().copied())
        .chain(p.bands.iter().flat_map(|b| b.points.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)])))
        .filter(|&(x, y)| ok(xs, x) && ok(ys, y))
        .map(|(x, y)| (fwd(xs, x), fwd(ys, y)))
        .collect();
    let (mut x0, mut x1) = ranged.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
    if let Some((a, b)) = p.x_range {
        (x0, x1) = (fwd(xs, a), fwd(xs, b));
    }
    let ys_all = ranged.iter().map(|(_, y)| *y).chain(p.hlines.iter().filter(|h| ok(ys, h.y)).map(|h| fwd(ys, h.y)));
    let (mut y0, mut y1) = ys_all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    if y1 <= y0 {
        let d = if ys == Scale::Log { 0.5 } else { y0.abs().max(1e-30) * 0.1 };
        (y0, y1) = (y0 - d, y1 + d);
    }
    let pad = 0.06 * (y1 - y0);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let xpad = if xs == Scale::Integer || xs == Scale::Log { 0.02 * (x1 - x0) } else { 0.0 };
    let (x0, x1) = (x0 - xpad, x1 + xpad);
    let (pw, ph) = area.dim_in_pixel();
    let (pw, ph) = (pw / s, ph / s);
    // Tick counts from the space a label needs: about 7 px per character plus a gap on x, 24 px per label on y.
    let yt = ticks(ys, y0, y1, ((ph as usize).saturating_sub(90) / 34).clamp(3, 8));
    let ylw = yt.labels.iter().map(|l| text_w(l)).max().unwrap_or(20);
    let plot_w = pw.saturating_sub(ylw + 40) as usize;
    let mut nx = 8;
    let xt = loop {
        let t = ticks(xs, x0, x1, nx);
        let lw = t.labels.iter().map(|l| text_w(l) + 14).max().unwrap_or(20) as usize;
        if t.pos.len() * lw <= plot_w || nx <= 2 {
            break t;
        }
        nx -= 1;
    };
    let title = match &p.note {
        Some(n) => format!("{} — {n}", p.title),
        None => p.title.clone(),
    };
    let (xl, xp) = (xt.labels.clone(), xt.pos.clone());
    let (yl, yp) = (yt.labels.clone(), yt.pos.clone());
    let mut chart = ChartBuilder::on(area)
        .caption(&title, ("sans-serif", 13 * s).into_font())
        .margin(6 * s)
        .margin_right(14 * s)
        .x_label_area_size(36 * s)
        .y_label_area_size((ylw + 30) * s)
        .build_cartesian_2d(Axis { lo: x0, hi: x1, bold: xt.pos.clone(), light: xt.light.clone() }, Axis { lo: y0, hi: y1, bold: yt.pos.clone(), light: yt.light.clone() })
        .map_err(err)?;
    let lookup = |pos: &[f64], labels: &[String], v: f64| -> String { pos.iter().position(|p| (p - v).abs() < 1e-9 * (1.0 + v.abs())).map(|i| labels[i].clone()).unwrap_or_default() };
    chart
        .configure_mesh()
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .label_style(("sans-serif", 12 * s))
        .axis_desc_style(("sans-serif", 12 * s))
        .x_label_formatter(&|v| lookup(&xp, &xl, *v))
        .y_label_formatter(&|v| lookup(&yp, &yl, *v))
        .bold_line_style(RGBColor(225, 225, 225).stroke_width(s))
        .light_line_style(RGBColor(243, 243, 243).stroke_width(s))
        .draw()
        .map_err(err)?;
    let pa = chart.plotting_area();
    for hl in &p.hlines {
        if ok(ys, hl.y) {
            let y = fwd(ys, hl.y);
            let pts = vec![pa.map_coordinate(&(x0, y)), pa.map_coordinate(&(x1, y))];
            let root = pa.strip_coord_spec();
            let off = root.get_base_pixel();
            let pts: Vec<(i32, i32)> = pts.into_iter().map(|(a, b)| (a - off.0, b - off.1)).collect();
            stroke!(root, pts, hl.style, GREY, s);
        }
    }
    let root = pa.strip_coord_spec();
    let off = root.get_base_pixel();
    let to_px = |x: f64, y: f64| {
        let (a, b) = pa.map_coordinate(&(x, y));
        (a - off.0, b - off.1)
    };
    for b in &p.bands {
        let pts: Vec<(f64, f64, f64)> = b.points.iter().copied().filter(|&(x, lo, hi)| ok(xs, x) && ok(ys, lo) && ok(ys, hi) && fwd(xs, x) >= x0 && fwd(xs, x) <= x1).collect();
        if pts.len() >= 2 {
            let mut poly: Vec<(i32, i32)> = pts.iter().map(|&(x, lo, _)| to_px(fwd(xs, x), fwd(ys, lo))).collect();
            poly.extend(pts.iter().rev().map(|&(x, _, hi)| to_px(fwd(xs, x), fwd(ys, hi))));
            root.draw(&Polygon::new(poly, b.color.mix(0.18).filled())).map_err(err)?;
        }
    }
    for l in &p.lines {
        // Segments between points that cannot be drawn (non-finite, ≤ 0 on a log axis, or outside the range
        // for context lines).
        let mut segs: Vec<Vec<(f64, f64)>> = vec![vec![]];
        for &(x, y) in &l.points {
            let inside = ok(xs, x) && ok(ys, y) && fwd(xs, x) >= x0 && fwd(xs, x) <= x1 && (l.style != Style::ThinDotted || (fwd(ys, y) >= y0 && fwd(ys, y) <= y1));
            if inside {
                segs.last_mut().unwrap().push((fwd(xs, x), fwd(ys, y)));
            } else if !segs.last().unwrap().is_empty() {
                segs.push(vec![]);
            }
        }
        let n_pts: usize = segs.iter().map(|s| s.len()).sum();
        let every = n_pts.div_ceil(16).max(1);
        let mut k = 0;
        for seg in segs.iter().filter(|s| !s.is_empty()) {
            let px: Vec<(i32, i32)> = seg.iter().map(|&(x, y)| to_px(x, y)).collect();
            if seg.len() > 1 {
                stroke!(root, px.clone(), l.style, l.color, s);
            }
            if let Some(m) = l.marker {
                for q in px {
                    if l.style == Style::Markers || k % every == 0 {
                        mark!(root, q, m, l.color, s, matches!(l.style, Style::Markers | Style::Solid | Style::Under));
                    }
                    k += 1;
                }
            } else if seg.len() == 1 {
                mark!(root, px[0], Marker::Circle, l.color, s, true);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_are_powers_of_ten_and_distinct() {
        let t = ticks(Scale::Log, -12.3, -1.2, 6);
        assert!(t.labels.iter().all(|l| l.starts_with("10")), "{:?}", t.labels);
        let mut u = t.labels.clone();
        u.dedup();
        assert_eq!(u.len(), t.labels.len());
        assert_eq!(pow10(-3), "10⁻³");
    }

    #[test]
    fn integer_ticks_are_integers_and_narrow_log_ranges_get_distinct_labels() {
        let t = ticks(Scale::Integer, 0.0, 9.0, 8);
        assert!(t.labels.iter().all(|l| l.parse::<i64>().is_ok()), "{:?}", t.labels);
        let t = ticks(Scale::Integer, 0.0, 2.0, 8);
        assert_eq!(t.labels, vec!["0", "1", "2"]);
        let t = ticks(Scale::Log, (0.9f64).log10(), (1.1f64).log10(), 5);
        let mut u = t.labels.clone();
        u.dedup();
        assert!(t.labels.len() >= 2 && u.len() == t.labels.len(), "{:?}", t.labels);
        let t = ticks(Scale::Percent, 0.0, 80.0, 5);
        assert!(t.labels.iter().all(|l| l.ends_with('%')), "{:?}", t.labels);
    }

    #[test]
    fn labels_of_tiny_steps_stay_distinct() {
        let t = ticks(Scale::Linear, 1.0e-7, 1.6e-7, 6);
        let mut u = t.labels.clone();
        u.dedup();
        assert_eq!(u.len(), t.labels.len(), "{:?}", t.labels);
        assert_eq!(parse_size("600x400").unwrap(), (600, 400));
        assert!(parse_size("6x4").is_err());
        assert!(FigureOptions::parse("svg,pdf", "").unwrap().pdf);
    }
}
