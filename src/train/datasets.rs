//! Opens the dataset a training configuration names (`train.dataset`, `train.data_root`, `train.augment`,
//! `train.train_limit`, `train.test_limit`) as a [`DataSource`], using the loaders of [`crate::data`].
use super::data::{Batches, DataSource};
use crate::config::RunConfig;
use crate::data::augment::{Augment, Flavour};
use crate::data::images::{self, ImageDataset};
use crate::data::{epoch_seed, Split};
use crate::Result;
use std::path::PathBuf;
use tch::{Kind, Tensor};

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

/// Opens `train.dataset`: an image dataset of [`crate::data::images`], or `synthetic` (inputs drawn uniformly on
/// the model's synthetic input range, labels uniform: for timing, not for learning).
pub fn open(cfg: &RunConfig, model: &crate::model::Model) -> Result<Box<dyn DataSource>> {
    let t = &cfg.train;
    if super::text_datasets::TEXT_DATASETS.contains(&t.dataset.as_str()) {
        return Ok(Box::new(super::text_datasets::open(cfg)?));
    }
    if t.dataset == "synthetic" {
        let n_train = if t.train_limit > 0 { t.train_limit } else { 64 } as i64;
        let n_test = if t.test_limit > 0 { t.test_limit } else { 32 } as i64;
        let draw = |n: i64, seed: i64| {
            let _rng = crate::tensor_util::rng_lock();
            tch::manual_seed(seed);
            let mut shape = vec![n];
            shape.extend(&model.input_shapes[0]);
            let (lo, hi) = model.input_range;
            let x = Tensor::rand(&shape[..], (Kind::Double, tch::Device::Cpu)) * (hi - lo) + lo;
            (x, Tensor::randint(model.classes(), [n], (Kind::Int64, tch::Device::Cpu)))
        };
        return Ok(Box::new(super::data::TensorData { name: "synthetic".into(), train: draw(n_train, (cfg.seed as i64).wrapping_add(11)), test: draw(n_test, (cfg.seed as i64).wrapping_add(12)), classes: model.classes(), seed: cfg.seed }));
    }
    let root = t.data_root.as_ref().map(PathBuf::from).unwrap_or_else(|| default_root(&t.dataset));
    let opts = images::ImageOptions { pad: t.pad, ..Default::default() };
    let train = limit(images::load_with(&t.dataset, &root, Split::Train, &opts)?, t.train_limit);
    let test = limit(images::load_with(&t.dataset, &root, Split::Test, &opts)?, t.test_limit);
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
