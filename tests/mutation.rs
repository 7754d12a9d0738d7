//! Mutation suite (checks.md §11.2) on fixture F1: every mutant must make some check fail, and the unmutated
//! model must pass the same checks. No mutation switch lives in production code:
//!
//! * model mutants are `Term` implementations defined here (a dense coupling whose top-down drive or local
//!   form is wrong), composed into a `Model` with `Model::new` and run through the real `audit`, `local`,
//!   `gdu` and `bias` entry points;
//! * estimator and series mutants (M1–M5, M8, M10, M13, M17) are wrappers computed here from the library's
//!   own phases and series, scored with the thresholds of the check that owns them (`bias` consistency and
//!   slope fit, `gdu` rel_l2 ≤ c·β^p);
//! * M16 is a configuration (T = 3, no free-phase extension) run through the real `converge` and `gdu`.
//!
//! Not applicable to what exists: M14/M15 (holomorphic internals, no hook outside production code), M18 (no
//! readout in p-mlp yet); M4/M5 are caught by `bias` here — `audit` A6 would need a hook in `Model::drive`.
mod common;
use common::*;
use epcheck::checks::metrics as mx;
use epcheck::checks::{audit, bias, converge, gdu, local, Verdict};
use epcheck::estimators::implicit;
use epcheck::instance::Instance;
use epcheck::model::terms::{bias::Bias, dense::Dense, Node, Term};
use epcheck::model::{Batch, Model, State};
use epcheck::relax::relax_until_stationary;
use epcheck::tensor_util::{matmul, norm2, to_vec_f64};
use tch::{Kind, Tensor};

/// Fixture F1 (checks §11.1): [6, 5, 5, 3], logistic4, MSE, B = 3, init_scale 0.5, seed 0, K = 60.
fn f1() -> Instance {
    tiny_with("logistic4", "mse", |c| {
        c.t_free = 200;
        c.k_nudge = 60;
        c.checks.converge.tol = Some(1e-13);
        c.checks.bias.grid = vec![1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1];
        c.checks.bias.n = vec![1, 2];
        c.checks.audit.pairs = 2;
    })
}

#[derive(Clone)]
enum Mode {
    /// M6: the top-down drive into the pre layer uses W instead of Wᵀ (W square).
    Transposed,
    /// M7: the top-down drive uses (W + δR)ᵀ, R fixed with entries N(0, 1/n).
    Asym(Vec<f64>, Vec<i64>),
    /// M9: the local form is the batch sum (×B of the mean).
    BatchSum(f64),
    /// M11: the local form is conjugated on complex states.
    Conj,
    /// M12: the local form keeps only the real part on complex states.
    RealPart,
}

/// A dense coupling with one mutation (everything else as in `terms::dense`).
struct MutantDense {
    slots: [Node; 2],
    params: [usize; 1],
    mode: Mode,
}

const PRE: usize = 0;
const POST: usize = 1;

impl MutantDense {
    /// The matrix the top-down drive multiplies s_post by (row-vector form: s_post · M).
    fn top_down(&self, w: &Tensor) -> Tensor {
        match &self.mode {
            Mode::Transposed => w.tr(),
            Mode::Asym(r, shape) => w + Tensor::from_slice(r).reshape(&shape[..]).to_kind(w.kind()) * 0.1,
            _ => w.shallow_clone(),
        }
    }
}

