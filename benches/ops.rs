//! Per-op GPU benchmarks over the shape tables of `cascade::ops::shapes`, the same rows the
//! GPU tests in tests/kernels.rs check. Each line reports milliseconds per call and TFLOP/s
//! (GEMMs, attention, convolutions) or GB/s (memory-bound ops: bytes read + written once).
//! Without a GPU (or without the `cuda` feature) it says it skipped.

mod common;

#[cfg(feature = "cuda")]
fn main() {
    use cascade::ops::{self, shapes, AttentionMask, Padding};
    use cascade::testing::TestRng;
    use cascade::{DType, Tensor};

    let Some(dev) = common::gpu_or_skip("ops bench") else {
        return;
    };
    let mut r = common::Runner::new(dev.clone());
    let bf = DType::BF16;
    let rnd =
        |shape: &[usize], dtype: DType| Tensor::from_f32(&TestRng::new(7).normal(shape.iter().product(), 0.5), shape, dtype, &dev).unwrap();
    let empty = |shape: &[usize], dtype: DType| Tensor::empty(shape, dtype, &dev).unwrap();

    {
        // The card's matrix ceiling through the engine's own cuBLASLt path (not a model shape):
        // the rate every GEMM row below is read against.
        let n = 8192;
        let (x, w) = (rnd(&[n, n], bf), rnd(&[n, n], bf));
        let mut y = empty(&[n, n], bf);
        r.run(&format!("linear/ceiling/{n}x{n}x{n}/bf16"), Some(2.0 * (n * n * n) as f64), None, || {
            ops::linear_into(&x, &w, None, &mut y).unwrap()
        });
    }
    let ws_gelu =
        cascade::testing::wgmma_testable(&dev, std::env::var("CASCADE_GEMM_WS_GELU").is_ok_and(|v| matches!(v.trim(), "1" | "force")));
    for s in shapes::LINEAR {
        for dtype in [bf, DType::F32] {
            let (x, w, b) = (rnd(&[s.m, s.k], dtype), rnd(&[s.n, s.k], dtype), rnd(&[s.n], dtype));
            let mut y = empty(&[s.m, s.n], dtype);
            r.run(&format!("linear/{}/{}x{}x{}/{dtype}", s.name, s.m, s.k, s.n), Some(s.flops()), None, || {
                ops::linear_into(&x, &w, Some(&b), &mut y).unwrap()
            });
        }
        // An MLP's first layer and its GELU: in bf16 cuBLASLt's GELU epilogue
        // (CASCADE_GELU_EPILOGUE=0: the product, then the erf GELU pass).
        let (x, w, b) = (rnd(&[s.m, s.k], bf), rnd(&[s.n, s.k], bf), rnd(&[s.n], bf));
        let mut y = empty(&[s.m, s.n], bf);
        r.run(&format!("linear_gelu/{}/{}x{}x{}/bf16", s.name, s.m, s.k, s.n), Some(s.flops()), None, || {
            ops::linear_gelu_into(&x, &w, Some(&b), &mut y).unwrap()
        });
        // The same on the warp-specialised wgmma GEMM (compute capability 9.0; opt-in,
        // CASCADE_GEMM_WS_GELU=1, or the emulator), where it runs.
        if ws_gelu && s.k % 8 == 0 && s.n % 8 == 0 {
            r.run(&format!("linear_gelu_ws/{}/{}x{}x{}/bf16", s.name, s.m, s.k, s.n), Some(s.flops()), None, || {
                ops::linear_gelu_ws_into(&x, &w, Some(&b), &mut y).unwrap()
            });
        }
    }
    // A ResBlock's fc1 with GRN's statistics (u = GELU(fc1(y)) and the factor, not applied): the
    // fused wgmma GEMM (compute capability 9.0; opt-in, CASCADE_GEMM_WGMMA=1 or the emulator)
    // against cuBLASLt then GRN's GELU-and-sums pass, on each real fc1 and the odd shapes.
    let fused_grn = cascade::testing::wgmma_testable(&dev, cascade::cuda::gemm_wgmma_requested());
    for sh in shapes::MLP_GRN {
        let (name, b, rows, k, n) = (sh.name, sh.b, sh.rows, sh.k, sh.n);
        let (x, w, bias, g) = (rnd(&[b, rows, k], bf), rnd(&[n, k], bf), rnd(&[n], bf), rnd(&[n], bf));
        let (mut u, mut f) = (empty(&[b, rows, n], bf), empty(&[b, n], DType::F32));
        let flops = Some(sh.flops());
        // The paired version (a cluster launch) only where asked for (CASCADE_GEMM_WGMMA=ws_pair)
        // until it has run on a GPU, as its start-up check.
        let pair_timed = ops::FusedGrnKernel::requested() == ops::FusedGrnKernel::WgmmaWsPair;
        let kernels: &[(ops::FusedGrnKernel, &str)] = if fused_grn {
            &[
                (ops::FusedGrnKernel::WgmmaWs, "wgmma_ws"),
                (ops::FusedGrnKernel::WgmmaWsDeep, "wgmma_ws_deep"),
                (ops::FusedGrnKernel::WgmmaSk, "wgmma_sk"),
                (ops::FusedGrnKernel::WgmmaWsTall, "wgmma_ws_tall"),
                (ops::FusedGrnKernel::Separate, "separate"),
                (ops::FusedGrnKernel::WgmmaWsPair, "wgmma_ws_pair"),
            ][..if pair_timed { 6 } else { 5 }]
        } else {
            &[(ops::FusedGrnKernel::Separate, "separate")]
        };
        for &(kernel, path) in kernels {
            r.run(&format!("linear_gelu_grn/{path}/{name}/{b}x{rows}x{k}x{n}/bf16"), flops, None, || {
                ops::linear_gelu_grn_factor_into(&x, &w, Some(&bias), &g, kernel, &mut u, &mut f).unwrap()
            });
        }
    }
    // A ResBlock's fc2 with GRN's factor on its input, added to the f32 residual stream: the
    // stream-K wgmma kernel (compute capability 9.0; opt-in, CASCADE_GEMM_WS_FC2=1 or
    // CASCADE_GEMM_SK=1, or the emulator) against GRN's apply then cuBLASLt; and without the
    // factor, cuBLASLt's product alone against the kernel's plain version (gemm_sk_bf16), on each
    // real fc2 and the odd shapes.
    let scaled = cascade::testing::wgmma_testable(
        &dev,
        ["CASCADE_GEMM_WS_FC2", "CASCADE_GEMM_SK"].iter().any(|v| std::env::var(v).is_ok_and(|v| v.trim() == "1")),
    );
    for sh in shapes::MLP_GRN {
        let (name, b, rows, k, n) = (sh.name, sh.b, sh.rows, sh.n, sh.k);
        let (u, w, bias) = (rnd(&[b, rows, k], bf), rnd(&[n, k], bf), rnd(&[n], DType::F32));
        let f = rnd(&[b, k], DType::F32);
        let (mut v, mut y) = (empty(&[b, rows, k], bf), empty(&[b, rows, n], DType::F32));
        let flops = Some(2.0 * (b * rows * k * n) as f64);
        let dims = format!("{name}/{b}x{rows}x{k}x{n}/bf16");
        r.run(&format!("linear_scaled/separate/{dims}"), flops, None, || {
            ops::scale_by_factor_into(&u, &f, &mut v).unwrap();
            ops::linear_accumulate_into(&v, &w, Some(&bias), &mut y).unwrap()
        });
        r.run(&format!("linear_scaled/gemm_only/{dims}"), flops, None, || {
            ops::linear_accumulate_into(&u, &w, Some(&bias), &mut y).unwrap()
        });
        if scaled {
            r.run(&format!("linear_scaled/sk/{dims}"), flops, None, || {
                ops::linear_scaled_sk_into(&u, Some(&f), &w, Some(&bias), &mut y, true, None).unwrap()
            });
            r.run(&format!("linear_scaled/sk_plain/{dims}"), flops, None, || {
                ops::linear_scaled_sk_into(&u, None, &w, Some(&bias), &mut y, true, None).unwrap()
            });
        }
    }
    for s in shapes::ROWS {
        let x = rnd(&[s.rows, s.c], bf);
        let mut y = empty(&[s.rows, s.c], bf);
        let bytes = Some((4 * s.rows * s.c) as f64);
        r.run(&format!("layer_norm/{}/{}x{}/bf16", s.name, s.rows, s.c), None, bytes, || {
            ops::layer_norm_into(&x, None, None, 1e-6, &mut y).unwrap()
        });
        r.run(&format!("gelu/{}/{}x{}/bf16", s.name, s.rows, s.c), None, bytes, || ops::gelu_into(&x, &mut y).unwrap());
    }
    for s in shapes::GRN {
        let x = rnd(&[s.b, s.n, s.d], bf);
        let (g, be) = (rnd(&[s.d], bf), rnd(&[s.d], bf));
        let mut st = empty(&[s.b, s.d], DType::F32);
        let mut y = empty(&[s.b, s.n, s.d], bf);
        r.run(&format!("grn/{}/{}x{}x{}/bf16", s.name, s.b, s.n, s.d), None, Some((6 * s.b * s.n * s.d) as f64), || {
            ops::grn_into(&x, &g, &be, &mut st, &mut y).unwrap()
        });
        // x copied into y first (so every call sees the same values), then the sums of squares of
        // GELU (a read), then the apply pass recomputing GELU (a read and a write): 4 + 2 + 4 bytes.
        r.run(&format!("copy+gelu+grn/{}/{}x{}x{}/bf16", s.name, s.b, s.n, s.d), None, Some((10 * s.b * s.n * s.d) as f64), || {
            ops::cast_into(&x, &mut y).unwrap();
            ops::gelu_grn_assign(&mut y, &g, &be).unwrap()
        });
        // The weight path (one sample): copy, GELU + the factor only, then fc2's [D/4, D]
        // weight scaled by it. Bytes: the copy and the GELU pass (8 per element) and the weight.
        let w = rnd(&[s.d / 4, s.d], bf);
        r.run(
            &format!("copy+gelu+grn_factor+scale_w/{}/{}x{}x{}/bf16", s.name, s.b, s.n, s.d),
            None,
            Some((8 * s.b * s.n * s.d + 4 * w.numel()) as f64),
            || {
                ops::cast_into(&x, &mut y).unwrap();
                let f = ops::gelu_grn_factor(&mut y, &g).unwrap();
                ops::scale_columns(&w, &f.alias(0, &[1, s.d]).unwrap()).map(drop).unwrap()
            },
        );
    }
    for s in shapes::GRN {
        // GRN of a u whose GELU the GEMM applied: the sums pass only reads (2 bytes), the apply
        // pass reads and writes (4); the factor alone is the read.
        let x = rnd(&[s.b, s.n, s.d], bf);
        let (g, be) = (rnd(&[s.d], bf), rnd(&[s.d], bf));
        let mut y = empty(&[s.b, s.n, s.d], bf);
        r.run(&format!("copy+grn_in_place/{}/{}x{}x{}/bf16", s.name, s.b, s.n, s.d), None, Some((10 * s.b * s.n * s.d) as f64), || {
            ops::cast_into(&x, &mut y).unwrap();
            ops::grn_assign(&mut y, &g, &be).unwrap()
        });
        r.run(&format!("grn_factor/{}/{}x{}x{}/bf16", s.name, s.b, s.n, s.d), None, Some((2 * s.b * s.n * s.d) as f64), || {
            ops::grn_factor(&x, &g).map(drop).unwrap()
        });
    }
    for (s, replicate, ln) in shapes::DEPTHWISE {
        let shape = [s.b, s.h, s.w, s.c];
        let (x, w, b) = (rnd(&shape, bf), rnd(&[s.c, 9], bf), rnd(&[s.c], bf));
        let mut y = empty(&shape, bf);
        let pad = if *replicate { Padding::Replicate } else { Padding::Zero };
        let eps = ln.then_some(1e-6);
        let what = if *ln { "depthwise+ln" } else { "depthwise" };
        r.run(&format!("{what}/{}/{}x{}x{}x{}/bf16", s.name, s.b, s.h, s.w, s.c), None, Some((4 * s.numel()) as f64), || {
            ops::depthwise3x3_into(&x, &w, &b, pad, eps, &mut y).unwrap()
        });
        if *ln && !*replicate {
            // A TimestepBlock's modulation read with the taps: reads x, writes the modulated x
            // (which replaces x) and the convolution's LayerNorm.
            let (mut xm, ab) = (rnd(&shape, bf), rnd(&[s.b, 2 * s.c], bf));
            r.run(
                &format!("modulate+depthwise+ln/{}/{}x{}x{}x{}/bf16", s.name, s.b, s.h, s.w, s.c),
                None,
                Some((6 * s.numel()) as f64),
                || ops::modulate_depthwise3x3_ln(&mut xm, &ab, 0, &w, &b, pad, 1e-6).map(drop).unwrap(),
            );
            // The same from an f32 residual stream: reads and writes x in f32, the LayerNorm in bf16.
            let (mut x32, ab32) = (rnd(&shape, DType::F32), rnd(&[s.b, 2 * s.c], DType::F32));
            r.run(
                &format!("modulate+depthwise+ln/{}/{}x{}x{}x{}/f32>bf16", s.name, s.b, s.h, s.w, s.c),
                None,
                Some((10 * s.numel()) as f64),
                || ops::stream_depthwise3x3_ln(&mut x32, Some((&ab32, 0)), &w, &b, pad, 1e-6).map(drop).unwrap(),
            );
        }
        if !*ln {
            // y += conv(x): reads x and y, writes y.
            r.run(&format!("depthwise+=/{}/{}x{}x{}x{}/bf16", s.name, s.b, s.h, s.w, s.c), None, Some((6 * s.numel()) as f64), || {
                ops::depthwise3x3_accumulate_into(&x, &w, &b, pad, &mut y).unwrap()
            });
            // x + conv(LN(x)): the statistics pass reads x, the convolution reads x and writes y.
            let (lw, lb) = (rnd(&[s.c], bf), rnd(&[s.c], bf));
            r.run(&format!("ln+depthwise+x/{}/{}x{}x{}x{}/bf16", s.name, s.b, s.h, s.w, s.c), None, Some((6 * s.numel()) as f64), || {
                ops::depthwise3x3_prenorm_residual(&x, &lw, &lb, 1e-6, &w, &b, pad).unwrap();
            });
            // And the result's LayerNorm written beside it (one more write).
            r.run(
                &format!("ln+depthwise+x+ln/{}/{}x{}x{}x{}/bf16", s.name, s.b, s.h, s.w, s.c),
                None,
                Some((8 * s.numel()) as f64),
                || {
                    ops::depthwise3x3_prenorm_residual_ln(&x, &lw, &lb, 1e-6, &w, &b, pad, (&lw, &lb)).map(drop).unwrap();
                },
            );
        }
    }
    for s in shapes::UNSHUFFLE {
        let x = rnd(&[s.b, s.h, s.w, s.c], bf);
        let mut lo = empty(&[s.b, s.h / 2, s.w / 2, 4 * s.c], bf);
        let mut hi = empty(&[s.b, s.h, s.w, s.c], bf);
        let bytes = Some((4 * s.numel()) as f64);
        r.run(&format!("pixel_unshuffle/{}/{}x{}x{}/bf16", s.name, s.h, s.w, s.c), None, bytes, || {
            ops::pixel_unshuffle_into(&x, 2, &mut lo).unwrap()
        });
        // The same data read sub-pixel-major (Stage A's transposed convolution).
        r.run(&format!("pixel_shuffle_phases/{}/{}x{}x{}/bf16", s.name, s.h, s.w, s.c), None, bytes, || {
            ops::pixel_shuffle_phases(&lo, 2).map(drop).unwrap()
        });
        r.run(&format!("pixel_shuffle/{}/{}x{}x{}/bf16", s.name, s.h, s.w, s.c), None, bytes, || {
            ops::pixel_shuffle_into(&lo, 2, &mut hi).unwrap()
        });
    }
    for rs in shapes::RESIZE {
        let s = rs.x;
        let x = rnd(&[s.b, s.h, s.w, s.c], bf);
        let mut y = empty(&[s.b, rs.ho, rs.wo, s.c], bf);
        r.run(
            &format!("resize_bilinear/{}/{}x{}->{}x{}x{}/bf16", s.name, s.h, s.w, rs.ho, rs.wo, s.c),
            None,
            Some((2 * (s.numel() + y.numel())) as f64),
            || ops::resize_bilinear_into(&x, &mut y).unwrap(),
        );
    }
    for s in shapes::CONCAT {
        let (a, b) = (rnd(&[s.rows, s.ca], bf), rnd(&[s.rows, s.cb], bf));
        let mut y = empty(&[s.rows, s.ca + s.cb], bf);
        r.run(&format!("concat/{}/{}x({}+{})/bf16", s.name, s.rows, s.ca, s.cb), None, Some((4 * s.rows * (s.ca + s.cb)) as f64), || {
            ops::concat_channels_into(&a, &b, &mut y).unwrap()
        });
        r.run(&format!("columns/{}/{}x{}[{}..]/bf16", s.name, s.rows, s.ca + s.cb, s.ca), None, Some((4 * s.rows * s.cb) as f64), || {
            ops::columns(&y, s.ca, s.cb).map(drop).unwrap()
        });
        // An f32 residual stream's skip as the second part, converted as it is copied.
        let b32 = rnd(&[s.rows, s.cb], DType::F32);
        r.run(
            &format!("concat/{}/{}x({}+{})/bf16+f32", s.name, s.rows, s.ca, s.cb),
            None,
            Some((s.rows * (4 * s.ca + 6 * s.cb)) as f64),
            || ops::concat_channels_into(&a, &b32, &mut y).unwrap(),
        );
    }
    for cs in shapes::CONV2X2 {
        let s = cs.x;
        let (x, w, b) = (rnd(&[s.b, s.h, s.w, s.c], bf), rnd(&[cs.cout, 4 * s.c], bf), rnd(&[cs.cout], bf));
        r.run(
            &format!("conv2x2_s2/{}/{}x{}x{}->{}/bf16", s.name, s.h, s.w, s.c, cs.cout),
            Some(cs.flops(4, s.b * s.h * s.w / 4)),
            None,
            || {
                ops::conv2x2_s2(&x, &w, &b).unwrap();
            },
        );
    }
    for cs in shapes::CONV_T2X2 {
        let s = cs.x;
        let (x, w, b) = (rnd(&[s.b, s.h, s.w, s.c], bf), rnd(&[4 * cs.cout, s.c], bf), rnd(&[4 * cs.cout], bf));
        r.run(
            &format!("conv_transpose2x2/{}/{}x{}x{}->{}/bf16", s.name, s.h, s.w, s.c, cs.cout),
            Some(cs.flops(1, 4 * s.b * s.h * s.w)),
            None,
            || {
                ops::conv_transpose2x2(&x, &w, &b).unwrap();
            },
        );
    }
    for cs in shapes::CONV_T4X4 {
        let s = cs.x;
        let (x, w, b) = (rnd(&[s.b, s.h, s.w, s.c], bf), rnd(&[8 * cs.cout, 2 * s.c], bf), rnd(&[cs.cout], bf));
        // Its first pass alone: the 3×3 neighbourhoods (read once, written nine times).
        let mut cols = empty(&[s.b, s.h, s.w, 9 * s.c], bf);
        r.run(&format!("im2col3x3/{}/{}x{}x{}/bf16", s.name, s.h, s.w, s.c), None, Some((20 * s.numel()) as f64), || {
            ops::im2col3x3_into(&x, &mut cols).unwrap()
        });
        // FLOPs: each output pixel sums 4 taps (what the phase GEMMs compute).
        r.run(
            &format!("conv_transpose4x4/{}/{}x{}x{}->{}/bf16", s.name, s.h, s.w, s.c, cs.cout),
            Some(cs.flops(4, 4 * s.b * s.h * s.w)),
            None,
            || {
                ops::conv_transpose4x4(&x, &w, &b).unwrap();
            },
        );
    }
    // The wgmma kernel only where it was asked for and passed its start-up check (see
    // `AttentionKernel::Wgmma`).
    let wgmma_kernels: &[(ops::AttentionKernel, &str)] = if matches!(&dev, cascade::Device::Cuda(d) if d.wgmma_attention()) {
        &[(ops::AttentionKernel::Wgmma, "attention_wgmma"), (ops::AttentionKernel::WgmmaSharedQ, "attention_wgmma_sq")]
    } else {
        &[]
    };
    // The split-key kernels likewise (CASCADE_ATTENTION_SPLIT=1): two ranges with Q in registers
    // and in shared memory (Stage B's level 2 plan), five (level 3's), and Auto's plan.
    let split_kernels: &[(ops::AttentionKernel, &str)] = if matches!(&dev, cascade::Device::Cuda(d) if d.wgmma_split_attention()) {
        &[
            (ops::AttentionKernel::WgmmaSplit(2), "attention_wgmma_split2"),
            (ops::AttentionKernel::WgmmaSharedQSplit(2), "attention_wgmma_sq_split2"),
            (ops::AttentionKernel::WgmmaSplit(5), "attention_wgmma_split5"),
            (ops::AttentionKernel::Auto, "attention_wgmma_auto"),
        ]
    } else {
        &[]
    };
    // And the two-warpgroup kernel (CASCADE_ATTENTION=wgmma2), with its split rows (two and
    // three ranges per 128 queries) when the split kernels were asked for too.
    let wgmma2: &[(ops::AttentionKernel, &str)] = match &dev {
        cascade::Device::Cuda(d) if d.wgmma2_attention() && d.wgmma_split_attention() => &[
            (ops::AttentionKernel::Wgmma2, "attention_wgmma2"),
            (ops::AttentionKernel::Wgmma2Split(2), "attention_wgmma2_split2"),
            (ops::AttentionKernel::Wgmma2Split(3), "attention_wgmma2_split3"),
        ],
        cascade::Device::Cuda(d) if d.wgmma2_attention() => &[(ops::AttentionKernel::Wgmma2, "attention_wgmma2")],
        _ => &[],
    };
    let wgmma_kernels: Vec<(ops::AttentionKernel, &str)> = wgmma_kernels.iter().chain(split_kernels).chain(wgmma2).copied().collect();
    for s in shapes::ATTENTION {
        for dtype in [bf, DType::F32] {
            let c = s.heads * 64;
            let (q, k, v) = (rnd(&[s.b, s.lq, c], dtype), rnd(&[s.b, s.lk, c], dtype), rnd(&[s.b, s.lk, c], dtype));
            let mask = Tensor::from_f32(&vec![1.0; s.b * s.lk], &[s.b, s.lk], DType::F32, &dev).unwrap();
            let mut o = empty(&[s.b, s.lq, c], dtype);
            let m = if s.masked { AttentionMask::CausalPadding(&mask) } else { AttentionMask::None };
            r.run(&format!("attention/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk), Some(s.flops()), None, || {
                ops::attention_into_with(&q, &k, &v, s.heads, 0.125, m, ops::AttentionKernel::Simple, &mut o).unwrap()
            });
            if dtype == bf {
                // With CLIP's causal and padding masks too (FLOPs counted as if unmasked).
                r.run(&format!("attention_mma/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk), Some(s.flops()), None, || {
                    ops::attention_into_with(&q, &k, &v, s.heads, 0.125, m, ops::AttentionKernel::Mma, &mut o).unwrap()
                });
                // 32 queries per warp (the automatic choice where its grid fills one wave).
                r.run(&format!("attention_mma32/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk), Some(s.flops()), None, || {
                    ops::attention_into_with(&q, &k, &v, s.heads, 0.125, m, ops::AttentionKernel::Mma32, &mut o).unwrap()
                });
                r.run(
                    &format!("attention_mma32_w5/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk),
                    Some(s.flops()),
                    None,
                    || ops::attention_into_with(&q, &k, &v, s.heads, 0.125, m, ops::AttentionKernel::Mma32Wide, &mut o).unwrap(),
                );
                for &(kernel, label) in &wgmma_kernels {
                    r.run(&format!("{label}/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk), Some(s.flops()), None, || {
                        ops::attention_into_with(&q, &k, &v, s.heads, 0.125, m, kernel, &mut o).unwrap()
                    });
                }
                // The same two default kernels with the lean softmax (CASCADE_ATTENTION_SOFTMAX=lean).
                for &(kernel, label) in wgmma_kernels.iter().take(2) {
                    r.run(&format!("{label}_lean/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk), Some(s.flops()), None, || {
                        ops::attention_into_with_softmax(&q, &k, &v, s.heads, 0.125, m, kernel, true, &mut o).unwrap()
                    });
                }
                // ... and with the last tile of keys kept 64 wide (CASCADE_ATTENTION_TAIL=full):
                // against the rows above, what the narrow last tile saves per launch.
                for &(kernel, label) in wgmma_kernels.iter().take(2) {
                    let full = ops::WgmmaOptions { narrow_tail: Some(false), ..Default::default() };
                    r.run(
                        &format!("{label}_fulltail/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk),
                        Some(s.flops()),
                        None,
                        || ops::attention_into_with_options(&q, &k, &v, s.heads, 0.125, m, kernel, full, &mut o).unwrap(),
                    );
                }
                // ... and with K and V copied by TMA (CASCADE_ATTENTION_COPY=tma, where it passed
                // its start-up check), full and lean softmax.
                // The split-key kernels' rows too, where they were asked for (their TMA versions).
                if matches!(&dev, cascade::Device::Cuda(d) if d.tma_attention()) {
                    let with_tma = |k: &ops::AttentionKernel| {
                        use ops::AttentionKernel::*;
                        matches!(k, Wgmma | WgmmaSharedQ | WgmmaSplit(_) | WgmmaSharedQSplit(_))
                    };
                    // ... and, where asked for (CASCADE_ATTENTION_COPY=pair, or cluster), with the
                    // copies shared by clusters of two blocks, or of the size that fits a head's
                    // query blocks best (the unsplit kernels, unmasked shapes), in the same process.
                    let (paired, wider) = match &dev {
                        cascade::Device::Cuda(d) => (d.pair_attention() && !s.masked, d.cluster_attention() && !s.masked),
                        _ => (false, false),
                    };
                    for &(kernel, label) in wgmma_kernels.iter().filter(|(k, _)| with_tma(k)) {
                        let clustered = matches!(kernel, ops::AttentionKernel::Wgmma | ops::AttentionKernel::WgmmaSharedQ);
                        // 1: unshared, 2: pairs, 3: the best fitting cluster.
                        for (cluster, lean) in [(1, false), (1, true), (2, false), (2, true), (3, false), (3, true)] {
                            if (cluster == 2 && !(paired && clustered)) || (cluster == 3 && !(wider && clustered)) {
                                continue;
                            }
                            let tma = ops::WgmmaOptions {
                                tma_copies: Some(true),
                                pair_copies: Some(cluster > 1),
                                cluster_copies: Some(cluster == 3),
                                lean_softmax: Some(lean),
                                ..Default::default()
                            };
                            let row = format!(
                                "{label}_tma{}{}/{}/{}x{}x{}x{}/{dtype}",
                                ["", "", "_pair", "_cluster"][cluster],
                                if lean { "_lean" } else { "" },
                                s.name,
                                s.b,
                                s.heads,
                                s.lq,
                                s.lk
                            );
                            r.run(&row, Some(s.flops()), None, || {
                                ops::attention_into_with_options(&q, &k, &v, s.heads, 0.125, m, kernel, tma, &mut o).unwrap()
                            });
                        }
                    }
                }
            }
            if dtype == bf && !s.masked {
                r.run(&format!("attention_tc/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk), Some(s.flops()), None, || {
                    ops::attention_into_with(&q, &k, &v, s.heads, 0.125, m, ops::AttentionKernel::TensorCore, &mut o).unwrap()
                });
                // The same keys split as the UNets hold them: all but the last 77 from one pair of
                // tensors, the rest (the condition rows) from another.
                if s.lk > 77 {
                    let (k1, k2) = (rnd(&[s.b, s.lk - 77, c], dtype), rnd(&[s.b, 77, c], dtype));
                    let (v1, v2) = (rnd(&[s.b, s.lk - 77, c], dtype), rnd(&[s.b, 77, c], dtype));
                    r.run(
                        &format!("attention_mma_2src/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk),
                        Some(s.flops()),
                        None,
                        || {
                            ops::attention_two_sources_into(&q, (&k1, &v1), (&k2, &v2), s.heads, 0.125, ops::AttentionKernel::Mma, &mut o)
                                .unwrap()
                        },
                    );
                }
                // As the UNets run it: q, k, v packed in one GEMM's rows (row stride 3C), the
                // keys beyond the queries' own from a second packed tensor (the condition rows).
                if s.lk >= s.lq {
                    let qkv = rnd(&[s.b, s.lq, 3 * c], dtype);
                    let second = (s.lk > s.lq).then(|| rnd(&[s.b, s.lk - s.lq, 3 * c], dtype));
                    r.run(
                        &format!("attention_mma_packed/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk),
                        Some(s.flops()),
                        None,
                        || ops::attention_packed_into(&qkv, second.as_ref(), s.heads, 0.125, m, ops::AttentionKernel::Mma, &mut o).unwrap(),
                    );
                    r.run(
                        &format!("attention_mma32_packed/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk),
                        Some(s.flops()),
                        None,
                        || {
                            ops::attention_packed_into(&qkv, second.as_ref(), s.heads, 0.125, m, ops::AttentionKernel::Mma32, &mut o)
                                .unwrap()
                        },
                    );
                    r.run(
                        &format!("attention_mma32_w5_packed/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk),
                        Some(s.flops()),
                        None,
                        || {
                            let k = ops::AttentionKernel::Mma32Wide;
                            ops::attention_packed_into(&qkv, second.as_ref(), s.heads, 0.125, m, k, &mut o).unwrap()
                        },
                    );
                    for &(kernel, label) in &wgmma_kernels {
                        r.run(
                            &format!("{label}_packed/{}/{}x{}x{}x{}/{dtype}", s.name, s.b, s.heads, s.lq, s.lk),
                            Some(s.flops()),
                            None,
                            || ops::attention_packed_into(&qkv, second.as_ref(), s.heads, 0.125, m, kernel, &mut o).unwrap(),
                        );
                    }
                }
            }
        }
    }
    // The launch gap: one graph of 256 dependent adds on a tiny tensor (the kernels themselves
    // take about a microsecond), captured with ordinary and with programmatic launches (compute
    // capability 9.0 only), in the same process: the difference per add is what a kernel-to-kernel
    // edge of a step graph can gain from CASCADE_PDL=1.
    if let cascade::Device::Cuda(cuda) = &dev {
        let before = cuda.programmatic_launches();
        let modes: &[bool] = if cuda.compute_capability() == (9, 0) { &[false, true] } else { &[false] };
        let x = rnd(&[1, 64, 64], bf);
        let mut y = rnd(&[1, 64, 64], bf);
        for &pdl in modes {
            cuda.set_programmatic_launches(pdl).unwrap();
            let graph = cuda
                .capture(|| {
                    for _ in 0..256 {
                        ops::add_assign(&mut y, &x)?;
                    }
                    Ok(())
                })
                .unwrap();
            let mode = if pdl { "programmatic" } else { "ordinary" };
            r.run(&format!("launch_chain/256_adds/1x64x64/{mode}"), None, None, || graph.replay().unwrap());
        }
        cuda.set_programmatic_launches(before).unwrap();
    }
    for s in shapes::ELEMENTWISE {
        let shape = [s.b, s.n, s.c];
        let (x, ab) = (rnd(&shape, bf), rnd(&[s.b, 2 * s.c], bf));
        let mut y = rnd(&shape, bf);
        let coef = Tensor::from_f32(&[1.0, 0.01, 0.0], &[3], DType::F32, &dev).unwrap();
        let n = s.numel();
        r.run(&format!("add/{}/{}x{}x{}/bf16", s.name, s.b, s.n, s.c), None, Some((6 * n) as f64), || ops::add_assign(&mut y, &x).unwrap());
        r.run(&format!("modulate/{}/{}x{}x{}/bf16", s.name, s.b, s.n, s.c), None, Some((4 * n) as f64), || {
            ops::modulate_assign(&mut y, &ab, 0).unwrap()
        });
        // Read x, write x and its LayerNorm (the separate ops: 4n + 4n bytes).
        r.run(&format!("modulate+ln/{}/{}x{}x{}/bf16", s.name, s.b, s.n, s.c), None, Some((6 * n) as f64), || {
            ops::modulate_layer_norm(&mut y, &ab, 0, 1e-6).map(drop).unwrap()
        });
        // An f32 residual stream: read and write it in f32, write its LayerNorm in bf16.
        let (mut y32, ab32) = (rnd(&shape, DType::F32), rnd(&[s.b, 2 * s.c], DType::F32));
        r.run(&format!("modulate+ln/{}/{}x{}x{}/f32>bf16", s.name, s.b, s.n, s.c), None, Some((10 * n) as f64), || {
            ops::modulate_layer_norm_as(&mut y32, &ab32, 0, 1e-6, bf).map(drop).unwrap()
        });
        // A level's last modulation read only in bf16 (a repeat mapper's input): f32 in, bf16 out.
        let mut m16 = empty(&shape, bf);
        r.run(&format!("modulate/{}/{}x{}x{}/f32>bf16", s.name, s.b, s.n, s.c), None, Some((6 * n) as f64), || {
            ops::modulate_into(&y32, &ab32, 0, &mut m16).unwrap()
        });
        r.run(&format!("affine/{}/{}x{}x{}/bf16", s.name, s.b, s.n, s.c), None, Some((4 * n) as f64), || {
            ops::affine_assign(&mut y, 1.0, 0.0).unwrap()
        });
        r.run(&format!("ddpm_step/{}/{}x{}x{}/bf16", s.name, s.b, s.n, s.c), None, Some((8 * n) as f64), || {
            ops::ddpm_step_assign(&mut y, &x, Some(&x), &coef).unwrap()
        });
    }
    {
        let t = Tensor::from_f32(&[0.5, 0.5], &[2], DType::F32, &dev).unwrap();
        let mut y = empty(&[2, 192], bf);
        r.run("timestep_embedding/2x192/bf16", None, Some(768.0), || ops::timestep_embedding_into(&t, 64, 2, 10000.0, &mut y).unwrap());
        let ids = Tensor::from_f32(&(0..154).map(|i| (i * 311 % 49408) as f32).collect::<Vec<_>>(), &[2, 77], DType::F32, &dev).unwrap();
        let (tok, pos) = (rnd(&[49408, 1280], bf), rnd(&[77, 1280], bf));
        let mut y = empty(&[2, 77, 1280], bf);
        r.run("token_embedding/clip/2x77x1280/bf16", None, Some((3 * 2 * 77 * 1280 * 2) as f64), || {
            ops::token_embedding_into(&ids, &tok, &pos, &mut y).unwrap()
        });
        // Stage A's 1024² output to 8-bit pixels, the bytes copied to the host included (what
        // the pipeline pays): 2 bytes read and 1 written on the device, 1 copied, per value.
        let img = rnd(&[1, 1024, 1024, 3], bf);
        let n = 1024 * 1024 * 3;
        r.run("to_rgb8+copy/stage_a.out/1x1024x1024x3/bf16", None, Some((4 * n) as f64), || ops::to_rgb8(&img).map(drop).unwrap());
    }
    r.finish();
}

#[cfg(not(feature = "cuda"))]
fn main() {
    let _ = common::gpu_or_skip;
    println!("ops bench: skipped (built without the `cuda` feature)");
}
