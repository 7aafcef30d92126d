//! cuBLASLt GEMMs for row-major, token-major activations.
//!
//! The engine's linear layer is `y[M,N] = x[M,K] · w[N,K]ᵀ + bias[N]` in row-major storage.
//! cuBLASLt is column-major, and a row-major matrix is its own transpose in column-major, so
//! `yᵀ[N,M] = w[N,K] · xᵀ[K,M]`: A = w read transposed (column-major K×N, ld K), B = x (column-major
//! K×M, ld K), D = y (column-major N×M, ld N). This swap is written here once.
//! The bias epilogue adds a vector over D's rows, which are y's columns: exactly `bias[N]`.
//!
//! Algorithm choice: cuBLASLt's heuristic ranks a handful of candidate kernels per shape, and its
//! first choice is not always the fastest on the card at hand. The first time a shape runs outside
//! a graph capture, every candidate is timed on the real operands (into a scratch output) and the
//! fastest is kept for the rest of the process; the heuristic's first choice stays unless another
//! is clearly faster, so near-ties do not flip between runs. A shape first met inside a capture
//! uses the first choice there and is timed at its next direct use: [`super::CudaDevice::capture_tuned`]
//! arranges that before a graph is kept. With a tuning file
//! ([`super::CudaDevice::set_tuning_file`], `CASCADE_TUNING_FILE`) each choice is kept, and a
//! later process on the same card and libraries takes it without timing, so that its graphs run
//! the same algorithms. `CASCADE_GEMM_TUNE=0` keeps the heuristic's first choice everywhere
//! (bitwise repeatable across processes); `CASCADE_GEMM_TUNE=log` prints each choice.
//!
//! Split-K reductions: only algorithms that add their partial sums in f32 (or do not split K) are
//! asked for. cuBLASLt's other schemes add the partial products in the output type: in bf16, an
//! extra rounding of every output per split, and for the residual GEMMs (β = 1, C = D = the
//! residual stream) an extra rounding of the stream itself in every block.
//! `CASCADE_GEMM_REDUCTION=any` lifts the restriction (for measuring what it costs).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::tuning_file::{algo_hex, parse_algo_hex, TuningFile};
use crate::{DType, Error, Result};

const WORKSPACE_BYTES: usize = 32 << 20;
/// Candidates asked of the heuristic per shape, unless `CASCADE_GEMM_CANDIDATES` (1 to 64, read
/// once) says otherwise: more candidates cost more tuning time at the first call of each shape,
/// and may find a faster algorithm for the shapes that fill the card badly (CLIP's 154 rows).
const CANDIDATES: usize = 8;

fn candidates() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| match std::env::var("CASCADE_GEMM_CANDIDATES").ok().map(|v| v.trim().parse::<usize>()) {
        Some(Ok(n)) if (1..=64).contains(&n) => n,
        Some(_) => {
            eprintln!("warning: CASCADE_GEMM_CANDIDATES must be from 1 to 64; using {CANDIDATES}");
            CANDIDATES
        }
        None => CANDIDATES,
    })
}
/// Timed launches per candidate (after one untimed launch).
const TIMED_LAUNCHES: usize = 5;

fn blas_err(what: &str, e: lt::CublasError) -> Error {
    Error::Cuda(format!("cuBLASLt {what}: {e}"))
}

/// Shape and type of one GEMM; plans are cached per key (heuristic choice runs once per shape).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key {
    m: u64,
    n: u64,
    k: u64,
    /// The type of x and w (A and B).
    dtype: DType,
    /// The type of y and the bias (C and D): `dtype`, or f32 for bf16 products written in f32.
    out: DType,
    bias: bool,
    /// GELU in the epilogue (cuBLASLt's is the tanh form), after the bias.
    gelu: bool,
    tf32: bool,
    /// The smallest alignment (bytes, a power of two ≤ 256) of the operand addresses: views into
    /// larger buffers can be less aligned than cuBLASLt's default assumption of 256.
    align: u32,
    /// Row strides (elements) of x (≥ k) and y (≥ n): column ranges of wider tensors.
    ldx: u64,
    ldy: u64,
}

