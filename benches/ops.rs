//! Per-op GPU benchmarks over the shape tables of `cascade::ops::shapes` (the same rows the
//! GPU tests check). Reports milliseconds per call and TFLOP/s or GB/s. Without a GPU (or
//! without the `cuda` feature) it says it skipped.

mod common;

#[cfg(feature = "cuda")]
fn main() {
    use cascade::ops::shapes::LINEAR;
    use cascade::testing::TestRng;
    use cascade::{ops, DType, Tensor};
    use criterion::Throughput;

    let Some(dev) = common::gpu_or_skip("ops bench") else {
        return;
    };
    let mut c = common::criterion();
    {
        let mut g = c.benchmark_group("linear");
        for s in LINEAR {
            for dtype in [DType::BF16, DType::F32] {
                let mut rng = TestRng::new(7);
                let x = Tensor::from_f32(&rng.normal(s.m * s.k, 1.0), &[s.m, s.k], dtype, &dev)
                    .unwrap();
                let w = Tensor::from_f32(&rng.normal(s.n * s.k, 0.02), &[s.n, s.k], dtype, &dev)
                    .unwrap();
                let b = Tensor::from_f32(&rng.normal(s.n, 0.02), &[s.n], dtype, &dev).unwrap();
                let mut y = Tensor::empty(&[s.m, s.n], dtype, &dev).unwrap();
                let name = format!("{}/{}x{}x{}/{dtype}", s.name, s.m, s.k, s.n);
                g.throughput(Throughput::Elements(s.flops() as u64));
                g.bench_function(&name, |bench| {
                    bench.iter_custom(|iters| {
                        common::time_iters(&dev, iters, || {
                            ops::linear_into(&x, &w, Some(&b), &mut y).unwrap()
                        })
                    })
                });
                common::summary(
                    &dev,
                    &format!("linear/{name}"),
                    Some(s.flops()),
                    None,
                    || ops::linear_into(&x, &w, Some(&b), &mut y).unwrap(),
                );
            }
        }
        g.finish();
    }
    c.final_summary();
}

#[cfg(not(feature = "cuda"))]
fn main() {
    let _ = common::criterion;
    println!("ops bench: skipped (built without the `cuda` feature)");
}
