//! `gdu` (checks §3, estimators §5): EP per-step updates vs BPTT per-step gradients. The BPTT series come out
//! of ONE reverse sweep of K step VJPs (O(K)), the EP series out of one forward sweep per sign.
use super::metrics as mx;
use super::{kinks, CheckReport, Rows, Verdict};
use crate::adjoint::reverse_sweep;
use crate::estimators::{ep_centered, ep_one_sided, PhaseLengths};
use crate::instance::Instance;
use crate::model::schedule::ScheduleKind;
use crate::model::{detach_state, Batch, Model, State, VjpPieces};
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
    /// `prefix = exclusive` (conventions §7.6): the cumulative forms and `sym_ratio` use exclusive prefix sums
    /// (the last step dropped), rows tagged `series_form = cum_excl`. The identities always use full sums.
    pub prefix_exclusive: bool,
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
            prefix_exclusive: false,
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
            prefix_exclusive: cfg.prefix == "exclusive",
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

/// The `n` elements with the largest score (ties by index, non-finite scores last), as
/// [`super::largest_elements`] on the host, but selected on the device: `topk` gives the n-th largest key, and only
/// the elements at or above it come back to the host (no host copy or sort of the whole tensor).
pub fn largest_elements_dev(score: &Tensor, n: usize) -> Vec<usize> {
    let numel = score.numel();
    let n = n.min(numel);
    if n == 0 {
        return vec![];
    }
    // float32 and float64 scores as they are (their order is that of their exact float64 values; a float64 copy
    // of a 30 M-element score is 240 MB to fault in), other kinds in float64.
    let key = score.detach().reshape([-1]);
    let key = if matches!(key.kind(), Kind::Float | Kind::Double) { key } else { key.to_kind(Kind::Double) };
    let key = key.masked_fill(&key.isfinite().logical_not(), -1.0);
    let (vals, _) = key.topk(n as i64, 0, true, true);
    let thr = scalar(&vals.get(n as i64 - 1));
    let idx_of = |mask: Tensor| -> Vec<usize> {
        let nz = mask.nonzero().reshape([-1]).to_device(tch::Device::Cpu);
        Vec::<i64>::try_from(&nz).expect("index tensor").into_iter().map(|i| i as usize).collect()
    };
    // Strictly above the threshold: fewer than n elements, sorted by (key desc, index asc) on the host.
    let above = idx_of(key.gt(thr));
    let above_keys = if above.is_empty() {
        vec![]
    } else {
        let i = Tensor::from_slice(&above.iter().map(|&e| e as i64).collect::<Vec<_>>()).to_device(key.device());
        crate::tensor_util::to_vec_f64(&key.index_select(0, &i))
    };
    let mut out: Vec<(f64, usize)> = above_keys.into_iter().zip(above).collect();
    out.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal).then(a.1.cmp(&b.1)));
    // Then the ties at the threshold, lowest index first (nonzero() is in index order).
    let need = n - out.len();
    out.extend(idx_of(key.eq(thr)).into_iter().take(need).map(|e| (thr, e)));
    out.into_iter().map(|(_, e)| e).collect()
}

/// The sampled elements of one reference (checks §0.6) and their values, gathered step by step into one
/// preallocated (K, n) float64 buffer (no per-step allocation that outlives the step).
struct Sampled {
    idx: Option<Tensor>,
    vals: Option<Tensor>,
}

impl Sampled {
    fn new(elems: &[usize], k: usize, dev: tch::Device) -> Self {
        let idx = (!elems.is_empty()).then(|| Tensor::from_slice(&elems.iter().map(|&e| e as i64).collect::<Vec<_>>()).to_device(dev));
        let vals = idx.as_ref().map(|_| Tensor::zeros([k as i64, elems.len() as i64], (Kind::Double, dev)));
        Sampled { idx, vals }
    }
    fn push(&mut self, t: usize, x: &Tensor) {
        if let (Some(i), Some(v)) = (&self.idx, &self.vals) {
            let _ = v.get(t as i64).copy_(&x.index_select(0, i));
        }
    }
    /// Step t of (x + y)·½ at the sampled elements (the values a full (x + y)·½ tensor has there).
    fn push_mean(&mut self, t: usize, x: &Tensor, y: &Tensor) {
        if let (Some(i), Some(v)) = (&self.idx, &self.vals) {
            let _ = v.get(t as i64).copy_(&((x.index_select(0, i) + y.index_select(0, i)) * 0.5));
        }
    }
    /// Host values, [t][sample].
    fn values(&self) -> Vec<Vec<f64>> {
        match &self.vals {
            None => vec![],
            Some(v) => {
                let n = v.size()[1] as usize;
                to_vec_f64(v).chunks(n).map(|c| c.to_vec()).collect()
            }
        }
    }
}

/// The kind of the per-element running sums of a run whose series have kind `run`: the run dtype itself for
/// float32 runs, float64 otherwise (float64 runs are unchanged).
///
/// Why float32 sums are enough in a float32 run (checks §1 asks for float64 accumulation; this is the documented
/// exception, docs/checks.md "Precision of the GDU metrics"): a per-element running sum over K steps carries a
/// relative error of at most K·u₃₂ of the sum of its terms' magnitudes (u₃₂ = 6·10⁻⁸), while every step of an EP
/// series already carries u₃₂·‖f‖/β from the difference of two float32 parameter derivatives — the round-off
/// floor `floor_rel` = ε·max‖f‖/(β‖r‖) the check reports and scores against. The sums of squares (Σa², Σr², Σ(a−r)²)
/// have no cancellation, and every sum over elements (the per-step ‖·‖², the totals of the statistics) is float64
/// (the fused CPU kernels) or libtorch's cascade summation (error ≈ u₃₂·log₂ E, not E·u₃₂); BLAS dot products in
/// float32 (sdot, 10⁻³ relative at E = 3·10⁷) are never used. At the IMDB-style size (E = 3·10⁷) the 18 per-element sums take 2.2 GB in float32
/// instead of 4.3 GB; `tests/gdu_stream.rs` checks the float32 metrics against float64 sums of the same series
/// within the reported floor.
fn acc_kind(run: Kind) -> Kind {
    if run == Kind::Float {
        Kind::Float
    } else {
        Kind::Double
    }
}

/// Work buffers reused by every step and tensor (views of their first E elements): the per-step metric updates
/// allocate nothing E-sized. A fresh large buffer costs a page fault per 4 KiB page and its zeroing by the kernel
/// (a third of the samples of a profile at the IMDB-style size, where E = 30 M). All in the accumulator kind.
struct Work {
    kind: Kind,
    /// Conversion buffers, only when a series' kind differs from the accumulator kind.
    r: Option<Tensor>,
    a: Option<Tensor>,
    d: Tensor,
    /// Products for the per-step sums, one chunk at a time (float32 only: float64 uses BLAS dot products).
    q: Option<Tensor>,
    b1: Tensor,
    b2: Tensor,
}

