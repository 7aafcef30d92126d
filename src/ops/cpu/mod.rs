//! CPU references: the spec in code. Plain loops over f32 data with f64 accumulation; every
//! CUDA kernel is tested against these, and the CPU backend runs them. The two that carry the
//! tests' large shapes (products and attention) keep several sums in flight and share their
//! output rows among the machine's cores; neither changes what is computed, only how fast.
//! Layouts are token-major: images are `[B, H, W, C]`, sequences `[B, L, C]`.

mod activation;
mod attention;
mod conv;
mod elementwise;
mod embed;
mod linear;
mod norm;
mod resample;

pub use activation::{gelu, silu};
pub use attention::attention;
pub use conv::{conv2d, conv_transpose2d, depthwise3x3, im2col3x3, pixel_shuffle, pixel_shuffle_phases, pixel_unshuffle};
pub use elementwise::{add, affine, cfg_combine, ddpm_step, modulate, quantize_u8, random_normal, to_rgb8};
pub use embed::{timestep_embedding, timestep_frequencies, token_embedding};
pub use linear::linear;
pub use norm::{grn, grn_scale, layer_norm, scale_columns};
pub use resample::{columns, concat_channels, resize_bilinear};

/// Multiply-adds below which one thread does the whole job: a thread costs tens of
/// microseconds to start, the CPU backend's small products take less.
const PARALLEL_WORK: usize = 1 << 22;

/// Calls `f(first_row, rows)` over `out` cut into runs of whole rows of `row_len` values, one run
/// per thread, on as many of the machine's cores as `work_per_row` multiply-adds a row pay for.
/// Each row must depend only on its own index, so the result is the same however it is cut.
fn for_row_runs(out: &mut [f32], row_len: usize, work_per_row: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(rows).min(rows.saturating_mul(work_per_row) / PARALLEL_WORK).max(1);
    if threads == 1 {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        for (t, run) in out.chunks_mut(per * row_len).enumerate() {
            let f = &f;
            scope.spawn(move || f(t * per, run));
        }
    });
}