impl Term for MutantDense {
    fn kind(&self) -> &'static str {
        "dense"
    }
    fn slots(&self) -> &[Node] {
        &self.slots
    }
    fn params(&self) -> &[usize] {
        &self.params
    }
    fn primitive(&self, p: &[Tensor], s: &[&Tensor]) -> Tensor {
        (matmul(s[PRE], &p[self.params[0]].tr()) * s[POST]).sum_dim_intlist(Some(&[1i64][..]), false, None)
    }
    fn drive(&self, p: &[Tensor], s: &[&Tensor], slot: usize) -> Tensor {
        let w = &p[self.params[0]];
        match slot {
            PRE => matmul(s[POST], &self.top_down(w)),
            _ => matmul(s[PRE], &w.tr()),
        }
    }
    fn hvp(&self, p: &[Tensor], _s: &[&Tensor], mu: &[Option<&Tensor>], slot: usize) -> Option<Tensor> {
        let w = &p[self.params[0]];
        match slot {
            PRE => mu[POST].map(|m| matmul(m, &self.top_down(w))),
            _ => mu[PRE].map(|m| matmul(m, &w.tr())),
        }
    }
    fn param_grad(&self, _p: &[Tensor], s: &[&Tensor]) -> Vec<Tensor> {
        let g = matmul(&s[POST].tr(), s[PRE]);
        let complex = epcheck::tensor_util::is_complex(g.kind());
        vec![match &self.mode {
            Mode::BatchSum(b) => g * *b,
            Mode::Conj if complex => g.conj().resolve_conj(),
            Mode::RealPart if complex => Tensor::complex(&g.real(), &g.real().zeros_like()),
            _ => g,
        }]
    }
    fn param_vjp(&self, _p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>]) -> Vec<Option<Tensor>> {
        // The parameter part of the step VJP of the mutated dynamics (the pre drive reads M(W)).
        let mut g: Option<Tensor> = None;
        let mut add = |t: Tensor| {
            g = Some(match g.take() {
                Some(a) => a + t,
                None => t,
            })
        };
        if let Some(m) = mu[POST] {
            add(matmul(&m.tr(), s[PRE]));
        }
        if let Some(m) = mu[PRE] {
            let outer = matmul(&s[POST].tr(), m);
            add(if matches!(self.mode, Mode::Transposed) { outer.tr() } else { outer });
        }
        vec![g]
    }
}

/// F1's model with coupling `synapses.1` (L1 → L2, weight index 2, square 5 × 5) replaced by a mutant.
fn mutant(inst: &Instance, mode: Mode) -> Model {
    let m = &inst.model;
    let mut terms: Vec<Box<dyn Term>> = vec![];
    for k in 0..m.layers.len() {
        let pre = if k == 0 { Node::Input(0) } else { Node::Layer(k - 1) };
        if k == 1 {
            terms.push(Box::new(MutantDense { slots: [pre, Node::Layer(k)], params: [2 * k], mode: mode.clone() }));
        } else {
            terms.push(Box::new(Dense::new(pre, Node::Layer(k), 2 * k)));
        }
        terms.push(Box::new(Bias::new(Node::Layer(k), 2 * k + 1)));
    }
    Model::new(&m.preset, m.input_shapes.clone(), m.layers.clone(), m.params.clone(), terms, m.loss, m.schedule.clone()).unwrap()
}

fn with_model(model: Model) -> Instance {
    let mut inst = f1();
    inst.model = model;
    inst
}

fn failing(rep: &epcheck::checks::CheckReport) -> Vec<String> {
    rep.verdicts.iter().filter(|v| v.scope != "check" && v.verdict == "fail").map(|v| format!("{}:{}", v.scope, v.name)).collect()
}

fn gdu_opts(inst: &Instance) -> gdu::GduOptions {
    gdu::GduOptions::from_config(&inst.cfg, inst.cfg.checks.gdu.beta)
}

fn bias_opts(inst: &Instance) -> bias::BiasOptions {
    bias::BiasOptions { until_tol: true, ..bias::BiasOptions::from_config(&inst.cfg) }
}

// ---------------------------------------------------------------------------------------------------------
// Harnesses for estimator and series mutants: the library's phases and series, the checks' thresholds.

/// An estimate assembled from f(0), f(+β'), f(−β') where β' = nudge·β (nudge = 0 drops the nudge, −1 flips it).
type Assemble = fn(&[Tensor], &[Tensor], &[Tensor], f64) -> Vec<Tensor>;

