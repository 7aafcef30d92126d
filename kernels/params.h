// Kernel parameter structs, shared by nvcc (C++) and bindgen (C): the Rust side is generated
// from this file, so both agree on every field by construction. Fixed-width types only.
// Each kernel takes one of these by value. Pointers are device addresses; the comment on each
// says the layout. Shapes are scalars here, never device memory, so launches capture into
// CUDA graphs.
#pragma once
#include <stdint.h>

// Element type codes (Rust: DType::code).
#define CASCADE_F32 0
#define CASCADE_BF16 1
#define CASCADE_F16 2

// Element-wise dtype conversion: dst[i] = (dst type) src[i].
typedef struct CastParams {
    const void* src;   // [n] of src_dtype
    void* dst;         // [n] of dst_dtype
    int64_t n;
    int32_t src_dtype;
    int32_t dst_dtype;
} CastParams;

// dst[i] = value (converted to dtype): used to poison outputs in tests and to zero buffers.
typedef struct FillParams {
    void* dst;         // [n] of dtype
    int64_t n;
    float value;
    int32_t dtype;
} FillParams;

// ---- normalisation -------------------------------------------------------------------------

// LayerNorm over the last axis of token-major x: y = (x - mean) / sqrt(var + eps) [* w + b].
// row_stats takes the same struct and writes only (mean, 1/sqrt(var + eps)) per row, as f32
// pairs to y.
// With ab (layer_norm only): x is first modulated as a TimestepBlock does, x*(1 + a) + s with
// a = ab[r / rows_per_sample, 0..C) and s the next C values; the modulated row, rounded to x's
// type, is written to x_out and is what gets normalised.
typedef struct LayerNormParams {
    const void* x;       // [rows, C]
    void* y;             // [rows, C]
    const void* weight;  // [C] or NULL (no affine)
    const void* bias;    // [C] or NULL
    int64_t rows;
    int32_t C;
    float eps;
    const void* ab;      // NULL, or scale then shift of sample 0, samples ab_stride elements apart
    void* x_out;         // [rows, C] (may be x), with ab
    int64_t ab_stride;
    int64_t rows_per_sample;
    int32_t vec8;        // 1: the row in registers, eight channels per access (C % 8 == 0,
                         // C <= 32 * blockDim.x, every operand 16-byte aligned, ab_stride % 8 == 0);
                         // 0: staged in shared memory (dynamic smem: C floats)
} LayerNormParams;

// GlobalResponseNorm (spec §3.3) in two kernels. grn_partial: sums of squares over chunks of
// chunk_rows positions, part[b, c, d] = sum_{n in chunk c} v[b,n,d]^2, where v = x, or with
// gelu != 0 v = GELU(x) rounded to x's type (the sum is over the rounded values), written to y
// when y is not NULL (y may be x: each element is read and written by one thread). The
// same launch finishes the statistics: the last block of each (sample, channel group) to
// finish turns that group's chunk sums into norms, scale[b, d] = sqrt(sum_c part[b, c, d]), and
// the last group of each sample to finish turns the sample's norms into
// scale[b, d] = 1 + gamma[d] * norm[b, d] / (mean_d norm[b, :] + 1e-6). Completion is counted in
// counters (zero on entry, left zero).
// chunk_rows: the launcher sizes it so that the launch is one wave on the card (src/ops/norm.rs
// grn_wave_chunk_rows; CASCADE_GRN_CHUNK in the environment fixes it, for measuring).
typedef struct GrnPartialParams {
    const void* x;       // [B, N, D]
    void* y;             // [B, N, D] (may be x), or NULL
    float* part;         // [B, chunks, D], f32
    float* scale;        // [B, D], f32
    const void* gamma;   // [D]
    unsigned int* counters; // [B * ceil(D / 64) + B]
    int32_t B;
    int32_t N;
    int32_t D;
    int32_t chunk_rows;  // positions per chunk, a multiple of 8
    int32_t chunks;      // ceil(N / chunk_rows)
    int32_t gelu;
    int32_t vec8;        // 1: 8 consecutive channels per thread, groups of 256 (D % 8 == 0, x and y
                         // 16-byte aligned); 0: groups of 64. gridDim.x is the number of groups.
    float* group_sums;   // [B, groups], f32: each group's sum of its channels' norms
    int32_t short_tail;  // 1: the sample's denominator from group_sums and the factor's loads all
                         // issued at once; 0: both passes over the D norms a batch at a time
    int32_t batched_remainder; // 1: a chunk's rows, and the last block's chunk sums, that do not
                         // fill a batch of loads go as one predicated batch; 0: one at a time
                         // (the earlier schedule, kept for A/B measurements)
} GrnPartialParams;

