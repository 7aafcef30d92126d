//! LayerNorm over channels and GlobalResponseNorm. CPU: [`super::cpu::layer_norm`],
//! [`super::cpu::grn`]; GPU: `kernels/norm.cu`.

use super::{check_device, check_dtype, check_numel, check_shape, cpu};
use crate::{DType, Device, Error, Result, Tensor};

/// LayerNorm over the last axis: `(x − mean)/√(var + eps)`, then `·weight + bias` when given
/// (CLIP: affine, eps 1e-5; UNets and VQGAN: no affine, eps 1e-6). `y` has x's dtype, or is
/// bf16 for an f32 x (a residual stream kept in f32): then it is the LayerNorm of x rounded to
/// bf16, as a cast followed by a bf16 LayerNorm, in one pass (the affine parameters bf16 too).
pub fn layer_norm_into(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32, y: &mut Tensor) -> Result<()> {
    layer_norm_impl(x, weight, bias, eps, y, None)
}

/// A TimestepBlock followed by the attention block's LayerNorm, in one pass: `x ← x·(1 + a) + s`
/// (as [`super::modulate_assign`], columns `col..` of `ab`), and returns `LayerNorm(x)` without
/// affine. Each row is read once; the modulated row is written back and normalised.
pub fn modulate_layer_norm(x: &mut Tensor, ab: &Tensor, col: usize, eps: f32) -> Result<Tensor> {
    let dtype = x.dtype();
    modulate_layer_norm_as(x, ab, col, eps, dtype)
}

/// [`modulate_layer_norm`] with the LayerNorm given as `dtype`: x's, or bf16 for an f32 x (an f32
/// residual stream: x is modulated in f32, and the LayerNorm is of its bf16 copy, see
/// [`layer_norm_into`]).
pub fn modulate_layer_norm_as(x: &mut Tensor, ab: &Tensor, col: usize, eps: f32, dtype: DType) -> Result<Tensor> {
    super::elementwise::modulation_shape("modulate_layer_norm", x, ab, col)?;
    let mut y = Tensor::empty(x.shape(), dtype, &x.device())?;
    if x.device().is_cpu() {
        super::modulate_assign(x, ab, col)?;
        layer_norm_into(x, None, None, eps, &mut y)?;
    } else {
        let input = x.view(x.shape())?;
        layer_norm_impl(&input, None, None, eps, &mut y, Some((ab, col, x)))?;
    }
    Ok(y)
}

fn layer_norm_impl(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
    y: &mut Tensor,
    modulation: Option<(&Tensor, usize, &mut Tensor)>,
) -> Result<()> {
    let c = x.shape().last().copied().ok_or_else(|| Error::Shape("layer_norm: scalar input".into()))?;
    check_shape("layer_norm", "output", y, x.shape())?;
    let mixed = x.dtype() == DType::F32 && y.dtype() == DType::BF16;
    if !mixed {
        check_dtype("layer_norm", x.dtype(), &[y])?;
    }
    check_device("layer_norm", &x.device(), &[y])?;
    for t in [weight, bias].into_iter().flatten() {
        check_numel("layer_norm", "affine parameter", t, c)?;
        check_dtype("layer_norm", y.dtype(), &[t])?;
        check_device("layer_norm", &x.device(), &[t])?;
    }
    match x.device() {
        Device::Cpu => {
            debug_assert!(modulation.is_none(), "the CPU path modulates separately");
            let w = weight.map(|t| t.cpu_f32()).transpose()?;
            let b = bias.map(|t| t.cpu_f32()).transpose()?;
            let xv = x.cpu_f32()?;
            let xv = if mixed { std::borrow::Cow::Owned(crate::testing::round_to(&xv, y.dtype())) } else { xv };
            let v = cpu::layer_norm(&xv, c, w.as_deref(), b.as_deref(), eps);
            y.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            if c * 4 > 48 * 1024 {
                return Err(Error::Shape(format!("layer_norm: {c} channels exceed the kernel's 12288-channel row buffer")));
            }
            let rows = x.numel() / c.max(1);
            let (ab, x_out, ab_stride, rows_per_sample) = match modulation {
                Some((ab, col, x_out)) => (
                    (ab.cuda_ptr()? + (col * ab.dtype().size()) as u64) as *const _,
                    x_out.cuda_ptr()? as *mut _,
                    ab.dim(1) as i64,
                    (rows / x.dim(0).max(1)) as i64,
                ),
                None => (std::ptr::null(), std::ptr::null_mut(), 0, 1),
            };
            let mut p = crate::cuda::params::LayerNormParams {
                x: x.cuda_ptr()? as *const _,
                y: y.cuda_ptr()? as *mut _,
                weight: super::dptr(weight)?,
                bias: super::dptr(bias)?,
                rows: rows as i64,
                C: c as i32,
                eps,
                ab,
                x_out,
                ab_stride,
                rows_per_sample,
                vec8: 0,
            };
            let ptrs = [p.x as u64, p.y as u64, p.weight as u64, p.bias as u64, p.ab as u64, p.x_out as u64];
            let l = row_launch(rows, c, ab_stride as usize, &ptrs, true, &mut p.vec8);
            let f = match (mixed, l.wide) {
                (true, false) => &k.layer_norm_f32_bf16,
                (true, true) => &k.layer_norm_warp_f32_bf16,
                (false, false) => super::kernel("layer_norm", x.dtype(), &k.layer_norm_f32, &k.layer_norm_bf16)?,
                (false, true) => super::kernel("layer_norm", x.dtype(), &k.layer_norm_warp_f32, &k.layer_norm_warp_bf16)?,
            };
            dev.launch(f, l.grid, l.block, l.smem, &p)
        }
    }
}

/// [`layer_norm_into`] as a new tensor.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    let mut y = Tensor::empty(x.shape(), x.dtype(), &x.device())?;
    layer_norm_into(x, weight, bias, eps, &mut y)?;
    Ok(y)
}

/// Per-row (mean, 1/√(var + eps)) of `x [rows, C]` as f32 pairs into `stats [rows, 2]` (GPU only:
/// the fused LayerNorm-on-read of [`super::depthwise3x3_prenorm_residual`]).
#[cfg(feature = "cuda")]
pub(crate) fn row_stats_into(x: &Tensor, eps: f32, stats: &Tensor) -> Result<()> {
    let c = x.dim(-1);
    let rows = x.numel() / c.max(1);
    check_shape("row_stats", "stats", stats, &[rows, 2])?;
    check_dtype("row_stats", DType::F32, &[stats])?;
    let dev = x.device();
    let dev = dev.as_cuda("row_stats")?;
    if c * 4 > 48 * 1024 {
        return Err(Error::Shape(format!("row_stats: {c} channels exceed the 12288-channel row buffer")));
    }
    let k = dev.kernels();
    let mut p = crate::cuda::params::LayerNormParams {
        x: x.cuda_ptr()? as *const _,
        y: stats.cuda_ptr()? as *mut _,
        weight: std::ptr::null(),
        bias: std::ptr::null(),
        rows: rows as i64,
        C: c as i32,
        eps,
        ab: std::ptr::null(),
        x_out: std::ptr::null_mut(),
        ab_stride: 0,
        rows_per_sample: 1,
        vec8: 0,
    };
    let l = row_launch(rows, c, 0, &[p.x as u64], false, &mut p.vec8);
    let f = super::kernel("row_stats", x.dtype(), &k.row_stats_f32, &k.row_stats_bf16)?;
    dev.launch(f, l.grid, l.block, l.smem, &p)
}

