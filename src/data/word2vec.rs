//! word2vec embeddings (`hopfield-attention.md` §10.1 step 4: raw, un-normalised float32 vectors,
//! case-sensitive lookup), in both of the original C tool's formats:
//!
//! * **binary**: an ASCII header line `"V d\n"`, then per word: the word's bytes, one space, d little-endian
//!   f32, and an optional `'\n'` (newlines before a word are skipped, as gensim does);
//! * **text**: the header `"V d"`, then V lines `"word v1 … vd"` separated by whitespace.
//!
//! Either may be gzip-compressed. Errors name the file: a header that is not two positive integers, a vector with
//! the wrong number of values (text), a dimension different from the one expected (both numbers given), fewer
//! words than the header says (truncated). A word seen twice keeps its first vector (gensim's behaviour) and is
//! counted in [`Embeddings::duplicates`] (among the kept words). Words that are not valid UTF-8 are decoded lossily.
//!
//! The full GoogleNews file holds 3 M words × 300 floats (3.6 GB). [`load_filtered`] keeps only the words a
//! corpus uses, which is what the text loaders do.
use crate::{Error, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// The word2vec file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Binary,
    Text,
    /// By extension (`.bin` → binary; `.txt`, `.vec` → text, also under `.gz`), else by content: text when
    /// the first record is a valid UTF-8 line of exactly d + 1 fields that parse as numbers.
    Auto,
}

/// Word vectors: a vocabulary and one flat f32 table (row k = the vector of word k).
#[derive(Clone, Debug, Default)]
pub struct Embeddings {
    pub dim: usize,
    pub words: Vec<String>,
    pub vectors: Vec<f32>,
    index: HashMap<String, usize>,
    /// Words of the file skipped because they appeared earlier.
    pub duplicates: usize,
    /// Number of words the file's header announces.
    pub file_vocab: usize,
}

impl Embeddings {
    pub fn len(&self) -> usize {
        self.words.len()
    }
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
    /// Row index of a word (exact, case-sensitive).
    pub fn index_of(&self, word: &str) -> Option<usize> {
        self.index.get(word).copied()
    }
    pub fn get(&self, word: &str) -> Option<&[f32]> {
        self.index_of(word).map(|k| self.row(k))
    }
    pub fn row(&self, k: usize) -> &[f32] {
        &self.vectors[k * self.dim..(k + 1) * self.dim]
    }
    /// Builds a table from (word, vector) pairs (first occurrence wins).
    pub fn from_pairs(dim: usize, pairs: impl IntoIterator<Item = (String, Vec<f32>)>) -> Result<Embeddings> {
        let mut e = Embeddings { dim, ..Default::default() };
        for (w, v) in pairs {
            if v.len() != dim {
                return Err(Error::Shape(format!("embedding of '{w}' has dimension {}, expected {dim}", v.len())));
            }
            e.push(w, &v);
        }
        e.file_vocab = e.len() + e.duplicates;
        Ok(e)
    }
    /// Appends a word (a word already present is counted as a duplicate and ignored).
    pub(crate) fn push(&mut self, w: String, v: &[f32]) {
        if self.index.contains_key(&w) {
            self.duplicates += 1;
            return;
        }
        self.index.insert(w.clone(), self.words.len());
        self.words.push(w);
        self.vectors.extend_from_slice(v);
    }
}

/// Loads every word. `expected_dim`: the model's d (a different file dimension is an error).
pub fn load(path: &Path, format: Format, expected_dim: Option<usize>) -> Result<Embeddings> {
    load_filtered(path, format, expected_dim, |_| true)
}

/// Loads the words for which `keep(word)` is true (the vocabulary and dimension checks cover every word). The
/// file is streamed (gzip included), so memory holds only the kept vectors.
pub fn load_filtered(path: &Path, format: Format, expected_dim: Option<usize>, keep: impl Fn(&str) -> bool) -> Result<Embeddings> {
    let io_err = |e: std::io::Error| Error::file(path, format!("cannot read: {e}"));
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::file(path, "file not found"),
        _ => io_err(e),
    })?;
    let mut raw = BufReader::with_capacity(1 << 20, file);
    let gz = raw.fill_buf().map_err(io_err)?.starts_with(&[0x1f, 0x8b]);
    let mut r: Box<dyn BufRead> =
        if gz { Box::new(BufReader::with_capacity(1 << 20, flate2::bufread::MultiGzDecoder::new(raw))) } else { Box::new(raw) };
    let mut head = Vec::new();
    r.read_until(b'\n', &mut head).map_err(io_err)?;
    if head.last() != Some(&b'\n') {
        return Err(Error::file(path, "no header line \"V d\""));
    }
    let header = String::from_utf8_lossy(&head[..head.len() - 1]).trim_end_matches('\r').to_string();
    let nums: Vec<&str> = header.split_whitespace().collect();
    let parse = |s: &str| s.parse::<usize>().ok().filter(|&v| v > 0);
    let (vocab, dim) = match nums.as_slice() {
        [a, b] => match (parse(a), parse(b)) {
            (Some(v), Some(d)) => (v, d),
            _ => return Err(Error::file(path, format!("header \"{header}\" is not two positive integers \"V d\""))),
        },
        _ => return Err(Error::file(path, format!("header \"{header}\" is not two positive integers \"V d\""))),
    };
    if let Some(e) = expected_dim {
        if e != dim {
            return Err(Error::file(path, format!("embedding dimension {dim} differs from the expected d = {e}")));
        }
    }
    let format = match format {
        Format::Auto => detect(path, r.fill_buf().map_err(io_err)?, dim),
        f => f,
    };
    let mut e = Embeddings { dim, file_vocab: vocab, ..Default::default() };
    match format {
        Format::Binary => parse_binary(path, &mut r, vocab, dim, &keep, &mut e)?,
        _ => parse_text(path, &mut r, vocab, dim, &keep, &mut e)?,
    }
    Ok(e)
}

