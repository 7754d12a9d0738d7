//! A minimal reader of NumPy `.npz` archives (a zip of `.npy` files, stored or deflated; zip64 sizes
//! accepted), for the conformance loader. Supported element types: f8, f4, i8, i4, u1, b1, little-endian,
//! C order (Fortran-ordered arrays are transposed into C order).
//!
//! The archive is external data: every offset, length and shape is read with checked arithmetic and
//! validated before anything is allocated; a malformed archive is a one-line error naming the file and the
//! member, never a panic.
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

fn u16_at(b: &[u8], i: usize) -> Option<u64> {
    let s = b.get(i..i.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]) as u64)
}
fn u32_at(b: &[u8], i: usize) -> Option<u64> {
    let s = b.get(i..i.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as u64)
}
fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    let s = b.get(i..i.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}
/// `a + b` for offsets read from the file (None on overflow).
fn add(a: usize, b: u64) -> Option<usize> {
    a.checked_add(usize::try_from(b).ok()?)
}

/// Reads every array of an `.npz` file as CPU tensors, keyed by member name without the `.npy` suffix.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let bad = |m: &str| Error::file(path, format!("not a readable npz archive: {m}"));
    if bytes.is_empty() {
        return Err(bad("the file is empty"));
    }
    // End of central directory record: the last occurrence of its signature.
    let eocd = (0..bytes.len().saturating_sub(21)).rev().find(|&i| bytes[i..i + 4] == [0x50, 0x4b, 0x05, 0x06]).ok_or_else(|| bad("no end of central directory (not a zip archive, or truncated)"))?;
    let n_entries = u16_at(&bytes, eocd + 10).ok_or_else(|| bad("truncated"))?;
    let mut cd = u32_at(&bytes, eocd + 16).ok_or_else(|| bad("truncated"))? as usize;
    if cd == 0xFFFF_FFFF {
        // zip64 end of central directory locator precedes the record.
        let loc = eocd.checked_sub(20).ok_or_else(|| bad("zip64 locator missing"))?;
        let rec = u64_at(&bytes, loc + 8).ok_or_else(|| bad("truncated"))?;
        let rec = usize::try_from(rec).ok().and_then(|r| r.checked_add(48)).ok_or_else(|| bad("zip64 record offset out of range"))?;
        cd = u64_at(&bytes, rec).and_then(|c| usize::try_from(c).ok()).ok_or_else(|| bad("truncated zip64 record"))?;
    }
    if n_entries == 0 {
        return Err(bad("the archive holds no arrays"));
    }
    let cap = crate::instance::memory_cap();
    let mut out = BTreeMap::new();
    for _ in 0..n_entries {
        if cd.checked_add(4).and_then(|e| bytes.get(cd..e)) != Some(&[0x50, 0x4b, 0x01, 0x02][..]) {
            return Err(bad("bad central directory entry"));
        }
        let field16 = |o: usize| cd.checked_add(o).and_then(|i| u16_at(&bytes, i)).ok_or_else(|| bad("truncated central directory"));
        let field32 = |o: usize| cd.checked_add(o).and_then(|i| u32_at(&bytes, i)).ok_or_else(|| bad("truncated central directory"));
        let method = field16(10)?;
        let mut csize = field32(20)?;
        let mut usize_ = field32(24)?;
        let (nlen, elen, clen) = (field16(28)? as usize, field16(30)? as usize, field16(32)? as usize);
        let mut offset = field32(42)?;
        let name_at = cd.checked_add(46).ok_or_else(|| bad("truncated"))?;
        let name_end = name_at.checked_add(nlen).ok_or_else(|| bad("truncated"))?;
        let name = String::from_utf8_lossy(bytes.get(name_at..name_end).ok_or_else(|| bad("truncated member name"))?).to_string();
        let member = |m: &str| bad(&format!("member '{name}': {m}"));
        // zip64 extra field (id 1): the 0xFFFFFFFF fields, in the order uncompressed, compressed, offset.
        let mut e = name_end;
        let end = name_end.checked_add(elen).ok_or_else(|| member("truncated extra field"))?;
        while e.checked_add(4).is_some_and(|x| x <= end) {
            let (id, len) = (u16_at(&bytes, e).ok_or_else(|| member("truncated extra field"))?, u16_at(&bytes, e + 2).ok_or_else(|| member("truncated extra field"))? as usize);
            if id == 1 {
                let mut q = e + 4;
                for f in [&mut usize_, &mut csize, &mut offset] {
                    if *f == 0xFFFF_FFFF {
                        *f = u64_at(&bytes, q).ok_or_else(|| member("truncated zip64 field"))?;
                        q += 8;
                    }
                }
            }
            e += 4 + len;
        }
        cd = end.checked_add(clen).ok_or_else(|| member("truncated comment"))?;
        let lo = usize::try_from(offset).map_err(|_| member("local header offset out of range"))?;
        if lo.checked_add(4).and_then(|x| bytes.get(lo..x)) != Some(&[0x50, 0x4b, 0x03, 0x04][..]) {
            return Err(bad(&format!("bad local header for '{name}'")));
        }
        let (ln, le) = (lo.checked_add(26).and_then(|i| u16_at(&bytes, i)), lo.checked_add(28).and_then(|i| u16_at(&bytes, i)));
        let (ln, le) = (ln.ok_or_else(|| member("truncated local header"))?, le.ok_or_else(|| member("truncated local header"))?);
        let start = lo.checked_add(30).and_then(|s| add(s, ln)).and_then(|s| add(s, le)).ok_or_else(|| member("local header out of range"))?;
        let raw = add(start, csize).and_then(|stop| bytes.get(start..stop)).ok_or_else(|| bad(&format!("truncated member '{name}'")))?;
        if usize_ > cap {
            return Err(member(&format!("declares {usize_} bytes uncompressed, more than the {cap} bytes of available memory")));
        }
        if method == 0 && usize_ != csize {
            return Err(member(&format!("declares {usize_} bytes uncompressed but stores {csize} (a stored member has one size)")));
        }
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                // The declared size bounds the allocation and the output (a deflate bomb stops there).
                let mut v = Vec::with_capacity((usize_ as usize).min(raw.len().saturating_mul(8)).min(1 << 30));
                flate2::read::DeflateDecoder::new(raw).take(usize_.saturating_add(1)).read_to_end(&mut v).map_err(|e| member(&e.to_string()))?;
                if v.len() as u64 > usize_ {
                    return Err(member(&format!("inflates to more than its declared {usize_} bytes")));
                }
                v
            }
            m => return Err(member(&format!("unsupported compression method {m}"))),
        };
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let t = parse_npy(&data).map_err(|m| Error::file(path, format!("member '{name}': {m}")))?;
        if out.insert(key.clone(), t).is_some() {
            return Err(member(&format!("duplicate array '{key}'")));
        }
    }
    Ok(out)
}

