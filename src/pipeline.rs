//! Text to image (spec §5): tokenizer → CLIP → Stage C with classifier-free guidance → Stage B →
//! Stage A, as diffusers' `StableCascadePriorPipeline` + `StableCascadeDecoderPipeline` run it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::models::clip::{ClipOutput, ClipTextModel};
use crate::models::config::{ClipTextConfig, UNetConfig, VqganConfig};
use crate::models::unet::{Conditioning, StableCascadeUNet};
use crate::models::vqgan::Vqgan;
use crate::models::{concat_batch, nhwc_to_nchw};
use crate::runtime::tensor::CpuData;
use crate::sampling::DdpmWuerstchen;
use crate::tokenizer::ClipTokenizer;
use crate::{ops, DType, Device, Error, Result, Tensor};

/// Stage C's latent is `ceil(size / 42.67)` (model_index.json `resolution_multiple`).
pub const RESOLUTION_MULTIPLE: f64 = 42.67;
/// Stage B's latent is `int(stage_c_size · 10.67)` (model_index.json `latent_dim_scale`).
pub const LATENT_DIM_SCALE: f64 = 10.67;

/// The four networks' configurations, for [`Pipeline::random`].
#[derive(Clone, Debug)]
pub struct Architectures {
    /// The CLIP text encoder.
    pub text_encoder: ClipTextConfig,
    /// Stage C.
    pub prior: UNetConfig,
    /// Stage B.
    pub decoder: UNetConfig,
    /// Stage A.
    pub vqgan: VqganConfig,
}

impl Architectures {
    /// The tiny test architecture (tests/fixtures/tiny, embedded in the binary).
    pub fn tiny() -> Result<Architectures> {
        fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
            serde_json::from_str(text).map_err(|e| Error::Msg(format!("built-in {what} config: {e}")))
        }
        Ok(Architectures {
            text_encoder: parse("text encoder", include_str!("../tests/fixtures/tiny/text_encoder/config.json"))?,
            prior: parse("prior", include_str!("../tests/fixtures/tiny/prior/config.json"))?,
            decoder: parse("decoder", include_str!("../tests/fixtures/tiny/decoder/config.json"))?,
            vqgan: parse("vqgan", include_str!("../tests/fixtures/tiny/vqgan/config.json"))?,
        })
    }

    /// The released models: CLIP ViT-bigG, Stage C (3.6B, or the 1B lite), Stage B (1.5B, or
    /// the 700M lite), Stage A.
    pub fn released(lite_prior: bool, lite_decoder: bool) -> Architectures {
        Architectures {
            text_encoder: ClipTextConfig::bigg(),
            prior: if lite_prior { UNetConfig::stage_c_lite() } else { UNetConfig::stage_c() },
            decoder: if lite_decoder { UNetConfig::stage_b_lite() } else { UNetConfig::stage_b() },
            vqgan: VqganConfig::default(),
        }
    }
}

/// Where each component lives.
#[derive(Clone, Debug)]
pub struct ModelPaths {
    /// `text_encoder/`.
    pub text_encoder: PathBuf,
    /// `tokenizer/`.
    pub tokenizer: PathBuf,
    /// `prior/` or `prior_lite/`.
    pub prior: PathBuf,
    /// `decoder/` or `decoder_lite/`.
    pub decoder: PathBuf,
    /// `vqgan/`.
    pub vqgan: PathBuf,
    /// The prior snapshot's `scheduler/`, if any.
    pub prior_scheduler: Option<PathBuf>,
    /// The decoder snapshot's `scheduler/`, if any.
    pub decoder_scheduler: Option<PathBuf>,
}

impl ModelPaths {
    /// Finds the components in one directory holding all of them, or in the two Hugging Face
    /// snapshots (`stable-cascade-prior`, `stable-cascade`) given separately. Stage A, B and C
    /// may also be the original single files (`stage_a.safetensors`,
    /// `stage_b[_lite][_bf16].safetensors`, `stage_c[_lite][_bf16].safetensors`) in any of the
    /// directories, with the text encoder and tokenizer from their own folders. `lite_*` selects
    /// `prior_lite/` / `decoder_lite/` (or the `_lite` files).
    pub fn find(dirs: &[PathBuf], lite_prior: bool, lite_decoder: bool) -> Result<ModelPaths> {
        if dirs.is_empty() {
            return Err(Error::Msg("no model directory given (--model-dir)".into()));
        }
        for d in dirs {
            if !d.is_dir() {
                return Err(Error::file(d, "model directory not found"));
            }
        }
        // A diffusers component folder, else an original single file (f32 preferred over the
        // _bf16 file: f32 runs see the exact weights).
        let original = |name: &str| -> Option<&'static [&'static str]> {
            Some(match name {
                "prior" => &["stage_c.safetensors", "stage_c_bf16.safetensors"],
                "prior_lite" => &["stage_c_lite.safetensors", "stage_c_lite_bf16.safetensors"],
                "decoder" => &["stage_b.safetensors", "stage_b_bf16.safetensors"],
                "decoder_lite" => &["stage_b_lite.safetensors", "stage_b_lite_bf16.safetensors"],
                "vqgan" => &["stage_a.safetensors"],
                _ => return None,
            })
        };
        let find = |name: &str| {
            dirs.iter().map(|d| d.join(name)).find(|p| p.is_dir()).or_else(|| {
                let files = original(name)?;
                dirs.iter().flat_map(|d| files.iter().map(move |f| d.join(f))).find(|p| p.is_file())
            })
        };
        let mut missing = Vec::new();
        let mut need = |name: &str| {
            find(name).unwrap_or_else(|| {
                missing.push(name.to_string());
                PathBuf::new()
            })
        };
        let prior_name = if lite_prior { "prior_lite" } else { "prior" };
        let decoder_name = if lite_decoder { "decoder_lite" } else { "decoder" };
        let paths = ModelPaths {
            text_encoder: need("text_encoder"),
            tokenizer: need("tokenizer"),
            prior: need(prior_name),
            decoder: need(decoder_name),
            vqgan: need("vqgan"),
            prior_scheduler: None,
            decoder_scheduler: None,
        };
        if !missing.is_empty() {
            let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            return Err(Error::Msg(format!(
                "missing component folder(s) {} in {}: give one directory holding all components, or both the stable-cascade-prior and stable-cascade snapshots",
                missing.join(", "),
                list.join(" and ")
            )));
        }
        let sched_beside = |component: &Path| component.parent().map(|p| p.join("scheduler")).filter(|p| p.is_dir());
        Ok(ModelPaths { prior_scheduler: sched_beside(&paths.prior), decoder_scheduler: sched_beside(&paths.decoder), ..paths })
    }
}

/// A text-to-image request.
#[derive(Clone, Debug)]
pub struct Request {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt ("" as diffusers' default).
    pub negative_prompt: String,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Images per prompt.
    pub num_images: usize,
    /// Stage C steps (20).
    pub prior_steps: usize,
    /// Stage C guidance (4.0; guidance applies when > 1).
    pub prior_guidance: f32,
    /// Stage B steps (10).
    pub decoder_steps: usize,
    /// Stage B guidance (0.0: none, as diffusers; the official notebook uses 1.1).
    pub decoder_guidance: f32,
    /// Seed of the default noise source.
    pub seed: u64,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            prompt: String::new(),
            negative_prompt: String::new(),
            width: 1024,
            height: 1024,
            num_images: 1,
            prior_steps: 20,
            prior_guidance: 4.0,
            decoder_steps: 10,
            decoder_guidance: 0.0,
            seed: 0,
        }
    }
}

