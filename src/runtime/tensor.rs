//! Tensors: a dtype, a shape and contiguous row-major storage on one device.
//!
//! Activations are token-major (NHWC / tokens × channels) throughout the engine, so most
//! tensors here are `[batch, tokens, channels]` or `[rows, cols]`.

use std::borrow::Cow;
#[cfg(feature = "cuda")]
use std::sync::Arc;

use half::{bf16, f16};

use super::{device::Device, dtype::DType};
use crate::{Error, Result};

/// Host storage of a CPU tensor.
#[derive(Clone, Debug)]
pub enum CpuData {
    /// f32 elements.
    F32(Vec<f32>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// f16 elements.
    F16(Vec<f16>),
}

impl CpuData {
    fn from_f32(v: &[f32], dtype: DType) -> Self {
        match dtype {
            DType::F32 => CpuData::F32(v.to_vec()),
            DType::BF16 => CpuData::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => CpuData::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
        }
    }
    fn to_f32(&self) -> Cow<'_, [f32]> {
        match self {
            CpuData::F32(v) => Cow::Borrowed(v),
            CpuData::BF16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            CpuData::F16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
        }
    }
    #[cfg(feature = "cuda")]
    fn le_bytes(&self) -> Vec<u8> {
        match self {
            CpuData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            CpuData::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            CpuData::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Decodes little-endian bytes of `dtype` into f32 (no alignment needed: memory-mapped
/// safetensors data may sit at any offset).
pub fn decode_le(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        DType::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    }
}

pub(crate) enum Storage {
    Cpu(CpuData),
    #[cfg(feature = "cuda")]
    Cuda {
        buf: Arc<crate::cuda::CudaBuffer>,
        offset: usize,
        dev: Arc<crate::cuda::CudaDevice>,
    },
}

/// An n-dimensional array with contiguous row-major storage.
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {}, {})", self.shape, self.dtype, self.device().describe())
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A tensor of `dtype` holding `data` (converted from f32, rounding to nearest even).
    pub fn from_f32(data: &[f32], shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(Error::Shape(format!("{} values do not fill shape {shape:?} ({} elements)", data.len(), numel(shape))));
        }
        Tensor::from_cpu(CpuData::from_f32(data, dtype), shape, device)
    }

    /// A tensor from host data of any engine dtype.
    pub fn from_cpu(data: CpuData, shape: &[usize], device: &Device) -> Result<Tensor> {
        let (dtype, len) = match &data {
            CpuData::F32(v) => (DType::F32, v.len()),
            CpuData::BF16(v) => (DType::BF16, v.len()),
            CpuData::F16(v) => (DType::F16, v.len()),
        };
        if len != numel(shape) {
            return Err(Error::Shape(format!("{len} values do not fill shape {shape:?}")));
        }
        let cpu = Tensor { shape: shape.to_vec(), dtype, storage: Storage::Cpu(data) };
        // On the CPU the data becomes the tensor's: no copy.
        if device.is_cpu() {
            return Ok(cpu);
        }
        cpu.to_device(device)
    }

