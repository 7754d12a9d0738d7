//! The loops are written over chunks of [`L`] elements with one accumulator per lane (`Lanes`), so the compiler
//! turns each chunk into vector instructions (SSE2 everywhere; AVX2 where the CPU has it, chosen at run time:
//! [`crate::simd`]). The per-element sums are the same operations on each element in the same step order as the
//! libtorch path; only the float64 per-step sums over elements are added lane by lane and the lanes then in
//! order (a fixed order: the same numbers on every CPU and instruction set, the float64 round-off of a different
//! summation order from the scalar loop's).
//!
//! Every raw slice here (`SAFETY: see sl`) is of a tensor that `usable`/`usable_masks` checked (kind, device, size,
//! contiguity); the sums written are distinct tensors (each its own allocation), the series and references are
//! only read, and each thread gets a disjoint range.
use crate::simd::{addr, ch, chm, sl, split, Kernel, Real, L};
use tch::{Device, Kind, Tensor};


/// Per-step sums of one pair update.
#[derive(Default, Clone, Copy)]
pub struct Sums {
    pub d2: f64,
    pub a2: f64,
    pub ar: f64,
    pub neg: i64,
    pub sig_n: i64,
    pub sig_bad: i64,
}

impl Sums {
    fn add(mut self, o: Sums) -> Sums {
        self.d2 += o.d2;
        self.a2 += o.a2;
        self.ar += o.ar;
        self.neg += o.neg;
        self.sig_n += o.sig_n;
        self.sig_bad += o.sig_bad;
        self
    }
}

/// [`Sums`] with one accumulator per lane of a chunk of N elements.
#[derive(Clone, Copy)]
struct Lanes<const N: usize> {
    d2: [f64; N],
    a2: [f64; N],
    ar: [f64; N],
    neg: [i64; N],
    sig_n: [i64; N],
    sig_bad: [i64; N],
}

impl<const N: usize> Lanes<N> {
    fn new() -> Self {
        Lanes { d2: [0.0; N], a2: [0.0; N], ar: [0.0; N], neg: [0; N], sig_n: [0; N], sig_bad: [0; N] }
    }
    /// The lanes added in lane order.
    fn sums(&self) -> Sums {
        Sums {
            d2: self.d2.iter().sum(),
            a2: self.a2.iter().sum(),
            ar: self.ar.iter().sum(),
            neg: self.neg.iter().sum(),
            sig_n: self.sig_n.iter().sum(),
            sig_bad: self.sig_bad.iter().sum(),
        }
    }
}