/// Where the random draws come from. Names follow `--noise`: `noise_prior_init`,
/// `noise_prior_step{i}`, `noise_decoder_init`, `noise_decoder_step{i}`; shapes are NCHW.
pub trait NoiseSource {
    /// A standard normal tensor of `shape` (NCHW) as f32 values.
    fn draw(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;

    /// A hint that the next draw (after any draws already hinted) will be `name` of `shape`: a
    /// source whose draws are costly may make it now and hand it out at that draw. The pipeline
    /// calls this while the device runs Stage C's last step, for Stage B's initial noise and its
    /// first step's noise (262,144 values each at 1024², a few ms on the host that would
    /// otherwise keep the device waiting between the stages). It must not change what any later
    /// draw returns. The default does nothing.
    fn prefetch(&mut self, _name: &str, _shape: &[usize]) -> Result<()> {
        Ok(())
    }
}

/// Noise read from a safetensors file (every draw diffusers made, by name).
pub struct FileNoise(pub std::sync::Arc<crate::weights::WeightStore>);

impl NoiseSource for FileNoise {
    fn draw(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let e = self.0.entry(name).ok_or_else(|| Error::Msg(format!("the noise file lacks '{name}' (shape {shape:?})")))?;
        if e.shape != shape {
            return Err(Error::Shape(format!("noise '{name}' has shape {:?}, the pipeline needs {shape:?}", e.shape)));
        }
        self.0.load(name, DType::F32, &Device::Cpu)?.to_vec_f32()
    }
}

/// The default noise: PyTorch's CPU generator seeded with `seed`, drawn in diffusers' order
/// (prior latents, every prior step, decoder latents, every decoder step) from one generator,
/// as `generator=torch.Generator("cpu").manual_seed(seed)` shared by both pipelines draws it.
/// So a seed reproduces diffusers' images. For a bf16 model the draws are the f32 draws rounded
/// to bf16, which is exactly what PyTorch's bf16 `randn` gives for tensors whose size is a
/// multiple of 16 (every latent the pipeline draws).
pub struct TorchNoise {
    generator: crate::sampling::torch_rng::TorchGenerator,
    /// Prefetched draws in stream order: each one's shape, its values, and the generator as it
    /// was before it (a draw of another size than the first rewinds to that state and drops
    /// them all, so prefetching never changes the stream).
    ahead: std::collections::VecDeque<(Vec<usize>, Vec<f32>, crate::sampling::torch_rng::TorchGenerator)>,
}

impl TorchNoise {
    /// A source for `seed`.
    pub fn new(seed: u64) -> Self {
        TorchNoise { generator: crate::sampling::torch_rng::TorchGenerator::new(seed), ahead: Default::default() }
    }
}

impl NoiseSource for TorchNoise {
    /// The draws are one stream in call order (names are not used).
    fn draw(&mut self, _name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.ahead.pop_front() {
            Some((s, v, _)) if s == shape => Ok(v),
            Some((_, _, before)) => {
                self.generator = before;
                self.ahead.clear();
                Ok(self.generator.randn(shape.iter().product()))
            }
            None => Ok(self.generator.randn(shape.iter().product())),
        }
    }

    fn prefetch(&mut self, _name: &str, shape: &[usize]) -> Result<()> {
        let before = self.generator.clone();
        let v = self.generator.randn(shape.iter().product());
        self.ahead.push_back((shape.to_vec(), v, before));
        Ok(())
    }
}

/// Where the time of one [`Pipeline::generate`] went.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Tokenizing and encoding the prompt (and the negative prompt). With a resident text encoder
    /// on a GPU, until its work is queued: its graph runs on the device while the host queues
    /// Stage C's setup, and what remains of it is in [`Timings::prior_setup`].
    pub text_encode: Duration,
    /// Each Stage C step (model call with guidance, and the sampler update).
    pub prior_steps: Vec<Duration>,
    /// Stage C's work before its first step: the initial noise, the run's constants (condition
    /// K/V rows), the step buffers, and on a first call the step graph's capture (and the end of
    /// a resident text encoder's device work, which runs meanwhile).
    pub prior_setup: Duration,
    /// Each Stage B step.
    pub decoder_steps: Vec<Duration>,
    /// Stage B's work before its first step (as `prior_setup`; its constants include the effnet
    /// and pixel terms at the latent's size). With both UNets resident that work is queued during
    /// Stage C's last step, and this counts only what is left after that step.
    pub decoder_setup: Duration,
    /// Stage A's decode and the conversion to 8-bit images.
    pub stage_a: Duration,
    /// The part of `stage_a` after the decode's kernels: the copy to the host (which waits for
    /// them), the finiteness check and the conversion to 8-bit images.
    pub images: Duration,
    /// End to end.
    pub total: Duration,
    /// Peak bytes of the engine's GPU buffers during the call (None on the CPU).
    pub peak_gpu_bytes: Option<usize>,
    /// Peak device memory taken as the driver sees it (total − free, sampled after every step:
    /// includes the allocator's cache of freed memory, cuBLASLt's workspace, the context and any
    /// other process on the card), None on the CPU.
    pub peak_device_used_bytes: Option<usize>,
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

impl Timings {
    /// A few readable lines: every stage's total, per-step median, and the peak GPU memory.
    pub fn summary(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut out = format!("text encode   {:9.1} ms\n", ms(self.text_encode));
        let mut accounted = self.text_encode + self.stage_a;
        for (name, steps, setup) in [("stage C", &self.prior_steps, self.prior_setup), ("stage B", &self.decoder_steps, self.decoder_setup)]
        {
            let total: Duration = steps.iter().sum();
            accounted += total + setup;
            out += &format!(
                "{name}       {:9.1} ms  ({} steps, median {:.1} ms/step; before the first step {:.1} ms)\n",
                ms(total),
                steps.len(),
                ms(median(steps)),
                ms(setup)
            );
        }
        out += &format!(
            "stage A       {:9.1} ms  (of which {:.1} ms to the host and to 8-bit images)\nbetween stages{:9.1} ms  (copies and checks of the latents, conditioning)\nend to end    {:9.1} ms\n",
            ms(self.stage_a),
            ms(self.images),
            ms(self.total.saturating_sub(accounted)),
            ms(self.total)
        );
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        if let Some(b) = self.peak_gpu_bytes {
            out += &format!("peak GPU memory {:.2} GiB in engine buffers (weights included)", gib(b));
            match self.peak_device_used_bytes {
                Some(d) => out += &format!(", {:.2} GiB held on the device (with the allocator's cache and other processes)\n", gib(d)),
                None => out += "\n",
            }
        }
        out
    }
}

/// The images and, for checking against diffusers, the intermediate tensors (NCHW / as diffusers
/// names them, f32 on the host).
pub struct Output {
    /// RGB images.
    pub images: Vec<image::RgbImage>,
    /// Where the time went.
    pub timings: Timings,
    /// Things the caller should know (a prompt cut to CLIP's 75 tokens, …).
    pub warnings: Vec<String>,
    /// `prompt_embeds`, `prompt_embeds_pooled`, `negative_prompt_embeds`,
    /// `negative_prompt_embeds_pooled` (with guidance), `image_embeddings`, `decoder_latents`,
    /// `images_unclamped`, `images`; empty after [`Pipeline::set_keep_tensors`]`(false)`.
    pub tensors: Vec<(String, Tensor)>,
}

/// The phases of a generation, as reported to observers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Tokenizing and encoding the prompts (one step).
    TextEncode,
    /// Stage C's denoising steps.
    Prior,
    /// Stage B's denoising steps.
    Decoder,
    /// Stage A's decode (one step).
    StageA,
}

/// One progress report: `step` of `total` of `phase` is done, `elapsed` since the call began.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Steps of the phase done (1-based).
    pub step: usize,
    /// Steps in the phase.
    pub total: usize,
    /// Time since the call began.
    pub elapsed: Duration,
}

/// Cancels a running [`Pipeline::generate_with`] (or `Engine::generate`) at the next step
/// boundary; clone it to hand it to another thread.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a generation reports to and checks with its caller between steps.
pub struct Hooks<'o, 'c> {
    observer: Option<&'o mut (dyn FnMut(&Progress) + Send + 'o)>,
    cancel: Option<&'c CancelToken>,
    start: Instant,
}

impl<'o, 'c> Hooks<'o, 'c> {
    /// An observer called after every step, and a cancellation token checked between steps.
    pub fn new(observer: Option<&'o mut (dyn FnMut(&Progress) + Send + 'o)>, cancel: Option<&'c CancelToken>) -> Self {
        Hooks { observer, cancel, start: Instant::now() }
    }

    /// No observer, no cancellation.
    pub fn none() -> Hooks<'static, 'static> {
        Hooks { observer: None, cancel: None, start: Instant::now() }
    }

    /// Checks cancellation, then reports a finished step. A panic in the observer is contained
    /// and becomes an error (the engine stays usable).
    fn step_done(&mut self, phase: Phase, step: usize, total: usize) -> Result<()> {
        if self.cancel.is_some_and(|c| c.is_cancelled()) {
            return Err(Error::Cancelled);
        }
        if let Some(obs) = self.observer.as_mut() {
            let p = Progress { phase, step, total, elapsed: self.start.elapsed() };
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| obs(&p))).map_err(|e| {
                let what =
                    e.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| e.downcast_ref::<String>().cloned()).unwrap_or_default();
                Error::Msg(format!("the progress observer panicked ({what}); the request was stopped"))
            })?;
        }
        Ok(())
    }
}

