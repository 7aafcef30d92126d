//! Per-stage GPU benchmarks on the real architectures with random weights built in memory (no
//! files): CLIP encode (batch 2), one Stage C step (batch 2 for guidance, 24×24), one Stage B
//! step (batch 1, 256×256 latent), one Stage A decode (to 1024²), for the full and lite
//! configs, bf16, each captured once as a CUDA graph (GEMM algorithms tuned first) and replayed. Reports ms per call and
//! TFLOP/s from the spec's FLOP counts (§7). Last, the whole default 1024² pipeline end to end
//! (`pipeline_full`, `pipeline_lite`), as a user calls it. Without a GPU it says it skipped.

mod common;

#[cfg(feature = "cuda")]
fn main() {
    use cascade::models::clip::ClipTextModel;
    use cascade::models::config::{ClipTextConfig, UNetConfig, VqganConfig};
    use cascade::models::unet::StableCascadeUNet;
    use cascade::models::vqgan::Vqgan;
    use cascade::weights::VarBuilder;
    use cascade::{ops, DType, Tensor};

    let Some(dev) = common::gpu_or_skip("stages bench") else { return };
    let cuda = dev.as_cuda("stages bench").unwrap().clone();
    let mut r = common::Runner::new(dev.clone());
    let dt = DType::BF16;
    let vb = VarBuilder::random(2024, dt, &dev);
    let rnd = |shape: &[usize], seed: u64| {
        let mut t = Tensor::empty(shape, dt, &dev).unwrap();
        ops::fill_random(&mut t, seed, 0.0, 1.0).unwrap();
        t
    };
    // Only the selected stages run when CASCADE_BENCH_STAGES lists them (e.g. "clip,stage_c").
    // CASCADE_BENCH_PROFILE=1 replays each selected graph once inside a profiler range and times
    // nothing (`PROFILE=1 gpu-bundle/run.sh` runs it under ncu); stages are then matched exactly.
    let profile = std::env::var("CASCADE_BENCH_PROFILE").is_ok_and(|v| v == "1");
    let wanted = |name: &str| {
        std::env::var("CASCADE_BENCH_STAGES")
            .map_or(true, |s| s.split(',').any(|x| if profile { name == x.trim() } else { name.starts_with(x.trim()) }))
    };
    // CASCADE_BENCH_CAPTURE_ONLY=1 prints each graph's node count and times nothing (with
    // CASCADE_GEMM_TUNE=0 nothing runs but the weight fill: the CUDA emulator can count nodes).
    let capture_only = std::env::var("CASCADE_BENCH_CAPTURE_ONLY").is_ok_and(|v| v == "1");
    // A step's graph, and how long its capture took with the GEMM tuning it ran first (none for
    // shapes a tuning file already held: CASCADE_TUNING_FILE).
    let capture = |step: &dyn Fn() -> cascade::Result<()>| {
        let t = std::time::Instant::now();
        let graph = cuda.capture_tuned(step, step).unwrap();
        (graph, t.elapsed())
    };
    let graph_line = |name: &str, (graph, took): &(cascade::cuda::Graph, std::time::Duration)| {
        println!(
            "GRAPH {name} {} nodes, arena {:.1} MiB{}, captured in {:.0} ms",
            graph.node_count().unwrap(),
            graph.arena_bytes() as f64 / (1u64 << 20) as f64,
            if graph.has_memory_nodes() { " (plus memory nodes)" } else { "" },
            took.as_secs_f64() * 1e3
        )
    };
    // CASCADE_BENCH_AB="tma,lean,tma+lean" (or the GEMMs' "fc1,fc2,sk"; see ab_settings): each
    // selected stage captured once per setting and timed in turns in this one process, so that
    // the comparison shares its cuBLASLt algorithms, memory and clocks
    // (common::summary_interleaved). The first graph has every listed feature off; each item
    // then turns its features on. The features' environment switches must be set too (they ask
    // for the kernels' start-up checks).
    let ab = if profile { Vec::new() } else { ab_settings(&cuda) };
    let ab_step = |name: &str, flops: f64, step: &dyn Fn() -> cascade::Result<()>| {
        let mut graphs = Vec::new();
        for (label, attention, gemm) in &ab {
            cuda.set_attention_defaults(*attention);
            cuda.set_gemm_defaults(*gemm);
            graphs.push((format!("{name}@{label}"), capture(step)));
        }
        cuda.set_attention_defaults(Default::default());
        cuda.set_gemm_defaults(Default::default());
        for (n, g) in &graphs {
            graph_line(n, g);
        }
        if !capture_only && cascade::testing::shape_wanted(name) {
            let names: Vec<String> = graphs.iter().map(|g| g.0.clone()).collect();
            let mut replays: Vec<Box<dyn FnMut() + '_>> =
                graphs.iter().map(|(_, (g, _))| Box::new(move || g.replay().unwrap()) as Box<dyn FnMut()>).collect();
            let mut fs: Vec<&mut dyn FnMut()> = replays.iter_mut().map(|f| &mut **f as &mut dyn FnMut()).collect();
            common::summary_interleaved(&dev, &names, Some(flops), &mut fs);
        }
    };
    let mut bench = |name: &str, flops: f64, captured: (cascade::cuda::Graph, std::time::Duration)| {
        graph_line(name, &captured);
        let graph = captured.0;
        if profile {
            cuda.profile(|| graph.replay()).unwrap();
            println!("PROFILED {name}");
        } else if !capture_only {
            r.run(name, Some(flops), None, || graph.replay().unwrap());
        }
    };

    if wanted("clip") {
        let clip = ClipTextModel::new(ClipTextConfig::bigg(), &vb).unwrap();
        let ids: Vec<f32> = (0..154)
            .map(|i| {
                if i % 77 == 0 {
                    49406.0
                } else if i % 77 < 12 {
                    (i * 97 % 49000) as f32
                } else {
                    49407.0
                }
            })
            .collect();
        let id_t = Tensor::from_f32(&ids, &[2, 77], DType::F32, &dev).unwrap();
        let mask: Vec<f32> = (0..154).map(|i| if i % 77 <= 12 { 1.0 } else { 0.0 }).collect();
        let mask_t = Tensor::from_f32(&mask, &[2, 77], DType::F32, &dev).unwrap();
        let encode = || clip.encode(&id_t, &mask_t, &[12, 12]).map(|_| ());
        if ab.is_empty() {
            bench("stage/clip_bigg/encode/batch2", 195.8e9, capture(&encode));
        } else {
            ab_step("stage/clip_bigg/encode/batch2", 195.8e9, &encode);
        }
    }
    for (name, cfg, flops) in [("stage_c", UNetConfig::stage_c(), 8156.7e9), ("stage_c_lite", UNetConfig::stage_c_lite(), 2348.6e9)] {
        if !wanted(name) {
            continue;
        }
        let prior = StableCascadeUNet::new(cfg, &vb).unwrap();
        let cond = prior
            .condition(&rnd(&[2, 1, 1280], 1), Some(&rnd(&[2, 77, 1280], 2)), Some(&Tensor::zeros(&[2, 1, 768], dt, &dev).unwrap()))
            .unwrap();
        let x = rnd(&[2, 24, 24, 16], 3);
        let t = Tensor::from_f32(&[0.5, 0.5], &[2], DType::F32, &dev).unwrap();
        let prepared = prior.prepare(&cond, None, None, 2, 24, 24).unwrap();
        let step = || prior.forward_prepared(&x, &t, &prepared).map(|_| ());
        if ab.is_empty() {
            bench(&format!("stage/{name}/step/batch2_24x24"), flops, capture(&step));
        } else {
            ab_step(&format!("stage/{name}/step/batch2_24x24"), flops, &step);
        }
    }
    for (name, cfg, flops) in [("stage_b", UNetConfig::stage_b(), 6174.1e9), ("stage_b_lite", UNetConfig::stage_b_lite(), 2223.5e9)] {
        if !wanted(name) {
            continue;
        }
        let decoder = StableCascadeUNet::new(cfg, &vb).unwrap();
        let cond = decoder.condition(&rnd(&[1, 1, 1280], 4), None, None).unwrap();
        let (x, effnet) = (rnd(&[1, 256, 256, 4], 5), rnd(&[1, 24, 24, 16], 6));
        let t = Tensor::from_f32(&[0.5], &[1], DType::F32, &dev).unwrap();
        let prepared = decoder.prepare(&cond, Some(&effnet), None, 1, 256, 256).unwrap();
        let step = || decoder.forward_prepared(&x, &t, &prepared).map(|_| ());
        if ab.is_empty() {
            bench(&format!("stage/{name}/step/batch1_256x256"), flops, capture(&step));
        } else {
            ab_step(&format!("stage/{name}/step/batch1_256x256"), flops, &step);
        }
    }
    if wanted("stage_a") {
        let vqgan = Vqgan::new(VqganConfig::default(), &vb).unwrap();
        let latents = rnd(&[1, 256, 256, 4], 7);
        let decode = || vqgan.decode(&latents).map(|_| ());
        if ab.is_empty() {
            bench("stage/stage_a/decode/1024x1024", 2172.4e9, capture(&decode));
        } else {
            ab_step("stage/stage_a/decode/1024x1024", 2172.4e9, &decode);
        }
    }
    r.finish();
    for (name, lite) in [("pipeline_full", false), ("pipeline_lite", true)] {
        if wanted(name) && !capture_only && !profile && cascade::testing::shape_wanted(name) {
            end_to_end(name, lite, &dev);
        }
    }
}

