//! Training-time image augmentation on uint8 CHW images (`conv-hopfield.md` §7).
//!
//! * [`Step::Flip`]: horizontal flip with probability p.
//! * [`Step::Crop`]: pad by p pixels (replicating the border, or zeros), then a uniformly random window.
//! * [`Step::ZeroPad`]: deterministic zero padding (Fashion-MNIST 28 → 32).
//! * [`Step::RandAugment`]: torchvision's `RandAugment(num_ops, magnitude, num_bins = 31)`: each round draws one
//!   of the 14 operations uniformly and applies it at the magnitude of bin `magnitude`; signed operations get a
//!   random sign with probability ½; nearest-neighbour sampling, fill 0.
//!
//! Equivalence with torchvision is **distributional**: the random stream is this crate's [`Rng`], not torch's
//! (spec §7 says bit-compatibility is not attainable). The operations themselves follow torchvision's tensor
//! kernels for uint8 images, including their arithmetic: float32 blends truncated to uint8 (Brightness, Color,
//! Contrast, Sharpness, AutoContrast), the rounded 3×3 smoothing kernel of Sharpness, the histogram LUT of
//! Equalize, `img >= threshold` for Solarize, the bit mask of Posterize, and the geometry of `F.affine` /
//! `F.rotate` (shears about the top-left corner, rotation about the centre, translation by `int(magnitude)`
//! pixels, i.e. 4 px at bin 9 for 32-pixel images where the spec quotes the un-truncated 4.35). Nearest
//! sampling rounds half to even, as `grid_sample` does.
use super::Rng;
use crate::{Error, Result};

/// A uint8 image in CHW layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<u8>,
}

impl Image {
    pub fn new(c: usize, h: usize, w: usize, data: Vec<u8>) -> Image {
        assert_eq!(data.len(), c * h * w, "image data length");
        Image { c, h, w, data }
    }
    #[inline]
    pub fn at(&self, ch: usize, y: usize, x: usize) -> u8 {
        self.data[(ch * self.h + y) * self.w + x]
    }
    fn zeros(c: usize, h: usize, w: usize) -> Image {
        Image { c, h, w, data: vec![0; c * h * w] }
    }
}

/// How a crop pads the image before taking its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    /// Replicate the border pixel (torchvision `padding_mode="edge"`).
    Edge,
    /// Fill with 0.
    Zero,
}

/// One augmentation step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Horizontal flip with probability p.
    Flip { p: f64 },
    /// Pad by `pad` pixels, then a uniformly random `size`×`size` window (None: the input's own H×W).
    Crop { size: Option<usize>, pad: usize, mode: PadMode },
    /// Zero padding by p pixels on every side (deterministic).
    ZeroPad(usize),
    /// torchvision RandAugment.
    RandAugment { num_ops: usize, magnitude: usize, num_bins: usize },
}

/// Which reference's training augmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// BrainSeek EP scripts (with RandAugment on CIFAR).
    BrainSeek,
    /// Rain DCHN scripts (no RandAugment).
    Rain,
}

/// An ordered list of steps, applied to each training image independently.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Augment {
    pub steps: Vec<Step>,
}

impl Augment {
    pub fn none() -> Augment {
        Augment { steps: vec![] }
    }

    /// The training augmentation of spec §7 for a dataset preset. The Fashion-MNIST zero pad 28 → 32 is not
    /// part of it: the `fashion-mnist` loader preset applies it at load time to both splits (same result, since
    /// it comes first). `digits` and `mnist` have no reference augmentation (an empty list).
    pub fn preset(dataset: &str, flavour: Flavour) -> Result<Augment> {
        let crop = |pad| Step::Crop { size: None, pad, mode: PadMode::Edge };
        let flip = Step::Flip { p: 0.5 };
        let ra = |n| Step::RandAugment { num_ops: n, magnitude: 9, num_bins: 31 };
        let steps = match (dataset, flavour) {
            ("cifar10", Flavour::BrainSeek) => vec![flip, ra(3), crop(4)],
            ("cifar100" | "cifar100-coarse", Flavour::BrainSeek) => vec![flip, ra(4), crop(4)],
            ("cifar10" | "cifar100" | "cifar100-coarse", Flavour::Rain) => vec![flip, crop(4)],
            ("fashion-mnist", Flavour::BrainSeek) => vec![crop(2), flip],
            ("digits" | "mnist", _) => vec![],
            _ => {
                return Err(Error::Config(format!(
                    "no {flavour:?} training augmentation for dataset '{dataset}' (known: cifar10, cifar100, cifar100-coarse, fashion-mnist [BrainSeek only], digits, mnist)"
                )))
            }
        };
        Ok(Augment { steps })
    }

