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
    LinearShape { name: "stage_c.res.fc1", m: 1152, k: 2048, n: 8192 },
    LinearShape { name: "stage_c.res.fc2", m: 1152, k: 8192, n: 2048 },
    LinearShape { name: "stage_c.attn.q", m: 1152, k: 2048, n: 2048 },
    // q, k and v from one stacked layer (as the attention blocks run them).
    LinearShape { name: "stage_c.attn.qkv", m: 1152, k: 2048, n: 6144 },
    // Every TimestepBlock's mapper stacked (64 blocks × [a, b] of 2048): one GEMM per step.
    LinearShape { name: "stage_c.mappers", m: 2, k: 64, n: 262144 },
    LinearShape { name: "stage_b.l0.fc1", m: 16384, k: 320, n: 1280 },
    LinearShape { name: "stage_b.l0.fc2", m: 16384, k: 1280, n: 320 },
    LinearShape { name: "stage_b.l2.fc1", m: 1024, k: 1280, n: 5120 },
    LinearShape { name: "stage_b.l2.qkv", m: 1024, k: 1280, n: 3840 },
    // Level 2's narrow outputs (fc2, the attention's output projection: 8 × 10 tiles of 128 ×
    // 128 for 132 SMs) and level 3's fc2 (2 × 10), where a GEMM's grid may not fill the card.
    LinearShape { name: "stage_b.l2.fc2", m: 1024, k: 5120, n: 1280 },
    LinearShape { name: "stage_b.l2.out", m: 1024, k: 1280, n: 1280 },
    LinearShape { name: "stage_b.l3.fc1", m: 256, k: 1280, n: 5120 },
    LinearShape { name: "stage_b.l3.fc2", m: 256, k: 5120, n: 1280 },
    LinearShape { name: "stage_a.fc1", m: 65536, k: 384, n: 1536 },
    LinearShape { name: "stage_a.l1.fc1", m: 262144, k: 192, n: 768 },
    LinearShape { name: "clip.fc1", m: 154, k: 1280, n: 5120 },
    LinearShape { name: "clip.qkv", m: 154, k: 1280, n: 3840 },
    LinearShape { name: "clip.out", m: 154, k: 1280, n: 1280 },
    LinearShape { name: "clip.fc2", m: 154, k: 5120, n: 1280 },
    LinearShape { name: "odd", m: 77, k: 33, n: 129 },
    LinearShape { name: "odd_small", m: 3, k: 5, n: 7 },
    // The skinny GEMM's kind of product (N and K multiples of 64, at most 160 rows): K in three
    // ranges of one step on an H200; all 160 rows, K in one range.
    LinearShape { name: "odd_skinny", m: 37, k: 192, n: 320 },
    LinearShape { name: "odd_skinny_full", m: 160, k: 64, n: 192 },
    // The warp-specialised GEMM's partial tiles: two row tiles (the second 72 rows), three column
    // tiles (the last 8 columns), nine steps of K (the last 8 deep) through a ring of three stages.
    LinearShape { name: "odd_ws", m: 200, k: 520, n: 264 },
];

/// A row-wise op over `rows × c` (LayerNorm, activations): `affine` selects CLIP's LayerNorm.
#[derive(Clone, Copy, Debug)]
pub struct RowShape {
    /// Where the shape comes from.
    pub name: &'static str,
    /// Rows (tokens × batch).
    pub rows: usize,
    /// Channels.
    pub c: usize,
}

