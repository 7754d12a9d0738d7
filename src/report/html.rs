//! One page per run and one page per job: `index.html` of a run folder (verdict and digest lines, the tables of
//! `summary.md`, the figures, config and manifest, links to the tables) and the top-level `index.html` that
//! `verify` writes (one row per check and instance, linking each run). Self-contained: inline CSS, relative
//! links only, no script, no network.
use crate::checks::CheckReport;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const CSS: &str = "body{font-family:'DejaVu Sans',Verdana,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#111;line-height:1.4}\
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}h3{font-size:1em}\
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}code,pre{font-family:'DejaVu Sans Mono',monospace;font-size:.88em}pre{background:#f7f7f7;padding:.6em;overflow:auto;max-height:30em;border:1px solid #e3e3e3}\
.v{display:inline-block;padding:.05em .5em;border-radius:.3em;font-weight:bold;color:#fff}.v-pass{background:#00734d}.v-fail{background:#b33c00}\
.v-inconclusive{background:#8a6500}.v-error{background:#6b2f8f}.v-info{background:#555}\
.digest{font-family:'DejaVu Sans Mono',monospace;font-size:.9em;margin:.2em 0}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}\
figcaption{font-size:.85em;color:#444}nav a{margin-right:1em}";

/// The badge of a verdict label (pass, fail, inconclusive, error, info).
pub fn badge(label: &str) -> String {
    let l = label.split(':').next().unwrap_or(label).trim();
    format!("<span class=\"v v-{}\">{}</span>", esc(l), esc(l))
}

fn page(title: &str, body: &str) -> String {
    format!("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n", esc(title))
}

fn inline(s: &str) -> String {
    let e = esc(s);
    let mut out = String::new();
    for (i, part) in e.split('`').enumerate() {
        if i % 2 == 1 {
            out += &format!("<code>{part}</code>");
        } else {
            let mut bold = false;
            for (j, b) in part.split("**").enumerate() {
                if j > 0 {
                    out += if bold { "</strong>" } else { "<strong>" };
                    bold = !bold;
                }
                out += b;
            }
            if bold {
                out += "</strong>";
            }
        }
    }
    out
}

/// The Markdown subset of `summary.md` (headings, pipe tables, lists, paragraphs, `code`, **bold**) as HTML.
pub fn markdown(md: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_end();
        if l.starts_with('|') {
            out += "<table>\n";
            let mut first = true;
            while i < lines.len() && lines[i].trim_start().starts_with('|') {
                let row = lines[i].trim().trim_matches('|');
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                if cells.iter().all(|c| !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':')) {
                    i += 1;
                    continue;
                }
                let tag = if first { "th" } else { "td" };
                out += "<tr>";
                for c in cells {
                    out += &format!("<{tag}>{}</{tag}>", inline(c));
                }
                out += "</tr>\n";
                first = false;
                i += 1;
            }
            out += "</table>\n";
            continue;
        }
        if let Some(h) = l.strip_prefix("### ") {
            out += &format!("<h3>{}</h3>\n", inline(h));
        } else if let Some(h) = l.strip_prefix("## ") {
            out += &format!("<h2>{}</h2>\n", inline(h));
        } else if let Some(h) = l.strip_prefix("# ") {
            out += &format!("<h2>{}</h2>\n", inline(h));
        } else if l.starts_with("- ") || l.starts_with("* ") {
            out += "<ul>\n";
            while i < lines.len() && (lines[i].starts_with("- ") || lines[i].starts_with("* ")) {
                out += &format!("<li>{}</li>\n", inline(&lines[i][2..]));
                i += 1;
            }
            out += "</ul>\n";
            continue;
        } else if !l.trim().is_empty() {
            out += &format!("<p>{}</p>\n", inline(l));
        }
        i += 1;
    }
    out
}

