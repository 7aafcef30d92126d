//! Operations. Each public function checks its arguments, then dispatches to the CPU
//! reference (`ops::cpu`, the spec in code) or to the CUDA launcher beside it.

pub mod cpu;
pub mod linear;
pub mod shapes;

pub use linear::{linear, linear_into};

use crate::{Device, Error, Result, Tensor};

/// Checks that every tensor lives on `device`.
pub(crate) fn check_device(op: &str, device: &Device, tensors: &[&Tensor]) -> Result<()> {
    for t in tensors {
        if !t.device().same(device) {
            return Err(Error::Shape(format!(
                "{op}: tensors on different devices ({} and {})",
                device.describe(),
                t.device().describe()
            )));
        }
    }
    Ok(())
}

/// Copies `src` into `dst` converting the dtype (shapes must have equal element counts).
pub fn cast_into(src: &Tensor, dst: &mut Tensor) -> Result<()> {
    if src.numel() != dst.numel() {
        return Err(Error::Shape(format!(
            "cast: {:?} into {:?}",
            src.shape(),
            dst.shape()
        )));
    }
    let device = src.device();
    check_device("cast", &device, &[dst])?;
    match &device {
        Device::Cpu => {
            let v = src.cpu_f32()?.into_owned();
            dst.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let p = crate::cuda::params::CastParams {
                src: src.cuda_ptr()? as *const _,
                dst: dst.cuda_ptr()? as *mut _,
                n: src.numel() as i64,
                src_dtype: src.dtype().code(),
                dst_dtype: dst.dtype().code(),
            };
            dev.launch_1d(&dev.kernels().cast, src.numel(), &p)
        }
    }
}
