//! Helpers shared by the tests and the benches: seeded random data, error norms, and (with
//! the `cuda` feature) NaN-poisoned GPU outputs with a guard band behind them.

use crate::{DType, Device, Result, Tensor};

/// A small seeded generator (SplitMix64) for test data; not PyTorch's generator.
pub struct TestRng(u64);

impl TestRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        TestRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// `n` standard normal values (Box–Muller) times `scale`.
    pub fn normal(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1 = self.uniform().max(1e-7);
                let u2 = self.uniform();
                (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos() * scale
            })
            .collect()
    }
}

/// ‖got − want‖₂ / ‖want‖₂ in f64 (NaN if any element of `got` is NaN).
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "rel_l2 of different lengths");
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - *w as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

/// The rows `picked` (in that order) of a row-major matrix `v` of `width` columns: the rows a
/// test checks against its CPU reference.
pub fn pick_rows(v: &[f32], width: usize, picked: &[usize]) -> Vec<f32> {
    picked.iter().flat_map(|&r| v[r * width..(r + 1) * width].iter().copied()).collect()
}

/// Index and size of the worst absolute difference.
pub fn max_abs_diff(got: &[f32], want: &[f32]) -> (usize, f32) {
    got.iter().zip(want).map(|(g, w)| (g - w).abs()).enumerate().fold((0, 0.0), |a, (i, d)| if d > a.1 || d.is_nan() { (i, d) } else { a })
}

/// Values a bf16 (or f16) tensor would hold: `v` rounded to `dtype` and back.
pub fn round_to(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => v.to_vec(),
        DType::BF16 => v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
    }
}

/// Elements of guard band behind every poisoned output.
pub const GUARD: usize = 1024;
/// The value the guard band holds (exact in f32, bf16 and f16); a kernel writing past its
/// output changes it.
pub const GUARD_VALUE: f32 = 12288.0;

/// Random operands of a linear layer `[m, k] · [n, k]ᵀ + [n]` on `device` in `dtype`, with the
/// (rounded) values each holds: x ~ N(0, 1), w ~ N(0, 1/k) (outputs of order 1), bias ~ N(0, 0.25).
pub fn linear_operands(
    rng: &mut TestRng,
    (m, k, n): (usize, usize, usize),
    dtype: DType,
    device: &Device,
) -> Result<[(Tensor, Vec<f32>); 3]> {
    let make = |v: Vec<f32>, shape: &[usize]| -> Result<(Tensor, Vec<f32>)> {
        let v = round_to(&v, dtype);
        Ok((Tensor::from_f32(&v, shape, dtype, device)?, v))
    };
    let x = make(rng.normal(m * k, 1.0), &[m, k])?;
    let w = make(rng.normal(n * k, 1.0 / (k as f32).sqrt()), &[n, k])?;
    let b = make(rng.normal(n, 0.5), &[n])?;
    Ok([x, w, b])
}

/// An output tensor on `device` filled with NaN, followed in the same allocation by a guard
/// band of [`GUARD`] elements holding [`GUARD_VALUE`]. Returns (output, whole buffer).
pub fn poisoned(shape: &[usize], dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let n: usize = shape.iter().product();
    let mut whole = Tensor::empty(&[n + GUARD], dtype, device)?;
    whole.fill(GUARD_VALUE)?;
    let mut out = whole.alias(0, shape)?;
    out.fill(f32::NAN)?;
    Ok((out, whole))
}

/// Checks that the guard band behind a [`poisoned`] output is intact.
pub fn check_guard(whole: &Tensor, what: &str) -> Result<()> {
    let v = whole.to_vec_f32()?;
    let guard = &v[v.len() - GUARD..];
    if let Some(i) = guard.iter().position(|&x| x != GUARD_VALUE) {
        return Err(crate::Error::Msg(format!("{what}: wrote past the end of its output (guard element {i} is {})", guard[i])));
    }
    Ok(())
}

/// The repository's `tests/fixtures` folder: `$CASCADE_ROOT/tests/fixtures` when that variable
/// is set (the GPU bundle runs test binaries in another checkout), else the source tree this
/// crate was built from.
pub fn fixtures_dir() -> std::path::PathBuf {
    let root = std::env::var_os("CASCADE_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    root.join("tests/fixtures")
}

/// Whether tests and benches run an unproven wgmma kernel on `dev`: a compute capability 9.0
/// device, and the CUDA emulator or a run that asks for it (`requested`: its environment switch).
/// A fault in such a kernel ends the CUDA context, so on a GPU only the processes made for it try.
pub fn wgmma_testable(dev: &Device, requested: bool) -> bool {
    match dev {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d.compute_capability() == (9, 0) && (std::env::var_os("CASCADE_EMU").is_some() || requested),
        _ => {
            let _ = requested;
            false
        }
    }
}

/// Whether a shape-table entry should run: all of them, or those whose name contains one of
/// the comma-separated words in CASCADE_SHAPES (the sanitizer and emulator runs use the small
/// odd shapes).
pub fn shape_wanted(name: &str) -> bool {
    std::env::var("CASCADE_SHAPES").map_or(true, |f| f.split(',').any(|w| name.contains(w.trim())))
}
