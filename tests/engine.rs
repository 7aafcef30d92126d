//! The library API on the built-in tiny model (CPU): progress reports, cancellation, a
//! panicking observer, and many threads at once giving the same images as sequential calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cascade::engine::{Engine, EngineConfig};
use cascade::pipeline::{CancelToken, Phase, Progress, Request};
use cascade::Error;

fn engine() -> Engine {
    Engine::load(EngineConfig { device: "cpu".into(), ..Default::default() }).unwrap()
}

fn request(seed: u64) -> Request {
    Request { prompt: "a red fox".into(), width: 128, height: 128, prior_steps: 3, decoder_steps: 2, seed, ..Default::default() }
}

#[test]
fn progress_is_reported_after_every_step() {
    let e = engine();
    assert!(e.is_builtin());
    let mut seen: Vec<Progress> = Vec::new();
    let mut obs = |p: &Progress| seen.push(*p);
    let out = e.generate(&request(1), Some(&mut obs), None).unwrap();
    assert_eq!(out.images.len(), 1);
    assert_eq!((out.images[0].width(), out.images[0].height()), (128, 128));
    assert_eq!(out.seed, 1);
    let phases: Vec<(Phase, usize, usize)> = seen.iter().map(|p| (p.phase, p.step, p.total)).collect();
    assert_eq!(
        phases,
        vec![
            (Phase::TextEncode, 1, 1),
            (Phase::Prior, 1, 3),
            (Phase::Prior, 2, 3),
            (Phase::Prior, 3, 3),
            (Phase::Decoder, 1, 2),
            (Phase::Decoder, 2, 2),
            (Phase::StageA, 1, 1)
        ]
    );
    assert!(seen.windows(2).all(|w| w[0].elapsed <= w[1].elapsed));
}

#[test]
fn cancellation_mid_run_then_a_successful_call() {
    let e = engine();
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let mut obs = move |p: &Progress| {
        if p.phase == Phase::Prior && p.step == 2 {
            c2.cancel();
        }
    };
    let err = e.generate(&request(2), Some(&mut obs), Some(&cancel)).err().expect("cancelled");
    assert!(matches!(err, Error::Cancelled), "{err}");
    // A token cancelled before the call starts stops it at once.
    assert!(matches!(e.generate(&request(2), None, Some(&cancel)).err(), Some(Error::Cancelled)));
    // The engine is ready for the next request.
    let out = e.generate(&request(2), None, Some(&CancelToken::new())).unwrap();
    assert_eq!(out.images.len(), 1);
}

#[test]
fn a_panicking_observer_is_contained() {
    let e = engine();
    let mut obs = |p: &Progress| {
        if p.phase == Phase::Decoder {
            panic!("observer bug");
        }
    };
    let err = e.generate(&request(3), Some(&mut obs), None).err().expect("error").to_string();
    assert!(err.contains("observer panicked") && err.contains("observer bug"), "{err}");
    assert!(e.generate(&request(3), None, None).is_ok());
}

#[test]
fn eight_threads_give_the_same_images_as_sequential_calls() {
    let e = Arc::new(engine());
    let sequential: Vec<_> = (0..8).map(|s| e.generate(&request(100 + s), None, None).unwrap().images).collect();
    let done = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..8)
        .map(|s| {
            let (e, done) = (e.clone(), done.clone());
            std::thread::spawn(move || {
                let out = e.generate(&request(100 + s), None, None).unwrap();
                done.fetch_add(1, Ordering::SeqCst);
                out.images
            })
        })
        .collect();
    for (s, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), sequential[s], "seed {}", 100 + s);
    }
    assert_eq!(done.load(Ordering::SeqCst), 8);
    // Different seeds give different images.
    assert_ne!(sequential[0], sequential[1]);
}

#[test]
fn stage_level_entry_points() {
    let e = engine();
    let (hidden, pooled) = e.with_pipeline(|p| p.encode_prompt("a red fox")).unwrap();
    assert_eq!(hidden.shape(), &[1, 77, 64]);
    assert_eq!(pooled.shape(), &[1, 1, 64]);
}