// Per thread, not per process: the test harness runs tests in threads, and a process-wide switch turned off by one
// test changed the path (and the float32 rounding) of another test's run in between.
thread_local! {
    static ENABLED: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Turns the fused kernels off (the libtorch path, as on CUDA) or back on — for tests of the libtorch path on the
/// CPU; for the calling thread (the check runs its sums on the thread that calls it). Both paths compute the
/// same numbers up to float32 rounding (tests/gdu_stream.rs).
pub fn set_enabled(on: bool) {
    ENABLED.with(|e| e.set(on));
}

/// Whether every tensor is a contiguous CPU tensor of `kind` with `n` elements (and the kernels are on).
pub fn usable(kind: Kind, n: i64, ts: &[&Tensor]) -> bool {
    ENABLED.with(|e| e.get()) && matches!(kind, Kind::Float | Kind::Double) && ts.iter().all(|t| t.device() == Device::Cpu && t.kind() == kind && t.numel() as i64 == n && t.is_contiguous())
}

/// Whether every mask is a contiguous CPU bool tensor of `n` elements (the nonzero masks the kernels write
/// or read as bytes).
pub fn usable_masks(n: i64, ms: &[&Tensor]) -> bool {
    ms.iter().all(|b| b.device() == Device::Cpu && b.is_contiguous() && b.kind() == Kind::Bool && b.numel() as i64 == n)
}
/// One pair's per-element sums as addresses: sa2, sd2, nz and the cumulative (c, dc2, c2).
#[derive(Clone, Copy)]
struct PairAddr {
    sa2: usize,
    sd2: usize,
    nz: usize,
    cum: Option<(usize, usize, usize)>,
}

impl PairAddr {
    fn of(sa2: &Tensor, sd2: &Tensor, nz: &Tensor, cum: Option<(&Tensor, &Tensor, &Tensor)>) -> Self {
        PairAddr { sa2: addr(sa2), sd2: addr(sd2), nz: addr(nz), cum: cum.map(|(c, dc2, c2)| (addr(c), addr(dc2), addr(c2))) }
    }
    /// SAFETY: as [`sl`].
    #[inline(always)]
    unsafe fn slices<'a, T>(self, lo: usize, hi: usize) -> PairSlices<'a, T> {
        unsafe { PairSlices { sa2: sl(self.sa2, lo, hi), sd2: sl(self.sd2, lo, hi), nz: sl(self.nz, lo, hi), cum: self.cum.map(|(c, dc2, c2)| (sl(c, lo, hi), sl(dc2, lo, hi), sl(c2, lo, hi))) } }
    }
}

/// One pair's per-element sums over one range.
struct PairSlices<'a, T> {
    sa2: &'a mut [T],
    sd2: &'a mut [T],
    nz: &'a mut [u8],
    cum: Option<(&'a mut [T], &'a mut [T], &'a mut [T])>,
}

/// One chunk of a pair update (see [`pair`]) at element b of the range: the per-element sums of the chunk's N
/// elements and the per-step float64 sums into the lane accumulators `s`. `x` is the series' values, `y` the
/// reference's; `rc` the reference's cumulative sums after this step (read with cumulative sums only). The chunk
/// is loaded into locals, updated there and stored back: the compiler sees no aliasing and vectorizes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pair_chunk<T: Real, const N: usize>(b: usize, x: &[T; N], y: &[T; N], thr: T, p: &mut PairSlices<'_, T>, rc: &[T; N], s: &mut Lanes<N>) {
    let (x, y) = (*x, *y);
    let (sa2, sd2, nz) = (chm::<T, N>(p.sa2, b), chm::<T, N>(p.sd2, b), chm::<u8, N>(p.nz, b));
    let (mut va, mut vd, mut vz, mut ls) = (*sa2, *sd2, *nz, *s);
    for l in 0..N {
        let d = x[l] - y[l];
        vd[l] = vd[l] + d * d;
        va[l] = va[l] + x[l] * x[l];
        vz[l] |= (x[l] != T::ZERO) as u8;
        // The per-step sums and the sign of a·r in float64 (float32 squares and products underflow below 1e-19 in
        // magnitude; float64 as the libtorch path of float64 runs).
        let (xf, yf) = (x[l].f64(), y[l].f64());
        let (df, pr) = (xf - yf, xf * yf);
        ls.d2[l] += df * df;
        ls.a2[l] += xf * xf;
        ls.ar[l] += pr;
        let (neg, sig) = (pr < 0.0, y[l].abs() > thr);
        ls.neg[l] += neg as i64;
        ls.sig_n[l] += sig as i64;
        ls.sig_bad[l] += (neg & sig) as i64;
    }
    (*sa2, *sd2, *nz, *s) = (va, vd, vz, ls);
    if let Some((c, dc2, c2)) = p.cum.as_mut() {
        let (c, dc2, c2) = (chm::<T, N>(c, b), chm::<T, N>(dc2, b), chm::<T, N>(c2, b));
        let (mut vc, mut ve, mut vc2, rc) = (*c, *dc2, *c2, *rc);
        for l in 0..N {
            let ci = vc[l] + x[l];
            vc[l] = ci;
            let e = ci - rc[l];
            ve[l] = ve[l] + e * e;
            vc2[l] = vc2[l] + ci * ci;
        }
        (*c, *dc2, *c2) = (vc, ve, vc2);
    }
}

/// One chunk of a reference update (see [`reference`]) at element b of the range: sr2 += y², Σy² into the lane
/// accumulators `s` in float64, and with the cumulative sums c += y, cs += c²; returns the reference's cumulative
/// sums after this step (zeros without them).
#[inline(always)]
fn ref_chunk<T: Real, const N: usize>(b: usize, y: &[T; N], sr2: &mut [T], cum: Option<(&mut [T], &mut [T])>, s: &mut [f64; N]) -> [T; N] {
    let y = *y;
    let sr2 = chm::<T, N>(sr2, b);
    let (mut v, mut ls) = (*sr2, *s);
    for l in 0..N {
        ls[l] += y[l].f64() * y[l].f64();
        v[l] = v[l] + y[l] * y[l];
    }
    (*sr2, *s) = (v, ls);
    let mut rc = [T::ZERO; N];
    if let Some((c, cs)) = cum {
        let (c, cs) = (chm::<T, N>(c, b), chm::<T, N>(cs, b));
        let (mut vc, mut vs) = (*c, *cs);
        for l in 0..N {
            vc[l] = vc[l] + y[l];
            vs[l] = vs[l] + vc[l] * vc[l];
        }
        (*c, *cs, rc) = (vc, vs, vc);
    }
    rc
}

