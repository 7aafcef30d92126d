//! Convolutions on token-major `[B, H, W, C]` data, each in its cheapest exact form:
//! - depthwise 3×3 (zero or replicate padding), optionally fused with a channel LayerNorm;
//! - 1×1: a plain [`linear()`];
//! - 2×2 stride 2: pixel-unshuffle + GEMM ([`conv2x2_s2`]);
//! - transposed 2×2 stride 2: GEMM + pixel-shuffle ([`conv_transpose2x2`]);
//! - transposed 4×4 stride 2 pad 1 (Stage A): 3×3 neighbourhoods, then per output phase two
//!   GEMMs over its own 2×2 taps, interleaved by a pixel-shuffle ([`conv_transpose4x4`]).
//!
//! CPU references: [`super::cpu::conv2d`], [`super::cpu::conv_transpose2d`] (direct formulas),
//! and the layout kernels of `super::cpu`; GPU: `kernels/conv.cu` + cuBLASLt.

use super::{check_device, check_dtype, check_numel, check_shape, cpu, linear};
use crate::{DType, Device, Error, Result, Tensor};

/// Border handling of the depthwise convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Zeros outside the image (Stage B and C).
    Zero,
    /// The nearest edge pixel (Stage A's ReplicationPad2d).
    Replicate,
}

fn image_dims(op: &str, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    match x.shape() {
        &[b, h, w, c] => Ok((b, h, w, c)),
        s => Err(Error::Shape(format!("{op}: expected a token-major image [B, H, W, C], got {s:?}"))),
    }
}

/// Depthwise 3×3 convolution with bias (weight: C·9 values, PyTorch `[C, 1, 3, 3]`), stride 1,
/// padding 1; with `layer_norm = Some(eps)` the output is normalised over channels (ResBlock).
/// x may be f32 with bf16 weights and output (an f32 residual stream, convolved as its bf16 copy).
pub fn depthwise3x3_into(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: Padding,
    layer_norm: Option<f32>,
    y: &mut Tensor,
) -> Result<()> {
    depthwise3x3_impl(x, weight, bias, padding, layer_norm, Fused::default(), Residual::None, y)
}

/// `y += depthwise3x3(x)`: the convolution and a residual connection in one pass. `x` and `y`
/// must be different tensors.
pub fn depthwise3x3_accumulate_into(x: &Tensor, weight: &Tensor, bias: &Tensor, padding: Padding, y: &mut Tensor) -> Result<()> {
    depthwise3x3_impl(x, weight, bias, padding, None, Fused::default(), Residual::Output, y)
}

/// `x + depthwise3x3(LayerNorm(x))` as a new tensor, the LayerNorm (affine, over channels)
/// applied as the convolution reads its taps: Stage A's MixBlock token mixing. On a GPU this is
/// one pass for the per-pixel statistics and one for the convolution, instead of a LayerNorm
/// pass, a convolution pass and an add pass.
#[allow(clippy::too_many_arguments)]
pub fn depthwise3x3_prenorm_residual(
    x: &Tensor,
    ln_weight: &Tensor,
    ln_bias: &Tensor,
    eps: f32,
    weight: &Tensor,
    bias: &Tensor,
    padding: Padding,
) -> Result<Tensor> {
    Ok(prenorm_residual(x, ln_weight, ln_bias, eps, weight, bias, padding, None)?.0)
}

/// [`depthwise3x3_prenorm_residual`] that also returns the result's affine LayerNorm
/// (`out_weight`, `out_bias`, the same eps), with which Stage A's MixBlock starts its channel
/// mixing. On a GPU the convolution pass writes both, the LayerNorm computed from the result as
/// stored, which saves a LayerNorm pass over the result.
#[allow(clippy::too_many_arguments)]
pub fn depthwise3x3_prenorm_residual_ln(
    x: &Tensor,
    ln_weight: &Tensor,
    ln_bias: &Tensor,
    eps: f32,
    weight: &Tensor,
    bias: &Tensor,
    padding: Padding,
    (out_weight, out_bias): (&Tensor, &Tensor),
) -> Result<(Tensor, Tensor)> {
    let (y, t) = prenorm_residual(x, ln_weight, ln_bias, eps, weight, bias, padding, Some((out_weight, out_bias)))?;
    Ok((y, t.expect("asked for")))
}

#[allow(clippy::too_many_arguments)]
fn prenorm_residual(
    x: &Tensor,
    ln_weight: &Tensor,
    ln_bias: &Tensor,
    eps: f32,
    weight: &Tensor,
    bias: &Tensor,
    padding: Padding,
    out_norm: Option<(&Tensor, &Tensor)>,
) -> Result<(Tensor, Option<Tensor>)> {
    let c = image_dims("depthwise3x3_prenorm_residual", x)?.3;
    check_numel("depthwise3x3_prenorm_residual", "LayerNorm weight", ln_weight, c)?;
    check_numel("depthwise3x3_prenorm_residual", "LayerNorm bias", ln_bias, c)?;
    let mut y = Tensor::empty(x.shape(), x.dtype(), &x.device())?;
    match x.device() {
        Device::Cpu => {
            let t = super::layer_norm(x, Some(ln_weight), Some(ln_bias), eps)?;
            depthwise3x3_impl(&t, weight, bias, padding, None, Fused::default(), Residual::Tensor(x), &mut y)?;
            let n = out_norm.map(|(w, b)| super::layer_norm(&y, Some(w), Some(b), eps)).transpose()?;
            Ok((y, n))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            check_dtype("depthwise3x3_prenorm_residual", x.dtype(), &[ln_weight, ln_bias])?;
            check_device("depthwise3x3_prenorm_residual", &x.device(), &[ln_weight, ln_bias])?;
            for t in out_norm.iter().flat_map(|(w, b)| [*w, *b]) {
                check_dtype("depthwise3x3_prenorm_residual", x.dtype(), &[t])?;
                check_device("depthwise3x3_prenorm_residual", &x.device(), &[t])?;
            }
            let n = out_norm.map(|_| Tensor::empty(x.shape(), x.dtype(), &x.device())).transpose()?;
            let fused = Fused {
                input_norm: Some((ln_weight, ln_bias, eps)),
                output_norm: n.as_ref().zip(out_norm).map(|(n, (w, b))| (n, w, b, eps)),
                ..Fused::default()
            };
            depthwise3x3_impl(x, weight, bias, padding, None, fused, Residual::Tensor(x), &mut y)?;
            Ok((y, n))
        }
    }
}

/// What the depthwise convolution's output adds.
enum Residual<'a> {
    None,
    /// The output's own previous values (`y += conv`).
    Output,
    /// Another tensor of the output's shape (may be the input).
    Tensor(&'a Tensor),
}

