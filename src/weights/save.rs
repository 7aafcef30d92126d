//! Writing tensors to a safetensors file (reference outputs, noise, test fixtures).

use std::borrow::Cow;
use std::path::Path;

use crate::{DType, Error, Result, Tensor};

struct HostView {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for HostView {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `tensors` (copied to the host, each in its own dtype) to `path`.
pub fn save(path: impl AsRef<Path>, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v = t.to_vec_f32()?;
        let (dtype, bytes) = match t.dtype() {
            DType::F32 => (safetensors::Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            DType::BF16 => (safetensors::Dtype::BF16, v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()),
            DType::F16 => (safetensors::Dtype::F16, v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()),
        };
        views.push((name.to_string(), HostView { dtype, shape: t.shape().to_vec(), bytes }));
    }
    let path = path.as_ref();
    safetensors::serialize_to_file(views, None, path).map_err(|e| Error::file(path, format!("cannot write safetensors: {e}")))
}
