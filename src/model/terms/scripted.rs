//! A scripted energy (docs/scripted.md): Φ written by the user in PyTorch, saved as TorchScript and loaded with
//! libtorch's `CModule`. The whole Φ is ONE term that touches the input and every free layer; everything the
//! engine asks a term for comes from autograd of the module's `primitive(params, states, x) -> (B,)`:
//!
//! * drive into layer k: ∂Φ/∂s_k (or the module's own `drives(params, states, x)`, when it has one — what the
//!   dynamics really run; `audit` measures it against ∂Φ/∂s);
//! * Hessian-vector product: ∂/∂s_j ⟨u(s), μ⟩ by double backward (= Σ_k μ_kᵀ ∂u_k/∂s_j: the transpose of the
//!   drive Jacobian, i.e. what the step VJP of BPTT needs, also when `drives` is not a gradient);
//! * parameter gradient Σ_b ∂Φ_b/∂θ and its VJP ∂/∂θ ⟨u(s), μ⟩ by autograd.
//!
//! The term is not multilinear ([`Term::nonlinear`]): the engine neither caches its drive as constant nor
//! scales one slot for weighted parameter derivatives ([`Term::param_grad_weighted`] by autograd instead).
//! There is no decomposition into couplings, so the `local` check does not apply to it.
//!
//! The module also has `spec() -> str`: JSON with the input shape, the layers (name, shape, activation), the
//! parameters (canonical name, shape, init bound), the loss, the schedule and, optionally, the input range and
//! `drives: true`. A layer's update is an activation by name or an update map (`update`: epcheck's attention
//! map, or the module's own `update`/`potential` methods, `crate::model::scripted_update`). `python/epcheck_energy.py` writes it.
use super::{Node, Term};
use crate::model::activation::Activation;
use crate::model::loss::Loss;
use crate::model::schedule::Schedule;
use crate::model::scripted_update::ScriptedMap;
use crate::model::update_map::UpdateMap;
use crate::model::{Init, LayerSpec, Model, ParamSpec};
use crate::{Error, Result};
use serde::Deserialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tch::{CModule, Device, IValue, Kind, Tensor};

/// The coupling kind name of a scripted energy.
pub const KIND: &str = "scripted";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecLayer {
    name: String,
    shape: Vec<i64>,
    /// An elementwise activation by name, or (instead) `update`.
    #[serde(default)]
    activation: Option<String>,
    /// A vector update map (`crate::model::scripted_update`): `{"kind": "attention", …}` or `{"kind": "scripted"}`.
    #[serde(default)]
    update: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecParam {
    name: String,
    shape: Vec<i64>,
    init: f64,
    #[serde(default)]
    group: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    input: Vec<i64>,
    layers: Vec<SpecLayer>,
    params: Vec<SpecParam>,
    #[serde(default)]
    loss: Option<String>,
    /// `sync`, `async2`, or explicit groups of 0-based layer indices.
    #[serde(default)]
    schedule: Option<serde_json::Value>,
    #[serde(default)]
    input_range: Option<[f64; 2]>,
    /// The module has `drives(params, states, x) -> List[Tensor]`.
    #[serde(default)]
    drives: bool,
    /// Φ is holomorphic in the states and evaluates on complex tensors (holomorphic EP); verified on a probe.
    #[serde(default)]
    complex_safe: bool,
}

/// Results of the last evaluation, reused while the same tensors (same storage and version) come back: the
/// engine asks for the drive of each layer of a group at the same state, one layer at a time.
struct Cached {
    tag: u8,
    key: Vec<(usize, i64, Vec<i64>, Vec<i64>)>,
    /// Keeps the keyed tensors alive, so that no other tensor can take their storage address.
    _hold: Vec<Tensor>,
    out: Vec<Option<Tensor>>,
}

pub struct Scripted {
    module: Arc<CModule>,
    /// The file, for messages.
    path: String,
    slots: Vec<Node>,
    params: Vec<usize>,
    custom_drives: bool,
    /// The spec's `complex_safe` (checked on a complex probe state before a run).
    complex_safe: bool,
    /// The layers updated by the module's own `update`/`potential` (checked with Φ before a run).
    maps: Vec<(usize, Arc<ScriptedMap>)>,
    cache: Mutex<Option<Cached>>,
}

/// Whether autograd records in the calling context.
fn grad_mode() -> bool {
    (Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true) * 1.0).requires_grad()
}

