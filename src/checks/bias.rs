//! `bias` (checks §4, estimators §6): every estimator against an exact reference over a β grid × N; error
//! laws fitted on log-log windows (slope 1 one-sided, 2 centered, N holomorphic), consistency, estimator
//! identities B1–B6, kink diagnostics, and the imaginary leakage of holomorphic estimates.
use super::metrics as mx;
use super::{kinks, CheckReport, Rows, Verdict};
use crate::estimators::ep_holomorphic::{self as holo, HoloOptions, HoloSchedule};
use crate::estimators::{bptt, implicit, two_point, PhaseLengths};
use crate::instance::Instance;
use crate::model::{Batch, Model, State};
use crate::relax::{relax, relax_until_stationary, RelaxOptions};
use crate::tensor_util::{norm2, to_vec_f64};
use crate::Result;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Kind, Tensor};

pub struct BiasOptions {
    pub grid: Vec<f64>,
    pub n_list: Vec<usize>,
    pub reference: String,
    pub until_tol: bool,
    pub k_fixed: i64,
    pub t_free: i64,
    /// Convergence tolerance that decides whether a point is conclusive (`checks.converge.tol`).
    pub tol: f64,
    /// Stopping tolerance of the `until_tol` nudged phases (star_tol, tighter than `tol`), so the
    /// convergence error of the phases stays below the bias over more of the grid.
    pub nudge_tol: f64,
    pub max_iter: i64,
    pub consistency_max: f64,
    pub slope_tol: Option<f64>,
    pub r2_min: f64,
    pub err_max: f64,
    pub floor_factor: f64,
    pub holo: HoloOptions,
    /// The β points to run (`bias --shard i/n`: grid indices i, i + n, …); all by default.
    pub shard: crate::run::Shard,
}

impl BiasOptions {
    /// The options of `checks.bias` and the run's phase lengths and tolerances.
    pub fn from_config(cfg: &crate::config::RunConfig) -> BiasOptions {
        let bc = &cfg.checks.bias;
        BiasOptions {
            grid: bc.grid.clone(),
            n_list: bc.n.clone(),
            reference: bc.reference.clone(),
            until_tol: bc.nudge == "until_tol",
            k_fixed: cfg.k_nudge,
            t_free: cfg.t_free,
            tol: cfg.converge_tol(),
            nudge_tol: cfg.implicit_options().star_tol.min(cfg.converge_tol()),
            max_iter: 10_000,
            consistency_max: bc.consistency_max,
            slope_tol: bc.slope_tol,
            r2_min: bc.r2_min,
            err_max: bc.err_max,
            floor_factor: bc.floor_factor,
            holo: cfg.holo_options(cfg.holo_points),
            shard: crate::run::Shard::ALL,
        }
    }
}

/// A nudged phase from s0: (state, converged, iterations, ‖f(step(s)) − f(s)‖).
fn nudged(m: &Model, p: &[Tensor], b: &Batch, s0: &State, beta: f64, o: &BiasOptions) -> (State, bool, i64, f64) {
    let (s, n) = if o.until_tol {
        let (s, n, _, _) = relax_until_stationary(m, p, b, s0, beta, o.nudge_tol, o.max_iter);
        (s, n)
    } else {
        (relax(m, p, b, s0, beta, &RelaxOptions::fixed(o.k_fixed)).state, o.k_fixed)
    };
    let next = tch::no_grad(|| m.step(p, b, &s, beta));
    let r = crate::relax::state_distance(&next, &s).max().to_kind(Kind::Double).double_value(&[]);
    let df = fnorm(&m.param_derivative_nudged(p, b, &next, (beta, 0.0)).iter().zip(m.param_derivative_nudged(p, b, &s, (beta, 0.0))).map(|(a, c)| a - c).collect::<Vec<_>>());
    (s, r <= o.tol, n, df)
}

fn fnorm(f: &[Tensor]) -> f64 {
    f.iter().map(|t| norm2(t).powi(2)).sum::<f64>().sqrt()
}

/// Ordinary least squares of y on x: (slope, intercept, R²).
pub fn ols(x: &[f64], y: &[f64]) -> (f64, f64, f64) {
    let n = x.len() as f64;
    let (mx_, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx_) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx_).powi(2)).sum();
    let syy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    let slope = sxy / sxx;
    let r2 = if syy == 0.0 { 1.0 } else { (sxy * sxy) / (sxx * syy) };
    (slope, my - slope * mx_, r2)
}

/// One β point of the sweep exactly as [`run`] computes it, from the free state s0 = s* (`implicit::star`):
/// `ep_plus`, `ep_minus`, `ep_centered` from nudged phases per `checks.bias.nudge`, `ep_holomorphic<N>` with the
/// sweep's point options. `compare` recomputes the `grad.<estimator>@<β>` keys of a `bias --dump` with it.
pub fn point_estimate(m: &Model, p: &[Tensor], b: &Batch, s0: &State, est: &str, beta: f64, o: &BiasOptions) -> Result<Vec<Tensor>> {
    let f0 = m.param_derivative(p, b, s0);
    let f_at = |beta: f64| m.param_derivative(p, b, &nudged(m, p, b, s0, beta, o).0);
    Ok(match est {
        "ep_plus" => two_point(&f0, 0.0, &f_at(beta), beta),
        "ep_minus" => two_point(&f0, 0.0, &f_at(-beta), -beta),
        "ep_centered" => two_point(&f_at(-beta), -beta, &f_at(beta), beta),
        e => {
            let n: usize = e.strip_prefix("ep_holomorphic").and_then(|n| n.parse().ok()).ok_or_else(|| crate::Error::Config(format!("'{e}' is not an estimator of the bias sweep")))?;
            let len = PhaseLengths { t_free: 0, k_nudge: if o.until_tol { o.max_iter } else { o.k_fixed }, tol: o.until_tol.then_some(o.nudge_tol / 10.0) };
            let opts = HoloOptions { n, shortcut: false, ..o.holo.clone() };
            let opts = if opts.schedule == HoloSchedule::Carry && n < 2 { HoloOptions { schedule: HoloSchedule::Restart, ..opts } } else { opts };
            holo::estimate(m, p, b, s0, beta, len, &opts)?.grad.tensors
        }
    })
}