/// Grid, block and dynamic shared memory of a row kernel (layer_norm, row_stats), and whether it
/// holds the row in registers eight channels per access (`vec8`, kernels/norm.cu): when C is a
/// multiple of 8, at most 4 vectors per thread of a 256-thread block, and every non-null operand
/// (`ptrs`) and the modulation stride keep 16-byte alignment. Else one channel per thread with
/// the row staged in shared memory. With vec8, rows of at most 4 vectors per lane (C ≤ 1024) go
/// one warp per row, 8 rows per block (`CASCADE_LN_WARP_ROWS` from the environment: 2 to 32
/// rows, or 0 for a block per row whatever the length; read once, for measuring); with `wide`
/// (the caller has the `*_warp_*` kernels) rows of 1025 to 2048 channels one warp each too, 4 rows
/// per block, and the last value says so; longer ones one block per row.
#[cfg(feature = "cuda")]
fn row_launch(rows: usize, c: usize, ab_stride: usize, ptrs: &[u64], wide: bool, vec8: &mut i32) -> RowLaunch {
    /// Rows per block of the wide warp-per-row kernels (94–104 registers: 5 such blocks per SM).
    const WIDE_ROWS: usize = 4;
    static WARP_ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let warp_rows = *WARP_ROWS.get_or_init(|| match std::env::var("CASCADE_LN_WARP_ROWS").ok().map(|v| v.trim().parse::<usize>()) {
        Some(Ok(r)) if r == 0 || (2..=32).contains(&r) => r,
        Some(_) => {
            eprintln!("warning: CASCADE_LN_WARP_ROWS must be 0 or from 2 to 32; using 8");
            8
        }
        None => 8,
    });
    let ok = c % 8 == 0 && c / 8 <= 4 * 256 && ab_stride % 8 == 0 && ptrs.iter().all(|&a| a % 16 == 0);
    *vec8 = ok as i32;
    let (grid, block, smem, wide) = if ok && c / 8 <= 4 * 32 && warp_rows > 0 {
        (rows.div_ceil(warp_rows), (32, warp_rows as u32), 0, false)
    } else if ok && wide && c / 8 <= 8 * 32 && warp_rows > 0 {
        (rows.div_ceil(WIDE_ROWS), (32, WIDE_ROWS as u32), 0, true)
    } else if ok {
        (rows, (super::row_block(c / 8), 1), 0, false)
    } else {
        (rows, (super::row_block(c), 1), (c * 4) as u32, false)
    };
    RowLaunch { grid: (grid as u32, 1, 1), block: (block.0, block.1, 1), smem, wide }
}

/// A row kernel's launch (see [`row_launch`]).
#[cfg(feature = "cuda")]
struct RowLaunch {
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    smem: u32,
    /// The `*_warp_*` kernels (rows of 1025 to 2048 channels, a warp each).
    wide: bool,
}

/// GlobalResponseNorm (spec §3.3) of `x [B, …, D]` into `y`; `stats [B, D]` (f32) is scratch
/// that ends up holding the per-channel scale `1 + γ·N`.
pub fn grn_into(x: &Tensor, gamma: &Tensor, beta: &Tensor, stats: &mut Tensor, y: &mut Tensor) -> Result<()> {
    check_shape("grn", "output", y, x.shape())?;
    grn_impl(x, gamma, Some(beta), stats, GrnOutput::Separate(y))
}

/// `x ← GRN(GELU(x))` in place (the ResBlock's middle): one pass turns x into GELU(x) (rounded to
/// x's type) and sums its squares, then one pass applies the factor and β.
pub fn gelu_grn_assign(x: &mut Tensor, gamma: &Tensor, beta: &Tensor) -> Result<()> {
    let mut stats = Tensor::empty(&[x.dim(0), x.dim(-1)], DType::F32, &x.device())?;
    grn_impl(&x.view(x.shape())?, gamma, Some(beta), &mut stats, GrnOutput::InPlace(x, true))
}

/// `x ← GRN(x)` in place: one pass sums the squares, one applies the factor and β (for an input
/// whose GELU is already applied, e.g. by [`super::linear_gelu_into`]).
pub fn grn_assign(x: &mut Tensor, gamma: &Tensor, beta: &Tensor) -> Result<()> {
    let mut stats = Tensor::empty(&[x.dim(0), x.dim(-1)], DType::F32, &x.device())?;
    grn_impl(&x.view(x.shape())?, gamma, Some(beta), &mut stats, GrnOutput::InPlace(x, false))
}

/// GRN's factor `1 + γ·N(x)` (f32 `[B, D]`) without applying it, x unchanged: one pass that only
/// reads x. See [`gelu_grn_factor`].
pub fn grn_factor(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    let mut stats = Tensor::empty(&[x.dim(0), x.dim(-1)], DType::F32, &x.device())?;
    grn_impl(x, gamma, None, &mut stats, GrnOutput::FactorOnly(&mut x.view(x.shape())?, false))?;
    Ok(stats)
}

/// `x ← GELU(x)` in place, returning GRN's factor `1 + γ·N` of the result (f32 `[B, D]`) without
/// applying it: `GRN(GELU(x)) = GELU(x)·factor + β`, and a caller whose next step is a linear
/// layer can scale that layer's weight columns by the factor instead of x's
/// (see [`scale_columns`]), when the weight is the smaller of the two.
pub fn gelu_grn_factor(x: &mut Tensor, gamma: &Tensor) -> Result<Tensor> {
    let mut stats = Tensor::empty(&[x.dim(0), x.dim(-1)], DType::F32, &x.device())?;
    grn_impl(&x.view(x.shape())?, gamma, None, &mut stats, GrnOutput::FactorOnly(x, true))?;
    Ok(stats)
}