/// One setting of an A/B comparison: its label, the attention's and the GEMMs' options.
#[cfg(feature = "cuda")]
type AbSetting = (String, cascade::ops::WgmmaOptions, cascade::ops::GemmOptions);

/// The settings `CASCADE_BENCH_AB` lists (see main), the all-off one first; empty when unset,
/// or after saying why not (an unknown feature, or one whose kernels did not pass their start-up
/// check: its environment switch asks for that check). Features: the attention's `tma` copies
/// (`pair`: in clusters of two blocks sharing each tile's copy, `cluster`: of two, three or four,
/// whichever fits a head's query blocks best; under `CASCADE_ATTENTION_COPY=pair` or `cluster` the
/// base setting has the unshared copies), `lean` softmax and narrow `tail`; the GEMMs' fused `fc1` + GRN statistics (`fc1sk`: its
/// stream-K version, `fc1tall`: its version on 256-row tiles, `fc1pair`: those tiles in pairs
/// sharing x's copy), stream-K `fc2`,
/// stream-K residual products `sk`, CLIP's `skinny` GEMM and Stage A's `wsgelu` (fc1 and GELU on
/// the warp-specialised GEMM).
#[cfg(feature = "cuda")]
fn ab_settings(cuda: &cascade::cuda::CudaDevice) -> Vec<AbSetting> {
    let Ok(spec) = std::env::var("CASCADE_BENCH_AB") else { return Vec::new() };
    let items: Vec<Vec<&str>> = spec.split(',').map(|i| i.split('+').map(str::trim).collect()).collect();
    let features = [
        ("tma", cuda.tma_attention(), "CASCADE_ATTENTION_COPY=tma"),
        ("pair", cuda.pair_attention(), "CASCADE_ATTENTION_COPY=pair"),
        ("cluster", cuda.cluster_attention(), "CASCADE_ATTENTION_COPY=cluster"),
        ("lean", cuda.lean_softmax(), "CASCADE_ATTENTION_SOFTMAX=lean"),
        ("tail", cuda.narrow_tail(), "CASCADE_ATTENTION_TAIL unset"),
        ("fc1", cuda.wgmma_gemm(), "CASCADE_GEMM_WGMMA=ws (or 1, ws_deep)"),
        ("fc1sk", cuda.grn_sk_gemm(), "CASCADE_GEMM_WGMMA=ws (or sk)"),
        ("fc1tall", cuda.grn_tall_gemm(), "CASCADE_GEMM_WGMMA=ws (or ws_tall, ws_pair)"),
        ("fc1pair", cuda.grn_pair_gemm(), "CASCADE_GEMM_WGMMA=ws_pair"),
        ("fc2", cuda.scaled_gemm(), "CASCADE_GEMM_WS_FC2=1"),
        ("sk", cuda.sk_gemm(), "CASCADE_GEMM_SK=1"),
        ("skinny", cuda.skinny_gemm(), "CASCADE_GEMM_SKINNY=1"),
        ("wsgelu", cuda.ws_gelu_gemm(), "CASCADE_GEMM_WS_GELU=1"),
    ];
    for f in items.iter().flatten() {
        match features.iter().find(|x| x.0 == *f) {
            None => {
                println!(
                    "AB skipped: unknown feature {f:?} in CASCADE_BENCH_AB (tma, pair, cluster, lean, tail, fc1, fc1sk, fc1tall, fc1pair, fc2, sk, skinny, wsgelu)"
                );
                return Vec::new();
            }
            Some((_, false, switch)) => {
                println!("AB skipped: the {f} kernels are not available (their start-up check needs {switch}, and a GPU of compute capability 9.0)");
                return Vec::new();
            }
            Some(_) => {}
        }
    }
    let used = |f: &str| items.iter().flatten().any(|x| *x == f);
    // The features that set the fused fc1 on, each in one of its versions.
    const FC1: [&str; 4] = ["fc1", "fc1sk", "fc1tall", "fc1pair"];
    let setting = |on: &[&str]| {
        let pick = |f: &str| used(f).then(|| on.contains(&f));
        (
            cascade::ops::WgmmaOptions {
                tma_copies: pick("tma"),
                // Wider clusters are shared copies too ("tma+cluster"), and only in the settings
                // that name them, also where the environment asks for them
                // (CASCADE_ATTENTION_COPY=cluster turns pairs on too).
                pair_copies: (used("pair") || used("cluster")).then(|| on.contains(&"pair") || on.contains(&"cluster")),
                cluster_copies: (used("cluster") || used("pair")).then(|| on.contains(&"cluster")),
                lean_softmax: pick("lean"),
                narrow_tail: pick("tail"),
            },
            cascade::ops::GemmOptions {
                // fc1, fc1sk, fc1tall and fc1pair: the fused fc1 in its requested, stream-K, tall
                // and paired versions.
                fused_fc1: FC1.iter().any(|f| used(f)).then(|| FC1.iter().any(|f| on.contains(f))),
                fc1_stream_k: pick("fc1sk"),
                fc1_tall: pick("fc1tall"),
                fc1_pair: pick("fc1pair"),
                stream_k_fc2: pick("fc2"),
                stream_k: pick("sk"),
                skinny: pick("skinny"),
                ws_gelu: pick("wsgelu"),
            },
        )
    };
    let (a, g) = setting(&[]);
    let mut v = vec![("base".to_string(), a, g)];
    v.extend(items.iter().map(|i| {
        let (a, g) = setting(i);
        (i.join("+"), a, g)
    }));
    v
}

