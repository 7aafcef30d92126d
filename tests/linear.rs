//! `linear`: the CPU reference against values computed with PyTorch, and the cuBLASLt path
//! against the CPU reference over the real layer shapes (GPU tests are ignored without one).

#![allow(clippy::excessive_precision)] // literals are PyTorch's printed values

use cascade::testing::{rel_l2, round_to, TestRng};
use cascade::{ops, DType, Device, Tensor};

/// Generated with PyTorch 2.15 (CPU):
/// ```python
/// import torch
/// x = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
/// w = torch.tensor([[0.1, 0.2, 0.3], [-0.4, 0.5, -0.6], [0.7, -0.8, 0.9], [1.0, 1.1, -1.2]])
/// b = torch.tensor([0.01, -0.02, 0.03, -0.04])
/// print(torch.nn.functional.linear(x, w, b).tolist())
/// ```
const TORCH_LINEAR: [[f32; 4]; 2] =
    [[0.46000001, -1.92000008, 2.97999978, -3.03999996], [-0.01500001, -0.04500001, 0.20500001, 2.63499999]];

#[test]
fn cpu_linear_matches_pytorch() {
    let x = Tensor::from_f32(&[0.5, -1.0, 2.0, 1.5, 0.25, -0.75], &[2, 3], DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::from_f32(&[0.1, 0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9, 1.0, 1.1, -1.2], &[4, 3], DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::from_f32(&[0.01, -0.02, 0.03, -0.04], &[4], DType::F32, &Device::Cpu).unwrap();
    let y = ops::linear(&x, &w, Some(&b)).unwrap();
    assert_eq!(y.shape(), &[2, 4]);
    let got = y.to_vec_f32().unwrap();
    for (g, w) in got.iter().zip(TORCH_LINEAR.iter().flatten()) {
        assert!((g - w).abs() < 1e-6, "{got:?}");
    }
}

#[test]
fn linear_keeps_leading_dims_and_rejects_bad_shapes() {
    let x = Tensor::zeros(&[2, 5, 3], DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros(&[4, 3], DType::F32, &Device::Cpu).unwrap();
    assert_eq!(ops::linear(&x, &w, None).unwrap().shape(), &[2, 5, 4]);
    let bad = Tensor::zeros(&[4, 2], DType::F32, &Device::Cpu).unwrap();
    let e = ops::linear(&x, &bad, None).unwrap_err().to_string();
    assert!(e.contains("[4, 2]") && e.contains("[2, 5, 3]"), "{e}");
    let bias = Tensor::zeros(&[5], DType::F32, &Device::Cpu).unwrap();
    assert!(ops::linear(&x, &w, Some(&bias)).unwrap_err().to_string().contains("bias"));
    let wb = Tensor::zeros(&[4, 3], DType::BF16, &Device::Cpu).unwrap();
    assert!(ops::linear(&x, &wb, None).unwrap_err().to_string().contains("mixed dtypes"));
}

#[test]
fn cpu_linear_in_bf16_rounds_its_output() {
    let mut rng = TestRng::new(3);
    let (m, k, n) = (7, 19, 5);
    let xv = round_to(&rng.normal(m * k, 1.0), DType::BF16);
    let wv = round_to(&rng.normal(n * k, 0.2), DType::BF16);
    let x = Tensor::from_f32(&xv, &[m, k], DType::BF16, &Device::Cpu).unwrap();
    let w = Tensor::from_f32(&wv, &[n, k], DType::BF16, &Device::Cpu).unwrap();
    let y = ops::linear(&x, &w, None).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let want = round_to(&ops::cpu::linear(&xv, &wv, None, m, k, n), DType::BF16);
    assert_eq!(y.to_vec_f32().unwrap(), want);
    assert!(rel_l2(&y.to_vec_f32().unwrap(), &want) == 0.0);
}

#[test]
fn cuda_without_a_driver_or_feature_is_an_error() {
    // On a machine with a GPU this opens it; elsewhere it must be a clear error, not a panic.
    match Device::cuda(0) {
        Ok(d) => assert!(d.describe().starts_with("cuda:0")),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("CUDA is not available"), "{e}");
        }
    }
    assert!(Device::parse("cuda:9999").is_err());
    assert!(Device::parse("tpu").unwrap_err().to_string().contains("unknown device"));
}

/// `y += x·wᵀ + b` equals the linear layer plus the old y.
#[test]
fn linear_accumulate_adds_to_the_output() {
    let (m, k, n) = (5, 7, 3);
    let mut rng = TestRng::new(9);
    let (xv, wv, bv, yv) = (rng.normal(m * k, 1.0), rng.normal(n * k, 0.5), rng.normal(n, 0.5), rng.normal(m * n, 1.0));
    let x = Tensor::from_f32(&xv, &[m, k], DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::from_f32(&wv, &[n, k], DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::from_f32(&bv, &[n], DType::F32, &Device::Cpu).unwrap();
    let mut y = Tensor::from_f32(&yv, &[m, n], DType::F32, &Device::Cpu).unwrap();
    ops::linear_accumulate_into(&x, &w, Some(&b), &mut y).unwrap();
    let want: Vec<f32> = ops::cpu::linear(&xv, &wv, Some(&bv), m, k, n).iter().zip(&yv).map(|(l, r)| l + r).collect();
    assert_eq!(y.to_vec_f32().unwrap(), want);
}

/// bf16 products added to an f32 output (a residual stream kept in f32): the sum is not rounded
/// to bf16, and a bf16 bias or mixed output types are refused.
#[test]
fn bf16_products_accumulate_into_f32() {
    let (m, k, n) = (5, 7, 3);
    let mut rng = TestRng::new(19);
    let (xv, wv) = (round_to(&rng.normal(m * k, 1.0), DType::BF16), round_to(&rng.normal(n * k, 0.5), DType::BF16));
    let (bv, yv) = (rng.normal(n, 0.5), rng.normal(m * n, 1.0));
    let x = Tensor::from_f32(&xv, &[m, k], DType::BF16, &Device::Cpu).unwrap();
    let w = Tensor::from_f32(&wv, &[n, k], DType::BF16, &Device::Cpu).unwrap();
    let b = Tensor::from_f32(&bv, &[n], DType::F32, &Device::Cpu).unwrap();
    let mut y = Tensor::from_f32(&yv, &[m, n], DType::F32, &Device::Cpu).unwrap();
    ops::linear_accumulate_into(&x, &w, Some(&b), &mut y).unwrap();
    let want: Vec<f32> = ops::cpu::linear(&xv, &wv, Some(&bv), m, k, n).iter().zip(&yv).map(|(l, r)| l + r).collect();
    assert_eq!(y.to_vec_f32().unwrap(), want);
    assert_ne!(round_to(&want, DType::BF16), want, "the check needs sums that bf16 would round");
    let b16 = Tensor::from_f32(&bv, &[n], DType::BF16, &Device::Cpu).unwrap();
    let e = ops::linear_accumulate_into(&x, &w, Some(&b16), &mut y).unwrap_err().to_string();
    assert!(e.contains("bf16 inputs cannot give f32"), "{e}");
    let xf = Tensor::from_f32(&xv, &[m, k], DType::F32, &Device::Cpu).unwrap();
    assert!(ops::linear_accumulate_into(&xf, &w, Some(&b), &mut y).is_err(), "f32 x with bf16 w");
}

/// `linear_columns_into` on the CPU: column ranges of wider x and y, the other columns of y
/// untouched, with and without accumulation, against the plain linear of the gathered columns.
#[test]
fn linear_on_column_ranges() {
    let (m, kx, ny, k, n, xc, yc) = (7, 11, 9, 4, 3, 5, 2);
    let mut rng = TestRng::new(41);
    let (xv, wv, bv, yv) = (rng.normal(m * kx, 1.0), rng.normal(n * k, 1.0), rng.normal(n, 1.0), rng.normal(m * ny, 1.0));
    let t = |v: &[f32], s: &[usize]| Tensor::from_f32(v, s, DType::F32, &Device::Cpu).unwrap();
    let part = ops::cpu::linear(&ops::cpu::columns(&xv, kx, xc, k), &wv, Some(&bv), m, k, n);
    for accumulate in [false, true] {
        let mut y = t(&yv, &[m, ny]);
        ops::linear_columns_into(&t(&xv, &[m, kx]), xc, &t(&wv, &[n, k]), Some(&t(&bv, &[n])), &mut y, yc, accumulate).unwrap();
        let got = y.to_vec_f32().unwrap();
        for r in 0..m {
            for j in 0..ny {
                let old = yv[r * ny + j];
                let want = if (yc..yc + n).contains(&j) { part[r * n + j - yc] + if accumulate { old } else { 0.0 } } else { old };
                assert!((got[r * ny + j] - want).abs() < 1e-5, "row {r} col {j}: {} vs {want}", got[r * ny + j]);
            }
        }
    }
    // Column ranges past either edge are shape errors.
    let mut y = t(&yv, &[m, ny]);
    assert!(ops::linear_columns_into(&t(&xv, &[m, kx]), 8, &t(&wv, &[n, k]), None, &mut y, 0, false).is_err());
    assert!(ops::linear_columns_into(&t(&xv, &[m, kx]), 0, &t(&wv, &[n, k]), None, &mut y, 7, false).is_err());
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use cascade::ops::shapes::LINEAR;
    use cascade::testing::{check_guard, linear_operands, max_abs_diff, poisoned};

    fn gpu() -> Device {
        Device::cuda(0).expect("this test needs a CUDA GPU")
    }

    /// `y = x·wᵀ` captured by `capture_tuned`, and how many warm-ups it ran first (one when the
    /// shape's cuBLASLt algorithm had not been chosen yet, else none).
    fn capture_product(
        cuda: &std::sync::Arc<cascade::cuda::CudaDevice>,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
    ) -> (cascade::cuda::Graph, usize) {
        let mut warmups = 0;
        let graph = cuda
            .capture_tuned(
                || {
                    warmups += 1;
                    ops::linear(x, w, None).map(drop)
                },
                || ops::linear_into(x, w, None, y),
            )
            .unwrap();
        (graph, warmups)
    }

    /// Every shape of the table, f32 (strict, no TF32) and bf16, against the CPU reference
    /// computed from the same (rounded) inputs.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_linear_matches_cpu_reference() {
        let dev = gpu();
        for (i, s) in LINEAR.iter().enumerate() {
            if !cascade::testing::shape_wanted(s.name) {
                continue;
            }
            // CPU reference cost grows as m·k·n: subsample rows of the big shapes.
            for dtype in [DType::F32, DType::BF16] {
                let mut rng = TestRng::new(100 + i as u64);
                let [(x, xv), (w, wv), (b, bv)] = linear_operands(&mut rng, (s.m, s.k, s.n), dtype, &dev).unwrap();
                let (mut y, whole) = poisoned(&[s.m, s.n], dtype, &dev).unwrap();
                ops::linear_into(&x, &w, Some(&b), &mut y).unwrap();
                let got = y.to_vec_f32().unwrap();
                check_guard(&whole, s.name).unwrap();
                let rows: Vec<usize> = (0..s.m).step_by((s.m / 256).max(1)).collect();
                let g = cascade::testing::pick_rows(&got, s.n, &rows);
                let xs = cascade::testing::pick_rows(&xv, s.k, &rows);
                let want = ops::cpu::linear(&xs, &wv, Some(&bv), rows.len(), s.k, s.n);
                let err = rel_l2(&g, &want);
                let (at, worst) = max_abs_diff(&g, &want);
                let bound = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
                println!("linear {:<16} {dtype:<4} rel_l2 {err:.2e} worst |d| {worst:.2e} at {at}", s.name);
                assert!(err < bound, "{} {dtype}: rel_l2 {err:.3e} >= {bound:e}", s.name);
            }
        }
    }

    /// `y += x·wᵀ + b` in place (cuBLASLt's β = 1 with C = D), f32 and bf16, against the CPU.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_linear_accumulate_matches_cpu_reference() {
        let dev = gpu();
        // The second shape is one the skinny GEMM takes when it is on (CASCADE_GEMM_SKINNY=1).
        for ((m, k, n), dtype) in [(67, 96, 40), (37, 192, 320)].into_iter().flat_map(|s| [(s, DType::F32), (s, DType::BF16)]) {
            let mut rng = TestRng::new(31);
            let xv = round_to(&rng.normal(m * k, 1.0), dtype);
            let wv = round_to(&rng.normal(n * k, 0.1), dtype);
            let bv = round_to(&rng.normal(n, 0.5), dtype);
            let yv = round_to(&rng.normal(m * n, 1.0), dtype);
            let x = Tensor::from_f32(&xv, &[m, k], dtype, &dev).unwrap();
            let w = Tensor::from_f32(&wv, &[n, k], dtype, &dev).unwrap();
            let b = Tensor::from_f32(&bv, &[n], dtype, &dev).unwrap();
            let mut y = Tensor::from_f32(&yv, &[m, n], dtype, &dev).unwrap();
            ops::linear_accumulate_into(&x, &w, Some(&b), &mut y).unwrap();
            let want: Vec<f32> = ops::cpu::linear(&xv, &wv, Some(&bv), m, k, n).iter().zip(&yv).map(|(l, r)| l + r).collect();
            let err = rel_l2(&y.to_vec_f32().unwrap(), &want);
            let bound = if dtype == DType::F32 { 1e-6 } else { 5e-3 };
            println!("linear_accumulate {m}×{k}×{n} {dtype:<4} rel_l2 {err:.2e}");
            assert!(err < bound, "{dtype}: {err}");
        }
    }

    /// bf16 products added to an f32 output in place (cuBLASLt with A, B bf16 and C, D f32, the
    /// bias f32): the residual GEMMs of a stream kept in f32. Against the CPU, held to the f32
    /// bound: nothing is rounded to bf16 after the products.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_bf16_products_accumulate_into_f32() {
        let dev = gpu();
        // Stage C's attention output projection too, where there is a real GPU.
        let real = std::env::var("CASCADE_EMU").is_err();
        for (m, k, n) in [(67, 96, 40), (1152, 2048, 2048)].into_iter().filter(|&(m, _, _)| real || m < 100) {
            let mut rng = TestRng::new(37);
            let xv = round_to(&rng.normal(m * k, 1.0), DType::BF16);
            let wv = round_to(&rng.normal(n * k, 0.05), DType::BF16);
            let (bv, yv) = (rng.normal(n, 0.5), rng.normal(m * n, 1.0));
            let x = Tensor::from_f32(&xv, &[m, k], DType::BF16, &dev).unwrap();
            let w = Tensor::from_f32(&wv, &[n, k], DType::BF16, &dev).unwrap();
            let b = Tensor::from_f32(&bv, &[n], DType::F32, &dev).unwrap();
            let mut y = Tensor::from_f32(&yv, &[m, n], DType::F32, &dev).unwrap();
            ops::linear_accumulate_into(&x, &w, Some(&b), &mut y).unwrap();
            let want: Vec<f32> = ops::cpu::linear(&xv, &wv, Some(&bv), m, k, n).iter().zip(&yv).map(|(l, r)| l + r).collect();
            let err = rel_l2(&y.to_vec_f32().unwrap(), &want);
            println!("linear_accumulate bf16 into f32 {m}x{k}x{n} rel_l2 {err:.2e}");
            assert!(err < 1e-5, "{m}x{k}x{n}: {err}");
        }
    }

    /// Operands that are views at odd offsets (2-byte aligned bf16) still multiply correctly:
    /// the plan is chosen for the actual alignment, not cuBLASLt's default of 256 bytes.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_linear_on_misaligned_views() {
        let dev = gpu();
        let (m, k, n) = (5, 64, 48);
        let xv = round_to(&TestRng::new(5).normal(m * k + 1, 1.0), DType::BF16);
        let wv = round_to(&TestRng::new(6).normal(n * k, 0.1), DType::BF16);
        let big = Tensor::from_f32(&xv, &[m * k + 1], DType::BF16, &dev).unwrap();
        let x = big.alias(1, &[m, k]).unwrap();
        let w = Tensor::from_f32(&wv, &[n, k], DType::BF16, &dev).unwrap();
        let (mut y, whole) = poisoned(&[m, n], DType::BF16, &dev).unwrap();
        ops::linear_into(&x, &w, None, &mut y).unwrap();
        check_guard(&whole, "misaligned").unwrap();
        let want = ops::cpu::linear(&xv[1..], &wv, None, m, k, n);
        let err = rel_l2(&y.to_vec_f32().unwrap(), &want);
        assert!(err < 1e-2, "{err}");
    }

    /// `linear_columns_into` on the GPU (strided rows through cuBLASLt's leading dimensions, an
    /// unaligned column start) against the CPU, accumulating into a y whose other columns stay.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_linear_on_column_ranges() {
        let dev = gpu();
        let (m, kx, ny, k, n, xc, yc) = (37, 100, 72, 32, 24, 7, 16);
        let mut rng = TestRng::new(43);
        for dtype in [DType::F32, DType::BF16] {
            let r = |len: usize, s: f32, rng: &mut TestRng| round_to(&rng.normal(len, s), dtype);
            let (xv, wv, bv, yv) = (r(m * kx, 1.0, &mut rng), r(n * k, 0.2, &mut rng), r(n, 0.5, &mut rng), r(m * ny, 1.0, &mut rng));
            let t = |v: &[f32], s: &[usize], d: &Device| Tensor::from_f32(v, s, dtype, d).unwrap();
            for accumulate in [false, true] {
                let mut want = t(&yv, &[m, ny], &Device::Cpu);
                ops::linear_columns_into(
                    &t(&xv, &[m, kx], &Device::Cpu),
                    xc,
                    &t(&wv, &[n, k], &Device::Cpu),
                    Some(&t(&bv, &[n], &Device::Cpu)),
                    &mut want,
                    yc,
                    accumulate,
                )
                .unwrap();
                let mut y = t(&yv, &[m, ny], &dev);
                ops::linear_columns_into(
                    &t(&xv, &[m, kx], &dev),
                    xc,
                    &t(&wv, &[n, k], &dev),
                    Some(&t(&bv, &[n], &dev)),
                    &mut y,
                    yc,
                    accumulate,
                )
                .unwrap();
                let err = rel_l2(&y.to_vec_f32().unwrap(), &want.to_vec_f32().unwrap());
                let bound = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
                println!("linear columns {dtype} accumulate {accumulate}: rel_l2 {err:.2e}");
                assert!(err < bound, "{dtype} accumulate {accumulate}: rel_l2 {err:.3e}");
            }
        }
    }

    /// A GEMM shape first met inside a capture is tuned by `capture_tuned`'s warm-up, and the
    /// graph it keeps holds no untuned GEMM; the tuned algorithm computes the same product.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_linear_capture_tuned_times_new_shapes_first() {
        let dev = gpu();
        let cuda = dev.as_cuda("test").unwrap().clone();
        let tuning = std::env::var("CASCADE_GEMM_TUNE").map_or(true, |v| v != "0" && v != "off");
        // A shape no other test uses, so that it is new to this process.
        let (m, k, n) = (37, 88, 72);
        let xv = round_to(&TestRng::new(11).normal(m * k, 1.0), DType::BF16);
        let wv = round_to(&TestRng::new(12).normal(n * k, 0.1), DType::BF16);
        let x = Tensor::from_f32(&xv, &[m, k], DType::BF16, &dev).unwrap();
        let w = Tensor::from_f32(&wv, &[n, k], DType::BF16, &dev).unwrap();
        let y = Tensor::empty(&[m, n], DType::BF16, &dev).unwrap();
        let mut y_read = y.view(&[m, n]).unwrap();
        let mut y = y;
        let before = cuda.untuned_gemms_captured();
        let (graph, warmups) = capture_product(&cuda, &x, &w, &mut y);
        // Only the first capture met the shape untuned; the kept one did not.
        assert_eq!(cuda.untuned_gemms_captured() - before, usize::from(tuning));
        assert_eq!(warmups, usize::from(tuning));
        // Known now: a second capture needs no warm-up.
        let again = cuda.capture_tuned(|| panic!("no warm-up expected"), || ops::linear_into(&x, &w, None, &mut y)).unwrap();
        assert_eq!(cuda.untuned_gemms_captured() - before, usize::from(tuning));
        for g in [&graph, &again] {
            y_read.fill(f32::NAN).unwrap();
            g.replay().unwrap();
            let err = rel_l2(&y_read.to_vec_f32().unwrap(), &ops::cpu::linear(&xv, &wv, None, m, k, n));
            assert!(err < 1e-2, "{err}");
        }
    }

    /// The buffers a captured body allocates live in the graph's own arena: the graph holds the
    /// GEMM and the copy only (no memory nodes), two buffers with disjoint lifetimes share arena
    /// memory, and replays compute the right result. With poisoning on, a body that reads a
    /// buffer it never wrote gives NaN on every replay, however the previous replay left it.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_graph_buffers_live_in_the_graph_arena() {
        let dev = gpu();
        let cuda = dev.as_cuda("test").unwrap().clone();
        let (m, k, n) = (64, 96, 80);
        let xv = round_to(&TestRng::new(4).normal(m * k, 1.0), DType::BF16);
        let x = Tensor::from_f32(&xv, &[m, k], DType::BF16, &dev).unwrap();
        let w = Tensor::from_f32(&TestRng::new(5).normal(n * k, 0.1), &[n, k], DType::BF16, &dev).unwrap();
        let mut y = Tensor::empty(&[m, n], DType::F32, &dev).unwrap();
        // Poisoning adds memset nodes (the emulator and the GPU bundle turn it on for tests).
        cuda.set_poison_graph_memory(false);
        let before = cuda.graphs_captured();
        let graph = cuda
            .capture(|| {
                // The first buffer is dead before the second is allocated: the arena reuses it.
                let mut scratch = Tensor::empty(&[m, n], DType::BF16, &dev)?;
                ops::linear_into(&x, &w, None, &mut scratch)?;
                drop(scratch);
                let mut h = Tensor::empty(&[m, n], DType::BF16, &dev)?;
                ops::linear_into(&x, &w, None, &mut h)?;
                ops::cast_into(&h, &mut y)
            })
            .unwrap();
        assert_eq!(cuda.graphs_captured() - before, 2, "one capture to size the arena, one into it");
        assert!(!graph.has_memory_nodes());
        // The emulator records a cuBLASLt call as one node; a GPU's cuBLASLt may launch more.
        if std::env::var_os("CASCADE_EMU").is_some() {
            assert_eq!(graph.node_count().unwrap(), 3, "two GEMMs and a cast, nothing else");
        }
        assert_eq!(graph.arena_bytes(), (m * n * 2).div_ceil(256) * 256, "the two buffers share one range");
        let want = ops::cpu::linear(&xv, &w.to_vec_f32().unwrap(), None, m, k, n);
        for _ in 0..2 {
            y.fill(f32::NAN).unwrap();
            graph.replay().unwrap();
            let err = rel_l2(&y.to_vec_f32().unwrap(), &want);
            assert!(err < 1e-2, "{err}");
        }
        cuda.set_poison_graph_memory(true);
        let unwritten = cuda
            .capture(|| {
                let h = Tensor::empty(&[m, n], DType::BF16, &dev)?;
                ops::cast_into(&h, &mut y)
            })
            .unwrap();
        for _ in 0..2 {
            y.fill(0.0).unwrap();
            unwritten.replay().unwrap();
            assert!(y.to_vec_f32().unwrap().iter().all(|v| v.is_nan()), "an unwritten graph buffer read as numbers");
        }
    }

    /// A captured graph replays the same GEMM with new input data.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_linear_replays_in_a_graph_and_arena() {
        let dev = gpu();
        let cuda = dev.as_cuda("test").unwrap().clone();
        let (m, k, n) = (64, 96, 80);
        let mut arena = cascade::Arena::new(&dev, 1 << 20).unwrap();
        let mut x = arena.tensor(&[m, k], DType::BF16).unwrap();
        let w = Tensor::from_f32(&TestRng::new(1).normal(n * k, 0.1), &[n, k], DType::BF16, &dev).unwrap();
        let mut y = arena.tensor(&[m, n], DType::BF16).unwrap();
        x.fill(0.0).unwrap();
        let graph = cuda.capture(|| ops::linear_into(&x, &w, None, &mut y)).unwrap();
        for seed in 0..3 {
            let xv = round_to(&TestRng::new(seed).normal(m * k, 1.0), DType::BF16);
            let fresh = Tensor::from_f32(&xv, &[m, k], DType::BF16, &dev).unwrap();
            ops::cast_into(&fresh, &mut x).unwrap();
            y.fill(f32::NAN).unwrap();
            graph.replay().unwrap();
            let want = ops::cpu::linear(&xv, &w.to_vec_f32().unwrap(), None, m, k, n);
            let err = rel_l2(&y.to_vec_f32().unwrap(), &want);
            assert!(err < 1e-2, "replay {seed}: {err}");
        }
    }

    /// Devices opened and dropped on another thread while this one captures (their module
    /// loads and unloads may make the driver synchronise the GPU) leave the captures intact, and
    /// each graph computes its GEMM. Every shape is new, so each capture also makes its cuBLASLt
    /// plan inside the capture.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_captures_survive_devices_opened_and_dropped_on_other_threads() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let dev = gpu();
        let cuda = dev.as_cuda("test").unwrap().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let churn = {
            let (stop, opened) = (stop.clone(), opened.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let other = gpu();
                    let t = Tensor::from_f32(&[1.0; 64], &[8, 8], DType::BF16, &other).unwrap();
                    drop((t, other));
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let start = std::time::Instant::now();
        let mut captures = 0;
        // The time bound only guards against a hang: on the CPU emulator a device's opening is
        // slow (its start-up checks emulate the wgmma attention kernels), both counts need time,
        // and the other tests of this binary open devices of their own meanwhile (alone, 20
        // captures took 17 s on 2 cores; beside the tuning-file test, 12 took 60 s).
        while (opened.load(Ordering::Relaxed) < 8 || captures < 20) && start.elapsed().as_secs() < 300 {
            let (m, k, n) = (8 + captures, 64, 40 + 8 * (captures % 7));
            let xv = round_to(&TestRng::new(captures as u64).normal(m * k, 1.0), DType::BF16);
            let wv = round_to(&TestRng::new(1000 + captures as u64).normal(n * k, 0.1), DType::BF16);
            let x = Tensor::from_f32(&xv, &[m, k], DType::BF16, &dev).unwrap();
            let w = Tensor::from_f32(&wv, &[n, k], DType::BF16, &dev).unwrap();
            let mut y = Tensor::empty(&[m, n], DType::BF16, &dev).unwrap();
            let graph = cuda.capture(|| ops::linear_into(&x, &w, None, &mut y)).unwrap_or_else(|e| panic!("capture {captures}: {e}"));
            y.fill(f32::NAN).unwrap();
            graph.replay().unwrap();
            let err = rel_l2(&y.to_vec_f32().unwrap(), &ops::cpu::linear(&xv, &wv, None, m, k, n));
            assert!(err < 1e-2, "capture {captures}: rel_l2 {err}");
            captures += 1;
        }
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap();
        let opened = opened.load(Ordering::Relaxed);
        println!("{captures} captures while another thread opened and dropped {opened} devices");
        assert!(opened >= 8 && captures >= 20, "too little overlap: {captures} captures, {opened} devices");
    }

    /// A tuning file keeps each GEMM shape's timed cuBLASLt algorithm. A second device (as a
    /// later process would) takes it from the file: the shape met first inside a capture needs
    /// no warm-up, and the same candidate runs. An entry naming an algorithm the heuristic does
    /// not offer, or a file made for another card, is timed again and rewritten.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_linear_tuning_file_keeps_the_algorithm_choices() {
        if std::env::var("CASCADE_GEMM_TUNE").is_ok_and(|v| v == "0" || v == "off") {
            println!("skipped: CASCADE_GEMM_TUNE=0 times nothing");
            return;
        }
        let path = std::env::temp_dir().join(format!("cascade-linear-tuning-{}.txt", std::process::id()));
        let _ = std::fs::remove_file(&path);
        // A shape no other test uses.
        let (m, k, n) = (29, 40, 24);
        let xv = round_to(&TestRng::new(21).normal(m * k, 1.0), DType::BF16);
        let wv = round_to(&TestRng::new(22).normal(n * k, 0.1), DType::BF16);
        let want = ops::cpu::linear(&xv, &wv, None, m, k, n);
        let shape_key = format!("gemm {m}x{k}x{n} bf16>bf16 ");
        // Captures the GEMM on a new device using the file; returns the warm-ups it needed,
        // the candidate it ran and the product's error.
        let run = |file: &std::path::Path| {
            let dev = gpu();
            let cuda = dev.as_cuda("test").unwrap().clone();
            cuda.set_tuning_file(Some(file)).unwrap();
            assert_eq!(cuda.tuning_file().as_deref(), Some(file));
            let x = Tensor::from_f32(&xv, &[m, k], DType::BF16, &dev).unwrap();
            let w = Tensor::from_f32(&wv, &[n, k], DType::BF16, &dev).unwrap();
            let mut y = Tensor::empty(&[m, n], DType::BF16, &dev).unwrap();
            let mut y_read = y.view(&[m, n]).unwrap();
            let (graph, warmups) = capture_product(&cuda, &x, &w, &mut y);
            y_read.fill(f32::NAN).unwrap();
            graph.replay().unwrap();
            let err = rel_l2(&y_read.to_vec_f32().unwrap(), &want);
            let chosen = cuda.gemm_choices().into_iter().find(|(key, _)| key.starts_with(&shape_key)).map(|c| c.1);
            (warmups, chosen.expect("the shape's choice is listed"), err)
        };
        let (warmups, first, err) = run(&path);
        assert_eq!(warmups, 1, "a new shape is timed");
        assert!(err < 1e-2, "{err}");
        let text = std::fs::read_to_string(&path).expect("the choice was written");
        assert!(text.contains(&shape_key), "{text}");
        // Read back by a second device: no timing, the same candidate.
        let (warmups, again, err) = run(&path);
        assert_eq!((warmups, again), (0, first), "taken from the file");
        assert!(err < 1e-2, "{err}");
        // An algorithm the heuristic does not offer: timed again, and the file corrected.
        let forged: String = text
            .lines()
            .map(|l| {
                if l.starts_with(&shape_key) {
                    format!("{} = {}", l.split(" = ").next().unwrap(), ["ffffffffffffffff"; 8].join(" "))
                } else {
                    l.into()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&path, forged).unwrap();
        let (warmups, _, err) = run(&path);
        assert_eq!(warmups, 1, "an unknown algorithm is timed again");
        assert!(err < 1e-2, "{err}");
        assert!(!std::fs::read_to_string(&path).unwrap().contains("ffffffffffffffff"));
        // A file made for another card: not used, rewritten for this one.
        let foreign: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| if l.starts_with("for = ") { "for = some other card".into() } else { l.to_string() })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&path, foreign).unwrap();
        let (warmups, _, _) = run(&path);
        assert_eq!(warmups, 1, "another card's file is not used");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("some other card") && text.contains(&shape_key), "{text}");
        let _ = std::fs::remove_file(&path);
    }

    /// The device's GEMM defaults (what the stages bench's `CASCADE_BENCH_AB` sets between
    /// captures) decide which kernel a product takes, ahead of the switches: the fused fc1's and
    /// the stream-K fc2's decisions follow them, a product set to stream-K gives the explicit
    /// stream-K kernel's output bit for bit, and one set off stays near the reference. A kernel
    /// that did not pass its start-up check is never taken.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_gemm_defaults_decide_the_kernel() {
        use cascade::ops::GemmOptions;
        let dev = gpu();
        let cuda = dev.as_cuda("test").unwrap().clone();
        let (m, k, n) = (128, 256, 192);
        let bf = |v: Vec<f32>, shape: &[usize]| Tensor::from_f32(&round_to(&v, DType::BF16), shape, DType::BF16, &dev).unwrap();
        let xv = round_to(&TestRng::new(31).normal(m * k, 1.0), DType::BF16);
        let wv = round_to(&TestRng::new(32).normal(n * k, 0.05), DType::BF16);
        let bv = round_to(&TestRng::new(33).normal(n, 0.1), DType::BF16);
        let fv: Vec<f32> = TestRng::new(34).normal(k, 0.3).iter().map(|v| 1.0 + v).collect();
        let (x, w, bias) = (bf(xv.clone(), &[1, m, k]), bf(wv.clone(), &[n, k]), bf(bv.clone(), &[n]));
        let factor = Tensor::from_f32(&fv, &[1, k], DType::F32, &dev).unwrap();
        let gamma = bf(TestRng::new(35).normal(n, 0.1), &[n]);
        let scaled_x: Vec<f32> = xv.iter().enumerate().map(|(i, v)| v * fv[i % k]).collect();
        let want = ops::cpu::linear(&scaled_x, &wv, Some(&bv), m, k, n);
        let product = |accumulate: bool, with_factor: bool| {
            let (mut y, _) = cascade::testing::poisoned(&[1, m, n], DType::BF16, &dev).unwrap();
            if accumulate {
                y.fill(0.0).unwrap();
                ops::linear_accumulate_into(&x, &w, Some(&bias), &mut y).unwrap();
            } else {
                ops::linear_scaled_into(&x, with_factor.then_some(&factor), &w, Some(&bias), &mut y, false).unwrap();
            }
            y.to_vec_f32().unwrap()
        };
        let explicit = |accumulate: bool| {
            let mut y = Tensor::zeros(&[1, m, n], DType::BF16, &dev).unwrap();
            let f = (!accumulate).then_some(&factor);
            ops::linear_scaled_sk_into(&x, f, &w, Some(&bias), &mut y, accumulate, None).map(|_| y.to_vec_f32().unwrap())
        };
        let before = cuda.gemm_defaults();
        cuda.set_gemm_defaults(GemmOptions::default());
        let fused_by_switch = ops::linear_gelu_grn_fused(&x, &w, None, &gamma).unwrap();
        println!("fused fc1 by the switch alone: {fused_by_switch}");
        for on in [false, true] {
            // (Skinny stays unset: where it is checked it would take the residual product.)
            let set = GemmOptions {
                fused_fc1: Some(on),
                fc1_stream_k: None,
                fc1_tall: None,
                fc1_pair: None,
                stream_k_fc2: Some(on),
                stream_k: Some(on),
                skinny: None,
                ws_gelu: Some(on),
            };
            cuda.set_gemm_defaults(set);
            assert_eq!(cuda.gemm_defaults(), set);
            // The fused fc1: off never; on wherever the switch alone would (it asks for the check).
            let fused = ops::linear_gelu_grn_fused(&x, &w, None, &gamma).unwrap();
            assert!(!fused || on, "fused fc1 taken while set off");
            if on && cascade::cuda::gemm_wgmma_requested() {
                assert_eq!(fused, fused_by_switch, "fused fc1 not taken while set on");
            }
            // Set on, its version: the stream-K one where fc1_stream_k says so (and it passed its
            // check), the tall one where fc1_tall does, the paired one where fc1_pair does, the
            // requested one where all say not.
            if on {
                use ops::FusedGrnKernel as K;
                let versions =
                    [(K::WgmmaSk, cuda.grn_sk_gemm()), (K::WgmmaWsTall, cuda.grn_tall_gemm()), (K::WgmmaWsPair, cuda.grn_pair_gemm())];
                for (version, available) in versions {
                    for chosen in [true, false] {
                        let sk = version == K::WgmmaSk && chosen;
                        let tall = version == K::WgmmaWsTall && chosen;
                        let pair = version == K::WgmmaWsPair && chosen;
                        cuda.set_gemm_defaults(GemmOptions { fc1_stream_k: Some(sk), fc1_tall: Some(tall), fc1_pair: Some(pair), ..set });
                        let kernel = ops::linear_gelu_grn_kernel(&x, &w, None, &gamma).unwrap();
                        println!("fused fc1 with fc1_stream_k {sk}, fc1_tall {tall}, fc1_pair {pair}: {kernel:?}");
                        if chosen {
                            assert_eq!(kernel, available.then_some(version), "{version:?} set on");
                        } else {
                            assert!(kernel != Some(version), "{version:?} set off, but taken");
                            let others = matches!(K::requested(), K::WgmmaSk | K::WgmmaWsTall | K::WgmmaWsPair);
                            assert_eq!(kernel.is_some(), cuda.wgmma_gemm() && !others);
                        }
                    }
                }
                cuda.set_gemm_defaults(set);
            }
            assert_eq!(ops::linear_scaled_fused(&dev, m, k, n), on && cuda.scaled_gemm(), "stream-K fc2's decision");
            let fc2 = product(false, true);
            let residual = product(true, false);
            cuda.set_gemm_defaults(GemmOptions::default());
            let err = rel_l2(&fc2, &want);
            println!("stream-K fc2 set {on} (available {}): rel_l2 {err:.2e}", cuda.scaled_gemm());
            assert!(err < 1e-2, "{err}");
            if on && cuda.scaled_gemm() {
                assert!(fc2 == explicit(false).unwrap(), "set on, but not the stream-K kernel's output");
            }
            let plain_want = ops::cpu::linear(&xv, &wv, Some(&bv), m, k, n);
            assert!(rel_l2(&residual, &plain_want) < 1e-2);
            if on && cuda.sk_gemm() && !cuda.skinny_gemm() {
                assert!(residual == explicit(true).unwrap(), "set on, but not the stream-K kernel's output");
            }
        }
        cuda.set_gemm_defaults(before);
    }
}
