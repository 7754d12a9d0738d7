"""Script a user's energy for epcheck (docs/scripted.md).

One file, no dependency beyond torch and safetensors (for ``dump``). A user's energy is an ``nn.Module`` with

* ``primitive(params: List[Tensor], states: List[Tensor], x: Tensor) -> Tensor``: Φ per example, shape (B,),
  **maximised** by the dynamics (E = −Φ), *without* the loss (epcheck adds −β·ℓ on the output layer);
* optionally ``drives(params, states, x) -> List[Tensor]``: the update drives u_k, one per layer (default: epcheck
  takes u_k = ∂Φ/∂s_k by autograd; a module that gives its own drives is checked against that by ``audit``);
* a spec (``module.epcheck_spec`` or the ``spec=`` argument): input shape, layers (name, per-example shape, update
  by name from epcheck's activation list), parameters (canonical name, shape, init bound a of U(−a, a)), loss
  (``mse``/``ce`` on the last layer), schedule (``sync``/``async2``) and input range.

``save(module, "energy.pt")`` checks the signatures on a random batch and writes the TorchScript file that
``epcheck … --energy energy.pt`` loads. ``dump(path, names, params, x, y)`` writes a batch and parameters in
epcheck's interchange names (``param.<name>``, ``input.x``, ``input.y``) as safetensors (the ``safetensors`` package).

Usage:  python python/epcheck_energy.py check energy.pt   (load a saved module and check it again)
"""
import json
import sys
from typing import List

import torch
from torch import Tensor

__all__ = ["save", "check", "dump", "spec_of"]

def _norm_spec(spec: dict) -> dict:
    """Validates a spec and returns it in the JSON form epcheck reads."""
    if not isinstance(spec, dict):
        raise ValueError("spec must be a dict")
    inp = spec.get("input")
    if not (isinstance(inp, (list, tuple)) and inp and all(isinstance(d, int) and d >= 1 for d in inp)):
        raise ValueError("spec['input'] must be the per-example input shape, e.g. [784]")
    layers = []
    for i, l in enumerate(spec.get("layers") or []):
        if isinstance(l, dict):
            name, shape, act = l["name"], l["shape"], l.get("update", l.get("activation", "tanh"))
        else:
            name, shape, act = l
        if not (isinstance(shape, (list, tuple)) and all(isinstance(d, int) and d >= 1 for d in shape)):
            raise ValueError(f"layer {i} ({name}): shape must be a list of sizes ≥ 1")
        if isinstance(act, dict):
            # An update map: {"kind": "attention", "keys": …, "queries": …, "scale": c, "mask": "off"} or
            # {"kind": "scripted"} (the module's update(layer, u, x) and/or potential(layer, u, x)).
            if act.get("kind") not in ("attention", "scripted"):
                raise ValueError(f"layer {i} ({name}): update kind must be 'attention' or 'scripted', got {act.get('kind')!r}")
            layers.append({"name": str(name), "shape": list(shape), "update": dict(act)})
        else:
            layers.append({"name": str(name), "shape": list(shape), "activation": str(act)})
    if not layers:
        raise ValueError("spec['layers'] must list at least one layer: (name, shape, activation)")
    params = []
    for i, p in enumerate(spec.get("params") or []):
        name, shape, init = (p["name"], p["shape"], p["init"]) if isinstance(p, dict) else p
        group = p.get("group") if isinstance(p, dict) else None
        if not (isinstance(shape, (list, tuple)) and all(isinstance(d, int) and d >= 1 for d in shape)):
            raise ValueError(f"parameter {i} ({name}): shape must be a list of sizes ≥ 1")
        params.append({"name": str(name), "shape": list(shape), "init": float(init), "group": str(group or name.rsplit(".", 1)[0])})
    if not params:
        raise ValueError("spec['params'] must list at least one parameter: (name, shape, init bound)")
    out = {"input": list(inp), "layers": layers, "params": params, "loss": spec.get("loss", "mse"), "schedule": spec.get("schedule", "sync")}
    if spec.get("drives"):
        out["drives"] = True
    if spec.get("complex_safe"):
        # Φ is holomorphic in the states with real coefficients (holomorphic EP): epcheck verifies it on a probe.
        out["complex_safe"] = True
    if spec.get("input_range") is not None:
        out["input_range"] = [float(v) for v in spec["input_range"]]
    return out


def spec_of(module) -> dict:
    return _norm_spec(getattr(module, "epcheck_spec"))


def _export(cls, name: str) -> bool:
    fn = getattr(cls, name, None)
    if fn is None:
        return False
    torch.jit.export(fn)
    return True


def _random(shape_list, b, gen, dtype, lo=0.0, hi=1.0):
    return [torch.rand([b] + list(s), generator=gen, dtype=dtype) * (hi - lo) + lo for s in shape_list]