/// Exact f64 in the shard records: Rust's shortest round-trip text (`{:?}`), parsed back to the same bits
/// (also ±∞ and NaN, which JSON numbers cannot hold).
mod exact {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:?}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
    pub mod opt {
        use serde::{Deserialize, Deserializer, Serializer};
        pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> std::result::Result<S::Ok, S::Error> {
            match v {
                Some(x) => s.serialize_some(&format!("{x:?}")),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
            Option::<String>::deserialize(d)?.map(|s| s.parse().map_err(serde::de::Error::custom)).transpose()
        }
    }
}

/// The error of one estimate against the reference on one scope (in the order of `refs::scopes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScopeErr {
    #[serde(with = "exact")]
    pub rel_l2: f64,
    #[serde(with = "exact")]
    pub one_minus_cos: f64,
    #[serde(with = "exact")]
    pub dist_l2: f64,
}

/// One (estimator, N, β) estimate: its errors per scope and what decides whether it is conclusive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointRec {
    pub est: String,
    pub n: Option<usize>,
    #[serde(with = "exact")]
    pub beta: f64,
    pub converged: bool,
    pub kinks: i64,
    #[serde(with = "exact")]
    pub floor_rel: f64,
    #[serde(with = "exact")]
    pub drift_rel: f64,
    /// Convergence error of the phases, ‖f(step(s)) − f(s)‖/(β‖g‖) (an addition to the error model of
    /// estimators §6.3: unconverged nudged phases add ≈ tol/β, which the window must exclude too).
    #[serde(with = "exact")]
    pub conv_rel: f64,
    #[serde(with = "exact::opt")]
    pub im_leak: Option<f64>,
    pub scopes: Vec<ScopeErr>,
}

impl PointRec {
    fn key(&self) -> String {
        match self.n {
            Some(n) => format!("ep_holomorphic{n}"),
            None => self.est.clone(),
        }
    }
    fn expected_slope(&self) -> f64 {
        match (self.est.as_str(), self.n) {
            ("ep_centered", _) => 2.0,
            (_, Some(n)) => n as f64,
            _ => 1.0,
        }
    }
    fn conclusive(&self) -> bool {
        self.converged && self.kinks == 0
    }
}

/// An estimator identity (B1–B5) measured at one β point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdentityRec {
    pub id: String,
    pub name: String,
    #[serde(with = "exact")]
    pub value: f64,
    #[serde(with = "exact")]
    pub threshold: f64,
}

/// Everything the sweep measured at one β point (index `index` of the grid): the per-β table from which
/// [`finish`] computes the fits, identities and verdict — in one run, or after `epcheck merge` of shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BetaRec {
    pub index: usize,
    #[serde(with = "exact")]
    pub beta: f64,
    #[serde(with = "exact")]
    pub cos_err_pm: f64,
    /// A kink crossing at ±β (observed β_c is the smallest such β).
    pub kinked: bool,
    /// Predicted β_c, measured at the smallest β of the grid only.
    #[serde(with = "exact::opt")]
    pub beta_c_pred: Option<f64>,
    pub points: Vec<PointRec>,
    pub identities: Vec<IdentityRec>,
}

/// What the fits need of the reference gradient: ‖g‖ and the norm of every scope, and why holomorphic EP was
/// not run (if so).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepContext {
    #[serde(with = "exact")]
    pub gnorm: f64,
    #[serde(with = "exact_vec")]
    pub ref_norms: Vec<f64>,
    pub holo_not_run: Option<String>,
}

mod exact_vec {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| format!("{x:?}")))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<f64>, D::Error> {
        Vec::<String>::deserialize(d)?.iter().map(|s| s.parse().map_err(serde::de::Error::custom)).collect()
    }
}

/// `bias-shard.json` of a `bias --shard i/n` run folder: the configuration, the shard and its β points;
/// `epcheck merge` joins the shards into the run of the whole grid.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardRecord {
    pub command: String,
    pub shard: [usize; 2],
    pub grid_len: usize,
    pub instance: String,
    /// The resolved configuration (`config.toml` of the run folder).
    pub config: String,
    pub params: Option<std::path::PathBuf>,
    pub input: Option<std::path::PathBuf>,
    pub context: SweepContext,
    pub betas: Vec<BetaRec>,
}

/// Scopes in the order of `refs::scopes`: each parameter tensor, each layer group, the total — as index sets.
fn scope_sets(inst: &Instance) -> Vec<(String, String, Vec<usize>)> {
    let ps = &inst.model.params;
    let mut out: Vec<(String, String, Vec<usize>)> = ps.iter().enumerate().map(|(i, s)| ("tensor".into(), s.name.clone(), vec![i])).collect();
    let mut groups: Vec<String> = vec![];
    for s in ps {
        if !groups.contains(&s.group) {
            groups.push(s.group.clone());
        }
    }
    for g in groups {
        out.push(("layer_group".into(), g.clone(), ps.iter().enumerate().filter(|(_, s)| s.group == g).map(|(i, _)| i).collect()));
    }
    out.push(("total".into(), "total".into(), (0..ps.len()).collect()));
    out
}

