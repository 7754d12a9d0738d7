//! A minimal reader of NumPy `.npz` archives (a zip of `.npy` files, stored or deflated; zip64 sizes
//! accepted), for the conformance loader. Supported element types: f8, f4, i8, i4, u1, b1, little-endian,
//! C order (Fortran-ordered arrays are transposed into C order).
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

fn u16_at(b: &[u8], i: usize) -> Option<u64> {
    b.get(i..i + 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as u64)
}
fn u32_at(b: &[u8], i: usize) -> Option<u64> {
    b.get(i..i + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as u64)
}
fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    b.get(i..i + 8).map(|s| u64::from_le_bytes(s.try_into().unwrap()))
}

/// Reads every array of an `.npz` file as CPU tensors, keyed by member name without the `.npy` suffix.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let bad = |m: &str| Error::file(path, format!("not a readable npz archive: {m}"));
    // End of central directory record: the last occurrence of its signature.
    let eocd = (0..bytes.len().saturating_sub(21)).rev().find(|&i| bytes[i..i + 4] == [0x50, 0x4b, 0x05, 0x06]).ok_or_else(|| bad("no end of central directory"))?;
    let n_entries = u16_at(&bytes, eocd + 10).ok_or_else(|| bad("truncated"))?;
    let mut cd = u32_at(&bytes, eocd + 16).ok_or_else(|| bad("truncated"))? as usize;
    if cd == 0xFFFF_FFFF {
        // zip64 end of central directory locator precedes the record.
        let loc = eocd.checked_sub(20).ok_or_else(|| bad("zip64 locator missing"))?;
        let rec = u64_at(&bytes, loc + 8).ok_or_else(|| bad("truncated"))? as usize;
        cd = u64_at(&bytes, rec + 48).ok_or_else(|| bad("truncated"))? as usize;
    }
    let mut out = BTreeMap::new();
    for _ in 0..n_entries {
        if bytes.get(cd..cd + 4) != Some(&[0x50, 0x4b, 0x01, 0x02]) {
            return Err(bad("bad central directory entry"));
        }
        let method = u16_at(&bytes, cd + 10).unwrap();
        let mut csize = u32_at(&bytes, cd + 20).unwrap();
        let mut usize_ = u32_at(&bytes, cd + 24).unwrap();
        let (nlen, elen, clen) = (u16_at(&bytes, cd + 28).unwrap() as usize, u16_at(&bytes, cd + 30).unwrap() as usize, u16_at(&bytes, cd + 32).unwrap() as usize);
        let mut offset = u32_at(&bytes, cd + 42).unwrap();
        let name = String::from_utf8_lossy(bytes.get(cd + 46..cd + 46 + nlen).ok_or_else(|| bad("truncated"))?).to_string();
        // zip64 extra field (id 1): the 0xFFFFFFFF fields, in the order uncompressed, compressed, offset.
        let mut e = cd + 46 + nlen;
        let end = e + elen;
        while e + 4 <= end {
            let (id, len) = (u16_at(&bytes, e).unwrap(), u16_at(&bytes, e + 2).unwrap() as usize);
            if id == 1 {
                let mut q = e + 4;
                for f in [&mut usize_, &mut csize, &mut offset] {
                    if *f == 0xFFFF_FFFF {
                        *f = u64_at(&bytes, q).ok_or_else(|| bad("truncated zip64 field"))?;
                        q += 8;
                    }
                }
            }
            e += 4 + len;
        }
        cd = end + clen;
        let lo = offset as usize;
        if bytes.get(lo..lo + 4) != Some(&[0x50, 0x4b, 0x03, 0x04]) {
            return Err(bad(&format!("bad local header for '{name}'")));
        }
        let start = lo + 30 + u16_at(&bytes, lo + 26).unwrap() as usize + u16_at(&bytes, lo + 28).unwrap() as usize;
        let raw = bytes.get(start..start + csize as usize).ok_or_else(|| bad(&format!("truncated member '{name}'")))?;
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                let mut v = Vec::with_capacity(usize_ as usize);
                flate2::read::DeflateDecoder::new(raw).read_to_end(&mut v).map_err(|e| bad(&format!("'{name}': {e}")))?;
                v
            }
            m => return Err(bad(&format!("'{name}': unsupported compression method {m}"))),
        };
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let t = parse_npy(&data).map_err(|m| Error::file(path, format!("member '{name}': {m}")))?;
        out.insert(key, t);
    }
    Ok(out)
}

/// Parses one `.npy` payload.
pub fn parse_npy(b: &[u8]) -> std::result::Result<Tensor, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not an .npy array".into());
    }
    let (hlen, hstart) = if b[6] == 1 { (u16_at(b, 8).unwrap() as usize, 10) } else { (u32_at(b, 8).ok_or("truncated")? as usize, 12) };
    let header = std::str::from_utf8(b.get(hstart..hstart + hlen).ok_or("truncated header")?).map_err(|_| "header is not text")?;
    let field = |k: &str| -> std::result::Result<&str, String> {
        let i = header.find(&format!("'{k}'")).ok_or(format!("header lacks '{k}'"))?;
        Ok(header[i + k.len() + 2..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.trim_start_matches('\'');
    let descr = &descr[..descr.find('\'').ok_or("bad descr")?];
    let fortran = field("fortran_order")?.starts_with("True");
    let shape_s = field("shape")?;
    let shape_s = &shape_s[1..shape_s.find(')').ok_or("bad shape")?];
    let shape: Vec<i64> = shape_s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.trim_end_matches('L').parse::<i64>().map_err(|_| format!("bad shape '{shape_s}'"))).collect::<std::result::Result<_, _>>()?;
    let (kind, size) = match descr {
        "<f8" => (Kind::Double, 8),
        "<f4" => (Kind::Float, 4),
        "<i8" => (Kind::Int64, 8),
        "<i4" => (Kind::Int, 4),
        "|u1" => (Kind::Uint8, 1),
        "|b1" => (Kind::Bool, 1),
        d => return Err(format!("unsupported dtype '{d}'")),
    };
    let n: i64 = shape.iter().product();
    let data = b.get(hstart + hlen..hstart + hlen + n as usize * size).ok_or("truncated data")?;
    if fortran {
        let rev: Vec<i64> = shape.iter().rev().cloned().collect();
        let t = Tensor::from_data_size(data, &rev, kind);
        let dims: Vec<i64> = (0..shape.len() as i64).rev().collect();
        Ok(t.permute(&dims[..]).contiguous())
    } else {
        Ok(Tensor::from_data_size(data, &shape, kind))
    }
}