// A ResBlock's first MLP layer with GlobalResponseNorm's statistics in its epilogue (sm_90a,
// kernels/gemm.cu): y = GELU(x · wᵀ + bias), each 64-row chunk's sums of squares of the stored
// (bf16-rounded) y per column in part, and, once every tile has written its sums, GRN's factor
// 1 + γ·N(y) per sample and column in scale. x [M, K], w [N, K] (nn.Linear's layout), bias [N]
// or NULL, y [M, N], gamma [N], all bf16, rows dense, K and N multiples of 8, every pointer
// 16-byte aligned; M = samples · rows with rows a multiple of 64 (the launcher checks).
// gemm_gelu_ws_bf16 takes the same parameters for an MLP's first layer alone, u = GELU(x · wᵀ +
// bias) (Stage A's MixBlocks): no sums, no factor, and M any size (part, scale, group_sums, gamma,
// counters and rows unused).
typedef struct GemmGrnParams {
    const void* x;
    const void* w;
    const void* bias;
    void* y;
    float* part;            // [M / 64, N], f32: each chunk's sums of squares
    float* scale;           // [M / rows, N], f32: the factor (the norms until the last tile)
    float* group_sums;      // [M / rows, ceil(N / 128)], f32: each column tile's sum of norms
    const void* gamma;      // [N]
    unsigned int* counters; // [ceil(N / 128) + 1], zero before the launch and after it
    int32_t M;
    int32_t N;
    int32_t K;
    int32_t rows;           // positions per sample, a multiple of 64
} GemmGrnParams;

// A product with few rows of x and many of w (sm_90a, kernels/gemm.cu gemm_skinny_bf16; CLIP's
// 154 tokens): y = x · wᵀ + bias, optionally GELU'd, optionally added to y (β = 1). x [M, K] with
// M ≤ CASCADE_SKINNY_ROWS, w [N, K] (nn.Linear's layout) with N and K multiples of 64, bias [N] or
// NULL, y [M, N], all bf16, rows dense, every pointer 16-byte aligned (the launcher checks).
// Grid (N / 64, splits): block (i, s) takes w's rows 64i .. 64i + 63 over K's 64-wide steps
// s · k_steps .. (s + 1) · k_steps − 1; with splits > 1 each block leaves its sums in partials and
// the last block of each column of the grid adds them, in order of s, and writes y.
#define CASCADE_SKINNY_ROWS 160
typedef struct GemmSkinnyParams {
    const void* x;
    const void* w;
    const void* bias;
    void* y;
    float* partials;        // [splits, N / 64, 64 · CASCADE_SKINNY_ROWS], f32 (splits > 1)
    unsigned int* counters; // [N / 64], zero before the launch and after it (splits > 1)
    int32_t M;
    int32_t N;
    int32_t K;
    int32_t k_steps;        // 64-wide steps of K per split
    int32_t gelu;           // 1: GELU after the bias (the erf form, as stored in bf16)
    int32_t accumulate;     // 1: y += the result (a residual connection)
} GemmSkinnyParams;

