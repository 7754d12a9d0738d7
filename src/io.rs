//! Safetensors interchange (conventions §12): canonical names on write, canonical names and aliases on read,
//! validation with errors that name the key. Writes go to a temporary file renamed into place.
use crate::config::RunConfig;
use crate::model::{Batch, Model};
use crate::precision::Precision;
use crate::{Error, Result};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Kind, Tensor};

/// Reads every tensor of a safetensors file (F64, F32, I64, I32, U8, BOOL) as CPU tensors.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| not_safetensors(path, &bytes, e))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let kind = match view.dtype() {
            StDtype::F64 => Kind::Double,
            StDtype::F32 => Kind::Float,
            StDtype::I64 => Kind::Int64,
            StDtype::I32 => Kind::Int,
            StDtype::U8 => Kind::Uint8,
            StDtype::BOOL => Kind::Bool,
            d => return Err(Error::file(path, format!("tensor '{name}': unsupported dtype {d:?}"))),
        };
        let t = Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| Error::file(path, format!("tensor '{name}': {}", crate::Error::from(e))))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Writes `content` to `path` atomically (a `.partial` sibling renamed into place; removed on SIGINT/SIGTERM).
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    crate::report::cleanup::register(&tmp);
    let done = std::fs::write(&tmp, content).map_err(|e| Error::file(&tmp, e)).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e)));
    crate::report::cleanup::unregister(&tmp);
    done
}

/// The error for a file that safetensors cannot read, saying what the file is when that is recognisable (empty,
/// a NumPy `.npz`/`.npy`, text) and what was expected.
pub fn not_safetensors(path: &Path, bytes: &[u8], e: impl std::fmt::Display) -> Error {
    let what = if bytes.is_empty() {
        "an empty file (0 bytes)".to_string()
    } else if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        "a zip archive (NumPy .npz?)".to_string()
    } else if bytes.starts_with(b"\x93NUMPY") {
        "a NumPy .npy array".to_string()
    } else {
        format!("not a safetensors file ({e})")
    };
    let hint = if what.starts_with("not") { "" } else { ", not a safetensors file" };
    Error::file(path, format!("{what}{hint}: expected safetensors (an 8-byte header length, a JSON header, the data; docs/interchange.md); `epcheck compare` also reads .npz"))
}

fn st_dtype(kind: Kind) -> Result<StDtype> {
    Ok(match kind {
        Kind::Double => StDtype::F64,
        Kind::Float => StDtype::F32,
        Kind::Int64 => StDtype::I64,
        Kind::Int => StDtype::I32,
        Kind::Uint8 => StDtype::U8,
        Kind::Bool => StDtype::BOOL,
        k => return Err(Error::Report(format!("cannot write dtype {k:?} to safetensors"))),
    })
}

/// Writes tensors with metadata, atomically (temporary file, then rename).
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<()> {
    let mut bufs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_device(tch::Device::Cpu).contiguous();
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let mut buf = vec![0u8; n];
        t.copy_data_u8(&mut buf, t.numel());
        bufs.push((name.clone(), st_dtype(t.kind())?, t.size().iter().map(|&d| d as usize).collect::<Vec<_>>(), buf));
    }
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b).map_err(|e| Error::Report(e.to_string()))?)))
        .collect::<Result<_>>()?;
    let bytes = with_sorted_metadata(safetensors::serialize(views, None).map_err(|e| Error::Report(e.to_string()))?, metadata)?;
    let tmp = path.with_extension("safetensors.partial");
    crate::report::cleanup::register(&tmp);
    let done = std::fs::write(&tmp, bytes).map_err(|e| Error::file(&tmp, e)).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e)));
    crate::report::cleanup::unregister(&tmp);
    done
}