/// Which kernels compute a ResBlock's `u = GELU(fc1(y))` with GRN's factor
/// ([`linear_gelu_grn_factor_into`]); the CPU has one implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedGrnKernel {
    /// The fused GEMM where [`linear_gelu_grn_fused`] says so (asked for with
    /// `CASCADE_GEMM_WGMMA` on compute capability 9.0, or timed faster under
    /// `CASCADE_KERNEL_TUNE`, and the operands allow it); else Separate. Opt-in until measured
    /// (its first version, without TMA or warp specialisation, lost on an H200: 295 TFLOP/s on
    /// Stage C's MLP against cuBLASLt's 453 plus the sums pass; docs/performance.md, thirteenth
    /// session).
    Auto,
    /// cuBLASLt's GEMM, then GRN's sums pass (which applies the GELU in place).
    Separate,
    /// `gemm_gelu_grn_ws_bf16` (kernels/gemm.cu, sm_90a): one launch writes u, each
    /// 64-position chunk's sums of squares, and the factor, on 128 × 128 tiles. Warp-specialised:
    /// one warp brings the operands in with TMA copies onto transaction barriers while the two
    /// multiplying warpgroups keep one step's products in flight (Auto takes it with
    /// `CASCADE_GEMM_WGMMA=ws` or `1`). bf16, K and N multiples of 8, positions per sample a
    /// multiple of 64, 16-byte aligned x, w and u; an error where it cannot run.
    WgmmaWs,
    /// `gemm_gelu_grn_ws_deep_bf16`: the same with six stages and one block per SM (Auto takes
    /// it with `CASCADE_GEMM_WGMMA=ws_deep`).
    WgmmaWsDeep,
    /// `gemm_gelu_grn_sk_bf16`: the warp-specialised mainloop and the same epilogue, shared out
    /// stream-K on one block per SM: every SM gets the same number of 64-deep steps, where a
    /// grid of one tile per block leaves SMs idle (Stage B's level 3: 80 tiles for 132 SMs).
    /// Auto takes it with `CASCADE_GEMM_WGMMA=sk`, or where it timed fastest under
    /// `CASCADE_KERNEL_TUNE`.
    WgmmaSk,
    /// `gemm_gelu_grn_ws_tall_bf16`: the warp-specialised version on tiles of 256 rows of x by
    /// 128 columns of w (four consumer warpgroups, one block per SM), so that each tile of w
    /// copied from L2 serves twice the rows. Auto takes it with `CASCADE_GEMM_WGMMA=ws_tall`, or
    /// where it timed fastest under `CASCADE_KERNEL_TUNE`.
    WgmmaWsTall,
    /// `gemm_gelu_grn_ws_pair_bf16`: the tall version in clusters of two blocks, neighbours along
    /// the columns, each copying half of their shared 256 rows of x into both by TMA multicast:
    /// a 64-deep step reads 32 KiB from L2 per block where the tall version reads 48. Auto takes
    /// it with `CASCADE_GEMM_WGMMA=ws_pair` (and only then is it checked and timed: not beside
    /// `ws` until it has run on a GPU).
    WgmmaWsPair,
}

impl FusedGrnKernel {
    /// The fused kernel that Auto takes: `CASCADE_GEMM_WGMMA=ws` (or `1`), `ws_deep`, `sk`,
    /// `ws_tall` or `ws_pair` name a version, any other request the first; without a request
    /// (`CASCADE_KERNEL_TUNE`) the warp-specialised one (read once). Beside `ws` (or no request),
    /// the stream-K and tall versions are checked too, beside `ws_pair` the tall one, and timing
    /// or the device's defaults may take one of them instead.
    pub fn requested() -> FusedGrnKernel {
        static K: std::sync::OnceLock<FusedGrnKernel> = std::sync::OnceLock::new();
        *K.get_or_init(|| match std::env::var("CASCADE_GEMM_WGMMA") {
            Ok(v) => FusedGrnKernel::named(&v).unwrap_or(FusedGrnKernel::WgmmaWs),
            Err(_) => FusedGrnKernel::WgmmaWs,
        })
    }

    /// The version a `CASCADE_GEMM_WGMMA` value asks for (`1` or `ws`, `ws_deep`, `sk`,
    /// `ws_tall`, `ws_pair`); None: a value that asks for none. The one list of the switch's
    /// values.
    pub fn named(value: &str) -> Option<FusedGrnKernel> {
        Some(match value.trim() {
            "1" | "ws" => FusedGrnKernel::WgmmaWs,
            "ws_deep" => FusedGrnKernel::WgmmaWsDeep,
            "sk" => FusedGrnKernel::WgmmaSk,
            "ws_tall" => FusedGrnKernel::WgmmaWsTall,
            "ws_pair" => FusedGrnKernel::WgmmaWsPair,
            _ => return None,
        })
    }
}

/// The fused kernels' dynamic shared memory: their stages of two 16 KiB tiles (the tall and
/// paired versions' x tile is 32 KiB: 256 rows), 1 KiB to align them to the 128-byte swizzle's
/// 1024-byte period, and the warp-specialised kernels' two 8-byte barriers per stage; the
/// stream-K kernel's epilogue has scratch of its own past them (kernels/gemm.cu
/// `GG_EPILOGUE_BYTES`: the others' epilogues reuse the stages).
#[cfg(feature = "cuda")]
pub(crate) fn gemm_grn_smem(kernel: FusedGrnKernel) -> usize {
    const EPILOGUE_BYTES: usize = 128 * (128 * 2 + 16) + 8 * 128 * 4 + 2 * 128 * 4 + 4 * 4 + 16;
    let (stages, scratch) = match kernel {
        FusedGrnKernel::WgmmaWsDeep => (6, 0),
        FusedGrnKernel::WgmmaSk => (5, EPILOGUE_BYTES),
        FusedGrnKernel::WgmmaWsTall | FusedGrnKernel::WgmmaWsPair => (4, 0),
        _ => (3, 0),
    };
    stages * (tile_rows(kernel) + 128) * 64 * 2 + 1024 + 2 * stages * 8 + scratch
}

/// The rows of x in a fused kernel's tile: 128, or 256 for the tall and paired versions (two of
/// the epilogue's 128-row tiles).
#[cfg(feature = "cuda")]
fn tile_rows(kernel: FusedGrnKernel) -> usize {
    if matches!(kernel, FusedGrnKernel::WgmmaWsTall | FusedGrnKernel::WgmmaWsPair) {
        256
    } else {
        128
    }
}

/// How many pairs of blocks of the paired fused kernel ([`FusedGrnKernel::WgmmaWsPair`]) the
/// GPU runs at once: twice this below the SM count leaves SMs idle in every full wave (a GPC
/// whose SMs do not divide into pairs).
#[cfg(feature = "cuda")]
pub fn fc1_pairs_resident(dev: &crate::cuda::CudaDevice) -> Result<usize> {
    let f = &dev.kernels().gemm_gelu_grn_ws_pair_bf16;
    let smem = gemm_grn_smem(FusedGrnKernel::WgmmaWsPair);
    dev.opt_in_shared_memory(f, crate::cuda::SharedMemoryOptIn::GemmGrnWsPair, smem)?;
    dev.max_active_clusters(f, 544, smem as u32, 2)
}