impl Work {
    fn new(n: i64, kind: Kind, convert: bool, dev: tch::Device) -> Self {
        let f = || Tensor::empty([n], (kind, dev));
        let b = || Tensor::empty([n], (Kind::Bool, dev));
        let q = (kind != Kind::Double).then(|| Tensor::empty([n.min(DOT_CHUNK)], (kind, dev)));
        Work { kind, r: convert.then(f), a: convert.then(f), d: f(), q, b1: b(), b2: b() }
    }
    /// `x` flattened in the accumulator kind: a view of `x` itself when it has that kind, else converted into `buf`.
    fn flat(&self, buf: &Option<Tensor>, x: &Tensor) -> Tensor {
        let x = x.detach().reshape([-1]);
        if x.kind() == self.kind {
            return x;
        }
        let mut v = buf.as_ref().expect("conversion buffer").narrow(0, 0, x.numel() as i64);
        let _ = v.copy_(&x);
        v
    }
    fn view(buf: &Tensor, n: i64) -> Tensor {
        buf.narrow(0, 0, n)
    }
    /// Σ_e x·y as a 0-dim float64 tensor: a BLAS dot product in float64; in float32, chunk by chunk, the products
    /// into `q`, libtorch's cascade sum of the chunk and a float64 sum of the chunk sums (a float32 `sdot` loses
    /// 10⁻³ relative at E = 3·10⁷; a chunked buffer instead of an E-sized one saves 120 MB there).
    fn dot(&self, x: &Tensor, y: &Tensor) -> Tensor {
        match &self.q {
            None => x.dot(y),
            Some(q) => {
                let (n, c) = (x.numel() as i64, q.numel() as i64);
                let mut acc = Tensor::zeros([], (Kind::Double, x.device()));
                let mut off = 0;
                while off < n {
                    let len = c.min(n - off);
                    let qv = Work::view(q, len);
                    let _ = x.narrow(0, off, len).mul_out(&qv, &y.narrow(0, off, len));
                    let _ = acc.g_add_(&qv.sum(self.kind));
                    off += len;
                }
                acc
            }
        }
    }
}

/// Turns the fused CPU kernels of the streaming check off (`false`: the libtorch path CUDA takes) or on (default),
/// for checks run by the calling thread.
pub fn set_fused_kernels(on: bool) {
    fused::set_enabled(on);
}

/// Elements per chunk of the float32 per-step sums (`Work::dot`).
const DOT_CHUNK: i64 = 1 << 20;

/// Σ of all elements in the tensor's own kind (float64: as before; float32: cascade summation).
fn total(x: &Tensor) -> f64 {
    scalar(&x.sum(x.kind()))
}

/// Running sums of one reference series (BPTT per parameter, or J·BPTT_s per layer), in the accumulator kind.
struct RefAcc {
    e: i64,
    /// max |r| over all steps and elements (from the first sweep).
    rmax: f64,
    nz: Tensor,
    sr2: Tensor,
    /// Σ_e r_t² per step, (K,) float64 on the device.
    step_r2: Tensor,
    /// (R_t running cumulative sum, Σ_t R_t²) for the cumulative forms.
    cum: Option<(Tensor, Tensor)>,
    /// Under `prefix = exclusive`: R_{K−2}, the exclusive total (taken before the last step is added).
    excl: Option<Tensor>,
}

impl RefAcc {
    fn new(like: &Tensor, kind: Kind, rmax: f64, nz: Tensor, cum: bool, k: usize) -> Self {
        let z = || Tensor::zeros([like.numel() as i64], (kind, like.device()));
        let step_r2 = Tensor::zeros([k as i64], (Kind::Double, like.device()));
        RefAcc { e: like.numel() as i64, rmax, nz, sr2: z(), step_r2, cum: cum.then(|| (z(), z())), excl: None }
    }
    /// Step t; `last_excl`: t is the last step under `prefix = exclusive` (it enters the totals, not the
    /// cumulative forms).
    fn update(&mut self, r: &Tensor, t: usize, last_excl: bool, w: &Work) {
        let mut ts = vec![r, &self.sr2];
        if let Some((c, s)) = &self.cum {
            ts.extend([c, s]);
        }
        if !last_excl && fused::usable(w.kind, self.e, &ts) {
            let cum = self.cum.as_ref().map(|(c, s)| (c, s));
            let n = self.e as usize;
            let r2 = if w.kind == Kind::Float { fused::reference::<f32>(n, r, &self.sr2, cum) } else { fused::reference::<f64>(n, r, &self.sr2, cum) };
            let _ = self.step_r2.get(t as i64).fill_(r2);
            return;
        }
        let _ = self.step_r2.get(t as i64).copy_(&w.dot(r, r));
        let _ = self.sr2.addcmul_(r, r);
        if let Some((c, s)) = &mut self.cum {
            if last_excl {
                self.excl = Some(c.copy());
                let _ = c.g_add_(r);
            } else {
                let _ = c.g_add_(r);
                let _ = s.addcmul_(c, c);
            }
        }
    }
    /// Step t of this reference and its three series a⁺, a⁻ and a_sym = (a⁺ + a⁻)·½ (`pairs` in that order) in one
    /// pass (`fused::triple`): the same sums as `update` followed by three `PairAcc::update`s, without an a_sym
    /// tensor. False, with nothing done, where the kernel does not apply (not contiguous CPU tensors of the
    /// accumulator kind, or the last step under `prefix = exclusive`): the caller then takes those four updates.
    #[allow(clippy::too_many_arguments)]
    fn update_triple(&mut self, pairs: [&mut PairAcc; 3], r: &Tensor, ap: &Tensor, am: &Tensor, t: usize, last_excl: bool, w: &Work) -> bool {
        let mut ts = vec![r, ap, am, &self.sr2];
        ts.extend(self.cum.iter().flat_map(|(c, s)| [c, s]));
        for p in &pairs {
            ts.extend([&p.sa2, &p.sd2]);
            ts.extend(p.cum.iter().flat_map(|(c, dc2, c2)| [c, dc2, c2]));
        }
        let cums_agree = pairs.iter().all(|p| p.cum.is_some() == self.cum.is_some());
        let nz_ok = fused::usable_masks(self.e, &[&pairs[0].nz_a, &pairs[1].nz_a, &pairs[2].nz_a]);
        if last_excl || !cums_agree || !nz_ok || !fused::usable(w.kind, self.e, &ts) {
            return false;
        }
        let n = self.e as usize;
        let rcum = self.cum.as_ref().map(|(c, s)| (c, s));
        let thr = [pairs[0].sig_thr, pairs[1].sig_thr, pairs[2].sig_thr];
        fn sums(p: &PairAcc) -> fused::PairSums<'_> {
            (&p.sa2, &p.sd2, &p.nz_a, p.cum.as_ref().map(|(c, dc2, c2)| (c, dc2, c2)))
        }
        let q = [sums(pairs[0]), sums(pairs[1]), sums(pairs[2])];
        let (r2, s) = if w.kind == Kind::Float {
            fused::triple::<f32>(n, r, ap, am, &self.sr2, rcum, thr, q)
        } else {
            fused::triple::<f64>(n, r, ap, am, &self.sr2, rcum, thr, q)
        };
        let _ = self.step_r2.get(t as i64).fill_(r2);
        for (p, s) in pairs.into_iter().zip(&s) {
            p.record(s, t);
        }
        true
    }
    /// Frees the per-element sums once every pair has its statistics (the cumulative totals stay: identities,
    /// sym_ratio).
    fn release(&mut self) {
        let none = || Tensor::zeros([0], (Kind::Double, tch::Device::Cpu));
        self.sr2 = none();
        self.nz = none();
        if let Some((_, s)) = &mut self.cum {
            *s = none();
        }
    }
}

/// Running sums of one (series, reference) pair, in the accumulator kind.
struct PairAcc {
    /// τ·max|r|: the significance threshold of sign_err_sig.
    sig_thr: f64,
    sa2: Tensor,
    sd2: Tensor,
    nz_a: Tensor,
    /// Σ_e (a_t − r_t)² per step, (K,) float64 on the device.
    step_d2: Tensor,
    /// Σ a·r, float64 0-dim.
    ar: Tensor,
    /// Σ a² over steps and elements in float64 (fused path: summed from the per-step float64 sums).
    a2: f64,
    neg: Tensor,
    sig_n: Tensor,
    sig_bad: Tensor,
    /// (A_t running cumulative sum, Σ_t (A_t − R_t)², Σ_t A_t²).
    cum: Option<(Tensor, Tensor, Tensor)>,
    /// Under `prefix = exclusive`: A_{K−2}.
    excl: Option<Tensor>,
}

