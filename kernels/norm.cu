// Normalisations: LayerNorm over channels of token-major rows, and GlobalResponseNorm in
// four steps (chunked sums of squares, optionally after GELU; their total; per-sample scale;
// apply). Statistics in f32.
#include "common.cuh"

// One block (or, for short rows, one warp) per row, in one of two ways (the launcher's vec8
// flag). With vec8 the row is held
// in registers, eight channels per vector, up to LN_MAX_VECS vectors per thread (C ≤ 8192 at
// 256 threads): 16-byte loads and stores, no shared-memory staging. Otherwise it is staged in
// shared memory as f32 (dynamic smem: C floats). Either way the variance is the exact two-pass
// one, not E[x^2] - E[x]^2; the two paths sum in different orders.
#define LN_MAX_VECS 4
// Rows of up to 2048 channels (the launcher's choice) go one warp per row, blockDim.y rows per
// block (blockDim.x = 32): the sums are warp shuffles, with no block barrier, and a block moves
// several rows instead of one short one (Stage A's 384- and 192-channel rows: one row per 64-thread
// block left the launch bound by block turnover, not by memory). Up to 1024 channels the kernels
// below take them (4 vectors per lane); from 1025 to 2048 the layer_norm_warp_* kernels (8).
#define LN_WARP_MAX_VECS 8
__device__ __forceinline__ float row_sum(float v, float* scratch) {
    if (blockDim.x != 32) return block_sum(v, scratch);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
// TO is y's type (and the affine parameters'): T, or bf16 for an f32 residual stream (T = f32),
// whose LayerNorm is of the stream's bf16 copy: the values are rounded to TO before the
// statistics, exactly as a cast followed by a bf16 LayerNorm (x_out keeps the f32 values).
template <typename T, typename TO = T, int MAXV = LN_MAX_VECS>
__device__ void layer_norm_vec8(const LayerNormParams& p, float* scratch, bool stats_only = false) {
    const int cv = p.C / 8;
    const int64_t r = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
    if (r >= p.rows) return;  // a warp-per-row block's last rows (no block barrier in that mode)
    const T* x = (const T*)p.x + r * p.C;
    TO* y = (TO*)p.y + r * p.C;
    const T* a = p.ab ? (const T*)p.ab + (r / p.rows_per_sample) * p.ab_stride : nullptr;
    T* xo = p.ab ? (T*)p.x_out + r * p.C : nullptr;
    // Every vector of the row is loaded before any is used: one round trip to memory per row.
    // (With each load behind its own bounds check and followed by its use, ptxas issued them one
    // round trip after another; a branch between loads, with no use of them, is no such wait.)
    Raw8<T> raw[MAXV];
    #pragma unroll
    for (int k = 0; k < MAXV; k++)
        if ((int)(threadIdx.x + k * blockDim.x) < cv) raw[k].load(x + 8 * (threadIdx.x + k * blockDim.x));
    float v[MAXV][8];
    float s = 0.f;
    #pragma unroll
    for (int k = 0; k < MAXV; k++) {
        const int c8 = threadIdx.x + k * blockDim.x;
        if (c8 >= cv) continue;
        raw[k].unpack(v[k]);
        if (a) {
            // Each thread rewrites only the elements it read (all loaded above), so x_out may be
            // x. The terms come through the read-only path, so they need not wait for the stores.
            float am[8], as[8];
            ldg8(a + 8 * c8, am);
            ldg8(a + p.C + 8 * c8, as);
            for (int j = 0; j < 8; j++) v[k][j] = rounded<T>(v[k][j] * (1.f + am[j]) + as[j]);
            store8(xo + 8 * c8, v[k]);
        }
        for (int j = 0; j < 8; j++) v[k][j] = rounded<TO>(v[k][j]);  // a no-op when TO is T
        for (int j = 0; j < 8; j++) s += v[k][j];
    }
    const float mean = row_sum(s, scratch) / p.C;
    float q = 0.f;
    for (int k = 0; k < MAXV; k++) {
        if ((int)(threadIdx.x + k * blockDim.x) >= cv) continue;
        for (int j = 0; j < 8; j++) {
            const float d = v[k][j] - mean;
            q += d * d;
        }
    }
    const float rstd = rsqrtf(row_sum(q, scratch) / p.C + p.eps);
    if (stats_only) {
        if (threadIdx.x == 0) {
            ((float*)p.y)[2 * r] = mean;
            ((float*)p.y)[2 * r + 1] = rstd;
        }
        return;
    }
    const TO* w = (const TO*)p.weight;
    const TO* b = (const TO*)p.bias;
    for (int k = 0; k < MAXV; k++) {
        const int c8 = threadIdx.x + k * blockDim.x;
        if (c8 >= cv) continue;
        float o[8], e[8];
        for (int j = 0; j < 8; j++) o[j] = (v[k][j] - mean) * rstd;
        if (w) {
            ldg8(w + 8 * c8, e);
            for (int j = 0; j < 8; j++) o[j] *= e[j];
        }
        if (b) {
            ldg8(b + 8 * c8, e);
            for (int j = 0; j < 8; j++) o[j] += e[j];
        }
        store8(y + 8 * c8, o);
    }
}

template <typename T, typename TO = T> __device__ void layer_norm_impl(const LayerNormParams& p) {
    extern __shared__ float row[];
    __shared__ float scratch[32];
    if (p.vec8) {
        layer_norm_vec8<T, TO>(p, scratch);
        return;
    }
    int64_t r = blockIdx.x;
    const T* x = (const T*)p.x + r * p.C;
    TO* y = (TO*)p.y + r * p.C;
    if (p.ab) {
        // Each thread rewrites only the elements it read, so x_out may be x.
        const T* a = (const T*)p.ab + (r / p.rows_per_sample) * p.ab_stride;
        T* xo = (T*)p.x_out + r * p.C;
        for (int c = threadIdx.x; c < p.C; c += blockDim.x) {
            const T v = from_f32<T>(to_f32(x[c]) * (1.f + to_f32(a[c])) + to_f32(a[p.C + c]));
            xo[c] = v;
            row[c] = rounded<TO>(to_f32(v));
        }
    } else {
        for (int c = threadIdx.x; c < p.C; c += blockDim.x) row[c] = rounded<TO>(to_f32(x[c]));
    }
    float mean, rstd;
    row_mean_rstd(row, p.C, p.eps, scratch, mean, rstd);
    const TO* w = (const TO*)p.weight;
    const TO* b = (const TO*)p.bias;
    for (int c = threadIdx.x; c < p.C; c += blockDim.x) {
        float v = (row[c] - mean) * rstd;
        if (w) v *= to_f32(w[c]);
        if (b) v += to_f32(b[c]);
        y[c] = from_f32<TO>(v);
    }
}
template <typename T> __device__ void row_stats_impl(const LayerNormParams& p) {
    extern __shared__ float row[];
    __shared__ float scratch[32];
    if (p.vec8) {
        layer_norm_vec8<T>(p, scratch, true);
        return;
    }
    int64_t r = blockIdx.x;
    const T* x = (const T*)p.x + r * p.C;
    for (int c = threadIdx.x; c < p.C; c += blockDim.x) row[c] = to_f32(x[c]);
    float mean, rstd;
    row_mean_rstd(row, p.C, p.eps, scratch, mean, rstd);
    if (threadIdx.x == 0) {
        ((float*)p.y)[2 * r] = mean;
        ((float*)p.y)[2 * r + 1] = rstd;
    }
}
extern "C" __global__ void row_stats_f32(LayerNormParams p) { pdl_enter(); row_stats_impl<float>(p); }
extern "C" __global__ void row_stats_bf16(LayerNormParams p) { pdl_enter(); row_stats_impl<bf16>(p); }
extern "C" __global__ void layer_norm_f32(LayerNormParams p) { pdl_enter(); layer_norm_impl<float>(p); }
extern "C" __global__ void layer_norm_bf16(LayerNormParams p) { pdl_enter(); layer_norm_impl<bf16>(p); }
// An f32 residual stream (modulated in place when ab is set) normalised into bf16.
extern "C" __global__ void layer_norm_f32_bf16(LayerNormParams p) { pdl_enter(); layer_norm_impl<float, bf16>(p); }
// Rows of 1025 to 2048 channels one warp each (vec8 launches only; see LN_WARP_MAX_VECS).
extern "C" __global__ void layer_norm_warp_f32(LayerNormParams p) {
    pdl_enter();
    __shared__ float scratch[32];
    layer_norm_vec8<float, float, LN_WARP_MAX_VECS>(p, scratch);
}
extern "C" __global__ void layer_norm_warp_bf16(LayerNormParams p) {
    pdl_enter();
    __shared__ float scratch[32];
    layer_norm_vec8<bf16, bf16, LN_WARP_MAX_VECS>(p, scratch);
}
extern "C" __global__ void layer_norm_warp_f32_bf16(LayerNormParams p) {
    pdl_enter();
    __shared__ float scratch[32];
    layer_norm_vec8<float, bf16, LN_WARP_MAX_VECS>(p, scratch);
}

// Block (32, 8) per (channel group, chunk of chunk_rows positions, sample). With vec8
// (D a multiple of 8, x and y 16-byte aligned) each thread takes 8 consecutive channels (one
// 16-byte load per position), so a group is 256 channels; otherwise two channels 32 apart, a
// group of 64. Either way each warp load covers consecutive channels and each thread takes every
// 8th position of the chunk, then the 8 partial sums per channel are added in shared memory.
// Many chunks keep the GPU busy when B·D is small (Stage B's first level: 1 × 1280 channels over
// 16384 positions). The counters only decide which block finishes the statistics (the last to
// arrive, so every sum it reads is written); every sum is added in a fixed order, so results are
// deterministic.
#define GRN_MAX_PER_THREAD 8
// Each thread of a (32, 8) block holds sums s[0..K) for its K channels (at channel offsets
// off[k] within the group); returns the totals over the block's 8 rows, added in row order.
template <int K>
__device__ __forceinline__ void grn_rows_total(float (*part)[32 * GRN_MAX_PER_THREAD + 1], const float s[K], const int off[K], float total[K]) {
    __syncthreads();  // part may still be read from a previous call
    for (int k = 0; k < K; k++) part[threadIdx.y][off[k]] = s[k];
    __syncthreads();
    for (int k = 0; k < K; k++) {
        total[k] = 0.f;
        for (int r = 0; r < (int)blockDim.y; r++) total[k] += part[r][off[k]];
    }
}

// The sums of squares of one (chunk, channel group) and, for the last blocks to arrive, the
// statistics. K channels per thread at group offsets off[k]: K = 8 consecutive (vec8) or 2.
// Rows per batch of loads in grn_partial: a thread issues GRN_BATCH loads before it uses any of
// them (loads in flight, not one at a time), and the serial reductions read GRN_BATCH values
// ahead. Sums are still added in the same fixed order.
#define GRN_BATCH 4
template <typename T, int K> __device__ void grn_partial_k(const GrnPartialParams& p, const int off[K]) {
    __shared__ float part[8][32 * GRN_MAX_PER_THREAD + 1];
    __shared__ float scratch[8];
    __shared__ bool last;
    const int lane = threadIdx.x, ry = threadIdx.y, tid = ry * 32 + lane;
    const int c = blockIdx.y, b = blockIdx.z, groups = gridDim.x;
    const int g0 = blockIdx.x * 32 * K;  // the group's first channel
    const T* x = (const T*)p.x;
    T* y = (T*)p.y;
    float s[K], total[K];
    for (int k = 0; k < K; k++) s[k] = 0.f;
    bool in[K];  // which of this thread's channels exist
    for (int k = 0; k < K; k++) in[k] = g0 + off[k] < p.D;
    // One row's K values: GELU applied (and stored) when asked, then squared into s.
    auto add_row = [&](int64_t row, float v[K]) {
        if (p.gelu) {
            for (int k = 0; k < K; k++) v[k] = rounded<T>(gelu_as<T>(v[k]));
            if (y) {
                if (K == 8) store8(y + row + g0 + off[0], v);
                else
                    for (int k = 0; k < K; k++)
                        if (in[k]) y[row + g0 + off[k]] = from_f32<T>(v[k]);
            }
        }
        for (int k = 0; k < K; k++) s[k] += v[k] * v[k];
    };
    auto load_row = [&](int64_t row, float v[K]) {
        if (K == 8) load8(x + row + g0 + off[0], v);
        else
            for (int k = 0; k < K; k++) v[k] = in[k] ? to_f32(x[row + g0 + off[k]]) : 0.f;
    };
    const int n_end = min(p.N, (c + 1) * p.chunk_rows);
    // Every batch, the last one too, issues all its loads before it uses any: a chunk's rows
    // that are not a multiple of the batch end in a partial batch (its missing rows predicated
    // off), not in rows loaded one round trip at a time (Stage B's level 2, 7 rows per thread:
    // two round trips instead of four). Rows are added in the same order either way, so the
    // results are bit-identical. batched_remainder = 0 keeps the earlier schedule (full batches,
    // then one row at a time) for A/B measurements.
    int n = c * p.chunk_rows + ry;
    if ((K != 8 || in[0]) && !p.batched_remainder) {
        for (; n + (GRN_BATCH - 1) * 8 < n_end; n += GRN_BATCH * 8) {
            float v[GRN_BATCH][K];
            #pragma unroll
            for (int u = 0; u < GRN_BATCH; u++) load_row(((int64_t)b * p.N + n + 8 * u) * p.D, v[u]);
            #pragma unroll
            for (int u = 0; u < GRN_BATCH; u++) add_row(((int64_t)b * p.N + n + 8 * u) * p.D, v[u]);
        }
    }
    // Rows per remaining batch: GRN_BATCH, or 1 for the earlier schedule.
    const int width = p.batched_remainder ? GRN_BATCH : 1;
    if (K != 8 || in[0]) {
        for (; n < n_end; n += width * 8) {
            float v[GRN_BATCH][K];
            #pragma unroll
            for (int u = 0; u < GRN_BATCH; u++)
                if (u < width && n + 8 * u < n_end) load_row(((int64_t)b * p.N + n + 8 * u) * p.D, v[u]);
            #pragma unroll
            for (int u = 0; u < GRN_BATCH; u++)
                if (u < width && n + 8 * u < n_end) add_row(((int64_t)b * p.N + n + 8 * u) * p.D, v[u]);
        }
    }
    grn_rows_total<K>(part, s, off, total);
    for (int k = 0; k < K && ry == 0; k++)
        if (in[k]) p.part[((int64_t)b * p.chunks + c) * p.D + g0 + off[k]] = total[k];

    // Last chunk of this (sample, channel group) to finish: the group's norms, from every 8th
    // chunk per thread (read through L2: other blocks wrote them). This block is the critical
    // path now (every other block of the group has finished): the chunk sums in batches with all
    // loads in flight, the last batch predicated as above (Stage B's level 2, 19 chunks: one
    // round trip instead of three).
    if (!block_arrived_last(p.counters + (int64_t)b * groups + blockIdx.x, p.chunks, &last)) return;
    for (int k = 0; k < K; k++) s[k] = 0.f;
    const float* pb = p.part + (int64_t)b * p.chunks * p.D + g0;
    int ch = ry;
    if (!p.batched_remainder)
        for (; ch + (GRN_BATCH - 1) * 8 < p.chunks; ch += GRN_BATCH * 8) {
            float t[GRN_BATCH][K];
            #pragma unroll
            for (int u = 0; u < GRN_BATCH; u++)
                for (int k = 0; k < K; k++) t[u][k] = in[k] ? __ldcg(&pb[(int64_t)(ch + 8 * u) * p.D + off[k]]) : 0.f;
            #pragma unroll
            for (int u = 0; u < GRN_BATCH; u++)
                for (int k = 0; k < K; k++) s[k] += t[u][k];
        }
    for (; ch < p.chunks; ch += width * 8) {
        float t[GRN_BATCH][K];
        #pragma unroll
        for (int u = 0; u < GRN_BATCH; u++)
            for (int k = 0; k < K; k++)
                t[u][k] = in[k] && u < width && ch + 8 * u < p.chunks ? __ldcg(&pb[(int64_t)(ch + 8 * u) * p.D + off[k]]) : 0.f;
        #pragma unroll
        for (int u = 0; u < GRN_BATCH; u++)
            for (int k = 0; k < K; k++) s[k] += t[u][k];
    }
    grn_rows_total<K>(part, s, off, total);
    if (ry == 0) {
        // The norms, and their sum over the group (lanes in a fixed butterfly order).
        float gsum = 0.f;
        for (int k = 0; k < K; k++)
            if (in[k]) {
                const float norm = sqrtf(total[k]);
                p.scale[(int64_t)b * p.D + g0 + off[k]] = norm;
                gsum += norm;
            }
        for (int o = 16; o > 0; o >>= 1) gsum += __shfl_xor_sync(0xffffffff, gsum, o);
        if (lane == 0) p.group_sums[(int64_t)b * groups + blockIdx.x] = gsum;
    }

    // Last channel group of this sample to finish: mean of the norms, then the factor.
    if (!block_arrived_last(p.counters + (int64_t)p.B * groups + b, groups, &last)) return;
    float* g = p.scale + (int64_t)b * p.D;
    const T* gamma = (const T*)p.gamma;
    // GRN's denominator, the mean of the sample's norms + 1e-6, from each thread's partial sum.
    auto denominator = [&](float t) {
        for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffff, t, o);
        if (lane == 0) scratch[ry] = t;
        __syncthreads();
        float sum = 0.f;
        for (int k = 0; k < 8; k++) sum += scratch[k];
        return sum / p.D + 1e-6f;
    };
    float t = 0.f;
    int d = tid;
    if (p.short_tail) {
        // The groups' sums: one load per thread instead of a pass over the D norms.
        for (int i = tid; i < groups; i += 256) t += __ldcg(&p.group_sums[(int64_t)b * groups + i]);
    } else {
        for (; d + (2 * GRN_BATCH - 1) * 256 < p.D; d += 2 * GRN_BATCH * 256) {
            float u[2 * GRN_BATCH];
            #pragma unroll
            for (int i = 0; i < 2 * GRN_BATCH; i++) u[i] = __ldcg(&g[d + 256 * i]);
            #pragma unroll
            for (int i = 0; i < 2 * GRN_BATCH; i++) t += u[i];
        }
        for (; d < p.D; d += 256) t += __ldcg(&g[d]);
    }
    const float denom = denominator(t);
    if (p.short_tail && K == 8) {
        // Four consecutive channels per thread and step (the norms as one 16-byte load; D is a
        // multiple of 8 and g 16-byte aligned on this path), STEPS steps' loads issued
        // before any is used: D = 8192 is two round trips instead of eight.
        constexpr int STEPS = 4;
        for (int d0 = 4 * tid; d0 < p.D; d0 += STEPS * 1024) {
            float4 u[STEPS];
            float gm[STEPS][4];
            #pragma unroll
            for (int i = 0; i < STEPS; i++) {
                const int e = d0 + 1024 * i;
                if (e < p.D) {
                    u[i] = __ldcg((const float4*)&g[e]);
                    #pragma unroll
                    for (int j = 0; j < 4; j++) gm[i][j] = to_f32(gamma[e + j]);
                }
            }
            #pragma unroll
            for (int i = 0; i < STEPS; i++) {
                const int e = d0 + 1024 * i;
                if (e < p.D)
                    *(float4*)&g[e] = make_float4(1.f + gm[i][0] * (u[i].x / denom), 1.f + gm[i][1] * (u[i].y / denom),
                                                  1.f + gm[i][2] * (u[i].z / denom), 1.f + gm[i][3] * (u[i].w / denom));
            }
        }
        return;
    }
    d = tid;
    for (; d + (2 * GRN_BATCH - 1) * 256 < p.D; d += 2 * GRN_BATCH * 256) {
        float u[2 * GRN_BATCH], gm[2 * GRN_BATCH];
        #pragma unroll
        for (int i = 0; i < 2 * GRN_BATCH; i++) {
            u[i] = __ldcg(&g[d + 256 * i]);
            gm[i] = to_f32(gamma[d + 256 * i]);
        }
        #pragma unroll
        for (int i = 0; i < 2 * GRN_BATCH; i++) g[d + 256 * i] = 1.f + gm[i] * (u[i] / denom);
    }
    for (; d < p.D; d += 256) g[d] = 1.f + to_f32(gamma[d]) * (__ldcg(&g[d]) / denom);
}
template <typename T> __device__ void grn_partial_impl(const GrnPartialParams& p) {
    if (p.vec8) {
        int off[8];
        for (int k = 0; k < 8; k++) off[k] = threadIdx.x * 8 + k;
        grn_partial_k<T, 8>(p, off);
    } else {
        const int off[2] = {(int)threadIdx.x, (int)threadIdx.x + 32};
        grn_partial_k<T, 2>(p, off);
    }
}
extern "C" __global__ void grn_partial_f32(GrnPartialParams p) { pdl_enter(); grn_partial_impl<float>(p); }
// Three blocks per SM (80 registers under the bound; the short tail's loads would otherwise take
// it to 95 and two blocks, and the launcher sizes its chunks for three). Measured on an H200 against two variants
// that were removed (docs/performance.md, sixth session): one that loaded the next batch of rows
// while working the current one and held the last pass's norms in registers (80 registers), 1.1
// ms slower per Stage B step; one under four blocks per SM (64 registers), 0.5 ms slower.
extern "C" __global__ void __launch_bounds__(256, 3) grn_partial_bf16(GrnPartialParams p) { pdl_enter(); grn_partial_impl<bf16>(p); }