/// `u = GELU(x · wᵀ + bias)` (u rounded to x's type before and after the GELU) and GRN's factor
/// `1 + γ·N(u)` per sample and channel (`factor` f32 `[B, N]`), nothing applied: what
/// [`super::linear_into`] then [`gelu_grn_factor`] compute. x `[B, …, K]`, w `[N, K]`, u
/// `[B, …, N]`. Apply the factor with [`grn_apply_factor_assign`] or fold it into the next
/// layer's weight with [`scale_columns`].
pub fn linear_gelu_grn_factor_into(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    kernel: FusedGrnKernel,
    u: &mut Tensor,
    factor: &mut Tensor,
) -> Result<()> {
    let (m, k, n) = check_fc1_operands(x, w, bias, gamma, u, factor)?;
    let fused = match kernel {
        FusedGrnKernel::Separate => None,
        FusedGrnKernel::Auto => linear_gelu_grn_kernel(x, w, bias, gamma)?.filter(|_| fused_operands(x, w, u, (m, k, n)).is_ok()),
        _ => {
            fused_operands(x, w, u, (m, k, n))?;
            Some(kernel)
        }
    };
    #[cfg(feature = "cuda")]
    if let (Some(variant), Device::Cuda(dev)) = (fused, x.device()) {
        if m == 0 {
            return Ok(());
        }
        if variant == FusedGrnKernel::WgmmaSk {
            return gemm_gelu_grn_sk(&dev, x, w, bias, gamma, u, factor, (m, k, n), None);
        }
        let b = x.dim(0);
        let rows = m / b;
        // Blocks: column tiles of 128 by row tiles of 128 (the tall and paired versions: 256, two
        // of the epilogue's 128-row tiles each; the paired one in clusters of two column tiles,
        // the last past N where their number is odd).
        let pair = variant == FusedGrnKernel::WgmmaWsPair;
        let x_rows = tile_rows(variant);
        let tiles = (n.div_ceil(128), m.div_ceil(128));
        let grid = (if pair { tiles.0.next_multiple_of(2) } else { tiles.0 } as u32, m.div_ceil(x_rows) as u32, 1);
        let (counters, capacity) = dev.completion_counters();
        if tiles.0 + 1 > capacity || tiles.1 > 65535 {
            return Err(Error::Shape(format!("linear_gelu_grn: {m}×{n} is beyond the fused kernel's grid")));
        }
        // The chunks' sums [M / 64, N], then the column tiles' sums of norms [B, tiles]: one buffer.
        let part = Tensor::empty(&[m / 64 * n + b * tiles.0], DType::F32, &x.device())?;
        let p = crate::cuda::params::GemmGrnParams {
            x: x.cuda_ptr()? as *const _,
            w: w.cuda_ptr()? as *const _,
            bias: super::dptr(bias)?,
            y: u.cuda_ptr()? as *mut _,
            part: part.cuda_ptr()? as *mut f32,
            scale: factor.cuda_ptr()? as *mut f32,
            group_sums: (part.cuda_ptr()? + (m / 64 * n * 4) as u64) as *mut f32,
            gamma: gamma.cuda_ptr()? as *const _,
            counters: counters as *mut u32,
            M: m as i32,
            N: n as i32,
            K: k as i32,
            rows: rows as i32,
        };
        use crate::cuda::SharedMemoryOptIn;
        let smem = gemm_grn_smem(variant);
        // The operands as tensor maps, boxes of 128 (x: the tall version's 256) rows × 64
        // columns (one 128-byte swizzle row each): made here, at launch (or capture), from
        // the operands' addresses. The paired version copies 128 of its 256 rows per block.
        let q = crate::cuda::params::GemmGrnTmaParams {
            x_map: crate::cuda::tensor_map_bf16(x.cuda_ptr()?, m, k, if pair { 128 } else { x_rows as u32 }, 64)?,
            w_map: crate::cuda::tensor_map_bf16(w.cuda_ptr()?, n, k, 128, 64)?,
            g: p,
        };
        // Two consumer warpgroups and the producer warp (the tall and paired versions: four).
        let (f, which, threads) = match variant {
            FusedGrnKernel::WgmmaWsDeep => (&dev.kernels().gemm_gelu_grn_ws_deep_bf16, SharedMemoryOptIn::GemmGrnWsDeep, 288),
            FusedGrnKernel::WgmmaWsTall => (&dev.kernels().gemm_gelu_grn_ws_tall_bf16, SharedMemoryOptIn::GemmGrnWsTall, 544),
            FusedGrnKernel::WgmmaWsPair => (&dev.kernels().gemm_gelu_grn_ws_pair_bf16, SharedMemoryOptIn::GemmGrnWsPair, 544),
            _ => (&dev.kernels().gemm_gelu_grn_ws_bf16, SharedMemoryOptIn::GemmGrnWs, 288),
        };
        dev.opt_in_shared_memory(f, which, smem)?;
        if pair {
            return dev.launch_cluster(f, grid, (threads, 1, 1), smem as u32, (2, 1, 1), &q);
        }
        return dev.launch(f, grid, (threads, 1, 1), smem as u32, &q);
    }
    let _ = (fused, k);
    super::linear_into(x, w, bias, u)?;
    grn_impl(&u.view(u.shape())?, gamma, None, factor, GrnOutput::FactorOnly(u, true))
}

/// [`linear_gelu_grn_factor_into`] on the stream-K kernel ([`FusedGrnKernel::WgmmaSk`]) on
/// `blocks` blocks (None: one per SM, at most one per 64-deep step of the product; tests pass a
/// few, so that blocks take several tiles and tiles are cut into pieces at odd places): an error
/// where it cannot run (what [`FusedGrnKernel::WgmmaWs`] takes).
pub fn linear_gelu_grn_sk_into(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    u: &mut Tensor,
    factor: &mut Tensor,
    blocks: Option<usize>,
) -> Result<()> {
    let (m, k, n) = check_fc1_operands(x, w, bias, gamma, u, factor)?;
    fused_operands(x, w, u, (m, k, n))?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = x.device() {
        return gemm_gelu_grn_sk(&dev, x, w, bias, gamma, u, factor, (m, k, n), blocks);
    }
    let _ = blocks;
    Err(Error::Shape("linear_gelu_grn: the stream-K kernel runs on a GPU".into()))
}

/// The operands of a ResBlock's fc1 with GRN's statistics, checked against one another:
/// (M, K, N).
fn check_fc1_operands(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    u: &Tensor,
    factor: &Tensor,
) -> Result<(usize, usize, usize)> {
    if x.rank() < 2 || w.rank() != 2 {
        return Err(Error::Shape(format!("linear_gelu_grn: x must be [B, …, K] and w [N, K], got {:?} and {:?}", x.shape(), w.shape())));
    }
    let (m, k, n) = super::linear::check(x, w, bias, u)?;
    if u.shape()[..u.rank() - 1] != x.shape()[..x.rank() - 1] {
        return Err(Error::Shape(format!("linear_gelu_grn: u {:?} does not match x {:?}", u.shape(), x.shape())));
    }
    check_numel("linear_gelu_grn", "gamma", gamma, n)?;
    check_dtype("linear_gelu_grn", x.dtype(), &[gamma, u])?;
    check_shape("linear_gelu_grn", "factor", factor, &[x.dim(0), n])?;
    check_dtype("linear_gelu_grn", DType::F32, &[factor])?;
    check_device("linear_gelu_grn", &x.device(), &[gamma, factor])?;
    Ok((m, k, n))
}