impl PairAcc {
    fn new(rf: &RefAcc, tau: f64, like: &Tensor, kind: Kind, k: usize) -> Self {
        // Each per-element sum is its own fresh zeros (no template tensor: zeros are written, so a template
        // would be one more parameter-sized tensor to fault in and drop).
        let z = || Tensor::zeros([rf.e], (kind, like.device()));
        let zi = Tensor::zeros([], (Kind::Int64, like.device()));
        PairAcc {
            sig_thr: tau * rf.rmax,
            sa2: z(),
            sd2: z(),
            nz_a: Tensor::zeros([rf.e], (Kind::Bool, like.device())),
            step_d2: Tensor::zeros([k as i64], (Kind::Double, like.device())),
            ar: dzero(like),
            a2: 0.0,
            neg: zi.zeros_like(),
            sig_n: zi.zeros_like(),
            sig_bad: zi.zeros_like(),
            cum: rf.cum.as_ref().map(|_| (z(), z(), z())),
            excl: None,
        }
    }
    /// Step t of series `a` against the reference step `r` (both flat, in the accumulator kind); `rf` already holds
    /// step t. Everything E-sized is written into the work buffers or accumulated in place.
    fn update(&mut self, a: &Tensor, r: &Tensor, rf: &RefAcc, t: usize, last_excl: bool, w: &Work) {
        let n = rf.e;
        let mut ts = vec![a, r, &self.sa2, &self.sd2];
        if let (Some((c, dc2, c2)), Some((rc, _))) = (&self.cum, &rf.cum) {
            ts.extend([c, dc2, c2, rc]);
        }
        if !last_excl && fused::usable(w.kind, n, &ts) && fused::usable_masks(n, &[&self.nz_a]) {
            let cum = match (&self.cum, &rf.cum) {
                (Some((c, dc2, c2)), Some((rc, _))) => Some((c, dc2, c2, rc)),
                _ => None,
            };
            let s = if w.kind == Kind::Float {
                fused::pair::<f32>(n as usize, a, r, self.sig_thr, &self.sa2, &self.sd2, &self.nz_a, cum)
            } else {
                fused::pair::<f64>(n as usize, a, r, self.sig_thr, &self.sa2, &self.sd2, &self.nz_a, cum)
            };
            self.record(&s, t);
            return;
        }
        if a.device() == tch::Device::Cpu {
            // Σa² for the fused statistics (this step took the libtorch path: the last step under `prefix = exclusive`).
            self.a2 += scalar(&w.dot(a, a));
        }
        let d = Work::view(&w.d, n);
        let mut b1 = Work::view(&w.b1, n);
        let b2 = Work::view(&w.b2, n);
        // The significant reference elements |r| > τ·max|r| (d as scratch).
        let _ = r.abs_out(&d);
        let _ = d.gt_scalar_out(&b2, self.sig_thr);
        let _ = a.sub_out(&d, r);
        let _ = self.step_d2.get(t as i64).copy_(&w.dot(&d, &d));
        let _ = self.sd2.addcmul_(&d, &d);
        let _ = self.sa2.addcmul_(a, a);
        let _ = a.ne_scalar_out(&b1, 0.0);
        let _ = self.nz_a.logical_or_(&b1);
        let _ = self.ar.g_add_(&w.dot(r, a));
        let _ = a.mul_out(&d, r);
        let _ = d.lt_scalar_out(&b1, 0.0);
        let _ = self.neg.g_add_(&b1.sum(Kind::Int64));
        let _ = self.sig_n.g_add_(&b2.sum(Kind::Int64));
        let _ = self.sig_bad.g_add_(&b1.logical_and_(&b2).sum(Kind::Int64));
        if let (Some((c, dc2, c2)), Some((rc, _))) = (&mut self.cum, &rf.cum) {
            if last_excl {
                self.excl = Some(c.copy());
                let _ = c.g_add_(a);
            } else {
                let _ = c.g_add_(a);
                let _ = c.sub_out(&d, rc);
                let _ = dc2.addcmul_(&d, &d);
                let _ = c2.addcmul_(c, c);
            }
        }
    }
    /// The per-step sums of step t from a fused kernel.
    fn record(&mut self, s: &fused::Sums, t: usize) {
        let _ = self.step_d2.get(t as i64).fill_(s.d2);
        self.a2 += s.a2;
        let _ = self.ar.g_add_scalar_(s.ar);
        let _ = self.neg.g_add_scalar_(s.neg);
        let _ = self.sig_n.g_add_scalar_(s.sig_n);
        let _ = self.sig_bad.g_add_scalar_(s.sig_bad);
    }
    /// The statistics; then frees the per-element sums they needed (the cumulative totals stay).
    fn stats(&mut self, rf: &RefAcc, k: usize) -> PairStats {
        if let Some(s) = self.stats_fused(rf, k) {
            return s;
        }
        let kf = k as f64;
        let e = rf.e as f64;
        let (sa2, sr2, sd2) = (&self.sa2, &rf.sr2, &self.sd2);
        // lab_rmse (checks §1.1).
        let m = (sa2 / kf).sqrt().maximum(&(sr2 / kf).sqrt());
        let guard = scalar(&m.lt(1e-8).sum(Kind::Int64)) / e.max(1.0);
        let both_zero = scalar(&self.nz_a.logical_or(&rf.nz).logical_not().sum(Kind::Int64)) as usize;
        let q = (sd2 / kf).sqrt() / (m + 1e-10);
        let (lab, lab_std) = mean_std_dev(&q);
        drop(q);
        let (ern_m, ern_s) = ern_dev(sd2, sa2, sr2);
        let (na2, nr2, nd2, ar) = (total(sa2), total(sr2), total(sd2), scalar(&self.ar));
        let rel = mx::ratio(nd2.sqrt(), nr2.sqrt());
        let cos = cos_of_sums(na2, nr2, ar);
        let sign_err = scalar(&self.neg) / (kf * e).max(1.0);
        let n = scalar(&self.sig_n);
        let sig = if n == 0.0 { f64::NAN } else { scalar(&self.sig_bad) / n };
        let cum = match (&self.cum, &rf.cum) {
            (Some((c, dc2, c2)), Some((rc, rc2))) => {
                let (em, es) = ern_dev(dc2, c2, rc2);
                // The totals the sign agreement compares: exclusive ones under `prefix = exclusive`.
                let (c, rc) = (self.excl.as_ref().unwrap_or(c), rf.excl.as_ref().unwrap_or(rc));
                let same = scalar(&(c * rc).gt(0.0).sum(Kind::Int64)) / e.max(1.0);
                let zero = scalar(&c.eq(0.0).logical_and(&rc.eq(0.0)).sum(Kind::Int64)) / e.max(1.0);
                Some((em, es, same, zero))
            }
            _ => None,
        };
        let d2 = to_vec_f64(&self.step_d2);
        let r2 = to_vec_f64(&rf.step_r2);
        let step_rel = d2.iter().zip(&r2).map(|(d, r)| mx::ratio(d.sqrt(), r.sqrt())).collect();
        let none = || Tensor::zeros([0], (Kind::Double, tch::Device::Cpu));
        (self.sa2, self.sd2, self.nz_a) = (none(), none(), none());
        if let Some((_, dc2, c2)) = &mut self.cum {
            (*dc2, *c2) = (none(), none());
        }
        PairStats { rel, lab, lab_std, guard, both_zero, sign_err, sig, ern_m, ern_s, cos, cum, step_rel, rn: nr2.sqrt() }
    }
}

/// Fused CPU kernels of the per-step updates: ONE pass over a, r and the running sums instead of the ~20 libtorch
/// passes of `PairAcc::update` (≈ 42 reads/writes of an E-sized buffer per pair and step → 13; the check is memory
/// bound: at the IMDB-style size E = 3·10⁷). The same per-element operations as the libtorch path (so the same
/// per-element sums up to the rounding of a fused multiply-add), the per-step sums over elements (Σd², Σa·r, the
/// sign counts) in float64. Used for contiguous CPU tensors of one float kind; CUDA (and the last step under
/// `prefix = exclusive`) keep the libtorch path.
mod fused;

