//! Update maps of a scripted energy's layers (docs/scripted.md, "Update maps"): a layer of the module's spec
//! gives either an `activation` (by name, elementwise) or an `update`:
//!
//! * `{"kind": "attention", "keys": {"start": 0, "len": L}, "queries": {"start": 0, "len": L}, "scale": c,
//!   "mask": "off"}`: epcheck's modern-Hopfield attention map ([`crate::model::attention`]), the same options as
//!   an architecture graph's `update` (docs/graph.md) — keys, values and queries are row slices of the module's
//!   one input `x`;
//! * `{"kind": "scripted"}`: the module's own TorchScript methods `update(layer: int, u: Tensor, x: Tensor) ->
//!   Tensor` (G, shape of u) and/or `potential(layer: int, u: Tensor, x: Tensor) -> Tensor` (ψ per example, shape
//!   (B,)), with `layer` the 0-based layer index. Without `update`, G = ∇ψ by autograd; with both, the module's
//!   G runs and `audit` measures it against ∇ψ (A5) and its Jacobian's symmetry (A4).
//!
//! [`ScriptedMap`] is the [`UpdateMap`] of a scripted layer: J·v by autograd double backward (the VJP of the
//! VJP, ∂/∂w ⟨wᵀJ, v⟩), vᵀJ by one backward (exact also when G is not a gradient: BPTT then differentiates
//! what runs, and EP, which assumes a gradient map, no longer agrees — `gdu` sees it). The conjugate potential
//! ψ* is not computed (it needs the inverse of G): the total energy 𝓕 of such a layer is undefined (NaN) and
//! `converge` does not assert its monotonicity ([`UpdateMap::has_conjugate_potential`]).
use super::attention::{Attention, AttentionMask, SeqSlice};
use super::update_map::UpdateMap;
use super::Batch;
use crate::{Error, Result};
use serde::Deserialize;
use std::sync::Arc;
use tch::{CModule, IValue, Kind, Tensor};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SliceDecl {
    /// Only `x`, the module's one input.
    #[serde(default)]
    input: Option<String>,
    start: i64,
    len: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateDecl {
    kind: String,
    #[serde(default)]
    keys: Option<SliceDecl>,
    #[serde(default)]
    queries: Option<SliceDecl>,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    mask: Option<String>,
}

/// The module's update and potential of one layer.
pub struct ScriptedMap {
    module: Arc<CModule>,
    /// The file, for messages.
    path: String,
    /// 0-based layer index passed to `update` / `potential`.
    layer: usize,
    has_update: bool,
    has_potential: bool,
}

impl std::fmt::Debug for ScriptedMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScriptedMap({}, layer {}, update {}, potential {})", self.path, self.layer, self.has_update, self.has_potential)
    }
}

fn first_line(e: &impl ToString) -> String {
    e.to_string().lines().next().unwrap_or("").trim().to_string()
}

/// Whether the module has a method `name` (TorchScript's error for a missing method names it).
fn has_method(module: &CModule, name: &str) -> bool {
    match module.method_is::<IValue>(name, &[]) {
        Ok(_) => true,
        Err(e) => {
            let msg = e.to_string();
            !(msg.contains("not defined") || msg.contains("does not have") || msg.contains("has no") || msg.contains(&format!("Method '{name}'")))
        }
    }
}

impl ScriptedMap {
    fn call(&self, method: &str, u: &Tensor, x: &Tensor) -> Result<Tensor> {
        let args = [IValue::Int(self.layer as i64), IValue::Tensor(u.shallow_clone()), IValue::Tensor(x.shallow_clone())];
        match self.module.method_is(method, &args) {
            Ok(IValue::Tensor(t)) => Ok(t),
            Ok(_) => Err(Error::file(&self.path, format!("{method}(layer, u, x) must return a Tensor (layer {})", self.layer + 1))),
            Err(e) => Err(Error::file(&self.path, format!("{method}(layer: int, u: Tensor, x: Tensor) failed for layer {}: {}", self.layer + 1, first_line(&e)))),
        }
    }

