//! The CUDA backend: one context and one stream per device, the kernel table loaded at
//! start-up, device buffers, CUDA graphs and cuBLASLt.
//!
//! Everything runs on one non-default stream (the legacy default stream cannot be captured
//! into a graph) with cudarc's event tracking off: ordering on the single stream is the
//! synchronisation.

pub mod blas;
mod choice;
pub mod params;
mod pool;
mod tuning_file;

use std::sync::Arc;

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError, LaunchConfig, PushKernelArg,
};

use crate::ops::WgmmaOptions;
use crate::{Error, Result};

pub use choice::KernelTuning;

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

fn load_module(ctx: &Arc<CudaContext>, file: &str, fatbin: &[u8]) -> Result<Arc<CudaModule>> {
    ctx.load_module(cudarc::nvrtc::Ptx::from_binary(fatbin.to_vec())).map_err(|e| {
        Error::Cuda(format!("loading kernels/{file}.cu's fatbin: {e} (a GPU older than sm_80, or a driver older than CUDA 13.0?)"))
    })
}

fn load_function(m: &Arc<CudaModule>, file: &str, name: &str) -> Result<CudaFunction> {
    m.load_function(name).map_err(|e| Error::Cuda(format!("kernel `{name}` missing from kernels/{file}.cu's fatbin: {e}")))
}

/// Whether `stream` is being captured into a graph.
pub(crate) fn capturing(stream: &CudaStream) -> Result<bool> {
    let status = stream.capture_status().map_err(|e| driver_err("querying the capture status", e))?;
    Ok(status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
}

/// A launch attribute that makes clusters of `dims` blocks (cuLaunchKernelEx,
/// cuOccupancyMaxActiveClusters).
fn cluster_attribute((x, y, z): (u32, u32, u32)) -> sys::CUlaunchAttribute {
    // SAFETY: an all-zero attribute is a valid "ignore" entry; the id and value are then set.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim.x = x;
    attr.value.clusterDim.y = y;
    attr.value.clusterDim.z = z;
    attr
}

/// Maps a driver error to the engine's error, keeping out-of-memory distinct.
pub(crate) fn driver_err(what: &str, e: DriverError) -> Error {
    if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
        Error::OutOfMemory(format!("{what}: {e}"))
    } else {
        Error::Cuda(format!("{what}: {e}"))
    }
}

/// Opening and closing a device (module loads and unloads, cuBLASLt handles, contexts) may make
/// the driver synchronise the whole GPU, and a graph capture that another thread of the process
/// runs at that moment is then invalidated: on an H200, tests that opened and dropped devices
/// while another thread captured saw cuBLASLt fail inside the capture
/// (CUBLAS_STATUS_EXECUTION_FAILED). Captures hold this lock shared (they do not disturb one
/// another: each thread captures its own stream in thread-local mode); opening and closing hold
/// it alone.
static SETUP: std::sync::RwLock<()> = std::sync::RwLock::new(());

thread_local! {
    /// Whether this thread holds [`SETUP`] shared for a capture.
    static CAPTURING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`SETUP`] held shared by a capturing thread, which is marked so in [`CAPTURING`] meanwhile.
struct CaptureLock(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>);

impl CaptureLock {
    fn take() -> Self {
        let shared = SETUP.read().unwrap_or_else(|e| e.into_inner());
        CAPTURING.with(|c| c.set(true));
        CaptureLock(shared)
    }
}

impl Drop for CaptureLock {
    fn drop(&mut self) {
        CAPTURING.with(|c| c.set(false));
    }
}

/// [`SETUP`] held alone; nothing when this thread is itself capturing (it holds the lock shared
/// then, so waiting would never end, and its own capture is the one it would protect).
fn setup_alone() -> Option<std::sync::RwLockWriteGuard<'static, ()>> {
    if CAPTURING.with(|c| c.get()) {
        return None;
    }
    Some(SETUP.write().unwrap_or_else(|e| e.into_inner()))
}

/// The kernels that may ask for more than 48 KiB of dynamic shared memory
/// ([`CudaDevice::opt_in_shared_memory`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SharedMemoryOptIn {
    /// `gemm_gelu_grn_ws_bf16`.
    GemmGrnWs,
    /// `gemm_gelu_grn_ws_deep_bf16`.
    GemmGrnWsDeep,
    /// `depthwise_roll_bf16`.
    DepthwiseRoll,
    /// `gemm_skinny_bf16`.
    GemmSkinny,
    /// `gemm_scaled_sk_bf16`.
    GemmScaled,
    /// `gemm_gelu_ws_bf16`.
    GemmGeluWs,
    /// `gemm_sk_bf16`.
    GemmSk,
    /// `gemm_gelu_grn_sk_bf16`.
    GemmGrnSk,
    /// `gemm_gelu_grn_ws_tall_bf16`.
    GemmGrnWsTall,
    /// `gemm_gelu_grn_ws_pair_bf16`.
    GemmGrnWsPair,
}

impl SharedMemoryOptIn {
    const COUNT: usize = 10;
}

/// One GPU: its context, its stream, its kernels and its cuBLASLt handle.
pub struct CudaDevice {
    ordinal: usize,
    name: String,
    compute_capability: (i32, i32),
    multiprocessors: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Dropped in `Drop`, under [`SETUP`] (module unloads may synchronise the device).
    kernels: std::mem::ManuallyDrop<Kernels>,
    /// Dropped in `Drop`, under [`SETUP`] (destroys the cuBLASLt handle).
    blas: std::mem::ManuallyDrop<blas::Blas>,
    /// Where cuBLASLt's and the kernels' timed choices are kept between processes.
    tuning_file: Arc<tuning_file::TuningFile>,
    /// What the wgmma attention's options resolve to when a caller leaves them unset, before
    /// the environment ([`CudaDevice::set_attention_defaults`]).
    attention_defaults: std::sync::Mutex<WgmmaOptions>,
    /// Which opt-in GEMM kernels products take when set ([`CudaDevice::set_gemm_defaults`]).
    gemm_defaults: std::sync::Mutex<crate::ops::GemmOptions>,
    allow_tf32: std::sync::atomic::AtomicBool,
    memory: Arc<MemStats>,
    tensor_core_attention: std::sync::atomic::AtomicBool,
    mma_attention: std::sync::atomic::AtomicBool,
    mma32_attention: std::sync::atomic::AtomicBool,
    mma32_per_sm: std::sync::atomic::AtomicUsize,
    mma32_wide_attention: std::sync::atomic::AtomicBool,
    mma32_wide_per_sm: std::sync::atomic::AtomicUsize,
    wgmma_attention: std::sync::atomic::AtomicBool,
    /// Launches with programmatic stream serialization (`CASCADE_PDL=1` on compute capability 9.0).
    programmatic: std::sync::atomic::AtomicBool,
    wgmma_per_sm: std::sync::atomic::AtomicUsize,
    wgmma_sq_per_sm: std::sync::atomic::AtomicUsize,
    /// The split-key wgmma kernels (`CASCADE_ATTENTION_SPLIT=1`) passed their start-up checks.
    wgmma_split_attention: std::sync::atomic::AtomicBool,
    wgmma_split_per_sm: std::sync::atomic::AtomicUsize,
    wgmma_split_sq_per_sm: std::sync::atomic::AtomicUsize,
    /// The two-warpgroup wgmma kernel (`CASCADE_ATTENTION=wgmma2`) passed its start-up check.
    wgmma2_attention: std::sync::atomic::AtomicBool,
    /// The wgmma kernels' lean softmax (`CASCADE_ATTENTION_SOFTMAX=lean`) passed its start-up check.
    lean_softmax: std::sync::atomic::AtomicBool,
    /// The wgmma kernels' narrow last tile of keys passed its start-up check (and
    /// `CASCADE_ATTENTION_TAIL=full` did not turn it off).
    narrow_tail: std::sync::atomic::AtomicBool,
    /// The wgmma kernels that copy K and V with TMA (`CASCADE_ATTENTION_COPY=tma`) passed their
    /// start-up check.
    tma_attention: std::sync::atomic::AtomicBool,
    /// The paired TMA kernels (`CASCADE_ATTENTION_COPY=pair`) passed their start-up check.
    pair_attention: std::sync::atomic::AtomicBool,
    /// The TMA kernels in clusters of three and four (`CASCADE_ATTENTION_COPY=cluster`) passed
    /// theirs.
    cluster_attention: std::sync::atomic::AtomicBool,
    /// The requested version of the fused fc1 + GRN-statistics GEMM (`gemm_gelu_grn_ws_bf16` and
    /// the rest) passed its start-up check.
    wgmma_gemm: std::sync::atomic::AtomicBool,
    /// Its stream-K version (`gemm_gelu_grn_sk_bf16`) passed its start-up check.
    grn_sk_gemm: std::sync::atomic::AtomicBool,
    /// Its tall version (`gemm_gelu_grn_ws_tall_bf16`, 256-row tiles) passed its start-up check.
    grn_tall_gemm: std::sync::atomic::AtomicBool,
    /// Its tall version in clusters of two blocks sharing x's copy (`gemm_gelu_grn_ws_pair_bf16`)
    /// passed its start-up check.
    grn_pair_gemm: std::sync::atomic::AtomicBool,
    /// The skinny GEMM (`gemm_skinny_bf16`, `CASCADE_GEMM_SKINNY=1`) passed its start-up check.
    skinny_gemm: std::sync::atomic::AtomicBool,
    /// The warp-specialised GEMM as an MLP's first layer and its GELU (`CASCADE_GEMM_WS_GELU=1`
    /// or `force`) passed its start-up check.
    ws_gelu_gemm: std::sync::atomic::AtomicBool,
    /// The stream-K GEMM with GRN's factor on its input (`CASCADE_GEMM_WS_FC2=1`) passed its
    /// start-up check.
    scaled_gemm: std::sync::atomic::AtomicBool,
    /// The same kernel, without a factor, for residual products with few output tiles
    /// (`CASCADE_GEMM_SK=1`), passed its start-up check.
    sk_gemm: std::sync::atomic::AtomicBool,
    /// The dynamic shared memory each kernel of [`SharedMemoryOptIn`] may use, as set so far (0:
    /// the default 48 KiB).
    smem_opt_in: [std::sync::atomic::AtomicUsize; SharedMemoryOptIn::COUNT],
    /// Completion counters (GlobalResponseNorm's, the split-key attention's): zeroed once here,
    /// and every kernel that counts with them leaves them zero (one stream, so launches never
    /// overlap).
    completion_counters: CudaSlice<u32>,
    /// The kernel choices made by timing (`CASCADE_KERNEL_TUNE`, [`choice`]).
    choices: choice::Choices,
    /// Graphs captured so far (see [`CudaDevice::graphs_captured`]).
    captures: std::sync::atomic::AtomicUsize,
    /// The arena of the capture in progress, and the thread capturing: that thread's
    /// allocations come from it (see [`pool`]).
    capture_pool: std::sync::Mutex<Option<(std::thread::ThreadId, Arc<pool::GraphPool>)>>,
    /// `CASCADE_POISON_GRAPH_MEMORY=1`: graph buffers are filled with 0xff bytes where a replay
    /// first gets them (tests: a read of memory the step never wrote then shows as NaN).
    poison_graph_memory: std::sync::atomic::AtomicBool,
    /// The stream allocator's pool (the device's default), when its handle could be read.
    mem_pool: Option<MemPool>,
}

