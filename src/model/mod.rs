//! The energy model as a composition: free state layers (shape, update map) joined by energy terms
//! (couplings, biases), a loss on the output layer, and a schedule. Everything a relaxation, an estimator or
//! a check needs is a method here, built only from the terms' own drives and local forms.
pub mod activation;
pub mod attention;
pub mod loss;
pub mod presets;
pub mod readout;
pub mod schedule;
pub mod terms;
pub mod update_map;
pub mod scripted_update;

use crate::precision::Precision;
use crate::tensor_util::{from_planar, to_planar};
use crate::{Error, Result};
use activation::Activation;
use loss::Loss;
use readout::Readout;
use schedule::Schedule;
use tch::{Kind, Tensor};
use std::sync::Arc;
use terms::{accumulate, Node, Term};
use update_map::UpdateMap;

/// A free layer: per-example shape and update map. The update is `activation` (elementwise σ) unless the model
/// attaches a vector-valued [`UpdateMap`] to the layer ([`Model::with_update_map`]); `activation` is then
/// `identity` and unused.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub activation: Activation,
}

/// How a parameter is initialised (estimators §1.2, conventions §11.2).
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// U(−bound, bound)
    Uniform(f64),
}

#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<i64>,
    /// Layer group (`synapses.<k>` for P-MLP): per-layer scopes concatenate its tensors.
    pub group: String,
    pub init: Init,
}

/// The clamped inputs and labels of a batch.
pub struct Batch {
    pub x: Vec<Tensor>,
    pub y: Tensor,
    pub y_onehot: Tensor,
}

impl Batch {
    pub fn size(&self) -> i64 {
        self.y.size()[0]
    }
    pub fn new(x: Tensor, y: Tensor, classes: i64) -> Batch {
        let y_onehot = y.onehot(classes).to_kind(x.kind());
        Batch { x: vec![x], y, y_onehot }
    }
}

/// The nudge strength of a phase: one real β, or one β per batch row, shape (B, 1) — complex for the points
/// of holomorphic EP folded into the batch axis.
pub enum Beta {
    Real(f64),
    Rows(Tensor),
    /// One complex β per row, shape (R, 1), for a state held in planar form (`tensor_util::to_planar`: the
    /// 2R-row real tensor of the R rows' real parts, then their imaginary parts); the batch passed with it is
    /// the R-row batch stacked twice. Used by the planar complex relaxation (`relax.rs`).
    Planar(Tensor),
}

impl Beta {
    pub fn is_zero(&self) -> bool {
        matches!(self, Beta::Real(b) if *b == 0.0)
    }
    /// β·t (rows broadcast over the non-batch axes).
    pub fn scale(&self, t: Tensor) -> Tensor {
        match self {
            Beta::Real(b) => t * *b,
            Beta::Rows(r) | Beta::Planar(r) => {
                let mut shape = vec![r.size()[0]];
                shape.resize(t.dim(), 1);
                // Real rows scale a real t in t's dtype (float32 under `reference_casts`).
                let r = if !crate::tensor_util::is_complex(r.kind()) && !crate::tensor_util::is_complex(t.kind()) && r.kind() != t.kind() { r.to_kind(t.kind()) } else { r.shallow_clone() };
                t * r.reshape(&shape[..])
            }
        }
    }
    pub fn is_planar(&self) -> bool {
        matches!(self, Beta::Planar(_))
    }
    /// The real value, NaN for per-row strengths.
    pub fn real(&self) -> f64 {
        match self {
            Beta::Real(b) => *b,
            Beta::Rows(_) | Beta::Planar(_) => f64::NAN,
        }
    }
}

/// States of the free layers, in model order.
pub type State = Vec<Tensor>;

pub fn detach_state(s: &State) -> State {
    s.iter().map(|t| t.detach()).collect()
}

pub struct Model {
    pub preset: String,
    pub input_shapes: Vec<Vec<i64>>,
    pub layers: Vec<LayerSpec>,
    pub params: Vec<ParamSpec>,
    pub terms: Vec<Box<dyn Term>>,
    pub loss: Loss,
    /// Index of the loss-bearing (output) layer.
    pub output: usize,
    pub schedule: Schedule,
    /// Option `init_scale` = g: after the default draws, every tensor is drawn again and multiplied by g.
    pub init_scale: Option<f64>,
    /// Range (lo, hi) of the seeded synthetic inputs.
    pub input_range: (f64, f64),
    /// The softmax readout (estimators §1.1): the loss reads logits z = W_ro s_out + b_ro, and depends on θ.
    pub readout: Option<Readout>,
    /// Option `reference_casts` (conventions §11.3, estimators §7 L1): in float64 runs the nudge and the loss
    /// (ℓ, its gradient, the BPTT loss) are computed on float32 copies of the loss input and ŷ.
    pub reference_casts: bool,
    /// Option `bptt_loss_state = previous` (estimators §4.1): `bptt`/`bptt_trunc` put the loss at s_{T−1}.
    pub bptt_loss_previous: bool,
    /// Option `init = trunc_normal` with `init_std` = σ₀ (estimators §1.2): weights N(0, σ₀²) truncated at ±2σ₀,
    /// biases 0, drawn from the seeded generator.
    pub init_trunc_std: Option<f64>,
    /// Per free layer: the (term, slot) pairs that touch it.
    incidence: Vec<Vec<(usize, usize)>>,
    /// Per free layer: a vector-valued update map replacing the elementwise activation (None = σ).
    update_maps: Vec<Option<Arc<dyn UpdateMap>>>,
}

