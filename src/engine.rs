//! The engine services embed: load once, then [`Engine::generate`] from any number of threads.
//! Calls are queued first come, first served on the one device; an observer sees every step;
//! a [`CancelToken`] stops a call between steps with [`Error::Cancelled`], and the engine stays
//! ready for the next request.
//!
//! ```no_run
//! use cascade::engine::{Engine, EngineConfig};
//! use cascade::pipeline::{CancelToken, Request};
//!
//! # fn main() -> cascade::Result<()> {
//! let engine = Engine::load(EngineConfig { model_dirs: vec!["stable-cascade-prior".into(), "stable-cascade".into()], ..Default::default() })?;
//! let request = Request { prompt: "an astronaut riding a horse".into(), seed: 42, ..Default::default() };
//! let cancel = CancelToken::new();
//! let mut progress = |p: &cascade::pipeline::Progress| eprintln!("{:?} {}/{}", p.phase, p.step, p.total);
//! let out = engine.generate(&request, Some(&mut progress), Some(&cancel))?;
//! out.images[0].save("astronaut.png").expect("write the PNG");
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use crate::pipeline::{CancelToken, Hooks, LoadOptions, ModelPaths, Pipeline, Progress, Request, Residency, Timings, TorchNoise};
use crate::{DType, Device, Error, Result};

/// How to load an [`Engine`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// One folder holding every component, or the two snapshots; empty: the built-in tiny
    /// model with random weights (its pictures are noise).
    pub model_dirs: Vec<PathBuf>,
    /// Use `prior_lite/` (Stage C lite).
    pub lite_prior: bool,
    /// Use `decoder_lite/` (Stage B lite).
    pub lite_decoder: bool,
    /// "cpu", "cuda", "cuda:N", or "auto" (the first GPU when there is one).
    pub device: String,
    /// Compute dtype; None: bf16 on a GPU, f32 on the CPU.
    pub dtype: Option<DType>,
    /// What stays in device memory between calls.
    pub residency: Residency,
    /// Capture each denoising step as a CUDA graph (GPU only).
    pub cuda_graphs: bool,
    /// Scan every weight for NaN/Inf while loading.
    pub check_weights: bool,
    /// Keep the UNets' residual stream in f32 with bf16 weights (the default; see
    /// [`crate::pipeline::LoadOptions::f32_residual`]). `false` keeps it in bf16, as diffusers
    /// does: a little faster, about three times the error.
    pub f32_residual: bool,
    /// Keep the GPU's choices made by timing (cuBLASLt's algorithm per GEMM shape) in this
    /// file, and reuse the ones it holds: a later load on the same card, driver and version
    /// starts sooner and runs the same algorithms (see
    /// [`crate::cuda::CudaDevice::set_tuning_file`]). None: `CASCADE_TUNING_FILE` if set.
    pub tuning_file: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            model_dirs: Vec::new(),
            lite_prior: false,
            lite_decoder: false,
            device: "auto".into(),
            dtype: None,
            residency: Residency::All,
            cuda_graphs: true,
            check_weights: false,
            f32_residual: crate::models::unet::f32_residual_default(),
            tuning_file: None,
        }
    }
}

/// What one call returns.
pub struct GenerateOutput {
    /// RGB images, one per requested image.
    pub images: Vec<image::RgbImage>,
    /// The seed the noise was drawn from.
    pub seed: u64,
    /// Where the time went.
    pub timings: Timings,
    /// Things the caller should know (a prompt cut to CLIP's 75 tokens, …).
    pub warnings: Vec<String>,
}

/// First come, first served: a ticket lock.
#[derive(Default)]
struct FairQueue {
    next: AtomicU64,
    serving: Mutex<u64>,
    turn: Condvar,
}

struct Turn<'a>(&'a FairQueue);

impl FairQueue {
    fn enter(&self) -> Turn<'_> {
        let ticket = self.next.fetch_add(1, Ordering::SeqCst);
        let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        while *serving != ticket {
            serving = self.turn.wait(serving).unwrap_or_else(|p| p.into_inner());
        }
        Turn(self)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.serving.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.turn.notify_all();
    }
}

