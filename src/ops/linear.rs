//! The linear layer `y[M,N] = x[M,K] · w[N,K]ᵀ + bias[N]` (PyTorch `nn.Linear` and every
//! 1×1 convolution on token-major data). CPU: [`super::cpu::linear`]; GPU: cuBLASLt. Also an
//! MLP's first layer with its (erf) GELU, `y = gelu(x · wᵀ + bias)`, which on a GPU can be one
//! tensor-core kernel of this project's (`kernels/gemm.cu`) instead of cuBLASLt and a GELU pass.

use crate::{DType, Device, Error, Result, Tensor};

pub(crate) fn check(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor) -> Result<(usize, usize, usize)> {
    let k = x.dim(-1);
    let m = x.numel() / k.max(1);
    if w.rank() != 2 || w.dim(1) != k {
        return Err(Error::Shape(format!("linear: weight {:?} does not match input {:?} (want [N, {k}])", w.shape(), x.shape())));
    }
    let n = w.dim(0);
    if let Some(b) = bias {
        if b.numel() != n {
            return Err(Error::Shape(format!("linear: bias {:?} does not match weight {:?}", b.shape(), w.shape())));
        }
    }
    if y.numel() != m * n || y.dim(-1) != n {
        return Err(Error::Shape(format!("linear: output {:?} is not [{m}, {n}]", y.shape())));
    }
    if w.dtype() != x.dtype() {
        return Err(Error::Shape(format!("linear: mixed dtypes ({} and {})", x.dtype(), w.dtype())));
    }
    // The output (and the bias, which is added in the output's type) is x's type, or f32 for
    // bf16 products kept in f32 (a residual stream held in f32).
    let out_ok = |t: &Tensor| t.dtype() == x.dtype() || (x.dtype() == DType::BF16 && t.dtype() == DType::F32);
    for t in [bias, Some(y)].into_iter().flatten() {
        if !out_ok(t) || t.dtype() != y.dtype() {
            return Err(Error::Shape(format!("linear: {} inputs cannot give {} (bias {})", x.dtype(), y.dtype(), t.dtype())));
        }
    }
    super::check_device("linear", &x.device(), &[w, y])?;
    if let Some(b) = bias {
        super::check_device("linear", &x.device(), &[b])?;
    }
    Ok((m, k, n))
}

/// `y = x · wᵀ + bias` into an existing `y` of shape `[..., N]` (leading dims of x kept).
pub fn linear_into(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &mut Tensor) -> Result<()> {
    linear_impl(x, w, bias, y, false)
}

/// `y += x · wᵀ + bias`: a linear layer followed by a residual connection, in one pass (on a GPU
/// the GEMM adds y in its epilogue, rounding once).
pub fn linear_accumulate_into(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &mut Tensor) -> Result<()> {
    linear_impl(x, w, bias, y, true)
}

fn linear_impl(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &mut Tensor, accumulate: bool) -> Result<()> {
    let (m, k, n) = check(x, w, bias, y)?;
    match x.device() {
        Device::Cpu => {
            let b = bias.map(|b| b.cpu_f32()).transpose()?;
            let mut out = super::cpu::linear(&x.cpu_f32()?, &w.cpu_f32()?, b.as_deref(), m, k, n);
            if accumulate {
                for (o, r) in out.iter_mut().zip(y.cpu_f32()?.iter()) {
                    *o += r;
                }
            }
            y.set_cpu_f32(&out)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let bias_ptr = bias.map(|b| b.cuda_ptr()).transpose()?;
            // SAFETY: `check` verified every buffer's element count against (m, k, n).
            unsafe {
                dev.blas().linear(
                    x.cuda_ptr()?,
                    w.cuda_ptr()?,
                    bias_ptr,
                    y.cuda_ptr()?,
                    (m, k, n),
                    (k, n),
                    (x.dtype(), y.dtype()),
                    dev.allow_tf32(),
                    accumulate,
                )
            }
        }
    }
}

