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
// 16384 positions). The counters only decide which block finishes the statistics (the last to
// arrive, so every sum it reads is written); every sum is added in a fixed order, so results are
// deterministic.
// Each thread of a (32, 8) block holds sums for channels lane and lane + 32; returns the totals
// over the block's 8 rows for those two channels, added in row order (deterministic).
__device__ __forceinline__ void grn_rows_total(float (*part)[65], const float s[2], float total[2]) {
    __syncthreads();  // part may still be read from a previous call
    part[threadIdx.y][threadIdx.x] = s[0];
    part[threadIdx.y][threadIdx.x + 32] = s[1];
    __syncthreads();
    for (int j = 0; j < 2; j++) {
        total[j] = 0.f;
        for (int k = 0; k < (int)blockDim.y; k++) total[j] += part[k][threadIdx.x + 32 * j];
    }
}

// Counts this block in `count` once its writes are fenced; true in every thread of the block
// that arrives last of `expected`, which also resets the counter for the next launch.
__device__ __forceinline__ bool grn_arrived_last(unsigned int* count, unsigned int expected, bool* flag) {
    __threadfence();  // this block's writes are visible device-wide before it is counted
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) *flag = atomicAdd(count, 1u) == expected - 1;
    __syncthreads();
    if (!*flag) return false;
    __threadfence();
    if (threadIdx.x == 0 && threadIdx.y == 0) *count = 0;
    return true;
}

template <typename T> __device__ void grn_partial_impl(const GrnPartialParams& p) {
    __shared__ float part[8][65];
    __shared__ float scratch[8];
    __shared__ bool last;
    const int lane = threadIdx.x, ry = threadIdx.y, tid = ry * 32 + lane;
    const int c = blockIdx.y, b = blockIdx.z, groups = gridDim.x;
    const int d0 = blockIdx.x * 64 + lane;
    const T* x = (const T*)p.x;
    T* y = (T*)p.y;
    float s[2] = {0.f, 0.f}, total[2];
    const int n_end = min(p.N, (c + 1) * CASCADE_GRN_CHUNK);
    for (int n = c * CASCADE_GRN_CHUNK + ry; n < n_end; n += blockDim.y) {
        const int64_t row = ((int64_t)b * p.N + n) * p.D;
        for (int j = 0; j < 2; j++) {
            const int d = d0 + 32 * j;
            if (d >= p.D) continue;
            float v = to_f32(x[row + d]);
            if (p.gelu) {
                const T r = from_f32<T>(gelu_erf(v));
                if (y) y[row + d] = r;
                v = to_f32(r);
            }
            s[j] += v * v;
        }
    }
    grn_rows_total(part, s, total);
    for (int j = 0; j < 2 && ry == 0; j++)
        if (d0 + 32 * j < p.D) p.part[((int64_t)b * p.chunks + c) * p.D + d0 + 32 * j] = total[j];

    // Last chunk of this (sample, channel group) to finish: the group's norms, from every 8th
    // chunk per thread (read through L2: other blocks wrote them).
    if (!grn_arrived_last(p.counters + (int64_t)b * groups + blockIdx.x, p.chunks, &last)) return;
    s[0] = s[1] = 0.f;
    for (int k = ry; k < p.chunks; k += blockDim.y) {
        for (int j = 0; j < 2; j++) {
            const int d = d0 + 32 * j;
            if (d < p.D) s[j] += __ldcg(&p.part[((int64_t)b * p.chunks + k) * p.D + d]);
        }
    }
    grn_rows_total(part, s, total);
    for (int j = 0; j < 2 && ry == 0; j++)
        if (d0 + 32 * j < p.D) p.scale[(int64_t)b * p.D + d0 + 32 * j] = sqrtf(total[j]);

    // Last channel group of this sample to finish: mean of the norms, then the factor.
    if (!grn_arrived_last(p.counters + (int64_t)p.B * groups + b, groups, &last)) return;
    float* g = p.scale + (int64_t)b * p.D;
    float t = 0.f;
    for (int d = tid; d < p.D; d += 256) t += __ldcg(&g[d]);
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffff, t, o);
    if (lane == 0) scratch[ry] = t;
    __syncthreads();
    float sum = 0.f;
    for (int k = 0; k < 8; k++) sum += scratch[k];
    const float denom = sum / p.D + 1e-6f;
    const T* gamma = (const T*)p.gamma;
    for (int d = tid; d < p.D; d += 256) g[d] = 1.f + to_f32(gamma[d]) * (__ldcg(&g[d]) / denom);
}
extern "C" __global__ void grn_partial_f32(GrnPartialParams p) { grn_partial_impl<float>(p); }
extern "C" __global__ void grn_partial_bf16(GrnPartialParams p) { grn_partial_impl<bf16>(p); }

template <typename T> __device__ void grn_apply_impl(const GrnApplyParams& p) {
    int64_t total = (int64_t)p.B * p.N * p.D;
    GRID_STRIDE(i, total) {
        int64_t d = i % p.D, b = i / (p.N * p.D);
        float v = to_f32(((const T*)p.x)[i]);
        if (p.gelu) v = to_f32(from_f32<T>(gelu_erf(v)));  // the value grn_partial summed
        v *= p.scale[b * p.D + d];
        if (p.beta) v += to_f32(((const T*)p.beta)[d]);
        ((T*)p.y)[i] = from_f32<T>(v);
    }
}
extern "C" __global__ void grn_apply_f32(GrnApplyParams p) { grn_apply_impl<float>(p); }
extern "C" __global__ void grn_apply_bf16(GrnApplyParams p) { grn_apply_impl<bf16>(p); }