/// Which networks stay in device memory between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Residency {
    /// All four networks loaded once (about 13 GB in bf16 at full size).
    #[default]
    All,
    /// Each network loaded when its stage starts and freed when it ends: the peak is the
    /// largest single network (Stage C) plus activations, for smaller cards; every call
    /// reloads from the (memory-mapped, usually cached) files.
    OneStage,
}

/// A network held for the whole pipeline, or loaded for one stage.
enum Held<T> {
    Resident(T),
    OnDemand(PathBuf),
}

impl<T> Held<T> {
    /// The network: borrowed if resident, else freshly loaded (dropped by the caller).
    fn get(&self, load: impl FnOnce(&Path) -> Result<T>) -> Result<Loaded<'_, T>> {
        match self {
            Held::Resident(t) => Ok(Loaded::Borrowed(t)),
            Held::OnDemand(p) => Ok(Loaded::Owned(load(p)?)),
        }
    }
}

enum Loaded<'a, T> {
    Borrowed(&'a T),
    Owned(T),
}

impl<T> Loaded<'_, T> {
    /// Whether the network stays loaded after this call (so state tied to its weights may be kept).
    fn is_resident(&self) -> bool {
        matches!(self, Loaded::Borrowed(_))
    }
}

impl<T> std::ops::Deref for Loaded<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Loaded::Borrowed(t) => t,
            Loaded::Owned(t) => t,
        }
    }
}

/// Largest width or height accepted: beyond this the models leave what they were trained for
/// and the activations outgrow most cards.
pub const MAX_SIDE: usize = 4096;

/// Most images one call may request (they run as one batch).
pub const MAX_IMAGES: usize = 16;

/// How to load a [`Pipeline`].
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// What stays resident between calls.
    pub residency: Residency,
    /// Scan every weight for NaN/Inf while loading (reads all the data once more).
    pub check_weights: bool,
    /// Keep the UNets' residual stream in f32 with bf16 weights (the default,
    /// [`crate::models::unet::f32_residual_default`]; [`StableCascadeUNet::set_f32_residual`]:
    /// about three times less bf16 error at full depth, for more memory traffic per step).
    pub f32_residual: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { residency: Residency::default(), check_weights: false, f32_residual: crate::models::unet::f32_residual_default() }
    }
}

/// The loaded pipeline.
pub struct Pipeline {
    tokenizer: ClipTokenizer,
    text_encoder: Held<ClipTextModel>,
    prior: Held<StableCascadeUNet>,
    decoder: Held<StableCascadeUNet>,
    vqgan: Held<Vqgan>,
    /// Stage B's patch size and total downsampling, known without loading it (size validation).
    decoder_patch: usize,
    decoder_min_latent: usize,
    /// Stage B's latent channels (its initial noise is drawn ahead, during Stage C's last step).
    decoder_in_channels: usize,
    prior_scheduler: DdpmWuerstchen,
    decoder_scheduler: DdpmWuerstchen,
    dtype: DType,
    device: Device,
    cuda_graphs: bool,
    /// The UNets' residual stream in f32 (see [`LoadOptions::f32_residual`]).
    f32_residual: bool,
    /// Whether [`Output::tensors`] is filled (see [`Pipeline::set_keep_tensors`]).
    keep_tensors: bool,
    /// The captured denoising steps of resident networks, one per stage, kept for the next call
    /// with the same shapes (see [`StepGraph`]).
    step_graphs: std::sync::Mutex<Vec<StepGraph>>,
    /// The resident text encoder captured as a CUDA graph, kept for the next call with the same
    /// batch and length (see [`TextGraph`]).
    text_graph: std::sync::Mutex<Option<TextGraph>>,
    /// Highest device memory in use seen during the current call (the engine serialises calls).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    device_peak: std::sync::atomic::AtomicUsize,
}

/// The cheap check after each stage: its output `t` (kept as `name`) must be finite.
fn check_finite(name: &str, t: &Tensor, stage: &str, steps: usize) -> Result<()> {
    // A host f32 tensor: read in place.
    let v = t.cpu_f32()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(non_finite(name, stage, steps, i, &v[i].to_string()));
    }
    Ok(())
}

/// The error for a non-finite `value` at element `i` of a stage's output `name`.
fn non_finite(name: &str, stage: &str, steps: usize, i: usize, value: &str) -> Error {
    Error::Msg(format!(
        "{stage} produced {value} in its output ({name}, element {i}) after {steps} step(s): its weights or inputs hold NaN/Inf (load with --check-weights to find the tensor), or the dtype overflows (Stage C needs bf16 or f32, never f16)"
    ))
}

/// `n` images from interleaved RGB bytes, `h × w` each.
fn rgb8_images(mut bytes: Vec<u8>, n: usize, h: usize, w: usize) -> Result<Vec<image::RgbImage>> {
    let size = 3 * h * w;
    let make = |raw: Vec<u8>| {
        image::RgbImage::from_raw(w as u32, h as u32, raw).ok_or_else(|| Error::Shape(format!("cannot make a {w} × {h} RGB image")))
    };
    if n == 1 {
        bytes.truncate(size);
        return Ok(vec![make(bytes)?]);
    }
    bytes.chunks_exact(size).take(n).map(|raw| make(raw.to_vec())).collect()
}

/// `n` images from NCHW planes in [0, 1] (values outside are clamped): one pass that reads the
/// three planes side by side and writes interleaved RGB bytes.
fn to_rgb8(v: &[f32], n: usize, h: usize, w: usize) -> Result<Vec<image::RgbImage>> {
    let hw = h * w;
    (0..n)
        .map(|i| {
            let (r, rest) = v[i * 3 * hw..(i + 1) * 3 * hw].split_at(hw);
            let (g, b) = rest.split_at(hw);
            let mut raw = vec![0u8; 3 * hw];
            for (p, px) in raw.chunks_exact_mut(3).enumerate() {
                px[0] = ops::cpu::quantize_u8(r[p]);
                px[1] = ops::cpu::quantize_u8(g[p]);
                px[2] = ops::cpu::quantize_u8(b[p]);
            }
            image::RgbImage::from_raw(w as u32, h as u32, raw).ok_or_else(|| Error::Shape(format!("cannot make a {w} × {h} RGB image")))
        })
        .collect()
}

/// A UNet, with its residual stream in f32 or not as asked.
fn load_unet(path: &Path, dtype: DType, device: &Device, f32_residual: bool) -> Result<StableCascadeUNet> {
    let mut model = StableCascadeUNet::load(path, dtype, device)?;
    model.set_f32_residual(f32_residual)?;
    Ok(model)
}

/// The smallest Stage B latent side the UNet takes: the patch size times 2 per strided level.
fn min_latent(cfg: &crate::models::config::UNetConfig) -> usize {
    let strided = if cfg.switch_level.is_none() { cfg.block_out_channels.len().saturating_sub(1) } else { 0 };
    cfg.patch_size.max(1) << strided
}

fn scheduler(path: &Option<PathBuf>) -> Result<DdpmWuerstchen> {
    match path {
        Some(p) if p.join("scheduler_config.json").is_file() => DdpmWuerstchen::from_config(&p.join("scheduler_config.json")),
        _ => Ok(DdpmWuerstchen::default()),
    }
}

impl Pipeline {
    /// Loads every component in `dtype` onto `device`.
    pub fn load(paths: &ModelPaths, dtype: DType, device: &Device) -> Result<Pipeline> {
        Self::load_with(paths, dtype, device, LoadOptions::default())
    }

