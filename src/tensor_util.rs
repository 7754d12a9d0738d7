//! Small tensor helpers shared across the crate.
use tch::{Kind, Tensor};

/// Sums every non-batch axis: (B, …) → (B,).
pub fn sum_per_example(t: &Tensor) -> Tensor {
    let b = t.size()[0];
    t.reshape([b, -1]).sum_dim_intlist(Some(&[1i64][..]), false, None::<Kind>)
}

/// Max over every non-batch axis of |t| (the modulus for complex t): (B, …) → (B,).
pub fn absmax_per_example(t: &Tensor) -> Tensor {
    let b = t.size()[0];
    t.abs().reshape([b, -1]).amax([1i64], false)
}

pub fn is_complex(k: Kind) -> bool {
    matches!(k, Kind::ComplexFloat | Kind::ComplexDouble)
}

/// The real dtype of a (possibly complex) dtype.
pub fn real_kind(k: Kind) -> Kind {
    match k {
        Kind::ComplexDouble => Kind::Double,
        Kind::ComplexFloat => Kind::Float,
        k => k,
    }
}

/// The complex dtype matching a real run dtype (complex128 for f64, complex64 for f32).
pub fn complex_kind(k: Kind) -> Kind {
    match k {
        Kind::Float => Kind::ComplexFloat,
        _ => Kind::ComplexDouble,
    }
}

/// Copies a tensor to a host `Vec<f64>` (row-major, any dtype).
pub fn to_vec_f64(t: &Tensor) -> Vec<f64> {
    let flat = t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Double).reshape([-1]);
    Vec::<f64>::try_from(&flat).expect("f64 tensor converts to Vec<f64>")
}

pub fn scalar_f64(t: &Tensor) -> f64 {
    t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Double).double_value(&[])
}

/// Whether every entry is finite.
pub fn all_finite(t: &Tensor) -> bool {
    if !(t.is_floating_point() || is_complex(t.kind())) {
        return true;
    }
    t.isfinite().all().int64_value(&[]) != 0
}

/// ‖t‖₂ over all entries, in f64.
pub fn norm2(t: &Tensor) -> f64 {
    // Reduced where the tensor lives, in float64: one scalar comes back, not a host copy of the tensor (the
    // checks call this inside their loops).
    let d = t.detach().to_kind(Kind::Double).reshape([-1]);
    d.dot(&d).to_device(tch::Device::Cpu).double_value(&[]).sqrt()
}

/// Gradients of a scalar with respect to leaves; leaves the scalar does not depend on get zeros (libtorch
/// returns undefined tensors for them).
pub fn grads_or_zeros(output: &Tensor, inputs: &[&Tensor]) -> Vec<Tensor> {
    if !output.requires_grad() {
        return inputs.iter().map(|x| x.zeros_like()).collect();
    }
    Tensor::run_backward(&[output], inputs, false, false)
        .into_iter()
        .zip(inputs)
        .map(|(g, x)| if g.defined() { g } else { x.zeros_like() })
        .collect()
}

/// Holomorphic derivatives dφ/dz of a complex scalar φ with respect to complex leaves. libtorch's backward
/// with grad_output 1 + 0i returns the conjugate (Wirtinger) derivative conj(φ′(z)); this conjugates it back
/// (estimators §3.8). Tested on z² at 1 + 2i → 2 + 4i.
pub fn holomorphic_grads(output: &Tensor, inputs: &[&Tensor]) -> Vec<Tensor> {
    grads_or_zeros(output, inputs).into_iter().map(|g| g.conj().resolve_conj()).collect()
}

/// c·t for a real or complex scalar c = (re, im) (a real t times a complex c is complex).
pub fn times_scalar(t: &Tensor, c: (f64, f64)) -> Tensor {
    if c.1 == 0.0 {
        return t * c.0;
    }
    let real = real_kind(t.kind());
    let sc = |v: f64| Tensor::from_slice(&[v]).to_kind(real).to_device(t.device()).reshape([] as [i64; 0]);
    t * Tensor::complex(&sc(c.0), &sc(c.1))
}

