//! `gdu` (checks §3, estimators §5): EP per-step updates vs BPTT per-step gradients. The BPTT series come out
//! of ONE reverse sweep of K step VJPs (O(K)), the EP series out of one forward sweep per sign.
use super::metrics as mx;
use super::{kinks, largest_elements, CheckReport, Rows, Verdict};
use crate::adjoint::reverse_sweep;
use crate::estimators::{ep_centered, ep_one_sided, PhaseLengths};
use crate::instance::Instance;
use crate::model::schedule::ScheduleKind;
use crate::model::{detach_state, Batch, Model, State};
use crate::relax::{relax, state_distance, RelaxOptions};
use crate::tensor_util::{norm2, to_vec_f64};
use serde_json::json;
use tch::{Kind, Tensor};

#[derive(Clone, Debug)]
pub struct GduOptions {
    pub t_free: i64,
    pub k: i64,
    pub beta: f64,
    /// `theorem` (scored) or `replay` (info).
    pub theorem: bool,
    pub extend_free: bool,
    pub stat_tol: f64,
    pub max_iter: i64,
    pub bias_const: f64,
    pub lab_const: f64,
    pub sign_floor: Option<f64>,
    pub sign_err_max: f64,
    pub n_elem: usize,
    pub plot_seed: u64,
    pub verify_quadratic: bool,
    /// Keep the K-step series for `--dump` (otherwise no K×P buffer is built).
    pub dump: bool,
}

impl GduOptions {
    /// Theorem-mode options with the defaults of checks §12 (f64 tolerance 1e-10).
    pub fn theorem(t_free: i64, k: i64, beta: f64) -> Self {
        let d = crate::config::GduConfig::default();
        GduOptions {
            t_free,
            k,
            beta,
            theorem: true,
            extend_free: d.extend_free,
            stat_tol: 1e-10,
            max_iter: d.max_iter,
            bias_const: d.bias_const,
            lab_const: d.lab_const,
            sign_floor: d.sign_floor,
            sign_err_max: d.sign_err_max,
            n_elem: d.n_elem,
            plot_seed: 0,
            verify_quadratic: d.verify_quadratic,
            dump: false,
        }
    }

    /// Replay mode: exactly T free iterations, verdicts `info`.
    pub fn replay(t_free: i64, k: i64, beta: f64) -> Self {
        GduOptions { theorem: false, extend_free: false, ..Self::theorem(t_free, k, beta) }
    }

    /// From a resolved configuration; theorem mode uses `beta` (checks.gdu.beta unless given), replay the
    /// preset β.
    pub fn from_config(cfg: &crate::config::RunConfig, beta: f64) -> Self {
        let g = &cfg.checks.gdu;
        GduOptions {
            t_free: cfg.t_free,
            k: cfg.k_nudge,
            beta,
            theorem: g.mode == "theorem",
            extend_free: g.extend_free,
            stat_tol: cfg.converge_tol(),
            max_iter: g.max_iter,
            bias_const: g.bias_const,
            lab_const: g.lab_const,
            sign_floor: g.sign_floor,
            sign_err_max: g.sign_err_max,
            n_elem: g.n_elem,
            plot_seed: cfg.checks.plot_seed,
            verify_quadratic: g.verify_quadratic,
            dump: false,
        }
    }
}

/// EP series of one sign: per step, per parameter / per layer.
pub struct EpSeries {
    pub theta: Vec<Vec<Tensor>>,
    pub neurons: Vec<State>,
    /// Regime changes per layer vs s^0 and between consecutive nudged states, summed over the K steps.
    pub kink_changes: i64,
    /// max ‖f‖ over the nudged states, per parameter (for floor_rel).
    pub f_norm: Vec<f64>,
}

/// Every series of the GDU check.
pub struct GduSeries {
    pub k: usize,
    /// Free-phase iterations actually run (T, or the extended T).
    pub t_run: i64,
    /// s_{T−K} … s_T.
    pub traj: Vec<State>,
    /// r_∞ at s_{T−K}.
    pub residual_tk: f64,
    pub bptt_theta: Vec<Vec<Tensor>>,
    pub bptt_s: Vec<State>,
    pub bptt_j: Vec<State>,
    pub plus: EpSeries,
    pub minus: EpSeries,
    /// f(s⁰_K) − f(s^0): the drift of the free phase over K further iterations.
    pub drift: Vec<Tensor>,
    pub f0_norm: Vec<f64>,
}

/// Runs the free phase of the check: exactly T (replay), or T then until r_∞ ≤ stat_tol, then K more
/// (theorem mode with `extend_free`). Returns the last K + 1 states and the iterations run.
pub fn free_phase(m: &Model, p: &[Tensor], batch: &Batch, init: State, o: &GduOptions) -> (Vec<State>, i64) {
    if o.theorem && o.extend_free {
        let a = relax(m, p, batch, &init, 0.0, &RelaxOptions::fixed(o.t_free));
        // Extend until the state itself is stationary: its residual r_∞ = max|step(s) − s| ≤ stat_tol.
        let (s, ext, _, _) = crate::relax::relax_until_stationary(m, p, batch, &a.state, 0.0, o.stat_tol, (o.max_iter - o.t_free - o.k).max(0));
        let n = a.iters + ext;
        let last = relax(m, p, batch, &s, 0.0, &RelaxOptions { iters: o.k, record: true, ..Default::default() });
        (last.traj.unwrap(), n + last.iters)
    } else {
        let skip = relax(m, p, batch, &init, 0.0, &RelaxOptions::fixed(o.t_free - o.k));
        let last = relax(m, p, batch, &skip.state, 0.0, &RelaxOptions { iters: o.k, record: true, ..Default::default() });
        (last.traj.unwrap(), skip.iters + last.iters)
    }
}

/// EP series of one sign from s_T: EP_θ[t] = −(f(s_{t+1}) − f(s_t))/β_signed, EP_s[t] = (s_{t+1} − s_t)/β_signed.
pub fn ep_series(m: &Model, p: &[Tensor], batch: &Batch, s_t: &State, beta_signed: f64, k: usize) -> EpSeries {
    tch::no_grad(|| {
        let r0 = kinks::regimes(m, p, batch, s_t, 0.0);
        let mut s = s_t.iter().map(|t| t.shallow_clone()).collect::<State>();
        let mut f_prev = m.param_derivative(p, batch, &s);
        let mut f_norm: Vec<f64> = f_prev.iter().map(norm2).collect();
        let mut r_prev = r0.iter().map(|r| r.as_ref().map(|t| t.shallow_clone())).collect::<Vec<_>>();
        let (mut theta, mut neurons, mut kink_changes) = (Vec::new(), Vec::new(), 0);
        for _ in 0..k {
            let next = m.step(p, batch, &s, beta_signed);
            let f = m.param_derivative_nudged(p, batch, &next, (beta_signed, 0.0));
            theta.push(f.iter().zip(&f_prev).map(|(a, b)| (a - b) / (-beta_signed)).collect());
            neurons.push(next.iter().zip(&s).map(|(a, b)| (a - b) / beta_signed).collect());
            let r = kinks::regimes(m, p, batch, &next, beta_signed);
            kink_changes += kinks::changes(&r0, &r).iter().sum::<i64>() + kinks::changes(&r_prev, &r).iter().sum::<i64>();
            for (n, fi) in f_norm.iter_mut().zip(&f) {
                *n = n.max(norm2(fi));
            }
            r_prev = r;
            f_prev = f;
            s = next;
        }
        EpSeries { theta, neurons, kink_changes, f_norm }
    })
}