/// Scalars reduced on the device during one β point, read back to the host together at its end.
#[derive(Default)]
struct Pending(Vec<Tensor>);

impl Pending {
    fn push(&mut self, t: Tensor) -> usize {
        self.0.push(t.to_kind(Kind::Double).reshape([1]));
        self.0.len() - 1
    }
    /// ‖a − r‖, ‖r‖, ‖a‖, Σ(a/‖a‖ − r/‖r‖)² of the flattened tensors; the index of the first.
    fn errs(&mut self, a: &[&Tensor], r: &[&Tensor]) -> usize {
        let (a, r) = (flat(a), flat(r));
        let (na, nr) = (a.norm(), r.norm());
        let s = (&a / &na - &r / &nr).square().sum(Kind::Double);
        let i = self.push((&a - &r).norm());
        self.push(nr);
        self.push(na);
        self.push(s);
        i
    }
    /// max|a − r| and max|r| (rel_linf); the index of the first.
    fn linf(&mut self, a: &[Tensor], r: &[Tensor]) -> usize {
        let (a, r) = (flat(&a.iter().collect::<Vec<_>>()), flat(&r.iter().collect::<Vec<_>>()));
        let i = self.push((&a - &r).abs().max());
        self.push(r.abs().max());
        i
    }
    fn read(&self) -> Vec<f64> {
        if self.0.is_empty() {
            return vec![];
        }
        to_vec_f64(&Tensor::cat(&self.0, 0))
    }
}

fn flat(ts: &[&Tensor]) -> Tensor {
    Tensor::cat(&ts.iter().map(|t| t.detach().to_kind(Kind::Double).reshape([-1])).collect::<Vec<_>>(), 0)
}

/// (rel_l2, one_minus_cos, dist_l2) from the four reductions of [`Pending::errs`] (the conventions of
/// `metrics::rel_l2` and `metrics::one_minus_cos`: 0/0 = 0, a zero vector against a nonzero one is 1 − cos = 1).
fn scope_err(v: &[f64]) -> ScopeErr {
    let (d, nr, na, s) = (v[0], v[1], v[2], v[3]);
    let omc = match (na == 0.0, nr == 0.0) {
        (true, true) => 0.0,
        (true, false) | (false, true) => 1.0,
        _ => 0.5 * s,
    };
    ScopeErr { rel_l2: mx::ratio(d, nr), one_minus_cos: omc, dist_l2: d }
}

/// A point before its reductions are read back: its scopes' first reduction indices.
struct Draft {
    rec: PointRec,
    at: Vec<usize>,
}

