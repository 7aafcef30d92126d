/// Timestep-ratio embedding (spec §3.7) of each ratio in `t`: `r = t·max_positions`,
/// `f_k = exp(−k·ln(max_positions)/(half − 1))`, `[sin(r·f), cos(r·f)]` (sin half first), then
/// `n_extra` copies of the embedding of 0. Computed in f32 in PyTorch's order, since the
/// models were trained on exactly these values.
pub fn timestep_embedding(t: &[f32], dim: usize, n_extra: usize, max_positions: f32) -> Vec<f32> {
    let freqs = timestep_frequencies(dim, max_positions);
    let one = |r: f32| -> Vec<f32> {
        let mut e: Vec<f32> = freqs.iter().map(|f| (r * f).sin()).collect();
        e.extend(freqs.iter().map(|f| (r * f).cos()));
        e.resize(dim, 0.0);
        e
    };
    let mut out = Vec::with_capacity(t.len() * dim * (1 + n_extra));
    for &ti in t {
        out.extend(one(ti * max_positions));
        for _ in 0..n_extra {
            out.extend(one(0.0));
        }
    }
    out
}

/// The `dim / 2` frequencies of the timestep embedding as PyTorch computes them in f32:
/// `f_k = exp(k · step)` with `step = −ln(max_positions) / (half − 1)` rounded to f32 first.
/// The GPU kernel takes these from the host: at arguments near 10^4 radians a frequency one ulp
/// off (a device `expf`) moves the sine by ~5e-4.
pub fn timestep_frequencies(dim: usize, max_positions: f32) -> Vec<f32> {
    let half = dim / 2;
    let step = -((max_positions as f64).ln() / (half as f64 - 1.0)) as f32;
    (0..half).map(|k| (k as f32 * step).exp()).collect()
}

/// Token + position embedding: `y[b, l] = tok[ids[b, l]] + pos[l]` for ids `[b, l]`, tables
/// `[V, d]` and `[≥ l, d]`. Panics on an out-of-range id (callers validate).
pub fn token_embedding(ids: &[u32], l: usize, tok: &[f32], pos: &[f32], d: usize) -> Vec<f32> {
    let mut y = Vec::with_capacity(ids.len() * d);
    for (k, &id) in ids.iter().enumerate() {
        let p = k % l;
        y.extend((0..d).map(|j| tok[id as usize * d + j] + pos[p * d + j]));
    }
    y
}
