//! Fused multi-head attention with head_dim 64. CPU: [`super::cpu::attention`] (the whole
//! softmax, in f64); GPU: `kernels/attention.cu` (flash-style, online softmax in f32).

use super::{check_device, check_dtype, check_shape, cpu};
use crate::{DType, Device, Error, Result, Tensor};

/// The head width every Stable Cascade attention uses.
pub const HEAD_DIM: usize = 64;

/// Masking of the attention scores.
#[derive(Clone, Copy, Debug)]
pub enum AttentionMask<'a> {
    /// Every query sees every key (Stage B and C).
    None,
    /// Query i sees keys j ≤ i that are not padding: `key_mask [B, Lk]` is an f32 tensor of
    /// 1 (attend) / 0 (padding) on the same device (CLIP).
    CausalPadding(&'a Tensor),
}

/// Which GPU kernel runs attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// For bf16 with operands 16-byte aligned (with or without a mask): on compute capability
    /// 9.0 a wgmma kernel (`Wgmma`, or `WgmmaSharedQ` where [`wgmma_shared_q_preferred`] says
    /// so), elsewhere an mma.sync kernel (the 32-query one where [`mma32_preferred`] says so);
    /// else the WMMA kernel without a mask; the CUDA-core kernel otherwise. A tensor-core kernel
    /// that failed its start-up check on this device is skipped. `CASCADE_ATTENTION=simple|wmma|
    /// mma|mma32|wgmma_sq|wgmma2` in the environment picks one (`mma`, `mma32`, `wgmma_sq`,
    /// `wgmma2`: that kernel for every shape); `CASCADE_ATTENTION_WGMMA=0` leaves the wgmma
    /// kernels out.
    Auto,
    /// The CUDA-core kernel (one thread per query; any dtype, masks).
    Simple,
    /// The tensor-core kernel through WMMA (bf16, no mask; shared-memory softmax).
    TensorCore,
    /// The tensor-core kernel through mma.sync (bf16, masks allowed; softmax in registers;
    /// operands 16-byte aligned with strides a multiple of 8).
    Mma,
    /// The mma.sync kernel with 32 queries per warp instead of 16 (128 per block): its two row
    /// tiles share every K and V fragment the warp reads from shared memory, at 248 registers
    /// (two blocks per SM). Same operands and masks as `Mma`. `Auto` takes it where
    /// [`mma32_preferred`] says so; `CASCADE_ATTENTION=mma32` everywhere, `=mma` nowhere.
    Mma32,
    /// The 32-query kernel with five warps (160 queries per block) under a 200-register cap, so
    /// that two blocks still fit an SM: Stage C's grid becomes one wave. Not measured yet: `Auto`
    /// considers it (before `Mma32`, by the same rule) only with `CASCADE_ATTENTION_W5=1`.
    Mma32Wide,
    /// Hopper's warpgroup products (wgmma, sm_90a: compute capability 9.0 only): 64 queries per
    /// block of one warpgroup, K and V read by the tensor cores from swizzled shared memory. Same
    /// operands and masks as `Mma`. `Auto` takes it (or `WgmmaSharedQ`, by
    /// [`wgmma_shared_q_preferred`]) for every shape when both passed their start-up checks as
    /// the device was opened (unless `CASCADE_ATTENTION_WGMMA=0`). Measured on an H200
    /// (docs/performance.md, thirteenth session): 218–222 TFLOP/s on Stage C and Stage B's level
    /// 2, against 155–159 for `Mma`; a Stage B step 1.1–1.4 ms faster, `generate()` 27 ms.
    Wgmma,
    /// The wgmma kernel with Q read from shared memory too: 94 registers instead of 117, so five
    /// blocks fit an SM instead of four. `Auto` takes it where
    /// [`wgmma_shared_q_preferred`] says so; `CASCADE_ATTENTION=wgmma_sq` everywhere.
    WgmmaSharedQ,
    /// `Wgmma` with the keys split into (at most) this many ranges of whole 64-key tiles, each
    /// range a block of its own: more and shorter blocks where a grid leaves SMs short of work
    /// (Stage B: 320 blocks of 17 tiles on an H200's 132 SMs, so some hold three and others
    /// two). Each range writes its unnormalised output with its rows' maxima and sums to a
    /// scratch buffer, and the last range of a query block to finish merges them (in range
    /// order: the result does not depend on which is last). Not measured yet: `Auto` plans it
    /// ([`wgmma_split_plan`]) only with `CASCADE_ATTENTION_SPLIT=1` (`=N`, N ≥ 2: N ranges for
    /// every unmasked shape, for tests).
    WgmmaSplit(usize),
    /// `WgmmaSharedQ` with the keys split as in `WgmmaSplit` (five blocks per SM: Stage B's 640
    /// blocks of two ranges are one wave).
    WgmmaSharedQSplit(usize),
    /// `Wgmma` with two warpgroups per block (128 queries, 256 threads), both reading each K and
    /// V tile the block copies: half the copies from L2 per query, at half the blocks (two per
    /// SM). Not measured yet: only `CASCADE_ATTENTION=wgmma2` checks it at start-up and runs it
    /// everywhere.
    Wgmma2,
    /// `Wgmma2` with the keys split as in `WgmmaSplit` (per block of 128 queries). Not measured
    /// yet: `CASCADE_ATTENTION=wgmma2` with `CASCADE_ATTENTION_SPLIT=N` (N ≥ 2) runs it
    /// everywhere.
    Wgmma2Split(usize),
}

/// Floats of the split-key kernels' scratch per range of a query block: per thread 8 float4 of
/// output and 1 of maxima and sums (`kernels/attention.cu`), for 128 threads (twice that for the
/// two-warpgroup kernel).
#[cfg(feature = "cuda")]
const SPLIT_PARTIAL_FLOATS: usize = 9 * 4 * 128;

/// A split of the keys for the wgmma kernels: `ranges` blocks per query block, Q in shared
/// memory or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitPlan {
    /// Blocks (key ranges) per query block.
    pub ranges: usize,
    /// The kernel with Q in shared memory (five blocks per SM on an H200) instead of registers.
    pub shared_q: bool,
}