/// What the GPU depthwise kernel can do besides the convolution, each optional.
#[derive(Default)]
struct Fused<'a> {
    /// An affine LayerNorm of the input applied as taps are read: weight, bias, eps. Its
    /// per-pixel statistics come from a row_stats pass, or on the tiled kernel from the tile
    /// itself.
    input_norm: Option<(&'a Tensor, &'a Tensor, f32)>,
    /// A TimestepBlock modulation of the input applied as taps are read: ab, its first column,
    /// and where the modulated input goes.
    input_modulation: Option<(&'a Tensor, usize, &'a Tensor)>,
    /// A second output, the affine LayerNorm of the output (weight, bias; eps of `layer_norm`'s
    /// argument): where it goes, weight, bias, eps.
    output_norm: Option<(&'a Tensor, &'a Tensor, &'a Tensor, f32)>,
}

/// The depthwise convolution with its options: a LayerNorm of the output (`layer_norm`), the
/// GPU-only fusions of [`Fused`], and a residual.
#[allow(clippy::too_many_arguments)]
fn depthwise3x3_impl(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: Padding,
    layer_norm: Option<f32>,
    fused: Fused,
    residual: Residual,
    y: &mut Tensor,
) -> Result<()> {
    let Fused { input_norm, input_modulation, output_norm } = fused;
    let (b, h, w, c) = image_dims("depthwise3x3", x)?;
    check_numel("depthwise3x3", "weight", weight, c * 9)?;
    check_numel("depthwise3x3", "bias", bias, c)?;
    check_shape("depthwise3x3", "output", y, x.shape())?;
    check_dtype("depthwise3x3", weight.dtype(), &[bias, y])?;
    // An f32 x with bf16 weights is an f32 residual stream, convolved as its bf16 copy.
    let mixed = x.dtype() == DType::F32 && weight.dtype() == DType::BF16;
    if !mixed {
        check_dtype("depthwise3x3", x.dtype(), &[weight])?;
    } else if input_norm.is_some() || output_norm.is_some() || !matches!(residual, Residual::None) {
        return Err(Error::Shape(
            "depthwise3x3: an f32 input with bf16 weights takes no input LayerNorm, second output or residual".into(),
        ));
    }
    check_device("depthwise3x3", &x.device(), &[weight, bias, y])?;
    if let Residual::Tensor(r) = residual {
        check_shape("depthwise3x3", "residual", r, x.shape())?;
        check_dtype("depthwise3x3", x.dtype(), &[r])?;
        check_device("depthwise3x3", &x.device(), &[r])?;
    }
    if let Some((ab, _, out)) = input_modulation {
        check_dtype("depthwise3x3", x.dtype(), &[ab, out])?;
        check_shape("depthwise3x3", "modulated input", out, x.shape())?;
    }
    match x.device() {
        Device::Cpu => {
            if input_norm.is_some() || input_modulation.is_some() || output_norm.is_some() {
                return Err(Error::Shape("depthwise3x3: the fused input LayerNorm, modulation and second output are GPU paths".into()));
            }
            let xv = x.cpu_f32()?;
            let xv = if mixed { std::borrow::Cow::Owned(crate::testing::round_to(&xv, weight.dtype())) } else { xv };
            let mut v = cpu::depthwise3x3(&xv, b, h, w, c, &weight.cpu_f32()?, &bias.cpu_f32()?, padding == Padding::Replicate, layer_norm);
            let r = match residual {
                Residual::None => None,
                Residual::Output => Some(y.cpu_f32()?.into_owned()),
                Residual::Tensor(r) => Some(r.cpu_f32()?.into_owned()),
            };
            if let Some(r) = r {
                v.iter_mut().zip(&r).for_each(|(a, r)| *a += r);
            }
            y.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            if !matches!(residual, Residual::None) && x.cuda_ptr()? == y.cuda_ptr()? {
                return Err(Error::Shape("depthwise3x3: with a residual the output cannot be the input itself".into()));
            }
            if input_norm.is_some() && input_modulation.is_some() {
                return Err(Error::Shape("depthwise3x3: an input LayerNorm and a modulation together".into()));
            }
            if layer_norm.is_some() && output_norm.is_some() {
                return Err(Error::Shape("depthwise3x3: a normalised output and a second normalised output together".into()));
            }
            if (layer_norm.is_some() || output_norm.is_some()) && c * 4 > 48 * 1024 {
                return Err(Error::Shape(format!("depthwise3x3: {c} channels exceed the fused LayerNorm's 12288-channel buffer")));
            }
            let (in_weight, in_bias) = match input_norm {
                Some((w, b, _)) => (w.cuda_ptr()? as *const _, b.cuda_ptr()? as *const _),
                None => (std::ptr::null(), std::ptr::null()),
            };
            let (in_ab, x_out, in_ab_stride) = match input_modulation {
                Some((ab, col, out)) => {
                    if out.cuda_ptr()? == x.cuda_ptr()? {
                        return Err(Error::Shape("depthwise3x3: the modulated input cannot overwrite the input".into()));
                    }
                    ((ab.cuda_ptr()? + (col * ab.dtype().size()) as u64) as *const _, out.cuda_ptr()? as *mut _, ab.dim(1) as i64)
                }
                None => (std::ptr::null(), std::ptr::null_mut(), 0),
            };
            let (y_norm, out_weight, out_bias) = match output_norm {
                Some((t, w, b, _)) => {
                    check_shape("depthwise3x3", "normalised output", t, x.shape())?;
                    check_numel("depthwise3x3", "output LayerNorm weight", w, c)?;
                    check_numel("depthwise3x3", "output LayerNorm bias", b, c)?;
                    (t.cuda_ptr()? as *mut _, w.cuda_ptr()? as *const _, b.cuda_ptr()? as *const _)
                }
                None => (std::ptr::null_mut(), std::ptr::null(), std::ptr::null()),
            };
            let residual = match residual {
                Residual::None => std::ptr::null(),
                Residual::Output => y.cuda_ptr()? as *const _,
                Residual::Tensor(r) => r.cuda_ptr()? as *const _,
            };
            let k = dev.kernels();
            if h > 65535 || b > 65535 {
                return Err(Error::Shape(format!("depthwise3x3: {b}×{h} rows are beyond the kernel's grid (65535 each)")));
            }
            let mut p = crate::cuda::params::DepthwiseParams {
                x: x.cuda_ptr()? as *const _,
                y: y.cuda_ptr()? as *mut _,
                weight: weight.cuda_ptr()? as *const _,
                bias: bias.cuda_ptr()? as *const _,
                B: b as i32,
                H: h as i32,
                W: w as i32,
                C: c as i32,
                replicate: (padding == Padding::Replicate) as i32,
                layer_norm: layer_norm.is_some() as i32,
                eps: output_norm.map_or(layer_norm.unwrap_or(0.0), |o| o.3),
                in_stats: std::ptr::null(),
                in_weight,
                in_bias,
                residual,
                in_ab,
                x_out,
                in_ab_stride,
                y_norm,
                out_weight,
                out_bias,
                vec8: 0,
                tile_h: 0,
                in_norm_here: 0,
                in_eps: 0.0,
                roll_steps: 0,
            };
            // Eight channels per thread when one block holds them all and every operand is
            // 16-byte aligned (then no shared-memory staging either).
            let operands = [
                p.x as u64,
                p.y as u64,
                p.weight as u64,
                p.bias as u64,
                p.in_weight as u64,
                p.in_bias as u64,
                p.residual as u64,
                p.in_ab as u64,
                p.x_out as u64,
                p.y_norm as u64,
                p.out_weight as u64,
                p.out_bias as u64,
            ];
            let vec8 = c % 8 == 0 && c / 8 <= 256 && in_ab_stride % 8 == 0 && operands.iter().all(|a| a % 16 == 0);
            p.vec8 = vec8 as i32;
            // vec8: a strip of CASCADE_DW_STRIP pixels per block (kernels/conv.cu); else one pixel.
            // bf16 weights on the vec8 path are parked in shared memory, 144 bytes per thread.
            let parked = vec8 && weight.dtype() == DType::BF16;
            let (columns, block, smem) = if vec8 {
                let block = super::row_block(c / 8);
                (w.div_ceil(crate::cuda::params::CASCADE_DW_STRIP as usize), block, if parked { 144 * block as usize } else { 0 })
            } else {
                (w, super::row_block(c), if layer_norm.is_some() || output_norm.is_some() { c * 4 } else { 0 })
            };
            let plan = depthwise_tile_plan(&dev, vec8 && parked && !mixed, b, h, w, c);
            let threads = match plan {
                Some(TilePlan::Tile(rows)) => 2 * rows * c / 8,
                Some(TilePlan::Roll { rows, .. }) => 4 * rows * c / 8,
                None => 0,
            };
            // The input LayerNorm's statistics: from the tile itself on the tiled kernel (with at
            // least one full warp), else from a row_stats pass (kept alive past the launch).
            let mut _stats = None;
            if let Some((_, _, eps)) = input_norm {
                if threads >= 32 {
                    p.in_norm_here = 1;
                    p.in_eps = eps;
                } else {
                    let stats = Tensor::empty(&[b * h * w, 2], DType::F32, &x.device())?;
                    super::norm::row_stats_into(x, eps, &stats)?;
                    p.in_stats = stats.cuda_ptr()? as *const f32;
                    _stats = Some(stats);
                }
            }
            // Under CASCADE_KERNEL_TUNE the rolling kernel is timed against the tiled one where
            // the tiled one would run (both compute their input statistics in the tile).
            let plan = match plan {
                Some(TilePlan::Tile(tile_h)) if crate::cuda::KernelTuning::requested().on() && threads >= 32 => {
                    match depthwise_roll_plan(&dev, b, h, w, c, false) {
                        Some((rows, steps)) => {
                            let candidates = [TilePlan::Tile(tile_h), TilePlan::Roll { rows, steps }];
                            let flags = [p.layer_norm != 0, y_norm.is_null(), in_ab.is_null(), p.in_norm_here != 0, p.residual.is_null()];
                            let dims = [b, h, w, c, flags.iter().fold(0, |acc, &f| 2 * acc + f as usize)];
                            let mut scratch = None;
                            let i = dev.choose_kernel("depthwise", &dims, &["tiled", "rolling"], &mut |i| {
                                let mut q = scratch_outputs(&p, &mut scratch, y, output_norm.map(|o| o.0), input_modulation.map(|m| m.2))?;
                                launch_tiled(&dev, candidates[i], &mut q, (b, h, w, c))
                            })?;
                            Some(candidates[i])
                        }
                        None => plan,
                    }
                }
                _ => plan,
            };
            if let Some(plan) = plan {
                return launch_tiled(&dev, plan, &mut p, (b, h, w, c));
            }
            if parked {
                let input_norm = !p.in_stats.is_null();
                let auto = depthwise_strips(&dev, mixed, b * h, w, block, smem);
                // Under CASCADE_KERNEL_TUNE (and CASCADE_DW_STRIPS unset or auto) the other strip
                // kernels are timed against the waves rule's choice.
                let chosen = match auto {
                    Some(chosen) if crate::cuda::KernelTuning::requested().on() => {
                        let mut candidates = vec![chosen];
                        for s in [Strips::Narrow, Strips::Wide] {
                            if !candidates.contains(&s) {
                                candidates.push(s);
                            }
                        }
                        let names: Vec<String> = candidates.iter().map(|s| format!("{s:?}")).collect();
                        let names: Vec<&str> = names.iter().map(String::as_str).collect();
                        let flags = [mixed, p.layer_norm != 0, y_norm.is_null(), in_ab.is_null(), input_norm, p.residual.is_null()];
                        let dims = [b, h, w, c, flags.iter().fold(0, |acc, &f| 2 * acc + f as usize)];
                        let mut scratch = None;
                        let i = dev.choose_kernel("depthwise_strips", &dims, &names, &mut |i| {
                            let q = scratch_outputs(&p, &mut scratch, y, output_norm.map(|o| o.0), input_modulation.map(|m| m.2))?;
                            let (f, strip) = strip_kernel(&dev, candidates[i], mixed);
                            dev.launch(f, (w.div_ceil(strip) as u32, h as u32, b as u32), (block, 1, 1), smem as u32, &q)
                        })?;
                        candidates[i]
                    }
                    Some(chosen) => chosen,
                    None => strips_only(),
                };
                let (f, strip) = strip_kernel(&dev, chosen, mixed);
                return dev.launch(f, (w.div_ceil(strip) as u32, h as u32, b as u32), (block, 1, 1), smem as u32, &p);
            }
            let f = match mixed {
                true => &k.depthwise_f32_bf16,
                false => super::kernel("depthwise3x3", x.dtype(), &k.depthwise_f32, &k.depthwise_bf16)?,
            };
            dev.launch(f, (columns as u32, h as u32, b as u32), (block, 1, 1), smem as u32, &p)
        }
    }
}

