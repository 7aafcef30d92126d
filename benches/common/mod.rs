//! Bench plumbing shared by the bench targets: the GPU (or a skip notice), criterion, and a
//! one-line summary per measurement (`BENCH <name> <ms> <rate>`) that the GPU bundle's table
//! is built from. With CASCADE_BENCH_QUICK=1 (as the bundle runs them) only the summary
//! measurement runs, so every bench fits in the GPU machine's short budget; with
//! CASCADE_BENCH_ONCE=1 every case runs exactly once (under compute-sanitizer).

#![allow(dead_code)]

use std::time::Duration;

use cascade::Device;
use criterion::Criterion;

/// The CUDA device, or None after printing why the GPU benches are skipped.
pub fn gpu_or_skip(bench: &str) -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("{bench}: skipped (no CUDA GPU: {e})");
            None
        }
    }
}

/// Runs measurements either through criterion or, in quick mode, as the summary alone.
pub struct Runner {
    criterion: Criterion,
    quick: bool,
    dev: Device,
}

impl Runner {
    /// A runner on `dev`, configured from the command line and CASCADE_BENCH_QUICK.
    pub fn new(dev: Device) -> Self {
        let criterion =
            Criterion::default().configure_from_args().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        Runner { criterion, quick: std::env::var_os("CASCADE_BENCH_QUICK").is_some(), dev }
    }

    /// The device.
    pub fn dev(&self) -> &Device {
        &self.dev
    }

    /// Benchmarks `f` (one call = one launch sequence) as `name`; `flops` or `bytes` (moved to
    /// and from memory at least once) gives the rate in the summary line.
    pub fn run(&mut self, name: &str, flops: Option<f64>, bytes: Option<f64>, mut f: impl FnMut()) {
        let dev = self.dev.clone();
        // CASCADE_SHAPES picks table rows by name, as in the GPU tests.
        if !cascade::testing::shape_wanted(name) {
            return;
        }
        if std::env::var_os("CASCADE_BENCH_ONCE").is_some() {
            // One call, synchronised: for compute-sanitizer runs, where speed means nothing.
            f();
            dev.synchronize().unwrap();
            println!("BENCH {name:<56} ran once");
            return;
        }
        if !self.quick {
            self.criterion.bench_function(name, |b| b.iter_custom(|iters| time_iters(&dev, iters, &mut f)));
        }
        summary(&dev, name, flops, bytes, &mut f);
    }

    /// Criterion's closing summary.
    pub fn finish(self) {
        if !self.quick {
            self.criterion.final_summary();
        }
    }
}

/// Times `iters` calls of `f`, synchronising the device before and after.
pub fn time_iters(dev: &Device, iters: u64, mut f: impl FnMut()) -> Duration {
    dev.synchronize().unwrap();
    let t = std::time::Instant::now();
    for _ in 0..iters {
        f();
    }
    dev.synchronize().unwrap();
    t.elapsed()
}

/// Several launch sequences timed in turns, for A/B comparisons within one process: a warm-up
/// batch of each, then 7 rounds of one batch of 20 calls of each (in an order rotated every
/// round), so that drift (clocks, temperature, other tenants) falls on all of them alike. Prints
/// each one's median as a BENCH line, then an `AB` line per sequence after the first: its median
/// difference from the first, and the range of the per-round differences.
pub fn summary_interleaved(dev: &Device, names: &[String], flops: Option<f64>, fs: &mut [&mut dyn FnMut()]) {
    let (rounds, per_batch) = (7, 20u32);
    for f in fs.iter_mut() {
        time_iters(dev, 3, &mut **f);
    }
    let mut times = vec![Vec::with_capacity(rounds); fs.len()];
    // Each round starts one sequence further on, so that no sequence always follows the same
    // one (whose leftovers in L2, or whose clocks, it would otherwise inherit every time).
    let count = fs.len();
    for r in 0..rounds {
        for i in (0..count).map(|j| (j + r) % count) {
            times[i].push(time_iters(dev, per_batch as u64, &mut *fs[i]).as_secs_f64() / per_batch as f64);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (name, t) in names.iter().zip(&times) {
        bench_line(name, median(t), flops, None);
    }
    for (name, t) in names.iter().zip(&times).skip(1) {
        let diffs: Vec<f64> = t.iter().zip(&times[0]).map(|(b, a)| (b - a) * 1e3).collect();
        let (lo, hi) = diffs.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &d| (lo.min(d), hi.max(d)));
        let (a, b) = (median(&times[0]), median(t));
        println!(
            "AB {name:<56} {:+.4} ms ({:+.2} %) against {}; per round {lo:+.4} to {hi:+.4} ms",
            (b - a) * 1e3,
            (b / a - 1.0) * 100.0,
            names[0]
        );
    }
}

/// Median over 7 timed batches of 20 calls after a warm-up batch, printed as one line.
fn summary(dev: &Device, name: &str, flops: Option<f64>, bytes: Option<f64>, mut f: impl FnMut()) {
    let (reps, per_batch) = (7, 20u32);
    time_iters(dev, 3, &mut f);
    let mut times: Vec<Duration> = (0..reps).map(|_| time_iters(dev, per_batch as u64, &mut f) / per_batch).collect();
    times.sort();
    bench_line(name, times[reps / 2].as_secs_f64(), flops, bytes);
}

/// One BENCH line: `secs` per call, and the rate `flops` or `bytes` give.
fn bench_line(name: &str, secs: f64, flops: Option<f64>, bytes: Option<f64>) {
    let rate = match (flops, bytes) {
        (Some(fl), _) => format!("{:8.1} TFLOP/s", fl / secs / 1e12),
        (None, Some(b)) => format!("{:8.0} GB/s", b / secs / 1e9),
        _ => String::new(),
    };
    println!("BENCH {name:<56} {:>10.4} ms  {rate}", secs * 1e3);
}