/// Predicted time of a one-wave-or-more grid of `blocks` blocks of `tiles` key tiles each on
/// `sms` SMs holding `per_sm` each, in units of one tile of one block on a busy SM. An H200
/// measured 0.476 µs per unit on both Stage C (576 blocks of 11 tiles, five per SM: at most 5
/// on an SM, 55 units, 26.2 µs) and Stage B's level 2 (320 blocks of 17 tiles: at most 3, 51
/// units, 24.3 µs): an SM's throughput is the same with three blocks as with five. An SM with
/// one block waits on each tile's latency instead, taken as 2.5 units.
fn wgmma_launch_units(blocks: usize, tiles: usize, sms: usize, per_sm: usize) -> f64 {
    const LATENCY: f64 = 2.5;
    let per_sm_max = blocks.div_ceil(sms);
    if per_sm_max > per_sm {
        // More than one wave: every SM busy, the last wave partly.
        return (per_sm_max * tiles) as f64;
    }
    ((per_sm_max * tiles) as f64).max(LATENCY * tiles as f64)
}

/// Whether to split the keys of `bh` rows of `lq` queries (64 per block) over `tiles` key tiles,
/// and how: the split (of one wave on `sms` SMs holding `per_sm.0` blocks of the split kernel
/// with Q in registers, `per_sm.1` of the one with Q in shared memory) whose predicted time,
/// with a merge of about 2.5 units (the scratch written, the last block's reads), beats the
/// unsplit kernel's (which holds `unsplit_per_sm`). None where nothing beats it: Stage C's 576
/// blocks already fill a wave, so do Stage C lite's 432; Stage B's level 2 (320 blocks of 17
/// tiles) takes two ranges with Q in shared memory (640 blocks), its level 3 (80 blocks of 5
/// tiles) five ranges of one tile.
pub fn wgmma_split_plan(
    lq: usize,
    bh: usize,
    tiles: usize,
    sms: usize,
    unsplit_per_sm: usize,
    per_sm: (usize, usize),
) -> Option<SplitPlan> {
    const MERGE: f64 = 2.5;
    let blocks = lq.div_ceil(64) * bh;
    if blocks == 0 || tiles < 2 || sms == 0 || unsplit_per_sm == 0 {
        return None;
    }
    let unsplit = wgmma_launch_units(blocks, tiles, sms, unsplit_per_sm);
    let mut best: Option<(f64, SplitPlan)> = None;
    for wanted in 2..=tiles.min(8) {
        let per_range = tiles.div_ceil(wanted);
        let ranges = tiles.div_ceil(per_range);
        for (shared_q, places) in [(false, per_sm.0), (true, per_sm.1)] {
            if places == 0 || blocks * ranges > sms * places {
                continue;
            }
            let units = wgmma_launch_units(blocks * ranges, per_range, sms, places) + MERGE;
            if units < unsplit && best.is_none_or(|(b, _)| units < b) {
                best = Some((units, SplitPlan { ranges, shared_q }));
            }
        }
    }
    best.map(|(_, plan)| plan)
}

/// Whether the wgmma kernel with Q in shared memory (`per_sm_sq` blocks per SM) should run `bh`
/// rows of `lq` queries (64 per block) on `sms` SMs instead of the one with Q in registers
/// (`per_sm` blocks per SM): where only its grid fits in one wave (Stage C: 576 blocks, 528
/// places for the register kernel on an H200, 660 for this one). Measured on an H200: 26.2
/// against 28.7 µs there; the two tie on the shapes that fit one wave either way.
pub fn wgmma_shared_q_preferred(lq: usize, bh: usize, sms: usize, per_sm: usize, per_sm_sq: usize) -> bool {
    let blocks = lq.div_ceil(64) * bh;
    blocks > sms * per_sm && blocks <= sms * per_sm_sq
}

impl AttentionKernel {
    /// An mma.sync or wgmma kernel: bf16 operands, 16-byte aligned with strides a multiple of
    /// 8, masks, and a second key source read in place.
    pub fn is_mma(self) -> bool {
        self.is_wgmma() || matches!(self, Self::Mma | Self::Mma32 | Self::Mma32Wide)
    }

    /// A wgmma kernel (sm_90a: compute capability 9.0 only).
    pub fn is_wgmma(self) -> bool {
        matches!(
            self,
            Self::Wgmma | Self::WgmmaSharedQ | Self::WgmmaSplit(_) | Self::WgmmaSharedQSplit(_) | Self::Wgmma2 | Self::Wgmma2Split(_)
        )
    }
}

/// Whether a 32-query mma kernel with blocks of `rows` queries should run `bh` (batch × heads)
/// rows of `lq` queries on `sms` SMs that hold `per_sm` of its blocks each: when its grid fills
/// at least three quarters of one wave and needs no second. Measured on an H200
/// (docs/performance.md, ninth session), the four-warp kernel was faster than the 16-query one
/// only there: Stage C lite (240 blocks for 264 places, 25.7 against 29.7 µs); slower with a
/// second wave (Stage C, 320 blocks: 46.8 against 39.1 µs) and with most SMs holding one block
/// (Stage B's level 2, 160 blocks: 35.3 against 34.7; CLIP).
pub fn mma32_preferred(lq: usize, bh: usize, rows: usize, sms: usize, per_sm: usize) -> bool {
    let (blocks, places) = (lq.div_ceil(rows) * bh, sms * per_sm);
    blocks <= places && 4 * blocks >= 3 * places
}

/// `o = softmax(q·kᵀ·scale)·v` per head. `q [B, Lq, H·64]`, `k`/`v [B, Lk, H·64]`, `o [B, Lq, H·64]`.
pub fn attention_into(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32, mask: AttentionMask, o: &mut Tensor) -> Result<()> {
    attention_into_with(q, k, v, heads, scale, mask, AttentionKernel::Auto, o)
}

/// [`attention_into`] with the GPU kernel chosen by the caller (tests and benches compare them).
#[allow(clippy::too_many_arguments)]
pub fn attention_into_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    mask: AttentionMask,
    kernel: AttentionKernel,
    o: &mut Tensor,
) -> Result<()> {
    attention_into_with_options(q, k, v, heads, scale, mask, kernel, WgmmaOptions::default(), o)
}