// A TMA tensor map (the driver's CUtensorMap: 128 opaque bytes, 64-byte aligned), made on the
// host by cuTensorMapEncodeTiled and read by the copy engine from the kernel's parameters.
typedef struct __attribute__((aligned(64))) TensorMap {
    uint64_t opaque[16];
} TensorMap;

// A ResBlock's second MLP layer with GRN's factor applied to its input as the products read it
// (sm_90a, kernels/gemm.cu gemm_scaled_sk_bf16): y (+)= (x ⊙ factor) · wᵀ + bias, where row m of x
// belongs to sample m / rows and is multiplied column by column by that sample's factor (rounded
// to bf16, as GRN's apply pass stores it). x [M, K] and w [N, K] bf16 (as tensor maps, below),
// factor [M / rows, K] f32 or NULL (no scaling), bias [N] and y [M, N] of y's type (f32 or bf16),
// K and N multiples of 8, rows a multiple of 16, every pointer 16-byte aligned (the launcher
// checks). Stream-K: gridDim.x blocks, all resident at once (a cooperative launch), share the
// 64-deep steps of every 128 × 128 output tile evenly; a block whose range begins inside a tile
// leaves the sums of that first piece in partials and counts each of its consumer warpgroups
// in; the block that holds the tile's first step adds them, in order, and writes y.
typedef struct GemmScaledParams {
    const float* factor;    // [M / rows, K] f32, or NULL
    const void* bias;       // [N], y's type, or NULL
    void* y;                // [M, N], f32 (out_f32) or bf16
    float* partials;        // [2 · gridDim.x, 16, 128] float4: each consumer warpgroup's first piece
    unsigned int* counters; // [2 · gridDim.x], zero before the launch and after it
    int32_t M;
    int32_t N;
    int32_t K;
    int32_t rows;           // rows of x per sample
    int32_t out_f32;        // 1: y and bias f32 (a residual stream held in f32)
    int32_t accumulate;     // 1: y += the product (a residual connection)
} GemmScaledParams;

// The fused GEMM's warp-specialised version (gemm_gelu_grn_ws_bf16): GemmGrnParams' operands
// also as tensor maps, x's [M, K] and w's [N, K], boxes of 128 rows × 64 columns in the 128-byte
// swizzle. Passed as a __grid_constant__ parameter, so the maps stay in parameter space.
typedef struct GemmGrnTmaParams {
    TensorMap x_map;
    TensorMap w_map;
    GemmGrnParams g;
} GemmGrnTmaParams;

// gemm_scaled_sk_bf16's parameters: x's and w's tensor maps (boxes of 128 rows × 64 columns in the
// 128-byte swizzle) and the rest.
typedef struct GemmScaledTmaParams {
    TensorMap x_map;
    TensorMap w_map;
    GemmScaledParams g;
} GemmScaledTmaParams;

// The fused fc1 + GELU + GRN statistics GEMM shared out stream-K (sm_90a, kernels/gemm.cu
// gemm_gelu_grn_sk_bf16): what gemm_gelu_grn_ws_bf16 computes (GemmGrnParams, the operands also as
// tensor maps, boxes of 128 rows × 64 columns in the 128-byte swizzle), on a cooperative grid of
// at most one block per SM whose blocks share the 64-deep steps of every 128 × 128 output tile
// as gemm_scaled_sk_bf16's do. g.counters: [ceil(N / 128) + 1] as in GemmGrnParams; counters:
// the pieces' [2 · gridDim.x]; all zero before the launch and after it.
typedef struct GemmGrnSkParams {
    TensorMap x_map;
    TensorMap w_map;
    GemmGrnParams g;
    float* partials;        // [2 · gridDim.x, 16, 128] float4: each consumer warpgroup's first piece
    unsigned int* counters; // [2 · gridDim.x]
} GemmGrnSkParams;

