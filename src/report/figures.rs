//! The figures of the checks, drawn from the tables only (docs/figures.md): the `series` rows for time series,
//! the `metrics` rows for everything else. The style (axes, ticks, legend, palette, formats) is in
//! [`super::style`].
use super::style::{self, color, sequential, Figure, FigureOptions, HLine, LegendEntry, Marker, Scale, GREY, MARKERS};
pub use super::style::{Line, Panel, Style};
use crate::checks::{MetricRow, SeriesRow};
use crate::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Groups series rows by (name) → (series) → (element) → points.
type Grouped = BTreeMap<String, BTreeMap<String, BTreeMap<i64, Vec<(f64, f64)>>>>;

fn group(rows: &[SeriesRow], kind: &str) -> Grouped {
    let mut g: Grouped = BTreeMap::new();
    for r in rows.iter().filter(|r| r.kind == kind) {
        g.entry(r.name.clone()).or_default().entry(r.series.clone()).or_default().entry(r.element).or_default().push((r.t as f64, r.value));
    }
    g
}

/// Short number for titles and legends: 1e-3, 0.01, 57.
pub fn short(v: f64) -> String {
    crate::checks::num(v)
}

/// What a gdu figure shows: which EP series (`ep_sym`, `ep_plus`, `ep_minus`), which tensors / layers (empty:
/// all), and the run's context for the title.
pub struct GduPlot<'a> {
    pub series: &'a [String],
    pub tensors: &'a [String],
    pub instance: &'a str,
    pub verdict: &'a str,
}

fn ep_style(series: &str) -> (Style, Marker, &'static str) {
    match series {
        "ep_plus" => (Style::Dotted, Marker::Triangle, "EP⁺ (β > 0)"),
        "ep_minus" => (Style::Dashed, Marker::Square, "EP⁻ (β < 0)"),
        _ => (Style::DashedMarked, Marker::Circle, "EP_sym (symmetric)"),
    }
}