/// [`pair`] as a [`Kernel`].
struct PairK<T> {
    a: usize,
    r: usize,
    thr: T,
    q: PairAddr,
    rc: Option<usize>,
}

impl<T: Real> Kernel for PairK<T> {
    type Out = Sums;
    #[inline(always)]
    fn run(&self, lo: usize, hi: usize) -> Sums {
        // SAFETY: see `sl`.
        let (a, r, mut q) = unsafe { (&*sl::<T>(self.a, lo, hi), &*sl::<T>(self.r, lo, hi), self.q.slices::<T>(lo, hi)) };
        let rc = self.rc.map(|p| unsafe { &*sl::<T>(p, lo, hi) });
        #[inline(always)]
        fn chunk<T: Real, const N: usize>(b: usize, a: &[T], r: &[T], thr: T, q: &mut PairSlices<'_, T>, rc: Option<&[T]>, s: &mut Lanes<N>) {
            let zeros = [T::ZERO; N];
            pair_chunk::<T, N>(b, ch(a, b), ch(r, b), thr, q, rc.map_or(&zeros, |rc| ch(rc, b)), s);
        }
        let (m, mut b) = (hi - lo, 0);
        let (mut s, mut t) = (Lanes::<L>::new(), Lanes::<1>::new());
        while b + L <= m {
            chunk::<T, L>(b, a, r, self.thr, &mut q, rc, &mut s);
            b += L;
        }
        for i in b..m {
            chunk::<T, 1>(i, a, r, self.thr, &mut q, rc, &mut t);
        }
        s.sums().add(t.sums())
    }
    fn comb(a: Sums, b: Sums) -> Sums {
        a.add(b)
    }
}

/// Pair update: sd2 += d², sa2 += a², nz_a |= a ≠ 0, and with the cumulative sums c += a, dc2 += (c − rc)²,
/// c2 += c²; returns Σd², Σa·r, #(a·r < 0), #(|r| > thr), #(both).
#[allow(clippy::too_many_arguments)]
pub fn pair<T: Real>(n: usize, a: &Tensor, r: &Tensor, thr: f64, sa2: &Tensor, sd2: &Tensor, nz_a: &Tensor, cum: Option<(&Tensor, &Tensor, &Tensor, &Tensor)>) -> Sums {
    let q = PairAddr::of(sa2, sd2, nz_a, cum.map(|(c, dc2, c2, _)| (c, dc2, c2)));
    split(n, &PairK { a: addr(a), r: addr(r), thr: T::of(thr), q, rc: cum.map(|(_, _, _, rc)| addr(rc)) })
}

/// The per-element sums of one pair (sa2, sd2, nz_a, and (c, dc2, c2) with cumulative sums).
pub type PairSums<'a> = (&'a Tensor, &'a Tensor, &'a Tensor, Option<(&'a Tensor, &'a Tensor, &'a Tensor)>);

/// [`triple`] as a [`Kernel`].
struct TripleK<T> {
    r: usize,
    ap: usize,
    am: usize,
    sr2: usize,
    rc: Option<(usize, usize)>,
    q: [PairAddr; 3],
    thr: [T; 3],
}

/// One chunk of [`triple`] at element b of the range: the reference, then its three series.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn triple_chunk<T: Real, const N: usize>(b: usize, (r, ap, am): (&[T], &[T], &[T]), sr2: &mut [T], rc: &mut Option<(&mut [T], &mut [T])>, q: &mut [PairSlices<'_, T>; 3], thr: [T; 3], s0: &mut [f64; N], s: &mut [Lanes<N>; 3]) {
    // The reference first (`reference`): the pairs' cumulative forms compare with R_t after step t.
    let y = ch::<T, N>(r, b);
    let rci = ref_chunk::<T, N>(b, y, sr2, rc.as_mut().map(|(c, cs)| (&mut **c, &mut **cs)), s0);
    let (xp, xm) = (ch::<T, N>(ap, b), ch::<T, N>(am, b));
    let half = T::of(0.5);
    let xs: [T; N] = std::array::from_fn(|l| (xp[l] + xm[l]) * half);
    let [q0, q1, q2] = q;
    let [s1, s2, s3] = s;
    pair_chunk::<T, N>(b, xp, y, thr[0], q0, &rci, s1);
    pair_chunk::<T, N>(b, xm, y, thr[1], q1, &rci, s2);
    pair_chunk::<T, N>(b, &xs, y, thr[2], q2, &rci, s3);
}