// GlobalResponseNorm, second kernel: y[b,n,d] = x[b,n,d] * scale[b,d] + beta[d] (with GELU, x is
// the GELU output grn_partial stored).
typedef struct GrnApplyParams {
    const void* x;       // [B, N, D]
    void* y;             // [B, N, D]
    const float* scale;  // [B, D], f32 (from grn_partial)
    const void* beta;    // [D], or NULL for none (then this scales columns: a weight by GRN's factor)
    int32_t B;
    int64_t N;
    int32_t D;
} GrnApplyParams;

// ---- element-wise --------------------------------------------------------------------------

#define CASCADE_ACT_GELU 0   // exact erf GELU
#define CASCADE_ACT_SILU 1
#define CASCADE_ACT_NONE 2

// y = act(x + bias[i % C]) (bias optional).
typedef struct ActParams {
    const void* x;       // [n / C, C]
    void* y;             // [n / C, C]
    const void* bias;    // [C] or NULL
    int64_t n;
    int32_t C;
    int32_t act;         // CASCADE_ACT_*
} ActParams;

// y = a + b.
typedef struct AddParams {
    const void* a;       // [n]
    const void* b;       // [n]
    void* y;             // [n] (may alias a or b)
    int64_t n;
} AddParams;

// TimestepBlock: y[b,n,c] = x[b,n,c] * (1 + ab[b*S + c]) + ab[b*S + C + c], S = ab_stride
// (2C for a [B, 2C] tensor; more when ab is a column range of every block's terms).
typedef struct ModulateParams {
    const void* x;       // [B, N, C]
    void* y;             // [B, N, C] (may alias x)
    const void* ab;      // scale a first, shift b second, per sample
    int32_t B;
    int64_t N;
    int32_t C;
    int64_t ab_stride;
} ModulateParams;

// Classifier-free guidance: y[i] = eps[n+i] + w * (eps[i] - eps[n+i]) (cond first, uncond second).
typedef struct CfgParams {
    const void* eps;     // [2, n]: cond rows, then uncond rows
    void* y;             // [n]
    const float* w;      // [1] on the device, so a captured graph reads the current guidance
    int64_t n;
} CfgParams;

// DDPM-Wuerstchen update: y = c[0] * (x - c[1] * eps) + c[2] * noise (noise optional).
typedef struct DdpmStepParams {
    const void* x;       // [n]
    const void* eps;     // [n]
    const void* noise;   // [n] or NULL (last step)
    void* y;             // [n] (may alias x)
    const float* coef;   // [3] on the device: 1/sqrt(alpha), (1-alpha)/sqrt(1-abar_t), sigma
    int64_t n;
} DdpmStepParams;

// ---- convolution and resampling (token-major [B, H, W, C]) ----------------------------------

// Depthwise 3x3 convolution with bias, stride 1, padding 1 (zero or replicate), optionally
// followed by LayerNorm over channels (no affine).
// Pixels of one row per block on the depthwise kernel's eight-channel path.
#define CASCADE_DW_STRIP 4
// The wide-strip kernels (depthwise_*_sw5): CASCADE_DW_WIDE_STRIP pixels per block.
#define CASCADE_DW_WIDE_STRIP 5
// The tiled kernel (large images): tiles of CASCADE_DW_TILE_W columns, runs of 4 pixels per thread.
#define CASCADE_DW_TILE_W 8
#define CASCADE_DW_TILE_MAX_H 8
// The rolling tiled kernel (depthwise_roll_bf16): column strips of CASCADE_DW_ROLL_W pixels.
#define CASCADE_DW_ROLL_W 16

