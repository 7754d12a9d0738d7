//! Shrinking a failing case in the command line: the case's proptest value tree ([`super::family::Family::tree`])
//! is simplified step by step (proptest's `simplify`/`complicate` protocol) and a simpler recipe is kept when it
//! still fails the same property with the same verdict. The result is written as a graph file, a regression
//! case and a verify suite that reproduces the failure (`epcheck verify <property>-case<i>.verify.toml`).
use super::family::Family;
use super::{check, write_case, Case, Outcome, Recipe};
use crate::{Error, Result};
use proptest::strategy::ValueTree;
use std::path::Path;

/// A shrunk failure.
#[derive(Clone, Debug)]
pub struct Shrunk {
    pub property: String,
    pub recipe: Recipe,
    pub case: Case,
    pub outcome: Outcome,
    /// The one-line graph summary of the shrunk case.
    pub summary: String,
    /// Candidates checked.
    pub steps: usize,
}

fn fails_like(o: &Outcome, verdict: &str) -> bool {
    o.verdict == verdict
}

/// Shrinks case `case_seed` of `fam` for `property` (which it must fail or err on) within `max_steps` checks.
pub fn shrink(fam: &Family, case_seed: u64, property: &str, max_steps: usize) -> Shrunk {
    let mut tree = fam.tree(case_seed);
    let mut best = tree.current();
    let mut best_o = check(&best.case(property));
    let verdict = best_o.verdict.clone();
    let mut steps = 0;
    if tree.simplify() {
        while steps < max_steps {
            steps += 1;
            let r = tree.current();
            let o = check(&r.case(property));
            if fails_like(&o, &verdict) {
                best = r;
                best_o = o;
                if !tree.simplify() {
                    break;
                }
            } else if !tree.complicate() {
                break;
            }
        }
    }
    let case = best.case(property);
    Shrunk { property: property.to_string(), summary: case.summary.clone(), recipe: best, case, outcome: best_o, steps }
}

/// Number of neuron layers and of couplings of `kind` in a graph TOML (for reports and tests).
pub fn census(graph: &str, kind: &str) -> (usize, usize) {
    let t: toml::Table = toml::from_str(graph).unwrap_or_default();
    let n = |key: &str| t.get(key).and_then(|v| v.as_array()).map(|a| a.len()).unwrap_or(0);
    let k = t.get("couplings").and_then(|v| v.as_array()).map(|a| a.iter().filter(|c| c.get("kind").and_then(|k| k.as_str()) == Some(kind)).count()).unwrap_or(0);
    (n("layers"), k)
}

/// Writes `shrunk/<property>-case<i>.graph.toml`, `.case.toml` (a regression file for `fuzz --replay`) and
/// `.verify.toml` (a verify suite: the graph, the seed, the batch size and `[checks.fuzz] property`).
pub fn write(dir: &Path, case: usize, s: &Shrunk) -> Result<()> {
    let d = dir.join("shrunk");
    std::fs::create_dir_all(&d).map_err(|e| Error::file(&d, e))?;
    let stem = format!("{}-case{case}", s.property);
    let o = &s.outcome;
    let head = format!("# Shrunk by epcheck fuzz: fails `{}` ({}: error {:.3e}, threshold {:.3e}; {})\n# {}\n", s.property, o.verdict, o.error, o.threshold, o.detail.replace('\n', " "), s.summary);
    let g = d.join(format!("{stem}.graph.toml"));
    std::fs::write(&g, format!("{head}{}", s.case.graph)).map_err(|e| Error::file(&g, e))?;
    write_case(&d.join(format!("{stem}.case.toml")), &s.case, &format!("shrunk in {} steps", s.steps))?;
    let suite = format!(
        "{head}# Reproduce: epcheck verify {stem}.verify.toml (exit 1 while the bug is there)\nname = \"{stem}\"\nseeds = [{}]\ndtype = \"f64\"\ndevice = \"cpu\"\nthreads = 1\n\n[model]\ngraph = \"{stem}.graph.toml\"\nbatch = {}\n\n[checks.fuzz]\nproperty = \"{}\"\n",
        s.case.seed, s.case.batch, s.property
    );
    let v = d.join(format!("{stem}.verify.toml"));
    std::fs::write(&v, suite).map_err(|e| Error::file(&v, e))
}
