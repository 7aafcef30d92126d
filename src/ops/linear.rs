//! The linear layer `y[M,N] = x[M,K] · w[N,K]ᵀ + bias[N]` (PyTorch `nn.Linear` and every
//! 1×1 convolution on token-major data). CPU: [`super::cpu::linear`]; GPU: cuBLASLt.

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
    linear_impl(x, w, bias, y, false, false)
}

/// `y = gelu(x · wᵀ + bias)` into an existing `y` of shape `[..., N]`: an MLP's first layer and
/// its GELU (Stage A's and CLIP's MLPs, the UNets' ResBlocks). The erf GELU, except for bf16 on
/// a GPU, where cuBLASLt applies GELU in the GEMM's epilogue (the pre-activation never goes to
/// memory) in its tanh form, within 4.8e-4 of the erf form (absolute; about bf16's rounding step
/// at the outputs' scale). `CASCADE_GELU_EPILOGUE=0` takes the erf GELU as a separate pass
/// instead.
pub fn linear_gelu_into(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &mut Tensor) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = x.device() {
        let (m, k, n) = check(x, w, bias, y)?;
        let chosen = dev.gemm_defaults().ws_gelu;
        if dev.ws_gelu_gemm() && chosen != Some(false) && ws_gelu_unfit(x, w, bias, y, (m, k, n))?.is_none() {
            // Asked for (the device's defaults, or the switch): from ws_gelu_min_rows rows; under
            // CASCADE_KERNEL_TUNE: where it timed faster.
            let ws = if chosen == Some(true) || crate::cuda::gemm_ws_gelu_requested() {
                m >= ws_gelu_min_rows()
            } else {
                let dims = [m, k, n, bias.is_some() as usize];
                super::tuned(&dev, "linear_gelu", &dims, &["cuBLASLt", "warp-specialised"], y, &mut |i, s| match i {
                    0 => linear_gelu_static(x, w, bias, s),
                    _ => gemm_gelu_ws(&dev, x, w, bias, s, (m, k, n)),
                })? == 1
            };
            if ws {
                return gemm_gelu_ws(&dev, x, w, bias, y, (m, k, n));
            }
        }
    }
    linear_gelu_static(x, w, bias, y)
}

/// [`linear_gelu_into`] without the warp-specialised GEMM: cuBLASLt's GELU epilogue, or the
/// product and then the erf GELU pass.
fn linear_gelu_static(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &mut Tensor) -> Result<()> {
    if gelu_in_epilogue(x) && y.dtype() == DType::BF16 {
        return linear_impl(x, w, bias, y, false, true);
    }
    linear_impl(x, w, bias, y, false, false)?;
    super::gelu_assign(y)
}

/// Rows of x from which [`linear_gelu_into`] takes the warp-specialised GEMM once asked for:
/// with `CASCADE_GEMM_WS_GELU=1`, 4096, which Stage A's MixBlocks have (65,536 and 262,144 rows;
/// their GELU costs cuBLASLt's epilogue about 30 µs of a 165 µs launch on an H200,
/// docs/performance.md, sixth session) and CLIP's 154 have not (two 128-row tiles, the second
/// mostly empty); with `CASCADE_GEMM_WS_GELU=force`, every product it can take (the tests).
#[cfg(feature = "cuda")]
fn ws_gelu_min_rows() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| if std::env::var("CASCADE_GEMM_WS_GELU").is_ok_and(|v| v.trim() == "force") { 1 } else { 4096 })
}

/// `y = GELU(x · wᵀ + bias)` on the warp-specialised wgmma GEMM (kernels/gemm.cu
/// `gemm_gelu_ws_bf16`, the fused fc1 + GRN kernel with GRN's sums compiled out): one warp brings
/// the operands in with TMA copies while two warpgroups multiply, and two blocks per SM let one
/// block's epilogue (the erf GELU and the stores) overlap the other's products. The erf GELU of
/// the f32 product plus bias, rounded to bf16 once (cuBLASLt's epilogue takes the tanh form).
/// bf16 throughout, K and N multiples of 8, x, w and y 16-byte aligned, compute capability 9.0:
/// an error saying why otherwise. [`linear_gelu_into`] takes it by itself for large products when
/// asked for (`CASCADE_GEMM_WS_GELU=1` or `force`, behind a start-up check).
pub fn linear_gelu_ws_into(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &mut Tensor) -> Result<()> {
    let (m, k, n) = check(x, w, bias, y)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = x.device() {
        if let Some(why) = ws_gelu_unfit(x, w, bias, y, (m, k, n))? {
            return Err(Error::Shape(format!("linear_gelu_ws: the warp-specialised GEMM cannot run this: {why}")));
        }
        return gemm_gelu_ws(&dev, x, w, bias, y, (m, k, n));
    }
    let _ = (m, k, n);
    Err(Error::Shape("linear_gelu_ws: the warp-specialised GEMM runs on a GPU (a build with the cuda feature)".into()))
}