fn first_line(e: &impl ToString) -> String {
    e.to_string().lines().next().unwrap_or("").trim().to_string()
}

/// Storage address, version counter and shape of each tensor (a view of the same storage has another shape or
/// address; an in-place write bumps the version).
fn key_of(ts: &[Option<&Tensor>]) -> Vec<(usize, i64, Vec<i64>, Vec<i64>)> {
    ts.iter()
        .map(|t| match t {
            Some(t) if t.defined() => (t.data_ptr() as usize, t.internal_version(), t.size(), t.stride()),
            _ => (0, -1, vec![], vec![]),
        })
        .collect()
}

/// Gradients of a scalar; for a complex (holomorphic) output, libtorch's backward with grad_output 1 gives the
/// conjugate Wirtinger derivative conj(f′(z)), conjugated back here to the holomorphic derivative f′(z)
/// (as `tensor_util::holomorphic_grads`; the closed form is tested in tests/scripted.rs).
fn gradients(output: &Tensor, inputs: &[&Tensor], create_graph: bool) -> Vec<Option<Tensor>> {
    if !output.requires_grad() {
        return inputs.iter().map(|_| None).collect();
    }
    let complex = crate::tensor_util::is_complex(output.kind());
    Tensor::run_backward(&[output], inputs, create_graph, create_graph)
        .into_iter()
        .map(|g| g.defined().then(|| if complex { g.conj().resolve_conj() } else { g }))
        .collect()
}

/// With complex states, the real parameters and input are passed to the module in the states' complex dtype
/// (one dtype for every argument; their imaginary parts are 0).
fn lift(t: &Tensor, like: &Tensor) -> Tensor {
    if crate::tensor_util::is_complex(like.kind()) && !crate::tensor_util::is_complex(t.kind()) {
        t.to_kind(like.kind())
    } else {
        t.shallow_clone()
    }
}

impl Scripted {
    fn layers(s: &[&Tensor]) -> Vec<Tensor> {
        s[1..].iter().map(|t| t.shallow_clone()).collect()
    }

    /// Calls `primitive` (errors as one line).
    fn try_phi(&self, p: &[Tensor], layers: &[Tensor], x: &Tensor) -> Result<Tensor> {
        let like = &layers[0];
        let args = [IValue::TensorList(p.iter().map(|t| lift(t, like)).collect()), IValue::TensorList(layers.iter().map(|t| t.shallow_clone()).collect()), IValue::Tensor(lift(x, like))];
        match self.module.method_is("primitive", &args) {
            Ok(IValue::Tensor(t)) => Ok(t),
            Ok(other) => Err(Error::file(&self.path, format!("primitive(params, states, x) must return a Tensor Φ of shape (B,), returned {}", ivalue_kind(&other)))),
            Err(e) => {
                let msg = first_line(&e);
                if msg.contains("primitive") && (msg.contains("not defined") || msg.contains("does not have") || msg.contains("has no")) || msg.contains("Method 'primitive'") {
                    Err(Error::file(&self.path, "the module has no method primitive(params: List[Tensor], states: List[Tensor], x: Tensor) -> Tensor (mark it @torch.jit.export, or save with python/epcheck_energy.py)"))
                } else {
                    Err(Error::file(&self.path, format!("primitive(params, states, x) failed: {msg}")))
                }
            }
        }
    }