/// A driver memory-pool handle.
struct MemPool(sys::CUmemoryPool);

// SAFETY: a pool handle is a plain driver object, usable from any thread.
unsafe impl Send for MemPool {}
unsafe impl Sync for MemPool {}

/// Makes the stream allocator keep the memory freed back to its pool, instead of returning
/// everything beyond 0 bytes (the driver's default) to the driver at each synchronisation: every
/// call would otherwise map its activations afresh (a 1024² Stage A decode alone goes through
/// gigabytes). The memory stays the process's, for its next allocations; an allocation that
/// finds the card full trims the pool and tries again ([`CudaDevice::alloc`]). Returns the pool,
/// or None (with a warning) when the driver refuses, which only costs speed.
fn keep_freed_memory(ctx: &Arc<CudaContext>) -> Option<MemPool> {
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: out-pointers to live locals; the attribute takes a u64.
    let set = unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result().and_then(|_| {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            )
            .result()
        })
    };
    match set {
        Ok(()) => Some(MemPool(pool)),
        Err(e) => {
            eprintln!("warning: could not make the GPU allocator keep freed memory ({e}); each call will map its memory afresh");
            None
        }
    }
}

/// Clears the capturing arena when a capture's body returns or unwinds.
struct CapturePoolGuard<'a>(&'a std::sync::Mutex<Option<(std::thread::ThreadId, Arc<pool::GraphPool>)>>);

impl Drop for CapturePoolGuard<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// How many completion counters a device keeps (256 KiB).
const COMPLETION_COUNTERS: usize = 1 << 16;

/// Bytes held by the engine's own device buffers (current and peak since the last reset).
#[derive(Default, Debug)]
pub struct MemStats {
    current: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl MemStats {
    fn add(&self, n: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.current.fetch_add(n, Relaxed) + n;
        self.peak.fetch_max(now, Relaxed);
    }
    fn sub(&self, n: usize) {
        self.current.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({}: {})", self.ordinal, self.name)
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        let _alone = setup_alone();
        // Work still queued may use the kernels: let it finish before their modules go.
        let _ = self.stream.synchronize();
        // SAFETY: each is dropped exactly once, here, and never used afterwards.
        unsafe {
            std::mem::ManuallyDrop::drop(&mut self.blas);
            std::mem::ManuallyDrop::drop(&mut self.kernels);
        }
    }
}

/// What a tuning file's choices are valid for: the card, the driver, cuBLASLt and the engine.
fn tuning_fingerprint(name: &str, (major, minor): (i32, i32), multiprocessors: usize) -> String {
    let mut driver = 0;
    // SAFETY: writes one int.
    let _ = unsafe { sys::cuDriverGetVersion(&mut driver) };
    // SAFETY: a plain query, made only where the library loads (Blas::new, next, refuses to go
    // on without it).
    let cublaslt =
        if unsafe { cudarc::cublaslt::sys::is_culib_present() } { unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() } } else { 0 };
    format!("{name}, sm_{major}{minor}, {multiprocessors} SMs, driver {driver}, cuBLASLt {cublaslt}, cascade {}", env!("CARGO_PKG_VERSION"))
}

