//! Image datasets for the conv presets (`conv-hopfield.md` §7 data, §6.4 batches).
//!
//! [`load`] reads a named dataset preset into an [`ImageDataset`]: uint8 images N×C×H×W, integer labels, the
//! number of classes, and the normalisation of the preset. [`ImageDataset::batches`] yields `(x, y)` batches:
//! x = (v/255 − mean_c)/std_c (ToTensor then Normalize) as a float tensor (B, C, H, W), y = int64 labels (B,).
//! The training order is a seeded permutation (pass a different seed per epoch, e.g. [`super::epoch_seed`]);
//! the test order is the file order; the last partial batch is kept.
//!
//! | preset | files | C×H×W | mean | std | note |
//! |---|---|---|---|---|---|
//! | `cifar10` | CIFAR-10 binary | 3×32×32 | (0.4914, 0.4822, 0.4465) | 3 × (0.2023, 0.1994, 0.2010) | std ×3 quirk (§12 #13) |
//! | `cifar100` | CIFAR-100 binary, fine labels | 3×32×32 | (0.5071, 0.4867, 0.4408) | (0.2675, 0.2565, 0.2761) | |
//! | `cifar100-coarse` | same, coarse labels (20) | 3×32×32 | as `cifar100` | as `cifar100` | |
//! | `fashion-mnist` | IDX | 1×28×28, zero-padded 2 → 1×32×32 | 0.2860 | 0.3530 | pad at load, both splits |
//! | `mnist` | IDX | 1×28×28 → 1×32×32 | 0.1307 | 0.3081 | not in the spec; the usual MNIST constants |
//! | `digits` | IDX (shipped in `fixtures/data/digits`) | 1×8×8 | 0.3054346695 | 0.3753421715 | the training split's own statistics |
//!
//! [`ImageOptions`] overrides the padding (e.g. `pad = Some(0)` keeps 28×28), the normalisation (`None`, explicit,
//! or computed from the loaded split) and the CIFAR-100 label.
use super::augment::{Augment, Image};
use super::{batch_ranges, cifar, idx, Rng, Split};
use crate::{Error, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Per-channel normalisation applied after ToTensor (v/255).
#[derive(Clone, Debug, PartialEq)]
pub enum Normalization {
    /// x = v/255 only.
    None,
    /// x = (v/255 − mean_c)/std_c.
    MeanStd { mean: Vec<f64>, std: Vec<f64> },
    /// Mean and population std of v/255 per channel, computed from the loaded split's own images.
    FromData,
}

/// Overrides of a preset's defaults (all `None`/false: the preset as the spec says).
#[derive(Clone, Debug, Default)]
pub struct ImageOptions {
    /// Zero padding applied at load time on every side (Fashion-MNIST default 2; 0 elsewhere).
    pub pad: Option<usize>,
    pub normalization: Option<Normalization>,
    /// CIFAR-100: use the coarse labels (20 classes). Same as the `cifar100-coarse` preset.
    pub coarse: bool,
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Cifar(cifar::Variant),
    Idx { classes: usize },
}

struct Preset {
    name: &'static str,
    format: Format,
    pad: usize,
    mean: &'static [f64],
    std: &'static [f64],
}

const CIFAR10_STD: [f64; 3] = [3.0 * 0.2023, 3.0 * 0.1994, 3.0 * 0.2010];
const PRESETS: &[Preset] = &[
    Preset { name: "cifar10", format: Format::Cifar(cifar::Variant::Cifar10), pad: 0, mean: &[0.4914, 0.4822, 0.4465], std: &CIFAR10_STD },
    Preset {
        name: "cifar100",
        format: Format::Cifar(cifar::Variant::Cifar100 { coarse: false }),
        pad: 0,
        mean: &[0.5071, 0.4867, 0.4408],
        std: &[0.2675, 0.2565, 0.2761],
    },
    Preset {
        name: "cifar100-coarse",
        format: Format::Cifar(cifar::Variant::Cifar100 { coarse: true }),
        pad: 0,
        mean: &[0.5071, 0.4867, 0.4408],
        std: &[0.2675, 0.2565, 0.2761],
    },
    Preset { name: "fashion-mnist", format: Format::Idx { classes: 10 }, pad: 2, mean: &[0.2860], std: &[0.3530] },
    Preset { name: "mnist", format: Format::Idx { classes: 10 }, pad: 2, mean: &[0.1307], std: &[0.3081] },
    Preset { name: "digits", format: Format::Idx { classes: 10 }, pad: 0, mean: &[0.3054346695], std: &[0.3753421715] },
];

/// The names [`load`] accepts.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// The (C, H, W) a preset yields with its default padding.
pub fn preset_shape(name: &str) -> Result<[usize; 3]> {
    let p = find_preset(name)?;
    Ok(match p.format {
        Format::Cifar(_) => [3, 32, 32],
        Format::Idx { .. } if name == "digits" => [1, 8, 8],
        Format::Idx { .. } => [1, 28 + 2 * p.pad, 28 + 2 * p.pad],
    })
}

fn find_preset(name: &str) -> Result<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| Error::UnknownDataset(name.into(), preset_names().join(", ")))
}