/// `gdu` figure: one panel per parameter tensor (canonical order), then per neuron layer. Per element, in
/// colour k: BPTT wide and translucent, EP dashed with hollow markers on top (so a matching EP line stays
/// visible); neuron panels use J·BPTT_s and add raw BPTT_s thin grey dotted (clipped, it does not set the
/// range). Elements are those with the largest BPTT signal (the series rows); trailing steps where every line
/// is below 10⁻³ of the panel's maximum are cut and the cut is noted in the panel title.
pub fn gdu_figure(dir: &Path, rows: &[SeriesRow], metrics: &[MetricRow], param_order: &[String], layer_order: &[String], plot: &GduPlot, opts: &FigureOptions) -> Result<Vec<PathBuf>> {
    let params = group(rows, "param");
    let neurons = group(rows, "neuron");
    let beta = metrics.iter().find_map(|r| r.beta);
    let t_run = metrics.iter().find(|r| r.metric == "t_free_run").map(|r| r.value);
    let k_steps = rows.iter().map(|r| r.t + 1).max().unwrap_or(0);
    let mut panels = vec![];
    let wanted = |n: &str| plot.tensors.is_empty() || plot.tensors.iter().any(|t| t == n);
    let mut add = |name: &str, g: &BTreeMap<String, BTreeMap<i64, Vec<(f64, f64)>>>, reference: &str, y_label: &str| {
        let mut lines = vec![];
        let elems: Vec<i64> = g.get(reference).map(|m| m.keys().copied().collect()).unwrap_or_default();
        // Largest signal first: the order of the series rows' elements is by index, so rank them again.
        let mut ranked: Vec<(i64, f64)> = elems.iter().map(|e| (*e, g[reference][e].iter().map(|p| p.1.abs()).fold(0.0, f64::max))).collect();
        ranked.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(&b.0)));
        let mut peak = 0f64;
        let mut last_t = 0f64;
        for (k, (e, _)) in ranked.iter().enumerate() {
            let c = color(k);
            if let Some(raw) = g.get("bptt_raw").and_then(|m| m.get(e)) {
                lines.push(Line::new(raw.clone(), style::LIGHT_GREY, Style::ThinDotted, None));
            }
            if let Some(pts) = g.get(reference).and_then(|m| m.get(e)) {
                lines.push(Line::new(pts.clone(), c, Style::Under, None));
            }
            for s in plot.series {
                if let Some(pts) = g.get(s.as_str()).and_then(|m| m.get(e)) {
                    let (st, mk, _) = ep_style(s);
                    lines.push(Line::new(pts.clone(), c, st, None).marker(mk));
                }
            }
        }
        for l in lines.iter().filter(|l| l.style != Style::ThinDotted) {
            peak = l.points.iter().fold(peak, |m, p| m.max(p.1.abs()));
        }
        for l in lines.iter().filter(|l| l.style != Style::ThinDotted) {
            for p in &l.points {
                if p.1.abs() > 1e-3 * peak {
                    last_t = last_t.max(p.0);
                }
            }
        }
        let shown: Vec<String> = ranked.iter().map(|(e, _)| e.to_string()).collect();
        let mut p = Panel::new(format!("{name} [{}]", shown.join(", ")), "nudged step t", y_label).scales(Scale::Integer, Scale::Linear).lines(lines);
        let t_end = (k_steps - 1) as f64;
        if peak > 0.0 && last_t + 2.0 < 0.7 * t_end {
            p.x_range = Some((0.0, (last_t + 2.0).min(t_end)));
            p.note = Some(format!("< 10⁻³·max after t = {}", last_t as i64));
        }
        panels.push(p);
    };
    for name in param_order.iter().filter(|n| wanted(n)) {
        if let Some(g) = params.get(name) {
            add(name, g, "bptt", "∂L/∂θ contribution of step t");
        }
    }
    for name in layer_order.iter().filter(|n| wanted(n)) {
        if let Some(g) = neurons.get(name) {
            add(name, g, "bptt_j", "−∂ℓ/∂s, J-corrected");
        }
    }
    let mut legend = vec![LegendEntry::line(GREY, Style::Under, None, "BPTT (J·BPTT_s for neurons)")];
    for s in plot.series {
        let (st, mk, txt) = ep_style(s);
        legend.push(LegendEntry::line(GREY, st, Some(mk), txt));
    }
    if panels.iter().any(|p| p.lines.iter().any(|l| l.style == Style::ThinDotted)) {
        legend.push(LegendEntry::line(style::LIGHT_GREY, Style::ThinDotted, None, "raw BPTT_s (no J; clipped)"));
    }
    legend.push(LegendEntry::text("colour k = element k of the panel's [list], largest max_t |BPTT| first (flat row-major index)"));
    let mut title = format!("gdu — {}", plot.instance);
    if let Some(b) = beta {
        title += &format!(" — β = {}", short(b));
    }
    title += &format!(", K = {k_steps}");
    if let Some(t) = t_run {
        title += &format!(", T = {}", t as i64);
    }
    title += &format!(" — {}", plot.verdict);
    style::write_figure(dir, &Figure { stem: "gdu".into(), title, panels, legend }, opts)
}

