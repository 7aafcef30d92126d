//! cuBLASLt GEMMs for row-major, token-major activations.
//!
//! The engine's linear layer is `y[M,N] = x[M,K] · w[N,K]ᵀ + bias[N]` in row-major storage.
//! cuBLASLt is column-major, and a row-major matrix is its own transpose in column-major, so
//! `yᵀ[N,M] = w[N,K] · xᵀ[K,M]`: A = w read transposed (column-major K×N, ld K), B = x (column-major
//! K×M, ld K), D = y (column-major N×M, ld N). This swap is written here once.
//! The bias epilogue adds a vector over D's rows, which are y's columns: exactly bias[N].

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::{DType, Error, Result};

const WORKSPACE_BYTES: usize = 32 << 20;

fn blas_err(what: &str, e: lt::CublasError) -> Error {
    Error::Cuda(format!("cuBLASLt {what}: {e}"))
}

/// Shape and type of one GEMM; plans are cached per key (heuristic choice runs once per shape).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key {
    m: u64,
    n: u64,
    k: u64,
    dtype: DType,
    bias: bool,
    tf32: bool,
    /// The smallest alignment (bytes, a power of two ≤ 256) of the operand addresses: views into
    /// larger buffers can be less aligned than cuBLASLt's default assumption of 256.
    align: u32,
}

/// The largest power of two ≤ 256 dividing every address.
fn alignment(ptrs: &[u64]) -> u32 {
    ptrs.iter().map(|&p| if p == 0 { 8 } else { p.trailing_zeros().min(8) }).min().map_or(256, |z| 1 << z)
}

/// Descriptors and the chosen algorithm for one [`Key`].
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: the descriptors are plain host objects, used only under the Blas mutex.
unsafe impl Send for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created in Plan::new and destroyed exactly once here.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.d);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

struct Inner {
    handle: sys::cublasLtHandle_t,
    plans: HashMap<Key, Plan>,
}

// SAFETY: the handle is only used under the mutex.
unsafe impl Send for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created in Blas::new, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// A cuBLASLt handle, its workspace and the per-shape plan cache.
pub(crate) struct Blas {
    inner: Mutex<Inner>,
    workspace: CudaSlice<u8>,
    workspace_ptr: u64,
    stream: Arc<CudaStream>,
}

fn data_type(d: DType) -> sys::cudaDataType {
    match d {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
    }
}

