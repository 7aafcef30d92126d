//! The minimal tensor runtime: devices, dtypes, tensors and the arena.

pub mod arena;
pub mod device;
pub mod dtype;
pub mod tensor;
