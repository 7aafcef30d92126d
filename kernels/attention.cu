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
extern "C" __global__ void __launch_bounds__(Q_TILE) attention_f32(AttentionParams p) { attention_impl<float>(p); }
extern "C" __global__ void __launch_bounds__(Q_TILE) attention_bf16(AttentionParams p) { attention_impl<bf16>(p); }