    fn potential_raw(&self, batch: &Batch, u: &Tensor) -> Tensor {
        self.call("potential", u, &batch.x[0]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// ∇ψ(u) by autograd; differentiable when `record`.
    fn grad_potential(&self, batch: &Batch, u: &Tensor, record: bool) -> Tensor {
        tch::with_grad(|| {
            let leaf = if record && u.requires_grad() { u.shallow_clone() } else { u.detach().set_requires_grad(true) };
            let psi = self.potential_raw(batch, &leaf).sum(None::<Kind>);
            if !psi.requires_grad() {
                return u.detach().zeros_like();
            }
            let g = Tensor::run_backward(&[psi], &[&leaf], record, record).remove(0);
            if g.defined() {
                g
            } else {
                u.detach().zeros_like()
            }
        })
    }

    /// Checks the layer's methods on the batch at drive u = 0: G has u's shape and is finite, ψ has shape (B,).
    pub fn check(&self, x: &Tensor, u: &Tensor) -> Result<()> {
        let name = self.layer + 1;
        if self.has_update {
            let g = tch::no_grad(|| self.call("update", u, x))?;
            if g.size() != u.size() {
                return Err(Error::file(&self.path, format!("update(layer, u, x) returned shape {:?} for layer {name} of shape {:?}", g.size(), u.size())));
            }
            if !crate::tensor_util::all_finite(&g) {
                return Err(Error::file(&self.path, format!("update(layer, u, x) of layer {name} is not finite (NaN or inf) at u = 0")));
            }
        }
        if self.has_potential {
            let psi = tch::no_grad(|| self.call("potential", u, x))?;
            if psi.size() != [u.size()[0]] {
                return Err(Error::file(&self.path, format!("potential(layer, u, x) returned shape {:?} for layer {name}: ψ must be one scalar per example, shape (B,) = [{}]", psi.size(), u.size()[0])));
            }
            if !crate::tensor_util::all_finite(&psi) {
                return Err(Error::file(&self.path, format!("potential(layer, u, x) of layer {name} is not finite (NaN or inf) at u = 0")));
            }
        }
        Ok(())
    }
}

impl UpdateMap for ScriptedMap {
    fn key(&self) -> &'static str {
        "scripted"
    }

    fn apply(&self, batch: &Batch, u: &Tensor) -> Tensor {
        if self.has_update {
            return self.call("update", u, &batch.x[0]).unwrap_or_else(|e| panic!("{e}"));
        }
        let record = u.requires_grad() && (Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true) * 1.0).requires_grad();
        let g = self.grad_potential(batch, u, record);
        if record {
            g
        } else {
            g.detach()
        }
    }

    /// J v as the VJP of the VJP: w ↦ wᵀJ is linear in w, so ∂/∂w ⟨wᵀJ, v⟩ = J v (no symmetry assumed).
    fn jacobian_apply(&self, batch: &Batch, u: &Tensor, v: &Tensor) -> Tensor {
        tch::with_grad(|| {
            let leaf = u.detach().set_requires_grad(true);
            let g = self.apply(batch, &leaf);
            if !g.requires_grad() {
                return v.zeros_like();
            }
            let w = u.detach().zeros_like().set_requires_grad(true);
            let vj = Tensor::run_backward(&[(&g * &w).sum(None::<Kind>)], &[&leaf], true, true).remove(0);
            if !vj.defined() || !vj.requires_grad() {
                return v.zeros_like();
            }
            let jv = Tensor::run_backward(&[(vj * v.detach()).sum(None::<Kind>)], &[&w], false, false).remove(0);
            if jv.defined() {
                jv
            } else {
                v.zeros_like()
            }
        })
    }

    fn vjp(&self, batch: &Batch, u: &Tensor, v: &Tensor) -> Tensor {
        tch::with_grad(|| {
            let leaf = u.detach().set_requires_grad(true);
            let g = self.apply(batch, &leaf);
            if !g.requires_grad() {
                return v.zeros_like();
            }
            let r = Tensor::run_backward(&[(g * v.detach()).sum(None::<Kind>)], &[&leaf], false, false).remove(0);
            if r.defined() {
                r
            } else {
                v.zeros_like()
            }
        })
    }