/// The sweep of `o.grid` (or its shard `o.shard`): the context, the per-β records, the `--dump` tensors.
pub fn sweep(inst: &Instance, o: &BiasOptions) -> Result<(SweepContext, Vec<BetaRec>, Vec<(String, Tensor)>)> {
    let (m, p, batch) = (&inst.model, &inst.params[..], &inst.batch);
    let eps = inst.prec.dtype.eps();
    let iota = if inst.prec.dtype == crate::precision::Dtype::F64 { 1e-12 } else { 1e-5 };
    let io = inst.cfg.implicit_options();
    let sets = scope_sets(inst);
    // The free state: extended until stationary (s*), and the reference gradient.
    let star = implicit::star(m, p, batch, None, &io)?;
    let s0: State = star.state.iter().map(|t| t.shallow_clone()).collect();
    let g_ref: Vec<Tensor> = match o.reference.as_str() {
        "bptt" => bptt::full(m, p, batch, o.t_free).0.tensors,
        "bptt_trunc" => bptt::truncated(m, p, batch, o.t_free.max(o.k_fixed), o.k_fixed)?.0.tensors,
        _ => implicit::at_star(m, p, batch, star, &io)?.grad.tensors,
    };
    let gnorm = fnorm(&g_ref);
    let ref_norms = {
        let mut pe = Pending::default();
        let at: Vec<usize> = sets.iter().map(|(_, _, ix)| pe.push(flat(&ix.iter().map(|&i| &g_ref[i]).collect::<Vec<_>>()).norm())).collect();
        let v = pe.read();
        at.iter().map(|&i| v[i]).collect()
    };
    let f0 = m.param_derivative(p, batch, &s0);
    let r0 = kinks::regimes(m, p, batch, &s0, 0.0);
    let admissible = holo::preflight(m);
    let near_01 = o.grid.iter().cloned().min_by(|a, b| (a.ln() - 0.1f64.ln()).abs().total_cmp(&(b.ln() - 0.1f64.ln()).abs())).unwrap();
    let smallest = o.grid.iter().cloned().fold(f64::INFINITY, f64::min);
    let mut drift_cache: std::collections::BTreeMap<i64, f64> = Default::default();
    let n_grid = o.grid.len();
    let owned = o.shard.select(n_grid);
    let holo_n = if admissible.is_ok() { o.n_list.len() } else { 0 };
    // `bias.phases` marks the β points as the sweep's (free state s*, nudged phases per checks.bias.nudge), so that
    // `compare` recomputes them with [`point_estimate`].
    let mut dump = vec![("bias.phases".to_string(), Tensor::from(1i64))];
    for (i, s) in m.params.iter().enumerate() {
        dump.push((format!("grad.{}.{}", o.reference, s.name), g_ref[i].shallow_clone()));
    }
    let mut betas = vec![];
    // Work units: per β point, the ±β phases (2) and one per holomorphic N.
    crate::progress::stage((owned.len() * (2 + holo_n)) as u64, &format!("bias: β point 1/{n_grid}, ±β phases"));
    for &bi in &owned {
        let beta = o.grid[bi];
        let mut pe = Pending::default();
        let mut drafts: Vec<Draft> = vec![];
        let mut identities: Vec<(String, String, usize, f64)> = vec![]; // (id, name, reduction index, threshold)
        let mut add = |pe: &mut Pending, dump: &mut Vec<(String, Tensor)>, rec: PointRec, grad: Vec<Tensor>| {
            let at = sets.iter().map(|(_, _, ix)| pe.errs(&ix.iter().map(|&i| &grad[i]).collect::<Vec<_>>(), &ix.iter().map(|&i| &g_ref[i]).collect::<Vec<_>>())).collect();
            for (i, s) in m.params.iter().enumerate() {
                dump.push((format!("grad.{}@{}.{}", rec.key(), rec.beta, s.name), grad[i].shallow_clone()));
            }
            drafts.push(Draft { rec, at });
        };
        crate::progress::message(&format!("bias: β point {}/{n_grid} (β = {beta}), ±β phases", bi + 1));
        let (sp, cp, kp, dfp) = nudged(m, p, batch, &s0, beta, o);
        let (sm, cm, _, dfm) = nudged(m, p, batch, &s0, -beta, o);
        let conv = dfp.max(dfm) / (beta * gnorm);
        // f(±β) = ∂Φ̄_{±β}/∂θ at the nudged states (a θ-dependent loss adds ∓β ∂L̄/∂θ|explicit, estimators §2.1).
        let (fp, fm) = (m.param_derivative_nudged(p, batch, &sp, (beta, 0.0)), m.param_derivative_nudged(p, batch, &sm, (-beta, 0.0)));
        let kink_p: i64 = kinks::changes(&r0, &kinks::regimes(m, p, batch, &sp, beta)).iter().sum();
        let kink_m: i64 = kinks::changes(&r0, &kinks::regimes(m, p, batch, &sm, -beta)).iter().sum();
        let beta_c_pred = (beta == smallest).then(|| kinks::beta_c_pred(m, p, batch, &s0, &sp, beta));
        let drift = *drift_cache.entry(kp).or_insert_with(|| {
            let cont = relax(m, p, batch, &s0, 0.0, &RelaxOptions::fixed(kp)).state;
            let fk = m.param_derivative(p, batch, &cont);
            fk.iter().zip(&f0).map(|(a, b)| norm2(&(a - b)).powi(2)).sum::<f64>().sqrt()
        });
        let floor = |fs: &[&[Tensor]]| eps * fs.iter().map(|f| fnorm(f)).fold(0.0, f64::max) / (beta * gnorm);
        let plus = two_point(&f0, 0.0, &fp, beta);
        let minus = two_point(&f0, 0.0, &fm, -beta);
        let centered = two_point(&fm, -beta, &fp, beta);
        let mk = |est: &str, converged: bool, kinks: i64, fl: f64, dr: f64| PointRec {
            est: est.into(),
            n: None,
            beta,
            converged,
            kinks,
            floor_rel: fl,
            drift_rel: dr,
            conv_rel: conv,
            im_leak: None,
            scopes: vec![],
        };
        let avg: Vec<Tensor> = plus.iter().zip(&minus).map(|(a, b)| (a + b) * 0.5).collect();
        let fl_c = floor(&[&fp, &fm]);
        identities.push(("B1".into(), format!("ep_centered = (ep_plus + ep_minus)/2 @ {beta}"), pe.linf(&centered, &avg), iota + 10.0 * fl_c));
        // cos(ĝ₊ − g, ĝ₋ − g): → −1 at small β (opposite leading errors).
        let ep: Vec<Tensor> = plus.iter().zip(&g_ref).map(|(a, b)| a - b).collect();
        let em: Vec<Tensor> = minus.iter().zip(&g_ref).map(|(a, b)| a - b).collect();
        let cos_at = pe.errs(&ep.iter().collect::<Vec<_>>(), &em.iter().collect::<Vec<_>>());
        add(&mut pe, &mut dump, mk("ep_plus", cp, kink_p, floor(&[&f0, &fp]), drift / (beta * gnorm)), plus);
        add(&mut pe, &mut dump, mk("ep_minus", cm, kink_m, floor(&[&f0, &fm]), drift / (beta * gnorm)), minus);
        add(&mut pe, &mut dump, mk("ep_centered", cp && cm, kink_p + kink_m, fl_c, 0.0), centered);
        crate::progress::advance(2, &format!("bias: β point {}/{n_grid} (β = {beta})", bi + 1));
        if admissible.is_ok() {
            let len = PhaseLengths { t_free: 0, k_nudge: if o.until_tol { o.max_iter } else { o.k_fixed }, tol: o.until_tol.then_some(o.nudge_tol / 10.0) };
            // Sensitivity of f to the state, to turn a point residual into a convergence error.
            let s0max = s0.iter().map(|t| t.abs().max().to_kind(Kind::Double).double_value(&[])).fold(0.0, f64::max).max(1e-300);
            let f_sens = fnorm(&f0) / s0max;
            for &n in &o.n_list {
                crate::progress::message(&format!("bias: β point {}/{n_grid} (β = {beta}), holomorphic N = {n}", bi + 1));
                let opts = HoloOptions { n, shortcut: false, ..o.holo.clone() };
                let opts = if opts.schedule == HoloSchedule::Carry && n < 2 { HoloOptions { schedule: HoloSchedule::Restart, ..opts } } else { opts };
                let e = holo::estimate(m, p, batch, &s0, beta, len, &opts)?;
                let conv = e.point_residuals.iter().all(|(_, r)| *r <= o.tol);
                let fl = eps * fnorm(&f0).max(fnorm(&fp)) / (beta * gnorm);
                // B2/B3 compare with real estimates from phases of exactly the same length (same phases).
                if n <= 2 && opts.schedule == HoloSchedule::Restart {
                    let fixed = |b: f64| m.param_derivative_nudged(p, batch, &relax(m, p, batch, &s0, b, &RelaxOptions::fixed(e.iters)).state, (b, 0.0));
                    let fpx = fixed(beta);
                    if n == 1 {
                        let same = two_point(&f0, 0.0, &fpx, beta);
                        identities.push(("B2".into(), format!("ep_holomorphic1 = ep_plus @ {beta}"), pe.linf(&e.grad.tensors, &same), iota + 10.0 * fl));
                    } else {
                        let same = two_point(&fixed(-beta), -beta, &fpx, beta);
                        identities.push(("B3".into(), format!("ep_holomorphic2 = ep_centered @ {beta}"), pe.linf(&e.grad.tensors, &same), iota + 10.0 * fl));
                    }
                }
                if beta == near_01 && opts.schedule == HoloSchedule::Restart && [3, 4, 8].contains(&n) {
                    let on = holo::estimate(m, p, batch, &s0, beta, len, &HoloOptions { shortcut: true, ..opts.clone() })?;
                    identities.push(("B4".into(), format!("shortcut on = off, N = {n} @ {beta}"), pe.linf(&on.grad.tensors, &e.grad.tensors), iota + 10.0 * fl));
                }
                let leak = e.im_leak.as_ref().map(|l| l.1);
                if beta == near_01 {
                    if let Some(l) = leak {
                        identities.push(("B5".into(), format!("im_leak, N = {n} @ {beta}"), pe.push(Tensor::from(l)), (100.0 * iota).max(10.0 * fl)));
                    }
                }
                let pr = e.point_residuals.iter().map(|x| x.1).fold(0.0, f64::max);
                let rec = PointRec {
                    est: "ep_holomorphic".into(),
                    n: Some(n),
                    beta,
                    converged: conv,
                    kinks: 0,
                    floor_rel: fl,
                    drift_rel: if n == 1 { drift / (beta * gnorm) } else { 0.0 },
                    conv_rel: pr * f_sens / (beta * gnorm),
                    im_leak: leak,
                    scopes: vec![],
                };
                add(&mut pe, &mut dump, rec, e.grad.tensors);
                crate::progress::advance(1, &format!("bias: β point {}/{n_grid} (β = {beta}), holomorphic N = {n} done", bi + 1));
            }
        }
        // One read-back per β point: every reduction above.
        let v = pe.read();
        let cos_err_pm = 1.0 - scope_err(&v[cos_at..cos_at + 4]).one_minus_cos;
        let points = drafts
            .into_iter()
            .map(|d| PointRec { scopes: d.at.iter().map(|&i| scope_err(&v[i..i + 4])).collect(), ..d.rec })
            .collect();
        let identities = identities
            .into_iter()
            .map(|(id, name, i, threshold)| {
                let value = if id == "B5" { v[i] } else { mx::ratio(v[i], v[i + 1]) };
                IdentityRec { id, name, value, threshold }
            })
            .collect();
        betas.push(BetaRec { index: bi, beta, cos_err_pm, kinked: kink_p + kink_m > 0, beta_c_pred, points, identities });
    }
    let ctx = SweepContext { gnorm, ref_norms, holo_not_run: admissible.err().map(|e| e.to_string()) };
    Ok((ctx, betas, dump))
}

