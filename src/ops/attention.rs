//! Fused multi-head attention with head_dim 64. CPU: [`super::cpu::attention`] (naive, f64);
//! GPU: `kernels/attention.cu` (flash-style, online softmax in f32).

use super::{check_device, check_dtype, check_shape, cpu};
use crate::{DType, Device, Error, Result, Tensor};

/// The head width every Stable Cascade attention uses.
pub const HEAD_DIM: usize = 64;

/// Masking of the attention scores.
#[derive(Clone, Copy, Debug)]
pub enum AttentionMask<'a> {
    /// Every query sees every key (Stage B and C).
    None,
    /// Query i sees keys j ≤ i that are not padding: `key_mask [B, Lk]` is an f32 tensor of
    /// 1 (attend) / 0 (padding) on the same device (CLIP).
    CausalPadding(&'a Tensor),
}

/// Which GPU kernel runs attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// For bf16 without a mask (Stage B and C): the mma.sync kernel where its operands are
    /// 16-byte aligned, else the WMMA kernel; the CUDA-core kernel otherwise. A tensor-core
    /// kernel that failed its start-up check on this device is skipped.
    /// `CASCADE_ATTENTION=simple|wmma|mma` in the environment picks one.
    Auto,
    /// The CUDA-core kernel (one thread per query; any dtype, masks).
    Simple,
    /// The tensor-core kernel through WMMA (bf16, no mask; shared-memory softmax).
    TensorCore,
    /// The tensor-core kernel through mma.sync (bf16, no mask; softmax in registers; operands
    /// 16-byte aligned with strides a multiple of 8).
    Mma,
}

/// `o = softmax(q·kᵀ·scale)·v` per head. `q [B, Lq, H·64]`, `k`/`v [B, Lk, H·64]`, `o [B, Lq, H·64]`.
pub fn attention_into(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32, mask: AttentionMask, o: &mut Tensor) -> Result<()> {
    attention_into_with(q, k, v, heads, scale, mask, AttentionKernel::Auto, o)
}

/// [`attention_into`] with the GPU kernel chosen by the caller (tests and benches compare them).
#[allow(clippy::too_many_arguments)]
pub fn attention_into_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    mask: AttentionMask,
    kernel: AttentionKernel,
    o: &mut Tensor,
) -> Result<()> {
    attention_impl(q, k, v, None, heads, scale, mask, kernel, o)
}

/// Attention over the keys of `k`/`v` followed by those of `k2`/`v2` (`[B, Lk2, C]`): the
/// UNets' image tokens and their condition rows. The mma kernel reads both sources directly;
/// every other path concatenates them first.
#[allow(clippy::too_many_arguments)]
pub fn attention_two_sources_into(
    q: &Tensor,
    (k, v): (&Tensor, &Tensor),
    (k2, v2): (&Tensor, &Tensor),
    heads: usize,
    scale: f32,
    kernel: AttentionKernel,
    o: &mut Tensor,
) -> Result<()> {
    attention_impl(q, k, v, Some((k2, v2)), heads, scale, AttentionMask::None, kernel, o)
}

