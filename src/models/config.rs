//! The models' `config.json` files, as diffusers and transformers write them.

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// Reads and parses a `config.json`, naming the file in any error.
pub fn read_config<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid config: {e}")))
}

/// A boolean or one boolean per level (`self_attn`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PerLevelBool {
    /// The same for every level.
    One(bool),
    /// One value per level.
    Each(Vec<bool>),
}

impl PerLevelBool {
    /// The value for level `i`.
    pub fn get(&self, i: usize) -> bool {
        match self {
            PerLevelBool::One(b) => *b,
            PerLevelBool::Each(v) => v.get(i).copied().unwrap_or(true),
        }
    }
}

fn default_true() -> PerLevelBool {
    PerLevelBool::One(true)
}

/// `StableCascadeUNet`'s config (Stage C and Stage B).
#[derive(Clone, Debug, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out.
    pub out_channels: usize,
    /// Width of the timestep-ratio embedding (64).
    pub timestep_ratio_embedding_dim: usize,
    /// Pixel-unshuffle factor of the stem (1 for Stage C, 2 for Stage B).
    pub patch_size: usize,
    /// Width of the condition tokens.
    pub conditioning_dim: usize,
    /// Channels per level.
    pub block_out_channels: Vec<usize>,
    /// Attention heads per level (0 or −1 where a level has no attention).
    pub num_attention_heads: Vec<i64>,
    /// Layers per level on the way down.
    pub down_num_layers_per_block: Vec<usize>,
    /// Layers per level on the way up, deepest level first.
    pub up_num_layers_per_block: Vec<usize>,
    /// Repetitions per level on the way down.
    pub down_blocks_repeat_mappers: Option<Vec<usize>>,
    /// Repetitions per level on the way up, deepest level first.
    pub up_blocks_repeat_mappers: Option<Vec<usize>>,
    /// Block types of one layer, per level.
    pub block_types_per_layer: Vec<Vec<String>>,
    /// Width of the CLIP hidden states (Stage C), if used.
    pub clip_text_in_channels: Option<usize>,
    /// Width of the pooled CLIP embedding.
    pub clip_text_pooled_in_channels: usize,
    /// Width of the CLIP image embedding (Stage C), if used.
    pub clip_image_in_channels: Option<usize>,
    /// Tokens per pooled / image embedding.
    pub clip_seq: usize,
    /// EfficientNet feature channels (Stage B), if used.
    pub effnet_in_channels: Option<usize>,
    /// Pixel conditioning channels (Stage B), if used.
    pub pixel_mapper_in_channels: Option<usize>,
    /// Depthwise kernel size (3).
    #[serde(default = "default_kernel")]
    pub kernel_size: usize,
    /// Whether image tokens also serve as keys.
    #[serde(default = "default_true")]
    pub self_attn: PerLevelBool,
    /// Extra timestep conditions (`sca`, `crp`), each embedded from 0 at inference.
    pub timestep_conditioning_type: Vec<String>,
    /// Per level transition: resample (true) or not; None for Stage B's strided convolutions.
    pub switch_level: Option<Vec<bool>>,
}

fn default_kernel() -> usize {
    3
}

/// transformers' `CLIPTextConfig` (the fields the text tower uses).
#[derive(Clone, Debug, Deserialize)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Heads.
    pub num_attention_heads: usize,
    /// Context length.
    pub max_position_embeddings: usize,
    /// MLP activation: "gelu" (exact) or "quick_gelu".
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_clip_eps")]
    pub layer_norm_eps: f64,
    /// Width of `text_projection`.
    pub projection_dim: usize,
    /// End-of-text id: pooling takes its first occurrence (or the argmax of the ids when 2).
    #[serde(default = "default_eos")]
    pub eos_token_id: i64,
}

fn default_clip_eps() -> f64 {
    1e-5
}

fn default_eos() -> i64 {
    49407
}

/// `PaellaVQModel`'s config (Stage A).
#[derive(Clone, Debug, Deserialize)]
pub struct VqganConfig {
    /// Image channels in (3).
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out (3).
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Pixel-shuffle factor (2).
    #[serde(default = "two")]
    pub up_down_scale_factor: usize,
    /// Levels (2).
    #[serde(default = "two")]
    pub levels: usize,
    /// Mixing blocks at the deepest level (12).
    #[serde(default = "twelve")]
    pub bottleneck_blocks: usize,
    /// Channels at the deepest level (384).
    #[serde(default = "embed")]
    pub embed_dim: usize,
    /// Latent channels (4).
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// Latent scale the decoder pipeline multiplies by before decoding (0.3764).
    #[serde(default = "scale")]
    pub scale_factor: f64,
}

