//! Shape tables taken from the real models. One row drives both the GPU test of an op and its
//! benchmark, so what is benchmarked is what is tested.

/// A linear layer `[M, K] → [M, N]`.
#[derive(Clone, Copy, Debug)]
pub struct LinearShape {
    /// Where the shape comes from.
    pub name: &'static str,
    /// Rows (tokens × batch).
    pub m: usize,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
}

impl LinearShape {
    /// Multiply-adds × 2.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.k as f64 * self.n as f64
    }
}

/// Linear layers of Stage C, Stage B, Stage A and CLIP, plus odd sizes.
pub const LINEAR: &[LinearShape] = &[
    LinearShape {
        name: "stage_c.res.fc1",
        m: 1152,
        k: 2048,
        n: 8192,
    },
    LinearShape {
        name: "stage_c.res.fc2",
        m: 1152,
        k: 8192,
        n: 2048,
    },
    LinearShape {
        name: "stage_c.attn.q",
        m: 1152,
        k: 2048,
        n: 2048,
    },
    LinearShape {
        name: "stage_b.l0.fc1",
        m: 16384,
        k: 320,
        n: 1280,
    },
    LinearShape {
        name: "stage_b.l0.fc2",
        m: 16384,
        k: 1280,
        n: 320,
    },
    LinearShape {
        name: "stage_b.l2.fc1",
        m: 1024,
        k: 1280,
        n: 5120,
    },
    LinearShape {
        name: "stage_b.l3.fc1",
        m: 256,
        k: 1280,
        n: 5120,
    },
    LinearShape {
        name: "stage_a.fc1",
        m: 65536,
        k: 384,
        n: 1536,
    },
    LinearShape {
        name: "clip.fc1",
        m: 154,
        k: 1280,
        n: 5120,
    },
    LinearShape {
        name: "odd",
        m: 77,
        k: 33,
        n: 129,
    },
    LinearShape {
        name: "odd_small",
        m: 3,
        k: 5,
        n: 7,
    },
];