/// Launches the tiled or the rolling depthwise kernel by `plan` for a [b, h, w, c] image, with `p`
/// otherwise complete.
#[cfg(feature = "cuda")]
fn launch_tiled(
    dev: &crate::cuda::CudaDevice,
    plan: TilePlan,
    p: &mut crate::cuda::params::DepthwiseParams,
    (b, h, w, c): (usize, usize, usize, usize),
) -> Result<()> {
    let k = dev.kernels();
    match plan {
        TilePlan::Tile(tile_h) => {
            p.tile_h = tile_h as i32;
            let tw = crate::cuda::params::CASCADE_DW_TILE_W as usize;
            let grid = (w.div_ceil(tw) as u32, h.div_ceil(tile_h) as u32, b as u32);
            let threads = 2 * tile_h * c / 8;
            dev.launch(&k.depthwise_tile_bf16, grid, (threads as u32, 1, 1), depthwise_tile_smem(tile_h, c) as u32, &*p)
        }
        TilePlan::Roll { rows, steps } => {
            (p.tile_h, p.roll_steps) = (rows as i32, steps as i32);
            let tw = crate::cuda::params::CASCADE_DW_ROLL_W as usize;
            let grid = (w.div_ceil(tw) as u32, h.div_ceil(rows * steps) as u32, b as u32);
            let threads = 4 * rows * c / 8;
            dev.launch(&k.depthwise_roll_bf16, grid, (threads as u32, 1, 1), depthwise_roll_smem(rows, c) as u32, &*p)
        }
    }
}

