//! What training reads: a source of shuffled (and augmented) training batches per epoch and of test batches in
//! order, as float inputs (B, …) already normalised and integer labels (B,). The dataset loaders of
//! [`crate::data`] provide them; [`TensorData`] holds a dataset in memory (tests, synthetic tasks).
use crate::model::Model;
use crate::{Error, Result};
use tch::{Kind, Tensor};

pub type Batches<'a> = Box<dyn Iterator<Item = Result<(Tensor, Tensor)>> + 'a>;

pub trait DataSource {
    fn name(&self) -> String;
    /// Per-example input shape.
    fn input_shape(&self) -> Vec<i64>;
    fn classes(&self) -> i64;
    /// The training batches of epoch `epoch` (reshuffled every epoch from the seed; last partial batch kept).
    fn train_epoch(&mut self, epoch: usize, batch: i64) -> Result<Batches<'_>>;
    /// The test batches, in order.
    fn test(&mut self, batch: i64) -> Result<Batches<'_>>;

    /// What the data pipeline dropped, skipped and truncated (text datasets), written to the run folder as
    /// `data_report.json`; None when there is nothing to report.
    fn report(&self) -> Option<serde_json::Value> {
        None
    }
    /// A one-line summary of [`DataSource::report`] for the terminal.
    fn report_line(&self) -> Option<String> {
        None
    }

    /// Images of the wrong size or channel count for a preset, or more classes than the model has outputs, are
    /// errors that name both shapes.
    fn check_model(&self, m: &Model) -> Result<()> {
        let want = &m.input_shapes[0];
        let got = self.input_shape();
        // A dense (1-D) input layer takes images flattened (C·H·W values, in C, H, W order): `train::to_batch`.
        let flat = want.len() == 1 && got.iter().product::<i64>() == want[0];
        if &got != want && !flat {
            return Err(Error::Shape(format!("dataset {} has inputs of shape {got:?}, but preset {} expects {want:?} (set height / in_channels to match)", self.name(), m.preset)));
        }
        if self.classes() > m.classes() {
            return Err(Error::Shape(format!("dataset {} has {} classes, the model has {} outputs (set classes)", self.name(), self.classes(), m.classes())));
        }
        Ok(())
    }
}

/// A dataset held in memory: train and test inputs (N, …) and labels (N,).
pub struct TensorData {
    pub name: String,
    pub train: (Tensor, Tensor),
    pub test: (Tensor, Tensor),
    pub classes: i64,
    pub seed: u64,
}

fn batches(x: &Tensor, y: &Tensor, order: Option<Tensor>, b: i64) -> Batches<'static> {
    let n = x.size()[0];
    let (x, y) = match order {
        Some(o) => (x.index_select(0, &o), y.index_select(0, &o)),
        None => (x.shallow_clone(), y.shallow_clone()),
    };
    Box::new((0..n).step_by(b.max(1) as usize).map(move |i| {
        let len = b.min(n - i);
        Ok((x.narrow(0, i, len), y.narrow(0, i, len)))
    }))
}

impl DataSource for TensorData {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn input_shape(&self) -> Vec<i64> {
        self.train.0.size()[1..].to_vec()
    }
    fn classes(&self) -> i64 {
        self.classes
    }
    fn train_epoch(&mut self, epoch: usize, batch: i64) -> Result<Batches<'_>> {
        let order = crate::tensor_util::seeded((self.seed as i64).wrapping_add(epoch as i64), || Tensor::randperm(self.train.0.size()[0], (Kind::Int64, tch::Device::Cpu)));
        Ok(batches(&self.train.0, &self.train.1, Some(order), batch))
    }
    fn test(&mut self, batch: i64) -> Result<Batches<'_>> {
        Ok(batches(&self.test.0, &self.test.1, None, batch))
    }
}
