//! `StableCascadeUNet` (spec §3–4): Stage C and Stage B are this one network with different
//! configs. Token-major throughout: images are `[B, H, W, C]`, condition tokens `[B, T, c_cond]`.

use std::path::Path;

use super::config::UNetConfig;
use super::Linear;
use crate::ops::{self, AttentionMask, Padding};
use crate::weights::VarBuilder;
use crate::{DType, Device, Error, Result, Tensor};

/// LayerNorm epsilon of every UNet norm (no affine).
const EPS: f32 = 1e-6;

/// ResBlock (spec §3.2): depthwise 3×3 + channel LayerNorm, [skip concat], Linear → GELU → GRN →
/// Linear, residual.
struct ResBlock {
    dw_weight: Tensor,
    dw_bias: Tensor,
    fc1: Linear,
    gamma: Tensor,
    beta: Tensor,
    fc2: Linear,
    /// fc2's bias plus fc2 applied to GRN's β, `b₂ + W₂·β`: the bias when GRN's factor is
    /// applied to fc2's weight columns instead of to the activations.
    fc2_bias_with_beta: Tensor,
    /// f32 copies of fc2's two biases, for a residual stream held in f32 (the GEMM adds the bias
    /// in its output's type); made by [`StableCascadeUNet::set_f32_residual`].
    stream_biases: Option<Box<(Tensor, Tensor)>>,
}

impl ResBlock {
    fn load(vb: &VarBuilder, c: usize, c_skip: usize, k: usize) -> Result<ResBlock> {
        if k != 3 {
            return Err(Error::Msg(format!("kernel_size {k} is not supported (Stable Cascade uses 3)")));
        }
        let cw = vb.pp("channelwise");
        let beta = cw.pp("2").get("beta", &[1, 1, 1, 4 * c])?;
        let fc2 = Linear::load(&cw, "4", c, 4 * c, true)?;
        let fc2_bias_with_beta = fc2.forward(&beta.view(&[1, 4 * c])?)?.reshape(&[c])?;
        Ok(ResBlock {
            dw_weight: vb.pp("depthwise").get("weight", &[c, 1, 3, 3])?,
            dw_bias: vb.pp("depthwise").get("bias", &[c])?,
            fc1: Linear::load(&cw, "0", 4 * c, c + c_skip, true)?,
            gamma: cw.pp("2").get("gamma", &[1, 1, 1, 4 * c])?,
            beta,
            fc2,
            fc2_bias_with_beta,
            stream_biases: None,
        })
    }

    /// `x += fc2(GRN(GELU(fc1([dwconv+LN(x); skip]))))`, the residual added by fc2's GEMM. With
    /// `modulation` (the preceding TimestepBlock's columns of the step's `[a, b]`), x is
    /// modulated in the same pass as the convolution reads it.
    ///
    /// With the residual stream in f32 (x f32, the weights bf16), the convolution reads x's bf16
    /// copy (x modulated first, in f32, in the same pass), and fc2's GEMM adds its bf16 product
    /// to x in f32.
    fn forward(&self, x: &mut Tensor, skip: Option<&Tensor>, modulation: Option<(&Tensor, usize)>) -> Result<()> {
        let wdt = self.dw_weight.dtype();
        let mut y = ops::stream_depthwise3x3_ln(x, modulation, &self.dw_weight, &self.dw_bias, Padding::Zero, EPS)?;
        if let Some(s) = skip {
            // An f32 stream's skip is converted as it is copied.
            y = ops::concat_channels(&y, s)?;
        }
        let (fc2_bias, fc2_bias_with_beta) = match (self.stream_biases.as_deref(), x.dtype() != wdt) {
            (Some((b, bb)), true) => (Some(b), bb),
            (None, true) => return Err(Error::Msg("ResBlock: an f32 residual stream needs set_f32_residual first".into())),
            (_, false) => (self.fc2.bias.as_ref(), &self.fc2_bias_with_beta),
        };
        let &[b, h, w, c] = x.shape() else { unreachable!("images are 4-D") };
        // GRN(u) = u·f + β with a per-channel factor f. With one sample and more positions than
        // channels, fc2's weight [C, 4C] is smaller than u [HW, 4C]: linear_scaled_into scales its
        // columns by f (W₂·(u⊙f + β) = (W₂⊙f)·u + W₂·β) instead of making a pass over u.
        let fold = b == 1 && h * w > c;
        // With the stream-K kernel (CASCADE_GEMM_WS_FC2=1, or where it timed faster under
        // CASCADE_KERNEL_TUNE), fc2 applies the factor to u as its products read it
        // (W₂·(u⊙f + β) = (u⊙f)·W₂ᵀ + W₂·β): no pass over u or W₂ for it.
        let scaled = ops::linear_scaled_fused(&x.device(), h * w, 4 * c, c);
        let (mut u, factor) = if ops::linear_gelu_grn_fused(&y, &self.fc1.weight, self.fc1.bias.as_ref(), &self.gamma)? {
            // One GEMM gives u = GELU(fc1(y)) and f (kernels/gemm.cu): no pass over u for the sums.
            let (u, f) = ops::linear_gelu_grn_factor(&y, &self.fc1.weight, self.fc1.bias.as_ref(), &self.gamma, ops::FusedGrnKernel::Auto)?;
            (u, Some(f))
        } else {
            // u = fc1(y); GRN's sums pass applies the exact GELU as it reads u. (cuBLASLt's GELU
            // epilogue here instead measured no gain on an H200: docs/performance.md, seventh
            // session.)
            let mut u = self.fc1.forward(&y)?;
            if fold || scaled {
                let f = ops::gelu_grn_factor(&mut u, &self.gamma)?;
                (u, Some(f))
            } else {
                ops::gelu_grn_assign(&mut u, &self.gamma, &self.beta)?;
                (u, None)
            }
        };
        match factor {
            Some(f) if scaled || fold => ops::linear_scaled_into(&u, Some(&f), &self.fc2.weight, Some(fc2_bias_with_beta), x, true),
            Some(f) => {
                ops::grn_apply_factor_assign(&mut u, &f, &self.beta)?;
                ops::linear_accumulate_into(&u, &self.fc2.weight, fc2_bias, x)
            }
            None => ops::linear_accumulate_into(&u, &self.fc2.weight, fc2_bias, x),
        }
    }
}

/// TimestepBlock (spec §3.4): `x·(1 + a) + b` with `[a, b] = mapper(emb(t)) + Σ mapper_c(emb(0))`.
/// Every block's mapper is part of one stacked layer ([`TimestepMappers`]); the block keeps
/// where its `[a, b]` lie among that layer's outputs.
struct TimestepBlock {
    col: usize,
}