fn centered(f0: &[Tensor], fp: &[Tensor], fm: &[Tensor], b: f64) -> Vec<Tensor> {
    let _ = f0;
    fp.iter().zip(fm).map(|(p, m)| (p - m) * (-1.0 / (2.0 * b))).collect()
}
fn plus(f0: &[Tensor], fp: &[Tensor], _fm: &[Tensor], b: f64) -> Vec<Tensor> {
    fp.iter().zip(f0).map(|(p, z)| (p - z) * (-1.0 / b)).collect()
}

/// `bias` consistency and slope fit (checks §4) of one assembled estimator against `implicit`:
/// (pass, err_best, fitted slope).
fn bias_harness(inst: &Instance, nudge: f64, assemble: Assemble, p_expected: f64) -> (bool, f64, f64) {
    let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
    let io = inst.cfg.implicit_options();
    let star = implicit::star(m, p, b, None, &io).unwrap();
    let s0: State = star.state.iter().map(|t| t.shallow_clone()).collect();
    let g = implicit::at_star(m, p, b, star, &io).unwrap().grad.tensors;
    let gv: Vec<f64> = g.iter().flat_map(to_vec_f64).collect();
    let f0 = m.param_derivative(p, b, &s0);
    let phase = |beta: f64| relax_until_stationary(m, p, b, &s0, beta, 1e-14, 10_000).0;
    let (mut pts, mut best) = (vec![], f64::INFINITY);
    for &beta in &[1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2] {
        let (fp, fm) = (m.param_derivative(p, b, &phase(nudge * beta)), m.param_derivative(p, b, &phase(-nudge * beta)));
        let est: Vec<f64> = assemble(&f0, &fp, &fm, beta).iter().flat_map(to_vec_f64).collect();
        let err = mx::rel_l2(&est, &gv);
        best = best.min(err);
        let fmax = f0.iter().chain(&fp).chain(&fm).map(norm2).fold(0.0, f64::max);
        let floor = f64::EPSILON * fmax / (beta * mx::norm(&gv)) + 1e-14 / (beta * mx::norm(&gv));
        if err <= 0.1 && err >= 10.0 * floor && beta >= 1e-3 {
            pts.push((beta.ln(), err.ln()));
        }
    }
    let slope = if pts.len() >= 3 {
        let (x, y): (Vec<f64>, Vec<f64>) = pts.into_iter().unzip();
        bias::ols(&x, &y).0
    } else {
        f64::NAN
    };
    let fit_ok = (slope - p_expected).abs() <= (0.25f64).max(0.1 * p_expected);
    (best <= 1e-3 && fit_ok, best, slope)
}

/// `gdu` per-scope rel_l2 ≤ c·β (one-sided series, c = 10) on the library's series with a series mutation:
/// (pass, worst parameter rel_l2, worst neuron rel_l2).
fn gdu_harness(inst: &Instance, mutate: fn(&Model, &[Tensor], &Batch, &mut gdu::GduSeries)) -> (bool, f64, f64) {
    let (m, p, b) = (&inst.model, &inst.params[..], &inst.batch);
    let o = gdu_opts(inst);
    let mut g = gdu::compute_series(m, p, b, m.zeros_state(b.size(), inst.prec), &o);
    mutate(m, p, b, &mut g);
    let thr = o.bias_const * o.beta;
    let flat_t = |th: &Vec<Vec<Tensor>>, i: usize| th.iter().flat_map(|st| to_vec_f64(&st[i])).collect::<Vec<f64>>();
    let wp = (0..p.len()).map(|i| mx::rel_l2(&flat_t(&g.plus.theta, i), &flat_t(&g.bptt_theta, i))).fold(0.0, f64::max);
    let wn = (0..m.layers.len()).map(|j| mx::rel_l2(&flat_t(&g.plus.neurons, j), &flat_t(&g.bptt_j, j))).fold(0.0, f64::max);
    (wp <= thr && wn <= thr, wp, wn)
}