/// Why [`gemm_gelu_ws`] cannot take a product `check` accepted (None: it can).
#[cfg(feature = "cuda")]
fn ws_gelu_unfit(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor, (m, k, n): (usize, usize, usize)) -> Result<Option<String>> {
    let Device::Cuda(dev) = x.device() else { return Ok(Some("it runs on a GPU".into())) };
    let why = if [Some(x), Some(w), bias, Some(y)].into_iter().flatten().any(|t| t.dtype() != DType::BF16) {
        "it runs in bf16".to_string()
    } else if k % 8 != 0 || n % 8 != 0 || k == 0 || n == 0 {
        format!("K ({k}) and N ({n}) must be positive multiples of 8")
    } else if m.div_ceil(128) > 65535 || m > i32::MAX as usize || n > i32::MAX as usize || k > i32::MAX as usize {
        format!("{m}×{k}×{n} is beyond the kernel's grid")
    } else if [x.cuda_ptr()?, w.cuda_ptr()?, y.cuda_ptr()?].iter().any(|a| a % 16 != 0) {
        "x, w and y must start 16-byte aligned".to_string()
    } else if let Some(why) = not_hopper(&dev) {
        why
    } else {
        return Ok(None);
    };
    Ok(Some(why))
}

/// Why a kernel on Hopper's wgmma and TMA cannot run on `dev` (None: compute capability 9.0).
#[cfg(feature = "cuda")]
fn not_hopper(dev: &crate::cuda::CudaDevice) -> Option<String> {
    let (major, minor) = dev.compute_capability();
    ((major, minor) != (9, 0))
        .then(|| format!("it uses Hopper's wgmma and TMA (compute capability 9.0); {} has {major}.{minor}", dev.name()))
}

/// The launch behind [`linear_gelu_ws_into`] (`gemm_gelu_ws_bf16`): 128 × 128 output tiles, the
/// fused GEMM's parameters with no GRN buffers, its operands as tensor maps.
#[cfg(feature = "cuda")]
fn gemm_gelu_ws(
    dev: &std::sync::Arc<crate::cuda::CudaDevice>,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &mut Tensor,
    (m, k, n): (usize, usize, usize),
) -> Result<()> {
    if m == 0 {
        return Ok(());
    }
    let g = crate::cuda::params::GemmGrnParams {
        x: x.cuda_ptr()? as *const _,
        w: w.cuda_ptr()? as *const _,
        bias: super::dptr(bias)?,
        y: y.cuda_ptr()? as *mut _,
        part: std::ptr::null_mut(),
        scale: std::ptr::null_mut(),
        group_sums: std::ptr::null_mut(),
        gamma: std::ptr::null(),
        counters: std::ptr::null_mut(),
        M: m as i32,
        N: n as i32,
        K: k as i32,
        rows: m as i32,
    };
    let q = crate::cuda::params::GemmGrnTmaParams {
        x_map: crate::cuda::tensor_map_bf16(x.cuda_ptr()?, m, k, 128, 64)?,
        w_map: crate::cuda::tensor_map_bf16(w.cuda_ptr()?, n, k, 128, 64)?,
        g,
    };
    let f = &dev.kernels().gemm_gelu_ws_bf16;
    let smem = super::norm::gemm_grn_smem(super::FusedGrnKernel::WgmmaWs);
    dev.opt_in_shared_memory(f, crate::cuda::SharedMemoryOptIn::GemmGeluWs, smem)?;
    dev.launch(f, (n.div_ceil(128) as u32, m.div_ceil(128) as u32, 1), (288, 1, 1), smem as u32, &q)
}