/// A warm-up call runs one step per stage and leaves the engine ready: the request it was
/// shaped like then gives the same images as on a fresh engine.
#[test]
fn warm_up_then_the_same_images() {
    let e = engine();
    let took = e.warm_up(&request(3)).unwrap();
    println!("warm-up: {:.1} ms", took.as_secs_f64() * 1e3);
    assert_eq!(e.generate(&request(3), None, None).unwrap().images, engine().generate(&request(3), None, None).unwrap().images);
}

/// On the GPU the warm-up captures each stage's step graph and the engine keeps it: the real
/// request that follows captures nothing, at any number of steps.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_warm_up_captures_the_step_graphs_once() {
    let e = Engine::load(EngineConfig { device: "cuda".into(), ..Default::default() }).unwrap();
    let cuda = e.device().as_cuda("test").unwrap().clone();
    let req = Request { prior_steps: 3, decoder_steps: 2, ..request(5) };
    e.warm_up(&req).unwrap();
    let captured = cuda.graphs_captured();
    assert!(captured > 0, "the warm-up captured no graph");
    e.generate(&req, None, None).unwrap();
    assert_eq!(cuda.graphs_captured(), captured, "the request after the warm-up captured again");
}

/// `EngineConfig::f32_residual` in bf16: the call works, gives an image of the asked size, and it
/// differs from the bf16 stream's only by rounding (the same weights, noise and steps).
#[test]
fn an_f32_residual_stream_gives_nearly_the_same_image() {
    let load = |f32_residual| {
        Engine::load(EngineConfig { device: "cpu".into(), dtype: Some(cascade::DType::BF16), f32_residual, ..Default::default() }).unwrap()
    };
    let (plain, stream) = (load(false), load(true));
    let a = plain.generate(&request(5), None, None).unwrap();
    let b = stream.generate(&request(5), None, None).unwrap();
    assert_eq!((b.images[0].width(), b.images[0].height()), (128, 128));
    let (pa, pb) = (a.images[0].as_raw(), b.images[0].as_raw());
    let mean_diff = pa.iter().zip(pb).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>() / pa.len() as f64;
    println!("mean |difference| per byte: {mean_diff:.3}");
    assert!(mean_diff > 0.0, "the option changed nothing");
    assert!(mean_diff < 8.0, "mean |difference| {mean_diff:.3} per byte");
}

/// The names of [`three_candidates`]' candidates.
#[cfg(feature = "cuda")]
const CANDIDATE_NAMES: [&str; 3] = ["eight passes", "broken", "one pass"];

/// Three candidates of one kernel choice, counted in `runs`: the GELU of `x` into `y` as eight
/// passes, an error, and one pass.
#[cfg(feature = "cuda")]
fn three_candidates<'a>(
    x: &'a cascade::Tensor,
    y: &'a mut cascade::Tensor,
    runs: &'a mut [usize; 3],
) -> impl FnMut(usize) -> cascade::Result<()> + 'a {
    move |i: usize| {
        runs[i] += 1;
        match i {
            0 => (0..8).try_for_each(|_| cascade::ops::gelu_into(x, y)),
            1 => Err(cascade::Error::Shape("this candidate cannot run".into())),
            _ => cascade::ops::gelu_into(x, y),
        }
    }
}