impl<T: Real> Kernel for TripleK<T> {
    type Out = (f64, [Sums; 3]);
    #[inline(always)]
    fn run(&self, lo: usize, hi: usize) -> Self::Out {
        // SAFETY: see `sl`.
        let (r, ap, am, sr2) = unsafe { (&*sl::<T>(self.r, lo, hi), &*sl::<T>(self.ap, lo, hi), &*sl::<T>(self.am, lo, hi), sl::<T>(self.sr2, lo, hi)) };
        let mut rc = self.rc.map(|(c, s)| unsafe { (sl::<T>(c, lo, hi), sl::<T>(s, lo, hi)) });
        let mut q = self.q.map(|p| unsafe { p.slices::<T>(lo, hi) });
        let (m, mut b) = (hi - lo, 0);
        let (mut s0, mut s) = ([0.0f64; L], [Lanes::<L>::new(); 3]);
        let (mut t0, mut t) = ([0.0f64; 1], [Lanes::<1>::new(); 3]);
        while b + L <= m {
            triple_chunk::<T, L>(b, (r, ap, am), sr2, &mut rc, &mut q, self.thr, &mut s0, &mut s);
            b += L;
        }
        for i in b..m {
            triple_chunk::<T, 1>(i, (r, ap, am), sr2, &mut rc, &mut q, self.thr, &mut t0, &mut t);
        }
        (s0.iter().sum::<f64>() + t0[0], std::array::from_fn(|k| s[k].sums().add(t[k].sums())))
    }
    fn comb(a: Self::Out, b: Self::Out) -> Self::Out {
        (a.0 + b.0, [a.1[0].add(b.1[0]), a.1[1].add(b.1[1]), a.1[2].add(b.1[2])])
    }
}

/// One step of a reference and its three series in ONE pass over the elements: the reference update of
/// [`reference`] (sums `sr2`, cumulative `rcum` = (rc, rc2)), then [`pair`] for a⁺, a⁻ and a_sym = (a⁺ + a⁻)·½
/// (formed per element, never stored: the same value as libtorch's `(a⁺ + a⁻)·0.5`). Every per-element sum is
/// the one the four separate updates compute, and so is every per-step sum (the same lanes, thread ranges and
/// order); r, rc and a± are read once instead of three times and no a_sym tensor is written.
/// Returns Σr² and the three pairs' sums.
#[allow(clippy::too_many_arguments)]
pub fn triple<T: Real>(n: usize, r: &Tensor, ap: &Tensor, am: &Tensor, sr2: &Tensor, rcum: Option<(&Tensor, &Tensor)>, thr: [f64; 3], pairs: [PairSums; 3]) -> (f64, [Sums; 3]) {
    let q = pairs.map(|(sa2, sd2, nz, cum)| PairAddr::of(sa2, sd2, nz, cum));
    split(n, &TripleK { r: addr(r), ap: addr(ap), am: addr(am), sr2: addr(sr2), rc: rcum.map(|(c, s)| (addr(c), addr(s))), q, thr: thr.map(T::of) })
}

/// [`reference`] as a [`Kernel`].
struct RefK<T> {
    r: usize,
    sr2: usize,
    cum: Option<(usize, usize)>,
    _t: std::marker::PhantomData<T>,
}

impl<T: Real> Kernel for RefK<T> {
    type Out = f64;
    #[inline(always)]
    fn run(&self, lo: usize, hi: usize) -> f64 {
        // SAFETY: see `sl`.
        let (r, sr2) = unsafe { (&*sl::<T>(self.r, lo, hi), sl::<T>(self.sr2, lo, hi)) };
        let mut cum = self.cum.map(|(c, s)| unsafe { (sl::<T>(c, lo, hi), sl::<T>(s, lo, hi)) });
        let (m, mut b) = (hi - lo, 0);
        let (mut s, mut t) = ([0.0f64; L], [0.0f64; 1]);
        while b + L <= m {
            ref_chunk::<T, L>(b, ch(r, b), sr2, cum.as_mut().map(|(c, cs)| (&mut **c, &mut **cs)), &mut s);
            b += L;
        }
        for i in b..m {
            ref_chunk::<T, 1>(i, ch(r, i), sr2, cum.as_mut().map(|(c, cs)| (&mut **c, &mut **cs)), &mut t);
        }
        s.iter().sum::<f64>() + t[0]
    }
    fn comb(a: f64, b: f64) -> f64 {
        a + b
    }
}

