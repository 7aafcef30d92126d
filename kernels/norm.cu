// Normalisations: LayerNorm over channels of token-major rows, and GlobalResponseNorm in
// four steps (chunked sums of squares, optionally after GELU; their total; per-sample scale;
// apply). Statistics in f32.
#include "common.cuh"

// One block per row; the row is staged in shared memory as f32 (dynamic smem: C floats), so
// the variance is the exact two-pass one, not E[x^2] - E[x]^2.
template <typename T> __device__ void layer_norm_impl(const LayerNormParams& p) {
    extern __shared__ float row[];
    __shared__ float scratch[32];
    int64_t r = blockIdx.x;
    const T* x = (const T*)p.x + r * p.C;
    T* y = (T*)p.y + r * p.C;
    if (p.ab) {
        // Each thread rewrites only the elements it read, so x_out may be x.
        const T* a = (const T*)p.ab + (r / p.rows_per_sample) * p.ab_stride;
        T* xo = (T*)p.x_out + r * p.C;
        for (int c = threadIdx.x; c < p.C; c += blockDim.x) {
            const T v = from_f32<T>(to_f32(x[c]) * (1.f + to_f32(a[c])) + to_f32(a[p.C + c]));
            xo[c] = v;
            row[c] = to_f32(v);
        }
    } else {
        for (int c = threadIdx.x; c < p.C; c += blockDim.x) row[c] = to_f32(x[c]);
    }
    float mean, rstd;
    row_mean_rstd(row, p.C, p.eps, scratch, mean, rstd);
    const T* w = (const T*)p.weight;
    const T* b = (const T*)p.bias;
    for (int c = threadIdx.x; c < p.C; c += blockDim.x) {
        float v = (row[c] - mean) * rstd;
        if (w) v *= to_f32(w[c]);
        if (b) v += to_f32(b[c]);
        y[c] = from_f32<T>(v);
    }
}
template <typename T> __device__ void row_stats_impl(const LayerNormParams& p) {
    extern __shared__ float row[];
    __shared__ float scratch[32];
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
extern "C" __global__ void row_stats_f32(LayerNormParams p) { row_stats_impl<float>(p); }
extern "C" __global__ void row_stats_bf16(LayerNormParams p) { row_stats_impl<bf16>(p); }
extern "C" __global__ void layer_norm_f32(LayerNormParams p) { layer_norm_impl<float>(p); }
extern "C" __global__ void layer_norm_bf16(LayerNormParams p) { layer_norm_impl<bf16>(p); }

// Block (32, 8) per (64 channels, chunk of CASCADE_GRN_CHUNK positions, sample): each thread
// takes two channels 32 apart (so each warp load covers 32 consecutive channels) and every 8th
// position of the chunk, then the 8 partial sums per channel are added in shared memory. Many
// chunks keep the GPU busy when B·D is small (Stage B's first level: 1 × 1280 channels over
// 16384 positions); deterministic, no atomics.
template <typename T> __device__ void grn_partial_impl(const GrnPartialParams& p) {
    __shared__ float part[8][65];
    const int lane = threadIdx.x, ry = threadIdx.y;
    const int c = blockIdx.y, b = blockIdx.z;
    const int d0 = blockIdx.x * 64 + lane;
    const T* x = (const T*)p.x;
    T* y = (T*)p.y;
    float s[2] = {0.f, 0.f};
    const int n_end = min(p.N, (c + 1) * CASCADE_GRN_CHUNK);
    for (int n = c * CASCADE_GRN_CHUNK + ry; n < n_end; n += blockDim.y) {
        const int64_t row = ((int64_t)b * p.N + n) * p.D;
        for (int j = 0; j < 2; j++) {
            const int d = d0 + 32 * j;
            if (d >= p.D) continue;
            float v = to_f32(x[row + d]);
            if (p.gelu) {
                const T r = from_f32<T>(gelu_erf(v));
                y[row + d] = r;
                v = to_f32(r);
            }
            s[j] += v * v;
        }
    }
    part[ry][lane] = s[0];
    part[ry][lane + 32] = s[1];
    __syncthreads();
    if (ry != 0) return;
    for (int j = 0; j < 2; j++) {
        const int d = d0 + 32 * j;
        if (d >= p.D) continue;
        float t = 0.f;
        for (int k = 0; k < (int)blockDim.y; k++) t += part[k][lane + 32 * j];
        p.part[((int64_t)b * p.chunks + c) * p.D + d] = t;
    }
}
extern "C" __global__ void grn_partial_f32(GrnPartialParams p) { grn_partial_impl<float>(p); }
extern "C" __global__ void grn_partial_bf16(GrnPartialParams p) { grn_partial_impl<bf16>(p); }

// The chunks' sums per (sample, channel), then the norm.
extern "C" __global__ void grn_reduce(GrnStatsParams p) {
    GRID_STRIDE(i, (int64_t)p.B * p.D) {
        const int64_t b = i / p.D, d = i % p.D;
        const float* part = p.part + b * p.chunks * p.D + d;
        float t = 0.f;
        for (int c = 0; c < p.chunks; c++) t += part[(int64_t)c * p.D];
        p.stats[i] = sqrtf(t);
    }
}

// One block per sample: mean of the norms over channels, then the per-channel scale.
template <typename T> __device__ void grn_scale_impl(const GrnStatsParams& p) {
    __shared__ float scratch[32];
    float* g = p.stats + (int64_t)blockIdx.x * p.D;
    float s = 0.f;
    for (int d = threadIdx.x; d < p.D; d += blockDim.x) s += g[d];
    float denom = block_sum(s, scratch) / p.D + 1e-6f;
    const T* gamma = (const T*)p.gamma;
    for (int d = threadIdx.x; d < p.D; d += blockDim.x) g[d] = 1.f + to_f32(gamma[d]) * (g[d] / denom);
}
extern "C" __global__ void grn_scale_f32(GrnStatsParams p) { grn_scale_impl<float>(p); }
extern "C" __global__ void grn_scale_bf16(GrnStatsParams p) { grn_scale_impl<bf16>(p); }

template <typename T> __device__ void grn_apply_impl(const GrnApplyParams& p) {
    int64_t total = (int64_t)p.B * p.N * p.D;
    GRID_STRIDE(i, total) {
        int64_t d = i % p.D, b = i / (p.N * p.D);
        float v = to_f32(((const T*)p.x)[i]) * p.scale[b * p.D + d] + to_f32(((const T*)p.beta)[d]);
        ((T*)p.y)[i] = from_f32<T>(v);
    }
}
extern "C" __global__ void grn_apply_f32(GrnApplyParams p) { grn_apply_impl<float>(p); }
extern "C" __global__ void grn_apply_bf16(GrnApplyParams p) { grn_apply_impl<bf16>(p); }