/// LayerNorm / activation shapes.
pub const ROWS: &[RowShape] = &[
    RowShape { name: "stage_c", rows: 1152, c: 2048 },
    RowShape { name: "stage_c.hidden", rows: 1152, c: 8192 },
    RowShape { name: "stage_b.l0", rows: 16384, c: 320 },
    RowShape { name: "stage_b.l1", rows: 4096, c: 640 },
    RowShape { name: "stage_b.l2", rows: 1024, c: 1280 },
    RowShape { name: "stage_b.l3.hidden", rows: 256, c: 5120 },
    RowShape { name: "clip", rows: 154, c: 1280 },
    RowShape { name: "stage_a.l1", rows: 65536, c: 384 },
    RowShape { name: "stage_a.l0", rows: 262144, c: 192 },
    RowShape { name: "odd", rows: 77, c: 33 },
    RowShape { name: "odd_wide", rows: 5, c: 1001 },
    // Channels a multiple of 8 (the kernels' eight-per-access paths), rows not; the mid one is
    // a warp per row with 4 or 5 vectors per lane over a partial block of rows; the wide one
    // gives some threads of a 256-thread row block two vectors.
    RowShape { name: "odd_vec", rows: 37, c: 264 },
    RowShape { name: "odd_vec_mid", rows: 7, c: 1096 },
    RowShape { name: "odd_vec_wide", rows: 3, c: 2456 },
];

/// A GlobalResponseNorm input `[b, n, d]` (n spatial positions, d = 4C).
#[derive(Clone, Copy, Debug)]
pub struct GrnShape {
    /// Where the shape comes from.
    pub name: &'static str,
    /// Batch.
    pub b: usize,
    /// Spatial positions.
    pub n: usize,
    /// Channels.
    pub d: usize,
}

/// GRN shapes (the 4C-wide hidden layer of every ResBlock).
pub const GRN: &[GrnShape] = &[
    GrnShape { name: "stage_c", b: 2, n: 576, d: 8192 },
    GrnShape { name: "stage_b.l0", b: 1, n: 16384, d: 1280 },
    GrnShape { name: "stage_b.l1", b: 1, n: 4096, d: 2560 },
    GrnShape { name: "stage_b.l2", b: 1, n: 1024, d: 5120 },
    GrnShape { name: "stage_b.l3", b: 1, n: 256, d: 5120 },
    GrnShape { name: "odd", b: 3, n: 37, d: 100 },
    // Several position chunks, the last one partial.
    GrnShape { name: "odd_chunks", b: 2, n: 200, d: 70 },
    // Eight channels per thread: a full group of 256 and a partial one, three chunks.
    GrnShape { name: "odd_vec", b: 2, n: 150, d: 264 },
    // Wide rows: the last block's factor pass takes several steps of 1024 channels, the last partial.
    GrnShape { name: "odd_vec_wide", b: 2, n: 24, d: 4616 },
    // Three samples, a partial third group, five chunks with the last 13 positions: the
    // completion counters per sample.
    GrnShape { name: "odd_vec_three", b: 3, n: 77, d: 520 },
];

/// A ResBlock's first MLP layer followed by GRN: `[b, rows, k] → [b, rows, n]` with GRN's
/// statistics over each sample's rows (the fused fc1 + GRN GEMM's cases).
pub struct MlpGrnShape {
    /// Where the shape comes from.
    pub name: &'static str,
    /// Samples.
    pub b: usize,
    /// Spatial positions per sample.
    pub rows: usize,
    /// Input channels (C, or C + C_skip for a level's first block with a skip).
    pub k: usize,
    /// Hidden channels (4C).
    pub n: usize,
}

impl MlpGrnShape {
    /// The GEMM's floating-point operations.
    pub fn flops(&self) -> f64 {
        2.0 * (self.b * self.rows * self.k * self.n) as f64
    }
}