/// Format by extension, else by the first record (in the reader's buffer).
fn detect(path: &Path, peek: &[u8], dim: usize) -> Format {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".bin") {
        return Format::Binary;
    }
    if name.ends_with(".txt") || name.ends_with(".vec") {
        return Format::Text;
    }
    let end = peek.iter().position(|&b| b == b'\n').unwrap_or(peek.len());
    match std::str::from_utf8(&peek[..end]) {
        Ok(line) => {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == dim + 1 && f[1..].iter().all(|v| v.parse::<f32>().is_ok()) {
                Format::Text
            } else {
                Format::Binary
            }
        }
        Err(_) => Format::Binary,
    }
}

fn parse_binary(path: &Path, r: &mut dyn BufRead, vocab: usize, dim: usize, keep: &impl Fn(&str) -> bool, e: &mut Embeddings) -> Result<()> {
    let io_err = |err: std::io::Error| Error::file(path, format!("cannot read: {err}"));
    let mut word = Vec::new();
    let mut buf = vec![0u8; 4 * dim];
    let mut v = vec![0f32; dim];
    for k in 0..vocab {
        // Newlines before a word are separators (the optional one after each vector).
        loop {
            let peek = r.fill_buf().map_err(io_err)?;
            let n = peek.iter().take_while(|&&b| b == b'\n').count();
            let all = n == peek.len() && n > 0;
            r.consume(n);
            if !all {
                break;
            }
        }
        word.clear();
        r.read_until(b' ', &mut word).map_err(io_err)?;
        if word.last() != Some(&b' ') {
            return Err(Error::file(path, format!("truncated: the header announces {vocab} words, the file ends in word {}", k + 1)));
        }
        let w = String::from_utf8_lossy(&word[..word.len() - 1]).into_owned();
        r.read_exact(&mut buf).map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                Error::file(path, format!("truncated: the vector of word {} ('{w}') needs {} bytes", k + 1, 4 * dim))
            }
            _ => io_err(err),
        })?;
        if keep(&w) {
            for (j, c) in buf.chunks_exact(4).enumerate() {
                v[j] = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            e.push(w, &v);
        }
    }
    Ok(())
}

fn parse_text(path: &Path, r: &mut dyn BufRead, vocab: usize, dim: usize, keep: &impl Fn(&str) -> bool, e: &mut Embeddings) -> Result<()> {
    let mut v = vec![0f32; dim];
    let mut raw = Vec::new();
    let mut ln = 1usize; // the header is line 1
    let mut k = 0usize;
    while k < vocab {
        raw.clear();
        let n = r.read_until(b'\n', &mut raw).map_err(|err| Error::file(path, format!("cannot read: {err}")))?;
        if n == 0 {
            return Err(Error::file(path, format!("truncated: the header announces {vocab} words, the file has {k}")));
        }
        ln += 1;
        let line = String::from_utf8_lossy(&raw);
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let word = fields.next().unwrap_or_default();
        let vals: Vec<&str> = fields.collect();
        if vals.len() != dim {
            return Err(Error::file(path, format!("line {ln}: word '{word}' has {} values, expected d = {dim}", vals.len())));
        }
        if keep(word) {
            for (j, s) in vals.iter().enumerate() {
                v[j] = s.parse::<f32>().map_err(|_| Error::file(path, format!("line {ln}: '{s}' is not a number")))?;
            }
            e.push(word.to_string(), &v);
        }
        k += 1;
    }
    Ok(())
}

/// Writes embeddings in the text format (for tools and tests).
pub fn write_text(path: &Path, e: &Embeddings) -> Result<()> {
    let mut s = format!("{} {}\n", e.len(), e.dim);
    for (k, w) in e.words.iter().enumerate() {
        s.push_str(w);
        for v in e.row(k) {
            s.push_str(&format!(" {v:?}"));
        }
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|err| Error::file(path, format!("cannot write: {err}")))
}

/// Writes embeddings in the binary format, a newline after each vector.
pub fn write_binary(path: &Path, e: &Embeddings) -> Result<()> {
    let mut b = format!("{} {}\n", e.len(), e.dim).into_bytes();
    for (k, w) in e.words.iter().enumerate() {
        b.extend_from_slice(w.as_bytes());
        b.push(b' ');
        for v in e.row(k) {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.push(b'\n');
    }
    std::fs::write(path, b).map_err(|err| Error::file(path, format!("cannot write: {err}")))
}