/// The value of `'key': …` in an `.npy` header dict (the text after the colon).
fn field<'h>(header: &'h str, k: &str) -> std::result::Result<&'h str, String> {
    let pat = format!("'{k}'");
    let i = header.find(&pat).ok_or(format!("header lacks '{k}'"))?;
    let rest = header[i + pat.len()..].trim_start();
    let rest = rest.strip_prefix(':').ok_or(format!("header field '{k}' has no value"))?;
    Ok(rest.trim_start())
}

/// Parses one `.npy` payload.
pub fn parse_npy(b: &[u8]) -> std::result::Result<Tensor, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not an .npy array".into());
    }
    let (hlen, hstart) = match b[6] {
        1 => (u16_at(b, 8).ok_or("truncated")? as usize, 10usize),
        2 | 3 => (u32_at(b, 8).ok_or("truncated")? as usize, 12),
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let hend = hstart.checked_add(hlen).ok_or("header length out of range")?;
    let header = std::str::from_utf8(b.get(hstart..hend).ok_or("truncated header")?).map_err(|_| "header is not text")?;
    let descr = field(header, "descr")?;
    let descr = descr.strip_prefix('\'').ok_or("bad descr")?;
    let descr = &descr[..descr.find('\'').ok_or("bad descr")?];
    let fortran = field(header, "fortran_order")?.starts_with("True");
    let shape_s = field(header, "shape")?;
    let shape_s = shape_s.strip_prefix('(').ok_or(format!("bad shape '{}' (expected a tuple)", shape_s.split('}').next().unwrap_or("")))?;
    let shape_s = &shape_s[..shape_s.find(')').ok_or("bad shape (no closing parenthesis)")?];
    let shape: Vec<i64> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.trim_end_matches('L').parse::<i64>() {
            Ok(d) if d >= 0 => Ok(d),
            Ok(d) => Err(format!("bad shape ({shape_s}): negative size {d}")),
            Err(_) => Err(format!("bad shape ({shape_s})")),
        })
        .collect::<std::result::Result<_, _>>()?;
    let (kind, size) = match descr {
        "<f8" => (Kind::Double, 8),
        "<f4" => (Kind::Float, 4),
        "<i8" => (Kind::Int64, 8),
        "<i4" => (Kind::Int, 4),
        "|u1" => (Kind::Uint8, 1),
        "|b1" => (Kind::Bool, 1),
        d => return Err(format!("unsupported dtype '{d}'")),
    };
    let n = shape.iter().try_fold(1i64, |acc, &d| acc.checked_mul(d)).ok_or(format!("shape ({shape_s}) overflows"))?;
    let nbytes = usize::try_from(n).ok().and_then(|n| n.checked_mul(size)).ok_or(format!("shape ({shape_s}) overflows"))?;
    let data = hend.checked_add(nbytes).and_then(|stop| b.get(hend..stop)).ok_or(format!("truncated data: shape ({shape_s}) needs {nbytes} bytes, the member has {}", b.len().saturating_sub(hend)))?;
    let torch = |e: tch::TchError| crate::Error::from(e).to_string();
    if fortran {
        let rev: Vec<i64> = shape.iter().rev().cloned().collect();
        let t = Tensor::f_from_data_size(data, &rev, kind).map_err(torch)?;
        let dims: Vec<i64> = (0..shape.len() as i64).rev().collect();
        t.f_permute(&dims[..]).and_then(|t| t.f_contiguous()).map_err(torch)
    } else {
        Tensor::f_from_data_size(data, &shape, kind).map_err(torch)
    }
}
