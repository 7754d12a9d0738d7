//! One error type; every variant maps to exit code 2 ("the run could not be done"), never a panic.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("unknown preset '{0}' (known: {1}){hint}", hint = did_you_mean(.0, .1))]
    UnknownPreset(String, String),
    #[error("--dataset: unknown dataset '{0}' (known: {1}){hint}", hint = did_you_mean(.0, .1))]
    UnknownDataset(String, String),
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("missing key: {0}")]
    MissingKey(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("non-finite value: {0}")]
    NonFinite(String),
    #[error("unsupported estimator for this model: {0}")]
    UnsupportedEstimator(String),
    #[error("unsupported dtype: {0}")]
    UnsupportedDtype(String),
    #[error("device: {0}")]
    Device(String),
    #[error("fixed point not reached: {0}")]
    FixedPoint(String),
    #[error("torch: {0}")]
    Torch(String),
    #[error("report: {0}")]
    Report(String),
}

/// "; did you mean 'x'?" for the closest of a comma-separated list of known names, or nothing.
fn did_you_mean(name: &str, known: &str) -> String {
    crate::config::closest(name, known.split(", ")).map(|c| format!("; did you mean '{c}'?")).unwrap_or_default()
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        // libtorch messages carry a C++ backtrace after the first line; keep the first line only.
        let s = e.to_string();
        Error::Torch(s.lines().next().unwrap_or("").to_string())
    }
}

impl From<polars::error::PolarsError> for Error {
    fn from(e: polars::error::PolarsError) -> Self {
        Error::Report(e.to_string())
    }
}

impl Error {
    pub fn file(path: impl Into<PathBuf>, msg: impl ToString) -> Self {
        Error::File { path: path.into(), msg: msg.to_string() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
