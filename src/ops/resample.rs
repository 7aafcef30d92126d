//! Bilinear resize (align_corners=True) and channel concatenation. CPU:
//! [`super::cpu::resize_bilinear`], [`super::cpu::concat_channels`]; GPU: `kernels/resample.cu`.

use super::{check_device, check_dtype, check_shape, cpu};
use crate::{DType, Device, Error, Result, Tensor};

/// Bilinear resize of `x [B, H, W, C]` into `y [B, Ho, Wo, C]`, align_corners=True, f32
/// arithmetic.
pub fn resize_bilinear_into(x: &Tensor, y: &mut Tensor) -> Result<()> {
    let (&[b, h, w, c], &[yb, ho, wo, yc]) = (x.shape(), y.shape()) else {
        return Err(Error::Shape(format!("resize_bilinear: expected [B, H, W, C] tensors, got {:?} → {:?}", x.shape(), y.shape())));
    };
    if ho == 0 || wo == 0 || h == 0 || w == 0 || (yb, yc) != (b, c) {
        return Err(Error::Shape(format!("resize_bilinear: cannot resize {:?} to {:?}", x.shape(), y.shape())));
    }
    check_dtype("resize_bilinear", x.dtype(), &[y])?;
    check_device("resize_bilinear", &x.device(), &[y])?;
    match x.device() {
        Device::Cpu => y.set_cpu_f32(&cpu::resize_bilinear(&x.cpu_f32()?, b, h, w, c, ho, wo)),
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
            let f = super::kernel("resize_bilinear", x.dtype(), &k.resize_bilinear_f32, &k.resize_bilinear_bf16)?;
            dev.launch_1d(f, y.numel(), &p)
        }
    }
}

/// [`resize_bilinear_into`] as a new tensor `[B, ho, wo, C]`.
pub fn resize_bilinear(x: &Tensor, ho: usize, wo: usize) -> Result<Tensor> {
    let &[b, _, _, c] = x.shape() else {
        return Err(Error::Shape(format!("resize_bilinear: expected [B, H, W, C], got {:?}", x.shape())));
    };
    let mut y = Tensor::empty(&[b, ho, wo, c], x.dtype(), &x.device())?;
    resize_bilinear_into(x, &mut y)?;
    Ok(y)
}

fn concat_shape(a: &Tensor, b: &Tensor) -> Result<Vec<usize>> {
    let (ra, rb) = (&a.shape()[..a.rank().saturating_sub(1)], &b.shape()[..b.rank().saturating_sub(1)]);
    if a.rank() == 0 || b.rank() == 0 || ra != rb {
        return Err(Error::Shape(format!("concat_channels: {:?} and {:?} differ before the last axis", a.shape(), b.shape())));
    }
    let mut shape = a.shape().to_vec();
    *shape.last_mut().expect("rank ≥ 1") += b.dim(-1);
    Ok(shape)
}

/// `a [… , Ca]` and `b [… , Cb]` with equal leading dims → `y [… , Ca + Cb]` (a first). All
/// three share a dtype, except that b may be f32 where a and y are bf16 (an f32 residual
/// stream's skip, converted as it is copied: a cast and a concatenation in one pass).
pub fn concat_channels_into(a: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
    let shape = concat_shape(a, b)?;
    check_shape("concat_channels", "output", y, &shape)?;
    let mixed = a.dtype() == DType::BF16 && b.dtype() == DType::F32;
    check_dtype("concat_channels", a.dtype(), &[y])?;
    if !mixed {
        check_dtype("concat_channels", a.dtype(), &[b])?;
    }
    check_device("concat_channels", &a.device(), &[b, y])?;
    let (ca, cb) = (a.dim(-1), b.dim(-1));
    match a.device() {
        Device::Cpu => y.set_cpu_f32(&cpu::concat_channels(&a.cpu_f32()?, &b.cpu_f32()?, ca, cb)),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let p = crate::cuda::params::ConcatParams {
                a: a.cuda_ptr()? as *const _,
                b: b.cuda_ptr()? as *const _,
                y: y.cuda_ptr()? as *mut _,
                rows: (a.numel() / ca.max(1)) as i64,
                Ca: ca as i32,
                Cb: cb as i32,
            };
            let f = if mixed { &k.concat_bf16_f32 } else { super::kernel("concat_channels", a.dtype(), &k.concat_f32, &k.concat_bf16)? };
            dev.launch_vec8(f, y.numel(), &p)
        }
    }
}

/// Columns `[col, col + width)` of the last axis of `x [..., C]` as a new `[..., width]` tensor
/// (one part of a packed projection, for a kernel that needs it on its own).
pub fn columns(x: &Tensor, col: usize, width: usize) -> Result<Tensor> {
    let c = x.shape().last().copied().ok_or_else(|| Error::Shape("columns: scalar input".into()))?;
    if col + width > c {
        return Err(Error::Shape(format!("columns: {col}..{} of {:?}", col + width, x.shape())));
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank ≥ 1") = width;
    let mut y = Tensor::empty(&shape, x.dtype(), &x.device())?;
    match x.device() {
        Device::Cpu => y.set_cpu_f32(&cpu::columns(&x.cpu_f32()?, c, col, width))?,
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let p = crate::cuda::params::ColumnsParams {
                x: x.cuda_ptr()? as *const _,
                y: y.cuda_ptr()? as *mut _,
                rows: (x.numel() / c.max(1)) as i64,
                C: c as i32,
                col: col as i32,
                width: width as i32,
            };
            let f = super::kernel("columns", x.dtype(), &k.columns_f32, &k.columns_bf16)?;
            if y.numel() > 0 {
                dev.launch_1d(f, y.numel(), &p)?;
            }
        }
    }
    Ok(y)
}

/// `a [B, La, C]` and `b [B, Lb, C]` → `[B, La + Lb, C]` (tokens of a, then of b, per sample).
pub fn concat_tokens(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (&[ba, la, c], &[bb, lb, cb]) = (a.shape(), b.shape()) else {
        return Err(Error::Shape(format!("concat_tokens: expected [B, L, C] tensors, got {:?} and {:?}", a.shape(), b.shape())));
    };
    if ba != bb || c != cb {
        return Err(Error::Shape(format!("concat_tokens: {:?} and {:?} do not match", a.shape(), b.shape())));
    }
    concat_channels(&a.view(&[ba, la * c])?, &b.view(&[ba, lb * c])?)?.reshape(&[ba, la + lb, c])
}

/// [`concat_channels_into`] as a new tensor.
pub fn concat_channels(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let mut y = Tensor::empty(&concat_shape(a, b)?, a.dtype(), &a.device())?;
    concat_channels_into(a, b, &mut y)?;
    Ok(y)
}
