//! Kernel choice by measurement (`CASCADE_KERNEL_TUNE`).
//!
//! Several operations have more than one implementation on a compute capability 9.0 GPU: the
//! ResBlock's fc1 + GRN statistics as one warp-specialised GEMM or as cuBLASLt and a sums pass,
//! its fc2 with GRN's factor applied by a stream-K GEMM or by a pass, the attention's kernels,
//! and so on. Which is faster depends on the shape and the card, and several have not been
//! measured at all. The static choice (each site's candidate 0, what the engine takes without
//! tuning) is the measured one where a measurement exists.
//!
//! With `CASCADE_KERNEL_TUNE=1` (or `log`, which prints each choice) the kernels that await
//! measurement are checked at start-up as if each had been asked for, and a site meeting a
//! shape for the first time outside a graph capture times every candidate on the real operands
//! (into scratch outputs): one direct run (which also tunes the cuBLASLt GEMMs a candidate
//! contains), then [`REPEATS`] runs captured as one graph and replayed [`TIMED_REPLAYS`] times
//! between two events, so that what is timed is what a step's graph runs: no host launch
//! gaps, temporaries in an arena. The fastest is kept for the rest of the process; the static
//! choice stays unless another is at least [`MIN_GAIN`] faster, so near-ties do not flip between
//! processes. A shape first met inside a capture takes the static choice there and is timed at
//! its next direct run, which [`super::CudaDevice::capture_tuned`] arranges, as for cuBLASLt's
//! algorithms.
//!
//! With a tuning file (`CASCADE_TUNING_FILE`, [`super::CudaDevice::set_tuning_file`]) each choice
//! is kept there by the candidate's name, and a later process takes it without timing.
//!
//! Off by default: a kernel that has never run on a GPU is not started by default.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::Result;

/// Runs of a candidate captured into the graph that is timed.
pub(crate) const REPEATS: usize = 4;
/// Timed replays of that graph (after one untimed replay).
pub(crate) const TIMED_REPLAYS: usize = 3;
/// Another candidate replaces the static choice only when at least this much faster.
pub(crate) const MIN_GAIN: f32 = 0.03;

/// Whether sites choose by timing (`CASCADE_KERNEL_TUNE`: unset or `0` off, `1` on, `log` on
/// and printing each choice; read once).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KernelTuning {
    /// Every site takes its static choice.
    Off,
    /// Sites time their candidates per shape.
    On,
    /// As On, printing each choice and every candidate's time to stderr.
    Log,
}

impl KernelTuning {
    /// The process's setting.
    pub fn requested() -> KernelTuning {
        static T: std::sync::OnceLock<KernelTuning> = std::sync::OnceLock::new();
        *T.get_or_init(|| match std::env::var("CASCADE_KERNEL_TUNE").as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("0") => KernelTuning::Off,
            Ok("1") => KernelTuning::On,
            Ok("log") => KernelTuning::Log,
            Ok(v) => {
                eprintln!("warning: CASCADE_KERNEL_TUNE must be 0, 1 or log, not {v:?}; not tuning");
                KernelTuning::Off
            }
        })
    }

    /// On or Log.
    pub fn on(self) -> bool {
        self != KernelTuning::Off
    }
}

/// The choices made so far on one device: (site, shape) → candidate.
#[derive(Default)]
pub(crate) struct Choices {
    decided: Mutex<HashMap<(&'static str, Vec<usize>), usize>>,
    /// Sites met inside a capture before their shape was timed (never decreases).
    untuned_in_capture: AtomicUsize,
}

impl Choices {
    pub(crate) fn untuned_in_capture(&self) -> usize {
        self.untuned_in_capture.load(Ordering::Relaxed)
    }

