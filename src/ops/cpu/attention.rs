/// Multi-head attention, naive, in f64: for each batch `b` and head `h` (columns
/// `[h·dh, (h+1)·dh)` of `q [b, lq, heads·dh]`, `k`/`v [b, lk, heads·dh]`),
/// `o = softmax(q·kᵀ·scale)·v`. `causal`: query i sees keys j ≤ i; `key_mask [b, lk]`: keys with
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
    let mut s = vec![0f64; lk];
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..lq {
                let qr = &q[(bi * lq + i) * c + h * dh..][..dh];
                let mut max = f64::NEG_INFINITY;
                for (j, sj) in s.iter_mut().enumerate() {
                    let visible = !(causal && j > i) && key_mask.is_none_or(|m| m[bi * lk + j] != 0.0);
                    *sj = if visible {
                        let kr = &k[(bi * lk + j) * c + h * dh..][..dh];
                        qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64
                    } else {
                        f64::NEG_INFINITY
                    };
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
                for d in 0..dh {
                    let acc: f64 = (0..lk).map(|j| s[j] * v[(bi * lk + j) * c + h * dh + d] as f64).sum();
                    o[(bi * lq + i) * c + h * dh + d] = (acc / den) as f32;
                }
            }
        }
    }
    o
}