/// `residual` figure: per phase, the residual r(t) = max |s(t) − s(t−1)| on a log axis vs iteration; median
/// (solid, ●), max (dashed, ■) and min (dotted, ▲) over examples; tol as a grey dashed line. Exactly-zero
/// residuals cannot be drawn on a log axis: they are left out and counted in the panel title.
pub fn residual_figure(dir: &Path, rows: &[SeriesRow], phases: &[(String, i64, usize)], tol: f64, instance: &str, verdict: &str, opts: &FigureOptions) -> Result<Vec<PathBuf>> {
    let g = group(rows, "residual");
    let mut panels = vec![];
    for (k, (phase, iters, nonconv)) in phases.iter().enumerate() {
        let Some(by_series) = g.get(phase) else { continue };
        let Some(by_elem) = by_series.get(phase) else { continue };
        let n = by_elem.values().map(|v| v.len()).max().unwrap_or(0);
        let (mut med, mut mx, mut mn) = (vec![], vec![], vec![]);
        let mut zeros = None;
        for t in 0..n {
            let vals: Vec<f64> = by_elem.values().filter_map(|v| v.get(t).map(|p| p.1)).collect();
            let x = by_elem.values().next().unwrap()[t].0;
            let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min);
            if lo == 0.0 && zeros.is_none() {
                zeros = Some(x as i64);
            }
            med.push((x, crate::checks::metrics::median(&vals)));
            mx.push((x, vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)));
            mn.push((x, lo));
        }
        let c = color(k);
        let mut p = Panel::new(format!("{phase}: {iters} iterations, {nonconv} not converged"), "iteration t", "residual max |s(t) − s(t−1)|").scales(Scale::Integer, Scale::Log).lines(vec![
            Line::new(med, c, Style::Solid, Some("median over examples".into())).marker(Marker::Circle),
            Line::new(mx, c, Style::Dashed, Some("max over examples".into())).marker(Marker::Square),
            Line::new(mn, c, Style::Dotted, Some("min over examples".into())).marker(Marker::Triangle),
        ]);
        p.hlines = vec![HLine::new(tol, format!("tol = {}", short(tol)))];
        if let Some(t0) = zeros {
            p.note = Some(format!("exactly 0 from t = {t0} (not drawn)"));
        }
        panels.push(p);
    }
    let legend = if phases.len() > 1 { vec![LegendEntry::text("colour = phase (panel title)")] } else { vec![] };
    let title = format!("converge — {instance} — tol = {} — {verdict}", short(tol));
    style::write_figure(dir, &Figure { stem: "residual".into(), title, panels, legend }, opts)
}

/// `phi` figure (the energy along the phases, as the sequence-learning paper shows it): per phase, Φ_β(t) (the
/// primitive, maximised; E = −Φ) on a linear axis — median over examples (solid, ●), min and max (dotted ▲,
/// dashed ■) — and, on a log axis, the distance to the phase's last value |Φ_β(t) − Φ_β(n)| (median, max),
/// which shows how fast the energy settles. Exactly-zero distances (the last step) are not drawn.
pub fn phi_figure(dir: &Path, rows: &[SeriesRow], phases: &[String], instance: &str, verdict: &str, opts: &FigureOptions) -> Result<Vec<PathBuf>> {
    let g = group(rows, "phi");
    let mut panels = vec![];
    for (k, phase) in phases.iter().enumerate() {
        let Some(by_elem) = g.get(phase).and_then(|m| m.get(phase)) else { continue };
        let n = by_elem.values().map(|v| v.len()).min().unwrap_or(0);
        if n < 2 {
            continue;
        }
        let (mut med, mut mx, mut mn, mut gap_med, mut gap_max) = (vec![], vec![], vec![], vec![], vec![]);
        for t in 0..n {
            let x = by_elem.values().next().unwrap()[t].0;
            let vals: Vec<f64> = by_elem.values().map(|v| v[t].1).collect();
            let gaps: Vec<f64> = by_elem.values().map(|v| (v[t].1 - v[n - 1].1).abs()).collect();
            med.push((x, crate::checks::metrics::median(&vals)));
            mx.push((x, vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)));
            mn.push((x, vals.iter().cloned().fold(f64::INFINITY, f64::min)));
            if t + 1 < n {
                gap_med.push((x, crate::checks::metrics::median(&gaps)));
                gap_max.push((x, gaps.iter().cloned().fold(f64::NEG_INFINITY, f64::max)));
            }
        }
        let c = color(k);
        let last = med.last().map(|p| p.0 as i64).unwrap_or(0);
        // Where Φ no longer moves (every example's distance to its last value exactly 0), the rest of the panel
        // would be a flat line: cut it as the gdu figure does, and say so.
        let moving = gap_max.iter().filter(|p| p.1 > 0.0).map(|p| p.0).fold(0.0, f64::max);
        let mut phi = Panel::new(format!("{phase}: Φ(t), {} examples", by_elem.len()), "iteration t", "Φ(t) (primitive, maximised)").scales(Scale::Integer, Scale::Linear).lines(vec![
            Line::new(med, c, Style::Solid, Some("median over examples".into())).marker(Marker::Circle),
            Line::new(mx, c, Style::Dashed, Some("max over examples".into())).marker(Marker::Square),
            Line::new(mn, c, Style::Dotted, Some("min over examples".into())).marker(Marker::Triangle),
        ]);
        if moving + 2.0 < 0.7 * last as f64 {
            phi.x_range = Some((0.0, moving + 2.0));
            phi.note = Some(format!("constant from t = {} to {last}", moving as i64 + 1));
        }
        panels.push(phi);
        let mut p = Panel::new(format!("{phase}: distance to the last value (t = {last})"), "iteration t", "|Φ(t) − Φ(last)|").scales(Scale::Integer, Scale::Log).lines(vec![
            Line::new(gap_med, c, Style::Solid, Some("median over examples".into())).marker(Marker::Circle),
            Line::new(gap_max, c, Style::Dashed, Some("max over examples".into())).marker(Marker::Square),
        ]);
        p.note = None;
        panels.push(p);
    }
    let mut legend = vec![LegendEntry::text("Φ: the primitive the dynamics maximise (E = −Φ), nudged by the phase's β (Φ − β·ℓ); t = 0: the phase's initial state")];
    if phases.len() > 1 {
        legend.push(LegendEntry::text("colour = phase (panel title)"));
    }
    let title = format!("converge — {instance} — energy along the phases — {verdict}");
    style::write_figure(dir, &Figure { stem: "phi".into(), title, panels, legend }, opts)
}