/// One TimestepBlock's weights as loaded, before [`TimestepMappers::stack`].
struct TimestepWeights {
    col: usize,
    mapper: Linear,
    cond_mappers: Vec<Linear>,
}

impl TimestepWeights {
    fn load(vb: &VarBuilder, c: usize, c_r: usize, conds: &[String], col: usize) -> Result<TimestepWeights> {
        Ok(TimestepWeights {
            col,
            mapper: Linear::load(vb, "mapper", 2 * c, c_r, true)?,
            cond_mappers: conds.iter().map(|n| Linear::load(vb, &format!("mapper_{n}"), 2 * c, c_r, true)).collect::<Result<_>>()?,
        })
    }
}

/// Every TimestepBlock's mapper as one linear layer, weights stacked by rows: one GEMM per step
/// gives all blocks' `[a, b]`, instead of three small GEMMs and two adds per block. The extra
/// conditions' terms `mapper_c(emb(0))` depend on neither the step nor the sample (the engine,
/// like diffusers' pipelines, always conditions `sca` and `crp` on 0), so they are folded into
/// the bias once, at load, in f64.
struct TimestepMappers {
    stacked: StreamLinear,
}

impl TimestepMappers {
    fn stack(blocks: Vec<TimestepWeights>, c_r: usize, dtype: DType, device: &Device) -> Result<TimestepMappers> {
        let total: usize = blocks.iter().map(|b| b.mapper.weight.dim(0)).sum();
        let mut weight = vec![0f32; total * c_r];
        let mut bias = vec![0f32; total];
        let mut emb0 = Tensor::empty(&[1, c_r], DType::F32, &Device::Cpu)?;
        ops::timestep_embedding_into(&Tensor::zeros(&[1], DType::F32, &Device::Cpu)?, c_r, 0, 10000.0, &mut emb0)?;
        let emb0 = emb0.to_vec_f32()?;
        let bias_of = |l: &Linear| l.bias.as_ref().map_or(Ok(vec![0f32; l.weight.dim(0)]), |b| b.to_vec_f32());
        for b in &blocks {
            let rows = b.mapper.weight.dim(0);
            weight[b.col * c_r..(b.col + rows) * c_r].copy_from_slice(&b.mapper.weight.to_vec_f32()?);
            let mut acc: Vec<f64> = bias_of(&b.mapper)?.iter().map(|&v| v as f64).collect();
            for m in &b.cond_mappers {
                let (w, mb) = (m.weight.to_vec_f32()?, bias_of(m)?);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a += mb[j] as f64 + (0..c_r).map(|k| w[j * c_r + k] as f64 * emb0[k] as f64).sum::<f64>();
                }
            }
            for (j, a) in acc.into_iter().enumerate() {
                bias[b.col + j] = a as f32;
            }
        }
        Ok(TimestepMappers {
            stacked: StreamLinear::new(Linear {
                weight: Tensor::from_f32(&weight, &[total, c_r], dtype, device)?,
                bias: Some(Tensor::from_f32(&bias, &[total], dtype, device)?),
            }),
        })
    }

    /// `[B, Σ 2C]`: every TimestepBlock's `[a, b]` for this step's timestep embedding, in the
    /// residual stream's dtype `out` (the modulations run in it).
    fn forward(&self, r_emb: &Tensor, out: DType) -> Result<Tensor> {
        self.stacked.forward(r_emb, out)
    }
}

/// AttnBlock (spec §3.5): LayerNorm, attention of the image tokens to [image tokens; SiLU-mapped
/// condition tokens], residual.
struct AttnBlock {
    kv_mapper: Linear,
    /// to_q, to_k and to_v stacked: one GEMM gives `[q | k | v]` per token.
    qkv: Linear,
    out: Linear,
    heads: usize,
    self_attn: bool,
    /// Position among the network's attention blocks (indexes [`Conditioning`]'s K/V rows).
    id: usize,
    /// An f32 copy of the output projection's bias, for a residual stream held in f32.
    stream_bias: Option<Tensor>,
}

impl AttnBlock {
    fn load(vb: &VarBuilder, c: usize, c_cond: usize, heads: usize, self_attn: bool, id: usize) -> Result<AttnBlock> {
        if heads == 0 || c % heads != 0 || c / heads != ops::attention::HEAD_DIM {
            return Err(Error::Msg(format!(
                "attention with {c} channels and {heads} heads: the engine's attention needs heads of {} channels",
                ops::attention::HEAD_DIM
            )));
        }
        let at = vb.pp("attention");
        Ok(AttnBlock {
            kv_mapper: Linear::load(&vb.pp("kv_mapper"), "1", c, c_cond, true)?,
            qkv: Linear::stack(&[
                &Linear::load(&at, "to_q", c, c, true)?,
                &Linear::load(&at, "to_k", c, c, true)?,
                &Linear::load(&at, "to_v", c, c, true)?,
            ])?,
            out: Linear::load(&at.pp("to_out"), "0", c, c, true)?,
            heads,
            self_attn,
            id,
            stream_bias: None,
        })
    }

    /// The condition tokens' key and value rows, `to_k(kv_mapper(SiLU(cond)))` and the same for
    /// v, packed as `[B, Lc, 3C]` (the q columns are computed and unused: this runs once per
    /// run, spec §7.6, and the packing lets the step's attention read them in place).
    fn condition_kv(&self, cond: &Tensor) -> Result<Tensor> {
        self.qkv.forward(&self.kv_mapper.forward(&ops::silu(cond)?)?)
    }

    /// Keys and values are the image tokens' projections followed by the cached condition rows,
    /// exactly `to_k([n; kv])` since every row is projected on its own. With `modulation` (the
    /// preceding TimestepBlock's columns of the step's `[a, b]`), x is modulated in the same pass
    /// as the LayerNorm reads it.
    fn forward(&self, x: &mut Tensor, modulation: Option<(&Tensor, usize)>, cond_kv: &Tensor) -> Result<()> {
        let &[b, h, w, c] = x.shape() else { unreachable!("images are 4-D") };
        // The LayerNorm in the weights' dtype: from an f32 residual stream, the stream is
        // modulated in f32 and normalised from its bf16 copy, in the same one pass.
        let wdt = self.out.weight.dtype();
        let n = match modulation {
            Some((ab, col)) => ops::modulate_layer_norm_as(x, ab, col, EPS, wdt)?,
            None => {
                let mut n = Tensor::empty(x.shape(), wdt, &x.device())?;
                ops::layer_norm_into(x, None, None, EPS, &mut n)?;
                n
            }
        };
        let qkv = self.qkv.forward(&n.reshape(&[b, h * w, c])?)?;
        let scale = (c as f32 / self.heads as f32).powf(-0.5);
        let mut o = Tensor::empty(&[b, h * w, c], qkv.dtype(), &qkv.device())?;
        if self.self_attn {
            // Image keys then the cached condition rows, both read in place from the packed
            // projections (by the mma kernel; others get copies).
            ops::attention_packed_into(&qkv, Some(cond_kv), self.heads, scale, AttentionMask::None, ops::AttentionKernel::Auto, &mut o)?;
        } else {
            let (q, k, v) = (ops::columns(&qkv, 0, c)?, ops::columns(cond_kv, c, c)?, ops::columns(cond_kv, 2 * c, c)?);
            ops::attention_into(&q, &k, &v, self.heads, scale, AttentionMask::None, &mut o)?;
        }
        // x += out(o): the projection's GEMM adds the residual (x is [B, H, W, C], o [B, HW, C]).
        let bias = match (&self.stream_bias, x.dtype() != wdt) {
            (Some(b), true) => Some(b),
            (None, true) => return Err(Error::Msg("AttnBlock: an f32 residual stream needs set_f32_residual first".into())),
            (_, false) => self.out.bias.as_ref(),
        };
        ops::linear_accumulate_into(&o, &self.out.weight, bias, x)
    }
}