pub fn run(inst: &Instance, o: &BiasOptions) -> Result<CheckReport> {
    let (ctx, betas, dump) = sweep(inst, o)?;
    Ok(finish(inst, o, &ctx, &betas, dump))
}

/// `bias --shard i/n`: the sweep of the shard's β points (grid indices i, i + n, …), reported as the per-β rows
/// with an `info` verdict, and the record `epcheck merge` joins.
pub fn run_shard(inst: &Instance, o: &BiasOptions, params: Option<&std::path::Path>, input: Option<&std::path::Path>) -> Result<(CheckReport, ShardRecord)> {
    let (ctx, betas, dump) = sweep(inst, o)?;
    let mut rows = Rows::new("bias", &inst.id, &inst.model.preset, inst.prec.dtype.name());
    point_rows(inst, o, &betas, &mut rows);
    let (i, n) = (o.shard.index, o.shard.count);
    let grid: Vec<f64> = betas.iter().map(|b| b.beta).collect();
    rows.verdict("shard", &format!("{i}/{n}"), &Verdict::Info, json!({ "grid": grid }));
    let summary = vec![
        format!("shard {i}/{n} of the β grid {:?}: β = {grid:?} (grid indices {:?})", o.grid, o.shard.select(o.grid.len())),
        String::new(),
        "The fits, identities and verdict need every β point: `epcheck merge` of all shards' run folders computes them (docs/slurm.md).".into(),
    ];
    let digest = format!("shard {i}/{n}: {} of {} β points; slopes and verdict: epcheck merge of the shards", grid.len(), o.grid.len());
    let rec = ShardRecord {
        command: "bias".into(),
        shard: [i, n],
        grid_len: o.grid.len(),
        instance: inst.id.clone(),
        config: inst.cfg.to_toml(),
        params: params.map(absolute),
        input: input.map(absolute),
        context: ctx,
        betas,
    };
    Ok((rows.finish(summary, dump).with_digest(digest), rec))
}

