// Convolutions on token-major [B, H, W, C] data that are not GEMMs: depthwise 3x3 (with an
// optional fused channel LayerNorm), pixel shuffle / unshuffle, and 3x3 neighbourhood gathering
// (im2col) for the Stage A transposed convolution.
#include "common.cuh"

// One block per pixel (grid: W, H, B), threads over channels. With layer_norm the conv outputs
// are normalised over the pixel's channels before the store. Two paths: eight consecutive
// channels per thread with 16-byte loads and stores (vec8: the launcher's choice when C is a
// multiple of 8, C / 8 fits one block and every operand is 16-byte aligned), else one channel
// per thread with the outputs staged in shared memory (dynamic smem: C floats).
template <typename T> __device__ void depthwise_vec8(const DepthwiseParams& p, float* scratch) {
    const int w0 = blockIdx.x, h0 = blockIdx.y;
    const int64_t b = blockIdx.z, pix = ((int64_t)b * p.H + h0) * p.W + w0;
    const int c = 8 * threadIdx.x;
    const bool active = c < p.C;
    const T* x = (const T*)p.x + b * p.H * p.W * p.C;
    const float* st = p.in_stats ? p.in_stats + 2 * b * p.H * p.W : nullptr;
    const T* ab = p.in_ab ? (const T*)p.in_ab + b * p.in_ab_stride : nullptr;
    float acc[8];
    if (active) {
        // The 9 taps of 8 channels: 72 consecutive weights ([C, 9]), nine 16-byte loads.
        float wv[72];
        for (int i = 0; i < 9; i++) load8((const T*)p.weight + (int64_t)c * 9 + 8 * i, &wv[8 * i]);
        load8((const T*)p.bias + c, acc);
        float lw[8], lb[8], ma[8], ms[8];
        if (st) {
            load8((const T*)p.in_weight + c, lw);
            load8((const T*)p.in_bias + c, lb);
        }
        if (ab) {
            load8(ab + c, ma);
            load8(ab + p.C + c, ms);
            for (int j = 0; j < 8; j++) ma[j] += 1.f;
        }
        for (int ky = 0; ky < 3; ky++) {
            int h = h0 + ky - 1;
            if (p.replicate) h = min(max(h, 0), p.H - 1);
            else if (h < 0 || h >= p.H) continue;
            for (int kx = 0; kx < 3; kx++) {
                int w = w0 + kx - 1;
                if (p.replicate) w = min(max(w, 0), p.W - 1);
                else if (w < 0 || w >= p.W) continue;
                const int64_t q = (int64_t)h * p.W + w;
                float v[8];
                load8(x + q * p.C + c, v);
                if (st) {
                    const float mean = st[2 * q], rstd = st[2 * q + 1];
                    for (int j = 0; j < 8; j++) v[j] = (v[j] - mean) * rstd * lw[j] + lb[j];
                }
                if (ab) {
                    for (int j = 0; j < 8; j++) v[j] = rounded<T>(v[j] * ma[j] + ms[j]);
                    if (ky == 1 && kx == 1) store8((T*)p.x_out + pix * p.C + c, v);
                }
                for (int j = 0; j < 8; j++) acc[j] += wv[j * 9 + ky * 3 + kx] * v[j];
            }
        }
        if (p.residual) {
            float r[8];
            load8((const T*)p.residual + pix * p.C + c, r);
            for (int j = 0; j < 8; j++) acc[j] += r[j];
        }
        if (!p.layer_norm) {
            for (int j = 0; j < 8; j++) acc[j] = rounded<T>(acc[j]);  // y as stored (y_norm reads it)
            store8((T*)p.y + pix * p.C + c, acc);
        }
    }
    if (!p.layer_norm && !p.y_norm) return;
    // Mean and 1/sqrt(var + eps) over the pixel's channels, two-pass as row_mean_rstd.
    float s = 0.f;
    if (active)
        for (int j = 0; j < 8; j++) s += acc[j];
    const float mean = block_sum(s, scratch) / p.C;
    float q = 0.f;
    if (active)
        for (int j = 0; j < 8; j++) q += (acc[j] - mean) * (acc[j] - mean);
    const float rstd = rsqrtf(block_sum(q, scratch) / p.C + p.eps);
    if (!active) return;
    float o[8];
    for (int j = 0; j < 8; j++) o[j] = (acc[j] - mean) * rstd;
    if (p.layer_norm) {
        store8((T*)p.y + pix * p.C + c, o);
    } else {
        float ow[8], ob[8];
        load8((const T*)p.out_weight + c, ow);
        load8((const T*)p.out_bias + c, ob);
        for (int j = 0; j < 8; j++) o[j] = o[j] * ow[j] + ob[j];
        store8((T*)p.y_norm + pix * p.C + c, o);
    }
}

template <typename T> __device__ void depthwise_impl(const DepthwiseParams& p) {
    extern __shared__ float out[];
    __shared__ float scratch[32];
    if (p.vec8) {
        depthwise_vec8<T>(p, scratch);
        return;
    }
    const int w0 = blockIdx.x, h0 = blockIdx.y;
    const int64_t b = blockIdx.z, pix = ((int64_t)b * p.H + h0) * p.W + w0;
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
    if (p.C % 8 == 0 && total / 72 < (1ll << 31) && aligned16(p.x) && aligned16(p.cols)) {
        // One thread per (pixel, 8 channels): the pixel's position once (32-bit), then its 9 taps
        // as 16-byte copies (zeros outside the image).
        const uint32_t cv = p.C / 8;
        GRID_STRIDE32(v, total / 72) {
            const uint32_t c = (v % cv) * 8, pix = v / cv;
            const uint32_t w = pix % p.W, h = (pix / p.W) % p.H, b = pix / ((uint32_t)p.W * p.H);
            T* out = (T*)p.cols + (int64_t)pix * 9 * p.C + c;
            for (int tap = 0; tap < 9; tap++) {
                const int hs = (int)h + tap / 3 - 1, ws = (int)w + tap % 3 - 1;
                uint4 v8 = make_uint4(0u, 0u, 0u, 0u);
                if (hs >= 0 && hs < p.H && ws >= 0 && ws < p.W) {
                    const T* src = (const T*)p.x + (((int64_t)b * p.H + hs) * p.W + ws) * p.C + c;
                    if (sizeof(T) == 2) {
                        v8 = *(const uint4*)src;
                    } else {
                        *(uint4*)(out + tap * p.C + 4) = ((const uint4*)src)[1];
                        v8 = ((const uint4*)src)[0];
                    }
                } else if (sizeof(T) == 4) {
                    *(uint4*)(out + tap * p.C + 4) = v8;
                }
                *(uint4*)(out + tap * p.C) = v8;
            }
        }
        return;
    }
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
