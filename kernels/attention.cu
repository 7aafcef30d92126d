// Fused multi-head attention, head_dim 64: o = softmax(q k^T * scale) v with an online softmax
// in f32 (flash-style: the score matrix never exists in memory). Optional causal and
// key-padding masks (CLIP). One thread owns one query row of one head; a block of 128 threads
// covers 128 queries and streams K/V through shared memory in tiles of 64 keys.
#include "common.cuh"

#define HEAD_DIM 64
#define Q_TILE 128
#define K_TILE 64

template <typename T> __device__ void attention_impl(const AttentionParams& p) {
    __shared__ float ks[K_TILE][HEAD_DIM];
    __shared__ float vs[K_TILE][HEAD_DIM];
    __shared__ float kmask[K_TILE];
    int b = blockIdx.z, h = blockIdx.y;
    int qi = blockIdx.x * Q_TILE + threadIdx.x;
    bool active = qi < p.Lq;
    const T* qrow = (const T*)p.q + ((int64_t)b * p.Lq + (active ? qi : 0)) * p.q_stride + h * HEAD_DIM;
    float q[HEAD_DIM], acc[HEAD_DIM];
#pragma unroll
    for (int d = 0; d < HEAD_DIM; d++) {
        q[d] = active ? to_f32(qrow[d]) * p.scale : 0.f;
        acc[d] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    // With a causal mask, keys past the block's last query are never needed.
    int k_end = p.causal ? min(p.Lk, (blockIdx.x + 1) * Q_TILE) : p.Lk;
    for (int k0 = 0; k0 < k_end; k0 += K_TILE) {
        __syncthreads();
        for (int e = threadIdx.x; e < K_TILE * HEAD_DIM; e += blockDim.x) {
            int j = e / HEAD_DIM, d = e % HEAD_DIM, kj = k0 + j;
            float kv = 0.f, vv = 0.f;
            if (kj < p.Lk) {
                int64_t off = ((int64_t)b * p.Lk + kj) * p.kv_stride + h * HEAD_DIM + d;
                kv = to_f32(((const T*)p.k)[off]);
                vv = to_f32(((const T*)p.v)[off]);
            }
            ks[j][d] = kv;
            vs[j][d] = vv;
        }
        for (int j = threadIdx.x; j < K_TILE; j += blockDim.x) {
            int kj = k0 + j;
            kmask[j] = kj < p.Lk && (!p.key_mask || p.key_mask[(int64_t)b * p.Lk + kj] != 0.f) ? 1.f : 0.f;
        }
        __syncthreads();
        if (!active) continue;
        int jn = min(K_TILE, k_end - k0);
        for (int j = 0; j < jn; j++) {
            if (kmask[j] == 0.f || (p.causal && k0 + j > qi)) continue;
            float s = 0.f;
#pragma unroll
            for (int d = 0; d < HEAD_DIM; d++) s += q[d] * ks[j][d];
            if (s > m) {
                // New running maximum: rescale what was accumulated so far.
                float corr = expf(m - s);
                l *= corr;
#pragma unroll
                for (int d = 0; d < HEAD_DIM; d++) acc[d] *= corr;
                m = s;
            }
            float e = expf(s - m);
            l += e;
#pragma unroll
            for (int d = 0; d < HEAD_DIM; d++) acc[d] += e * vs[j][d];
        }
    }
    if (!active) return;
    float inv = l > 0.f ? 1.f / l : 0.f;  // a fully masked row (never produced by CLIP) gives zeros
    T* orow = (T*)p.o + ((int64_t)b * p.Lq + qi) * p.o_stride + h * HEAD_DIM;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; d++) orow[d] = from_f32<T>(acc[d] * inv);
}
extern "C" __global__ void __launch_bounds__(Q_TILE) attention_f32(AttentionParams p) { pdl_enter(); attention_impl<float>(p); }
extern "C" __global__ void __launch_bounds__(Q_TILE) attention_bf16(AttentionParams p) { pdl_enter(); attention_impl<bf16>(p); }

// ---- Tensor-core version (bf16, no mask: Stage B and C) ---------------------------------------
// Four warps per block, 16 query rows each (64 queries per block). K and V stream through
// shared memory in tiles of 64 keys; every product runs on the tensor cores through WMMA
// (16×16×16, bf16 in, f32 accumulate). Online softmax in f32: after S = Q·Kᵀ is stored to shared
// memory, two lanes per row find the row maximum, write P = exp(S − max) as bf16, and rescale the
// running output (held in accumulator fragments, round-tripped through shared memory to reach
// its rows) before O += P·V.
#include <mma.h>

#define TC_WARPS 4
#define TC_ROWS 16
#define TC_KT 64
#define TC_LD 72   // bf16 row pitch (multiple of 8; the padding spreads shared-memory banks)
#define TC_LDF 68  // f32 row pitch (multiple of 4)

extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attention_tc_bf16(AttentionParams p) {
    pdl_enter();
    using namespace nvcuda;
    __shared__ __align__(32) bf16 ks[TC_KT][TC_LD];
    __shared__ __align__(32) bf16 vs[TC_KT][TC_LD];
    __shared__ __align__(32) float sbuf[TC_WARPS][TC_ROWS][TC_LDF];
    __shared__ __align__(32) bf16 pbuf[TC_WARPS][TC_ROWS][TC_LD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.z, h = blockIdx.y;
    const int q0 = blockIdx.x * (TC_WARPS * TC_ROWS) + warp * TC_ROWS;
    const bf16* q = (const bf16*)p.q;
    const bf16* k = (const bf16*)p.k;
    const bf16* v = (const bf16*)p.v;

    // Stage this warp's 16 query rows (zeros past Lq) in its P buffer, then keep them as fragments.
    for (int e = lane; e < TC_ROWS * HEAD_DIM; e += 32) {
        int r = e / HEAD_DIM, d = e % HEAD_DIM, qi = q0 + r;
        pbuf[warp][r][d] = qi < p.Lq ? q[((int64_t)b * p.Lq + qi) * p.q_stride + h * HEAD_DIM + d] : __float2bfloat16_rn(0.f);
    }
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> qf[HEAD_DIM / 16];
    for (int kk = 0; kk < HEAD_DIM / 16; kk++) wmma::load_matrix_sync(qf[kk], &pbuf[warp][0][kk * 16], TC_LD);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> of[HEAD_DIM / 16];
    for (int n = 0; n < HEAD_DIM / 16; n++) wmma::fill_fragment(of[n], 0.f);

    // Two lanes per row: row = lane / 2, columns [half * 32, half * 32 + 32).
    const int row = lane >> 1, half = lane & 1;
    float m = -INFINITY, l = 0.f;

    for (int k0 = 0; k0 < p.Lk; k0 += TC_KT) {
        __syncthreads();  // the previous tile is no longer read
        for (int e = threadIdx.x; e < TC_KT * HEAD_DIM; e += TC_WARPS * 32) {
            int j = e / HEAD_DIM, d = e % HEAD_DIM, kj = k0 + j;
            bf16 kv = __float2bfloat16_rn(0.f), vv = kv;
            if (kj < p.Lk) {
                int64_t off = ((int64_t)b * p.Lk + kj) * p.kv_stride + h * HEAD_DIM + d;
                kv = k[off];
                vv = v[off];
            }
            ks[j][d] = kv;
            vs[j][d] = vv;
        }
        __syncthreads();

        // S = Q · Kᵀ (16 × 64) into this warp's f32 buffer.
        for (int n = 0; n < TC_KT / 16; n++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
            wmma::fill_fragment(sf, 0.f);
            for (int kk = 0; kk < HEAD_DIM / 16; kk++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> kf;
                wmma::load_matrix_sync(kf, &ks[n * 16][kk * 16], TC_LD);
                wmma::mma_sync(sf, qf[kk], kf, sf);
            }
            wmma::store_matrix_sync(&sbuf[warp][0][n * 16], sf, TC_LDF, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax for this row's 32 columns; the partner lane holds the other 32.
        float tile_max = -INFINITY;
        for (int c = half * 32; c < half * 32 + 32; c++) {
            float s = k0 + c < p.Lk ? sbuf[warp][row][c] * p.scale : -INFINITY;
            sbuf[warp][row][c] = s;
            tile_max = fmaxf(tile_max, s);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, 1));
        float m_new = fmaxf(m, tile_max);
        float corr = m_new == -INFINITY ? 1.f : expf(m - m_new);
        float sum = 0.f;
        for (int c = half * 32; c < half * 32 + 32; c++) {
            float s = sbuf[warp][row][c];
            float e = s == -INFINITY ? 0.f : expf(s - m_new);
            bf16 eb = __float2bfloat16_rn(e);
            pbuf[warp][row][c] = eb;
            sum += __bfloat162float(eb);  // the normaliser sums what P·V will use
        }
        sum += __shfl_xor_sync(0xffffffff, sum, 1);
        l = l * corr + sum;
        m = m_new;
        __syncwarp();

        // O *= corr (per row), through shared memory.
        for (int n = 0; n < HEAD_DIM / 16; n++) wmma::store_matrix_sync(&sbuf[warp][0][n * 16], of[n], TC_LDF, wmma::mem_row_major);
        __syncwarp();
        for (int c = half * 32; c < half * 32 + 32; c++) sbuf[warp][row][c] *= corr;
        __syncwarp();
        for (int n = 0; n < HEAD_DIM / 16; n++) wmma::load_matrix_sync(of[n], &sbuf[warp][0][n * 16], TC_LDF, wmma::mem_row_major);

        // O += P · V.
        for (int n = 0; n < HEAD_DIM / 16; n++) {
            for (int kc = 0; kc < TC_KT / 16; kc++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> pf;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> vf;
                wmma::load_matrix_sync(pf, &pbuf[warp][0][kc * 16], TC_LD);
                wmma::load_matrix_sync(vf, &vs[kc * 16][n * 16], TC_LD);
                wmma::mma_sync(of[n], pf, vf, of[n]);
            }
        }
        __syncwarp();
    }

    // O / l, rows below Lq only.
    for (int n = 0; n < HEAD_DIM / 16; n++) wmma::store_matrix_sync(&sbuf[warp][0][n * 16], of[n], TC_LDF, wmma::mem_row_major);
    __syncwarp();
    const int qi = q0 + row;
    if (qi < p.Lq) {
        float inv = l > 0.f ? 1.f / l : 0.f;
        bf16* orow = (bf16*)p.o + ((int64_t)b * p.Lq + qi) * p.o_stride + h * HEAD_DIM;
        for (int c = half * 32; c < half * 32 + 32; c++) orow[c] = __float2bfloat16_rn(sbuf[warp][row][c] * inv);
    }
}


// ---- Tensor-core version with register-resident softmax (mma.sync; bf16) ---------------------
// W warps per block, each with R tiles of 16 query rows (16·R·W queries per block); K and V
// stream through shared memory in tiles of 64 keys, double-buffered with cp.async so that tile
// i + 1 loads while tile i is multiplied. Each warp keeps Q, the scores S = Q·Kᵀ, the
// probabilities P and the output O in registers: the accumulator layout of S (16 × 8 keys) is
// exactly the A layout P needs for O += P·V, so nothing round-trips through shared memory (unlike
// the WMMA kernel above, whose fragment layout is opaque). K's and V's B fragments come from
// shared memory by ldmatrix (V's transposed); rows are 16-byte aligned and conflict-free at this
// pitch. Each fragment a warp loads serves its R row tiles: with R = 2 a warp reads the tile
// from shared memory once per 32 queries instead of once per 16, which halves the kernel's
// shared-memory traffic per FLOP (the ldmatrix reads, 16 KiB per warp and tile, are what the
// R = 1 kernel spends most of its shared-memory bandwidth on), at twice the registers: on an
// H200 that pays only where the grid is one full wave (the entry points below). The online softmax runs in base 2
// on the unscaled scores, the scale folded into each exponent's FFMA; each lane holds two rows
// of each row tile (g and g + 8) and shares their maxima with the three other lanes of its
// group; the row sums come from the tensor cores (P times a fragment of ones). The loop is
// written for few instructions per tile besides the mma (issue slots, not the tensor cores,
// bounded the first version): tiles inside one key source load through one pointer, and only
// tiles with masked or missing keys run the masking code. The launcher requires 16-byte aligned
// q, k, v, o, strides that are multiples of 8 and a positive scale. Optional causal and
// key-padding masks (CLIP; one key source): a masked score is −∞, and a row whose keys so far
// are all masked keeps a running maximum of −∞ without producing NaNs (a row with no visible key
// at all gives zeros, as the CUDA-core kernel does).
#define MMA_KT 64
#define MMA_LD 72  // bf16 pitch of the shared tiles (36 words: conflict-free fragment reads)

template <int R, int W> __device__ __forceinline__ void attention_mma_body(const AttentionParams& p) {
    __shared__ __align__(16) bf16 ks[2][MMA_KT][MMA_LD];  // [stage][key][dim]
    __shared__ __align__(16) bf16 vs[2][MMA_KT][MMA_LD];  // [stage][key][dim]
    constexpr int ROWS = 16 * R * W;                       // queries per block
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y;
    const int q0 = blockIdx.x * ROWS + warp * 16 * R;  // the warp's first query; row tile r starts at q0 + 16r
    // A warp whose queries all lie past Lq (in the last block of a row of blocks) only helps load.
    const bool busy = q0 < p.Lq;
    const float scale = p.scale * 1.4426950408889634f;  // scores in base 2 (p.scale > 0: the launcher checks)

    // Keys [0, Lk) from k/v, then [Lk, Lk + Lk2) from k2/v2.
    const int total = p.Lk + p.Lk2;
    const bf16* kbase = (const bf16*)p.k + (int64_t)b * p.Lk * p.kv_stride + h * HEAD_DIM;
    const bf16* vbase = (const bf16*)p.v + (int64_t)b * p.Lk * p.kv_stride + h * HEAD_DIM;
    const bf16* kbase2 = p.Lk2 ? (const bf16*)p.k2 + (int64_t)b * p.Lk2 * p.kv2_stride + h * HEAD_DIM : kbase;
    const bf16* vbase2 = p.Lk2 ? (const bf16*)p.v2 + (int64_t)b * p.Lk2 * p.kv2_stride + h * HEAD_DIM : vbase;
    // 64 keys × 64 dims of K and of V: 512 pieces of 16 bytes each. Thread i copies dims
    // (i % 8)·8 .. + 7 of keys i / 8 + 4W·r (four keys per warp and round: four rounds with four
    // warps; with five, 20 keys a round and a fourth round for the last 4). A tile inside one
    // source (all but at most two per block) takes one pointer and a stride; the others pick the
    // source per key, and keys past the last are zero-filled.
    constexpr int STEP = 4 * W, ROUNDS = (MMA_KT + STEP - 1) / STEP;
    constexpr bool EVEN = MMA_KT % STEP == 0;
    const int lj = threadIdx.x >> 3, ld = (threadIdx.x & 7) * 8;
    auto load_tile = [&](int stage, int k0) {
        const bool in_first = k0 + MMA_KT <= p.Lk, in_second = k0 >= p.Lk && k0 + MMA_KT <= total;
        if (in_first || in_second) {
            const int64_t stride = in_first ? p.kv_stride : p.kv2_stride;
            const int64_t off = (int64_t)((in_first ? k0 : k0 - p.Lk) + lj) * stride + ld;
            const bf16* kp = (in_first ? kbase : kbase2) + off;
            const bf16* vp = (in_first ? vbase : vbase2) + off;
            for (int r = 0; r < ROUNDS; r++) {
                if (EVEN || lj + STEP * r < MMA_KT) {
                    cp_async16(&ks[stage][lj + STEP * r][ld], kp + STEP * r * stride, true);
                    cp_async16(&vs[stage][lj + STEP * r][ld], vp + STEP * r * stride, true);
                }
            }
        } else {
            for (int r = 0; r < ROUNDS; r++) {
                const int j = lj + STEP * r, kj = k0 + j;
                if (!EVEN && j >= MMA_KT) break;
                const bool first = kj < p.Lk, valid = kj < total;
                const int64_t off = first ? (int64_t)kj * p.kv_stride + ld : valid ? (int64_t)(kj - p.Lk) * p.kv2_stride + ld : ld;
                cp_async16(&ks[stage][j][ld], (first || !valid ? kbase : kbase2) + off, valid);
                cp_async16(&vs[stage][j][ld], (first || !valid ? vbase : vbase2) + off, valid);
            }
        }
        cp_async_commit();
    };
    load_tile(0, 0);

    // Q fragments for this warp's row tiles (rows past Lq read as zeros and are never stored).
    uint32_t qa[R][HEAD_DIM / 16][4];
    {
        const bf16* q = (const bf16*)p.q + ((int64_t)b * p.Lq) * p.q_stride + h * HEAD_DIM;
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int r0 = q0 + 16 * r + g, r1 = r0 + 8;
            for (int kc = 0; kc < HEAD_DIM / 16; kc++) {
                const int d0 = kc * 16 + 2 * t, d1 = d0 + 8;
                qa[r][kc][0] = r0 < p.Lq ? *(const uint32_t*)(q + (int64_t)r0 * p.q_stride + d0) : 0u;
                qa[r][kc][1] = r1 < p.Lq ? *(const uint32_t*)(q + (int64_t)r1 * p.q_stride + d0) : 0u;
                qa[r][kc][2] = r0 < p.Lq ? *(const uint32_t*)(q + (int64_t)r0 * p.q_stride + d1) : 0u;
                qa[r][kc][3] = r1 < p.Lq ? *(const uint32_t*)(q + (int64_t)r1 * p.q_stride + d1) : 0u;
            }
        }
    }
    float o[R][HEAD_DIM / 8][4];
#pragma unroll
    for (int r = 0; r < R; r++)
        for (int nd = 0; nd < HEAD_DIM / 8; nd++) o[r][nd][0] = o[r][nd][1] = o[r][nd][2] = o[r][nd][3] = 0.f;
    // Running maxima of rows g and g + 8 of each row tile, on the unscaled scores (the scale is
    // positive).
    float m0[R], m1[R];
    // Running row sums, accumulated by the tensor cores as P·1 (a B fragment of ones): every
    // column of this 16 × 8 block holds its row's sum of the rounded P that P·V uses, so
    // l[r][0] is row g's and l[r][2] row g + 8's, with no shuffles and no unpacking of P.
    float l[R][4];
#pragma unroll
    for (int r = 0; r < R; r++) {
        m0[r] = m1[r] = -INFINITY;
        l[r][0] = l[r][1] = l[r][2] = l[r][3] = 0.f;
    }
    const uint32_t ones[2] = {0x3f803f80u, 0x3f803f80u};  // bf16 1.0 pairs

    // With a causal mask, keys past the block's last query are never needed.
    const int last_key = p.causal ? min(total, (blockIdx.x + 1) * ROWS) : total;
    const int tiles = (last_key + MMA_KT - 1) / MMA_KT;
    const float* key_mask = p.key_mask ? p.key_mask + (int64_t)b * p.Lk : nullptr;
    for (int tile = 0; tile < tiles; tile++) {
        const int stage = tile & 1, k0 = tile * MMA_KT;
        if (tile + 1 < tiles) {
            load_tile(stage ^ 1, k0 + MMA_KT);  // its buffer was released by the last barrier
            cp_async_wait<1>();                 // this tile's group has landed
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // ... for every thread's copies
        if (busy) {
            const bf16(*kt)[MMA_LD] = ks[stage];
            const bf16(*vt)[MMA_LD] = vs[stage];

            // S = Q·Kᵀ for 64 keys: eight 16 × 8 accumulators per row tile. Kᵀ's B fragments pair
            // two dims of one key: one ldmatrix gives them for 32 dims of 8 keys (lanes 8i..8i+7
            // point at keys nc·8 .. + 7, dims 32·half + 8i .. + 7), for every row tile.
            float s[R][MMA_KT / 8][4];
#pragma unroll
            for (int nc = 0; nc < MMA_KT / 8; nc++) {
#pragma unroll
                for (int r = 0; r < R; r++) s[r][nc][0] = s[r][nc][1] = s[r][nc][2] = s[r][nc][3] = 0.f;
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    uint32_t kb[4];
                    ldmatrix_x4<false>(kb, &kt[nc * 8 + (lane & 7)][half * 32 + (lane >> 3) * 8]);
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        mma_m16n8k16_bf16(s[r][nc], qa[r][2 * half], kb, s[r][nc]);
                        mma_m16n8k16_bf16(s[r][nc], qa[r][2 * half + 1], kb + 2, s[r][nc]);
                    }
                }
            }
            // A tile of real keys only and no mask (all but the last tile or two without masks)
            // needs nothing else; otherwise keys past the last, later than the row (causal) or
            // padded out become −∞ first.
            if (k0 + MMA_KT > total || p.causal || key_mask) {
#pragma unroll
                for (int r = 0; r < R; r++)
                    for (int nc = 0; nc < MMA_KT / 8; nc++) {
                        for (int i = 0; i < 4; i++) {
                            const int key = k0 + nc * 8 + 2 * t + (i & 1), row = q0 + 16 * r + g + (i < 2 ? 0 : 8);
                            const bool visible = key < total && !(p.causal && key > row) && !(key_mask && key < p.Lk && key_mask[key] == 0.f);
                            if (!visible) s[r][nc][i] = -INFINITY;
                        }
                    }
            }
            // P = 2^((S − max)·scale) as bf16 A fragments, after the rows' new maxima rescale
            // what was accumulated.
            uint32_t pa[R][MMA_KT / 16][4];
#pragma unroll
            for (int r = 0; r < R; r++) {
                // The tile's row maxima.
                float t0 = -INFINITY, t1 = -INFINITY;
                for (int nc = 0; nc < MMA_KT / 8; nc++) {
                    t0 = fmaxf(t0, fmaxf(s[r][nc][0], s[r][nc][1]));
                    t1 = fmaxf(t1, fmaxf(s[r][nc][2], s[r][nc][3]));
                }
                for (int off = 1; off < 4; off <<= 1) {
                    t0 = fmaxf(t0, __shfl_xor_sync(0xffffffff, t0, off));
                    t1 = fmaxf(t1, __shfl_xor_sync(0xffffffff, t1, off));
                }
                // Without masks every tile holds a real key, so the maxima are finite. With masks
                // a row may have seen none yet: exponents are then taken against 0 (2^(−∞ − 0) =
                // 0, no NaN). Exponents are (s − max)·scale in base 2, one FFMA each against the
                // scaled maximum.
                const float n0 = fmaxf(m0[r], t0), n1 = fmaxf(m1[r], t1);
                const float b0 = n0 == -INFINITY ? 0.f : n0 * scale, b1 = n1 == -INFINITY ? 0.f : n1 * scale;
                const float c0 = ex2_approx(fmaf(m0[r], scale, -b0)), c1 = ex2_approx(fmaf(m1[r], scale, -b1));
                m0[r] = n0;
                m1[r] = n1;
                l[r][0] *= c0;
                l[r][1] *= c0;
                l[r][2] *= c1;
                l[r][3] *= c1;
                for (int nd = 0; nd < HEAD_DIM / 8; nd++) {
                    o[r][nd][0] *= c0;
                    o[r][nd][1] *= c0;
                    o[r][nd][2] *= c1;
                    o[r][nd][3] *= c1;
                }
                for (int kc = 0; kc < MMA_KT / 16; kc++) {
                    float e[8];
                    for (int i = 0; i < 4; i++) {
                        e[i] = ex2_approx(fmaf(s[r][2 * kc][i], scale, -(i < 2 ? b0 : b1)));
                        e[4 + i] = ex2_approx(fmaf(s[r][2 * kc + 1][i], scale, -(i < 2 ? b0 : b1)));
                    }
                    pa[r][kc][0] = pack_bf16x2(e[0], e[1]);
                    pa[r][kc][1] = pack_bf16x2(e[2], e[3]);
                    pa[r][kc][2] = pack_bf16x2(e[4], e[5]);
                    pa[r][kc][3] = pack_bf16x2(e[6], e[7]);
                    mma_m16n8k16_bf16(l[r], pa[r][kc], ones, l[r]);
                }
            }
            // O += P·V: eight 16 × 8 output blocks per row tile over the tile's four 16-key
            // chunks. B pairs keys 2t, 2t + 1 (and 2t + 8, 2t + 9) of dim nd·8 + g: one
            // transposing ldmatrix gives both registers for two neighbouring dim blocks (lanes
            // 8i..8i+7 point at the rows of keys kc·16 + 8(i & 1) .. + 7, dims (nd + i / 2)·8 ..
            // + 7), for every row tile. Each o[r][nd] still accumulates the chunks in order.
#pragma unroll
            for (int kc = 0; kc < MMA_KT / 16; kc++) {
                const int mi = lane >> 3, key = kc * 16 + (mi & 1) * 8 + (lane & 7);
#pragma unroll
                for (int nd = 0; nd < HEAD_DIM / 8; nd += 2) {
                    uint32_t vb[4];
                    ldmatrix_x4<true>(vb, &vt[key][(nd + (mi >> 1)) * 8]);
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        mma_m16n8k16_bf16(o[r][nd], pa[r][kc], vb, o[r][nd]);
                        mma_m16n8k16_bf16(o[r][nd + 1], pa[r][kc], vb + 2, o[r][nd + 1]);
                    }
                }
            }
        }
        __syncthreads();  // this stage is read: the next iteration may refill it
    }
    if (!busy) return;

    // O / l as bf16 pairs.
    bf16* out = (bf16*)p.o + ((int64_t)b * p.Lq) * p.o_stride + h * HEAD_DIM;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const float i0 = l[r][0] > 0.f ? 1.f / l[r][0] : 0.f, i1 = l[r][2] > 0.f ? 1.f / l[r][2] : 0.f;
        const int r0 = q0 + 16 * r + g, r1 = r0 + 8;
        for (int nd = 0; nd < HEAD_DIM / 8; nd++) {
            const int d = nd * 8 + 2 * t;
            if (r0 < p.Lq) *(uint32_t*)(out + (int64_t)r0 * p.o_stride + d) = pack_bf16x2(o[r][nd][0] * i0, o[r][nd][1] * i0);
            if (r1 < p.Lq) *(uint32_t*)(out + (int64_t)r1 * p.o_stride + d) = pack_bf16x2(o[r][nd][2] * i1, o[r][nd][3] * i1);
        }
    }
}