/// Every real ResBlock's fc1 (Stage C and lite, Stage B's levels, level 0's skip block), then
/// odd ones.
pub const MLP_GRN: &[MlpGrnShape] = &[
    MlpGrnShape { name: "stage_c.mlp", b: 2, rows: 576, k: 2048, n: 8192 },
    MlpGrnShape { name: "stage_c_lite.mlp", b: 2, rows: 576, k: 1536, n: 6144 },
    MlpGrnShape { name: "stage_b.l0.mlp", b: 1, rows: 16384, k: 320, n: 1280 },
    MlpGrnShape { name: "stage_b.l0.skip.mlp", b: 1, rows: 16384, k: 640, n: 1280 },
    MlpGrnShape { name: "stage_b.l1.mlp", b: 1, rows: 4096, k: 640, n: 2560 },
    MlpGrnShape { name: "stage_b.l2.mlp", b: 1, rows: 1024, k: 1280, n: 5120 },
    MlpGrnShape { name: "stage_b.l3.mlp", b: 1, rows: 256, k: 1280, n: 5120 },
    // Partial row and column tiles; a K that is not a multiple of 64; chunks of one sample split
    // across row tiles.
    MlpGrnShape { name: "odd_grn", b: 2, rows: 192, k: 72, n: 136 },
    MlpGrnShape { name: "odd_grn_tiles", b: 3, rows: 64, k: 40, n: 520 },
    MlpGrnShape { name: "odd_grn_one", b: 1, rows: 128, k: 264, n: 8 },
    // Nine steps of K: the stages' ring wraps more than once.
    MlpGrnShape { name: "odd_grn_long", b: 2, rows: 128, k: 520, n: 264 },
    // 17 chunks of 64 positions in one sample: the fused kernels' last blocks sum them in
    // batches of eight loads, then four, then one; half a tile of rows at the end.
    MlpGrnShape { name: "odd_grn_tall", b: 1, rows: 1088, k: 40, n: 136 },
];

/// A token-major image `[b, h, w, c]`.
#[derive(Clone, Copy, Debug)]
pub struct ImageShape {
    /// Where the shape comes from.
    pub name: &'static str,
    /// Batch.
    pub b: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
}

impl ImageShape {
    /// Elements.
    pub fn numel(&self) -> usize {
        self.b * self.h * self.w * self.c
    }
}

/// Depthwise 3×3 shapes with the padding the model uses (`true` = replicate, Stage A) and
/// whether the ResBlock's LayerNorm is fused.
pub const DEPTHWISE: &[(ImageShape, bool, bool)] = &[
    (ImageShape { name: "stage_c", b: 2, h: 24, w: 24, c: 2048 }, false, true),
    (ImageShape { name: "stage_b.l0", b: 1, h: 128, w: 128, c: 320 }, false, true),
    (ImageShape { name: "stage_b.l1", b: 1, h: 64, w: 64, c: 640 }, false, true),
    (ImageShape { name: "stage_b.l2", b: 1, h: 32, w: 32, c: 1280 }, false, true),
    (ImageShape { name: "stage_b.l3", b: 1, h: 16, w: 16, c: 1280 }, false, true),
    (ImageShape { name: "stage_a.l1", b: 1, h: 256, w: 256, c: 384 }, true, false),
    (ImageShape { name: "stage_a.l0", b: 1, h: 512, w: 512, c: 192 }, true, false),
    (ImageShape { name: "odd", b: 2, h: 7, w: 9, c: 33 }, false, true),
    (ImageShape { name: "odd_replicate", b: 1, h: 5, w: 3, c: 17 }, true, false),
    // Channels a multiple of 8 (eight per thread), odd sizes otherwise.
    (ImageShape { name: "odd_vec", b: 2, h: 7, w: 9, c: 40 }, false, true),
    (ImageShape { name: "odd_vec_replicate", b: 1, h: 5, w: 3, c: 24 }, true, false),
    // Wider channels: the tiled kernel's sums over channels take K > 1 lanes per pixel (136: 4,
    // 264: 8), and 264 gives it a block of 198 threads (a partial warp).
    (ImageShape { name: "odd_vec_wide", b: 2, h: 9, w: 11, c: 136 }, false, true),
    (ImageShape { name: "odd_vec_wide_replicate", b: 1, h: 6, w: 13, c: 264 }, true, false),
];

/// Pixel-unshuffle inputs (factor 2): Stage B's stem, its down convolutions, odd sizes. The
/// same rows, unshuffled, are the pixel-shuffle inputs.
pub const UNSHUFFLE: &[ImageShape] = &[
    ImageShape { name: "stage_b.stem", b: 1, h: 256, w: 256, c: 4 },
    ImageShape { name: "stage_b.down1", b: 1, h: 128, w: 128, c: 320 },
    ImageShape { name: "stage_b.down3", b: 1, h: 32, w: 32, c: 1280 },
    ImageShape { name: "stage_a.out", b: 1, h: 1024, w: 1024, c: 3 },
    ImageShape { name: "odd", b: 2, h: 6, w: 10, c: 3 },
    // Channels a multiple of 8: im2col copies 16 bytes at a time.
    ImageShape { name: "odd_vec", b: 2, h: 6, w: 10, c: 16 },
];