/// `reps` copies of t stacked along the batch axis.
pub fn repeat_batch(t: &Tensor, reps: i64) -> Tensor {
    Tensor::cat(&(0..reps).map(|_| t.shallow_clone()).collect::<Vec<_>>(), 0)
}

/// a·b where either side may be complex and the other real (holomorphic EP keeps θ and x real and only the
/// states complex): a mixed product is ONE real GEMM, never a complex GEMM with zero imaginary parts.
/// * complex (…, n) × real (n, m): the (re, im) planes of a as 2× the rows, (2, …, n)·(n, m), interleaved back;
/// * real (…, n) × complex (n, m): b's (m, 2) pairs as 2m columns, (…, n)·(n, 2m), which is already the
///   interleaved result.
pub fn matmul(a: &Tensor, b: &Tensor) -> Tensor {
    match (is_complex(a.kind()), is_complex(b.kind())) {
        (true, false) => a.view_as_real().movedim(-1, 0).matmul(b).movedim(0, -1).contiguous().view_as_complex(),
        (false, true) if b.dim() == 2 => {
            let (n, m) = (b.size()[0], b.size()[1]);
            let out = a.matmul(&b.view_as_real().reshape([n, 2 * m]));
            let mut shape = out.size();
            shape.pop();
            shape.extend([m, 2]);
            out.reshape(shape.as_slice()).view_as_complex()
        }
        (false, true) => Tensor::complex(&a.matmul(&b.real()), &a.matmul(&b.imag())),
        _ => a.matmul(b),
    }
}

