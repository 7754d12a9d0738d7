//! The run page (`<run>/index.html`) and the job page (`verify`'s `<out>/index.html`) render in a real browser:
//! headless Chromium loads them from disk with the network off, and the test checks the DOM it built (verdict
//! badges, the digest, the tables, every figure loaded with a non-zero size, no external resource) and that a
//! screenshot was drawn. Without Chromium (`chromium`, `chromium-browser` or `google-chrome` on PATH, or
//! $EPCHECK_CHROMIUM) the browser part is skipped with a message; `.ci/run` installs Debian's `chromium`.
use std::path::{Path, PathBuf};
use std::process::Command;

fn epcheck(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_epcheck")).args(args).env("OMP_NUM_THREADS", "1").output().expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("EPCHECK_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output() {
            let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !p.is_empty() {
                return Some(PathBuf::from(p));
            }
        }
    }
    None
}

/// Runs headless Chromium on a local file with the network and background services off; returns stdout.
fn browse(bin: &Path, page: &Path, extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--virtual-time-budget=3000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    args.extend(extra.iter().cloned());
    args.push(url);
    let out = Command::new(bin).args(&args).output().expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into()
}

/// The page as Chromium built it, after running a check of the images: a script added to a copy of the page
/// writes each image's natural width into the DOM (the page itself has no script).
fn dom_with_image_sizes(bin: &Path, page: &Path) -> String {
    let html = std::fs::read_to_string(page).unwrap();
    let probe = "<script>window.addEventListener('load',()=>{for(const i of document.images){i.setAttribute('data-w',String(i.naturalWidth));}});</script>";
    let copy = page.with_file_name("index.probe.html");
    std::fs::write(&copy, html.replace("</body>", &format!("{probe}</body>"))).unwrap();
    let dom = browse(bin, &copy, &["--dump-dom".into()]);
    std::fs::remove_file(&copy).unwrap();
    dom
}

fn screenshot(bin: &Path, page: &Path, png: &Path) {
    browse(bin, page, &[format!("--screenshot={}", png.display()), "--window-size=1280,2000".into()]);
    let bytes = std::fs::read(png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000, "screenshot is a drawn PNG ({} bytes)", bytes.len());
    if let Ok(dir) = std::env::var("EPCHECK_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(png, Path::new(&dir).join(png.file_name().unwrap())).unwrap();
    }
}

fn no_external_resources(html: &str) {
    for bad in ["http://", "https://", "<script", "//cdn", "@import"] {
        assert!(!html.contains(bad), "page refers to {bad}");
    }
}