typedef struct DepthwiseParams {
    const void* x;       // [B, H, W, C]; f32 with everything else bf16 in depthwise_f32_bf16(_sw) (an
                         // f32 residual stream, read as its bf16 copy; in_ab and x_out are f32 too)
    void* y;             // [B, H, W, C]
    const void* weight;  // [C, 3, 3] (PyTorch [C, 1, 3, 3])
    const void* bias;    // [C]
    int32_t B;
    int32_t H;
    int32_t W;
    int32_t C;
    int32_t replicate;   // 1: replicate padding (Stage A), 0: zero padding (Stage B/C)
    int32_t layer_norm;  // 1: y = LN_C(conv(x)) with eps
    float eps;
    // Optional LayerNorm of the input, applied as the taps are read (Stage A's MixBlock):
    // tap = (x - mean) * rstd * in_weight[c] + in_bias[c] with (mean, rstd) = in_stats[pixel].
    const float* in_stats;   // [B*H*W, 2] f32 (row_stats), or NULL
    const void* in_weight;   // [C]
    const void* in_bias;     // [C]
    const void* residual;    // [B, H, W, C] added to the conv output (may be x, or y itself when
                             // y is not x: y += conv(x)), or NULL
    // Optional TimestepBlock modulation of the input, applied as the taps are read (before the
    // zero padding): tap = x * (1 + a[c]) + s[c] rounded to x's type, with a and s the C values
    // at in_ab + b * in_ab_stride and C further; the modulated centre taps are written to x_out.
    // Never together with in_stats (the two share the kernel's registers).
    const void* in_ab;       // or NULL
    void* x_out;             // [B, H, W, C], not x
    int64_t in_ab_stride;
    // Optional second output (Stage A's MixBlock): y_norm = LayerNorm(y) * out_weight + out_bias
    // over channels with eps, computed from y as stored (rounded); y itself is written as usual.
    void* y_norm;            // [B, H, W, C], or NULL
    const void* out_weight;  // [C]
    const void* out_bias;    // [C]
    int32_t vec8;            // 1: eight channels per thread, CASCADE_DW_STRIP pixels per block (C % 8 == 0,
                             // C / 8 <= blockDim.x, every operand 16-byte aligned; grid
                             // (ceil(W / CASCADE_DW_STRIP), H, B); CASCADE_DW_WIDE_STRIP in the _sw5
                             // kernels); 0: one channel, one pixel (grid (W, H, B))
    int32_t tile_h;          // depthwise_tile_bf16 only: output rows per tile, 2 .. CASCADE_DW_TILE_MAX_H
                             // (grid (ceil(W / CASCADE_DW_TILE_W), ceil(H / tile_h), B), 2 · tile_h · C / 8
                             // threads); depthwise_roll_bf16: output rows per step, 1 .. CASCADE_DW_TILE_MAX_H;
                             // 0 for the other kernels
    int32_t in_norm_here;    // depthwise_tile_bf16 and _roll_bf16 only, at least 32 threads: 1 with in_stats
                             // NULL, the input LayerNorm's (mean, rstd) are computed from the halo (eps:
                             // in_eps; depthwise_roll_bf16 never reads in_stats)
    float in_eps;
    int32_t roll_steps;      // depthwise_roll_bf16 only: steps of tile_h rows per block (grid
                             // (ceil(W / CASCADE_DW_ROLL_W), ceil(H / (tile_h · roll_steps)), B),
                             // 4 · tile_h · C / 8 threads); 0 for the other kernels
} DepthwiseParams;

// Pixel shuffle (PyTorch order, channel c*r*r + i*r + j):
//   shuffle:   x [B, H, W, C*r*r] -> y [B, H*r, W*r, C]
//   unshuffle: x [B, Hs, Ws, C]   -> y [B, H, W, C*r*r], reading the top-left H*r x W*r
//              region (Hs >= H*r: the floor semantics of a stride-r convolution)
// H, W, C are those of the low-resolution side; Hs, Ws the high-resolution tensor's own size.
// phase_major (shuffle only): channel (i*r + j)*C + c instead, each sub-pixel's C channels
// contiguous (the layout of one GEMM per output phase, as the 4x4 transposed convolution writes).
typedef struct PixelShuffleParams {
    const void* x;
    void* y;
    int32_t B;
    int32_t H;
    int32_t W;
    int32_t C;
    int32_t r;
    int32_t unshuffle;
    int32_t Hs;
    int32_t Ws;
    int32_t phase_major;
} PixelShuffleParams;