/// Which opt-in GEMM kernels the products take, as a device's defaults
/// ([`crate::cuda::CudaDevice::set_gemm_defaults`]) decide ahead of the environment switches and
/// of timing under `CASCADE_KERNEL_TUNE`. None leaves each to those. A kernel that did not pass
/// its start-up check (which runs when its switch or `CASCADE_KERNEL_TUNE` asks for it) is never
/// taken, whatever is set here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmOptions {
    /// A ResBlock's fc1, GELU and GRN's statistics as one GEMM (`CASCADE_GEMM_WGMMA`:
    /// [`crate::ops::linear_gelu_grn_fused`]).
    pub fused_fc1: Option<bool>,
    /// Where fc1 is fused, the stream-K version (`CASCADE_GEMM_WGMMA=sk`) rather than the
    /// requested one ([`crate::ops::FusedGrnKernel`]); None: the switch's.
    pub fc1_stream_k: Option<bool>,
    /// Where fc1 is fused and not on the stream-K version, the tall one (256-row tiles,
    /// `CASCADE_GEMM_WGMMA=ws_tall`) rather than the requested one; None: the switch's.
    pub fc1_tall: Option<bool>,
    /// Where fc1 is fused and on neither the stream-K nor the tall version, the paired tall one
    /// (clusters of two blocks sharing x's copy, `CASCADE_GEMM_WGMMA=ws_pair`) rather than the
    /// requested one; None: the switch's.
    pub fc1_pair: Option<bool>,
    /// A ResBlock's fc2 with GRN's factor applied by the stream-K kernel
    /// (`CASCADE_GEMM_WS_FC2=1`: [`linear_scaled_into`]).
    pub stream_k_fc2: Option<bool>,
    /// Residual products with few output tiles on the stream-K kernel (`CASCADE_GEMM_SK=1`).
    pub stream_k: Option<bool>,
    /// Products of at most 160 rows (CLIP's) on the skinny kernel (`CASCADE_GEMM_SKINNY=1`).
    pub skinny: Option<bool>,
    /// An MLP's first layer and its GELU on the warp-specialised GEMM (`CASCADE_GEMM_WS_GELU`),
    /// from as many rows as the switch's default (Stage A's).
    pub ws_gelu: Option<bool>,
}

/// `y = (x ⊙ factor) · wᵀ + bias` (with `accumulate`, `+=`): a ResBlock's second MLP layer with
/// GRN's factor (`factor` f32 `[B, K]`, one row per sample of x `[B, …, K]`) applied to its input,
/// GRN's β folded into `bias` by the caller. On a GPU of compute capability 9.0 that passed the
/// kernel's start-up check (`CASCADE_GEMM_WS_FC2=1`) one stream-K wgmma GEMM
/// ([`linear_scaled_sk_into`]) scales x as the products read it, so GRN's apply pass goes; elsewhere,
/// and for operands it cannot take, x ⊙ factor is made first and multiplied as usual. Without a
/// factor, a plain linear layer.
pub fn linear_scaled_into(
    x: &Tensor,
    factor: Option<&Tensor>,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &mut Tensor,
    accumulate: bool,
) -> Result<()> {
    let (m, k, n) = check(x, w, bias, y)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = x.device() {
        let chosen = dev.gemm_defaults().stream_k_fc2;
        if dev.scaled_gemm() && chosen != Some(false) && scaled_unfit(x, factor, w, y, (m, k, n))?.is_none() {
            // Asked for (the device's defaults, or the switch): always; under
            // CASCADE_KERNEL_TUNE: where it timed faster.
            let sk = chosen == Some(true) || crate::cuda::gemm_ws_fc2_requested() || {
                let dims = [m, k, n, factor.map_or(0, |f| f.dim(0)), accumulate as usize, y.dtype() as usize];
                let names = [if fold_factor(factor, m, n) { "fold + cuBLASLt" } else { "pass + cuBLASLt" }, "stream-K"];
                super::tuned(&dev, "linear_scaled", &dims, &names, y, &mut |i, s| match i {
                    0 => linear_scaled_static(x, factor, w, bias, s, accumulate, (m, n)),
                    _ => gemm_scaled_sk(&dev, x, factor, w, bias, s, (m, k, n), accumulate, None),
                })? == 1
            };
            if sk {
                return gemm_scaled_sk(&dev, x, factor, w, bias, y, (m, k, n), accumulate, None);
            }
        }
    }
    let _ = k;
    linear_scaled_static(x, factor, w, bias, y, accumulate, (m, n))
}

/// Whether [`linear_scaled_static`] scales w's columns rather than x: one sample with more rows
/// than w has (Stage B's levels 0 and 1: W₂ [C, 4C] is smaller than u [HW, 4C]).
fn fold_factor(factor: Option<&Tensor>, m: usize, n: usize) -> bool {
    factor.is_some_and(|f| f.dim(0) == 1 && m > n)
}

