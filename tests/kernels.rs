//! Every CUDA kernel against its CPU reference, over the shape tables of
//! `cascade::ops::shapes` (the real models' shapes plus odd sizes), in f32 and bf16, on fresh
//! seeded random inputs. Outputs are NaN-poisoned before each launch and followed by a guard
//! band that must be intact afterwards. These tests need a GPU: without one they are ignored.
//!
//! bf16 runs feed the CPU reference the same bf16-rounded inputs, so the error measured is the
//! kernel's own (f32 arithmetic, one rounding at the store). Bounds: f32 ≤ 1e-5, bf16 ≤ 1e-2
//! relative L2 (measured values are printed).
#![cfg(feature = "cuda")]

use cascade::ops::{self, cpu, shapes, AttentionMask, Padding};
use cascade::testing::{check_guard, linear_operands, max_abs_diff, pick_rows, poisoned, rel_l2, round_to, TestRng};
use cascade::{DType, Device, Tensor};

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

fn gpu() -> Device {
    Device::cuda(0).expect("this test needs a CUDA GPU")
}

/// Random values of `shape` as a GPU tensor of `dtype`, plus the values it holds (rounded).
fn input(rng: &mut TestRng, shape: &[usize], scale: f32, dtype: DType, dev: &Device) -> (Tensor, Vec<f32>) {
    let v = round_to(&rng.normal(shape.iter().product(), scale), dtype);
    (Tensor::from_f32(&v, shape, dtype, dev).unwrap(), v)
}

fn wanted(name: &str) -> bool {
    cascade::testing::shape_wanted(name)
}

fn bound(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        1e-5
    } else {
        1e-2
    }
}