/// Loads a dataset preset with its defaults from `root` (the folder holding the files, or the official archive's
/// parent folder).
pub fn load(name: &str, root: &Path, split: Split) -> Result<ImageDataset> {
    load_with(name, root, split, &ImageOptions::default())
}

/// [`load`] with overrides.
pub fn load_with(name: &str, root: &Path, split: Split, opts: &ImageOptions) -> Result<ImageDataset> {
    let p = find_preset(name)?;
    let (images, labels, c, h, w, classes) = match p.format {
        Format::Cifar(mut v) => {
            if opts.coarse {
                v = match v {
                    cifar::Variant::Cifar100 { .. } => cifar::Variant::Cifar100 { coarse: true },
                    cifar::Variant::Cifar10 => return Err(Error::Config("coarse labels exist only for CIFAR-100".into())),
                };
            }
            let (im, lb) = cifar::load(root, split, v)?;
            (im, lb, 3, 32, 32, v.classes())
        }
        Format::Idx { classes } => {
            let (im, lb, h, w) = idx::load(root, split, classes)?;
            (im, lb, 1, h, w, classes)
        }
    };
    let mut ds = ImageDataset::new(name, split, images, labels, [c, h, w], classes)?;
    ds.zero_pad(opts.pad.unwrap_or(p.pad));
    let norm = opts.normalization.clone().unwrap_or(Normalization::MeanStd { mean: p.mean.to_vec(), std: p.std.to_vec() });
    ds.set_normalization(norm)?;
    Ok(ds)
}

/// "images of shape C×H×W do not fit preset expecting C0×H0×H0", for models whose input is C0×H0×H0.
pub fn check_fits(shape: [usize; 3], c0: usize, h0: usize) -> Result<()> {
    let [c, h, w] = shape;
    if c == c0 && h == h0 && w == h0 {
        Ok(())
    } else {
        Err(Error::Shape(format!("images of shape {c}×{h}×{w} do not fit preset expecting {c0}×{h0}×{h0}")))
    }
}

