//! The metrics of checks §1, on host f64 arrays. Time series are (K, E) row-major: `a[t * e_len + e]`.

/// A (K, E) series.
#[derive(Clone, Debug)]
pub struct Series {
    pub k: usize,
    pub e: usize,
    pub data: Vec<f64>,
}

impl Series {
    pub fn new(k: usize, e: usize, data: Vec<f64>) -> Self {
        assert_eq!(data.len(), k * e, "series data length");
        Series { k, e, data }
    }
    pub fn at(&self, t: usize, e: usize) -> f64 {
        self.data[t * self.e + e]
    }
    pub fn step(&self, t: usize) -> &[f64] {
        &self.data[t * self.e..(t + 1) * self.e]
    }
    /// Inclusive prefix sums over t.
    pub fn cumsum(&self) -> Series {
        let mut out = self.data.clone();
        for t in 1..self.k {
            for e in 0..self.e {
                out[t * self.e + e] += out[(t - 1) * self.e + e];
            }
        }
        Series::new(self.k, self.e, out)
    }
    /// Σ_t a[t, ·].
    pub fn total(&self) -> Vec<f64> {
        let mut s = vec![0.0; self.e];
        for t in 0..self.k {
            for (e, v) in s.iter_mut().enumerate() {
                *v += self.at(t, e);
            }
        }
        s
    }
}

/// `lab_rmse` (checks §1.1): (mean q_e, population std, guard fraction, count of both-zero elements).
pub fn lab_rmse(a: &Series, r: &Series) -> (f64, f64, f64, usize) {
    let k = a.k as f64;
    let mut qs = Vec::with_capacity(a.e);
    let (mut guard, mut both_zero) = (0usize, 0usize);
    for e in 0..a.e {
        let (mut fa, mut gr, mut d) = (0.0, 0.0, 0.0);
        let mut zero = true;
        for t in 0..a.k {
            let (x, y) = (a.at(t, e), r.at(t, e));
            fa += x * x;
            gr += y * y;
            d += (x - y) * (x - y);
            zero &= x == 0.0 && y == 0.0;
        }
        let m = (fa / k).sqrt().max((gr / k).sqrt());
        if m < 1e-8 {
            guard += 1;
        }
        if zero {
            both_zero += 1;
        }
        qs.push((d / k).sqrt() / (1e-10 + m));
    }
    let (mean, std) = mean_std(&qs);
    (mean, std, guard as f64 / a.e.max(1) as f64, both_zero)
}

/// `ern_rel` (checks §1.2): (mean, population std) of the per-element relative error, 0 when both are 0.
pub fn ern_rel(a: &Series, r: &Series) -> (f64, f64) {
    let qs: Vec<f64> = (0..a.e)
        .map(|e| {
            let (mut d, mut sa, mut sr) = (0.0, 0.0, 0.0);
            for t in 0..a.k {
                let (x, y) = (a.at(t, e), r.at(t, e));
                d += (x - y) * (x - y);
                sa += x * x;
                sr += y * y;
            }
            let m = sa.max(sr);
            if m == 0.0 {
                0.0
            } else {
                (d / m).sqrt()
            }
        })
        .collect();
    mean_std(&qs)
}

/// `sign_err`: fraction of entries with strictly opposite signs.
pub fn sign_err(a: &[f64], r: &[f64]) -> f64 {
    let n = a.iter().zip(r).filter(|(x, y)| *x * *y < 0.0).count();
    n as f64 / a.len().max(1) as f64
}

/// `sign_err_sig`: the same over entries with |r| > τ·max|r|; NaN when there are none.
pub fn sign_err_sig(a: &[f64], r: &[f64], tau: f64) -> f64 {
    let rmax = r.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let (mut n, mut bad) = (0usize, 0usize);
    for (x, y) in a.iter().zip(r) {
        if y.abs() > tau * rmax {
            n += 1;
            if x * y < 0.0 {
                bad += 1;
            }
        }
    }
    if n == 0 {
        f64::NAN
    } else {
        bad as f64 / n as f64
    }
}

pub fn norm(a: &[f64]) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// `one_minus_cos` = ½‖â − r̂‖² (checks §1.4), and whether both are zero.
pub fn one_minus_cos(a: &[f64], r: &[f64]) -> (f64, bool) {
    let (na, nr) = (norm(a), norm(r));
    match (na == 0.0, nr == 0.0) {
        (true, true) => (0.0, true),
        (true, false) | (false, true) => (1.0, false),
        _ => (0.5 * a.iter().zip(r).map(|(x, y)| (x / na - y / nr).powi(2)).sum::<f64>(), false),
    }
}

pub fn cos(a: &[f64], r: &[f64]) -> f64 {
    1.0 - one_minus_cos(a, r).0
}

/// `rel_l2` = ‖a − r‖/‖r‖ (0 if a = r = 0, +∞ if only r = 0).
pub fn rel_l2(a: &[f64], r: &[f64]) -> f64 {
    let d = norm(&a.iter().zip(r).map(|(x, y)| x - y).collect::<Vec<_>>());
    ratio(d, norm(r))
}

/// `rel_linf` = max|a − r| / max|r|.
pub fn rel_linf(a: &[f64], r: &[f64]) -> f64 {
    ratio(max_abs(a, r), r.iter().fold(0.0f64, |m, v| m.max(v.abs())))
}

pub fn max_abs(a: &[f64], r: &[f64]) -> f64 {
    a.iter().zip(r).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// num/den with 0/0 = 0 and x/0 = +∞ (never NaN).
pub fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        num / den
    }
}

/// (`same_sign_frac`, `both_zero_frac`) of totals (checks §1.6).
pub fn sign_agreement(a: &[f64], r: &[f64]) -> (f64, f64) {
    let n = a.len().max(1) as f64;
    let same = a.iter().zip(r).filter(|(x, y)| *x * *y > 0.0).count() as f64 / n;
    let zero = a.iter().zip(r).filter(|(x, y)| **x == 0.0 && **y == 0.0).count() as f64 / n;
    (same, zero)
}

/// `sym_ratio` (checks §1.7) of totals e₁ (EP₊), e₂ (EP₋), e_B (BPTT).
pub fn sym_ratio(e1: &[f64], e2: &[f64], eb: &[f64]) -> f64 {
    let rhos: Vec<f64> = (0..eb.len())
        .map(|i| {
            let e3 = 0.5 * (e1[i] + e2[i]);
            let den = (e1[i] - eb[i]).abs() + (e2[i] - eb[i]).abs();
            if den == 0.0 {
                1.0
            } else {
                2.0 * (e3 - eb[i]).abs() / den
            }
        })
        .collect();
    mean_std(&rhos).0
}

pub fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
    (m, var.sqrt())
}

pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        0.5 * (s[s.len() / 2 - 1] + s[s.len() / 2])
    }
}