/// Inserts `__metadata__` (keys sorted) at the head of a serialised safetensors header. The safetensors crate
/// writes the metadata map in `HashMap` order, which changes from process to process; sorted keys make the
/// bytes of a file a function of its tensors and metadata only.
fn with_sorted_metadata(bytes: Vec<u8>, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let bad = || Error::Report("safetensors serialisation: malformed header".into());
    let n = u64::from_le_bytes(bytes.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let header = std::str::from_utf8(bytes.get(8..8 + n).ok_or_else(bad)?).map_err(|_| bad())?.trim_end();
    let rest = header.strip_prefix('{').ok_or_else(bad)?;
    let sorted: BTreeMap<String, String> = metadata.into_iter().collect();
    let meta = serde_json::to_string(&sorted).map_err(|e| Error::Report(e.to_string()))?;
    let sep = if rest.trim_start().starts_with('}') { "" } else { "," };
    let mut h = format!("{{\"__metadata__\":{meta}{sep}{rest}").into_bytes();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + h.len() + bytes.len() - 8 - n);
    out.extend((h.len() as u64).to_le_bytes());
    out.extend(h);
    out.extend(&bytes[8 + n..]);
    Ok(out)
}

/// Looks a key up under its canonical name, then its aliases.
fn lookup<'a>(map: &'a BTreeMap<String, Tensor>, names: &[String]) -> Option<(&'a String, &'a Tensor)> {
    names.iter().find_map(|n| map.get_key_value(n))
}

fn param_aliases(name: &str, index: usize) -> Vec<String> {
    vec![format!("param.{name}"), name.to_string(), format!("param.{index}")]
}

fn check_finite(t: &Tensor, key: &str) -> Result<()> {
    if crate::tensor_util::all_finite(t) {
        Ok(())
    } else {
        Err(Error::NonFinite(key.to_string()))
    }
}

/// Infers P-MLP layer sizes from `synapses.<k>.weight` shapes; contradictions with sizes given explicitly
/// in the configuration are errors naming the tensor.
pub fn infer_sizes(cfg: &mut RunConfig, loaded: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    if cfg.graph.is_some() || cfg.energy.is_some() {
        // A graph file (or a scripted energy) fixes every shape itself.
        return Ok(());
    }
    if cfg.preset != "p-mlp" && cfg.preset != "p-mlp-holo-toy" {
        return infer_preset_sizes(cfg, loaded, path);
    }
    let mut archi = Vec::new();
    for k in 0.. {
        let name = format!("synapses.{k}.weight");
        let Some((key, w)) = lookup(loaded, &param_aliases(&name, 2 * k)) else { break };
        let sz = w.size();
        if sz.len() != 2 {
            return Err(Error::Shape(format!("{}: '{key}' has shape {sz:?}, expected a matrix (n_{}, n_{k})", path.display(), k + 1)));
        }
        if k == 0 {
            archi.push(sz[1]);
        } else if archi[k] != sz[1] {
            return Err(Error::Shape(format!(
                "{}: '{key}' has shape {sz:?}, but the previous weight gives n_{k} = {}",
                path.display(),
                archi[k]
            )));
        }
        archi.push(sz[0]);
    }
    if archi.is_empty() {
        return Err(Error::file(path, "missing key: param.synapses.0.weight"));
    }
    if cfg.archi_explicit && cfg.archi != archi {
        return Err(Error::Shape(format!(
            "{}: the parameters give archi {archi:?}, which contradicts the explicit archi {:?} (first tensor: synapses.0.weight)",
            path.display(),
            cfg.archi
        )));
    }
    cfg.archi = archi;
    Ok(())
}

/// Sizes that an input file fixes (conv presets: `height` from input.x (B, C, H, H); attention presets: `seq_len`
/// from input.x (B, L, d), (B, 2L, d) for SNLI), set unless given explicitly.
pub fn sizes_from_input(cfg: &mut RunConfig, path: &Path) -> Result<()> {
    let t = read_tensors(path)?;
    let Some(x) = lookup(&t, &["input.x".to_string(), "x".to_string()]).map(|(_, x)| x.size()) else { return Ok(()) };
    let base = cfg.base_preset().to_string();
    let explicit = |k: &str| cfg.explicit.iter().any(|e| e == k);
    if cfg.graph.is_none() && matches!(base.as_str(), "hopfield-resnet13" | "vgg5-dchn" | "vgg5-dchn-rain") && x.len() == 4 && !explicit("height") {
        cfg.height = Some(x[2]);
    }
    if cfg.graph.is_none() && matches!(base.as_str(), "imdb-hopfield" | "snli-hopfield") && x.len() == 3 && !explicit("seq_len") {
        cfg.seq_len = Some(if base == "snli-hopfield" { x[1] / 2 } else { x[1] });
    }
    Ok(())
}