    /// Applies every step in order.
    pub fn apply(&self, img: Image, rng: &mut Rng) -> Image {
        let mut img = img;
        for s in &self.steps {
            img = match *s {
                Step::Flip { p } => {
                    if rng.bernoulli(p) {
                        hflip(&img)
                    } else {
                        img
                    }
                }
                Step::Crop { size, pad: p, mode } => {
                    let (sh, sw) = size.map(|s| (s, s)).unwrap_or((img.h, img.w));
                    let padded = pad(&img, p, mode);
                    if padded.h < sh || padded.w < sw {
                        // A window larger than the padded image: nothing sensible to crop; keep the image.
                        img
                    } else {
                        let top = rng.below(padded.h - sh + 1);
                        let left = rng.below(padded.w - sw + 1);
                        crop(&padded, top, left, sh, sw)
                    }
                }
                Step::ZeroPad(p) => pad(&img, p, PadMode::Zero),
                Step::RandAugment { num_ops, magnitude, num_bins } => rand_augment(&img, num_ops, magnitude, num_bins, rng),
            };
        }
        img
    }
}

/// Mirror along the width axis.
pub fn hflip(img: &Image) -> Image {
    let mut out = Image::zeros(img.c, img.h, img.w);
    for ch in 0..img.c {
        for y in 0..img.h {
            let row = (ch * img.h + y) * img.w;
            for x in 0..img.w {
                out.data[row + x] = img.data[row + img.w - 1 - x];
            }
        }
    }
    out
}

/// Pads by p pixels on every side.
pub fn pad(img: &Image, p: usize, mode: PadMode) -> Image {
    if p == 0 {
        return img.clone();
    }
    let (h, w) = (img.h + 2 * p, img.w + 2 * p);
    let mut out = Image::zeros(img.c, h, w);
    for ch in 0..img.c {
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = (y as isize - p as isize, x as isize - p as isize);
                let inside = sy >= 0 && sx >= 0 && (sy as usize) < img.h && (sx as usize) < img.w;
                let v = match mode {
                    PadMode::Zero if !inside => 0,
                    _ => {
                        let cy = sy.clamp(0, img.h as isize - 1) as usize;
                        let cx = sx.clamp(0, img.w as isize - 1) as usize;
                        img.at(ch, cy, cx)
                    }
                };
                out.data[(ch * h + y) * w + x] = v;
            }
        }
    }
    out
}