/// libtorch's random generator is process-global: two threads that seed it and draw at the same time interleave
/// their streams, and the instance they build depends on timing. Everything that seeds and draws for a
/// reproducible result (instance construction, parameter init, the random states and directions of the checks,
/// and any test running beside them) holds this lock while it does. The lock is re-entrant on one thread (a
/// holder may call code that takes it again).
pub fn rng_lock() -> RngGuard {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    thread_local! {
        static HELD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if HELD.with(|h| h.get()) {
        return RngGuard { guard: None, held: &HELD };
    }
    let g = RNG.lock().unwrap_or_else(|e| e.into_inner());
    HELD.with(|h| h.set(true));
    RngGuard { guard: Some(g), held: &HELD }
}

/// The guard of [`rng_lock`]; dropping the outermost one releases the lock.
pub struct RngGuard {
    guard: Option<std::sync::MutexGuard<'static, ()>>,
    held: &'static std::thread::LocalKey<std::cell::Cell<bool>>,
}

impl Drop for RngGuard {
    fn drop(&mut self) {
        if self.guard.take().is_some() {
            self.held.with(|h| h.set(false));
        }
    }
}

/// Holds [`rng_lock`], seeds libtorch's generator with `seed` and runs `draw`: a seeded draw that no other
/// thread can interleave with.
pub fn seeded<T>(seed: i64, draw: impl FnOnce() -> T) -> T {
    let _rng = rng_lock();
    tch::manual_seed(seed);
    draw()
}

/// The seed a test draws with: `base`, or, when the environment sets `EPCHECK_TEST_SEED=n` (n ≠ 0), a seed
/// derived from `base` and `n`. Every test that draws seeds through this, so the suite's random tests can be
/// rerun under other draws (`scripts/test` does, for n = 1, 2): a tolerance that holds for one lucky draw only
/// is found there, not on a user's machine. A value that is not an integer is refused (panics: tests only).
pub fn test_seed(base: i64) -> i64 {
    match std::env::var("EPCHECK_TEST_SEED") {
        Ok(s) if !s.trim().is_empty() => {
            let n: i64 = s.trim().parse().unwrap_or_else(|_| panic!("EPCHECK_TEST_SEED must be an integer, got '{s}'"));
            if n == 0 {
                base
            } else {
                base.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(n.wrapping_mul(1_442_695_040_888_963_407)) & 0x7fff_ffff_ffff
            }
        }
        _ => base,
    }
}

/// A complex (R, …) tensor in **planar** form: the real (2R, …) tensor of its real parts (rows 0..R) followed by
/// its imaginary parts (rows R..2R). Linear maps with real coefficients act on it row by row, so a real GEMM
/// over 2R rows is the complex product — no interleaving copies (holomorphic EP's complex phases, `relax.rs`).
pub fn to_planar(z: &Tensor) -> Tensor {
    Tensor::cat(&[z.real(), z.imag()], 0)
}

/// The complex (R, …) tensor of a planar (2R, …) one ([`to_planar`]).
pub fn from_planar(p: &Tensor) -> Tensor {
    let r = p.size()[0] / 2;
    Tensor::complex(&p.narrow(0, 0, r), &p.narrow(0, r, r))
}

/// max |t| over all entries, in f64 (NaN if any entry is NaN).
pub fn absmax(t: &Tensor) -> f64 {
    scalar_f64(&t.abs().max())
}

/// The global norm ‖(‖t_i‖₂)_i‖₂ of a list of tensors, reduced on their device (one host read), in f64.
pub fn global_norm(ts: &[Tensor]) -> f64 {
    let mut acc: Option<Tensor> = None;
    for t in ts {
        let sq = chunked_sum_f64(t, |c| c.to_kind(Kind::Double).square());
        acc = Some(match acc {
            Some(a) => a + sq,
            None => sq,
        });
    }
    acc.map(|a| a.double_value(&[]).sqrt()).unwrap_or(0.0)
}

/// Σ f(t) in float64 over all entries, on t's device (0-dim float64), through chunks of 2²⁰ entries: `f` and the
/// float64 conversion see one chunk at a time, so no tensor-sized temporary exists (a float64 copy of a 30 M-weight
/// projection is 240 MB to allocate and fault in, per call). `f` maps a chunk to float64 entries elementwise.
pub fn chunked_sum_f64(t: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let flat = t.detach().reshape([-1]);
    let sums = chunk_ranges(flat.numel() as i64).map(|(lo, len)| f(&flat.narrow(0, lo, len)).sum(Kind::Double));
    sums.reduce(|a, b| a + b).unwrap_or_else(|| Tensor::zeros([], (Kind::Double, t.device())))
}

/// Entries per chunk of the chunked reductions (here and in the GDU identities): 2²⁰, 4–8 MB of temporaries.
pub const CHUNK: i64 = 1 << 20;

/// (start, length) of the chunks of CHUNK entries that cover 0..n (the last one shorter).
pub fn chunk_ranges(n: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..n).step_by(CHUNK as usize).map(move |lo| (lo, CHUNK.min(n - lo)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked float64 sum against a host float64 sum of the same values (sizes below, at and above a chunk).
    #[test]
    fn chunked_sum_f64_equals_a_host_float64_sum() {
        let _g = rng_lock();
        tch::manual_seed(3);
        for n in [5i64, 1 << 20, (1 << 21) + 17] {
            let t = Tensor::randn([n], (Kind::Float, tch::Device::Cpu)).reshape([-1, 1]);
            let host: f64 = to_vec_f64(&t).iter().map(|x| x * x).sum();
            let got = chunked_sum_f64(&t, |c| c.to_kind(Kind::Double).square()).double_value(&[]);
            assert!((got - host).abs() <= 1e-12 * host, "n = {n}: {got} vs {host}");
            let abs_host: f64 = to_vec_f64(&t).iter().map(|x| x.abs()).sum();
            let abs_got = chunked_sum_f64(&t, |c| c.abs().to_kind(Kind::Double)).double_value(&[]);
            assert!((abs_got - abs_host).abs() <= 1e-12 * abs_host, "n = {n}: {abs_got} vs {abs_host}");
        }
        assert_eq!(global_norm(&[Tensor::from_slice(&[3.0f32, 4.0])]), 5.0);
        assert_eq!(global_norm(&[Tensor::zeros([0], (Kind::Float, tch::Device::Cpu))]), 0.0);
    }
}