// 16 queries per warp, four warps: 64 queries per block, four blocks per SM (at most 128
// registers: without the bound ptxas takes 134, which leaves room for three).
extern "C" __global__ void __launch_bounds__(128, 4) attention_mma_bf16(AttentionParams p) { pdl_enter(); attention_mma_body<1, 4>(p); }
// 32 queries per warp, four warps: 128 queries per block, two blocks per SM (248 registers).
// Measured on an H200 against the kernel above (docs/performance.md, ninth session): faster
// where its grid fills one wave (Stage C lite: 25.7 against 29.7 µs), slower where it needs a
// second wave or leaves SMs with one block (Stage C, Stage B, CLIP); the launcher picks by that.
// Two and three warps per block were measured too and never won.
extern "C" __global__ void __launch_bounds__(128) attention_mma32_bf16(AttentionParams p) { pdl_enter(); attention_mma_body<2, 4>(p); }
// 32 queries per warp, five warps: 160 queries per block, two blocks per SM under a 200-register
// cap (64 000 of the SM's 65 536; 60 bytes of spills). Stage C's 2 × 32 heads × 576 queries are
// 256 such blocks, one wave of 264 places, where the four-warp kernel needs 320 blocks (a second
// wave) and the 16-query kernel 576 (1.09 waves). Not measured yet: chosen only with
// CASCADE_ATTENTION_W5=1 (docs/performance.md, ninth session).
extern "C" __global__ void __maxnreg__(200) attention_mma32_w5_bf16(AttentionParams p) { pdl_enter(); attention_mma_body<2, 5>(p); }

