/// `y[m,n] = Σ_k x[m,k]·w[n,k] + bias[n]`, row-major, accumulated in f64.
pub fn linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let mut acc = bias.map_or(0.0, |b| b[j] as f64);
            for (a, b) in xr.iter().zip(wr) {
                acc += *a as f64 * *b as f64;
            }
            y[i * n + j] = acc as f32;
        }
    }
    y
}
