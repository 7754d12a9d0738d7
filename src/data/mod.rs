//! Dataset loaders for the training presets: images for the conv models (`conv-hopfield.md` §7, §6.4) and
//! pre-embedded text for the attention models (`hopfield-attention.md` §10).
//!
//! * [`images`]: [`images::ImageDataset`] (uint8 N×C×H×W + labels), presets `cifar10`, `cifar100`,
//!   `cifar100-coarse`, `fashion-mnist`, `mnist`, `digits`; ToTensor + per-channel normalisation; seeded
//!   shuffled batches with the last partial batch kept. File formats: [`cifar`] (binary), [`idx`] (MNIST IDX).
//! * [`augment`]: horizontal flip, random crop (edge or zero padding), RandAugment with the 14 torchvision ops.
//! * [`word2vec`]: embeddings in the binary and text word2vec formats.
//! * [`tokenize`]: the cleaning and tokenisation of §10 (Toktok rules for the cleaned character set).
//! * [`text`]: IMDB (`aclImdb` folder layout) and SNLI (jsonl) as token-index datasets that yield embedding
//!   batches (B, L, d) / (B, 2L, d), labels and a padding mask.
//!
//! Every malformed input is a [`crate::Error`] naming the file (never a panic). All randomness comes from
//! [`Rng`], a SplitMix64 stream seeded by the caller, so a run is reproducible from its seed.
pub mod augment;
pub mod cifar;
pub mod idx;
pub mod images;
pub mod text;
pub mod tokenize;
pub mod word2vec;

use crate::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn parse(s: &str) -> Result<Split> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(Error::Config(format!("unknown split '{s}' (known: train, test)"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): a small, seedable, well-mixed 64-bit stream. The data loaders'
/// only source of randomness (shuffles and augmentation), independent of libtorch's generator.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform integer in 0..n (n ≥ 1), by Lemire's multiply-shift with rejection (exactly uniform).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        let n = n as u64;
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as usize;
            }
        }
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// true with probability p.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
    /// A random permutation of 0..n.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }
}

/// The seed of epoch `epoch` derived from a run seed: pass it as `shuffle_seed` to the batch iterators so that
/// every epoch has its own order and augmentation draws, reproducibly.
pub fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    let mut r = Rng::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
    r.next_u64()
}

/// Splits 0..n into consecutive batches of `batch` (the last, partial one kept), in `order`.
pub(crate) fn batch_ranges(n: usize, batch: usize) -> Vec<(usize, usize)> {
    (0..n).step_by(batch.max(1)).map(|s| (s, (s + batch.max(1)).min(n))).collect()
}

/// Reads a whole file, transparently gunzipping it when it starts with the gzip magic. A missing file is an
/// error naming the path.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::file(path, "file not found"),
        _ => Error::file(path, format!("cannot read: {e}")),
    })?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The first of `dir/name`, `dir/name.gz` that exists, else a "file not found" error naming `dir/name`.
pub(crate) fn find_file(dirs: &[PathBuf], name: &str) -> Result<PathBuf> {
    for d in dirs {
        for cand in [d.join(name), d.join(format!("{name}.gz"))] {
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    let first = dirs.first().cloned().unwrap_or_default().join(name);
    let also: Vec<String> = dirs.iter().skip(1).map(|d| d.join(name).display().to_string()).collect();
    let msg = if also.is_empty() {
        "file not found (also tried with .gz)".to_string()
    } else {
        format!("file not found (also tried .gz, and {})", also.join(", "))
    };
    Err(Error::file(first, msg))
}
