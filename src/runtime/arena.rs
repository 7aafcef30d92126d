//! A bump arena: one device allocation made at load time, from which every buffer of a
//! denoising step is carved, so the step itself allocates nothing (and its kernels see the
//! same addresses every time, which is what lets one CUDA graph replay it).

use crate::{DType, Device, Error, Result, Tensor};

/// Alignment of every buffer carved from an arena: enough for 128-bit vector loads and
/// cuBLASLt's preferred 256-byte alignment.
pub const ARENA_ALIGN: usize = 256;

/// A fixed-capacity bump allocator on one device.
///
/// Tensors handed out share the arena's allocation. [`Arena::reset`] makes the whole capacity
/// available again; tensors from before the reset then alias new ones, so callers reset only
/// between steps, when the previous step's buffers are dead. On the CPU the arena still
/// enforces its capacity (so sizing bugs show up in CPU tests) but each tensor is its own
/// host allocation.
pub struct Arena {
    device: Device,
    capacity: usize,
    used: usize,
    high_water: usize,
    #[cfg(feature = "cuda")]
    buf: Option<std::sync::Arc<crate::cuda::CudaBuffer>>,
}

impl Arena {
    /// Reserves `capacity` bytes on `device`.
    pub fn new(device: &Device, capacity: usize) -> Result<Arena> {
        #[cfg(feature = "cuda")]
        let buf = match device {
            Device::Cuda(d) => Some(std::sync::Arc::new(d.alloc(capacity)?)),
            Device::Cpu => None,
        };
        Ok(Arena {
            device: device.clone(),
            capacity,
            used: 0,
            high_water: 0,
            #[cfg(feature = "cuda")]
            buf,
        })
    }

    /// A tensor of `shape` and `dtype` carved from the arena (contents unspecified).
    pub fn tensor(&mut self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = shape.iter().product::<usize>() * dtype.size();
        let start = self.used.div_ceil(ARENA_ALIGN) * ARENA_ALIGN;
        if start + bytes > self.capacity {
            return Err(Error::OutOfMemory(format!(
                "arena exhausted: {shape:?} {dtype} needs {bytes} bytes at offset {start} of {} (size the arena larger)",
                self.capacity
            )));
        }
        self.used = start + bytes;
        self.high_water = self.high_water.max(self.used);
        match &self.device {
            Device::Cpu => Tensor::empty(shape, dtype, &Device::Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Tensor::from_cuda_buffer(self.buf.clone().expect("GPU arena has a buffer"), start, shape, dtype, d),
        }
    }

    /// Forgets every allocation (see the type's note on aliasing).
    pub fn reset(&mut self) {
        self.used = 0;
    }

    /// Bytes in use since the last reset.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Most bytes ever in use.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Total bytes reserved.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
