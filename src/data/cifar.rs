//! CIFAR-10 / CIFAR-100 **binary** format (`conv-hopfield.md` §7).
//!
//! * CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` … `data_batch_5.bin` (train) and `test_batch.bin`;
//!   each record is 1 label byte (0..9) + 3072 bytes of a 3×32×32 image in CHW order (R plane, G, B).
//! * CIFAR-100 (`cifar-100-binary/`): `train.bin`, `test.bin`; each record is 1 coarse label byte (0..19),
//!   1 fine label byte (0..99), then the 3072 image bytes. The fine label is used unless `coarse` is asked.
//!
//! A file whose size is not a multiple of the record size, or a label out of range, is an error naming the file.
use super::{find_file, read_file, Split};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Which CIFAR variant and which label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    /// CIFAR-100 with fine (100) or coarse (20) labels.
    Cifar100 { coarse: bool },
}

impl Variant {
    pub fn record_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1 + IMAGE_BYTES,
            Variant::Cifar100 { .. } => 2 + IMAGE_BYTES,
        }
    }
    pub fn classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 { coarse: false } => 100,
            Variant::Cifar100 { coarse: true } => 20,
        }
    }
    /// Files of a split, in loading order.
    pub fn files(self, split: Split) -> Vec<String> {
        match (self, split) {
            (Variant::Cifar10, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (Variant::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (Variant::Cifar100 { .. }, Split::Train) => vec!["train.bin".into()],
            (Variant::Cifar100 { .. }, Split::Test) => vec!["test.bin".into()],
        }
    }
    /// The folder name of the official archive, tried under the root.
    pub fn archive_dir(self) -> &'static str {
        match self {
            Variant::Cifar10 => "cifar-10-batches-bin",
            Variant::Cifar100 { .. } => "cifar-100-binary",
        }
    }
}

/// Parses one binary batch file: appends its images (CHW bytes) and labels.
pub fn parse_records(path: &Path, bytes: &[u8], v: Variant, images: &mut Vec<u8>, labels: &mut Vec<i64>) -> Result<()> {
    let rec = v.record_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(Error::file(
            path,
            format!(
                "{} bytes is not a multiple of the {:?} record size {rec} (file truncated or not a CIFAR binary file; {} whole records + {} bytes)",
                bytes.len(),
                v,
                bytes.len() / rec,
                bytes.len() % rec
            ),
        ));
    }
    let classes = v.classes();
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = match v {
            Variant::Cifar10 => r[0],
            Variant::Cifar100 { coarse: true } => r[0],
            Variant::Cifar100 { coarse: false } => r[1],
        } as usize;
        if label >= classes {
            return Err(Error::file(path, format!("record {i}: label {label} out of range 0..{classes}")));
        }
        // The coarse label of CIFAR-100 is checked too, whichever label is used.
        if let Variant::Cifar100 { .. } = v {
            if r[0] >= 20 {
                return Err(Error::file(path, format!("record {i}: coarse label {} out of range 0..20", r[0])));
            }
        }
        labels.push(label as i64);
        images.extend_from_slice(&r[rec - IMAGE_BYTES..]);
    }
    Ok(())
}

/// Reads one binary batch file (raw or gzip).
pub fn read_batch_file(path: &Path, v: Variant) -> Result<(Vec<u8>, Vec<i64>)> {
    let bytes = read_file(path)?;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    parse_records(path, &bytes, v, &mut images, &mut labels)?;
    Ok((images, labels))
}

/// Loads a split from `root` or `root/<archive dir>`: (images N×3×32×32 bytes, labels).
pub fn load(root: &Path, split: Split, v: Variant) -> Result<(Vec<u8>, Vec<i64>)> {
    let dirs: Vec<PathBuf> = vec![root.to_path_buf(), root.join(v.archive_dir())];
    // The folder holding the first file decides for the rest, so that a missing batch names the right path.
    let files = v.files(split);
    let first = find_file(&dirs, &files[0])?;
    let dir = first.parent().unwrap_or(root).to_path_buf();
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for f in &files {
        let p = find_file(std::slice::from_ref(&dir), f)?;
        let bytes = read_file(&p)?;
        parse_records(&p, &bytes, v, &mut images, &mut labels)?;
    }
    Ok((images, labels))
}
