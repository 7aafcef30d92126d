//! Operations. Each public function checks its arguments (shapes, dtypes, devices: a bad
//! argument is an error, never a crash in a kernel), then dispatches to the CPU reference in
//! [`cpu`] (the spec in code) or to the CUDA launcher beside it. Layouts are token-major:
//! images `[B, H, W, C]`, sequences `[B, L, C]`.
//!
//! Most ops come in two forms: `op_into(…, &mut out)` writes into an existing tensor (arena
//! buffers, nothing allocated), and `op(…)` returns a new tensor.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod cpu;
pub mod elementwise;
pub mod embed;
pub mod linear;
pub mod norm;
pub mod resample;
pub mod shapes;

pub use activation::{bias_gelu_into, gelu, gelu_assign, gelu_into, silu, silu_into};
pub use attention::{
    attention, attention_into, attention_into_with, attention_into_with_options, attention_into_with_softmax, attention_packed_into,
    attention_packed_into_with_options, attention_two_sources_into, mma32_preferred, wgmma_shared_q_preferred, wgmma_split_plan,
    AttentionKernel, AttentionMask, SplitPlan, WgmmaOptions,
};
pub use conv::{
    conv2x2_s2, conv_transpose2x2, conv_transpose4x4, depthwise3x3, depthwise3x3_accumulate_into, depthwise3x3_into,
    depthwise3x3_prenorm_residual, depthwise3x3_prenorm_residual_ln, im2col3x3, im2col3x3_into, modulate_depthwise3x3_ln, pixel_shuffle,
    pixel_shuffle_into, pixel_shuffle_phases, pixel_unshuffle, pixel_unshuffle_into, prepare_conv_transpose2x2, prepare_conv_transpose4x4,
    stream_depthwise3x3_ln, stride2_patches, Padding,
};
pub use elementwise::{
    add, add_assign, affine_assign, cast_into, cfg_combine_into, ddpm_step_assign, fill_random, modulate_assign, modulate_into, to_rgb8,
};
pub use embed::{timestep_embedding_into, token_embedding_into};
#[cfg(feature = "cuda")]
pub(crate) use linear::gemm_skinny;
pub use linear::{
    gelu_in_epilogue, linear, linear_accumulate_into, linear_as, linear_columns_into, linear_gelu, linear_gelu_into, linear_gelu_ws_into,
    linear_into, linear_scaled_fused, linear_scaled_into, linear_scaled_sk_into, GemmOptions,
};
pub use norm::{
    gelu_grn_assign, gelu_grn_factor, grn, grn_apply_factor_assign, grn_assign, grn_factor, grn_into, layer_norm, layer_norm_into,
    linear_gelu_grn_factor, linear_gelu_grn_factor_into, linear_gelu_grn_fused, linear_gelu_grn_kernel, modulate_layer_norm,
    modulate_layer_norm_as, scale_by_factor_into, scale_columns, FusedGrnKernel,
};
pub use resample::{columns, concat_channels, concat_channels_into, concat_tokens, resize_bilinear, resize_bilinear_into};

use crate::{DType, Device, Error, Result, Tensor};

/// Checks that every tensor lives on `device`.
pub(crate) fn check_device(op: &str, device: &Device, tensors: &[&Tensor]) -> Result<()> {
    for t in tensors {
        if !t.device().same(device) {
            return Err(Error::Shape(format!("{op}: tensors on different devices ({} and {})", device.describe(), t.device().describe())));
        }
    }
    Ok(())
}

/// Checks that every tensor has `dtype`.
pub(crate) fn check_dtype(op: &str, dtype: DType, tensors: &[&Tensor]) -> Result<()> {
    for t in tensors {
        if t.dtype() != dtype {
            return Err(Error::Shape(format!("{op}: mixed dtypes ({dtype} and {})", t.dtype())));
        }
    }
    Ok(())
}

/// Checks `t`'s shape.
pub(crate) fn check_shape(op: &str, what: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.shape() != want {
        return Err(Error::Shape(format!("{op}: {what} has shape {:?}, expected {want:?}", t.shape())));
    }
    Ok(())
}

/// Checks `t`'s element count (for parameters stored with extra unit axes, e.g. GRN's
/// `[1, 1, 1, D]`).
pub(crate) fn check_numel(op: &str, what: &str, t: &Tensor, want: usize) -> Result<()> {
    if t.numel() != want {
        return Err(Error::Shape(format!("{op}: {what} has shape {:?} ({} elements), expected {want}", t.shape(), t.numel())));
    }
    Ok(())
}

/// The f32 or bf16 entry point of a kernel.
#[cfg(feature = "cuda")]
pub(crate) fn kernel<'a>(
    op: &str,
    dtype: DType,
    f32_kernel: &'a cudarc::driver::CudaFunction,
    bf16_kernel: &'a cudarc::driver::CudaFunction,
) -> Result<&'a cudarc::driver::CudaFunction> {
    match dtype {
        DType::F32 => Ok(f32_kernel),
        DType::BF16 => Ok(bf16_kernel),
        DType::F16 => Err(Error::Shape(format!("{op}: the GPU kernels run in bf16 or f32, not f16"))),
    }
}

/// A kernel choice by timing (`CASCADE_KERNEL_TUNE`, src/cuda/choice.rs) for a site whose
/// candidates write one output like `like`: `run(i, scratch)` queues candidate i into a scratch
/// tensor of its shape and type, made at the first run (none is made once the shape is decided, nor
/// inside a capture). Returns the candidate to take (0, the static choice, without tuning).
#[cfg(feature = "cuda")]
pub(crate) fn tuned(
    dev: &std::sync::Arc<crate::cuda::CudaDevice>,
    site: &'static str,
    dims: &[usize],
    names: &[&str],
    like: &Tensor,
    run: &mut dyn FnMut(usize, &mut Tensor) -> Result<()>,
) -> Result<usize> {
    let mut scratch: Option<Tensor> = None;
    dev.choose_kernel(site, dims, names, &mut |i| {
        let s = match &mut scratch {
            Some(s) => s,
            None => scratch.insert(Tensor::empty(like.shape(), like.dtype(), &like.device())?),
        };
        run(i, s)
    })
}

/// Device address of `t` as a kernel pointer argument (`None` → NULL).
#[cfg(feature = "cuda")]
pub(crate) fn dptr(t: Option<&Tensor>) -> Result<*const std::ffi::c_void> {
    Ok(match t {
        Some(t) => t.cuda_ptr()? as *const std::ffi::c_void,
        None => std::ptr::null(),
    })
}

/// Block size for one-block-per-row kernels: a multiple of 32, at most 256.
#[cfg(feature = "cuda")]
pub(crate) fn row_block(c: usize) -> u32 {
    (c.div_ceil(32) * 32).clamp(32, 256) as u32
}