enum Block {
    Res(ResBlock),
    Timestep(TimestepBlock),
    Attn(AttnBlock),
}

/// A level transition: LayerNorm, then a strided (transposed) convolution or a 1×1 convolution
/// with optional bilinear resampling.
enum Transition {
    Identity,
    /// Conv2d(k=2, s=2): weight viewed as `[C', 4C]`.
    Down2x2(StreamLinear),
    /// ConvTranspose2d(k=2, s=2): weight reordered by [`ops::prepare_conv_transpose2x2`].
    Up2x2(StreamLinear),
    /// UpDownBlock2d: 1×1 convolution, resampled by 2 (up: before, down: after) when enabled.
    Conv1x1 {
        conv: StreamLinear,
        resample: bool,
        up: bool,
    },
}

impl Transition {
    /// The transition of the residual stream `x`: LayerNorm in the weights' dtype `wdt` (from an
    /// f32 stream in the same pass), the convolution's GEMM writing the stream's dtype. With
    /// `modulation`, the level's last TimestepBlock is applied first, in the same pass as the
    /// LayerNorm: `x` is modulated in place (it is also the level's output, the up path's skip).
    fn forward(&self, x: &mut Tensor, modulation: Option<(&Tensor, usize)>, wdt: DType) -> Result<Tensor> {
        if let Transition::Identity = self {
            if let Some((ab, col)) = modulation {
                ops::modulate_assign(x, ab, col)?;
            }
            return x.view(x.shape());
        }
        let stream = x.dtype();
        let n = match modulation {
            Some((ab, col)) => ops::modulate_layer_norm_as(x, ab, col, EPS, wdt)?,
            None => {
                let mut n = Tensor::empty(x.shape(), wdt, &x.device())?;
                ops::layer_norm_into(x, None, None, EPS, &mut n)?;
                n
            }
        };
        match self {
            Transition::Identity => unreachable!(),
            Transition::Down2x2(l) => l.forward(&ops::stride2_patches(&n)?, stream),
            Transition::Up2x2(l) => ops::pixel_shuffle(&l.forward(&n, stream)?, 2),
            Transition::Conv1x1 { conv, resample, up } => {
                let (h, w) = (n.dim(1), n.dim(2));
                if !resample {
                    conv.forward(&n, stream)
                } else if *up {
                    conv.forward(&ops::resize_bilinear(&n, h * 2, w * 2)?, stream)
                } else {
                    let y = conv.forward(&n, stream)?;
                    ops::resize_bilinear(&y, h / 2, w / 2)
                }
            }
        }
    }

    fn set_stream(&mut self, on: bool) -> Result<()> {
        match self {
            Transition::Identity => Ok(()),
            Transition::Down2x2(l) | Transition::Up2x2(l) | Transition::Conv1x1 { conv: l, .. } => l.set_stream(on),
        }
    }
}

/// A layer whose output is the residual stream: a level transition's convolution, a repeat
/// mapper, the stem, the TimestepBlocks' terms. With the stream in f32 its bf16 GEMM writes f32
/// itself, the bias added in f32: no bf16 rounding of the output and no cast after it.
struct StreamLinear {
    lin: Linear,
    /// The bias in f32, while the stream is f32 ([`StableCascadeUNet::set_f32_residual`]).
    bias_f32: Option<Tensor>,
}

impl StreamLinear {
    fn new(lin: Linear) -> StreamLinear {
        StreamLinear { lin, bias_f32: None }
    }

    fn set_stream(&mut self, on: bool) -> Result<()> {
        self.bias_f32 = if on { self.lin.bias.as_ref().map(|b| b.to_dtype(DType::F32)).transpose()? } else { None };
        Ok(())
    }

    /// `x·Wᵀ + b` for x in the weights' dtype, written as `out`: the weights' dtype, or f32.
    fn forward(&self, x: &Tensor, out: DType) -> Result<Tensor> {
        if out == self.lin.weight.dtype() {
            return self.lin.forward(x);
        }
        let bias = match (&self.lin.bias, &self.bias_f32) {
            (None, _) => None,
            (Some(_), Some(b)) => Some(b),
            (Some(_), None) => return Err(Error::Msg("UNet: an f32 residual stream needs set_f32_residual first".into())),
        };
        ops::linear_as(x, &self.lin.weight, bias, out)
    }
}

struct Level {
    blocks: Vec<Block>,
    repeat_mappers: Vec<StreamLinear>,
}

/// Conv1×1 → GELU → Conv1×1 → LayerNorm (Stage B's effnet and pixel mappers).
struct Mapper {
    a: Linear,
    b: Linear,
}

impl Mapper {
    fn load(vb: &VarBuilder, cin: usize, c: usize) -> Result<Mapper> {
        Ok(Mapper { a: Linear::conv1x1(vb, "0", 4 * c, cin, true)?, b: Linear::conv1x1(vb, "2", c, 4 * c, true)? })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(&self.b.forward(&ops::gelu(&self.a.forward(x)?)?)?, None, None, EPS)
    }
}

/// The inputs of one forward call, token-major (`[B, H, W, C]` images).
pub struct UNetInputs<'a> {
    /// The noisy latent `[B, H, W, in_channels]`.
    pub sample: &'a Tensor,
    /// The timestep ratios, f32 `[B]`.
    pub timestep_ratio: &'a Tensor,
    /// Pooled CLIP embedding `[B, 1, P]`.
    pub clip_text_pooled: &'a Tensor,
    /// CLIP hidden states `[B, 77, T]` (Stage C).
    pub clip_text: Option<&'a Tensor>,
    /// CLIP image embedding `[B, 1, I]` (Stage C).
    pub clip_img: Option<&'a Tensor>,
    /// Image embeddings `[B, h, w, effnet_in_channels]` (Stage B).
    pub effnet: Option<&'a Tensor>,
    /// Pixel conditioning `[B, 8, 8, 3]` (Stage B; zeros when None, as diffusers).
    pub pixels: Option<&'a Tensor>,
}

