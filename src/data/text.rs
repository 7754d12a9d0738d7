//! IMDB and SNLI as pre-embedded sequences (`hopfield-attention.md` §10; shapes §0/§11; interchange
//! `conventions.md` §12.1: `input.x`, `input.y`, `input.mask`).
//!
//! Pipeline (§10.1 / §10.2): read the raw texts → clean ([`tokenize::clean_imdb`] / [`tokenize::clean_snli`])
//! → tokenise, strip, lowercase ([`tokenize::tokenize`], **a simplified Toktok, not reference-compatible**) →
//! look each token up in word2vec (case-sensitive; **unknown tokens are dropped**) → keep the first L found
//! vectors, post-pad with zero rows to L. Truncation and out-of-vocabulary drops are counted in [`TextReport`].
//!
//! * **IMDB** (`imdb`): read from the `aclImdb` folder layout (`<root>[/aclImdb]/{train,test}/{pos,neg}/<id>_<rating>.txt`;
//!   `unsup` is ignored). Labels 0 = negative, 1 = positive. Order: neg then pos, each by numeric id (the
//!   reference uses the Keras copy of the same reviews in Keras' shuffled order; the training loader shuffles
//!   anyway). Default L = 600. x: (B, L, d).
//! * **SNLI** (`snli`): read from `<root>[/snli_1.0]/snli_1.0_{train,test}.jsonl` (the reference reads a CSV
//!   conversion with the same three columns). The first 540 000 (train) / 10 000 (test) non-blank lines are
//!   scanned (§10.2 step 2; [`TextOptions::max_rows`]). Lines with a gold label other than neutral = 0,
//!   contradiction = 1, entailment = 2 (the "-" rows) are skipped and counted; lines that are not a JSON object
//!   are skipped and counted as malformed (the spec says nothing about them). A sentence that is not a string
//!   becomes a single space (§10.2 step 4), i.e. an all-padding segment, and is counted. Premise and hypothesis
//!   are each truncated/padded to L (default 25), then concatenated: x = [P; H], (B, 2L, d).
//!
//! The dataset keeps token indices (N × S, S = L or 2L) into a table of only the words it uses, and builds the
//! float embeddings per batch, so the 18 GB of a full IMDB split never sit in memory at once.
use super::tokenize::{self, clean_imdb, clean_snli};
use super::word2vec::{self, Embeddings};
use super::{batch_ranges, Rng, Split};
use crate::{Error, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Token index of a padding position.
pub const PAD: u32 = u32::MAX;

/// Labelling of the tokenizer, recorded in reports.
pub const TOKENIZER_NOTE: &str =
    "built-in simplified tokenizer (Toktok rules for the cleaned character set, simplified HTML stripping); not reference-compatible";

/// SNLI class names in label order (§10.2 step 3).
pub const SNLI_CLASSES: [&str; 3] = ["neutral", "contradiction", "entailment"];

#[derive(Clone, Debug)]
pub struct TextOptions {
    /// L: tokens kept per sequence (IMDB) or per sentence (SNLI).
    pub seq_len: usize,
    /// The model's embedding dimension d; a word2vec file of another dimension is an error.
    pub embed_dim: Option<usize>,
    /// SNLI: lines scanned (None: 540 000 for train, 10 000 for test).
    pub max_rows: Option<usize>,
}

impl TextOptions {
    /// The `imdb-hopfield` preset: L = 600, d = 300.
    pub fn imdb() -> TextOptions {
        TextOptions { seq_len: 600, embed_dim: Some(300), max_rows: None }
    }
    /// The `snli-hopfield` preset: L = 25 per sentence, d = 300.
    pub fn snli() -> TextOptions {
        TextOptions { seq_len: 25, embed_dim: Some(300), max_rows: None }
    }
}

/// What the pipeline dropped, skipped and cut.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TextReport {
    /// Examples kept.
    pub examples: usize,
    /// SNLI: non-blank lines scanned.
    pub rows_scanned: usize,
    /// SNLI: rows skipped for a gold label outside the three classes ("-").
    pub skipped_label: usize,
    /// SNLI: lines that are not a JSON object.
    pub skipped_malformed: usize,
    /// SNLI: sentences that were not strings (replaced by a single space).
    pub missing_sentences: usize,
    /// Tokens produced by the tokenizer.
    pub tokens: usize,
    /// Tokens dropped because word2vec does not have them.
    pub oov_tokens: usize,
    /// Sequences (SNLI: sentences) with more than L found tokens, cut to L.
    pub truncated: usize,
    /// Sequences (SNLI: sentences) with no found token at all (all padding).
    pub empty: usize,
}