fn absolute(p: &std::path::Path) -> std::path::PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// The per-β rows: cos(ĝ₊ − g, ĝ₋ − g) of every β point, then every point's metrics per scope.
fn point_rows(inst: &Instance, o: &BiasOptions, betas: &[BetaRec], rows: &mut Rows) {
    let u = if inst.prec.dtype == crate::precision::Dtype::F64 { 2f64.powi(-53) } else { 2f64.powi(-24) };
    let sets = scope_sets(inst);
    for b in betas {
        let mut row = rows.row("total", "total", "cos_err_pm", b.cos_err_pm);
        row.beta = Some(b.beta);
        row.verdict = Some("info".into());
        rows.push(row);
    }
    for pt in betas.iter().flat_map(|b| &b.points) {
        for ((scope, name, _), e) in sets.iter().zip(&pt.scopes) {
            let omc = e.one_minus_cos;
            for (metric, value) in [("rel_l2", e.rel_l2), ("cos", 1.0 - omc), ("one_minus_cos", omc), ("neglog10_one_minus_cos", -(omc.max(u)).log10()), ("dist_l2", e.dist_l2)] {
                let mut row = rows.row(scope, name, metric, value);
                row.estimator = Some(pt.est.clone());
                row.n_points = pt.n.map(|n| n as i64);
                row.beta = Some(pt.beta);
                row.reference = Some(o.reference.clone());
                rows.push(row);
            }
        }
        let extra: Vec<(&str, f64)> = [("floor_rel", pt.floor_rel), ("drift_rel", pt.drift_rel), ("conv_rel", pt.conv_rel), ("kink_changes", pt.kinks as f64), ("converged", pt.converged as i64 as f64)]
            .into_iter()
            .chain(pt.im_leak.map(|l| ("im_leak", l)))
            .collect();
        for (metric, value) in extra {
            let mut row = rows.row("total", "total", metric, value);
            row.estimator = Some(pt.est.clone());
            row.n_points = pt.n.map(|n| n as i64);
            row.beta = Some(pt.beta);
            rows.push(row);
        }
    }
}