// ---- Hopper version: warpgroup products (wgmma, sm_90a) ----------------------------------------
// One warpgroup (four warps) per 64 queries. The mma.sync kernels above spend most of their
// issue slots feeding the tensor cores: per warp and 64-key tile, 64 mma and 32 ldmatrix
// instructions. Here the whole warpgroup's S = Q·Kᵀ for a tile is four wgmma (64 × 64, 16 dims
// each) and O += P·V four more, with K and V read by the tensor cores straight from shared
// memory: what is left to issue is the softmax. Q and P stay in registers as A operands (the S
// accumulator layout is the A layout P needs, as in the mma kernel), K and V are [key][dim]
// tiles in the 128-byte swizzle the wgmma descriptors describe: Kᵀ K-major (no transpose), V
// MN-major (transposed B). Tiles are double-buffered with cp.async as in the mma kernel; a fence
// hands the copies to the async proxy before the barrier. Same masks, key sources and output as
// the mma kernels; queries past Lq still take part in the products (wgmma is warpgroup-wide)
// and are never stored. Row sums are the f32 sums of each thread's probabilities, finished across
// the four lanes of a row at the end.
#define WG_KT 64          // keys per tile
#define WG_TILE 8192      // bytes of one 64 × 64 bf16 tile
// A wgmma attention block's shared memory: K's and V's two slots (and Q's tile with qs), the
// lean softmax's ones and 1 KiB to align the tiles (or the alignment alone), TMA's `full`
// barriers, and the clustered kernels' `empty` ones. Those take it as dynamic shared memory
// (src/ops/attention.rs, CLUSTER_SMEM, gives the same figures).
__host__ __device__ constexpr int attention_smem_bytes(bool qs, bool ones, bool tma, bool clustered) {
    return (qs ? 5 : 4) * WG_TILE + (ones ? 2048 : 1024) + (tma ? 16 : 0) + (clustered ? 16 : 0);
}
#ifdef CASCADE_WGMMA
// This thread's two rows (g and g + 8 of its warp's 16): running maxima of the unscaled scores
// and this thread's part of the row sums.
struct WgRows {
    float m0, m1, l0, l1;
};
// The softmax of one tile of S, 64 keys or (NS = 16, 8: the narrow last tile) 32 or 16 (s[4nc +
// i]: row g (i < 2) or g + 8, key k0 + 8nc + 2t + i % 2), as in the mma kernel: keys past the last, later than the row (causal) or padded out
// become −∞ (only on tiles that can hold such keys), base-2 exponents against the scaled running
// maxima (0 for a row that has seen no visible key yet). Returns the factors c0, c1 that rescale
// what was accumulated before this tile, updates the maxima and sums (sums rescaled, this tile's
// added), and writes P as bf16 A fragments, one per 16 keys (keys 16kc .. + 15: n-blocks 2kc and
// 2kc + 1).
template <int NS>
__device__ __forceinline__ void wg_softmax(const AttentionParams& p, float (&s)[NS], int k0, int row0, const float* key_mask, float scale,
                                           WgRows& r, float& c0, float& c1, uint32_t (&pa)[NS / 8][4], bool tc_sums) {
    constexpr int KW = 2 * NS;  // keys in the tile
    const int t = threadIdx.x & 3, total = p.Lk + p.Lk2;
    if (k0 + KW > total || p.causal || key_mask) {
#pragma unroll
        for (int nc = 0; nc < KW / 8; nc++)
            for (int i = 0; i < 4; i++) {
                const int key = k0 + nc * 8 + 2 * t + (i & 1), row = row0 + (i < 2 ? 0 : 8);
                const bool visible = key < total && !(p.causal && key > row) && !(key_mask && key < p.Lk && key_mask[key] == 0.f);
                if (!visible) s[4 * nc + i] = -INFINITY;
            }
    }
    float t0 = -INFINITY, t1 = -INFINITY;
#pragma unroll
    for (int nc = 0; nc < KW / 8; nc++) {
        t0 = fmaxf(t0, fmaxf(s[4 * nc], s[4 * nc + 1]));
        t1 = fmaxf(t1, fmaxf(s[4 * nc + 2], s[4 * nc + 3]));
    }
    for (int off = 1; off < 4; off <<= 1) {
        t0 = fmaxf(t0, __shfl_xor_sync(0xffffffff, t0, off));
        t1 = fmaxf(t1, __shfl_xor_sync(0xffffffff, t1, off));
    }
    float n0 = fmaxf(r.m0, t0), n1 = fmaxf(r.m1, t1);
    // Lean: a row keeps its base while this tile's maximum stays within 2^8 of it (a row that
    // has seen no visible key yet compares as NaN: rebased), and then needs no rescale (c = 1).
    const bool keep0 = p.lean_softmax && (n0 - r.m0) * scale <= CASCADE_LAZY_RESCALE_LOG2;
    const bool keep1 = p.lean_softmax && (n1 - r.m1) * scale <= CASCADE_LAZY_RESCALE_LOG2;
    if (keep0) n0 = r.m0;
    if (keep1) n1 = r.m1;
    const float b0 = n0 == -INFINITY ? 0.f : n0 * scale, b1 = n1 == -INFINITY ? 0.f : n1 * scale;
    c0 = keep0 ? 1.f : ex2_approx(fmaf(r.m0, scale, -b0));
    c1 = keep1 ? 1.f : ex2_approx(fmaf(r.m1, scale, -b1));
    r.m0 = n0;
    r.m1 = n1;
    // tc_sums: the sums come from the tensor cores (wg_rescale scales them).
    const bool sums = !tc_sums;
    if (sums) {
        r.l0 *= c0;
        r.l1 *= c1;
    }
#pragma unroll
    for (int kc = 0; kc < KW / 16; kc++) {
        float e[8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            e[i] = ex2_approx(fmaf(s[8 * kc + i], scale, -(i < 2 ? b0 : b1)));
            e[4 + i] = ex2_approx(fmaf(s[8 * kc + 4 + i], scale, -(i < 2 ? b0 : b1)));
        }
        if (sums) {
            r.l0 += (e[0] + e[1]) + (e[4] + e[5]);
            r.l1 += (e[2] + e[3]) + (e[6] + e[7]);
        }
        pa[kc][0] = pack_bf16x2(e[0], e[1]);
        pa[kc][1] = pack_bf16x2(e[2], e[3]);
        pa[kc][2] = pack_bf16x2(e[4], e[5]);
        pa[kc][3] = pack_bf16x2(e[6], e[7]);
    }
}
// S = Q·Kᵀ, one 16-dim product, for a tile of 64 keys or the narrow last tile's 32 or 16 (s's size
// says which): Q from registers or (QS) from its shared-memory tile.
__device__ __forceinline__ void wg_s_product(float (&s)[32], const uint32_t (&q)[4], SmemDesc k, bool acc) { wgmma_m64n64k16_bf16<0>(s, q, k, acc); }
__device__ __forceinline__ void wg_s_product(float (&s)[16], const uint32_t (&q)[4], SmemDesc k, bool acc) { wgmma_m64n32k16_bf16(s, q, k, acc); }
__device__ __forceinline__ void wg_s_product(float (&s)[8], const uint32_t (&q)[4], SmemDesc k, bool acc) { wgmma_m64n16k16_bf16(s, q, k, acc); }
__device__ __forceinline__ void wg_s_product(float (&s)[32], SmemDesc q, SmemDesc k, bool acc) { wgmma_m64n64k16_bf16_ss<0>(s, q, k, acc); }
__device__ __forceinline__ void wg_s_product(float (&s)[16], SmemDesc q, SmemDesc k, bool acc) { wgmma_m64n32k16_bf16_ss(s, q, k, acc); }
__device__ __forceinline__ void wg_s_product(float (&s)[8], SmemDesc q, SmemDesc k, bool acc) { wgmma_m64n16k16_bf16_ss(s, q, k, acc); }
// With the lean softmax, a warp none of whose rows changed its base skips the multiplies; the
// tensor cores' row sums (tc_sums; lsum: rows g and g + 8, two equal columns each) are rescaled
// with O.
__device__ __forceinline__ void wg_rescale(const AttentionParams& p, float (&o)[32], float (&lsum)[4], bool tc_sums, float c0, float c1) {
    if (p.lean_softmax && !__any_sync(0xffffffff, c0 != 1.f || c1 != 1.f)) return;
    if (tc_sums) {
        lsum[0] *= c0;
        lsum[1] *= c0;
        lsum[2] *= c1;
        lsum[3] *= c1;
    }
#pragma unroll
    for (int nd = 0; nd < HEAD_DIM / 8; nd++) {
        o[4 * nd] *= c0;
        o[4 * nd + 1] *= c0;
        o[4 * nd + 2] *= c1;
        o[4 * nd + 3] *= c1;
    }
}

