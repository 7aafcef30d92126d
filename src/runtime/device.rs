//! Where tensors live and ops run.

#[cfg(feature = "cuda")]
use std::sync::Arc;

use crate::{Error, Result};

/// A compute device: the CPU reference backend, or one CUDA GPU.
#[derive(Clone, Debug)]
pub enum Device {
    /// The CPU: plain reference implementations, f32 arithmetic.
    Cpu,
    /// A CUDA GPU (only with the `cuda` feature).
    #[cfg(feature = "cuda")]
    Cuda(Arc<crate::cuda::CudaDevice>),
}

impl Device {
    /// Opens CUDA GPU `ordinal`. Without a driver, without a GPU, or in a build without the
    /// `cuda` feature, this returns [`Error::NoCuda`] saying which; it never panics.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        #[cfg(feature = "cuda")]
        {
            crate::cuda::CudaDevice::new(ordinal).map(Device::Cuda)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            Err(Error::NoCuda("this build of cascade has no CUDA backend: rebuild with `--features cuda` (see README)".into()))
        }
    }

    /// Parses "cpu", "cuda" (GPU 0) or "cuda:N" and opens the device.
    pub fn parse(s: &str) -> Result<Device> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Device::cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Device::cuda(n),
                _ => Err(Error::Msg(format!("unknown device '{s}': use cpu, cuda or cuda:N"))),
            },
        }
    }

    /// True for the CPU.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// A short description, e.g. "cpu" or "cuda:0 (NVIDIA H200)".
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => format!("cuda:{} ({})", d.ordinal(), d.name()),
        }
    }

    /// Waits for queued work (no-op on the CPU).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => d.synchronize(),
        }
    }

    /// A marker after the work queued so far: [`Marker::wait`] returns once that work is done,
    /// without waiting for anything queued later (on the CPU, work is done when queued).
    pub fn marker(&self) -> Result<Marker> {
        match self {
            Device::Cpu => Ok(Marker {
                #[cfg(feature = "cuda")]
                event: None,
            }),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => d.marker().map(|e| Marker { event: Some(e) }),
        }
    }

    /// The CUDA device, or an error naming `what` needs one.
    #[cfg(feature = "cuda")]
    pub fn as_cuda(&self, what: &str) -> Result<&Arc<crate::cuda::CudaDevice>> {
        match self {
            Device::Cuda(d) => Ok(d),
            Device::Cpu => Err(Error::Shape(format!("{what} needs a CUDA device"))),
        }
    }

    /// Keeps the GPU's choices made by timing in the file at `path` and reuses the ones it
    /// holds (see [`crate::cuda::CudaDevice::set_tuning_file`]); None stops using a file. The
    /// CPU times nothing: there it does nothing.
    pub fn set_tuning_file(&self, path: Option<&std::path::Path>) -> Result<()> {
        match self {
            Device::Cpu => {
                let _ = path;
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => d.set_tuning_file(path),
        }
    }

    /// Same physical device.
    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            #[cfg(feature = "cuda")]
            (Device::Cuda(a), Device::Cuda(b)) => Arc::ptr_eq(a, b),
            #[cfg(feature = "cuda")]
            _ => false,
        }
    }
}

/// A point in a device's queue of work (a CUDA event on a GPU); see [`Device::marker`].
pub struct Marker {
    #[cfg(feature = "cuda")]
    event: Option<cudarc::driver::CudaEvent>,
}

impl Marker {
    /// Blocks until the work queued before the marker has finished; surfaces its errors.
    pub fn wait(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(e) = &self.event {
            return e.synchronize().map_err(|e| crate::cuda::driver_err("waiting for queued work", e));
        }
        Ok(())
    }
}