pub fn compute_series(m: &Model, p: &[Tensor], batch: &Batch, init: State, o: &GduOptions) -> GduSeries {
    let k = o.k as usize;
    let (traj, t_run) = free_phase(m, p, batch, init, o);
    let s_t = traj[k].iter().map(|t| t.shallow_clone()).collect::<State>();
    let residual_tk = state_distance(&traj[1], &traj[0]).max().to_kind(Kind::Double).double_value(&[]);
    // One reverse sweep: λ ← ∂L/∂s_T; BPTT_s[t] = −B·λ_{T−t}; BPTT_θ[t] = the VJP of transition T−t−1 → T−t.
    let lambda = m.loss_state_grad(p, batch, &s_t);
    let mut sw = reverse_sweep(m, p, batch, &traj, lambda, k, true, false);
    // A θ-dependent loss (readout): its explicit term is BPTT_θ[0]'s (estimators §5.1).
    if let (Some(e), Some(first)) = (m.loss_param_grad(p, batch, &s_t), sw.per_step_theta.first_mut()) {
        *first = first.iter().zip(e).map(|(a, e)| a + e).collect();
    }
    let b = batch.size() as f64;
    let bptt_s: Vec<State> = sw.per_step_lambda.iter().map(|l| l.iter().map(|x| x * (-b)).collect()).collect();
    let bptt_j: Vec<State> = tch::no_grad(|| {
        let drives: Vec<Tensor> = (0..m.layers.len()).map(|j| m.drive(p, batch, &s_t, j, 0.0)).collect();
        bptt_s.iter().map(|st| st.iter().enumerate().map(|(j, x)| m.jacobian_apply(j, batch, &drives[j], x)).collect()).collect()
    });
    let plus = ep_series(m, p, batch, &s_t, o.beta, k);
    let minus = ep_series(m, p, batch, &s_t, -o.beta, k);
    let (drift, f0_norm) = tch::no_grad(|| {
        let cont = relax(m, p, batch, &s_t, 0.0, &RelaxOptions::fixed(o.k));
        let f0 = m.param_derivative(p, batch, &s_t);
        let fk = m.param_derivative(p, batch, &cont.state);
        (fk.iter().zip(&f0).map(|(a, b)| a - b).collect(), f0.iter().map(norm2).collect())
    });
    GduSeries { k, t_run, traj, residual_tk, bptt_theta: sw.per_step_theta, bptt_s, bptt_j, plus, minus, drift, f0_norm }
}

/// The published O(K²) definition (Laborieux `check_gdu`): for K′ = 1…K, backpropagate L through the last K′
/// steps only; consecutive differences of these partial sums are the per-step contributions (t = 0 = last).
pub fn published_series(m: &Model, p: &[Tensor], batch: &Batch, traj: &[State]) -> Vec<Vec<Tensor>> {
    let k = traj.len() - 1;
    let mut partial: Vec<Vec<Tensor>> = vec![p.iter().map(|t| t.zeros_like()).collect()];
    for kp in 1..=k {
        let pl: Vec<Tensor> = p.iter().map(|t| t.detach().set_requires_grad(true)).collect();
        let mut s = detach_state(&traj[k - kp]);
        for _ in 0..kp {
            s = m.step(&pl, batch, &s, 0.0);
        }
        let loss = m.mean_loss(&pl, batch, &s);
        let refs: Vec<&Tensor> = pl.iter().collect();
        partial.push(crate::tensor_util::grads_or_zeros(&loss, &refs));
    }
    (0..k).map(|t| partial[t + 1].iter().zip(&partial[t]).map(|(a, b)| a - b).collect()).collect()
}

/// Truncated BPTT by an independent autograd backward through the stored last K steps (identity I1).
fn bptt_trunc_autograd(m: &Model, p: &[Tensor], batch: &Batch, traj: &[State]) -> Vec<Tensor> {
    let pl: Vec<Tensor> = p.iter().map(|t| t.detach().set_requires_grad(true)).collect();
    let mut s = detach_state(&traj[0]);
    for _ in 1..traj.len() {
        s = m.step(&pl, batch, &s, 0.0);
    }
    let refs: Vec<&Tensor> = pl.iter().collect();
    crate::tensor_util::grads_or_zeros(&m.mean_loss(&pl, batch, &s), &refs)
}

// ---------------------------------------------------------------------------------------------------------
// The streaming check: every metric is a running reduction on the device, updated as the reverse sweep and
// the ±β phases produce step t (both produce t = 0 first: the last transition, the first nudged step). No
// K×P series exists unless `--dump` asks for it; the host keeps per-step scalars and the sampled elements.

fn avg(a: &[Tensor], b: &[Tensor]) -> Vec<Tensor> {
    a.iter().zip(b).map(|(x, y)| (x + y) * 0.5).collect()
}

fn f64flat(t: &Tensor) -> Tensor {
    t.detach().to_kind(Kind::Double).reshape([-1])
}

fn scalar(t: &Tensor) -> f64 {
    crate::tensor_util::scalar_f64(t)
}

fn dzero(like: &Tensor) -> Tensor {
    Tensor::zeros([], (Kind::Double, like.device()))
}

/// The sampled elements of one reference (checks §0.6) and their values, gathered step by step.
struct Sampled {
    elems: Vec<usize>,
    idx: Option<Tensor>,
    steps: Vec<Tensor>,
}

impl Sampled {
    /// The `n` elements with the largest max_t |reference| (figures show the signal, not structural zeros).
    fn new(score: &Tensor, n: usize) -> Self {
        let elems = largest_elements(&to_vec_f64(score), n);
        let nz = score;
        let idx = (!elems.is_empty()).then(|| Tensor::from_slice(&elems.iter().map(|&e| e as i64).collect::<Vec<_>>()).to_device(nz.device()));
        Sampled { elems, idx, steps: vec![] }
    }
    fn push(&mut self, x: &Tensor) {
        if let Some(i) = &self.idx {
            self.steps.push(x.index_select(0, i));
        }
    }
    /// Host values, [t][sample].
    fn values(&self) -> Vec<Vec<f64>> {
        if self.steps.is_empty() {
            return vec![];
        }
        let all = to_vec_f64(&Tensor::stack(&self.steps, 0));
        all.chunks(self.elems.len()).map(|c| c.to_vec()).collect()
    }
}

/// Running sums of one reference series (BPTT per parameter, or J·BPTT_s per layer), float64.
struct RefAcc {
    e: i64,
    /// max |r| over all steps and elements (from the first sweep).
    rmax: f64,
    nz: Tensor,
    sr2: Tensor,
    step_r2: Vec<Tensor>,
    /// (R_t running cumulative sum, Σ_t R_t²) for the cumulative forms.
    cum: Option<(Tensor, Tensor)>,
    abs: Option<Tensor>,
}

