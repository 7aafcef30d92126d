//! The four networks, built from their diffusers `config.json` on the engine's ops:
//! [`clip`] (the CLIP ViT-bigG text encoder), [`unet`] (Stage C and Stage B: one
//! `StableCascadeUNet`), [`vqgan`] (Stage A's decoder).
//!
//! Inside the engine images are token-major `[B, H, W, C]`; diffusers' NCHW tensors are
//! converted at the model boundary ([`nchw_to_nhwc`], [`nhwc_to_nchw`]).

pub mod clip;
pub mod config;
pub mod unet;
pub mod vqgan;

use crate::weights::VarBuilder;
use crate::{ops, Error, Result, Tensor};

/// A linear layer `y = x·Wᵀ + b` (also every 1×1 convolution, its weight viewed as 2-D).
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`, if the layer has a bias.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Loads `{name}.weight [out, in]` (and `{name}.bias [out]` when `bias`).
    pub fn load(vb: &VarBuilder, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let vb = vb.pp(name);
        Ok(Linear { weight: vb.get("weight", &[out, inp])?, bias: if bias { Some(vb.get("bias", &[out])?) } else { None } })
    }

    /// Loads a 1×1 convolution `{name}.weight [out, in, 1, 1]` + bias as a linear layer.
    pub fn conv1x1(vb: &VarBuilder, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let vb = vb.pp(name);
        let weight = vb.get("weight", &[out, inp, 1, 1])?.reshape(&[out, inp])?;
        Ok(Linear { weight, bias: if bias { Some(vb.get("bias", &[out])?) } else { None } })
    }

    /// Applies the layer to the last axis of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }

    /// Several layers on the same input as one: weights (and biases) stacked by output rows, so
    /// one GEMM computes all their outputs side by side (`[…, Σ out]`). Exact copies.
    pub fn stack(parts: &[&Linear]) -> Result<Linear> {
        let first = parts.first().ok_or_else(|| crate::Error::Msg("stacking no linear layers".into()))?;
        let inp = first.weight.dim(1);
        if parts.iter().any(|p| p.weight.dim(1) != inp || p.bias.is_some() != first.bias.is_some()) {
            return Err(crate::Error::Msg("stacked linear layers need the same input width and all or no biases".into()));
        }
        // Each tensor as one row: concatenating rows' channels appends the tensors.
        let cat = |ts: Vec<&Tensor>| -> Result<Tensor> {
            let flat = |t: &Tensor| t.view(&[1, t.numel()]);
            ts[1..].iter().try_fold(flat(ts[0])?, |acc, t| ops::concat_channels(&acc, &flat(t)?))
        };
        let rows: usize = parts.iter().map(|p| p.weight.dim(0)).sum();
        let weight = cat(parts.iter().map(|p| &p.weight).collect())?.reshape(&[rows, inp])?;
        let bias = match first.bias {
            Some(_) => Some(cat(parts.iter().map(|p| p.bias.as_ref().expect("checked above")).collect())?.reshape(&[rows])?),
            None => None,
        };
        Ok(Linear { weight, bias })
    }

    /// `y += layer(x)` (a residual connection folded into the GEMM).
    pub fn forward_accumulate(&self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        ops::linear_accumulate_into(x, &self.weight, self.bias.as_ref(), y)
    }
}

/// `[B, C, H, W]` host data → `[B, H, W, C]`.
pub fn nchw_to_nhwc_host(v: &[f32], d: [usize; 4]) -> Vec<f32> {
    permute4(v, d, [0, 2, 3, 1])
}

fn permute4(v: &[f32], d: [usize; 4], order: [usize; 4]) -> Vec<f32> {
    // out[i0, i1, i2, i3] = in[...] with out axis k being in axis order[k].
    let od = [d[order[0]], d[order[1]], d[order[2]], d[order[3]]];
    let strides = [d[1] * d[2] * d[3], d[2] * d[3], d[3], 1];
    let mut out = Vec::with_capacity(v.len());
    for a in 0..od[0] {
        for b in 0..od[1] {
            for c in 0..od[2] {
                for e in 0..od[3] {
                    let idx = [a, b, c, e];
                    let mut src = 0;
                    for k in 0..4 {
                        src += idx[k] * strides[order[k]];
                    }
                    out.push(v[src]);
                }
            }
        }
    }
    out
}

fn dims4(t: &Tensor, what: &str) -> Result<[usize; 4]> {
    match t.shape() {
        &[a, b, c, d] => Ok([a, b, c, d]),
        s => Err(Error::Shape(format!("{what}: expected a 4-D tensor, got {s:?}"))),
    }
}

/// `[B, C, H, W]` → `[B, H, W, C]` (through the host: used at model boundaries only).
pub fn nchw_to_nhwc(t: &Tensor) -> Result<Tensor> {
    let d = dims4(t, "nchw_to_nhwc")?;
    let v = permute4(&t.to_vec_f32()?, d, [0, 2, 3, 1]);
    Tensor::from_f32(&v, &[d[0], d[2], d[3], d[1]], t.dtype(), &t.device())
}

/// `[B, H, W, C]` → `[B, C, H, W]` (through the host: used at model boundaries only).
pub fn nhwc_to_nchw(t: &Tensor) -> Result<Tensor> {
    let d = dims4(t, "nhwc_to_nchw")?;
    let v = permute4(&t.to_vec_f32()?, d, [0, 3, 1, 2]);
    Tensor::from_f32(&v, &[d[0], d[3], d[1], d[2]], t.dtype(), &t.device())
}

/// Concatenation along the first axis (`[Ba, …] ++ [Bb, …]`), e.g. `[cond; uncond]` batches.
pub fn concat_batch(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape()[1..] != b.shape()[1..] {
        return Err(Error::Shape(format!("concat_batch: {:?} and {:?} differ after the first axis", a.shape(), b.shape())));
    }
    let y = ops::concat_channels(&a.view(&[1, a.numel()])?, &b.view(&[1, b.numel()])?)?;
    let mut shape = a.shape().to_vec();
    shape[0] += b.dim(0);
    y.reshape(&shape)
}

/// The weight files of a component folder: `{base}.safetensors` (or its sharded index), or the
/// `{base}.bf16.safetensors` variant; `prefer_bf16` picks the variant first when both exist.
pub fn weight_files(dir: &std::path::Path, base: &str, prefer_bf16: bool) -> Result<Vec<std::path::PathBuf>> {
    let plain = [format!("{base}.safetensors"), format!("{base}.safetensors.index.json")];
    let bf16 = [format!("{base}.bf16.safetensors"), format!("{base}.bf16.safetensors.index.json")];
    let order: Vec<&String> = if prefer_bf16 { bf16.iter().chain(&plain).collect() } else { plain.iter().chain(&bf16).collect() };
    for name in order {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(vec![p]);
        }
    }
    Err(Error::file(
        dir,
        format!("no weights: expected {base}.safetensors, {base}.bf16.safetensors or a sharded {base}.safetensors.index.json"),
    ))
}

/// Opens a component folder: its `config.json` and a [`VarBuilder`] over its weights.
pub fn open_component<C: for<'de> serde::Deserialize<'de>>(
    dir: &std::path::Path,
    base: &str,
    dtype: crate::DType,
    device: &crate::Device,
) -> Result<(C, VarBuilder)> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "component folder not found"));
    }
    let cfg = config::read_config(&dir.join("config.json"))?;
    let store = crate::weights::WeightStore::open(&weight_files(dir, base, dtype != crate::DType::F32)?)?;
    Ok((cfg, VarBuilder::new(store, dtype, device)))
}

/// What an original Stability single-file checkpoint holds, told from its tensors (spec §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginalKind {
    /// `stage_c[_bf16].safetensors`: Stage C, 3.6B.
    StageC,
    /// `stage_c_lite[_bf16].safetensors`: Stage C lite, 1B.
    StageCLite,
    /// `stage_b[_bf16].safetensors`: Stage B, 1.5B.
    StageB,
    /// `stage_b_lite[_bf16].safetensors`: Stage B lite, 700M.
    StageBLite,
    /// `stage_a.safetensors`: the VQGAN.
    StageA,
}

impl OriginalKind {
    /// Detects the stage of a store opened with [`crate::weights::WeightStore::open_original`].
    pub fn detect(store: &crate::weights::WeightStore) -> Result<OriginalKind> {
        if let Some(e) = store.entry("clip_txt_mapper.weight") {
            return match e.shape.first() {
                Some(2048) => Ok(OriginalKind::StageC),
                Some(1536) => Ok(OriginalKind::StageCLite),
                other => Err(Error::Weights(format!(
                    "{}: a Stage C checkpoint of unknown width {other:?} (2048: full, 1536: lite)",
                    store.describe_files()
                ))),
            };
        }
        if let Some(e) = store.entry("down_blocks.1.0.channelwise.0.weight") {
            return match e.shape.last() {
                Some(640) => Ok(OriginalKind::StageB),
                Some(576) => Ok(OriginalKind::StageBLite),
                other => Err(Error::Weights(format!(
                    "{}: a Stage B checkpoint of unknown width {other:?} (640: full, 576: lite)",
                    store.describe_files()
                ))),
            };
        }
        if store.entry("out_block.0.weight").is_some() && store.entry("up_blocks.0.0.weight").is_some() {
            return Ok(OriginalKind::StageA);
        }
        Err(Error::Weights(format!(
            "{}: not a Stable Cascade checkpoint (no clip_txt_mapper, down_blocks.1.0.channelwise.0 or out_block tensors)",
            store.describe_files()
        )))
    }

    /// The UNet config of a Stage B or C checkpoint.
    pub fn unet_config(self) -> Option<config::UNetConfig> {
        match self {
            OriginalKind::StageC => Some(config::UNetConfig::stage_c()),
            OriginalKind::StageCLite => Some(config::UNetConfig::stage_c_lite()),
            OriginalKind::StageB => Some(config::UNetConfig::stage_b()),
            OriginalKind::StageBLite => Some(config::UNetConfig::stage_b_lite()),
            OriginalKind::StageA => None,
        }
    }

    /// Human-readable name.
    pub fn describe(self) -> &'static str {
        match self {
            OriginalKind::StageC => "Stage C (prior, 3.6B)",
            OriginalKind::StageCLite => "Stage C lite (prior, 1B)",
            OriginalKind::StageB => "Stage B (decoder, 1.5B)",
            OriginalKind::StageBLite => "Stage B lite (decoder, 700M)",
            OriginalKind::StageA => "Stage A (VQGAN)",
        }
    }
}