/// The report of a sweep from its per-β records (sorted by grid index): the per-β rows, the fits and
/// consistency per (estimator, N) and scope, the identities, β_c, the verdict and digest.
pub fn finish(inst: &Instance, o: &BiasOptions, ctx: &SweepContext, betas: &[BetaRec], dump: Vec<(String, Tensor)>) -> CheckReport {
    let m = &inst.model;
    let mut rows = Rows::new("bias", &inst.id, &m.preset, inst.prec.dtype.name());
    let io = inst.cfg.implicit_options();
    let gnorm = ctx.gnorm;
    point_rows(inst, o, betas, &mut rows);
    let points: Vec<&PointRec> = betas.iter().flat_map(|b| &b.points).collect();
    // Fits and consistency per (estimator, N) on total and each layer group.
    let mut keys: Vec<String> = vec![];
    for pt in &points {
        if !keys.contains(&pt.key()) {
            keys.push(pt.key());
        }
    }
    let scope_names: Vec<(String, String)> = scope_sets(inst).into_iter().filter(|(s, _, _)| s != "tensor").map(|(s, n, _)| (s, n)).collect();
    let mut summary = vec![
        format!(
            "reference `{}`; free state s* (r_∞ ≤ {:.0e}); nudged phases {}; conclusive iff r_∞ ≤ {:.0e} and no kink crossing; fit window: err ≥ {}·(floor + drift + conv) and err ≤ {}; grid {:?}",
            o.reference,
            io.star_tol,
            if o.until_tol { format!("until r_∞ ≤ {:.0e}", o.nudge_tol) } else { format!("K = {}", o.k_fixed) },
            o.tol,
            o.floor_factor,
            o.err_max,
            o.grid
        ),
        String::new(),
        "| estimator | scope | slope p̂ (expected) | R² | points | err_best | fit | consistency |".into(),
        "|---|---|---|---|---|---|---|---|".into(),
    ];
    for key in &keys {
        let pts: Vec<&PointRec> = points.iter().filter(|pt| &pt.key() == key).copied().collect();
        let p_exp = pts[0].expected_slope();
        let slope_tol = o.slope_tol.unwrap_or((0.25f64).max(0.1 * p_exp));
        for (scope, name) in &scope_names {
            let idx = scope_names.iter().position(|x| x == &(scope.clone(), name.clone())).unwrap();
            let errs: Vec<(f64, f64, &PointRec)> = pts.iter().map(|pt| (pt.beta, pt.scopes[m.params.len() + idx].rel_l2, *pt)).collect();
            // The floors are relative to ‖g‖ of the whole gradient; for a layer group they scale (conservatively)
            // by ‖g_total‖/‖g_group‖.
            let g_scope = ctx.ref_norms[m.params.len() + idx];
            let scale = mx::ratio(gnorm, g_scope);
            let window: Vec<&(f64, f64, &PointRec)> = errs
                .iter()
                .filter(|(_, e, pt)| pt.conclusive() && *e >= o.floor_factor * scale * (pt.floor_rel + pt.drift_rel + pt.conv_rel) && *e <= o.err_max && *e > 0.0)
                .collect();
            let excluded: Vec<String> = errs
                .iter()
                .filter(|x| !window.iter().any(|w| w.0 == x.0))
                .map(|(b, e, pt)| {
                    let why = if !pt.converged { "not converged" } else if pt.kinks > 0 { "kink crossing" } else if *e > o.err_max { "err > err_max" } else { "below floor (round-off + drift + convergence)" };
                    format!("{b}: {why}")
                })
                .collect();
            let span = if window.is_empty() { 0.0 } else { (window.iter().map(|w| w.0).fold(0.0, f64::max) / window.iter().map(|w| w.0).fold(f64::INFINITY, f64::min)).log10() };
            let fit_verdict;
            let mut fit_desc = String::from("–");
            if window.len() < 3 || span < 0.5 {
                fit_verdict = Verdict::Inconclusive("too few points".into());
            } else {
                let x: Vec<f64> = window.iter().map(|w| w.0.log10()).collect();
                let y: Vec<f64> = window.iter().map(|w| w.1.log10()).collect();
                let (slope, c, r2) = ols(&x, &y);
                fit_verdict = if (slope - p_exp).abs() <= slope_tol && r2 >= o.r2_min {
                    Verdict::Pass
                } else {
                    Verdict::Fail(format!("slope {slope:.3} (expected {p_exp}), R² {r2:.4}"))
                };
                fit_desc = format!("{slope:.3} ({p_exp}) | {r2:.4} | {}", window.len());
                for (metric, value, thr) in [
                    ("slope", slope, Some(slope_tol)),
                    ("slope_expected", p_exp, None),
                    ("slope_intercept", c, None),
                    ("slope_r2", r2, Some(o.r2_min)),
                    ("slope_npts", window.len() as f64, None),
                    ("beta_min_fit", window.iter().map(|w| w.0).fold(f64::INFINITY, f64::min), None),
                    ("beta_max_fit", window.iter().map(|w| w.0).fold(0.0, f64::max), None),
                ] {
                    let mut row = rows.row("fit", name, metric, value);
                    row.estimator = Some(pts[0].est.clone());
                    row.n_points = pts[0].n.map(|n| n as i64);
                    row.threshold = thr;
                    if metric == "slope" {
                        row.verdict = Some(fit_verdict.label().into());
                    }
                    rows.push(row);
                }
            }
            rows.verdict("fit", &format!("{key}:{name}"), &fit_verdict, json!({ "excluded": excluded, "expected": p_exp }));
            // Halving ratios.
            for w in errs.windows(2) {
                if ((w[1].0 / w[0].0) - 2.0).abs() < 1e-9 && w[0].1 > 0.0 {
                    let mut row = rows.row("fit", name, "halving_ratio", w[1].1 / w[0].1);
                    row.estimator = Some(pts[0].est.clone());
                    row.n_points = pts[0].n.map(|n| n as i64);
                    row.beta = Some(w[1].0);
                    rows.push(row);
                }
            }
            // Consistency.
            let best = errs.iter().filter(|(_, _, pt)| pt.conclusive()).min_by(|a, b| a.1.total_cmp(&b.1));
            let cons = match best {
                None => Verdict::Inconclusive("not converged".into()),
                Some((_, e, pt)) if 10.0 * pt.floor_rel > o.consistency_max && *e > o.consistency_max => Verdict::Inconclusive("round-off floor".into()),
                Some((_, e, _)) if super::within(*e, o.consistency_max) => Verdict::Pass,
                Some((b, e, _)) => Verdict::Fail(format!("err_best={e:.3e} at β={b} > {}", o.consistency_max)),
            };
            if let Some((b, e, _)) = best {
                let mut row = rows.row(scope, name, "err_best", *e);
                row.estimator = Some(pts[0].est.clone());
                row.n_points = pts[0].n.map(|n| n as i64);
                row.beta = Some(*b);
                row.threshold = Some(o.consistency_max);
                row.verdict = Some(cons.label().into());
                rows.push(row);
            }
            rows.verdict(scope, &format!("{key}:consistency:{name}"), &cons, json!({ "err_best": best.map(|b| b.1) }));
            summary.push(format!(
                "| {key} | {name} | {fit_desc}{} | {} | {} | {} |",
                if fit_desc == "–" { " | – | –" } else { "" },
                best.map(|b| format!("{:.2e} @ {}", b.1, b.0)).unwrap_or("–".into()),
                fit_verdict.display(),
                cons.display()
            ));
        }
    }
    if let Some(e) = &ctx.holo_not_run {
        summary.push(String::new());
        summary.push(format!("holomorphic EP not run: {e}"));
    }
    // B6: the closed-form oracles on the built-in scalar instance.
    let mut identity_rows: Vec<(String, String, f64, f64)> = betas.iter().flat_map(|b| &b.identities).map(|r| (r.id.clone(), r.name.clone(), r.value, r.threshold)).collect();
    let b6 = scalar_oracle_error();
    identity_rows.push(("B6".into(), "sign oracle and holomorphic closed form".into(), b6, 1e-13));
    summary.push(String::new());
    summary.push("| identity | name | rel_linf | threshold | verdict |".into());
    summary.push("|---|---|---|---|---|".into());
    for (id, name, v, thr) in identity_rows {
        let verdict = if id == "B5" {
            if super::within(v, thr) { Verdict::Pass } else { Verdict::Fail(format!("im_leak={v:.3e} > {thr:.3e}")) }
        } else if super::within(v, thr) {
            Verdict::Pass
        } else {
            Verdict::Fail(format!("rel_linf={v:.3e} > {thr:.3e}"))
        };
        let mut row = rows.row("identity", &format!("{id}:{name}"), if id == "B5" { "im_leak" } else { "rel_linf" }, v);
        row.threshold = Some(thr);
        row.verdict = Some(verdict.label().into());
        rows.push(row);
        rows.verdict("identity", &format!("{id}:{name}"), &verdict, json!({ "value": v, "threshold": thr }));
        summary.push(format!("| {id} | {name} | {v:.2e} | {thr:.1e} | {} |", verdict.display()));
    }
    let beta_c_obs = betas.iter().filter(|b| b.kinked).map(|b| b.beta).fold(f64::INFINITY, f64::min);
    let beta_c_pred = betas.iter().find_map(|b| b.beta_c_pred).unwrap_or(f64::INFINITY);
    for (metric, v) in [("beta_c_obs", beta_c_obs), ("beta_c_pred", beta_c_pred)] {
        let mut row = rows.row("total", "total", metric, v);
        row.verdict = Some("info".into());
        rows.push(row);
    }
    summary.push(String::new());
    summary.push(format!("kink crossing: β_c observed = {beta_c_obs}, predicted = {beta_c_pred:.3e} (∞ = none / smooth model)"));
    // Digest: the fitted slope of every estimator on the total (expected in parentheses), the best consistency.
    let mut slopes = vec![];
    for r in rows.metrics.iter().filter(|r| r.scope == "fit" && r.name == "total" && r.metric == "slope") {
        let key = match r.n_points {
            Some(n) => format!("N={n}"),
            None => r.estimator.clone().unwrap_or_default(),
        };
        let exp = rows.metrics.iter().find(|x| x.scope == "fit" && x.name == "total" && x.metric == "slope_expected" && x.estimator == r.estimator && x.n_points == r.n_points).map(|x| x.value);
        slopes.push(format!("{key} {:.2}{}", r.value, exp.map(|e| format!(" ({e})")).unwrap_or_default()));
    }
    let cons = rows.metrics.iter().filter(|r| r.metric == "err_best" && r.name == "total").map(|r| r.value).fold(f64::NEG_INFINITY, f64::max);
    let mut digest = if slopes.is_empty() { "no slope could be fitted".to_string() } else { format!("slopes (expected) {}", slopes.join(", ")) };
    if cons.is_finite() {
        digest += &format!("; worst best-β error vs {} {} (≤ {})", o.reference, super::num(cons), super::num(o.consistency_max));
    }
    rows.finish(summary, dump).with_digest(digest)
}