/// Shared memory of the tiled depthwise kernel (kernels/conv.cu `depthwise_tile_bf16`) for tiles
/// of `tile_h` rows: the halo's 16-byte chunks, the parked weights and the input transform's
/// terms (C / 8 chunks each: 9 and 2), and the halo's input statistics (8 bytes a pixel).
#[cfg(feature = "cuda")]
fn depthwise_tile_smem(tile_h: usize, c: usize) -> usize {
    let halo = (crate::cuda::params::CASCADE_DW_TILE_W as usize + 2) * (tile_h + 2);
    16 * (c / 8) * (halo + 11) + 8 * halo
}

/// Shared memory of the rolling depthwise kernel (kernels/conv.cu `depthwise_roll_bf16`) for
/// steps of `rows` rows: the ring of 2 · rows + 2 halo rows (16-byte chunks), the taps and the
/// input transform's terms as f32 (C / 8 chunks of 32 bytes each: 9 and 2), the ring's input
/// statistics (8 bytes a pixel), the output LayerNorm's sums (4 bytes a chunk of an output) and
/// its means and 1/σ.
#[cfg(feature = "cuda")]
fn depthwise_roll_smem(rows: usize, c: usize) -> usize {
    let (g, tw) = (c / 8, crate::cuda::params::CASCADE_DW_ROLL_W as usize);
    let ring = (2 * rows + 2) * (tw + 2);
    16 * g * ring + 32 * g * 11 + 8 * ring + 4 * tw * rows * g + 8 * tw * rows
}

/// Which tiled depthwise kernel takes a launch.
#[cfg(feature = "cuda")]
#[derive(Clone, Copy, Debug, PartialEq)]
enum TilePlan {
    /// `depthwise_tile_bf16`, tiles of this many rows.
    Tile(usize),
    /// `depthwise_roll_bf16`: `rows` output rows a step, `steps` steps a block.
    Roll { rows: usize, steps: usize },
}

/// Whether a tiled depthwise kernel takes a launch, which, and how it is cut.
///
/// `CASCADE_DW_TILE` (read once):
/// - unset or `1` (the default): the tiled kernel for launches of at least four tiles per
///   multiprocessor (Stage A's large images, where the strip kernel's reads of each pixel 4.5
///   times and its round trip to memory per row of taps left it at about a fifth of memory speed;
///   on an H200 the tiled kernel with its own input statistics took Stage A from 8.19 to 7.50 ms);
/// - `0`: never (the strip kernel, for A/B measurements);
/// - `force`: the tiled kernel wherever it can run (the tests);
/// - `roll`: the rolling kernel where the tiled one would run (each halo pixel transformed once
///   instead of 2.5 times on Stage A; opt-in until measured), the tiled one where it cannot;
/// - `roll-force`: the rolling kernel wherever it can run, in short blocks (the tests).
///
/// `eligible`: bf16 input and weights on the eight-channel path. The tiled kernel's rows per
/// tile: the most (2 to 8) that keep a block within 256 threads and 48 KiB (80 registers: at
/// least three blocks per SM), or `CASCADE_DW_TILE_ROWS` where that fits.
#[cfg(feature = "cuda")]
fn depthwise_tile_plan(dev: &crate::cuda::CudaDevice, eligible: bool, b: usize, h: usize, w: usize, c: usize) -> Option<TilePlan> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Off,
        Large,
        Force,
    }
    static MODE: std::sync::OnceLock<(Mode, bool, Option<usize>)> = std::sync::OnceLock::new();
    let (mode, roll, rows) = *MODE.get_or_init(|| {
        let (mode, roll) = match std::env::var("CASCADE_DW_TILE").ok().as_deref().map(str::trim) {
            Some("0") => (Mode::Off, false),
            None | Some("1") => (Mode::Large, false),
            Some("force") => (Mode::Force, false),
            Some("roll") => (Mode::Large, true),
            Some("roll-force") => (Mode::Force, true),
            Some(v) => {
                eprintln!("warning: CASCADE_DW_TILE must be 0, 1, force, roll or roll-force, not {v:?}; using 1");
                (Mode::Large, false)
            }
        };
        let rows = match std::env::var("CASCADE_DW_TILE_ROWS").ok().map(|v| v.trim().parse::<usize>()) {
            None => None,
            Some(Ok(r)) if (2..=crate::cuda::params::CASCADE_DW_TILE_MAX_H as usize).contains(&r) => Some(r),
            Some(_) => {
                eprintln!("warning: CASCADE_DW_TILE_ROWS must be from 2 to {}; ignored", crate::cuda::params::CASCADE_DW_TILE_MAX_H);
                None
            }
        };
        (mode, roll, rows)
    });
    if !eligible || mode == Mode::Off {
        return None;
    }
    const SMEM: usize = 48 * 1024;
    let fits = |r: usize| 2 * r * c / 8 <= 256 && depthwise_tile_smem(r, c) <= SMEM;
    let tile_h = match rows {
        Some(r) if fits(r) => Some(r),
        _ => (2..=crate::cuda::params::CASCADE_DW_TILE_MAX_H as usize).rev().find(|&r| fits(r)),
    };
    let large = tile_h
        .is_some_and(|t| b * h.div_ceil(t) * w.div_ceil(crate::cuda::params::CASCADE_DW_TILE_W as usize) >= 4 * dev.multiprocessors());
    if mode == Mode::Large && !large {
        return None;
    }
    let rolling = roll.then(|| depthwise_roll_plan(dev, b, h, w, c, mode == Mode::Force)).flatten();
    rolling.map(|(rows, steps)| TilePlan::Roll { rows, steps }).or(tile_h.map(TilePlan::Tile))
}