impl CudaDevice {
    /// Opens GPU `ordinal`. Returns [`Error::NoCuda`] when the driver library is absent, no
    /// GPU is visible, or the ordinal is out of range; never panics.
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        let _alone = setup_alone();
        // CudaContext::new panics when libcuda cannot be loaded: check first.
        // SAFETY: only tries to dlopen the driver library.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoCuda(
                "the NVIDIA driver library (libcuda.so) is not installed or not on the loader path; use --device cpu".into(),
            ));
        }
        let count =
            CudaContext::device_count().map_err(|e| Error::NoCuda(format!("the driver reports no usable GPU ({e}); use --device cpu")))?;
        if count <= 0 {
            return Err(Error::NoCuda("the driver sees no GPU; use --device cpu".into()));
        }
        if ordinal >= count as usize {
            return Err(Error::NoCuda(format!("asked for GPU {ordinal}, but only {count} GPU(s) are visible (0..{})", count - 1)));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::NoCuda(format!("cannot open GPU {ordinal}: {e}")))?;
        // SAFETY: one stream per device, so cudarc's cross-stream events are not needed, and
        // they would break graph capture.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| driver_err("creating a stream", e))?;
        let mem_pool = keep_freed_memory(&ctx);
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let compute_capability = ctx.compute_capability().map_err(|e| driver_err("reading the compute capability", e))?;
        if compute_capability.0 < 8 {
            return Err(Error::NoCuda(format!(
                "{name} has compute capability {}.{}; the kernels need sm_80 (Ampere) or newer",
                compute_capability.0, compute_capability.1
            )));
        }
        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver_err("reading the multiprocessor count", e))?
            .max(1) as usize;
        let kernels = Kernels::load(&ctx)?;
        let tuning_file = Arc::new(tuning_file::TuningFile::new(tuning_fingerprint(&name, compute_capability, multiprocessors)));
        if let Some(path) = std::env::var_os("CASCADE_TUNING_FILE").filter(|p| !p.is_empty()) {
            if let Err(e) = tuning_file.open(Some(std::path::Path::new(&path))) {
                eprintln!("warning: CASCADE_TUNING_FILE not used: {e}");
            }
        }
        let blas = blas::Blas::new(&stream, tuning_file.clone())?;
        let completion_counters =
            stream.alloc_zeros::<u32>(COMPLETION_COUNTERS).map_err(|e| driver_err("allocating the completion counters", e))?;
        let dev = Arc::new(Self {
            ordinal,
            name,
            compute_capability,
            multiprocessors,
            ctx,
            stream,
            kernels: std::mem::ManuallyDrop::new(kernels),
            blas: std::mem::ManuallyDrop::new(blas),
            tuning_file,
            attention_defaults: Default::default(),
            gemm_defaults: Default::default(),
            allow_tf32: false.into(),
            memory: Arc::default(),
            tensor_core_attention: false.into(),
            mma_attention: false.into(),
            mma32_attention: false.into(),
            mma32_per_sm: 0.into(),
            mma32_wide_attention: false.into(),
            mma32_wide_per_sm: 0.into(),
            wgmma_attention: false.into(),
            // Only the sm_90a image has the kernels' griddepcontrol.wait (kernels/common.cuh
            // pdl_enter): other architectures run PTX without it and must not start early.
            programmatic: (compute_capability == (9, 0) && std::env::var("CASCADE_PDL").is_ok_and(|v| v == "1")).into(),
            wgmma_per_sm: 0.into(),
            wgmma_sq_per_sm: 0.into(),
            wgmma_split_attention: false.into(),
            wgmma_split_per_sm: 0.into(),
            wgmma_split_sq_per_sm: 0.into(),
            wgmma2_attention: false.into(),
            lean_softmax: false.into(),
            narrow_tail: false.into(),
            tma_attention: false.into(),
            pair_attention: false.into(),
            cluster_attention: false.into(),
            wgmma_gemm: false.into(),
            grn_sk_gemm: false.into(),
            grn_tall_gemm: false.into(),
            grn_pair_gemm: false.into(),
            skinny_gemm: false.into(),
            ws_gelu_gemm: false.into(),
            scaled_gemm: false.into(),
            sk_gemm: false.into(),
            smem_opt_in: Default::default(),
            completion_counters,
            choices: Default::default(),
            captures: 0.into(),
            capture_pool: Default::default(),
            mem_pool,
            poison_graph_memory: std::env::var("CASCADE_POISON_GRAPH_MEMORY").is_ok_and(|v| v == "1").into(),
        });
        use crate::ops::AttentionKernel;
        let ok = check_attention_kernel(&dev, AttentionKernel::TensorCore, "tensor-core (WMMA)");
        dev.tensor_core_attention.store(ok, std::sync::atomic::Ordering::Relaxed);
        let ok = check_attention_kernel(&dev, AttentionKernel::Mma, "tensor-core (mma.sync)");
        dev.mma_attention.store(ok, std::sync::atomic::Ordering::Relaxed);
        let ok = check_attention_kernel(&dev, AttentionKernel::Mma32, "32-query tensor-core (mma.sync)");
        dev.mma32_attention.store(ok, std::sync::atomic::Ordering::Relaxed);
        // Its blocks per SM, for the launcher's choice between the two mma kernels (0 if the
        // driver cannot say: the 16-query kernel then runs everywhere).
        let per_sm = dev.resident_blocks_per_sm(&dev.kernels().attention_mma32_bf16, 128, 0).unwrap_or(0);
        dev.mma32_per_sm.store(per_sm, std::sync::atomic::Ordering::Relaxed);
        // The five-warp variant is unmeasured: checked, and then considered, only on request.
        if std::env::var("CASCADE_ATTENTION_W5").is_ok_and(|v| v == "1") {
            let ok = check_attention_kernel(&dev, AttentionKernel::Mma32Wide, "32-query five-warp tensor-core (mma.sync)");
            dev.mma32_wide_attention.store(ok, std::sync::atomic::Ordering::Relaxed);
            let per_sm = dev.resident_blocks_per_sm(&dev.kernels().attention_mma32_w5_bf16, 160, 0).unwrap_or(0);
            dev.mma32_wide_per_sm.store(per_sm, std::sync::atomic::Ordering::Relaxed);
        }
        // The wgmma kernels exist only in the sm_90a image. Measured on an H200 (thirteenth
        // session) they beat the mma.sync ones on every shape, so they are checked and taken by
        // default; CASCADE_ATTENTION_WGMMA=0 leaves them out. A fault in one would end the
        // context, hence the start-up check on a small problem before any real work.
        if dev.compute_capability == (9, 0) && wgmma_attention_allowed() {
            let ok = check_attention_kernel(&dev, AttentionKernel::Wgmma, "Hopper tensor-core (wgmma)")
                && check_attention_kernel(&dev, AttentionKernel::WgmmaSharedQ, "Hopper tensor-core (wgmma, Q in shared memory)");
            dev.wgmma_attention.store(ok, std::sync::atomic::Ordering::Relaxed);
            let per_sm = dev.resident_blocks_per_sm(&dev.kernels().attention_wgmma_bf16, 128, 0).unwrap_or(0);
            dev.wgmma_per_sm.store(per_sm, std::sync::atomic::Ordering::Relaxed);
            let per_sm = dev.resident_blocks_per_sm(&dev.kernels().attention_wgmma_qs_bf16, 128, 0).unwrap_or(0);
            dev.wgmma_sq_per_sm.store(per_sm, std::sync::atomic::Ordering::Relaxed);
            // The split-key kernels are not measured yet: checked, and then planned for, only
            // on request (CASCADE_ATTENTION_SPLIT=1, or =N to force N ranges).
            if ok && considered(attention_split_requested()) {
                let ok = check_attention_kernel(&dev, AttentionKernel::WgmmaSplit(2), "Hopper tensor-core (wgmma, split keys)")
                    && check_attention_kernel(
                        &dev,
                        AttentionKernel::WgmmaSharedQSplit(2),
                        "Hopper tensor-core (wgmma, Q in shared memory, split keys)",
                    );
                dev.wgmma_split_attention.store(ok, std::sync::atomic::Ordering::Relaxed);
                let per_sm = dev.resident_blocks_per_sm(&dev.kernels().attention_wgmma_split_bf16, 128, 0).unwrap_or(0);
                dev.wgmma_split_per_sm.store(per_sm, std::sync::atomic::Ordering::Relaxed);
                let per_sm = dev.resident_blocks_per_sm(&dev.kernels().attention_wgmma_qs_split_bf16, 128, 0).unwrap_or(0);
                dev.wgmma_split_sq_per_sm.store(per_sm, std::sync::atomic::Ordering::Relaxed);
            }
            // The two-warpgroup kernel likewise, on request (CASCADE_ATTENTION=wgmma2).
            if ok && considered(wgmma2_requested()) {
                let ok = check_attention_kernel(&dev, AttentionKernel::Wgmma2, "Hopper tensor-core (wgmma, two warpgroups)")
                    && (!attention_split_requested()
                        || check_attention_kernel(
                            &dev,
                            AttentionKernel::Wgmma2Split(2),
                            "Hopper tensor-core (wgmma, two warpgroups, split keys)",
                        ));
                dev.wgmma2_attention.store(ok, std::sync::atomic::Ordering::Relaxed);
            }
            // The lean softmax likewise (CASCADE_ATTENTION_SOFTMAX=lean), in the kernel with Q in
            // registers (the rows' sums on the tensor cores) and the one with Q in shared memory.
            if ok && considered(attention_softmax_requested() == Some(true)) {
                let ok = check_attention_softmax(&dev, AttentionKernel::Wgmma, true, "Hopper tensor-core (wgmma, lean softmax)")
                    && check_attention_softmax(
                        &dev,
                        AttentionKernel::WgmmaSharedQ,
                        true,
                        "Hopper tensor-core (wgmma, Q in shared memory, lean softmax)",
                    );
                dev.lean_softmax.store(ok, std::sync::atomic::Ordering::Relaxed);
            }
            // The narrow last tile (on unless CASCADE_ATTENTION_TAIL=full): checked on its own,
            // after the kernels passed theirs with full tiles, so that a fault in it only turns it
            // off; with both key-tail widths, Q in registers and in shared memory.
            if ok && attention_tail_requested() {
                let narrow = WgmmaOptions {
                    lean_softmax: Some(false),
                    narrow_tail: Some(true),
                    tma_copies: Some(false),
                    pair_copies: Some(false),
                    cluster_copies: Some(false),
                };
                let ok = check_wgmma_attention_options(&dev, narrow, "narrow last tile");
                dev.narrow_tail.store(ok, std::sync::atomic::Ordering::Relaxed);
            }
            // The kernels whose K and V tiles TMA copies (CASCADE_ATTENTION_COPY=tma), likewise
            // on request: Q in registers and in shared memory, each with the narrow last tile
            // where that passed.
            if ok && considered(attention_copy_requested() == Some(true)) {
                let tma = WgmmaOptions {
                    lean_softmax: Some(false),
                    narrow_tail: Some(dev.narrow_tail()),
                    tma_copies: Some(true),
                    pair_copies: Some(false),
                    cluster_copies: Some(false),
                };
                let ok = check_wgmma_attention_options(&dev, tma, "TMA copies")
                    && (!dev.wgmma_split_attention()
                        || check_attention_options(
                            &dev,
                            AttentionKernel::WgmmaSplit(2),
                            tma,
                            "Hopper tensor-core (wgmma, split keys, TMA copies)",
                        ));
                dev.tma_attention.store(ok, std::sync::atomic::Ordering::Relaxed);
                // The paired ones (clusters of two blocks sharing each tile's copy), only where
                // CASCADE_ATTENTION_COPY=pair asks for them until they have run on a GPU: a
                // cluster kernel that hangs would take every check of its process with it.
                if ok && attention_pair_requested() {
                    // On for the check's own launches (the launcher takes the pairs only where
                    // this says they passed), then its result.
                    dev.pair_attention.store(true, std::sync::atomic::Ordering::Relaxed);
                    let pair = WgmmaOptions { pair_copies: Some(true), ..tma };
                    let ok = check_wgmma_attention_options(&dev, pair, "TMA copies in pairs");
                    dev.pair_attention.store(ok, std::sync::atomic::Ordering::Relaxed);
                    // Trios and quads likewise (CASCADE_ATTENTION_COPY=cluster), once pairs passed:
                    // the check's shapes include three and four query blocks a head.
                    if ok && attention_cluster_requested() {
                        dev.cluster_attention.store(true, std::sync::atomic::Ordering::Relaxed);
                        let wider = WgmmaOptions { cluster_copies: Some(true), ..pair };
                        let ok = check_wgmma_attention_options(&dev, wider, "TMA copies in trios and quads");
                        dev.cluster_attention.store(ok, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
        // The same for the fused fc1 + GRN GEMM (CASCADE_GEMM_WGMMA=1): the requested version,
        // and beside the warp-specialised one (`ws`, or timing's) its stream-K and tall
        // versions, so that timing or an A/B can choose among the three; beside the paired
        // version (only where `ws_pair` asks for it until it has run on a GPU: a cluster kernel
        // that hangs there would take every check of its process with it) the tall one.
        if dev.compute_capability == (9, 0) && considered(gemm_wgmma_requested()) {
            use crate::ops::FusedGrnKernel;
            use std::sync::atomic::Ordering::Relaxed;
            let requested = FusedGrnKernel::requested();
            let ok = check_gemm_gelu_grn(&dev, requested);
            dev.wgmma_gemm.store(ok, Relaxed);
            match requested {
                FusedGrnKernel::WgmmaSk => dev.grn_sk_gemm.store(ok, Relaxed),
                FusedGrnKernel::WgmmaWsTall => dev.grn_tall_gemm.store(ok, Relaxed),
                FusedGrnKernel::WgmmaWsPair => {
                    dev.grn_pair_gemm.store(ok, Relaxed);
                    dev.grn_tall_gemm.store(check_gemm_gelu_grn(&dev, FusedGrnKernel::WgmmaWsTall), Relaxed);
                }
                FusedGrnKernel::WgmmaWs => {
                    dev.grn_sk_gemm.store(check_gemm_gelu_grn(&dev, FusedGrnKernel::WgmmaSk), Relaxed);
                    dev.grn_tall_gemm.store(check_gemm_gelu_grn(&dev, FusedGrnKernel::WgmmaWsTall), Relaxed);
                }
                _ => {}
            }
        }
        // The same for the skinny GEMM (CASCADE_GEMM_SKINNY=1).
        if dev.compute_capability == (9, 0) && considered(gemm_skinny_requested()) {
            let ok = check_gemm_skinny(&dev);
            dev.skinny_gemm.store(ok, std::sync::atomic::Ordering::Relaxed);
        }
        // The same for the warp-specialised GEMM as an MLP's first layer (CASCADE_GEMM_WS_GELU=1).
        if dev.compute_capability == (9, 0) && considered(gemm_ws_gelu_requested()) {
            let ok = check_gemm_ws_gelu(&dev);
            dev.ws_gelu_gemm.store(ok, std::sync::atomic::Ordering::Relaxed);
        }
        // The same for the stream-K GEMM with GRN's factor on its input (CASCADE_GEMM_WS_FC2=1).
        // ... and without a factor for residual products with few tiles (CASCADE_GEMM_SK=1): one
        // check covers both (the same template; the check runs it with and without a factor).
        let (fc2, sk) = (considered(gemm_ws_fc2_requested()), considered(gemm_sk_requested()));
        if dev.compute_capability == (9, 0) && (fc2 || sk) {
            let ok = check_gemm_scaled(&dev);
            dev.scaled_gemm.store(ok && fc2, std::sync::atomic::Ordering::Relaxed);
            dev.sk_gemm.store(ok && sk, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(dev)
    }

    /// The ordinal this device was opened with.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The GPU's marketing name, e.g. "NVIDIA H200".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// (major, minor) compute capability.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// How many SMs the GPU has (132 on an H100 SXM or H200): launches sized to fill them.
    pub fn multiprocessors(&self) -> usize {
        self.multiprocessors
    }

    /// The device's one stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The kernel table.
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// How many GEMMs so far were recorded into graph captures before their cuBLASLt algorithm
    /// was tuned, and kernel choices made there before their shape was timed
    /// (`CASCADE_KERNEL_TUNE`; see [`CudaDevice::capture_tuned`]); never decreases.
    pub fn untuned_gemms_captured(&self) -> usize {
        self.blas.untuned_in_capture() + self.choices.untuned_in_capture()
    }

    /// The completion counters' address and count (GRN's and the split-key attention's; see
    /// `kernels/params.h`).
    pub(crate) fn completion_counters(&self) -> (u64, usize) {
        (self.completion_counters.device_ptr(&self.stream).0, COMPLETION_COUNTERS)
    }

    /// How many completion counters are not zero once the queued work is done: 0, since every
    /// kernel that counts with them leaves them zero for the next launch (what a test checks
    /// after the kernels that use them). Waits for the stream.
    pub fn completion_counters_set(&self) -> Result<usize> {
        let mut bytes = vec![0u8; COMPLETION_COUNTERS * 4];
        self.dtoh(self.completion_counters().0, &mut bytes)?;
        Ok(bytes.chunks_exact(4).filter(|c| c.iter().any(|&b| b != 0)).count())
    }

    pub(crate) fn blas(&self) -> &blas::Blas {
        &self.blas
    }

    /// Keeps the choices this device makes by timing (cuBLASLt's algorithm per GEMM shape, and
    /// under `CASCADE_KERNEL_TUNE` the kernel per site and shape) in the file at `path`, and
    /// takes the ones it already holds instead of timing them again: a later process starts
    /// faster and runs the same algorithms. The file is used only by the same card, driver,
    /// cuBLASLt and engine version (a file made for others is rewritten) and is created at the
    /// first choice if absent. Affects shapes met from now on: set it before the first run.
    /// None stops using a file. `CASCADE_TUNING_FILE=path` sets it for every device a process
    /// opens. An unreadable or malformed file is an error, and the previous setting stays.
    pub fn set_tuning_file(&self, path: Option<&std::path::Path>) -> Result<()> {
        self.tuning_file.open(path)
    }

    /// Sets what the wgmma attention kernels' options (lean softmax, narrow last tile, TMA
    /// copies) resolve to for launches that leave them unset, ahead of their environment
    /// switches: for comparing them within one process (the stages bench's `CASCADE_BENCH_AB`
    /// captures one step graph per setting and times them in turns). A kernel that did not pass
    /// its start-up check (which runs when its switch or `CASCADE_KERNEL_TUNE` asks for it) is
    /// not taken whatever is set here. Graphs already captured keep what they were captured
    /// with. `WgmmaOptions::default()` (all unset) restores the environment's choices.
    pub fn set_attention_defaults(&self, options: WgmmaOptions) {
        *self.attention_defaults.lock().unwrap_or_else(|e| e.into_inner()) = options;
    }

    /// See [`CudaDevice::set_attention_defaults`].
    pub fn attention_defaults(&self) -> WgmmaOptions {
        *self.attention_defaults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets which opt-in GEMM kernels (the fused fc1 + GRN statistics, the stream-K fc2, the
    /// stream-K residual products, the skinny GEMM, the warp-specialised GELU GEMM) products
    /// take, ahead of their environment switches and of timing: for comparing them within one
    /// process, as [`CudaDevice::set_attention_defaults`] does for the attention. A kernel that did not pass its start-up check is never taken.
    /// Graphs already captured keep what they were captured with; `GemmOptions::default()`
    /// restores the environment's choices.
    pub fn set_gemm_defaults(&self, options: crate::ops::GemmOptions) {
        *self.gemm_defaults.lock().unwrap_or_else(|e| e.into_inner()) = options;
    }

    /// See [`CudaDevice::set_gemm_defaults`].
    pub fn gemm_defaults(&self) -> crate::ops::GemmOptions {
        *self.gemm_defaults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tuning file in use (see [`CudaDevice::set_tuning_file`]).
    pub fn tuning_file(&self) -> Option<std::path::PathBuf> {
        self.tuning_file.path()
    }

    /// The GEMM shapes met so far, as tuning-file keys, and the cuBLASLt candidate each runs
    /// (its index in the heuristic's order; 0 is the heuristic's first choice), sorted.
    pub fn gemm_choices(&self) -> Vec<(String, usize)> {
        self.blas.choices()
    }

    /// Lets f32 GEMMs use TF32 tensor cores (about 1e-3 relative error per product). Off by
    /// default: f32 means strict f32, which is what the fidelity tests compare.
    pub fn set_allow_tf32(&self, allow: bool) {
        self.allow_tf32.store(allow, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the tensor-core attention kernel agreed with the CUDA-core one when the device
    /// was opened (if not, attention falls back to the CUDA-core kernel).
    pub fn tensor_core_attention(&self) -> bool {
        self.tensor_core_attention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the mma.sync attention kernel agreed with the CUDA-core one when the device was
    /// opened.
    pub fn mma_attention(&self) -> bool {
        self.mma_attention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the 32-query mma.sync attention kernel agreed with the CUDA-core one when the
    /// device was opened.
    pub fn mma32_attention(&self) -> bool {
        self.mma32_attention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many blocks of the 32-query mma.sync attention kernel one SM holds (the driver's
    /// occupancy answer; 0 if it gave none).
    pub fn mma32_per_sm(&self) -> usize {
        self.mma32_per_sm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the five-warp 32-query attention kernel was asked for (`CASCADE_ATTENTION_W5=1`)
    /// and agreed with the CUDA-core one when the device was opened.
    pub fn mma32_wide_attention(&self) -> bool {
        self.mma32_wide_attention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many blocks of the five-warp 32-query attention kernel one SM holds (0 unless asked
    /// for, or if the driver gave no answer).
    pub fn mma32_wide_per_sm(&self) -> usize {
        self.mma32_wide_per_sm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this is a compute capability 9.0 GPU, the wgmma attention kernels were not turned
    /// off (`CASCADE_ATTENTION_WGMMA=0`), and both agreed with the CUDA-core kernel when the
    /// device was opened.
    pub fn wgmma_attention(&self) -> bool {
        self.wgmma_attention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the split-key wgmma kernels were asked for (`CASCADE_ATTENTION_SPLIT=1`) and agreed
    /// with the CUDA-core kernel when the device was opened (see `AttentionKernel::WgmmaSplit`).
    pub fn wgmma_split_attention(&self) -> bool {
        self.wgmma_split_attention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the two-warpgroup wgmma kernel was asked for (`CASCADE_ATTENTION=wgmma2`) and
    /// agreed with the CUDA-core kernel when the device was opened (see `AttentionKernel::Wgmma2`).
    pub fn wgmma2_attention(&self) -> bool {
        self.wgmma2_attention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the wgmma kernels' lean softmax was asked for (`CASCADE_ATTENTION_SOFTMAX=lean`, or
    /// under `CASCADE_KERNEL_TUNE`) and agreed with the CUDA-core kernel when the device was
    /// opened.
    pub fn lean_softmax(&self) -> bool {
        self.lean_softmax.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the wgmma kernels narrow their last tile of keys to the 32 or 16 keys it holds
    /// (on unless `CASCADE_ATTENTION_TAIL=full`, once it agreed with the CUDA-core kernel when the
    /// device was opened).
    pub fn narrow_tail(&self) -> bool {
        self.narrow_tail.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the wgmma kernels that copy K and V with TMA were asked for
    /// (`CASCADE_ATTENTION_COPY=tma`, or under `CASCADE_KERNEL_TUNE`) and agreed with the
    /// CUDA-core kernel when the device was opened.
    pub fn tma_attention(&self) -> bool {
        self.tma_attention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the wgmma attention's TMA copies in clusters of two blocks were asked for
    /// (`CASCADE_ATTENTION_COPY=pair`) and agreed with the CUDA-core kernel when the device was
    /// opened (see `WgmmaOptions::pair_copies`).
    pub fn pair_attention(&self) -> bool {
        self.pair_attention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the same copies in clusters of three and four blocks were asked for
    /// (`CASCADE_ATTENTION_COPY=cluster`) and agreed with the CUDA-core kernel when the device was
    /// opened (see `WgmmaOptions::cluster_copies`).
    pub fn cluster_attention(&self) -> bool {
        self.cluster_attention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many blocks of the two split-key wgmma kernels (Q in registers, Q in shared memory)
    /// one SM holds (0 unless they were asked for).
    pub fn wgmma_split_per_sm(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.wgmma_split_per_sm.load(Relaxed), self.wgmma_split_sq_per_sm.load(Relaxed))
    }

    /// Whether the fused fc1 + GRN-statistics GEMM on wgmma was asked for
    /// (`CASCADE_GEMM_WGMMA=1`), this is a compute capability 9.0 GPU, and it agreed with the
    /// separate path (cuBLASLt, then GRN's sums pass) when the device was opened.
    pub fn wgmma_gemm(&self) -> bool {
        self.wgmma_gemm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the stream-K version of the fused fc1 + GRN-statistics GEMM agreed with the
    /// separate path when the device was opened: checked where `CASCADE_GEMM_WGMMA=sk` or `ws`
    /// asks for it, or under `CASCADE_KERNEL_TUNE` (a compute capability 9.0 GPU).
    pub fn grn_sk_gemm(&self) -> bool {
        self.grn_sk_gemm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the tall version of the fused fc1 + GRN-statistics GEMM (256-row tiles, four
    /// consumer warpgroups) agreed with the separate path when the device was opened: checked
    /// where `CASCADE_GEMM_WGMMA=ws_tall`, `ws` or `ws_pair` asks for it, or under
    /// `CASCADE_KERNEL_TUNE`.
    pub fn grn_tall_gemm(&self) -> bool {
        self.grn_tall_gemm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the paired tall version of the fused fc1 + GRN-statistics GEMM (clusters of two
    /// blocks sharing the copy of x by TMA multicast) agreed with the separate path when the
    /// device was opened: checked only where `CASCADE_GEMM_WGMMA=ws_pair` asks for it (the
    /// tall version beside it), until it has run on a GPU.
    pub fn grn_pair_gemm(&self) -> bool {
        self.grn_pair_gemm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether products with at most `CASCADE_SKINNY_ROWS` rows of input (CLIP's) take the skinny
    /// GEMM instead of cuBLASLt: asked for (`CASCADE_GEMM_SKINNY=1`), a compute capability 9.0
    /// GPU, and it agreed with cuBLASLt when the device was opened.
    pub fn skinny_gemm(&self) -> bool {
        self.skinny_gemm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether large bf16 products with a GELU (Stage A's MixBlocks) take the warp-specialised
    /// wgmma GEMM instead of cuBLASLt's GELU epilogue: asked for (`CASCADE_GEMM_WS_GELU=1`), a
    /// compute capability 9.0 GPU, and it agreed with cuBLASLt and the erf GELU pass when the
    /// device was opened.
    pub fn ws_gelu_gemm(&self) -> bool {
        self.ws_gelu_gemm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the ResBlocks' second MLP layer takes GRN's factor on its input in the stream-K
    /// wgmma GEMM instead of GRN's apply pass (or the fold into the weight) and cuBLASLt: asked
    /// for (`CASCADE_GEMM_WS_FC2=1`), a compute capability 9.0 GPU, and it agreed with that path
    /// when the device was opened.
    pub fn scaled_gemm(&self) -> bool {
        self.scaled_gemm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether bf16 residual products (`y += x·wᵀ + b`) with fewer 128 × 128 output tiles than two
    /// waves take the stream-K wgmma kernel instead of cuBLASLt: asked for (`CASCADE_GEMM_SK=1`),
    /// a compute capability 9.0 GPU, and the kernel agreed with cuBLASLt when the device was
    /// opened.
    pub fn sk_gemm(&self) -> bool {
        self.sk_gemm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lets `f` (the kernel `which` names) use `bytes` of dynamic shared memory per block: beyond
    /// 48 KiB a kernel must opt in (the fused GEMM's stages take 97 or 129 KiB, the asynchronous
    /// depthwise kernels' rows up to about 135). Set once per context and kernel for each larger
    /// size; an occupancy query for such a size needs it first.
    pub(crate) fn opt_in_shared_memory(&self, f: &CudaFunction, which: SharedMemoryOptIn, bytes: usize) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let set = &self.smem_opt_in[which as usize];
        if bytes <= 48 * 1024 || set.load(Relaxed) >= bytes {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(|e| driver_err("binding the context", e))?;
        f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
            .map_err(|e| driver_err("allowing a kernel more than 48 KiB of shared memory", e))?;
        set.fetch_max(bytes, Relaxed);
        Ok(())
    }

    /// How many blocks of the two wgmma attention kernels (Q in registers, Q in shared memory)
    /// one SM holds (the driver's occupancy answers; 0 unless the kernels were asked for).
    pub fn wgmma_per_sm(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.wgmma_per_sm.load(Relaxed), self.wgmma_sq_per_sm.load(Relaxed))
    }

    /// Fills every buffer of graphs captured from now on with 0xff bytes where each replay first
    /// gets it (one memset node per buffer), so that a step reading memory it never wrote shows
    /// NaN instead of the previous replay's values. For tests; also set by
    /// `CASCADE_POISON_GRAPH_MEMORY=1` when the device is opened.
    pub fn set_poison_graph_memory(&self, on: bool) {
        self.poison_graph_memory.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether f32 GEMMs may use TF32.
    pub fn allow_tf32(&self) -> bool {
        self.allow_tf32.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// (current, peak) bytes in the engine's buffers (weights, activations, arenas); the peak
    /// counts since the last [`CudaDevice::reset_peak_memory`].
    pub fn memory_stats(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.memory.current.load(Relaxed), self.memory.peak.load(Relaxed))
    }

    /// Restarts peak tracking from the current usage.
    pub fn reset_peak_memory(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.memory.peak.store(self.memory.current.load(Relaxed), Relaxed);
    }

    /// (free, total) device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(|e| driver_err("cuMemGetInfo", e))
    }

    /// Waits until all work queued on the stream has finished; surfaces asynchronous kernel
    /// errors.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_err("stream synchronize", e))
    }

    /// Runs `f` inside a profiler range: under `ncu --profile-from-start off` only the kernels
    /// `f` queues are profiled (the stages bench's `CASCADE_BENCH_PROFILE=1`). Waits for the
    /// device before the range starts and before it stops.
    pub fn profile<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.synchronize()?;
        self.ctx.bind_to_thread().map_err(|e| driver_err("binding the context", e))?;
        // SAFETY: no arguments; the context is current on this thread.
        unsafe { sys::cuProfilerStart() }.result().map_err(|e| driver_err("starting a profiler range", e))?;
        let out = f();
        let done = self.synchronize();
        // SAFETY: as above.
        unsafe { sys::cuProfilerStop() }.result().map_err(|e| driver_err("stopping a profiler range", e))?;
        done?;
        out
    }

    /// An event recorded on the stream after the work queued so far (no timing: cheaper).
    pub fn marker(&self) -> Result<cudarc::driver::CudaEvent> {
        self.stream.record_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)).map_err(|e| driver_err("recording an event", e))
    }

    /// Allocates `bytes` of uninitialised device memory: from the graph's arena while this
    /// thread captures a graph, else from the stream's memory pool.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<CudaBuffer> {
        let pool = {
            let held = self.capture_pool.lock().unwrap_or_else(|e| e.into_inner());
            match &*held {
                Some((thread, pool)) if *thread == std::thread::current().id() => Some(pool.clone()),
                _ => None,
            }
        };
        match pool {
            Some(pool) => pool.alloc(self, bytes),
            None => self.alloc_stream(bytes),
        }
    }

    /// Allocates `bytes` from the stream's memory pool (a memory node when captured).
    fn alloc_stream(self: &Arc<Self>, bytes: usize) -> Result<CudaBuffer> {
        // A zero-byte allocation is legal for the driver, but round up so that every buffer
        // has a distinct address.
        let n = bytes.max(1);
        // SAFETY: the memory is uninitialised; every user writes before reading.
        let slice = match unsafe { self.stream.alloc::<u8>(n) } {
            Ok(s) => s,
            // The pool keeps freed memory, possibly in pieces too small for this request: give it
            // back to the driver and try once more (not while capturing: a synchronisation would
            // end the capture).
            Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY && self.mem_pool.is_some() && !capturing(&self.stream)? => {
                self.trim_pool()?;
                // SAFETY: as above.
                unsafe { self.stream.alloc::<u8>(n) }.map_err(|e| driver_err(&format!("allocating {n} bytes on {}", self.name), e))?
            }
            Err(e) => return Err(driver_err(&format!("allocating {n} bytes on {}", self.name), e)),
        };
        let ptr = slice.device_ptr(&self.stream).0;
        self.memory.add(n);
        Ok(CudaBuffer { ptr, bytes: n, backing: Backing::Own { stats: self.memory.clone(), _slice: slice } })
    }

    /// Returns the memory the stream allocator holds unused to the driver, after the work that
    /// freed it has finished.
    fn trim_pool(&self) -> Result<()> {
        self.synchronize()?;
        if let Some(pool) = &self.mem_pool {
            // SAFETY: a live pool handle of this device.
            unsafe { sys::cuMemPoolTrimTo(pool.0, 0) }.result().map_err(|e| driver_err("trimming the memory pool", e))?;
        }
        Ok(())
    }

    /// Sets `bytes` bytes at device address `dst` to `value` (queued on the stream).
    pub(crate) fn memset(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("binding the context", e))?;
        // SAFETY: `dst` points to at least `bytes` bytes of a live buffer (callers check).
        unsafe { cudarc::driver::result::memset_d8_async(dst, value, bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_err("setting device memory", e))
    }

    /// Copies host bytes to device address `dst`.
    pub(crate) fn htod(&self, src: &[u8], dst: u64) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("binding the context", e))?;
        // SAFETY: `dst` points to at least src.len() bytes of a live buffer (callers check);
        // a copy from pageable memory has read `src` when the call returns.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| driver_err("copying to the GPU", e))
    }

    /// Copies device bytes at `src` to host memory and waits for the copy.
    pub(crate) fn dtoh(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("binding the context", e))?;
        // SAFETY: `src` points to at least dst.len() bytes of a live buffer (callers check).
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| driver_err("copying from the GPU", e))?;
        self.synchronize()
    }

    /// Copies `bytes` between device addresses.
    pub(crate) fn dtod(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("binding the context", e))?;
        // SAFETY: both ranges lie inside live buffers (callers check).
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_err("copying on the GPU", e))
    }

    /// Launches `f` with one parameter struct passed by value.
    pub(crate) fn launch<P: cudarc::driver::DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        params: &P,
    ) -> Result<()> {
        self.launch_as(f, LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: smem }, params, false)
    }

    /// Launches `f` on a grid of clusters of `cluster` blocks (its dimensions divide the grid's):
    /// a cluster's blocks run at once on SMs of one GPC and may use one another's shared memory.
    /// With programmatic stream serialization where that is on.
    pub(crate) fn launch_cluster<P: cudarc::driver::DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        cluster: (u32, u32, u32),
        params: &P,
    ) -> Result<()> {
        let cfg = LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: smem };
        self.launch_ex(f, cfg, Some(cluster), self.programmatic_launches(), params)
    }

    /// How many clusters of `cluster` blocks of `f` (`block` threads, `smem` bytes of dynamic
    /// shared memory each, opted in already) the GPU holds at once: its SMs divided among
    /// clusters whose blocks share a GPC, so at most the SM count over the cluster's size, less
    /// where a GPC's SMs do not divide evenly.
    pub(crate) fn max_active_clusters(&self, f: &CudaFunction, block: u32, smem: u32, cluster: u32) -> Result<usize> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("binding the context", e))?;
        let mut attr = cluster_attribute((cluster, 1, 1));
        let config = sys::CUlaunchConfig {
            gridDimX: cluster,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        let mut n: std::ffi::c_int = 0;
        // SAFETY: `n`, `config` and `attr` outlive the call, which only reads the last two.
        unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &config) }
            .result()
            .map_err(|e| driver_err("cuOccupancyMaxActiveClusters", e))?;
        Ok(n.max(0) as usize)
    }

    /// Launches `f` as a cooperative kernel: the driver starts it only if every block of the
    /// grid can be resident at once (else an error), so its blocks may wait for one another.
    pub(crate) fn launch_cooperative<P: cudarc::driver::DeviceRepr>(&self, f: &CudaFunction, cfg: LaunchConfig, params: &P) -> Result<()> {
        self.launch_as(f, cfg, params, true)
    }

    fn launch_as<P: cudarc::driver::DeviceRepr>(&self, f: &CudaFunction, cfg: LaunchConfig, params: &P, cooperative: bool) -> Result<()> {
        if !cooperative && self.programmatic_launches() {
            return self.launch_programmatic(f, cfg, params);
        }
        let mut args = self.stream.launch_builder(f);
        args.arg(params);
        // SAFETY: every params struct comes from kernels/params.h through bindgen, so its layout
        // is the kernel's; the launchers check every pointer's buffer size before launching.
        let launched = unsafe {
            if cooperative {
                args.launch_cooperative(cfg)
            } else {
                args.launch(cfg)
            }
        };
        launched.map(|_| ()).map_err(|e| driver_err(if cooperative { "cooperative kernel launch" } else { "kernel launch" }, e))
    }

    /// Launches `f` with programmatic stream serialization: it may start while the kernel before
    /// it on the stream still runs (its first statement waits for that kernel: `pdl_enter` in
    /// kernels/common.cuh), so the launch gap between dependent kernels overlaps the tail of the
    /// one before. Inside a capture the edge becomes a programmatic one.
    fn launch_programmatic<P: cudarc::driver::DeviceRepr>(&self, f: &CudaFunction, cfg: LaunchConfig, params: &P) -> Result<()> {
        self.launch_ex(f, cfg, None, true, params)
    }

    /// cuLaunchKernelEx with a cluster dimension and/or programmatic stream serialization.
    fn launch_ex<P: cudarc::driver::DeviceRepr>(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        cluster: Option<(u32, u32, u32)>,
        programmatic: bool,
        params: &P,
    ) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("binding the context", e))?;
        // SAFETY: an all-zero attribute is a valid "ignore" entry; ids and values are then set.
        let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
        let mut count = 0;
        if programmatic {
            attrs[count].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attrs[count].value.programmaticStreamSerializationAllowed = 1;
            count += 1;
        }
        if let Some(dims) = cluster {
            attrs[count] = cluster_attribute(dims);
            count += 1;
        }
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: count as u32,
        };
        // One kernel parameter: the params struct, passed by the address of its value (as
        // cudarc's launch builder passes it).
        let mut args = [params as *const P as *mut std::ffi::c_void];
        // SAFETY: as in `launch_as`: the struct's layout is the kernel's (bindgen from
        // kernels/params.h) and the launchers checked every buffer; `config`, `attrs` and `args`
        // outlive the call, which copies them.
        let what = if cluster.is_some() { "kernel launch (clusters)" } else { "kernel launch (programmatic)" };
        unsafe { sys::cuLaunchKernelEx(&config, f.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
            .map_err(|e| driver_err(what, e))
    }

    /// Whether kernels are launched with programmatic stream serialization (`CASCADE_PDL=1` on a
    /// compute capability 9.0 GPU; opt-in: measured on an H200 it saves 0.27 µs per
    /// kernel-to-kernel edge but nothing per step, docs/performance.md, thirteenth session).
    pub fn programmatic_launches(&self) -> bool {
        self.programmatic.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns programmatic launches on or off for launches queued from now on (a graph keeps the
    /// edges it was captured with). Only a compute capability 9.0 GPU takes them: elsewhere this
    /// is an error and nothing changes.
    pub fn set_programmatic_launches(&self, on: bool) -> Result<()> {
        if on && self.compute_capability != (9, 0) {
            let (major, minor) = self.compute_capability;
            return Err(Error::Cuda(format!(
                "programmatic launches need compute capability 9.0 (the kernels' wait is only in the sm_90a image); {} has {major}.{minor}",
                self.name
            )));
        }
        self.programmatic.store(on, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// How many blocks of `threads` threads and `smem` bytes of dynamic shared memory each the
    /// driver can keep resident on one SM for `f` (its registers and static shared memory
    /// counted).
    pub(crate) fn resident_blocks_per_sm(&self, f: &CudaFunction, threads: u32, smem: usize) -> Result<usize> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("binding the context", e))?;
        f.occupancy_max_active_blocks_per_multiprocessor(threads, smem, None)
            .map(|n| n as usize)
            .map_err(|e| driver_err("querying a kernel's occupancy", e))
    }

    /// A 1-D grid-stride launch over `n` elements.
    pub(crate) fn launch_1d<P: cudarc::driver::DeviceRepr>(&self, f: &CudaFunction, n: usize, params: &P) -> Result<()> {
        let blocks = n.div_ceil(256).clamp(1, 65535 * 8) as u32;
        self.launch(f, (blocks, 1, 1), (256, 1, 1), 0, params)
    }

    /// A 1-D grid-stride launch sized for kernels that take eight elements per thread and step
    /// when their operands allow it (kernels/common.cuh `load8`): one thread per eight of the `n`
    /// elements. Kernels that fall back to one element per step still cover all `n`, in more
    /// steps.
    pub(crate) fn launch_vec8<P: cudarc::driver::DeviceRepr>(&self, f: &CudaFunction, n: usize, params: &P) -> Result<()> {
        self.launch_1d(f, n.div_ceil(8), params)
    }

    /// How many graph captures were begun on this device so far: lets callers and tests see
    /// whether a step graph was kept or captured again.
    pub fn graphs_captured(&self) -> usize {
        self.captures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records everything `body` queues on the stream into a CUDA graph instead of running it.
    /// The stream is left usable whether `body` succeeds or fails.
    ///
    /// The buffers `body` allocates come from an arena that the graph owns (`src/cuda/pool.rs`), so
    /// the graph holds no memory nodes. The first capture learns the arena's size, so `body`
    /// runs twice when it allocates anything; it must allocate the same sizes in the same order
    /// each time (a model's forward pass does).
    pub fn capture(self: &Arc<Self>, mut body: impl FnMut() -> Result<()>) -> Result<Graph> {
        self.capture_sized(0, &mut body)
    }

    /// [`CudaDevice::capture`], with every GEMM in the graph on its tuned cuBLASLt algorithm.
    ///
    /// A GEMM shape met for the first time inside a capture cannot be timed there, so it is
    /// recorded with the heuristic's first choice (and a kernel choice with its static one, under
    /// `CASCADE_KERNEL_TUNE`). When that happened, `warmup` runs directly
    /// (it must issue the same GEMMs as `body`, and its results are discarded), which times those
    /// shapes, before `body` is captured again (as it is anyway to size the arena).
    pub fn capture_tuned(self: &Arc<Self>, warmup: impl FnOnce() -> Result<()>, mut body: impl FnMut() -> Result<()>) -> Result<Graph> {
        let before = self.untuned_gemms_captured();
        let (graph, pool) = self.capture_in(0, true, &mut body)?;
        let untuned = self.untuned_gemms_captured() != before;
        if !untuned && !pool.overflowed() {
            return Graph::ready(graph, pool);
        }
        drop(graph);
        if untuned {
            warmup()?;
        }
        self.capture_sized(pool.high_water(), &mut body)
    }

    /// Captures `body` with an arena of `capacity` bytes, again with a larger one if some buffer
    /// did not fit (a third try that still overflows keeps the graph: its extra buffers are
    /// memory nodes, which are correct, only slower).
    fn capture_sized(self: &Arc<Self>, mut capacity: usize, body: &mut dyn FnMut() -> Result<()>) -> Result<Graph> {
        let mut tries = 0;
        loop {
            let (graph, pool) = self.capture_in(capacity, true, body)?;
            tries += 1;
            if !pool.overflowed() || tries == 3 {
                return Graph::ready(graph, pool);
            }
            capacity = pool.high_water();
        }
    }

    /// [`CudaDevice::capture`] for the kernel choices' timing: not counted in
    /// [`CudaDevice::graphs_captured`] (which tells whether a step graph was captured again).
    pub(crate) fn capture_uncounted(self: &Arc<Self>, body: &mut dyn FnMut() -> Result<()>) -> Result<Graph> {
        let (graph, pool) = self.capture_in(0, false, body)?;
        if !pool.overflowed() {
            return Graph::ready(graph, pool);
        }
        drop(graph);
        let (graph, pool) = self.capture_in(pool.high_water(), false, body)?;
        Graph::ready(graph, pool)
    }

    /// One capture of `body` into a fresh arena of `capacity` bytes (`counted`: in
    /// [`CudaDevice::graphs_captured`]).
    fn capture_in(
        self: &Arc<Self>,
        capacity: usize,
        counted: bool,
        body: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(cudarc::driver::CudaGraph, Arc<pool::GraphPool>)> {
        let poison = self.poison_graph_memory.load(std::sync::atomic::Ordering::Relaxed);
        let pool = pool::GraphPool::new(self, capacity, poison)?;
        if counted {
            self.captures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let shared = CaptureLock::take();
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| driver_err("beginning graph capture", e))?;
        let result = {
            *self.capture_pool.lock().unwrap_or_else(|e| e.into_inner()) = Some((std::thread::current().id(), pool.clone()));
            let _guard = CapturePoolGuard(&self.capture_pool);
            body()
        };
        let graph = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        drop(shared);
        if result.is_err() || graph.is_err() {
            // A failed capture leaves errors that cudarc recorded in drops (buffers freed into
            // the invalidated capture), which it would report from the next unrelated call: the
            // caller may go on without a graph, so they are cleared here.
            let _ = self.ctx.check_err();
        }
        result?;
        let graph = graph.map_err(|e| driver_err("instantiating the captured graph", e))?;
        let graph = graph.ok_or_else(|| Error::Cuda("graph capture recorded nothing".into()))?;
        Ok((graph, pool))
    }
}

/// A captured CUDA graph; [`Graph::replay`] queues it on the stream it was captured on.
pub struct Graph {
    /// Dropped in `Drop`, under [`SETUP`] (destroying an executable graph may synchronise).
    graph: std::mem::ManuallyDrop<cudarc::driver::CudaGraph>,
    /// The arena the graph's buffers live in (freed after the graph).
    pool: Arc<pool::GraphPool>,
}

// SAFETY: driver handles are not tied to the thread that made them (every call binds the
// context first); what the driver forbids is concurrent use of one graph, and `Graph` is not
// `Sync`, so a graph moved to another thread (a pipeline behind a mutex) is still used by one
// thread at a time.
unsafe impl Send for Graph {}

impl Drop for Graph {
    fn drop(&mut self) {
        let _alone = setup_alone();
        // SAFETY: dropped exactly once, here, and never used afterwards.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.graph) };
    }
}

impl Graph {
    /// The kept capture, uploaded so that its first replay has no set-up cost.
    fn ready(graph: cudarc::driver::CudaGraph, pool: Arc<pool::GraphPool>) -> Result<Graph> {
        graph.upload().map_err(|e| driver_err("uploading the graph", e))?;
        Ok(Graph { graph: std::mem::ManuallyDrop::new(graph), pool })
    }

    /// Bytes of the arena that holds the graph's intermediate buffers.
    pub fn arena_bytes(&self) -> usize {
        self.pool.capacity()
    }

    /// Whether some buffer of the graph lies outside its arena (a memory node in the graph):
    /// never, unless the captured code allocated differently on each capture.
    pub fn has_memory_nodes(&self) -> bool {
        self.pool.overflowed()
    }

    /// Queues one replay (asynchronous).
    pub fn replay(&self) -> Result<()> {
        self.graph.launch().map_err(|e| driver_err("replaying a graph", e))
    }

    /// How many nodes the graph has (kernels, GEMMs, memory nodes): what one replay launches.
    pub fn node_count(&self) -> Result<usize> {
        let mut n = 0usize;
        // SAFETY: the graph is live; a null node array asks only for the count.
        unsafe { sys::cuGraphGetNodes(self.graph.cu_graph(), std::ptr::null_mut(), &mut n) }
            .result()
            .map_err(|e| driver_err("counting graph nodes", e))?;
        Ok(n)
    }
}

/// A device allocation. Tensors hold it through an `Arc` with a byte offset, which lets an
/// arena hand out many tensors from one allocation.
pub struct CudaBuffer {
    ptr: u64,
    bytes: usize,
    backing: Backing,
}

/// Where a buffer's memory comes from.
enum Backing {
    /// Its own allocation from the stream's pool.
    Own { stats: Arc<MemStats>, _slice: CudaSlice<u8> },
    /// A range of a graph's arena; `overflow` holds the memory when the range fell outside it.
    Pool { pool: Arc<pool::GraphPool>, offset: usize, _overflow: Option<Box<CudaBuffer>> },
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        match &self.backing {
            Backing::Own { stats, .. } => stats.sub(self.bytes),
            Backing::Pool { pool, offset, .. } => pool.release(*offset, self.bytes),
        }
    }
}

impl CudaBuffer {
    /// Device address of the first byte.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }
    /// True for an empty buffer (never produced by [`CudaDevice::alloc`]).
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

/// Whether the wgmma attention kernels may run (compute capability 9.0 only): yes unless
/// `CASCADE_ATTENTION_WGMMA=0`.
pub fn wgmma_attention_allowed() -> bool {
    !std::env::var("CASCADE_ATTENTION_WGMMA").is_ok_and(|v| v == "0")
}

/// `CASCADE_ATTENTION_SOFTMAX` (read once): `lean` asks for the wgmma attention's lean softmax
/// (lazy rescaling and, with Q in registers, the rows' sums on the tensor cores; opt-in until
/// measured), `full` for the full one; unset: None (full, or timed under `CASCADE_KERNEL_TUNE`).
pub fn attention_softmax_requested() -> Option<bool> {
    static LEAN: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *LEAN.get_or_init(|| env_either("CASCADE_ATTENTION_SOFTMAX", "lean", "full"))
}

/// A switch of two values read from the environment: Some(true) for `on`, Some(false) for `off`,
/// None when unset or empty; any other value is warned about and ignored (None).
fn env_either(name: &str, on: &str, off: &str) -> Option<bool> {
    match std::env::var(name).ok().as_deref().map(str::trim) {
        None | Some("") => None,
        Some(v) if v == on => Some(true),
        Some(v) if v == off => Some(false),
        Some(v) => {
            eprintln!("warning: {name} must be {on} or {off}, not {v:?}; ignored");
            None
        }
    }
}

/// `CASCADE_ATTENTION_COPY` (read once): `tma` asks for the wgmma attention kernels that copy K
/// and V with TMA (opt-in until measured), `pair` for the same in clusters of two blocks that
/// share each tile's copy (where a launch allows them: [`attention_pair_requested`]), `cluster`
/// for clusters of two, three or four, whichever fits a head's query blocks best
/// ([`attention_cluster_requested`]), `cp` for the cp.async ones; unset: None (cp.async, or timed
/// under `CASCADE_KERNEL_TUNE`).
pub fn attention_copy_requested() -> Option<bool> {
    static TMA: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *TMA.get_or_init(|| if attention_pair_requested() { Some(true) } else { env_either("CASCADE_ATTENTION_COPY", "tma", "cp") })
}

/// Whether `CASCADE_ATTENTION_COPY=pair` (or `cluster`) asks for the TMA copies in clusters of two
/// blocks (read once; checked at start-up and taken only on that request until they have run on
/// a GPU).
pub fn attention_pair_requested() -> bool {
    static PAIR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PAIR.get_or_init(|| attention_cluster_requested() || std::env::var("CASCADE_ATTENTION_COPY").is_ok_and(|v| v.trim() == "pair"))
}

/// Whether `CASCADE_ATTENTION_COPY=cluster` asks for those copies in clusters of three or four
/// blocks where they fit a head's query blocks better than pairs (read once; checked at start-up
/// and taken only on that request until they have run on a GPU).
pub fn attention_cluster_requested() -> bool {
    static CLUSTER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CLUSTER.get_or_init(|| std::env::var("CASCADE_ATTENTION_COPY").is_ok_and(|v| v.trim() == "cluster"))
}

/// `CASCADE_ATTENTION_TAIL` (read once): `full` keeps the wgmma attention's last tile of keys 64
/// wide (for A/B measurements); unset or `narrow`: narrowed to the 32 or 16 keys it holds where
/// they fit (the default, behind its start-up check).
pub fn attention_tail_requested() -> bool {
    static NARROW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NARROW.get_or_init(|| env_either("CASCADE_ATTENTION_TAIL", "narrow", "full").unwrap_or(true))
}

/// Whether a kernel awaiting measurement is checked at start-up and then considered: asked for by
/// its own switch (`asked`), or every such kernel under `CASCADE_KERNEL_TUNE` (the sites then take
/// it where it timed faster, [`choice`]).
fn considered(asked: bool) -> bool {
    asked || KernelTuning::requested().on()
}

/// Whether the skinny GEMM is asked for (`CASCADE_GEMM_SKINNY=1`): CLIP's products take it
/// wherever it can run.
pub fn gemm_skinny_requested() -> bool {
    std::env::var("CASCADE_GEMM_SKINNY").is_ok_and(|v| v.trim() == "1")
}

/// Whether the warp-specialised GEMM as an MLP's first layer and its GELU is asked for
/// (`CASCADE_GEMM_WS_GELU=1`, or `force` to take it for every product it can run).
pub fn gemm_ws_gelu_requested() -> bool {
    std::env::var("CASCADE_GEMM_WS_GELU").is_ok_and(|v| matches!(v.trim(), "1" | "force"))
}

/// Whether the stream-K GEMM with GRN's factor on its input is asked for
/// (`CASCADE_GEMM_WS_FC2=1`): the ResBlocks' fc2 take it wherever it can run.
pub fn gemm_ws_fc2_requested() -> bool {
    std::env::var("CASCADE_GEMM_WS_FC2").is_ok_and(|v| v.trim() == "1")
}

/// Whether the stream-K GEMM for residual products with few output tiles is asked for
/// (`CASCADE_GEMM_SK=1`).
pub fn gemm_sk_requested() -> bool {
    std::env::var("CASCADE_GEMM_SK").is_ok_and(|v| v.trim() == "1")
}

/// Whether the two-warpgroup wgmma attention kernel is asked for (`CASCADE_ATTENTION=wgmma2`).
pub fn wgmma2_requested() -> bool {
    wgmma_attention_allowed() && std::env::var("CASCADE_ATTENTION").is_ok_and(|v| v == "wgmma2")
}

/// Whether the split-key wgmma attention kernels are asked for (`CASCADE_ATTENTION_SPLIT=1`, or
/// a larger number): checked when a compute capability 9.0 device opens, and
/// `AttentionKernel::Auto` then splits the keys (see [`attention_split_forced`]).
pub fn attention_split_requested() -> bool {
    wgmma_attention_allowed() && attention_split_setting() > 0
}

/// `CASCADE_ATTENTION_SPLIT=N` with N ≥ 2: every unmasked attention that a split-key kernel can
/// run is split into N ranges (for tests: the tiny models' grids would never be split by
/// [`crate::ops::wgmma_split_plan`], which `=1` follows).
pub fn attention_split_forced() -> Option<usize> {
    Some(attention_split_setting()).filter(|&n| n >= 2 && wgmma_attention_allowed())
}

fn attention_split_setting() -> usize {
    std::env::var("CASCADE_ATTENTION_SPLIT").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Whether the fused fc1 + GRN-statistics GEMM on wgmma is asked for (`CASCADE_GEMM_WGMMA=ws` or
/// `1`, or `=ws_deep`, `=sk`, `=ws_tall`, `=ws_pair` for its other versions: `ops::FusedGrnKernel::requested`): it is
/// checked when a compute capability 9.0 device opens, and the ResBlocks then take it where its
/// operands allow (`ops::linear_gelu_grn_factor`).
pub fn gemm_wgmma_requested() -> bool {
    std::env::var("CASCADE_GEMM_WGMMA").is_ok_and(|v| crate::ops::FusedGrnKernel::named(&v).is_some())
}

/// A TMA tensor map of a dense row-major bf16 matrix `[rows, cols]` at `ptr` (16-byte aligned,
/// `cols` a multiple of 8), read in boxes of `box_rows × box_cols` (`box_cols · 2` at most 128
/// bytes) laid out in the 128-byte swizzle that wgmma's operands use; elements outside the matrix
/// read as zeros. For kernels that copy with `tma_load_2d` (kernels/common.cuh).
pub(crate) fn tensor_map_bf16(ptr: u64, rows: usize, cols: usize, box_rows: u32, box_cols: u32) -> Result<params::TensorMap> {
    if ptr % 16 != 0 || cols % 8 != 0 || rows == 0 || cols == 0 || rows as u64 > 1 << 32 || cols as u64 > 1 << 32 {
        return Err(Error::Shape(format!(
            "a TMA tensor map needs a 16-byte aligned [{rows}, {cols}] bf16 matrix with cols a multiple of 8"
        )));
    }
    encode_tensor_map_bf16(ptr, &[cols as u64, rows as u64], &[cols as u64 * 2], &[box_cols, box_rows])
}

/// A rank-3 TMA tensor map of `planes` row-major bf16 matrices `[rows, cols]` at `ptr`, rows
/// `row_stride` elements apart and planes `rows · row_stride` (16-byte aligned, `row_stride` a
/// multiple of 8, `cols` at most `row_stride`), read in boxes of `box_rows × box_cols` of one plane
/// in the 128-byte swizzle; elements outside a plane (rows past its last) read as zeros. For the
/// attention's K and V tiles: a sample's keys, their packed projection's columns.
pub(crate) fn tensor_map_bf16_3d(
    ptr: u64,
    (planes, rows, cols): (usize, usize, usize),
    row_stride: usize,
    box_rows: u32,
    box_cols: u32,
) -> Result<params::TensorMap> {
    let big = |n: usize| n == 0 || n as u64 > 1 << 32;
    if ptr % 16 != 0 || row_stride % 8 != 0 || cols > row_stride || big(planes) || big(rows) || big(cols) {
        return Err(Error::Shape(format!(
            "a TMA tensor map needs 16-byte aligned [{planes}, {rows}, {cols}] bf16 matrices with a row stride ({row_stride}) that is a multiple of 8"
        )));
    }
    let strides = [row_stride as u64 * 2, (rows * row_stride) as u64 * 2];
    encode_tensor_map_bf16(ptr, &[cols as u64, rows as u64, planes as u64], &strides, &[box_cols, box_rows, 1])
}

/// cuTensorMapEncodeTiled for bf16 elements of the given extents (innermost first), byte strides
/// of the outer dimensions and box, in the 128-byte swizzle, elements outside read as zeros.
fn encode_tensor_map_bf16(ptr: u64, dims: &[u64], strides: &[u64], boxes: &[u32]) -> Result<params::TensorMap> {
    use sys::{CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle};
    assert!(dims.len() == boxes.len() && strides.len() + 1 == dims.len(), "a tensor map's extents, strides and box agree in rank");
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    let element_strides = vec![1u32; dims.len()];
    // SAFETY: every pointer is to a slice of the rank's length (strides: rank − 1, checked above),
    // `map` is the 64-byte aligned CUtensorMap the call fills; the driver only encodes the
    // arguments.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            dims.len() as u32,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(|e| driver_err("encoding a TMA tensor map", e))?;
    Ok(params::TensorMap { opaque: map.opaque })
}

/// Whether a usable CUDA driver and GPU are present (for tests and benches that skip).
pub fn is_available() -> bool {
    // SAFETY: only tries to dlopen the driver library.
    let present = unsafe { sys::is_culib_present() };
    present && CudaContext::device_count().is_ok_and(|n| n > 0)
}

/// Runs one version of the fused fc1 + GRN-statistics GEMM once beside the separate path (cuBLASLt, then GRN's
/// sums pass) on a small problem with partial tiles, two samples and a K that is not a multiple
/// of the kernel's step; true when u and the factor agree. A failure is reported and the kernel
/// is not used.
fn check_gemm_gelu_grn(dev: &Arc<CudaDevice>, version: crate::ops::FusedGrnKernel) -> bool {
    use crate::ops::{linear_gelu_grn_factor, FusedGrnKernel};
    use crate::{DType, Device, Tensor};
    let device = Device::Cuda(dev.clone());
    let run = || -> Result<f64> {
        let (b, rows, k, n) = (2, 192, 136, 264);
        let mut rng = crate::testing::TestRng::new(7);
        let mut t = |shape: &[usize], scale: f32| Tensor::from_f32(&rng.normal(shape.iter().product(), scale), shape, DType::BF16, &device);
        let (x, w, bias, gamma) = (t(&[b, rows, k], 1.0)?, t(&[n, k], 0.1)?, t(&[n], 0.5)?, t(&[n], 0.5)?);
        let (u0, f0) = linear_gelu_grn_factor(&x, &w, Some(&bias), &gamma, FusedGrnKernel::Separate)?;
        let (u0, f0) = (u0.to_vec_f32()?, f0.to_vec_f32()?);
        // Only the versions Auto may take: a fault in another would end the context for nothing.
        let (u1, f1) = linear_gelu_grn_factor(&x, &w, Some(&bias), &gamma, version)?;
        let (u1, f1) = (u1.to_vec_f32()?, f1.to_vec_f32()?);
        if u1.iter().chain(&f1).any(|v| !v.is_finite()) {
            return Ok(f64::INFINITY);
        }
        // u may differ from cuBLASLt's by a rounding here and there (another order of sums); the
        // factor, a sum over many positions, only in its last bits: held 10× tighter.
        Ok(crate::testing::rel_l2(&u1, &u0).max(10.0 * crate::testing::rel_l2(&f1, &f0)))
    };
    let what = match version {
        FusedGrnKernel::WgmmaSk => "the fused fc1 + GRN GEMM (wgmma, stream-K)",
        FusedGrnKernel::WgmmaWsTall => "the fused fc1 + GRN GEMM (wgmma, 256-row tiles)",
        FusedGrnKernel::WgmmaWsPair => "the fused fc1 + GRN GEMM (wgmma, 256-row tiles in pairs)",
        _ => "the fused fc1 + GRN GEMM (wgmma)",
    };
    passed_check(dev, what, "cuBLASLt and GRN's pass", run(), 1e-2)
}

/// Runs the warp-specialised GEMM as an MLP's first layer (GELU, no GRN) once beside cuBLASLt and
/// the erf GELU pass, on a problem with partial tiles in both directions and a wrapping ring of
/// stages; true when they agree.
fn check_gemm_ws_gelu(dev: &Arc<CudaDevice>) -> bool {
    use crate::{DType, Device, Tensor};
    let device = Device::Cuda(dev.clone());
    let run = || -> Result<f64> {
        let (m, k, n) = (200, 264, 136);
        let mut rng = crate::testing::TestRng::new(13);
        let mut t = |shape: &[usize], scale: f32| Tensor::from_f32(&rng.normal(shape.iter().product(), scale), shape, DType::BF16, &device);
        let (x, w, bias) = (t(&[m, k], 1.0)?, t(&[n, k], 0.1)?, t(&[n], 0.5)?);
        let mut want = Tensor::empty(&[m, n], DType::BF16, &device)?;
        crate::ops::linear_into(&x, &w, Some(&bias), &mut want)?;
        crate::ops::gelu_assign(&mut want)?;
        let mut got = Tensor::empty(&[m, n], DType::BF16, &device)?;
        got.fill(f32::NAN)?;
        crate::ops::linear_gelu_ws_into(&x, &w, Some(&bias), &mut got)?;
        let got = got.to_vec_f32()?;
        if got.iter().any(|v| !v.is_finite()) {
            return Ok(f64::INFINITY);
        }
        Ok(crate::testing::rel_l2(&got, &want.to_vec_f32()?))
    };
    passed_check(dev, "the warp-specialised GEMM with a GELU (wgmma)", "cuBLASLt and the GELU pass", run(), 1e-2)
}

/// Runs the stream-K GEMM with GRN's factor on its input once beside the factor applied first and
/// cuBLASLt, on two samples with partial tiles, into an f32 output it adds to and a bf16 one it
/// writes, then without a factor into a bf16 output it adds to, on a grid that cuts every tile
/// into pieces; true when all three agree.
fn check_gemm_scaled(dev: &Arc<CudaDevice>) -> bool {
    use crate::{DType, Device, Tensor};
    let device = Device::Cuda(dev.clone());
    let run = || -> Result<f64> {
        let (b, rows, k, n) = (2, 48, 520, 264);
        let mut rng = crate::testing::TestRng::new(17);
        let mut t =
            |shape: &[usize], scale: f32, dt: DType| Tensor::from_f32(&rng.normal(shape.iter().product(), scale), shape, dt, &device);
        let (x, w) = (t(&[b, rows, k], 1.0, DType::BF16)?, t(&[n, k], 0.05, DType::BF16)?);
        let factor = t(&[b, k], 1.0, DType::F32)?;
        let xf = crate::ops::norm::scale_by_factor(&x, &factor)?;
        let mut worst = 0f64;
        for (dt, accumulate, scaled) in [(DType::F32, true, true), (DType::BF16, false, true), (DType::BF16, true, false)] {
            let (bias, y0) = (t(&[n], 0.5, dt)?, t(&[b, rows, n], 1.0, dt)?);
            let mut want = Tensor::empty(&[b, rows, n], dt, &device)?;
            let mut got = Tensor::empty(&[b, rows, n], dt, &device)?;
            crate::ops::cast_into(&y0, &mut want)?;
            crate::ops::cast_into(&y0, &mut got)?;
            linear_reference(if scaled { &xf } else { &x }, &w, &bias, &mut want, accumulate)?;
            crate::ops::linear_scaled_sk_into(&x, scaled.then_some(&factor), &w, Some(&bias), &mut got, accumulate, Some(7))?;
            let got = got.to_vec_f32()?;
            if got.iter().any(|v| !v.is_finite()) {
                return Ok(f64::INFINITY);
            }
            worst = worst.max(crate::testing::rel_l2(&got, &want.to_vec_f32()?));
        }
        Ok(worst)
    };
    passed_check(dev, "the stream-K GEMM with GRN's factor on its input (wgmma)", "the factor applied first and cuBLASLt", run(), 1e-2)
}

/// `y (+)= x · wᵀ + bias` through cuBLASLt (the start-up checks' reference).
fn linear_reference(x: &crate::Tensor, w: &crate::Tensor, bias: &crate::Tensor, y: &mut crate::Tensor, accumulate: bool) -> Result<()> {
    if accumulate {
        crate::ops::linear_accumulate_into(x, w, Some(bias), y)
    } else {
        crate::ops::linear_into(x, w, Some(bias), y)
    }
}

/// Runs the skinny GEMM once beside cuBLASLt on a small problem whose K is cut into ranges, with
/// a bias, then with the GELU, then added to an output; true when all three agree.
fn check_gemm_skinny(dev: &Arc<CudaDevice>) -> bool {
    use crate::{DType, Device, Tensor};
    let device = Device::Cuda(dev.clone());
    let run = || -> Result<f64> {
        let (m, k, n) = (37, 192, 320);
        let mut rng = crate::testing::TestRng::new(11);
        let mut t = |shape: &[usize], scale: f32| Tensor::from_f32(&rng.normal(shape.iter().product(), scale), shape, DType::BF16, &device);
        let (x, w, bias, r) = (t(&[m, k], 1.0)?, t(&[n, k], 0.1)?, t(&[n], 0.5)?, t(&[m, n], 1.0)?);
        let mut worst = 0f64;
        for (gelu, accumulate) in [(false, false), (true, false), (false, true)] {
            let mut want = Tensor::empty(&[m, n], DType::BF16, &device)?;
            let mut got = Tensor::empty(&[m, n], DType::BF16, &device)?;
            crate::ops::cast_into(&r, &mut want)?;
            crate::ops::cast_into(&r, &mut got)?;
            // SAFETY: x, w, bias and both outputs are the [m, k], [n, k], [n] and [m, n] tensors above.
            unsafe {
                dev.blas().linear(
                    x.cuda_ptr()?,
                    w.cuda_ptr()?,
                    Some(bias.cuda_ptr()?),
                    want.cuda_ptr()?,
                    (m, k, n),
                    (k, n),
                    (DType::BF16, DType::BF16),
                    false,
                    accumulate,
                    gelu,
                )?;
            }
            crate::ops::gemm_skinny(dev, &x, &w, Some(&bias), &mut got, (m, k, n), gelu, accumulate)?;
            let (got, want) = (got.to_vec_f32()?, want.to_vec_f32()?);
            if got.iter().any(|v| !v.is_finite()) {
                return Err(Error::Msg("non-finite output".into()));
            }
            worst = worst.max(crate::testing::rel_l2(&got, &want));
        }
        Ok(worst)
    };
    passed_check(dev, "the skinny GEMM (wgmma)", "cuBLASLt", run(), 1e-2)
}

/// A start-up check's verdict: true when `result` (the relative error of `what` against
/// `reference`) is below `bound`; otherwise a warning that says the kernel is not used.
fn passed_check(dev: &CudaDevice, what: &str, reference: &str, result: Result<f64>, bound: f64) -> bool {
    match result {
        Ok(err) if err < bound => true,
        Ok(err) => {
            eprintln!("warning: {what} disagrees with {reference} on {} (relative error {err:.2e}); not using it", dev.name);
            false
        }
        Err(e) => {
            eprintln!("warning: {what} failed its start-up check on {} ({e}); not using it", dev.name);
            false
        }
    }
}

/// Runs a tensor-core attention kernel once beside the CUDA-core kernel on a small problem with
/// odd sizes; a disagreement disables it with a warning rather than giving wrong images.
fn check_attention_kernel(dev: &Arc<CudaDevice>, kernel: crate::ops::AttentionKernel, what: &str) -> bool {
    check_attention_options(
        dev,
        kernel,
        WgmmaOptions {
            lean_softmax: Some(false),
            narrow_tail: Some(false),
            tma_copies: Some(false),
            pair_copies: Some(false),
            cluster_copies: Some(false),
        },
        what,
    )
}

/// [`check_attention_options`] on both one-warpgroup wgmma kernels, Q in registers and in shared
/// memory; `what` names the options in the warning.
fn check_wgmma_attention_options(dev: &Arc<CudaDevice>, options: WgmmaOptions, what: &str) -> bool {
    use crate::ops::AttentionKernel;
    check_attention_options(dev, AttentionKernel::Wgmma, options, &format!("Hopper tensor-core (wgmma, {what})"))
        && check_attention_options(
            dev,
            AttentionKernel::WgmmaSharedQ,
            options,
            &format!("Hopper tensor-core (wgmma, Q in shared memory, {what})"),
        )
}

/// [`check_attention_kernel`] with the wgmma kernels' lean softmax on or off (`lean`).
fn check_attention_softmax(dev: &Arc<CudaDevice>, kernel: crate::ops::AttentionKernel, lean: bool, what: &str) -> bool {
    check_attention_options(
        dev,
        kernel,
        WgmmaOptions {
            lean_softmax: Some(lean),
            narrow_tail: Some(false),
            tma_copies: Some(false),
            pair_copies: Some(false),
            cluster_copies: Some(false),
        },
        what,
    )
}

/// [`check_attention_kernel`] with the wgmma kernels' options as given. The key counts end
/// their last tile in 27 and 8 keys (and CLIP's causal 77 in 13), so a narrow last tile is
/// taken at both widths.
fn check_attention_options(dev: &Arc<CudaDevice>, kernel: crate::ops::AttentionKernel, options: WgmmaOptions, what: &str) -> bool {
    use crate::ops::{attention_into_with, attention_into_with_options, AttentionKernel, AttentionMask};
    use crate::{DType, Device, Tensor};
    let device = Device::Cuda(dev.clone());
    // Unmasked (Stage B and C's use), and for the mma kernel also causal with padding (CLIP's):
    // the larger of the errors against the CUDA-core kernel.
    let run = || -> Result<f64> {
        let (b, heads) = (2, 2);
        let mut rng = crate::testing::TestRng::new(5);
        let mut t = |l: usize| Tensor::from_f32(&rng.normal(b * l * heads * 64, 1.0), &[b, l, heads * 64], DType::BF16, &device);
        let mut worst = 0f64;
        let masked = kernel.is_mma();
        // Trios and quads also on 150 and 250 queries: three and four query blocks of a head (70
        // queries pair their two blocks).
        let wider = options.cluster_copies == Some(true);
        let shapes = [(70, 91, false), (70, 72, false), (77, 77, true), (150, 91, false), (250, 91, false)];
        for (lq, lk, causal) in shapes.into_iter().take(if wider { 5 } else { 3 }) {
            if causal && !masked {
                continue;
            }
            let (q, k, v) = (t(lq)?, t(lk)?, t(lk)?);
            // Sequence s keeps its first lk − 9s keys.
            let keep: Vec<f32> = (0..b * lk).map(|j| if j % lk < lk - 9 * (j / lk) { 1.0 } else { 0.0 }).collect();
            let keep = Tensor::from_f32(&keep, &[b, lk], DType::F32, &device)?;
            let mask = if causal { AttentionMask::CausalPadding(&keep) } else { AttentionMask::None };
            let mut simple = Tensor::empty(&[b, lq, heads * 64], DType::BF16, &device)?;
            let mut fast = Tensor::empty(&[b, lq, heads * 64], DType::BF16, &device)?;
            attention_into_with(&q, &k, &v, heads, 0.125, mask, AttentionKernel::Simple, &mut simple)?;
            attention_into_with_options(&q, &k, &v, heads, 0.125, mask, kernel, options, &mut fast)?;
            let (a, f) = (simple.to_vec_f32()?, fast.to_vec_f32()?);
            if f.iter().any(|x| !x.is_finite()) {
                return Ok(f64::INFINITY);
            }
            worst = worst.max(crate::testing::rel_l2(&f, &a));
        }
        Ok(worst)
    };
    passed_check(dev, &format!("the {what} attention kernel"), "the reference kernel", run(), 2e-2)
}