/// The parameter shapes of the preset model of `cfg` (no tensor is allocated).
fn preset_shapes(cfg: &RunConfig) -> Option<Vec<(String, Vec<i64>)>> {
    crate::model::presets::build(cfg).ok().map(|m| m.params.iter().map(|p| (p.name.clone(), p.shape.clone())).collect())
}

/// Infers the size options of the conv and attention presets (`widths`, `classes`, `in_channels`, `embed_dim`,
/// then `height` / `seq_len`) from parameter shapes: the model is built once with distinct probe values, every
/// dimension equal to a probe names the option it comes from, and the sizes that enter only through products
/// (the input height of a conv net's dense head, an attention net's sequence length) are found by search. A size
/// the parameters do not determine is asked for by name; an explicit contradicting size is an error.
fn infer_preset_sizes(cfg: &mut RunConfig, loaded: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let base = cfg.base_preset().to_string();
    let conv = matches!(base.as_str(), "hopfield-resnet13" | "vgg5-dchn" | "vgg5-dchn-rain");
    let attn = matches!(base.as_str(), "imdb-hopfield" | "snli-hopfield");
    if !conv && !attn {
        return Ok(());
    }
    let explicit = |k: &str| cfg.explicit.iter().any(|e| e == k);
    let shape_of = |i: usize, name: &str| lookup(loaded, &param_aliases(name, i)).map(|(_, t)| t.size());
    // Probe values: distinct primes no real layer is likely to have.
    const PRIMES: [i64; 8] = [1009, 1013, 1019, 1021, 1031, 1033, 1039, 1049];
    let n_widths = if conv { 4 } else { loaded.keys().filter(|k| k.ends_with(".bias") && k.contains("synapses.")).count().max(1) };
    let mut probe = cfg.clone();
    let mut keys: Vec<(String, Option<usize>, i64)> = vec![];
    probe.widths = Some((0..n_widths).map(|i| PRIMES[i % 4]).collect());
    for i in 0..n_widths.min(4) {
        keys.push(("widths".into(), Some(i), PRIMES[i]));
    }
    if conv {
        probe.in_channels = Some(PRIMES[4]);
        probe.classes = Some(PRIMES[5]);
        keys.push(("in_channels".into(), None, PRIMES[4]));
        keys.push(("classes".into(), None, PRIMES[5]));
    } else {
        probe.classes = None;
        probe.embed_dim = Some(PRIMES[6]);
        probe.seq_len = Some(cfg.seq_len.unwrap_or(7));
        keys.push(("embed_dim".into(), None, PRIMES[6]));
    }
    let Some(shapes) = preset_shapes(&probe) else { return Ok(()) };
    let mut widths = cfg.widths.clone().unwrap_or_default();
    widths.resize(n_widths, 0);
    let mut found: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for (i, (name, shape)) in shapes.iter().enumerate() {
        let Some(got) = shape_of(i, name) else { continue };
        if got.len() != shape.len() {
            continue;
        }
        for (j, d) in shape.iter().enumerate() {
            if let Some((k, idx, _)) = keys.iter().find(|(_, _, p)| p == d) {
                let label = match idx {
                    Some(x) => format!("{k}[{x}]"),
                    None => k.clone(),
                };
                match found.get(&label) {
                    Some((v, first)) if *v != got[j] => {
                        return Err(Error::Shape(format!("{}: '{name}' has shape {got:?}, which gives {label} = {}, but '{first}' gives {v}", path.display(), got[j])));
                    }
                    Some(_) => {}
                    None => {
                        found.insert(label, (got[j], name.clone()));
                    }
                }
            }
        }
    }
    let mut inferred = cfg.clone();
    for (label, (v, _)) in &found {
        match label.split_once('[') {
            Some((_, idx)) => widths[idx.trim_end_matches(']').parse::<usize>().unwrap_or(0)] = *v,
            None if label == "in_channels" => inferred.in_channels = Some(*v),
            None if label == "classes" => inferred.classes = Some(*v),
            None if label == "embed_dim" => inferred.embed_dim = Some(*v),
            None => {}
        }
    }
    if attn && n_widths > 4 {
        // Widths beyond the probed four: read them straight from the bias shapes, in order.
        let mut b: Vec<(usize, i64)> = loaded.iter().filter_map(|(k, t)| k.strip_prefix("param.").unwrap_or(k).strip_prefix("synapses.").and_then(|r| r.strip_suffix(".bias")).and_then(|i| i.parse::<usize>().ok()).map(|i| (i, t.size()[0]))).collect();
        b.sort();
        widths = b.into_iter().map(|x| x.1).collect();
    }
    if found.keys().any(|k| k.starts_with("widths")) {
        inferred.widths = Some(widths);
    }
    // Contradictions with explicit sizes.
    for (k, a, b) in [("widths", format!("{:?}", cfg.widths), format!("{:?}", inferred.widths)), ("in_channels", format!("{:?}", cfg.in_channels), format!("{:?}", inferred.in_channels)), ("classes", format!("{:?}", cfg.classes), format!("{:?}", inferred.classes)), ("embed_dim", format!("{:?}", cfg.embed_dim), format!("{:?}", inferred.embed_dim))] {
        if explicit(k) && a != b {
            return Err(Error::Shape(format!("{}: the parameters give {k} = {b}, which contradicts the explicit {k} = {a}", path.display())));
        }
    }
    let matches = |c: &RunConfig| -> bool {
        preset_shapes(c).is_some_and(|sh| sh.iter().enumerate().all(|(i, (n, s))| shape_of(i, n).is_none_or(|g| &g == s)))
    };
    if !matches(&inferred) {
        // The size that enters only through products: the conv input height, the attention sequence length.
        let (key, cands): (&str, Vec<i64>) = if conv { ("height", (1..=1024).collect()) } else { ("seq_len", (1..=4096).collect()) };
        if explicit(key) {
            return Ok(()); // the explicit value stands; load_params names the mismatching tensor
        }
        let set = |c: &mut RunConfig, v: i64| {
            if conv {
                c.height = Some(v);
            } else {
                c.seq_len = Some(v);
            }
        };
        let hits: Vec<i64> = cands
            .into_iter()
            .filter(|&v| {
                let mut c = inferred.clone();
                set(&mut c, v);
                matches(&c)
            })
            .collect();
        let current = if conv { cfg.height } else { cfg.seq_len };
        let v = match hits.as_slice() {
            [] => return Ok(()), // load_params reports the first mismatching tensor
            [v] => *v,
            _ if current.is_some_and(|c| hits.contains(&c)) => current.unwrap(),
            _ => {
                return Err(Error::Config(format!(
                    "{}: the parameters fit {key} = {} … {} ({} values): set {key} (--set {key}=…, or give --input)",
                    path.display(),
                    hits[0],
                    hits[hits.len() - 1],
                    hits.len()
                )))
            }
        };
        set(&mut inferred, v);
    }
    *cfg = inferred;
    Ok(())
}

