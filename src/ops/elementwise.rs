//! Element-wise ops: casts, residual add, TimestepBlock modulation, classifier-free guidance
//! and the sampler update. CPU: [`super::cpu`]; GPU: `kernels/elementwise.cu`.

use super::{check_device, check_dtype, check_numel, check_shape, cpu};
use crate::{DType, Device, Error, Result, Tensor};

/// Copies `src` into `dst` converting the dtype (equal element counts).
pub fn cast_into(src: &Tensor, dst: &mut Tensor) -> Result<()> {
    check_numel("cast", "destination", dst, src.numel())?;
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

/// `a + b` as a new tensor.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let mut y = Tensor::empty(a.shape(), a.dtype(), &a.device())?;
    add_impl(Some(a), b, &mut y)?;
    Ok(y)
}

/// `x += r` (the residual connection).
pub fn add_assign(x: &mut Tensor, r: &Tensor) -> Result<()> {
    add_impl(None, r, x)
}

/// `y = a + b`, with `a = None` meaning `y` itself (in place: element i is read before it is
/// written, by the same thread).
fn add_impl(a: Option<&Tensor>, b: &Tensor, y: &mut Tensor) -> Result<()> {
    check_shape("add", "second operand", b, y.shape())?;
    check_dtype("add", y.dtype(), &[b])?;
    check_device("add", &y.device(), &[b])?;
    if let Some(a) = a {
        check_shape("add", "first operand", a, y.shape())?;
        check_dtype("add", y.dtype(), &[a])?;
        check_device("add", &y.device(), &[a])?;
    }
    match y.device() {
        Device::Cpu => {
            let av = match a {
                Some(a) => a.cpu_f32()?.into_owned(),
                None => y.cpu_f32()?.into_owned(),
            };
            let v = cpu::add(&av, &b.cpu_f32()?);
            y.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let yp = y.cuda_ptr()?;
            let ap = match a {
                Some(a) => a.cuda_ptr()?,
                None => yp,
            };
            let p =
                crate::cuda::params::AddParams { a: ap as *const _, b: b.cuda_ptr()? as *const _, y: yp as *mut _, n: y.numel() as i64 };
            dev.launch_vec8(super::kernel("add", y.dtype(), &k.add_f32, &k.add_bf16)?, y.numel(), &p)
        }
    }
}

/// TimestepBlock: `x ← x·(1 + a) + s` for `x [B, N, C]`, where `a` and `s` are the columns
/// `[col, col + C)` and `[col + C, col + 2C)` of `ab [B, S]`: a `[B, 2C]` tensor with `col` 0, or
/// one block's range of every block's terms computed by one GEMM.
pub fn modulate_assign(x: &mut Tensor, ab: &Tensor, col: usize) -> Result<()> {
    let input = x.view(x.shape())?;
    modulate_impl(&input, ab, col, x)
}

/// [`modulate_assign`] into another tensor `y` of x's shape, x left as it is: `y` has x's dtype,
/// or is bf16 for an f32 x (an f32 residual stream's last TimestepBlock of a level whose result
/// is only read in bf16, by a repeat mapper's GEMM: one pass instead of a modulation and a cast).
pub fn modulate_into(x: &Tensor, ab: &Tensor, col: usize, y: &mut Tensor) -> Result<()> {
    check_shape("modulate", "output", y, x.shape())?;
    if !(y.dtype() == x.dtype() || (x.dtype() == DType::F32 && y.dtype() == DType::BF16)) {
        return Err(Error::Shape(format!("modulate: {} input cannot give {}", x.dtype(), y.dtype())));
    }
    check_device("modulate", &x.device(), &[y])?;
    modulate_impl(x, ab, col, y)
}