/// [`linear_scaled_into`] without the stream-K kernel: `(x ⊙ f) · wᵀ` made as `x · (w ⊙ f)ᵀ` where
/// w is the smaller ([`fold_factor`]), else x ⊙ f made first; then the GEMM.
fn linear_scaled_static(
    x: &Tensor,
    factor: Option<&Tensor>,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &mut Tensor,
    accumulate: bool,
    (m, n): (usize, usize),
) -> Result<()> {
    match factor {
        Some(f) if fold_factor(factor, m, n) => linear_impl(x, &super::norm::scale_columns(w, f)?, bias, y, accumulate, false),
        Some(f) => linear_impl(&super::norm::scale_by_factor(x, f)?, w, bias, y, accumulate, false),
        None => linear_impl(x, w, bias, y, accumulate, false),
    }
}

/// Whether [`linear_scaled_into`] takes the stream-K kernel for a product of `rows` rows per
/// sample, K and N on `device` (the caller's question before it decides to leave GRN's factor
/// unapplied): the kernel passed its start-up check and the sizes are its kind. The operands'
/// types and alignment are checked again at the call.
pub fn linear_scaled_fused(device: &Device, rows: usize, k: usize, n: usize) -> bool {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            dev.scaled_gemm()
                && dev.gemm_defaults().stream_k_fc2 != Some(false)
                && rows % 16 == 0
                && rows > 0
                && k % 8 == 0
                && n % 8 == 0
                && k > 0
                && n > 0
        }
        _ => {
            let _ = (rows, k, n);
            false
        }
    }
}

/// [`linear_scaled_into`] on the stream-K wgmma kernel by name (kernels/gemm.cu
/// `gemm_scaled_sk_bf16`, or `gemm_sk_bf16` without a factor), on `blocks` blocks (None: one per SM, at most one per 64-deep step of
/// the product; tests pass a few to cut tiles into pieces at odd places): an error where it
/// cannot run (bf16 x and w, f32 factor, y and bias bf16 or f32, K and N multiples of 8, rows per
/// sample a multiple of 16, 16-byte aligned operands, compute capability 9.0).
pub fn linear_scaled_sk_into(
    x: &Tensor,
    factor: Option<&Tensor>,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &mut Tensor,
    accumulate: bool,
    blocks: Option<usize>,
) -> Result<()> {
    let (m, k, n) = check(x, w, bias, y)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = x.device() {
        if let Some(why) = scaled_unfit(x, factor, w, y, (m, k, n))? {
            return Err(Error::Shape(format!("linear_scaled: the stream-K kernel cannot run this: {why}")));
        }
        return gemm_scaled_sk(&dev, x, factor, w, bias, y, (m, k, n), accumulate, blocks);
    }
    let _ = (m, k, n, factor, accumulate, blocks);
    Err(Error::Shape("linear_scaled: the stream-K kernel runs on a GPU (a build with the cuda feature)".into()))
}

/// Why [`gemm_scaled_sk`] cannot take these operands (None: it can); `check` has matched their
/// shapes and types to one another.
#[cfg(feature = "cuda")]
fn scaled_unfit(x: &Tensor, factor: Option<&Tensor>, w: &Tensor, y: &Tensor, (m, k, n): (usize, usize, usize)) -> Result<Option<String>> {
    let Device::Cuda(dev) = x.device() else { return Ok(Some("it runs on a GPU".into())) };
    let b = if x.rank() >= 2 { x.dim(0) } else { 1 };
    let rows = m / b.max(1);
    let why = if x.dtype() != DType::BF16 || w.dtype() != DType::BF16 {
        format!("x and w must be bf16, not {}", x.dtype())
    } else if k % 8 != 0 || n % 8 != 0 || k == 0 || n == 0 || m == 0 {
        format!("K ({k}) and N ({n}) must be positive multiples of 8, and M ({m}) positive")
    } else if factor.is_some() && rows % 16 != 0 {
        format!("rows per sample ({rows}) must be a multiple of 16")
    } else if m > i32::MAX as usize || n > i32::MAX as usize || k > i32::MAX as usize {
        format!("{m}×{k}×{n} is beyond 32-bit sizes")
    } else if let Some(f) = factor.filter(|f| f.shape() != [b, k] || f.dtype() != DType::F32) {
        format!("the factor must be f32 [{b}, {k}], not {} {:?}", f.dtype(), f.shape())
    } else if [Some(x), Some(w), Some(y), factor]
        .into_iter()
        .flatten()
        .map(|t| t.cuda_ptr())
        .collect::<Result<Vec<_>>>()?
        .iter()
        .any(|a| a % 16 != 0)
    {
        "x, w, y and the factor must start 16-byte aligned".to_string()
    } else if let Some(why) = not_hopper(&dev) {
        why
    } else {
        return Ok(None);
    };
    Ok(Some(why))
}