    /// Loads with options. With [`Residency::OneStage`] every component's config and weight
    /// files are still checked now, so a bad model fails here.
    pub fn load_with(paths: &ModelPaths, dtype: DType, device: &Device, options: LoadOptions) -> Result<Pipeline> {
        let residency = options.residency;
        if options.check_weights {
            for (path, base) in [
                (&paths.text_encoder, "model"),
                (&paths.prior, "diffusion_pytorch_model"),
                (&paths.decoder, "diffusion_pytorch_model"),
                (&paths.vqgan, "diffusion_pytorch_model"),
            ] {
                let files = if path.is_file() { vec![path.clone()] } else { crate::models::weight_files(path, base, dtype != DType::F32)? };
                crate::weights::WeightStore::open(&files)?.check_finite()?;
            }
        }
        let decoder_cfg = StableCascadeUNet::config_at(&paths.decoder)?;
        let (text_encoder, prior, decoder, vqgan) = match residency {
            Residency::All => (
                Held::Resident(ClipTextModel::load(&paths.text_encoder, dtype, device)?),
                Held::Resident(load_unet(&paths.prior, dtype, device, options.f32_residual)?),
                Held::Resident(load_unet(&paths.decoder, dtype, device, options.f32_residual)?),
                Held::Resident(Vqgan::load(&paths.vqgan, dtype, device)?),
            ),
            Residency::OneStage => {
                // Validate everything on the CPU without keeping it: cheap for the mapped files'
                // headers, and the same completeness check as a resident load.
                for (dir, base) in [
                    (&paths.text_encoder, "model"),
                    (&paths.prior, "diffusion_pytorch_model"),
                    (&paths.decoder, "diffusion_pytorch_model"),
                    (&paths.vqgan, "diffusion_pytorch_model"),
                ] {
                    crate::models::weight_files(dir, base, dtype != DType::F32)?;
                }
                (
                    Held::OnDemand(paths.text_encoder.clone()),
                    Held::OnDemand(paths.prior.clone()),
                    Held::OnDemand(paths.decoder.clone()),
                    Held::OnDemand(paths.vqgan.clone()),
                )
            }
        };
        Ok(Pipeline {
            tokenizer: ClipTokenizer::from_dir(&paths.tokenizer)?,
            text_encoder,
            prior,
            decoder,
            vqgan,
            decoder_patch: decoder_cfg.patch_size.max(1),
            decoder_min_latent: min_latent(&decoder_cfg),
            decoder_in_channels: decoder_cfg.in_channels,
            prior_scheduler: scheduler(&paths.prior_scheduler)?,
            decoder_scheduler: scheduler(&paths.decoder_scheduler)?,
            dtype,
            device: device.clone(),
            cuda_graphs: true,
            f32_residual: options.f32_residual,
            keep_tensors: true,
            step_graphs: Default::default(),
            text_graph: Default::default(),
            device_peak: 0.into(),
        })
    }