/// The launch behind [`FusedGrnKernel::WgmmaSk`]: a cooperative grid of at most one block per SM
/// (all resident: a block may wait for another's piece of a tile), never more blocks than 64-deep
/// steps; the operands were checked ([`fused_operands`]).
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
fn gemm_gelu_grn_sk(
    dev: &std::sync::Arc<crate::cuda::CudaDevice>,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    u: &mut Tensor,
    factor: &mut Tensor,
    (m, k, n): (usize, usize, usize),
    blocks: Option<usize>,
) -> Result<()> {
    use crate::cuda::SharedMemoryOptIn;
    if m == 0 {
        return Ok(());
    }
    let b = x.dim(0);
    let f = &dev.kernels().gemm_gelu_grn_sk_bf16;
    let smem = gemm_grn_smem(FusedGrnKernel::WgmmaSk);
    dev.opt_in_shared_memory(f, SharedMemoryOptIn::GemmGrnSk, smem)?;
    let grid = super::linear::stream_k_grid(dev, "linear_gelu_grn", f, smem, (m, k, n), blocks)?;
    let tiles_n = n.div_ceil(128);
    // The pieces' counters first, then the column tiles' and the last one's.
    let (counters, capacity) = dev.completion_counters();
    if 2 * grid + tiles_n + 1 > capacity {
        return Err(Error::Shape(format!(
            "linear_gelu_grn: {m}×{n} on {grid} blocks needs more completion counters than the device keeps"
        )));
    }
    // The chunks' sums [M / 64, N], the column tiles' sums of norms [B, tiles_n], then the
    // warpgroups' first pieces [2 · grid, 16, 128] float4: one buffer.
    // The pieces start 16-byte aligned: at sums + groups rounded up to a multiple of 4.
    let (sums, groups) = (m / 64 * n, b * tiles_n);
    let pieces = (sums + groups).div_ceil(4) * 4;
    let part = Tensor::empty(&[pieces + 2 * grid * 16 * 128 * 4], DType::F32, &x.device())?;
    let base = part.cuda_ptr()?;
    let g = crate::cuda::params::GemmGrnParams {
        x: x.cuda_ptr()? as *const _,
        w: w.cuda_ptr()? as *const _,
        bias: super::dptr(bias)?,
        y: u.cuda_ptr()? as *mut _,
        part: base as *mut f32,
        scale: factor.cuda_ptr()? as *mut f32,
        group_sums: (base + (sums * 4) as u64) as *mut f32,
        gamma: gamma.cuda_ptr()? as *const _,
        counters: (counters + (2 * grid * 4) as u64) as *mut u32,
        M: m as i32,
        N: n as i32,
        K: k as i32,
        rows: (m / b) as i32,
    };
    let q = crate::cuda::params::GemmGrnSkParams {
        x_map: crate::cuda::tensor_map_bf16(x.cuda_ptr()?, m, k, 128, 64)?,
        w_map: crate::cuda::tensor_map_bf16(w.cuda_ptr()?, n, k, 128, 64)?,
        g,
        partials: (base + (pieces * 4) as u64) as *mut f32,
        counters: counters as *mut u32,
    };
    let cfg = cudarc::driver::LaunchConfig { grid_dim: (grid as u32, 1, 1), block_dim: (288, 1, 1), shared_mem_bytes: smem as u32 };
    dev.launch_cooperative(f, cfg, &q)
}

/// [`linear_gelu_grn_factor_into`] into new tensors: `(u, factor)`.
pub fn linear_gelu_grn_factor(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    kernel: FusedGrnKernel,
) -> Result<(Tensor, Tensor)> {
    let mut shape = x.shape().to_vec();
    if let (Some(last), true) = (shape.last_mut(), w.rank() == 2) {
        *last = w.dim(0);
    }
    let mut u = Tensor::empty(&shape, x.dtype(), &x.device())?;
    let mut factor = Tensor::empty(&[x.dim(0), w.dim(0)], DType::F32, &x.device())?;
    linear_gelu_grn_factor_into(x, w, bias, gamma, kernel, &mut u, &mut factor)?;
    Ok((u, factor))
}

/// Whether [`FusedGrnKernel::Auto`] takes a fused kernel for these operands
/// ([`linear_gelu_grn_kernel`] says which). Never on the CPU.
pub fn linear_gelu_grn_fused(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, gamma: &Tensor) -> Result<bool> {
    Ok(linear_gelu_grn_kernel(x, w, bias, gamma)?.is_some())
}

/// The fused kernel [`FusedGrnKernel::Auto`] takes for these operands, if any: one that passed
/// its start-up check (`CASCADE_GEMM_WGMMA` on compute capability 9.0, or `CASCADE_KERNEL_TUNE`),
/// for operands it takes, as the device's defaults decide ([`super::GemmOptions`]: `fused_fc1`,
/// then `fc1_stream_k`, `fc1_tall` and `fc1_pair` for the version), else as the switch asks (its
/// version), else, under `CASCADE_KERNEL_TUNE`, where it timed faster than cuBLASLt and GRN's
/// sums pass (the requested version and those checked beside it all timed). None: cuBLASLt,
/// then the sums pass.
pub fn linear_gelu_grn_kernel(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, gamma: &Tensor) -> Result<Option<FusedGrnKernel>> {
    let _ = gamma;
    #[cfg(feature = "cuda")]
    if let (Device::Cuda(dev), true) = (x.device(), x.rank() >= 2 && w.rank() == 2) {
        // The versions that passed their start-up checks: the requested one, and those checked
        // beside it (the stream-K and tall ones beside `ws`, the tall one beside `ws_pair`).
        let requested = FusedGrnKernel::requested();
        let req = dev.wgmma_gemm().then_some(requested);
        let sk = dev.grn_sk_gemm().then_some(FusedGrnKernel::WgmmaSk);
        let tall = dev.grn_tall_gemm().then_some(FusedGrnKernel::WgmmaWsTall);
        let pair = dev.grn_pair_gemm().then_some(FusedGrnKernel::WgmmaWsPair);
        if req.is_none() && sk.is_none() && tall.is_none() && pair.is_none() {
            return Ok(None);
        }
        let (k, n) = (x.dim(-1), w.dim(0));
        let m = x.numel() / k.max(1);
        // u is the caller's: the launch checks its alignment.
        let fits = w.dim(1) == k
            && bias.is_none_or(|b| b.numel() == n && b.dtype() == x.dtype())
            && fused_operands_ok(x, w, x.dim(0), (m, k, n))?.is_none();
        if !fits {
            return Ok(None);
        }
        // The device's defaults decide first, then the switch, then timing.
        let defaults = dev.gemm_defaults();
        if let Some(on) = defaults.fused_fc1 {
            // A version set on is taken (stream-K first); one set off is not, even if requested.
            let off = |v: &FusedGrnKernel| {
                (*v == FusedGrnKernel::WgmmaSk && defaults.fc1_stream_k == Some(false))
                    || (*v == FusedGrnKernel::WgmmaWsTall && defaults.fc1_tall == Some(false))
                    || (*v == FusedGrnKernel::WgmmaWsPair && defaults.fc1_pair == Some(false))
            };
            return Ok(match (on, defaults.fc1_stream_k, defaults.fc1_tall, defaults.fc1_pair) {
                (false, ..) => None,
                (true, Some(true), _, _) => sk,
                (true, _, Some(true), _) => tall,
                (true, _, _, Some(true)) => pair,
                (true, None, None, None) => req.or(sk),
                (true, ..) => req.filter(|v| !off(v)),
            });
        }
        if crate::cuda::gemm_wgmma_requested() {
            return Ok(req.or(sk));
        }
        let mut candidates = vec![(FusedGrnKernel::Separate, "cuBLASLt + sums pass")];
        if let Some(v) = req.filter(|v| !matches!(v, FusedGrnKernel::WgmmaSk | FusedGrnKernel::WgmmaWsTall | FusedGrnKernel::WgmmaWsPair)) {
            candidates.push((v, "fused"));
        }
        if let Some(v) = sk {
            candidates.push((v, "fused stream-K"));
        }
        if let Some(v) = tall {
            candidates.push((v, "fused tall"));
        }
        if let Some(v) = pair {
            candidates.push((v, "fused pair"));
        }
        let dims = [m, k, n, x.dim(0), bias.is_some() as usize];
        let names: Vec<&str> = candidates.iter().map(|c| c.1).collect();
        let choice = dev.choose_kernel("linear_gelu_grn", &dims, &names, &mut |i| {
            linear_gelu_grn_factor(x, w, bias, gamma, candidates[i].0).map(drop)
        })?;
        return Ok(Some(candidates[choice].0).filter(|&v| v != FusedGrnKernel::Separate));
    }
    let _ = (x, w, bias);
    Ok(None)
}