/// `y[:, y_col..y_col + N] = x[:, x_col..x_col + K] · wᵀ + bias` (with `accumulate`, `+=`) on
/// column ranges of wider row-major tensors `x [M, Kx]` and `y [M, Ny]`, for `w [N, K]`; the other
/// columns of y are left as they are. On a GPU one GEMM over the strided rows, no copies.
pub fn linear_columns_into(
    x: &Tensor,
    x_col: usize,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &mut Tensor,
    y_col: usize,
    accumulate: bool,
) -> Result<()> {
    if w.rank() != 2 || x.rank() == 0 || y.rank() == 0 {
        return Err(Error::Shape(format!("linear_columns: weight {:?}, input {:?}, output {:?}", w.shape(), x.shape(), y.shape())));
    }
    let (n, k, kx, ny) = (w.dim(0), w.dim(1), x.dim(-1), y.dim(-1));
    let m = x.numel() / kx.max(1);
    if x_col + k > kx || y_col + n > ny || y.numel() != m * ny {
        return Err(Error::Shape(format!(
            "linear_columns: columns {x_col}..{} of {:?} times {:?} into columns {y_col}..{} of {:?}",
            x_col + k,
            x.shape(),
            w.shape(),
            y_col + n,
            y.shape()
        )));
    }
    if let Some(b) = bias {
        if b.numel() != n {
            return Err(Error::Shape(format!("linear_columns: bias {:?} does not match weight {:?}", b.shape(), w.shape())));
        }
        super::check_dtype("linear_columns", x.dtype(), &[b])?;
        super::check_device("linear_columns", &x.device(), &[b])?;
    }
    super::check_dtype("linear_columns", x.dtype(), &[w, y])?;
    super::check_device("linear_columns", &x.device(), &[w, y])?;
    match x.device() {
        Device::Cpu => {
            let b = bias.map(|b| b.cpu_f32()).transpose()?;
            let xs = super::cpu::columns(&x.cpu_f32()?, kx, x_col, k);
            let out = super::cpu::linear(&xs, &w.cpu_f32()?, b.as_deref(), m, k, n);
            let mut yv = y.cpu_f32()?.into_owned();
            for (r, row) in out.chunks(n.max(1)).enumerate() {
                for (j, v) in row.iter().enumerate() {
                    let t = &mut yv[r * ny + y_col + j];
                    *t = if accumulate { *t + v } else { *v };
                }
            }
            y.set_cpu_f32(&yv)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let elt = x.dtype().size() as u64;
            let bias_ptr = bias.map(|b| b.cuda_ptr()).transpose()?;
            let (xp, yp) = (x.cuda_ptr()? + x_col as u64 * elt, y.cuda_ptr()? + y_col as u64 * elt);
            // SAFETY: the checks above keep every row's columns inside x and y.
            unsafe {
                dev.blas().linear(
                    xp,
                    w.cuda_ptr()?,
                    bias_ptr,
                    yp,
                    (m, k, n),
                    (kx, ny),
                    (x.dtype(), x.dtype()),
                    dev.allow_tf32(),
                    accumulate,
                )
            }
        }
    }
}

/// How [`linear_gelu_into_with`] runs on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearGeluKernel {
    /// The fused kernel for bf16 where it applies and the product is large enough to fill the
    /// GPU (at least two waves of its 128 × 128 tiles), else [`LinearGeluKernel::Separate`].
    /// `CASCADE_FUSED_GELU` in the environment overrides the size rule (for measuring and
    /// testing): `0` always takes the separate path, `1` the fused kernel wherever it applies.
    Auto,
    /// `gemm_bias_gelu_bf16`: the product, bias and GELU in one kernel; the pre-activation never
    /// goes to memory. bf16 only; K and N multiples of 8; x, w, bias and y 16-byte aligned.
    Fused,
    /// cuBLASLt's product (bias in its epilogue), then GELU in place: two passes over y.
    Separate,
}

/// `y = gelu(x · wᵀ + bias)` (the erf GELU) into an existing `y` of shape `[..., N]`. Results
/// stored as bf16 on a GPU take erf to within 1.5e-7 (`gelu_bf16_out` in kernels/common.cuh),
/// below bf16's resolution; f32 results use the exact erff.
pub fn linear_gelu_into(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &mut Tensor) -> Result<()> {
    linear_gelu_into_with(x, w, bias, LinearGeluKernel::Auto, y)
}

/// [`linear_gelu_into`] with the GPU path chosen by the caller (tests and benches compare them).
/// The fused kernel rounds once (the f32 sum, then GELU, to bf16); the separate path rounds the
/// product to bf16 before the GELU.
pub fn linear_gelu_into_with(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, kernel: LinearGeluKernel, y: &mut Tensor) -> Result<()> {
    let (m, k, n) = check(x, w, bias, y)?;
    if y.dtype() != x.dtype() {
        return Err(Error::Shape(format!("linear_gelu: {} inputs cannot give {}", x.dtype(), y.dtype())));
    }
    match x.device() {
        Device::Cpu => {
            let _ = kernel; // one path on the CPU
            let b = bias.map(|b| b.cpu_f32()).transpose()?;
            let mut out = super::cpu::linear(&x.cpu_f32()?, &w.cpu_f32()?, b.as_deref(), m, k, n);
            out.iter_mut().for_each(|v| *v = super::cpu::gelu(*v));
            y.set_cpu_f32(&out)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let fused = match kernel {
                LinearGeluKernel::Separate => false,
                LinearGeluKernel::Fused => {
                    fused_gelu_operands(x, w, bias, y, (m, k, n))?;
                    true
                }
                LinearGeluKernel::Auto => {
                    let tiles = m.div_ceil(GEMM_TILE) * n.div_ceil(GEMM_TILE);
                    let wanted = fused_gelu_override().unwrap_or(tiles >= 4 * dev.multiprocessors());
                    wanted && fused_gelu_operands(x, w, bias, y, (m, k, n)).is_ok()
                }
            };
            if !fused {
                linear_impl(x, w, bias, y, false)?;
                return super::gelu_assign(y);
            }
            gemm_bias_gelu(&dev, x, w, bias, y, None, (m, k, n))
        }
    }
}

