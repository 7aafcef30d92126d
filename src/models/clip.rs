//! The CLIP text encoder (transformers `CLIPTextModelWithProjection`, spec §2.1): token +
//! position embedding, pre-LN transformer layers with causal + key-padding masked attention,
//! final LayerNorm, projection of the first end-of-text token.

use std::path::Path;

use super::config::ClipTextConfig;
use super::{concat_batch, Linear};
use crate::ops::{self, AttentionMask};
use crate::weights::VarBuilder;
use crate::{DType, Device, Error, Result, Tensor};

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn load(vb: &VarBuilder, name: &str, d: usize) -> Result<Norm> {
        let vb = vb.pp(name);
        Ok(Norm { weight: vb.get("weight", &[d])?, bias: vb.get("bias", &[d])? })
    }
    fn forward(&self, x: &Tensor, eps: f32) -> Result<Tensor> {
        ops::layer_norm(x, Some(&self.weight), Some(&self.bias), eps)
    }
}

struct Layer {
    ln1: Norm,
    /// q_proj, k_proj and v_proj stacked: one GEMM gives `[q | k | v]`.
    qkv: Linear,
    out: Linear,
    ln2: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// What the text encoder returns for a batch of prompts.
pub struct ClipOutput {
    /// The last layer's output before the final LayerNorm, `[B, L, D]` (Stage C's `clip_text`).
    pub hidden_states_last: Tensor,
    /// After the final LayerNorm, `[B, L, D]`.
    pub last_hidden_state: Tensor,
    /// The projected end-of-text state, `[B, P]` (`clip_text_pooled`).
    pub text_embeds: Tensor,
}

/// The CLIP text tower with its projection.
pub struct ClipTextModel {
    cfg: ClipTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: Norm,
    projection: Linear,
    device: Device,
}

impl ClipTextModel {
    /// Loads a `text_encoder/` folder (config.json + model[.bf16].safetensors).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<ClipTextModel> {
        let (cfg, vb) = super::open_component::<ClipTextConfig>(dir, "model", dtype, device)?;
        let model = Self::new(cfg, &vb)?;
        vb.finish()?;
        Ok(model)
    }