/// Why the fused kernel cannot take these operands (None: it can).
#[cfg(feature = "cuda")]
fn fused_operands_ok(x: &Tensor, w: &Tensor, b: usize, (m, k, n): (usize, usize, usize)) -> Result<Option<String>> {
    let why = if !matches!(x.device(), Device::Cuda(_)) {
        "it runs on a GPU".to_string()
    } else if x.dtype() != DType::BF16 || w.dtype() != DType::BF16 {
        format!("it runs in bf16, not {}", x.dtype())
    } else if k % 8 != 0 || n % 8 != 0 || k == 0 || n == 0 {
        format!("K ({k}) and N ({n}) must be positive multiples of 8")
    } else if b == 0 || m % b != 0 || (m / b) % 64 != 0 {
        format!("positions per sample must be a multiple of 64 ({m} rows in {b} samples)")
    } else if m > i32::MAX as usize || n > i32::MAX as usize || k > i32::MAX as usize || m.saturating_mul(n) > isize::MAX as usize / 2 {
        format!("{m}×{k}×{n} is beyond 32-bit sizes")
    } else if x.cuda_ptr()? % 16 != 0 || w.cuda_ptr()? % 16 != 0 {
        "x and w must start 16-byte aligned".to_string()
    } else {
        if let Device::Cuda(dev) = x.device() {
            if dev.compute_capability() != (9, 0) {
                let (major, minor) = dev.compute_capability();
                return Ok(Some(format!("it uses Hopper's wgmma (compute capability 9.0); {} has {major}.{minor}", dev.name())));
            }
        }
        return Ok(None);
    };
    Ok(Some(why))
}

/// [`fused_operands_ok`] for the explicit request, with u's alignment too: an error saying why not.
#[cfg(feature = "cuda")]
fn fused_operands(x: &Tensor, w: &Tensor, u: &Tensor, mkn: (usize, usize, usize)) -> Result<()> {
    let why = match fused_operands_ok(x, w, x.dim(0), mkn)? {
        None if u.cuda_ptr()? % 16 != 0 => Some("u must start 16-byte aligned".to_string()),
        why => why,
    };
    match why {
        Some(why) => Err(Error::Shape(format!("linear_gelu_grn: the fused kernel cannot run this: {why}"))),
        None => Ok(()),
    }
}

/// Without CUDA there is no fused kernel.
#[cfg(not(feature = "cuda"))]
fn fused_operands(_: &Tensor, _: &Tensor, _: &Tensor, _: (usize, usize, usize)) -> Result<()> {
    Err(Error::Shape("linear_gelu_grn: the fused kernel runs on a GPU (a build with the cuda feature)".into()))
}