/// Everything a forward pass needs that is constant over a run (spec §7.6): the condition
/// tokens' key/value rows of every attention block, and Stage B's effnet and pixel terms at the
/// stem's resolution. Made by [`StableCascadeUNet::prepare`].
pub struct Conditioning {
    /// Per attention block, the condition rows' packed `[q | k | v]` projections.
    attn_kv: Vec<Tensor>,
    /// Stage B's effnet and pixel terms at the stem's resolution, already summed.
    image_term: Option<Tensor>,
    stem_hw: (usize, usize),
    batch: usize,
}

impl Conditioning {
    /// Overwrites these constants in place with `other`'s (made for the same batch and
    /// resolution by the same network): a captured step graph reads them at fixed addresses,
    /// so a new run rewrites them instead of replacing them.
    pub fn assign(&mut self, other: &Conditioning) -> Result<()> {
        let same_terms = match (&self.image_term, &other.image_term) {
            (Some(a), Some(b)) => a.shape() == b.shape() && a.dtype() == b.dtype(),
            (None, None) => true,
            _ => false,
        };
        let same_kv = self.attn_kv.len() == other.attn_kv.len()
            && self.attn_kv.iter().zip(&other.attn_kv).all(|(a, b)| a.shape() == b.shape() && a.dtype() == b.dtype());
        if self.batch != other.batch || self.stem_hw != other.stem_hw || !same_terms || !same_kv {
            return Err(Error::Shape(format!(
                "UNet: cannot overwrite the run constants for batch {} at {:?} with ones for batch {} at {:?} (or another network's)",
                self.batch, self.stem_hw, other.batch, other.stem_hw
            )));
        }
        for (dst, src) in self.attn_kv.iter_mut().zip(&other.attn_kv) {
            ops::cast_into(src, dst)?;
        }
        if let (Some(dst), Some(src)) = (&mut self.image_term, &other.image_term) {
            ops::cast_into(src, dst)?;
        }
        Ok(())
    }
}

/// Receives each block's name and output (see [`StableCascadeUNet::forward_traced`]).
pub type BlockTrace<'a> = Option<&'a mut dyn FnMut(&str, &Tensor) -> Result<()>>;

/// Per-step values every block reads: the stacked TimestepBlock terms and the run's condition
/// keys and values.
struct StepTerms<'a> {
    ab: &'a Tensor,
    kv: &'a [Tensor],
}

/// Stage C or Stage B.
pub struct StableCascadeUNet {
    cfg: UNetConfig,
    dtype: DType,
    device: Device,
    clip_txt_pooled_mapper: Linear,
    clip_txt_mapper: Option<Linear>,
    clip_img_mapper: Option<Linear>,
    embedding: StreamLinear,
    effnet_mapper: Option<Mapper>,
    pixels_mapper: Option<Mapper>,
    down_scalers: Vec<Transition>,
    down: Vec<Level>,
    /// Deepest level first, as the module lists.
    up_scalers: Vec<Transition>,
    up: Vec<Level>,
    timestep_mappers: TimestepMappers,
    clf: Linear,
    /// The residual stream (the tensor every block adds to) held in f32 while the weights and
    /// the blocks' own work are bf16 ([`StableCascadeUNet::set_f32_residual`]).
    f32_residual: bool,
}

fn heads_of(cfg: &UNetConfig, i: usize) -> usize {
    cfg.num_attention_heads.get(i).copied().unwrap_or(0).max(0) as usize
}