/// A labelled image dataset held in memory as uint8.
#[derive(Clone, Debug)]
pub struct ImageDataset {
    pub name: String,
    pub split: Split,
    /// N×C×H×W, row-major.
    pub images: Vec<u8>,
    pub labels: Vec<i64>,
    /// (C, H, W).
    pub shape: [usize; 3],
    pub classes: usize,
    /// Resolved normalisation: x = (v/255 − mean_c)/std_c (mean 0, std 1 for none).
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl ImageDataset {
    /// Checks sizes and labels; normalisation starts as none.
    pub fn new(name: &str, split: Split, images: Vec<u8>, labels: Vec<i64>, shape: [usize; 3], classes: usize) -> Result<Self> {
        let per: usize = shape.iter().product();
        if per == 0 || !images.len().is_multiple_of(per) || images.len() / per != labels.len() {
            return Err(Error::Shape(format!(
                "{name}: {} image bytes do not make {} images of {}×{}×{} (count mismatch)",
                images.len(),
                labels.len(),
                shape[0],
                shape[1],
                shape[2]
            )));
        }
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l < 0 || l as usize >= classes) {
            return Err(Error::Shape(format!("{name}: label {l} at index {i} out of range 0..{classes}")));
        }
        let c = shape[0];
        Ok(ImageDataset { name: name.into(), split, images, labels, shape, classes, mean: vec![0.0; c], std: vec![1.0; c] })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    fn per_image(&self) -> usize {
        self.shape.iter().product()
    }
    /// Image i as CHW bytes.
    pub fn image_bytes(&self, i: usize) -> &[u8] {
        let k = self.per_image();
        &self.images[i * k..(i + 1) * k]
    }
    pub fn image(&self, i: usize) -> Image {
        let [c, h, w] = self.shape;
        Image::new(c, h, w, self.image_bytes(i).to_vec())
    }

    /// Zero padding by p pixels on every side (in place).
    pub fn zero_pad(&mut self, p: usize) {
        if p == 0 {
            return;
        }
        let [c, h, w] = self.shape;
        let mut out = Vec::with_capacity(self.len() * c * (h + 2 * p) * (w + 2 * p));
        for i in 0..self.len() {
            out.extend(super::augment::pad(&self.image(i), p, super::augment::PadMode::Zero).data);
        }
        self.images = out;
        self.shape = [c, h + 2 * p, w + 2 * p];
    }

    /// Per-channel mean and population std of v/255 over every image of this dataset.
    pub fn channel_stats(&self) -> (Vec<f64>, Vec<f64>) {
        let [c, h, w] = self.shape;
        let hw = h * w;
        let (mut s, mut s2) = (vec![0f64; c], vec![0f64; c]);
        for img in self.images.chunks_exact(c * hw) {
            for ch in 0..c {
                for &v in &img[ch * hw..(ch + 1) * hw] {
                    let x = v as f64 / 255.0;
                    s[ch] += x;
                    s2[ch] += x * x;
                }
            }
        }
        let n = (self.len() * hw) as f64;
        let mean: Vec<f64> = s.iter().map(|v| v / n).collect();
        let std = (0..c).map(|ch| (s2[ch] / n - mean[ch] * mean[ch]).max(0.0).sqrt()).collect();
        (mean, std)
    }

    pub fn set_normalization(&mut self, n: Normalization) -> Result<()> {
        let c = self.shape[0];
        let (mean, std) = match n {
            Normalization::None => (vec![0.0; c], vec![1.0; c]),
            Normalization::MeanStd { mean, std } => (mean, std),
            Normalization::FromData => self.channel_stats(),
        };
        if mean.len() != c || std.len() != c {
            return Err(Error::Config(format!(
                "{}: normalisation has {} means and {} stds for {c} channels",
                self.name,
                mean.len(),
                std.len()
            )));
        }
        if let Some(s) = std.iter().find(|s| s.is_nan() || **s <= 0.0 || !s.is_finite()) {
            return Err(Error::Config(format!("{}: normalisation std {s} is not a positive number", self.name)));
        }
        self.mean = mean;
        self.std = std;
        Ok(())
    }

    /// See [`check_fits`].
    pub fn check_fits(&self, c0: usize, h0: usize) -> Result<()> {
        check_fits(self.shape, c0, h0)
    }

    /// Normalised floats of an image (CHW), in f64.
    pub fn normalize(&self, img: &Image, out: &mut Vec<f64>) {
        let hw = img.h * img.w;
        for (i, &v) in img.data.iter().enumerate() {
            let ch = i / hw;
            out.push((v as f64 / 255.0 - self.mean[ch]) / self.std[ch]);
        }
    }

    /// The examples `indices` (no augmentation) as (x (B, C, H, W), y (B,)).
    pub fn batch(&self, indices: &[usize], kind: Kind, device: Device) -> (Tensor, Tensor) {
        let imgs: Vec<Image> = indices.iter().map(|&i| self.image(i)).collect();
        self.assemble(&imgs, indices, kind, device)
    }

    fn assemble(&self, imgs: &[Image], indices: &[usize], kind: Kind, device: Device) -> (Tensor, Tensor) {
        let mut x = Vec::with_capacity(imgs.len() * imgs.first().map_or(0, |i| i.data.len()));
        for img in imgs {
            self.normalize(img, &mut x);
        }
        let (c, h, w) = imgs.first().map_or((self.shape[0], self.shape[1], self.shape[2]), |i| (i.c, i.h, i.w));
        let x = Tensor::from_slice(&x).reshape([imgs.len() as i64, c as i64, h as i64, w as i64]).to_kind(kind).to_device(device);
        let y: Vec<i64> = indices.iter().map(|&i| self.labels[i]).collect();
        (x, Tensor::from_slice(&y).to_device(device))
    }

    /// Batches of `batch` examples, the last partial one kept. `shuffle_seed`: Some(seed) gives a seeded random
    /// order (training; use one seed per epoch), None the file order (test). `augment` is applied to every image,
    /// drawing from a stream derived from the same seed (0 when None). x is float64 on the CPU unless changed with
    /// [`ImageBatches::kind`] / [`ImageBatches::device`].
    pub fn batches(&self, batch: usize, shuffle_seed: Option<u64>, augment: Option<&Augment>) -> ImageBatches<'_> {
        let order = match shuffle_seed {
            Some(s) => Rng::new(s).permutation(self.len()),
            None => (0..self.len()).collect(),
        };
        ImageBatches {
            ds: self,
            ranges: batch_ranges(self.len(), batch),
            order,
            next: 0,
            rng: Rng::new(shuffle_seed.unwrap_or(0) ^ 0xA6_6A_E4_7E_57_00_F1_1D),
            augment: augment.filter(|a| !a.steps.is_empty()).cloned(),
            kind: Kind::Double,
            device: Device::Cpu,
        }
    }
}

/// Iterator over `(x, y)` batches of an [`ImageDataset`].
pub struct ImageBatches<'a> {
    ds: &'a ImageDataset,
    order: Vec<usize>,
    ranges: Vec<(usize, usize)>,
    next: usize,
    rng: Rng,
    augment: Option<Augment>,
    kind: Kind,
    device: Device,
}

impl ImageBatches<'_> {
    /// The float dtype of x (default f64).
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }
    /// The example order of this pass (dataset indices).
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

impl Iterator for ImageBatches<'_> {
    type Item = (Tensor, Tensor);
    fn next(&mut self) -> Option<(Tensor, Tensor)> {
        let &(a, b) = self.ranges.get(self.next)?;
        self.next += 1;
        let idx = &self.order[a..b];
        let imgs: Vec<Image> = match &self.augment {
            Some(aug) => idx.iter().map(|&i| aug.apply(self.ds.image(i), &mut self.rng)).collect(),
            None => idx.iter().map(|&i| self.ds.image(i)).collect(),
        };
        Some(self.ds.assemble(&imgs, idx, self.kind, self.device))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.ranges.len() - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for ImageBatches<'_> {}