/// The stream-K kernel's dynamic shared memory: five stages of two 16 KiB tiles, 1 KiB to align
/// them to the 128-byte swizzle's period, two 8-byte barriers per stage.
#[cfg(feature = "cuda")]
fn scaled_smem() -> usize {
    5 * 2 * 128 * 64 * 2 + 1024 + 2 * 5 * 8
}

/// The launch behind [`linear_scaled_sk_into`]: a cooperative grid of at most one block per SM
/// (all resident: a block may wait for another's piece of a tile), never more blocks than
/// 64-deep steps.
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
fn gemm_scaled_sk(
    dev: &std::sync::Arc<crate::cuda::CudaDevice>,
    x: &Tensor,
    factor: Option<&Tensor>,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &mut Tensor,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    blocks: Option<usize>,
) -> Result<()> {
    let b = if x.rank() >= 2 { x.dim(0) } else { 1 };
    // Without a factor, the version that reads A from shared memory in the products.
    let (f, which) = match factor {
        Some(_) => (&dev.kernels().gemm_scaled_sk_bf16, crate::cuda::SharedMemoryOptIn::GemmScaled),
        None => (&dev.kernels().gemm_sk_bf16, crate::cuda::SharedMemoryOptIn::GemmSk),
    };
    let smem = scaled_smem();
    dev.opt_in_shared_memory(f, which, smem)?;
    let grid = stream_k_grid(dev, "linear_scaled", f, smem, (m, k, n), blocks)?;
    let (counters, capacity) = dev.completion_counters();
    if 2 * grid > capacity {
        return Err(Error::Shape(format!("linear_scaled: {grid} blocks need more completion counters than the device keeps")));
    }
    let partials = Tensor::empty(&[2 * grid * 16 * 128 * 4], DType::F32, &x.device())?;
    let g = crate::cuda::params::GemmScaledParams {
        factor: factor.map(|t| t.cuda_ptr()).transpose()?.unwrap_or(0) as *const f32,
        bias: super::dptr(bias)?,
        y: y.cuda_ptr()? as *mut _,
        partials: partials.cuda_ptr()? as *mut f32,
        counters: counters as *mut u32,
        M: m as i32,
        N: n as i32,
        K: k as i32,
        rows: (m / b.max(1)) as i32,
        out_f32: (y.dtype() == DType::F32) as i32,
        accumulate: accumulate as i32,
    };
    let q = crate::cuda::params::GemmScaledTmaParams {
        x_map: crate::cuda::tensor_map_bf16(x.cuda_ptr()?, m, k, 128, 64)?,
        w_map: crate::cuda::tensor_map_bf16(w.cuda_ptr()?, n, k, 128, 64)?,
        g,
    };
    let cfg = cudarc::driver::LaunchConfig { grid_dim: (grid as u32, 1, 1), block_dim: (288, 1, 1), shared_mem_bytes: smem as u32 };
    dev.launch_cooperative(f, cfg, &q)
}

/// The grid of a stream-K wgmma kernel (`f`, 288 threads, `smem` bytes of shared memory) for an
/// (m, k, n) product: `blocks` (None: one per SM), at most as many as are resident at once (a
/// block may wait for another's piece of a tile) and never more than the 64-deep steps of its
/// 128 × 128 tiles; an error naming `op` where not one block fits on an SM.
#[cfg(feature = "cuda")]
pub(crate) fn stream_k_grid(
    dev: &crate::cuda::CudaDevice,
    op: &str,
    f: &cudarc::driver::CudaFunction,
    smem: usize,
    (m, k, n): (usize, usize, usize),
    blocks: Option<usize>,
) -> Result<usize> {
    let resident = dev.resident_blocks_per_sm(f, 288, smem)? * dev.multiprocessors();
    if resident == 0 {
        return Err(Error::Cuda(format!("{op}: the stream-K kernel does not fit on an SM of {}", dev.name())));
    }
    let steps = k.div_ceil(64) * n.div_ceil(128) * m.div_ceil(128);
    Ok(blocks.unwrap_or(dev.multiprocessors()).clamp(1, resident).min(steps))
}