/// A tokenised, embedded-on-demand text dataset.
#[derive(Clone, Debug)]
pub struct TextDataset {
    pub name: String,
    pub split: Split,
    /// L per segment.
    pub seq_len: usize,
    /// 1 (IMDB) or 2 (SNLI: premise, hypothesis).
    pub segments: usize,
    /// N × (segments·L) row indices into `embeddings`, [`PAD`] for padding.
    pub tokens: Vec<u32>,
    pub labels: Vec<i64>,
    pub classes: usize,
    /// The word2vec rows this dataset uses.
    pub embeddings: Embeddings,
    pub report: TextReport,
}

/// One batch: x (B, S, d), y (B,) int64, mask (B, S) bool (true = real token; `input.mask` of conventions §12.1).
pub struct TextBatch {
    pub x: Tensor,
    pub y: Tensor,
    pub mask: Tensor,
}

impl TextBatch {
    /// SNLI: (premise, hypothesis) = x[:, 0:L], x[:, L:2L] (hopfield-attention §3.1).
    pub fn premise_hypothesis(&self) -> (Tensor, Tensor) {
        let l = self.x.size()[1] / 2;
        (self.x.narrow(1, 0, l), self.x.narrow(1, l, l))
    }
}

/// Loads `imdb` or `snli` from `root`, with the word vectors of `w2v` (format detected; only the words the
/// split uses are kept).
pub fn load(name: &str, root: &Path, split: Split, w2v: &Path, opts: &TextOptions) -> Result<TextDataset> {
    let raw = read_raw(name, root, split, opts)?;
    let vocab: HashSet<&str> = raw.segments.iter().flatten().map(String::as_str).collect();
    let emb = word2vec::load_filtered(w2v, word2vec::Format::Auto, opts.embed_dim, |w| vocab.contains(w))?;
    encode(name, split, raw, &emb, opts)
}

/// Loads the train and test splits, parsing the word2vec file once for the words of both (the GoogleNews file is
/// 3.6 GB: this is the call a training run wants).
pub fn load_splits(name: &str, root: &Path, w2v: &Path, opts: &TextOptions) -> Result<(TextDataset, TextDataset)> {
    let train = read_raw(name, root, Split::Train, opts)?;
    let test = read_raw(name, root, Split::Test, opts)?;
    let emb = {
        let vocab: HashSet<&str> = train.segments.iter().chain(&test.segments).flatten().map(String::as_str).collect();
        word2vec::load_filtered(w2v, word2vec::Format::Auto, opts.embed_dim, |w| vocab.contains(w))?
    };
    Ok((encode(name, Split::Train, train, &emb, opts)?, encode(name, Split::Test, test, &emb, opts)?))
}

/// [`load`] with embeddings already in memory.
pub fn load_with_embeddings(name: &str, root: &Path, split: Split, emb: &Embeddings, opts: &TextOptions) -> Result<TextDataset> {
    if let Some(d) = opts.embed_dim {
        if d != emb.dim {
            return Err(Error::Shape(format!("embedding dimension {} differs from the expected d = {d}", emb.dim)));
        }
    }
    let raw = read_raw(name, root, split, opts)?;
    encode(name, split, raw, emb, opts)
}

/// Tokenised examples before the lookup: `segments` token lists per example, flattened.
pub struct RawText {
    pub segments_per_example: usize,
    /// N·segments_per_example token lists.
    pub segments: Vec<Vec<String>>,
    pub labels: Vec<i64>,
    pub classes: usize,
    pub report: TextReport,
}