/// Rows a step and steps a block of the rolling depthwise kernel for a [b, h, w, c] launch, or
/// None where it cannot run: more than 192 threads for one row a step (C > 384), under one warp,
/// its shared memory refused, no block resident per SM. The most rows a step within 192 threads
/// (Stage A: 1 at 384 channels, 2 at 192), and as many steps a block as make one wave of blocks
/// (Stage A: 384 blocks of 11 and 22 steps on an H200's 132 SMs at three a SM). `short` (the
/// tests): at most a quarter of the image's rows a step (or the fewest that make a warp) and three
/// steps a block, so that small images take several blocks a column and the ring wraps around.
#[cfg(feature = "cuda")]
fn depthwise_roll_plan(dev: &crate::cuda::CudaDevice, b: usize, h: usize, w: usize, c: usize, short: bool) -> Option<(usize, usize)> {
    use crate::cuda::params::{CASCADE_DW_ROLL_W, CASCADE_DW_TILE_MAX_H};
    let g = c / 8;
    let most = (1..=CASCADE_DW_TILE_MAX_H as usize).rev().find(|&r| 4 * r * g <= 192)?;
    let rows = if short { most.min((h / 4).max(32usize.div_ceil(4 * g))) } else { most };
    let threads = 4 * rows * g;
    if threads < 32 {
        return None;
    }
    let smem = depthwise_roll_smem(rows, c);
    let f = &dev.kernels().depthwise_roll_bf16;
    dev.opt_in_shared_memory(f, crate::cuda::SharedMemoryOptIn::DepthwiseRoll, smem).ok()?;
    let per_sm = dev.resident_blocks_per_sm(f, threads as u32, smem).ok().filter(|&n| n > 0)?;
    let columns = b * w.div_ceil(CASCADE_DW_ROLL_W as usize);
    Some((rows, if short { 3 } else { roll_steps(h.div_ceil(rows), columns, per_sm * dev.multiprocessors()) }))
}

/// Steps a block for `total` steps down each of `columns` column strips, so that the blocks fill
/// `slots` (resident blocks on the whole GPU) at most once: each column cut into as many blocks
/// as it gets slots, at least one.
#[cfg(feature = "cuda")]
fn roll_steps(total: usize, columns: usize, slots: usize) -> usize {
    total.div_ceil((slots / columns.max(1)).clamp(1, total.max(1)))
}

/// The parked-weight strip kernels (kernels/conv.cu), in order of preference where they take the
/// same number of waves.
#[cfg(feature = "cuda")]
#[derive(Clone, Copy, PartialEq, Debug)]
enum Strips {
    /// CASCADE_DW_STRIP pixels per block (`depthwise_*_sw`), a round trip to memory per row of taps.
    Narrow,
    /// CASCADE_DW_WIDE_STRIP pixels per block (`depthwise_*_sw5`): fewer blocks.
    Wide,
}

/// What `CASCADE_DW_STRIPS` asks for (read once).
#[cfg(feature = "cuda")]
#[derive(Clone, Copy, PartialEq)]
enum StripsMode {
    /// The fewest waves.
    Auto,
    /// One kernel wherever the parked-weight path runs.
    Only(Strips),
}

/// `CASCADE_DW_STRIPS` (read once):
/// - unset or `auto` (the default): the narrow or the wide strips, whichever takes fewer waves of
///   resident blocks by the driver's occupancy answers (the narrow ones on a tie). On an H200 that
///   is the wide strips for Stage C's and Stage C lite's 24 × 24 × 2 images (one wave of 240
///   blocks instead of 1.09 waves of 288, whose second wave was about half of the launch's time in
///   the profile) and the narrow ones elsewhere. Measured on an H200 (docs/performance.md,
///   thirteenth session): Stage C's launch 17.5 → 13.3 µs, −0.2 ms per step.
/// - `narrow`, `wide`: that kernel wherever the parked-weight path runs (the tests, A/B
///   measurements).
#[cfg(feature = "cuda")]
fn strips_mode() -> StripsMode {
    static MODE: std::sync::OnceLock<StripsMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("CASCADE_DW_STRIPS").ok().as_deref().map(str::trim) {
        None | Some("auto") => StripsMode::Auto,
        Some("narrow") => StripsMode::Only(Strips::Narrow),
        Some("wide") => StripsMode::Only(Strips::Wide),
        Some(v) => {
            eprintln!("warning: CASCADE_DW_STRIPS must be auto, narrow or wide, not {v:?}; using auto");
            StripsMode::Auto
        }
    })
}

/// The kernel `CASCADE_DW_STRIPS` names (`narrow`, `wide`), where it names one.
#[cfg(feature = "cuda")]
fn strips_only() -> Strips {
    match strips_mode() {
        StripsMode::Only(s) => s,
        StripsMode::Auto => Strips::Narrow,
    }
}

/// The parked-weight strip kernel `s` for `mixed` (f32 input) or bf16 input: the kernel and its
/// strip width (both take the parked weights' shared memory).
#[cfg(feature = "cuda")]
fn strip_kernel(dev: &crate::cuda::CudaDevice, s: Strips, mixed: bool) -> (&cudarc::driver::CudaFunction, usize) {
    use crate::cuda::params::{CASCADE_DW_STRIP, CASCADE_DW_WIDE_STRIP};
    let k = dev.kernels();
    match (s, mixed) {
        (Strips::Narrow, false) => (&k.depthwise_bf16_sw, CASCADE_DW_STRIP as usize),
        (Strips::Narrow, true) => (&k.depthwise_f32_bf16_sw, CASCADE_DW_STRIP as usize),
        (Strips::Wide, false) => (&k.depthwise_bf16_sw5, CASCADE_DW_WIDE_STRIP as usize),
        (Strips::Wide, true) => (&k.depthwise_f32_bf16_sw5, CASCADE_DW_WIDE_STRIP as usize),
    }
}

/// The strip kernel the waves rule takes for a launch of `rows` = B·H rows of `w` pixels in
/// blocks of `block` threads, where `CASCADE_DW_STRIPS` leaves the choice to it (None where it
/// names a kernel: [`strips_only`]).
#[cfg(feature = "cuda")]
fn depthwise_strips(dev: &crate::cuda::CudaDevice, mixed: bool, rows: usize, w: usize, block: u32, smem: usize) -> Option<Strips> {
    if strips_mode() != StripsMode::Auto {
        return None;
    }
    let candidates = [Strips::Narrow, Strips::Wide];
    let options: Vec<(usize, usize)> = candidates
        .iter()
        .map(|&s| {
            let (f, strip) = strip_kernel(dev, s, mixed);
            (strip, dev.resident_blocks_per_sm(f, block, smem).unwrap_or(0))
        })
        .collect();
    Some(fewest_waves(rows, w, dev.multiprocessors(), &options).map_or(Strips::Narrow, |i| candidates[i]))
}