/// Whether [`linear_gelu_into`] on input `x` takes the GELU in the GEMM's epilogue: bf16 on a GPU
/// unless `CASCADE_GELU_EPILOGUE=0`. Callers that would otherwise fuse the GELU into their next
/// pass (the ResBlock's GRN) ask first.
pub fn gelu_in_epilogue(x: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    if x.dtype() == DType::BF16 && !x.device().is_cpu() {
        return gelu_epilogue();
    }
    let _ = x;
    false
}

/// `gelu(x · wᵀ + bias)` as a new tensor of shape `[..., N]` (see [`linear_gelu_into`]).
pub fn linear_gelu(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut y = linear_output("linear_gelu", x, w, x.dtype())?;
    linear_gelu_into(x, w, bias, &mut y)?;
    Ok(y)
}

/// Whether bf16 products on a GPU take cuBLASLt's GELU epilogue (the default) or a separate erf
/// GELU pass (`CASCADE_GELU_EPILOGUE=0`; read once).
#[cfg(feature = "cuda")]
fn gelu_epilogue() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CASCADE_GELU_EPILOGUE").map_or(true, |v| v.trim() != "0"))
}

/// `y += x · wᵀ + bias`: a linear layer followed by a residual connection, in one pass (on a GPU
/// the GEMM adds y in its epilogue, rounding once).
pub fn linear_accumulate_into(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &mut Tensor) -> Result<()> {
    linear_impl(x, w, bias, y, true, false)
}

/// `gelu`: the GELU epilogue on a GPU (the caller's choice, see [`linear_gelu_into`]); the CPU
/// never takes it.
fn linear_impl(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &mut Tensor, accumulate: bool, gelu: bool) -> Result<()> {
    let (m, k, n) = check(x, w, bias, y)?;
    match x.device() {
        Device::Cpu => {
            let _ = gelu;
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
            // CLIP's few rows: the skinny kernel, when asked for (CASCADE_GEMM_SKINNY=1).
            let defaults = dev.gemm_defaults();
            let skinny = dev.skinny_gemm() && defaults.skinny != Some(false) && skinny_fits(x, w, bias, y, m, k, n)?;
            // Residual products with few output tiles (the attention's output projections, fc2
            // where GRN was applied in place): stream-K, when asked for (CASCADE_GEMM_SK=1).
            let sk = !skinny
                && defaults.stream_k != Some(false)
                && accumulate
                && !gelu
                && dev.sk_gemm()
                && sk_few_tiles(m, n, dev.multiprocessors())
                && scaled_unfit(x, None, w, y, (m, k, n))?.is_none();
            // Under CASCADE_KERNEL_TUNE, either where it timed faster than cuBLASLt.
            let take = (skinny && (defaults.skinny == Some(true) || crate::cuda::gemm_skinny_requested()))
                || (sk && (defaults.stream_k == Some(true) || crate::cuda::gemm_sk_requested()))
                || ((skinny || sk) && {
                    let dims = [m, k, n, accumulate as usize, gelu as usize, bias.is_some() as usize, y.dtype() as usize];
                    let names = ["cuBLASLt", if skinny { "skinny" } else { "stream-K" }];
                    super::tuned(&dev, "linear", &dims, &names, y, &mut |i, s| match i {
                        0 => cublaslt_linear(&dev, x, w, bias, s, (m, k, n), accumulate, gelu),
                        _ if skinny => gemm_skinny(&dev, x, w, bias, s, (m, k, n), gelu, accumulate),
                        _ => gemm_scaled_sk(&dev, x, None, w, bias, s, (m, k, n), true, None),
                    })? == 1
                });
            match (take, skinny) {
                (true, true) => gemm_skinny(&dev, x, w, bias, y, (m, k, n), gelu, accumulate),
                (true, false) => gemm_scaled_sk(&dev, x, None, w, bias, y, (m, k, n), true, None),
                _ => cublaslt_linear(&dev, x, w, bias, y, (m, k, n), accumulate, gelu),
            }
        }
    }
}

/// The product on cuBLASLt (src/cuda/blas.rs); `check` has matched the operands to (m, k, n).
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
fn cublaslt_linear(
    dev: &std::sync::Arc<crate::cuda::CudaDevice>,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &mut Tensor,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    gelu: bool,
) -> Result<()> {
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
            gelu,
        )
    }
}

