//! Opens the dataset a training configuration names (`train.dataset`, `train.data_root`, `train.augment`,
//! `train.train_limit`, `train.test_limit`) as a [`DataSource`], using the loaders of [`crate::data`].
use super::data::{Batches, DataSource};
use crate::config::RunConfig;
use crate::data::augment::{Augment, Flavour};
use crate::data::images::{self, ImageDataset};
use crate::data::{epoch_seed, Split};
use crate::Result;
use std::path::PathBuf;
use tch::Kind;

pub struct ImageSource {
    pub train: ImageDataset,
    pub test: ImageDataset,
    pub augment: Option<Augment>,
    pub seed: u64,
}

/// The default folder of a dataset: the shipped fixture for `digits`, `data/<name>` otherwise.
pub fn default_root(name: &str) -> PathBuf {
    match name {
        "digits" => PathBuf::from("fixtures/data/digits"),
        other => PathBuf::from("data").join(other),
    }
}

fn limit(mut ds: ImageDataset, n: usize) -> ImageDataset {
    if n > 0 && n < ds.len() {
        let per: usize = ds.shape.iter().product();
        ds.images.truncate(n * per);
        ds.labels.truncate(n);
    }
    ds
}

pub fn open(cfg: &RunConfig) -> Result<Box<dyn DataSource>> {
    let t = &cfg.train;
    if super::text_datasets::TEXT_DATASETS.contains(&t.dataset.as_str()) {
        return Ok(Box::new(super::text_datasets::open(cfg)?));
    }
    let root = t.data_root.as_ref().map(PathBuf::from).unwrap_or_else(|| default_root(&t.dataset));
    let train = limit(images::load(&t.dataset, &root, Split::Train)?, t.train_limit);
    let test = limit(images::load(&t.dataset, &root, Split::Test)?, t.test_limit);
    let augment = match t.augment.as_str() {
        "none" => None,
        "flip_crop" => Some(Augment::preset(&t.dataset, Flavour::Rain)?),
        _ => Some(Augment::preset(&t.dataset, Flavour::BrainSeek)?),
    };
    Ok(Box::new(ImageSource { train, test, augment, seed: cfg.seed }))
}

impl DataSource for ImageSource {
    fn name(&self) -> String {
        self.train.name.clone()
    }
    fn input_shape(&self) -> Vec<i64> {
        self.train.shape.iter().map(|&v| v as i64).collect()
    }
    fn classes(&self) -> i64 {
        self.train.classes as i64
    }
    fn train_epoch(&mut self, epoch: usize, batch: i64) -> Result<Batches<'_>> {
        let it = self.train.batches(batch as usize, Some(epoch_seed(self.seed, epoch as u64)), self.augment.as_ref()).kind(Kind::Double);
        Ok(Box::new(it.map(Ok)))
    }
    fn test(&mut self, batch: i64) -> Result<Batches<'_>> {
        Ok(Box::new(self.test.batches(batch as usize, None, None).kind(Kind::Double).map(Ok)))
    }
}