/// Reference update: sr2 += r², and with the cumulative sums c += r, s += c²; returns Σr².
pub fn reference<T: Real>(n: usize, r: &Tensor, sr2: &Tensor, cum: Option<(&Tensor, &Tensor)>) -> f64 {
    split(n, &RefK::<T> { r: addr(r), sr2: addr(sr2), cum: cum.map(|(c, s)| (addr(c), addr(s))), _t: std::marker::PhantomData })
}

/// Numbers of `PairAcc::stats` over the elements (per-element formulas as there, sums in float64).
#[derive(Default, Clone, Copy)]
pub struct Stat {
    pub guard: i64,
    pub both_zero: i64,
    /// Σ and Σ(· − mean)² of the lab_rmse and ern_rel quotients.
    pub lab: (f64, f64),
    pub ern: (f64, f64),
    pub na2: f64,
    pub nr2: f64,
    pub nd2: f64,
    pub same: i64,
}

impl Stat {
    fn add(mut self, o: Stat) -> Stat {
        self.guard += o.guard;
        self.both_zero += o.both_zero;
        self.lab = (self.lab.0 + o.lab.0, self.lab.1 + o.lab.1);
        self.ern = (self.ern.0 + o.ern.0, self.ern.1 + o.ern.1);
        self.na2 += o.na2;
        self.nr2 += o.nr2;
        self.nd2 += o.nd2;
        self.same += o.same;
        self
    }
}

/// [`Stat`] with one accumulator per lane.
#[derive(Clone, Copy)]
struct StatLanes<const N: usize> {
    guard: [i64; N],
    both_zero: [i64; N],
    lab: ([f64; N], [f64; N]),
    ern: ([f64; N], [f64; N]),
    na2: [f64; N],
    nr2: [f64; N],
    nd2: [f64; N],
    same: [i64; N],
}

impl<const N: usize> StatLanes<N> {
    fn new() -> Self {
        let (z, zi) = ([0.0; N], [0; N]);
        StatLanes { guard: zi, both_zero: zi, lab: (z, z), ern: (z, z), na2: z, nr2: z, nd2: z, same: zi }
    }
    /// The lanes added in lane order.
    fn stat(&self) -> Stat {
        let s = |x: &[f64; N]| x.iter().sum::<f64>();
        let si = |x: &[i64; N]| x.iter().sum::<i64>();
        Stat {
            guard: si(&self.guard),
            both_zero: si(&self.both_zero),
            lab: (s(&self.lab.0), s(&self.lab.1)),
            ern: (s(&self.ern.0), s(&self.ern.1)),
            na2: s(&self.na2),
            nr2: s(&self.nr2),
            nd2: s(&self.nd2),
            same: si(&self.same),
        }
    }
}

/// ern_rel's quotient √(Σd²/max(Σa², Σr²)), 0 where the maximum is 0.
#[inline(always)]
fn ern_q<T: Real>(sd2: T, sa2: T, sr2: T) -> T {
    let m = sa2.nanmax(sr2);
    // Both sides computed and one selected: a branch-free select, which the chunk loops vectorize.
    let q = (sd2 / m).sqrt();
    if m == T::ZERO {
        T::ZERO
    } else {
        q
    }
}

/// The mean of `f` over at most 1024 evenly strided indices of 0..n: the shift of [`centered`].
fn sample_mean(n: usize, f: impl Fn(usize) -> f64) -> f64 {
    let step = (n / 1024).max(1);
    let (s, c) = (0..n).step_by(step).fold((0.0, 0usize), |(s, c), i| (s + f(i), c + 1));
    s / c.max(1) as f64
}

/// Σ(x − m)² (m = Σx/n) from ONE pass's Σx and Σ(x − K)² about a shift K: Σ(x − K)² − n(m − K)², exact in real
/// arithmetic. With K the mean of a sample of the x (`sample_mean`), n(m − K)² is about 1/1024 of the sum and
/// nothing cancels: the result is the two-pass Σ(x − m)² to float64 round-off ("shifted data" algorithm). None
/// where it is not finite (then the caller takes the second pass).
fn centered(sum: f64, sq_about_k: f64, k: f64, n: f64) -> Option<f64> {
    let d = sum / n - k;
    let v = sq_about_k - n * d * d;
    // (A NaN must not reach `max`, which would drop it.)
    v.is_finite().then(|| v.max(0.0))
}