/// Whether a residual product of `m × n` outputs has too few 128 × 128 tiles to fill two waves of
/// `sms` SMs: where whole tiles leave SMs idle or a last wave nearly empty, and the stream-K
/// kernel's even cut of K helps (Stage B's level-2 output projection: 80 tiles; Stage C's: 144).
#[cfg(feature = "cuda")]
fn sk_few_tiles(m: usize, n: usize, sms: usize) -> bool {
    m.div_ceil(128) * n.div_ceil(128) < 2 * sms
}

/// Whether [`gemm_skinny`] can take a product `check` accepted: bf16 throughout, at most
/// `CASCADE_SKINNY_ROWS` rows of x, N and K multiples of 64, x, w and y 16-byte aligned, and at
/// most 65535 blocks of w's rows (one completion counter each, within the device's 65536).
#[cfg(feature = "cuda")]
fn skinny_fits(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor, m: usize, k: usize, n: usize) -> Result<bool> {
    let rows = crate::cuda::params::CASCADE_SKINNY_ROWS as usize;
    let bf16 = [Some(x), Some(w), bias, Some(y)].into_iter().flatten().all(|t| t.dtype() == DType::BF16);
    Ok(bf16
        && (1..=rows).contains(&m)
        && n % 64 == 0
        && k % 64 == 0
        && n / 64 <= 65535
        && [x.cuda_ptr()?, w.cuda_ptr()?, y.cuda_ptr()?].iter().all(|a| a % 16 == 0))
}

/// The skinny product (kernels/gemm.cu `gemm_skinny_bf16`, compute capability 9.0):
/// `y (+)= act(x · wᵀ + bias)` for at most `CASCADE_SKINNY_ROWS` rows of x, w's rows 64 to a
/// block, K cut into as many ranges as fill the SMs once at [`skinny_blocks_per_sm`] (CLIP on an
/// H200's 132 SMs: 120, 100, 80 and 120 blocks for its four GEMMs), the ranges' sums added by the
/// last block of each column in a fixed order. The caller checked the operands ([`skinny_fits`]).
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_skinny(
    dev: &std::sync::Arc<crate::cuda::CudaDevice>,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &mut Tensor,
    (m, k, n): (usize, usize, usize),
    gelu: bool,
    accumulate: bool,
) -> Result<()> {
    let (tiles, ksteps) = (n / 64, k / 64);
    let (splits, k_steps) = skinny_splits(tiles, ksteps, skinny_blocks_per_sm() * dev.multiprocessors());
    let (counters, capacity) = dev.completion_counters();
    if tiles > capacity {
        return Err(Error::Shape(format!("linear: {n} output columns are beyond the skinny kernel's counters")));
    }
    // Each range's sums, when K is cut: [splits, tiles, 64 · CASCADE_SKINNY_ROWS] f32.
    let rows = crate::cuda::params::CASCADE_SKINNY_ROWS as usize;
    let partials = (splits > 1).then(|| Tensor::empty(&[splits * tiles * 64 * rows], DType::F32, &x.device())).transpose()?;
    let p = crate::cuda::params::GemmSkinnyParams {
        x: x.cuda_ptr()? as *const _,
        w: w.cuda_ptr()? as *const _,
        bias: super::dptr(bias)?,
        y: y.cuda_ptr()? as *mut _,
        partials: partials.as_ref().map(|t| t.cuda_ptr()).transpose()?.unwrap_or(0) as *mut f32,
        counters: counters as *mut u32,
        M: m as i32,
        N: n as i32,
        K: k as i32,
        k_steps: k_steps as i32,
        gelu: gelu as i32,
        accumulate: accumulate as i32,
    };
    let f = &dev.kernels().gemm_skinny_bf16;
    let smem = skinny_smem();
    dev.opt_in_shared_memory(f, crate::cuda::SharedMemoryOptIn::GemmSkinny, smem)?;
    dev.launch(f, (tiles as u32, splits as u32, 1), (128, 1, 1), smem as u32, &p)
}

/// Blocks per SM the skinny kernel's cut of K aims for: `CASCADE_SKINNY_BLOCKS_PER_SM` (1 or 2,
/// read once), 1 by default. One block with four stages in flight (112 KiB) can stream its share
/// of the weights; a second halves each block's K but doubles the ranges' sums written and read
/// back (the f32 partials, 40 KiB a block) and the copies of x from L2.
#[cfg(feature = "cuda")]
fn skinny_blocks_per_sm() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| match std::env::var("CASCADE_SKINNY_BLOCKS_PER_SM").ok().map(|v| v.trim().to_string()).as_deref() {
        None | Some("1") => 1,
        Some("2") => 2,
        Some(v) => {
            eprintln!("warning: CASCADE_SKINNY_BLOCKS_PER_SM must be 1 or 2, not {v:?}; using 1");
            1
        }
    })
}