/// Compares `got` (already copied back) with `want`, checks the guard band (`whole` is the
/// buffer from `poisoned`; None for composite ops whose kernels are guard-checked alone),
/// prints a row.
fn verify(op: &str, name: &str, dtype: DType, got: &[f32], whole: Option<&Tensor>, want: &[f32]) {
    if let Some(whole) = whole {
        check_guard(whole, &format!("{op} {name} {dtype}")).unwrap();
    }
    assert!(got.iter().all(|v| v.is_finite()), "{op} {name} {dtype}: non-finite output (an element was not written?)");
    let err = rel_l2(got, want);
    let (at, worst) = max_abs_diff(got, want);
    println!("{op:<20} {name:<20} {dtype:<4} rel_l2 {err:.2e}  worst |d| {worst:.2e} at {at}");
    assert!(err <= bound(dtype), "{op} {name} {dtype}: rel_l2 {err:.3e} > {:e}", bound(dtype));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layer_norm_kernel() {
    let dev = gpu();
    for (i, s) in shapes::ROWS.iter().enumerate() {
        if !wanted(s.name) {
            continue;
        }
        for dtype in DTYPES {
            for affine in [false, true] {
                let mut rng = TestRng::new(1000 + i as u64);
                let (x, xv) = input(&mut rng, &[s.rows, s.c], 2.0, dtype, &dev);
                let (w, wv) = input(&mut rng, &[s.c], 1.0, dtype, &dev);
                let (b, bv) = input(&mut rng, &[s.c], 1.0, dtype, &dev);
                let eps = if affine { 1e-5 } else { 1e-6 };
                let (mut y, whole) = poisoned(&[s.rows, s.c], dtype, &dev).unwrap();
                let (wt, bt) = if affine { (Some(&w), Some(&b)) } else { (None, None) };
                ops::layer_norm_into(&x, wt, bt, eps, &mut y).unwrap();
                let want = cpu::layer_norm(&xv, s.c, affine.then_some(&wv[..]), affine.then_some(&bv[..]), eps);
                verify(
                    if affine { "layer_norm_affine" } else { "layer_norm" },
                    s.name,
                    dtype,
                    &y.to_vec_f32().unwrap(),
                    Some(&whole),
                    &want,
                );
                // x one element past a 16-byte boundary: the one-element-per-access path.
                let (big, bigv) = input(&mut rng, &[s.rows * s.c + 1], 2.0, dtype, &dev);
                let xm = big.alias(1, &[s.rows, s.c]).unwrap();
                y.fill(f32::NAN).unwrap();
                ops::layer_norm_into(&xm, wt, bt, eps, &mut y).unwrap();
                let want = cpu::layer_norm(&bigv[1..], s.c, affine.then_some(&wv[..]), affine.then_some(&bv[..]), eps);
                verify("layer_norm unaligned", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &want);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn activation_kernels() {
    let dev = gpu();
    for (i, s) in shapes::ROWS.iter().enumerate() {
        if !wanted(s.name) {
            continue;
        }
        for dtype in DTYPES {
            let mut rng = TestRng::new(2000 + i as u64);
            let (x, xv) = input(&mut rng, &[s.rows, s.c], 2.0, dtype, &dev);
            let (b, bv) = input(&mut rng, &[s.c], 1.0, dtype, &dev);
            let (mut y, whole) = poisoned(&[s.rows, s.c], dtype, &dev).unwrap();
            ops::gelu_into(&x, &mut y).unwrap();
            verify("gelu", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &xv.iter().map(|&v| cpu::gelu(v)).collect::<Vec<_>>());
            y.fill(f32::NAN).unwrap();
            ops::silu_into(&x, &mut y).unwrap();
            verify("silu", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &xv.iter().map(|&v| cpu::silu(v)).collect::<Vec<_>>());
            // In place (the MLPs' GELU): x's values, overwritten.
            ops::cast_into(&x, &mut y).unwrap();
            ops::gelu_assign(&mut y).unwrap();
            verify(
                "gelu in place",
                s.name,
                dtype,
                &y.to_vec_f32().unwrap(),
                Some(&whole),
                &xv.iter().map(|&v| cpu::gelu(v)).collect::<Vec<_>>(),
            );
            y.fill(f32::NAN).unwrap();
            ops::bias_gelu_into(&x, &b, &mut y).unwrap();
            let want: Vec<f32> = xv.iter().enumerate().map(|(k, &v)| cpu::gelu(v + bv[k % s.c])).collect();
            verify("bias_gelu", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &want);
            // x one element past a 16-byte boundary: the one-element-per-access path.
            let (big, bigv) = input(&mut rng, &[s.rows * s.c + 1], 2.0, dtype, &dev);
            let xm = big.alias(1, &[s.rows, s.c]).unwrap();
            y.fill(f32::NAN).unwrap();
            ops::bias_gelu_into(&xm, &b, &mut y).unwrap();
            let want: Vec<f32> = bigv[1..].iter().enumerate().map(|(k, &v)| cpu::gelu(v + bv[k % s.c])).collect();
            verify("bias_gelu unaligned", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &want);
        }
    }
}

/// An MLP's first layer and its GELU, `gelu(x·wᵀ + b)` (`ops::linear_gelu_into`: in bf16 on a
/// GPU cuBLASLt's GELU epilogue, the tanh form; in f32 the product then the erf GELU), over every
/// linear shape of the table, with and without the bias, against the CPU's erf GELU of the same
/// rounded inputs (rows subsampled on the large shapes, the last row always).
#[test]
#[ignore = "needs a CUDA GPU"]
fn linear_gelu_kernel() {
    let dev = gpu();
    let ws = cascade::testing::wgmma_testable(&dev, std::env::var("CASCADE_GEMM_WS_GELU").is_ok_and(|v| matches!(v.trim(), "1" | "force")));
    for (i, s) in shapes::LINEAR.iter().enumerate() {
        if !wanted(s.name) {
            continue;
        }
        for dtype in [DType::F32, DType::BF16] {
            let mut rng = TestRng::new(500 + i as u64);
            let [(x, xv), (w, wv), (b, bv)] = linear_operands(&mut rng, (s.m, s.k, s.n), dtype, &dev).unwrap();
            let rows: Vec<usize> = (0..s.m).step_by((s.m / 256).max(1)).chain([s.m - 1]).collect();
            let xs = pick_rows(&xv, s.k, &rows);
            for with_bias in [true, false] {
                let (mut y, whole) = poisoned(&[s.m, s.n], dtype, &dev).unwrap();
                ops::linear_gelu_into(&x, &w, with_bias.then_some(&b), &mut y).unwrap();
                let got = y.to_vec_f32().unwrap();
                check_guard(&whole, s.name).unwrap();
                let g = pick_rows(&got, s.n, &rows);
                let want: Vec<f32> =
                    cpu::linear(&xs, &wv, with_bias.then_some(&bv[..]), rows.len(), s.k, s.n).iter().map(|&v| cpu::gelu(v)).collect();
                verify(&format!("linear_gelu bias {with_bias}"), s.name, dtype, &g, None, &want);
                // The warp-specialised GEMM by name where it can run (bf16, K and N multiples of
                // 8), into poisoned memory: every element written, against the same reference.
                if dtype == DType::BF16 && ws && s.k % 8 == 0 && s.n % 8 == 0 {
                    let (mut y, whole) = poisoned(&[s.m, s.n], dtype, &dev).unwrap();
                    ops::linear_gelu_ws_into(&x, &w, with_bias.then_some(&b), &mut y).unwrap();
                    let got = y.to_vec_f32().unwrap();
                    assert!(got.iter().all(|v| v.is_finite()), "linear_gelu_ws {}: an element was not written", s.name);
                    let g = pick_rows(&got, s.n, &rows);
                    verify(&format!("linear_gelu_ws bias {with_bias}"), s.name, dtype, &g, Some(&whole), &want);
                } else if dtype == DType::BF16 && ws {
                    // What it cannot take is an error, not a launch.
                    let err = ops::linear_gelu_ws_into(&x, &w, with_bias.then_some(&b), &mut y).unwrap_err();
                    assert!(err.to_string().contains("multiples of 8"), "{err}");
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn grn_kernels() {
    let dev = gpu();
    for (i, s) in shapes::GRN.iter().enumerate() {
        if !wanted(s.name) {
            continue;
        }
        for dtype in DTYPES {
            let mut rng = TestRng::new(3000 + i as u64);
            let (x, xv) = input(&mut rng, &[s.b, s.n, s.d], 1.0, dtype, &dev);
            let (g, gv) = input(&mut rng, &[1, 1, 1, s.d], 0.5, dtype, &dev);
            let (be, bev) = input(&mut rng, &[1, 1, 1, s.d], 0.5, dtype, &dev);
            let mut stats = Tensor::empty(&[s.b, s.d], DType::F32, &dev).unwrap();
            stats.fill(f32::NAN).unwrap();
            let (mut y, whole) = poisoned(&[s.b, s.n, s.d], dtype, &dev).unwrap();
            ops::grn_into(&x, &g, &be, &mut stats, &mut y).unwrap();
            verify("grn", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &cpu::grn(&xv, s.b, s.n, s.d, &gv, &bev));
            // The factor it applied, left in stats: f32 whatever the dtype (bf16's bound on y
            // would let a factor 1 % off pass).
            let want_scale = cpu::grn_scale(&xv, s.b, s.n, s.d, &gv);
            verify("grn factor (grn_into)", s.name, DType::F32, &stats.to_vec_f32().unwrap(), None, &want_scale);
            // x one element past a 16-byte boundary: two channels per thread, one per access.
            let (big, bigv) = input(&mut rng, &[s.b * s.n * s.d + 1], 1.0, dtype, &dev);
            let xm = big.alias(1, &[s.b, s.n, s.d]).unwrap();
            y.fill(f32::NAN).unwrap();
            ops::grn_into(&xm, &g, &be, &mut stats, &mut y).unwrap();
            let want = cpu::grn(&bigv[1..], s.b, s.n, s.d, &gv, &bev);
            verify("grn unaligned", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &want);

            // GELU then GRN in place (the ResBlock's middle): the reference sums the stored
            // (rounded) GELU values, as the kernel does.
            let (mut u, whole) = poisoned(&[s.b, s.n, s.d], dtype, &dev).unwrap();
            ops::cast_into(&x, &mut u).unwrap();
            ops::gelu_grn_assign(&mut u, &g, &be).unwrap();
            let gelu = round_to(&xv.iter().map(|&v| cpu::gelu(v)).collect::<Vec<_>>(), dtype);
            let want_gelu_grn = cpu::grn(&gelu, s.b, s.n, s.d, &gv, &bev);
            verify("gelu+grn", s.name, dtype, &u.to_vec_f32().unwrap(), Some(&whole), &want_gelu_grn);

            // GRN in place without GELU, and its factor alone with x left as it is (the ResBlock's
            // paths when fc1's GEMM applied GELU).
            let (mut u, whole) = poisoned(&[s.b, s.n, s.d], dtype, &dev).unwrap();
            ops::cast_into(&x, &mut u).unwrap();
            ops::grn_assign(&mut u, &g, &be).unwrap();
            verify("grn in place", s.name, dtype, &u.to_vec_f32().unwrap(), Some(&whole), &cpu::grn(&xv, s.b, s.n, s.d, &gv, &bev));
            let factor = ops::grn_factor(&x, &g).unwrap();
            verify(
                "grn factor (no gelu)",
                s.name,
                DType::F32,
                &factor.to_vec_f32().unwrap(),
                None,
                &cpu::grn_scale(&xv, s.b, s.n, s.d, &gv),
            );
            assert_eq!(x.to_vec_f32().unwrap(), xv, "grn_factor must leave x as it is");

            // GELU in place and GRN's factor only (f32 [B, D]), then a weight scaled by one
            // sample's factor: the ResBlock's path when fc2's weight is smaller than u.
            let (mut u, whole) = poisoned(&[s.b, s.n, s.d], dtype, &dev).unwrap();
            ops::cast_into(&x, &mut u).unwrap();
            let factor = ops::gelu_grn_factor(&mut u, &g).unwrap();
            verify("gelu (factor path)", s.name, dtype, &u.to_vec_f32().unwrap(), Some(&whole), &gelu);
            let want_f = cpu::grn_scale(&gelu, s.b, s.n, s.d, &gv);
            // The factor is f32 whatever the dtype: held to the f32 bound.
            verify("grn factor", s.name, DType::F32, &factor.to_vec_f32().unwrap(), None, &want_f);
            let (w, wv) = input(&mut rng, &[7, s.d], 1.0, dtype, &dev);
            let f0 = factor.alias(0, &[1, s.d]).unwrap();
            let scaled = ops::scale_columns(&w, &f0).unwrap();
            verify("scale_columns", s.name, dtype, &scaled.to_vec_f32().unwrap(), None, &cpu::scale_columns(&wv, s.d, &want_f[..s.d]));
        }
    }
}

/// A ResBlock's first MLP layer with GRN's statistics (`linear_gelu_grn_factor_into`): the fused
/// wgmma GEMM (kernels/gemm.cu; compute capability 9.0, run on the emulator or where
/// `CASCADE_GEMM_WGMMA=1` asks for it: a fault there would end the context) and the separate path,
/// into poisoned outputs. u is checked against the CPU's `gelu(x·wᵀ + b)`; the factor against the
/// CPU's factor of the u the GPU returned, so the sums are held to the f32 bound; then the factor
/// applied (`grn_apply_factor_assign`) against the CPU formula.
#[test]
#[ignore = "needs a CUDA GPU"]
fn linear_gelu_grn_kernels() {
    use ops::FusedGrnKernel as K;
    let dev = gpu();
    let fused = cascade::testing::wgmma_testable(&dev, cascade::cuda::gemm_wgmma_requested());
    // Every real ResBlock's fc1 and odd shapes (shapes::MLP_GRN).
    for (i, sh) in shapes::MLP_GRN.iter().enumerate() {
        let (name, b, rows, k, n) = (sh.name, sh.b, sh.rows, sh.k, sh.n);
        if !wanted(name) {
            continue;
        }
        let dtype = DType::BF16;
        let mut rng = TestRng::new(3500 + i as u64);
        let (x, xv) = input(&mut rng, &[b, rows, k], 1.0, dtype, &dev);
        let (w, wv) = input(&mut rng, &[n, k], 1.0 / (k as f32).sqrt(), dtype, &dev);
        let (bias, biasv) = input(&mut rng, &[n], 0.5, dtype, &dev);
        let (g, gv) = input(&mut rng, &[n], 0.5, dtype, &dev);
        let (be, bev) = input(&mut rng, &[n], 0.5, dtype, &dev);
        // Rows checked against the CPU product: all of them on the small cases, every 61st
        // (and the last) on the large ones.
        let step = if b * rows * n > 1 << 20 { 61 } else { 1 };
        let sel: Vec<usize> = (0..b * rows).step_by(step).chain([b * rows - 1]).collect();
        // The stream-K version also on a few blocks (5 and 7): blocks then take several tiles,
        // and tiles are cut into pieces at places the one-per-SM grid does not reach. The paired
        // version (a cluster launch) on the emulator beside the others; on a GPU only where it
        // is asked for (CASCADE_GEMM_WGMMA=ws_pair), and then alone, until it has run on one: a
        // hang would take the process, and its test step runs beside the others' there.
        let emulated = std::env::var_os("CASCADE_EMU").is_some();
        let pair_tested = emulated || K::requested() == K::WgmmaWsPair;
        let kernels: &[(K, Option<usize>)] = if fused && pair_tested && !emulated {
            &[(K::WgmmaWsPair, None)]
        } else if fused {
            &[
                (K::WgmmaWs, None),
                (K::WgmmaWsDeep, None),
                (K::WgmmaSk, None),
                (K::WgmmaSk, Some(5)),
                (K::WgmmaSk, Some(7)),
                (K::WgmmaWsTall, None),
                (K::Separate, None),
                (K::WgmmaWsPair, None),
            ][..if pair_tested { 8 } else { 7 }]
        } else {
            &[(K::Separate, None)]
        };
        // u's reference on the checked rows, for every kernel.
        let xs = pick_rows(&xv, k, &sel);
        let want: Vec<f32> = cpu::linear(&xs, &wv, Some(&biasv), sel.len(), k, n).iter().map(|&v| cpu::gelu(v)).collect();
        for &(kernel, blocks) in kernels {
            let (mut u, u_whole) = poisoned(&[b, rows, n], dtype, &dev).unwrap();
            let (mut factor, f_whole) = poisoned(&[b, n], DType::F32, &dev).unwrap();
            match blocks {
                Some(_) => ops::norm::linear_gelu_grn_sk_into(&x, &w, Some(&bias), &g, &mut u, &mut factor, blocks).unwrap(),
                None => ops::linear_gelu_grn_factor_into(&x, &w, Some(&bias), &g, kernel, &mut u, &mut factor).unwrap(),
            }
            let uv = u.to_vec_f32().unwrap();
            let what = match blocks {
                Some(n) => format!("{kernel:?} on {n} blocks"),
                None => format!("{kernel:?}"),
            };
            // Every counter the launch counted with is back at zero for the next one.
            let set = dev.as_cuda("linear_gelu_grn").unwrap().completion_counters_set().unwrap();
            assert_eq!(set, 0, "linear_gelu_grn {what} {name}: {set} completion counters left set");
            assert!(uv.iter().all(|v| v.is_finite()), "linear_gelu_grn u {what} {name}: an element was not written");
            let got = pick_rows(&uv, n, &sel);
            verify(&format!("linear_gelu_grn u {what}"), name, dtype, &got, Some(&u_whole), &want);
            let want_f = cpu::grn_scale(&uv, b, rows, n, &gv);
            verify(&format!("linear_gelu_grn factor {what}"), name, DType::F32, &factor.to_vec_f32().unwrap(), Some(&f_whole), &want_f);
            ops::grn_apply_factor_assign(&mut u, &factor, &be).unwrap();
            let want_a: Vec<f32> = uv.iter().enumerate().map(|(j, &v)| v * want_f[(j / (rows * n)) * n + j % n] + bev[j % n]).collect();
            verify(&format!("grn_apply_factor {what}"), name, dtype, &u.to_vec_f32().unwrap(), Some(&u_whole), &want_a);
        }
        if fused {
            // What the kernel cannot take is an error, not a launch: positions per sample not a
            // multiple of 64.
            let (x2, _) = input(&mut rng, &[2, 96, k], 1.0, dtype, &dev);
            let err = ops::linear_gelu_grn_factor(&x2, &w, Some(&bias), &g, K::WgmmaWs).map(|_| ()).unwrap_err();
            assert!(err.to_string().contains("multiple of 64"), "{err}");
        }
    }
}

/// A ResBlock's second layer with GRN's factor on its input (`ops::linear_scaled_sk_into`, the
/// stream-K wgmma kernel; compute capability 9.0, opt-in): every real ResBlock's fc2 and odd
/// shapes (`shapes::MLP_GRN` with K and N swapped), into an f32 output it adds to (the residual
/// stream) and a bf16 one it writes and one it adds to, on the default grid and, on the odd
/// shapes, on grids that cut the tiles into pieces at odd places (one block: no pieces).
#[test]
#[ignore = "needs a CUDA GPU"]
fn linear_scaled_kernels() {
    let dev = gpu();
    let asked = ["CASCADE_GEMM_WS_FC2", "CASCADE_GEMM_SK"].iter().any(|v| std::env::var(v).is_ok_and(|v| v.trim() == "1"));
    if !cascade::testing::wgmma_testable(&dev, asked) {
        println!(
            "linear_scaled: the stream-K kernel is not tested here (compute capability 9.0 and CASCADE_GEMM_WS_FC2=1 or CASCADE_GEMM_SK=1, or the emulator)"
        );
        return;
    }
    for (i, sh) in shapes::MLP_GRN.iter().enumerate() {
        let (name, b, rows, k, n) = (sh.name, sh.b, sh.rows, sh.n, sh.k);
        if !wanted(name) {
            continue;
        }
        let m = b * rows;
        let mut rng = TestRng::new(3700 + i as u64);
        let (x, xv) = input(&mut rng, &[b, rows, k], 1.0, DType::BF16, &dev);
        let (w, wv) = input(&mut rng, &[n, k], 1.0 / (k as f32).sqrt(), DType::BF16, &dev);
        // GRN's factors are 1 + γ·N/mean(N): around 1, some far from it.
        let fv: Vec<f32> = rng.normal(b * k, 0.5).iter().map(|v| 1.0 + v).collect();
        let factor = Tensor::from_f32(&fv, &[b, k], DType::F32, &dev).unwrap();
        let sel: Vec<usize> = (0..m).step_by(if m * n > 1 << 20 { 61 } else { 1 }).chain([m - 1]).collect();
        let grids: &[Option<usize>] = if name.starts_with("odd") { &[None, Some(1), Some(2), Some(5), Some(13)] } else { &[None] };
        // The last case without a factor: the kernel as a plain residual product (CASCADE_GEMM_SK=1).
        for (dtype, accumulate, scaled) in
            [(DType::F32, true, true), (DType::BF16, false, true), (DType::BF16, true, true), (DType::F32, true, false)]
        {
            let (bias, biasv) = input(&mut rng, &[n], 0.5, dtype, &dev);
            let (y0, y0v) = input(&mut rng, &[b, rows, n], 1.0, dtype, &dev);
            // x ⊙ factor rounded to bf16, as the kernel (and GRN's apply pass) round it: an f32
            // output then carries only the order of the sums.
            let xs: Vec<f32> = sel
                .iter()
                .flat_map(|&r| (0..k).map(move |j| (r, j)))
                .map(|(r, j)| xv[r * k + j] * if scaled { fv[(r / rows) * k + j] } else { 1.0 })
                .collect();
            let products = cpu::linear(&round_to(&xs, DType::BF16), &wv, Some(&biasv), sel.len(), k, n);
            let want: Vec<f32> =
                products.iter().enumerate().map(|(i, v)| v + if accumulate { y0v[sel[i / n] * n + i % n] } else { 0.0 }).collect();
            for &grid in grids {
                let (mut y, whole) = poisoned(&[b, rows, n], dtype, &dev).unwrap();
                ops::cast_into(&y0, &mut y).unwrap();
                ops::linear_scaled_sk_into(&x, scaled.then_some(&factor), &w, Some(&bias), &mut y, accumulate, grid).unwrap();
                let got = y.to_vec_f32().unwrap();
                assert!(got.iter().all(|v| v.is_finite()), "linear_scaled {name}: an element was not written");
                let g = pick_rows(&got, n, &sel);
                let what = format!(
                    "linear_scaled {}{} grid {grid:?}",
                    if accumulate { "+=" } else { "=" },
                    if scaled { "" } else { " no factor" }
                );
                verify(&what, name, dtype, &g, Some(&whole), &want);
            }
        }
        // What it cannot take is an error, not a launch: rows per sample not a multiple of 16.
        let (x2, _) = input(&mut rng, &[2, 8, k], 1.0, DType::BF16, &dev);
        let f2 = Tensor::from_f32(&vec![1.0; 2 * k], &[2, k], DType::F32, &dev).unwrap();
        let mut y2 = Tensor::empty(&[2, 8, n], DType::BF16, &dev).unwrap();
        let err = ops::linear_scaled_sk_into(&x2, Some(&f2), &w, None, &mut y2, false, None).unwrap_err();
        assert!(err.to_string().contains("multiple of 16"), "{err}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn depthwise_kernels() {
    let dev = gpu();
    for (i, (s, replicate, ln)) in shapes::DEPTHWISE.iter().enumerate() {
        if !wanted(s.name) {
            continue;
        }
        for dtype in DTYPES {
            for fuse in [false, *ln] {
                let mut rng = TestRng::new(4000 + i as u64);
                let shape = [s.b, s.h, s.w, s.c];
                let (x, xv) = input(&mut rng, &shape, 1.0, dtype, &dev);
                let (w, wv) = input(&mut rng, &[s.c, 1, 3, 3], 0.3, dtype, &dev);
                let (b, bv) = input(&mut rng, &[s.c], 0.3, dtype, &dev);
                let pad = if *replicate { Padding::Replicate } else { Padding::Zero };
                let eps = fuse.then_some(1e-6);
                let (mut y, whole) = poisoned(&shape, dtype, &dev).unwrap();
                ops::depthwise3x3_into(&x, &w, &b, pad, eps, &mut y).unwrap();
                let want = cpu::depthwise3x3(&xv, s.b, s.h, s.w, s.c, &wv, &bv, *replicate, eps);
                verify(if fuse { "depthwise+ln" } else { "depthwise" }, s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &want);
            }
            // y += conv(x) (Stage A's residual), onto a residual r of fresh values.
            let mut rng = TestRng::new(4500 + i as u64);
            let shape = [s.b, s.h, s.w, s.c];
            let (x, xv) = input(&mut rng, &shape, 1.0, dtype, &dev);
            let (w, wv) = input(&mut rng, &[s.c, 1, 3, 3], 0.3, dtype, &dev);
            let (b, bv) = input(&mut rng, &[s.c], 0.3, dtype, &dev);
            let (r, rv) = input(&mut rng, &shape, 1.0, dtype, &dev);
            let pad = if *replicate { Padding::Replicate } else { Padding::Zero };
            let (mut y, whole) = poisoned(&shape, dtype, &dev).unwrap();
            ops::cast_into(&r, &mut y).unwrap();
            ops::depthwise3x3_accumulate_into(&x, &w, &b, pad, &mut y).unwrap();
            let conv = cpu::depthwise3x3(&xv, s.b, s.h, s.w, s.c, &wv, &bv, *replicate, None);
            let want: Vec<f32> = conv.iter().zip(&rv).map(|(c, r)| c + r).collect();
            verify("depthwise+=", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &want);

            // x + conv(LayerNorm(x)) with the LayerNorm applied as the taps are read (Stage A).
            let (lw, lwv) = input(&mut rng, &[s.c], 0.5, dtype, &dev);
            let (lb, lbv) = input(&mut rng, &[s.c], 0.5, dtype, &dev);
            let got = ops::depthwise3x3_prenorm_residual(&r, &lw, &lb, 1e-6, &w, &b, pad).unwrap();
            let t = cpu::layer_norm(&rv, s.c, Some(&lwv), Some(&lbv), 1e-6);
            let conv = cpu::depthwise3x3(&t, s.b, s.h, s.w, s.c, &wv, &bv, *replicate, None);
            let want: Vec<f32> = conv.iter().zip(&rv).map(|(c, r)| c + r).collect();
            verify("ln→depthwise+x", s.name, dtype, &got.to_vec_f32().unwrap(), None, &want);
            // The same, also writing the result's affine LayerNorm (Stage A's MixBlock), from the
            // result as stored.
            let (ow, owv) = input(&mut rng, &[s.c], 0.5, dtype, &dev);
            let (ob, obv) = input(&mut rng, &[s.c], 0.5, dtype, &dev);
            let (got, n) = ops::depthwise3x3_prenorm_residual_ln(&r, &lw, &lb, 1e-6, &w, &b, pad, (&ow, &ob)).unwrap();
            verify("ln→depthwise+x (2 out)", s.name, dtype, &got.to_vec_f32().unwrap(), None, &want);
            let stored = got.to_vec_f32().unwrap();
            let want_n = cpu::layer_norm(&stored, s.c, Some(&owv), Some(&obv), 1e-6);
            verify("ln→depthwise+x→ln", s.name, dtype, &n.to_vec_f32().unwrap(), None, &want_n);

            // A TimestepBlock's modulation applied as the taps are read, then the conv and its
            // LayerNorm (Stage B's first levels): ab is a column range of a wider tensor, 5 in
            // (unaligned: one channel per thread) or 8 in (aligned when C is a multiple of 8:
            // eight per thread); the modulated x comes back in place of x, rounded as the
            // separate op stores it.
            for col in [5, 8] {
                if *replicate {
                    break;
                }
                let (ab, abv) = input(&mut rng, &[s.b, 2 * s.c + 16], 0.5, dtype, &dev);
                let cols = cpu::columns(&abv, 2 * s.c + 16, col, 2 * s.c);
                let modulated = round_to(&cpu::modulate(&rv, &cols, s.b, s.h * s.w, s.c), dtype);
                let mut xm = Tensor::empty(&shape, dtype, &dev).unwrap();
                ops::cast_into(&r, &mut xm).unwrap();
                let got = ops::modulate_depthwise3x3_ln(&mut xm, &ab, col, &w, &b, pad, 1e-6).unwrap();
                verify("modulate→depthwise x", s.name, dtype, &xm.to_vec_f32().unwrap(), None, &modulated);
                let want = cpu::depthwise3x3(&modulated, s.b, s.h, s.w, s.c, &wv, &bv, false, Some(1e-6));
                verify("modulate→depthwise+ln", s.name, dtype, &got.to_vec_f32().unwrap(), None, &want);
            }
            // An f32 residual stream with bf16 weights (the ResBlock's first pass): x modulated in
            // f32 (or not at all), convolved as its bf16 copy, the LayerNorm written as bf16, in
            // one pass. Held tighter than the bf16 bound: a kernel that skipped the rounding of
            // the taps would be about 2.5e-3 off.
            if dtype == DType::F32 && !*replicate {
                let (wh, whv) = input(&mut rng, &[s.c, 1, 3, 3], 0.3, DType::BF16, &dev);
                let (bh, bhv) = input(&mut rng, &[s.c], 0.3, DType::BF16, &dev);
                let (ab, abv) = input(&mut rng, &[s.b, 2 * s.c + 16], 0.5, dtype, &dev);
                for col in [None, Some(5), Some(8)] {
                    let mut xm = Tensor::empty(&shape, dtype, &dev).unwrap();
                    ops::cast_into(&r, &mut xm).unwrap();
                    let got = ops::stream_depthwise3x3_ln(&mut xm, col.map(|c| (&ab, c)), &wh, &bh, pad, 1e-6).unwrap();
                    assert_eq!(got.dtype(), DType::BF16);
                    let what = format!("f32>bf16 depthwise+ln (modulation at {col:?})");
                    let modulated = match col {
                        Some(c) => cpu::modulate(&rv, &cpu::columns(&abv, 2 * s.c + 16, c, 2 * s.c), s.b, s.h * s.w, s.c),
                        None => rv.clone(),
                    };
                    verify(&format!("{what} x"), s.name, dtype, &xm.to_vec_f32().unwrap(), None, &modulated);
                    let conv = cpu::depthwise3x3(&round_to(&modulated, DType::BF16), s.b, s.h, s.w, s.c, &whv, &bhv, false, Some(1e-6));
                    let want = round_to(&conv, DType::BF16);
                    let got = got.to_vec_f32().unwrap();
                    verify(&what, s.name, DType::BF16, &got, None, &want);
                    let err = rel_l2(&got, &want);
                    assert!(err < 5e-4, "{what} {}: {err:.3e}", s.name);
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn shuffle_im2col_resize_concat_kernels() {
    let dev = gpu();
    for (i, s) in shapes::UNSHUFFLE.iter().enumerate() {
        if !wanted(s.name) {
            continue;
        }
        for dtype in DTYPES {
            let mut rng = TestRng::new(5000 + i as u64);
            let (x, xv) = input(&mut rng, &[s.b, s.h, s.w, s.c], 1.0, dtype, &dev);
            let lo = [s.b, s.h / 2, s.w / 2, s.c * 4];
            let (mut y, whole) = poisoned(&lo, dtype, &dev).unwrap();
            ops::pixel_unshuffle_into(&x, 2, &mut y).unwrap();
            let got = y.to_vec_f32().unwrap();
            verify("pixel_unshuffle", s.name, dtype, &got, Some(&whole), &cpu::pixel_unshuffle(&xv, s.b, s.h, s.w, s.c, 2));
            let (mut z, whole) = poisoned(&[s.b, s.h, s.w, s.c], dtype, &dev).unwrap();
            ops::pixel_shuffle_into(&y, 2, &mut z).unwrap();
            verify(
                "pixel_shuffle",
                s.name,
                dtype,
                &z.to_vec_f32().unwrap(),
                Some(&whole),
                &cpu::pixel_shuffle(&got, s.b, s.h / 2, s.w / 2, s.c, 2),
            );
            // The same input read sub-pixel-major (the transposed convolution's phase GEMMs).
            let z = ops::pixel_shuffle_phases(&y, 2).unwrap();
            verify(
                "pixel_shuffle_phases",
                s.name,
                dtype,
                &z.to_vec_f32().unwrap(),
                None,
                &cpu::pixel_shuffle_phases(&got, s.b, s.h / 2, s.w / 2, s.c, 2),
            );
            if s.numel() <= 1 << 20 {
                let (mut cols, whole) = poisoned(&[s.b, s.h, s.w, 9 * s.c], dtype, &dev).unwrap();
                ops::im2col3x3_into(&x, &mut cols).unwrap();
                verify("im2col3x3", s.name, dtype, &cols.to_vec_f32().unwrap(), Some(&whole), &cpu::im2col3x3(&xv, s.b, s.h, s.w, s.c));
            }
        }
    }
    for (i, r) in shapes::RESIZE.iter().enumerate() {
        if !wanted(r.x.name) {
            continue;
        }
        for dtype in DTYPES {
            let s = r.x;
            let mut rng = TestRng::new(5100 + i as u64);
            let (x, xv) = input(&mut rng, &[s.b, s.h, s.w, s.c], 1.0, dtype, &dev);
            let (mut y, whole) = poisoned(&[s.b, r.ho, r.wo, s.c], dtype, &dev).unwrap();
            ops::resize_bilinear_into(&x, &mut y).unwrap();
            verify(
                "resize_bilinear",
                s.name,
                dtype,
                &y.to_vec_f32().unwrap(),
                Some(&whole),
                &cpu::resize_bilinear(&xv, s.b, s.h, s.w, s.c, r.ho, r.wo),
            );
        }
    }
    for (i, s) in shapes::CONCAT.iter().enumerate() {
        if !wanted(s.name) {
            continue;
        }
        for dtype in DTYPES {
            let mut rng = TestRng::new(5200 + i as u64);
            let (a, av) = input(&mut rng, &[s.rows, s.ca], 1.0, dtype, &dev);
            let (b, bv) = input(&mut rng, &[s.rows, s.cb], 1.0, dtype, &dev);
            let (mut y, whole) = poisoned(&[s.rows, s.ca + s.cb], dtype, &dev).unwrap();
            ops::concat_channels_into(&a, &b, &mut y).unwrap();
            verify("concat_channels", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &cpu::concat_channels(&av, &bv, s.ca, s.cb));
            // And back: the columns of b inside the concatenation (an offset, a width and a
            // stride that differ).
            let cols = ops::columns(&y, s.ca, s.cb).unwrap();
            verify("columns", s.name, dtype, &cols.to_vec_f32().unwrap(), None, &bv);
            // A bf16 concatenation whose second part is f32 (an f32 residual stream's skip),
            // converted as it is copied: exactly a cast followed by the concatenation.
            if dtype == DType::BF16 {
                let (b32, b32v) = input(&mut rng, &[s.rows, s.cb], 1.0, DType::F32, &dev);
                let (mut y, whole) = poisoned(&[s.rows, s.ca + s.cb], dtype, &dev).unwrap();
                ops::concat_channels_into(&a, &b32, &mut y).unwrap();
                let (got, want) = (y.to_vec_f32().unwrap(), cpu::concat_channels(&av, &round_to(&b32v, dtype), s.ca, s.cb));
                verify("concat_channels bf16+f32", s.name, dtype, &got, Some(&whole), &want);
                assert_eq!(got, want, "concat_channels bf16+f32 {}: not exact", s.name);
            }
        }
    }
}

/// The first `rows` rows of an image `[b, h, w, c]` (b = 1 for the real shapes).
fn crop_rows(v: &[f32], s: &shapes::ImageShape, rows: usize) -> Vec<f32> {
    (0..s.b).flat_map(|b| v[b * s.h * s.w * s.c..][..rows * s.w * s.c].to_vec()).collect()
}

/// The GEMM forms of the strided and transposed convolutions against the direct formulas
/// (`cpu::conv2d`, `cpu::conv_transpose2d`), which run on a crop of the first input rows for
/// the big shapes: the outputs of those rows depend on nothing else.
#[test]
#[ignore = "needs a CUDA GPU"]
fn strided_and_transposed_convolutions() {
    let dev = gpu();
    for (i, cs) in shapes::CONV2X2.iter().enumerate() {
        if !wanted(cs.x.name) {
            continue;
        }
        for dtype in DTYPES {
            let s = cs.x;
            let mut rng = TestRng::new(6000 + i as u64);
            let (x, xv) = input(&mut rng, &[s.b, s.h, s.w, s.c], 1.0, dtype, &dev);
            let (w, wv) = input(&mut rng, &[cs.cout, s.c * 4], 1.0 / (4.0 * s.c as f32).sqrt(), dtype, &dev);
            let (b, bv) = input(&mut rng, &[cs.cout], 0.3, dtype, &dev);
            let got = ops::conv2x2_s2(&x, &w, &b).unwrap().to_vec_f32().unwrap();
            let rows = s.h.min(4);
            let want = cpu::conv2d(&crop_rows(&xv, &s, rows), s.b, rows, s.w, s.c, &wv, Some(&bv), cs.cout, 2, 2, 2, 0, 1);
            let out = shapes::ImageShape { h: s.h / 2, w: s.w / 2, c: cs.cout, ..s };
            verify("conv2x2_s2", s.name, dtype, &crop_rows(&got, &out, rows / 2), None, &want);
        }
    }
    for (i, cs) in shapes::CONV_T2X2.iter().enumerate() {
        if !wanted(cs.x.name) {
            continue;
        }
        for dtype in DTYPES {
            let s = cs.x;
            let mut rng = TestRng::new(6100 + i as u64);
            let (x, xv) = input(&mut rng, &[s.b, s.h, s.w, s.c], 1.0, dtype, &dev);
            let wv = round_to(&rng.normal(s.c * cs.cout * 4, 1.0 / (s.c as f32).sqrt()), dtype);
            let bv = round_to(&rng.normal(cs.cout, 0.3), dtype);
            let (wp, bp) = ops::prepare_conv_transpose2x2(&wv, &bv, s.c, cs.cout).unwrap();
            let w = Tensor::from_f32(&wp, &[cs.cout * 4, s.c], dtype, &dev).unwrap();
            let b = Tensor::from_f32(&bp, &[cs.cout * 4], dtype, &dev).unwrap();
            let got = ops::conv_transpose2x2(&x, &w, &b).unwrap().to_vec_f32().unwrap();
            let rows = s.h.min(4);
            let want = cpu::conv_transpose2d(&crop_rows(&xv, &s, rows), s.b, rows, s.w, s.c, &wv, Some(&bv), cs.cout, 2, 2, 0);
            let out = shapes::ImageShape { h: s.h * 2, w: s.w * 2, c: cs.cout, ..s };
            verify("conv_transpose2x2", s.name, dtype, &crop_rows(&got, &out, rows * 2), None, &want);
        }
    }
    for (i, cs) in shapes::CONV_T4X4.iter().enumerate() {
        if !wanted(cs.x.name) {
            continue;
        }
        for dtype in DTYPES {
            let s = cs.x;
            let mut rng = TestRng::new(6200 + i as u64);
            let (x, xv) = input(&mut rng, &[s.b, s.h, s.w, s.c], 1.0, dtype, &dev);
            let wv = round_to(&rng.normal(s.c * cs.cout * 16, 1.0 / (4.0 * s.c as f32).sqrt()), dtype);
            let bv = round_to(&rng.normal(cs.cout, 0.3), dtype);
            let (wp, bp) = ops::prepare_conv_transpose4x4(&wv, &bv, s.c, cs.cout).unwrap();
            let w = Tensor::from_f32(&wp, &[cs.cout * 8, 2 * s.c], dtype, &dev).unwrap();
            let b = Tensor::from_f32(&bp, &[cs.cout], dtype, &dev).unwrap();
            let got = ops::conv_transpose4x4(&x, &w, &b).unwrap().to_vec_f32().unwrap();
            // With padding 1, output rows 0..2·rows−1 depend only on input rows 0..rows.
            let rows = if s.h > 8 { 2 } else { s.h };
            let exact = if rows == s.h { 2 * rows } else { 2 * rows - 1 };
            let crop = cpu::conv_transpose2d(&crop_rows(&xv, &s, rows), s.b, rows, s.w, s.c, &wv, Some(&bv), cs.cout, 4, 2, 1);
            let crop_shape = shapes::ImageShape { h: 2 * rows, w: 2 * s.w, c: cs.cout, ..s };
            let out = shapes::ImageShape { h: 2 * s.h, w: 2 * s.w, c: cs.cout, ..s };
            verify("conv_transpose4x4", s.name, dtype, &crop_rows(&got, &out, exact), None, &crop_rows(&crop, &crop_shape, exact));
        }
    }
}

/// The wgmma kernels' lean softmax (a row's base kept until a tile's maximum passes it by more
/// than 2^8; the rows' sums on the tensor cores where Q is in registers) against the CPU, beside
/// the full one, on keys whose scale grows along the sequence (σ of the scores from 1 to about
/// 75): later tiles keep passing the base by far more than 2^8, so rows rebase again and again (a
/// missed rebase overflows to inf, a wrong factor or a skipped rescale of O or of the sums shows
/// as a large error), while within a tile most rows keep theirs. Unmasked, and causal with
/// padding; one sample's queries end inside a tile.
#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_lean_softmax_kernel() {
    let dev = gpu();
    if !cascade::testing::wgmma_testable(&dev, cascade::cuda::wgmma_attention_allowed()) {
        return;
    }
    let (b, heads, lq, lk) = (2, 2, 70, 300);
    let c = heads * 64;
    let mut rng = TestRng::new(7400);
    let (q, qv) = input(&mut rng, &[b, lq, c], 1.0, DType::BF16, &dev);
    let (v, vv) = input(&mut rng, &[b, lk, c], 1.0, DType::BF16, &dev);
    let mut kv = rng.normal(b * lk * c, 1.0);
    for (i, x) in kv.iter_mut().enumerate() {
        *x *= 1.0 + ((i / c) % lk) as f32 / 4.0;
    }
    let kv = round_to(&kv, DType::BF16);
    let k = Tensor::from_f32(&kv, &[b, lk, c], DType::BF16, &dev).unwrap();
    let valid = |s: usize| lk - 40 * (s + 1);
    let mv: Vec<f32> = (0..b * lk).map(|j| if j % lk < valid(j / lk) { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_f32(&mv, &[b, lk], DType::F32, &dev).unwrap();
    let mut kernels = vec![(ops::AttentionKernel::Wgmma, "attention_wgmma"), (ops::AttentionKernel::WgmmaSharedQ, "attention_wgmma_sq")];
    if cascade::testing::wgmma_testable(&dev, cascade::cuda::attention_split_requested()) {
        kernels.push((ops::AttentionKernel::WgmmaSplit(2), "attention_wgmma_split2"));
    }
    if cascade::testing::wgmma_testable(&dev, cascade::cuda::wgmma2_requested()) {
        kernels.push((ops::AttentionKernel::Wgmma2, "attention_wgmma2"));
    }
    for masked in [false, true] {
        let m = if masked { AttentionMask::CausalPadding(&mask) } else { AttentionMask::None };
        let want = cpu::attention(&qv, &kv, &vv, b, heads, lq, lk, 64, 0.125, masked, masked.then_some(&mv[..]));
        for &(kernel, label) in &kernels {
            if masked && matches!(kernel, ops::AttentionKernel::WgmmaSplit(_)) {
                continue;
            }
            for lean in [false, true] {
                let (mut o, whole) = poisoned(&[b, lq, c], DType::BF16, &dev).unwrap();
                ops::attention_into_with_softmax(&q, &k, &v, heads, 0.125, m, kernel, lean, &mut o).unwrap();
                let name = format!("ramp{}{}", if masked { " masked" } else { "" }, if lean { " lean" } else { "" });
                verify(label, &name, DType::BF16, &o.to_vec_f32().unwrap(), Some(&whole), &want);
            }
        }
    }
}

/// The wgmma kernels' narrow last tile of keys (32 or 16 keys wide where the last tile's keys
/// fit) against the CPU and against the same kernel with a full last tile, on key counts whose
/// last tile holds 1, 8, 16, 17, 21, 32, 33 and 64 keys, a single tile, two key sources whose
/// last tile lies in the second (Stage B's 4 condition keys) or spans both, and causal with
/// padding (CLIP's 77). The last tile's keys are scaled up so that their scores dominate many
/// rows: a key dropped, masked wrongly or weighted wrongly there shows as a large error. Dropping
/// the padding changes no value the products or sums add (zeros), so narrow and full agree
/// bit for bit on the emulator.
#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_narrow_tail_kernel() {
    let dev = gpu();
    if !cascade::testing::wgmma_testable(&dev, cascade::cuda::wgmma_attention_allowed()) {
        return;
    }
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = &dev {
        assert!(
            d.narrow_tail() || !cascade::cuda::attention_tail_requested(),
            "the narrow last tile failed its start-up check (see the warning above)"
        );
    }
    let emulated = std::env::var_os("CASCADE_EMU").is_some();
    let (b, heads, lq) = (1, 2, 70);
    let c = heads * 64;
    let mut kernels = vec![(ops::AttentionKernel::Wgmma, "attention_wgmma"), (ops::AttentionKernel::WgmmaSharedQ, "attention_wgmma_sq")];
    if cascade::testing::wgmma_testable(&dev, cascade::cuda::attention_split_requested()) {
        kernels.push((ops::AttentionKernel::WgmmaSplit(2), "attention_wgmma_split2"));
        kernels.push((ops::AttentionKernel::WgmmaSharedQSplit(3), "attention_wgmma_sq_split3"));
    }
    if cascade::testing::wgmma_testable(&dev, cascade::cuda::wgmma2_requested()) {
        kernels.push((ops::AttentionKernel::Wgmma2, "attention_wgmma2"));
    }
    // Keys: one source of lk, or lk then lk2 in a second; causal with padding when masked.
    for (i, &(lk, lk2, masked)) in [
        (65, 0, false),
        (72, 0, false),
        (80, 0, false),
        (81, 0, false),
        (85, 0, false),
        (96, 0, false),
        (97, 0, false),
        (128, 0, false),
        (21, 0, false),
        (64, 4, false),
        (60, 13, false),
        (77, 0, true),
    ]
    .iter()
    .enumerate()
    {
        let total = lk + lk2;
        let last = (total - 1) / 64 * 64; // the last tile's first key
        let mut rng = TestRng::new(7600 + i as u64);
        let lq = if masked { total } else { lq };
        let (q, qv) = input(&mut rng, &[b, lq, c], 1.0, DType::BF16, &dev);
        let vv = round_to(&rng.normal(b * total * c, 1.0), DType::BF16);
        let mut kv = rng.normal(b * total * c, 1.0);
        for (j, x) in kv.iter_mut().enumerate() {
            if (j / c) % total >= last {
                *x *= 3.0;
            }
        }
        let kv = round_to(&kv, DType::BF16);
        // The sources: rows [0, lk) and [lk, total) of each sample.
        let part = |x: &[f32], from: usize, to: usize| -> Tensor {
            let rows: Vec<f32> = (0..b).flat_map(|s| x[(s * total + from) * c..(s * total + to) * c].to_vec()).collect();
            Tensor::from_f32(&rows, &[b, to - from, c], DType::BF16, &dev).unwrap()
        };
        let (k1, v1) = (part(&kv, 0, lk), part(&vv, 0, lk));
        let second = (lk2 > 0).then(|| (part(&kv, lk, total), part(&vv, lk, total)));
        let mv: Vec<f32> = (0..b * total).map(|j| if j % total < total - 3 { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_f32(&mv, &[b, total], DType::F32, &dev).unwrap();
        let m = if masked { AttentionMask::CausalPadding(&mask) } else { AttentionMask::None };
        let want = cpu::attention(&qv, &kv, &vv, b, heads, lq, total, 64, 0.125, masked, masked.then_some(&mv[..]));
        let name = format!(
            "{}{}{} keys{}",
            lk,
            if lk2 > 0 { "+" } else { "" },
            if lk2 > 0 { lk2.to_string() } else { String::new() },
            if masked { " causal" } else { "" }
        );
        for &(kernel, label) in &kernels {
            if masked && matches!(kernel, ops::AttentionKernel::WgmmaSplit(_) | ops::AttentionKernel::WgmmaSharedQSplit(_)) {
                continue;
            }
            if let Some((k2, v2)) = &second {
                // Two sources take the device's default: narrow, as asserted above.
                let (mut o, whole) = poisoned(&[b, lq, c], DType::BF16, &dev).unwrap();
                ops::attention_two_sources_into(&q, (&k1, &v1), (k2, v2), heads, 0.125, kernel, &mut o).unwrap();
                verify(label, &name, DType::BF16, &o.to_vec_f32().unwrap(), Some(&whole), &want);
                continue;
            }
            for lean in [false, true] {
                let mut outputs = Vec::new();
                for narrow in [false, true] {
                    let (mut o, whole) = poisoned(&[b, lq, c], DType::BF16, &dev).unwrap();
                    let options = ops::WgmmaOptions {
                        lean_softmax: Some(lean),
                        narrow_tail: Some(narrow),
                        tma_copies: Some(false),
                        pair_copies: Some(false),
                        cluster_copies: Some(false),
                    };
                    ops::attention_into_with_options(&q, &k1, &v1, heads, 0.125, m, kernel, options, &mut o).unwrap();
                    let got = o.to_vec_f32().unwrap();
                    let variant = format!("{name}{}{}", if lean { " lean" } else { "" }, if narrow { " narrow" } else { "" });
                    verify(label, &variant, DType::BF16, &got, Some(&whole), &want);
                    outputs.push(got);
                }
                let diff = rel_l2(&outputs[1], &outputs[0]);
                if emulated {
                    assert!(outputs[0] == outputs[1], "{label} {name}: narrow and full last tiles differ (rel_l2 {diff:.2e})");
                } else {
                    assert!(diff <= 1e-3, "{label} {name}: narrow and full last tiles differ: rel_l2 {diff:.2e}");
                }
            }
        }
    }
}

/// The wgmma kernels whose K and V tiles TMA copies (one warpgroup per block, keys split into
/// ranges or not), against the CPU and against the same kernels
/// copying with cp.async (the same tiles, so the same bits on the emulator; except with Q in
/// shared memory and the lean softmax, whose TMA kernel takes the rows' sums on the tensor cores,
/// from the rounded probabilities, where the cp.async one adds the f32 ones): two samples (each a
/// plane of the maps, rows past its last keys zeros), one key source with its last tile partial,
/// a single tile, causal with padding; and as the UNets pass them, q, k and v packed in one
/// projection's rows (the head's columns by coordinate), with a second packed source of condition
/// keys starting on a tile. A second source that does not start on a tile is refused. Where the
/// paired copies passed their start-up check (`CASCADE_ATTENTION_COPY=pair`), also with them
/// (clusters of two query blocks sharing each tile's copy; an odd number of query blocks leaves a
/// block past the queries, and so does a single one), against the same references.
#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_tma_copies_kernel() {
    let dev = gpu();
    if !cascade::testing::wgmma_testable(&dev, cascade::cuda::attention_copy_requested() == Some(true)) {
        return;
    }
    let emulated = std::env::var_os("CASCADE_EMU").is_some();
    let (b, heads) = (2, 2);
    let c = heads * 64;
    let mut kernels = vec![(ops::AttentionKernel::Wgmma, "attention_wgmma"), (ops::AttentionKernel::WgmmaSharedQ, "attention_wgmma_sq")];
    // The split-key versions (keys in two or three ranges merged by the last block): always on
    // the emulator, on a GPU when asked for too.
    if cascade::testing::wgmma_testable(&dev, cascade::cuda::attention_split_requested()) {
        kernels.push((ops::AttentionKernel::WgmmaSplit(2), "attention_wgmma_split2"));
        kernels.push((ops::AttentionKernel::WgmmaSharedQSplit(3), "attention_wgmma_sq_split3"));
    }
    let cuda = dev.as_cuda("attention").unwrap();
    // cp.async copies, TMA copies, and (where they passed their check) TMA copies in pairs and in
    // the cluster that fits a head's query blocks best (trios on three query blocks, quads on
    // four, pairs on one or two).
    let mut copies: Vec<(bool, bool, bool, &str)> = vec![(false, false, false, ""), (true, false, false, " tma")];
    if cuda.pair_attention() {
        copies.push((true, true, false, " tma pair"));
    }
    if cuda.cluster_attention() {
        copies.push((true, true, true, " tma cluster"));
    }
    let options = |tma: bool, pair: bool, wider: bool, lean: bool| ops::WgmmaOptions {
        lean_softmax: Some(lean),
        tma_copies: Some(tma),
        pair_copies: Some(pair),
        cluster_copies: Some(wider),
        ..Default::default()
    };
    // Runs `run` with each way of copying (full and lean softmax), each against `want`, and the
    // TMA ones against the cp.async one.
    let compare = |label: &str, name: &str, lq: usize, want: &[f32], run: &dyn Fn(ops::WgmmaOptions, &mut Tensor)| {
        let same_sums = |lean: bool| !(lean && label.starts_with("attention_wgmma_sq"));
        for lean in [false, true] {
            let mut outputs = Vec::new();
            for &(tma, pair, wider, what) in &copies {
                let (mut o, whole) = poisoned(&[b, lq, c], DType::BF16, &dev).unwrap();
                run(options(tma, pair, wider, lean), &mut o);
                let got = o.to_vec_f32().unwrap();
                let variant = format!("{name}{}{what}", if lean { " lean" } else { "" });
                verify(label, &variant, DType::BF16, &got, Some(&whole), want);
                outputs.push(got);
            }
            for (got, &(_, _, _, what)) in outputs.iter().zip(&copies).skip(1) {
                let diff = rel_l2(got, &outputs[0]);
                if emulated && same_sums(lean) {
                    assert!(*got == outputs[0], "{label} {name}:{what} and cp.async copies differ (rel_l2 {diff:.2e})");
                } else {
                    let bound = if same_sums(lean) { 1e-3 } else { 3e-3 };
                    assert!(diff <= bound, "{label} {name}:{what} and cp.async copies differ: rel_l2 {diff:.2e}");
                }
            }
        }
    };
    // Separate q, k and v tensors.
    // 150 queries: three query blocks, so the paired kernels' grid has a block past them, and a
    // trio takes them without one; 300 queries: five, trios with one past them.
    let shapes = [(70, 85, false), (70, 300, false), (70, 21, false), (77, 77, true), (150, 85, false), (300, 85, false)];
    for (i, &(lq, lk, masked)) in shapes.iter().enumerate() {
        let mut rng = TestRng::new(7700 + i as u64);
        let (q, qv) = input(&mut rng, &[b, lq, c], 1.0, DType::BF16, &dev);
        let (k, kv) = input(&mut rng, &[b, lk, c], 1.0, DType::BF16, &dev);
        let (v, vv) = input(&mut rng, &[b, lk, c], 1.0, DType::BF16, &dev);
        let mv: Vec<f32> = (0..b * lk).map(|j| if j % lk < lk - 5 * (j / lk) { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_f32(&mv, &[b, lk], DType::F32, &dev).unwrap();
        let m = if masked { AttentionMask::CausalPadding(&mask) } else { AttentionMask::None };
        let want = cpu::attention(&qv, &kv, &vv, b, heads, lq, lk, 64, 0.125, masked, masked.then_some(&mv[..]));
        let name = format!("{lq}x{lk}{}", if masked { " causal" } else { "" });
        for &(kernel, label) in &kernels {
            if masked && matches!(kernel, ops::AttentionKernel::WgmmaSplit(_) | ops::AttentionKernel::WgmmaSharedQSplit(_)) {
                continue; // the split kernels take unmasked attention only
            }
            compare(label, &name, lq, &want, &|o, out| {
                ops::attention_into_with_options(&q, &k, &v, heads, 0.125, m, kernel, o, out).unwrap()
            });
        }
    }
    // Packed projections [B, L, 3C] (q, k, v side by side), condition keys from a second. 256 + 4
    // is Stage B's level 3: four query blocks, a cluster of four without a block past them.
    for (i, &(l, l2)) in [(128, 13), (64, 4), (70, 0), (256, 4)].iter().enumerate() {
        let mut rng = TestRng::new(7800 + i as u64);
        let (qkv, pv) = input(&mut rng, &[b, l, 3 * c], 1.0, DType::BF16, &dev);
        let (second, sv) = input(&mut rng, &[b, l2.max(1), 3 * c], 1.0, DType::BF16, &dev);
        // The reference's operands: columns [i·C, (i + 1)·C) of each row, the second source's
        // keys and values after the first's.
        let cols = |x: &[f32], rows: usize, part: usize, s: usize, r: usize| x[((s * rows) + r) * 3 * c + part * c..][..c].to_vec();
        let qv: Vec<f32> = (0..b).flat_map(|s| (0..l).map(move |r| (s, r))).flat_map(|(s, r)| cols(&pv, l, 0, s, r)).collect();
        let keys = |part: usize| -> Vec<f32> {
            (0..b)
                .flat_map(|s| (0..l).map(move |r| (s, r, false)).chain((0..l2).map(move |r| (s, r, true))))
                .flat_map(|(s, r, two)| if two { cols(&sv, l2.max(1), part, s, r) } else { cols(&pv, l, part, s, r) })
                .collect()
        };
        let want = cpu::attention(&qv, &keys(1), &keys(2), b, heads, l, l + l2, 64, 0.125, false, None);
        let second = (l2 > 0).then_some(&second);
        let name = format!("packed {l}+{l2}");
        for &(kernel, label) in &kernels {
            compare(label, &name, l, &want, &|o, out| {
                ops::attention_packed_into_with_options(&qkv, second, heads, 0.125, AttentionMask::None, kernel, o, out).unwrap()
            });
        }
    }
    // A second source that does not start on a tile: refused with TMA copies.
    let mut rng = TestRng::new(7900);
    let (qkv, _) = input(&mut rng, &[b, 70, 3 * c], 1.0, DType::BF16, &dev);
    let (second, _) = input(&mut rng, &[b, 8, 3 * c], 1.0, DType::BF16, &dev);
    let mut o = Tensor::empty(&[b, 70, c], DType::BF16, &dev).unwrap();
    let err = ops::attention_packed_into_with_options(
        &qkv,
        Some(&second),
        heads,
        0.125,
        AttentionMask::None,
        ops::AttentionKernel::Wgmma,
        options(true, false, false, false),
        &mut o,
    )
    .unwrap_err();
    assert!(err.to_string().contains("64-key tile"), "{err}");
}

/// The device's defaults of the wgmma attention's options (what the stages bench's
/// `CASCADE_BENCH_AB` sets between captures) decide a launch that leaves them unset: bit for bit
/// the output of asking for the resolved options, where a kernel that did not pass its start-up
/// check resolves to off. The lean softmax, where available, changes the output, so a default
/// that did nothing would fail here.
#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_device_defaults_decide_unset_options() {
    let dev = gpu();
    let Device::Cuda(cuda) = &dev else { unreachable!("a CUDA device") };
    if !cuda.wgmma_attention() {
        println!("skipped: no wgmma attention on this device");
        return;
    }
    let (b, heads, lq, lk) = (2, 2, 100, 130);
    let c = heads * 64;
    let mut rng = TestRng::new(8100);
    let (q, _) = input(&mut rng, &[b, lq, c], 1.0, DType::BF16, &dev);
    let (k, _) = input(&mut rng, &[b, lk, c], 1.0, DType::BF16, &dev);
    let (v, _) = input(&mut rng, &[b, lk, c], 1.0, DType::BF16, &dev);
    let run = |options: ops::WgmmaOptions| {
        let (mut o, _) = poisoned(&[b, lq, c], DType::BF16, &dev).unwrap();
        ops::attention_into_with_options(&q, &k, &v, heads, 0.125, AttentionMask::None, ops::AttentionKernel::Auto, options, &mut o)
            .unwrap();
        o.to_vec_f32().unwrap()
    };
    let before = cuda.attention_defaults();
    let mut outputs = Vec::new();
    for lean in [false, true] {
        for tma in [false, true] {
            for tail in [false, true] {
                let set = ops::WgmmaOptions {
                    lean_softmax: Some(lean),
                    tma_copies: Some(tma),
                    narrow_tail: Some(tail),
                    pair_copies: Some(tma),
                    cluster_copies: Some(tma),
                };
                let resolved = ops::WgmmaOptions {
                    lean_softmax: Some(lean && cuda.lean_softmax()),
                    tma_copies: Some(tma && cuda.tma_attention()),
                    narrow_tail: Some(tail && cuda.narrow_tail()),
                    pair_copies: Some(tma && cuda.pair_attention()),
                    cluster_copies: Some(tma && cuda.cluster_attention()),
                };
                cuda.set_attention_defaults(set);
                assert_eq!(cuda.attention_defaults(), set);
                let got = run(ops::WgmmaOptions::default());
                cuda.set_attention_defaults(ops::WgmmaOptions::default());
                let want = run(resolved);
                assert!(got.iter().all(|x| x.is_finite()), "{set:?}: poison left");
                assert!(got == want, "{set:?}: differs from {resolved:?} (rel_l2 {:.2e})", rel_l2(&got, &want));
                outputs.push((lean, got));
            }
        }
    }
    cuda.set_attention_defaults(before);
    if cuda.lean_softmax() {
        let (full, lean): (Vec<_>, Vec<_>) = outputs.iter().partition(|(l, _)| !l);
        assert!(full[0].1 != lean[0].1, "the lean softmax default changed nothing");
    }
    println!("checked: lean softmax {}, TMA copies {}, narrow tail {}", cuda.lean_softmax(), cuda.tma_attention(), cuda.narrow_tail());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_kernel() {
    const L2: usize = 130;
    let dev = gpu();
    // The wgmma kernels (sm_90a) on a compute capability 9.0 GPU unless turned off
    // (CASCADE_ATTENTION_WGMMA=0). The emulator always runs them.
    let wgmma = cascade::testing::wgmma_testable(&dev, cascade::cuda::wgmma_attention_allowed());
    let split = cascade::testing::wgmma_testable(&dev, cascade::cuda::attention_split_requested());
    let wgmma2 = cascade::testing::wgmma_testable(&dev, cascade::cuda::wgmma2_requested());
    for (i, s) in shapes::ATTENTION.iter().enumerate() {
        if !wanted(s.name) {
            continue;
        }
        for dtype in DTYPES {
            let c = s.heads * 64;
            let mut rng = TestRng::new(7000 + i as u64);
            let (q, qv) = input(&mut rng, &[s.b, s.lq, c], 1.0, dtype, &dev);
            let (k, kv) = input(&mut rng, &[s.b, s.lk, c], 1.0, dtype, &dev);
            let (v, vv) = input(&mut rng, &[s.b, s.lk, c], 1.0, dtype, &dev);
            // Padding: sequence b keeps its first lk − 3(b + 1) keys (at least one).
            let valid = |b: usize| s.lk.saturating_sub(3 * (b + 1)).max(1);
            let mv: Vec<f32> = (0..s.b * s.lk).map(|j| if j % s.lk < valid(j / s.lk) { 1.0 } else { 0.0 }).collect();
            let mask = Tensor::from_f32(&mv, &[s.b, s.lk], DType::F32, &dev).unwrap();
            let m = if s.masked { AttentionMask::CausalPadding(&mask) } else { AttentionMask::None };
            let mut kernels: Vec<(ops::AttentionKernel, &str)> = if dtype == DType::BF16 && !s.masked {
                vec![
                    (ops::AttentionKernel::Simple, "attention"),
                    (ops::AttentionKernel::TensorCore, "attention_tc"),
                    (ops::AttentionKernel::Mma, "attention_mma"),
                    (ops::AttentionKernel::Mma32, "attention_mma32"),
                    (ops::AttentionKernel::Mma32Wide, "attention_mma32_w5"),
                ]
            } else if dtype == DType::BF16 {
                // Causal with padding: the CUDA-core kernel and the mma ones.
                vec![
                    (ops::AttentionKernel::Simple, "attention"),
                    (ops::AttentionKernel::Mma, "attention_mma"),
                    (ops::AttentionKernel::Mma32, "attention_mma32"),
                    (ops::AttentionKernel::Mma32Wide, "attention_mma32_w5"),
                ]
            } else {
                vec![(ops::AttentionKernel::Simple, "attention")]
            };
            if dtype == DType::BF16 && wgmma {
                kernels.push((ops::AttentionKernel::Wgmma, "attention_wgmma"));
                kernels.push((ops::AttentionKernel::WgmmaSharedQ, "attention_wgmma_sq"));
            }
            // The split-key kernels: always on the emulator, on a GPU only when asked for
            // (CASCADE_ATTENTION_SPLIT=1: unmeasured kernels run in a process of their own).
            if dtype == DType::BF16 && split {
                // Keys split into ranges merged by the last block: two, three (uneven on most
                // shapes) and up to one tile per range; with the causal mask, late ranges of
                // early query blocks hold no visible key.
                kernels.push((ops::AttentionKernel::WgmmaSplit(2), "attention_wgmma_split2"));
                kernels.push((ops::AttentionKernel::WgmmaSharedQSplit(3), "attention_wgmma_sq_split3"));
                kernels.push((ops::AttentionKernel::WgmmaSplit(8), "attention_wgmma_split8"));
            }
            // Two warpgroups per block likewise (CASCADE_ATTENTION=wgmma2 on a GPU).
            if dtype == DType::BF16 && wgmma2 {
                kernels.push((ops::AttentionKernel::Wgmma2, "attention_wgmma2"));
                if split {
                    kernels.push((ops::AttentionKernel::Wgmma2Split(2), "attention_wgmma2_split2"));
                    kernels.push((ops::AttentionKernel::Wgmma2Split(8), "attention_wgmma2_split8"));
                }
            }
            // Unmasked queries are independent: every 8th on the big shapes, against one
            // reference for all the kernels.
            let step = if s.masked || s.lq < 300 { 1 } else { 8 };
            let picked: Vec<usize> = (0..s.lq).step_by(step).collect();
            // Those queries' rows of every sequence.
            let rows: Vec<usize> = (0..s.b).flat_map(|b| picked.iter().map(move |&r| b * s.lq + r)).collect();
            let qs = pick_rows(&qv, c, &rows);
            let want = cpu::attention(&qs, &kv, &vv, s.b, s.heads, picked.len(), s.lk, 64, 0.125, s.masked, s.masked.then_some(&mv[..]));
            for &(kernel, label) in &kernels {
                let (mut o, whole) = poisoned(&[s.b, s.lq, c], dtype, &dev).unwrap();
                ops::attention_into_with(&q, &k, &v, s.heads, 0.125, m, kernel, &mut o).unwrap();
                let got = o.to_vec_f32().unwrap();
                check_guard(&whole, s.name).unwrap();
                if matches!(
                    kernel,
                    ops::AttentionKernel::WgmmaSplit(_) | ops::AttentionKernel::WgmmaSharedQSplit(_) | ops::AttentionKernel::Wgmma2Split(_)
                ) {
                    // The ranges are merged in order whichever block finishes last: a second
                    // launch (other blocks last, on a GPU) gives the same bits.
                    let (mut again, _) = poisoned(&[s.b, s.lq, c], dtype, &dev).unwrap();
                    ops::attention_into_with(&q, &k, &v, s.heads, 0.125, m, kernel, &mut again).unwrap();
                    let again = again.to_vec_f32().unwrap();
                    assert!(got.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "{label} {}: two launches differ", s.name);
                }
                verify(label, s.name, dtype, &pick_rows(&got, c, &rows), Some(&whole), &want);
            }
            if s.masked && s.lk > 64 {
                // Leading padding over the whole first key tile: rows before key 64 see no key
                // at all (zeros) and later rows start from a fully masked tile.
                let lead: Vec<f32> = (0..s.b * s.lk).map(|j| if j % s.lk < 64 { 0.0 } else { 1.0 }).collect();
                let lead_t = Tensor::from_f32(&lead, &[s.b, s.lk], DType::F32, &dev).unwrap();
                let want = cpu::attention(&qv, &kv, &vv, s.b, s.heads, s.lq, s.lk, 64, 0.125, true, Some(&lead));
                for &(kernel, label) in &kernels {
                    let (mut o, whole) = poisoned(&[s.b, s.lq, c], dtype, &dev).unwrap();
                    ops::attention_into_with(&q, &k, &v, s.heads, 0.125, AttentionMask::CausalPadding(&lead_t), kernel, &mut o).unwrap();
                    verify(&format!("{label} lead pad"), s.name, dtype, &o.to_vec_f32().unwrap(), Some(&whole), &want);
                }
            }
            if !s.masked && s.lq < 300 {
                // Image keys plus L2 condition keys from a second pair of tensors (the UNets'
                // layout): read in place by the mma kernel, concatenated for the others. L2 = 130
                // puts at least one whole 64-key tile inside the second source for every shape
                // (the mma kernel's one-source fast path), and a tile straddling the two. Only on
                // the shapes under 300 queries: on the big ones the full CPU reference is slow, and
                // the two sources' paths are those of the smaller shapes.
                let (k2, k2v) = input(&mut rng, &[s.b, L2, c], 1.0, dtype, &dev);
                let (v2, v2v) = input(&mut rng, &[s.b, L2, c], 1.0, dtype, &dev);
                let cat = |a: &[f32], b2: &[f32]| -> Vec<f32> {
                    (0..s.b)
                        .flat_map(|i| a[i * s.lk * c..(i + 1) * s.lk * c].iter().chain(&b2[i * L2 * c..(i + 1) * L2 * c]).copied())
                        .collect()
                };
                let (kc, vc) = (cat(&kv, &k2v), cat(&vv, &v2v));
                let want = cpu::attention(&qv, &kc, &vc, s.b, s.heads, s.lq, s.lk + L2, 64, 0.125, false, None);
                let mut two: Vec<(ops::AttentionKernel, &str)> = if dtype == DType::BF16 {
                    vec![
                        (ops::AttentionKernel::Mma, "attention_mma 2 src"),
                        (ops::AttentionKernel::Mma32, "attention_mma32 2 src"),
                        (ops::AttentionKernel::Mma32Wide, "attention_mma32_w5 2 src"),
                        (ops::AttentionKernel::Simple, "attention 2 src"),
                    ]
                } else {
                    vec![(ops::AttentionKernel::Simple, "attention 2 src")]
                };
                if dtype == DType::BF16 && wgmma {
                    two.push((ops::AttentionKernel::Wgmma, "attention_wgmma 2 src"));
                    two.push((ops::AttentionKernel::WgmmaSharedQ, "attention_wgmma_sq 2 src"));
                }
                if dtype == DType::BF16 && split {
                    two.push((ops::AttentionKernel::WgmmaSplit(2), "attention_wgmma_split2 2 src"));
                    two.push((ops::AttentionKernel::WgmmaSharedQSplit(3), "attention_wgmma_sq_split3 2 src"));
                }
                if dtype == DType::BF16 && wgmma2 {
                    two.push((ops::AttentionKernel::Wgmma2, "attention_wgmma2 2 src"));
                    if split {
                        two.push((ops::AttentionKernel::Wgmma2Split(3), "attention_wgmma2_split3 2 src"));
                    }
                }
                for &(kernel, label) in &two {
                    let (mut o, whole) = poisoned(&[s.b, s.lq, c], dtype, &dev).unwrap();
                    ops::attention_two_sources_into(&q, (&k, &v), (&k2, &v2), s.heads, 0.125, kernel, &mut o).unwrap();
                    verify(label, s.name, dtype, &o.to_vec_f32().unwrap(), Some(&whole), &want);
                }
            }
            // Packed projections: rows of [q | k | v] (one GEMM's output) read in place through
            // row strides, the queries' own tokens as keys, plus (unmasked) the k and v columns
            // of a second packed source of L2 rows, as the UNets' condition rows are stored.
            if s.lq < 300 && (!s.masked || s.lq == s.lk) {
                let (qkv, qkvv) = input(&mut rng, &[s.b, s.lq, 3 * c], 1.0, dtype, &dev);
                let (second, secondv) = input(&mut rng, &[s.b, L2, 3 * c], 1.0, dtype, &dev);
                let part = |v: &[f32], i: usize| cpu::columns(v, 3 * c, i * c, c);
                let (pq, pk, pv) = (part(&qkvv, 0), part(&qkvv, 1), part(&qkvv, 2));
                let one = cpu::attention(&pq, &pk, &pv, s.b, s.heads, s.lq, s.lq, 64, 0.125, s.masked, s.masked.then_some(&mv[..]));
                let cat = |a: &[f32], b2: &[f32]| -> Vec<f32> {
                    (0..s.b)
                        .flat_map(|i| a[i * s.lq * c..(i + 1) * s.lq * c].iter().chain(&b2[i * L2 * c..(i + 1) * L2 * c]).copied())
                        .collect()
                };
                let (kc, vc) = (cat(&pk, &part(&secondv, 1)), cat(&pv, &part(&secondv, 2)));
                let two = cpu::attention(&pq, &kc, &vc, s.b, s.heads, s.lq, s.lq + L2, 64, 0.125, false, None);
                for &(kernel, label) in &kernels {
                    let (mut o, whole) = poisoned(&[s.b, s.lq, c], dtype, &dev).unwrap();
                    ops::attention_packed_into(&qkv, None, s.heads, 0.125, m, kernel, &mut o).unwrap();
                    verify(&format!("{label} packed"), s.name, dtype, &o.to_vec_f32().unwrap(), Some(&whole), &one);
                    if !s.masked {
                        let (mut o, whole) = poisoned(&[s.b, s.lq, c], dtype, &dev).unwrap();
                        ops::attention_packed_into(&qkv, Some(&second), s.heads, 0.125, m, kernel, &mut o).unwrap();
                        verify(&format!("{label} packed 2 src"), s.name, dtype, &o.to_vec_f32().unwrap(), Some(&whole), &two);
                    }
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn elementwise_kernels() {
    let dev = gpu();
    for (i, s) in shapes::ELEMENTWISE.iter().enumerate() {
        if !wanted(s.name) {
            continue;
        }
        for dtype in DTYPES {
            let mut rng = TestRng::new(8000 + i as u64);
            let shape = [s.b, s.n, s.c];
            let (x, xv) = input(&mut rng, &shape, 1.0, dtype, &dev);
            let (r, rv) = input(&mut rng, &shape, 1.0, dtype, &dev);
            let (ab, abv) = input(&mut rng, &[s.b, 2 * s.c], 0.5, dtype, &dev);
            // A block's terms as a column range of every block's (3 columns in, 5 spare after).
            let (ab_all, ab_all_v) = input(&mut rng, &[s.b, 2 * s.c + 8], 0.5, dtype, &dev);
            let ab_cols = cpu::columns(&ab_all_v, 2 * s.c + 8, 3, 2 * s.c);

            let (mut y, whole) = poisoned(&shape, dtype, &dev).unwrap();
            ops::cast_into(&x, &mut y).unwrap();
            ops::add_assign(&mut y, &r).unwrap();
            let want = round_to(&cpu::add(&xv, &rv), dtype);
            verify("add", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &want);

            ops::cast_into(&x, &mut y).unwrap();
            ops::modulate_assign(&mut y, &ab, 0).unwrap();
            verify("modulate", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &cpu::modulate(&xv, &abv, s.b, s.n, s.c));

            ops::cast_into(&x, &mut y).unwrap();
            ops::modulate_assign(&mut y, &ab_all, 3).unwrap();
            let modulated = cpu::modulate(&xv, &ab_cols, s.b, s.n, s.c);
            verify("modulate_cols", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &modulated);

            // Modulation then LayerNorm in one pass: x is modulated in place (rounded to its
            // type, as the separate op stores it) and the result's LayerNorm returned.
            ops::cast_into(&x, &mut y).unwrap();
            let n = ops::modulate_layer_norm(&mut y, &ab_all, 3, 1e-6).unwrap();
            verify("modulate+ln x", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &modulated);
            let want = cpu::layer_norm(&round_to(&modulated, dtype), s.c, None, None, 1e-6);
            verify("modulate+ln", s.name, dtype, &n.to_vec_f32().unwrap(), None, &want);

            // An f32 residual stream: modulated in f32, its LayerNorm taken of the bf16 copy and
            // written as bf16, in one pass. Held tighter than the bf16 bound: a kernel that
            // skipped the rounding before the statistics would be about 1.5e-3 off.
            if dtype == DType::F32 {
                ops::cast_into(&x, &mut y).unwrap();
                let n = ops::modulate_layer_norm_as(&mut y, &ab_all, 3, 1e-6, DType::BF16).unwrap();
                assert_eq!(n.dtype(), DType::BF16);
                verify("modulate+ln f32>bf16 x", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &modulated);
                let want = round_to(&cpu::layer_norm(&round_to(&modulated, DType::BF16), s.c, None, None, 1e-6), DType::BF16);
                let got = n.to_vec_f32().unwrap();
                verify("modulate+ln f32>bf16", s.name, DType::BF16, &got, None, &want);
                assert!(rel_l2(&got, &want) < 5e-4, "modulate+ln f32>bf16 {}: {:.3e}", s.name, rel_l2(&got, &want));
                // The terms at column 0 (16-byte aligned: the eight-channel path where C allows).
                ops::cast_into(&x, &mut y).unwrap();
                let n = ops::modulate_layer_norm_as(&mut y, &ab, 0, 1e-6, DType::BF16).unwrap();
                let modulated0 = cpu::modulate(&xv, &abv, s.b, s.n, s.c);
                verify("modulate0+ln f32>bf16 x", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &modulated0);
                let want = round_to(&cpu::layer_norm(&round_to(&modulated0, DType::BF16), s.c, None, None, 1e-6), DType::BF16);
                let got = n.to_vec_f32().unwrap();
                verify("modulate0+ln f32>bf16", s.name, DType::BF16, &got, None, &want);
                assert!(rel_l2(&got, &want) < 5e-4, "modulate0+ln f32>bf16 {}: {:.3e}", s.name, rel_l2(&got, &want));
                let mut n = Tensor::empty(&shape, DType::BF16, &dev).unwrap();
                ops::layer_norm_into(&x, None, None, 1e-6, &mut n).unwrap();
                let want = round_to(&cpu::layer_norm(&round_to(&xv, DType::BF16), s.c, None, None, 1e-6), DType::BF16);
                let got = n.to_vec_f32().unwrap();
                verify("ln f32>bf16", s.name, DType::BF16, &got, None, &want);
                assert!(rel_l2(&got, &want) < 5e-4, "ln f32>bf16 {}: {:.3e}", s.name, rel_l2(&got, &want));
                // A level's last modulation read only in bf16 (by a repeat mapper): modulated in
                // f32 and written as bf16 to another tensor, x left as it was. Terms at column 3
                // (the one-element path) and at column 0 (eight channels per thread where C allows).
                for (terms, col, want) in [(&ab_all, 3, &modulated), (&ab, 0, &cpu::modulate(&xv, &abv, s.b, s.n, s.c))] {
                    ops::cast_into(&x, &mut y).unwrap();
                    let (mut m, whole_m) = poisoned(&shape, DType::BF16, &dev).unwrap();
                    ops::modulate_into(&y, terms, col, &mut m).unwrap();
                    verify("modulate f32>bf16 x", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &xv);
                    let (got, want) = (m.to_vec_f32().unwrap(), round_to(want, DType::BF16));
                    verify(&format!("modulate{col} f32>bf16"), s.name, DType::BF16, &got, Some(&whole_m), &want);
                    // A GPU contracts x·(1 + a) + b into one FMA, which moves a few f32 results by an
                    // ulp and so flips a few bf16 roundings (an H200: 1.4e-5 on Stage C's shape);
                    // rounding twice, or the wrong terms, is 1e-3 or more.
                    assert!(rel_l2(&got, &want) < 1e-4, "modulate{col} f32>bf16 {}: {:.3e}", s.name, rel_l2(&got, &want));
                }
            }

            // CFG over x as [cond; uncond] halves (element count is even for b = 2).
            if s.b % 2 == 0 {
                let w = Tensor::from_f32(&[4.0], &[1], DType::F32, &dev).unwrap();
                let (mut g, whole) = poisoned(&[s.b / 2, s.n, s.c], dtype, &dev).unwrap();
                ops::cfg_combine_into(&x, &w, &mut g).unwrap();
                verify("cfg", s.name, dtype, &g.to_vec_f32().unwrap(), Some(&whole), &cpu::cfg_combine(&xv, 4.0));
            }

            ops::cast_into(&x, &mut y).unwrap();
            ops::affine_assign(&mut y, 0.3764, -0.25).unwrap();
            verify("affine", s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &cpu::affine(&xv, 0.3764, -0.25));

            ops::fill_random(&mut y, 99 + i as u64, 0.5, 2.0).unwrap();
            verify(
                "fill_random",
                s.name,
                dtype,
                &y.to_vec_f32().unwrap(),
                Some(&whole),
                &round_to(&cpu::random_normal(s.numel(), 99 + i as u64, 0.5, 2.0), dtype),
            );

            let coef = [1.0138, 0.0137, 0.0851];
            let ct = Tensor::from_f32(&coef, &[3], DType::F32, &dev).unwrap();
            for noise in [true, false] {
                ops::cast_into(&x, &mut y).unwrap();
                ops::ddpm_step_assign(&mut y, &r, noise.then_some(&x), &ct).unwrap();
                let want = cpu::ddpm_step(&xv, &rv, noise.then_some(&xv[..]), coef);
                verify(if noise { "ddpm_step" } else { "ddpm_step_last" }, s.name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &want);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_kernels() {
    let dev = gpu();
    for (b, extra, dim) in [(2, 2, 64), (1, 1, 64), (3, 0, 10)] {
        let tv = [1.0f32, 0.95, 0.0123];
        let t = Tensor::from_f32(&tv[..b], &[b], DType::F32, &dev).unwrap();
        for dtype in DTYPES {
            let (mut y, whole) = poisoned(&[b, dim * (1 + extra)], dtype, &dev).unwrap();
            ops::timestep_embedding_into(&t, dim, extra, 10000.0, &mut y).unwrap();
            let want = round_to(&cpu::timestep_embedding(&tv[..b], dim, extra, 10000.0), dtype);
            // Arguments reach 1e4 radians, where one ulp of a frequency moves sin/cos by ~5e-4:
            // the kernel takes the frequencies from the host (`cpu::timestep_frequencies`), so
            // only sinf/cosf's own rounding differs (computed on the device with expf they were
            // 6.9e-5 to 9.2e-5 from this reference on an H200).
            let got = y.to_vec_f32().unwrap();
            let err = rel_l2(&got, &want);
            println!("timestep_embedding   b{b} x{extra} d{dim}       {dtype:<4} rel_l2 {err:.2e}");
            check_guard(&whole, "timestep_embedding").unwrap();
            assert!(err < bound(dtype), "{err}");
        }
    }
    for (name, b, l, d, v) in [("clip", 2, 77, 1280, 49408), ("odd", 3, 5, 7, 11)] {
        for dtype in DTYPES {
            let mut rng = TestRng::new(9000);
            let ids: Vec<f32> = (0..b * l).map(|_| (rng.next_u64() % v as u64) as f32).collect();
            let idt = Tensor::from_f32(&ids, &[b, l], DType::F32, &dev).unwrap();
            let (tok, tokv) = input(&mut rng, &[v, d], 1.0, dtype, &dev);
            let (pos, posv) = input(&mut rng, &[l, d], 1.0, dtype, &dev);
            let (mut y, whole) = poisoned(&[b, l, d], dtype, &dev).unwrap();
            ops::token_embedding_into(&idt, &tok, &pos, &mut y).unwrap();
            let idu: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
            let want = round_to(&cpu::token_embedding(&idu, l, &tokv, &posv, d), dtype);
            verify("token_embedding", name, dtype, &y.to_vec_f32().unwrap(), Some(&whole), &want);
        }
    }
}

/// Images to 8-bit pixels on the device against `cpu::quantize_u8`, byte for byte, with values
/// outside [0, 1] and exact ties; the first non-finite value's index is reported.
#[test]
#[ignore = "needs a CUDA GPU"]
fn to_rgb8_kernel() {
    let dev = gpu();
    for (i, n) in [3 * 37 * 41, 3 * 5, 3 * 256 * 256].into_iter().enumerate() {
        for dtype in DTYPES {
            let mut rng = TestRng::new(9500 + i as u64);
            let mut v: Vec<f32> = rng.normal(n, 0.6).iter().map(|x| x + 0.5).collect();
            // Halfway values of the 255 steps (ties to even after the f32 product).
            for (k, x) in v.iter_mut().enumerate().step_by(7) {
                *x = ((k % 255) as f32 + 0.5) / 255.0;
            }
            let v = round_to(&v, dtype);
            let x = Tensor::from_f32(&v, &[n], dtype, &dev).unwrap();
            let (got, bad) = ops::to_rgb8(&x).unwrap();
            let (want, want_bad) = cpu::to_rgb8(&v);
            assert_eq!(bad, None);
            assert_eq!(want_bad, None);
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            println!("to_rgb8              n{n:<8}            {dtype:<4} {differ} bytes differ");
            assert_eq!(got, want, "to_rgb8 n{n} {dtype}");
            // A NaN and a later infinity: the NaN's index comes back.
            let mut poisoned_v = v.clone();
            poisoned_v[n / 2] = f32::NAN;
            poisoned_v[n - 1] = f32::INFINITY;
            let x = Tensor::from_f32(&poisoned_v, &[n], dtype, &dev).unwrap();
            assert_eq!(ops::to_rgb8(&x).unwrap().1, Some(n / 2));
        }
    }
}
