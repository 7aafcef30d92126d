/// Bilinear resize of `x` `[b, h, w, c]` to `[b, ho, wo, c]` with `align_corners=True`, in f32
/// with PyTorch's order of operations (scale computed once, `src = scale·dst`).
pub fn resize_bilinear(x: &[f32], b: usize, h: usize, w: usize, c: usize, ho: usize, wo: usize) -> Vec<f32> {
    let sh = if ho > 1 { (h - 1) as f32 / (ho - 1) as f32 } else { 0.0 };
    let sw = if wo > 1 { (w - 1) as f32 / (wo - 1) as f32 } else { 0.0 };
    let mut y = vec![0f32; b * ho * wo * c];
    for s in 0..b {
        for oy in 0..ho {
            let fy = sh * oy as f32;
            let y0 = fy as usize;
            let y1 = (y0 + 1).min(h - 1);
            let ly = fy - y0 as f32;
            for ox in 0..wo {
                let fx = sw * ox as f32;
                let x0 = fx as usize;
                let x1 = (x0 + 1).min(w - 1);
                let lx = fx - x0 as f32;
                for k in 0..c {
                    let at = |yy: usize, xx: usize| x[((s * h + yy) * w + xx) * c + k];
                    y[((s * ho + oy) * wo + ox) * c + k] =
                        (1.0 - ly) * ((1.0 - lx) * at(y0, x0) + lx * at(y0, x1)) + ly * ((1.0 - lx) * at(y1, x0) + lx * at(y1, x1));
                }
            }
        }
    }
    y
}

/// Concatenation along the last axis: rows of `a` (`ca` wide) then rows of `b` (`cb` wide).
pub fn concat_channels(a: &[f32], b: &[f32], ca: usize, cb: usize) -> Vec<f32> {
    a.chunks_exact(ca).zip(b.chunks_exact(cb)).flat_map(|(x, y)| x.iter().chain(y).copied()).collect()
}

/// Columns `[col, col + width)` of every `c`-wide row of `x`.
pub fn columns(x: &[f32], c: usize, col: usize, width: usize) -> Vec<f32> {
    x.chunks_exact(c).flat_map(|r| r[col..col + width].iter().copied()).collect()
}