/// What the parameter part of one step's VJP reads, group by group in the order the VJP visits them: the state
/// the group's update read and the cotangents μ of the layers it replaced (neuron-sized; the states are shared, not
/// copied), and β.
pub struct VjpPieces {
    groups: Vec<(State, Vec<Option<Tensor>>)>,
    beta: f64,
}

impl VjpPieces {
    /// Elements these pieces hold beyond the state the step started from: every μ, and the states of the groups
    /// after the first (counted whole: some of their layers are the start state's own tensors).
    pub fn numel_owned(&self) -> i64 {
        let n = |ts: &mut dyn Iterator<Item = &Tensor>| ts.map(|t| t.numel() as i64).sum::<i64>();
        self.groups.iter().enumerate().map(|(g, (st, mu))| n(&mut mu.iter().flatten()) + if g == 0 { 0 } else { n(&mut st.iter()) }).sum()
    }
}

impl Model {
    pub fn new(
        preset: &str,
        input_shapes: Vec<Vec<i64>>,
        layers: Vec<LayerSpec>,
        params: Vec<ParamSpec>,
        terms: Vec<Box<dyn Term>>,
        loss: Loss,
        schedule: Schedule,
    ) -> Result<Model> {
        let mut incidence = vec![Vec::new(); layers.len()];
        for (ti, t) in terms.iter().enumerate() {
            for (si, n) in t.slots().iter().enumerate() {
                match *n {
                    Node::Layer(k) if k < layers.len() => incidence[k].push((ti, si)),
                    Node::Input(i) if i < input_shapes.len() => {}
                    _ => return Err(Error::Config(format!("term {ti} ({}) refers to unknown node {n:?}", t.kind()))),
                }
            }
            for &p in t.params() {
                if p >= params.len() {
                    return Err(Error::Config(format!("term {ti} refers to unknown parameter {p}")));
                }
            }
        }
        schedule.validate(layers.len())?;
        let output = layers.len() - 1;
        let update_maps = vec![None; layers.len()];
        Ok(Model { preset: preset.to_string(), input_shapes, layers, params, terms, loss, output, schedule, init_scale: None, input_range: (0.0, 1.0), readout: None, reference_casts: false, bptt_loss_previous: false, init_trunc_std: None, incidence, update_maps })
    }

    /// Replaces the elementwise activation of layer `k` by a vector-valued update map (e.g. attention).
    pub fn with_update_map(mut self, k: usize, map: Arc<dyn UpdateMap>) -> Result<Model> {
        if k >= self.layers.len() {
            return Err(Error::Config(format!("update map '{}' attached to unknown layer {k}", map.key())));
        }
        self.update_maps[k] = Some(map);
        Ok(self)
    }

    /// The update map of layer `k`, if it is not elementwise.
    pub fn update_map(&self, k: usize) -> Option<&dyn UpdateMap> {
        self.update_maps[k].as_deref()
    }