/// Writes `<dir>/index.html` for a run folder being assembled in `dir` (figure paths are under `dir`).
pub fn write_run_index(dir: &Path, run_id: &str, heading: &str, reports: &[CheckReport], summary_md: &str, figs: &[PathBuf], config: &str, manifest: &str) -> Result<()> {
    let mut b = String::new();
    let overall = crate::checks::overall(reports.iter().map(|r| &r.overall)).label().to_string();
    b += &format!("<h1>{} {}</h1>\n", esc(heading), badge(&overall));
    b += &format!("<p>run <code>{}</code></p>\n", esc(run_id));
    b += "<nav><a href=\"#summary\">summary</a><a href=\"#figures\">figures</a><a href=\"#tables\">tables</a><a href=\"#config\">config</a><a href=\"#manifest\">manifest</a></nav>\n";
    b += "<h2 id=\"verdicts\">Verdicts</h2>\n";
    for r in reports {
        b += &format!("<p class=\"digest\">{} {}</p>\n", badge(r.overall.label()), esc(&r.digest_line()));
    }
    b += "<p>What the verdicts mean: <code>docs/verdicts.md</code> in the epcheck repository.</p>\n";
    b += "<div id=\"summary\">\n";
    // The summary's own title line is the page's heading.
    // (The summary's list of figure files is replaced by the figures themselves below.)
    let body: String = summary_md.lines().skip_while(|l| l.starts_with("# ") || l.trim().is_empty()).take_while(|l| *l != "## Figures").collect::<Vec<_>>().join("\n");
    b += &markdown(&body);
    b += "</div>\n<h2 id=\"figures\">Figures</h2>\n";
    let rel = |p: &Path| p.strip_prefix(dir).unwrap_or(p).to_string_lossy().replace('\\', "/");
    let mut shown = 0;
    let mut stems: Vec<PathBuf> = vec![];
    for f in figs {
        let stem = f.with_extension("");
        if !stems.contains(&stem) {
            stems.push(stem);
        }
    }
    for stem in &stems {
        let variants: Vec<&PathBuf> = figs.iter().filter(|f| &f.with_extension("") == stem).collect();
        let pick = variants.iter().find(|f| f.extension().is_some_and(|e| e == "svg")).or_else(|| variants.iter().find(|f| f.extension().is_some_and(|e| e == "png")));
        let links: Vec<String> = variants.iter().map(|f| format!("<a href=\"{0}\">{1}</a>", esc(&rel(f)), f.extension().map(|e| e.to_string_lossy().to_string()).unwrap_or_default())).collect();
        let name = rel(stem);
        match pick {
            Some(p) => {
                b += &format!("<figure><img src=\"{}\" alt=\"figure {}\"><figcaption><code>{}</code> — {}</figcaption></figure>\n", esc(&rel(p)), esc(&name), esc(&name), links.join(" "));
                shown += 1;
            }
            None => b += &format!("<p><code>{}</code> — {}</p>\n", esc(&name), links.join(" ")),
        }
    }
    if stems.is_empty() {
        b += "<p>No figure (no check of this run draws one, or it had no data).</p>\n";
    }
    let _ = shown;
    b += "<h2 id=\"tables\">Tables</h2>\n<ul>\n";
    let tdir = dir.join("tables");
    let mut tables: Vec<String> = std::fs::read_dir(&tdir).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default();
    tables.sort();
    for t in tables {
        b += &format!("<li><a href=\"tables/{0}\">tables/{0}</a></li>\n", esc(&t));
    }
    b += "<li><a href=\"summary.md\">summary.md</a></li>\n</ul>\n";
    if !config.is_empty() {
        b += &format!("<h2 id=\"config\">Configuration (<a href=\"config.toml\">config.toml</a>)</h2>\n<pre>{}</pre>\n", esc(config));
    }
    if !manifest.is_empty() {
        b += &format!("<h2 id=\"manifest\">Manifest (<a href=\"manifest.json\">manifest.json</a>)</h2>\n<pre>{}</pre>\n", esc(manifest));
    }
    let path = dir.join("index.html");
    std::fs::write(&path, page(&format!("epcheck — {heading}"), &b)).map_err(|e| Error::file(&path, e))
}

/// One row of the job page: a check of one instance and the run folder that holds it.
pub struct IndexRow {
    pub suite: String,
    pub check: String,
    pub instance: String,
    pub verdict: String,
    pub digest: String,
    pub run_dir: Option<PathBuf>,
}

/// Writes `<out>/index.html`: a summary line and one table row per check, linking each run's page.
pub fn write_job_index(out: &Path, title: &str, summary: &str, rows: &[IndexRow]) -> Result<PathBuf> {
    let mut b = format!("<h1>{}</h1>\n<p><strong>{}</strong></p>\n", esc(title), esc(summary));
    b += "<table>\n<tr><th>verdict</th><th>suite</th><th>check</th><th>instance</th><th>digest</th><th>run</th></tr>\n";
    for r in rows {
        let link = match &r.run_dir {
            Some(d) => {
                let rel = d.strip_prefix(out).unwrap_or(d).to_string_lossy().replace('\\', "/");
                // A folder without a page (a training run) is linked by its summary.
                let page = if out.join(&rel).join("index.html").is_file() || !out.join(&rel).join("summary.md").is_file() { "index.html" } else { "summary.md" };
                format!("<a href=\"{}/{page}\">{}</a>", esc(&rel), esc(&rel))
            }
            None => "—".into(),
        };
        b += &format!("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"digest\">{}</td><td>{link}</td></tr>\n", badge(&r.verdict), esc(&r.suite), esc(&r.check), esc(&r.instance), esc(&r.digest));
    }
    b += "</table>\n<p>Verdicts: pass and info exit 0, fail and inconclusive exit 1, error exits 2 (<code>docs/verdicts.md</code>).</p>\n";
    let path = out.join("index.html");
    std::fs::write(&path, page(title, &b)).map_err(|e| Error::file(&path, e))?;
    Ok(path)
}