    /// Samples the device memory in use (total − free) into the call's peak (GPU only).
    fn sample_device_used(&self) {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(d) = &self.device {
            if let Ok((free, total)) = d.memory_info() {
                self.device_peak.fetch_max(total - free, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Whether GPU steps are captured as CUDA graphs and replayed (default) or launched
    /// kernel by kernel.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.cuda_graphs = on;
        self.step_graphs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        *self.text_graph.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Keeps the UNets' residual stream in f32 (`on`) or in the compute dtype (see
    /// [`LoadOptions::f32_residual`]); kept step graphs are dropped (their run constants hold the
    /// stream's dtype).
    pub fn set_f32_residual(&mut self, on: bool) -> Result<()> {
        for held in [&mut self.prior, &mut self.decoder] {
            if let Held::Resident(m) = held {
                m.set_f32_residual(on)?;
            }
        }
        self.f32_residual = on;
        self.step_graphs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }

    /// Whether `generate` returns the intermediate tensors in [`Output::tensors`] (default: yes;
    /// the CLI's `--dump-tensors` and the comparisons with diffusers read them). Without them a
    /// call makes no host copies beyond the two small latents its finiteness checks read, and
    /// turns the decoded image into pixels in one pass ([`crate::engine::Engine`] turns them off).
    pub fn set_keep_tensors(&mut self, on: bool) {
        self.keep_tensors = on;
    }

    /// The built-in model: the tiny architecture of the test fixtures (every structural feature,
    /// head width 64) with deterministic random weights made on the device, and an embedded
    /// 1514-token vocabulary. Runs anywhere with no files; its pictures are noise.
    pub fn builtin(dtype: DType, device: &Device) -> Result<Pipeline> {
        Self::random(&Architectures::tiny()?, 0x5eed, dtype, device)
    }

    /// The four networks of `arch` with seeded random weights made on the device (see
    /// [`crate::weights::VarBuilder::random`]), all resident, and the built-in vocabulary: for
    /// end-to-end benchmarks of the real architectures without files. Its pictures are noise.
    pub fn random(arch: &Architectures, seed: u64, dtype: DType, device: &Device) -> Result<Pipeline> {
        use crate::weights::VarBuilder;
        let vb = VarBuilder::random(seed, dtype, device);
        Ok(Pipeline {
            tokenizer: ClipTokenizer::from_vocab_and_merges(
                include_str!("../tests/fixtures/tiny/tokenizer/vocab.json"),
                include_str!("../tests/fixtures/tiny/tokenizer/merges.txt"),
            )?,
            text_encoder: Held::Resident(ClipTextModel::new(arch.text_encoder.clone(), &vb.pp("text_encoder"))?),
            prior: Held::Resident(StableCascadeUNet::new(arch.prior.clone(), &vb.pp("prior"))?),
            decoder: Held::Resident(StableCascadeUNet::new(arch.decoder.clone(), &vb.pp("decoder"))?),
            vqgan: Held::Resident(Vqgan::new(arch.vqgan.clone(), &vb.pp("vqgan"))?),
            decoder_patch: arch.decoder.patch_size.max(1),
            decoder_min_latent: min_latent(&arch.decoder),
            decoder_in_channels: arch.decoder.in_channels,
            prior_scheduler: DdpmWuerstchen::default(),
            decoder_scheduler: DdpmWuerstchen::default(),
            dtype,
            device: device.clone(),
            cuda_graphs: true,
            f32_residual: crate::models::unet::f32_residual_default(),
            keep_tensors: true,
            step_graphs: Default::default(),
            text_graph: Default::default(),
            device_peak: 0.into(),
        })
    }

    /// The dtype the networks run in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Stage-level entry point: the prompt's CLIP hidden states `[1, 77, D]` (Stage C's
    /// `clip_text`) and pooled embedding `[1, 1, P]`.
    pub fn encode_prompt(&self, prompt: &str) -> Result<(Tensor, Tensor)> {
        let text_encoder = self.text_encoder.get(|p| ClipTextModel::load(p, self.dtype, &self.device))?;
        let t = self.tokenizer.encode(prompt)?;
        let o = text_encoder.forward(&[t.input_ids], Some(&[t.attention_mask]))?;
        let pooled = o.text_embeds.reshape(&[1, 1, text_encoder.config().projection_dim])?;
        Ok((o.hidden_states_last, pooled))
    }

    /// Stage-level entry point: one Stage C model call, the ε prediction for `sample`
    /// `[B, h, w, 16]` at ratios `t` (f32 `[B]`) given the CLIP outputs (`clip_img`: zeros for
    /// text to image).
    pub fn prior_step(
        &self,
        sample: &Tensor,
        t: &Tensor,
        clip_text_pooled: &Tensor,
        clip_text: &Tensor,
        clip_img: &Tensor,
    ) -> Result<Tensor> {
        let prior = self.prior.get(|p| load_unet(p, self.dtype, &self.device, self.f32_residual))?;
        let cond = prior.condition(clip_text_pooled, Some(clip_text), Some(clip_img))?;
        prior.forward_with_condition(sample, t, &cond, None, None)
    }

    /// Stage-level entry point: one Stage B model call for `sample` `[B, H, W, 4]` given the
    /// pooled text embedding and Stage C's image embeddings `[B, h, w, 16]`.
    pub fn decoder_step(&self, sample: &Tensor, t: &Tensor, clip_text_pooled: &Tensor, effnet: &Tensor) -> Result<Tensor> {
        let decoder = self.decoder.get(|p| load_unet(p, self.dtype, &self.device, self.f32_residual))?;
        let cond = decoder.condition(clip_text_pooled, None, None)?;
        decoder.forward_with_condition(sample, t, &cond, Some(effnet), None)
    }

    /// Stage-level entry point: Stage A's decode of (already scaled) latents `[B, h, w, 4]` to an
    /// unclamped image `[B, 4h, 4w, 3]`.
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        self.vqgan.get(|p| Vqgan::load(p, self.dtype, &self.device))?.decode(latents)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// (Stage C latent, Stage B latent, image) sizes as (height, width) for a request's size, or
    /// an error naming the nearest sizes that work.
    pub fn sizes(&self, width: usize, height: usize) -> Result<[(usize, usize); 3]> {
        let c = |s: usize| (s as f64 / RESOLUTION_MULTIPLE).ceil() as usize;
        let b = |s: usize| (c(s) as f64 * LATENT_DIM_SCALE) as usize;
        let p = self.decoder_patch;
        let ok = |s: usize| (1..=MAX_SIDE).contains(&s) && b(s) >= self.decoder_min_latent && b(s) % p == 0;
        for (what, s) in [("width", width), ("height", height)] {
            if !(1..=MAX_SIDE).contains(&s) {
                return Err(Error::Shape(format!(
                    "{what} {s} is out of range: use 128 to {MAX_SIDE} pixels (multiples of 128 always work)"
                )));
            }
            if b(s) < self.decoder_min_latent {
                let min = (1..=MAX_SIDE).find(|&x| ok(x)).unwrap_or(128);
                return Err(Error::Shape(format!(
                    "{what} {s} is too small: Stage B needs a latent of at least {} (from {min} pixels)",
                    self.decoder_min_latent
                )));
            }
            if !ok(s) {
                let below = (1..s).rev().find(|&x| ok(x));
                let above = (s + 1..s + 512).find(|&x| ok(x));
                return Err(Error::Shape(format!(
                    "{what} {s} gives a Stage B latent of {} which Stage B cannot take (it must be divisible by {p}); nearest valid: {}{} (multiples of 128 always work)",
                    b(s),
                    below.map_or(String::new(), |x| format!("{x}, ")),
                    above.map_or("none".into(), |x| x.to_string())
                )));
            }
        }
        let up = 4; // Stage A: ×2 transposed conv, ×2 pixel shuffle.
        Ok([(c(height), c(width)), (b(height), b(width)), (b(height) * up, b(width) * up)])
    }

    /// Runs the whole pipeline.
    pub fn generate(&self, req: &Request, noise: &mut dyn NoiseSource) -> Result<Output> {
        self.generate_with(req, noise, &mut Hooks::none())
    }

    /// Runs the whole pipeline, reporting every step to `hooks` and stopping with
    /// [`Error::Cancelled`] at the first step boundary after cancellation.
    pub fn generate_with(&self, req: &Request, noise: &mut dyn NoiseSource, hooks: &mut Hooks<'_, '_>) -> Result<Output> {
        if req.prior_steps == 0 || req.decoder_steps == 0 || req.num_images == 0 {
            return Err(Error::Shape("steps and the number of images must be at least 1".into()));
        }
        if req.num_images > MAX_IMAGES {
            return Err(Error::Shape(format!("{} images in one call is more than {MAX_IMAGES}: split the request", req.num_images)));
        }
        for (what, g) in [("prior guidance", req.prior_guidance), ("decoder guidance", req.decoder_guidance)] {
            if !g.is_finite() || g < 0.0 {
                return Err(Error::Shape(format!("{what} must be a finite number ≥ 0, got {g}")));
            }
        }
        let [(hc, wc), (hb, wb), _] = self.sizes(req.width, req.height)?;
        let n = req.num_images;
        let start = Instant::now();
        let mut warnings = Vec::new();
        for (what, p) in [("prompt", &req.prompt), ("negative prompt", &req.negative_prompt)] {
            if self.tokenizer.encode(p)?.truncated {
                warnings.push(format!("the {what} is longer than CLIP's 75 tokens and was cut"));
            }
        }
        let mut timings = Timings::default();
        #[cfg(feature = "cuda")]
        if let Device::Cuda(d) = &self.device {
            d.reset_peak_memory();
            self.device_peak.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        let mut tensors = Vec::new();
        // The intermediates on the host in f32 (one copy from the device, converted on the way).
        let cpu_copy = |t: &Tensor| -> Result<Tensor> { Tensor::from_cpu(CpuData::F32(t.to_vec_f32()?), t.shape(), &Device::Cpu) };

        // Text: the prompt, and the negative prompt when any stage uses guidance.
        let prior_cfg = req.prior_guidance > 1.0;
        let decoder_cfg = req.decoder_guidance > 1.0;
        let (dtype, device) = (self.dtype, &self.device);
        let text_encoder = self.text_encoder.get(|p| ClipTextModel::load(p, dtype, device))?;
        // The prompt and the negative prompt go through the encoder as one batch of two (diffusers
        // makes two calls; every sequence is encoded on its own, so the values are the same).
        let mut prompts = vec![self.tokenizer.encode(&req.prompt)?];
        if prior_cfg || decoder_cfg {
            prompts.push(self.tokenizer.encode(&req.negative_prompt)?);
        }
        let ids: Vec<Vec<u32>> = prompts.iter().map(|t| t.input_ids.clone()).collect();
        let masks: Vec<Vec<u32>> = prompts.iter().map(|t| t.attention_mask.clone()).collect();
        let encoded = self.encode_text(&text_encoder, &ids, &masks)?;
        let (len, width, proj) =
            (encoded.hidden_states_last.dim(1), encoded.hidden_states_last.dim(2), text_encoder.config().projection_dim);
        let row = |i: usize| -> Result<(Tensor, Tensor)> {
            Ok((encoded.hidden_states_last.alias(i * len * width, &[1, len, width])?, encoded.text_embeds.alias(i * proj, &[1, 1, proj])?))
        };
        let repeat = |t: &Tensor| -> Result<Tensor> { (1..n).try_fold(t.view(t.shape())?, |acc, _| concat_batch(&acc, t)) };
        let (text, pooled) = row(0)?;
        let (text, pooled) = (repeat(&text)?, repeat(&pooled)?);
        if self.keep_tensors {
            tensors.push(("prompt_embeds".to_string(), cpu_copy(&text)?));
            tensors.push(("prompt_embeds_pooled".to_string(), cpu_copy(&pooled)?));
        }
        let negative = if prompts.len() == 2 {
            let (nt, np) = row(1)?;
            let (nt, np) = (repeat(&nt)?, repeat(&np)?);
            if self.keep_tensors {
                tensors.push(("negative_prompt_embeds".to_string(), cpu_copy(&nt)?));
                tensors.push(("negative_prompt_embeds_pooled".to_string(), cpu_copy(&np)?));
            }
            Some((nt, np))
        } else {
            None
        };

        // A resident encoder's graph may still be running: Stage C's setup is queued behind it
        // (the host's launches overlap its kernels, and the setup's device work waits for it in
        // stream order). An encoder loaded for this call is waited for before its weights go.
        let resident_encoder = text_encoder.is_resident();
        drop(text_encoder);
        if !resident_encoder {
            self.device.synchronize()?;
        }
        timings.text_encode = start.elapsed();
        hooks.step_done(Phase::TextEncode, 1, 1)?;

        // Stage C.
        let prior = self.prior.get(|p| load_unet(p, dtype, device, self.f32_residual))?;
        let pc = prior.config();
        let img_w = pc.clip_image_in_channels.unwrap_or(768);
        let (clip_text, clip_pooled, clip_img) = match (&negative, prior_cfg) {
            (Some((nt, np)), true) => {
                (concat_batch(&text, nt)?, concat_batch(&pooled, np)?, Tensor::zeros(&[2 * n, 1, img_w], self.dtype, &self.device)?)
            }
            _ => (text.view(text.shape())?, pooled.view(pooled.shape())?, Tensor::zeros(&[n, 1, img_w], self.dtype, &self.device)?),
        };
        let cond = prior.condition(&clip_pooled, Some(&clip_text), Some(&clip_img))?;
        let prior_latent = [n, pc.in_channels, hc, wc];
        let dec_latent = [n, self.decoder_in_channels, hb, wb];
        // Stage B's conditioning: its effnet input is Stage C's latent (zeros beside it for the
        // unconditional half).
        let dec_pooled = match (&negative, decoder_cfg) {
            (Some((_, np)), true) => concat_batch(&pooled, np)?,
            _ => pooled.view(pooled.shape())?,
        };
        let effnet_of = |x: &Tensor| -> Result<Tensor> {
            if decoder_cfg && negative.is_some() {
                concat_batch(x, &Tensor::zeros(x.shape(), self.dtype, &self.device)?)
            } else {
                x.view(x.shape())
            }
        };
        // With both UNets resident, Stage B's setup (its noise, run constants and buffers) is
        // queued while the device runs Stage C's last step, so the device goes from one stage to
        // the next without waiting for the host. With one stage resident at a time the decoder
        // is loaded only once the prior is dropped, after that step. `CASCADE_STAGE_OVERLAP=0`
        // queues it after that step (for a same-run A/B).
        let overlap = std::env::var("CASCADE_STAGE_OVERLAP").map_or(true, |v| v != "0");
        let early_decoder = match (&self.prior, &self.decoder) {
            (Held::Resident(_), Held::Resident(d)) if overlap => Some(d),
            _ => None,
        };
        let early_cond = early_decoder.map(|d| d.condition(&dec_pooled, None, None)).transpose()?;
        let mut dec_run = None;
        let mut queue_decoder = |x: &Tensor, noise: &mut dyn NoiseSource| -> Result<()> {
            if let (Some(decoder), Some(cond)) = (early_decoder, &early_cond) {
                let effnet = effnet_of(x)?;
                dec_run = Some(self.stage_setup(decoder, "decoder", dec_latent, req.decoder_guidance, cond, Some(&effnet), true, noise)?);
            }
            Ok(())
        };
        let prior_run = self.stage_setup(&prior, "prior", prior_latent, req.prior_guidance, &cond, None, prior.is_resident(), noise)?;
        // Stage B's initial noise and its first step's noise are the two draws after Stage C's
        // last: made while that step runs.
        let (x, prior_steps, prior_setup) = self.stage_run(
            prior_run,
            &self.prior_scheduler,
            req.prior_steps,
            noise,
            &[("noise_decoder_init", dec_latent), ("noise_decoder_step0", dec_latent)],
            Some(&mut queue_decoder),
            hooks,
        )?;
        (timings.prior_steps, timings.prior_setup) = (prior_steps, prior_setup);
        // From here on an error must let Stage B's queued setup finish before its buffers go.
        let sync_on_err = |e: Error| {
            let _ = self.device.synchronize();
            e
        };
        let image_embeddings = nhwc_to_nchw(&x).and_then(|t| cpu_copy(&t)).map_err(sync_on_err)?;
        check_finite("image_embeddings", &image_embeddings, "Stage C (the prior)", req.prior_steps)?;
        if self.keep_tensors {
            tensors.push(("image_embeddings".to_string(), image_embeddings));
        }

        drop(prior);

        // Stage B: "before its first step" counts from here (what was queued early ran inside
        // Stage C's last step).
        let (mut latents, decoder_steps, decoder_setup) = match dec_run {
            Some(mut run) => {
                run.setup_start = Instant::now();
                self.stage_run(run, &self.decoder_scheduler, req.decoder_steps, noise, &[], None, hooks)?
            }
            None => {
                // Loaded here, dropped at the end of this arm (before Stage A's network).
                let decoder = self.decoder.get(|p| load_unet(p, dtype, device, self.f32_residual))?;
                let cond = decoder.condition(&dec_pooled, None, None)?;
                let effnet = effnet_of(&x)?;
                let (resident, scheduler) = (decoder.is_resident(), &self.decoder_scheduler);
                let run = self.stage_setup(&decoder, "decoder", dec_latent, req.decoder_guidance, &cond, Some(&effnet), resident, noise)?;
                self.stage_run(run, scheduler, req.decoder_steps, noise, &[], None, hooks)?
            }
        };
        (timings.decoder_steps, timings.decoder_setup) = (decoder_steps, decoder_setup);
        let decoder_latents = cpu_copy(&nhwc_to_nchw(&latents)?)?;
        check_finite("decoder_latents", &decoder_latents, "Stage B (the decoder)", req.decoder_steps)?;
        if self.keep_tensors {
            tensors.push(("decoder_latents".to_string(), decoder_latents));
        }

        // Stage A (a decoder loaded for this call alone was dropped with its run above).
        let stage_a = Instant::now();
        let vqgan = self.vqgan.get(|p| Vqgan::load(p, dtype, device))?;
        ops::affine_assign(&mut latents, vqgan.config().scale_factor as f32, 0.0)?;
        let decoded = vqgan.decode(&latents)?;
        drop(vqgan);
        #[cfg(feature = "cuda")]
        if let Device::Cuda(dev) = &device {
            dev.synchronize()?;
        }
        let to_images = Instant::now();
        let &[_, h, w, c] = decoded.shape() else { unreachable!("images are 4-D") };
        if c != 3 {
            return Err(Error::Shape(format!("Stage A produced {c} channels; an RGB image needs 3")));
        }
        let rgb = if self.keep_tensors || device.is_cpu() {
            let unclamped = cpu_copy(&nhwc_to_nchw(&decoded)?)?;
            check_finite("images_unclamped", &unclamped, "Stage A (the VQGAN)", 1)?;
            let rgb = to_rgb8(&unclamped.cpu_f32()?, n, h, w)?;
            if self.keep_tensors {
                let v: Vec<f32> = unclamped.cpu_f32()?.iter().map(|x| x.clamp(0.0, 1.0)).collect();
                let clamped = Tensor::from_cpu(CpuData::F32(v), unclamped.shape(), &Device::Cpu)?;
                tensors.push(("images_unclamped".to_string(), unclamped));
                tensors.push(("images".to_string(), clamped));
            }
            rgb
        } else {
            // The 8-bit pixels made on the GPU: a third of the bytes to copy (bf16) and no pass
            // over the floats on the host. The same rounding as `to_rgb8` (tests/pipeline.rs).
            let (bytes, bad) = ops::to_rgb8(&decoded)?;
            if let Some(i) = bad {
                // Reported at its NCHW index, as the host check reports it.
                let (b, p, ch) = (i / (3 * h * w), i % (3 * h * w) / 3, i % 3);
                return Err(non_finite("images_unclamped", "Stage A (the VQGAN)", 1, (b * 3 + ch) * h * w + p, "a non-finite value"));
            }
            rgb8_images(bytes, n, h, w)?
        };
        timings.stage_a = stage_a.elapsed();
        timings.images = to_images.elapsed();
        hooks.step_done(Phase::StageA, 1, 1)?;
        timings.total = start.elapsed();
        #[cfg(feature = "cuda")]
        if let Device::Cuda(d) = &self.device {
            timings.peak_gpu_bytes = Some(d.memory_stats().1);
            self.sample_device_used();
            timings.peak_device_used_bytes = Some(self.device_peak.load(std::sync::atomic::Ordering::Relaxed));
        }
        Ok(Output { images: rgb, timings, warnings, tensors })
    }

    /// The text encoder's outputs for a batch of token ids and masks. A resident encoder on a GPU
    /// runs as a CUDA graph captured once per batch and length (a prompt's ids and mask are
    /// written into the graph's input buffers; the end-of-text rows are pooled and projected
    /// after the replay, so the graph does not depend on the prompt) and kept for the next call:
    /// the step graphs' saving for the encoder's 230 or so launches, whose host cost exceeds their
    /// device time. Elsewhere, or if the capture fails (with a warning), kernel by kernel.
    fn encode_text(&self, model: &Loaded<'_, ClipTextModel>, ids: &[Vec<u32>], masks: &[Vec<u32>]) -> Result<ClipOutput> {
        #[cfg(feature = "cuda")]
        if let (Device::Cuda(d), true) = (&self.device, self.cuda_graphs && model.is_resident()) {
            let (idf, mf, eos) = model.host_inputs(ids, Some(masks))?;
            let (b, l, dim) = (ids.len(), ids[0].len(), model.config().hidden_size);
            // Taken out while in use: a call beside this one captures its own.
            let kept = self.text_graph.lock().unwrap_or_else(|e| e.into_inner()).take().filter(|g| g.key == (b, l));
            let mut g = match kept {
                Some(g) => g,
                None => {
                    let zeros = |shape: &[usize], dtype| Tensor::zeros(shape, dtype, &self.device);
                    let (ids_t, mask_t) = (zeros(&[b, l], DType::F32)?, zeros(&[b, l], DType::F32)?);
                    let (mut h, mut last) = (zeros(&[b, l, dim], model.dtype())?, zeros(&[b, l, dim], model.dtype())?);
                    // The warm-up (only when the capture met new GEMM shapes) runs on buffers of
                    // its own.
                    let warmup = || -> Result<()> {
                        let (mut h, mut last) = (zeros(&[b, l, dim], model.dtype())?, zeros(&[b, l, dim], model.dtype())?);
                        model.encode_states_into(&ids_t, &mask_t, &mut h, &mut last)
                    };
                    match d.capture_tuned(warmup, || model.encode_states_into(&ids_t, &mask_t, &mut h, &mut last)) {
                        Ok(graph) => TextGraph { key: (b, l), ids: ids_t, mask: mask_t, h, last, graph },
                        Err(e @ Error::OutOfMemory(_)) => return Err(e),
                        Err(e) => {
                            eprintln!("warning: capturing the text encoder as a CUDA graph failed ({e}); launching kernels directly");
                            return model.forward(ids, Some(masks));
                        }
                    }
                }
            };
            g.ids.write_f32(&idf)?;
            g.mask.write_f32(&mf)?;
            g.graph.replay()?;
            // The outputs as copies: the buffers are the next call's.
            let (h, last) = (g.h.to_dtype(g.h.dtype())?, g.last.to_dtype(g.last.dtype())?);
            *self.text_graph.lock().unwrap_or_else(|e| e.into_inner()) = Some(g);
            let text_embeds = model.pool(&last, &eos)?;
            return Ok(ClipOutput { hidden_states_last: h, last_hidden_state: last, text_embeds });
        }
        model.forward(ids, Some(masks))
    }

    /// The stage's kept step graph if it was captured for `key`. A graph kept for other shapes
    /// is freed here, with its buffers, before the caller allocates new ones. (Without CUDA no
    /// graph exists and `StepGraph` is an empty type.)
    #[cfg_attr(not(feature = "cuda"), allow(unreachable_code, unused_variables))]
    fn take_step_graph(&self, key: &StepKey) -> Option<StepGraph> {
        let mut kept = self.step_graphs.lock().unwrap_or_else(|e| e.into_inner());
        let i = kept.iter().position(|g| g.key.stage == key.stage)?;
        let g = kept.swap_remove(i);
        (g.key == *key).then_some(g)
    }

    /// A stage's setup, queued without waiting for the device: its initial noise, the run's
    /// constants (condition K/V rows, Stage B's effnet and pixel terms), and the step buffers (a
    /// kept step graph's when there is one). Nothing here waits for work already queued, so the
    /// next stage's setup can be queued while the device still runs this stage's last step.
    ///
    /// Every per-step value (the latent, the timestep, the sampler coefficients, the noise) lives
    /// in a device buffer that is rewritten in place before the step, so on a GPU the step is
    /// captured once as a CUDA graph and replayed (falling back to direct launches, with a
    /// warning, if capture fails). For a `resident` network the graph and its buffers are kept
    /// after the call: the next call with the same batch and latent size only rewrites the
    /// buffers (the run's constants included) and replays it.
    #[allow(clippy::too_many_arguments)]
    fn stage_setup<'m>(
        &self,
        model: &'m StableCascadeUNet,
        stage: &str,
        shape: [usize; 4],
        guidance: f32,
        cond: &Tensor,
        effnet: Option<&Tensor>,
        resident: bool,
        noise: &mut dyn NoiseSource,
    ) -> Result<StageRun<'m>> {
        let setup_start = Instant::now();
        let cfg = guidance > 1.0;
        let [n, c, h, w] = shape;
        let batch = if cfg { 2 * n } else { n };
        let nhwc = [n, h, w, c];
        let init = crate::models::nchw_to_nhwc_host(&noise.draw(&format!("noise_{stage}_init"), &shape)?, shape);
        // Constant over the run: condition K/V rows, Stage B's effnet and pixel terms.
        let prepared = model.prepare(cond, effnet, None, batch, h, w)?;
        let key = StepKey { stage: stage.to_string(), latent: nhwc, batch };
        let keep = resident && self.cuda_graphs && !self.device.is_cpu();
        let (mut bufs, graph) = match keep.then(|| self.take_step_graph(&key)).flatten() {
            Some(kept) => {
                let mut bufs = kept.bufs;
                bufs.prepared.assign(&prepared)?;
                drop(prepared);
                (bufs, Some(kept.graph))
            }
            None => (StepBuffers::new(nhwc, batch, self.dtype, &self.device, prepared)?, None),
        };
        bufs.x.write_f32(&init)?;
        bufs.guidance.write_f32(&[guidance])?;
        Ok(StageRun { model, key, shape, cfg, keep, bufs, graph, setup_start })
    }

    /// A stage's steps after [`Self::stage_setup`]; returns the final latent `[n, h, w, c]`, each
    /// step's time, and the time before the first step (from the setup's start, its device work
    /// included). `next_draws`, the next stage's first draws, are handed to
    /// [`NoiseSource::prefetch`] once the last step is queued; then `overlap`, when given, is
    /// called with the final latent (its values still being computed: only for queuing device
    /// work on it) before the host waits for that step.
    #[allow(clippy::too_many_arguments)]
    fn stage_run(
        &self,
        run: StageRun<'_>,
        sched: &DdpmWuerstchen,
        steps: usize,
        noise: &mut dyn NoiseSource,
        next_draws: &[(&str, [usize; 4])],
        overlap: Option<&mut QueueNext<'_>>,
        hooks: &mut Hooks<'_, '_>,
    ) -> Result<(Tensor, Vec<Duration>, Duration)> {
        #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
        let StageRun { model, key, shape, cfg, keep, mut bufs, mut graph, setup_start } = run;
        let stage = key.stage.clone();
        let phase = if stage == "prior" { Phase::Prior } else { Phase::Decoder };
        let (nhwc, batch) = (key.latent, key.batch);
        let mut times = Vec::with_capacity(steps);
        let (prepared, guidance_t) = (&bufs.prepared, &bufs.guidance);
        // The network's output for the batch (doubled for guidance); reads x only.
        let forward = |x: &Tensor, t: &Tensor| -> Result<Tensor> {
            if cfg {
                model.forward_prepared(&concat_batch(x, x)?, t, prepared)
            } else {
                model.forward_prepared(x, t, prepared)
            }
        };
        let step = |x: &mut Tensor, t: &Tensor, coef: &Tensor, z: &Tensor| -> Result<()> {
            let mut eps = forward(x, t)?;
            if cfg {
                let mut g = Tensor::empty(x.shape(), x.dtype(), &self.device)?;
                ops::cfg_combine_into(&eps, guidance_t, &mut g)?;
                eps = g;
            }
            ops::ddpm_step_assign(x, &eps, Some(z), coef)
        };
        // The setup's device work (the run's constants, the buffers' writes) done: the steps'
        // times start here, and a capture's warm-up (which times GEMM algorithms) has the device
        // to itself.
        self.device.marker()?.wait()?;
        #[cfg(feature = "cuda")]
        if graph.is_none() {
            if let Device::Cuda(d) = &self.device {
                if self.cuda_graphs {
                    // The warm-up forward (only when the capture met new GEMM shapes) tunes their
                    // algorithms; it reads the latent through a second handle on the same memory.
                    let (x, t, coef, z) = (&mut bufs.x, &bufs.t, &bufs.coef, &bufs.z);
                    match x.view(x.shape()).and_then(|x_read| d.capture_tuned(|| forward(&x_read, t).map(drop), || step(x, t, coef, z))) {
                        Ok(g) => graph = Some(g),
                        // Direct launches need the same memory: report it rather than fail twice.
                        Err(e @ Error::OutOfMemory(_)) => return Err(e),
                        Err(e) => eprintln!("warning: capturing the {stage} step as a CUDA graph failed ({e}); launching kernels directly"),
                    }
                }
            }
        }
        let grid = sched.timesteps(steps);
        // The host prepares step i (its noise draw is the slowest host work: about 2.7 ms for a
        // 256×256 Stage B latent on a 2-core CI machine) while the device still runs step i − 1.
        // The writes queue behind that step on the one stream, so they cannot overtake it, and
        // the copy from host memory has read its source when the call returns. Step i − 1 is
        // reported done (its time, progress, cancellation) once its marker has passed.
        let setup = setup_start.elapsed();
        let mut last_done = Instant::now();
        let mut pending: Option<crate::runtime::device::Marker> = None;
        let mut finish = |marker: crate::runtime::device::Marker, done: usize, hooks: &mut Hooks<'_, '_>| -> Result<()> {
            marker.wait()?;
            let now = Instant::now();
            times.push(now - last_done);
            last_done = now;
            self.sample_device_used();
            hooks.step_done(phase, done, steps)
        };
        let mut out: Option<Tensor> = None;
        let run = || -> Result<()> {
            for i in 0..steps {
                // The model sees t in its own dtype (diffusers casts the ratio), and so does ᾱ(t).
                let t = crate::testing::round_to(&[grid[i]], self.dtype)[0];
                // diffusers draws the step noise every step and multiplies the last one by zero
                // (σ = 0 when the next grid value is 0).
                let zi = crate::models::nchw_to_nhwc_host(&noise.draw(&format!("noise_{stage}_step{i}"), &shape)?, shape);
                bufs.t.write_f32(&vec![t; batch])?;
                bufs.z.write_f32(&zi)?;
                bufs.coef.write_f32(&sched.coefficients(t, grid[i + 1]))?;
                match &graph {
                    #[cfg(feature = "cuda")]
                    Some(g) => g.replay()?,
                    #[cfg(not(feature = "cuda"))]
                    Some(never) => match *never {},
                    None => step(&mut bufs.x, &bufs.t, &bufs.coef, &bufs.z)?,
                }
                if let Some(previous) = pending.replace(self.device.marker()?) {
                    finish(previous, i, hooks)?;
                }
            }
            // The host is free while the device runs the last step: the next stage's first draws,
            // then whatever the caller queues on the final latent. The kept buffers are the next
            // call's, so a kept graph's latent is handed back as a copy.
            for (name, shape) in next_draws {
                noise.prefetch(name, shape)?;
            }
            let x = if keep && graph.is_some() {
                let mut x = Tensor::empty(&nhwc, self.dtype, &self.device)?;
                ops::cast_into(&bufs.x, &mut x)?;
                x
            } else {
                bufs.x.view(&nhwc)?
            };
            if let Some(overlap) = overlap {
                overlap(&x, noise)?;
            }
            out = Some(x);
            match pending.take() {
                Some(last) => finish(last, steps, hooks),
                None => Ok(()),
            }
        };
        if let Err(e) = run() {
            // A step may still be running (cancelled, or a failing callback): let it finish before
            // its buffers are released. The graph is not kept: the next call captures afresh.
            let _ = self.device.synchronize();
            return Err(e);
        }
        let x = out.expect("set once the steps are queued");
        if let (Some(graph), true) = (graph, keep) {
            let mut kept = self.step_graphs.lock().unwrap_or_else(|e| e.into_inner());
            // One per stage, even if calls on this pipeline ran side by side.
            kept.retain(|g| g.key.stage != key.stage);
            kept.push(StepGraph { key, bufs, graph });
        }
        Ok((x, times, setup))
    }
}

/// What a kept step graph was captured for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StepKey {
    stage: String,
    /// The latent `[n, h, w, c]`.
    latent: [usize; 4],
    /// The network's batch: `n`, or `2n` with guidance.
    batch: usize,
}

/// The device buffers one denoising step reads and writes. A run rewrites each of them in place
/// (latent, timestep, sampler coefficients, noise, guidance scale, the run's constants), so a step
/// captured as a CUDA graph replays on them.
struct StepBuffers {
    x: Tensor,
    z: Tensor,
    t: Tensor,
    coef: Tensor,
    guidance: Tensor,
    prepared: Conditioning,
}

impl StepBuffers {
    fn new(latent: [usize; 4], batch: usize, dtype: DType, device: &Device, prepared: Conditioning) -> Result<StepBuffers> {
        Ok(StepBuffers {
            x: Tensor::empty(&latent, dtype, device)?,
            z: Tensor::zeros(&latent, dtype, device)?,
            t: Tensor::zeros(&[batch], DType::F32, device)?,
            coef: Tensor::zeros(&[3], DType::F32, device)?,
            guidance: Tensor::zeros(&[1], DType::F32, device)?,
            prepared,
        })
    }
}

/// A captured step: a CUDA graph (never made without CUDA).
#[cfg(feature = "cuda")]
type CapturedStep = crate::cuda::Graph;
#[cfg(not(feature = "cuda"))]
type CapturedStep = std::convert::Infallible;

/// What [`Pipeline::stage_run`] calls once a stage's last step is queued: given the final latent
/// (still being computed) and the noise source, it queues the next stage's setup.
type QueueNext<'a> = dyn FnMut(&Tensor, &mut dyn NoiseSource) -> Result<()> + 'a;

/// A stage queued by [`Pipeline::stage_setup`], waiting for [`Pipeline::stage_run`].
struct StageRun<'m> {
    model: &'m StableCascadeUNet,
    key: StepKey,
    /// The latent, NCHW (the noise's shape).
    shape: [usize; 4],
    cfg: bool,
    /// Whether the step graph and its buffers are kept after the call.
    keep: bool,
    bufs: StepBuffers,
    graph: Option<CapturedStep>,
    /// Where "before the first step" is counted from.
    setup_start: Instant,
}

/// A resident network's denoising step, captured as a CUDA graph, with the buffers it reads and
/// writes. The pipeline keeps one per stage, so repeated calls at the same size capture once.
struct StepGraph {
    key: StepKey,
    bufs: StepBuffers,
    graph: CapturedStep,
}

/// The resident text encoder captured as a CUDA graph ([`ClipTextModel::encode_states_into`])
/// for one batch and length (`key`), with the buffers it reads (ids, mask: f32 `[B, L]`) and
/// writes (the last layer's output and the final LayerNorm's, `[B, L, D]`).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct TextGraph {
    key: (usize, usize),
    ids: Tensor,
    mask: Tensor,
    h: Tensor,
    last: Tensor,
    graph: CapturedStep,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prefetched draw is the value the draw would have given, and prefetching changes no
    /// later draw: with the shape the draw asks for, and with another shape (rewound).
    #[test]
    fn prefetch_keeps_the_stream() {
        let stream = |prefetch: Option<&[usize]>| {
            let mut n = TorchNoise::new(42);
            let mut out = vec![n.draw("a", &[1, 4, 5, 5]).unwrap()];
            if let Some(shape) = prefetch {
                n.prefetch("b", shape).unwrap();
            }
            out.push(n.draw("b", &[1, 4, 8, 8]).unwrap());
            out.push(n.draw("c", &[3]).unwrap());
            out
        };
        let plain = stream(None);
        assert_eq!(stream(Some(&[1, 4, 8, 8])), plain);
        assert_eq!(stream(Some(&[1, 4, 16, 16])), plain);
        assert_eq!(stream(Some(&[7])), plain);

        // Two draws prefetched (Stage B's initial and first-step noise): both handed out in
        // order; or the first handed out and the second dropped, rewound, when the next draw has
        // another shape; or both dropped when the first does not match.
        let two = |hints: &[&[usize]], draws: &[&[usize]]| {
            let mut n = TorchNoise::new(7);
            let mut out = vec![n.draw("a", &[2, 3]).unwrap()];
            for h in hints {
                n.prefetch("h", h).unwrap();
            }
            out.extend(draws.iter().map(|d| n.draw("d", d).unwrap()));
            out
        };
        let draws: &[&[usize]] = &[&[1, 4, 8, 8], &[1, 4, 8, 8], &[5]];
        let plain = two(&[], draws);
        assert_eq!(two(&[&[1, 4, 8, 8], &[1, 4, 8, 8]], draws), plain);
        assert_eq!(two(&[&[1, 4, 8, 8], &[9]], draws), plain);
        assert_eq!(two(&[&[9], &[1, 4, 8, 8]], draws), plain);
        let other: &[&[usize]] = &[&[1, 4, 8, 8], &[5], &[1, 4, 8, 8]];
        assert_eq!(two(&[&[1, 4, 8, 8], &[1, 4, 8, 8]], other), two(&[], other));
    }

