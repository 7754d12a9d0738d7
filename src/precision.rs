//! Run dtype and device (`--dtype f64|f32`, `--device cpu|cuda|auto`). float64 is the default for checks.
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F64,
    F32,
}

impl Dtype {
    pub fn kind(self) -> Kind {
        match self {
            Dtype::F64 => Kind::Double,
            Dtype::F32 => Kind::Float,
        }
    }
    /// Machine epsilon ε_mach (conventions §11.4).
    pub fn eps(self) -> f64 {
        match self {
            Dtype::F64 => f64::EPSILON,
            Dtype::F32 => f32::EPSILON as f64,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F64 => "f64",
            Dtype::F32 => "f32",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f64" | "float64" | "double" => Ok(Dtype::F64),
            "f32" | "float32" | "float" => Ok(Dtype::F32),
            _ => Err(Error::Config(format!("dtype '{s}' is not one of f64, f32"))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda,
    Auto,
}

impl DeviceChoice {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            "auto" => Ok(DeviceChoice::Auto),
            _ => Err(Error::Config(format!("device '{s}' is not one of cpu, cuda, auto"))),
        }
    }
    /// Resolves to a libtorch device; `cuda` without CUDA is an error, `auto` falls back to CPU.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda => {
                if tch::Cuda::is_available() {
                    Ok(Device::Cuda(0))
                } else {
                    Err(Error::Device("--device cuda requested but CUDA is not available to libtorch".into()))
                }
            }
            DeviceChoice::Auto => {
                let cuda = tch::Cuda::is_available();
                // Says which device it picked (stderr, once per instance).
                if cuda {
                    eprintln!("[epcheck] --device auto: CUDA is available ({} device(s)), using cuda:0", tch::Cuda::device_count());
                } else {
                    eprintln!("[epcheck] --device auto: CUDA is not available to libtorch, using cpu");
                }
                Ok(if cuda { Device::Cuda(0) } else { Device::Cpu })
            }
        }
    }
}

/// Where and in which dtype tensors of a run live.
#[derive(Clone, Copy, Debug)]
pub struct Precision {
    pub dtype: Dtype,
    pub device: Device,
}

impl Precision {
    pub fn new(dtype: Dtype, device: Device) -> Self {
        // conventions §11.1: TF32 off, cuDNN autotuner off, deterministic algorithms requested.
        tch::Cuda::cudnn_set_benchmark(false);
        Precision { dtype, device }
    }
    pub fn cpu_f64() -> Self {
        Precision { dtype: Dtype::F64, device: Device::Cpu }
    }
    pub fn opts(&self) -> (Kind, Device) {
        (self.dtype.kind(), self.device)
    }
    pub fn device_name(&self) -> String {
        match self.device {
            Device::Cpu => "cpu".into(),
            Device::Cuda(i) => format!("cuda:{i}"),
            d => format!("{d:?}"),
        }
    }
}
