//! MNIST / Fashion-MNIST **IDX** format (`conv-hopfield.md` §7; also the shipped 8×8 `digits`).
//!
//! An IDX file is a big-endian header: magic `0x0000 08 nd` (type 0x08 = unsigned byte, nd = number of
//! dimensions), then nd big-endian u32 sizes, then the row-major bytes. Images are `0x00000803` (N, H, W),
//! labels `0x00000801` (N). File names: `{train,t10k}-images-idx3-ubyte` and `{train,t10k}-labels-idx1-ubyte`,
//! raw or with `.gz` (gzip is detected from the content). Looked up in `root`, then `root/raw`, then
//! `root/FashionMNIST/raw` and `root/MNIST/raw` (the torchvision layouts).
use super::{find_file, read_file, Split};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Parses an IDX file of unsigned bytes with `ndim` dimensions: (sizes, data).
pub fn parse(path: &Path, bytes: &[u8], ndim: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let want_magic = 0x0000_0800u32 | ndim as u32;
    if bytes.len() < 4 {
        return Err(Error::file(path, format!("{} bytes: too short for an IDX header", bytes.len())));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != want_magic {
        return Err(Error::file(
            path,
            format!("wrong IDX magic 0x{magic:08x}, expected 0x{want_magic:08x} (unsigned bytes, {ndim} dimensions)"),
        ));
    }
    let head = 4 + 4 * ndim;
    if bytes.len() < head {
        return Err(Error::file(path, format!("{} bytes: truncated IDX header ({head} bytes expected)", bytes.len())));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|k| u32::from_be_bytes([bytes[4 + 4 * k], bytes[5 + 4 * k], bytes[6 + 4 * k], bytes[7 + 4 * k]]) as usize)
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() - head != n {
        return Err(Error::file(
            path,
            format!("IDX header says {dims:?} = {n} bytes of data, file has {} (truncated or corrupt)", bytes.len() - head),
        ));
    }
    Ok((dims, bytes[head..].to_vec()))
}

/// Reads an image file: (N, H, W, bytes).
pub fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let (d, data) = parse(path, &read_file(path)?, 3)?;
    Ok((d[0], d[1], d[2], data))
}

/// Reads a label file, checking every label is below `classes`.
pub fn read_labels(path: &Path, classes: usize) -> Result<Vec<i64>> {
    let (_, data) = parse(path, &read_file(path)?, 1)?;
    if let Some((i, &l)) = data.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
        return Err(Error::file(path, format!("label {l} at index {i} out of range 0..{classes}")));
    }
    Ok(data.into_iter().map(|l| l as i64).collect())
}

/// Loads a split from the IDX files under `root`: (images N×1×H×W bytes, labels, H, W).
pub fn load(root: &Path, split: Split, classes: usize) -> Result<(Vec<u8>, Vec<i64>, usize, usize)> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let dirs: Vec<PathBuf> =
        vec![root.to_path_buf(), root.join("raw"), root.join("FashionMNIST/raw"), root.join("MNIST/raw")];
    let ip = find_file(&dirs, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find_file(&dirs, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (n, h, w, images) = read_images(&ip)?;
    let labels = read_labels(&lp, classes)?;
    if labels.len() != n {
        return Err(Error::file(
            &lp,
            format!("{} labels but {} has {n} images (count mismatch)", labels.len(), ip.display()),
        ));
    }
    Ok((images, labels, h, w))
}
