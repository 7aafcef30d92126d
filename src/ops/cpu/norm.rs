/// LayerNorm over the last axis of `x` (`rows × c`): `(x − mean)/√(var + eps)`, biased
/// variance, statistics in f64, optional affine `weight`/`bias`.
pub fn layer_norm(x: &[f32], c: usize, weight: Option<&[f32]>, bias: Option<&[f32]>, eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for (i, (o, &v)) in yr.iter_mut().zip(xr).enumerate() {
            let mut t = (v as f64 - mean) * rstd;
            if let Some(w) = weight {
                t *= w[i] as f64;
            }
            if let Some(b) = bias {
                t += b[i] as f64;
            }
            *o = t as f32;
        }
    }
    y
}

/// GRN's per-(sample, channel) factor `1 + gamma·N` (`[b, d]`), for `x [b, n, d]`: the form
/// `y = x·(1 + γ·N) + β` of the same sum.
pub fn grn_scale(x: &[f32], b: usize, n: usize, d: usize, gamma: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(b * d);
    for s in 0..b {
        let xs = &x[s * n * d..(s + 1) * n * d];
        let g: Vec<f64> = (0..d).map(|j| (0..n).map(|i| (xs[i * d + j] as f64).powi(2)).sum::<f64>().sqrt()).collect();
        let mean = g.iter().sum::<f64>() / d as f64;
        out.extend(g.iter().zip(gamma).map(|(&gj, &gm)| (1.0 + gm as f64 * (gj / (mean + 1e-6))) as f32));
    }
    out
}

/// `w [rows, cols]` with column j multiplied by `scale[j]`.
pub fn scale_columns(w: &[f32], cols: usize, scale: &[f32]) -> Vec<f32> {
    w.chunks_exact(cols).flat_map(|r| r.iter().zip(scale).map(|(&a, &s)| (a as f64 * s as f64) as f32)).collect()
}

/// GlobalResponseNorm (spec §3.3) on `x` of shape `[b, n, d]` (n spatial positions):
/// `G = ‖x[b,:,d]‖₂`, `N = G / (mean_d G + 1e-6)`, `y = gamma·(x·N) + beta + x`.
pub fn grn(x: &[f32], b: usize, n: usize, d: usize, gamma: &[f32], beta: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for s in 0..b {
        let xs = &x[s * n * d..(s + 1) * n * d];
        let g: Vec<f64> = (0..d).map(|j| (0..n).map(|i| (xs[i * d + j] as f64).powi(2)).sum::<f64>().sqrt()).collect();
        let mean = g.iter().sum::<f64>() / d as f64;
        for i in 0..n {
            for j in 0..d {
                let v = xs[i * d + j] as f64;
                let nx = g[j] / (mean + 1e-6);
                y[s * n * d + i * d + j] = (gamma[j] as f64 * (v * nx) + beta[j] as f64 + v) as f32;
            }
        }
    }
    y
}