/// Keys `k`/`v`, then those of `extra` when given; checks every shape, picks the kernel.
#[allow(clippy::too_many_arguments)]
fn attention_impl(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    extra: Option<(&Tensor, &Tensor)>,
    heads: usize,
    scale: f32,
    mask: AttentionMask,
    kernel: AttentionKernel,
    o: &mut Tensor,
) -> Result<()> {
    let &[b, lq, c] = q.shape() else {
        return Err(Error::Shape(format!("attention: q must be [B, Lq, C], got {:?}", q.shape())));
    };
    if heads == 0 || c != heads * HEAD_DIM {
        return Err(Error::Shape(format!("attention: {c} channels are not {heads} heads of {HEAD_DIM}")));
    }
    let lk = k.shape().get(1).copied().unwrap_or(0);
    check_shape("attention", "k", k, &[b, lk, c])?;
    check_shape("attention", "v", v, &[b, lk, c])?;
    check_shape("attention", "output", o, &[b, lq, c])?;
    check_dtype("attention", q.dtype(), &[k, v, o])?;
    check_device("attention", &q.device(), &[k, v, o])?;
    if let Some((k2, v2)) = extra {
        let lk2 = k2.shape().get(1).copied().unwrap_or(0);
        check_shape("attention", "second keys", k2, &[b, lk2, c])?;
        check_shape("attention", "second values", v2, &[b, lk2, c])?;
        check_dtype("attention", q.dtype(), &[k2, v2])?;
        check_device("attention", &q.device(), &[k2, v2])?;
    }
    // Every kernel but the mma one takes a single key tensor.
    let concatenated = |kernel, o: &mut Tensor| -> Result<()> {
        let (k2, v2) = extra.expect("only called with second keys");
        attention_impl(q, &super::concat_tokens(k, k2)?, &super::concat_tokens(v, v2)?, None, heads, scale, mask, kernel, o)
    };
    let key_mask = match mask {
        AttentionMask::None => None,
        AttentionMask::CausalPadding(m) => {
            check_shape("attention", "key mask", m, &[b, lk])?;
            check_dtype("attention", DType::F32, &[m])?;
            check_device("attention", &q.device(), &[m])?;
            Some(m)
        }
    };
    let causal = key_mask.is_some();
    match q.device() {
        Device::Cpu if extra.is_some() => concatenated(kernel, o),
        Device::Cpu => {
            let _ = kernel;
            let m = key_mask.map(|m| m.cpu_f32()).transpose()?;
            let out = cpu::attention(&q.cpu_f32()?, &k.cpu_f32()?, &v.cpu_f32()?, b, heads, lq, lk, HEAD_DIM, scale, causal, m.as_deref());
            o.set_cpu_f32(&out)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let kt = dev.kernels();
            let p = crate::cuda::params::AttentionParams {
                q: q.cuda_ptr()? as *const _,
                k: k.cuda_ptr()? as *const _,
                v: v.cuda_ptr()? as *const _,
                o: o.cuda_ptr()? as *mut _,
                key_mask: super::dptr(key_mask)? as *const f32,
                B: b as i32,
                H: heads as i32,
                Lq: lq as i32,
                Lk: lk as i32,
                q_stride: c as i32,
                kv_stride: c as i32,
                o_stride: c as i32,
                causal: causal as i32,
                scale,
                k2: super::dptr(extra.map(|e| e.0))? as *const _,
                v2: super::dptr(extra.map(|e| e.1))? as *const _,
                Lk2: extra.map_or(0, |e| e.0.dim(1)) as i32,
            };
            let tc_ok = q.dtype() == DType::BF16 && !causal;
            // The mma kernel moves 16 bytes (8 bf16) per load and 4 per store.
            let aligned =
                [p.q as u64, p.k as u64, p.v as u64, p.o as u64, p.k2 as u64, p.v2 as u64].iter().all(|a| a % 16 == 0) && c % 8 == 0;
            let forced = std::env::var("CASCADE_ATTENTION").ok();
            let chosen = match kernel {
                AttentionKernel::Auto if !tc_ok => AttentionKernel::Simple,
                AttentionKernel::Auto => match forced.as_deref() {
                    Some("simple") => AttentionKernel::Simple,
                    Some("wmma") => AttentionKernel::TensorCore,
                    Some("mma") if aligned => AttentionKernel::Mma,
                    _ if aligned && dev.mma_attention() => AttentionKernel::Mma,
                    _ if dev.tensor_core_attention() => AttentionKernel::TensorCore,
                    _ => AttentionKernel::Simple,
                },
                AttentionKernel::TensorCore | AttentionKernel::Mma if !tc_ok => {
                    return Err(Error::Shape("attention: the tensor-core kernels take bf16 without a mask".into()))
                }
                AttentionKernel::Mma if !aligned => {
                    return Err(Error::Shape("attention: the mma kernel needs 16-byte aligned operands and rows".into()))
                }
                other => other,
            };
            if extra.is_some() && chosen != AttentionKernel::Mma {
                return concatenated(chosen, o);
            }
            match chosen {
                AttentionKernel::Mma => {
                    dev.launch(&kt.attention_mma_bf16, (lq.div_ceil(64) as u32, heads as u32, b as u32), (128, 1, 1), 0, &p)
                }
                AttentionKernel::TensorCore => {
                    dev.launch(&kt.attention_tc_bf16, (lq.div_ceil(64) as u32, heads as u32, b as u32), (128, 1, 1), 0, &p)
                }
                _ => {
                    let f = super::kernel("attention", q.dtype(), &kt.attention_f32, &kt.attention_bf16)?;
                    dev.launch(f, (lq.div_ceil(128) as u32, heads as u32, b as u32), (128, 1, 1), 0, &p)
                }
            }
        }
    }
}

/// [`attention_into`] as a new tensor.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32, mask: AttentionMask) -> Result<Tensor> {
    let mut o = Tensor::empty(q.shape(), q.dtype(), &q.device())?;
    attention_into(q, k, v, heads, scale, mask, &mut o)?;
    Ok(o)
}