/// The window of size sh×sw whose top-left corner is (top, left).
pub fn crop(img: &Image, top: usize, left: usize, sh: usize, sw: usize) -> Image {
    assert!(top + sh <= img.h && left + sw <= img.w, "crop window outside the image");
    let mut out = Image::zeros(img.c, sh, sw);
    for ch in 0..img.c {
        for y in 0..sh {
            for x in 0..sw {
                out.data[(ch * sh + y) * sw + x] = img.at(ch, top + y, left + x);
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------- RandAugment

/// The 14 operations of torchvision's RandAugment, in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
}

impl Op {
    pub const ALL: [Op; 14] = [
        Op::Identity,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateX,
        Op::TranslateY,
        Op::Rotate,
        Op::Brightness,
        Op::Color,
        Op::Contrast,
        Op::Sharpness,
        Op::Posterize,
        Op::Solarize,
        Op::AutoContrast,
        Op::Equalize,
    ];

    /// Whether torchvision gives this op a random sign.
    pub fn signed(self) -> bool {
        matches!(
            self,
            Op::ShearX | Op::ShearY | Op::TranslateX | Op::TranslateY | Op::Rotate | Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness
        )
    }

    /// The unsigned magnitude at bin `bin` of `num_bins` for an h×w image (torchvision `_augmentation_space`,
    /// including its float32 `linspace`): shear 0.3·t, translation (150/331)·size·t, rotation 30°·t,
    /// enhancement 0.9·t, posterize bits 8 − round(4t), solarize threshold 255·(1 − t), t = bin/(num_bins − 1).
    /// Identity, AutoContrast and Equalize ignore it (0).
    pub fn magnitude(self, bin: usize, num_bins: usize, h: usize, w: usize) -> f64 {
        let lin = |end: f64| linspace_f32(0.0, end as f32, num_bins, bin) as f64;
        match self {
            Op::ShearX | Op::ShearY => lin(0.3),
            Op::TranslateX => lin(150.0 / 331.0 * w as f64),
            Op::TranslateY => lin(150.0 / 331.0 * h as f64),
            Op::Rotate => lin(30.0),
            Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness => lin(0.9),
            Op::Posterize => {
                let t = if num_bins > 1 { bin as f32 / ((num_bins - 1) as f32 / 4.0) } else { 0.0 };
                8.0 - t.round_ties_even() as f64
            }
            Op::Solarize => linspace_f32(255.0, 0.0, num_bins, bin) as f64,
            Op::Identity | Op::AutoContrast | Op::Equalize => 0.0,
        }
    }
}

/// Entry i of `torch.linspace(start, end, n)` in float32 (the CPU kernel fills the first half forward from
/// `start` and the second half backward from `end`).
fn linspace_f32(start: f32, end: f32, n: usize, i: usize) -> f32 {
    if n <= 1 {
        return start;
    }
    let step = (end - start) / (n - 1) as f32;
    if i < n / 2 {
        start + step * i as f32
    } else {
        end - step * (n - 1 - i) as f32
    }
}

/// One RandAugment call: `num_ops` rounds, each a uniformly drawn op at bin `magnitude`, random sign for
/// signed ops.
pub fn rand_augment(img: &Image, num_ops: usize, magnitude: usize, num_bins: usize, rng: &mut Rng) -> Image {
    let mut img = img.clone();
    for _ in 0..num_ops {
        let op = Op::ALL[rng.below(Op::ALL.len())];
        let mut m = op.magnitude(magnitude, num_bins, img.h, img.w);
        if op.signed() && rng.bernoulli(0.5) {
            m = -m;
        }
        img = apply_op(&img, op, m);
    }
    img
}

/// Applies one op at a signed magnitude (as returned by [`Op::magnitude`], possibly negated).
pub fn apply_op(img: &Image, op: Op, m: f64) -> Image {
    match op {
        Op::Identity => img.clone(),
        // F.affine(shear=[degrees(atan(m)), 0], center=[0, 0]): input x = x + m·y about the top-left corner.
        Op::ShearX => warp(img, |x, y| (x + m * y, y), Origin::Corner),
        Op::ShearY => warp(img, |x, y| (x, y + m * x), Origin::Corner),
        // translate=[int(m), 0]: Python int() truncates toward zero.
        Op::TranslateX => {
            let t = m.trunc();
            warp(img, |x, y| (x - t, y), Origin::Corner)
        }
        Op::TranslateY => {
            let t = m.trunc();
            warp(img, |x, y| (x, y - t), Origin::Corner)
        }
        // F.rotate(angle): counter-clockwise on screen for angle > 0, about the image centre.
        Op::Rotate => {
            let (s, c) = m.to_radians().sin_cos();
            warp(img, |x, y| (c * x - s * y, s * x + c * y), Origin::Centre)
        }
        Op::Brightness => blend_with(img, |_, _| 0.0, 1.0 + m),
        Op::Color => {
            if img.c != 3 {
                return img.clone();
            }
            let g = grayscale(img);
            let hw = img.h * img.w;
            blend_with(img, |_, i| g[i % hw] as f32, 1.0 + m)
        }
        Op::Contrast => {
            let mean = if img.c == 3 {
                let g = grayscale(img);
                g.iter().map(|&v| v as f64).sum::<f64>() / g.len() as f64
            } else {
                img.data.iter().map(|&v| v as f64).sum::<f64>() / img.data.len() as f64
            } as f32;
            blend_with(img, |_, _| mean, 1.0 + m)
        }
        Op::Sharpness => {
            if img.h <= 2 || img.w <= 2 {
                return img.clone();
            }
            let deg = smoothed(img);
            blend_with(img, |_, i| deg.data[i] as f32, 1.0 + m)
        }
        Op::Posterize => {
            let bits = m.round() as u32;
            let mask: u8 = if bits >= 8 { 0xFF } else { !((1u16 << (8 - bits)) - 1) as u8 };
            Image { data: img.data.iter().map(|v| v & mask).collect(), ..img.clone() }
        }
        Op::Solarize => Image { data: img.data.iter().map(|&v| if v as f64 >= m { 255 - v } else { v }).collect(), ..img.clone() },
        Op::AutoContrast => autocontrast(img),
        Op::Equalize => equalize(img),
    }
}

#[derive(Clone, Copy)]
enum Origin {
    /// Coordinates relative to the top-left corner of the image (torchvision `center=[0, 0]`).
    Corner,
    /// Relative to the image centre.
    Centre,
}

/// Inverse-mapped nearest-neighbour warp with fill 0: output pixel centre (x, y) in the chosen frame samples the
/// input at `inv(x, y)`, rounded half to even.
fn warp(img: &Image, inv: impl Fn(f64, f64) -> (f64, f64), origin: Origin) -> Image {
    let (h, w) = (img.h, img.w);
    let (ox, oy) = match origin {
        Origin::Corner => (0.0, 0.0),
        Origin::Centre => (w as f64 / 2.0, h as f64 / 2.0),
    };
    let mut out = Image::zeros(img.c, h, w);
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = inv(x as f64 + 0.5 - ox, y as f64 + 0.5 - oy);
            let (ix, iy) = ((sx + ox - 0.5).round_ties_even(), (sy + oy - 0.5).round_ties_even());
            if ix < 0.0 || iy < 0.0 || ix > (w - 1) as f64 || iy > (h - 1) as f64 {
                continue;
            }
            let (ix, iy) = (ix as usize, iy as usize);
            for ch in 0..img.c {
                out.data[(ch * h + y) * w + x] = img.at(ch, iy, ix);
            }
        }
    }
    out
}

/// torchvision `_blend(img, other, ratio)` for uint8: (ratio·img + (1 − ratio)·other) in float32, clamped to
/// [0, 255], truncated to uint8. `other(ch, i)` gives the second image at flat index i.
fn blend_with(img: &Image, other: impl Fn(usize, usize) -> f32, ratio: f64) -> Image {
    let r = ratio as f32;
    let hw = img.h * img.w;
    let data = img
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| (r * v as f32 + (1.0 - r) * other(i / hw, i)).clamp(0.0, 255.0) as u8)
        .collect();
    Image { data, ..img.clone() }
}