fn key_of(r: &MetricRow) -> String {
    match r.n_points {
        Some(n) => format!("ep_holomorphic N={n}"),
        None => r.estimator.clone().unwrap_or_default(),
    }
}

/// `bias_err` (rel_l2 vs β, log–log, with the fitted power laws dotted), `bias_cos` (−log10(1 − cos) vs β) and
/// `im_leak` (vs β per N): one panel per scope (total, then layer groups), one line per estimator (Okabe–Ito
/// colours, one marker each) or holomorphic N (a sequential colour map over N), from the `metrics` rows.
pub fn bias_figures(dir: &Path, rows: &[MetricRow], scope_order: &[String], instance: &str, verdict: &str, opts: &FigureOptions) -> Result<Vec<PathBuf>> {
    let mut keys: Vec<String> = vec![];
    for r in rows.iter().filter(|r| r.metric == "rel_l2" && r.beta.is_some()) {
        let k = key_of(r);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let reference = rows.iter().find_map(|r| r.reference.clone()).unwrap_or_else(|| "the reference".into());
    let ns: Vec<String> = keys.iter().filter(|k| k.starts_with("ep_holomorphic")).cloned().collect();
    let cats: Vec<String> = keys.iter().filter(|k| !k.starts_with("ep_holomorphic")).cloned().collect();
    let look = |k: &str| -> (plotters::style::RGBColor, Style, Marker) {
        if let Some(i) = ns.iter().position(|n| n == k) {
            // Holomorphic N wide and translucent underneath, so the classic estimators drawn on top stay visible
            // where they coincide (N = 1 = ep_plus, N = 2 = ep_centered).
            (sequential(i, ns.len()), Style::Under, MARKERS[i % MARKERS.len()])
        } else {
            // Categorical colours that the viridis ramp of N does not use (vermillion, orange, reddish purple, black, sky blue).
            const CAT: [usize; 5] = [1, 4, 3, 6, 5];
            let i = cats.iter().position(|n| n == k).unwrap_or(0);
            (color(CAT[i % CAT.len()]), if k == "ep_minus" { Style::Dotted } else { Style::Dashed }, MARKERS[(i + 1) % MARKERS.len()])
        }
    };
    let panels_for = |metric: &str, y_label: &str, y_scale: Scale, with_fits: bool| -> Vec<Panel> {
        scope_order
            .iter()
            .map(|scope| {
                let mut lines = vec![];
                for k in ns.iter().chain(cats.iter()) {
                    let pts: Vec<(f64, f64)> = rows
                        .iter()
                        .filter(|r| r.metric == metric && &r.name == scope && r.t.is_none() && key_of(r) == *k && r.beta.is_some() && r.scope != "fit")
                        .map(|r| (r.beta.unwrap(), r.value))
                        .collect();
                    if pts.iter().all(|p| !(p.1.is_finite() && (y_scale != Scale::Log || p.1 > 0.0))) {
                        continue;
                    }
                    let (c, st, mk) = look(k);
                    let mut label = k.clone();
                    // One label per estimator in every panel: the slope fitted on `total`.
                    let total_fit = |m: &str| rows.iter().find(|r| r.scope == "fit" && r.name == "total" && r.metric == m && key_of(r) == *k).map(|r| r.value);
                    if let (true, Some(sl), Some(pe)) = (with_fits, total_fit("slope"), total_fit("slope_expected")) {
                        label = format!("{k}: slope {sl:.2} (expected {pe})");
                    }
                    if with_fits {
                        let fit = |m: &str| rows.iter().find(|r| r.scope == "fit" && &r.name == scope && r.metric == m && key_of(r) == *k).map(|r| r.value);
                        if let (Some(sl), Some(ic), Some(lo), Some(hi)) = (fit("slope"), fit("slope_intercept"), fit("beta_min_fit"), fit("beta_max_fit")) {
                            let line = |b: f64| (b, 10f64.powf(ic + sl * b.log10()));
                            lines.push(Line::new(vec![line(lo), line(hi)], c, Style::Dotted, None));
                        }
                    }
                    lines.push(Line::new(pts, c, st, Some(label)).marker(mk));
                }
                Panel::new(scope.clone(), "β", y_label).scales(Scale::Log, y_scale).lines(lines)
            })
            .collect()
    };
    let mut out = vec![];
    let title = |what: &str| format!("bias — {instance} — {what} — {verdict}");
    let mut legend = vec![];
    if rows.iter().any(|r| r.scope == "fit") {
        legend.push(LegendEntry::line(GREY, Style::Dotted, None, "fitted power law c·β^slope over the fit window (slope of `total` in the legend)"));
    }
    if !ns.is_empty() {
        legend.push(LegendEntry::text(format!("holomorphic N: dark (N = {}) → light (N = {})", ns[0].trim_start_matches("ep_holomorphic N="), ns[ns.len() - 1].trim_start_matches("ep_holomorphic N="))));
    }
    out.extend(style::write_figure(dir, &Figure { stem: "bias_err".into(), title: title(&format!("error vs {reference}")), panels: panels_for("rel_l2", &format!("rel_l2 vs {reference}"), Scale::Log, true), legend: legend.clone() }, opts)?);
    let cap = vec![LegendEntry::text("−log10(1 − cos) is capped at −log10 u (u: unit round-off, 15.95 in f64, 7.2 in f32) where 1 − cos ≤ u")];
    out.extend(style::write_figure(dir, &Figure { stem: "bias_cos".into(), title: title(&format!("alignment with {reference}")), panels: panels_for("neglog10_one_minus_cos", "−log10(1 − cos)", Scale::Linear, false), legend: cap }, opts)?);
    // bias_vsN (the holomorphic reference's Fig. 4b): −log10(1 − cos) vs N for the three smallest β of the grid,
    // one line per β (a sequential colour map over β), one panel per scope.
    let holo: Vec<i64> = {
        let mut v: Vec<i64> = rows.iter().filter_map(|r| r.n_points).collect();
        v.sort();
        v.dedup();
        v
    };
    if holo.len() >= 2 {
        let mut betas: Vec<f64> = rows.iter().filter(|r| r.n_points.is_some() && r.metric == "neglog10_one_minus_cos" && r.scope != "fit").filter_map(|r| r.beta).collect();
        betas.sort_by(|a, b| a.total_cmp(b));
        betas.dedup();
        betas.truncate(3);
        let panels: Vec<Panel> = scope_order
            .iter()
            .map(|scope| {
                let lines = betas
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let mut pts: Vec<(f64, f64)> = rows
                            .iter()
                            .filter(|r| r.metric == "neglog10_one_minus_cos" && &r.name == scope && r.t.is_none() && r.scope != "fit" && r.beta == Some(*b))
                            .filter_map(|r| r.n_points.map(|n| (n as f64, r.value)))
                            .collect();
                        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                        Line::new(pts, sequential(i, betas.len()), Style::Solid, Some(format!("β = {}", short(*b)))).marker(MARKERS[i % MARKERS.len()])
                    })
                    .collect();
                Panel::new(scope.clone(), "number of points N", "−log10(1 − cos)").scales(Scale::Integer, Scale::Linear).lines(lines)
            })
            .collect();
        let legend = vec![
            LegendEntry::text(format!("holomorphic EP vs {reference} at the three smallest β of the grid: dark (smallest β) → light")),
            LegendEntry::text("−log10(1 − cos) is capped at −log10 u (u: unit round-off) where 1 − cos ≤ u"),
        ];
        out.extend(style::write_figure(dir, &Figure { stem: "bias_vsN".into(), title: title(&format!("alignment with {reference} vs N")), panels, legend }, opts)?);
    }
    let leak = panels_for("im_leak", "im_leak (imaginary part / real part)", Scale::Log, false);
    if let Some(first) = leak.into_iter().next() {
        out.extend(style::write_figure(dir, &Figure { stem: "im_leak".into(), title: title("imaginary leakage"), panels: vec![first], legend: vec![LegendEntry::text("N whose leakage is exactly 0 or not measured are not listed")] }, opts)?);
    }
    Ok(out)
}