impl PairAcc {
    /// `stats` by the fused CPU kernels (contiguous CPU sums of one float kind), else None.
    fn stats_fused(&mut self, rf: &RefAcc, k: usize) -> Option<PairStats> {
        let kind = self.sa2.kind();
        let n = rf.e;
        let mut ts = vec![&self.sa2, &rf.sr2, &self.sd2];
        if let (Some((c, dc2, c2)), Some((rc, rc2))) = (&self.cum, &rf.cum) {
            ts.extend([c, dc2, c2, rc, rc2]);
            ts.extend(self.excl.iter().chain(rf.excl.iter()));
        }
        let bools_ok = fused::usable_masks(n, &[&self.nz_a, &rf.nz]);
        if n == 0 || !bools_ok || !fused::usable(kind, n, &ts) {
            return None;
        }
        let (kf, e, nu) = (k as f64, n as f64, n as usize);
        let st = if kind == Kind::Float {
            fused::pair_stats::<f32>(nu, kf, &self.sa2, &rf.sr2, &self.sd2, &self.nz_a, &rf.nz)
        } else {
            fused::pair_stats::<f64>(nu, kf, &self.sa2, &rf.sr2, &self.sd2, &self.nz_a, &rf.nz)
        };
        let ms = |(s, v): (f64, f64)| (s / e, (v / e).sqrt());
        let (lab, lab_std) = ms(st.lab);
        let (ern_m, ern_s) = ms(st.ern);
        // Global sums from the per-step float64 sums (a per-element float32 square underflows below 1e-19).
        let d2 = to_vec_f64(&self.step_d2);
        let r2 = to_vec_f64(&rf.step_r2);
        let (nd2, nr2) = (d2.iter().sum::<f64>(), r2.iter().sum::<f64>());
        let rel = mx::ratio(nd2.sqrt(), nr2.sqrt());
        let cos = cos_of_sums(self.a2, nr2, scalar(&self.ar));
        let sign_err = scalar(&self.neg) / (kf * e).max(1.0);
        let nsig = scalar(&self.sig_n);
        let sig = if nsig == 0.0 { f64::NAN } else { scalar(&self.sig_bad) / nsig };
        let cum = match (&self.cum, &rf.cum) {
            (Some((c, dc2, c2)), Some((rc, rc2))) => {
                let (c, rc) = (self.excl.as_ref().unwrap_or(c), rf.excl.as_ref().unwrap_or(rc));
                let cs = if kind == Kind::Float { fused::cum_stats::<f32>(nu, dc2, c2, rc2, c, rc) } else { fused::cum_stats::<f64>(nu, dc2, c2, rc2, c, rc) };
                let (em, es) = ms(cs.ern);
                Some((em, es, cs.same as f64 / e, cs.both_zero as f64 / e))
            }
            _ => None,
        };
        let step_rel = d2.iter().zip(&r2).map(|(d, r)| mx::ratio(d.sqrt(), r.sqrt())).collect();
        let none = || Tensor::zeros([0], (Kind::Double, tch::Device::Cpu));
        (self.sa2, self.sd2, self.nz_a) = (none(), none(), none());
        if let Some((_, dc2, c2)) = &mut self.cum {
            (*dc2, *c2) = (none(), none());
        }
        Some(PairStats { rel, lab, lab_std, guard: st.guard as f64 / e, both_zero: st.both_zero as usize, sign_err, sig, ern_m, ern_s, cos, cum, step_rel, rn: nr2.sqrt() })
    }
}

/// max |x − y| over all entries (x, y of one shape, flattened), NaN if any entry is NaN, through chunks of 2²⁰
/// entries: no tensor-sized difference exists (at the IMDB-style size each identity made two 120 MB temporaries).
fn maxabs_diff(x: &Tensor, y: &Tensor) -> f64 {
    let (x, y) = (x.detach().reshape([-1]), y.detach().reshape([-1]));
    let maxima = crate::tensor_util::chunk_ranges(x.numel() as i64).map(|(lo, len)| (x.narrow(0, lo, len) - y.narrow(0, lo, len)).abs().max());
    maxima.reduce(|m, c| m.maximum(&c)).map_or(0.0, |m| scalar(&m))
}