// QS: Q read by the tensor cores from a shared-memory tile too, instead of from registers (16
// registers fewer per thread). (A version that overlapped one tile's products with the next
// tile's softmax inside the warpgroup, as FlashAttention-3 does, was no faster on an H200 with
// four or five blocks per SM hiding one another's latency, and was removed: docs/performance.md,
// thirteenth session.)
// SPLIT: the keys are split into p.splits ranges of p.split_tiles tiles, one block
// each (blockIdx.x = query block · splits + range), so that a grid too small for the card (Stage
// B: 320 blocks on 132 SMs holding up to 3 each) has more, shorter blocks. Each block writes its
// unnormalised O with its rows' maxima and sums to p.partial; the last block of a query block to
// arrive merges every range's, in range order (so the result does not depend on which block is
// last), and writes the output.
// WG (Q in registers only): warpgroups per block, each with its own 64 queries (blockDim.x =
// 128 · WG), all of them reading the same K and V tiles: each tile is copied from L2 once per
// 64 · WG queries instead of once per 64.
// TMA (tq its parameters): each K and V tile copied by the copy engine, two copies
// issued by one thread as the previous tile's products start, completing on the slot's mbarrier,
// instead of eight cp.async per thread with their addresses, a wait and a block barrier: fewer
// instructions per tile in a kernel whose issue slots bound it, and one block barrier per tile
// instead of two.
// CL > 1 (with TMA, one warpgroup, no split, no causal mask: the launcher's conditions): blocks
// in clusters of CL along x, CL neighbouring query blocks of one head, which read the same K and
// V tiles. Each block copies its share of every tile into all the cluster's blocks by TMA
// multicast, so a tile is read from L2 once per 64 · CL queries instead of once per 64: 16 / CL
// KiB a block and tile on average instead of 16. Pairs (CL = 2): rank 0 copies K, rank 1 V.
// Trios and quads (CL = 3, 4): the tile's four halves (the first and second 32 keys of K, then
// of V), half q by rank q % CL (a trio's rank 0 copies two); the maps' boxes are 32 keys, and a
// half tile lands 4 KiB into the tile, where the 128-byte swizzle's 1 KiB period puts it in the
// same pattern. A slot is refilled only when every block of the cluster has read it: each
// block's `empty` barrier of the slot expects an arrival from its own thread 0 and one from each
// other block's. A block past the last query (the grid's x rounded up to a multiple of CL)
// copies and waits like the others but computes nothing. Dynamic shared memory (the launch gives
// attention_smem_bytes), so that the emulator can map it between the blocks.
template <bool QS, bool SPLIT, int WG = 1, bool TMA = false, int CL = 1>
__device__ __forceinline__ void attention_wgmma_body(const AttentionParams& p, const AttentionTmaParams* tq = nullptr) {
    static_assert(WG == 1 || (WG == 2 && !QS), "one or two warpgroups; two hold Q in registers");
    static_assert(CL >= 1 && CL <= 4, "clusters of one to four blocks");
    constexpr bool CLUSTERED = CL > 1;  // the cluster's blocks share each tile's copies
    static_assert(!CLUSTERED || (TMA && !SPLIT && WG == 1), "clusters copy by TMA, one warpgroup a block, all keys");
    constexpr int THREADS = 128 * WG;
    // K and V of two slots each (then Q), then 1 KiB of bf16 ones (the lean softmax's row sums:
    // one swizzle atom, so the descriptor reads ones wherever it points), on a 1024-byte boundary
    // (the swizzle pattern's period); with TMA, the two slots' mbarriers in the last 16 bytes.
    // The lean softmax's sums on the tensor cores (ONES): not with Q in shared memory and
    // cp.async copies, whose kernels run five blocks per SM (at most 102 registers), where four
    // more spill; with TMA copies they fit (the copies' addresses are gone: 94 registers).
    constexpr bool ONES = !QS || TMA;
    constexpr int SMEM = attention_smem_bytes(QS, ONES, TMA, CLUSTERED);
    __shared__ __align__(1024) unsigned char smem_static[CLUSTERED ? 16 : SMEM];
    extern __shared__ uint4 attention_dynamic_smem[];  // (CLUSTERED only: SMEM bytes)
    unsigned char* const smem_raw = CLUSTERED ? (unsigned char*)attention_dynamic_smem : smem_static;
    unsigned char* const tiles = align_1024(smem_raw);
    // TMA: the two slots' `full` barriers in the last 16 bytes; CLUSTERED: their `empty` barriers
    // in the 16 before.
    uint64_t* const kv_full = (uint64_t*)(smem_raw + SMEM - 16);
    uint64_t* const kv_empty = kv_full - 2;
    unsigned char* const ones = tiles + (QS ? 5 : 4) * WG_TILE;
    const bool tc_sums = ONES && p.lean_softmax;
    if (ONES)  // made visible to the tensor cores by the fence and barrier before the first products
        for (int i = threadIdx.x; i < 256; i += THREADS) ((uint32_t*)ones)[i] = 0x3f803f80u;
    auto ktile = [&](int slot) { return tiles + slot * 2 * WG_TILE; };
    auto vtile = [&](int slot) { return tiles + slot * 2 * WG_TILE + WG_TILE; };

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wg = WG == 1 ? 0 : warp >> 2;  // this thread's warpgroup (the compiler cannot know blockDim)
    unsigned char* const qtile = tiles + 4 * WG_TILE;
    const int g = lane >> 2, t = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y;
    const int splits = SPLIT ? p.splits : 1;
    const int qblk = SPLIT ? blockIdx.x / splits : blockIdx.x;  // the query block
    const int range = SPLIT ? blockIdx.x - qblk * splits : 0;    // its range of keys
    const int q0 = (qblk * WG + wg) * 64 + (WG == 1 ? warp : warp & 3) * 16;  // this warp's 16 rows of its warpgroup's 64
    const float scale = p.scale * 1.4426950408889634f;

    const int total = p.Lk + p.Lk2;
    const bf16* kbase = (const bf16*)p.k + (int64_t)b * p.Lk * p.kv_stride + h * HEAD_DIM;
    const bf16* vbase = (const bf16*)p.v + (int64_t)b * p.Lk * p.kv_stride + h * HEAD_DIM;
    const bf16* kbase2 = p.Lk2 ? (const bf16*)p.k2 + (int64_t)b * p.Lk2 * p.kv2_stride + h * HEAD_DIM : kbase;
    const bf16* vbase2 = p.Lk2 ? (const bf16*)p.v2 + (int64_t)b * p.Lk2 * p.kv2_stride + h * HEAD_DIM : vbase;
    // 64 keys × 8 chunks of 16 bytes: thread i copies chunk i % 8 of keys i / 8 + KSTEP·r (r <
    // 64 / KSTEP) to chunk (i % 8) ^ (key % 8) of the key's row, key % 8 being the same for all
    // of its keys.
    constexpr int KSTEP = THREADS / 8, KROWS = WG_KT / KSTEP;
    const int lj = threadIdx.x >> 3, lc = threadIdx.x & 7, ld = lc * 8;
    const int swz = ((lc ^ (lj & 7)) << 4);
    // Keys [k0, k0 + 64) of one operand (K from base/base2, or V) into a tile; keys past the last
    // zero-filled. A tile inside one key source takes one pointer and a stride.
    auto copy_tile = [&](unsigned char* tile, const bf16* base, const bf16* base2, int k0) {
        unsigned char* dst = tile + lj * 128 + swz;
        const bool in_first = k0 + WG_KT <= p.Lk, in_second = k0 >= p.Lk && k0 + WG_KT <= total;
        if (in_first || in_second) {
            const int64_t stride = in_first ? p.kv_stride : p.kv2_stride;
            const bf16* src = (in_first ? base : base2) + (int64_t)((in_first ? k0 : k0 - p.Lk) + lj) * stride + ld;
#pragma unroll
            for (int r = 0; r < KROWS; r++) cp_async16(dst + r * KSTEP * 128, src + KSTEP * r * stride, true);
        } else {
#pragma unroll
            for (int r = 0; r < KROWS; r++) {
                const int kj = k0 + lj + KSTEP * r;
                const bool first = kj < p.Lk, valid = kj < total;
                const int64_t off = first ? (int64_t)kj * p.kv_stride + ld : valid ? (int64_t)(kj - p.Lk) * p.kv2_stride + ld : ld;
                cp_async16(dst + r * KSTEP * 128, (first || !valid ? base : base2) + off, valid);
            }
        }
    };
    auto kdesc = [&](int slot, int kc) { return smem_desc_sw128(ktile(slot) + 32 * kc); };    // Kᵀ, dims 16kc ..
    auto vdesc = [&](int slot, int kc) { return smem_desc_sw128(vtile(slot) + 2048 * kc); };  // V, keys 16kc ..
    auto qdesc = [&](int kc) { return smem_desc_sw128(qtile + 32 * kc); };

    // Q: as a tile like K's (rows past Lq zero-filled), copied with the first K tile; or as four
    // A fragments in registers (dims 16kc .. + 15; rows past Lq zeros).
    if (QS) {
        const bf16* q = (const bf16*)p.q + ((int64_t)b * p.Lq) * p.q_stride + h * HEAD_DIM + ld;
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int row = qblk * 64 + lj + 16 * r;
            cp_async16(qtile + (lj + 16 * r) * 128 + swz, q + (int64_t)min(row, p.Lq - 1) * p.q_stride, row < p.Lq);
        }
    }
    const int last_key = p.causal ? min(total, (qblk + 1) * 64 * WG) : total;
    const int tiles_n = (last_key + WG_KT - 1) / WG_KT;
    // This block's tiles: all of them, or its range's (empty for a range past a causal row's
    // last key: its O is zeros, its maxima −∞).
    const int tile_begin = SPLIT ? min(tiles_n, range * p.split_tiles) : 0;
    const int tile_end = SPLIT ? min(tiles_n, tile_begin + p.split_tiles) : tiles_n;
    // TMA: keys [k0, k0 + 64) of K and V into a slot, from the key source that holds them (a
    // second source starts on a tile), announced on the slot's barrier. One thread.
    // CLUSTERED: this block's share only (its operand, or its half of one), into every block of
    // the cluster (the barrier still expects both whole tiles).
    const unsigned rank = CLUSTERED ? cluster_ctarank() : 0;
    auto tma_tile = [&](int slot, int k0) {
        mbar_arrive_expect_tx(&kv_full[slot], 2 * WG_TILE);
        const bool first = k0 < p.Lk;
        const int row = first ? k0 : k0 - p.Lk;
        if (CLUSTERED) {
            // Pairs: rank 0 K, rank 1 V, whole. Trios and quads: the tile's four halves (K's first
            // and second 32 keys, then V's), half q copied by rank q % CL.
            constexpr int PARTS = CL == 2 ? 2 : 4;
            auto copy_part = [&](unsigned part) {
                const bool k = part < PARTS / 2u;
                const int half = PARTS == 4 ? part & 1 : 0;
                const TensorMap* map = k ? (first ? &tq->k_map : &tq->k2_map) : (first ? &tq->v_map : &tq->v2_map);
                const int col = k ? (first ? tq->k_col : tq->k2_col) : (first ? tq->v_col : tq->v2_col);
                tma_load_3d_multicast((k ? ktile(slot) : vtile(slot)) + half * (WG_TILE / 2), map, col + h * HEAD_DIM, row + half * (WG_KT / 2),
                                      b, &kv_full[slot], (1u << CL) - 1);
            };
            copy_part(rank);
            if (CL == 3 && rank == 0) copy_part(3);
            return;
        }
        tma_load_3d(ktile(slot), first ? &tq->k_map : &tq->k2_map, (first ? tq->k_col : tq->k2_col) + h * HEAD_DIM, row, b, &kv_full[slot]);
        tma_load_3d(vtile(slot), first ? &tq->v_map : &tq->v2_map, (first ? tq->v_col : tq->v2_col) + h * HEAD_DIM, row, b, &kv_full[slot]);
    };
    if (TMA) {
        if (threadIdx.x == 0) {
            mbar_init(&kv_full[0], 1);
            mbar_init(&kv_full[1], 1);
            if (CLUSTERED) {
                mbar_init(&kv_empty[0], CL);
                mbar_init(&kv_empty[1], CL);
            }
            mbar_init_fence();
        }
    } else {
        copy_tile(ktile(0), kbase, kbase2, tile_begin * WG_KT);
        copy_tile(vtile(0), vbase, vbase2, tile_begin * WG_KT);
    }
    cp_async_commit();
    uint32_t qa[HEAD_DIM / 16][4];
    if (!QS) {
        const bf16* q = (const bf16*)p.q + ((int64_t)b * p.Lq) * p.q_stride + h * HEAD_DIM;
        const int r0 = q0 + g, r1 = r0 + 8;
#pragma unroll
        for (int kc = 0; kc < HEAD_DIM / 16; kc++) {
            const int d0 = kc * 16 + 2 * t, d1 = d0 + 8;
            qa[kc][0] = r0 < p.Lq ? *(const uint32_t*)(q + (int64_t)r0 * p.q_stride + d0) : 0u;
            qa[kc][1] = r1 < p.Lq ? *(const uint32_t*)(q + (int64_t)r1 * p.q_stride + d0) : 0u;
            qa[kc][2] = r0 < p.Lq ? *(const uint32_t*)(q + (int64_t)r0 * p.q_stride + d1) : 0u;
            qa[kc][3] = r1 < p.Lq ? *(const uint32_t*)(q + (int64_t)r1 * p.q_stride + d1) : 0u;
        }
    }
    float o[32], lsum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 32; i++) o[i] = 0.f;
    WgRows rows = {-INFINITY, -INFINITY, 0.f, 0.f};
    // S = Q·Kᵀ for the tile in K slot `slot`: 64 queries × 64 keys (s[32]) or the narrow last
    // tile's 32 or 16 (s[16], s[8]), 16 dims per product.
    auto issue_s = [&](auto& s, int slot) {
#pragma unroll
        for (int kc = 0; kc < HEAD_DIM / 16; kc++) {
            if (QS)
                wg_s_product(s, qdesc(kc), kdesc(slot, kc), kc > 0);
            else
                wg_s_product(s, qa[kc], kdesc(slot, kc), kc > 0);
        }
        wgmma_commit();
    };
    // O += P·V for the tile in V slot `slot`: 16 keys per product, one per fragment of P.
    // Lean: the rows' sums too, P times ones, in the same group.
    auto issue_pv = [&](auto& pa, int slot) {
        constexpr int KC = sizeof(pa) / sizeof(pa[0]);
#pragma unroll
        for (int kc = 0; kc < KC; kc++) wgmma_m64n64k16_bf16<1>(o, pa[kc], vdesc(slot, kc), true);
        if (tc_sums) {
#pragma unroll
            for (int kc = 0; kc < KC; kc++) wgmma_m64n8k16_bf16(lsum, pa[kc], smem_desc_sw128(ones), true);
        }
        wgmma_commit();
    };

    const float* key_mask = p.key_mask ? p.key_mask + (int64_t)b * p.Lk : nullptr;
    float c0, c1;
    // Keys in the last tile (1 to 64): with p.narrow_tail, that tile's products and softmax are
    // 32 or 16 keys wide when its keys fit (Stage C's 661 keys end in 21, Stage B's 1028 and 260
    // in 4, CLIP's 77 in 13), instead of 64 with the rest masked; 32 at least with Q in shared
    // memory and cp.async copies (a third version of the tile's work spills there).
    const int tail_keys = p.narrow_tail ? last_key - (tiles_n - 1) * WG_KT : WG_KT;
    if (TMA) {
        // Q (with QS) and the ones, to the tensor cores; the barriers' initialisation, to every
        // thread; then the first tile's copies.
        cp_async_wait<0>();
        fence_proxy_async_shared();
        __syncthreads();
        if (CLUSTERED) {
            // The other blocks' barriers are initialised before this block's copies reach them.
            cluster_arrive();
            cluster_wait();
        }
        if (threadIdx.x == 0 && tile_begin < tile_end) tma_tile(0, tile_begin * WG_KT);
    }
    // CLUSTERED: the block past the last query copies and waits, and computes nothing.
    const bool idle = CLUSTERED && qblk * 64 >= p.Lq;
    for (int tile = tile_begin; tile < tile_end; tile++) {
        const int slot = (tile - tile_begin) & 1, k0 = tile * WG_KT;
        if (TMA) {
            // The other slot was freed by the barrier that ended the previous tile (CLUSTERED: in
            // every block, its `empty` phase of that tile): the next tile's copies go now, under
            // this tile's products and softmax.
            if (threadIdx.x == 0 && tile + 1 < tile_end) {
                if (CLUSTERED && tile > tile_begin) mbar_wait(&kv_empty[slot ^ 1], ((tile - 1 - tile_begin) >> 1) & 1);
                tma_tile(slot ^ 1, k0 + WG_KT);
            }
            mbar_wait(&kv_full[slot], ((tile - tile_begin) >> 1) & 1);
        } else if (tile + 1 < tile_end) {
            copy_tile(ktile(slot ^ 1), kbase, kbase2, k0 + WG_KT);
            copy_tile(vtile(slot ^ 1), vbase, vbase2, k0 + WG_KT);
            cp_async_commit();
            cp_async_wait<1>();  // this tile's group has landed
        } else {
            cp_async_wait<0>();
        }
        if (!TMA) {
            fence_proxy_async_shared();
            __syncthreads();
        }
        // The tile's products and softmax, S and P sized for its keys.
        auto work = [&](auto& s, auto& pa) {
            wgmma_fence();
            issue_s(s, slot);
            wgmma_wait<0>();
            wgmma_fence_operands(s);
            wg_softmax(p, s, k0, q0 + g, key_mask, scale, rows, c0, c1, pa, tc_sums);
            wg_rescale(p, o, lsum, tc_sums, c0, c1);
            wgmma_fence_operands(o);
            wgmma_fence_operands(lsum);
            wgmma_fence();
            issue_pv(pa, slot);
            wgmma_wait<0>();
            wgmma_fence_operands(o);
            wgmma_fence_operands(lsum);
        };
        if (idle) {
        } else if (tile + 1 < tiles_n || tail_keys > 32) {
            float s[32];
            uint32_t pa[4][4];
            work(s, pa);
        } else if (tail_keys > 16 || (QS && !TMA)) {
            float s[16];
            uint32_t pa[2][4];
            work(s, pa);
        } else {
            float s[8];
            uint32_t pa[1][4];
            work(s, pa);
        }
        __syncthreads();  // this slot is read: the next tile may refill it
        if (CLUSTERED && threadIdx.x == 0) {
            // ... in every block: this block's reads of it come before these arrivals.
            mbar_arrive(&kv_empty[slot]);
#pragma unroll
            for (unsigned r = 1; r < CL; r++) mbar_arrive_cluster(&kv_empty[slot], (rank + r) % CL);
        }
    }
    if (CLUSTERED) {
        // No block ends while another may still copy into it or arrive on its barriers.
        cluster_arrive();
        cluster_wait();
    }

    if (tile_begin == tile_end) cp_async_wait<0>();  // no keys at all: nothing was waited for (the output is zeros)

    // The rows' sums over their four lanes (lean: whole on every lane), then O / l as bf16 pairs.
    if (tc_sums) {
        rows.l0 = lsum[0];
        rows.l1 = lsum[2];
    } else {
        for (int off = 1; off < 4; off <<= 1) {
            rows.l0 += __shfl_xor_sync(0xffffffff, rows.l0, off);
            rows.l1 += __shfl_xor_sync(0xffffffff, rows.l1, off);
        }
    }
    if (SPLIT && splits > 1) {
        // This range's O, maxima and sums, as 9 float4 per thread (coalesced: j · THREADS +
        // thread); then, in the last range to arrive, the merge.
        float4* const part = (float4*)p.partial;
        const int64_t qb = ((int64_t)b * p.H + h) * (gridDim.x / splits) + qblk;  // the query block among all
        float4* const mine = part + (qb * splits + range) * (9 * THREADS);
#pragma unroll
        for (int j = 0; j < 8; j++) mine[j * THREADS + threadIdx.x] = make_float4(o[4 * j], o[4 * j + 1], o[4 * j + 2], o[4 * j + 3]);
        mine[8 * THREADS + threadIdx.x] = make_float4(rows.m0, rows.m1, rows.l0, rows.l1);
        __shared__ bool last;
        if (!block_arrived_last(p.counters + qb, splits, &last)) return;
        // Every range's maxima, the overall maxima, then each range's O and sums rescaled to them
        // and added in range order (this block's own range read back too: the same sums in the
        // same order whichever block is last, and O's registers free to hold the total).
        const float4* const ranges = part + qb * splits * (9 * THREADS) + threadIdx.x;
        float m0 = -INFINITY, m1 = -INFINITY;
        for (int r = 0; r < splits; r++) {
            const float4 ml = __ldcg(&ranges[(r * 9 + 8) * THREADS]);
            m0 = fmaxf(m0, ml.x);
            m1 = fmaxf(m1, ml.y);
        }
        const float b0 = m0 == -INFINITY ? 0.f : m0 * scale, b1 = m1 == -INFINITY ? 0.f : m1 * scale;
#pragma unroll
        for (int i = 0; i < 32; i++) o[i] = 0.f;
        rows.l0 = rows.l1 = 0.f;
        for (int r = 0; r < splits; r++) {
            float4 v[8];
#pragma unroll
            for (int j = 0; j < 8; j++) v[j] = __ldcg(&ranges[(r * 9 + j) * THREADS]);
            const float4 ml = __ldcg(&ranges[(r * 9 + 8) * THREADS]);
            // A range with no visible key for a row has O = 0 and l = 0: factor 0 (not NaN).
            const float f0 = ml.x == -INFINITY ? 0.f : ex2_approx(fmaf(ml.x, scale, -b0));
            const float f1 = ml.y == -INFINITY ? 0.f : ex2_approx(fmaf(ml.y, scale, -b1));
            rows.l0 = fmaf(ml.z, f0, rows.l0);
            rows.l1 = fmaf(ml.w, f1, rows.l1);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                // o[4j], o[4j + 1]: row g; o[4j + 2], o[4j + 3]: row g + 8.
                o[4 * j] = fmaf(v[j].x, f0, o[4 * j]);
                o[4 * j + 1] = fmaf(v[j].y, f0, o[4 * j + 1]);
                o[4 * j + 2] = fmaf(v[j].z, f1, o[4 * j + 2]);
                o[4 * j + 3] = fmaf(v[j].w, f1, o[4 * j + 3]);
            }
        }
    }
    const float i0 = rows.l0 > 0.f ? 1.f / rows.l0 : 0.f, i1 = rows.l1 > 0.f ? 1.f / rows.l1 : 0.f;
    const int r0 = q0 + g, r1 = r0 + 8;
    bf16* out = (bf16*)p.o + ((int64_t)b * p.Lq) * p.o_stride + h * HEAD_DIM;