/// A resize `[b, h, w, c]` → `[b, ho, wo, c]`.
#[derive(Clone, Copy, Debug)]
pub struct ResizeShape {
    /// The input.
    pub x: ImageShape,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

/// Bilinear resize shapes: Stage B's effnet and pixel conditioning, odd sizes.
pub const RESIZE: &[ResizeShape] = &[
    ResizeShape { x: ImageShape { name: "stage_b.effnet", b: 1, h: 24, w: 24, c: 16 }, ho: 128, wo: 128 },
    ResizeShape { x: ImageShape { name: "stage_b.pixels", b: 1, h: 8, w: 8, c: 320 }, ho: 128, wo: 128 },
    ResizeShape { x: ImageShape { name: "odd_up", b: 2, h: 5, w: 7, c: 3 }, ho: 11, wo: 4 },
    ResizeShape { x: ImageShape { name: "odd_1px", b: 1, h: 1, w: 1, c: 5 }, ho: 3, wo: 3 },
];

/// A channel concatenation `[rows, ca] ++ [rows, cb]`.
#[derive(Clone, Copy, Debug)]
pub struct ConcatShape {
    /// Where the shape comes from.
    pub name: &'static str,
    /// Rows.
    pub rows: usize,
    /// First operand's channels.
    pub ca: usize,
    /// Second operand's channels.
    pub cb: usize,
}

/// Skip concatenations of the up paths, and odd sizes.
pub const CONCAT: &[ConcatShape] = &[
    ConcatShape { name: "stage_c.skip", rows: 1152, ca: 2048, cb: 2048 },
    ConcatShape { name: "stage_b.l2.skip", rows: 1024, ca: 1280, cb: 1280 },
    ConcatShape { name: "stage_b.l0.skip", rows: 16384, ca: 320, cb: 320 },
    ConcatShape { name: "odd", rows: 37, ca: 3, cb: 5 },
    ConcatShape { name: "odd_vec", rows: 37, ca: 24, cb: 8 },
];

/// A convolution on `x` to `cout` channels (the kind depends on the table).
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    /// The input.
    pub x: ImageShape,
    /// Output channels.
    pub cout: usize,
}

impl ConvShape {
    /// FLOPs (2 per MAC) when each of `out_pixels` outputs sums `taps` input pixels.
    pub fn flops(&self, taps: usize, out_pixels: usize) -> f64 {
        2.0 * (out_pixels * taps * self.x.c * self.cout) as f64
    }
}

/// Conv 2×2 stride 2 (Stage B's downscalers; odd sizes drop their last row/column).
pub const CONV2X2: &[ConvShape] = &[
    ConvShape { x: ImageShape { name: "stage_b.down1", b: 1, h: 128, w: 128, c: 320 }, cout: 640 },
    ConvShape { x: ImageShape { name: "stage_b.down2", b: 1, h: 64, w: 64, c: 640 }, cout: 1280 },
    ConvShape { x: ImageShape { name: "stage_b.down3", b: 1, h: 32, w: 32, c: 1280 }, cout: 1280 },
    ConvShape { x: ImageShape { name: "odd_floor", b: 2, h: 7, w: 9, c: 7 }, cout: 5 },
];

/// Transposed conv 2×2 stride 2 (Stage B's upscalers).
pub const CONV_T2X2: &[ConvShape] = &[
    ConvShape { x: ImageShape { name: "stage_b.up0", b: 1, h: 16, w: 16, c: 1280 }, cout: 1280 },
    ConvShape { x: ImageShape { name: "stage_b.up1", b: 1, h: 32, w: 32, c: 1280 }, cout: 640 },
    ConvShape { x: ImageShape { name: "stage_b.up2", b: 1, h: 64, w: 64, c: 640 }, cout: 320 },
    ConvShape { x: ImageShape { name: "odd", b: 2, h: 3, w: 5, c: 7 }, cout: 5 },
];

