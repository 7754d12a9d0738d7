//! CPU loops over contiguous tensor memory, vectorized and threaded: the plumbing of the fused GDU kernels
//! (`checks::gdu::fused`).
//!
//! A loop is written over chunks of [`L`] elements with one accumulator per lane, loaded into locals and stored
//! back, so the compiler turns each chunk into vector instructions: SSE2 everywhere, AVX2 where the CPU has it,
//! chosen at run time ([`run_simd`]). The numbers do not depend on the instruction set: the lanes fix the order of
//! every sum, and no multiply-add is fused (Rust does not contract `a * b + c`).
use tch::Tensor;

/// The float kinds of the kernels (float32, float64).
pub trait Real: Copy + Send + Sync + PartialOrd + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> + std::ops::Mul<Output = Self> + std::ops::Div<Output = Self> {
    const ZERO: Self;
    fn f64(self) -> f64;
    fn abs(self) -> Self;
    fn sqrt(self) -> Self;
    fn of(x: f64) -> Self;
    /// `torch.maximum`: NaN if either is NaN.
    #[inline(always)]
    fn nanmax(self, o: Self) -> Self {
        #[allow(clippy::eq_op)]
        if self != self || self > o {
            self
        } else {
            o
        }
    }
}
impl Real for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
}
impl Real for f64 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f64::abs(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
}

/// Elements per chunk: one accumulator per lane.
pub const L: usize = 8;

/// Threads for n elements: one below 2¹⁶, else libtorch's intra-op thread count (at most 16).
fn threads(n: usize) -> usize {
    if n < (1 << 16) {
        1
    } else {
        (tch::get_num_threads().max(1) as usize).min(16)
    }
}

/// A loop over a range of elements, run on each thread's part of 0..n ([`split`]); the parts' results are
/// combined in range order.
pub trait Kernel: Sync {
    type Out: Send + Default;
    /// The work on elements lo..hi. Every implementation is `#[inline(always)]`, and so is everything it calls, so
    /// that [`run_simd`] compiles it for AVX2.
    fn run(&self, lo: usize, hi: usize) -> Self::Out;
    fn comb(a: Self::Out, b: Self::Out) -> Self::Out;
}

/// Runs `k` on contiguous ranges of the n elements, one per thread, and combines the results in range order.
pub fn split<K: Kernel>(n: usize, k: &K) -> K::Out {
    let nt = threads(n);
    if nt <= 1 {
        return run_simd(k, 0, n);
    }
    let cs = n.div_ceil(nt);
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..nt).map(|i| (i * cs).min(n)).map(|lo| (lo, (lo + cs).min(n))).map(|(lo, hi)| sc.spawn(move || run_simd(k, lo, hi))).collect();
        hs.into_iter().map(|h| h.join().expect("kernel thread")).fold(K::Out::default(), K::comb)
    })
}

/// `k.run(lo, hi)` compiled for AVX2 where the CPU has it (the chunk loops, inlined, become 256-bit vector code),
/// else as built (SSE2).
fn run_simd<K: Kernel>(k: &K, lo: usize, hi: usize) -> K::Out {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2<K: Kernel>(k: &K, lo: usize, hi: usize) -> K::Out {
            k.run(lo, hi)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { avx2(k, lo, hi) };
        }
    }
    k.run(lo, hi)
}

/// `s[b..b + N]` as an array (one bounds check per chunk).
#[inline(always)]
pub fn ch<T, const N: usize>(s: &[T], b: usize) -> &[T; N] {
    (&s[b..b + N]).try_into().expect("chunk")
}

#[inline(always)]
pub fn chm<T, const N: usize>(s: &mut [T], b: usize) -> &mut [T; N] {
    (&mut s[b..b + N]).try_into().expect("chunk")
}

/// The raw address of a tensor's data, for the per-thread slices.
pub fn addr(t: &Tensor) -> usize {
    t.data_ptr() as usize
}

/// Elements lo..hi of the contiguous memory of T at `p` as a mutable slice.
///
/// # Safety
/// `p` is the data of a contiguous CPU tensor of T with at least `hi` elements that lives while the slice does;
/// no other slice of the same elements is written at the same time (the callers: the sums written are distinct
/// tensors, inputs are only read, and each thread gets a disjoint range).
#[inline(always)]
pub unsafe fn sl<'a, T>(p: usize, lo: usize, hi: usize) -> &'a mut [T] {
    unsafe { std::slice::from_raw_parts_mut((p as *mut T).add(lo), hi - lo) }
}
