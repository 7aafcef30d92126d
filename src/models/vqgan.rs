//! Stage A: the decoder half of the Paella VQGAN (`PaellaVQModel.decode` with
//! `force_not_quantize=True`, spec §2.4, §3.10). The encoder and the quantizer are not needed
//! for text-to-image; their weights are accepted and skipped.

use std::path::Path;

use super::config::VqganConfig;
use super::Linear;
use crate::ops::{self, Padding};
use crate::weights::VarBuilder;
use crate::{DType, Device, Error, Result, Tensor};

const EPS: f32 = 1e-6;

/// MixingResidualBlock with its six scalars folded in at load time:
/// `x += g2·dw(LN(x)·(1+g0) + g1)`, `x += g5·fc2(GELU(fc1(LN(x)·(1+g3) + g4)))`. The
/// `(1+g, g)` pairs become LayerNorm affine vectors; g2 and g5 scale the depthwise and fc2
/// weights and biases.
struct MixBlock {
    ln1_w: Tensor,
    ln1_b: Tensor,
    dw_w: Tensor,
    dw_b: Tensor,
    ln2_w: Tensor,
    ln2_b: Tensor,
    fc1: Linear,
    fc2: Linear,
}

fn host(vb: &VarBuilder, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    vb.get_as(name, shape, DType::F32)?.to_vec_f32()
}

impl MixBlock {
    fn load(vb: &VarBuilder, c: usize) -> Result<MixBlock> {
        let g = host(vb, "gammas", &[6])?;
        let up = |v: &[f32], shape: &[usize]| Tensor::from_f32(v, shape, vb.dtype(), vb.device());
        let dw = vb.pp("depthwise").pp("1");
        let dw_w: Vec<f32> = host(&dw, "weight", &[c, 1, 3, 3])?.iter().map(|w| w * g[2]).collect();
        let dw_b: Vec<f32> = host(&dw, "bias", &[c])?.iter().map(|b| b * g[2]).collect();
        let cw = vb.pp("channelwise");
        let fc2 = cw.pp("2");
        let fc2_w: Vec<f32> = host(&fc2, "weight", &[c, 4 * c])?.iter().map(|w| w * g[5]).collect();
        let fc2_b: Vec<f32> = host(&fc2, "bias", &[c])?.iter().map(|b| b * g[5]).collect();
        Ok(MixBlock {
            ln1_w: up(&vec![1.0 + g[0]; c], &[c])?,
            ln1_b: up(&vec![g[1]; c], &[c])?,
            dw_w: up(&dw_w, &[c, 9])?,
            dw_b: up(&dw_b, &[c])?,
            ln2_w: up(&vec![1.0 + g[3]; c], &[c])?,
            ln2_b: up(&vec![g[4]; c], &[c])?,
            fc1: Linear::load(&cw, "0", 4 * c, c, true)?,
            fc2: Linear { weight: up(&fc2_w, &[c, 4 * c])?, bias: Some(up(&fc2_b, &[c])?) },
        })
    }

    /// Both residual connections are folded into the op before them: the depthwise kernel (which
    /// also applies the first LayerNorm as it reads, and writes the second LayerNorm of its
    /// result beside it) and fc2's GEMM, which adds to x in place.
    fn forward(&self, x: &mut Tensor) -> Result<()> {
        let (y, t) = ops::depthwise3x3_prenorm_residual_ln(
            x,
            &self.ln1_w,
            &self.ln1_b,
            EPS,
            &self.dw_w,
            &self.dw_b,
            Padding::Replicate,
            (&self.ln2_w, &self.ln2_b),
        )?;
        *x = y;
        let h = ops::linear_gelu(&t, &self.fc1.weight, self.fc1.bias.as_ref())?;
        self.fc2.forward_accumulate(&h, x)
    }
}

enum Stage {
    Mix(Box<MixBlock>),
    /// ConvTranspose2d(k=4, s=2, p=1), weights reordered by [`ops::prepare_conv_transpose4x4`].
    Up(Linear),
}

/// Stage A's decoder.
pub struct Vqgan {
    cfg: VqganConfig,
    stem: Linear,
    stages: Vec<Stage>,
    out: Linear,
}