    /// The key of layer `k`'s update: the map's key, else the activation's.
    pub fn update_key(&self, k: usize) -> &'static str {
        self.update_map(k).map(|m| m.key()).unwrap_or_else(|| self.layers[k].activation.key())
    }

    pub fn classes(&self) -> i64 {
        if let Some(r) = &self.readout {
            // The readout's rows (W_ro is (C, n_D)).
            return self.params[r.weight].shape[0];
        }
        self.layers[self.output].shape.iter().product()
    }
    pub fn param_names(&self) -> Vec<String> {
        self.params.iter().map(|p| p.name.clone()).collect()
    }
    pub fn layer_names(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.name.clone()).collect()
    }

    /// Initial parameters: float32 CPU tensors filled in canonical order by libtorch's uniform sampler after
    /// seeding its CPU generator (conventions §11.2), then cast to the run dtype and device.
    pub fn init_params(&self, seed: u64, prec: Precision) -> Vec<Tensor> {
        let _rng = crate::tensor_util::rng_lock();
        tch::manual_seed(seed as i64);
        let draw = || -> Vec<Tensor> {
            self.params
                .iter()
                .map(|spec| {
                    let t = Tensor::empty(&spec.shape[..], (Kind::Float, tch::Device::Cpu));
                    match spec.init {
                        Init::Uniform(a) => t.uniform(-a, a),
                    }
                })
                .collect()
        };
        let mut ts = draw();
        if let Some(std) = self.init_trunc_std {
            ts = self.draw_trunc_normal(std);
        }
        if let Some(g) = self.init_scale {
            ts = draw().into_iter().map(|t| t * g).collect();
        }
        ts.into_iter().map(|t| t.to_kind(prec.dtype.kind()).to_device(prec.device)).collect()
    }

    /// `init = trunc_normal` (estimators §1.2): every weight (a tensor of ≥ 2 axes) N(0, σ₀²) truncated at ±2σ₀ by
    /// redrawing the values outside, in canonical order from the seeded generator; biases (1 axis) 0.
    fn draw_trunc_normal(&self, std: f64) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|spec| {
                let mut t = Tensor::zeros(&spec.shape[..], (Kind::Float, tch::Device::Cpu));
                if spec.shape.len() >= 2 {
                    let _ = t.normal_(0.0, std);
                    loop {
                        let out = t.abs().gt(2.0 * std);
                        if out.sum(Kind::Int64).int64_value(&[]) == 0 {
                            break;
                        }
                        let fresh = t.empty_like().normal_(0.0, std);
                        t = t.where_self(&out.logical_not(), &fresh);
                    }
                }
                t
            })
            .collect()
    }

    /// Zero state for a batch of B examples.
    pub fn zeros_state(&self, b: i64, prec: Precision) -> State {
        self.layers
            .iter()
            .map(|l| {
                let mut shape = vec![b];
                shape.extend(&l.shape);
                Tensor::zeros(&shape[..], prec.opts())
            })
            .collect()
    }

    fn slot_states<'a>(&self, t: &dyn Term, batch: &'a Batch, s: &'a [Tensor]) -> Vec<&'a Tensor> {
        t.slots()
            .iter()
            .map(|n| match *n {
                Node::Input(i) => &batch.x[i],
                Node::Layer(k) => &s[k],
            })
            .collect()
    }

    /// Max-pool ties at state s: per pooled coupling, (term index, tied windows, window argmax).
    pub fn pool_ties(&self, p: &[Tensor], batch: &Batch, s: &[Tensor]) -> Vec<(usize, i64, Tensor)> {
        self.terms.iter().enumerate().filter_map(|(i, t)| t.pool_ties(p, &self.slot_states(t.as_ref(), batch, s)).map(|(n, idx)| (i, n, idx))).collect()
    }

    /// Φ per example, shape (B,).
    pub fn primitive(&self, p: &[Tensor], batch: &Batch, s: &[Tensor]) -> Tensor {
        let mut acc = None;
        for t in &self.terms {
            accumulate(&mut acc, t.primitive(p, &self.slot_states(t.as_ref(), batch, s)));
        }
        acc.expect("a model has at least one term")
    }

    /// E = −Φ per example.
    pub fn energy(&self, p: &[Tensor], batch: &Batch, s: &[Tensor]) -> Tensor {
        -self.primitive(p, batch, s)
    }

    /// What the loss reads at output state `s_out`: the logits z of the readout, else the output state itself.
    /// Also the prediction scores (argmax, estimators §1.5).
    pub fn loss_input(&self, p: &[Tensor], s_out: &Tensor) -> Tensor {
        match &self.readout {
            Some(r) => r.logits(p, s_out),
            None => s_out.shallow_clone(),
        }
    }

    /// Whether `reference_casts` applies to a tensor of this dtype (real float64 only).
    fn casts(&self, t: &Tensor) -> bool {
        self.reference_casts && t.kind() == Kind::Double
    }

    /// scale(∂ℓ/∂z) per example for the loss input z; `scale` multiplies by β, by per-row β or by 1/B. Under
    /// `reference_casts` the gradient and the product are float32 arithmetic on float32 copies, cast back.
    fn scaled_input_grad(&self, z: &Tensor, onehot: &Tensor, scale: impl Fn(Tensor) -> Tensor) -> Tensor {
        if self.casts(z) {
            scale(self.loss.grad(&z.to_kind(Kind::Float), &onehot.to_kind(Kind::Float))).to_kind(z.kind())
        } else {
            scale(self.loss.grad(z, onehot))
        }
    }

    /// The nudge term β·∂ℓ/∂s_out at the output state (estimators §1.5: W_roᵀ β (softmax(z) − ŷ) with the readout).
    pub fn nudge_term(&self, p: &[Tensor], onehot: &Tensor, s_out: &Tensor, beta: &Beta) -> Tensor {
        let g = self.scaled_input_grad(&self.loss_input(p, s_out), onehot, |t| beta.scale(t));
        match &self.readout {
            Some(r) => r.pullback(p, &g, s_out),
            None => g,
        }
    }

    /// ∂²ℓ/∂s_out² · v per example (through the readout when there is one).
    pub fn loss_hvp(&self, p: &[Tensor], s_out: &Tensor, v: &Tensor) -> Tensor {
        match &self.readout {
            Some(r) => r.pullback(p, &self.loss.hvp(&r.logits(p, s_out), &r.push(p, v)), s_out),
            None => self.loss.hvp(s_out, v),
        }
    }

    /// ℓ per example at state s (on float32 copies of the loss input and ŷ under `reference_casts`).
    pub fn loss_per_example(&self, p: &[Tensor], batch: &Batch, s: &[Tensor]) -> Tensor {
        let z = self.loss_input(p, &s[self.output]);
        if self.casts(&z) {
            self.loss.value(&z.to_kind(Kind::Float), &batch.y_onehot.to_kind(Kind::Float)).to_kind(z.kind())
        } else {
            self.loss.value(&z, &batch.y_onehot)
        }
    }

    /// L = (1/B) Σ_b ℓ_b.
    pub fn mean_loss(&self, p: &[Tensor], batch: &Batch, s: &[Tensor]) -> Tensor {
        self.loss_per_example(p, batch, s).mean(None::<Kind>)
    }

    /// ∂L̄/∂θ|explicit at state s: (1/B) Σ_b ∂ℓ_b/∂θ at fixed state, in canonical order (zero except for the
    /// readout's tensors: ((1/B) Σ_b (p_b − ŷ_b) s_out,bᵀ, (1/B) Σ_b (p_b − ŷ_b)), estimators §1.6). None when the
    /// loss does not depend on θ.
    pub fn loss_param_grad(&self, p: &[Tensor], batch: &Batch, s: &[Tensor]) -> Option<Vec<Tensor>> {
        let r = self.readout?;
        let s_out = &s[self.output];
        let inv_b = 1.0 / batch.size() as f64;
        let g = self.scaled_input_grad(&r.logits(p, s_out), &batch.y_onehot, |t| t * inv_b);
        let (gw, gb) = r.param_grad(s_out, &g);
        Some(p.iter().enumerate().map(|(i, t)| if i == r.weight { gw.shallow_clone() } else if i == r.bias { gb.shallow_clone() } else { t.zeros_like() }).collect())
    }

    /// acc + c·∂L̄/∂θ|explicit(s), c = (re, im) a real or complex scalar; `acc` unchanged without a θ-dependent loss.
    pub fn add_loss_param_grad(&self, acc: Vec<Tensor>, p: &[Tensor], batch: &Batch, s: &[Tensor], c: (f64, f64)) -> Vec<Tensor> {
        let Some(e) = self.loss_param_grad(p, batch, s) else { return acc };
        acc.into_iter().zip(e).map(|(a, e)| a + crate::tensor_util::times_scalar(&e, c)).collect()
    }

    /// f(β) = ∂Φ̄_β/∂θ(s) = ∂Φ̄/∂θ(s) − β·∂L̄/∂θ|explicit(s) (estimators §2.1, §3.2; β = (re, im) may be complex).
    /// Equals [`Model::param_derivative`] when the loss does not depend on θ.
    pub fn param_derivative_nudged(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], beta: (f64, f64)) -> Vec<Tensor> {
        let f = self.param_derivative(p, batch, s);
        self.add_loss_param_grad(f, p, batch, s, (-beta.0, -beta.1))
    }

    /// Φ_β = Φ − βℓ per example.
    pub fn nudged_primitive(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], beta: f64) -> Tensor {
        self.primitive(p, batch, s) - self.loss_per_example(p, batch, s) * beta
    }

    /// Total energy 𝓕_β = Σ_k ψ*_k(s_k) + E_β(s) per example (conventions §7.2).
    pub fn total_energy(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], beta: f64) -> Tensor {
        let mut f = -self.nudged_primitive(p, batch, s, beta);
        for (k, l) in self.layers.iter().enumerate() {
            f = f + match self.update_map(k) {
                Some(map) => map.conjugate_potential(batch, &s[k]),
                None => l.activation.conjugate_potential(&s[k]),
            };
        }
        f
    }

    /// The analytic drive u_k = ∂Φ_β/∂s_k of one layer.
    pub fn drive(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], k: usize, beta: f64) -> Tensor {
        self.drive_nudged(p, batch, s, k, &Beta::Real(beta))
    }

    /// The analytic drive at a real or per-row nudge.
    pub fn drive_nudged(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], k: usize, beta: &Beta) -> Tensor {
        self.drive_cached(p, batch, s, k, beta, None)
    }

    /// Whether term `ti`'s drive into its slot `si` is constant during a relaxation: every other slot is a
    /// clamped input (input couplings, biases).
    fn is_constant_drive(&self, ti: usize, si: usize) -> bool {
        !self.terms[ti].nonlinear() && self.terms[ti].slots().iter().enumerate().all(|(j, n)| j == si || matches!(n, Node::Input(_)))
    }

    /// Runs every term's own check ([`Term::validate`]) on the batch at the zero state (a scripted energy:
    /// Φ's shape, finiteness, its drives) — before anything is written.
    pub fn validate_terms(&self, p: &[Tensor], batch: &Batch) -> Result<()> {
        let prec = Precision { dtype: crate::estimators::dtype_of(p), device: p[0].device() };
        let s = self.zeros_state(batch.size(), prec);
        for t in &self.terms {
            t.validate(p, &self.slot_states(t.as_ref(), batch, &s))?;
        }
        Ok(())
    }

    /// The state-independent part of every layer's drive (input couplings and biases), computed once per
    /// relaxation instead of once per iteration.
    pub fn constant_drives(&self, p: &[Tensor], batch: &Batch, s: &[Tensor]) -> Vec<Option<Tensor>> {
        (0..self.layers.len())
            .map(|k| {
                let mut acc = None;
                for &(ti, si) in &self.incidence[k] {
                    if self.is_constant_drive(ti, si) {
                        let t = self.terms[ti].as_ref();
                        accumulate(&mut acc, t.drive(p, &self.slot_states(t, batch, s), si));
                    }
                }
                acc
            })
            .collect()
    }

    /// The drive with an optional cache of the constant parts (from [`Model::constant_drives`]).
    pub fn drive_cached(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], k: usize, beta: &Beta, cache: Option<&[Option<Tensor>]>) -> Tensor {
        self.drive_owned(p, batch, s, k, beta, cache).0
    }

    /// The drive and whether it is a fresh tensor that nothing else references (then the update may overwrite
    /// it). A term's drive may be a view of a parameter (a bias) and the cache is shared, so the first sum is
    /// out of place and the further ones add in place into that sum. Nothing is done in place while autograd
    /// records (BPTT by autograd, the autograd step VJP): saved tensors must keep their values.
    fn drive_owned(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], k: usize, beta: &Beta, cache: Option<&[Option<Tensor>]>) -> (Tensor, bool) {
        let mut acc = cache.and_then(|c| c[k].as_ref().map(|t| t.shallow_clone()));
        let mut owned = false;
        for &(ti, si) in &self.incidence[k] {
            if cache.is_some() && self.is_constant_drive(ti, si) {
                continue;
            }
            let t = self.terms[ti].as_ref();
            let d = t.drive(p, &self.slot_states(t, batch, s), si);
            acc = Some(match acc {
                // (Same dtype only: a real partial sum (bias + input drives) promotes to complex out of place.)
                Some(mut a) if owned && a.kind() == d.kind() && !a.requires_grad() && !d.requires_grad() => {
                    let _ = a.g_add_(&d);
                    a
                }
                Some(a) => {
                    owned = true;
                    a + d
                }
                None => d,
            });
        }
        let mut u = acc.unwrap_or_else(|| s[k].zeros_like());
        if k == self.output && beta.is_planar() {
            // The loss gradient is not linear: evaluated on the complex rows, scaled by β_r, back to planar.
            let r = s[k].size()[0] / 2;
            let g = self.nudge_term(p, &batch.y_onehot.narrow(0, 0, r), &from_planar(&s[k]), beta);
            return (u - to_planar(&g), true);
        }
        if k == self.output && !beta.is_zero() {
            // Out of place on purpose: `u -= …` would write into u, which may be a bias view or the shared cache.
            #[allow(clippy::assign_op_pattern)]
            {
                u = u - self.nudge_term(p, &batch.y_onehot, &s[k], beta);
            }
            owned = true;
        }
        let owned = owned && !u.requires_grad();
        (u, owned)
    }

    /// Drives of every layer, by autograd of Σ_b Φ_β,b (an independent path to the analytic drives).
    pub fn drives_autograd(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], beta: f64) -> Vec<Tensor> {
        let leaves: Vec<Tensor> = s.iter().map(|t| t.detach().set_requires_grad(true)).collect();
        let params: Vec<Tensor> = p.iter().map(|t| t.detach()).collect();
        let phi = self.nudged_primitive(&params, batch, &leaves, beta).sum(None::<Kind>);
        let refs: Vec<&Tensor> = leaves.iter().collect();
        crate::tensor_util::grads_or_zeros(&phi, &refs)
    }

    /// G_k(u): σ_k elementwise, or the layer's update map (which may read the clamped inputs of `batch`).
    pub fn activate(&self, k: usize, batch: &Batch, u: &Tensor) -> Tensor {
        match self.update_map(k) {
            Some(map) => map.apply(batch, u),
            None => self.layers[k].activation.apply(u),
        }
    }

    /// G_k on a planar complex drive (`Beta::Planar`; `batch` is the R-row batch stacked twice): tanh in
    /// planar form directly, the identity as is, every other map on the complex rows and back.
    pub fn activate_planar(&self, k: usize, batch: &Batch, u: &Tensor) -> Tensor {
        match self.update_map(k) {
            None => self.layers[k].activation.apply_planar(u),
            Some(map) => {
                let r = u.size()[0] / 2;
                let half = Batch { x: batch.x.iter().map(|x| x.narrow(0, 0, r)).collect(), y: batch.y.narrow(0, 0, r), y_onehot: batch.y_onehot.narrow(0, 0, r) };
                to_planar(&map.apply(&half, &from_planar(u)))
            }
        }
    }

    /// J_k(u)·v: the update-map Jacobian applied to v (diag σ′ for elementwise maps).
    pub fn jacobian_apply(&self, k: usize, batch: &Batch, u: &Tensor, v: &Tensor) -> Tensor {
        match self.update_map(k) {
            Some(map) => map.jacobian_apply(batch, u, v),
            None => self.layers[k].activation.derivative(u) * v,
        }
    }

    /// vᵀJ_k(u): the cotangent through the update map (= J v for symmetric J).
    pub fn update_vjp(&self, k: usize, batch: &Batch, u: &Tensor, v: &Tensor) -> Tensor {
        match self.update_map(k) {
            Some(map) => map.vjp(batch, u, v),
            None => self.layers[k].activation.derivative(u) * v,
        }
    }

    /// One iteration of the schedule at strength β. `autograd_drives` selects the autograd path (real β).
    pub fn step_with(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], beta: f64, autograd_drives: bool) -> State {
        self.step_nudged(p, batch, s, &Beta::Real(beta), autograd_drives)
    }

    pub fn step_nudged(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], beta: &Beta, autograd_drives: bool) -> State {
        self.step_cached(p, batch, s, beta, autograd_drives, None)
    }

    /// One iteration, with the constant parts of the drives taken from `cache` when given.
    pub fn step_cached(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], beta: &Beta, autograd_drives: bool, cache: Option<&[Option<Tensor>]>) -> State {
        let mut cur: State = s.iter().map(|t| t.shallow_clone()).collect();
        for group in &self.schedule.groups {
            let us: Vec<(Tensor, bool)> = if autograd_drives {
                let all = self.drives_autograd(p, batch, &cur, beta.real());
                group.iter().map(|&k| (all[k].shallow_clone(), false)).collect()
            } else {
                group.iter().map(|&k| self.drive_owned(p, batch, &cur, k, beta, cache)).collect()
            };
            for (&k, (u, owned)) in group.iter().zip(us) {
                cur[k] = match self.update_map(k) {
                    _ if beta.is_planar() => self.activate_planar(k, batch, &u),
                    None if owned => self.layers[k].activation.apply_owned(u),
                    _ => self.activate(k, batch, &u),
                };
            }
        }
        cur
    }

    pub fn step(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], beta: f64) -> State {
        self.step_with(p, batch, s, beta, false)
    }

    /// f = ∂Φ̄/∂θ at state s (batch mean), from the local forms, in canonical parameter order.
    pub fn param_derivative(&self, p: &[Tensor], batch: &Batch, s: &[Tensor]) -> Vec<Tensor> {
        let mut acc: Vec<Option<Tensor>> = (0..self.params.len()).map(|_| None).collect();
        for t in &self.terms {
            let g = t.param_grad(p, &self.slot_states(t.as_ref(), batch, s));
            for (&pi, gi) in t.params().iter().zip(g) {
                accumulate(&mut acc[pi], gi);
            }
        }
        let b = batch.size() as f64;
        // In place: a term's param_grad is a fresh tensor (a product or a reduction); a non-contiguous one (an
        // autograd gradient may be an expanded view) or an autograd leaf is divided out of place.
        let scale = |mut a: Tensor| if (a.requires_grad() && a.is_leaf()) || !a.is_contiguous() { a / b } else { a.g_div_scalar_(b) };
        acc.into_iter().zip(p).map(|(a, pt)| a.map(scale).unwrap_or_else(|| pt.zeros_like())).collect()
    }

    /// Σ_r w_r ∂Φ_r/∂θ over the R rows of a stacked batch — the per-example parameter derivatives of several
    /// states (the phases of an estimator, stacked along the batch axis) combined with per-row weights `w`
    /// (shape (R,), real or complex) in ONE pass instead of one `param_derivative` per state. Each term's
    /// gradient is linear in its [`Term::linear_slot`], so the weights scale that slot's rows.
    ///
    /// * `copies` > 1 says the batch is that many identical copies of a B-row batch (R = copies·B). A term whose
    ///   other slots are all clamped inputs then sums its weighted slot over the copies first and runs on B rows
    ///   (e.g. the input coupling of a P-MLP: one B-row product for any number of phases).
    /// * `real_only` returns Re Σ_r w_r ∂Φ_r/∂θ. When a term's other slots are real this takes the real part of
    ///   the weighted slot before the product (exact, and a real product instead of a complex one).
    ///
    /// With w_r = c_i/B on the rows of state i this is Σ_i c_i f(s_i); `param_derivative` is the case of one
    /// state with c = 1. Tested against that path (tests/holomorphic.rs).
    pub fn param_derivative_weighted(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], w: &Tensor, copies: i64, real_only: bool) -> Vec<Tensor> {
        let rows = batch.size();
        assert!(copies >= 1 && rows % copies == 0, "the stacked batch must be `copies` whole copies");
        let b = rows / copies;
        let firsts: Vec<Tensor> = batch.x.iter().map(|x| x.narrow(0, 0, b)).collect();
        let mut acc: Vec<Option<Tensor>> = (0..self.params.len()).map(|_| None).collect();
        for t in &self.terms {
            let t = t.as_ref();
            let slots = self.slot_states(t, batch, s);
            if let Some(g) = t.param_grad_weighted(p, &slots, w) {
                for (&pi, gi) in t.params().iter().zip(g) {
                    accumulate(&mut acc[pi], gi);
                }
                continue;
            }
            let j = t.linear_slot();
            let lin = slots[j];
            let mut shape = vec![rows];
            shape.extend(std::iter::repeat_n(1, lin.dim() - 1));
            let mut weighted = lin * w.view(shape.as_slice());
            let others_real = slots.iter().enumerate().all(|(i, x)| i == j || !crate::tensor_util::is_complex(x.kind()));
            if real_only && others_real && crate::tensor_util::is_complex(weighted.kind()) {
                weighted = weighted.real().contiguous();
            }
            let shared = copies > 1 && t.slots().iter().enumerate().all(|(i, n)| i == j || matches!(n, Node::Input(_)));
            let g = if shared {
                let mut sh = vec![copies, b];
                sh.extend_from_slice(&weighted.size()[1..]);
                let summed = weighted.view(sh.as_slice()).sum_dim_intlist(Some(&[0i64][..]), false, None);
                let args: Vec<&Tensor> = t
                    .slots()
                    .iter()
                    .enumerate()
                    .map(|(i, n)| match *n {
                        _ if i == j => &summed,
                        Node::Input(k) => &firsts[k],
                        Node::Layer(_) => unreachable!("shared only when the other slots are inputs"),
                    })
                    .collect();
                t.param_grad(p, &args)
            } else {
                let mut args = slots.clone();
                args[j] = &weighted;
                t.param_grad(p, &args)
            };
            for (&pi, gi) in t.params().iter().zip(g) {
                accumulate(&mut acc[pi], gi);
            }
        }
        acc.into_iter()
            .zip(p)
            .map(|(a, pt)| match a {
                Some(a) if real_only && crate::tensor_util::is_complex(a.kind()) => a.real().contiguous(),
                Some(a) => a,
                None => pt.zeros_like(),
            })
            .collect()
    }

    /// f by autograd of Φ̄ (independent path for the `local` identity). On complex states the parameter
    /// leaves are complex copies of θ and libtorch's conjugate (Wirtinger) gradient is conjugated back
    /// (estimators §3.8) — in `tensor_util::holomorphic_grads`, the one place this is handled.
    pub fn param_derivative_autograd(&self, p: &[Tensor], batch: &Batch, s: &[Tensor]) -> Vec<Tensor> {
        let kind = s[0].kind();
        let leaves: Vec<Tensor> = p.iter().map(|t| t.detach().to_kind(kind).set_requires_grad(true)).collect();
        let states: Vec<Tensor> = s.iter().map(|t| t.detach()).collect();
        let phi = self.primitive(&leaves, batch, &states).mean(None::<Kind>);
        let refs: Vec<&Tensor> = leaves.iter().collect();
        if crate::tensor_util::is_complex(kind) {
            crate::tensor_util::holomorphic_grads(&phi, &refs)
        } else {
            crate::tensor_util::grads_or_zeros(&phi, &refs)
        }
    }

    /// The VJP of one iteration s ↦ step(s; β) with cotangent λ on its output: returns
    /// (λᵀ ∂step/∂s, λᵀ ∂step/∂θ), hand-rolled from the terms' Hessian-vector products and local VJPs
    /// (estimators §1.7), for any schedule of groups (Jacobi inside, Gauss–Seidel between).
    pub fn step_vjp(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], lambda: &[Tensor], beta: f64) -> (State, Vec<Tensor>) {
        self.step_vjp_groups(p, batch, s, lambda, beta, &self.schedule.groups)
    }

    /// The VJP of one `sync` iteration, whatever the model's schedule (implicit differentiation linearises
    /// the sync map at the fixed point, estimators §4.4).
    pub fn step_vjp_sync(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], lambda: &[Tensor]) -> (State, Vec<Tensor>) {
        let all: Vec<usize> = (0..self.layers.len()).collect();
        self.step_vjp_groups(p, batch, s, lambda, 0.0, &[all])
    }

    fn step_vjp_groups(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], lambda: &[Tensor], beta: f64, groups: &[Vec<usize>]) -> (State, Vec<Tensor>) {
        let (lam, g, _) = self.step_vjp_groups_recorded(p, batch, s, lambda, beta, groups, false);
        (lam, g)
    }

    /// [`Model::step_vjp`] and, as [`VjpPieces`], what its parameter part read: with them
    /// [`Model::param_vjp_from`] gives the same parameter VJP (bitwise) without the drives and HVPs again — the GDU
    /// check's second reverse sweep over the steps its first sweep took.
    pub fn step_vjp_recorded(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], lambda: &[Tensor], beta: f64) -> (State, Vec<Tensor>, VjpPieces) {
        self.step_vjp_groups_recorded(p, batch, s, lambda, beta, &self.schedule.groups, true)
    }

    /// The parameter VJP of a step from its [`VjpPieces`]: the same sums in the same order as the step's
    /// [`Model::step_vjp_recorded`].
    pub fn param_vjp_from(&self, p: &[Tensor], batch: &Batch, pieces: &VjpPieces) -> Vec<Tensor> {
        let mut gtheta: Vec<Option<Tensor>> = (0..self.params.len()).map(|_| None).collect();
        for (st, mu) in &pieces.groups {
            self.add_param_vjp(p, batch, st, mu, &mut gtheta);
            self.add_readout_nudge_vjp(p, batch, st, mu, pieces.beta, &mut gtheta);
        }
        gtheta.into_iter().zip(p).map(|(g, t)| g.unwrap_or_else(|| t.zeros_like())).collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn step_vjp_groups_recorded(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], lambda: &[Tensor], beta: f64, groups: &[Vec<usize>], record: bool) -> (State, Vec<Tensor>, VjpPieces) {
        let mut pieces = VjpPieces { groups: vec![], beta };
        // Forward through the groups, keeping the state each group update reads.
        let mut before: Vec<State> = Vec::with_capacity(groups.len());
        let mut cur: State = s.iter().map(|t| t.shallow_clone()).collect();
        let mut drives: Vec<Vec<Tensor>> = Vec::new();
        for group in groups {
            let us: Vec<Tensor> = group.iter().map(|&k| self.drive(p, batch, &cur, k, beta)).collect();
            before.push(cur.iter().map(|t| t.shallow_clone()).collect());
            for (&k, u) in group.iter().zip(&us) {
                cur[k] = self.activate(k, batch, u);
            }
            drives.push(us);
        }
        let mut lam: Vec<Option<Tensor>> = lambda.iter().map(|t| Some(t.shallow_clone())).collect();
        let mut gtheta: Vec<Option<Tensor>> = (0..self.params.len()).map(|_| None).collect();
        for (gi, group) in groups.iter().enumerate().rev() {
            let st = &before[gi];
            // μ_k = J_k λ_k for the layers this group replaced; their incoming cotangent is consumed.
            let mut mu: Vec<Option<Tensor>> = (0..self.layers.len()).map(|_| None).collect();
            for (j, &k) in group.iter().enumerate() {
                if let Some(l) = lam[k].take() {
                    mu[k] = Some(self.update_vjp(k, batch, &drives[gi][j], &l));
                }
            }
            self.add_hvp(p, batch, st, &mu, beta, &mut lam);
            self.add_param_vjp(p, batch, st, &mu, &mut gtheta);
            self.add_readout_nudge_vjp(p, batch, st, &mu, beta, &mut gtheta);
            if record {
                pieces.groups.push((st.iter().map(|t| t.shallow_clone()).collect(), mu));
            }
        }
        let lam = lam.into_iter().zip(s).map(|(l, t)| l.unwrap_or_else(|| t.zeros_like())).collect();
        let g = gtheta.into_iter().zip(p).map(|(g, t)| g.unwrap_or_else(|| t.zeros_like())).collect();
        (lam, g, pieces)
    }

    /// lam_j += Σ (∂²Φ_β/∂s_j∂s_k) μ_k over the layers k with a cotangent μ_k.
    fn add_hvp(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], mu: &[Option<Tensor>], beta: f64, lam: &mut [Option<Tensor>]) {
        for t in &self.terms {
            let slots = t.slots();
            let mus: Vec<Option<&Tensor>> = slots.iter().map(|n| n.layer().and_then(|k| mu[k].as_ref())).collect();
            if mus.iter().all(|m| m.is_none()) {
                continue;
            }
            let st = self.slot_states(t.as_ref(), batch, s);
            for (si, n) in slots.iter().enumerate() {
                if let Node::Layer(j) = *n {
                    if let Some(h) = t.hvp(p, &st, &mus, si) {
                        accumulate(&mut lam[j], h);
                    }
                }
            }
        }
        if beta != 0.0 {
            if let Some(m) = &mu[self.output] {
                accumulate(&mut lam[self.output], self.loss_hvp(p, &s[self.output], m) * (-beta));
            }
        }
    }

    /// At β ≠ 0 the readout's nudge term −β W_roᵀ(softmax(z) − ŷ), z = W_ro s_out + b_ro, depends on θ_ro: its
    /// VJP with cotangent μ_out is −β Σ_b [(p − ŷ) μᵀ + (H_z W_ro μ) s_outᵀ] for W_ro and −β Σ_b H_z W_ro μ for b_ro.
    fn add_readout_nudge_vjp(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], mu: &[Option<Tensor>], beta: f64, g: &mut [Option<Tensor>]) {
        let (Some(r), Some(m)) = (self.readout, mu[self.output].as_ref()) else { return };
        if beta == 0.0 {
            return;
        }
        let s_out = &s[self.output];
        let z = r.logits(p, s_out);
        let dz = self.loss.hvp(&z, &r.push(p, m));
        let (gw1, _) = r.param_grad(m, &self.loss.grad(&z, &batch.y_onehot));
        let (gw2, gb) = r.param_grad(s_out, &dz);
        accumulate(&mut g[r.weight], (gw1 + gw2) * (-beta));
        accumulate(&mut g[r.bias], gb * (-beta));
    }

    fn add_param_vjp(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], mu: &[Option<Tensor>], g: &mut [Option<Tensor>]) {
        for t in &self.terms {
            let mus: Vec<Option<&Tensor>> = t.slots().iter().map(|n| n.layer().and_then(|k| mu[k].as_ref())).collect();
            if mus.iter().all(|m| m.is_none()) {
                continue;
            }
            let st = self.slot_states(t.as_ref(), batch, s);
            for (&pi, gi) in t.params().iter().zip(t.param_vjp(p, &st, &mus)) {
                if let Some(gi) = gi {
                    accumulate(&mut g[pi], gi);
                }
            }
        }
    }

    /// The same VJP by autograd of one step (estimators §4.1, "autograd form"): an independent path.
    pub fn step_vjp_autograd(&self, p: &[Tensor], batch: &Batch, s: &[Tensor], lambda: &[Tensor], beta: f64) -> (State, Vec<Tensor>) {
        let sl: Vec<Tensor> = s.iter().map(|t| t.detach().set_requires_grad(true)).collect();
        let pl: Vec<Tensor> = p.iter().map(|t| t.detach().set_requires_grad(true)).collect();
        let out = self.step_with(&pl, batch, &sl, beta, false);
        let mut c = None;
        for (o, l) in out.iter().zip(lambda) {
            accumulate(&mut c, (o * l.detach()).sum(None::<Kind>));
        }
        let mut inputs: Vec<&Tensor> = sl.iter().collect();
        inputs.extend(pl.iter());
        // Inputs that do not reach the output (e.g. the previous output state under `sync`) come back
        // undefined: they get a zero cotangent.
        let mut grads = crate::tensor_util::grads_or_zeros(&c.unwrap(), &inputs);
        let gp = grads.split_off(sl.len());
        (grads, gp)
    }

    /// ∂L/∂s at state s: (∇ℓ_b)/B on the loss-bearing layer, 0 elsewhere (through the readout: W_roᵀ(p − ŷ)/B;
    /// under `reference_casts` the loss gradient and the 1/B factor are float32 arithmetic, as the references'
    /// float32 BPTT loss).
    pub fn loss_state_grad(&self, p: &[Tensor], batch: &Batch, s: &[Tensor]) -> State {
        let inv_b = 1.0 / batch.size() as f64;
        s.iter()
            .enumerate()
            .map(|(k, t)| {
                if k != self.output {
                    return t.zeros_like();
                }
                let g = self.scaled_input_grad(&self.loss_input(p, t), &batch.y_onehot, |x| x * inv_b);
                match &self.readout {
                    Some(r) => r.pullback(p, &g, t),
                    None => g,
                }
            })
            .collect()
    }

    /// Applies the run options that change what the model computes (`reference_casts`, `bptt_loss_state`).
    pub fn apply_run_options(&mut self, cfg: &crate::config::RunConfig) {
        self.reference_casts = cfg.reference_casts_on();
        self.bptt_loss_previous = cfg.bptt_loss_state.as_deref() == Some("previous");
    }
}
