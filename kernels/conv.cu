// Convolutions on token-major [B, H, W, C] data that are not GEMMs: depthwise 3x3 (with an
// optional fused channel LayerNorm), pixel shuffle / unshuffle, and 3x3 neighbourhood gathering
// (im2col) for the Stage A transposed convolution.
#include "common.cuh"

// One block per pixel, threads over channels. With layer_norm the conv outputs are staged in
// shared memory (dynamic smem: C floats) and normalised over channels before the store.
template <typename T> __device__ void depthwise_impl(const DepthwiseParams& p) {
    extern __shared__ float out[];
    __shared__ float scratch[32];
    int64_t pix = blockIdx.x;
    int w0 = pix % p.W, h0 = (pix / p.W) % p.H;
    int64_t b = pix / ((int64_t)p.W * p.H);
    const T* x = (const T*)p.x + b * p.H * p.W * p.C;
    const T* wt = (const T*)p.weight;
    const float* st = p.in_stats ? p.in_stats + 2 * b * p.H * p.W : nullptr;
    for (int c = threadIdx.x; c < p.C; c += blockDim.x) {
        float acc = to_f32(((const T*)p.bias)[c]);
        const float lw = st ? to_f32(((const T*)p.in_weight)[c]) : 1.f, lb = st ? to_f32(((const T*)p.in_bias)[c]) : 0.f;
        const T* ab = p.in_ab ? (const T*)p.in_ab + b * p.in_ab_stride : nullptr;
        const float ma = ab ? 1.f + to_f32(ab[c]) : 1.f, ms = ab ? to_f32(ab[p.C + c]) : 0.f;
        for (int ky = 0; ky < 3; ky++) {
            int h = h0 + ky - 1;
            if (p.replicate) h = min(max(h, 0), p.H - 1);
            else if (h < 0 || h >= p.H) continue;
            for (int kx = 0; kx < 3; kx++) {
                int w = w0 + kx - 1;
                if (p.replicate) w = min(max(w, 0), p.W - 1);
                else if (w < 0 || w >= p.W) continue;
                const int64_t q = (int64_t)h * p.W + w;
                float v = to_f32(x[q * p.C + c]);
                if (st) v = (v - st[2 * q]) * st[2 * q + 1] * lw + lb;
                if (ab) {
                    const T m = from_f32<T>(v * ma + ms);
                    if (ky == 1 && kx == 1) ((T*)p.x_out)[pix * p.C + c] = m;
                    v = to_f32(m);
                }
                acc += to_f32(wt[c * 9 + ky * 3 + kx]) * v;
            }
        }
        if (p.residual) acc += to_f32(((const T*)p.residual)[pix * p.C + c]);
        if (p.layer_norm) {
            out[c] = acc;
        } else {
            const T v = from_f32<T>(acc);
            ((T*)p.y)[pix * p.C + c] = v;
            if (p.y_norm) out[c] = to_f32(v);
        }
    }
    if (!p.layer_norm && !p.y_norm) return;
    float mean, rstd;
    row_mean_rstd(out, p.C, p.eps, scratch, mean, rstd);
    if (p.layer_norm) {
        for (int c = threadIdx.x; c < p.C; c += blockDim.x) ((T*)p.y)[pix * p.C + c] = from_f32<T>((out[c] - mean) * rstd);
    } else {
        const T *ow = (const T*)p.out_weight, *ob = (const T*)p.out_bias;
        for (int c = threadIdx.x; c < p.C; c += blockDim.x)
            ((T*)p.y_norm)[pix * p.C + c] = from_f32<T>((out[c] - mean) * rstd * to_f32(ow[c]) + to_f32(ob[c]));
    }
}
extern "C" __global__ void depthwise_f32(DepthwiseParams p) { depthwise_impl<float>(p); }
extern "C" __global__ void depthwise_bf16(DepthwiseParams p) { depthwise_impl<bf16>(p); }

// One thread per element of the used high-resolution region [B, H*r, W*r, C].
template <typename T> __device__ void pixel_shuffle_impl(const PixelShuffleParams& p) {
    int r = p.r, Wr = p.W * r, Hr = p.H * r;
    int64_t total = (int64_t)p.B * Hr * Wr * p.C;
    GRID_STRIDE(i, total) {
        int c = i % p.C;
        int64_t t = i / p.C;
        int X = t % Wr;
        t /= Wr;
        int Y = t % Hr;
        int64_t b = t / Hr;
        int h = Y / r, ii = Y % r, w = X / r, jj = X % r;
        int64_t lo = (((b * p.H + h) * p.W + w) * p.C + c) * r * r + ii * r + jj;
        int64_t hi = ((b * p.Hs + Y) * p.Ws + X) * p.C + c;
        if (p.unshuffle) ((T*)p.y)[lo] = ((const T*)p.x)[hi];
        else ((T*)p.y)[hi] = ((const T*)p.x)[lo];
    }
}
extern "C" __global__ void pixel_shuffle_f32(PixelShuffleParams p) { pixel_shuffle_impl<float>(p); }
extern "C" __global__ void pixel_shuffle_bf16(PixelShuffleParams p) { pixel_shuffle_impl<bf16>(p); }

template <typename T> __device__ void im2col3x3_impl(const Im2Col3x3Params& p) {
    int64_t total = (int64_t)p.B * p.H * p.W * 9 * p.C;
    GRID_STRIDE(i, total) {
        int c = i % p.C;
        int64_t t = i / p.C;
        int tap = t % 9;
        t /= 9;
        int w = t % p.W;
        t /= p.W;
        int h = t % p.H;
        int64_t b = t / p.H;
        int hs = h + tap / 3 - 1, ws = w + tap % 3 - 1;
        float v = 0.f;
        if (hs >= 0 && hs < p.H && ws >= 0 && ws < p.W) v = to_f32(((const T*)p.x)[((b * p.H + hs) * p.W + ws) * p.C + c]);
        ((T*)p.cols)[i] = from_f32<T>(v);
    }
}
extern "C" __global__ void im2col3x3_f32(Im2Col3x3Params p) { im2col3x3_impl<float>(p); }
extern "C" __global__ void im2col3x3_bf16(Im2Col3x3Params p) { im2col3x3_impl<bf16>(p); }