/// `x ← x·factor + β`: GlobalResponseNorm applied with a factor from [`linear_gelu_grn_factor`]
/// or [`gelu_grn_factor`] (`factor` f32 `[B, D]`, `beta [D]`, x `[B, …, D]`).
pub fn grn_apply_factor_assign(x: &mut Tensor, factor: &Tensor, beta: &Tensor) -> Result<()> {
    if x.rank() < 2 {
        return Err(Error::Shape(format!("grn_apply: x must be [B, …, D], got {:?}", x.shape())));
    }
    let (b, d) = (x.dim(0), x.dim(-1));
    let n = x.numel() / (b * d).max(1);
    check_shape("grn_apply", "factor", factor, &[b, d])?;
    check_dtype("grn_apply", DType::F32, &[factor])?;
    check_numel("grn_apply", "beta", beta, d)?;
    check_dtype("grn_apply", x.dtype(), &[beta])?;
    check_device("grn_apply", &x.device(), &[factor, beta])?;
    match x.device() {
        Device::Cpu => {
            let (f, bt) = (factor.cpu_f32()?, beta.cpu_f32()?);
            let v: Vec<f32> = x.cpu_f32()?.iter().enumerate().map(|(i, &v)| v * f[(i / (n * d)) * d + i % d] + bt[i % d]).collect();
            x.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => launch_grn_apply(&dev, "grn_apply", x.dtype(), x.cuda_ptr()?, x.cuda_ptr()?, factor, Some(beta), (b, n, d)),
    }
}

/// `y = x ⊙ factor` per sample and channel (GRN's factor applied without β): x and y `[B, …, D]`
/// of one type, factor f32 `[B, D]`.
pub fn scale_by_factor_into(x: &Tensor, factor: &Tensor, y: &mut Tensor) -> Result<()> {
    if x.rank() < 2 {
        return Err(Error::Shape(format!("scale_by_factor: x must be [B, …, D], got {:?}", x.shape())));
    }
    let (b, d) = (x.dim(0), x.dim(-1));
    let n = x.numel() / (b * d).max(1);
    check_shape("scale_by_factor", "factor", factor, &[b, d])?;
    check_dtype("scale_by_factor", DType::F32, &[factor])?;
    check_shape("scale_by_factor", "y", y, x.shape())?;
    check_dtype("scale_by_factor", x.dtype(), &[y])?;
    check_device("scale_by_factor", &x.device(), &[factor, y])?;
    match x.device() {
        Device::Cpu => {
            let (f, xv) = (factor.cpu_f32()?, x.cpu_f32()?);
            let v: Vec<f32> =
                xv.chunks((n * d).max(1)).zip(f.chunks(d.max(1))).flat_map(|(xs, fs)| cpu::scale_columns(xs, d, fs)).collect();
            y.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        // grn_apply without β.
        Device::Cuda(dev) => launch_grn_apply(&dev, "scale_by_factor", x.dtype(), x.cuda_ptr()?, y.cuda_ptr()?, factor, None, (b, n, d)),
    }
}

/// [`scale_by_factor_into`] into a new tensor.
pub(crate) fn scale_by_factor(x: &Tensor, factor: &Tensor) -> Result<Tensor> {
    let mut y = Tensor::empty(x.shape(), x.dtype(), &x.device())?;
    scale_by_factor_into(x, factor, &mut y)?;
    Ok(y)
}

/// `w [rows, cols]` with column j multiplied by `factor[0, j]` (f32 `[1, cols]`, e.g. from
/// [`gelu_grn_factor`] for one sample): `x·(w⊙factor)ᵀ = (x⊙factor)·wᵀ`.
pub fn scale_columns(w: &Tensor, factor: &Tensor) -> Result<Tensor> {
    let &[rows, cols] = w.shape() else {
        return Err(Error::Shape(format!("scale_columns: w must be [rows, cols], got {:?}", w.shape())));
    };
    // One "sample" of `rows` positions.
    let mut y = Tensor::empty(&[1, rows, cols], w.dtype(), &w.device())?;
    scale_by_factor_into(&w.view(&[1, rows, cols])?, factor, &mut y)?;
    y.reshape(&[rows, cols])
}

enum GrnOutput<'a> {
    /// y = GRN(x).
    Separate(&'a mut Tensor),
    /// x = GRN(GELU(x)) (`true`) or GRN(x); the input argument is a view of the same tensor.
    InPlace(&'a mut Tensor, bool),
    /// stats = the factor of GELU(x) (`true`: x = GELU(x) too) or of x, nothing applied; the input
    /// is a view of the same tensor.
    FactorOnly(&'a mut Tensor, bool),
}

fn grn_impl(x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>, stats: &mut Tensor, out: GrnOutput) -> Result<()> {
    if x.rank() < 2 {
        return Err(Error::Shape(format!("grn: x must be [B, …, D], got {:?}", x.shape())));
    }
    let (b, d) = (x.dim(0), x.dim(-1));
    let n = x.numel() / (b * d).max(1);
    check_numel("grn", "gamma", gamma, d)?;
    check_shape("grn", "stats", stats, &[b, d])?;
    check_dtype("grn", x.dtype(), &[gamma])?;
    check_dtype("grn", DType::F32, &[stats])?;
    check_device("grn", &x.device(), &[gamma, stats])?;
    if let Some(beta) = beta {
        check_numel("grn", "beta", beta, d)?;
        check_dtype("grn", x.dtype(), &[beta])?;
        check_device("grn", &x.device(), &[beta])?;
    }
    let (y, gelu, apply) = match out {
        GrnOutput::Separate(y) => (y, false, true),
        GrnOutput::InPlace(y, gelu) => (y, gelu, true),
        GrnOutput::FactorOnly(y, gelu) => (y, gelu, false),
    };
    let beta = match (apply, beta) {
        (true, Some(b)) => Some(b),
        (true, None) => return Err(Error::Shape("grn: applying needs beta".into())),
        (false, _) => None,
    };
    check_dtype("grn", x.dtype(), &[y])?;
    check_device("grn", &x.device(), &[y])?;
    match x.device() {
        Device::Cpu => {
            let mut v = x.cpu_f32()?.into_owned();
            if gelu {
                v = crate::testing::round_to(&v.iter().map(|&a| cpu::gelu(a)).collect::<Vec<_>>(), x.dtype());
            }
            match beta {
                Some(beta) => y.set_cpu_f32(&cpu::grn(&v, b, n, d, &gamma.cpu_f32()?, &beta.cpu_f32()?)),
                None => {
                    stats.set_cpu_f32(&cpu::grn_scale(&v, b, n, d, &gamma.cpu_f32()?))?;
                    if gelu {
                        y.set_cpu_f32(&v)?;
                    }
                    Ok(())
                }
            }
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            use crate::cuda::params::GrnPartialParams;
            if b > 65535 || n > i32::MAX as usize || d > i32::MAX as usize {
                return Err(Error::Shape(format!("grn: {b}×{n}×{d} is beyond the kernels' grid")));
            }
            let k = dev.kernels();
            let dt = x.dtype();
            // Eight consecutive channels per thread (groups of 256) when every row of x and y
            // starts 16-byte aligned; else two per thread (groups of 64).
            let (x0, y0) = (x.cuda_ptr()?, y.cuda_ptr()?);
            let vec8 = d % 8 == 0 && x0 % 16 == 0 && y0 % 16 == 0;
            let groups = d.div_ceil(if vec8 { 256 } else { 64 });
            let (counters, capacity) = dev.completion_counters();
            if groups + 1 > capacity {
                return Err(Error::Shape(format!("grn: {d} channels need more completion counters than the device keeps")));
            }
            // The samples are independent: as many per launch as the completion counters cover.
            let per_launch = capacity / (groups + 1);
            // grn_partial over every sample with chunks of `chunk_rows` positions, GELU(x) written
            // to `y_out` (when asked) and the factor to `scale` (device addresses).
            let partials = |chunk_rows: usize, y_out: u64, scale: u64| -> Result<()> {
                let chunks = n.div_ceil(chunk_rows).max(1);
                if chunks > 65535 {
                    return Err(Error::Shape(format!("grn: {n} positions are more than the kernels' grid takes (65535 × {chunk_rows})")));
                }
                // The chunks' sums [samples, chunks, D], then the groups' sums of norms [samples,
                // groups]: one buffer (a buffer is a node of a captured graph when tests poison them).
                let samples = b.min(per_launch);
                let part = Tensor::empty(&[samples * chunks * d + samples * groups], DType::F32, &x.device())?;
                let group_sums = part.cuda_ptr()? + (samples * chunks * d * 4) as u64;
                let elt = dt.size() as u64;
                for first in (0..b).step_by(per_launch) {
                    let bs = per_launch.min(b - first);
                    let pp = GrnPartialParams {
                        x: (x0 + (first * n * d) as u64 * elt) as *const _,
                        // GELU's output is written here (in place: x is a view of y), so the apply
                        // pass only streams: recomputing the erf there cost more than this write
                        // (0.36 ms per Stage C step on an H200, docs/performance.md).
                        y: if gelu { (y_out + (first * n * d) as u64 * elt) as *mut _ } else { std::ptr::null_mut() },
                        part: part.cuda_ptr()? as *mut f32,
                        scale: (scale + (first * d * 4) as u64) as *mut f32,
                        gamma: gamma.cuda_ptr()? as *const _,
                        counters: counters as *mut u32,
                        B: bs as i32,
                        N: n as i32,
                        D: d as i32,
                        chunk_rows: chunk_rows as i32,
                        chunks: chunks as i32,
                        gelu: gelu as i32,
                        vec8: vec8 as i32,
                        group_sums: group_sums as *mut f32,
                        short_tail: grn_short_tail() as i32,
                        batched_remainder: grn_batched_remainder() as i32,
                    };
                    dev.launch(
                        super::kernel("grn", dt, &k.grn_partial_f32, &k.grn_partial_bf16)?,
                        (groups as u32, chunks as u32, bs as u32),
                        (32, 8, 1),
                        0,
                        &pp,
                    )?;
                }
                Ok(())
            };
            let chunk_rows = match grn_chunk_rows() {
                Some(rows) => rows,
                None => {
                    // Blocks per SM: the bf16 kernel's launch bound (80 registers) gives three;
                    // the f32 kernel is not tuned.
                    let per_sm = if dt == DType::BF16 { 3 } else { 2 };
                    let wave =
                        |slots_per_sm: usize| grn_wave_chunk_rows(n, groups * b.min(per_launch), dev.multiprocessors() * slots_per_sm);
                    let sized = wave(per_sm);
                    // Under CASCADE_KERNEL_TUNE, chunks for two waves and for a wave at one block
                    // per SM fewer are timed against the one-wave chunks.
                    let mut candidates = vec![sized];
                    if crate::cuda::KernelTuning::requested().on() {
                        for rows in [wave(2 * per_sm), wave(per_sm - 1)] {
                            if !candidates.contains(&rows) && n.div_ceil(rows) <= 65535 {
                                candidates.push(rows);
                            }
                        }
                    }
                    if candidates.len() == 1 {
                        sized
                    } else {
                        let names: Vec<String> = candidates.iter().map(|r| format!("{r} rows")).collect();
                        let names: Vec<&str> = names.iter().map(String::as_str).collect();
                        let mut scratch: Option<(Tensor, Tensor)> = None;
                        let i = dev.choose_kernel("grn_partial", &[b, n, d, gelu as usize, dt as usize], &names, &mut |i| {
                            if scratch.is_none() {
                                scratch =
                                    Some((Tensor::empty(x.shape(), dt, &x.device())?, Tensor::empty(&[b, d], DType::F32, &x.device())?));
                            }
                            let (sy, ss) = scratch.as_ref().expect("made above");
                            partials(candidates[i], sy.cuda_ptr()?, ss.cuda_ptr()?)
                        })?;
                        candidates[i]
                    }
                }
            };
            partials(chunk_rows, y0, stats.cuda_ptr()?)?;
            let Some(beta) = beta else { return Ok(()) };
            // From y, which holds GELU(x) when GELU was asked (grn_partial wrote it), else from x.
            let from = if gelu { y.cuda_ptr()? } else { x.cuda_ptr()? };
            launch_grn_apply(&dev, "grn", dt, from, y.cuda_ptr()?, stats, Some(beta), (b, n, d))
        }
    }
}

/// `y[s, i, j] = x[s, i, j]·scale[s, j] (+ β[j])` for `s < b`, `i < n`, `j < d` (x, y device
/// addresses, scale f32 `[b, d]`): the `grn_apply` kernel, GRN's apply pass, or a weight's
/// columns scaled when β is None. Nothing is launched for no elements.
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
fn launch_grn_apply(
    dev: &crate::cuda::CudaDevice,
    op: &str,
    dtype: DType,
    x: u64,
    y: u64,
    scale: &Tensor,
    beta: Option<&Tensor>,
    (b, n, d): (usize, usize, usize),
) -> Result<()> {
    if b * n * d == 0 {
        return Ok(());
    }
    let k = dev.kernels();
    let ap = crate::cuda::params::GrnApplyParams {
        x: x as *const _,
        y: y as *mut _,
        scale: scale.cuda_ptr()? as *const f32,
        beta: super::dptr(beta)?,
        B: b as i32,
        N: n as i64,
        D: d as i32,
    };
    dev.launch_vec8(super::kernel(op, dtype, &k.grn_apply_f32, &k.grn_apply_bf16)?, b * n * d, &ap)
}

/// Whether grn_partial's last block per sample takes the short way (the default): the sample's
/// denominator from the channel groups' sums of norms, and the factor's loads issued four steps
/// at a time, instead of two passes over the D norms a batch at a time. The Nsight profile of
/// Stage C (H200) showed the SMs active for 61 % of the launch: the rest is this serial tail.
/// `CASCADE_GRN_TAIL=0` (read once) keeps the long way, for A/B measurements.
#[cfg(feature = "cuda")]
fn grn_short_tail() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CASCADE_GRN_TAIL").map_or(true, |v| v.trim() != "0"))
}

/// Whether grn_partial issues the rows of a chunk that do not fill a batch of loads, and its
/// last block's chunk sums likewise, as one predicated batch (the default) instead of one load
/// at a time: on Stage B's level 2 (7 rows per thread, 19 chunks) four round trips to memory
/// fewer per launch, two of them on the launch's critical path. The sums are added in the same
/// order, so the results are bit-identical. Measured on an H200 (docs/performance.md,
/// thirteenth session): Stage B −0.24 ms, B lite −0.14 ms per step (within about the noise
/// between processes). `CASCADE_GRN_REMAINDER=serial` (read once) keeps the earlier schedule,
/// for A/B measurements.
#[cfg(feature = "cuda")]
fn grn_batched_remainder() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CASCADE_GRN_REMAINDER").map_or(true, |v| v.trim() != "serial"))
}

/// Positions per chunk of grn_partial when `CASCADE_GRN_CHUNK` in the environment fixes them (a
/// multiple of 8 from 8 to 4096; read once), for measuring; else None: sized to the card by
/// [`grn_wave_chunk_rows`].
#[cfg(feature = "cuda")]
fn grn_chunk_rows() -> Option<usize> {
    static ROWS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| match std::env::var("CASCADE_GRN_CHUNK").ok().map(|v| v.trim().parse::<usize>()) {
        Some(Ok(r)) if r % 8 == 0 && (8..=4096).contains(&r) => Some(r),
        Some(_) => {
            eprintln!("warning: CASCADE_GRN_CHUNK must be a multiple of 8 from 8 to 4096; sizing the chunks to the card");
            None
        }
        None => None,
    })
}

/// Positions per grn_partial block so that the launch is one wave: the `slots` blocks the card
/// holds at once (SMs × blocks per SM) shared between the `columns` (sample, channel group)
/// pairs, each column's `n` positions split evenly between its blocks (rounded up to a multiple
/// of 8, the block's rows of warps; at least 16). A fixed chunk left a partial second wave: Stage
/// C's 576 blocks of 64 positions on an H200's 396 slots (three blocks per SM) ran 180 blocks in
/// a second round on a half-idle card. Now 96 positions, 384 blocks (at four blocks per SM: 72
/// positions, 512 blocks). Where there are too few positions to fill
/// the card (Stage B's deepest level: 256) the blocks get fewer rows and more of them run at once.
#[cfg(feature = "cuda")]
fn grn_wave_chunk_rows(n: usize, columns: usize, slots: usize) -> usize {
    let chunks = (slots / columns.max(1)).max(1);
    (n.div_ceil(chunks).div_ceil(8) * 8).max(16)
}

/// [`grn_into`] as a new tensor (allocates its scratch).
pub fn grn(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    let mut y = Tensor::empty(x.shape(), x.dtype(), &x.device())?;
    let mut stats = Tensor::empty(&[x.dim(0), x.dim(-1)], DType::F32, &x.device())?;
    grn_into(x, gamma, beta, &mut stats, &mut y)?;
    Ok(y)
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    use super::grn_wave_chunk_rows;

    #[test]
    fn grn_chunks_fill_one_wave() {
        // (positions, sample × channel-group columns) of Stage C, C lite, Stage B's four levels
        // and a batch of 8, on an H200's 132 SMs × 4 blocks.
        for (n, columns) in [(576, 64), (576, 48), (16384, 5), (4096, 10), (1024, 20), (256, 20), (576, 256), (77, 1)] {
            let rows = grn_wave_chunk_rows(n, columns, 528);
            let blocks = columns * n.div_ceil(rows);
            assert!(rows % 8 == 0 && rows >= 16, "{n}×{columns}: {rows} rows");
            assert!(blocks <= 528, "{n}×{columns}: {blocks} blocks are more than one wave");
            // No fewer blocks than a wave holds unless the rows ran out or hit the minimum.
            assert!(blocks * 10 >= 528 * 8 || rows == 16 || columns * 2 > 528, "{n}×{columns}: {blocks} blocks leave the card idle");
        }
        assert_eq!(grn_wave_chunk_rows(576, 64, 528), 72);
        assert_eq!(grn_wave_chunk_rows(576, 600, 528), 576);
    }
}