    fn phi(&self, p: &[Tensor], layers: &[Tensor], x: &Tensor) -> Tensor {
        self.try_phi(p, layers, x).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_custom_drives(&self, p: &[Tensor], layers: &[Tensor], x: &Tensor) -> Result<Vec<Tensor>> {
        let args = [IValue::TensorList(p.iter().map(|t| t.shallow_clone()).collect()), IValue::TensorList(layers.iter().map(|t| t.shallow_clone()).collect()), IValue::Tensor(x.shallow_clone())];
        match self.module.method_is("drives", &args) {
            Ok(IValue::TensorList(v)) => Ok(v),
            Ok(IValue::GenericList(v)) => v.into_iter().map(|i| if let IValue::Tensor(t) = i { Ok(t) } else { Err(Error::file(&self.path, "drives(params, states, x) must return List[Tensor]")) }).collect(),
            Ok(other) => Err(Error::file(&self.path, format!("drives(params, states, x) must return List[Tensor], returned {}", ivalue_kind(&other)))),
            Err(e) => Err(Error::file(&self.path, format!("drives(params, states, x) failed (the spec says drives = true): {}", first_line(&e)))),
        }
    }

    /// u_k for every layer (no loss term): the module's `drives`, else ∂Φ/∂s_k by autograd. With
    /// `create_graph` the result is differentiable in p and in the given states.
    fn drives_all(&self, p: &[Tensor], s: &[&Tensor], create_graph: bool) -> Vec<Tensor> {
        tch::with_grad(|| {
            if self.custom_drives {
                let layers = Self::layers(s);
                let d = self.try_custom_drives(p, &layers, s[0]).unwrap_or_else(|e| panic!("{e}"));
                return if create_graph { d } else { d.into_iter().map(|t| t.detach()).collect() };
            }
            let leaves: Vec<Tensor> = s[1..].iter().map(|t| if create_graph && t.requires_grad() { t.shallow_clone() } else { t.detach().set_requires_grad(true) }).collect();
            let phi = self.phi(p, &leaves, s[0]).sum(None::<Kind>);
            let refs: Vec<&Tensor> = leaves.iter().collect();
            gradients(&phi, &refs, create_graph).into_iter().zip(&leaves).map(|(g, l)| g.unwrap_or_else(|| l.detach().zeros_like())).collect()
        })
    }

    /// Cached evaluation (only when nothing is recorded): `tag` names the quantity, `keyed` its inputs.
    fn cached(&self, tag: u8, keyed: &[Option<&Tensor>], f: impl FnOnce() -> Vec<Option<Tensor>>) -> Vec<Option<Tensor>> {
        let key = key_of(keyed);
        let mut guard = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = guard.as_ref() {
            if c.tag == tag && c.key == key {
                return c.out.iter().map(|o| o.as_ref().map(|t| t.shallow_clone())).collect();
            }
        }
        let out = f();
        *guard = Some(Cached { tag, key, _hold: keyed.iter().flatten().map(|t| t.shallow_clone()).collect(), out: out.iter().map(|o| o.as_ref().map(|t| t.shallow_clone())).collect() });
        out
    }

    /// The inputs of an evaluation, for [`Scripted::cached`]: parameters, slots, then one entry per cotangent
    /// slot (absent ones as `None`, so that the same tensor in another slot is another key).
    fn keyed<'a>(p: &'a [Tensor], s: &[&'a Tensor], mu: &[Option<&'a Tensor>]) -> Vec<Option<&'a Tensor>> {
        let mut v: Vec<Option<&Tensor>> = p.iter().map(Some).collect();
        v.extend(s.iter().map(|t| Some(*t)));
        v.extend(mu.iter().copied());
        v
    }

    /// ⟨u(s), μ⟩ summed over the batch, with the leaves it was built on (states, then parameters when
    /// `with_params`).
    fn contracted(&self, p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>], with_params: bool) -> (Tensor, Vec<Tensor>, Vec<Tensor>) {
        let leaves: Vec<Tensor> = s[1..].iter().map(|t| t.detach().set_requires_grad(true)).collect();
        let pl: Vec<Tensor> = p.iter().map(|t| if with_params { lift(&t.detach(), &leaves[0]).set_requires_grad(true) } else { t.detach() }).collect();
        let mut args: Vec<&Tensor> = vec![s[0]];
        args.extend(leaves.iter());
        let u = self.drives_all(&pl, &args, true);
        let mut dot: Option<Tensor> = None;
        for (k, uk) in u.iter().enumerate() {
            if let Some(m) = mu[k + 1] {
                super::accumulate(&mut dot, (uk * m.detach()).sum(None::<Kind>));
            }
        }
        let dot = dot.unwrap_or_else(|| Tensor::zeros([], (s[1].kind(), s[1].device())));
        (dot, leaves, pl)
    }

    /// Checks the module on a batch at state `s` (zeros): Φ has shape (B,), is finite, and the drives exist and
    /// have the layers' shapes. One line naming what is wrong.
    pub fn check(&self, p: &[Tensor], s: &[&Tensor]) -> Result<()> {
        let b = s[0].size()[0];
        let layers = Self::layers(s);
        let phi = tch::with_grad(|| self.try_phi(p, &layers, s[0]))?;
        let shape = phi.size();
        if shape.len() >= 2 && shape[0] == b {
            return Err(Error::file(&self.path, format!("primitive returned shape {shape:?}: Φ must be one scalar per example, shape (B,) = [{b}] (sum the other axes)")));
        }
        if shape != [b] {
            return Err(Error::file(&self.path, format!("primitive returned shape {shape:?}, expected Φ per example of shape (B,) = [{b}]")));
        }
        if phi.kind() != s[0].kind() {
            return Err(Error::file(&self.path, format!("primitive returned dtype {:?} for {:?} inputs: compute Φ in the inputs' dtype", phi.kind(), s[0].kind())));
        }
        if !crate::tensor_util::all_finite(&phi) {
            return Err(Error::file(&self.path, "primitive returned a non-finite Φ (NaN or inf) at the zero state"));
        }
        if self.custom_drives {
            let d = self.try_custom_drives(p, &layers, s[0])?;
            if d.len() != layers.len() {
                return Err(Error::file(&self.path, format!("drives returned {} tensors for {} layers", d.len(), layers.len())));
            }
            for (k, (u, l)) in d.iter().zip(&layers).enumerate() {
                if u.size() != l.size() {
                    return Err(Error::file(&self.path, format!("drives returned shape {:?} for layer {} of shape {:?}", u.size(), k + 1, l.size())));
                }
            }
        }
        let u = tch::no_grad(|| self.drives_all(p, s, false));
        if let Some(k) = u.iter().position(|t| !crate::tensor_util::all_finite(t)) {
            return Err(Error::file(&self.path, format!("the drive ∂Φ/∂s of layer {} is not finite (NaN or inf) at the zero state", k + 1)));
        }
        for (k, map) in &self.maps {
            map.check(s[0], &s[k + 1].zeros_like())?;
        }
        if self.complex_safe {
            self.check_complex(p, s)?;
        }
        Ok(())
    }

    /// `complex_safe`: Φ evaluates on a complex probe state (seeded, entries ~ 0.5·N(0, 1) + 0.5·i·N(0, 1)), is
    /// finite and satisfies Φ(conj s) = conj Φ(s) (real θ and x: what a holomorphic Φ with real coefficients
    /// does; |·|, Re, Im or conj inside Φ break it) to 1e-10 relative, and so do its drives.
    fn check_complex(&self, p: &[Tensor], s: &[&Tensor]) -> Result<()> {
        let bad = |m: String| Error::file(&self.path, format!("spec() says complex_safe, but {m}"));
        let ck = crate::tensor_util::complex_kind(s[1].kind());
        let probe: Vec<Tensor> = crate::tensor_util::seeded(0x17C, || s[1..].iter().map(|t| Tensor::complex(&(t.randn_like() * 0.5), &(t.randn_like() * 0.5))).collect());
        let conj: Vec<Tensor> = probe.iter().map(|t| t.conj().resolve_conj()).collect();
        let (a, c) = match tch::no_grad(|| Ok::<_, Error>((self.try_phi(p, &probe, s[0])?, self.try_phi(p, &conj, s[0])?))) {
            Ok(v) => v,
            Err(e) => return Err(bad(format!("Φ fails on complex states: {}", first_line(&e)))),
        };
        if a.kind() != ck {
            return Err(bad(format!("Φ on complex states returned dtype {:?}, expected {ck:?}", a.kind())));
        }
        if !crate::tensor_util::all_finite(&a) {
            return Err(bad("Φ on a complex probe state is not finite".into()));
        }
        let diff = (&c - a.conj()).abs().max().double_value(&[]);
        let scale = a.abs().max().double_value(&[]).max(1e-300);
        if !(diff <= 1e-10 * scale) {
            return Err(bad(format!("Φ(conj s) ≠ conj Φ(s) on a probe (|difference| {diff:.3e} vs |Φ| {scale:.3e}): Φ is not holomorphic with real coefficients")));
        }
        // Cauchy–Riemann along a seeded direction v: d/dt Φ(s + t·i·v) = i·d/dt Φ(s + t·v) (central differences,
        // h = 1e-4 in f64 / 1e-2 in f32, truncation O(h²)); a real-valued non-holomorphic part (|s|², Re s) breaks it.
        let f64_run = s[1].kind() == Kind::Double;
        let (h, tol) = if f64_run { (1e-4, 1e-6) } else { (1e-2, 1e-2) };
        let v: Vec<Tensor> = crate::tensor_util::seeded(0x17D, || probe.iter().map(|t| Tensor::complex(&t.real().randn_like(), &t.real().randn_like())).collect());
        let at = |c: (f64, f64)| -> Result<Tensor> {
            let z: Vec<Tensor> = probe.iter().zip(&v).map(|(t, d)| t + crate::tensor_util::times_scalar(d, c)).collect();
            tch::no_grad(|| self.try_phi(p, &z, s[0]))
        };
        let cr = (|| -> Result<(Tensor, Tensor)> { Ok(((at((h, 0.0))? - at((-h, 0.0))?) / (2.0 * h), (at((0.0, h))? - at((0.0, -h))?) / (2.0 * h))) })();
        let (dv, dw) = cr.map_err(|e| bad(format!("Φ fails on complex states: {}", first_line(&e))))?;
        let miss = (&dw - crate::tensor_util::times_scalar(&dv, (0.0, 1.0))).abs().max().double_value(&[]);
        let size = dv.abs().max().double_value(&[]).max(1e-300);
        if !(miss <= tol * size) {
            return Err(bad(format!("Φ is not holomorphic in the states on a probe (Cauchy–Riemann: |∂_(iv)Φ − i·∂_vΦ| {miss:.3e} vs |∂_vΦ| {size:.3e}; |·|, Re, Im or conj inside Φ?)")));
        }
        let mut args: Vec<&Tensor> = vec![s[0]];
        args.extend(probe.iter());
        let u = tch::no_grad(|| self.drives_all(p, &args, false));
        if let Some(k) = u.iter().position(|t| !crate::tensor_util::all_finite(t)) {
            return Err(bad(format!("the drive of layer {} is not finite on a complex probe state", k + 1)));
        }
        Ok(())
    }
}