    /// A tensor from little-endian bytes of `src` dtype, stored as `dtype` on `device`. On a
    /// GPU the bytes go straight to device memory and are converted there.
    pub fn from_le_bytes(bytes: &[u8], src: DType, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        if bytes.len() != numel(shape) * src.size() {
            return Err(Error::Shape(format!("{} bytes do not hold shape {shape:?} of {src}", bytes.len())));
        }
        match device {
            Device::Cpu => {
                let data = match (src, dtype) {
                    (DType::BF16, DType::BF16) => CpuData::BF16(bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]])).collect()),
                    (DType::F16, DType::F16) => CpuData::F16(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect()),
                    _ => CpuData::from_f32(&decode_le(bytes, src), dtype),
                };
                Ok(Tensor { shape: shape.to_vec(), dtype, storage: Storage::Cpu(data) })
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => {
                let raw = Tensor::empty(shape, src, device)?;
                dev.htod(bytes, raw.cuda_ptr()?)?;
                if src == dtype {
                    Ok(raw)
                } else {
                    raw.to_dtype(dtype)
                }
            }
        }
    }

    /// A zero-filled tensor.
    pub fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let t = Tensor::empty(shape, dtype, device)?;
        #[cfg(feature = "cuda")]
        if let Storage::Cuda { .. } = &t.storage {
            let mut t = t;
            t.fill(0.0)?;
            return Ok(t);
        }
        Ok(t)
    }

    /// A tensor whose contents are unspecified (zeros on the CPU, uninitialised on a GPU);
    /// for outputs that a kernel overwrites.
    pub fn empty(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let n = numel(shape);
        let storage = match device {
            Device::Cpu => Storage::Cpu(match dtype {
                DType::F32 => CpuData::F32(vec![0.0; n]),
                DType::BF16 => CpuData::BF16(vec![bf16::ZERO; n]),
                DType::F16 => CpuData::F16(vec![f16::ZERO; n]),
            }),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => Storage::Cuda { buf: Arc::new(dev.alloc(n * dtype.size())?), offset: 0, dev: dev.clone() },
        };
        Ok(Tensor { shape: shape.to_vec(), dtype, storage })
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn from_cuda_buffer(
        buf: Arc<crate::cuda::CudaBuffer>,
        offset: usize,
        shape: &[usize],
        dtype: DType,
        dev: &Arc<crate::cuda::CudaDevice>,
    ) -> Result<Tensor> {
        let need = offset + numel(shape) * dtype.size();
        if need > buf.len() {
            return Err(Error::Shape(format!("a {shape:?} {dtype} view at byte {offset} does not fit a {}-byte buffer", buf.len())));
        }
        Ok(Tensor { shape: shape.to_vec(), dtype, storage: Storage::Cuda { buf, offset, dev: dev.clone() } })
    }

    /// `shape` elements starting `offset` elements in: on a GPU a second tensor over the same
    /// memory (writes through either are visible in both; arenas and guard-band tests use
    /// this), on the CPU a copy.
    pub fn alias(&self, offset: usize, shape: &[usize]) -> Result<Tensor> {
        let n = numel(shape);
        if offset + n > self.numel() {
            return Err(Error::Shape(format!("a {shape:?} view at element {offset} exceeds {:?}", self.shape)));
        }
        match &self.storage {
            Storage::Cpu(d) => {
                let data = match d {
                    CpuData::F32(v) => CpuData::F32(v[offset..offset + n].to_vec()),
                    CpuData::BF16(v) => CpuData::BF16(v[offset..offset + n].to_vec()),
                    CpuData::F16(v) => CpuData::F16(v[offset..offset + n].to_vec()),
                };
                Ok(Tensor { shape: shape.to_vec(), dtype: self.dtype, storage: Storage::Cpu(data) })
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda { buf, offset: base, dev } => {
                Tensor::from_cuda_buffer(buf.clone(), base + offset * self.dtype.size(), shape, self.dtype, dev)
            }
        }
    }

    /// The whole tensor with another shape of the same element count (see [`Tensor::alias`]).
    pub fn view(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::Shape(format!("cannot view {:?} as {shape:?}", self.shape)));
        }
        self.alias(0, shape)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    /// Size of the data in bytes.
    pub fn size_bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    /// Rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Size of dimension `i`; negative counts from the end.
    pub fn dim(&self, i: isize) -> usize {
        let r = self.shape.len() as isize;
        self.shape[(if i < 0 { r + i } else { i }) as usize]
    }

    /// The device the data lives on.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda { dev, .. } => Device::Cuda(dev.clone()),
        }
    }

    /// The same data with another shape of the same element count (no copy).
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::Shape(format!("cannot reshape {:?} to {shape:?}", self.shape)));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// The data as f32 on the host (copied from the GPU, converted from bf16/f16).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(d) => Ok(d.to_f32().into_owned()),
            #[cfg(feature = "cuda")]
            Storage::Cuda { dev, .. } => {
                let mut bytes = vec![0u8; self.size_bytes()];
                dev.dtoh(self.cuda_ptr()?, &mut bytes)?;
                Ok(decode_le(&bytes, self.dtype))
            }
        }
    }

    /// A copy on `device` (same dtype).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        match (&self.storage, device) {
            (Storage::Cpu(d), Device::Cpu) => Ok(Tensor { shape: self.shape.clone(), dtype: self.dtype, storage: Storage::Cpu(d.clone()) }),
            #[cfg(feature = "cuda")]
            (Storage::Cpu(d), Device::Cuda(dev)) => {
                let t = Tensor::empty(&self.shape, self.dtype, device)?;
                dev.htod(&d.le_bytes(), t.cuda_ptr()?)?;
                Ok(t)
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda { dev, .. }, _) => {
                if let Device::Cuda(target) = device {
                    if Arc::ptr_eq(dev, target) {
                        let t = Tensor::empty(&self.shape, self.dtype, device)?;
                        dev.dtod(self.cuda_ptr()?, t.cuda_ptr()?, self.size_bytes())?;
                        return Ok(t);
                    }
                }
                let mut bytes = vec![0u8; self.size_bytes()];
                dev.dtoh(self.cuda_ptr()?, &mut bytes)?;
                Tensor::from_le_bytes(&bytes, self.dtype, &self.shape, self.dtype, device)
            }
        }
    }

    /// A copy converted to `dtype` on the same device (round to nearest even).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        match &self.storage {
            Storage::Cpu(d) => {
                Ok(Tensor { shape: self.shape.clone(), dtype, storage: Storage::Cpu(CpuData::from_f32(&d.to_f32(), dtype)) })
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda { .. } => {
                let mut out = Tensor::empty(&self.shape, dtype, &self.device())?;
                crate::ops::cast_into(self, &mut out)?;
                Ok(out)
            }
        }
    }

    /// Sets every element to `value`.
    pub fn fill(&mut self, value: f32) -> Result<()> {
        let n = self.numel();
        match &mut self.storage {
            Storage::Cpu(d) => {
                *d = CpuData::from_f32(&vec![value; n], self.dtype);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda { dev, .. } => {
                let dev = dev.clone();
                let p = crate::cuda::params::FillParams { dst: self.cuda_ptr()? as *mut _, n: n as i64, value, dtype: self.dtype.code() };
                dev.launch_1d(&dev.kernels().fill, n, &p)
            }
        }
    }

    /// The host data (CPU tensors only).
    pub fn cpu_data(&self) -> Result<&CpuData> {
        match &self.storage {
            Storage::Cpu(d) => Ok(d),
            #[cfg(feature = "cuda")]
            Storage::Cuda { .. } => Err(Error::Shape("expected a CPU tensor, got a GPU one".into())),
        }
    }

    /// The host data as f32, borrowed when it already is f32 (CPU tensors only).
    pub fn cpu_f32(&self) -> Result<Cow<'_, [f32]>> {
        Ok(self.cpu_data()?.to_f32())
    }

    /// Replaces the host data with `v` converted to this tensor's dtype (CPU tensors only).
    pub fn set_cpu_f32(&mut self, v: &[f32]) -> Result<()> {
        if v.len() != self.numel() {
            return Err(Error::Shape(format!("{} values for a tensor of {:?}", v.len(), self.shape)));
        }
        match &mut self.storage {
            Storage::Cpu(d) => {
                *d = CpuData::from_f32(v, self.dtype);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda { .. } => Err(Error::Shape("expected a CPU tensor, got a GPU one".into())),
        }
    }

    /// Overwrites the contents with `v` (converted to this tensor's dtype) from the host,
    /// in place: the buffer, and so every captured graph that reads it, stays the same.
    pub fn write_f32(&mut self, v: &[f32]) -> Result<()> {
        if v.len() != self.numel() {
            return Err(Error::Shape(format!("{} values for a tensor of {:?}", v.len(), self.shape)));
        }
        match &self.storage {
            Storage::Cpu(_) => self.set_cpu_f32(v),
            #[cfg(feature = "cuda")]
            Storage::Cuda { dev, .. } => dev.htod(&CpuData::from_f32(v, self.dtype).le_bytes(), self.cuda_ptr()?),
        }
    }

    /// The device address of the first element (GPU tensors only).
    #[cfg(feature = "cuda")]
    pub fn cuda_ptr(&self) -> Result<u64> {
        match &self.storage {
            Storage::Cuda { buf, offset, .. } => Ok(buf.ptr() + *offset as u64),
            Storage::Cpu(_) => Err(Error::Shape("expected a GPU tensor, got a CPU one".into())),
        }
    }
}