impl StableCascadeUNet {
    /// Loads a `prior/`, `decoder/` (or lite) folder (config.json + diffusion_pytorch_model
    /// weights), or an original single file (`stage_b*.safetensors`, `stage_c*.safetensors`),
    /// whose stage and size are told from its tensors.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<StableCascadeUNet> {
        if path.is_file() {
            return Self::load_original(path, None, dtype, device);
        }
        let (cfg, vb) = super::open_component::<UNetConfig>(path, "diffusion_pytorch_model", dtype, device)?;
        let model = Self::new(cfg, &vb)?;
        vb.finish()?;
        Ok(model)
    }

    /// Loads an original single-file checkpoint, with `cfg` or the detected stage's config.
    pub fn load_original(file: &Path, cfg: Option<UNetConfig>, dtype: DType, device: &Device) -> Result<StableCascadeUNet> {
        let store = crate::weights::WeightStore::open_original(&[file])?;
        let cfg = match cfg {
            Some(c) => c,
            None => super::OriginalKind::detect(&store)?
                .unet_config()
                .ok_or_else(|| Error::file(file, "this is Stage A, not a Stage B or C checkpoint"))?,
        };
        let vb = VarBuilder::new(store, dtype, device);
        let model = Self::new(cfg, &vb)?;
        vb.finish()?;
        Ok(model)
    }

    /// The config of a component folder or original single file, without loading weights.
    pub fn config_at(path: &Path) -> Result<UNetConfig> {
        if path.is_file() {
            let store = crate::weights::WeightStore::open_original(&[path])?;
            super::OriginalKind::detect(&store)?
                .unet_config()
                .ok_or_else(|| Error::file(path, "this is Stage A, not a Stage B or C checkpoint"))
        } else {
            super::config::read_config(&path.join("config.json"))
        }
    }

    /// Builds the network from its config and weights.
    pub fn new(cfg: UNetConfig, vb: &VarBuilder) -> Result<StableCascadeUNet> {
        let levels = cfg.block_out_channels.len();
        let per_level = [
            cfg.num_attention_heads.len(),
            cfg.down_num_layers_per_block.len(),
            cfg.up_num_layers_per_block.len(),
            cfg.block_types_per_layer.len(),
        ];
        if levels == 0 || per_level.iter().any(|&n| n != levels) {
            return Err(Error::Msg(format!("UNet config: per-level lists have lengths {per_level:?}, expected {levels} each")));
        }
        let ch = &cfg.block_out_channels;
        let (c_r, c_cond, seq) = (cfg.timestep_ratio_embedding_dim, cfg.conditioning_dim, cfg.clip_seq);
        let down_reps = cfg.down_blocks_repeat_mappers.clone().unwrap_or(vec![1; levels]);
        let up_reps: Vec<usize> = cfg.up_blocks_repeat_mappers.clone().unwrap_or(vec![1; levels]).into_iter().rev().collect();
        let up_layers: Vec<usize> = cfg.up_num_layers_per_block.iter().rev().copied().collect();
        if down_reps.len() != levels || up_reps.len() != levels {
            return Err(Error::Msg(format!("UNet config: repeat mapper lists must have {levels} entries")));
        }

        let attn_count = std::cell::Cell::new(0usize);
        let timestep_weights = std::cell::RefCell::new(Vec::<TimestepWeights>::new());
        let timestep_cols = std::cell::Cell::new(0usize);
        let block = |vb: &VarBuilder, kind: &str, i: usize, c_skip: usize| -> Result<Block> {
            match kind {
                "SDCascadeResBlock" => Ok(Block::Res(ResBlock::load(vb, ch[i], c_skip, cfg.kernel_size)?)),
                "SDCascadeTimestepBlock" => {
                    let col = timestep_cols.replace(timestep_cols.get() + 2 * ch[i]);
                    timestep_weights.borrow_mut().push(TimestepWeights::load(vb, ch[i], c_r, &cfg.timestep_conditioning_type, col)?);
                    Ok(Block::Timestep(TimestepBlock { col }))
                }
                "SDCascadeAttnBlock" => {
                    let id = attn_count.replace(attn_count.get() + 1);
                    Ok(Block::Attn(AttnBlock::load(vb, ch[i], c_cond, heads_of(&cfg, i), cfg.self_attn.get(i), id)?))
                }
                other => Err(Error::Msg(format!("UNet config: unknown block type '{other}'"))),
            }
        };
        let mappers = |vb: &VarBuilder, n: usize, c: usize| -> Result<Vec<StreamLinear>> {
            (0..n.saturating_sub(1)).map(|r| Ok(StreamLinear::new(Linear::conv1x1(vb, &r.to_string(), c, c, true)?))).collect()
        };

        let mut down_scalers = Vec::new();
        let mut down = Vec::new();
        for i in 0..levels {
            let ds = vb.pp("down_downscalers").pp(i);
            down_scalers.push(if i == 0 {
                Transition::Identity
            } else if let Some(sw) = &cfg.switch_level {
                let conv = StreamLinear::new(Linear::conv1x1(&ds.pp("1").pp("blocks"), "0", ch[i], ch[i - 1], true)?);
                Transition::Conv1x1 { conv, resample: sw.get(i - 1).copied().unwrap_or(false), up: false }
            } else {
                let l = ds.pp("1");
                Transition::Down2x2(StreamLinear::new(Linear {
                    weight: l.get("weight", &[ch[i], ch[i - 1], 2, 2])?.reshape(&[ch[i], 4 * ch[i - 1]])?,
                    bias: Some(l.get("bias", &[ch[i]])?),
                }))
            });
            let types = &cfg.block_types_per_layer[i];
            let mut blocks = Vec::new();
            for j in 0..cfg.down_num_layers_per_block[i] {
                for (k, kind) in types.iter().enumerate() {
                    blocks.push(block(&vb.pp("down_blocks").pp(i).pp(j * types.len() + k), kind, i, 0)?);
                }
            }
            down.push(Level { blocks, repeat_mappers: mappers(&vb.pp("down_repeat_mappers").pp(i), down_reps[i], ch[i])? });
        }

        let mut up_scalers = Vec::new();
        let mut up = Vec::new();
        for (k, i) in (0..levels).rev().enumerate() {
            let us = vb.pp("up_upscalers").pp(k);
            up_scalers.push(if i == 0 {
                Transition::Identity
            } else if let Some(sw) = &cfg.switch_level {
                let conv = StreamLinear::new(Linear::conv1x1(&us.pp("1").pp("blocks"), "1", ch[i - 1], ch[i], true)?);
                Transition::Conv1x1 { conv, resample: sw.get(i - 1).copied().unwrap_or(false), up: true }
            } else {
                let l = us.pp("1");
                let (w, b) = (l.get_as("weight", &[ch[i], ch[i - 1], 2, 2], DType::F32)?, l.get_as("bias", &[ch[i - 1]], DType::F32)?);
                let (wp, bp) = ops::prepare_conv_transpose2x2(&w.to_vec_f32()?, &b.to_vec_f32()?, ch[i], ch[i - 1])?;
                Transition::Up2x2(StreamLinear::new(Linear {
                    weight: Tensor::from_f32(&wp, &[4 * ch[i - 1], ch[i]], vb.dtype(), vb.device())?,
                    bias: Some(Tensor::from_f32(&bp, &[4 * ch[i - 1]], vb.dtype(), vb.device())?),
                }))
            });
            let types = &cfg.block_types_per_layer[i];
            let mut blocks = Vec::new();
            for j in 0..up_layers[i] {
                for (t, kind) in types.iter().enumerate() {
                    let c_skip = if i < levels - 1 && j == 0 && t == 0 { ch[i] } else { 0 };
                    blocks.push(block(&vb.pp("up_blocks").pp(k).pp(j * types.len() + t), kind, i, c_skip)?);
                }
            }
            up.push(Level { blocks, repeat_mappers: mappers(&vb.pp("up_repeat_mappers").pp(k), up_reps[i], ch[i])? });
        }

        let p = cfg.patch_size;
        let timestep_mappers = TimestepMappers::stack(timestep_weights.into_inner(), c_r, vb.dtype(), vb.device())?;
        let mut model = StableCascadeUNet {
            clip_txt_pooled_mapper: Linear::load(vb, "clip_txt_pooled_mapper", c_cond * seq, cfg.clip_text_pooled_in_channels, true)?,
            clip_txt_mapper: cfg.clip_text_in_channels.map(|t| Linear::load(vb, "clip_txt_mapper", c_cond, t, true)).transpose()?,
            clip_img_mapper: cfg.clip_image_in_channels.map(|n| Linear::load(vb, "clip_img_mapper", c_cond * seq, n, true)).transpose()?,
            embedding: StreamLinear::new(Linear::conv1x1(&vb.pp("embedding"), "1", ch[0], cfg.in_channels * p * p, true)?),
            effnet_mapper: cfg.effnet_in_channels.map(|e| Mapper::load(&vb.pp("effnet_mapper"), e, ch[0])).transpose()?,
            pixels_mapper: cfg.pixel_mapper_in_channels.map(|e| Mapper::load(&vb.pp("pixels_mapper"), e, ch[0])).transpose()?,
            clf: Linear::conv1x1(&vb.pp("clf"), "1", cfg.out_channels * p * p, ch[0], true)?,
            down_scalers,
            down,
            up_scalers,
            up,
            timestep_mappers,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            cfg,
            f32_residual: false,
        };
        model.set_f32_residual(f32_residual_default())?;
        Ok(model)
    }

    /// Holds the residual stream in f32 (`on`, the default: [`f32_residual_default`]) or in the
    /// weights' dtype when the weights are bf16; nothing changes for f32 weights. In bf16 every block's residual add and
    /// every TimestepBlock's `x·(1 + a) + b` rounds the stream, and over Stage C's 192 blocks and
    /// Stage B's 456 block calls those roundings are most of bf16's error
    /// (`tools/reference/bf16_residual_stream.py`: about four times less error with the stream
    /// in f32). The blocks still compute in bf16, from the stream's bf16 copy (read by each
    /// block's first pass, which writes its LayerNorm in bf16); the residual GEMMs add their bf16
    /// products to the f32 stream. Costs the stream's traffic in f32: on an H200, 0.5 ms of a
    /// 19.4 ms Stage C step and 0.75 ms of a 23.9 ms Stage B step, for a bf16 error against f32
    /// of 4.9e-3 instead of 1.7e-2 (Stage C) and 7.9e-3 instead of 2.5e-2 (Stage B; the bound is
    /// 2e-2, docs/fidelity.md). Set it before the first forward of a run (prepared run constants
    /// and captured step graphs hold the stream's dtype).
    pub fn set_f32_residual(&mut self, on: bool) -> Result<()> {
        let on = on && self.dtype == DType::BF16;
        for level in self.down.iter_mut().chain(self.up.iter_mut()) {
            for block in &mut level.blocks {
                match block {
                    Block::Res(r) => {
                        r.stream_biases = if on {
                            let b = match &r.fc2.bias {
                                Some(b) => b.to_dtype(DType::F32)?,
                                None => Tensor::zeros(&[r.fc2.weight.dim(0)], DType::F32, &self.device)?,
                            };
                            Some(Box::new((b, r.fc2_bias_with_beta.to_dtype(DType::F32)?)))
                        } else {
                            None
                        }
                    }
                    Block::Attn(a) => {
                        a.stream_bias = if on { a.out.bias.as_ref().map(|b| b.to_dtype(DType::F32)).transpose()? } else { None }
                    }
                    Block::Timestep(_) => {}
                }
            }
            for m in &mut level.repeat_mappers {
                m.set_stream(on)?;
            }
        }
        for t in self.down_scalers.iter_mut().chain(self.up_scalers.iter_mut()) {
            t.set_stream(on)?;
        }
        self.embedding.set_stream(on)?;
        self.timestep_mappers.stacked.set_stream(on)?;
        self.f32_residual = on;
        Ok(())
    }

    /// The residual stream's dtype (see [`StableCascadeUNet::set_f32_residual`]).
    pub fn stream_dtype(&self) -> DType {
        if self.f32_residual {
            DType::F32
        } else {
            self.dtype
        }
    }

    /// A repeat mapper (a 1×1 convolution) on the stream `x`, the level's pending modulation
    /// applied first: its input in the weights' dtype (modulated and converted in one pass), its
    /// output in the stream's. `x` itself is not modulated: the mapper's output replaces it.
    fn repeat_mapper(&self, m: &StreamLinear, x: &Tensor, modulation: Option<(&Tensor, usize)>) -> Result<Tensor> {
        let input = match modulation {
            Some((ab, col)) => {
                let mut y = Tensor::empty(x.shape(), self.dtype, &self.device)?;
                ops::modulate_into(x, ab, col, &mut y)?;
                y
            }
            None if x.dtype() != self.dtype => x.to_dtype(self.dtype)?,
            None => x.view(x.shape())?,
        };
        m.forward(&input, x.dtype())
    }

    /// The config.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// The condition tokens (spec §3.8): Stage C `LN([txt(77); pooled(4); img(4)])`, Stage B
    /// `LN(pooled(4))`. Constant over a run: compute once.
    pub fn condition(&self, clip_text_pooled: &Tensor, clip_text: Option<&Tensor>, clip_img: Option<&Tensor>) -> Result<Tensor> {
        let b = clip_text_pooled.dim(0);
        let c = self.cfg.conditioning_dim;
        let pooled = self.clip_txt_pooled_mapper.forward(clip_text_pooled)?;
        let n = pooled.numel() / (b * c);
        let pooled = pooled.reshape(&[b, n, c])?;
        let tokens = match (clip_text, clip_img, &self.clip_txt_mapper, &self.clip_img_mapper) {
            (Some(txt), Some(img), Some(tm), Some(im)) => {
                let img = im.forward(img)?;
                let n = img.numel() / (b * c);
                let img = img.reshape(&[b, n, c])?;
                ops::concat_tokens(&ops::concat_tokens(&tm.forward(txt)?, &pooled)?, &img)?
            }
            (None, None, _, _) | (_, _, None, _) | (_, _, _, None) => pooled,
            _ => return Err(Error::Shape("UNet: clip_text and clip_img must be given together".into())),
        };
        ops::layer_norm(&tokens, None, None, EPS)
    }

    /// One forward pass: the ε prediction `[B, H, W, out_channels]`.
    pub fn forward(&self, inp: &UNetInputs) -> Result<Tensor> {
        self.forward_inputs_traced(inp, None)
    }

    /// [`StableCascadeUNet::forward`] with every block's output handed to `trace` (see
    /// [`StableCascadeUNet::forward_traced`]).
    pub fn forward_inputs_traced(&self, inp: &UNetInputs, trace: BlockTrace) -> Result<Tensor> {
        let cond = self.condition(inp.clip_text_pooled, inp.clip_text, inp.clip_img)?;
        self.forward_with_condition_traced(inp.sample, inp.timestep_ratio, &cond, inp.effnet, inp.pixels, trace)
    }

    /// One forward pass with precomputed condition tokens (see [`StableCascadeUNet::condition`]).
    pub fn forward_with_condition(
        &self,
        sample: &Tensor,
        timestep_ratio: &Tensor,
        cond: &Tensor,
        effnet: Option<&Tensor>,
        pixels: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_with_condition_traced(sample, timestep_ratio, cond, effnet, pixels, None)
    }

    fn forward_with_condition_traced(
        &self,
        sample: &Tensor,
        timestep_ratio: &Tensor,
        cond: &Tensor,
        effnet: Option<&Tensor>,
        pixels: Option<&Tensor>,
        trace: BlockTrace,
    ) -> Result<Tensor> {
        let &[b, h, w, _] = sample.shape() else {
            return Err(Error::Shape(format!("UNet: sample must be [B, H, W, C], got {:?}", sample.shape())));
        };
        let prepared = self.prepare(cond, effnet, pixels, b, h, w)?;
        self.forward_traced(sample, timestep_ratio, &prepared, trace)
    }

    /// The per-run constants for samples of `batch × h × w` (see [`Conditioning`]).
    pub fn prepare(
        &self,
        cond: &Tensor,
        effnet: Option<&Tensor>,
        pixels: Option<&Tensor>,
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<Conditioning> {
        let p = self.cfg.patch_size.max(1);
        let (h0, w0) = (h / p, w / p);
        let mut attn: Vec<&AttnBlock> = self
            .down
            .iter()
            .chain(&self.up)
            .flat_map(|l| &l.blocks)
            .filter_map(|b| if let Block::Attn(a) = b { Some(a) } else { None })
            .collect();
        attn.sort_by_key(|a| a.id);
        let attn_kv = attn.iter().map(|a| a.condition_kv(cond)).collect::<Result<Vec<_>>>()?;
        let mut image_terms = Vec::new();
        if let (Some(m), Some(e)) = (&self.effnet_mapper, effnet) {
            image_terms.push(m.forward(&ops::resize_bilinear(e, h0, w0)?)?);
        }
        if let Some(m) = &self.pixels_mapper {
            let zeros;
            let px = match pixels {
                Some(px) => px,
                None => {
                    zeros = Tensor::zeros(&[batch, 8, 8, self.cfg.pixel_mapper_in_channels.unwrap_or(3)], self.dtype, &self.device)?;
                    &zeros
                }
            };
            image_terms.push(ops::resize_bilinear(&m.forward(px)?, h0, w0)?);
        }
        // Stage B adds both terms to every step's stem output: add them to each other once here.
        let mut terms = image_terms.into_iter();
        let image_term = match terms.next() {
            Some(mut sum) => {
                for t in terms {
                    ops::add_assign(&mut sum, &t)?;
                }
                // Added to the stem's output, in the stream's dtype.
                Some(if sum.dtype() != self.stream_dtype() { sum.to_dtype(self.stream_dtype())? } else { sum })
            }
            None => None,
        };
        Ok(Conditioning { attn_kv, image_term, stem_hw: (h0, w0), batch })
    }

    /// One forward pass with the run's constants (see [`StableCascadeUNet::prepare`]).
    pub fn forward_prepared(&self, sample: &Tensor, timestep_ratio: &Tensor, prepared: &Conditioning) -> Result<Tensor> {
        self.forward_traced(sample, timestep_ratio, prepared, None)
    }

    /// [`StableCascadeUNet::forward_prepared`], handing `trace` every block's output as it is made
    /// (for locating where two implementations part). Names follow diffusers' modules:
    /// `down_blocks.{level}.{block}`, `up_blocks.{level}.{block}`, with `@{r}` for a level's
    /// repetition r > 0. A TimestepBlock applied inside the next block's pass gives no output of
    /// its own: the next block's output follows from it.
    pub fn forward_traced(
        &self,
        sample: &Tensor,
        timestep_ratio: &Tensor,
        prepared: &Conditioning,
        mut trace: BlockTrace,
    ) -> Result<Tensor> {
        let &[b, h, w, cin] = sample.shape() else {
            return Err(Error::Shape(format!("UNet: sample must be [B, H, W, C], got {:?}", sample.shape())));
        };
        let p = self.cfg.patch_size;
        if cin != self.cfg.in_channels || h % p != 0 || w % p != 0 {
            return Err(Error::Shape(format!(
                "UNet: sample {:?} needs {} channels and a size divisible by the patch size {p}",
                sample.shape(),
                self.cfg.in_channels
            )));
        }
        if timestep_ratio.shape() != [b] {
            return Err(Error::Shape(format!("UNet: timestep_ratio must be [{b}], got {:?}", timestep_ratio.shape())));
        }
        // The timestep embedding emb(t), and from it every TimestepBlock's [a, b] in one GEMM.
        let c_r = self.cfg.timestep_ratio_embedding_dim;
        let mut r_emb = Tensor::empty(&[b, c_r], self.dtype, &self.device)?;
        let ratio = match timestep_ratio.dtype() {
            DType::F32 => timestep_ratio.view(&[b])?,
            _ => timestep_ratio.to_dtype(DType::F32)?,
        };
        ops::timestep_embedding_into(&ratio, c_r, 0, 10000.0, &mut r_emb)?;
        // With an f32 stream, the modulations x·(1 + a) + b run in f32: the terms are made in f32.
        let stream = self.stream_dtype();
        let ab = self.timestep_mappers.forward(&r_emb, stream)?;

        // Stem: the embedding's GEMM and its LayerNorm in the stream's dtype.
        let x = if p > 1 { ops::pixel_unshuffle(sample, p)? } else { sample.view(sample.shape())? };
        let mut x = ops::layer_norm(&self.embedding.forward(&x, stream)?, None, None, EPS)?;
        if (x.dim(1), x.dim(2)) != prepared.stem_hw || b != prepared.batch {
            return Err(Error::Shape(format!(
                "UNet: the run was prepared for {}×{:?} at the stem, the sample gives {b}×{:?}",
                prepared.batch,
                prepared.stem_hw,
                (x.dim(1), x.dim(2))
            )));
        }
        if let Some(term) = &prepared.image_term {
            ops::add_assign(&mut x, term)?;
        }
        let terms = StepTerms { ab: &ab, kv: &prepared.attn_kv };

        // A level that ends with a TimestepBlock leaves its modulation (`pending`, its columns of
        // ab) to whatever reads the level's output next: a repeat mapper, a transition's or the
        // head's LayerNorm. Each applies it in its own first pass.
        let modulation = |pending: Option<usize>| pending.map(|col| (&ab, col));

        // Down path; level_outputs[0] is the deepest. The next level's transition runs at the end
        // of each level, so that a pending modulation of the level's output (the skip) is
        // applied by the transition's LayerNorm pass.
        let mut level_outputs: Vec<Tensor> = Vec::new();
        for (li, level) in self.down.iter().enumerate() {
            let mut pending = None;
            for rep in 0..=level.repeat_mappers.len() {
                (x, pending) = self.run_blocks(&level.blocks, x, None, &terms, &format!("down_blocks.{li}"), rep, &mut trace)?;
                if let Some(m) = level.repeat_mappers.get(rep) {
                    x = self.repeat_mapper(m, &x, modulation(pending.take()))?;
                }
            }
            let next =
                self.down_scalers.get(li + 1).map(|scaler| scaler.forward(&mut x, modulation(pending.take()), self.dtype)).transpose()?;
            if let Some(col) = pending {
                ops::modulate_assign(&mut x, &ab, col)?;
            }
            level_outputs.insert(0, x.view(x.shape())?);
            if let Some(next) = next {
                x = next;
            }
        }

        // Up path, deepest level first; the first ResBlock of every repetition takes the skip.
        let mut x = level_outputs[0].view(level_outputs[0].shape())?;
        let mut pending = None;
        for (k, (level, scaler)) in self.up.iter().zip(&self.up_scalers).enumerate() {
            for rep in 0..=level.repeat_mappers.len() {
                let skip = if k > 0 { Some(&level_outputs[k]) } else { None };
                (x, pending) = self.run_blocks(&level.blocks, x, skip, &terms, &format!("up_blocks.{k}"), rep, &mut trace)?;
                if let Some(m) = level.repeat_mappers.get(rep) {
                    x = self.repeat_mapper(m, &x, modulation(pending.take()))?;
                }
            }
            // The last level's (Identity) leaves a pending modulation to the head's LayerNorm.
            if !matches!(scaler, Transition::Identity) || k + 1 < self.up.len() {
                x = scaler.forward(&mut x, modulation(pending.take()), self.dtype)?;
            }
        }

        // The head's LayerNorm, in the weights' dtype (from an f32 stream in the same pass, and
        // with the last level's pending modulation).
        let n = match modulation(pending) {
            Some((ab, col)) => ops::modulate_layer_norm_as(&mut x, ab, col, EPS, self.dtype)?,
            None => {
                let mut n = Tensor::empty(x.shape(), self.dtype, &self.device)?;
                ops::layer_norm_into(&x, None, None, EPS, &mut n)?;
                n
            }
        };
        let y = self.clf.forward(&n)?;
        if p > 1 {
            ops::pixel_shuffle(&y, p)
        } else {
            Ok(y)
        }
    }

    /// One level's blocks in order; `skip` goes to the first block when it is a ResBlock. A
    /// TimestepBlock is applied inside the next block's first pass: the attention block's
    /// LayerNorm (Stage C's levels and Stage B's deeper ones) or the ResBlock's depthwise
    /// convolution (Stage B's first two levels). At a level's end it is returned unapplied, as
    /// its columns of the terms, for the next pass over the level's output to apply (when
    /// tracing, where every block's output is wanted, it is applied here).
    #[allow(clippy::too_many_arguments)]
    fn run_blocks(
        &self,
        blocks: &[Block],
        mut x: Tensor,
        skip: Option<&Tensor>,
        terms: &StepTerms,
        at: &str,
        rep: usize,
        trace: &mut BlockTrace,
    ) -> Result<(Tensor, Option<usize>)> {
        let mut i = 0;
        while i < blocks.len() {
            match (&blocks[i], blocks.get(i + 1)) {
                (Block::Res(r), _) => {
                    let skip = if i == 0 { skip } else { None };
                    if let Some(s) = skip {
                        if (x.dim(1), x.dim(2)) != (s.dim(1), s.dim(2)) {
                            // diffusers resizes in f32 and casts back (an f32 stream stays f32).
                            let dtype = x.dtype();
                            if dtype != DType::F32 {
                                x = x.to_dtype(DType::F32)?;
                            }
                            x = ops::resize_bilinear(&x, s.dim(1), s.dim(2))?;
                            if dtype != DType::F32 {
                                x = x.to_dtype(dtype)?;
                            }
                        }
                    }
                    r.forward(&mut x, skip, None)?;
                }
                (Block::Timestep(t), Some(Block::Attn(a))) => {
                    a.forward(&mut x, Some((terms.ab, t.col)), &terms.kv[a.id])?;
                    i += 1;
                }
                // Never the level's first block, so no skip (Stage B's first two levels).
                (Block::Timestep(t), Some(Block::Res(r))) => {
                    r.forward(&mut x, None, Some((terms.ab, t.col)))?;
                    i += 1;
                }
                (Block::Timestep(t), None) if trace.is_none() => return Ok((x, Some(t.col))),
                (Block::Timestep(t), _) => ops::modulate_assign(&mut x, terms.ab, t.col)?,
                (Block::Attn(a), _) => a.forward(&mut x, None, &terms.kv[a.id])?,
            }
            if let Some(t) = trace.as_mut() {
                let name = if rep == 0 { format!("{at}.{i}") } else { format!("{at}.{i}@{rep}") };
                t(&name, &x)?;
            }
            i += 1;
        }
        Ok((x, None))
    }
}

