/// Rows of x taken together against each row of w (w's row is read once for all of them).
const ROWS: usize = 4;
/// Partial sums per row: additions that do not wait on each other.
const LANES: usize = 4;

/// `y[m,n] = Σ_k x[m,k]·w[n,k] + bias[n]`, row-major, accumulated in f64.
pub fn linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(x.len() >= m * k && w.len() >= n * k && bias.is_none_or(|b| b.len() >= n), "cpu::linear: operands shorter than {m}×{k}×{n}");
    let mut y = vec![0f32; m * n];
    super::for_row_runs(&mut y, n, k * n, |first, ys| {
        let rows = ys.len().checked_div(n).unwrap_or(0);
        // ROWS rows of x in f64.
        let mut xb = vec![0f64; ROWS * k];
        for r0 in (0..rows).step_by(ROWS) {
            let nr = ROWS.min(rows - r0);
            for r in 0..nr {
                let src = &x[(first + r0 + r) * k..][..k];
                xb[r * k..(r + 1) * k].iter_mut().zip(src).for_each(|(d, &s)| *d = s as f64);
            }
            for j in 0..n {
                let wr = &w[j * k..(j + 1) * k];
                let b = bias.map_or(0.0, |b| b[j] as f64);
                if nr == ROWS {
                    for (r, s) in dots(&xb, wr).iter().enumerate() {
                        ys[(r0 + r) * n + j] = (b + s) as f32;
                    }
                } else {
                    // A last partial group, row by row (the same sums in the same order).
                    for r in 0..nr {
                        ys[(r0 + r) * n + j] = (b + dot(&xb[r * k..(r + 1) * k], wr)) as f32;
                    }
                }
            }
        }
    });
    y
}

/// `Σ_k xb[r][k]·w[k]` for the ROWS rows of `xb` (each `w.len()` long), in LANES partial sums
/// per row, added at the end.
#[inline(always)]
fn dots(xb: &[f64], w: &[f32]) -> [f64; ROWS] {
    let k = w.len();
    let mut acc = [[0f64; LANES]; ROWS];
    let body = k / LANES * LANES;
    let [x0, x1, x2, x3]: [&[f64]; ROWS] = std::array::from_fn(|r| &xb[r * k..r * k + body]);
    let quads = w[..body].chunks_exact(LANES).zip(x0.chunks_exact(LANES)).zip(x1.chunks_exact(LANES));
    for (((wq, q0), q1), (q2, q3)) in quads.zip(x2.chunks_exact(LANES).zip(x3.chunks_exact(LANES))) {
        for l in 0..LANES {
            let wl = wq[l] as f64;
            acc[0][l] += q0[l] * wl;
            acc[1][l] += q1[l] * wl;
            acc[2][l] += q2[l] * wl;
            acc[3][l] += q3[l] * wl;
        }
    }
    std::array::from_fn(|r| {
        let tail: f64 = (body..k).map(|i| xb[r * k + i] * w[i] as f64).sum();
        (acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]) + tail
    })
}

/// One row of [`dots`]: the same partial sums, added in the same order.
fn dot(x: &[f64], w: &[f32]) -> f64 {
    let k = w.len();
    let body = k / LANES * LANES;
    let mut acc = [0f64; LANES];
    for (wq, xq) in w[..body].chunks_exact(LANES).zip(x[..body].chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += xq[l] * wq[l] as f64;
        }
    }
    let tail: f64 = (body..k).map(|i| x[i] * w[i] as f64).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}