fn unesc(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&")
}

/// The (verdict, digest) lines of a page written by [`write_run_index`] or [`write_job_index`].
fn page_verdicts(html: &str) -> Vec<(String, String)> {
    let mut v = vec![];
    for line in html.lines() {
        let digest = line.strip_prefix("<p class=\"digest\">").and_then(|l| l.strip_suffix("</p>"));
        let row = line.strip_prefix("<tr><td><span class=\"v v-");
        if let Some(d) = digest {
            let label = d.split("class=\"v v-").nth(1).and_then(|x| x.split('"').next()).unwrap_or("info");
            let text = d.split("</span> ").nth(1).unwrap_or("");
            v.push((label.to_string(), unesc(text)));
        } else if let Some(r) = row {
            let label = r.split('"').next().unwrap_or("info");
            let text = r.split("<td class=\"digest\">").nth(1).and_then(|x| x.split("</td>").next()).unwrap_or("");
            v.push((label.to_string(), unesc(text)));
        }
    }
    v
}

/// Writes `<out>/index.html` for a folder of run folders (the main job's output): one row per check of every
/// run folder (verdict and digest read from its page), one row per job page in a subfolder (verify's
/// `index.html`, with its worst verdict) and one row per folder without a page (training runs: info, linked by
/// `summary.md`). Hidden (staging) folders are skipped.
pub fn write_folder_index(out: &Path, title: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(|e| Error::file(out, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    dirs.sort();
    let mut rows = vec![];
    let rank = |l: &str| ["info", "pass", "inconclusive", "fail", "error"].iter().position(|x| *x == l).unwrap_or(0);
    for d in dirs {
        let manifest: serde_json::Value = std::fs::read_to_string(d.join("manifest.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        let command = manifest["command"].as_str().map(str::to_string);
        let instance = manifest["instance"].as_str().unwrap_or("").to_string();
        let page = std::fs::read_to_string(d.join("index.html")).ok();
        let name = d.file_name().unwrap_or_default().to_string_lossy().to_string();
        match (command, page) {
            (Some(cmd), Some(html)) => {
                let v = page_verdicts(&html);
                if v.is_empty() {
                    let first = std::fs::read_to_string(d.join("summary.md")).unwrap_or_default().lines().find(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.starts_with('|')).unwrap_or("").replace('`', "");
                    rows.push(IndexRow { suite: cmd.clone(), check: cmd.clone(), instance: instance.clone(), verdict: "info".into(), digest: first, run_dir: Some(d.clone()) });
                }
                for (label, digest) in v {
                    let check = digest.split_whitespace().next().unwrap_or(&cmd).to_string();
                    rows.push(IndexRow { suite: cmd.clone(), check, instance: instance.clone(), verdict: label, digest, run_dir: Some(d.clone()) });
                }
            }
            (None, Some(html)) => {
                // A job page (verify): its worst verdict and its summary line.
                let v = page_verdicts(&html);
                let worst = v.iter().map(|x| x.0.as_str()).max_by_key(|l| rank(l)).unwrap_or("info").to_string();
                let summary = html.lines().find_map(|l| l.strip_prefix("<p><strong>").and_then(|x| x.strip_suffix("</strong></p>"))).map(unesc).unwrap_or_default();
                rows.push(IndexRow { suite: name.clone(), check: format!("{} checks", v.len()), instance: String::new(), verdict: worst, digest: summary, run_dir: Some(d.clone()) });
            }
            (Some(cmd), None) if d.join("summary.md").is_file() => {
                let first = std::fs::read_to_string(d.join("summary.md")).unwrap_or_default().lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.starts_with('|')).map(str::to_string).next().unwrap_or_default();
                rows.push(IndexRow { suite: cmd.clone(), check: cmd, instance, verdict: "info".into(), digest: first.replace('`', ""), run_dir: Some(d.clone()) });
            }
            _ => {}
        }
    }
    let mut counts: Vec<(usize, &str)> = vec![];
    for l in ["pass", "fail", "inconclusive", "error", "info"] {
        let n = rows.iter().filter(|r| r.verdict == l).count();
        if n > 0 {
            counts.push((n, l));
        }
    }
    let summary = format!("{} rows: {}", rows.len(), counts.iter().map(|(n, l)| format!("{n} {l}")).collect::<Vec<_>>().join(", "));
    write_job_index(out, title, &summary, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_tables_and_escaping() {
        let h = markdown("## gdu — pass\n\n| a | b |\n|---|---|\n| `x<1` | **y** |\n- item\n");
        assert!(h.contains("<h2>gdu — pass</h2>"), "{h}");
        assert!(h.contains("<th>a</th><th>b</th>"), "{h}");
        assert!(h.contains("<td><code>x&lt;1</code></td><td><strong>y</strong></td>"), "{h}");
        assert!(h.contains("<li>item</li>"), "{h}");
        assert!(!h.contains("---"), "{h}");
    }
}