/// One pass of [`pair_stats`] as a [`Kernel`]: `means` None: the one pass (sums, deviations about `shift`);
/// Some(means): the second pass (deviations from the means).
struct PairStatsK<T> {
    p: (usize, usize, usize, usize, usize),
    k: T,
    shift: (f64, f64),
    means: Option<(f64, f64)>,
}

impl<T: Real> PairStatsK<T> {
    /// (mx, lab_rmse quotient q, ern_rel quotient e) of an element from its sums (a, r, d) = (Σa², Σr², Σd²).
    #[inline(always)]
    fn elem(k: T, a: T, r: T, d: T) -> (T, T, T) {
        let mx = (a / k).sqrt().nanmax((r / k).sqrt());
        (mx, (d / k).sqrt() / (mx + T::of(1e-10)), ern_q(d, a, r))
    }
}

/// The inputs of a [`PairStatsK`] pass over one range: Σa², Σr², Σd² and the two nonzero masks.
type StatIn<'a, T> = (&'a [T], &'a [T], &'a [T], &'a [u8], &'a [u8]);

/// One chunk of a [`PairStatsK`] pass.
#[inline(always)]
fn pair_stats_chunk<T: Real, const N: usize>(b: usize, (sa2, sr2, sd2, nza, nz): StatIn<'_, T>, k: T, shift: (f64, f64), means: Option<(f64, f64)>, s: &mut StatLanes<N>) {
    let (a, r, d) = (*ch::<T, N>(sa2, b), *ch::<T, N>(sr2, b), *ch::<T, N>(sd2, b));
    let g = T::of(1e-8);
    let mut ls = *s;
    match means {
        None => {
            let (za, zr) = (*ch::<u8, N>(nza, b), *ch::<u8, N>(nz, b));
            for l in 0..N {
                let (mx, q, e) = PairStatsK::elem(k, a[l], r[l], d[l]);
                let (q, e) = (q.f64(), e.f64());
                ls.guard[l] += (mx < g) as i64;
                ls.both_zero[l] += ((za[l] | zr[l]) == 0) as i64;
                ls.lab.0[l] += q;
                ls.ern.0[l] += e;
                ls.lab.1[l] += (q - shift.0) * (q - shift.0);
                ls.ern.1[l] += (e - shift.1) * (e - shift.1);
                ls.na2[l] += a[l].f64();
                ls.nr2[l] += r[l].f64();
                ls.nd2[l] += d[l].f64();
            }
        }
        Some((ml, me)) => {
            for l in 0..N {
                let (_, q, e) = PairStatsK::elem(k, a[l], r[l], d[l]);
                let (q, e) = (q.f64(), e.f64());
                ls.lab.1[l] += (q - ml) * (q - ml);
                ls.ern.1[l] += (e - me) * (e - me);
            }
        }
    }
    *s = ls;
}

impl<T: Real> Kernel for PairStatsK<T> {
    type Out = Stat;
    #[inline(always)]
    fn run(&self, lo: usize, hi: usize) -> Stat {
        let p = self.p;
        // SAFETY: see `sl` (read only here).
        let v = unsafe { (&*sl::<T>(p.0, lo, hi), &*sl::<T>(p.1, lo, hi), &*sl::<T>(p.2, lo, hi), &*sl::<u8>(p.3, lo, hi), &*sl::<u8>(p.4, lo, hi)) };
        let (m, mut b) = (hi - lo, 0);
        let (mut s, mut t) = (StatLanes::<L>::new(), StatLanes::<1>::new());
        while b + L <= m {
            pair_stats_chunk::<T, L>(b, v, self.k, self.shift, self.means, &mut s);
            b += L;
        }
        for i in b..m {
            pair_stats_chunk::<T, 1>(i, v, self.k, self.shift, self.means, &mut t);
        }
        s.stat().add(t.stat())
    }
    fn comb(a: Stat, b: Stat) -> Stat {
        a.add(b)
    }
}

