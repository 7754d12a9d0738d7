//! The text datasets of the attention presets as a [`DataSource`] (`hopfield-attention.md` §10): `imdb` from an
//! `aclImdb` folder, `snli` from `snli_1.0_{train,test}.jsonl`, tokens embedded with the word2vec file named by
//! `train.embeddings` (binary or text, optionally gzip; only the words of both splits are kept).
//!
//! Configuration: `train.dataset` = `imdb` | `snli`; `train.data_root` (default `data/imdb`, `data/snli`);
//! `train.embeddings` (required); `train.train_limit` / `train.test_limit` (first n examples). The sequence
//! length and embedding dimension are the model's (`seq_len`, `embed_dim`): a word2vec file of another
//! dimension is an error naming both, longer sequences are cut to L, and malformed SNLI lines are skipped —
//! both counted in [`DataSource::report`] (`data_report.json` in the run folder).
//!
//! Batches hold x (B, S, d) with S = L (IMDB) or 2L (SNLI, x = [P; H]) as the presets expect (one input tensor;
//! padding rows are exactly zero), y (B,) int64. x is float32 (the word2vec values, exact); the trainer casts it
//! to the run dtype. The tokenizer is the simplified built-in one, not reference-compatible
//! ([`crate::data::text::TOKENIZER_NOTE`]).
use super::data::{Batches, DataSource};
use crate::config::RunConfig;
use crate::data::text::{self, TextDataset, TextOptions, TextReport};
use crate::data::{epoch_seed, Split};
use crate::{Error, Result};
use std::path::PathBuf;
use tch::Kind;

/// The dataset names this source serves.
pub const TEXT_DATASETS: [&str; 2] = ["imdb", "snli"];

pub struct TextSource {
    pub train: TextDataset,
    pub test: TextDataset,
    pub seed: u64,
    /// The word2vec file the vectors came from.
    pub embeddings: PathBuf,
}

/// Keeps the first n examples (0 = all).
pub fn limit(mut ds: TextDataset, n: usize) -> TextDataset {
    if n > 0 && n < ds.len() {
        let s = ds.seq_axis();
        ds.tokens.truncate(n * s);
        ds.labels.truncate(n);
        ds.report.examples = n;
    }
    ds
}

/// Opens `train.dataset` (`imdb` or `snli`) for the model of `cfg` (L = `seq_len`, d = `embed_dim`).
pub fn open(cfg: &RunConfig) -> Result<TextSource> {
    let t = &cfg.train;
    let name = t.dataset.as_str();
    if !TEXT_DATASETS.contains(&name) {
        return Err(Error::Config(format!("train.dataset '{name}' is not a text dataset ({})", TEXT_DATASETS.join(", "))));
    }
    let root = t.data_root.as_ref().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("data").join(name));
    let w2v = t
        .embeddings
        .as_ref()
        .map(PathBuf::from)
        .ok_or_else(|| Error::Config(format!("train.embeddings (a word2vec file) is required for the text dataset {name}, e.g. --set train.embeddings=\"vectors.bin\"")))?;
    let (l, d) = match (cfg.seq_len, cfg.embed_dim) {
        (Some(l), Some(d)) if l >= 1 && d >= 1 => (l as usize, d as usize),
        _ => return Err(Error::Config(format!("preset {}: the text dataset {name} needs seq_len and embed_dim ≥ 1", cfg.preset))),
    };
    let opts = TextOptions { seq_len: l, embed_dim: Some(d), max_rows: None };
    let (train, test) = text::load_splits(name, &root, &w2v, &opts).map_err(|e| match e {
        Error::File { path, msg } if msg.contains("embedding dimension") => Error::Shape(format!(
            "{}: {msg}: preset {} has embed_dim = {d}; use a word2vec file of dimension {d} or set embed_dim to the file's",
            path.display(),
            cfg.preset
        )),
        e => e,
    })?;
    let (train, test) = (limit(train, t.train_limit), limit(test, t.test_limit));
    for ds in [&train, &test] {
        if ds.is_empty() {
            return Err(Error::file(&root, format!("the {} split of {name} has no examples", ds.split.name())));
        }
    }
    Ok(TextSource { train, test, seed: cfg.seed, embeddings: w2v })
}

fn report_json(r: &TextReport) -> serde_json::Value {
    serde_json::to_value(r).expect("report serialises")
}

fn counts(r: &TextReport) -> String {
    let mut s = format!("{} examples, {} truncated to L", r.examples, r.truncated);
    if r.rows_scanned > 0 {
        s += &format!(", {} malformed lines skipped, {} rows without a gold label skipped", r.skipped_malformed, r.skipped_label);
    }
    s + &format!(", {} of {} tokens not in word2vec, {} all-padding", r.oov_tokens, r.tokens, r.empty)
}

impl DataSource for TextSource {
    fn name(&self) -> String {
        self.train.name.clone()
    }
    fn input_shape(&self) -> Vec<i64> {
        vec![self.train.seq_axis() as i64, self.train.dim() as i64]
    }
    fn classes(&self) -> i64 {
        self.train.classes as i64
    }
    fn train_epoch(&mut self, epoch: usize, batch: i64) -> Result<Batches<'_>> {
        let it = self.train.batches(batch as usize, Some(epoch_seed(self.seed, epoch as u64))).kind(Kind::Float);
        Ok(Box::new(it.map(|b| Ok((b.x, b.y)))))
    }
    fn test(&mut self, batch: i64) -> Result<Batches<'_>> {
        Ok(Box::new(self.test.batches(batch as usize, None).kind(Kind::Float).map(|b| Ok((b.x, b.y)))))
    }
    fn report(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "dataset": self.train.name,
            "embeddings": self.embeddings.display().to_string(),
            "seq_len": self.train.seq_len,
            "embed_dim": self.train.dim(),
            "tokenizer": text::TOKENIZER_NOTE,
            "train": report_json(&self.train.report),
            "test": report_json(&self.test.report),
        }))
    }
    fn report_line(&self) -> Option<String> {
        Some(format!("{} train: {}; test: {}", self.train.name, counts(&self.train.report), counts(&self.test.report)))
    }
}

/// The report of a split (for tests and callers that open the source directly).
pub fn split_report(src: &TextSource, split: Split) -> &TextReport {
    match split {
        Split::Train => &src.train.report,
        Split::Test => &src.test.report,
    }
}