def check(scripted, spec: dict, batch: int = 3, seed: int = 0, check_complex: bool = True) -> None:
    """Calls the scripted module's methods on a random batch and checks their shapes, dtypes and finiteness."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64
    params = [(torch.rand(p["shape"], generator=gen, dtype=dt) * 2 - 1) * p["init"] for p in spec["params"]]
    states = _random([l["shape"] for l in spec["layers"]], batch, gen, dt)
    x = _random([spec["input"]], batch, gen, dt)[0]
    phi = scripted.primitive(params, states, x)
    if not isinstance(phi, Tensor) or list(phi.shape) != [batch]:
        raise ValueError(f"primitive must return Φ per example, shape ({batch},); got {getattr(phi, 'shape', type(phi))}")
    if not torch.isfinite(phi).all():
        raise ValueError("primitive returned a non-finite value on a random batch")
    leaves = [s.clone().requires_grad_(True) for s in states]
    g = torch.autograd.grad(scripted.primitive(params, leaves, x).sum(), leaves, allow_unused=True)
    if all(t is None for t in g):
        raise ValueError("primitive does not depend on the states")
    if spec.get("complex_safe") and check_complex:
        # All arguments in the complex dtype (as epcheck passes them); Φ(conj s) = conj Φ(s) for real θ and x.
        cdt = torch.complex128
        zs = [torch.complex(s * 0.5, torch.randn(s.shape, generator=gen, dtype=dt) * 0.5) for s in states]
        pc, xc = [t.to(cdt) for t in params], x.to(cdt)
        a, c = scripted.primitive(pc, zs, xc), scripted.primitive(pc, [z.conj() for z in zs], xc)
        if a.dtype != cdt or not torch.isfinite(a).all() or not torch.allclose(c, a.conj(), rtol=1e-10, atol=1e-12):
            raise ValueError("spec says complex_safe, but Φ on a complex state is not finite, not complex, or Φ(conj s) ≠ conj Φ(s)")
    for k, l in enumerate(spec["layers"]):
        if l.get("update", {}).get("kind") != "scripted":
            continue
        u = torch.randn([batch] + l["shape"], generator=gen, dtype=dt)
        if hasattr(scripted, "update"):
            g = scripted.update(k, u, x)
            if list(g.shape) != list(u.shape) or not torch.isfinite(g).all():
                raise ValueError(f"update({k}, u, x) of layer {l['name']} must return a finite tensor of u's shape {list(u.shape)}")
        if hasattr(scripted, "potential"):
            psi = scripted.potential(k, u, x)
            if list(psi.shape) != [batch] or not torch.isfinite(psi).all():
                raise ValueError(f"potential({k}, u, x) of layer {l['name']} must return ψ per example, finite, shape ({batch},)")
        if not (hasattr(scripted, "update") or hasattr(scripted, "potential")):
            raise ValueError(f"layer {l['name']} has update kind 'scripted': define update(layer, u, x) and/or potential(layer, u, x)")
    if hasattr(scripted, "drives"):
        d = scripted.drives(params, states, x)
        if len(d) != len(states) or any(list(a.shape) != list(s.shape) for a, s in zip(d, states)):
            raise ValueError("drives must return one tensor per layer, shaped like the layer's state")


class _Wrapped(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, spec_json: str):
        super().__init__()
        self.inner = inner
        self.spec_json = spec_json

    @torch.jit.export
    def spec(self) -> str:
        return self.spec_json

    @torch.jit.export
    def primitive(self, params: List[Tensor], states: List[Tensor], x: Tensor) -> Tensor:
        return self.inner.primitive(params, states, x)

    def forward(self, params: List[Tensor], states: List[Tensor], x: Tensor) -> Tensor:
        return self.inner.primitive(params, states, x)


def _drives(self, params: List[Tensor], states: List[Tensor], x: Tensor) -> List[Tensor]:
    return self.inner.drives(params, states, x)


def _update(self, layer: int, u: Tensor, x: Tensor) -> Tensor:
    return self.inner.update(layer, u, x)


def _potential(self, layer: int, u: Tensor, x: Tensor) -> Tensor:
    return self.inner.potential(layer, u, x)


_OPTIONAL = {"drives": _drives, "update": _update, "potential": _potential}


def _wrapper(methods) -> type:
    """A subclass of _Wrapped that forwards the optional methods the user's module has."""
    return type("_Wrapped_" + "_".join(methods), (_Wrapped,), {m: torch.jit.export(_OPTIONAL[m]) for m in methods})


def save(module: torch.nn.Module, path: str, spec: dict = None, check_batch: int = 3, check_complex: bool = True) -> None:
    """Scripts `module` with its spec and writes the TorchScript file epcheck loads (`--energy path`).
    `check_complex=False` skips the complex-safe probe (only to write a deliberately wrong test fixture)."""
    spec = _norm_spec(spec if spec is not None else getattr(module, "epcheck_spec", None))
    cls = type(module)
    if not _export(cls, "primitive"):
        raise ValueError(f"{cls.__name__} has no method primitive(params, states, x)")
    present = [m for m in _OPTIONAL if _export(cls, m)]
    spec["drives"] = "drives" in present
    if any(l.get("update", {}).get("kind") == "scripted" for l in spec["layers"]) and not ({"update", "potential"} & set(present)):
        raise ValueError(f"{cls.__name__}: a layer has update kind 'scripted' but the module has neither update(layer, u, x) nor potential(layer, u, x)")
    wrapped = _wrapper(present)(module, json.dumps(spec))
    scripted = torch.jit.script(wrapped)
    check(scripted, spec, batch=check_batch, check_complex=check_complex)
    scripted.save(path)


def dump(path: str, tensors: dict) -> None:
    """Writes a dict name → tensor as safetensors (``safetensors.torch.save_file``; contiguous CPU copies)."""
    from safetensors.torch import save_file

    save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, path)


def dump_batch(path: str, spec: dict, params: List[Tensor], x: Tensor, y: Tensor) -> None:
    """Parameters under `param.<name>` (spec order) and the batch as `input.x`, `input.y`."""
    spec = _norm_spec(spec)
    t = {f"param.{p['name']}": v for p, v in zip(spec["params"], params)}
    t["input.x"] = x
    t["input.y"] = y.to(torch.int64)
    dump(path, t)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        m = torch.jit.load(sys.argv[2])
        spec = json.loads(m.spec())
        check(m, spec)
        print(f"{sys.argv[2]}: ok ({len(spec['layers'])} layers, {len(spec['params'])} parameters)")
    else:
        print(__doc__)
        sys.exit(2)