/// `y = x·(1 + a) + s`; `y` may share x's memory (then in place, element by element).
fn modulate_impl(x: &Tensor, ab: &Tensor, col: usize, y: &mut Tensor) -> Result<()> {
    let (b, n, c) = modulation_shape("modulate", x, ab, col)?;
    match x.device() {
        Device::Cpu => {
            let v = cpu::modulate(&x.cpu_f32()?, &cpu::columns(&ab.cpu_f32()?, ab.dim(1), col, 2 * c), b, n, c);
            y.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let p = crate::cuda::params::ModulateParams {
                x: x.cuda_ptr()? as *const _,
                y: y.cuda_ptr()? as *mut _,
                ab: (ab.cuda_ptr()? + (col * ab.dtype().size()) as u64) as *const _,
                B: b as i32,
                N: n as i64,
                C: c as i32,
                ab_stride: ab.dim(1) as i64,
            };
            let f = if x.dtype() != y.dtype() {
                &k.modulate_f32_bf16
            } else {
                super::kernel("modulate", x.dtype(), &k.modulate_f32, &k.modulate_bf16)?
            };
            dev.launch_vec8(f, x.numel(), &p)
        }
    }
}

/// Checks `x [B, …, C]` against `ab [B, S]` with `col + 2C ≤ S`; returns (B, N, C).
pub(crate) fn modulation_shape(op: &str, x: &Tensor, ab: &Tensor, col: usize) -> Result<(usize, usize, usize)> {
    if x.rank() < 2 {
        return Err(Error::Shape(format!("{op}: x must be [B, …, C], got {:?}", x.shape())));
    }
    let (b, c) = (x.dim(0), x.dim(-1));
    if ab.rank() != 2 || ab.dim(0) != b || col + 2 * c > ab.dim(1) {
        return Err(Error::Shape(format!("{op}: ab must be [{b}, S] with columns {col}..{} inside S, got {:?}", col + 2 * c, ab.shape())));
    }
    check_dtype(op, x.dtype(), &[ab])?;
    check_device(op, &x.device(), &[ab])?;
    Ok((b, x.numel() / (b * c).max(1), c))
}

/// Classifier-free guidance: `eps [2B, …]` holds the cond half then the uncond half; writes
/// `uncond + w·(cond − uncond)` into `y [B, …]`. `w` is an f32 tensor of one element on the
/// same device (a captured graph reads the current value).
pub fn cfg_combine_into(eps: &Tensor, w: &Tensor, y: &mut Tensor) -> Result<()> {
    if eps.rank() == 0 || eps.dim(0) % 2 != 0 {
        return Err(Error::Shape(format!("cfg: eps must be [2B, …] (cond then uncond), got {:?}", eps.shape())));
    }
    let mut half = eps.shape().to_vec();
    half[0] /= 2;
    check_shape("cfg", "output", y, &half)?;
    check_shape("cfg", "guidance scale", w, &[1])?;
    check_dtype("cfg", eps.dtype(), &[y])?;
    check_dtype("cfg", DType::F32, &[w])?;
    check_device("cfg", &eps.device(), &[w, y])?;
    match eps.device() {
        Device::Cpu => {
            let v = cpu::cfg_combine(&eps.cpu_f32()?, w.cpu_f32()?[0]);
            y.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let p = crate::cuda::params::CfgParams {
                eps: eps.cuda_ptr()? as *const _,
                y: y.cuda_ptr()? as *mut _,
                w: w.cuda_ptr()? as *const f32,
                n: y.numel() as i64,
            };
            dev.launch_1d(super::kernel("cfg", eps.dtype(), &k.cfg_f32, &k.cfg_bf16)?, y.numel(), &p)
        }
    }
}