/// Options of the wgmma attention kernels (the other kernels ignore them). `None` leaves each to
/// the device: its environment switch, its start-up check and, under `CASCADE_KERNEL_TUNE`, the
/// timing per shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WgmmaOptions {
    /// The lean softmax (see [`attention_into_with_softmax`]); by default off unless
    /// `CASCADE_ATTENTION_SOFTMAX=lean` or timed faster under `CASCADE_KERNEL_TUNE`.
    pub lean_softmax: Option<bool>,
    /// The last tile of keys narrowed to 32 or 16 keys where its keys fit, so that its products
    /// and softmax skip the padding (Stage C's 661 keys end in 21, Stage B's 1028 in 4); by
    /// default on once it passed its start-up check, unless `CASCADE_ATTENTION_TAIL=full`.
    pub narrow_tail: Option<bool>,
    /// K and V tiles copied by TMA, two copies a tile issued by one thread (the `Wgmma` and
    /// `WgmmaSharedQ` kernels and their split-key versions, where the operands allow: 16-byte aligned rows, a second key
    /// source starting on a 64-key tile); by default off unless `CASCADE_ATTENTION_COPY=tma` or
    /// timed faster under `CASCADE_KERNEL_TUNE`.
    pub tma_copies: Option<bool>,
    /// With TMA copies, the blocks in clusters of two neighbouring query blocks of a head, each
    /// copying one of a tile's two operands into both by TMA multicast: half the K and V traffic
    /// from L2 (the `Wgmma` and `WgmmaSharedQ` kernels, unmasked launches: the blocks of a pair
    /// must read the same tiles; elsewhere the unpaired copies). By default off unless `CASCADE_ATTENTION_COPY=pair`; not
    /// timed under `CASCADE_KERNEL_TUNE` until it has run on a GPU.
    pub pair_copies: Option<bool>,
    /// With paired copies, clusters of three or four neighbouring query blocks where those fit
    /// a head's query blocks better than pairs ([`copy_cluster`]: trios for Stage C's 9, with no
    /// block past the queries, quads for Stage B's 16 and 4), the blocks sharing out each tile's
    /// four half operands: a third or a quarter of the K and V traffic from L2 (how far the
    /// pairs' gain goes). By default off unless `CASCADE_ATTENTION_COPY=cluster`; not timed under
    /// `CASCADE_KERNEL_TUNE`.
    pub cluster_copies: Option<bool>,
}

/// The dynamic shared memory of the clustered TMA kernels (pairs, trios, quads), Q in registers
/// and in shared memory (kernels/attention.cu, `attention_smem_bytes`).
#[cfg(feature = "cuda")]
const CLUSTER_SMEM: [u32; 2] = [4 * 8192 + 2048 + 32, 5 * 8192 + 2048 + 32];

/// How many clusters of each clustered attention kernel one device holds at once (the driver's
/// occupancy answer, which counts how clusters pack into the GPU's processing clusters): its
/// name, the cluster's blocks and that count. A grid of more blocks than `blocks × count` takes
/// a second wave; the unclustered kernels hold four (Q in registers) and five (Q in shared
/// memory) blocks an SM.
#[cfg(feature = "cuda")]
pub fn clusters_resident(dev: &crate::cuda::CudaDevice) -> Result<Vec<(&'static str, usize, usize)>> {
    let kt = dev.kernels();
    let kernels = [
        ("pair", &kt.attention_wgmma_pair_tma_bf16, 2, false),
        ("pair, Q in shared memory", &kt.attention_wgmma_qs_pair_tma_bf16, 2, true),
        ("trio", &kt.attention_wgmma_trio_tma_bf16, 3, false),
        ("trio, Q in shared memory", &kt.attention_wgmma_qs_trio_tma_bf16, 3, true),
        ("quad", &kt.attention_wgmma_quad_tma_bf16, 4, false),
        ("quad, Q in shared memory", &kt.attention_wgmma_qs_quad_tma_bf16, 4, true),
    ];
    kernels
        .into_iter()
        .map(|(name, f, cluster, qs)| Ok((name, cluster, dev.max_active_clusters(f, 128, CLUSTER_SMEM[qs as usize], cluster as u32)?)))
        .collect()
}

/// The blocks of a cluster sharing each tile's copies for `query_blocks` blocks of a head (the
/// grid's x is rounded up to a multiple of it): pairs, or where `wider` allows, the size among
/// four, three and two that needs the fewest blocks, the larger of a tie (the less traffic).
pub fn copy_cluster(query_blocks: usize, wider: bool) -> usize {
    let sizes: &[usize] = if wider { &[4, 3, 2] } else { &[2] };
    let mut best = sizes[0];
    for &c in sizes {
        if query_blocks.next_multiple_of(c) < query_blocks.next_multiple_of(best) {
            best = c;
        }
    }
    best
}

/// [`attention_into_with`] with the wgmma kernels' options given (tests and benches compare them).
#[allow(clippy::too_many_arguments)]
pub fn attention_into_with_options(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    mask: AttentionMask,
    kernel: AttentionKernel,
    options: WgmmaOptions,
    o: &mut Tensor,
) -> Result<()> {
    attention_impl(Part::whole(q), Part::whole(k), Part::whole(v), None, heads, scale, mask, kernel, options, o)
}

/// [`attention_into_with`] with the wgmma kernels' lean softmax on or off (`lean`), whatever
/// `CASCADE_ATTENTION_SOFTMAX` says (tests and benches compare the two): a row's running maximum
/// (the exponents' base) kept until a tile's maximum passes it by more than 2^8, so that O and the
/// sums are rescaled only then and a warp whose rows all keep theirs skips the multiplies; and
/// (the kernels with Q in registers) the rows' sums taken on the tensor cores, P times a tile of
/// ones, instead of added by each thread. The other kernels ignore it.
#[allow(clippy::too_many_arguments)]
pub fn attention_into_with_softmax(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    mask: AttentionMask,
    kernel: AttentionKernel,
    lean: bool,
    o: &mut Tensor,
) -> Result<()> {
    let options = WgmmaOptions { lean_softmax: Some(lean), ..WgmmaOptions::default() };
    attention_into_with_options(q, k, v, heads, scale, mask, kernel, options, o)
}