impl Vqgan {
    /// Loads a `vqgan/` folder, or the original `stage_a.safetensors` (whose own code scales
    /// latents by 0.43, not diffusers' 0.3764: spec §2.4; that file's scale is used).
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Vqgan> {
        if path.is_file() {
            return Self::load_original(path, VqganConfig { scale_factor: 0.43, ..VqganConfig::default() }, dtype, device);
        }
        let dir = path;
        let (cfg, vb) = super::open_component::<VqganConfig>(dir, "diffusion_pytorch_model", dtype, device)?;
        let model = Self::new(cfg, &vb)?;
        vb.finish()?;
        Ok(model)
    }

    /// Loads an original single file (`vquantizer.codebook` naming) with `cfg`.
    pub fn load_original(file: &Path, cfg: VqganConfig, dtype: DType, device: &Device) -> Result<Vqgan> {
        let store = crate::weights::WeightStore::open_original(&[file])?;
        if super::OriginalKind::detect(&store)? != super::OriginalKind::StageA {
            return Err(Error::file(file, "not a Stage A checkpoint"));
        }
        let vb = VarBuilder::new(store, dtype, device);
        let model = Self::new(cfg, &vb)?;
        vb.finish()?;
        Ok(model)
    }

    /// Builds the decoder; marks the encoder and quantizer weights as used without loading them.
    pub fn new(cfg: VqganConfig, vb: &VarBuilder) -> Result<Vqgan> {
        if cfg.levels == 0 || cfg.embed_dim >> (cfg.levels - 1) == 0 {
            return Err(Error::Msg(format!("VQGAN config: {} levels from embed_dim {} is not a valid model", cfg.levels, cfg.embed_dim)));
        }
        for unused in ["in_block", "down_blocks", "vquantizer"] {
            vb.pp(unused).skip_all();
        }
        let levels = cfg.levels;
        let c_levels: Vec<usize> = (0..levels).rev().map(|i| cfg.embed_dim >> i).collect();
        let ub = vb.pp("up_blocks");
        let stem = Linear::conv1x1(&ub.pp("0"), "0", c_levels[levels - 1], cfg.latent_channels, true)?;
        let mut stages = Vec::new();
        let mut m = 1;
        for i in 0..levels {
            let c = c_levels[levels - 1 - i];
            for _ in 0..if i == 0 { cfg.bottleneck_blocks } else { 1 } {
                stages.push(Stage::Mix(Box::new(MixBlock::load(&ub.pp(m), c)?)));
                m += 1;
            }
            if i < levels - 1 {
                let co = c_levels[levels - 2 - i];
                let l = ub.pp(m);
                let (w, b) = (host(&l, "weight", &[c, co, 4, 4])?, host(&l, "bias", &[co])?);
                let (wp, bp) = ops::prepare_conv_transpose4x4(&w, &b, c, co)?;
                stages.push(Stage::Up(Linear {
                    weight: Tensor::from_f32(&wp, &[8 * co, 2 * c], vb.dtype(), vb.device())?,
                    bias: Some(Tensor::from_f32(&bp, &[co], vb.dtype(), vb.device())?),
                }));
                m += 1;
            }
        }
        let s = cfg.up_down_scale_factor;
        let out = Linear::conv1x1(&vb.pp("out_block"), "0", cfg.out_channels * s * s, c_levels[0], true)?;
        Ok(Vqgan { cfg, stem, stages, out })
    }

    /// The config (its `scale_factor` is what the pipeline multiplies latents by).
    pub fn config(&self) -> &VqganConfig {
        &self.cfg
    }

    /// Decodes latents `[B, h, w, latent_channels]` (already scaled) to an image
    /// `[B, 4h, 4w, out_channels]`, unclamped.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        if latents.rank() != 4 || latents.dim(3) != self.cfg.latent_channels {
            return Err(Error::Shape(format!("VQGAN: latents must be [B, h, w, {}], got {:?}", self.cfg.latent_channels, latents.shape())));
        }
        let mut x = self.stem.forward(latents)?;
        for stage in &self.stages {
            match stage {
                Stage::Mix(m) => m.forward(&mut x)?,
                Stage::Up(l) => x = ops::conv_transpose4x4(&x, &l.weight, l.bias.as_ref().expect("bias"))?,
            }
        }
        ops::pixel_shuffle(&self.out.forward(&x)?, self.cfg.up_down_scale_factor)
    }
}