impl Key {
    /// The key's line in a tuning file.
    fn file_key(&self) -> String {
        format!(
            "gemm {}x{}x{} {}>{} bias={} gelu={} tf32={} align={} ldx={} ldy={}",
            self.m,
            self.k,
            self.n,
            self.dtype,
            self.out,
            u8::from(self.bias),
            u8::from(self.gelu),
            u8::from(self.tf32),
            self.align,
            self.ldx,
            self.ldy
        )
    }
}

/// The largest power of two ≤ 256 dividing every address.
fn alignment(ptrs: &[u64]) -> u32 {
    ptrs.iter().map(|&p| if p == 0 { 8 } else { p.trailing_zeros().min(8) }).min().map_or(256, |z| 1 << z)
}

/// Descriptors, the heuristic's candidates and the chosen one for one [`Key`].
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    /// In the heuristic's order, best first; never empty.
    candidates: Vec<sys::cublasLtMatmulAlgo_t>,
    chosen: usize,
    /// False until the candidates have been timed (or there is nothing to time).
    tuned: bool,
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

/// The split-K reduction schemes the heuristic may offer (`CASCADE_GEMM_REDUCTION`: `f32`
/// default, or `any`; see the module comment).
fn reduction_mask() -> u32 {
    use sys::cublasLtReductionScheme_t as R;
    static MASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| match std::env::var("CASCADE_GEMM_REDUCTION").as_deref().map(str::trim) {
        Ok("any") => R::CUBLASLT_REDUCTION_SCHEME_MASK as u32,
        _ => R::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32,
    })
}

/// An algorithm's split-K count and reduction scheme, as `CASCADE_GEMM_TUNE=log` prints them.
fn split_k_of(algo: &sys::cublasLtMatmulAlgo_t) -> String {
    use sys::cublasLtMatmulAlgoConfigAttributes_t as A;
    let get = |attr| {
        let (mut v, mut written) = (0u32, 0usize);
        // SAFETY: reads one u32 attribute of an initialised algorithm into `v`.
        let st = unsafe { sys::cublasLtMatmulAlgoConfigGetAttribute(algo, attr, &mut v as *mut u32 as *mut c_void, 4, &mut written) };
        (st == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && written == 4).then_some(v)
    };
    match (get(A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM), get(A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME)) {
        (Some(k), Some(r)) if k > 1 => format!("k/{k} r{r}"),
        (Some(_), _) => "k/1".into(),
        _ => "?".into(),
    }
}

/// Whether and how loudly to time the candidates (`CASCADE_GEMM_TUNE`: `0`, `1` default, `log`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tuning {
    Off,
    On,
    Log,
}

impl Tuning {
    fn from_env() -> Tuning {
        match std::env::var("CASCADE_GEMM_TUNE").as_deref().map(str::trim) {
            Ok("0") | Ok("off") => Tuning::Off,
            Ok("log") => Tuning::Log,
            _ => Tuning::On,
        }
    }
}

/// A cuBLASLt handle, its workspace and the per-shape plan cache.
pub(crate) struct Blas {
    inner: Mutex<Inner>,
    workspace: CudaSlice<u8>,
    workspace_ptr: u64,
    stream: Arc<CudaStream>,
    tuning: Tuning,
    /// GEMMs recorded into a graph capture with a not-yet-timed plan (only ever grows).
    untuned_in_capture: AtomicUsize,
    /// Where timed choices are kept between processes (shared with the device's kernel choices).
    file: Arc<TuningFile>,
}

fn data_type(d: DType) -> sys::cudaDataType {
    match d {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
    }
}

