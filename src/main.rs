//! The `cascade` command line: one user of the library.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cascade::models::clip::ClipTextModel;
use cascade::models::unet::{StableCascadeUNet, UNetInputTensors};
use cascade::models::vqgan::Vqgan;
use cascade::models::{nchw_to_nhwc, nhwc_to_nchw};
use cascade::pipeline::{
    FileNoise, Hooks, LoadOptions, ModelPaths, NoiseSource, Phase, Pipeline, Progress, Request, Residency, TorchNoise,
};
use cascade::png_out::{encode_png, write_atomic};
use cascade::tokenizer::ClipTokenizer;
use cascade::weights::{save, WeightStore};
use cascade::{DType, Device, Error, Result, Tensor};

const USAGE: &str = "\
cascade: Stable Cascade inference engine

usage:
  cascade generate [--model-dir DIR]... --prompt P [--negative-prompt N] [--width W] [--height H]
                   [--num-images N] [--prior-steps N] [--prior-guidance G] [--decoder-steps M]
                   [--decoder-guidance G2] [--seed S] [--noise NOISE.safetensors]
                   [--dump-tensors OUT.safetensors] [--output IMAGE.png] [--lite-prior] [--lite-decoder]
                   [--device auto|cpu|cuda|cuda:N] [--dtype f32|bf16] [--one-stage-resident] [--no-cuda-graphs] [--force]
                   [--check-weights] [--bf16-residual] [--tuning-file FILE]
      text to image. --model-dir: one folder holding every component, or the two snapshots
      (stable-cascade-prior, stable-cascade); without it, a built-in tiny model with random
      weights (the picture is noise). Images get their parameters as PNG text chunks; several
      images are numbered (OUT_0.png, …); existing files are kept unless --force.
      --noise supplies every random draw (noise_prior_init, noise_prior_step{i},
      noise_decoder_init, noise_decoder_step{i}); --dump-tensors writes the intermediate tensors.
      --one-stage-resident keeps one network in GPU memory at a time (smaller cards).
      --bf16-residual keeps the UNets' residual stream in bf16 with bf16 weights, as diffusers
      does (by default it is f32: about three times less error, 2–5 % slower per step).
      --tuning-file keeps the GPU's choices made by timing (cuBLASLt's algorithm per GEMM
      shape) in FILE and reuses them in later runs on the same card: faster start-up, the same
      algorithms every run (default: $CASCADE_TUNING_FILE, if set).
  cascade forward [--model-dir DIR]... --component {text_encoder,prior,prior_lite,decoder,decoder_lite,vqgan}
                  --inputs IN.safetensors --output OUT.safetensors [--device ..] [--dtype ..]
                  [--trace-blocks BLOCKS.safetensors] [--bf16-residual]
      one component's forward pass with diffusers' argument names as tensor names.
      --trace-blocks (prior, decoder): every block's output, named as diffusers' modules.
  cascade tokenize [--model-dir DIR]... PROMPT...
      one JSON line per prompt: {\"input_ids\": [...], \"attention_mask\": [...]}
  cascade info PATH...      a model folder: its components, formats, variants, dtypes, sizes and
                            what is missing; or safetensors files: tensors, dtypes, parameters,
                            and which Stable Cascade stage an original single file holds
  cascade device [DEVICE]   open a device (cpu, cuda, cuda:N) and describe it
  cascade help              this text
";

/// Parsed `--flag value` pairs, repeated flags kept in order, and positional arguments.
struct Args {
    flags: HashMap<String, Vec<String>>,
    switches: Vec<String>,
    positional: Vec<String>,
}

const SWITCHES: &[&str] =
    &["--lite-prior", "--lite-decoder", "--one-stage-resident", "--no-cuda-graphs", "--force", "--check-weights", "--bf16-residual"];

impl Args {
    fn parse(args: &[String]) -> Result<Args> {
        let mut a = Args { flags: HashMap::new(), switches: Vec::new(), positional: Vec::new() };
        let mut it = args.iter();
        while let Some(x) = it.next() {
            if SWITCHES.contains(&x.as_str()) {
                a.switches.push(x.clone());
            } else if x.starts_with("--") {
                let v = it.next().ok_or_else(|| Error::Msg(format!("{x} needs a value")))?;
                a.flags.entry(x.clone()).or_default().push(v.clone());
            } else {
                a.positional.push(x.clone());
            }
        }
        Ok(a)
    }
    /// An error for any option `cmd` does not take (a misspelt one would otherwise be
    /// ignored without a word), suggesting the nearest one it does take.
    fn only(&self, cmd: &str, flags: &[&str], switches: &[&str]) -> Result<()> {
        let given = self.flags.keys().map(String::as_str).chain(self.switches.iter().map(String::as_str));
        for x in given {
            if flags.contains(&x) || switches.contains(&x) {
                continue;
            }
            let nearest = flags.iter().chain(switches).map(|k| (edit_distance(x, k), k)).min().filter(|(d, _)| *d <= 3);
            let hint = nearest.map_or(String::new(), |(_, k)| format!(" (did you mean {k}?)"));
            let takes = if SWITCHES.contains(&x) { "does not take" } else { "has no option" };
            return Err(Error::Msg(format!("`cascade {cmd}` {takes} {x}{hint}; see `cascade help`")));
        }
        Ok(())
    }
    fn one(&self, name: &str) -> Option<&str> {
        self.flags.get(name).and_then(|v| v.last()).map(String::as_str)
    }
    fn need(&self, name: &str) -> Result<&str> {
        self.one(name).ok_or_else(|| Error::Msg(format!("{name} is required (see `cascade help`)")))
    }
    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.one(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| Error::Msg(format!("{name}: '{v}' is not a valid number"))),
        }
    }
    fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
    fn model_dirs(&self) -> Result<Vec<PathBuf>> {
        match self.flags.get("--model-dir") {
            Some(v) => Ok(v.iter().map(PathBuf::from).collect()),
            None => {
                let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
                if tiny.is_dir() {
                    Ok(vec![tiny])
                } else {
                    Err(Error::Msg("--model-dir is required (the built-in tiny model lives in the source tree, which is not here)".into()))
                }
            }
        }
    }
    fn device(&self) -> Result<Device> {
        Device::parse(self.one("--device").unwrap_or("cpu"))
    }
    fn dtype(&self, device: &Device) -> Result<DType> {
        match self.one("--dtype") {
            Some(d) => DType::parse(d),
            None => Ok(if device.is_cpu() { DType::F32 } else { DType::BF16 }),
        }
    }
}

