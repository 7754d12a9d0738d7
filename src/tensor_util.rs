//! Small tensor helpers shared across the crate.
use tch::{Kind, Tensor};

/// Sums every non-batch axis: (B, …) → (B,).
pub fn sum_per_example(t: &Tensor) -> Tensor {
    let b = t.size()[0];
    t.reshape([b, -1]).sum_dim_intlist(Some(&[1i64][..]), false, None::<Kind>)
}

/// Max over every non-batch axis of |t|: (B, …) → (B,).
pub fn absmax_per_example(t: &Tensor) -> Tensor {
    let b = t.size()[0];
    t.abs().reshape([b, -1]).amax([1i64], false)
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
    if !t.is_floating_point() {
        return true;
    }
    t.isfinite().all().int64_value(&[]) != 0
}

/// ‖t‖₂ over all entries, in f64.
pub fn norm2(t: &Tensor) -> f64 {
    let v = to_vec_f64(t);
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
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