/// A copy of `p` writing to scratch tensors shaped like what it writes (`y`, the normalised
/// output, the modulated input), made at the first call: for timing a launch (kernel choice by
/// timing) without touching the real outputs. The residual, which may be y, is only read.
#[cfg(feature = "cuda")]
fn scratch_outputs(
    p: &crate::cuda::params::DepthwiseParams,
    scratch: &mut Option<(Tensor, Option<Tensor>, Option<Tensor>)>,
    y: &Tensor,
    norm: Option<&Tensor>,
    modulated: Option<&Tensor>,
) -> Result<crate::cuda::params::DepthwiseParams> {
    if scratch.is_none() {
        let like = |t: &Tensor| Tensor::empty(t.shape(), t.dtype(), &t.device());
        *scratch = Some((like(y)?, norm.map(like).transpose()?, modulated.map(like).transpose()?));
    }
    let (sy, snorm, smod) = scratch.as_ref().expect("made above");
    let addr = |t: &Option<Tensor>| t.as_ref().map(|t| t.cuda_ptr()).transpose();
    let mut q = *p;
    q.y = sy.cuda_ptr()? as *mut _;
    q.y_norm = addr(snorm)?.map_or(std::ptr::null_mut(), |a| a as *mut _);
    q.x_out = addr(smod)?.map_or(std::ptr::null_mut(), |a| a as *mut _);
    Ok(q)
}

/// Which of `options` (strip width, resident blocks per SM; 0: no answer, never) takes the fewest
/// waves for `rows` rows of `w` pixels on `multiprocessors` SMs, the first on a tie; None if none
/// can be counted.
#[cfg(feature = "cuda")]
fn fewest_waves(rows: usize, w: usize, multiprocessors: usize, options: &[(usize, usize)]) -> Option<usize> {
    options
        .iter()
        .enumerate()
        .filter(|&(_, &(strip, per_sm))| strip > 0 && per_sm > 0 && multiprocessors > 0)
        .min_by_key(|&(i, &(strip, per_sm))| ((w.div_ceil(strip) * rows).div_ceil(per_sm * multiprocessors), i))
        .map(|(i, _)| i)
}

/// A TimestepBlock followed by a ResBlock's depthwise convolution and channel LayerNorm:
/// `x ← x·(1 + a) + s` (columns `col..` of `ab`, as [`super::modulate_assign`]), and returns
/// `LayerNorm(dwconv(x))` (no affine). On a GPU this is one pass: the modulation is applied as
/// the taps are read and the modulated centre taps go to a new tensor that replaces `x` (the
/// neighbouring pixels still read the old values, so it cannot be written in place).
#[allow(clippy::too_many_arguments)]
pub fn modulate_depthwise3x3_ln(
    x: &mut Tensor,
    ab: &Tensor,
    col: usize,
    weight: &Tensor,
    bias: &Tensor,
    padding: Padding,
    eps: f32,
) -> Result<Tensor> {
    stream_depthwise3x3_ln(x, Some((ab, col)), weight, bias, padding, eps)
}

/// A ResBlock's first pass over the residual stream x: `x ← x·(1 + a) + s` when `modulation`
/// is given (as [`modulate_depthwise3x3_ln`]), and returns `LayerNorm(dwconv(x))` (no affine)
/// in the weights' dtype. x may be f32 with bf16 weights (an f32 residual stream): it is then
/// modulated in f32 and convolved as its bf16 copy, exactly a cast followed by the bf16
/// convolution, in the same one GPU pass (no cast of the stream of its own).
pub fn stream_depthwise3x3_ln(
    x: &mut Tensor,
    modulation: Option<(&Tensor, usize)>,
    weight: &Tensor,
    bias: &Tensor,
    padding: Padding,
    eps: f32,
) -> Result<Tensor> {
    if let Some((ab, col)) = modulation {
        super::elementwise::modulation_shape("modulate_depthwise3x3", x, ab, col)?;
    }
    let mut y = Tensor::empty(x.shape(), weight.dtype(), &x.device())?;
    match modulation {
        Some((ab, col)) if x.device().is_cpu() => {
            super::modulate_assign(x, ab, col)?;
            depthwise3x3_into(x, weight, bias, padding, Some(eps), &mut y)?;
        }
        Some((ab, col)) => {
            let modulated = Tensor::empty(x.shape(), x.dtype(), &x.device())?;
            let fused = Fused { input_modulation: Some((ab, col, &modulated)), ..Fused::default() };
            depthwise3x3_impl(x, weight, bias, padding, Some(eps), fused, Residual::None, &mut y)?;
            *x = modulated;
        }
        None => depthwise3x3_into(x, weight, bias, padding, Some(eps), &mut y)?,
    }
    Ok(y)
}

/// [`depthwise3x3_into`] as a new tensor.
pub fn depthwise3x3(x: &Tensor, weight: &Tensor, bias: &Tensor, padding: Padding, layer_norm: Option<f32>) -> Result<Tensor> {
    let mut y = Tensor::empty(x.shape(), x.dtype(), &x.device())?;
    depthwise3x3_into(x, weight, bias, padding, layer_norm, &mut y)?;
    Ok(y)
}

fn shuffle_shape(x: &Tensor, r: usize, unshuffle: bool, floor: bool) -> Result<[usize; 4]> {
    let op = if unshuffle { "pixel_unshuffle" } else { "pixel_shuffle" };
    let (b, h, w, c) = image_dims(op, x)?;
    if r == 0 {
        return Err(Error::Shape(format!("{op}: factor must be positive")));
    }
    if unshuffle {
        if !floor && (h % r != 0 || w % r != 0) || h < r || w < r {
            return Err(Error::Shape(format!("{op}: {h}×{w} is not divisible by {r}")));
        }
        Ok([b, h / r, w / r, c * r * r])
    } else {
        if c % (r * r) != 0 {
            return Err(Error::Shape(format!("{op}: {c} channels are not divisible by {}", r * r)));
        }
        Ok([b, h * r, w * r, c / (r * r)])
    }
}

/// `floor`: unshuffle the top-left `⌊H/r⌋·r × ⌊W/r⌋·r` region (a stride-r convolution's view).
fn shuffle_into(x: &Tensor, r: usize, unshuffle: bool, floor: bool, y: &mut Tensor) -> Result<()> {
    shuffle_impl(x, r, unshuffle, floor, false, y)
}