/// Levenshtein distance (characters), for suggesting an option.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

const GENERATE_FLAGS: &[&str] = &[
    "--model-dir",
    "--prompt",
    "--negative-prompt",
    "--width",
    "--height",
    "--num-images",
    "--images",
    "--prior-steps",
    "--prior-guidance",
    "--decoder-steps",
    "--decoder-guidance",
    "--seed",
    "--noise",
    "--dump-tensors",
    "--output",
    "--device",
    "--dtype",
    "--tuning-file",
];
const FORWARD_FLAGS: &[&str] = &["--model-dir", "--component", "--inputs", "--output", "--device", "--dtype", "--trace-blocks"];

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().map(String::as_str) else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &argv[1..];
    let result = Args::parse(rest).and_then(|a| match cmd {
        "generate" => a.only(cmd, GENERATE_FLAGS, SWITCHES).and_then(|_| generate(&a)),
        "forward" => a.only(cmd, FORWARD_FLAGS, &["--bf16-residual"]).and_then(|_| forward(&a)),
        "tokenize" => a.only(cmd, &["--model-dir"], &[]).and_then(|_| tokenize(&a)),
        "info" if !a.positional.is_empty() => a.only(cmd, &[], &[]).and_then(|_| info(&a.positional)),
        "device" => a.only(cmd, &[], &[]).and_then(|_| device(a.positional.first().map(String::as_str).unwrap_or("cuda"))),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        _ => Err(Error::Msg(format!("unknown command '{cmd}'\n\n{USAGE}"))),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(a: &Args) -> Result<()> {
    let device = match a.one("--device") {
        None | Some("auto") => Device::cuda(0).unwrap_or(Device::Cpu),
        Some(d) => Device::parse(d)?,
    };
    if let Some(path) = a.one("--tuning-file") {
        device.set_tuning_file(Some(Path::new(path)))?;
    }
    let dtype = a.dtype(&device)?;
    let builtin = !a.flags.contains_key("--model-dir");
    let mut pipe = if builtin {
        eprintln!("note: no --model-dir given: running the built-in tiny model with random weights; the picture is noise until real weights are given");
        let mut pipe = Pipeline::builtin(dtype, &device)?;
        // (load_with takes the option itself.)
        if a.switch("--bf16-residual") {
            pipe.set_f32_residual(false)?;
        }
        pipe
    } else {
        let paths = ModelPaths::find(&a.model_dirs()?, a.switch("--lite-prior"), a.switch("--lite-decoder"))?;
        let residency = if a.switch("--one-stage-resident") { Residency::OneStage } else { Residency::All };
        Pipeline::load_with(
            &paths,
            dtype,
            &device,
            LoadOptions {
                residency,
                check_weights: a.switch("--check-weights"),
                f32_residual: !a.switch("--bf16-residual") && cascade::models::unet::f32_residual_default(),
            },
        )?
    };
    pipe.set_cuda_graphs(!a.switch("--no-cuda-graphs"));
    // The intermediates are copied to the host only when they are written out.
    pipe.set_keep_tensors(a.one("--dump-tensors").is_some());
    let d = Request::default();
    let req = Request {
        prompt: a.need("--prompt")?.to_string(),
        negative_prompt: a.one("--negative-prompt").unwrap_or("").to_string(),
        width: a.num("--width", d.width)?,
        height: a.num("--height", d.height)?,
        num_images: a.num("--num-images", a.num("--images", d.num_images)?)?,
        prior_steps: a.num("--prior-steps", d.prior_steps)?,
        prior_guidance: a.num("--prior-guidance", d.prior_guidance)?,
        decoder_steps: a.num("--decoder-steps", d.decoder_steps)?,
        decoder_guidance: a.num("--decoder-guidance", d.decoder_guidance)?,
        seed: a.num("--seed", d.seed)?,
    };
    // Refuse to overwrite before spending any time.
    let output = PathBuf::from(a.one("--output").unwrap_or("cascade.png"));
    let outputs: Vec<PathBuf> = (0..req.num_images)
        .map(|i| {
            if req.num_images == 1 {
                output.clone()
            } else {
                output.with_file_name(format!("{}_{i}.png", output.file_stem().unwrap_or_default().to_string_lossy()))
            }
        })
        .collect();
    let force = a.switch("--force");
    if let Some(p) = outputs.iter().find(|p| p.exists() && !force) {
        return Err(Error::file(p, "already exists (use --force to replace it)"));
    }
    let mut noise: Box<dyn NoiseSource> = match a.one("--noise") {
        Some(f) => Box::new(FileNoise(WeightStore::open(&[f])?)),
        None => Box::new(TorchNoise::new(req.seed)),
    };
    let mut bar = |p: &Progress| progress_bar(p);
    let out = pipe.generate_with(&req, noise.as_mut(), &mut Hooks::new(Some(&mut bar), None))?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(f) = a.one("--dump-tensors") {
        let refs: Vec<(&str, &Tensor)> = out.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save(f, &refs)?;
    }
    let model = if builtin {
        "built-in tiny model (random weights)".to_string()
    } else {
        a.model_dirs()?.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" + ")
    };
    for (img, path) in out.images.iter().zip(&outputs) {
        let text = [
            ("prompt", req.prompt.clone()),
            ("negative_prompt", req.negative_prompt.clone()),
            ("seed", req.seed.to_string()),
            ("prior_steps", req.prior_steps.to_string()),
            ("prior_guidance", req.prior_guidance.to_string()),
            ("decoder_steps", req.decoder_steps.to_string()),
            ("decoder_guidance", req.decoder_guidance.to_string()),
            ("size", format!("{}x{}", img.width(), img.height())),
            ("model", model.clone()),
            ("Software", format!("cascade {}", env!("CARGO_PKG_VERSION"))),
        ];
        write_atomic(path, &encode_png(img, &text)?, force)?;
        eprintln!("wrote {}", path.display());
    }
    eprintln!(
        "{} image(s) of {}×{} on {} ({}):",
        out.images.len(),
        out.images[0].width(),
        out.images[0].height(),
        device.describe(),
        dtype
    );
    eprint!("{}", out.timings.summary());
    Ok(())
}

/// A one-line progress bar per phase on stderr.
fn progress_bar(p: &Progress) {
    let name = match p.phase {
        Phase::TextEncode => "text encode",
        Phase::Prior => "stage C",
        Phase::Decoder => "stage B",
        Phase::StageA => "stage A",
    };
    let width = 30;
    let filled = p.step * width / p.total.max(1);
    eprint!("\r{name:<12} [{}{}] {}/{} {:6.1} s", "#".repeat(filled), ".".repeat(width - filled), p.step, p.total, p.elapsed.as_secs_f64());
    if p.step == p.total {
        eprintln!();
    }
}

fn find_component(dirs: &[PathBuf], name: &str) -> Result<PathBuf> {
    dirs.iter()
        .flat_map(|d| [d.join(name), d.clone()])
        .find(|p| p.join("config.json").is_file() && (p.ends_with(name) || dirs.len() == 1 && p == &dirs[0]))
        .ok_or_else(|| Error::Msg(format!("no '{name}' folder with a config.json in the model directories")))
}

fn forward(a: &Args) -> Result<()> {
    let device = a.device()?;
    let dtype = a.dtype(&device)?;
    let component = a.need("--component")?;
    let dir = find_component(&a.model_dirs()?, component)?;
    let inputs = WeightStore::open(&[a.need("--inputs")?])?;
    let input = |name: &str| -> Result<Tensor> { inputs.load(name, dtype, &device) };
    let outputs: Vec<(String, Tensor)> = match component {
        "text_encoder" => {
            let model = ClipTextModel::load(&dir, dtype, &device)?;
            let (ids, shape) = inputs.load_integers("input_ids")?;
            if shape.len() != 2 {
                return Err(Error::Shape(format!("input_ids must be [B, L], got {shape:?}")));
            }
            let rows = |v: &[i64]| -> Result<Vec<Vec<u32>>> {
                v.chunks(shape[1])
                    .map(|r| {
                        r.iter()
                            .map(|&x| u32::try_from(x).map_err(|_| Error::Shape(format!("token id {x} is negative or too large"))))
                            .collect()
                    })
                    .collect()
            };
            let ids = rows(&ids)?;
            let mask = inputs
                .entry("attention_mask")
                .map(|_| inputs.load_integers("attention_mask"))
                .transpose()?
                .map(|(m, _)| rows(&m))
                .transpose()?;
            let o = model.forward(&ids, mask.as_deref())?;
            vec![
                ("hidden_states_last".into(), o.hidden_states_last),
                ("last_hidden_state".into(), o.last_hidden_state),
                ("text_embeds".into(), o.text_embeds),
            ]
        }
        "prior" | "prior_lite" | "decoder" | "decoder_lite" => {
            let mut model = StableCascadeUNet::load(&dir, dtype, &device)?;
            if a.switch("--bf16-residual") {
                model.set_f32_residual(false)?;
            }
            let inputs = UNetInputTensors::from_store(&inputs, dtype, &device)?;
            // --trace-blocks: every block's output too (NCHW, f32), under diffusers' module names.
            let mut blocks: Vec<(String, Tensor)> = Vec::new();
            let mut keep = |name: &str, x: &Tensor| -> Result<()> {
                blocks.push((name.to_string(), nhwc_to_nchw(x)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?));
                Ok(())
            };
            let trace: cascade::models::unet::BlockTrace = if a.one("--trace-blocks").is_some() { Some(&mut keep) } else { None };
            let out = model.forward_inputs_traced(&inputs.inputs(), trace)?;
            if let Some(path) = a.one("--trace-blocks") {
                let refs: Vec<(&str, &Tensor)> = blocks.iter().map(|(n, t)| (n.as_str(), t)).collect();
                save(path, &refs)?;
            }
            vec![("out".into(), nhwc_to_nchw(&out)?)]
        }
        "vqgan" => {
            let model = Vqgan::load(&dir, dtype, &device)?;
            let latents = nchw_to_nhwc(&input("latents")?)?;
            vec![("image".into(), nhwc_to_nchw(&model.decode(&latents)?)?)]
        }
        other => {
            return Err(Error::Msg(format!(
                "unknown component '{other}': use text_encoder, prior, prior_lite, decoder, decoder_lite or vqgan"
            )))
        }
    };
    // Outputs are written as f32 whatever the compute dtype.
    let f32s: Vec<(String, Tensor)> = outputs
        .into_iter()
        .map(|(n, t)| Ok((n, Tensor::from_f32(&t.to_vec_f32()?, t.shape(), DType::F32, &Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let refs: Vec<(&str, &Tensor)> = f32s.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(a.need("--output")?, &refs)
}

fn tokenize(a: &Args) -> Result<()> {
    let dirs = a.model_dirs()?;
    let dir = dirs.iter().map(|d| d.join("tokenizer")).find(|p| p.is_dir()).unwrap_or_else(|| dirs[0].clone());
    let tok = ClipTokenizer::from_dir(&dir)?;
    for p in &a.positional {
        let t = tok.encode(p)?;
        println!("{}", serde_json::json!({"input_ids": t.input_ids, "attention_mask": t.attention_mask}));
    }
    Ok(())
}

fn info(paths: &[String]) -> Result<()> {
    if paths.len() == 1 && Path::new(&paths[0]).is_dir() {
        return info_dir(Path::new(&paths[0]));
    }
    let store = WeightStore::open(paths)?;
    summarize("", &store);
    if let Ok(orig) = WeightStore::open_original(paths) {
        match cascade::models::OriginalKind::detect(&orig) {
            Ok(kind) => println!("  original single-file checkpoint: {}", kind.describe()),
            Err(_) => println!("  not an original Stable Cascade stage checkpoint"),
        }
    }
    Ok(())
}

/// Tensor count, parameters and dtypes of a store, on one line.
fn summarize(label: &str, store: &WeightStore) {
    let mut params = 0usize;
    let mut by_dtype = std::collections::BTreeMap::<String, usize>::new();
    for name in store.names() {
        let e = store.entry(name).expect("listed name exists");
        params += e.shape.iter().product::<usize>();
        *by_dtype.entry(format!("{:?}", e.dtype)).or_default() += 1;
    }
    let dtypes: Vec<String> = by_dtype.iter().map(|(d, n)| format!("{n} {d}")).collect();
    println!(
        "{label}{} tensors, {:.1}M parameters ({}) in {} file(s)",
        store.len(),
        params as f64 / 1e6,
        dtypes.join(", "),
        store.files().len()
    );
}

/// What a model folder holds: each component, its format, variant, dtype and size, and what
/// is missing for text to image.
fn info_dir(dir: &Path) -> Result<()> {
    println!("{}:", dir.display());
    let mut missing = Vec::new();
    for (name, base) in [
        ("text_encoder", "model"),
        ("tokenizer", ""),
        ("prior", "diffusion_pytorch_model"),
        ("prior_lite", "diffusion_pytorch_model"),
        ("decoder", "diffusion_pytorch_model"),
        ("decoder_lite", "diffusion_pytorch_model"),
        ("vqgan", "diffusion_pytorch_model"),
        ("scheduler", ""),
    ] {
        let sub = dir.join(name);
        if !sub.is_dir() {
            if !name.ends_with("_lite") && name != "scheduler" {
                missing.push(name);
            }
            continue;
        }
        if base.is_empty() {
            println!("  {name:<13} present");
            continue;
        }
        let mut variants = Vec::new();
        for bf16 in [false, true] {
            if let Ok(files) = cascade::models::weight_files(&sub, base, bf16) {
                let v = if files[0].to_string_lossy().contains(".bf16.") { "bf16 variant" } else { "default" };
                if !variants.iter().any(|(x, _)| *x == v) {
                    variants.push((v, files));
                }
            }
        }
        if variants.is_empty() {
            println!("  {name:<13} folder without weights");
            missing.push(name);
        }
        for (v, files) in variants {
            match WeightStore::open(&files) {
                Ok(store) => summarize(&format!("  {name:<13} diffusers, {v}: "), &store),
                Err(e) => println!("  {name:<13} {v}: unreadable: {e}"),
            }
        }
    }
    for f in [
        "stage_a",
        "stage_b",
        "stage_b_bf16",
        "stage_b_lite",
        "stage_b_lite_bf16",
        "stage_c",
        "stage_c_bf16",
        "stage_c_lite",
        "stage_c_lite_bf16",
    ] {
        let p = dir.join(format!("{f}.safetensors"));
        if p.is_file() {
            match WeightStore::open_original(&[&p]) {
                Ok(store) => {
                    let kind =
                        cascade::models::OriginalKind::detect(&store).map(|k| k.describe().to_string()).unwrap_or_else(|e| e.to_string());
                    summarize(&format!("  {f:<13} original file, {kind}: "), &store);
                    for stage in [("prior", "stage_c"), ("decoder", "stage_b"), ("vqgan", "stage_a")] {
                        if f.starts_with(stage.1) {
                            missing.retain(|m| *m != stage.0);
                        }
                    }
                }
                Err(e) => println!("  {f:<13} unreadable: {e}"),
            }
        }
    }
    if missing.is_empty() {
        println!("  complete for text to image");
    } else {
        println!("  missing for text to image: {} (a two-snapshot setup gives the other folder too)", missing.join(", "));
    }
    Ok(())
}

fn device(name: &str) -> Result<()> {
    let d = Device::parse(name)?;
    println!("{}", d.describe());
    #[cfg(feature = "cuda")]
    if let Device::Cuda(c) = &d {
        let (major, minor) = c.compute_capability();
        println!("compute capability {major}.{minor}, {} SMs", c.multiprocessors());
        // The attention kernels that passed their start-up check (the opt-in ones only when asked for).
        let kernels: Vec<&str> = [
            (c.tensor_core_attention(), "wmma"),
            (c.mma_attention(), "mma"),
            (c.mma32_attention(), "mma32"),
            (c.mma32_wide_attention(), "mma32_w5"),
            (c.wgmma_attention(), "wgmma, wgmma_sq"),
        ]
        .iter()
        .filter_map(|&(ok, n)| ok.then_some(n))
        .collect();
        println!(
            "tensor-core attention kernels checked at start-up: {}",
            if kernels.is_empty() { "none".into() } else { kernels.join(", ") }
        );
        let narrow = match (cascade::cuda::attention_tail_requested(), c.narrow_tail()) {
            (false, _) => "off (CASCADE_ATTENTION_TAIL=full)",
            (true, true) => "on (passed its start-up check)",
            (true, false) => "off (no wgmma attention here, or its check failed)",
        };
        println!("wgmma attention's last tile of keys narrowed to 32 or 16 keys: {narrow}");
        match c.tuning_file() {
            Some(f) => println!("tuning file (CASCADE_TUNING_FILE): {}", f.display()),
            None => println!("tuning file: none (CASCADE_TUNING_FILE or --tuning-file keep timed choices for later runs)"),
        }
        let pdl = if c.programmatic_launches() { "on" } else { "off" };
        println!("programmatic dependent launches (CASCADE_PDL=1 on compute capability 9.0): {pdl}");
        let tuning = cascade::cuda::KernelTuning::requested();
        println!(
            "kernel choice by timing (CASCADE_KERNEL_TUNE=1 or log): {}",
            if tuning.on() { "on: the kernels below that passed their check are timed against the defaults per shape" } else { "off" }
        );
        // Each kernel awaiting measurement: its switch, whether it is asked for, whether it passed
        // its start-up check (checked when asked for or under CASCADE_KERNEL_TUNE).
        let pending = [
            ("fused fc1 + GRN GEMM (CASCADE_GEMM_WGMMA)", cascade::cuda::gemm_wgmma_requested(), c.wgmma_gemm()),
            (
                "its stream-K version (CASCADE_GEMM_WGMMA=sk; checked beside =ws)",
                cascade::cuda::gemm_wgmma_requested() && cascade::ops::FusedGrnKernel::requested() == cascade::ops::FusedGrnKernel::WgmmaSk,
                c.grn_sk_gemm(),
            ),
            (
                "its version on 256-row tiles (CASCADE_GEMM_WGMMA=ws_tall; checked beside =ws)",
                cascade::cuda::gemm_wgmma_requested()
                    && cascade::ops::FusedGrnKernel::requested() == cascade::ops::FusedGrnKernel::WgmmaWsTall,
                c.grn_tall_gemm(),
            ),
            (
                "its 256-row tiles in pairs sharing x (CASCADE_GEMM_WGMMA=ws_pair; checked only where asked for)",
                cascade::cuda::gemm_wgmma_requested()
                    && cascade::ops::FusedGrnKernel::requested() == cascade::ops::FusedGrnKernel::WgmmaWsPair,
                c.grn_pair_gemm(),
            ),
            ("stream-K fc2 with GRN's factor (CASCADE_GEMM_WS_FC2=1)", cascade::cuda::gemm_ws_fc2_requested(), c.scaled_gemm()),
            ("stream-K residual products (CASCADE_GEMM_SK=1)", cascade::cuda::gemm_sk_requested(), c.sk_gemm()),
            ("warp-specialised fc1 + GELU (CASCADE_GEMM_WS_GELU=1)", cascade::cuda::gemm_ws_gelu_requested(), c.ws_gelu_gemm()),
            ("skinny GEMM (CASCADE_GEMM_SKINNY=1)", cascade::cuda::gemm_skinny_requested(), c.skinny_gemm()),
            ("split-key attention (CASCADE_ATTENTION_SPLIT=1)", cascade::cuda::attention_split_requested(), c.wgmma_split_attention()),
            ("two-warpgroup attention (CASCADE_ATTENTION=wgmma2)", cascade::cuda::wgmma2_requested(), c.wgmma2_attention()),
            (
                "lean softmax in the wgmma attention (CASCADE_ATTENTION_SOFTMAX=lean)",
                cascade::cuda::attention_softmax_requested() == Some(true),
                c.lean_softmax(),
            ),
            (
                "TMA copies of K and V in the wgmma attention (CASCADE_ATTENTION_COPY=tma)",
                cascade::cuda::attention_copy_requested() == Some(true),
                c.tma_attention(),
            ),
            (
                "those copies shared by pairs of blocks (CASCADE_ATTENTION_COPY=pair; checked only where asked for)",
                cascade::cuda::attention_pair_requested(),
                c.pair_attention(),
            ),
            (
                "those copies shared by clusters of three or four blocks where they fit a head's query blocks better (CASCADE_ATTENTION_COPY=cluster; checked only where asked for)",
                cascade::cuda::attention_cluster_requested(),
                c.cluster_attention(),
            ),
        ];
        for (what, asked, checked) in pending {
            let state = match (asked, checked, tuning.on()) {
                (true, true, _) => "on (asked for; passed its start-up check)",
                (true, false, _) => "off (asked for, but this GPU is not compute capability 9.0 or the check failed)",
                (false, true, _) => {
                    "a candidate (passed its start-up check; taken where it times faster, or where the device's defaults set it)"
                }
                (false, false, true) => "off (not compute capability 9.0, or the check failed)",
                (false, false, false) => "off",
            };
            println!("{what}: {state}");
        }
        if c.pair_attention() {
            for (name, blocks, clusters) in cascade::ops::attention::clusters_resident(c)? {
                println!(
                    "the clustered attention's clusters resident at once ({name}): {clusters} ({} blocks; {} SMs)",
                    blocks * clusters,
                    c.multiprocessors()
                );
            }
        }
        if c.grn_pair_gemm() {
            let pairs = cascade::ops::norm::fc1_pairs_resident(c)?;
            println!("the paired fc1 kernel's pairs resident at once: {pairs} ({} of {} SMs)", 2 * pairs, c.multiprocessors());
        }
    }
    Ok(())
}
