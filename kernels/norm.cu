// Normalisations: LayerNorm over channels of token-major rows, and GlobalResponseNorm in
// three steps (spatial sum of squares, per-sample scale, apply). Statistics in f32.
#include "common.cuh"

// One block per row; the row is staged in shared memory as f32 (dynamic smem: C floats), so
// the variance is the exact two-pass one, not E[x^2] - E[x]^2.
template <typename T> __device__ void layer_norm_impl(const LayerNormParams& p) {
    extern __shared__ float row[];
    __shared__ float scratch[32];
    int64_t r = blockIdx.x;
    const T* x = (const T*)p.x + r * p.C;
    T* y = (T*)p.y + r * p.C;
    for (int c = threadIdx.x; c < p.C; c += blockDim.x) row[c] = to_f32(x[c]);
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
extern "C" __global__ void layer_norm_f32(LayerNormParams p) { layer_norm_impl<float>(p); }
extern "C" __global__ void layer_norm_bf16(LayerNormParams p) { layer_norm_impl<bf16>(p); }

// Block (32, 16) per (32 channels, sample): threads stride over positions, then reduce the 16
// partial sums per channel in shared memory. Deterministic (no atomics).
template <typename T> __device__ void grn_sumsq_impl(const GrnStatsParams& p) {
    __shared__ float part[16][33];
    int d = blockIdx.x * 32 + threadIdx.x;
    int b = blockIdx.y;
    float s = 0.f;
    if (d < p.D) {
        const T* x = (const T*)p.x + (int64_t)b * p.N * p.D + d;
        for (int n = threadIdx.y; n < p.N; n += blockDim.y) {
            float v = to_f32(x[(int64_t)n * p.D]);
            s += v * v;
        }
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && d < p.D) {
        float t = 0.f;
        for (int k = 0; k < (int)blockDim.y; k++) t += part[k][threadIdx.x];
        p.stats[(int64_t)b * p.D + d] = sqrtf(t);
    }
}
extern "C" __global__ void grn_sumsq_f32(GrnStatsParams p) { grn_sumsq_impl<float>(p); }
extern "C" __global__ void grn_sumsq_bf16(GrnStatsParams p) { grn_sumsq_impl<bf16>(p); }

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
