//! Weights: safetensors files memory-mapped with memmap2, parsed with the `safetensors`
//! crate, and a [`VarBuilder`] whose prefixes mirror the PyTorch module tree.

mod builder;
mod save;
mod store;

pub use builder::{LoadReport, VarBuilder};
pub use save::save;
pub use store::{TensorEntry, WeightStore};