// 3x3 neighbourhoods with zero padding: cols[b,h,w,(dy*3+dx)*C+c] = x[b,h+dy-1,w+dx-1,c].
typedef struct Im2Col3x3Params {
    const void* x;       // [B, H, W, C]
    void* cols;          // [B, H, W, 9C]
    int32_t B;
    int32_t H;
    int32_t W;
    int32_t C;
} Im2Col3x3Params;

// Bilinear resize, align_corners=True, f32 arithmetic.
typedef struct ResizeParams {
    const void* x;       // [B, H, W, C]
    void* y;             // [B, Ho, Wo, C]
    int32_t B;
    int32_t H;
    int32_t W;
    int32_t C;
    int32_t Ho;
    int32_t Wo;
} ResizeParams;

// Concatenation along channels: y[r] = [a[r], b[r]].
typedef struct ConcatParams {
    const void* a;       // [rows, Ca]
    const void* b;       // [rows, Cb]
    void* y;             // [rows, Ca + Cb]
    int64_t rows;
    int32_t Ca;
    int32_t Cb;
} ConcatParams;

// Columns [col, col + width) of every row of x [rows, C] into y [rows, width] (the q, k or v
// part of a packed projection, where a kernel needs it on its own).
typedef struct ColumnsParams {
    const void* x;       // [rows, C]
    void* y;             // [rows, width]
    int64_t rows;
    int32_t C;
    int32_t col;
    int32_t width;
} ColumnsParams;

// ---- attention -----------------------------------------------------------------------------

// o = softmax(q k^T * scale [masked]) v per head; head h uses columns [h*64, h*64+64).
// Rows are tokens; the strides (in elements) let q, k, v be column slices of wider tensors.
typedef struct AttentionParams {
    const void* q;       // [B, Lq, q_stride]
    const void* k;       // [B, Lk, kv_stride]
    const void* v;       // [B, Lk, kv_stride]
    void* o;             // [B, Lq, o_stride]
    const float* key_mask;// [B, Lk] f32, 1 = attend, 0 = masked; or NULL
    int32_t B;
    int32_t H;
    int32_t Lq;
    int32_t Lk;
    int32_t q_stride;
    int32_t kv_stride;
    int32_t o_stride;
    int32_t causal;      // 1: query i sees keys j <= i
    float scale;
    // Keys Lk .. Lk + Lk2 - 1 continue in k2/v2 [B, Lk2, kv2_stride] (the UNets' condition rows,
    // so image and condition keys need no concatenation). attention_mma_bf16 only; 0 elsewhere.
    const void* k2;
    const void* v2;
    int32_t Lk2;
    int32_t kv2_stride;  // row stride of k2/v2 (elements)
    // Keys split into ranges (the attention_wgmma*_split_bf16 kernels only; 1 and NULLs
    // elsewhere): splits ranges of split_tiles 64-key tiles per query block, blockIdx.x = query
    // block · splits + range. Each range writes its unnormalised O, maxima and sums to partial
    // ([B · H · query blocks · splits · 9 · threads per block] float4); counters ([B · H · query
    // blocks], zero on entry, left zero) find the last range to finish, which merges them.
    int32_t splits;
    int32_t split_tiles;
    float* partial;
    unsigned int* counters;
    // The wgmma kernels only (0 elsewhere): 1 is the lean softmax. A row keeps its running
    // maximum, the exponents' base, until a tile's maximum passes it by more than
    // 2^CASCADE_LAZY_RESCALE_LOG2 (then probabilities reach at most that), so O and the sums are
    // rescaled only then, and a warp skips the rescale when none of its rows needs it; and the
    // rows' sums are P times a tile of ones on the tensor cores, not adds. 0: rescales at every
    // new maximum, sums added by each thread.
    int32_t lean_softmax;
    // The wgmma kernels only (0 elsewhere; not the overlapped one): 1 narrows the last tile of
    // keys to 32 or 16 keys when its keys fit, so its products and softmax skip the padding.
    int32_t narrow_tail;
} AttentionParams;
#define CASCADE_LAZY_RESCALE_LOG2 8.0f