/// Attention over the keys of `k`/`v` followed by those of `k2`/`v2` (`[B, Lk2, C]`): the
/// UNets' image tokens and their condition rows. The mma kernel reads both sources directly;
/// every other path concatenates them first.
#[allow(clippy::too_many_arguments)]
pub fn attention_two_sources_into(
    q: &Tensor,
    (k, v): (&Tensor, &Tensor),
    (k2, v2): (&Tensor, &Tensor),
    heads: usize,
    scale: f32,
    kernel: AttentionKernel,
    o: &mut Tensor,
) -> Result<()> {
    let second = Some((Part::whole(k2), Part::whole(v2)));
    attention_impl(
        Part::whole(q),
        Part::whole(k),
        Part::whole(v),
        second,
        heads,
        scale,
        AttentionMask::None,
        kernel,
        WgmmaOptions::default(),
        o,
    )
}

/// Attention on packed projections: `qkv [B, L, 3C]` holds q, k and v side by side (one GEMM
/// with the three weights stacked), and `second`, when given, is another packed `[B, L2, 3C]`
/// whose k and v columns are further keys (the UNets' condition rows; its q columns are unused).
/// Every kernel reads q, k and v in place through row strides; only a second key source on a
/// kernel other than mma makes contiguous copies.
pub fn attention_packed_into(
    qkv: &Tensor,
    second: Option<&Tensor>,
    heads: usize,
    scale: f32,
    mask: AttentionMask,
    kernel: AttentionKernel,
    o: &mut Tensor,
) -> Result<()> {
    attention_packed_into_with_options(qkv, second, heads, scale, mask, kernel, WgmmaOptions::default(), o)
}

/// [`attention_packed_into`] with the wgmma kernels' options given (tests and benches compare
/// them on the operands the UNets pass).
#[allow(clippy::too_many_arguments)]
pub fn attention_packed_into_with_options(
    qkv: &Tensor,
    second: Option<&Tensor>,
    heads: usize,
    scale: f32,
    mask: AttentionMask,
    kernel: AttentionKernel,
    options: WgmmaOptions,
    o: &mut Tensor,
) -> Result<()> {
    let c = heads * HEAD_DIM;
    let part = |t, i: usize| Part { t, col: i * c, parts: 3 };
    let second = second.map(|s| (part(s, 1), part(s, 2)));
    attention_impl(part(qkv, 0), part(qkv, 1), part(qkv, 2), second, heads, scale, mask, kernel, options, o)
}

/// One attention operand: columns `[col, col + C)` of the rows of `t [B, L, parts·C]` (one part
/// and col 0 for a plain tensor; three for a packed projection).
#[derive(Clone, Copy)]
struct Part<'a> {
    t: &'a Tensor,
    col: usize,
    parts: usize,
}

impl<'a> Part<'a> {
    fn whole(t: &'a Tensor) -> Self {
        Part { t, col: 0, parts: 1 }
    }
    /// Elements between consecutive rows.
    fn stride(&self) -> usize {
        self.t.dim(-1)
    }
    /// `[B, L, parts·C]` with the given batch, and length when given; returns L.
    fn check(&self, what: &str, b: usize, len: Option<usize>, c: usize) -> Result<usize> {
        let t = self.t;
        if t.rank() != 3 || t.dim(0) != b || t.dim(2) != self.parts * c || len.is_some_and(|l| l != t.dim(1)) {
            let width = if self.parts == 1 { c.to_string() } else { format!("{}·{c}", self.parts) };
            return Err(Error::Shape(format!(
                "attention: {what} must be [{b}, {}, {width}], got {:?}",
                len.map_or("L".to_string(), |l| l.to_string()),
                t.shape()
            )));
        }
        Ok(t.dim(1))
    }
    /// The operand as a contiguous `[B, L, C]` tensor (a copy unless it already is one).
    fn dense(&self, c: usize) -> Result<Tensor> {
        if self.col == 0 && self.stride() == c {
            self.t.view(self.t.shape())
        } else {
            super::columns(self.t, self.col, c)
        }
    }
    #[cfg(feature = "cuda")]
    fn ptr(&self) -> Result<u64> {
        Ok(self.t.cuda_ptr()? + (self.col * self.t.dtype().size()) as u64)
    }
}