/// Transposed conv 4×4 stride 2 pad 1 (Stage A's upsampler; the first row is the real one).
pub const CONV_T4X4: &[ConvShape] = &[
    ConvShape { x: ImageShape { name: "stage_a.up", b: 1, h: 256, w: 256, c: 384 }, cout: 192 },
    ConvShape { x: ImageShape { name: "stage_a.up_slice", b: 1, h: 24, w: 40, c: 384 }, cout: 192 },
    ConvShape { x: ImageShape { name: "odd", b: 2, h: 5, w: 7, c: 6 }, cout: 3 },
    // Channels multiples of 8: aligned phase GEMMs and 16-byte interleaving.
    ConvShape { x: ImageShape { name: "odd_vec", b: 2, h: 5, w: 7, c: 16 }, cout: 8 },
];

/// An attention problem.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Where the shape comes from.
    pub name: &'static str,
    /// Batch.
    pub b: usize,
    /// Heads (of 64).
    pub heads: usize,
    /// Queries.
    pub lq: usize,
    /// Keys.
    pub lk: usize,
    /// Causal + key-padding mask (CLIP).
    pub masked: bool,
}

impl AttentionShape {
    /// FLOPs of QKᵀ and PV (2 per MAC), as if unmasked.
    pub fn flops(&self) -> f64 {
        4.0 * (self.b * self.heads * self.lq * self.lk * 64) as f64
    }
}

/// Attention shapes of the real models, and odd sizes.
pub const ATTENTION: &[AttentionShape] = &[
    AttentionShape { name: "stage_c", b: 2, heads: 32, lq: 576, lk: 661, masked: false },
    AttentionShape { name: "stage_c_lite", b: 2, heads: 24, lq: 576, lk: 661, masked: false },
    AttentionShape { name: "stage_b.l2", b: 1, heads: 20, lq: 1024, lk: 1028, masked: false },
    AttentionShape { name: "stage_b.l3", b: 1, heads: 20, lq: 256, lk: 260, masked: false },
    AttentionShape { name: "clip", b: 2, heads: 20, lq: 77, lk: 77, masked: true },
    AttentionShape { name: "odd", b: 3, heads: 2, lq: 130, lk: 67, masked: false },
    AttentionShape { name: "odd_tiny", b: 1, heads: 1, lq: 5, lk: 3, masked: false },
    AttentionShape { name: "odd_long", b: 2, heads: 3, lq: 77, lk: 333, masked: false },
    AttentionShape { name: "odd_masked", b: 2, heads: 3, lq: 200, lk: 200, masked: true },
];

/// An element-wise problem of `n` elements (with `c` channels where an op broadcasts).
#[derive(Clone, Copy, Debug)]
pub struct ElementwiseShape {
    /// Where the shape comes from.
    pub name: &'static str,
    /// Batch.
    pub b: usize,
    /// Positions per sample.
    pub n: usize,
    /// Channels.
    pub c: usize,
}

impl ElementwiseShape {
    /// Elements.
    pub fn numel(&self) -> usize {
        self.b * self.n * self.c
    }
}

/// Residual adds, TimestepBlock modulation, GELU/SiLU, CFG and the sampler update.
pub const ELEMENTWISE: &[ElementwiseShape] = &[
    ElementwiseShape { name: "stage_c", b: 2, n: 576, c: 2048 },
    ElementwiseShape { name: "stage_c.hidden", b: 2, n: 576, c: 8192 },
    ElementwiseShape { name: "stage_b.l0", b: 1, n: 16384, c: 320 },
    ElementwiseShape { name: "stage_b.latent", b: 1, n: 65536, c: 4 },
    ElementwiseShape { name: "stage_c.latent", b: 2, n: 576, c: 16 },
    ElementwiseShape { name: "odd", b: 3, n: 7, c: 5 },
    ElementwiseShape { name: "odd_vec", b: 3, n: 11, c: 24 },
    // Rows of 1025 to 2048 channels, a multiple of 8: the row ops' warp-per-row kernels (Stage
    // C's 2048 channels take them; among them the f32 stream's LayerNorm written as bf16).
    ElementwiseShape { name: "odd_vec_wide", b: 2, n: 3, c: 1032 },
];