/// torchvision `rgb_to_grayscale` for uint8 RGB: (0.2989 r + 0.587 g + 0.114 b) in float32, truncated.
fn grayscale(img: &Image) -> Vec<u8> {
    let hw = img.h * img.w;
    (0..hw)
        .map(|i| {
            let (r, g, b) = (img.data[i] as f32, img.data[hw + i] as f32, img.data[2 * hw + i] as f32);
            (0.2989f32 * r + 0.587f32 * g + 0.114f32 * b) as u8
        })
        .collect()
}

/// The "degenerate" image of Sharpness: interior pixels smoothed with [[1,1,1],[1,5,1],[1,1,1]]/13 and
/// rounded (half to even); the border is kept.
fn smoothed(img: &Image) -> Image {
    let mut out = img.clone();
    let (h, w) = (img.h, img.w);
    for ch in 0..img.c {
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                let mut s = 0.0f32;
                for dy in 0..3 {
                    for dx in 0..3 {
                        let k = if dy == 1 && dx == 1 { 5.0 } else { 1.0 };
                        s += k * img.at(ch, y + dy - 1, x + dx - 1) as f32;
                    }
                }
                out.data[(ch * h + y) * w + x] = (s / 13.0).round_ties_even() as u8;
            }
        }
    }
    out
}

/// Per channel: (v − min)·255/(max − min), clamped and truncated; a constant channel is unchanged.
fn autocontrast(img: &Image) -> Image {
    let hw = img.h * img.w;
    let mut out = img.clone();
    for ch in 0..img.c {
        let plane = &img.data[ch * hw..(ch + 1) * hw];
        let (lo, hi) = (*plane.iter().min().unwrap() as f32, *plane.iter().max().unwrap() as f32);
        let (lo, scale) = if hi > lo { (lo, 255.0 / (hi - lo)) } else { (0.0, 1.0) };
        for (o, &v) in out.data[ch * hw..(ch + 1) * hw].iter_mut().zip(plane) {
            *o = ((v as f32 - lo) * scale).clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Per-channel histogram equalisation, torchvision's `_scale_channel` LUT.
fn equalize(img: &Image) -> Image {
    let hw = img.h * img.w;
    let mut out = img.clone();
    for ch in 0..img.c {
        let plane = &img.data[ch * hw..(ch + 1) * hw];
        let mut hist = [0u64; 256];
        for &v in plane {
            hist[v as usize] += 1;
        }
        let nonzero: Vec<u64> = hist.iter().copied().filter(|&c| c != 0).collect();
        let step = nonzero[..nonzero.len() - 1].iter().sum::<u64>() / 255;
        if step == 0 {
            continue;
        }
        // lut[0] = 0, lut[i] = min(255, (cumsum[i−1] + step/2) / step).
        let mut lut = [0u8; 256];
        let mut cum = 0u64;
        for i in 0..255 {
            cum += hist[i];
            lut[i + 1] = ((cum + step / 2) / step).min(255) as u8;
        }
        for i in 0..hw {
            out.data[ch * hw + i] = lut[plane[i] as usize];
        }
    }
    out
}