/// Loads parameters under canonical names (aliases: bare name, `param.<i>`); every parameter must be present
/// with its exact shape, extra parameters are errors, NaN/Inf are errors.
pub fn load_params(model: &Model, path: &Path, prec: Precision) -> Result<Vec<Tensor>> {
    let loaded = read_tensors(path)?;
    let mut used = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (i, spec) in model.params.iter().enumerate() {
        let names = param_aliases(&spec.name, i);
        let (key, t) = lookup(&loaded, &names).ok_or_else(|| {
            // Layer sizes inferred from the file: a group the model has only because the file names one of its
            // tensors may be the file's extra tensor rather than a missing one.
            let prefix = format!("{}.", spec.group);
            let sibling = loaded.keys().find(|k| k.strip_prefix("param.").unwrap_or(k).starts_with(&prefix));
            match sibling {
                Some(x) => Error::file(path, format!("missing key: param.{} (or '{x}' is an unexpected tensor for preset {})", spec.name, model.preset)),
                None => Error::file(path, format!("missing key: param.{}", spec.name)),
            }
        })?;
        if t.size() != spec.shape {
            return Err(Error::file(path, format!("shape mismatch: '{key}' has shape {:?}, expected {:?}", t.size(), spec.shape)));
        }
        if !t.is_floating_point() {
            return Err(Error::file(path, format!("'{key}' is not a floating tensor")));
        }
        check_finite(t, key).map_err(|e| Error::file(path, e))?;
        used.insert(key.clone());
        out.push(t.to_kind(prec.dtype.kind()).to_device(prec.device));
    }
    let param_keys: Vec<&String> = loaded.keys().filter(|k| k.starts_with("param.") || k.starts_with("synapses.")).collect();
    if let Some(extra) = param_keys.into_iter().find(|k| !used.contains(*k)) {
        return Err(Error::file(path, format!("unexpected tensor '{extra}' for preset {}: the model's parameters are {}", model.preset, model.param_names().join(", "))));
    }
    Ok(out)
}

