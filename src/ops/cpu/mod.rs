//! CPU references: the spec in code. Naive loops over f32 data with f64 accumulation,
//! nothing clever; every CUDA kernel is tested against these.

mod linear;

pub use linear::linear;