/// `phase_major` (shuffle only): x's channels sub-pixel-major, see [`pixel_shuffle_phases`].
fn shuffle_impl(x: &Tensor, r: usize, unshuffle: bool, floor: bool, phase_major: bool, y: &mut Tensor) -> Result<()> {
    let op = if unshuffle { "pixel_unshuffle" } else { "pixel_shuffle" };
    let out = shuffle_shape(x, r, unshuffle, floor)?;
    check_shape(op, "output", y, &out)?;
    check_dtype(op, x.dtype(), &[y])?;
    check_device(op, &x.device(), &[y])?;
    // Low-resolution (h, w), per-sub-pixel channels c, and the high-resolution tensor's (hs, ws).
    let (b, h, w, c, hs, ws) = if unshuffle {
        (out[0], out[1], out[2], x.dim(3), x.dim(1), x.dim(2))
    } else {
        (out[0], x.dim(1), x.dim(2), out[3], out[1], out[2])
    };
    match x.device() {
        Device::Cpu => {
            let xv = x.cpu_f32()?;
            let v = if unshuffle {
                cpu::pixel_unshuffle(&xv, b, hs, ws, c, r)
            } else if phase_major {
                cpu::pixel_shuffle_phases(&xv, b, h, w, c, r)
            } else {
                cpu::pixel_shuffle(&xv, b, h, w, c, r)
            };
            y.set_cpu_f32(&v)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let p = crate::cuda::params::PixelShuffleParams {
                x: x.cuda_ptr()? as *const _,
                y: y.cuda_ptr()? as *mut _,
                B: b as i32,
                H: h as i32,
                W: w as i32,
                C: c as i32,
                r: r as i32,
                unshuffle: unshuffle as i32,
                Hs: hs as i32,
                Ws: ws as i32,
                phase_major: phase_major as i32,
            };
            let f = super::kernel(op, x.dtype(), &k.pixel_shuffle_f32, &k.pixel_shuffle_bf16)?;
            if phase_major {
                dev.launch_vec8(f, b * h * w * c * r * r, &p)
            } else {
                dev.launch_1d(f, b * h * w * c * r * r, &p)
            }
        }
    }
}

/// PixelShuffle(r): `[B, H, W, C·r²]` → `y [B, H·r, W·r, C]` (PyTorch channel order).
pub fn pixel_shuffle_into(x: &Tensor, r: usize, y: &mut Tensor) -> Result<()> {
    shuffle_into(x, r, false, false, y)
}

/// PixelUnshuffle(r): `[B, H·r, W·r, C]` → `y [B, H, W, C·r²]` (PyTorch channel order).
pub fn pixel_unshuffle_into(x: &Tensor, r: usize, y: &mut Tensor) -> Result<()> {
    shuffle_into(x, r, true, false, y)
}

/// [`pixel_shuffle_into`] as a new tensor.
pub fn pixel_shuffle(x: &Tensor, r: usize) -> Result<Tensor> {
    let mut y = Tensor::empty(&shuffle_shape(x, r, false, false)?, x.dtype(), &x.device())?;
    shuffle_into(x, r, false, false, &mut y)?;
    Ok(y)
}

/// [`pixel_shuffle`] for `x [B, H, W, r²·C]` whose channels are sub-pixel-major: channel
/// `(i·r + j)·C + c` goes to channel `c` of sub-pixel `(i, j)` (one GEMM's output per sub-pixel, as
/// [`conv_transpose4x4`] writes them).
pub fn pixel_shuffle_phases(x: &Tensor, r: usize) -> Result<Tensor> {
    let mut y = Tensor::empty(&shuffle_shape(x, r, false, false)?, x.dtype(), &x.device())?;
    shuffle_impl(x, r, false, false, true, &mut y)?;
    Ok(y)
}

/// [`pixel_unshuffle_into`] as a new tensor.
pub fn pixel_unshuffle(x: &Tensor, r: usize) -> Result<Tensor> {
    let mut y = Tensor::empty(&shuffle_shape(x, r, true, false)?, x.dtype(), &x.device())?;
    shuffle_into(x, r, true, false, &mut y)?;
    Ok(y)
}

/// 3×3 neighbourhoods with zero padding: `[B, H, W, C]` → `y [B, H, W, 9C]`, tap-major
/// (`(dy·3 + dx)·C + c`).
pub fn im2col3x3_into(x: &Tensor, y: &mut Tensor) -> Result<()> {
    let (b, h, w, c) = image_dims("im2col3x3", x)?;
    check_shape("im2col3x3", "output", y, &[b, h, w, 9 * c])?;
    check_dtype("im2col3x3", x.dtype(), &[y])?;
    check_device("im2col3x3", &x.device(), &[y])?;
    match x.device() {
        Device::Cpu => y.set_cpu_f32(&cpu::im2col3x3(&x.cpu_f32()?, b, h, w, c)),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let p = crate::cuda::params::Im2Col3x3Params {
                x: x.cuda_ptr()? as *const _,
                cols: y.cuda_ptr()? as *mut _,
                B: b as i32,
                H: h as i32,
                W: w as i32,
                C: c as i32,
            };
            let f = super::kernel("im2col3x3", x.dtype(), &k.im2col3x3_f32, &k.im2col3x3_bf16)?;
            // One thread per pixel and 8 channels when the kernel can copy 16 bytes at a time.
            dev.launch_1d(f, if c % 8 == 0 { y.numel() / 72 } else { y.numel() }, &p)
        }
    }
}

/// [`im2col3x3_into`] as a new tensor.
pub fn im2col3x3(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = image_dims("im2col3x3", x)?;
    let mut y = Tensor::empty(&[b, h, w, 9 * c], x.dtype(), &x.device())?;
    im2col3x3_into(x, &mut y)?;
    Ok(y)
}

/// Conv2d(k=2, s=2, p=0) as pixel-unshuffle + GEMM. `w` is the PyTorch weight `[O, C, 2, 2]`
/// viewed as `[O, 4C]` (its flattening order is pixel-unshuffle's channel order).
pub fn conv2x2_s2(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    linear(&stride2_patches(x)?, w, Some(bias))
}

/// The 2×2 patches of Conv2d(k=2, s=2) as channels: `[B, H, W, C]` → `[B, H/2, W/2, 4C]` in
/// pixel-unshuffle's order, the GEMM input of [`conv2x2_s2`]. Odd sizes lose their last row or
/// column, as PyTorch's stride-2 convolution does.
pub fn stride2_patches(x: &Tensor) -> Result<Tensor> {
    let mut cols = Tensor::empty(&shuffle_shape(x, 2, true, true)?, x.dtype(), &x.device())?;
    shuffle_into(x, 2, true, true, &mut cols)?;
    Ok(cols)
}