/// A forward pass's inputs read from a safetensors file under diffusers' argument names
/// (`sample`, `timestep_ratio`, `clip_text_pooled`, optional `clip_text`, `clip_img`, `effnet`,
/// `pixels`; images NCHW as diffusers takes them), converted to the engine's layout.
pub struct UNetInputTensors {
    sample: Tensor,
    timestep_ratio: Tensor,
    clip_text_pooled: Tensor,
    clip_text: Option<Tensor>,
    clip_img: Option<Tensor>,
    effnet: Option<Tensor>,
    pixels: Option<Tensor>,
}

impl UNetInputTensors {
    /// Reads the inputs as `dtype` on `device` (the timestep ratios as f32).
    pub fn from_store(store: &crate::weights::WeightStore, dtype: DType, device: &Device) -> Result<Self> {
        let optional = |name: &str| store.entry(name).map(|_| store.load(name, dtype, device)).transpose();
        let image = |name: &str| optional(name)?.map(|t| super::nchw_to_nhwc(&t)).transpose();
        let need = |t: Option<Tensor>, name: &str| {
            t.ok_or_else(|| Error::Weights(format!("the inputs lack '{name}' ({})", store.describe_files())))
        };
        Ok(UNetInputTensors {
            sample: need(image("sample")?, "sample")?,
            timestep_ratio: store.load("timestep_ratio", DType::F32, device)?,
            clip_text_pooled: need(optional("clip_text_pooled")?, "clip_text_pooled")?,
            clip_text: optional("clip_text")?,
            clip_img: optional("clip_img")?,
            effnet: image("effnet")?,
            pixels: image("pixels")?,
        })
    }

    /// The borrowed view a forward pass takes.
    pub fn inputs(&self) -> UNetInputs<'_> {
        UNetInputs {
            sample: &self.sample,
            timestep_ratio: &self.timestep_ratio,
            clip_text_pooled: &self.clip_text_pooled,
            clip_text: self.clip_text.as_ref(),
            clip_img: self.clip_img.as_ref(),
            effnet: self.effnet.as_ref(),
            pixels: self.pixels.as_ref(),
        }
    }
}

/// Whether a bf16 UNet keeps its residual stream in f32 unless told otherwise: yes, unless
/// `CASCADE_F32_RESIDUAL=0` is in the environment (read once; for A/B measurements of the bf16
/// stream). The default of [`StableCascadeUNet::load`], `LoadOptions`, `EngineConfig` and the CLI.
pub fn f32_residual_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CASCADE_F32_RESIDUAL").map_or(true, |v| v.trim() != "0"))
}