/// A loaded text-to-image engine. `Send + Sync`: share it behind an `Arc`.
pub struct Engine {
    pipeline: Pipeline,
    queue: FairQueue,
    builtin: bool,
}

impl Engine {
    /// Loads the models (or the built-in tiny model when `model_dirs` is empty).
    pub fn load(config: EngineConfig) -> Result<Engine> {
        let device = match config.device.as_str() {
            "auto" => Device::cuda(0).unwrap_or(Device::Cpu),
            other => Device::parse(other)?,
        };
        if let Some(path) = &config.tuning_file {
            device.set_tuning_file(Some(path))?;
        }
        let dtype = config.dtype.unwrap_or(if device.is_cpu() { DType::F32 } else { DType::BF16 });
        let builtin = config.model_dirs.is_empty();
        let mut pipeline = if builtin {
            let mut pipeline = Pipeline::builtin(dtype, &device)?;
            // (load_with takes the option itself.)
            pipeline.set_f32_residual(config.f32_residual)?;
            pipeline
        } else {
            let paths = ModelPaths::find(&config.model_dirs, config.lite_prior, config.lite_decoder)?;
            Pipeline::load_with(
                &paths,
                dtype,
                &device,
                LoadOptions { residency: config.residency, check_weights: config.check_weights, f32_residual: config.f32_residual },
            )?
        };
        pipeline.set_cuda_graphs(config.cuda_graphs);
        // Callers get images only: no host copies of the intermediates.
        pipeline.set_keep_tensors(false);
        Ok(Engine { pipeline, queue: FairQueue::default(), builtin })
    }

    /// Whether this is the built-in random-weight model (its images are noise).
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// The device the engine runs on.
    pub fn device(&self) -> &Device {
        self.pipeline.device()
    }

    /// Generates `request.num_images` images. Waits for earlier calls (first come, first
    /// served). `observer` is called after every step (a panic in it stops this call with an
    /// error; the engine stays usable); `cancel` is checked while waiting and between steps.
    pub fn generate(
        &self,
        request: &Request,
        observer: Option<&mut (dyn FnMut(&Progress) + Send)>,
        cancel: Option<&CancelToken>,
    ) -> Result<GenerateOutput> {
        let _turn = self.queue.enter();
        if cancel.is_some_and(|c| c.is_cancelled()) {
            return Err(Error::Cancelled);
        }
        let mut hooks = Hooks::new(observer, cancel);
        let out = self.pipeline.generate_with(request, &mut TorchNoise::new(request.seed), &mut hooks)?;
        Ok(GenerateOutput { images: out.images, seed: request.seed, timings: out.timings, warnings: out.warnings })
    }

    /// Prepares the engine for requests shaped like `request` (size, number of images, whether
    /// each stage uses guidance) before the first real one arrives: one call with a single step
    /// per stage, whose images are discarded. On a GPU that call captures each stage's step
    /// graph, which the engine keeps, and times every GEMM shape the stages use, so the first
    /// real request at that shape pays neither. Returns how long the warm-up took.
    pub fn warm_up(&self, request: &Request) -> Result<std::time::Duration> {
        let start = std::time::Instant::now();
        let one_step = Request { prior_steps: 1, decoder_steps: 1, ..request.clone() };
        self.generate(&one_step, None, None)?;
        Ok(start.elapsed())
    }

    /// Runs `f` on the pipeline in turn with other calls: the stage-level entry points
    /// ([`Pipeline::encode_prompt`], [`Pipeline::prior_step`], [`Pipeline::decoder_step`],
    /// [`Pipeline::decode_latents`]) for benchmarks and tests of one piece.
    pub fn with_pipeline<T>(&self, f: impl FnOnce(&Pipeline) -> Result<T>) -> Result<T> {
        let _turn = self.queue.enter();
        f(&self.pipeline)
    }
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Engine>();
}
