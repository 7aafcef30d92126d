//! Bench plumbing shared by the bench targets: the GPU (or a skip notice), criterion's
//! configuration (short under CASCADE_BENCH_QUICK=1, as the GPU bundle runs it), and a
//! one-line summary per measurement that the bundle's table is built from.

#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;

/// The CUDA device, or None after printing why the GPU benches are skipped.
pub fn gpu_or_skip(bench: &str) -> Option<cascade::Device> {
    match cascade::Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("{bench}: skipped (no CUDA GPU: {e})");
            None
        }
    }
}

/// Criterion configured for the environment.
pub fn criterion() -> Criterion {
    let c = Criterion::default().configure_from_args();
    if std::env::var_os("CASCADE_BENCH_QUICK").is_some() {
        c.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(600))
    } else {
        c.warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
    }
}

/// Times `iters` calls of `f`, synchronising the device before and after.
pub fn time_iters(dev: &cascade::Device, iters: u64, mut f: impl FnMut()) -> Duration {
    dev.synchronize().unwrap();
    let t = std::time::Instant::now();
    for _ in 0..iters {
        f();
    }
    dev.synchronize().unwrap();
    t.elapsed()
}

/// Prints the summary line the GPU bundle's table collects:
/// `BENCH <name> <ms per call> ms <rate>`; `flops` or `bytes` gives the rate.
pub fn report(name: &str, per_call: Duration, flops: Option<f64>, bytes: Option<f64>) {
    let s = per_call.as_secs_f64();
    let rate = match (flops, bytes) {
        (Some(f), _) => format!("{:.1} TFLOP/s", f / s / 1e12),
        (None, Some(b)) => format!("{:.0} GB/s", b / s / 1e9),
        _ => String::new(),
    };
    println!("BENCH {name:<44} {:>10.4} ms  {rate}", s * 1e3);
}

/// Measures `f` once more outside criterion (median of `reps` timed batches) for the summary.
pub fn summary(
    dev: &cascade::Device,
    name: &str,
    flops: Option<f64>,
    bytes: Option<f64>,
    mut f: impl FnMut(),
) {
    let reps = 7;
    let per_batch = 20;
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| time_iters(dev, per_batch, &mut f) / per_batch as u32)
        .collect();
    times.sort();
    report(name, times[reps / 2], flops, bytes);
}