/// B6: max relative error of the closed forms of conventions §8.3 and estimators §3.10 on Φ = θ·x·s
/// (identity, MSE, θ = 0.7, x = 1.3, target 1), for r ∈ {0.05, 0.2, 0.5}, N ∈ {1, 2, 3, 4, 8}, both
/// holomorphic schedules, K = 200; always float64.
pub fn scalar_oracle_error() -> f64 {
    let mut cfg = crate::config::RunConfig::preset_defaults("p-mlp").expect("preset");
    cfg.archi = vec![1, 1];
    cfg.activation = "identity".into();
    cfg.batch = 1;
    let m = crate::model::presets::build(&cfg).expect("scalar model");
    let (theta, x) = (0.7, 1.3);
    let p = vec![Tensor::from_slice(&[theta]).reshape([1, 1]), Tensor::zeros([1], (Kind::Double, tch::Device::Cpu))];
    let b = Batch::new(Tensor::from_slice(&[x]).reshape([1, 1]), Tensor::from_slice(&[0i64]), 1);
    let g = x * (theta * x - 1.0);
    let len = PhaseLengths { t_free: 5, k_nudge: 200, tol: None };
    let free = crate::estimators::free_phase(&m, &p, &b, len, false);
    let f0 = m.param_derivative(&p, &b, &free.state);
    let mut worst: f64 = 0.0;
    let mut check = |got: f64, want: f64| worst = worst.max(((got - want) / want).abs());
    for r in [0.05, 0.2, 0.5] {
        let fr = m.param_derivative(&p, &b, &relax(&m, &p, &b, &free.state, r, &RelaxOptions::fixed(200)).state);
        let fm = m.param_derivative(&p, &b, &relax(&m, &p, &b, &free.state, -r, &RelaxOptions::fixed(200)).state);
        check(to_vec_f64(&two_point(&f0, 0.0, &fr, r)[0])[0], g / (1.0 + r));
        check(to_vec_f64(&two_point(&f0, 0.0, &fm, -r)[0])[0], g / (1.0 - r));
        check(to_vec_f64(&two_point(&fm, -r, &fr, r)[0])[0], g / (1.0 - r * r));
        for n in [1usize, 2, 3, 4, 8] {
            let want = g / (1.0 - (-r as f64).powi(n as i32));
            let mut scheds = vec![HoloOptions::restart(n, true)];
            if n >= 2 {
                scheds.push(HoloOptions { schedule: HoloSchedule::Carry, ..HoloOptions::restart(n, false) });
            }
            for o in scheds {
                match holo::estimate(&m, &p, &b, &free.state, r, len, &o) {
                    Ok(e) => check(to_vec_f64(&e.grad.tensors[0])[0], want),
                    Err(_) => check(f64::INFINITY, want),
                }
            }
        }
    }
    worst
}