fn ivalue_kind(v: &IValue) -> &'static str {
    match v {
        IValue::None => "None",
        IValue::Tensor(_) => "Tensor",
        IValue::Double(_) => "float",
        IValue::Int(_) => "int",
        IValue::Bool(_) => "bool",
        IValue::Tuple(_) => "a tuple",
        IValue::String(_) => "str",
        IValue::TensorList(_) | IValue::GenericList(_) | IValue::IntList(_) | IValue::DoubleList(_) | IValue::BoolList(_) | IValue::StringList(_) => "a list",
        _ => "another type",
    }
}

impl Term for Scripted {
    fn kind(&self) -> &'static str {
        KIND
    }
    fn slots(&self) -> &[Node] {
        &self.slots
    }
    fn params(&self) -> &[usize] {
        &self.params
    }
    fn primitive(&self, p: &[Tensor], s: &[&Tensor]) -> Tensor {
        self.phi(p, &Self::layers(s), s[0])
    }
    fn drive(&self, p: &[Tensor], s: &[&Tensor], slot: usize) -> Tensor {
        if slot == 0 {
            return s[0].zeros_like();
        }
        let record = grad_mode() && (p.iter().any(|t| t.requires_grad()) || s.iter().any(|t| t.requires_grad()));
        if record {
            return self.drives_all(p, s, true).swap_remove(slot - 1);
        }
        let keyed = Self::keyed(p, s, &[]);
        let all = self.cached(0, &keyed, || self.drives_all(p, s, false).into_iter().map(Some).collect());
        all[slot - 1].as_ref().expect("a drive per layer").shallow_clone()
    }
    fn hvp(&self, p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>], slot: usize) -> Option<Tensor> {
        if slot == 0 {
            return None;
        }
        let keyed = Self::keyed(p, s, mu);
        let all = self.cached(1, &keyed, || {
            tch::with_grad(|| {
                let (dot, leaves, _) = self.contracted(p, s, mu, false);
                let refs: Vec<&Tensor> = leaves.iter().collect();
                gradients(&dot, &refs, false)
            })
        });
        all[slot - 1].as_ref().map(|t| t.shallow_clone())
    }
    fn param_grad(&self, p: &[Tensor], s: &[&Tensor]) -> Vec<Tensor> {
        tch::with_grad(|| {
            // Complex states: complex copies of θ as leaves (the holomorphic derivative, as the local forms give).
            let pl: Vec<Tensor> = p.iter().map(|t| lift(&t.detach(), s[1]).set_requires_grad(true)).collect();
            let layers: Vec<Tensor> = s[1..].iter().map(|t| t.detach()).collect();
            let phi = self.phi(&pl, &layers, s[0]).sum(None::<Kind>);
            let refs: Vec<&Tensor> = pl.iter().collect();
            gradients(&phi, &refs, false).into_iter().zip(p).map(|(g, t)| g.unwrap_or_else(|| t.zeros_like())).collect()
        })
    }
    fn param_vjp(&self, p: &[Tensor], s: &[&Tensor], mu: &[Option<&Tensor>]) -> Vec<Option<Tensor>> {
        tch::with_grad(|| {
            let (dot, _, pl) = self.contracted(p, s, mu, true);
            let refs: Vec<&Tensor> = pl.iter().collect();
            gradients(&dot, &refs, false)
        })
    }
    fn nonlinear(&self) -> bool {
        true
    }
    fn param_grad_weighted(&self, p: &[Tensor], s: &[&Tensor], w: &Tensor) -> Option<Vec<Tensor>> {
        Some(tch::with_grad(|| {
            let layers: Vec<Tensor> = s[1..].iter().map(|t| t.detach()).collect();
            // A complex weight with real states: Φ is real, Σ w_r ∂Φ_r/∂θ = Σ Re w_r … + i Σ Im w_r …, i.e. the
            // same autograd with complex leaves on the real states lifted to the complex dtype.
            let like = if crate::tensor_util::is_complex(w.kind()) && !crate::tensor_util::is_complex(layers[0].kind()) { w.shallow_clone() } else { layers[0].shallow_clone() };
            let layers: Vec<Tensor> = layers.iter().map(|t| lift(t, &like)).collect();
            let pl: Vec<Tensor> = p.iter().map(|t| lift(&t.detach(), &like).set_requires_grad(true)).collect();
            let phi = (self.phi(&pl, &layers, s[0]) * w.detach()).sum(None::<Kind>);
            let refs: Vec<&Tensor> = pl.iter().collect();
            gradients(&phi, &refs, false).into_iter().zip(p).map(|(g, t)| g.unwrap_or_else(|| t.zeros_like())).collect()
        }))
    }
    /// Only a module whose spec says `complex_safe` (verified on a complex probe before a run).
    fn supports_complex(&self) -> bool {
        self.complex_safe
    }
    fn validate(&self, p: &[Tensor], s: &[&Tensor]) -> Result<()> {
        self.check(p, s)
    }
}