/// The skinny kernel's dynamic shared memory: four stages of 64 rows of w and
/// `CASCADE_SKINNY_ROWS` of x, 128 bytes each, and 1 KiB to align them.
#[cfg(feature = "cuda")]
fn skinny_smem() -> usize {
    4 * (64 + crate::cuda::params::CASCADE_SKINNY_ROWS as usize) * 128 + 1024
}

/// How the skinny kernel cuts K for `tiles` blocks of w's rows and `ksteps` 64-wide steps of K:
/// (ranges, steps per range), as many ranges as keep `slots` blocks filled at most once, every
/// range non-empty.
#[cfg(feature = "cuda")]
fn skinny_splits(tiles: usize, ksteps: usize, slots: usize) -> (usize, usize) {
    let wanted = (slots / tiles.max(1)).clamp(1, ksteps.max(1));
    let per = ksteps.div_ceil(wanted).max(1);
    (ksteps.div_ceil(per).max(1), per)
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
                    false,
                )
            }
        }
    }
}

/// An uninitialised output for `x [..., K] · w[N, K]ᵀ`: `[..., N]`, x's dtype and device.
pub(crate) fn linear_output(op: &str, x: &Tensor, w: &Tensor, dtype: DType) -> Result<Tensor> {
    if w.rank() != 2 {
        return Err(Error::Shape(format!("{op}: weight must be [N, K], got {:?}", w.shape())));
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().ok_or_else(|| Error::Shape(format!("{op}: scalar input")))? = w.dim(0);
    Tensor::empty(&shape, dtype, &x.device())
}

/// `x · wᵀ + bias` as a new tensor of shape `[..., N]`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_as(x, w, bias, x.dtype())
}

/// [`linear`] written as `dtype`: x's, or f32 for bf16 inputs (a product that goes to a residual
/// stream held in f32; the bias then f32 too).
pub fn linear_as(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, dtype: DType) -> Result<Tensor> {
    let mut y = linear_output("linear", x, w, dtype)?;
    linear_into(x, w, bias, &mut y)?;
    Ok(y)
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    /// The skinny kernel's cut of CLIP's four GEMMs (154 × 1280 → 3840, 1280, 5120; 5120 → 1280)
    /// on an H200's 132 SMs, one block each (the default) and two, and of small problems.
    #[test]
    fn skinny_splits_fill_the_card() {
        let s = super::skinny_splits;
        assert_eq!(s(60, 20, 132), (2, 10)); // q, k and v: 120 blocks
        assert_eq!(s(20, 20, 132), (5, 4)); // out: 100 blocks
        assert_eq!(s(80, 20, 132), (1, 20)); // fc1: 80 blocks, K whole
        assert_eq!(s(20, 80, 132), (6, 14)); // fc2: 120 blocks, the last range 10 steps
        assert_eq!(s(60, 20, 264), (4, 5)); // q, k and v: 240 blocks
        assert_eq!(s(20, 20, 264), (10, 2)); // out: 200 blocks
        assert_eq!(s(80, 20, 264), (3, 7)); // fc1: 240 blocks, the last range 6 steps
        assert_eq!(s(20, 80, 264), (12, 7)); // fc2: 240 blocks
        assert_eq!(s(500, 4, 264), (1, 4)); // more tiles than slots: K whole
        assert_eq!(s(5, 3, 264), (3, 1)); // one step per range
        assert_eq!(s(1, 1, 264), (1, 1));
    }

    /// Which residual products the stream-K kernel takes with `CASCADE_GEMM_SK=1` on an H200's 132
    /// SMs: the narrow ones, not those whose tiles fill two waves.
    #[test]
    fn stream_k_takes_the_narrow_residual_products() {
        let few = |m, n| super::sk_few_tiles(m, n, 132);
        assert!(few(1024, 1280)); // Stage B level 2's output projection and fc2: 80 tiles
        assert!(few(256, 1280)); // level 3: 20
        assert!(few(1152, 2048)); // Stage C's: 144
        assert!(few(4096, 640)); // Stage B level 1's fc2: 160
        assert!(!few(16384, 320)); // level 0's: 384
        assert!(!few(65536, 384)); // Stage A's fc2: 1536
    }
}