fn read_raw(name: &str, root: &Path, split: Split, opts: &TextOptions) -> Result<RawText> {
    match name {
        "imdb" => read_imdb(root, split),
        "snli" => {
            let path = snli_path(root, split)?;
            let max = opts.max_rows.unwrap_or(match split {
                Split::Train => 540_000,
                Split::Test => 10_000,
            });
            read_snli(&path, max)
        }
        _ => Err(Error::UnknownDataset(name.into(), "imdb, snli".into())),
    }
}

/// Reads and tokenises the reviews of an `aclImdb` split.
pub fn read_imdb(root: &Path, split: Split) -> Result<RawText> {
    let base = if root.join(split.name()).join("pos").is_dir() { root.to_path_buf() } else { root.join("aclImdb") };
    let mut segments = Vec::new();
    let mut labels = Vec::new();
    let mut report = TextReport::default();
    for (pol, label) in [("neg", 0i64), ("pos", 1i64)] {
        let dir = base.join(split.name()).join(pol);
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::file(&dir, format!("cannot list the aclImdb folder: {e}")))?;
        let mut files: Vec<(u64, PathBuf)> = Vec::new();
        for ent in rd {
            let p = ent.map_err(|e| Error::file(&dir, e))?.path();
            if p.extension().and_then(|e| e.to_str()) != Some("txt") {
                continue;
            }
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let parsed = stem.split_once('_').and_then(|(id, r)| Some((id.parse::<u64>().ok()?, r.parse::<u32>().ok()?)));
            match parsed {
                Some((id, rating)) if (1..=10).contains(&rating) => files.push((id, p)),
                _ => return Err(Error::file(&p, "review file name is not <id>_<rating>.txt with a rating in 1..10")),
            }
        }
        files.sort();
        for (_, p) in files {
            let bytes = std::fs::read(&p).map_err(|e| Error::file(&p, format!("cannot read: {e}")))?;
            let toks = tokenize::tokenize(&clean_imdb(&String::from_utf8_lossy(&bytes)));
            report.tokens += toks.len();
            segments.push(toks);
            labels.push(label);
        }
    }
    Ok(RawText { segments_per_example: 1, segments, labels, classes: 2, report })
}

/// The SNLI jsonl file of a split under `root` or `root/snli_1.0`.
pub fn snli_path(root: &Path, split: Split) -> Result<PathBuf> {
    let name = format!("snli_1.0_{}.jsonl", split.name());
    super::find_file(&[root.to_path_buf(), root.join("snli_1.0")], &name)
}

/// Reads and tokenises an SNLI jsonl file, scanning at most `max_rows` non-blank lines.
pub fn read_snli(path: &Path, max_rows: usize) -> Result<RawText> {
    let bytes = super::read_file(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut segments = Vec::new();
    let mut labels = Vec::new();
    let mut report = TextReport::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()).take(max_rows) {
        report.rows_scanned += 1;
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => {
                report.skipped_malformed += 1;
                continue;
            }
        };
        let label = v.get("gold_label").and_then(|g| g.as_str()).and_then(|g| SNLI_CLASSES.iter().position(|c| *c == g));
        let Some(label) = label else {
            report.skipped_label += 1;
            continue;
        };
        for key in ["sentence1", "sentence2"] {
            let s = match v.get(key).and_then(|s| s.as_str()) {
                Some(s) => clean_snli(s),
                None => {
                    report.missing_sentences += 1;
                    " ".to_string()
                }
            };
            let toks = tokenize::tokenize(&s);
            report.tokens += toks.len();
            segments.push(toks);
        }
        labels.push(label as i64);
    }
    Ok(RawText { segments_per_example: 2, segments, labels, classes: 3, report })
}