#pragma unroll
    for (int nd = 0; nd < HEAD_DIM / 8; nd++) {
        const int d = nd * 8 + 2 * t;
        if (r0 < p.Lq) *(uint32_t*)(out + (int64_t)r0 * p.o_stride + d) = pack_bf16x2(o[4 * nd] * i0, o[4 * nd + 1] * i0);
        if (r1 < p.Lq) *(uint32_t*)(out + (int64_t)r1 * p.o_stride + d) = pack_bf16x2(o[4 * nd + 2] * i1, o[4 * nd + 3] * i1);
    }
}
#endif

// Every wgmma entry point below: only the sm_90a image (and the emulator) has a body.
template <bool QS, bool SPLIT, int WG = 1> __device__ __forceinline__ void attention_wgmma_entry(const AttentionParams& p) {
    pdl_enter();
#ifdef CASCADE_WGMMA
    attention_wgmma_body<QS, SPLIT, WG>(p);
#endif
}

// 64 queries per block of one warpgroup; up to four blocks per SM (at most 128 registers, 33 KiB
// of shared memory each). Only the sm_90a image has a body: the launcher uses it on compute
// capability 9.0 only, after its start-up check, by default (CASCADE_ATTENTION_WGMMA=0 leaves it
// out). Measured on an H200: 218–222 TFLOP/s on Stage C's and Stage B's level-2 shapes, against
// 155–159 for the mma.sync kernel.
extern "C" __global__ void __launch_bounds__(128, 4) attention_wgmma_bf16(AttentionParams p) { attention_wgmma_entry<false, false>(p); }
// The same two with K and V copied by TMA (AttentionTmaParams; opt-in until measured:
// CASCADE_ATTENTION_COPY=tma, or timed under CASCADE_KERNEL_TUNE).
template <bool QS, bool SPLIT = false, int CL = 1> __device__ __forceinline__ void attention_wgmma_tma_entry(const AttentionTmaParams& q) {
    pdl_enter();
#ifdef CASCADE_WGMMA
    attention_wgmma_body<QS, SPLIT, 1, true, CL>(q.p, &q);
#endif
}
extern "C" __global__ void __launch_bounds__(128, 4) attention_wgmma_tma_bf16(const __grid_constant__ AttentionTmaParams q) {
    attention_wgmma_tma_entry<false>(q);
}
extern "C" __global__ void __launch_bounds__(128, 5) attention_wgmma_qs_tma_bf16(const __grid_constant__ AttentionTmaParams q) {
    attention_wgmma_tma_entry<true>(q);
}
// ... in clusters of two neighbouring query blocks of one head, each block copying one of a
// tile's two operands into both (CL above; opt-in until measured: CASCADE_ATTENTION_COPY=pair).
// Half the K and V traffic from L2 of the two above: whether that traffic bounds the kernel.
extern "C" __global__ void __launch_bounds__(128, 4) attention_wgmma_pair_tma_bf16(const __grid_constant__ AttentionTmaParams q) {
    attention_wgmma_tma_entry<false, false, 2>(q);
}
extern "C" __global__ void __launch_bounds__(128, 5) attention_wgmma_qs_pair_tma_bf16(const __grid_constant__ AttentionTmaParams q) {
    attention_wgmma_tma_entry<true, false, 2>(q);
}
// ... and in clusters of three and of four, the blocks sharing out a tile's four half operands
// (32 keys each) into all of them (opt-in until measured: CASCADE_ATTENTION_COPY=cluster takes
// the size that fits a head's query blocks best: trios for Stage C's 9, quads for Stage B's 16
// and 4). A third and a quarter of the traffic: how far the pairs' gain goes, and for Stage C
// without the pairs' block past the queries.
extern "C" __global__ void __launch_bounds__(128, 4) attention_wgmma_trio_tma_bf16(const __grid_constant__ AttentionTmaParams q) {
    attention_wgmma_tma_entry<false, false, 3>(q);
}
extern "C" __global__ void __launch_bounds__(128, 5) attention_wgmma_qs_trio_tma_bf16(const __grid_constant__ AttentionTmaParams q) {
    attention_wgmma_tma_entry<true, false, 3>(q);
}
extern "C" __global__ void __launch_bounds__(128, 4) attention_wgmma_quad_tma_bf16(const __grid_constant__ AttentionTmaParams q) {
    attention_wgmma_tma_entry<false, false, 4>(q);
}
extern "C" __global__ void __launch_bounds__(128, 5) attention_wgmma_qs_quad_tma_bf16(const __grid_constant__ AttentionTmaParams q) {
    attention_wgmma_tma_entry<true, false, 4>(q);
}
// ... and the split-key versions (both switches, or timed under CASCADE_KERNEL_TUNE).
extern "C" __global__ void __launch_bounds__(128, 4) attention_wgmma_split_tma_bf16(const __grid_constant__ AttentionTmaParams q) {
    attention_wgmma_tma_entry<false, true>(q);
}
extern "C" __global__ void __launch_bounds__(128, 5) attention_wgmma_qs_split_tma_bf16(const __grid_constant__ AttentionTmaParams q) {
    attention_wgmma_tma_entry<true, true>(q);
}
// Q from shared memory as well: five blocks per SM (at most 96 registers and 41 KiB of shared
// memory each), so that Stage C's 576 blocks are one wave of 660 places instead of 1.09 waves of
// 528. The launcher's one-wave rule picks between the two; measured on an H200, Stage C 26.2
// against 28.7 µs, and the two tie where both fit one wave.
extern "C" __global__ void __launch_bounds__(128, 5) attention_wgmma_qs_bf16(AttentionParams p) { attention_wgmma_entry<true, false>(p); }
// The first two kernels above with the keys split into ranges (p.splits, p.split_tiles), each range a
// block of its own, merged by the last to finish (src/ops/attention.rs picks the split where a
// grid would leave SMs short of blocks). Not measured yet: chosen only with
// CASCADE_ATTENTION_SPLIT=1 (docs/performance.md, fourteenth session).
extern "C" __global__ void __launch_bounds__(128, 4) attention_wgmma_split_bf16(AttentionParams p) { attention_wgmma_entry<false, true>(p); }
extern "C" __global__ void __launch_bounds__(128, 5) attention_wgmma_qs_split_bf16(AttentionParams p) { attention_wgmma_entry<true, true>(p); }
// Two warpgroups per block (128 queries, 256 threads), both reading each K and V tile: half the
// copies from L2 per query. At most 128 registers, two blocks per SM. Not measured yet: chosen
// only with CASCADE_ATTENTION=wgmma2 (docs/performance.md, fourteenth session).
extern "C" __global__ void __launch_bounds__(256, 2) attention_wgmma2_bf16(AttentionParams p) { attention_wgmma_entry<false, false, 2>(p); }
// The same with the keys split into ranges as in attention_wgmma_split_bf16 (per block of 128
// queries). Not measured yet: chosen only with CASCADE_ATTENTION=wgmma2 and
// CASCADE_ATTENTION_SPLIT=N.
extern "C" __global__ void __launch_bounds__(256, 2) attention_wgmma2_split_bf16(AttentionParams p) { attention_wgmma_entry<false, true, 2>(p); }
