//! Element types of tensors.

use crate::{Error, Result};

/// The element types the engine stores: f32 on the CPU reference path, bf16 (default) or f16
/// on the GPU. Arithmetic always accumulates in f32 (or f64 in CPU reductions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// bfloat16: f32's exponent range with an 8-bit mantissa.
    BF16,
    /// IEEE half precision.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// Lower-case name, as accepted by [`DType::parse`].
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// The code the CUDA kernels use for this type (see `kernels/params.h`).
    pub fn code(self) -> i32 {
        match self {
            DType::F32 => 0,
            DType::BF16 => 1,
            DType::F16 => 2,
        }
    }

    /// Parses "f32"/"float32", "bf16"/"bfloat16", "f16"/"fp16"/"float16".
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "f16" | "fp16" | "float16" | "half" => Ok(DType::F16),
            _ => Err(Error::Msg(format!("unknown dtype '{s}': use f32, bf16 or f16"))),
        }
    }

    /// The engine dtype of a safetensors dtype, if the engine can load it.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<Self> {
        match d {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            safetensors::Dtype::F16 => Some(DType::F16),
            _ => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
