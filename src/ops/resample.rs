//! Bilinear resize (align_corners=True) and channel concatenation. CPU:
//! [`super::cpu::resize_bilinear`], [`super::cpu::concat_channels`]; GPU: `kernels/resample.cu`.

use super::{check_device, check_dtype, cpu};
use crate::{Device, Error, Result, Tensor};

/// Bilinear resize of `x [B, H, W, C]` to `[B, ho, wo, C]`, align_corners=True, f32 arithmetic.
pub fn resize_bilinear(x: &Tensor, ho: usize, wo: usize) -> Result<Tensor> {
    let &[b, h, w, c] = x.shape() else {
        return Err(Error::Shape(format!(
            "resize_bilinear: expected [B, H, W, C], got {:?}",
            x.shape()
        )));
    };
    if ho == 0 || wo == 0 || h == 0 || w == 0 {
        return Err(Error::Shape(format!(
            "resize_bilinear: empty size {h}×{w} → {ho}×{wo}"
        )));
    }
    let mut y = Tensor::empty(&[b, ho, wo, c], x.dtype(), &x.device())?;
    match x.device() {
        Device::Cpu => y.set_cpu_f32(&cpu::resize_bilinear(&x.cpu_f32()?, b, h, w, c, ho, wo))?,
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let p = crate::cuda::params::ResizeParams {
                x: x.cuda_ptr()? as *const _,
                y: y.cuda_ptr()? as *mut _,
                B: b as i32,
                H: h as i32,
                W: w as i32,
                C: c as i32,
                Ho: ho as i32,
                Wo: wo as i32,
            };
            dev.launch_1d(
                super::kernel(
                    "resize_bilinear",
                    x.dtype(),
                    &k.resize_bilinear_f32,
                    &k.resize_bilinear_bf16,
                )?,
                y.numel(),
                &p,
            )?;
        }
    }
    Ok(y)
}

/// `[…, Ca]` and `[…, Cb]` with equal leading dims → `[…, Ca + Cb]` (a first).
pub fn concat_channels(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ra, rb) = (
        &a.shape()[..a.rank().saturating_sub(1)],
        &b.shape()[..b.rank().saturating_sub(1)],
    );
    if a.rank() == 0 || ra != rb {
        return Err(Error::Shape(format!(
            "concat_channels: {:?} and {:?} differ before the last axis",
            a.shape(),
            b.shape()
        )));
    }
    check_dtype("concat_channels", a.dtype(), &[b])?;
    check_device("concat_channels", &a.device(), &[b])?;
    let (ca, cb) = (a.dim(-1), b.dim(-1));
    let mut shape = a.shape().to_vec();
    *shape.last_mut().unwrap() = ca + cb;
    let mut y = Tensor::empty(&shape, a.dtype(), &a.device())?;
    match a.device() {
        Device::Cpu => {
            y.set_cpu_f32(&cpu::concat_channels(&a.cpu_f32()?, &b.cpu_f32()?, ca, cb))?
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let rows = a.numel() / ca.max(1);
            let p = crate::cuda::params::ConcatParams {
                a: a.cuda_ptr()? as *const _,
                b: b.cuda_ptr()? as *const _,
                y: y.cuda_ptr()? as *mut _,
                rows: rows as i64,
                Ca: ca as i32,
                Cb: cb as i32,
            };
            dev.launch_1d(
                super::kernel("concat_channels", a.dtype(), &k.concat_f32, &k.concat_bf16)?,
                y.numel(),
                &p,
            )?;
        }
    }
    Ok(y)
}