/// The whole default 1024² pipeline (prompt and negative prompt through CLIP, 20 Stage C steps
/// at guidance 4, 10 Stage B steps, Stage A, the pixels made on the host) as the engine runs it,
/// on all four networks with random weights, resident. The first call captures each stage's
/// step graph (and tunes any GEMM shape not met yet); the calls after it replay the kept graphs:
/// their median is the `BENCH` line.
#[cfg(feature = "cuda")]
fn end_to_end(name: &str, lite: bool, dev: &cascade::Device) {
    use cascade::pipeline::{Architectures, Pipeline, Request, TorchNoise};
    use std::time::Instant;
    let cuda = dev.as_cuda("stages bench").unwrap().clone();
    let held_before = cuda.memory_stats().0;
    let mut pipe = Pipeline::random(&Architectures::released(lite, lite), 2024, cascade::DType::BF16, dev).unwrap();
    // As the engine runs it: images only, no host copies of the intermediates.
    pipe.set_keep_tensors(false);
    let weights = cuda.memory_stats().0 - held_before;
    let req = Request { prompt: "a photograph of an astronaut riding a horse on the moon".into(), ..Request::default() };
    let call = || {
        let t = Instant::now();
        let out = pipe.generate(&req, &mut TorchNoise::new(0)).unwrap();
        (t.elapsed(), out.timings)
    };
    let (cold, _) = call();
    let label = format!("{name}/generate/1024x1024");
    if std::env::var_os("CASCADE_BENCH_ONCE").is_some() {
        println!("BENCH {label:<56} ran once");
        return;
    }
    let mut runs: Vec<_> = (0..3).map(|_| call()).collect();
    runs.sort_by_key(|r| r.0);
    let (median, timings) = &runs[runs.len() / 2];
    println!("PIPELINE {name}: first call {:.1} ms (captures the step graphs); the median call:", cold.as_secs_f64() * 1e3);
    print!("{}", timings.summary());
    // The target's memory row: what a call needs beyond the resident weights (activations, the
    // kept step graphs' arenas and buffers). The last call's peak is the engine's peak now.
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let peak = cuda.memory_stats().1;
    println!(
        "PIPELINE {name}: weights {:.2} GiB; peak {:.2} GiB above the weights",
        gib(weights),
        gib(peak.saturating_sub(weights + held_before))
    );
    println!("BENCH {label:<56} {:>10.4} ms", median.as_secs_f64() * 1e3);
}

#[cfg(not(feature = "cuda"))]
fn main() {
    let _ = common::gpu_or_skip;
    println!("stages bench: skipped (built without the `cuda` feature)");
}