/// Looks tokens up, drops the unknown ones, truncates/pads each segment to L and builds the dataset.
pub fn encode(name: &str, split: Split, raw: RawText, emb: &Embeddings, opts: &TextOptions) -> Result<TextDataset> {
    let l = opts.seq_len;
    if l == 0 {
        return Err(Error::Config("seq_len must be at least 1".into()));
    }
    let mut report = raw.report;
    let mut table = Embeddings::from_pairs(emb.dim, std::iter::empty())?;
    let mut tokens = Vec::with_capacity(raw.segments.len() * l);
    for seg in &raw.segments {
        let found: Vec<usize> = seg.iter().filter_map(|t| emb.index_of(t)).collect();
        report.oov_tokens += seg.len() - found.len();
        if found.len() > l {
            report.truncated += 1;
        }
        if found.is_empty() {
            report.empty += 1;
        }
        for &k in found.iter().take(l) {
            let w = &emb.words[k];
            let row = match table.index_of(w) {
                Some(r) => r,
                None => {
                    table.push(w.clone(), emb.row(k));
                    table.len() - 1
                }
            };
            tokens.push(row as u32);
        }
        tokens.extend(std::iter::repeat_n(PAD, l - found.len().min(l)));
    }
    report.examples = raw.labels.len();
    Ok(TextDataset {
        name: name.into(),
        split,
        seq_len: l,
        segments: raw.segments_per_example,
        tokens,
        labels: raw.labels,
        classes: raw.classes,
        embeddings: table,
        report,
    })
}

impl TextDataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// S = segments·L, the sequence axis of x.
    pub fn seq_axis(&self) -> usize {
        self.segments * self.seq_len
    }
    pub fn dim(&self) -> usize {
        self.embeddings.dim
    }
    /// Token rows of example i (length S).
    pub fn example_tokens(&self, i: usize) -> &[u32] {
        let s = self.seq_axis();
        &self.tokens[i * s..(i + 1) * s]
    }

    /// The examples `indices` as a [`TextBatch`] (x in `kind`; f32 → f64 is exact).
    pub fn batch(&self, indices: &[usize], kind: Kind, device: Device) -> TextBatch {
        let (s, d) = (self.seq_axis(), self.dim());
        let mut x = vec![0f32; indices.len() * s * d];
        let mut mask = vec![false; indices.len() * s];
        for (b, &i) in indices.iter().enumerate() {
            for (t, &k) in self.example_tokens(i).iter().enumerate() {
                if k != PAD {
                    mask[b * s + t] = true;
                    x[(b * s + t) * d..(b * s + t + 1) * d].copy_from_slice(self.embeddings.row(k as usize));
                }
            }
        }
        let bsz = indices.len() as i64;
        let y: Vec<i64> = indices.iter().map(|&i| self.labels[i]).collect();
        TextBatch {
            x: Tensor::from_slice(&x).reshape([bsz, s as i64, d as i64]).to_kind(kind).to_device(device),
            y: Tensor::from_slice(&y).to_device(device),
            mask: Tensor::from_slice(&mask).reshape([bsz, s as i64]).to_device(device),
        }
    }

    /// Batches of `batch` examples, the last partial one kept; `shuffle_seed` Some: seeded random order
    /// (training, one seed per epoch), None: file order (test). x is float64 on the CPU unless changed.
    pub fn batches(&self, batch: usize, shuffle_seed: Option<u64>) -> TextBatches<'_> {
        let order = match shuffle_seed {
            Some(s) => Rng::new(s).permutation(self.len()),
            None => (0..self.len()).collect(),
        };
        TextBatches { ds: self, ranges: batch_ranges(self.len(), batch), order, next: 0, kind: Kind::Double, device: Device::Cpu }
    }
}

/// Iterator over the [`TextBatch`]es of a [`TextDataset`].
pub struct TextBatches<'a> {
    ds: &'a TextDataset,
    order: Vec<usize>,
    ranges: Vec<(usize, usize)>,
    next: usize,
    kind: Kind,
    device: Device,
}

impl TextBatches<'_> {
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

impl Iterator for TextBatches<'_> {
    type Item = TextBatch;
    fn next(&mut self) -> Option<TextBatch> {
        let &(a, b) = self.ranges.get(self.next)?;
        self.next += 1;
        Some(self.ds.batch(&self.order[a..b], self.kind, self.device))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.ranges.len() - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for TextBatches<'_> {}