/// `refs` figure: per finite-difference direction, fd_err = |D_R − ⟨g, v⟩| / max(|⟨g, v⟩|, ‖g‖/√n) (●) and the
/// Richardson error estimate |D(ε) − D(ε/2)| on the same scale (▲), on a log axis against fd_tol.
pub fn refs_figure(dir: &Path, rows: &[MetricRow], instance: &str, verdict: &str, opts: &FigureOptions) -> Result<Vec<PathBuf>> {
    let dir_index = |n: &str| n.trim_start_matches("dir").parse::<f64>().ok();
    let pick = |metric: &str| -> Vec<(f64, f64)> { rows.iter().filter(|r| r.metric == metric && r.scope == "key").filter_map(|r| dir_index(&r.name).map(|d| (d, r.value))).collect() };
    let reference = rows.iter().find(|r| r.metric == "fd_err").and_then(|r| r.reference.clone()).unwrap_or_else(|| "reference".into());
    let tol = rows.iter().find(|r| r.metric == "fd_err").and_then(|r| r.threshold);
    let mut panel = Panel::new(format!("finite differences vs {reference}"), "direction", "relative error").scales(Scale::Integer, Scale::Log).lines(vec![
        Line::new(pick("fd_err"), color(0), Style::Markers, Some("|D_R − ⟨g, v⟩| / max(|⟨g, v⟩|, ‖g‖/√n)".into())).marker(Marker::Circle),
        Line::new(pick("fd_richardson"), color(1), Style::Markers, Some("Richardson estimate |D(ε) − D(ε/2)|, same scale".into())).marker(Marker::Triangle),
    ]);
    let zeros = pick("fd_err").iter().filter(|p| p.1 == 0.0).count();
    if zeros > 0 {
        panel.note = Some(format!("{zeros} direction(s) with error exactly 0 (not drawn)"));
    }
    if let Some(t) = tol {
        panel.hlines = vec![HLine::new(t, format!("fd_tol = {}", short(t)))];
    }
    style::write_figure(dir, &Figure { stem: "refs".into(), title: format!("refs — {instance} — {verdict}"), panels: vec![panel], legend: vec![] }, opts)
}