    /// ψ(u) from the module's `potential`; NaN per example when the module has none.
    fn potential(&self, batch: &Batch, u: &Tensor) -> Tensor {
        if self.has_potential {
            self.potential_raw(batch, u)
        } else {
            Tensor::full([u.size()[0]], f64::NAN, (u.kind(), u.device()))
        }
    }

    /// Not computed (it would need G⁻¹): NaN, so 𝓕 is undefined and `converge` does not assert it.
    fn conjugate_potential(&self, _batch: &Batch, s: &Tensor) -> Tensor {
        Tensor::full([s.size()[0]], f64::NAN, (s.kind(), s.device()))
    }

    fn has_conjugate_potential(&self) -> bool {
        false
    }
}

/// A layer's update map from the module's spec (`update` value): the attention map, or the module's own
/// `update`/`potential` methods. `shape` is the layer's per-example shape, `input` the module's input shape.
/// Errors are `spec(): …` messages without the file prefix (the caller adds it).
pub fn parse(v: &serde_json::Value, layer: usize, lname: &str, shape: &[i64], input: &[i64], module: &Arc<CModule>, path: &str) -> std::result::Result<(Arc<dyn UpdateMap>, Option<Arc<ScriptedMap>>), String> {
    let what = format!("layer '{lname}' update");
    let u: UpdateDecl = serde_json::from_value(v.clone()).map_err(|e| format!("{what}: {} (expected {{\"kind\": \"attention\", \"keys\": …, \"queries\": …, \"scale\": c}} or {{\"kind\": \"scripted\"}})", first_line(&e)))?;
    match u.kind.as_str() {
        "attention" => {
            if input.len() != 2 {
                return Err(format!("{what}: attention needs a sequence input of shape [L, d], the spec's input is {input:?}"));
            }
            let d = input[1];
            let slice = |s: &Option<SliceDecl>, which: &str| -> std::result::Result<SeqSlice, String> {
                let s = s.as_ref().ok_or_else(|| format!("{what}: attention needs {which} = {{\"start\": …, \"len\": …}}"))?;
                if let Some(i) = &s.input {
                    if i != "x" {
                        return Err(format!("{what}: {which}.input must be \"x\" (the module's one input), got '{i}'"));
                    }
                }
                if s.start < 0 || s.len < 1 || s.start + s.len > input[0] {
                    return Err(format!("{what}: {which} rows {}..{} are outside the input's {} rows", s.start, s.start + s.len, input[0]));
                }
                Ok(SeqSlice::new(0, s.start, s.len))
            };
            let keys = slice(&u.keys, "keys")?;
            let queries = slice(&u.queries, "queries")?;
            if shape != [queries.len, d] {
                return Err(format!("{what}: layer '{lname}' has shape {shape:?}, the attention over {} query rows of d = {d} gives [{}, {d}]", queries.len, queries.len));
            }
            let scale = u.scale.unwrap_or(1.0 / (d as f64).sqrt());
            if !(scale.is_finite() && scale > 0.0) {
                return Err(format!("{what}: scale must be a finite number > 0, got {scale}"));
            }
            let mask = AttentionMask::parse(u.mask.as_deref().unwrap_or("off")).map_err(|e| format!("{what}: {}", e.to_string().trim_start_matches("config: ")))?;
            Ok((Arc::new(Attention::new(keys, queries, scale, mask)), None))
        }
        "scripted" => {
            if u.keys.is_some() || u.queries.is_some() || u.scale.is_some() || u.mask.is_some() {
                return Err(format!("{what}: a scripted update takes no options (keys, queries, scale, mask belong to kind \"attention\")"));
            }
            let (has_update, has_potential) = (has_method(module, "update"), has_method(module, "potential"));
            if !has_update && !has_potential {
                return Err(format!("{what}: kind \"scripted\" needs the module's method update(layer: int, u: Tensor, x: Tensor) -> Tensor and/or potential(layer: int, u: Tensor, x: Tensor) -> Tensor"));
            }
            let m = Arc::new(ScriptedMap { module: module.clone(), path: path.to_string(), layer, has_update, has_potential });
            Ok((m.clone() as Arc<dyn UpdateMap>, Some(m)))
        }
        other => Err(format!("{what}: unknown update map kind '{other}' (known: attention, scripted)")),
    }
}