/// Three candidates of one elementwise pass: eight passes, an error, one pass. The fast one
/// is kept, once per shape; inside a capture an unseen shape takes the static choice and is
/// counted for `capture_tuned`.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn kernel_choice_by_timing_keeps_the_fastest_candidate_once_per_shape() {
    use cascade::cuda::KernelTuning;
    use cascade::{DType, Device, Tensor};
    let device = Device::cuda(0).expect("this test needs a CUDA GPU");
    let Device::Cuda(dev) = &device else { unreachable!("a CUDA device") };
    let n = 1 << 14;
    let x = Tensor::from_f32(&vec![0.5; n], &[n], DType::F32, &device).unwrap();
    let mut y = Tensor::empty(&[n], DType::F32, &device).unwrap();
    let mut runs = [0usize; 3];
    let mut run = three_candidates(&x, &mut y, &mut runs);
    let names = CANDIDATE_NAMES;
    let on = KernelTuning::On;
    assert_eq!(dev.choose_kernel_as(on, "test", &[1], &names, &mut run).unwrap(), 2);
    assert_eq!(dev.choose_kernel_as(on, "test", &[1], &names, &mut run).unwrap(), 2);
    assert_eq!(dev.choose_kernel_as(KernelTuning::Off, "test", &[3], &names, &mut run).unwrap(), 0);
    drop(run);
    let mut runs_after = [0usize; 3];
    let untuned = dev.untuned_gemms_captured();
    let mut in_capture = None;
    let graph = dev.capture(|| {
        in_capture = Some(dev.choose_kernel_as(on, "test", &[2], &names, &mut |i| {
            runs_after[i] += 1;
            Ok(())
        })?);
        cascade::ops::gelu_into(&x, &mut y)
    });
    graph.unwrap();
    assert_eq!(in_capture, Some(0));
    assert!(dev.untuned_gemms_captured() > untuned);
    assert_eq!(runs_after, [0, 0, 0]);
    // The first choice ran each candidate once directly and four times in a capture (the
    // broken one once); the second and the untuned ones ran nothing.
    assert_eq!(runs, [1 + 4, 1, 1 + 4]);
    let tested: Vec<_> = dev.kernel_choices().into_iter().filter(|c| c.0 == "test").collect();
    assert_eq!(tested, vec![("test", vec![1], 2)]);
}

/// Kernel choices kept in a tuning file by name: a second device takes them without running
/// any candidate, follows an edited entry, and times a shape whose entry names no candidate.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn kernel_choices_are_kept_in_the_tuning_file() {
    use cascade::cuda::KernelTuning;
    use cascade::{DType, Device, Tensor};
    let path = std::env::temp_dir().join(format!("cascade-kernel-tuning-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // Chooses for shape `dims` on a new device using the file; returns the choice and the runs
    // of each candidate.
    let choose = |dims: &[usize]| {
        let device = Device::cuda(0).expect("this test needs a CUDA GPU");
        let Device::Cuda(dev) = &device else { unreachable!("a CUDA device") };
        dev.set_tuning_file(Some(&path)).unwrap();
        let n = 1 << 14;
        let x = Tensor::from_f32(&vec![0.5; n], &[n], DType::F32, &device).unwrap();
        let mut y = Tensor::empty(&[n], DType::F32, &device).unwrap();
        let mut runs = [0usize; 3];
        let mut run = three_candidates(&x, &mut y, &mut runs);
        let c = dev.choose_kernel_as(KernelTuning::On, "test-file", dims, &CANDIDATE_NAMES, &mut run).unwrap();
        drop(run);
        (c, runs)
    };
    let (c, runs) = choose(&[7]);
    assert_eq!(c, 2);
    assert_eq!(runs, [5, 1, 5], "timed");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("kernel test-file [7] = one pass\n"), "{text}");
    assert_eq!(choose(&[7]), (2, [0, 0, 0]), "taken from the file");
    std::fs::write(&path, text.replace("= one pass", "= eight passes")).unwrap();
    assert_eq!(choose(&[7]), (0, [0, 0, 0]), "an edited entry is followed");
    std::fs::write(&path, text.replace("= one pass", "= a kernel since removed")).unwrap();
    assert_eq!(choose(&[7]), (2, [5, 1, 5]), "an unknown name is timed again");
    assert!(std::fs::read_to_string(&path).unwrap().contains("kernel test-file [7] = one pass\n"));
    let _ = std::fs::remove_file(&path);
}