    /// The 2²³ trick rounds exactly as `round_ties_even` on [0, 255], ties included, and clamps.
    #[test]
    fn quantize_matches_round_half_to_even() {
        let mut xs: Vec<f32> = (0..=100_000).map(|i| i as f32 / 100_000.0).collect();
        xs.extend((0..=255).map(|k| (k as f32 + 0.5) / 255.0));
        xs.extend([-1.0, -0.0, 1.0, 1.5, f32::INFINITY, f32::NEG_INFINITY]);
        for x in xs {
            let want = (x.clamp(0.0, 1.0) * 255.0).round_ties_even() as u8;
            assert_eq!(ops::cpu::quantize_u8(x), want, "x = {x}");
        }
    }

    /// Planes in, interleaved pixels out, image by image.
    #[test]
    fn rgb_interleaves_the_planes() {
        let (n, h, w) = (2, 2, 3);
        let v: Vec<f32> = (0..n * 3 * h * w).map(|i| i as f32 / 35.0).collect();
        let imgs = to_rgb8(&v, n, h, w).unwrap();
        for (i, img) in imgs.iter().enumerate() {
            for y in 0..h {
                for x in 0..w {
                    let at = |c: usize| ops::cpu::quantize_u8(v[((i * 3 + c) * h + y) * w + x]);
                    assert_eq!(img.get_pixel(x as u32, y as u32).0, [at(0), at(1), at(2)]);
                }
            }
        }
    }
}