// The wgmma attention kernels that copy each K and V tile with TMA (attention_wgmma_tma_bf16,
// attention_wgmma_qs_tma_bf16: one thread issues two copies a tile instead of every thread eight
// cp.async and their addresses): rank-3 tensor maps [B][rows][cols] of each key source's keys and
// values (boxes of 64 columns × 64 rows × 1 sample in the 128-byte swizzle, so rows past a
// sample's last arrive as zeros), the column of head 0's keys (values) in each, and the rest.
// A second key source starts on a tile (p.Lk a multiple of 64). Passed as a __grid_constant__
// parameter, so the maps stay in parameter space.
typedef struct AttentionTmaParams {
    TensorMap k_map;
    TensorMap v_map;
    TensorMap k2_map;  // the second key source's (a copy of k_map's without one)
    TensorMap v2_map;
    int32_t k_col;
    int32_t v_col;
    int32_t k2_col;
    int32_t v2_col;
    AttentionParams p;
} AttentionTmaParams;

// ---- embeddings ----------------------------------------------------------------------------

// Timestep-ratio embedding (spec §3.7): y[b] = [sin(r f_0..f_{h-1}), cos(...)] with r = t[b]*max_positions,
// f_k = exp(-k ln(max_positions)/(h-1)), h = dim/2; then n_extra copies of the embedding of 0.
// Frequencies come from the host (computed as PyTorch computes them): the arguments reach
// r · f ≈ 10^4 radians, where one ulp of a frequency moves the sine by ~5e-4.
#define CASCADE_TIMESTEP_MAX_HALF 256
typedef struct TimestepEmbedParams {
    const float* t;      // [B] ratios, f32, on the device (written before each step)
    void* y;             // [B, dim * (1 + n_extra)]
    int32_t B;
    int32_t dim;
    int32_t n_extra;
    float max_positions;
    float freqs[CASCADE_TIMESTEP_MAX_HALF];  // f_k for k < dim / 2
} TimestepEmbedParams;

// Token + position embedding: y[b,l] = tok[ids[b,l]] + pos[l]. ids are exact integers stored
// as f32 (vocabularies are far below 2^24).
typedef struct EmbedParams {
    const float* ids;    // [B, L] f32
    const void* tok;     // [V, D]
    const void* pos;     // [>= L, D]
    void* y;             // [B, L, D]
    int32_t B;
    int32_t L;
    int32_t D;
    int32_t V;
} EmbedParams;

// Images to 8-bit: y[i] = round_half_even(clamp(x[i], 0, 1) * 255), x an NHWC image batch (RGB
// interleaved, the order image files take); *first_bad becomes the lowest index of a non-finite
// value (the caller sets it to 0xffffffff first).
typedef struct ToRgb8Params {
    const void* x;       // [n]
    uint8_t* y;          // [n]
    uint32_t* first_bad; // one word
    int64_t n;           // < 2^32
} ToRgb8Params;

// y = a * x + b (Stage A's latent scale, image range mapping).
typedef struct AffineParams {
    const void* x;       // [n]
    void* y;             // [n] (may alias x)
    int64_t n;
    float a;
    float b;
} AffineParams;

// Seeded normal noise, counter-based so every element is independent of the launch shape:
// y[i] = mean + scale * N(0,1) from a SplitMix64 hash of (seed, i) and Box-Muller.
typedef struct RandomParams {
    void* y;             // [n]
    int64_t n;
    uint64_t seed;
    float mean;
    float scale;
    int32_t dtype;       // CASCADE_*
} RandomParams;