/// Step-form statistics of a pair: one pass (sums, and squared deviations about sampled means, `centered`); a
/// second pass (squared deviations from the means) only where that is not finite.
#[allow(clippy::too_many_arguments)]
pub fn pair_stats<T: Real>(n: usize, k: f64, sa2: &Tensor, sr2: &Tensor, sd2: &Tensor, nz_a: &Tensor, nz: &Tensor) -> Stat {
    let (kf, p) = (T::of(k), (addr(sa2), addr(sr2), addr(sd2), addr(nz_a), addr(nz)));
    // SAFETY: as in `sl` (read only; i < n).
    let at = |p: usize, i: usize| unsafe { *(p as *const T).add(i) };
    let el = |i: usize| PairStatsK::elem(kf, at(p.0, i), at(p.1, i), at(p.2, i));
    let shift = (sample_mean(n, |i| el(i).1.f64()), sample_mean(n, |i| el(i).2.f64()));
    let first = split(n, &PairStatsK { p, k: kf, shift, means: None });
    let nf = n as f64;
    if let (Some(lv), Some(ev)) = (centered(first.lab.0, first.lab.1, shift.0, nf), centered(first.ern.0, first.ern.1, shift.1, nf)) {
        return Stat { lab: (first.lab.0, lv), ern: (first.ern.0, ev), ..first };
    }
    let second = split(n, &PairStatsK { p, k: kf, shift, means: Some((first.lab.0 / nf, first.ern.0 / nf)) });
    Stat { lab: (first.lab.0, second.lab.1), ern: (first.ern.0, second.ern.1), ..first }
}

/// One pass of [`cum_stats`] as a [`Kernel`] (`mean` as `means` in [`PairStatsK`]).
struct CumStatsK<T> {
    p: (usize, usize, usize, usize, usize),
    shift: f64,
    mean: Option<f64>,
    _t: std::marker::PhantomData<T>,
}

/// One chunk of a [`CumStatsK`] pass.
#[inline(always)]
fn cum_stats_chunk<T: Real, const N: usize>(b: usize, [dc2, c2, rc2, c, rc]: [&[T]; 5], shift: f64, mean: Option<f64>, s: &mut StatLanes<N>) {
    let (d, a, r) = (*ch::<T, N>(dc2, b), *ch::<T, N>(c2, b), *ch::<T, N>(rc2, b));
    let mut ls = *s;
    match mean {
        None => {
            let (c, rc) = (*ch::<T, N>(c, b), *ch::<T, N>(rc, b));
            for l in 0..N {
                let e = ern_q(d[l], a[l], r[l]).f64();
                ls.ern.0[l] += e;
                ls.ern.1[l] += (e - shift) * (e - shift);
                ls.same[l] += (c[l] * rc[l] > T::ZERO) as i64;
                ls.both_zero[l] += ((c[l] == T::ZERO) & (rc[l] == T::ZERO)) as i64;
            }
        }
        Some(me) => {
            for l in 0..N {
                let e = ern_q(d[l], a[l], r[l]).f64();
                ls.ern.1[l] += (e - me) * (e - me);
            }
        }
    }
    *s = ls;
}

impl<T: Real> Kernel for CumStatsK<T> {
    type Out = Stat;
    #[inline(always)]
    fn run(&self, lo: usize, hi: usize) -> Stat {
        let p = self.p;
        // SAFETY: see `sl` (read only here).
        let v: [&[T]; 5] = unsafe { [&*sl::<T>(p.0, lo, hi), &*sl::<T>(p.1, lo, hi), &*sl::<T>(p.2, lo, hi), &*sl::<T>(p.3, lo, hi), &*sl::<T>(p.4, lo, hi)] };
        let (m, mut b) = (hi - lo, 0);
        let (mut s, mut t) = (StatLanes::<L>::new(), StatLanes::<1>::new());
        while b + L <= m {
            cum_stats_chunk::<T, L>(b, v, self.shift, self.mean, &mut s);
            b += L;
        }
        for i in b..m {
            cum_stats_chunk::<T, 1>(i, v, self.shift, self.mean, &mut t);
        }
        s.stat().add(t.stat())
    }
    fn comb(a: Stat, b: Stat) -> Stat {
        a.add(b)
    }
}