/// Keys `k`/`v`, then those of `extra` when given; checks every shape, picks the kernel.
/// `options`: the wgmma kernels' (see [`WgmmaOptions`]).
#[allow(clippy::too_many_arguments)]
fn attention_impl(
    q: Part,
    k: Part,
    v: Part,
    extra: Option<(Part, Part)>,
    heads: usize,
    scale: f32,
    mask: AttentionMask,
    kernel: AttentionKernel,
    options: WgmmaOptions,
    o: &mut Tensor,
) -> Result<()> {
    let &[b, lq, c] = o.shape() else {
        return Err(Error::Shape(format!("attention: the output must be [B, Lq, C], got {:?}", o.shape())));
    };
    if heads == 0 || c != heads * HEAD_DIM {
        return Err(Error::Shape(format!("attention: {c} channels are not {heads} heads of {HEAD_DIM}")));
    }
    // The tensor-core kernel takes row maxima of the unscaled scores (scale > 0 keeps the order).
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::Shape(format!("attention: the scale must be positive and finite, got {scale}")));
    }
    q.check("q", b, Some(lq), c)?;
    let lk = k.check("k", b, None, c)?;
    v.check("v", b, Some(lk), c)?;
    check_dtype("attention", q.t.dtype(), &[k.t, v.t, o])?;
    check_device("attention", &q.t.device(), &[k.t, v.t, o])?;
    if let Some((k2, v2)) = extra {
        let lk2 = k2.check("second keys", b, None, c)?;
        v2.check("second values", b, Some(lk2), c)?;
        check_dtype("attention", q.t.dtype(), &[k2.t, v2.t])?;
        check_device("attention", &q.t.device(), &[k2.t, v2.t])?;
    }
    // Every kernel but the mma one takes a single key source.
    let concatenated = |kernel, o: &mut Tensor| -> Result<()> {
        let (k2, v2) = extra.expect("only called with second keys");
        let (kc, vc) = (super::concat_tokens(&k.dense(c)?, &k2.dense(c)?)?, super::concat_tokens(&v.dense(c)?, &v2.dense(c)?)?);
        attention_impl(q, Part::whole(&kc), Part::whole(&vc), None, heads, scale, mask, kernel, options, o)
    };
    let key_mask = match mask {
        AttentionMask::None => None,
        AttentionMask::CausalPadding(_) if extra.is_some() => {
            return Err(Error::Shape("attention: a mask with a second key source is not supported".into()))
        }
        AttentionMask::CausalPadding(m) => {
            check_shape("attention", "key mask", m, &[b, lk])?;
            check_dtype("attention", DType::F32, &[m])?;
            check_device("attention", &q.t.device(), &[m])?;
            Some(m)
        }
    };
    let causal = key_mask.is_some();
    match q.t.device() {
        Device::Cpu if extra.is_some() => concatenated(kernel, o),
        Device::Cpu => {
            let _ = (kernel, options);
            let m = key_mask.map(|m| m.cpu_f32()).transpose()?;
            let (qd, kd, vd) = (q.dense(c)?.to_vec_f32()?, k.dense(c)?.to_vec_f32()?, v.dense(c)?.to_vec_f32()?);
            let out = cpu::attention(&qd, &kd, &vd, b, heads, lq, lk, HEAD_DIM, scale, causal, m.as_deref());
            o.set_cpu_f32(&out)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let kt = dev.kernels();
            let second_stride = extra.map_or(c, |e| e.0.stride());
            if extra.is_some_and(|(k2, v2)| k2.stride() != v2.stride()) || k.stride() != v.stride() {
                return Err(Error::Shape("attention: keys and values must have the same row stride".into()));
            }
            let mut p = crate::cuda::params::AttentionParams {
                q: q.ptr()? as *const _,
                k: k.ptr()? as *const _,
                v: v.ptr()? as *const _,
                o: o.cuda_ptr()? as *mut _,
                key_mask: super::dptr(key_mask)? as *const f32,
                B: b as i32,
                H: heads as i32,
                Lq: lq as i32,
                Lk: lk as i32,
                q_stride: q.stride() as i32,
                kv_stride: k.stride() as i32,
                o_stride: c as i32,
                causal: causal as i32,
                scale,
                k2: extra.map(|e| e.0.ptr()).transpose()?.unwrap_or(0) as *const _,
                v2: extra.map(|e| e.1.ptr()).transpose()?.unwrap_or(0) as *const _,
                Lk2: extra.map_or(0, |e| e.0.t.dim(1)) as i32,
                kv2_stride: second_stride as i32,
                splits: 1,
                split_tiles: 0,
                partial: std::ptr::null_mut(),
                counters: std::ptr::null_mut(),
                lean_softmax: 0,
                narrow_tail: 0,
            };
            // Both tensor-core kernels take bf16; only the mma one takes masks.
            let bf16 = q.t.dtype() == DType::BF16;
            let wmma_ok = bf16 && !causal;
            // The mma kernel moves 16 bytes (8 bf16) per load and 4 per store.
            let aligned = [p.q as u64, p.k as u64, p.v as u64, p.o as u64, p.k2 as u64, p.v2 as u64].iter().all(|a| a % 16 == 0)
                && [q.stride(), k.stride(), second_stride, c].iter().all(|s| s % 8 == 0);
            let forced = std::env::var("CASCADE_ATTENTION").ok();
            // The split-key kernel Auto would take (only computed when the split kernels were
            // asked for and checked).
            let tiles = (lk + extra.map_or(0, |e| e.0.t.dim(1))).div_ceil(64);
            let split = if dev.wgmma_split_attention() {
                let (per_sm, per_sm_sq) = dev.wgmma_per_sm();
                let sms = dev.multiprocessors();
                let unsplit = if wgmma_shared_q_preferred(lq, b * heads, sms, per_sm, per_sm_sq) { per_sm_sq } else { per_sm };
                let plan = match crate::cuda::attention_split_forced() {
                    Some(ranges) => Some(SplitPlan { ranges, shared_q: false }),
                    None => wgmma_split_plan(lq, b * heads, tiles, sms, unsplit, dev.wgmma_split_per_sm()),
                };
                plan.filter(|_| lq.div_ceil(64) * b * heads <= dev.completion_counters().1).map(|plan| {
                    if plan.shared_q {
                        AttentionKernel::WgmmaSharedQSplit(plan.ranges)
                    } else {
                        AttentionKernel::WgmmaSplit(plan.ranges)
                    }
                })
            } else {
                None
            };
            let chosen = match kernel {
                AttentionKernel::Auto if !bf16 => AttentionKernel::Simple,
                AttentionKernel::Auto => match forced.as_deref() {
                    Some("simple") => AttentionKernel::Simple,
                    Some("wmma") if wmma_ok => AttentionKernel::TensorCore,
                    Some("mma32") if aligned && dev.mma32_attention() => AttentionKernel::Mma32,
                    Some("mma") if aligned => AttentionKernel::Mma,
                    Some("wgmma_sq") if aligned && dev.wgmma_attention() => AttentionKernel::WgmmaSharedQ,
                    Some("wgmma2") if aligned && dev.wgmma2_attention() => match crate::cuda::attention_split_forced() {
                        Some(ranges) if !causal && dev.wgmma_split_attention() => AttentionKernel::Wgmma2Split(ranges),
                        _ => AttentionKernel::Wgmma2,
                    },
                    _ if aligned && !causal && split.is_some() && crate::cuda::attention_split_requested() => split.expect("checked"),
                    _ if aligned
                        && dev.wgmma_attention()
                        && wgmma_shared_q_preferred(lq, b * heads, dev.multiprocessors(), dev.wgmma_per_sm().0, dev.wgmma_per_sm().1) =>
                    {
                        AttentionKernel::WgmmaSharedQ
                    }
                    _ if aligned && dev.wgmma_attention() => AttentionKernel::Wgmma,
                    _ if aligned
                        && dev.mma32_wide_attention()
                        && mma32_preferred(lq, b * heads, 160, dev.multiprocessors(), dev.mma32_wide_per_sm()) =>
                    {
                        AttentionKernel::Mma32Wide
                    }
                    _ if aligned
                        && dev.mma32_attention()
                        && mma32_preferred(lq, b * heads, 128, dev.multiprocessors(), dev.mma32_per_sm()) =>
                    {
                        AttentionKernel::Mma32
                    }
                    _ if aligned && dev.mma_attention() => AttentionKernel::Mma,
                    _ if wmma_ok && dev.tensor_core_attention() => AttentionKernel::TensorCore,
                    _ => AttentionKernel::Simple,
                },
                AttentionKernel::TensorCore if !wmma_ok => {
                    return Err(Error::Shape("attention: the WMMA kernel takes bf16 without a mask".into()))
                }
                k if k.is_mma() && !bf16 => return Err(Error::Shape("attention: the mma kernel takes bf16".into())),
                k if k.is_mma() && !aligned => {
                    return Err(Error::Shape("attention: the mma kernel needs 16-byte aligned operands and rows".into()))
                }
                k if k.is_wgmma() && dev.compute_capability() != (9, 0) => {
                    let (major, minor) = dev.compute_capability();
                    return Err(Error::Cuda(format!(
                        "attention: the wgmma kernel needs compute capability 9.0 (H100, H200); {} has {major}.{minor}",
                        dev.name()
                    )));
                }
                other => other,
            };
            // Asked for: where it passed its start-up check.
            // Unset by the caller: the device's defaults (set_attention_defaults), then the
            // environment; either only where the kernel passed its start-up check.
            let defaults = dev.attention_defaults();
            let lean = options
                .lean_softmax
                .or_else(|| defaults.lean_softmax.or_else(crate::cuda::attention_softmax_requested).filter(|&l| !l || dev.lean_softmax()));
            // Under CASCADE_KERNEL_TUNE, the wgmma kernels (and the split-key and two-warpgroup
            // ones, where checked), each with and without the lean softmax (unless
            // CASCADE_ATTENTION_SOFTMAX decides), are timed against one another per shape.
            // K and V copied by TMA: asked for (or, by CASCADE_ATTENTION_COPY, where it passed its
            // start-up check), in the plain wgmma kernels, where the operands allow.
            let tma = options
                .tma_copies
                .or_else(|| defaults.tma_copies.or_else(crate::cuda::attention_copy_requested).filter(|&t| !t || dev.tma_attention()));
            let tma_fit = tma_fits(k, v, extra, lk)?;
            // The wgmma kernels with a TMA version: one warpgroup per block, with or without a
            // split of the keys.
            let plain = |c: AttentionKernel| {
                matches!(
                    c,
                    AttentionKernel::Wgmma
                        | AttentionKernel::WgmmaSharedQ
                        | AttentionKernel::WgmmaSplit(_)
                        | AttentionKernel::WgmmaSharedQSplit(_)
                )
            };
            // Under CASCADE_KERNEL_TUNE, the wgmma kernels (and the split-key and two-warpgroup
            // ones, where checked), each with and without the lean softmax (unless
            // CASCADE_ATTENTION_SOFTMAX decides), the plain ones also with TMA copies (where
            // checked, unless CASCADE_ATTENTION_COPY decides), are timed against one another per
            // shape.
            let (chosen, lean, tma) = match kernel {
                AttentionKernel::Auto
                    if crate::cuda::KernelTuning::requested().on() && forced.is_none() && aligned && chosen.is_wgmma() =>
                {
                    let mut kernels = vec![chosen, AttentionKernel::Wgmma, AttentionKernel::WgmmaSharedQ];
                    kernels.extend(split.filter(|_| !causal));
                    kernels.extend(dev.wgmma2_attention().then_some(AttentionKernel::Wgmma2));
                    let mut unique: Vec<(AttentionKernel, bool, bool)> = Vec::new();
                    for copies in [false, true] {
                        for softmax in [false, true] {
                            for &c in &kernels {
                                let candidate = (c, softmax, copies);
                                if !unique.contains(&candidate)
                                    && lean.is_none_or(|l| l == softmax)
                                    && (!softmax || dev.lean_softmax())
                                    && tma.is_none_or(|t| t == copies)
                                    && (!copies || (dev.tma_attention() && tma_fit && plain(c)))
                                {
                                    unique.push(candidate);
                                }
                            }
                        }
                    }
                    let names: Vec<String> = unique
                        .iter()
                        .map(|(c, l, t)| format!("{c:?}{}{}", if *l { " lean" } else { "" }, if *t { " tma" } else { "" }))
                        .collect();
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    let lk2 = extra.map_or(0, |e| e.0.t.dim(1));
                    // The restrictions on the candidates are part of the shape: a choice is an
                    // index into this list.
                    let fixed = |o: Option<bool>| o.map_or(2, usize::from);
                    let dims = [b, heads, lq, lk, lk2, causal as usize, q.stride(), k.stride(), second_stride, fixed(lean), fixed(tma)];
                    let i = super::tuned(&dev, "attention", &dims, &names, o, &mut |i, s| {
                        let options = WgmmaOptions { lean_softmax: Some(unique[i].1), tma_copies: Some(unique[i].2), ..options };
                        attention_impl(q, k, v, extra, heads, scale, mask, unique[i].0, options, s)
                    })?;
                    (unique[i].0, Some(unique[i].1), Some(unique[i].2))
                }
                _ => (chosen, lean, tma),
            };
            p.lean_softmax = (chosen.is_wgmma() && lean == Some(true)) as i32;
            let narrow = options.narrow_tail.unwrap_or_else(|| defaults.narrow_tail.unwrap_or(true) && dev.narrow_tail());
            p.narrow_tail = (chosen.is_wgmma() && narrow) as i32;
            // Asked for by the caller on operands it cannot take: an error; by CASCADE_ATTENTION_COPY
            // (or tuning, which only offers it where they fit): cp.async there.
            let use_tma = plain(chosen) && tma == Some(true) && (tma_fit || options.tma_copies == Some(true));
            // Paired copies: asked for (by the caller, the device's defaults, then
            // CASCADE_ATTENTION_COPY=pair) where they passed their start-up check, on the TMA
            // kernels with all keys for every query (no split, no causal mask).
            let pair = use_tma
                && !causal
                && matches!(chosen, AttentionKernel::Wgmma | AttentionKernel::WgmmaSharedQ)
                && options.pair_copies.or(defaults.pair_copies).unwrap_or_else(crate::cuda::attention_pair_requested)
                && dev.pair_attention();
            // Trios and quads where they are asked for likewise and passed their check.
            let wider = pair
                && options.cluster_copies.or(defaults.cluster_copies).unwrap_or_else(crate::cuda::attention_cluster_requested)
                && dev.cluster_attention();
            if use_tma && !tma_fit {
                return Err(Error::Shape(
                    "attention: TMA copies need 16-byte aligned operands with rows a multiple of 8 elements apart, and a second key source starting on a 64-key tile".into(),
                ));
            }
            if extra.is_some() && !chosen.is_mma() {
                return concatenated(chosen, o);
            }
            // The kernel, its queries per block and its threads per block.
            let (f, rows, threads) = match chosen {
                AttentionKernel::Mma => (&kt.attention_mma_bf16, 64, 128),
                AttentionKernel::Mma32 => (&kt.attention_mma32_bf16, 128, 128),
                AttentionKernel::Mma32Wide => (&kt.attention_mma32_w5_bf16, 160, 160),
                AttentionKernel::Wgmma => (&kt.attention_wgmma_bf16, 64, 128),
                AttentionKernel::WgmmaSharedQ => (&kt.attention_wgmma_qs_bf16, 64, 128),
                AttentionKernel::WgmmaSplit(_) => (&kt.attention_wgmma_split_bf16, 64, 128),
                AttentionKernel::WgmmaSharedQSplit(_) => (&kt.attention_wgmma_qs_split_bf16, 64, 128),
                AttentionKernel::Wgmma2 => (&kt.attention_wgmma2_bf16, 128, 256),
                AttentionKernel::Wgmma2Split(_) => (&kt.attention_wgmma2_split_bf16, 128, 256),
                AttentionKernel::TensorCore => (&kt.attention_tc_bf16, 64, 128),
                _ => (super::kernel("attention", q.t.dtype(), &kt.attention_f32, &kt.attention_bf16)?, 128, 128),
            };
            let mut ranges = 1;
            // Kept alive until the launch is queued (the stream orders its reuse after it).
            let mut _partial = None;
            if let AttentionKernel::WgmmaSplit(wanted) | AttentionKernel::WgmmaSharedQSplit(wanted) | AttentionKernel::Wgmma2Split(wanted) =
                chosen
            {
                if wanted == 0 {
                    return Err(Error::Shape("attention: a split of the keys needs at least one range".into()));
                }
                // Whole tiles per range, and no empty range (unless causal rows end earlier).
                let per_range = tiles.max(1).div_ceil(wanted);
                ranges = tiles.max(1).div_ceil(per_range);
                let query_blocks = lq.div_ceil(rows) * b * heads;
                let (counters, capacity) = dev.completion_counters();
                if query_blocks > capacity {
                    return Err(Error::Shape(format!(
                        "attention: splitting the keys of {query_blocks} query blocks needs more completion counters than the device keeps ({capacity})"
                    )));
                }
                p.splits = ranges as i32;
                p.split_tiles = per_range as i32;
                if ranges > 1 {
                    let floats = query_blocks * ranges * SPLIT_PARTIAL_FLOATS * (threads as usize / 128);
                    let partial = Tensor::empty(&[floats], DType::F32, &q.t.device())?;
                    p.partial = partial.cuda_ptr()? as *mut f32;
                    p.counters = counters as *mut u32;
                    _partial = Some(partial);
                }
            }
            let grid = ((lq.div_ceil(rows) * ranges) as u32, heads as u32, b as u32);
            if use_tma {
                // The blocks of a cluster sharing copies (1: none), and the keys each copy brings:
                // a tile of 64, or the half tile of trios and quads.
                let cluster = if pair { copy_cluster(grid.0 as usize, wider) } else { 1 };
                let box_keys = if cluster > 2 { 32 } else { 64 };
                // Each key source's K and V as [B][keys][row] maps, the head's columns by coordinate.
                let map = |part: Part, len: usize| {
                    crate::cuda::tensor_map_bf16_3d(part.t.cuda_ptr()?, (b, len, part.stride()), part.stride(), box_keys, 64)
                };
                let (k_map, v_map) = (map(k, lk)?, map(v, lk)?);
                let (k2_map, v2_map, k2_col, v2_col) = match extra {
                    Some((k2, v2)) => (map(k2, k2.t.dim(1))?, map(v2, k2.t.dim(1))?, k2.col, v2.col),
                    None => (k_map, v_map, k.col, v.col),
                };
                let tq = crate::cuda::params::AttentionTmaParams {
                    k_map,
                    v_map,
                    k2_map,
                    v2_map,
                    k_col: k.col as i32,
                    v_col: v.col as i32,
                    k2_col: k2_col as i32,
                    v2_col: v2_col as i32,
                    p,
                };
                if cluster > 1 {
                    // Clusters along the query blocks: the grid's x rounded up to a multiple of
                    // the cluster (blocks past the queries copy for their neighbours and compute
                    // nothing).
                    let qs = chosen == AttentionKernel::WgmmaSharedQ;
                    let f = match (cluster, qs) {
                        (2, false) => &kt.attention_wgmma_pair_tma_bf16,
                        (2, true) => &kt.attention_wgmma_qs_pair_tma_bf16,
                        (3, false) => &kt.attention_wgmma_trio_tma_bf16,
                        (3, true) => &kt.attention_wgmma_qs_trio_tma_bf16,
                        (_, false) => &kt.attention_wgmma_quad_tma_bf16,
                        (_, true) => &kt.attention_wgmma_qs_quad_tma_bf16,
                    };
                    let grid = (grid.0.next_multiple_of(cluster as u32), grid.1, grid.2);
                    return dev.launch_cluster(f, grid, (threads, 1, 1), CLUSTER_SMEM[qs as usize], (cluster as u32, 1, 1), &tq);
                }
                let f = match chosen {
                    AttentionKernel::WgmmaSharedQ => &kt.attention_wgmma_qs_tma_bf16,
                    AttentionKernel::WgmmaSplit(_) => &kt.attention_wgmma_split_tma_bf16,
                    AttentionKernel::WgmmaSharedQSplit(_) => &kt.attention_wgmma_qs_split_tma_bf16,
                    _ => &kt.attention_wgmma_tma_bf16,
                };
                return dev.launch(f, grid, (threads, 1, 1), 0, &tq);
            }
            dev.launch(f, grid, (threads, 1, 1), 0, &p)
        }
    }
}