fn no_mutation(_: &Model, _: &[Tensor], _: &Batch, _: &mut gdu::GduSeries) {}

/// One row of the mutant table.
struct Row {
    id: &'static str,
    what: &'static str,
    caught_by: Vec<String>,
    signature: String,
}

#[test]
fn mutation_suite() {
    let _rng = epcheck::tensor_util::rng_lock();
    let base = f1();
    let mut table: Vec<Row> = vec![];

    // ---- control: the unmutated model passes every check the mutants are caught by.
    let ctl_audit = audit::run(&base, &audit::AuditOptions::from_config(&base.cfg));
    let ctl_local = local::run(&base, &local::LocalOptions::from_config(&base.cfg));
    let ctl_gdu = gdu::run(&base, &gdu_opts(&base));
    let ctl_bias = bias::run(&base, &bias_opts(&base)).unwrap();
    let ctl_conv = converge::run(&base, &conv_opts(&base));
    for (name, rep) in [("audit", &ctl_audit), ("local", &ctl_local), ("gdu", &ctl_gdu), ("bias", &ctl_bias), ("converge", &ctl_conv)] {
        assert_eq!(rep.overall, Verdict::Pass, "control {name} must pass: {:?}", failing(rep));
    }
    // The standard Dense through the mutant path (no mode) is exactly the production Dense: sanity of the harness.
    let (ok_c, best_c, slope_c) = bias_harness(&base, 1.0, centered, 2.0);
    let (ok_p, best_p, slope_p) = bias_harness(&base, 1.0, plus, 1.0);
    assert!(ok_c && ok_p, "control estimators: centered ({best_c:.2e}, {slope_c:.3}), plus ({best_p:.2e}, {slope_p:.3})");
    let (ok_g, wp, wn) = gdu_harness(&base, no_mutation);
    assert!(ok_g, "control gdu harness: {wp:.2e} {wn:.2e}");

    // ---- model mutants through the real checks.
    tch::manual_seed(epcheck::tensor_util::test_seed(7));
    let r = Tensor::randn([5, 5], (Kind::Double, tch::Device::Cpu)) / 5f64.sqrt();
    for (id, what, mode) in [
        ("M6", "transposed coupling: top-down drive uses W instead of Wᵀ (synapses.1, 5×5)", Mode::Transposed),
        ("M7", "asymmetric coupling: top-down drive uses (W + 0.1R)ᵀ (synapses.1)", Mode::Asym(to_vec_f64(&r), vec![5, 5])),
    ] {
        let inst = with_model(mutant(&base, mode));
        let a = audit::run(&inst, &audit::AuditOptions::from_config(&inst.cfg));
        let g = gdu::run(&inst, &gdu_opts(&inst));
        let bi = bias::run(&inst, &bias_opts(&inst)).unwrap();
        let fa = failing(&a);
        assert!(fa.iter().any(|f| f == "layer_pair:A3:L1,L2"), "{id}: audit must name the block (L1, L2): {fa:?}");
        assert!(fa.iter().any(|f| f == "layer:A1:L1"), "{id}: audit A1 must name L1: {fa:?}");
        let asym = a.metrics.iter().find(|r| r.name == "A3:L1,L2").unwrap().value;
        assert!(asym > 1e-3, "{id}: asym {asym}");
        let mut caught = vec![format!("audit ({})", fa.join(", "))];
        for (name, rep) in [("gdu", &g), ("bias", &bi)] {
            if matches!(rep.overall, Verdict::Fail(_)) {
                caught.push(format!("{name} ({} scopes)", failing(rep).len()));
            }
        }
        assert!(matches!(g.overall, Verdict::Fail(_)), "{id}: gdu must fail");
        table.push(Row { id, what, caught_by: caught, signature: format!("A3 asym(L1,L2) = {asym:.2e}") });
    }
    let b = base.batch.size() as f64;
    for (id, what, mode, complex_only) in [
        ("M9", "batch sum instead of batch mean in the local form (synapses.1.weight)", Mode::BatchSum(b), false),
        ("M11", "missing conjugation: the local form is conjugated on complex states", Mode::Conj, true),
        ("M12", "real (not complex) local form: only the real part on complex states", Mode::RealPart, true),
    ] {
        let inst = with_model(mutant(&base, mode));
        let l = local::run(&inst, &local::LocalOptions::from_config(&inst.cfg));
        let fl = failing(&l);
        assert!(fl.iter().any(|f| f == "tensor:synapses.1.weight"), "{id}: local must fail on synapses.1.weight: {fl:?}");
        let worst = |pred: &dyn Fn(&str) -> bool| l.metrics.iter().filter(|r| r.metric == "rel_linf" && r.name == "synapses.1.weight" && r.phase.as_deref().is_some_and(|p| pred(p))).map(|r| r.value).fold(0.0, f64::max);
        let (real, cplx) = (worst(&|p: &str| !p.starts_with("complex")), worst(&|p: &str| p.starts_with("complex")));
        if complex_only {
            assert!(real <= 1e-11 && cplx > 1e-2, "{id}: real states pass, complex fail: {real:.2e} {cplx:.2e}");
        } else {
            assert!((real - (b - 1.0)).abs() < 1e-9, "{id}: rel_linf = B − 1 = {}: {real}", b - 1.0);
        }
        table.push(Row { id, what, caught_by: vec![format!("local ({})", fl.join(", "))], signature: format!("rel_linf real {real:.2e}, complex {cplx:.2e}") });
    }

    // ---- estimator mutants (library phases, bias consistency + slope fit against implicit).
    fn m1(f0: &[Tensor], fp: &[Tensor], fm: &[Tensor], b: f64) -> Vec<Tensor> {
        centered(f0, fp, fm, b).into_iter().map(|t| -t).collect()
    }
    fn m2(_f0: &[Tensor], fp: &[Tensor], fm: &[Tensor], _b: f64) -> Vec<Tensor> {
        fp.iter().zip(fm).map(|(p, m)| (p - m) * -0.5).collect()
    }
    fn m3(_f0: &[Tensor], fp: &[Tensor], fm: &[Tensor], b: f64) -> Vec<Tensor> {
        fp.iter().zip(fm).map(|(p, m)| (p - m) * (-1.0 / b)).collect()
    }
    let est_mutants: [(&str, &str, f64, Assemble, f64); 6] = [
        ("M1", "estimator sign flipped (ep_centered)", 1.0, m1, 2.0),
        ("M2", "missing 1/β (ep_centered)", 1.0, m2, 2.0),
        ("M3", "centered divides by β instead of 2β", 1.0, m3, 2.0),
        ("M4", "nudge not applied (β dropped from the drive; ep_centered)", 0.0, centered, 2.0),
        ("M5", "nudge sign flipped inside the drive (ep_plus)", -1.0, plus, 1.0),
        ("M10", "ep_centered silently returns ep_plus", 1.0, plus, 2.0),
    ];
    for (id, what, nudge, f, pe) in est_mutants {
        let (ok, best, slope) = bias_harness(&base, nudge, f, pe);
        assert!(!ok, "{id} not caught: err_best {best:.3e}, slope {slope:.3}");
        let why = if best > 1e-3 { format!("err_best = {best:.3e} > 1e-3") } else { format!("slope {slope:.3}, expected {pe}") };
        table.push(Row { id, what, caught_by: vec![format!("bias harness ({why})")], signature: format!("err_best {best:.2e}, slope {slope:.2}") });
    }
    // M10: the single-β consistency criterion alone does not catch it (the point of the test).
    let (_, best10, _) = bias_harness(&base, 1.0, plus, 2.0);
    assert!(best10 <= 1e-3, "M10: consistency passes, the slope catches it ({best10:.2e})");

    // ---- series mutants (library GDU series, gdu thresholds).
    fn m13(_: &Model, _: &[Tensor], _: &Batch, g: &mut gdu::GduSeries) {
        let z: Vec<Tensor> = g.bptt_theta[0].iter().map(|t| t.zeros_like()).collect();
        g.bptt_theta.remove(0);
        g.bptt_theta.push(z);
    }
    fn m17(_: &Model, _: &[Tensor], _: &Batch, g: &mut gdu::GduSeries) {
        let beta = 1e-3;
        g.plus.neurons = g.plus.neurons.iter().map(|st| st.iter().map(|t| t * beta).collect()).collect();
    }
    fn m8a(_: &Model, _: &[Tensor], _: &Batch, g: &mut gdu::GduSeries) {
        g.bptt_j = g.bptt_s.iter().map(|st| st.iter().map(|t| t.shallow_clone()).collect()).collect();
    }
    fn m8b(m: &Model, _: &[Tensor], batch: &Batch, g: &mut gdu::GduSeries) {
        let s_t = &g.traj[g.k];
        g.bptt_j = g.bptt_s.iter().map(|st| st.iter().enumerate().map(|(j, x)| m.jacobian_apply(j, batch, &s_t[j], x)).collect()).collect();
    }
    let series_mutants: [(&str, &str, fn(&Model, &[Tensor], &Batch, &mut gdu::GduSeries)); 4] = [
        ("M13", "BPTT per-step series shifted by one step", m13),
        ("M17", "EP neuron increment not divided by β", m17),
        ("M8a", "neurons compared with raw BPTT_s instead of J·BPTT_s", m8a),
        ("M8b", "J evaluated as σ′ at the state s instead of the drive u", m8b),
    ];
    for (id, what, f) in series_mutants {
        let (ok, wp, wn) = gdu_harness(&base, f);
        assert!(!ok, "{id} not caught: parameters {wp:.2e}, neurons {wn:.2e}");
        if id != "M13" {
            assert!(wp <= 1e-2, "{id}: parameter scopes must still pass ({wp:.2e})");
        }
        table.push(Row { id, what, caught_by: vec![format!("gdu harness (max rel_l2: params {wp:.2e}, neurons {wn:.2e} > 1e-2)")], signature: format!("{:.2e}", wp.max(wn)) });
    }

    // ---- M16: free phase too short, through the real converge and gdu.
    let mut short = f1();
    short.cfg.t_free = 3;
    short.cfg.k_nudge = 3;
    short.cfg.checks.gdu.extend_free = false;
    let c = converge::run(&short, &conv_opts(&short));
    let g = gdu::run(&short, &gdu_opts(&short));
    assert!(matches!(c.overall, Verdict::Fail(_)), "M16: converge must fail");
    assert!(!matches!(g.overall, Verdict::Pass), "M16: gdu must not pass: {}", g.overall.display());
    let nonconv = c.metrics.iter().find(|r| r.metric == "nonconverged_count" && r.phase.as_deref() == Some("free")).unwrap().value;
    assert_eq!(nonconv, b, "M16 signature: nonconverged_count = B");
    table.push(Row { id: "M16", what: "free phase too short (T = 3, no extension)", caught_by: vec![format!("converge (fail), gdu ({})", g.overall.display())], signature: format!("nonconverged_count = {nonconv}") });

    println!("\n| mutant | mutation | caught by | signature |\n|---|---|---|---|");
    for r in &table {
        println!("| {} | {} | {} | {} |", r.id, r.what, r.caught_by.join("; "), r.signature);
    }
    assert!(table.iter().all(|r| !r.caught_by.is_empty()));
    assert_eq!(table.len(), 16);
}

fn conv_opts(inst: &Instance) -> converge::ConvergeOptions {
    let cfg = &inst.cfg;
    converge::ConvergeOptions {
        t_free: cfg.t_free,
        k_nudge: cfg.k_nudge,
        beta: cfg.beta,
        tol: cfg.converge_tol(),
        power_iters: 20,
        require_contraction: false,
        phases: vec![],
        seed: cfg.seed,
    }
}
