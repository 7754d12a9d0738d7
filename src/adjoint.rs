//! The reverse adjoint sweep through stored iterations (estimators §4.1, §5.3): one step VJP per iteration,
//! O(K) work. It is the engine of BPTT, truncated BPTT and the one-sweep GDU series.
use crate::model::{Batch, Model, State};
use tch::Tensor;

pub struct Sweep {
    /// Σ over the swept steps of the parameter VJPs (a gradient of L when λ_T = ∂L/∂s_T).
    pub grad: Vec<Tensor>,
    /// Per-step parameter contributions, t = 0 = the LAST transition (only when recorded).
    pub per_step_theta: Vec<Vec<Tensor>>,
    /// λ at time T − t for t = 0…steps−1 (only when recorded): λ_{T−t} = ∂L/∂s_{T−t}.
    pub per_step_lambda: Vec<State>,
    /// λ after the sweep, = ∂L/∂s_{T−steps}.
    pub lambda: State,
}

/// Sweeps back through `steps` transitions of `traj` (traj[i] = s_i, the last entry = s_T), starting from the
/// cotangent `lambda_t` on s_T. `autograd` selects the autograd form of one step VJP.
pub fn reverse_sweep(
    model: &Model,
    p: &[Tensor],
    batch: &Batch,
    traj: &[State],
    lambda_t: State,
    steps: usize,
    record: bool,
    autograd: bool,
) -> Sweep {
    assert!(steps < traj.len(), "sweep of {steps} steps needs {} stored states", steps + 1);
    let n = traj.len() - 1;
    let mut lambda = lambda_t;
    let mut grad: Option<Vec<Tensor>> = None;
    let mut per_step_theta = Vec::new();
    let mut per_step_lambda = Vec::new();
    for t in 0..steps {
        if record {
            per_step_lambda.push(lambda.iter().map(|x| x.shallow_clone()).collect());
        }
        let s_prev = &traj[n - t - 1];
        let (a_s, a_theta) = if autograd {
            model.step_vjp_autograd(p, batch, s_prev, &lambda, 0.0)
        } else {
            tch::no_grad(|| model.step_vjp(p, batch, s_prev, &lambda, 0.0))
        };
        grad = Some(match grad {
            None => a_theta.iter().map(|g| g.shallow_clone()).collect(),
            Some(g) => g.iter().zip(&a_theta).map(|(a, b)| a + b).collect(),
        });
        if record {
            per_step_theta.push(a_theta);
        }
        lambda = a_s;
    }
    let grad = grad.unwrap_or_else(|| p.iter().map(|t| t.zeros_like()).collect());
    Sweep { grad, per_step_theta, per_step_lambda, lambda }
}