/// Reorders a ConvTranspose2d(k=2, s=2) weight `[Cin, Cout, 2, 2]` and bias `[Cout]` for
/// [`conv_transpose2x2`]: `w'[(o·4 + i·2 + j), c] = W[c, o, i, j]`, `b'[o·4 + k] = b[o]`.
pub fn prepare_conv_transpose2x2(w: &[f32], bias: &[f32], cin: usize, cout: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    if w.len() != cin * cout * 4 || bias.len() != cout {
        return Err(Error::Shape(format!("conv_transpose2x2: weight of {} / bias of {} values for {cin}→{cout}", w.len(), bias.len())));
    }
    let mut wp = vec![0f32; w.len()];
    for c in 0..cin {
        for o in 0..cout {
            for k in 0..4 {
                wp[(o * 4 + k) * cin + c] = w[(c * cout + o) * 4 + k];
            }
        }
    }
    Ok((wp, bias.iter().flat_map(|&b| [b; 4]).collect()))
}

/// ConvTranspose2d(k=2, s=2, p=0) as GEMM + pixel-shuffle, with weights from
/// [`prepare_conv_transpose2x2`].
pub fn conv_transpose2x2(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    pixel_shuffle(&linear(x, w, Some(bias))?, 2)
}

/// Reorders a ConvTranspose2d(k=4, s=2, p=1) weight `[Cin, Cout, 4, 4]` for
/// [`conv_transpose4x4`]. Output pixel `(2m + py, 2n + px)` reads input rows `m + dy − 1` with
/// kernel row `ky = py + 3 − 2·dy`, which exists only for `dy ∈ {py, py + 1}`, and likewise for
/// columns: each output parity (phase) is a 2×2 neighbourhood, two pairs of neighbouring taps of
/// the 3×3 one. Returns `w' [8·Cout, 2·Cin]`, rows `(phase·2 + r)·Cout + o` for phase
/// `py·2 + px` and tap row `dy = py + r`, columns `i·Cin + c` for tap column `dx = px + i`:
/// `w'[…] = W[c, o, ky, kx]`; and the bias `[Cout]` as it is.
pub fn prepare_conv_transpose4x4(w: &[f32], bias: &[f32], cin: usize, cout: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    if w.len() != cin * cout * 16 || bias.len() != cout {
        return Err(Error::Shape(format!("conv_transpose4x4: weight of {} / bias of {} values for {cin}→{cout}", w.len(), bias.len())));
    }
    let mut wp = vec![0f32; 8 * cout * 2 * cin];
    for py in 0..2 {
        for px in 0..2 {
            for r in 0..2 {
                let ky = py + 3 - 2 * (py + r);
                for o in 0..cout {
                    let row = ((py * 2 + px) * 2 + r) * cout + o;
                    for i in 0..2 {
                        let kx = px + 3 - 2 * (px + i);
                        for c in 0..cin {
                            wp[row * 2 * cin + i * cin + c] = w[((c * cout + o) * 4 + ky) * 4 + kx];
                        }
                    }
                }
            }
        }
    }
    Ok((wp, bias.to_vec()))
}

/// ConvTranspose2d(k=4, s=2, p=1): `[B, H, W, Cin]` → `[B, 2H, 2W, Cout]`, with weights from
/// [`prepare_conv_transpose4x4`]. The 3×3 neighbourhoods once (im2col), then per output phase two
/// GEMMs over the columns of its two tap pairs (the second accumulating), written side by side
/// and interleaved by [`pixel_shuffle_phases`]: 16 of the 36 taps a 3×3 GEMM would multiply
/// (2.25× fewer FLOPs, none of them on zero weights).
pub fn conv_transpose4x4(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, h, wd, cin) = image_dims("conv_transpose4x4", x)?;
    if w.rank() != 2 || w.dim(1) != 2 * cin || w.dim(0) % 8 != 0 {
        return Err(Error::Shape(format!("conv_transpose4x4: weight {:?} is not [8·Cout, 2·{cin}]", w.shape())));
    }
    let cout = w.dim(0) / 8;
    let cols = im2col3x3(x)?;
    let mut y = Tensor::empty(&[b, h, wd, 4 * cout], x.dtype(), &x.device())?;
    for (py, px) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let phase = py * 2 + px;
        for r in 0..2 {
            let wr = w.alias((phase * 2 + r) * cout * 2 * cin, &[cout, 2 * cin])?;
            let tap = (py + r) * 3 + px;
            super::linear_columns_into(&cols, tap * cin, &wr, (r == 0).then_some(bias), &mut y, phase * cout, r == 1)?;
        }
    }
    pixel_shuffle_phases(&y, 2)
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    /// The rolling depthwise kernel's cut of Stage A's launches on an H200 (132 SMs, three blocks
    /// each): one wave of long blocks.
    #[test]
    fn roll_steps_fill_one_wave() {
        let slots = 3 * 132;
        // 256² × 384, one row a step, 16 strips: 24 blocks a strip of 11 steps, 384 blocks.
        assert_eq!(super::roll_steps(256, 16, slots), 11);
        assert_eq!(16 * 256usize.div_ceil(11), 384);
        // 512² × 192, two rows a step, 32 strips: 12 blocks of 22 steps.
        assert_eq!(super::roll_steps(256, 32, slots), 22);
        assert_eq!(32 * 256usize.div_ceil(22), 384);
        // More strips than slots: whole columns, however many waves; a short image: one step.
        assert_eq!(super::roll_steps(10, 500, slots), 10);
        assert_eq!(super::roll_steps(1, 4, slots), 1);
    }

    /// The wave counts behind the strip kernels' choice, with an H200's 132 SMs and the blocks
    /// per SM that the parked-weight kernels' 128 registers a thread allow (2 blocks of 256 or 192
    /// threads, 3 of 160, 5 of 80, 8 of 40; on a GPU the driver answers).
    #[test]
    fn strips_by_waves() {
        let pick = super::fewest_waves;
        let (n, wide) = (4, 5);
        // Stage C and C lite (B·H = 48 rows of 24): 288 blocks in 1.09 waves, or 240 in one.
        assert_eq!(pick(48, 24, 132, &[(n, 2), (wide, 2)]), Some(1));
        // Stage B's levels (128², 64², 32², 16²): the same number of waves either way, so the
        // first: the narrow strips.
        assert_eq!(pick(128, 128, 132, &[(n, 8), (wide, 8)]), Some(0));
        assert_eq!(pick(64, 64, 132, &[(n, 5), (wide, 5)]), Some(0));
        assert_eq!(pick(32, 32, 132, &[(n, 3), (wide, 3)]), Some(0));
        assert_eq!(pick(16, 16, 132, &[(n, 3), (wide, 3)]), Some(0));
        // No occupancy answer: skipped; none at all (or no SM count): None.
        assert_eq!(pick(48, 24, 132, &[(n, 2), (wide, 0)]), Some(0));
        assert_eq!(pick(48, 24, 132, &[(n, 0), (wide, 0)]), None);
        assert_eq!(pick(48, 24, 0, &[(n, 2), (wide, 2)]), None);
    }
}
