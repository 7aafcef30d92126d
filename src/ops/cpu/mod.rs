//! CPU references: the spec in code. Naive loops over f32 data with f64 accumulation,
//! nothing clever; every CUDA kernel is tested against these, and the CPU backend runs them.
//! Layouts are token-major: images are `[B, H, W, C]`, sequences `[B, L, C]`.

mod activation;
mod attention;
mod conv;
mod elementwise;
mod embed;
mod linear;
mod norm;
mod resample;

pub use activation::{gelu, silu};
pub use attention::attention;
pub use conv::{conv2d, conv_transpose2d, depthwise3x3, im2col3x3, pixel_shuffle, pixel_shuffle_phases, pixel_unshuffle};
pub use elementwise::{add, affine, cfg_combine, ddpm_step, modulate, quantize_u8, random_normal, to_rgb8};
pub use embed::{timestep_embedding, timestep_frequencies, token_embedding};
pub use linear::linear;
pub use norm::{grn, grn_scale, layer_norm, scale_columns};
pub use resample::{columns, concat_channels, resize_bilinear};
