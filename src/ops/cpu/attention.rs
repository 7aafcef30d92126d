/// Multi-head attention from its definition (each query's whole row of scores, then its
/// softmax), in f64: for each batch `b` and head `h` (columns `[h·dh, (h+1)·dh)` of
/// `q [b, lq, heads·dh]`, `k`/`v [b, lk, heads·dh]`), `o = softmax(q·kᵀ·scale)·v`. `causal`: query i sees keys j ≤ i; `key_mask [b, lk]`: keys with
/// 0 are ignored. A row with no visible key gives zeros.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    heads: usize,
    lq: usize,
    lk: usize,
    dh: usize,
    scale: f32,
    causal: bool,
    key_mask: Option<&[f32]>,
) -> Vec<f32> {
    let c = heads * dh;
    let mut o = vec![0f32; b * lq * c];
    // Output rows (one query of one sequence, every head) shared among threads.
    super::for_row_runs(&mut o, c, heads * lk * dh * 2, |first, rows| {
        let n = rows.len().checked_div(c).unwrap_or(0);
        let mut s = vec![0f64; lk];
        let mut acc = vec![0f64; dh];
        // Heads outer: one head's keys and values stay in cache across the run's queries.
        for h in 0..heads {
            for r in 0..n {
                let (bi, i) = ((first + r) / lq, (first + r) % lq);
                let qr = &q[(bi * lq + i) * c + h * dh..][..dh];
                let mut max = f64::NEG_INFINITY;
                for (j, sj) in s.iter_mut().enumerate() {
                    let visible = !(causal && j > i) && key_mask.is_none_or(|m| m[bi * lk + j] != 0.0);
                    *sj = if visible { dot(qr, &k[(bi * lk + j) * c + h * dh..][..dh]) * scale as f64 } else { f64::NEG_INFINITY };
                    max = max.max(*sj);
                }
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let mut den = 0f64;
                for sj in s.iter_mut() {
                    *sj = (*sj - max).exp();
                    den += *sj;
                }
                // Σ_j s_j·v_j in key order, a value row at a time.
                acc.fill(0.0);
                for (j, &sj) in s.iter().enumerate() {
                    let vr = &v[(bi * lk + j) * c + h * dh..][..dh];
                    acc.iter_mut().zip(vr).for_each(|(a, &x)| *a += sj * x as f64);
                }
                let out = &mut rows[r * c + h * dh..][..dh];
                out.iter_mut().zip(&acc).for_each(|(o, a)| *o = (a / den) as f32);
            }
        }
    });
    o
}

/// `Σ a·b` in f64, in four partial sums added at the end.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let (qa, qb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = qa.remainder().iter().zip(qb.remainder()).map(|(x, y)| *x as f64 * *y as f64).sum();
    for (x, y) in qa.zip(qb) {
        for l in 0..4 {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}
