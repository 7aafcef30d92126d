//! Convolutions written directly from their definitions (no GEMM tricks), so that the engine's
//! GEMM-based forms are checked against the plain formula.

/// Direct 2-D convolution (cross-correlation, as PyTorch) of `x [b, h, w, cin]` with weight
/// `[cout, cin/groups, kh, kw]` (PyTorch layout), bias `[cout]`, zero padding `pad`, stride
/// `stride`. Returns `[b, ho, wo, cout]` with `ho = (h + 2·pad − kh)/stride + 1`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f32],
    b: usize,
    h: usize,
    w: usize,
    cin: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    groups: usize,
) -> Vec<f32> {
    let ho = (h + 2 * pad - kh) / stride + 1;
    let wo = (w + 2 * pad - kw) / stride + 1;
    let (cig, cog) = (cin / groups, cout / groups);
    let mut y = vec![0f32; b * ho * wo * cout];
    if cout == 0 {
        return y;
    }
    // Output pixels shared among threads (each computed alone, so the same however they are cut).
    super::for_row_runs(&mut y, cout, cout * cig * kh * kw, |first, rows| {
        for (r, yr) in rows.chunks_exact_mut(cout).enumerate() {
            let (s, oy, ox) = ((first + r) / (ho * wo), (first + r) / wo % ho, (first + r) % wo);
            for (o, yo) in yr.iter_mut().enumerate() {
                let g = o / cog;
                let mut acc = bias.map_or(0.0, |bb| bb[o] as f64);
                for ky in 0..kh {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        for ci in 0..cig {
                            let xv = x[((s * h + iy as usize) * w + ix as usize) * cin + g * cig + ci] as f64;
                            acc += xv * weight[((o * cig + ci) * kh + ky) * kw + kx] as f64;
                        }
                    }
                }
                *yo = acc as f32;
            }
        }
    });
    y
}