impl Blas {
    pub(crate) fn new(stream: &Arc<CudaStream>, file: Arc<TuningFile>) -> Result<Self> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoCuda("cuBLASLt (libcublasLt.so) is not on the loader path; install the CUDA runtime libraries".into()));
        }
        let handle = lt::create_handle().map_err(|e| blas_err("create", e))?;
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES).map_err(|e| super::driver_err("allocating the cuBLASLt workspace", e))?;
        let workspace_ptr = workspace.device_ptr(stream).0;
        Ok(Self {
            inner: Mutex::new(Inner { handle, plans: HashMap::new() }),
            workspace,
            workspace_ptr,
            stream: stream.clone(),
            tuning: Tuning::from_env(),
            untuned_in_capture: AtomicUsize::new(0),
            file,
        })
    }

    /// How many GEMMs so far were recorded into a graph capture before their shape was tuned.
    pub(crate) fn untuned_in_capture(&self) -> usize {
        self.untuned_in_capture.load(Ordering::Relaxed)
    }

    fn plan(handle: sys::cublasLtHandle_t, key: Key) -> Result<Plan> {
        let compute = match (key.dtype, key.tf32) {
            (DType::F32, true) => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            _ => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        };
        let desc = lt::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F).map_err(|e| blas_err("matmul desc", e))?;
        let (dt, out) = (data_type(key.dtype), data_type(key.out));
        let mk = |t, rows, cols, ld| lt::create_matrix_layout(t, rows, cols, ld).map_err(|e| blas_err("matrix layout", e));
        let a = mk(dt, key.k, key.n, key.k as i64)?;
        let b = mk(dt, key.k, key.m, key.ldx as i64)?;
        let d = mk(out, key.n, key.m, key.ldy as i64)?;
        let mut plan = Plan { desc, a, b, d, candidates: Vec::new(), chosen: 0, tuned: false };
        let set = |attr, v: *const c_void, size| {
            unsafe { lt::set_matmul_desc_attribute(desc, attr, v, size) }.map_err(|e| blas_err("desc attribute", e))
        };
        // cublasOperation_t is an int32 enum; 1 = CUBLAS_OP_T.
        let trans: i32 = 1;
        set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &trans as *const _ as _, std::mem::size_of_val(&trans))?;
        let epilogue = {
            use sys::cublasLtEpilogue_t as E;
            match (key.bias, key.gelu) {
                (true, true) => E::CUBLASLT_EPILOGUE_GELU_BIAS,
                (false, true) => E::CUBLASLT_EPILOGUE_GELU,
                (true, false) => E::CUBLASLT_EPILOGUE_BIAS,
                (false, false) => E::CUBLASLT_EPILOGUE_DEFAULT,
            }
        };
        set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &epilogue as *const _ as _,
            std::mem::size_of_val(&epilogue),
        )?;
        if key.bias {
            let bias_type = out;
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                &bias_type as *const _ as _,
                std::mem::size_of_val(&bias_type),
            )?;
        }
        let pref = lt::create_matmul_pref().map_err(|e| blas_err("preference", e))?;
        let ws = WORKSPACE_BYTES;
        let wanted = candidates();
        let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> = Vec::with_capacity(wanted);
        let mut count = 0i32;
        // SAFETY: all descriptors are live; `results` has room for `wanted` entries, of which
        // the call initialises `count`; the preference is destroyed right after.
        let status = unsafe {
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
                .and_then(|_| {
                    let mask = reduction_mask();
                    set(P::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &mask as *const u32 as _, 4)
                })
                .and_then(|_| {
                    sys::cublasLtMatmulAlgoGetHeuristic(handle, desc, a, b, d, d, pref, wanted as i32, results.as_mut_ptr(), &mut count)
                        .result()
                });
            if r.is_ok() {
                results.set_len((count.max(0) as usize).min(wanted));
            }
            let _ = lt::destroy_matmul_pref(pref);
            r
        };
        let no_algo = |e| blas_err(&format!("no algorithm for {}x{}x{} {}", key.m, key.k, key.n, key.dtype), e);
        status.map_err(no_algo)?;
        plan.candidates = results.iter().filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).map(|r| r.algo).collect();
        if plan.candidates.is_empty() {
            return Err(no_algo(lt::CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED)));
        }
        Ok(plan)
    }

    /// Queues `d = x·wᵀ (+ bias) + beta·c` with one candidate algorithm of `plan`.
    ///
    /// # Safety
    /// As for [`Blas::linear`]; `c` and `d` span the plan's output shape.
    #[allow(clippy::too_many_arguments)]
    unsafe fn matmul(
        &self,
        handle: sys::cublasLtHandle_t,
        plan: &Plan,
        algo: &sys::cublasLtMatmulAlgo_t,
        x: u64,
        w: u64,
        c: u64,
        d: u64,
        beta: f32,
    ) -> std::result::Result<(), lt::CublasError> {
        let alpha = 1.0f32;
        lt::matmul(
            handle,
            plan.desc,
            &alpha as *const f32 as _,
            &beta as *const f32 as _,
            w as *const c_void,
            plan.a,
            x as *const c_void,
            plan.b,
            c as *const c_void,
            plan.d,
            d as *mut c_void,
            plan.d,
            algo,
            self.workspace_ptr as *mut c_void,
            WORKSPACE_BYTES,
            self.stream.cu_stream() as sys::cudaStream_t,
        )
    }

    /// Times every candidate of `plan` on the real operands, writing into a scratch output (so
    /// `y`, which may be accumulated into, is untouched), and keeps the fastest.
    ///
    /// # Safety
    /// As for [`Blas::linear`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn tune(&self, handle: sys::cublasLtHandle_t, plan: &mut Plan, key: Key, x: u64, w: u64, beta: f32) -> Result<()> {
        plan.tuned = true;
        let bytes = (key.m * key.ldy) as usize * key.out.size();
        // Without room for a scratch output the heuristic's choice stands.
        let Ok(scratch) = self.stream.alloc_zeros::<u8>(bytes) else { return Ok(()) };
        let out = scratch.device_ptr(&self.stream).0;
        let ctx = self.stream.context();
        let event = || ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT));
        let timing_err = |e| super::driver_err("timing GEMM candidates", e);
        let mut times = Vec::with_capacity(plan.candidates.len());
        for algo in &plan.candidates {
            // One untimed launch; a candidate that will not launch is skipped.
            if self.matmul(handle, plan, algo, x, w, out, out, beta).is_err() {
                times.push(None);
                continue;
            }
            let (start, end) = (event().map_err(timing_err)?, event().map_err(timing_err)?);
            start.record(&self.stream).map_err(timing_err)?;
            let launched = (0..TIMED_LAUNCHES).try_for_each(|_| self.matmul(handle, plan, algo, x, w, out, out, beta));
            end.record(&self.stream).map_err(timing_err)?;
            let ms = start.elapsed_ms(&end).map_err(timing_err)?;
            times.push(launched.ok().map(|_| ms / TIMED_LAUNCHES as f32));
        }
        drop(scratch);
        if let Some(i) = super::choice::keep(&times) {
            plan.chosen = i;
            self.file.set(key.file_key(), algo_hex(&plan.candidates[i].data));
        }
        if self.tuning == Tuning::Log {
            let us: Vec<String> = times
                .iter()
                .zip(&plan.candidates)
                .map(|(t, a)| format!("{} ({})", t.map_or("failed".into(), |t| format!("{:.1}", t * 1e3)), split_k_of(a)))
                .collect();
            eprintln!(
                "cascade: GEMM {}x{}x{} {}{}: candidates [{}] µs, kept #{}",
                key.m,
                key.k,
                key.n,
                key.dtype,
                if beta != 0.0 { " +=" } else { "" },
                us.join(", "),
                plan.chosen
            );
        }
        Ok(())
    }

    /// Takes the tuning file's algorithm for `key` when the heuristic offers it among the
    /// candidates (the plan then needs no timing).
    fn choose_from_file(&self, plan: &mut Plan, key: Key) {
        let Some(algo) = self.file.get(&key.file_key()).and_then(|v| parse_algo_hex(&v)) else { return };
        let Some(i) = plan.candidates.iter().position(|c| c.data == algo) else { return };
        plan.chosen = i;
        plan.tuned = true;
        if self.tuning == Tuning::Log {
            eprintln!(
                "cascade: GEMM {}x{}x{} {}: kept #{i} ({}) from the tuning file",
                key.m,
                key.k,
                key.n,
                key.dtype,
                split_k_of(&plan.candidates[i])
            );
        }
    }

    /// The GEMM shapes met so far and the candidate each runs (its index in the heuristic's
    /// order, 0 its first choice), as tuning-file keys, sorted.
    pub(crate) fn choices(&self) -> Vec<(String, usize)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = inner.plans.iter().map(|(k, p)| (k.file_key(), p.chosen)).collect();
        v.sort();
        v
    }

    /// `y[m,n] = x[m,k] · w[n,k]ᵀ (+ bias[n])`, all row-major, x and w of `dtype`, y and the bias
    /// of `out` (`dtype`, or f32 for bf16 products kept in f32), queued on the stream; with
    /// `accumulate`, `y += …` instead (β = 1 with C = D = y: one rounding, no extra pass); with
    /// `gelu`, `y = gelu_tanh(…)` (cuBLASLt's GELU epilogue, the tanh form; not with
    /// `accumulate`).
    /// Rows of x are `ldx` elements apart and rows of y `ldy` (≥ k and ≥ n: column ranges of
    /// wider tensors).
    ///
    /// # Safety
    /// Every address must point to a live device buffer of at least the size the shape and
    /// strides imply.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn linear(
        &self,
        x: u64,
        w: u64,
        bias: Option<u64>,
        y: u64,
        (m, k, n): (usize, usize, usize),
        (ldx, ldy): (usize, usize),
        (dtype, out): (DType, DType),
        tf32: bool,
        accumulate: bool,
        gelu: bool,
    ) -> Result<()> {
        if accumulate && gelu {
            return Err(Error::Shape("linear: a GELU epilogue cannot accumulate into its output".into()));
        }
        // A thread that has made no other CUDA call yet must have the context current.
        self.stream.context().bind_to_thread().map_err(|e| super::driver_err("binding the context", e))?;
        let align = alignment(&[x, w, y, bias.unwrap_or(0)]);
        let key = Key {
            m: m as u64,
            n: n as u64,
            k: k as u64,
            dtype,
            out,
            bias: bias.is_some(),
            gelu,
            tf32,
            align,
            ldx: ldx as u64,
            ldy: ldy as u64,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let handle = inner.handle;
        let plan = match inner.plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut plan = Self::plan(handle, key)?;
                plan.tuned = self.tuning == Tuning::Off || plan.candidates.len() == 1;
                if !plan.tuned {
                    self.choose_from_file(&mut plan, key);
                }
                e.insert(plan)
            }
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
        let beta = if accumulate { 1.0f32 } else { 0.0 };
        if !plan.tuned {
            if super::capturing(&self.stream)? {
                self.untuned_in_capture.fetch_add(1, Ordering::Relaxed);
            } else {
                self.tune(handle, plan, key, x, w, beta)?;
            }
        }
        let _ = &self.workspace;
        self.matmul(handle, plan, &plan.candidates[plan.chosen], x, w, y, y, beta).map_err(|e| {
            blas_err(&format!("matmul {m}x{k}x{n} {dtype}{}", if out != dtype { format!(" into {out}") } else { String::new() }), e)
        })
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