    /// Builds the model from its config and weights (`text_model.*`, `text_projection.weight`).
    pub fn new(cfg: ClipTextConfig, vb: &VarBuilder) -> Result<ClipTextModel> {
        if cfg.hidden_act != "gelu" {
            return Err(Error::Msg(format!(
                "CLIP hidden_act '{}' is not supported (the Stable Cascade text encoder uses exact 'gelu')",
                cfg.hidden_act
            )));
        }
        let d = cfg.hidden_size;
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let token_embedding = emb.pp("token_embedding").get("weight", &[cfg.vocab_size, d])?;
        let position_embedding = emb.pp("position_embedding").get("weight", &[cfg.max_position_embeddings, d])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = tm.pp("encoder").pp("layers").pp(i);
            let at = l.pp("self_attn");
            layers.push(Layer {
                ln1: Norm::load(&l, "layer_norm1", d)?,
                qkv: Linear::stack(&[
                    &Linear::load(&at, "q_proj", d, d, true)?,
                    &Linear::load(&at, "k_proj", d, d, true)?,
                    &Linear::load(&at, "v_proj", d, d, true)?,
                ])?,
                out: Linear::load(&at, "out_proj", d, d, true)?,
                ln2: Norm::load(&l, "layer_norm2", d)?,
                fc1: Linear::load(&l.pp("mlp"), "fc1", cfg.intermediate_size, d, true)?,
                fc2: Linear::load(&l.pp("mlp"), "fc2", d, cfg.intermediate_size, true)?,
            });
        }
        let final_norm = Norm::load(&tm, "final_layer_norm", d)?;
        let projection = Linear::load(vb, "text_projection", cfg.projection_dim, d, false)?;
        Ok(ClipTextModel { cfg, token_embedding, position_embedding, layers, final_norm, projection, device: vb.device().clone() })
    }

    /// The config.
    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    /// Encodes `ids` (`B` sequences of equal length ≤ the context) with their attention masks
    /// (1 = token, 0 = padding; None = all tokens).
    pub fn forward(&self, ids: &[Vec<u32>], mask: Option<&[Vec<u32>]>) -> Result<ClipOutput> {
        let (idf, m, eos) = self.host_inputs(ids, mask)?;
        let (b, l) = (ids.len(), ids[0].len());
        let id_t = Tensor::from_f32(&idf, &[b, l], DType::F32, &self.device)?;
        let mask_t = Tensor::from_f32(&m, &[b, l], DType::F32, &self.device)?;
        self.encode(&id_t, &mask_t, &eos)
    }

    /// Checks `ids` and `mask` as [`Self::forward`] takes them; returns the ids and the mask as
    /// f32 `[B, L]` values (what the encoder reads on the device) and each sequence's pooling
    /// position.
    pub fn host_inputs(&self, ids: &[Vec<u32>], mask: Option<&[Vec<u32>]>) -> Result<(Vec<f32>, Vec<f32>, Vec<usize>)> {
        let b = ids.len();
        let l = ids.first().map_or(0, |s| s.len());
        if b == 0 || l == 0 || ids.iter().any(|s| s.len() != l) || l > self.cfg.max_position_embeddings {
            return Err(Error::Shape(format!("text encoder: need 1+ sequences of equal length ≤ {}", self.cfg.max_position_embeddings)));
        }
        if let Some(bad) = ids.iter().flatten().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::Shape(format!("text encoder: token id {bad} is outside the {}-token vocabulary", self.cfg.vocab_size)));
        }
        let m: Vec<f32> = match mask {
            Some(m) if m.len() == b && m.iter().all(|r| r.len() == l) => m.iter().flatten().map(|&x| (x != 0) as u8 as f32).collect(),
            Some(_) => return Err(Error::Shape("text encoder: the attention mask does not match the ids".into())),
            None => vec![1.0; b * l],
        };
        let idf: Vec<f32> = ids.iter().flatten().map(|&i| i as f32).collect();
        // Pooling: the first end-of-text token (transformers' rule; the legacy argmax rule when
        // the config's eos id is 2).
        let eos: Vec<usize> = ids
            .iter()
            .map(|seq| {
                if self.cfg.eos_token_id == 2 {
                    seq.iter().enumerate().max_by_key(|&(i, &t)| (t, std::cmp::Reverse(i))).map_or(0, |(i, _)| i)
                } else {
                    seq.iter().position(|&t| t as i64 == self.cfg.eos_token_id).unwrap_or(0)
                }
            })
            .collect();
        Ok((idf, m, eos))
    }

    /// The type of the hidden states (the weights').
    pub fn dtype(&self) -> DType {
        self.token_embedding.dtype()
    }

    /// The encoder on ids and mask already on the device (f32 `[B, L]`, ids validated) with the
    /// pooling positions given.
    pub fn encode(&self, id_t: &Tensor, mask_t: &Tensor, eos: &[usize]) -> Result<ClipOutput> {
        let &[b, l] = id_t.shape() else {
            return Err(Error::Shape(format!("text encoder: ids must be [B, L], got {:?}", id_t.shape())));
        };
        let d = self.cfg.hidden_size;
        let mut h = Tensor::empty(&[b, l, d], self.dtype(), &self.device)?;
        let mut last = Tensor::empty(&[b, l, d], self.dtype(), &self.device)?;
        self.encode_states_into(id_t, mask_t, &mut h, &mut last)?;
        let text_embeds = self.pool(&last, eos)?;
        Ok(ClipOutput { hidden_states_last: h, last_hidden_state: last, text_embeds })
    }

    /// The layers into `h` (`[B, L, D]`: the residual stream, the last layer's output) and the
    /// final LayerNorm into `last`, from ids and mask on the device (f32 `[B, L]`, ids
    /// validated). Nothing here touches the host, so it can be captured as a CUDA graph.
    pub fn encode_states_into(&self, id_t: &Tensor, mask_t: &Tensor, h: &mut Tensor, last: &mut Tensor) -> Result<()> {
        let &[b, l] = id_t.shape() else {
            return Err(Error::Shape(format!("text encoder: ids must be [B, L], got {:?}", id_t.shape())));
        };
        let d = self.cfg.hidden_size;
        for (what, t) in [("hidden states", &*h), ("last hidden state", &*last)] {
            if t.shape() != [b, l, d] || t.dtype() != self.dtype() {
                return Err(Error::Shape(format!(
                    "text encoder: the {what} must be [{b}, {l}, {d}] {}, got {:?} {}",
                    self.dtype(),
                    t.shape(),
                    t.dtype()
                )));
            }
        }
        let heads = self.cfg.num_attention_heads;
        let eps = self.cfg.layer_norm_eps as f32;
        let scale = ((d / heads) as f32).powf(-0.5);
        ops::token_embedding_into(id_t, &self.token_embedding, &self.position_embedding, h)?;
        for layer in &self.layers {
            let x = layer.ln1.forward(h, eps)?;
            // q, k and v from one GEMM, read in place by the attention kernel.
            let qkv = layer.qkv.forward(&x)?;
            let mut o = Tensor::empty(&[b, l, d], qkv.dtype(), &self.device)?;
            let mask = AttentionMask::CausalPadding(mask_t);
            ops::attention_packed_into(&qkv, None, heads, scale, mask, ops::AttentionKernel::Auto, &mut o)?;
            // Both residuals are added by the GEMMs (β = 1), not by separate passes.
            layer.out.forward_accumulate(&o, h)?;
            let x = layer.ln2.forward(h, eps)?;
            let x = ops::linear_gelu(&x, &layer.fc1.weight, layer.fc1.bias.as_ref())?;
            layer.fc2.forward_accumulate(&x, h)?;
        }
        ops::layer_norm_into(h, Some(&self.final_norm.weight), Some(&self.final_norm.bias), eps, last)
    }

    /// The projected end-of-text states `[B, P]` (`clip_text_pooled`): row `eos[s]` of each
    /// sequence `s` of the final LayerNorm's output `last`.
    pub fn pool(&self, last: &Tensor, eos: &[usize]) -> Result<Tensor> {
        let &[b, l, d] = last.shape() else {
            return Err(Error::Shape(format!("text encoder: the last hidden state must be [B, L, D], got {:?}", last.shape())));
        };
        if eos.len() != b || eos.iter().any(|&p| p >= l) {
            return Err(Error::Shape(format!("text encoder: {} pooling positions for {b} sequences of {l}", eos.len())));
        }
        let mut pooled: Option<Tensor> = None;
        for (s, &pos) in eos.iter().enumerate() {
            let row = last.alias((s * l + pos) * d, &[1, d])?;
            pooled = Some(match pooled {
                None => row,
                Some(p) => concat_batch(&p, &row)?,
            });
        }
        self.projection.forward(&pooled.expect("b ≥ 1"))
    }
}