#[test]
fn run_page_and_verify_page_render_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    let (code, stdout, stderr) = epcheck(&["gdu", "--preset", "p-mlp", "--archi", "6-5-3", "--K", "6", "--figure-format", "svg,png", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let digest = stdout.lines().next().unwrap().to_string();
    let run = PathBuf::from(stdout.lines().find_map(|l| l.strip_prefix("report: ")).unwrap().trim());
    let page = run.join("index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    no_external_resources(&html);
    // The page carries the digest line, the summary's tables, the figure and links to every table file.
    assert!(html.contains(&digest.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")), "digest line on the page");
    assert!(html.contains("<table>") && html.contains("<th>"), "summary tables as HTML tables");
    assert!(html.contains("figures/gdu/") && html.contains("gdu.svg"), "figure embedded");
    for t in ["tables/metrics.parquet", "tables/metrics.csv", "tables/verdicts.csv", "tables/series.parquet", "config.toml", "manifest.json"] {
        assert!(html.contains(&format!("href=\"{t}\"")), "link to {t}");
    }

    // A one-check suite for the job page.
    let suite = tmp.path().join("tiny.toml");
    std::fs::write(&suite, "name = \"tiny\"\nseeds = [0]\ndtype = \"f64\"\nthreads = 1\n[model]\npreset = \"p-mlp\"\narchi = [6, 5, 3]\n[checks.gdu]\n").unwrap();
    let vout = tmp.path().join("verify");
    let (code, stdout, stderr) = epcheck(&["verify", suite.to_str().unwrap(), "--out", vout.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let job = vout.join("index.html");
    assert!(stdout.contains(&format!("index: {}", job.display())), "{stdout}");
    let jhtml = std::fs::read_to_string(&job).unwrap();
    no_external_resources(&jhtml);

    let Some(bin) = chromium() else {
        eprintln!("SKIPPED the browser part: no chromium on PATH (apt-get install -y chromium, or set EPCHECK_CHROMIUM)");
        return;
    };
    let dom = dom_with_image_sizes(&bin, &page);
    assert!(dom.contains("class=\"v v-pass\""), "verdict badge rendered");
    assert!(dom.contains("<td>"), "tables rendered");
    let widths: Vec<u32> = dom.split("data-w=\"").skip(1).map(|s| s.split('"').next().unwrap().parse().unwrap()).collect();
    assert!(!widths.is_empty() && widths.iter().all(|w| *w > 400), "every figure loaded with its size: {widths:?}");
    screenshot(&bin, &page, &tmp.path().join("run-index.png"));

    let jdom = browse(&bin, &job, &["--dump-dom".into()]);
    assert!(jdom.contains("<td><span class=\"v v-pass\">pass</span></td><td>tiny</td><td>gdu</td>"), "job table row: {jdom}");
    let link = jdom.split("<a href=\"").nth(1).unwrap().split('"').next().unwrap();
    assert!(vout.join(link).is_file(), "the job page links the run page ({link})");
    screenshot(&bin, &job, &tmp.path().join("verify-index.png"));
}

/// `epcheck curves` over two seeds of one tag: the table's mean/min/max equal those computed here from the two
/// runs' own `epochs.csv` (an independent path through the raw rows); the figure is written; `epcheck index`
/// over the folder lists every run folder (gdu run, verify job page, training runs, curves) with its verdict,
/// every link resolves, and the page renders in Chromium.
#[test]
fn curves_over_seeds_and_the_folder_page() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    let o = out.to_str().unwrap();
    let mut trains = vec![];
    for seed in ["0", "1"] {
        let (code, stdout, stderr) = epcheck(&["train", "--preset", "p-mlp", "--archi", "6-5-3", "--dataset", "synthetic", "--epochs", "2", "--batch", "4", "--seed", seed, "--T", "8", "--K", "3", "--out", o]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        trains.push(PathBuf::from(stdout.lines().find_map(|l| l.strip_prefix("report: ")).unwrap().trim()));
    }
    let args: Vec<String> = trains.iter().map(|t| format!("ep={}", t.display())).collect();
    let mut cargs: Vec<&str> = vec!["curves"];
    cargs.extend(args.iter().map(|s| s.as_str()));
    cargs.extend(["--figure-format", "svg,png", "--out", o]);
    let (code, stdout, stderr) = epcheck(&cargs);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let cdir = PathBuf::from(stdout.lines().find_map(|l| l.strip_prefix("report: ")).unwrap().trim());
    assert!(cdir.join("figures/curves.svg").is_file() && cdir.join("figures/curves.png").is_file());
    // Oracle: the raw epoch rows of both runs.
    let read = |p: &Path| -> Vec<Vec<String>> { std::fs::read_to_string(p).unwrap().lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect() };
    let raw: Vec<Vec<Vec<String>>> = trains.iter().map(|t| read(&t.join("tables/epochs.csv"))).collect();
    let curves = std::fs::read_to_string(cdir.join("tables/curves.csv")).unwrap();
    let head: Vec<&str> = curves.lines().next().unwrap().split(',').collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
    let mut checked = 0;
    for line in curves.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (split, metric, epoch) = (f[col("split")], f[col("metric")], f[col("epoch")].parse::<usize>().unwrap());
        let vals: Vec<f64> = raw.iter().filter_map(|rows| rows.iter().find(|r| r[0].parse::<usize>().unwrap() + 1 == epoch && r[1] == split && r[2] == metric && r[3] == "all").map(|r| r[4].parse::<f64>().unwrap())).collect();
        assert_eq!(vals.len(), 2, "{line}");
        let num = |n: &str| f[col(n)].parse::<f64>().unwrap();
        // Mean of two numbers and their min/max: exact up to one rounding of the sum.
        let tol = 4.0 * f64::EPSILON * vals.iter().map(|v| v.abs()).fold(1.0, f64::max);
        assert!((num("mean") - (vals[0] + vals[1]) / 2.0).abs() <= tol, "{line}");
        assert_eq!(num("lo"), vals[0].min(vals[1]), "{line}");
        assert_eq!(num("hi"), vals[0].max(vals[1]), "{line}");
        assert_eq!(num("runs"), 2.0);
        checked += 1;
    }
    assert!(checked >= 8, "train/test × loss/error × 2 epochs: {checked} rows");

    // A check run (with the energy figure) and a verify job page beside the training runs.
    let (code, stdout, stderr) = epcheck(&["converge", "--preset", "p-mlp", "--archi", "6-5-3", "--T", "120", "--out", o]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let conv = PathBuf::from(stdout.lines().find_map(|l| l.strip_prefix("report: ")).unwrap().trim());
    let phi = std::fs::read_dir(conv.join("figures/converge")).unwrap().next().unwrap().unwrap().path().join("phi.svg");
    assert!(phi.is_file(), "converge draws Φ_β(t)");
    let suite = tmp.path().join("tiny.toml");
    std::fs::write(&suite, "name = \"tiny\"\nseeds = [0]\ndtype = \"f64\"\nthreads = 1\n[model]\npreset = \"p-mlp\"\narchi = [6, 5, 3]\n[checks.local]\n").unwrap();
    let vout = out.join("verify");
    let (code, stdout, stderr) = epcheck(&["verify", suite.to_str().unwrap(), "--out", vout.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, stderr) = epcheck(&["index", o]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let page = out.join("index.html");
    assert!(stdout.contains(&format!("index: {}", page.display())), "{stdout}");
    let html = std::fs::read_to_string(&page).unwrap();
    no_external_resources(&html);
    let rows: Vec<&str> = html.lines().filter(|l| l.starts_with("<tr><td>")).collect();
    // 2 training runs (info), the curves folder (info), the converge run (pass), the verify page (pass).
    assert_eq!(rows.len(), 5, "{html}");
    assert!(rows.iter().any(|r| r.contains("v-pass") && r.contains("<td>converge</td>") && r.contains("converge p-mlp")), "converge row with its digest");
    assert!(rows.iter().any(|r| r.contains("v-pass") && r.contains("<td>verify</td>") && r.contains("href=\"verify/index.html\"")), "verify job row");
    assert_eq!(rows.iter().filter(|r| r.contains("v-info") && r.contains("/summary.md\"")).count(), 2, "training runs linked by summary.md");
    assert!(rows.iter().any(|r| r.contains("v-info") && r.contains("<td>curves</td>") && r.contains("2 training runs in 1 group(s): ep (2)")), "curves row with its summary line");
    for r in &rows {
        let link = r.split("<a href=\"").nth(1).unwrap().split('"').next().unwrap();
        assert!(out.join(link).is_file(), "link {link} resolves");
    }
    // Nothing is written on bad input: a missing folder is one line and exit 2.
    let (code, _, stderr) = epcheck(&["index", tmp.path().join("nope").to_str().unwrap()]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    let (code, _, stderr) = epcheck(&["curves", "ep=/nonexistent", "--out", tmp.path().join("c2").to_str().unwrap()]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(stderr.contains("epochs.csv") && !tmp.path().join("c2").exists(), "{stderr}");

    let Some(bin) = chromium() else {
        eprintln!("SKIPPED the browser part: no chromium on PATH (apt-get install -y chromium, or set EPCHECK_CHROMIUM)");
        return;
    };
    let dom = browse(&bin, &page, &["--dump-dom".into()]);
    assert!(dom.contains("class=\"v v-pass\"") && dom.contains("class=\"v v-info\""), "badges rendered");
    screenshot(&bin, &page, &tmp.path().join("job-index.png"));
    let cdom = dom_with_image_sizes(&bin, &cdir.join("index.html"));
    let widths: Vec<u32> = cdom.split("data-w=\"").skip(1).map(|s| s.split('"').next().unwrap().parse().unwrap()).collect();
    assert!(!widths.is_empty() && widths.iter().all(|w| *w > 400), "curves figure loaded: {widths:?}");
}

/// Every subcommand's `--help`: one description per option, one example that runs this subcommand, defaults
/// stated; the run options a command shows are exactly those its code reads (found by reading the source the
/// command runs: its arm in src/cli.rs and its check or training module); `--preset` lists every preset,
/// `--dataset` lists `synthetic`, `--activation`/`--batch`/`--seed` are described.
#[test]
fn help_of_every_subcommand() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, top, _) = epcheck(&["--help"]);
    assert_eq!(code, 0);
    let subs: Vec<String> = top.split("Commands:").nth(1).unwrap().lines().skip(1).take_while(|l| !l.trim().is_empty()).filter_map(|l| l.split_whitespace().next().map(str::to_string)).filter(|s| s != "help").collect();
    assert!(subs.len() >= 12 && subs.contains(&"curves".to_string()) && subs.contains(&"index".to_string()), "{subs:?}");
    let cli = std::fs::read_to_string(root.join("src/cli.rs")).unwrap();
    let src = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
    let between = |text: &str, from: &str, to: &str| -> String {
        let i = text.find(from).unwrap_or_else(|| panic!("{from} in src/cli.rs"));
        let j = text[i + from.len()..].find(to).map(|j| i + from.len() + j).unwrap_or(text.len());
        text[i..j].to_string()
    };
    let run_fn = &cli[cli.find("pub fn run(cli: Cli)").unwrap()..];
    // The run options whose use depends on the command, and the configuration fields that carry them.
    let run_opts: [(&str, &[&str]); 9] = [
        ("T", &["t_free", "lengths"]),
        ("K", &["k_nudge", "lengths"]),
        ("beta", &["beta"]),
        ("tol", &["tol", "lengths"]),
        ("estimator", &["estimator"]),
        ("N", &["holo_points"]),
        ("holo-schedule", &["holo_schedule", "holo_options"]),
        ("no-shortcut", &["holo_conj_shortcut", "holo_options"]),
        ("dump", &["dump"]),
    ];
    let reads = |text: &str, field: &str| -> bool {
        ["cfg.", "common.", "Common::"].iter().any(|p| {
            let pat = format!("{p}{field}");
            text.match_indices(&pat).any(|(i, _)| !text[i + pat.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_'))
        })
    };
    for sub in &subs {
        let (code, help, stderr) = epcheck(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub}: {stderr}");
        // Options: a header line "  -x, --name <V>" or "      --name <V>", then its description.
        let mut opts: Vec<(String, bool, String)> = vec![];
        for line in help.lines() {
            let t = line.trim_start();
            let header = t.starts_with("--") || (t.starts_with('-') && t.chars().nth(2) == Some(','));
            if header && line.starts_with("  ") && line.len() - t.len() <= 6 {
                let name = t.split("--").nth(1).unwrap().split(|c: char| c.is_whitespace() || c == '<').next().unwrap().to_string();
                let rest = t.split_once("  ").map(|x| x.1.trim().to_string()).unwrap_or_default();
                opts.push((name, t.contains('<'), rest));
            } else if let Some(o) = opts.last_mut() {
                if line.starts_with("          ") {
                    o.2 += " ";
                    o.2 += t;
                }
            }
        }
        let names: Vec<&str> = opts.iter().map(|o| o.0.as_str()).collect();
        for (name, takes_value, desc) in &opts {
            assert!(!desc.trim().is_empty(), "{sub} --{name} has no description");
            let needs_default = *takes_value && !["graph", "params", "input", "dump", "set", "names", "regressions", "replay", "properties"].contains(&name.as_str());
            assert!(!needs_default || desc.to_lowercase().contains("default"), "{sub} --{name}: no default stated: {desc}");
        }
        let examples: Vec<&str> = help.lines().filter(|l| l.trim() == "Example:").collect();
        assert_eq!(examples.len(), 1, "{sub}: one example");
        let ex = help.split("Example:").nth(1).unwrap().lines().find(|l| !l.trim().is_empty()).unwrap().trim();
        assert!(ex.starts_with(&format!("epcheck {sub}")), "{sub}: example runs this subcommand: {ex}");
        if names.contains(&"preset") {
            let d = &opts.iter().find(|o| o.0 == "preset").unwrap().2;
            for p in epcheck::model::presets::PRESETS {
                assert!(d.contains(p), "{sub} --preset lists {p}: {d}");
            }
            assert!(d.contains("-train") && d.contains("-train-paper"), "{sub} --preset lists the training variants");
            for (o, must) in [("activation", "tanh"), ("batch", "default"), ("seed", "default")] {
                assert!(opts.iter().find(|x| x.0 == o).is_some_and(|x| x.2.contains(must)), "{sub} --{o} is described");
            }
        }
        if let Some(d) = opts.iter().find(|o| o.0 == "dataset") {
            assert!(d.2.contains("synthetic"), "{sub} --dataset lists synthetic");
        }
        // The command-dependent run options: shown iff the command's code reads them.
        if !names.contains(&"preset") || *sub == "preset" {
            continue;
        }
        let cap = {
            let mut c = sub.chars();
            c.next().unwrap().to_uppercase().collect::<String>() + c.as_str()
        };
        let (arm, module) = match sub.as_str() {
            "train" => (between(&cli, "fn run_train", "\nfn "), src("src/train/mod.rs")),
            "compare" => (between(&cli, "fn run_compare", "\nfn "), src("src/checks/conformance.rs")),
            s => (between(run_fn, &format!("Command::{cap}("), "Command::"), src(&format!("src/checks/{s}.rs"))),
        };
        let text = format!("{arm}\n{module}");
        for (flag, fields) in run_opts {
            let read = if flag == "dump" { arm.contains("finish(") || arm.contains("check_command(") } else { fields.iter().any(|f| reads(&text, f)) };
            assert_eq!(names.contains(&flag), read, "{sub} --{flag}: shown = {}, read by the command = {read}", names.contains(&flag));
        }
    }
}