impl RefAcc {
    fn new(like: &Tensor, rmax: f64, nz: Tensor, cum: bool) -> Self {
        let z = Tensor::zeros([like.numel() as i64], (Kind::Double, like.device()));
        RefAcc { e: like.numel() as i64, rmax, nz, sr2: z.zeros_like(), step_r2: vec![], cum: cum.then(|| (z.zeros_like(), z.zeros_like())), abs: None }
    }
    fn update(&mut self, r: &Tensor) {
        let r2 = r.square();
        self.step_r2.push(r2.sum(Kind::Double));
        let _ = self.sr2.g_add_(&r2);
        if let Some((c, s)) = &mut self.cum {
            let _ = c.g_add_(r);
            let _ = s.addcmul_(c, c);
        }
        self.abs = Some(r.abs());
    }
}

/// Running sums of one (series, reference) pair, float64.
struct PairAcc {
    /// τ·max|r|: the significance threshold of sign_err_sig.
    sig_thr: f64,
    sa2: Tensor,
    sd2: Tensor,
    nz_a: Tensor,
    step_d2: Vec<Tensor>,
    ar: Tensor,
    neg: Tensor,
    sig_n: Tensor,
    sig_bad: Tensor,
    /// (A_t running cumulative sum, Σ_t (A_t − R_t)², Σ_t A_t²).
    cum: Option<(Tensor, Tensor, Tensor)>,
}

impl PairAcc {
    fn new(rf: &RefAcc, tau: f64, like: &Tensor) -> Self {
        let z = Tensor::zeros([rf.e], (Kind::Double, like.device()));
        let zi = Tensor::zeros([], (Kind::Int64, like.device()));
        PairAcc {
            sig_thr: tau * rf.rmax,
            sa2: z.zeros_like(),
            sd2: z.zeros_like(),
            nz_a: Tensor::zeros([rf.e], (Kind::Bool, like.device())),
            step_d2: vec![],
            ar: dzero(like),
            neg: zi.zeros_like(),
            sig_n: zi.zeros_like(),
            sig_bad: zi.zeros_like(),
            cum: rf.cum.as_ref().map(|_| (z.zeros_like(), z.zeros_like(), z.zeros_like())),
        }
    }
    /// Step t of series `a` against the reference step `r` (both float64, flat); `rf` already holds step t.
    fn update(&mut self, a: &Tensor, r: &Tensor, rf: &RefAcc) {
        let d = a - r;
        let d2 = d.square();
        self.step_d2.push(d2.sum(Kind::Double));
        let _ = self.sd2.g_add_(&d2);
        let _ = self.sa2.addcmul_(a, a);
        let _ = self.nz_a.logical_or_(&a.ne(0.0));
        let _ = self.ar.g_add_(&r.dot(a));
        let opposite = (a * r).lt(0.0);
        let _ = self.neg.g_add_(&opposite.sum(Kind::Int64));
        let sig = rf.abs.as_ref().expect("reference step").gt(self.sig_thr);
        let _ = self.sig_n.g_add_(&sig.sum(Kind::Int64));
        let _ = self.sig_bad.g_add_(&opposite.logical_and(&sig).sum(Kind::Int64));
        if let (Some((c, dc2, c2)), Some((rc, _))) = (&mut self.cum, &rf.cum) {
            let _ = c.g_add_(a);
            let dc = &*c - rc;
            let _ = dc2.addcmul_(&dc, &dc);
            let _ = c2.addcmul_(c, c);
        }
    }
    fn stats(&self, rf: &RefAcc, k: usize) -> PairStats {
        let kf = k as f64;
        let e = rf.e as f64;
        let (sa2, sr2, sd2) = (&self.sa2, &rf.sr2, &self.sd2);
        // lab_rmse (checks §1.1).
        let m = (sa2 / kf).sqrt().maximum(&(sr2 / kf).sqrt());
        let guard = scalar(&m.lt(1e-8).sum(Kind::Int64)) / e.max(1.0);
        let both_zero = scalar(&self.nz_a.logical_or(&rf.nz).logical_not().sum(Kind::Int64)) as usize;
        let q = (sd2 / kf).sqrt() / (m + 1e-10);
        let (lab, lab_std) = mean_std_dev(&q);
        let (ern_m, ern_s) = ern_dev(sd2, sa2, sr2);
        let (na2, nr2, nd2, ar) = (scalar(&sa2.sum(Kind::Double)), scalar(&sr2.sum(Kind::Double)), scalar(&sd2.sum(Kind::Double)), scalar(&self.ar));
        let rel = mx::ratio(nd2.sqrt(), nr2.sqrt());
        let cos = cos_of_sums(na2, nr2, ar);
        let sign_err = scalar(&self.neg) / (kf * e).max(1.0);
        let n = scalar(&self.sig_n);
        let sig = if n == 0.0 { f64::NAN } else { scalar(&self.sig_bad) / n };
        let cum = match (&self.cum, &rf.cum) {
            (Some((c, dc2, c2)), Some((rc, rc2))) => {
                let (em, es) = ern_dev(dc2, c2, rc2);
                let same = scalar(&(c * rc).gt(0.0).sum(Kind::Int64)) / e.max(1.0);
                let zero = scalar(&c.eq(0.0).logical_and(&rc.eq(0.0)).sum(Kind::Int64)) / e.max(1.0);
                Some((em, es, same, zero))
            }
            _ => None,
        };
        let d2 = to_vec_f64(&Tensor::stack(&self.step_d2, 0));
        let r2 = to_vec_f64(&Tensor::stack(&rf.step_r2, 0));
        let step_rel = d2.iter().zip(&r2).map(|(d, r)| mx::ratio(d.sqrt(), r.sqrt())).collect();
        PairStats { rel, lab, lab_std, guard, both_zero, sign_err, sig, ern_m, ern_s, cos, cum, step_rel, rn: nr2.sqrt() }
    }
}

/// Scalar running sums of a (series, reference) pair scored by rel_l2 and cos only (the raw BPTT_s rows).
struct ScalarPair {
    a2: Tensor,
    r2: Tensor,
    d2: Tensor,
    ar: Tensor,
}

impl ScalarPair {
    fn new(like: &Tensor) -> Self {
        ScalarPair { a2: dzero(like), r2: dzero(like), d2: dzero(like), ar: dzero(like) }
    }
    fn update(&mut self, a: &Tensor, r: &Tensor) {
        let d = a - r;
        let _ = self.a2.g_add_(&a.dot(a));
        let _ = self.r2.g_add_(&r.dot(r));
        let _ = self.d2.g_add_(&d.dot(&d));
        let _ = self.ar.g_add_(&r.dot(a));
    }
    fn rel_cos(&self) -> (f64, f64) {
        let (a2, r2, d2, ar) = (scalar(&self.a2), scalar(&self.r2), scalar(&self.d2), scalar(&self.ar));
        (mx::ratio(d2.sqrt(), r2.sqrt()), cos_of_sums(a2, r2, ar))
    }
}

/// cos = 1 − ½‖a/‖a‖ − r/‖r‖‖² (checks §1.4) = Σa·r / (‖a‖‖r‖) from Σa², Σr², Σa·r (1 when both are zero,
/// 0 when one is).
fn cos_of_sums(a2: f64, r2: f64, ar: f64) -> f64 {
    let (na, nr) = (a2.sqrt(), r2.sqrt());
    match (na == 0.0, nr == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => ar / na / nr,
    }
}

/// (mean, population std) of a float64 vector on the device (NaN, NaN when empty).
fn mean_std_dev(q: &Tensor) -> (f64, f64) {
    let n = q.numel() as f64;
    if n == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let m = scalar(&q.sum(Kind::Double)) / n;
    let var = scalar(&(q - m).square().sum(Kind::Double)) / n;
    (m, var.sqrt())
}