    fn get(&self, key: &(&'static str, Vec<usize>)) -> Option<usize> {
        self.decided.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied()
    }

    fn set(&self, key: (&'static str, Vec<usize>), choice: usize) {
        self.decided.lock().unwrap_or_else(|e| e.into_inner()).insert(key, choice);
    }

    /// Every choice made so far, for reports: (site, shape, candidate).
    pub(crate) fn all(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        let mut v: Vec<_> = self.decided.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|((s, d), &c)| (*s, d.clone(), c)).collect();
        v.sort();
        v
    }
}

/// The candidate to keep: the fastest, unless the first (the static choice) is within
/// [`MIN_GAIN`] of it; None when no candidate ran.
pub(crate) fn keep(times_ms: &[Option<f32>]) -> Option<usize> {
    let best = times_ms.iter().enumerate().filter_map(|(i, t)| t.map(|t| (i, t))).min_by(|a, b| a.1.total_cmp(&b.1))?;
    match times_ms.first().copied().flatten() {
        Some(first) if best.1 > first * (1.0 - MIN_GAIN) => Some(0),
        _ => Some(best.0),
    }
}

impl super::CudaDevice {
    /// Which of `names` (candidate 0 the static choice) a site takes for the shape `dims`:
    /// without tuning, or with one candidate, 0; otherwise the kept choice for (`site`, `dims`),
    /// timed now if there is none yet (see the module's documentation). `run(i)` queues
    /// candidate i on the real inputs into scratch outputs (it must not change the site's
    /// inputs or outputs); a candidate whose run fails is not kept.
    pub(crate) fn choose_kernel(
        self: &Arc<Self>,
        site: &'static str,
        dims: &[usize],
        names: &[&str],
        run: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<usize> {
        self.choose_kernel_as(KernelTuning::requested(), site, dims, names, run)
    }

    /// [`Self::choose_kernel`] under the setting `tuning` instead of the process's (the tests').
    #[doc(hidden)]
    pub fn choose_kernel_as(
        self: &Arc<Self>,
        tuning: KernelTuning,
        site: &'static str,
        dims: &[usize],
        names: &[&str],
        run: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<usize> {
        if !tuning.on() || names.len() < 2 {
            return Ok(0);
        }
        let key = (site, dims.to_vec());
        if let Some(c) = self.choices.get(&key) {
            return Ok(c);
        }
        // A choice kept in the tuning file (by name: candidates may have been added since).
        let file_key = format!("kernel {site} {dims:?}");
        if let Some(c) = self.tuning_file.get(&file_key).and_then(|name| names.iter().position(|n| *n == name)) {
            self.choices.set(key, c);
            if tuning == KernelTuning::Log {
                eprintln!("cascade: kernel choice {site} {dims:?}: kept {} from the tuning file", names[c]);
            }
            return Ok(c);
        }
        if super::capturing(self.stream())? {
            self.choices.untuned_in_capture.fetch_add(1, Ordering::Relaxed);
            return Ok(0);
        }
        // The lock is not held while timing: a candidate may contain other sites.
        let mut times = Vec::with_capacity(names.len());
        for i in 0..names.len() {
            times.push(self.time_candidate(&mut || run(i))?);
        }
        let choice = keep(&times).unwrap_or(0);
        self.choices.set(key, choice);
        if times.iter().any(Option::is_some) {
            self.tuning_file.set(file_key, names[choice].to_string());
        }
        if tuning == KernelTuning::Log {
            let each: Vec<String> = names
                .iter()
                .zip(&times)
                .map(|(n, t)| format!("{n} {}", t.map_or("failed".into(), |t| format!("{:.1} µs", t * 1e3))))
                .collect();
            let default = if choice == 0 { " (the default)" } else { "" };
            eprintln!("cascade: kernel choice {site} {dims:?}: {}; kept {}{default}", each.join(", "), names[choice]);
        }
        Ok(choice)
    }

    /// The time of one run of `run` in ms, as a graph replays it; None when it failed (the
    /// failure is reported in the log line, not returned: another candidate runs instead).
    fn time_candidate(self: &Arc<Self>, run: &mut dyn FnMut() -> Result<()>) -> Result<Option<f32>> {
        if run().is_err() {
            return Ok(None);
        }
        let Ok(graph) = self.capture_uncounted(&mut || (0..REPEATS).try_for_each(|_| run())) else { return Ok(None) };
        let timing_err = |e| super::driver_err("timing kernel candidates", e);
        let event = || self.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(timing_err);
        let (start, end) = (event()?, event()?);
        if graph.replay().is_err() {
            return Ok(None);
        }
        start.record(self.stream()).map_err(timing_err)?;
        let replayed = (0..TIMED_REPLAYS).try_for_each(|_| graph.replay());
        end.record(self.stream()).map_err(timing_err)?;
        let ms = start.elapsed_ms(&end).map_err(timing_err)?;
        Ok(replayed.ok().map(|_| ms / (REPEATS * TIMED_REPLAYS) as f32))
    }

    /// Every kernel choice made so far by timing (`CASCADE_KERNEL_TUNE`): (site, shape, candidate
    /// index), sorted.
    pub fn kernel_choices(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        self.choices.all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_choice_stays_unless_another_is_clearly_faster() {
        assert_eq!(keep(&[]), None);
        assert_eq!(keep(&[None, None]), None);
        assert_eq!(keep(&[Some(10.0), Some(9.8), Some(11.0)]), Some(0));
        assert_eq!(keep(&[Some(10.0), Some(9.0), Some(8.0)]), Some(2));
        assert_eq!(keep(&[None, Some(9.0), Some(8.0)]), Some(2));
        assert_eq!(keep(&[Some(10.0), None, Some(9.6)]), Some(2));
        assert_eq!(keep(&[Some(10.0), Some(f32::NAN)]), Some(0));
    }
}
