//! Cosine annealing stepped once per epoch (conv-hopfield.md §6.3), computed with PyTorch's recursion for
//! bit-compatibility: η_e = η_min + (1 + cos(πe/T)) / (1 + cos(π(e−1)/T)) · (η_{e−1} − η_min), except when
//! (e − 1 − T) mod 2T = 0, where η_e = η_{e−1} + (η₀ − η_min)(1 − cos(π/T))/2.
use std::f64::consts::PI;

/// η_e for epoch e = 0, 1, … (e = 0 gives η₀).
pub fn cosine_recursive(eta0: f64, eta_min: f64, t_max: usize, e: usize) -> f64 {
    let t = t_max as f64;
    let mut eta = eta0;
    for k in 1..=e {
        let kf = k as f64;
        if ((k as i64 - 1 - t_max as i64).rem_euclid(2 * t_max as i64)) == 0 {
            eta += (eta0 - eta_min) * (1.0 - (PI / t).cos()) / 2.0;
        } else {
            eta = eta_min + (1.0 + (PI * kf / t).cos()) / (1.0 + (PI * (kf - 1.0) / t).cos()) * (eta - eta_min);
        }
    }
    eta
}

/// The closed form η_min + (η₀ − η_min)(1 + cos(πe/T))/2.
pub fn cosine_closed(eta0: f64, eta_min: f64, t_max: usize, e: usize) -> f64 {
    eta_min + (eta0 - eta_min) * (1.0 + (PI * e as f64 / t_max as f64).cos()) / 2.0
}

/// The rate of epoch e when the scheduler is stepped only while the epoch index is below T_max
/// (hopfield-attention.md §9.3: CosineAnnealingLR(T_max = 100, η_min = 1e-5), stepped while e < 100): the
/// recursion up to min(e, T_max), i.e. η_{min(e, T_max)}; the rate stays at η_min after T_max epochs.
pub fn cosine_capped(eta0: f64, eta_min: f64, t_max: usize, e: usize) -> f64 {
    cosine_recursive(eta0, eta_min, t_max, e.min(t_max))
}