/// `ern_rel` (checks §1.2) from per-element Σ(a−r)², Σa², Σr².
fn ern_dev(sd2: &Tensor, sa2: &Tensor, sr2: &Tensor) -> (f64, f64) {
    let m = sa2.maximum(sr2);
    let q = (sd2 / &m).sqrt().masked_fill(&m.eq(0.0), 0.0);
    mean_std_dev(&q)
}

/// The metric values of one (series, reference) pair (checks §3).
#[derive(Clone, Debug)]
struct PairStats {
    rel: f64,
    lab: f64,
    lab_std: f64,
    guard: f64,
    both_zero: usize,
    sign_err: f64,
    sig: f64,
    ern_m: f64,
    ern_s: f64,
    cos: f64,
    /// Cumulative forms (parameter tensors): ern_rel mean/std, same_sign_frac, both_zero_frac.
    cum: Option<(f64, f64, f64, f64)>,
    step_rel: Vec<f64>,
    /// ‖r‖ over all steps.
    rn: f64,
}

/// Results of the streamed computation.
struct Streamed {
    t_run: i64,
    traj: Vec<State>,
    residual_tk: f64,
    diverged: Option<usize>,
    /// [series][param], [series][layer] (series: ep_plus, ep_minus, ep_sym).
    theta: Vec<Vec<PairStats>>,
    neurons: Vec<Vec<PairStats>>,
    raw: Vec<Vec<(f64, f64)>>,
    kinks: [i64; 2],
    f_norm_max: Vec<f64>,
    drift_norm: Vec<f64>,
    smax: Vec<f64>,
    /// Totals Σ_t (float64) of bptt, ep_plus, ep_minus, ep_sym, per parameter (identities).
    totals: [Vec<Tensor>; 4],
    /// max|one-sweep − published| and max|published| over all steps (`--verify-quadratic`).
    quadratic: Option<(f64, f64)>,
    /// Cumulative totals per parameter of ep_plus, ep_minus, bptt (sym_ratio), float64 flat.
    sym_totals: Vec<Option<[Tensor; 3]>>,
    samples_theta: Vec<(Vec<usize>, Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<Vec<f64>>)>,
    #[allow(clippy::type_complexity)]
    samples_neurons: Vec<(Vec<usize>, Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<Vec<f64>>)>,
    dump: Vec<(String, Tensor)>,
}