fn two() -> usize {
    2
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn twelve() -> usize {
    12
}
fn embed() -> usize {
    384
}
fn scale() -> f64 {
    0.3764
}

fn strings(v: &[&[&str]]) -> Vec<Vec<String>> {
    v.iter().map(|l| l.iter().map(|s| s.to_string()).collect()).collect()
}

const RTA: &[&str] = &["SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"];
const RT: &[&str] = &["SDCascadeResBlock", "SDCascadeTimestepBlock"];

impl UNetConfig {
    /// Stage C, 3.6B (spec §2.2; HF `prior/config.json`).
    pub fn stage_c() -> UNetConfig {
        UNetConfig {
            in_channels: 16,
            out_channels: 16,
            timestep_ratio_embedding_dim: 64,
            patch_size: 1,
            conditioning_dim: 2048,
            block_out_channels: vec![2048, 2048],
            num_attention_heads: vec![32, 32],
            down_num_layers_per_block: vec![8, 24],
            up_num_layers_per_block: vec![24, 8],
            down_blocks_repeat_mappers: Some(vec![1, 1]),
            up_blocks_repeat_mappers: Some(vec![1, 1]),
            block_types_per_layer: strings(&[RTA, RTA]),
            clip_text_in_channels: Some(1280),
            clip_text_pooled_in_channels: 1280,
            clip_image_in_channels: Some(768),
            clip_seq: 4,
            effnet_in_channels: None,
            pixel_mapper_in_channels: None,
            kernel_size: 3,
            self_attn: PerLevelBool::One(true),
            timestep_conditioning_type: vec!["sca".into(), "crp".into()],
            switch_level: Some(vec![false]),
        }
    }

    /// Stage C lite, 1B (HF `prior_lite/config.json`).
    pub fn stage_c_lite() -> UNetConfig {
        UNetConfig {
            conditioning_dim: 1536,
            block_out_channels: vec![1536, 1536],
            num_attention_heads: vec![24, 24],
            down_num_layers_per_block: vec![4, 12],
            up_num_layers_per_block: vec![12, 4],
            ..Self::stage_c()
        }
    }

    /// Stage B, 1.5B (spec §2.3; HF `decoder/config.json`).
    pub fn stage_b() -> UNetConfig {
        UNetConfig {
            in_channels: 4,
            out_channels: 4,
            timestep_ratio_embedding_dim: 64,
            patch_size: 2,
            conditioning_dim: 1280,
            block_out_channels: vec![320, 640, 1280, 1280],
            num_attention_heads: vec![0, 0, 20, 20],
            down_num_layers_per_block: vec![2, 6, 28, 6],
            up_num_layers_per_block: vec![6, 28, 6, 2],
            down_blocks_repeat_mappers: Some(vec![1, 1, 1, 1]),
            up_blocks_repeat_mappers: Some(vec![3, 3, 2, 2]),
            block_types_per_layer: strings(&[RT, RT, RTA, RTA]),
            clip_text_in_channels: None,
            clip_text_pooled_in_channels: 1280,
            clip_image_in_channels: None,
            clip_seq: 4,
            effnet_in_channels: Some(16),
            pixel_mapper_in_channels: Some(3),
            kernel_size: 3,
            self_attn: PerLevelBool::One(true),
            timestep_conditioning_type: vec!["sca".into()],
            switch_level: None,
        }
    }

    /// Stage B lite, 700M (HF `decoder_lite/config.json`).
    pub fn stage_b_lite() -> UNetConfig {
        UNetConfig {
            block_out_channels: vec![320, 576, 1152, 1152],
            num_attention_heads: vec![0, 9, 18, 18],
            down_num_layers_per_block: vec![2, 4, 14, 4],
            up_num_layers_per_block: vec![4, 14, 4, 2],
            up_blocks_repeat_mappers: Some(vec![2, 2, 2, 2]),
            ..Self::stage_b()
        }
    }
}

impl ClipTextConfig {
    /// The OpenCLIP ViT-bigG/14 text tower (spec §2.1; HF `text_encoder/config.json`).
    pub fn bigg() -> ClipTextConfig {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            max_position_embeddings: 77,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: 1280,
            eos_token_id: 49407,
        }
    }
}

impl Default for VqganConfig {
    /// Stage A as shipped (spec §2.4).
    fn default() -> Self {
        VqganConfig {
            in_channels: 3,
            out_channels: 3,
            up_down_scale_factor: 2,
            levels: 2,
            bottleneck_blocks: 12,
            embed_dim: 384,
            latent_channels: 4,
            scale_factor: 0.3764,
        }
    }
}