impl Blas {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoCuda("cuBLASLt (libcublasLt.so) is not on the loader path; install the CUDA runtime libraries".into()));
        }
        let handle = lt::create_handle().map_err(|e| blas_err("create", e))?;
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES).map_err(|e| super::driver_err("allocating the cuBLASLt workspace", e))?;
        let workspace_ptr = workspace.device_ptr(stream).0;
        Ok(Self { inner: Mutex::new(Inner { handle, plans: HashMap::new() }), workspace, workspace_ptr, stream: stream.clone() })
    }

    fn plan(handle: sys::cublasLtHandle_t, key: Key) -> Result<Plan> {
        let compute = match (key.dtype, key.tf32) {
            (DType::F32, true) => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            _ => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        };
        let desc = lt::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F).map_err(|e| blas_err("matmul desc", e))?;
        let dt = data_type(key.dtype);
        let mk = |rows, cols, ld| lt::create_matrix_layout(dt, rows, cols, ld).map_err(|e| blas_err("matrix layout", e));
        let a = mk(key.k, key.n, key.k as i64)?;
        let b = mk(key.k, key.m, key.k as i64)?;
        let d = mk(key.n, key.m, key.n as i64)?;
        let mut plan = Plan { desc, a, b, d, algo: unsafe { std::mem::zeroed() } };
        let set = |attr, v: *const c_void, size| {
            unsafe { lt::set_matmul_desc_attribute(desc, attr, v, size) }.map_err(|e| blas_err("desc attribute", e))
        };
        // cublasOperation_t is an int32 enum; 1 = CUBLAS_OP_T.
        let trans: i32 = 1;
        set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &trans as *const _ as _, std::mem::size_of_val(&trans))?;
        let epilogue =
            if key.bias { sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS } else { sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT };
        set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &epilogue as *const _ as _,
            std::mem::size_of_val(&epilogue),
        )?;
        if key.bias {
            let bias_type = dt;
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                &bias_type as *const _ as _,
                std::mem::size_of_val(&bias_type),
            )?;
        }
        let pref = lt::create_matmul_pref().map_err(|e| blas_err("preference", e))?;
        let ws = WORKSPACE_BYTES;
        // SAFETY: all descriptors are live; the preference is destroyed right after.
        let heuristic = unsafe {
            use sys::cublasLtMatmulPreferenceAttributes_t as P;
            let set = |attr, v: *const c_void, size| lt::set_matmul_pref_attribute(pref, attr, v, size);
            let r = set(P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws as *const _ as _, std::mem::size_of_val(&ws))
                .and_then(|_| {
                    [
                        P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                        P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                        P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                        P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                    ]
                    .into_iter()
                    .try_for_each(|attr| set(attr, &key.align as *const u32 as _, 4))
                })
                .and_then(|_| lt::get_matmul_algo_heuristic(handle, desc, a, b, d, d, pref));
            let _ = lt::destroy_matmul_pref(pref);
            r
        }
        .map_err(|e| blas_err(&format!("no algorithm for {}x{}x{} {}", key.m, key.k, key.n, key.dtype), e))?;
        plan.algo = heuristic.algo;
        Ok(plan)
    }

    /// `y[m,n] = x[m,k] · w[n,k]ᵀ (+ bias[n])`, all row-major of `dtype`, queued on the stream;
    /// with `accumulate`, `y += …` instead (β = 1 with C = D = y: one rounding, no extra pass).
    ///
    /// # Safety
    /// Every address must point to a live device buffer of at least the size the shape implies.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn linear(
        &self,
        x: u64,
        w: u64,
        bias: Option<u64>,
        y: u64,
        m: usize,
        k: usize,
        n: usize,
        dtype: DType,
        tf32: bool,
        accumulate: bool,
    ) -> Result<()> {
        // A thread that has made no other CUDA call yet must have the context current.
        self.stream.context().bind_to_thread().map_err(|e| super::driver_err("binding the context", e))?;
        let align = alignment(&[x, w, y, bias.unwrap_or(0)]);
        let key = Key { m: m as u64, n: n as u64, k: k as u64, dtype, bias: bias.is_some(), tf32, align };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let handle = inner.handle;
        let plan = match inner.plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Self::plan(handle, key)?),
        };
        if let Some(b) = bias {
            lt::set_matmul_desc_attribute(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &b as *const u64 as _,
                8,
            )
            .map_err(|e| blas_err("bias pointer", e))?;
        }
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        let _ = &self.workspace;
        lt::matmul(
            handle,
            plan.desc,
            &alpha as *const f32 as _,
            &beta as *const f32 as _,
            w as *const c_void,
            plan.a,
            x as *const c_void,
            plan.b,
            y as *const c_void,
            plan.d,
            y as *mut c_void,
            plan.d,
            &plan.algo,
            self.workspace_ptr as *mut c_void,
            WORKSPACE_BYTES,
            self.stream.cu_stream() as sys::cudaStream_t,
        )
        .map_err(|e| blas_err(&format!("matmul {m}x{k}x{n} {dtype}"), e))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn alignment_of_operand_addresses() {
        assert_eq!(super::alignment(&[0x1000, 0x2000]), 256);
        assert_eq!(super::alignment(&[0x1000, 0x1002]), 2);
        assert_eq!(super::alignment(&[0x1080, 0]), 128);
        assert_eq!(super::alignment(&[]), 256);
    }
}