/// Launches `gemm_bias_gelu_bf16` on operands [`fused_gelu_operands`] accepted; with `part`
/// (`[M / 64, N]` f32, M a multiple of 64) it also writes the sums of squares of y's chunks of 64
/// rows.
#[cfg(feature = "cuda")]
pub(crate) fn gemm_bias_gelu(
    dev: &crate::cuda::CudaDevice,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &mut Tensor,
    part: Option<&mut Tensor>,
    (m, k, n): (usize, usize, usize),
) -> Result<()> {
    let part = match part {
        Some(t) if m % 64 != 0 || t.shape() != [m / 64, n] || t.dtype() != DType::F32 => {
            return Err(Error::Shape(format!("linear_gelu: chunk sums {:?} {} for {m} rows of {n}", t.shape(), t.dtype())));
        }
        Some(t) => t.cuda_ptr()? as *mut f32,
        None => std::ptr::null_mut(),
    };
    let p = crate::cuda::params::GemmParams {
        x: x.cuda_ptr()? as *const _,
        w: w.cuda_ptr()? as *const _,
        bias: super::dptr(bias)?,
        y: y.cuda_ptr()? as *mut _,
        part,
        M: m as i32,
        N: n as i32,
        K: k as i32,
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let grid = (n.div_ceil(GEMM_TILE) as u32, m.div_ceil(GEMM_TILE) as u32, 1);
    if grid.1 > 65535 {
        return Err(Error::Shape(format!("linear_gelu: {m} rows are more than the fused kernel's grid takes")));
    }
    let threads = crate::cuda::params::CASCADE_GEMM_THREADS;
    dev.launch(&dev.kernels().gemm_bias_gelu_bf16, grid, (threads, 1, 1), 0, &p)
}

/// Rows and columns of the fused kernel's output tile (`CASCADE_GEMM_BM`, `CASCADE_GEMM_BN` in
/// kernels/params.h).
#[cfg(feature = "cuda")]
pub(crate) const GEMM_TILE: usize = crate::cuda::params::CASCADE_GEMM_BM as usize;

/// `CASCADE_FUSED_GELU`: `0` → never fuse, any other value → fuse wherever the kernel applies,
/// unset → decide by size (read once).
#[cfg(feature = "cuda")]
fn fused_gelu_override() -> Option<bool> {
    static OVERRIDE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *OVERRIDE.get_or_init(|| std::env::var("CASCADE_FUSED_GELU").ok().map(|v| v.trim() != "0"))
}

/// What the fused kernel needs beyond [`check`]: bf16 throughout, whole 16-byte chunks along K
/// and N, aligned buffers, and sizes in 32-bit range.
#[cfg(feature = "cuda")]
pub(crate) fn fused_gelu_operands(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    (m, k, n): (usize, usize, usize),
) -> Result<()> {
    let why = if x.dtype() != DType::BF16 {
        format!("it runs in bf16, not {}", x.dtype())
    } else if k % 8 != 0 || n % 8 != 0 {
        format!("K = {k} and N = {n} must be multiples of 8")
    } else if m.max(n).max(k) > i32::MAX as usize || m.checked_mul(k.max(n)).is_none() || m.div_ceil(GEMM_TILE) > 65535 {
        format!("{m}×{k}×{n} is beyond its grid")
    } else {
        let mut ptrs = vec![x.cuda_ptr()?, w.cuda_ptr()?, y.cuda_ptr()?];
        if let Some(b) = bias {
            ptrs.push(b.cuda_ptr()?);
        }
        if ptrs.iter().all(|p| p % 16 == 0) {
            return Ok(());
        }
        "its operands must be 16-byte aligned".into()
    };
    Err(Error::Shape(format!("linear_gelu: the fused kernel cannot take this product: {why}")))
}

/// An uninitialised output for `x [..., K] · w[N, K]ᵀ`: `[..., N]`, x's dtype and device.
pub(crate) fn linear_output(op: &str, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.rank() != 2 {
        return Err(Error::Shape(format!("{op}: weight must be [N, K], got {:?}", w.shape())));
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().ok_or_else(|| Error::Shape(format!("{op}: scalar input")))? = w.dim(0);
    Tensor::empty(&shape, x.dtype(), &x.device())
}

/// `gelu(x · wᵀ + bias)` as a new tensor of shape `[..., N]`.
pub fn linear_gelu(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut y = linear_output("linear_gelu", x, w)?;
    linear_gelu_into(x, w, bias, &mut y)?;
    Ok(y)
}

/// `x · wᵀ + bias` as a new tensor of shape `[..., N]`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut y = linear_output("linear", x, w)?;
    linear_into(x, w, bias, &mut y)?;
    Ok(y)
}