/// ‖x‖² in float64: the fused kernel for a contiguous CPU float tensor, else libtorch in float64.
fn sumsq_f64(x: &Tensor) -> f64 {
    let x = x.detach();
    match (x.device(), x.kind(), x.is_contiguous()) {
        (tch::Device::Cpu, Kind::Float, true) => fused::sumsq::<f32>(&x),
        (tch::Device::Cpu, Kind::Double, true) => fused::sumsq::<f64>(&x),
        _ => scalar(&x.to_kind(Kind::Double).square().sum(Kind::Double)),
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

/// (mean, population std) of a float vector on the device, summed in its own kind (NaN, NaN when empty).
fn mean_std_dev(q: &Tensor) -> (f64, f64) {
    let n = q.numel() as f64;
    if n == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let m = total(q) / n;
    let var = total(&(q - m).square_()) / n;
    (m, var.sqrt())
}

/// `ern_rel` (checks §1.2) from per-element Σ(a−r)², Σa², Σr².
fn ern_dev(sd2: &Tensor, sa2: &Tensor, sr2: &Tensor) -> (f64, f64) {
    let m = sa2.maximum(sr2);
    let q = (sd2 / &m).sqrt_().masked_fill_(&m.eq(0.0), 0.0);
    drop(m);
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
    /// Neuron series against raw BPTT_s (info): the Laborieux printout's reference.
    raw: Vec<Vec<PairStats>>,
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
        // The neuron references of step t from λ: (BPTT_s[t], J·BPTT_s[t]).
        let neuron_refs = |lambda: &State| -> (State, State) {
            let bs: State = lambda.iter().map(|x| x * (-b)).collect();
            let bj: State = bs.iter().enumerate().map(|(j, x)| m.jacobian_apply(j, batch, &drives[j], x)).collect();
            (bs, bj)
        };
        // A θ-dependent loss (readout): its explicit term is BPTT_θ[0]'s (estimators §5.1).
        let with_explicit = |a_theta: Vec<Tensor>, t: usize| -> Vec<Tensor> {
            match (t, &explicit) {
                (0, Some(e)) => a_theta.iter().zip(e).map(|(a, e)| a + e).collect(),
                _ => a_theta,
            }
        };
        // One step of the first reverse sweep: (BPTT_s[t], J·BPTT_s[t], BPTT_θ[t], λ_{T−t−1}, what BPTT_θ[t] read).
        let bptt_step = |lambda: &State, t: usize| -> (State, State, Vec<Tensor>, State, VjpPieces) {
            let (bs, bj) = neuron_refs(lambda);
            let (a_s, a_theta, pieces) = m.step_vjp_recorded(p, batch, &traj[k - t - 1], lambda, 0.0);
            (bs, bj, with_explicit(a_theta, t), a_s, pieces)
        };
        // First sweep: max|r| (the significance floor of sign_err_sig needs it before any step is scored) and
        // the nonzero masks (the sampled elements).
        let dev = s_t[0].device();
        // Per-element max_t |r| in the run dtype (a max is exact in any dtype): its nonzero pattern is the mask of
        // checks §0.6, its maximum max|r|, its largest entries the plotted elements. Dropped after this block.
        let flat_abs = |x: &Tensor| x.detach().reshape([-1]).abs();
        // Work buffers: parameters in the accumulator kind of the run (float32 runs: float32, see `acc_kind`);
        // neuron layers (small) in float64 as before.
        let kind_t = acc_kind(p.first().map(|x| x.kind()).unwrap_or(Kind::Double));
        let work = Work::new(p.iter().map(|x| x.numel() as i64).max().unwrap_or(0), kind_t, p.iter().any(|x| x.kind() != kind_t), dev);
        let work_j = Work::new(s_t.iter().map(|x| x.numel() as i64).max().unwrap_or(0), Kind::Double, s_t.iter().any(|x| x.kind() != Kind::Double), dev);
        let amax_t: Vec<Tensor> = p.iter().map(|x| x.detach().reshape([-1]).zeros_like()).collect();
        let amax_j: Vec<Tensor> = s_t.iter().map(|x| x.detach().reshape([-1]).zeros_like()).collect();
        let amax_w: Vec<Tensor> = s_t.iter().map(|x| x.detach().reshape([-1]).zeros_like()).collect();
        // Work units: K first-sweep steps, K scored steps (each ≈ 2 step costs), the published re-runs (t + 1).
        let quad_units = if o.verify_quadratic { (k * (k + 1) / 2) as u64 } else { 0 };
        crate::progress::stage(3 * k as u64 + quad_units, &format!("gdu: first reverse sweep, step 1/{k}"));
        let mut lambda: State = lambda0.iter().map(|x| x.shallow_clone()).collect();
        // λ_t and the pieces of BPTT_θ[t] (neuron-sized) of the first steps, as many as fit in as many elements as
        // the parameters have (memory stays O(P), flat in K): the scored sweep below takes BPTT_θ[t] from them
        // (`param_vjp_from`, bitwise the same) instead of running the drives and HVPs of the step again, and runs
        // the steps after them from `resume` = λ at the first step not kept, as the first sweep did.
        let budget: i64 = p.iter().map(|x| x.numel() as i64).sum();
        let (mut kept, mut swept, mut resume): (i64, Vec<(State, VjpPieces)>, Option<State>) = (0, Vec::new(), None);
        for t in 0..k {
            crate::progress::advance(if t == 0 { 0 } else { 1 }, &format!("gdu: first reverse sweep, step {}/{k}", t + 1));
            let (bs, bj, th, l, pieces) = bptt_step(&lambda, t);
            let size = pieces.numel_owned() + lambda.iter().map(|x| x.numel() as i64).sum::<i64>();
            if resume.is_none() && kept + size <= budget {
                kept += size;
                swept.push((lambda, pieces));
            } else if resume.is_none() {
                resume = Some(lambda);
            }
            for i in 0..np {
                // |BPTT_θ| into the work buffer when the kinds agree (no fresh E-sized tensor per step).
                if th[i].kind() == kind_t && amax_t[i].kind() == kind_t {
                    let d = Work::view(&work.d, th[i].numel() as i64);
                    let _ = th[i].detach().reshape([-1]).abs_out(&d);
                    let _ = amax_t[i].maximum_out(&amax_t[i], &d);
                } else {
                    let _ = amax_t[i].maximum_out(&amax_t[i], &flat_abs(&th[i]));
                }
            }
            for j in 0..nl {
                let _ = amax_j[j].maximum_out(&amax_j[j], &flat_abs(&bj[j]));
                let _ = amax_w[j].maximum_out(&amax_w[j], &flat_abs(&bs[j]));
            }
            lambda = l;
        }
        let rmax = |a: &Tensor| if a.numel() == 0 { 0.0 } else { scalar(&a.max()) };
        let elems_t: Vec<Vec<usize>> = amax_t.iter().map(|a| largest_elements_dev(a, o.n_elem)).collect();
        let elems_j: Vec<Vec<usize>> = amax_j.iter().map(|a| largest_elements_dev(a, o.n_elem)).collect();
        let kd = Kind::Double;
        let mut ref_t: Vec<RefAcc> = (0..np).map(|i| RefAcc::new(&p[i], kind_t, rmax(&amax_t[i]), amax_t[i].ne(0.0), true, k)).collect();
        let mut ref_j: Vec<RefAcc> = (0..nl).map(|j| RefAcc::new(&s_t[j], kd, rmax(&amax_j[j]), amax_j[j].ne(0.0), false, k)).collect();
        let mut ref_w: Vec<RefAcc> = (0..nl).map(|j| RefAcc::new(&s_t[j], kd, rmax(&amax_w[j]), amax_w[j].ne(0.0), false, k)).collect();
        drop((amax_t, amax_j, amax_w));
        let mut pair_t: Vec<Vec<PairAcc>> = taus.iter().map(|&tau| (0..np).map(|i| PairAcc::new(&ref_t[i], tau, &p[i], kind_t, k)).collect()).collect();
        let mut pair_j: Vec<Vec<PairAcc>> = taus.iter().map(|&tau| (0..nl).map(|j| PairAcc::new(&ref_j[j], tau, &s_t[j], kd, k)).collect()).collect();
        let mut pair_w: Vec<Vec<PairAcc>> = taus.iter().map(|&tau| (0..nl).map(|j| PairAcc::new(&ref_w[j], tau, &s_t[j], kd, k)).collect()).collect();
        // Sampled elements: reference, then ep_sym, ep_plus, ep_minus (neurons: J·BPTT_s, raw BPTT_s, then the same).
        let mut samp_t: Vec<[Sampled; 4]> = elems_t.iter().map(|e| std::array::from_fn(|_| Sampled::new(e, k, dev))).collect();
        let mut samp_j: Vec<[Sampled; 5]> = elems_j.iter().map(|e| std::array::from_fn(|_| Sampled::new(e, k, dev))).collect();
        // The ±β phases from s_T (as ep_series).
        let r0 = kinks::regimes(m, p, batch, &s_t, 0.0);
        let betas = [o.beta, -o.beta];
        let mut s_ep: [State; 2] = std::array::from_fn(|_| s_t.iter().map(|t| t.shallow_clone()).collect());
        let f0 = m.param_derivative(p, batch, &s_t);
        // Drift of the free phase over K further iterations, ‖f(s_{T+K}) − f(s_T)‖: here, so that f(s_T) is not kept
        // through the steps (one parameter-sized tensor less at the peak).
        crate::progress::message("gdu: drift of the free phase");
        let drift_norm: Vec<f64> = {
            let cont = relax(m, p, batch, &s_t, 0.0, &RelaxOptions::fixed(o.k));
            let fk = m.param_derivative(p, batch, &cont.state);
            fk.iter().zip(&f0).map(|(a, c)| sumsq_f64(&(a - c)).sqrt()).collect()
        };
        let fnorm = |f: &Tensor| f.to_kind(Kind::Double).square().sum(Kind::Double).sqrt();
        // ‖f‖ through the work buffers (no fresh E-sized square per call), float64 0-dim.
        let fnorm_w = |f: &Tensor| work.dot(&work.flat(&work.a, f), &work.flat(&work.a, f)).to_kind(Kind::Double).sqrt();
        let mut f_max: Vec<Tensor> = f0.iter().map(fnorm_w).collect();
        // f_t of both signs; at t = 0 both are f(s_T), one buffer (f0 itself goes into the second).
        let mut f_prev: [Vec<Tensor>; 2] = [f0.iter().map(|t| t.shallow_clone()).collect(), f0];
        let mut r_prev: [Vec<Option<Tensor>>; 2] = std::array::from_fn(|_| r0.iter().map(|r| r.as_ref().map(|t| t.shallow_clone())).collect());
        let mut kinks_n = [0i64; 2];
        let mut quad: Option<(Tensor, Tensor, Vec<Tensor>)> = o.verify_quadratic.then(|| (dzero(&s_t[0]), dzero(&s_t[0]), p.iter().map(|t| t.zeros_like()).collect()));
        // --dump: the series themselves, [bptt, ep_plus, ep_minus, ep_sym] × param and
        // [bptt, bptt_j, ep_plus, ep_minus, ep_sym] × layer.
        let mut dump_t: Vec<Vec<Vec<Tensor>>> = (0..if o.dump { 4 } else { 0 }).map(|_| (0..np).map(|_| vec![]).collect()).collect();
        let mut dump_j: Vec<Vec<Vec<Tensor>>> = (0..if o.dump { 5 } else { 0 }).map(|_| (0..nl).map(|_| vec![]).collect()).collect();
        let mut swept = swept.into_iter();
        for t in 0..k {
            let prev_units = if t == 0 { 1 } else if o.verify_quadratic { 2 + t as u64 } else { 2 };
            crate::progress::advance(prev_units, &format!("gdu: step {}/{k}: reverse sweep, ±β phases, metrics{}", t + 1, if o.verify_quadratic { ", published re-run" } else { "" }));
            let (bs, bj, th) = match swept.next() {
                Some((lambda, pieces)) => {
                    let (bs, bj) = neuron_refs(&lambda);
                    (bs, bj, with_explicit(m.param_vjp_from(p, batch, &pieces), t))
                }
                None => {
                    let lambda = resume.take().expect("λ of the first step not kept");
                    let (bs, bj, th, l, _) = bptt_step(&lambda, t);
                    resume = Some(l);
                    (bs, bj, th)
                }
            };
            let mut ep_theta: Vec<Vec<Tensor>> = vec![];
            let mut ep_neur: Vec<State> = vec![];
            for sgn in 0..2 {
                let beta = betas[sgn];
                let next = m.step(p, batch, &s_ep[sgn], beta);
                let f = m.param_derivative_nudged(p, batch, &next, (beta, 0.0));
                // EP_θ[t] = −(f_{t+1} − f_t)/β = (f_t − f_{t+1})/β (bitwise the same), in place in f_t's buffer, which
                // is not needed after this step (at t = 0 it is f(s_T), shared by both signs: copied for the first,
                // in place for the second, the buffer's last user).
                ep_theta.push(
                    f.iter()
                        .zip(&f_prev[sgn])
                        .map(|(a, c)| {
                            let mut c = if t == 0 && sgn == 0 { c.copy() } else { c.shallow_clone() };
                            let _ = c.g_sub_(a).g_div_scalar_(beta);
                            c
                        })
                        .collect(),
                );
                ep_neur.push(next.iter().zip(&s_ep[sgn]).map(|(a, c)| (a - c) / beta).collect());
                let r = kinks::regimes(m, p, batch, &next, beta);
                kinks_n[sgn] += kinks::changes(&r0, &r).iter().sum::<i64>() + kinks::changes(&r_prev[sgn], &r).iter().sum::<i64>();
                for (mx_, fi) in f_max.iter_mut().zip(&f) {
                    *mx_ = mx_.maximum(&fnorm_w(fi));
                }
                r_prev[sgn] = r;
                f_prev[sgn] = f;
                s_ep[sgn] = next;
            }
            let sym_neur: State = avg(&ep_neur[0], &ep_neur[1]);
            let last_excl = o.prefix_exclusive && t + 1 == k;
            let mut sym_theta: Vec<Tensor> = Vec::with_capacity(np);
            for i in 0..np {
                let r = work.flat(&work.r, &th[i]);
                let (ap, am) = (ep_theta[0][i].detach().reshape([-1]), ep_theta[1][i].detach().reshape([-1]));
                let [p0, p1, p2] = &mut pair_t[..] else { unreachable!("three series") };
                if !o.dump && ref_t[i].update_triple([&mut p0[i], &mut p1[i], &mut p2[i]], &r, &ap, &am, t, last_excl, &work) {
                    samp_t[i][2].push(t, &ap);
                    samp_t[i][3].push(t, &am);
                    samp_t[i][1].push_mean(t, &ap, &am);
                    samp_t[i][0].push(t, &r);
                    continue;
                }
                ref_t[i].update(&r, t, last_excl, &work);
                for si in 0..3 {
                    if si == 2 {
                        // EP_sym = (EP⁺ + EP⁻)/2, in place in EP⁺'s buffer (scored above) unless --dump keeps it.
                        let (x, y) = (&ep_theta[0][i], &ep_theta[1][i]);
                        sym_theta.push(if o.dump { (x + y) * 0.5 } else { x.shallow_clone().g_add_(y).g_mul_scalar_(0.5) });
                    }
                    let a = work.flat(&work.a, if si == 2 { &sym_theta[i] } else { &ep_theta[si][i] });
                    pair_t[si][i].update(&a, &r, &ref_t[i], t, last_excl, &work);
                    samp_t[i][[2, 3, 1][si]].push(t, &a);
                }
                samp_t[i][0].push(t, &r);
            }
            for j in 0..nl {
                let (r, rw) = (f64flat(&bj[j]), f64flat(&bs[j]));
                ref_j[j].update(&r, t, false, &work_j);
                ref_w[j].update(&rw, t, false, &work_j);
                for (si, a) in [&ep_neur[0][j], &ep_neur[1][j], &sym_neur[j]].into_iter().enumerate() {
                    let a = f64flat(a);
                    pair_j[si][j].update(&a, &r, &ref_j[j], t, false, &work_j);
                    pair_w[si][j].update(&a, &rw, &ref_w[j], t, false, &work_j);
                    samp_j[j][[3, 4, 2][si]].push(t, &a);
                }
                samp_j[j][0].push(t, &r);
                samp_j[j][1].push(t, &rw);
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
        crate::progress::message("gdu: statistics of the running sums");
        // The work buffers are not needed by the statistics: free them before those allocate their own E-sized
        // temporaries (else they add to the peak); each pair frees its per-element sums once it has its numbers.
        drop((work, work_j));
        let theta: Vec<Vec<PairStats>> = pair_t.iter_mut().map(|ps| ps.iter_mut().zip(&ref_t).map(|(a, r)| a.stats(r, k)).collect()).collect();
        let neurons: Vec<Vec<PairStats>> = pair_j.iter_mut().map(|ps| ps.iter_mut().zip(&ref_j).map(|(a, r)| a.stats(r, k)).collect()).collect();
        let raw: Vec<Vec<PairStats>> = pair_w.iter_mut().map(|ps| ps.iter_mut().zip(&ref_w).map(|(a, r)| a.stats(r, k)).collect()).collect();
        for rf in ref_t.iter_mut().chain(ref_j.iter_mut()).chain(ref_w.iter_mut()) {
            rf.release();
        }
        // sym_ratio's totals: exclusive prefix sums under `prefix = exclusive`.
        let total = |excl: &Option<Tensor>, c: &Tensor| excl.as_ref().unwrap_or(c).shallow_clone();
        let sym_totals = (0..np)
            .map(|i| match (&pair_t[0][i].cum, &pair_t[1][i].cum, &ref_t[i].cum) {
                (Some(a), Some(c), Some(r)) => Some([total(&pair_t[0][i].excl, &a.0), total(&pair_t[1][i].excl, &c.0), total(&ref_t[i].excl, &r.0)]),
                _ => None,
            })
            .collect();
        crate::progress::message("gdu: sampled values");
        let f_norm_max: Vec<f64> = f_max.iter().map(scalar).collect();
        let smax: Vec<f64> = (0..nl).map(|j| scalar(&Tensor::stack(&traj.iter().map(|s| fnorm(&s[j])).collect::<Vec<_>>(), 0).max())).collect();
        let quadratic = quad.map(|(d, r, _)| (scalar(&d), scalar(&r)));
        let samples_theta = samp_t.into_iter().zip(elems_t).map(|([r, a, pl, mi], e)| (e, r.values(), a.values(), pl.values(), mi.values())).collect();
        let samples_neurons = samp_j.into_iter().zip(elems_j).map(|([r, w, a, pl, mi], e)| (e, r.values(), w.values(), a.values(), pl.values(), mi.values())).collect();
        // Totals Σ_t of bptt, ep_plus, ep_minus, ep_sym: the last cumulative sums (no separate accumulator).
        let cum_c = |c: &Option<(Tensor, Tensor)>| c.as_ref().expect("parameter cumulative sums").0.shallow_clone();
        let pair_c = |c: &Option<(Tensor, Tensor, Tensor)>| c.as_ref().expect("parameter cumulative sums").0.shallow_clone();
        let totals: [Vec<Tensor>; 4] = [
            ref_t.iter().map(|r| cum_c(&r.cum)).collect(),
            pair_t[0].iter().map(|a| pair_c(&a.cum)).collect(),
            pair_t[1].iter().map(|a| pair_c(&a.cum)).collect(),
            pair_t[2].iter().map(|a| pair_c(&a.cum)).collect(),
        ];
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
                row.series_form = Some(cum_form(o).into());
                rows.push(row);
            }
        }
        // Neuron layers, against J·BPTT_s (scored) and raw BPTT_s (info).
        for (j, l) in m.layers.iter().enumerate() {
            let st = &g.neurons[si][j];
            let floor_rel = mx::ratio(eps * g.smax[j], o.beta * st.rn);
            score(&mut rows, "neuron_layer", &l.name, sname, "bptt_j", st, o, thr, thr_lab, tau, floor_rel, f64::NAN, precondition(floor_rel), &mut summary);
            info_rows(&mut rows, &l.name, sname, &g.raw[si][j], o);
        }
    }
    // Identities I1–I3 (always scored).
    crate::progress::message("gdu: identity I1 (truncated BPTT by autograd)");
    let trunc = bptt_trunc_autograd(m, p, batch, &g.traj);
    crate::progress::message("gdu: identities I2–I4 (EP estimates)");
    let s_t = &g.traj[k];
    let start = relax(m, p, batch, s_t, 0.0, &RelaxOptions::fixed(0));
    let len = PhaseLengths { t_free: 0, k_nudge: o.k, tol: None };
    let (ep_plus, _) = ep_one_sided::estimate(m, p, batch, &start, o.beta, len);
    let (ep_minus, _) = ep_one_sided::estimate(m, p, batch, &start, -o.beta, len);
    let (ep_c, _, _) = ep_centered::estimate(m, p, batch, &start, o.beta, len);
    let fmax = f_norm_max.iter().cloned().fold(0.0, f64::max);
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
    // rel_linf = max|a − r| / max|r| and the scale max(‖a‖, ‖r‖), on the device, tensor by tensor: the maxima are
    // those over the concatenation, without a float64 copy of every parameter (1 GB at the IMDB-style size).
    let linf = |a: &[Tensor], r: &[Tensor]| -> (f64, f64) {
        let nanmax = |x: f64, y: f64| if x.is_nan() || y.is_nan() { f64::NAN } else { x.max(y) };
        let (mut dmax, mut rmax, mut a2, mut r2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for (x, y) in a.iter().zip(r) {
            let y = y.detach().reshape([-1]);
            if y.numel() == 0 {
                continue;
            }
            let n = y.numel() as i64;
            // One fused pass over both where they are contiguous CPU tensors of one float kind, else libtorch.
            let (d, m, x2, y2) = match (fused::usable(y.kind(), n, &[x, &y]), y.kind()) {
                (true, Kind::Float) => fused::linf::<f32>(n as usize, x, &y),
                (true, _) => fused::linf::<f64>(n as usize, x, &y),
                (false, _) => (maxabs_diff(x, &y), scalar(&y.abs().max()), sumsq_f64(x), sumsq_f64(&y)),
            };
            dmax = nanmax(dmax, d);
            rmax = nanmax(rmax, m);
            (a2, r2) = (a2 + x2, r2 + y2);
        }
        (mx::ratio(dmax, rmax), r2.sqrt().max(a2.sqrt()))
    };
    let ids: [(&str, &str, &Vec<Tensor>, &[Tensor], bool); 4] = [
        ("I1", "sum(bptt series) = bptt_trunc", &g.totals[0], &trunc, false),
        ("I2", "sum(ep_plus series) = ep_plus", &g.totals[1], &ep_plus.tensors, true),
        ("I3", "sum(ep_minus series) = ep_minus", &g.totals[2], &ep_minus.tensors, true),
        ("I4", "sum(ep_sym series) = ep_centered", &g.totals[3], &ep_c.tensors, true),
    ];
    for (id, name, a, r, ep) in ids {
        let (v, scale) = linf(a, r);
        identity(&mut rows, id, name, v, scale, ep);
    }
    if let Some((dmax, qmax)) = g.quadratic {
        identity(&mut rows, "Q", "one-sweep = published K+1 re-run", mx::ratio(dmax, qmax), 0.0, false);
    }
    crate::progress::message("gdu: rows");
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
    let rho = |e1: &Tensor, e2: &Tensor, eb: &Tensor| {
        let e3 = (e1 + e2) * 0.5;
        let den = (e1 - eb).abs() + (e2 - eb).abs();
        ((e3 - eb).abs() * 2.0 / &den).masked_fill(&den.eq(0.0), 1.0)
    };
    // The mean of ρ over the elements, chunk by chunk (2²⁰ elements): the ten temporaries of the formula exist
    // for one chunk at a time, not for the whole tensor (1.4 GB to fault in for the IMDB-style projection).
    let (e1, e2, eb) = (e1.reshape([-1]), e2.reshape([-1]), eb.reshape([-1]));
    let n = e1.numel() as i64;
    if n <= crate::tensor_util::CHUNK {
        return mean_std_dev(&rho(&e1, &e2, &eb)).0;
    }
    let sums = crate::tensor_util::chunk_ranges(n).map(|(lo, len)| rho(&e1.narrow(0, lo, len), &e2.narrow(0, lo, len), &eb.narrow(0, lo, len)).sum(Kind::Double));
    sums.reduce(|a, b| a + b).map_or(f64::NAN, |t| scalar(&t)) / n as f64
}

/// `series_form` of the cumulative rows: `cum` (inclusive prefix sums) or `cum_excl` (`prefix = exclusive`).
fn cum_form(o: &GduOptions) -> &'static str {
    if o.prefix_exclusive {
        "cum_excl"
    } else {
        "cum"
    }
}

/// The step-form metrics of a neuron series against raw BPTT_s (reference `bptt_raw`, info; checks §3 step 4):
/// the numbers the Laborieux `check_gdu`/`RMSE` printout reports for `neurons_<i>` (`lab_rmse` = its "RMSE",
/// `sign_err` = its "SIGN err"), and the other step-form metrics. No verdict, no summary line.
fn info_rows(rows: &mut Rows, name: &str, sname: &str, st: &PairStats, o: &GduOptions) {
    let mut push = |metric: &str, value: f64, t: Option<i64>, info: bool| {
        let mut row = rows.row("neuron_layer", name, metric, value);
        row.series = Some(sname.into());
        row.reference = Some("bptt_raw".into());
        row.series_form = Some("step".into());
        row.t = t;
        if t.is_none() {
            row.beta = Some(o.beta);
            row.estimator = Some(if sname == "ep_sym" { "ep_centered".into() } else { sname.into() });
        }
        if info {
            row.verdict = Some("info".into());
        }
        rows.push(row);
    };
    push("rel_l2", st.rel, None, true);
    push("lab_rmse", st.lab, None, false);
    push("lab_rmse_std", st.lab_std, None, false);
    push("lab_rmse_guard_frac", st.guard, None, false);
    push("both_zero_elems", st.both_zero as f64, None, false);
    push("sign_err", st.sign_err, None, false);
    if !st.sig.is_nan() {
        push("sign_err_sig", st.sig, None, false);
    }
    push("ern_rel_mean", st.ern_m, None, false);
    push("ern_rel_std", st.ern_s, None, false);
    push("cos", st.cos, None, true);
    for (t, &v) in st.step_rel.iter().enumerate() {
        if v.is_finite() {
            push("rel_l2", v, Some(t as i64), false);
        }
    }
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
        let form = cum_form(o);
        push("ern_rel_mean", em, form, None, false);
        push("ern_rel_std", es, form, None, false);
        push("same_sign_frac", same, form, None, false);
        push("both_zero_frac", zero, form, None, false);
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

#[cfg(test)]
mod tests {
    //! The chunked reductions of the identities and sym_ratio against the whole-tensor formulas they replace
    //! (the oracle: one float64 expression over the whole tensor), at sizes above one chunk (2²⁰ elements).
    use super::*;

    fn draws(n: i64, kind: Kind, seed: i64) -> [Tensor; 3] {
        let _g = crate::tensor_util::rng_lock();
        tch::manual_seed(seed);
        let a = Tensor::randn([n], (kind, tch::Device::Cpu));
        let b = &a + Tensor::randn([n], (kind, tch::Device::Cpu)) * 0.1;
        let c = Tensor::randn([n], (kind, tch::Device::Cpu));
        // Planted ties and zeros: den = 0 where e1 = e2 = eb (ρ = 1 there), and a NaN-free exact-equality block.
        let _ = b.narrow(0, 10, 1000).copy_(&a.narrow(0, 10, 1000));
        let _ = c.narrow(0, 10, 1000).copy_(&a.narrow(0, 10, 1000));
        [a, b, c]
    }

    /// The one-pass statistics (`fused::pair_stats`, `fused::cum_stats`: Σ(x − m)² about a sampled shift)
    /// against host two-pass formulas over the same per-element quotients, at sizes above the 1024-element sample
    /// and with quotients whose mean is 10⁴ times their spread (where a shift far from the mean would cancel).
    #[test]
    fn one_pass_statistics_equal_two_pass_host_formulas() {
        let _g = crate::tensor_util::rng_lock();
        tch::manual_seed(11);
        let (n, k) = (50_003i64, 7.0);
        let opts = (Kind::Double, tch::Device::Cpu);
        let sr2 = Tensor::rand([n], opts) + 1.0;
        let sa2 = &sr2 * (Tensor::rand([n], opts) * 1e-4 + 1.0);
        let sd2 = &sr2 * (Tensor::rand([n], opts) * 1e-4 + 0.25);
        let (nz_a, nz) = (sa2.ne(0.0), sr2.ne(0.0));
        let host = |x: &Tensor| {
            let v = to_vec_f64(x);
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().sum::<f64>(), v.iter().map(|q| (q - m).powi(2)).sum::<f64>())
        };
        let (a, r, d) = (to_vec_f64(&sa2), to_vec_f64(&sr2), to_vec_f64(&sd2));
        let lab: Vec<f64> = (0..n as usize).map(|i| (d[i] / k).sqrt() / ((a[i] / k).sqrt().max((r[i] / k).sqrt()) + 1e-10)).collect();
        let ern: Vec<f64> = (0..n as usize).map(|i| (d[i] / a[i].max(r[i])).sqrt()).collect();
        let st = fused::pair_stats::<f64>(n as usize, k, &sa2, &sr2, &sd2, &nz_a, &nz);
        for (what, got, want) in [("lab", st.lab, host(&Tensor::from_slice(&lab))), ("ern", st.ern, host(&Tensor::from_slice(&ern)))] {
            assert!((got.0 - want.0).abs() <= 1e-12 * want.0, "{what} sum: {} vs {}", got.0, want.0);
            assert!(want.1 > 0.0 && (got.1 - want.1).abs() <= 1e-9 * want.1, "{what} Σ(x − m)²: one pass {} vs two passes {}", got.1, want.1);
        }
        let (c, rc) = (Tensor::randn([n], opts), Tensor::randn([n], opts));
        let cs = fused::cum_stats::<f64>(n as usize, &sd2, &sa2, &sr2, &c, &rc);
        let want = host(&Tensor::from_slice(&ern));
        assert!((cs.ern.1 - want.1).abs() <= 1e-9 * want.1, "cum ern Σ(x − m)²: one pass {} vs two passes {}", cs.ern.1, want.1);
    }

    #[test]
    fn chunked_sym_ratio_equals_the_whole_tensor_formula() {
        for (kind, tol) in [(Kind::Double, 1e-13), (Kind::Float, 1e-6)] {
            let [e1, e2, eb] = draws(3 * (1 << 20) + 12_345, kind, 7);
            let (x1, x2, xb) = (e1.to_kind(Kind::Double), e2.to_kind(Kind::Double), eb.to_kind(Kind::Double));
            let den = (&x1 - &xb).abs() + (&x2 - &xb).abs();
            let rho = (((&x1 + &x2) * 0.5 - &xb).abs() * 2.0 / &den).masked_fill(&den.eq(0.0), 1.0);
            let oracle = rho.mean(Kind::Double).double_value(&[]);
            let got = sym_ratio_dev(&e1, &e2, &eb);
            assert!((got - oracle).abs() <= tol * oracle.abs(), "{kind:?}: chunked {got} vs whole-tensor {oracle}");
        }
    }

    #[test]
    fn chunked_max_abs_difference_equals_the_whole_tensor_maximum_and_keeps_nan() {
        let [a, b, _] = draws(2 * (1 << 20) + 3, Kind::Float, 8);
        let oracle = (&a - &b).abs().max().double_value(&[]);
        assert_eq!(maxabs_diff(&a, &b), oracle);
        // The largest difference in the last (partial) chunk.
        let _ = b.get(2 * (1 << 20) + 1).fill_(1e3);
        assert_eq!(maxabs_diff(&a, &b), (&a - &b).abs().max().double_value(&[]));
        let _ = b.get(5).fill_(f64::NAN);
        assert!(maxabs_diff(&a, &b).is_nan());
        assert_eq!(maxabs_diff(&a.narrow(0, 0, 0), &b.narrow(0, 0, 0)), 0.0);
    }

    /// The identities' one fused pass (`fused::linf`) against whole-tensor libtorch formulas: max|x − y| and max|y|
    /// exactly (maxima are exact), Σx² and Σy² against a float64 host sum; the largest difference planted in the
    /// tail (n is not a multiple of the lanes); a NaN makes both maxima NaN.
    #[test]
    fn fused_identity_pass_equals_the_whole_tensor_formulas_and_keeps_nan() {
        for (kind, n) in [(Kind::Float, 2 * (1 << 20) + 3), (Kind::Double, (1 << 17) + 5)] {
            let [a, b, _] = draws(n, kind, 12);
            let _ = b.get(n - 2).fill_(1e3);
            let run = |a: &Tensor, b: &Tensor| if kind == Kind::Float { fused::linf::<f32>(n as usize, a, b) } else { fused::linf::<f64>(n as usize, a, b) };
            let (d, m, x2, y2) = run(&a, &b);
            assert_eq!(d, (&a - &b).abs().max().double_value(&[]), "{kind:?} max|x − y|");
            assert_eq!(d, (a.get(n - 2) - b.get(n - 2)).abs().double_value(&[]), "{kind:?}: the planted difference");
            assert_eq!(m, b.abs().max().double_value(&[]), "{kind:?} max|y|");
            let host = |t: &Tensor| crate::tensor_util::to_vec_f64(&(t * t)).iter().sum::<f64>();
            assert!((x2 - host(&a)).abs() <= 1e-12 * host(&a) && (y2 - host(&b)).abs() <= 1e-12 * host(&b), "{kind:?} sums {x2} {y2}");
            let _ = b.get(5).fill_(f64::NAN);
            let (d, m, _, y2) = run(&a, &b);
            assert!(d.is_nan() && m.is_nan() && y2.is_nan(), "{kind:?}: NaN kept ({d}, {m}, {y2})");
        }
    }

    #[test]
    fn largest_elements_of_a_float32_score_are_those_of_its_float64_copy() {
        let [a, _, _] = draws(1 << 16, Kind::Float, 9);
        let s = a.abs();
        // Planted ties at the top and a non-finite score (sorted last).
        let _ = s.narrow(0, 100, 3).fill_(50.0);
        let _ = s.get(7).fill_(f64::INFINITY);
        let want = super::super::largest_elements(&crate::tensor_util::to_vec_f64(&s), 8);
        assert_eq!(largest_elements_dev(&s, 8), want);
        assert_eq!(largest_elements_dev(&s.to_kind(Kind::Double), 8), want);
        assert_eq!(&want[..3], &[100, 101, 102]);
    }
}
