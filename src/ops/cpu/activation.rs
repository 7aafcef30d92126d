/// Exact GELU, `0.5·x·(1 + erf(x/√2))` (PyTorch `nn.GELU()`), evaluated in f64.
pub fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
}

/// SiLU, `x·sigmoid(x)`, in f64.
pub fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}
