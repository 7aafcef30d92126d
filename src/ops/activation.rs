//! Activations: the erf GELU (standalone, or fused after a bias) and SiLU. CPU:
//! [`super::cpu::gelu`], [`super::cpu::silu`]; GPU: `act_*` in `kernels/elementwise.cu`, whose
//! bf16 GELU takes erf to within 1.5e-7 (kernels/common.cuh `gelu_bf16_out`: below bf16's
//! resolution, 17 instructions instead of erff's 28); f32 uses the exact erff.

use super::{check_device, check_dtype, check_numel, check_shape, cpu};
use crate::{Device, Result, Tensor};

#[derive(Clone, Copy)]
enum Act {
    Gelu,
    Silu,
}

fn act_into(x: &Tensor, bias: Option<&Tensor>, act: Act, y: &mut Tensor) -> Result<()> {
    let op = match act {
        Act::Gelu => "gelu",
        Act::Silu => "silu",
    };
    check_shape(op, "output", y, x.shape())?;
    check_dtype(op, x.dtype(), &[y])?;
    check_device(op, &x.device(), &[y])?;
    let c = x.shape().last().copied().unwrap_or(1);
    if let Some(b) = bias {
        check_numel(op, "bias", b, c)?;
        check_dtype(op, x.dtype(), &[b])?;
        check_device(op, &x.device(), &[b])?;
    }
    match x.device() {
        Device::Cpu => {
            let b = bias.map(|b| b.cpu_f32()).transpose()?;
            let f = match act {
                Act::Gelu => cpu::gelu,
                Act::Silu => cpu::silu,
            };
            let v: Vec<f32> = x.cpu_f32()?.iter().enumerate().map(|(i, &v)| f(v + b.as_ref().map_or(0.0, |b| b[i % c]))).collect();
            y.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let code = match act {
                Act::Gelu => crate::cuda::params::CASCADE_ACT_GELU,
                Act::Silu => crate::cuda::params::CASCADE_ACT_SILU,
            } as i32;
            let p = crate::cuda::params::ActParams {
                x: x.cuda_ptr()? as *const _,
                y: y.cuda_ptr()? as *mut _,
                bias: super::dptr(bias)?,
                n: x.numel() as i64,
                C: c as i32,
                act: code,
            };
            dev.launch_vec8(super::kernel(op, x.dtype(), &k.act_f32, &k.act_bf16)?, x.numel(), &p)
        }
    }
}

/// `y = gelu(x)`, the erf form.
pub fn gelu_into(x: &Tensor, y: &mut Tensor) -> Result<()> {
    act_into(x, None, Act::Gelu, y)
}

/// `y = gelu(x + bias)`, the bias broadcast over the last axis.
pub fn bias_gelu_into(x: &Tensor, bias: &Tensor, y: &mut Tensor) -> Result<()> {
    act_into(x, Some(bias), Act::Gelu, y)
}

/// `y = silu(x)`.
pub fn silu_into(x: &Tensor, y: &mut Tensor) -> Result<()> {
    act_into(x, None, Act::Silu, y)
}

/// `x ← gelu(x)` in place (each element is read and written by the same thread): no second
/// buffer the size of a 4×-wide MLP activation.
pub fn gelu_assign(x: &mut Tensor) -> Result<()> {
    act_into(&x.view(x.shape())?, None, Act::Gelu, x)
}

/// `gelu(x)` as a new tensor.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    let mut y = Tensor::empty(x.shape(), x.dtype(), &x.device())?;
    gelu_into(x, &mut y)?;
    Ok(y)
}

/// `silu(x)` as a new tensor.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    let mut y = Tensor::empty(x.shape(), x.dtype(), &x.device())?;
    silu_into(x, &mut y)?;
    Ok(y)
}
