//! # cascade
//!
//! A Rust + CUDA inference engine for Stable Cascade (Würstchen v3): the CLIP ViT-bigG text
//! encoder, Stage C (the prior), Stage B (the decoder) and Stage A (the VQGAN decoder).
//!
//! Layers, each using only the ones above it:
//! - [`runtime`]: devices, dtypes, tensors, the arena;
//! - `cuda` (feature `cuda`): the CUDA context, the kernel table, cuBLASLt, CUDA graphs;
//! - [`ops`]: every operation, as a CPU reference and a CUDA launcher;
//! - [`weights`]: memory-mapped safetensors and the prefix builder.
//!
//! ```
//! use cascade::{ops, DType, Device, Tensor};
//! # fn main() -> cascade::Result<()> {
//! let x = Tensor::from_f32(&[1.0, 2.0, 3.0, 4.0], &[2, 2], DType::F32, &Device::Cpu)?;
//! let w = Tensor::from_f32(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2], DType::F32, &Device::Cpu)?;
//! let y = ops::linear(&x, &w, None)?;
//! assert_eq!(y.to_vec_f32()?, vec![1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod engine;
pub mod error;
pub mod models;
pub mod ops;
pub mod pipeline;
pub mod png_out;
pub mod runtime;
pub mod sampling;
pub mod testing;
pub mod tokenizer;
pub mod weights;

#[cfg(feature = "cuda")]
pub mod cuda;

pub use error::{Error, Result};
pub use runtime::{arena::Arena, device::Device, dtype::DType, tensor::Tensor};