template <typename T> __device__ void grn_apply_impl(const GrnApplyParams& p) {
    int64_t total = (int64_t)p.B * p.N * p.D;
    const T* x = (const T*)p.x;
    const T* beta = (const T*)p.beta;
    if (p.D % 8 == 0 && total / 8 < (1ll << 31) && aligned16(x) && aligned16(p.y) && aligned16(p.scale) && (!beta || aligned16(beta))) {
        // Eight channels per thread and step; the same arithmetic as below.
        const uint32_t dv = p.D / 8, per_sample = (uint32_t)(p.N * dv);
        GRID_STRIDE32(v, total / 8) {
            const uint32_t d = (v % dv) * 8, b = v / per_sample;
            float e[8], s[8], be[8];
            load8(x + 8 * (int64_t)v, e);
            load8(p.scale + (int64_t)b * p.D + d, s);
            for (int j = 0; j < 8; j++) e[j] *= s[j];
            if (beta) {
                load8(beta + d, be);
                for (int j = 0; j < 8; j++) e[j] += be[j];
            }
            store8((T*)p.y + 8 * (int64_t)v, e);
        }
        return;
    }
    GRID_STRIDE(i, total) {
        int64_t d = i % p.D, b = i / (p.N * p.D);
        float v = to_f32(((const T*)p.x)[i]);
        v *= p.scale[b * p.D + d];
        if (p.beta) v += to_f32(((const T*)p.beta)[d]);
        ((T*)p.y)[i] = from_f32<T>(v);
    }
}
extern "C" __global__ void grn_apply_f32(GrnApplyParams p) { pdl_enter(); grn_apply_impl<float>(p); }
extern "C" __global__ void grn_apply_bf16(GrnApplyParams p) { pdl_enter(); grn_apply_impl<bf16>(p); }
