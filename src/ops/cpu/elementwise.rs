/// `a + b`.
pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// TimestepBlock modulation on `x` of shape `[b, n, c]` with `ab` of shape `[b, 2c]`:
/// `x·(1 + a) + s` where `a = ab[:, :c]`, `s = ab[:, c:]`.
pub fn modulate(x: &[f32], ab: &[f32], b: usize, n: usize, c: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for s in 0..b {
        for i in 0..n {
            for j in 0..c {
                let k = (s * n + i) * c + j;
                y[k] = (x[k] as f64 * (1.0 + ab[s * 2 * c + j] as f64) + ab[s * 2 * c + c + j] as f64) as f32;
            }
        }
    }
    y
}

/// Classifier-free guidance on `eps = [cond; uncond]` (two halves of equal length):
/// `uncond + w·(cond − uncond)` (PyTorch `lerp(uncond, cond, w)`).
pub fn cfg_combine(eps: &[f32], w: f32) -> Vec<f32> {
    let n = eps.len() / 2;
    (0..n).map(|i| (eps[n + i] as f64 + w as f64 * (eps[i] as f64 - eps[n + i] as f64)) as f32).collect()
}

/// DDPM-Würstchen update (spec §5.1) with precomputed coefficients
/// `coef = [1/√α, (1 − α)/√(1 − ᾱ_t), σ]`: `coef0·(x − coef1·ε) + coef2·z` (no z on the last step).
pub fn ddpm_step(x: &[f32], eps: &[f32], noise: Option<&[f32]>, coef: [f32; 3]) -> Vec<f32> {
    (0..x.len())
        .map(|i| {
            let mut v = coef[0] as f64 * (x[i] as f64 - coef[1] as f64 * eps[i] as f64);
            if let Some(z) = noise {
                v += coef[2] as f64 * z[i] as f64;
            }
            v as f32
        })
        .collect()
}

/// `a·x + b`.
pub fn affine(x: &[f32], a: f32, b: f32) -> Vec<f32> {
    x.iter().map(|&v| (a as f64 * v as f64 + b as f64) as f32).collect()
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seeded normal values, element i from a SplitMix64 hash of (seed, i) and Box–Muller:
/// `mean + scale·z` (the kernel computes the same stream in f32).
pub fn random_normal(n: usize, seed: u64, mean: f32, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = splitmix64(seed ^ splitmix64(i));
            let u1 = ((h >> 40) as f64 + 1.0) / 16_777_216.0;
            let u2 = ((h >> 16) & 0xFF_FFFF) as f64 / 16_777_216.0;
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (mean as f64 + scale as f64 * z) as f32
        })
        .collect()
}

/// `x` clamped to [0, 1] and scaled to 0..=255, rounded half to even as numpy's `round` (which
/// diffusers' `numpy_to_pil` uses). Adding and subtracting 2²³ rounds to an integer in the
/// default rounding mode (to nearest, ties to even) for 0 ≤ y < 2²²: exact, and cheaper than a
/// call to `rintf`.
pub fn quantize_u8(x: f32) -> u8 {
    const ROUND: f32 = 8_388_608.0; // 2^23
    let y = x.clamp(0.0, 1.0) * 255.0;
    ((y + ROUND) - ROUND) as u8
}

/// Every value of `x` through [`quantize_u8`], and the index of the first non-finite value.
pub fn to_rgb8(x: &[f32]) -> (Vec<u8>, Option<usize>) {
    (x.iter().map(|&v| quantize_u8(v)).collect(), x.iter().position(|v| !v.is_finite()))
}