/// Whether the TMA copies can take these keys and values: every source's rows 16-byte aligned (its
/// base, and a stride that is a multiple of 8 elements), and a second source starting on a 64-key
/// tile (a tile never spans the two).
#[cfg(feature = "cuda")]
fn tma_fits(k: Part, v: Part, extra: Option<(Part, Part)>, lk: usize) -> Result<bool> {
    let fits = |p: Part| -> Result<bool> { Ok(p.t.cuda_ptr()? % 16 == 0 && p.stride() % 8 == 0) };
    Ok(fits(k)?
        && fits(v)?
        && match extra {
            None => true,
            Some((k2, v2)) => lk % 64 == 0 && fits(k2)? && fits(v2)?,
        })
}

/// [`attention_into`] as a new tensor.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32, mask: AttentionMask) -> Result<Tensor> {
    let mut o = Tensor::empty(q.shape(), q.dtype(), &q.device())?;
    attention_into(q, k, v, heads, scale, mask, &mut o)?;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::{copy_cluster, mma32_preferred, wgmma_shared_q_preferred, wgmma_split_plan, SplitPlan};

    #[test]
    fn clusters_sized_to_a_heads_query_blocks() {
        // Stage C and C lite (9 query blocks a head): trios, no block past the queries (pairs 10,
        // quads 12). Stage B's level 2 (16) and level 3 (4): quads (pairs as few blocks, more
        // traffic).
        assert_eq!(copy_cluster(9, true), 3);
        assert_eq!(copy_cluster(16, true), 4);
        assert_eq!(copy_cluster(4, true), 4);
        // Three query blocks take a trio; one and two pairs (anything wider has blocks past the
        // queries); five and six trios (six blocks, as pairs); seven a quad (eight, as pairs).
        assert_eq!(copy_cluster(3, true), 3);
        assert_eq!(copy_cluster(1, true), 2);
        assert_eq!(copy_cluster(2, true), 2);
        assert_eq!(copy_cluster(5, true), 3);
        assert_eq!(copy_cluster(6, true), 3);
        assert_eq!(copy_cluster(7, true), 4);
        // Not asked for: pairs.
        assert_eq!(copy_cluster(9, false), 2);
        assert_eq!(copy_cluster(16, false), 2);
    }

    #[test]
    fn keys_split_where_the_grid_leaves_sms_short() {
        // An H200 (132 SMs; four blocks per SM of the kernels with Q in registers, five with Q
        // in shared memory). Stage B's level 2 (20 heads, 16 query blocks, 1028 keys: 17 tiles)
        // and B lite's (18 heads): two ranges, 640 and 576 blocks, one wave only with Q in
        // shared memory.
        let h200 = (132, (4, 5));
        assert_eq!(wgmma_split_plan(1024, 20, 17, h200.0, 4, h200.1), Some(SplitPlan { ranges: 2, shared_q: true }));
        assert_eq!(wgmma_split_plan(1024, 18, 17, h200.0, 4, h200.1), Some(SplitPlan { ranges: 2, shared_q: true }));
        // Level 3 (80 blocks of 5 tiles, one per SM): five ranges of one tile, 400 blocks.
        assert_eq!(wgmma_split_plan(256, 20, 5, h200.0, 4, h200.1), Some(SplitPlan { ranges: 5, shared_q: false }));
        // Stage C (576 blocks, already five per SM) and C lite (432): no split fits one wave.
        assert_eq!(wgmma_split_plan(576, 64, 11, h200.0, 5, h200.1), None);
        assert_eq!(wgmma_split_plan(576, 48, 11, h200.0, 4, h200.1), None);
        // One tile, or no occupancy answer: never.
        assert_eq!(wgmma_split_plan(1024, 20, 1, h200.0, 4, h200.1), None);
        assert_eq!(wgmma_split_plan(1024, 20, 17, h200.0, 4, (0, 0)), None);
        assert_eq!(wgmma_split_plan(1024, 20, 17, h200.0, 0, h200.1), None);
    }

    #[test]
    fn the_shared_q_wgmma_kernel_where_only_it_fills_one_wave() {
        // An H200 (132 SMs; four blocks of the register kernel, five of the shared-Q one): Stage C
        // (576 blocks) needs a second wave of the first only; Stage C lite (432), Stage B's
        // level 2 (320) and CLIP (80) fit either, so they keep the register kernel.
        assert!(wgmma_shared_q_preferred(576, 2 * 32, 132, 4, 5));
        assert!(!wgmma_shared_q_preferred(576, 2 * 24, 132, 4, 5));
        assert!(!wgmma_shared_q_preferred(1024, 20, 132, 4, 5));
        assert!(!wgmma_shared_q_preferred(77, 2 * 20, 132, 4, 5));
        // Too many for either: the register kernel. No occupancy answer: never.
        assert!(!wgmma_shared_q_preferred(4096, 64, 132, 4, 5));
        assert!(!wgmma_shared_q_preferred(576, 2 * 32, 132, 4, 0));
    }

    #[test]
    fn the_32_query_kernel_where_it_fills_one_wave() {
        // An H200 (132 SMs, two blocks of the 32-query kernel each) on the real shapes: only
        // Stage C lite (2 × 24 heads, 240 blocks) fills one wave; Stage C (320 blocks) needs a
        // second, Stage B's levels (160 and 40 blocks) and CLIP (40) leave SMs with one or none.
        assert!(mma32_preferred(576, 2 * 24, 128, 132, 2));
        assert!(!mma32_preferred(576, 2 * 32, 128, 132, 2));
        assert!(!mma32_preferred(1024, 20, 128, 132, 2));
        assert!(!mma32_preferred(256, 20, 128, 132, 2));
        assert!(!mma32_preferred(77, 2 * 20, 128, 132, 2));
        // No occupancy answer: never.
        assert!(!mma32_preferred(576, 2 * 24, 128, 132, 0));
        // Five warps (160 queries, two blocks per SM): Stage C's 256 blocks are one wave; Stage C
        // lite's 192 fill less than three quarters of it, so it keeps the four-warp kernel.
        assert!(mma32_preferred(576, 2 * 32, 160, 132, 2));
        assert!(!mma32_preferred(576, 2 * 24, 160, 132, 2));
        assert!(!mma32_preferred(1024, 20, 160, 132, 2));
    }
}