/// Loads a batch: `input.x` (alias `x`), `input.y` (alias `y`), optional `input.y_onehot` that must equal
/// onehot(y).
pub fn load_batch(model: &Model, path: &Path, prec: Precision) -> Result<Batch> {
    let loaded = read_tensors(path)?;
    let (xk, x) = lookup(&loaded, &["input.x".into(), "x".into()]).ok_or_else(|| Error::file(path, "missing key: input.x"))?;
    let (yk, y) = lookup(&loaded, &["input.y".into(), "y".into()]).ok_or_else(|| Error::file(path, "missing key: input.y"))?;
    let mut want = vec![x.size().first().copied().unwrap_or(0)];
    want.extend(&model.input_shapes[0]);
    if want[0] == 0 && x.size().len() == want.len() {
        return Err(Error::file(path, format!("'{xk}' has shape {:?}: an empty batch (at least one example is needed)", x.size())));
    }
    if x.size() != want {
        return Err(Error::file(path, format!("shape mismatch: '{xk}' has shape {:?}, expected (B, {:?})", x.size(), model.input_shapes[0])));
    }
    check_finite(x, xk).map_err(|e| Error::file(path, e))?;
    if y.size() != [want[0]] {
        return Err(Error::file(path, format!("shape mismatch: '{yk}' has shape {:?}, expected ({},)", y.size(), want[0])));
    }
    let y = if y.is_floating_point() {
        check_finite(y, yk).map_err(|e| Error::file(path, e))?;
        if y.frac().abs().max().double_value(&[]) != 0.0 {
            return Err(Error::file(path, format!("'{yk}' holds non-integral float labels")));
        }
        y.to_kind(Kind::Int64)
    } else {
        y.to_kind(Kind::Int64)
    };
    let c = model.classes();
    if y.numel() > 0 && (y.min().int64_value(&[]) < 0 || y.max().int64_value(&[]) >= c) {
        return Err(Error::file(path, format!("'{yk}' has a label outside 0…{}", c - 1)));
    }
    let batch = Batch::new(x.to_kind(prec.dtype.kind()).to_device(prec.device), y.to_device(prec.device), c);
    if let Some((ok, oh)) = lookup(&loaded, &["input.y_onehot".into(), "input.target_onehot".into()]) {
        let oh = oh.to_kind(prec.dtype.kind()).to_device(prec.device);
        if oh.size() != batch.y_onehot.size() || !oh.equal(&batch.y_onehot) {
            return Err(Error::file(path, format!("'{ok}' does not equal onehot(y)")));
        }
    }
    Ok(batch)
}

/// The resolved configuration recorded in a safetensors file epcheck wrote (`epcheck.config` metadata), as a
/// TOML table; None for other files (npz, other producers).
pub fn recorded_config(path: &Path) -> Option<toml::Table> {
    let bytes = std::fs::read(path).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let json = meta.metadata().as_ref()?.get("epcheck.config")?.clone();
    let v: serde_json::Value = serde_json::from_str(&json).ok()?;
    toml::Table::try_from(v).ok()
}

/// Metadata of files epcheck writes (conventions §12.4).
pub fn metadata(model: &Model, cfg: &RunConfig) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert("epcheck.schema".into(), "1".into());
    m.insert("epcheck.preset".into(), model.preset.clone());
    m.insert("epcheck.config".into(), cfg.recorded_json());
    m.insert("epcheck.param_order".into(), serde_json::to_string(&model.param_names()).expect("names"));
    m.insert("epcheck.layer_order".into(), serde_json::to_string(&model.layer_names()).expect("names"));
    m.insert("epcheck.dtype".into(), cfg.dtype.clone());
    m
}