fn stream(m: &Model, p: &[Tensor], batch: &Batch, init: State, o: &GduOptions, taus: [f64; 3]) -> Streamed {
    let k = o.k as usize;
    let (traj, t_run) = free_phase(m, p, batch, init, o);
    let residual_tk = state_distance(&traj[1], &traj[0]).max().to_kind(Kind::Double).double_value(&[]);
    let diverged = (0..m.layers.len()).find(|&j| traj.iter().any(|s| !crate::tensor_util::all_finite(&s[j])));
    let mut out = Streamed {
        t_run,
        traj,
        residual_tk,
        diverged,
        theta: vec![],
        neurons: vec![],
        raw: vec![],
        kinks: [0, 0],
        f_norm_max: vec![],
        drift_norm: vec![],
        smax: vec![],
        totals: Default::default(),
        quadratic: None,
        sym_totals: vec![],
        samples_theta: vec![],
        samples_neurons: vec![],
        dump: vec![],
    };
    if diverged.is_some() {
        return out;
    }
    let traj = &out.traj;
    let (np, nl) = (p.len(), m.layers.len());
    let s_t: State = traj[k].iter().map(|t| t.shallow_clone()).collect();
    let b = batch.size() as f64;
    let lambda0 = m.loss_state_grad(p, batch, &s_t);
    let explicit = m.loss_param_grad(p, batch, &s_t);
    let res = tch::no_grad(|| {
        let drives: Vec<Tensor> = (0..nl).map(|j| m.drive(p, batch, &s_t, j, 0.0)).collect();
        // One step of the reverse sweep: (BPTT_s[t], J·BPTT_s[t], BPTT_θ[t], λ_{T−t−1}).
        let bptt_step = |lambda: &State, t: usize| -> (State, State, Vec<Tensor>, State) {
            let bs: State = lambda.iter().map(|x| x * (-b)).collect();
            let bj: State = bs.iter().enumerate().map(|(j, x)| m.jacobian_apply(j, batch, &drives[j], x)).collect();
            let (a_s, mut a_theta) = m.step_vjp(p, batch, &traj[k - t - 1], lambda, 0.0);
            if let (0, Some(e)) = (t, &explicit) {
                // A θ-dependent loss (readout): its explicit term is BPTT_θ[0]'s (estimators §5.1).
                a_theta = a_theta.iter().zip(e).map(|(a, e)| a + e).collect();
            }
            (bs, bj, a_theta, a_s)
        };
        // First sweep: max|r| (the significance floor of sign_err_sig needs it before any step is scored) and
        // the nonzero masks (the sampled elements).
        let dev = s_t[0].device();
        let mut rmax_t: Vec<Tensor> = (0..np).map(|_| Tensor::zeros([], (Kind::Double, dev))).collect();
        let mut rmax_j: Vec<Tensor> = (0..nl).map(|_| Tensor::zeros([], (Kind::Double, dev))).collect();
        // Per-element max_t |r| (its nonzero pattern is the mask of checks §0.6; its size picks the plotted elements).
        let mut amax_t: Vec<Tensor> = p.iter().map(|x| Tensor::zeros([x.numel() as i64], (Kind::Double, dev))).collect();
        let mut amax_j: Vec<Tensor> = s_t.iter().map(|x| Tensor::zeros([x.numel() as i64], (Kind::Double, dev))).collect();
        // Work units: K first-sweep steps, K scored steps (each ≈ 2 step costs), the published re-runs (t + 1).
        let quad_units = if o.verify_quadratic { (k * (k + 1) / 2) as u64 } else { 0 };
        crate::progress::stage(3 * k as u64 + quad_units, &format!("gdu: first reverse sweep, step 1/{k}"));
        let mut lambda: State = lambda0.iter().map(|x| x.shallow_clone()).collect();
        for t in 0..k {
            crate::progress::advance(if t == 0 { 0 } else { 1 }, &format!("gdu: first reverse sweep, step {}/{k}", t + 1));
            let (_, bj, th, l) = bptt_step(&lambda, t);
            for i in 0..np {
                let r = f64flat(&th[i]);
                rmax_t[i] = rmax_t[i].maximum(&r.abs().max());
                amax_t[i] = amax_t[i].maximum(&r.abs());
            }
            for j in 0..nl {
                let r = f64flat(&bj[j]);
                rmax_j[j] = rmax_j[j].maximum(&r.abs().max());
                amax_j[j] = amax_j[j].maximum(&r.abs());
            }
            lambda = l;
        }
        let mut ref_t: Vec<RefAcc> = (0..np).map(|i| RefAcc::new(&p[i], scalar(&rmax_t[i]), amax_t[i].ne(0.0), true)).collect();
        let mut ref_j: Vec<RefAcc> = (0..nl).map(|j| RefAcc::new(&s_t[j], scalar(&rmax_j[j]), amax_j[j].ne(0.0), false)).collect();
        let mut pair_t: Vec<Vec<PairAcc>> = taus.iter().map(|&tau| (0..np).map(|i| PairAcc::new(&ref_t[i], tau, &p[i])).collect()).collect();
        let mut pair_j: Vec<Vec<PairAcc>> = taus.iter().map(|&tau| (0..nl).map(|j| PairAcc::new(&ref_j[j], tau, &s_t[j])).collect()).collect();
        let mut raw: Vec<Vec<ScalarPair>> = (0..3).map(|_| (0..nl).map(|_| ScalarPair::new(&s_t[0])).collect()).collect();
        // Sampled elements: reference, then ep_sym, ep_plus, ep_minus (neurons: J·BPTT_s, raw BPTT_s, then the same).
        let mut samp_t: Vec<[Sampled; 4]> = (0..np).map(|i| std::array::from_fn(|_| Sampled::new(&amax_t[i], o.n_elem))).collect();
        let mut samp_j: Vec<[Sampled; 5]> = (0..nl).map(|j| std::array::from_fn(|_| Sampled::new(&amax_j[j], o.n_elem))).collect();
        let mut totals: [Vec<Tensor>; 4] = std::array::from_fn(|_| p.iter().map(|x| Tensor::zeros([x.numel() as i64], (Kind::Double, dev))).collect());
        // The ±β phases from s_T (as ep_series).
        let r0 = kinks::regimes(m, p, batch, &s_t, 0.0);
        let betas = [o.beta, -o.beta];
        let mut s_ep: [State; 2] = std::array::from_fn(|_| s_t.iter().map(|t| t.shallow_clone()).collect());
        let f0 = m.param_derivative(p, batch, &s_t);
        let fnorm = |f: &Tensor| f.to_kind(Kind::Double).square().sum(Kind::Double).sqrt();
        let mut f_max: Vec<Tensor> = f0.iter().map(fnorm).collect();
        let mut f_prev: [Vec<Tensor>; 2] = std::array::from_fn(|_| f0.iter().map(|t| t.shallow_clone()).collect());
        let mut r_prev: [Vec<Option<Tensor>>; 2] = std::array::from_fn(|_| r0.iter().map(|r| r.as_ref().map(|t| t.shallow_clone())).collect());
        let mut kinks_n = [0i64; 2];
        let mut quad: Option<(Tensor, Tensor, Vec<Tensor>)> = o.verify_quadratic.then(|| (dzero(&s_t[0]), dzero(&s_t[0]), p.iter().map(|t| t.zeros_like()).collect()));
        // --dump: the series themselves, [bptt, ep_plus, ep_minus, ep_sym] × param and
        // [bptt, bptt_j, ep_plus, ep_minus, ep_sym] × layer.
        let mut dump_t: Vec<Vec<Vec<Tensor>>> = (0..if o.dump { 4 } else { 0 }).map(|_| (0..np).map(|_| vec![]).collect()).collect();
        let mut dump_j: Vec<Vec<Vec<Tensor>>> = (0..if o.dump { 5 } else { 0 }).map(|_| (0..nl).map(|_| vec![]).collect()).collect();
        let mut lambda: State = lambda0.iter().map(|x| x.shallow_clone()).collect();
        for t in 0..k {
            let prev_units = if t == 0 { 1 } else if o.verify_quadratic { 2 + t as u64 } else { 2 };
            crate::progress::advance(prev_units, &format!("gdu: step {}/{k}: reverse sweep, ±β phases, metrics{}", t + 1, if o.verify_quadratic { ", published re-run" } else { "" }));
            let (bs, bj, th, l) = bptt_step(&lambda, t);
            lambda = l;
            let mut ep_theta: Vec<Vec<Tensor>> = vec![];
            let mut ep_neur: Vec<State> = vec![];
            for sgn in 0..2 {
                let beta = betas[sgn];
                let next = m.step(p, batch, &s_ep[sgn], beta);
                let f = m.param_derivative_nudged(p, batch, &next, (beta, 0.0));
                ep_theta.push(f.iter().zip(&f_prev[sgn]).map(|(a, c)| (a - c) / (-beta)).collect());
                ep_neur.push(next.iter().zip(&s_ep[sgn]).map(|(a, c)| (a - c) / beta).collect());
                let r = kinks::regimes(m, p, batch, &next, beta);
                kinks_n[sgn] += kinks::changes(&r0, &r).iter().sum::<i64>() + kinks::changes(&r_prev[sgn], &r).iter().sum::<i64>();
                for (mx_, fi) in f_max.iter_mut().zip(&f) {
                    *mx_ = mx_.maximum(&fnorm(fi));
                }
                r_prev[sgn] = r;
                f_prev[sgn] = f;
                s_ep[sgn] = next;
            }
            let sym_theta: Vec<Tensor> = avg(&ep_theta[0], &ep_theta[1]);
            let sym_neur: State = avg(&ep_neur[0], &ep_neur[1]);
            for i in 0..np {
                let r = f64flat(&th[i]);
                ref_t[i].update(&r);
                let _ = totals[0][i].g_add_(&r);
                for (si, a) in [&ep_theta[0][i], &ep_theta[1][i], &sym_theta[i]].into_iter().enumerate() {
                    let a = f64flat(a);
                    pair_t[si][i].update(&a, &r, &ref_t[i]);
                    let _ = totals[si + 1][i].g_add_(&a);
                    samp_t[i][[2, 3, 1][si]].push(&a);
                }
                samp_t[i][0].push(&r);
            }
            for j in 0..nl {
                let (r, rw) = (f64flat(&bj[j]), f64flat(&bs[j]));
                ref_j[j].update(&r);
                for (si, a) in [&ep_neur[0][j], &ep_neur[1][j], &sym_neur[j]].into_iter().enumerate() {
                    let a = f64flat(a);
                    pair_j[si][j].update(&a, &r, &ref_j[j]);
                    raw[si][j].update(&a, &rw);
                    samp_j[j][[3, 4, 2][si]].push(&a);
                }
                samp_j[j][0].push(&r);
                samp_j[j][1].push(&rw);
            }
            if let Some((dmax, rmax, prev)) = &mut quad {
                // The published definition, step t: backpropagate L through the last t + 1 steps only.
                let part = tch::with_grad(|| {
                    let pl: Vec<Tensor> = p.iter().map(|x| x.detach().set_requires_grad(true)).collect();
                    let mut s = detach_state(&traj[k - t - 1]);
                    for _ in 0..=t {
                        s = m.step(&pl, batch, &s, 0.0);
                    }
                    let refs: Vec<&Tensor> = pl.iter().collect();
                    crate::tensor_util::grads_or_zeros(&m.mean_loss(&pl, batch, &s), &refs)
                });
                for i in 0..np {
                    let q = f64flat(&(&part[i] - &prev[i]));
                    *dmax = dmax.maximum(&(f64flat(&th[i]) - &q).abs().max());
                    *rmax = rmax.maximum(&q.abs().max());
                }
                *prev = part;
            }
            if o.dump {
                for i in 0..np {
                    for (d, x) in dump_t.iter_mut().zip([&th[i], &ep_theta[0][i], &ep_theta[1][i], &sym_theta[i]]) {
                        d[i].push(x.shallow_clone());
                    }
                }
                for j in 0..nl {
                    for (d, x) in dump_j.iter_mut().zip([&bs[j], &bj[j], &ep_neur[0][j], &ep_neur[1][j], &sym_neur[j]]) {
                        d[j].push(x.shallow_clone());
                    }
                }
            }
        }
        crate::progress::message("gdu: identities (truncated BPTT by autograd, EP estimates)");
        let theta: Vec<Vec<PairStats>> = pair_t.iter().map(|ps| ps.iter().zip(&ref_t).map(|(a, r)| a.stats(r, k)).collect()).collect();
        let neurons: Vec<Vec<PairStats>> = pair_j.iter().map(|ps| ps.iter().zip(&ref_j).map(|(a, r)| a.stats(r, k)).collect()).collect();
        let raw: Vec<Vec<(f64, f64)>> = raw.iter().map(|v| v.iter().map(ScalarPair::rel_cos).collect()).collect();
        let sym_totals = (0..np)
            .map(|i| match (&pair_t[0][i].cum, &pair_t[1][i].cum, &ref_t[i].cum) {
                (Some(a), Some(c), Some(r)) => Some([a.0.shallow_clone(), c.0.shallow_clone(), r.0.shallow_clone()]),
                _ => None,
            })
            .collect();
        // Drift of the free phase over K further iterations.
        let cont = relax(m, p, batch, &s_t, 0.0, &RelaxOptions::fixed(o.k));
        let fk = m.param_derivative(p, batch, &cont.state);
        let drift_norm: Vec<f64> = fk.iter().zip(&f0).map(|(a, c)| scalar(&fnorm(&(a - c)))).collect();
        let f_norm_max: Vec<f64> = f_max.iter().map(scalar).collect();
        let smax: Vec<f64> = (0..nl).map(|j| scalar(&Tensor::stack(&traj.iter().map(|s| fnorm(&s[j])).collect::<Vec<_>>(), 0).max())).collect();
        let quadratic = quad.map(|(d, r, _)| (scalar(&d), scalar(&r)));
        let samples_theta = samp_t.into_iter().map(|[r, a, pl, mi]| (r.elems.clone(), r.values(), a.values(), pl.values(), mi.values())).collect();
        let samples_neurons = samp_j.into_iter().map(|[r, w, a, pl, mi]| (r.elems.clone(), r.values(), w.values(), a.values(), pl.values(), mi.values())).collect();
        let stack = |v: &Vec<Tensor>| Tensor::stack(v, 0);
        let mut dump = vec![];
        if o.dump {
            for (i, spec) in m.params.iter().enumerate() {
                for (si, s) in ["bptt", "ep_plus", "ep_minus", "ep_sym"].iter().enumerate() {
                    // EP series carry their β (a dump reads back whatever β the run had).
                    let s = if si == 0 { s.to_string() } else { format!("{s}@{}", o.beta) };
                    dump.push((format!("gdu.{s}.{}", spec.name), stack(&dump_t[si][i])));
                }
            }
            for (j, l) in m.layers.iter().enumerate() {
                for (si, s) in ["bptt", "bptt_j", "ep_plus", "ep_minus", "ep_sym"].iter().enumerate() {
                    let s = if si < 2 { s.to_string() } else { format!("{s}@{}", o.beta) };
                    dump.push((format!("gdu.{s}.neurons.{}", l.name), stack(&dump_j[si][j])));
                }
            }
        }
        (theta, neurons, raw, kinks_n, f_norm_max, drift_norm, smax, totals, quadratic, sym_totals, samples_theta, samples_neurons, dump)
    });
    (
        out.theta,
        out.neurons,
        out.raw,
        out.kinks,
        out.f_norm_max,
        out.drift_norm,
        out.smax,
        out.totals,
        out.quadratic,
        out.sym_totals,
        out.samples_theta,
        out.samples_neurons,
        out.dump,
    ) = res;
    out
}