/// The DDPM-Würstchen update in place: `x ← coef0·(x − coef1·ε) + coef2·z` with `coef` an f32
/// tensor `[3]` on the same device (see [`crate::ops::cpu::ddpm_step`]); no `z` on the last step.
pub fn ddpm_step_assign(x: &mut Tensor, eps: &Tensor, noise: Option<&Tensor>, coef: &Tensor) -> Result<()> {
    check_shape("ddpm_step", "eps", eps, x.shape())?;
    check_shape("ddpm_step", "coefficients", coef, &[3])?;
    check_dtype("ddpm_step", x.dtype(), &[eps])?;
    check_dtype("ddpm_step", DType::F32, &[coef])?;
    check_device("ddpm_step", &x.device(), &[eps, coef])?;
    if let Some(z) = noise {
        check_shape("ddpm_step", "noise", z, x.shape())?;
        check_dtype("ddpm_step", x.dtype(), &[z])?;
        check_device("ddpm_step", &x.device(), &[z])?;
    }
    match x.device() {
        Device::Cpu => {
            let c = coef.cpu_f32()?;
            let z = noise.map(|z| z.cpu_f32()).transpose()?;
            let v = cpu::ddpm_step(&x.cpu_f32()?, &eps.cpu_f32()?, z.as_deref(), [c[0], c[1], c[2]]);
            x.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let ptr = x.cuda_ptr()?;
            let p = crate::cuda::params::DdpmStepParams {
                x: ptr as *const _,
                eps: eps.cuda_ptr()? as *const _,
                noise: super::dptr(noise)?,
                y: ptr as *mut _,
                coef: coef.cuda_ptr()? as *const f32,
                n: x.numel() as i64,
            };
            dev.launch_1d(super::kernel("ddpm_step", x.dtype(), &k.ddpm_step_f32, &k.ddpm_step_bf16)?, x.numel(), &p)
        }
    }
}

/// `x ← a·x + b` (Stage A's latent scale).
pub fn affine_assign(x: &mut Tensor, a: f32, b: f32) -> Result<()> {
    match x.device() {
        Device::Cpu => {
            let v = cpu::affine(&x.cpu_f32()?, a, b);
            x.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let ptr = x.cuda_ptr()?;
            let p = crate::cuda::params::AffineParams { x: ptr as *const _, y: ptr as *mut _, n: x.numel() as i64, a, b };
            dev.launch_1d(super::kernel("affine", x.dtype(), &k.affine_f32, &k.affine_bf16)?, x.numel(), &p)
        }
    }
}

/// Fills `x` with `mean + scale·N(0, 1)` from a counter-based stream of `seed` (element i is
/// the same on every device and launch shape, up to f32 rounding of log/cos on the GPU).
pub fn fill_random(x: &mut Tensor, seed: u64, mean: f32, scale: f32) -> Result<()> {
    match x.device() {
        Device::Cpu => {
            let v = cpu::random_normal(x.numel(), seed, mean, scale);
            x.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let p = crate::cuda::params::RandomParams {
                y: x.cuda_ptr()? as *mut _,
                n: x.numel() as i64,
                seed,
                mean,
                scale,
                dtype: x.dtype().code(),
            };
            dev.launch_1d(&dev.kernels().fill_random, x.numel(), &p)
        }
    }
}

/// 8-bit pixels of an image batch `x` (NHWC, RGB interleaved: the order image files take):
/// [`cpu::quantize_u8`] of every value, as bytes in `x`'s order, and the index of the first
/// non-finite value, if any. On a GPU only the bytes and one word come back to the host.
pub fn to_rgb8(x: &Tensor) -> Result<(Vec<u8>, Option<usize>)> {
    match x.device() {
        Device::Cpu => Ok(cpu::to_rgb8(&x.cpu_f32()?)),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let n = x.numel();
            if n >= u32::MAX as usize {
                return Err(Error::Shape(format!("to_rgb8: {n} values are more than the kernel indexes")));
            }
            let mut bytes = vec![0u8; n];
            if n == 0 {
                return Ok((bytes, None));
            }
            let y = dev.alloc(n)?;
            let first_bad = dev.alloc(4)?;
            dev.htod(&u32::MAX.to_le_bytes(), first_bad.ptr())?;
            let k = dev.kernels();
            let p = crate::cuda::params::ToRgb8Params {
                x: x.cuda_ptr()? as *const _,
                y: y.ptr() as *mut u8,
                first_bad: first_bad.ptr() as *mut u32,
                n: n as i64,
            };
            dev.launch_1d(super::kernel("to_rgb8", x.dtype(), &k.to_rgb8_f32, &k.to_rgb8_bf16)?, n, &p)?;
            let mut bad = [0u8; 4];
            dev.dtoh(first_bad.ptr(), &mut bad)?;
            dev.dtoh(y.ptr(), &mut bytes)?;
            let bad = u32::from_le_bytes(bad);
            Ok((bytes, (bad != u32::MAX).then_some(bad as usize)))
        }
    }
}
