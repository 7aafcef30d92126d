//! The DDPM-Würstchen sampler (spec §5.1): cosine ᾱ, a linspace(1, 0, N+1) grid, ancestral
//! updates with no noise on the last step. Coefficients are computed on the host in f32 with
//! diffusers' order of operations; the update itself is [`crate::ops::ddpm_step_assign`].

pub mod torch_rng;

use std::path::Path;

use crate::{Error, Result};

/// `DDPMWuerstchenScheduler`'s schedule.
#[derive(Clone, Debug)]
pub struct DdpmWuerstchen {
    /// Offset of the cosine schedule (0.008).
    pub s: f32,
    /// Time warp exponent (1.0: none).
    pub scaler: f32,
}

impl Default for DdpmWuerstchen {
    fn default() -> Self {
        DdpmWuerstchen { s: 0.008, scaler: 1.0 }
    }
}

impl DdpmWuerstchen {
    /// Reads `scheduler_config.json` (missing fields keep their defaults).
    pub fn from_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))?;
        let d = DdpmWuerstchen::default();
        let get = |k: &str, default: f32| v.get(k).and_then(|x| x.as_f64()).map_or(default, |x| x as f32);
        Ok(DdpmWuerstchen { s: get("s", d.s), scaler: get("scaler", d.scaler) })
    }

    /// ᾱ(t), clamped to [1e-4, 0.9999], in f32 as diffusers computes it.
    pub fn alpha_cumprod(&self, t: f32) -> f32 {
        let t = if self.scaler > 1.0 {
            1.0 - (1.0 - t).powf(self.scaler)
        } else if self.scaler < 1.0 {
            t.powf(self.scaler)
        } else {
            t
        };
        let pi = std::f32::consts::PI;
        let init = ((self.s / (1.0 + self.s) * pi * 0.5).cos()).powi(2);
        (((t + self.s) / (1.0 + self.s) * pi * 0.5).cos().powi(2) / init).clamp(1e-4, 0.9999)
    }

    /// The grid `linspace(1, 0, n + 1)` in f32, computed as torch.linspace does (from both ends).
    /// The sampler makes one model call per grid value but the last.
    pub fn timesteps(&self, n: usize) -> Vec<f32> {
        let steps = n + 1;
        if steps == 1 {
            return vec![1.0];
        }
        let (start, end) = (1.0f32, 0.0f32);
        let step = (end - start) / (steps - 1) as f32;
        let half = steps / 2;
        (0..steps).map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 }).collect()
    }

    /// `[1/√α, (1 − α)/√(1 − ᾱ_t), σ]` for the update from `t` to `t_prev`
    /// (`x ← c0·(x − c1·ε) + c2·z`); σ is 0 when `t_prev` is 0 (the last step adds no noise).
    pub fn coefficients(&self, t: f32, t_prev: f32) -> [f32; 3] {
        let (acp, acp_prev) = (self.alpha_cumprod(t), self.alpha_cumprod(t_prev));
        let alpha = acp / acp_prev;
        let sigma = if t_prev == 0.0 { 0.0 } else { ((1.0 - alpha) * (1.0 - acp_prev) / (1.0 - acp)).sqrt() };
        [(1.0 / alpha).sqrt(), (1.0 - alpha) / (1.0 - acp).sqrt(), sigma]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's table of ᾱ on the 20-step grid (fp32).
    #[test]
    fn alpha_cumprod_on_the_20_step_grid() {
        let want = [
            1e-4, 0.00606, 0.02409, 0.05366, 0.09405, 0.14427, 0.20312, 0.26917, 0.34081, 0.41631, 0.49384, 0.57153, 0.64748, 0.71986,
            0.78691, 0.84701, 0.89871, 0.94074, 0.97209, 0.99201, 0.9999,
        ];
        let s = DdpmWuerstchen::default();
        let grid = s.timesteps(20);
        assert_eq!(grid.len(), 21);
        assert_eq!((grid[0], grid[20]), (1.0, 0.0));
        for (t, w) in grid.iter().zip(want) {
            let a = s.alpha_cumprod(*t);
            assert!((a - w).abs() < 1e-5 + 1e-4 * w, "ᾱ({t}) = {a}, spec {w}");
        }
        assert_eq!(s.coefficients(grid[19], grid[20])[2], 0.0);
    }
}
