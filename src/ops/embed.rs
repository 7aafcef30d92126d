//! Embeddings: the timestep-ratio embedding and CLIP's token + position lookup. CPU:
//! [`super::cpu::timestep_embedding`], [`super::cpu::token_embedding`]; GPU: `kernels/embed.cu`.

use super::{check_device, check_dtype, check_shape, cpu};
use crate::{DType, Device, Error, Result, Tensor};

/// The embedding of each ratio in `t` (f32 `[B]`, on the device so that a captured step reads
/// the current timestep), followed by `n_extra` embeddings of 0: `y [B, dim·(1 + n_extra)]`.
pub fn timestep_embedding_into(t: &Tensor, dim: usize, n_extra: usize, max_positions: f32, y: &mut Tensor) -> Result<()> {
    let &[b] = t.shape() else {
        return Err(Error::Shape(format!("timestep_embedding: t must be [B], got {:?}", t.shape())));
    };
    if dim < 4 {
        return Err(Error::Shape(format!("timestep_embedding: dim {dim} is too small")));
    }
    check_dtype("timestep_embedding", DType::F32, &[t])?;
    check_shape("timestep_embedding", "output", y, &[b, dim * (1 + n_extra)])?;
    check_device("timestep_embedding", &t.device(), &[y])?;
    match t.device() {
        Device::Cpu => y.set_cpu_f32(&cpu::timestep_embedding(&t.cpu_f32()?, dim, n_extra, max_positions)),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            use crate::cuda::params::CASCADE_TIMESTEP_MAX_HALF;
            let k = dev.kernels();
            if dim / 2 > CASCADE_TIMESTEP_MAX_HALF as usize {
                return Err(Error::Shape(format!(
                    "timestep_embedding: dim {dim} is more than the kernel takes ({})",
                    2 * CASCADE_TIMESTEP_MAX_HALF
                )));
            }
            let mut freqs = [0f32; CASCADE_TIMESTEP_MAX_HALF as usize];
            for (f, v) in freqs.iter_mut().zip(cpu::timestep_frequencies(dim, max_positions)) {
                *f = v;
            }
            let p = crate::cuda::params::TimestepEmbedParams {
                t: t.cuda_ptr()? as *const f32,
                y: y.cuda_ptr()? as *mut _,
                B: b as i32,
                dim: dim as i32,
                n_extra: n_extra as i32,
                max_positions,
                freqs,
            };
            dev.launch_1d(super::kernel("timestep_embedding", y.dtype(), &k.timestep_embed_f32, &k.timestep_embed_bf16)?, y.numel(), &p)
        }
    }
}

/// `y[b, l] = tok[ids[b, l]] + pos[l]`: `ids` f32 `[B, L]` holding exact integers, `tok [V, D]`,
/// `pos [≥ L, D]`, `y [B, L, D]`. On the CPU an out-of-range id is an error; on the GPU (where
/// ids sit in a device buffer a captured graph reads, and checking them would need a host
/// sync) the kernel clamps them into the table, so whoever writes the ids validates them.
pub fn token_embedding_into(ids: &Tensor, tok: &Tensor, pos: &Tensor, y: &mut Tensor) -> Result<()> {
    let &[b, l] = ids.shape() else {
        return Err(Error::Shape(format!("token_embedding: ids must be [B, L], got {:?}", ids.shape())));
    };
    let &[v, d] = tok.shape() else {
        return Err(Error::Shape(format!("token_embedding: table must be [V, D], got {:?}", tok.shape())));
    };
    if pos.rank() != 2 || pos.dim(0) < l || pos.dim(1) != d {
        return Err(Error::Shape(format!("token_embedding: position table {:?} cannot serve {l} positions of {d}", pos.shape())));
    }
    check_dtype("token_embedding", DType::F32, &[ids])?;
    check_dtype("token_embedding", tok.dtype(), &[pos, y])?;
    check_shape("token_embedding", "output", y, &[b, l, d])?;
    check_device("token_embedding", &ids.device(), &[tok, pos, y])?;
    match ids.device() {
        Device::Cpu => {
            let idv = ids.cpu_f32()?;
            if let Some(bad) = idv.iter().find(|&&i| !(i >= 0.0 && i < v as f32 && i.fract() == 0.0)) {
                return Err(Error::Shape(format!("token_embedding: id {bad} is not a token of a {v}-entry vocabulary")));
            }
            let idu: Vec<u32> = idv.iter().map(|&i| i as u32).collect();
            y.set_cpu_f32(&cpu::token_embedding(&idu, l, &tok.cpu_f32()?, &pos.cpu_f32()?, d))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let k = dev.kernels();
            let p = crate::cuda::params::EmbedParams {
                ids: ids.cuda_ptr()? as *const f32,
                tok: tok.cuda_ptr()? as *const _,
                pos: pos.cuda_ptr()? as *const _,
                y: y.cuda_ptr()? as *mut _,
                B: b as i32,
                L: l as i32,
                D: d as i32,
                V: v as i32,
            };
            dev.launch_1d(super::kernel("token_embedding", y.dtype(), &k.token_embed_f32, &k.token_embed_bf16)?, y.numel(), &p)
        }
    }
}