/// Cumulative-form statistics: ern_rel of (Σ(A−R)², ΣA², ΣR²) (Σ and Σ(· − mean)², one pass as in
/// `pair_stats`), #(c·rc > 0), #(c = 0 and rc = 0) (in `both_zero`).
pub fn cum_stats<T: Real>(n: usize, dc2: &Tensor, c2: &Tensor, rc2: &Tensor, c: &Tensor, rc: &Tensor) -> Stat {
    let p = (addr(dc2), addr(c2), addr(rc2), addr(c), addr(rc));
    // SAFETY: as in `sl` (read only; i < n).
    let at = |p: usize, i: usize| unsafe { *(p as *const T).add(i) };
    let shift = sample_mean(n, |i| ern_q(at(p.0, i), at(p.1, i), at(p.2, i)).f64());
    let k = |mean| CumStatsK::<T> { p, shift, mean, _t: std::marker::PhantomData };
    let first = split(n, &k(None));
    if let Some(ev) = centered(first.ern.0, first.ern.1, shift, n as f64) {
        return Stat { ern: (first.ern.0, ev), ..first };
    }
    let second = split(n, &k(Some(first.ern.0 / n as f64)));
    Stat { ern: (first.ern.0, second.ern.1), ..first }
}

/// [`sumsq`] as a [`Kernel`].
struct SumSqK<T> {
    p: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Real> Kernel for SumSqK<T> {
    type Out = f64;
    #[inline(always)]
    fn run(&self, lo: usize, hi: usize) -> f64 {
        // SAFETY: see `sl` (read only here).
        let v = unsafe { &*sl::<T>(self.p, lo, hi) };
        let (m, mut b) = (hi - lo, 0);
        let mut s = [0.0f64; L];
        while b + L <= m {
            let c = *ch::<T, L>(v, b);
            for l in 0..L {
                s[l] += (c[l] * c[l]).f64();
            }
            b += L;
        }
        s.iter().sum::<f64>() + v[b..].iter().map(|&y| (y * y).f64()).sum::<f64>()
    }
    fn comb(a: f64, b: f64) -> f64 {
        a + b
    }
}

/// Σx² in float64 of a contiguous CPU tensor of T.
pub fn sumsq<T: Real>(x: &Tensor) -> f64 {
    split(x.numel(), &SumSqK::<T> { p: addr(x), _t: std::marker::PhantomData })
}

/// [`linf`] as a [`Kernel`].
struct LinfK<T> {
    x: usize,
    y: usize,
    _t: std::marker::PhantomData<T>,
}

/// (max|x − y|, max|y|, Σx², Σy²): maxima NaN if any element is NaN.
type LinfOut = (f64, f64, f64, f64);

impl<T: Real> Kernel for LinfK<T> {
    type Out = LinfOut;
    #[inline(always)]
    fn run(&self, lo: usize, hi: usize) -> LinfOut {
        // SAFETY: see `sl` (read only here).
        let (x, y) = unsafe { (&*sl::<T>(self.x, lo, hi), &*sl::<T>(self.y, lo, hi)) };
        let (m, mut b) = (hi - lo, 0);
        let (mut dm, mut ym, mut x2, mut y2) = ([T::ZERO; L], [T::ZERO; L], [0.0f64; L], [0.0f64; L]);
        while b + L <= m {
            let (xc, yc) = (*ch::<T, L>(x, b), *ch::<T, L>(y, b));
            for l in 0..L {
                dm[l] = (xc[l] - yc[l]).abs().nanmax(dm[l]);
                ym[l] = yc[l].abs().nanmax(ym[l]);
                x2[l] += (xc[l] * xc[l]).f64();
                y2[l] += (yc[l] * yc[l]).f64();
            }
            b += L;
        }
        let (mut tx2, mut ty2) = (0.0f64, 0.0f64);
        for i in b..m {
            dm[0] = (x[i] - y[i]).abs().nanmax(dm[0]);
            ym[0] = y[i].abs().nanmax(ym[0]);
            tx2 += (x[i] * x[i]).f64();
            ty2 += (y[i] * y[i]).f64();
        }
        let mx = |v: [T; L]| v.iter().fold(0.0f64, |a, &e| e.f64().nanmax(a));
        (mx(dm), mx(ym), x2.iter().sum::<f64>() + tx2, y2.iter().sum::<f64>() + ty2)
    }
    fn comb(a: LinfOut, b: LinfOut) -> LinfOut {
        (a.0.nanmax(b.0), a.1.nanmax(b.1), a.2 + b.2, a.3 + b.3)
    }
}

/// (max|x − y|, max|y|, Σx², Σy²) of two contiguous CPU tensors of T with n elements in ONE pass (the squares in T,
/// their sums in float64 as [`sumsq`], bitwise; a maximum is NaN if any element is): the identities' rel_linf and
/// scale.
pub fn linf<T: Real>(n: usize, x: &Tensor, y: &Tensor) -> LinfOut {
    split(n, &LinfK::<T> { x: addr(x), y: addr(y), _t: std::marker::PhantomData })
}