/// Loads a scripted energy file into a model (one [`Scripted`] term). Errors are one line naming the file and
/// what is wrong; nothing is run on a batch here ([`Model::validate_terms`] does that once parameters and a
/// batch exist).
pub fn load_file(path: &Path, device: Device) -> Result<Model> {
    if !path.exists() {
        return Err(Error::file(path, "no such file"));
    }
    let module = CModule::load_on_device(path, device).map_err(|e| Error::file(path, format!("not a TorchScript module (save one with torch.jit.script(m).save(...) or python/epcheck_energy.py): {}", first_line(&e))))?;
    let json = match module.method_is::<IValue>("spec", &[]) {
        Ok(IValue::String(s)) => s,
        Ok(other) => return Err(Error::file(path, format!("spec() must return a JSON str, returned {}", ivalue_kind(&other)))),
        Err(_) => return Err(Error::file(path, "the module has no method spec() -> str (the layers, parameters and loss as JSON): save it with python/epcheck_energy.py, docs/scripted.md")),
    };
    let spec: Spec = serde_json::from_str(&json).map_err(|e| Error::file(path, format!("spec(): {}", first_line(&e))))?;
    let module = Arc::new(module);
    let bad = |m: String| Error::file(path, format!("spec(): {m}"));
    let sizes_ok = |s: &[i64]| !s.is_empty() && s.iter().all(|&d| d >= 1);
    if !sizes_ok(&spec.input) {
        return Err(bad(format!("input must be the per-example input shape (sizes ≥ 1), got {:?}", spec.input)));
    }
    if spec.layers.is_empty() || spec.params.is_empty() {
        return Err(bad("layers and params must each list at least one entry".into()));
    }
    let mut layers = Vec::new();
    let (mut update_maps, mut scripted_maps): (Vec<(usize, Arc<dyn UpdateMap>)>, Vec<(usize, Arc<ScriptedMap>)>) = (vec![], vec![]);
    for (k, l) in spec.layers.iter().enumerate() {
        if !sizes_ok(&l.shape) {
            return Err(bad(format!("layer '{}' has shape {:?}: every size must be ≥ 1", l.name, l.shape)));
        }
        let act = match (&l.activation, &l.update) {
            (Some(_), Some(_)) => return Err(bad(format!("layer '{}': give either activation or update, not both", l.name))),
            (None, None) => return Err(bad(format!("layer '{}': missing activation (or update map)", l.name))),
            (Some(a), None) => Activation::parse(a).map_err(|e| bad(format!("layer '{}': {}", l.name, first_line(&e))))?,
            (None, Some(u)) => {
                let (map, scripted) = crate::model::scripted_update::parse(u, k, &l.name, &l.shape, &spec.input, &module, &path.display().to_string()).map_err(bad)?;
                update_maps.push((k, map));
                scripted_maps.extend(scripted.map(|m| (k, m)));
                Activation::Identity
            }
        };
        layers.push(LayerSpec { name: l.name.clone(), shape: l.shape.clone(), activation: act });
    }
    let mut params = Vec::new();
    for q in &spec.params {
        if !sizes_ok(&q.shape) {
            return Err(bad(format!("parameter '{}' has shape {:?}: every size must be ≥ 1", q.name, q.shape)));
        }
        if !(q.init.is_finite() && q.init >= 0.0) {
            return Err(bad(format!("parameter '{}': init must be a bound a ≥ 0 of U(−a, a), got {}", q.name, q.init)));
        }
        let group = q.group.clone().unwrap_or_else(|| q.name.rsplit_once('.').map(|(g, _)| g.to_string()).unwrap_or_else(|| q.name.clone()));
        params.push(ParamSpec { name: q.name.clone(), shape: q.shape.clone(), group, init: Init::Uniform(q.init) });
    }
    for (i, l) in layers.iter().enumerate() {
        if layers[..i].iter().any(|o| o.name == l.name) {
            return Err(bad(format!("layer name '{}' is given twice", l.name)));
        }
    }
    for (i, q) in params.iter().enumerate() {
        if params[..i].iter().any(|o| o.name == q.name) {
            return Err(bad(format!("parameter name '{}' is given twice", q.name)));
        }
    }
    let loss = Loss::parse(spec.loss.as_deref().unwrap_or("mse")).map_err(|e| bad(first_line(&e)))?;
    let n = layers.len();
    let schedule = match &spec.schedule {
        None => Schedule::sync(n),
        Some(serde_json::Value::String(s)) => Schedule::parse(s, n).map_err(|e| bad(first_line(&e)))?,
        Some(v) => {
            let groups: Vec<Vec<usize>> = serde_json::from_value(v.clone()).map_err(|_| bad(format!("schedule must be \"sync\", \"async2\" or a list of groups of 0-based layer indices, got {v}")))?;
            Schedule::groups(groups)
        }
    };
    let mut slots = vec![Node::Input(0)];
    slots.extend((0..n).map(Node::Layer));
    let term = Scripted { module, path: path.display().to_string(), slots, params: (0..params.len()).collect(), custom_drives: spec.drives, complex_safe: spec.complex_safe, maps: scripted_maps, cache: Mutex::new(None) };
    let mut m = Model::new("energy", vec![spec.input.clone()], layers, params, vec![Box::new(term)], loss, schedule).map_err(|e| bad(first_line(&e)))?;
    for (k, map) in update_maps {
        m = m.with_update_map(k, map).map_err(|e| bad(first_line(&e)))?;
    }
    if let Some([lo, hi]) = spec.input_range {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(bad(format!("input_range must be [lo, hi] with lo < hi, got [{lo}, {hi}]")));
        }
        m.input_range = (lo, hi);
    }
    Ok(m)
}

/// Whether a model is a scripted energy.
pub fn is_scripted(m: &Model) -> bool {
    m.terms.iter().any(|t| t.kind() == KIND)
}