pub fn run(inst: &Instance, o: &GduOptions) -> CheckReport {
    let (m, p, batch) = (&inst.model, &inst.params[..], &inst.batch);
    let mut rows = Rows::new("gdu", &inst.id, &m.preset, inst.prec.dtype.name());
    let eps = inst.prec.dtype.eps();
    let iota = if inst.prec.dtype == crate::precision::Dtype::F64 { 1e-12 } else { 1e-5 };
    let zeros = m.zeros_state(batch.size(), inst.prec);
    let pws = [1.0, 1.0, 2.0];
    let taus = pws.map(|pw: f64| o.sign_floor.unwrap_or((1e-3f64).max(10.0 * o.bias_const * o.beta.powf(pw))));
    let g = stream(m, p, batch, zeros, o, taus);
    // Diverging dynamics: report an error verdict naming the first non-finite state, never NaN series.
    if let Some(k) = g.diverged {
        let l = &m.layers[k];
        let v = Verdict::Inconclusive(format!("not converged: the free phase diverged (non-finite state.free.{} within {} iterations)", l.name, g.t_run));
        rows.verdict("phase", "free", &v, json!({ "iters": g.t_run }));
        let rep = rows.finish(vec![format!("**{}**", v.display())], vec![]);
        let note = format!("gdu: the free phase diverged (non-finite state.free.{}); try a smaller init_scale or a contracting activation", l.name);
        return rep.with_digest("the free phase diverged: no series".into()).with_notes(vec![note]);
    }
    let k = o.k as usize;
    let sync = m.schedule.kind == ScheduleKind::Sync;
    let converged = g.residual_tk <= o.stat_tol;
    let series: [(&str, f64, i64); 3] = [("ep_plus", 1.0, g.kinks[0]), ("ep_minus", 1.0, g.kinks[1]), ("ep_sym", 2.0, g.kinks[0] + g.kinks[1])];
    let mut summary = vec![
        format!(
            "GDU, {} mode: β = {}, K = {}, free iterations run = {} (r_∞ at T−K = {:.3e}, stat_tol = {:.1e}), schedule {}",
            if o.theorem { "theorem" } else { "replay" },
            o.beta,
            k,
            g.t_run,
            g.residual_tk,
            o.stat_tol,
            m.schedule.key()
        ),
        String::new(),
        "| series | scope | name | rel_l2 | lab_rmse | sign_err_sig | threshold (rel_l2) | verdict |".into(),
        "|---|---|---|---|---|---|---|---|".into(),
    ];
    let f_norm_max = &g.f_norm_max;
    for (si, (sname, pw, kinks)) in series.into_iter().enumerate() {
        let thr = o.bias_const * o.beta.powf(pw);
        let thr_lab = o.lab_const * o.beta.powf(pw);
        let tau = taus[si];
        let precondition = |floor_rel: f64| -> Option<Verdict> {
            if !o.theorem {
                Some(Verdict::Info)
            } else if !sync {
                Some(Verdict::Inconclusive("schedule not sync".into()))
            } else if !converged {
                Some(Verdict::Inconclusive("not converged".into()))
            } else if kinks > 0 {
                Some(Verdict::Inconclusive("kink crossing".into()))
            } else if 10.0 * floor_rel > thr {
                Some(Verdict::Inconclusive("round-off floor".into()))
            } else {
                None
            }
        };
        // Parameter tensors.
        for (i, spec) in m.params.iter().enumerate() {
            let st = &g.theta[si][i];
            let floor_rel = mx::ratio(eps * f_norm_max[i], o.beta * st.rn);
            let drift_rel = mx::ratio(g.drift_norm[i], o.beta * st.rn);
            score(&mut rows, "tensor", &spec.name, sname, "bptt", st, o, thr, thr_lab, tau, floor_rel, drift_rel, precondition(floor_rel), &mut summary);
            if spec.shape.len() >= 2 && sname == "ep_sym" {
                let v = g.sym_totals[i].as_ref().map(|[e1, e2, eb]| sym_ratio_dev(e1, e2, eb)).unwrap_or(f64::NAN);
                let mut row = rows.row("tensor", &spec.name, "sym_ratio", v);
                row.series = Some(sname.into());
                row.series_form = Some("cum".into());
                rows.push(row);
            }
        }
        // Neuron layers, against J·BPTT_s (scored) and raw BPTT_s (info).
        for (j, l) in m.layers.iter().enumerate() {
            let st = &g.neurons[si][j];
            let floor_rel = mx::ratio(eps * g.smax[j], o.beta * st.rn);
            score(&mut rows, "neuron_layer", &l.name, sname, "bptt_j", st, o, thr, thr_lab, tau, floor_rel, f64::NAN, precondition(floor_rel), &mut summary);
            let (rel, cos) = g.raw[si][j];
            for (metric, value) in [("rel_l2", rel), ("cos", cos)] {
                let mut row = rows.row("neuron_layer", &l.name, metric, value);
                row.series = Some(sname.into());
                row.reference = Some("bptt_raw".into());
                row.series_form = Some("step".into());
                row.verdict = Some("info".into());
                rows.push(row);
            }
        }
    }
    // Identities I1–I3 (always scored).
    let trunc = bptt_trunc_autograd(m, p, batch, &g.traj);
    let s_t = &g.traj[k];
    let start = relax(m, p, batch, s_t, 0.0, &RelaxOptions::fixed(0));
    let len = PhaseLengths { t_free: 0, k_nudge: o.k, tol: None };
    let (ep_plus, _) = ep_one_sided::estimate(m, p, batch, &start, o.beta, len);
    let (ep_minus, _) = ep_one_sided::estimate(m, p, batch, &start, -o.beta, len);
    let (ep_c, _, _) = ep_centered::estimate(m, p, batch, &start, o.beta, len);
    let fmax = f_norm_max.iter().cloned().fold(0.0, f64::max);
    let flat_cat = |ts: &[Tensor]| Tensor::cat(&ts.iter().map(f64flat).collect::<Vec<_>>(), 0);
    let mut identity = |rows: &mut Rows, id: &str, name: &str, v: f64, scale: f64, ep: bool| {
        // The floor is relative to the larger of the two sides, so an all-zero reference gives a finite floor
        // (and 0 when both sides are exactly zero).
        let floor_rel = if ep && scale > 0.0 { mx::ratio(eps * fmax, o.beta * scale) } else { 0.0 };
        let thr = iota + 10.0 * k as f64 * floor_rel;
        let verdict = if super::within(v, thr) { Verdict::Pass } else { Verdict::Fail(format!("{id} rel_linf={v:.3e} > {thr:.3e}")) };
        let mut row = rows.row("identity", &format!("{id}:{name}"), "rel_linf", v);
        row.threshold = Some(thr);
        row.verdict = Some(verdict.label().into());
        rows.push(row);
        rows.verdict("identity", &format!("{id}:{name}"), &verdict, json!({ "rel_linf": v, "threshold": thr }));
        summary.push(format!("| identity | {id} | {name} | {v:.3e} (rel_linf) | | | {thr:.1e} | {} |", verdict.display()));
    };
    // rel_linf = max|a − r| / max|r| and the scale max(‖a‖, ‖r‖), on the device.
    let linf = |a: &Tensor, r: &Tensor| -> (f64, f64) {
        let v = mx::ratio(scalar(&(a - r).abs().max()), scalar(&r.abs().max()));
        (v, scalar(&r.dot(r)).sqrt().max(scalar(&a.dot(a)).sqrt()))
    };
    let ids: [(&str, &str, &Vec<Tensor>, &[Tensor], bool); 4] = [
        ("I1", "sum(bptt series) = bptt_trunc", &g.totals[0], &trunc, false),
        ("I2", "sum(ep_plus series) = ep_plus", &g.totals[1], &ep_plus.tensors, true),
        ("I3", "sum(ep_minus series) = ep_minus", &g.totals[2], &ep_minus.tensors, true),
        ("I4", "sum(ep_sym series) = ep_centered", &g.totals[3], &ep_c.tensors, true),
    ];
    for (id, name, a, r, ep) in ids {
        let (v, scale) = linf(&Tensor::cat(a, 0), &flat_cat(r));
        identity(&mut rows, id, name, v, scale, ep);
    }
    if let Some((dmax, qmax)) = g.quadratic {
        identity(&mut rows, "Q", "one-sweep = published K+1 re-run", mx::ratio(dmax, qmax), 0.0, false);
    }
    // Plotted elements: series rows (BPTT, EP⁺, EP⁻, EP_sym) for the n_elem elements with the largest BPTT
    // signal max_t |BPTT[t, e]| (ties by index), so a figure never shows structural zeros while a signal exists.
    for (i, spec) in m.params.iter().enumerate() {
        let (elems, r, a, pl, mi) = &g.samples_theta[i];
        for (n, &e) in elems.iter().enumerate() {
            for t in 0..k {
                rows.series_row("bptt", "param", &spec.name, e as i64, t as i64, r[t][n]);
                rows.series_row("ep_plus", "param", &spec.name, e as i64, t as i64, pl[t][n]);
                rows.series_row("ep_minus", "param", &spec.name, e as i64, t as i64, mi[t][n]);
                rows.series_row("ep_sym", "param", &spec.name, e as i64, t as i64, a[t][n]);
            }
        }
    }
    for (j, l) in m.layers.iter().enumerate() {
        let (elems, rj, raw, a, pl, mi) = &g.samples_neurons[j];
        for (n, &e) in elems.iter().enumerate() {
            for t in 0..k {
                rows.series_row("bptt_j", "neuron", &l.name, e as i64, t as i64, rj[t][n]);
                rows.series_row("bptt_raw", "neuron", &l.name, e as i64, t as i64, raw[t][n]);
                rows.series_row("ep_plus", "neuron", &l.name, e as i64, t as i64, pl[t][n]);
                rows.series_row("ep_minus", "neuron", &l.name, e as i64, t as i64, mi[t][n]);
                rows.series_row("ep_sym", "neuron", &l.name, e as i64, t as i64, a[t][n]);
            }
        }
    }
    let mut r = rows.row("check", "gdu", "t_free_run", g.t_run as f64);
    r.phase = Some("free".into());
    rows.push(r);
    let mut r = rows.row("check", "gdu", "residual_at_T_minus_K", g.residual_tk);
    r.phase = Some("free".into());
    r.threshold = Some(o.stat_tol);
    rows.push(r);
    // Tensors for --dump under canonical names (the series only when --dump asked for them). The free
    // iterations actually run (theorem mode extends T): `compare` reads them back as t_free.
    let mut dump = Vec::new();
    if o.dump {
        dump.push(("gdu.t_free_run".to_string(), Tensor::from(g.t_run)));
        let b = o.beta;
        let mut series = g.dump.iter().map(|(n, t)| (n.clone(), t.shallow_clone()));
        let stack_s = |ss: &Vec<State>, j: usize| Tensor::stack(&ss.iter().map(|st| st[j].shallow_clone()).collect::<Vec<_>>(), 0);
        for (i, spec) in m.params.iter().enumerate() {
            dump.extend(series.by_ref().take(4));
            // EP estimates carry their β, like the series.
            dump.push((format!("grad.bptt_trunc.{}", spec.name), trunc[i].shallow_clone()));
            dump.push((format!("grad.ep_plus@{b}.{}", spec.name), ep_plus.tensors[i].shallow_clone()));
            dump.push((format!("grad.ep_minus@{b}.{}", spec.name), ep_minus.tensors[i].shallow_clone()));
            dump.push((format!("grad.ep_centered@{b}.{}", spec.name), ep_c.tensors[i].shallow_clone()));
        }
        for (j, l) in m.layers.iter().enumerate() {
            dump.extend(series.by_ref().take(5));
            dump.push((format!("state.free.{}", l.name), g.traj[k][j].shallow_clone()));
            // The last K + 1 free states s_{T−K} … s_T: a window, not the canonical trajectory (whose index 0
            // is the phase's initial state).
            dump.push((format!("traj_window.free.{}", l.name), stack_s(&g.traj, j)));
        }
    }
    // The digest: the worst per-step rel_l2 of each series against its reference, and what the mode means.
    let mut worst: std::collections::BTreeMap<String, (f64, String)> = Default::default();
    for r in rows.metrics.iter().filter(|r| r.metric == "rel_l2" && r.t.is_none() && matches!(r.reference.as_deref(), Some("bptt") | Some("bptt_j"))) {
        let e = worst.entry(r.series.clone().unwrap_or_default()).or_insert((f64::NEG_INFINITY, String::new()));
        let v = if r.value.is_nan() { f64::INFINITY } else { r.value };
        if v > e.0 {
            *e = (v, r.name.clone());
        }
    }
    let series_txt = ["ep_sym", "ep_plus", "ep_minus"]
        .iter()
        .filter_map(|s| worst.get(*s).map(|(v, n)| format!("{s} {} ({n})", super::num(*v))))
        .collect::<Vec<_>>()
        .join(", ");
    let mut notes = vec![];
    if !converged && o.theorem {
        notes.push(format!(
            "gdu: the free phase is not converged: r_∞ at T−K = {} > stat_tol {} after {} iterations; raise checks.gdu.max_iter or --T",
            super::num(g.residual_tk),
            super::num(o.stat_tol),
            g.t_run
        ));
    }
    let rep = rows.finish(summary, dump);
    let digest = if o.theorem {
        rep.digest.clone()
    } else {
        format!(
            "replay mode scores nothing (identities only): worst rel_l2 vs BPTT {series_txt}; r_∞ at T−K = {}; run --mode theorem for a verdict",
            super::num(g.residual_tk)
        )
    };
    rep.with_digest(digest).with_notes(notes)
}

