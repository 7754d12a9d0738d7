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