/// Direct transposed 2-D convolution of `x [b, h, w, cin]` with weight `[cin, cout, kh, kw]`
/// (PyTorch `ConvTranspose2d` layout), bias, stride and padding:
/// `y[oy, ox, o] = bias[o] + Σ x[iy, ix, c]·W[c, o, ky, kx]` over `oy = iy·stride − pad + ky`.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d(
    x: &[f32],
    b: usize,
    h: usize,
    w: usize,
    cin: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Vec<f32> {
    let ho = (h - 1) * stride + k - 2 * pad;
    let wo = (w - 1) * stride + k - 2 * pad;
    let mut acc = vec![0f64; b * ho * wo * cout];
    for s in 0..b {
        for iy in 0..h {
            for ix in 0..w {
                for ky in 0..k {
                    let oy = (iy * stride + ky) as isize - pad as isize;
                    if oy < 0 || oy >= ho as isize {
                        continue;
                    }
                    for kx in 0..k {
                        let ox = (ix * stride + kx) as isize - pad as isize;
                        if ox < 0 || ox >= wo as isize {
                            continue;
                        }
                        for c in 0..cin {
                            let xv = x[((s * h + iy) * w + ix) * cin + c] as f64;
                            let base = ((s * ho + oy as usize) * wo + ox as usize) * cout;
                            for o in 0..cout {
                                acc[base + o] += xv * weight[((c * cout + o) * k + ky) * k + kx] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    acc.chunks_exact(cout).flat_map(|px| px.iter().enumerate().map(|(o, v)| (v + bias.map_or(0.0, |bb| bb[o] as f64)) as f32)).collect()
}

/// Depthwise 3×3 convolution (groups = channels, stride 1, padding 1) of `x [b, h, w, c]` with
/// weight `[c, 3, 3]` and bias; `replicate` selects edge padding (Stage A) instead of zeros.
/// With `layer_norm = Some(eps)` the result is normalised over channels (no affine).
#[allow(clippy::too_many_arguments)]
pub fn depthwise3x3(
    x: &[f32],
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    weight: &[f32],
    bias: &[f32],
    replicate: bool,
    layer_norm: Option<f32>,
) -> Vec<f32> {
    let y = if replicate {
        // Pad explicitly by replication, then convolve without padding.
        let (hp, wp) = (h + 2, w + 2);
        let mut p = vec![0f32; b * hp * wp * c];
        for s in 0..b {
            for yy in 0..hp {
                for xx in 0..wp {
                    let sy = (yy as isize - 1).clamp(0, h as isize - 1) as usize;
                    let sx = (xx as isize - 1).clamp(0, w as isize - 1) as usize;
                    for k in 0..c {
                        p[((s * hp + yy) * wp + xx) * c + k] = x[((s * h + sy) * w + sx) * c + k];
                    }
                }
            }
        }
        conv2d(&p, b, hp, wp, c, weight, Some(bias), c, 3, 3, 1, 0, c)
    } else {
        conv2d(x, b, h, w, c, weight, Some(bias), c, 3, 3, 1, 1, c)
    };
    match layer_norm {
        Some(eps) => super::layer_norm(&y, c, None, None, eps),
        None => y,
    }
}

/// PixelShuffle(r) on `x [b, h, w, c·r²]` → `[b, h·r, w·r, c]`, channel `c·r² + i·r + j` going to
/// sub-pixel `(i, j)` (PyTorch's order).
pub fn pixel_shuffle(x: &[f32], b: usize, h: usize, w: usize, c: usize, r: usize) -> Vec<f32> {
    shuffle_gather(x, b, h, w, c, r, |k, sub| k * r * r + sub)
}

/// [`pixel_shuffle`] with the sub-pixel outer and the channel inner: channel `(i·r + j)·c + k` of
/// `x [b, h, w, r²·c]` goes to channel `k` of sub-pixel `(i, j)`.
pub fn pixel_shuffle_phases(x: &[f32], b: usize, h: usize, w: usize, c: usize, r: usize) -> Vec<f32> {
    shuffle_gather(x, b, h, w, c, r, |k, sub| sub * c + k)
}

/// `y [b, h·r, w·r, c]` from `x [b, h, w, c·r²]`: output channel `k` of sub-pixel `sub = i·r + j`
/// reads low-resolution channel `channel(k, sub)`.
fn shuffle_gather(x: &[f32], b: usize, h: usize, w: usize, c: usize, r: usize, channel: impl Fn(usize, usize) -> usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for s in 0..b {
        for yy in 0..h * r {
            for xx in 0..w * r {
                for k in 0..c {
                    y[((s * h * r + yy) * w * r + xx) * c + k] =
                        x[((s * h + yy / r) * w + xx / r) * c * r * r + channel(k, (yy % r) * r + xx % r)];
                }
            }
        }
    }
    y
}

/// PixelUnshuffle(r): the inverse of [`pixel_shuffle`]; `x [b, hs, ws, c]` → `[b, h, w, c·r²]`
/// with `h = hs / r`, `w = ws / r` (rounded down: rows and columns beyond `h·r`, `w·r` are
/// dropped, as a stride-r convolution drops them).
pub fn pixel_unshuffle(x: &[f32], b: usize, hs: usize, ws: usize, c: usize, r: usize) -> Vec<f32> {
    let (h, w) = (hs / r, ws / r);
    let mut y = vec![0f32; b * h * w * c * r * r];
    for s in 0..b {
        for yy in 0..h * r {
            for xx in 0..w * r {
                for k in 0..c {
                    y[((s * h + yy / r) * w + xx / r) * c * r * r + k * r * r + (yy % r) * r + xx % r] =
                        x[((s * hs + yy) * ws + xx) * c + k];
                }
            }
        }
    }
    y
}

/// 3×3 neighbourhoods with zero padding: `cols[b, h, w, (dy·3 + dx)·c + k] = x[b, h+dy−1, w+dx−1, k]`.
pub fn im2col3x3(x: &[f32], b: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut y = vec![0f32; b * h * w * 9 * c];
    for s in 0..b {
        for yy in 0..h {
            for xx in 0..w {
                for tap in 0..9 {
                    let (sy, sx) = (yy as isize + tap as isize / 3 - 1, xx as isize + tap as isize % 3 - 1);
                    if sy < 0 || sy >= h as isize || sx < 0 || sx >= w as isize {
                        continue;
                    }
                    for k in 0..c {
                        y[(((s * h + yy) * w + xx) * 9 + tap) * c + k] = x[((s * h + sy as usize) * w + sx as usize) * c + k];
                    }
                }
            }
        }
    }
    y
}