/// `sym_ratio` (checks §1.7) of float64 totals on the device: the mean over elements of
/// 2|e₃ − e_B| / (|e₁ − e_B| + |e₂ − e_B|), 1 where the denominator is 0.
fn sym_ratio_dev(e1: &Tensor, e2: &Tensor, eb: &Tensor) -> f64 {
    let e3 = (e1 + e2) * 0.5;
    let den = (e1 - eb).abs() + (e2 - eb).abs();
    let rho = ((e3 - eb).abs() * 2.0 / &den).masked_fill(&den.eq(0.0), 1.0);
    mean_std_dev(&rho).0
}

/// Metrics of one (series, scope) pair and its verdict.
#[allow(clippy::too_many_arguments)]
fn score(
    rows: &mut Rows,
    scope: &str,
    name: &str,
    sname: &str,
    reference: &str,
    st: &PairStats,
    o: &GduOptions,
    thr: f64,
    thr_lab: f64,
    tau: f64,
    floor_rel: f64,
    drift_rel: f64,
    precondition: Option<Verdict>,
    summary: &mut Vec<String>,
) -> Verdict {
    let _ = tau;
    let (lab, lab_std, guard, both_zero) = (st.lab, st.lab_std, st.guard, st.both_zero);
    let (ern_m, ern_s) = (st.ern_m, st.ern_s);
    let rel = st.rel;
    let sig = st.sig;
    let scored_param = scope == "tensor";
    let verdict = precondition.unwrap_or_else(|| {
        let mut fails = vec![];
        if !super::within(rel, thr) {
            fails.push(format!("rel_l2={rel:.3e} > {thr:.3e}"));
        }
        if !super::within(lab, thr_lab) {
            fails.push(format!("lab_rmse={lab:.3e} > {thr_lab:.3e}"));
        }
        if scored_param && !(sig.is_nan() || super::within(sig, o.sign_err_max)) {
            fails.push(format!("sign_err_sig={sig:.3e} > {}", o.sign_err_max));
        }
        if fails.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail(fails.join("; "))
        }
    });
    let mut push = |metric: &str, value: f64, form: &str, threshold: Option<f64>, deciding: bool| {
        let mut row = rows.row(scope, name, metric, value);
        row.series = Some(sname.into());
        row.reference = Some(reference.into());
        row.series_form = Some(form.into());
        row.beta = Some(o.beta);
        row.estimator = Some(if sname == "ep_sym" { "ep_centered".into() } else { sname.into() });
        row.threshold = threshold;
        if deciding {
            row.verdict = Some(verdict.label().into());
        }
        rows.push(row);
    };
    push("rel_l2", rel, "step", Some(thr), true);
    push("lab_rmse", lab, "step", Some(thr_lab), false);
    push("lab_rmse_std", lab_std, "step", None, false);
    push("lab_rmse_guard_frac", guard, "step", None, false);
    push("both_zero_elems", both_zero as f64, "step", None, false);
    push("sign_err", st.sign_err, "step", None, false);
    if !sig.is_nan() {
        push("sign_err_sig", sig, "step", scored_param.then_some(o.sign_err_max), false);
    }
    push("ern_rel_mean", ern_m, "step", None, false);
    push("ern_rel_std", ern_s, "step", None, false);
    push("cos", st.cos, "step", None, false);
    push("floor_rel", floor_rel, "step", None, false);
    if drift_rel.is_finite() {
        push("drift_rel", drift_rel, "step", None, false);
    }
    if let (true, Some((em, es, same, zero))) = (scope == "tensor", st.cum) {
        push("ern_rel_mean", em, "cum", None, false);
        push("ern_rel_std", es, "cum", None, false);
        push("same_sign_frac", same, "cum", None, false);
        push("both_zero_frac", zero, "cum", None, false);
    }
    for (t, &v) in st.step_rel.iter().enumerate() {
        if v.is_finite() {
            let mut row = rows.row(scope, name, "rel_l2", v);
            row.series = Some(sname.into());
            row.reference = Some(reference.into());
            row.series_form = Some("step".into());
            row.t = Some(t as i64);
            rows.push(row);
        }
    }
    rows.verdict(
        scope,
        &format!("{sname}:{name}"),
        &verdict,
        json!({ "series": sname, "reference": reference, "rel_l2": rel, "threshold": thr, "lab_rmse": lab, "sign_err_sig": sig, "floor_rel": floor_rel }),
    );
    summary.push(format!(
        "| {sname} | {scope} | {name} | {rel:.3e} | {lab:.3e} | {} | {thr:.1e} | {} |",
        if sig.is_nan() { "–".to_string() } else { format!("{sig:.3}") },
        verdict.display()
    ));
    verdict
}
