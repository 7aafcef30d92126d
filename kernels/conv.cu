// Convolutions on token-major [B, H, W, C] data that are not GEMMs: depthwise 3x3 (with an
// optional fused channel LayerNorm), pixel shuffle / unshuffle, and 3x3 neighbourhood gathering
// (im2col) for the Stage A transposed convolution.
#include "common.cuh"

// Two paths. With vec8 (the launcher's choice: C a multiple of 8, C / 8 threads fit one block,
// every operand 16-byte aligned) a block takes a strip of CASCADE_DW_STRIP pixels of one row
// (grid: ceil(W / CASCADE_DW_STRIP), H, B) and each thread 8 consecutive channels of all of them:
// the 72 weights are loaded and unpacked once per strip, and each input pixel once per row of
// taps (3 · (CASCADE_DW_STRIP + 2) 16-byte loads for CASCADE_DW_STRIP outputs instead of 9 each;
// the parked-weight kernels' _sw5 versions take strips of CASCADE_DW_WIDE_STRIP pixels).
// Otherwise one block per pixel (grid: W, H, B) and one channel per thread, the outputs staged in
// shared memory (dynamic smem: C floats) when a LayerNorm follows. Either way an output
// LayerNorm is over the pixel's channels.
//
// T is the type of the weights and outputs; TI that of the input x (with its modulation terms
// and modulated copy x_out): T, or f32 for an f32 residual stream with bf16 weights, which is
// modulated in f32 and convolved as its bf16 copy (each tap rounded to T as it is read, exactly
// a cast followed by the bf16 convolution).

// Sums of N values over the block, each thread getting all N (scratch: 32 · N floats).
template <int N> __device__ __forceinline__ void block_sums(float v[N], float* scratch) {
    for (int n = 0; n < N; n++)
        for (int o = 16; o > 0; o >>= 1) v[n] += __shfl_xor_sync(0xffffffff, v[n], o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();  // scratch may still be read from a previous call
    if (lane == 0)
        for (int n = 0; n < N; n++) scratch[n * 32 + warp] = v[n];
    __syncthreads();
    for (int n = 0; n < N; n++) {
        float t = lane < warps ? scratch[n * 32 + lane] : 0.f;
        for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffff, t, o);
        v[n] = t;
    }
}

// SW (bf16 weights only): each thread's 72 weights are not held in registers but parked, tap-major,
// in its own column of the block's dynamic shared memory (9 × 16 bytes per thread; no other
// thread reads them, so no barrier), and each tap's eight are read back as they are used. That
// frees about 60 registers, which the parked-weight kernels spend on loads in flight (BATCH,
// below).
//
template <typename T, typename TI, bool SW, bool BATCH, int S>
__device__ void depthwise_vec8(const DepthwiseParams& p, float* scratch) {
    static_assert(!SW || sizeof(T) == 2, "weights parked in shared memory are bf16");
    const int w0 = blockIdx.x * S, h0 = blockIdx.y;
    const int64_t b = blockIdx.z, row0 = ((int64_t)b * p.H + h0) * p.W;  // pixel index of (h0, 0)
    const int c = 8 * threadIdx.x;
    const bool active = c < p.C;
    const TI* x = (const TI*)p.x + b * p.H * p.W * p.C;
    // An f32 stream (TI f32, T bf16) takes no input LayerNorm, residual or second output (the
    // launcher refuses them): known here, so its registers go to the loads in flight.
    constexpr bool MIXED = sizeof(TI) != sizeof(T);
    const float* st = !MIXED && p.in_stats ? p.in_stats + 2 * b * p.H * p.W : nullptr;
    const TI* ab = p.in_ab ? (const TI*)p.in_ab + b * p.in_ab_stride : nullptr;
    const void* residual = MIXED ? nullptr : p.residual;
    void* y_norm = MIXED ? nullptr : p.y_norm;
    float acc[S][8];
    // Row ky of taps (0 .. 2): its image row h, and whether it is read at all (zero padding's
    // rows are not; replicate padding reads the nearest row).
    auto tap_row = [&](int ky, int& h) {
        h = h0 + ky - 1;
        if (p.replicate) h = min(max(h, 0), p.H - 1);
        return p.replicate || (h >= 0 && h < p.H);
    };
    // Column i (0 .. S + 1) of the strip's window, clamped into the row: its loads need no branch
    // and unused columns are dropped after.
    auto tap_column = [&](int i) { return min(max(w0 + i - 1, 0), p.W - 1); };
    constexpr int NC = S + 2;  // columns of the window
    if (active) {
        // The 9 taps of 8 channels: 72 consecutive weights ([C, 9]), nine 16-byte loads.
        float wv[SW ? 1 : 72];
        extern __shared__ uint4 parked[];  // SW: [9 taps][blockDim.x threads], 8 channels each
        if (!SW) {
            #pragma unroll
            for (int i = 0; i < 9; i++) load8((const T*)p.weight + (int64_t)c * 9 + 8 * i, &wv[8 * i]);
        } else {
            // Word k of raw holds weights 2k (low half) and 2k + 1; weight 9j + t is channel j's
            // tap t. Tap t's word m pairs channels 2m and 2m + 1.
            uint32_t raw[36];
            #pragma unroll
            for (int i = 0; i < 9; i++) {
                const uint4 a = *(const uint4*)((const T*)p.weight + (int64_t)c * 9 + 8 * i);
                raw[4 * i] = a.x, raw[4 * i + 1] = a.y, raw[4 * i + 2] = a.z, raw[4 * i + 3] = a.w;
            }
            auto half = [&](int e) { return (e & 1) ? raw[e >> 1] >> 16 : raw[e >> 1] & 0xffffu; };
            #pragma unroll
            for (int t = 0; t < 9; t++)
                parked[t * blockDim.x + threadIdx.x] = make_uint4(half(t) | half(9 + t) << 16, half(18 + t) | half(27 + t) << 16,
                                                                  half(36 + t) | half(45 + t) << 16, half(54 + t) | half(63 + t) << 16);
        }
        // Tap `tap`'s weights of the thread's 8 channels.
        auto tap_weights = [&](int tap, float w[8]) {
            if (SW) {
                unpack8(parked[tap * blockDim.x + threadIdx.x], w);
            } else {
                #pragma unroll
                for (int j = 0; j < 8; j++) w[j] = wv[SW ? 0 : j * 9 + tap];
            }
        };
        // The taps' per-channel affine map, one pair of registers for either input fusion (the
        // launcher never sets both): the input LayerNorm's weight and bias, or the modulation's
        // 1 + a and s.
        float fa[8], fb[8];
        if (st) {
            load8((const T*)p.in_weight + c, fa);
            load8((const T*)p.in_bias + c, fb);
        } else if (ab) {
            load8(ab + c, fa);
            load8(ab + p.C + c, fb);
            #pragma unroll
            for (int j = 0; j < 8; j++) fa[j] += 1.f;
        }
        #pragma unroll
        for (int s = 0; s < S; s++) load8((const T*)p.bias + c, acc[s]);
        // One input pixel's 8 channels v, read from row tap ky, column i of the strip's
        // window: the input fusions, then its share of each output.
        auto use_tap = [&](int ky, int i, const float* stats, float v[8]) {
            if (st) {
                #pragma unroll
                for (int j = 0; j < 8; j++) v[j] = (v[j] - stats[0]) * stats[1] * fa[j] + fb[j];
            }
            if (ab) {
                #pragma unroll
                for (int j = 0; j < 8; j++) v[j] = rounded<TI>(v[j] * fa[j] + fb[j]);
                // The centre row's columns 1 .. S are this strip's own pixels.
                if (ky == 1 && i >= 1 && i <= S && w0 + i - 1 < p.W) store8((TI*)p.x_out + (row0 + w0 + i - 1) * p.C + c, v);
            }
            if (sizeof(TI) != sizeof(T))
                #pragma unroll
                for (int j = 0; j < 8; j++) v[j] = rounded<T>(v[j]);  // the stream's copy in T
            #pragma unroll
            for (int s = 0; s < S; s++) {
                const int kx = i - s;
                if (kx < 0 || kx > 2) continue;
                float w[8];
                tap_weights(ky * 3 + kx, w);
                #pragma unroll
                for (int j = 0; j < 8; j++) acc[s][j] += w[j] * v[j];
            }
        };
        // Input columns w0 − 1 .. w0 + S: column i feeds outputs s = i − 2 .. i with
        // tap kx = i − s. A column is skipped when zero padding makes it zero, or when it lies
        // past the strip's last pixel + 1 (a partial strip); both are the same for the whole block.
        auto column_used = [&](int i) {
            const int w = w0 + i - 1;
            return (p.replicate || (w >= 0 && w < p.W)) && w <= p.W;
        };
        #pragma unroll
        for (int ky = 0; ky < 3; ky++) {
            int h;
            if (!tap_row(ky, h)) continue;
            if (BATCH) {
                // Every column's loads issued before any is used: one round trip to memory per
                // row of taps instead of one per tap (with each load behind its own bounds branch,
                // ptxas cannot hoist it, and the launch waits on 18 loads in a row). Addresses are
                // clamped into the row, so the loads need no branch; unused columns are dropped
                // after.
                Raw8<TI> raw[NC];
                float2 stats[NC];
                #pragma unroll
                for (int i = 0; i < NC; i++) {
                    const int64_t q = (int64_t)h * p.W + tap_column(i);
                    raw[i].load(x + q * p.C + c);
                    stats[i] = st ? *(const float2*)(st + 2 * q) : make_float2(0.f, 0.f);
                }
                #pragma unroll
                for (int i = 0; i < NC; i++) {
                    if (!column_used(i)) continue;
                    float v[8];
                    raw[i].unpack(v);
                    const float sv[2] = {stats[i].x, stats[i].y};
                    use_tap(ky, i, sv, v);
                }
            } else {
                #pragma unroll
                for (int i = 0; i < NC; i++) {
                    if (!column_used(i)) continue;
                    const int64_t q = (int64_t)h * p.W + tap_column(i);
                    float v[8];
                    load8(x + q * p.C + c, v);
                    float sv[2] = {0.f, 0.f};
                    if (st) sv[0] = st[2 * q], sv[1] = st[2 * q + 1];
                    use_tap(ky, i, sv, v);
                }
            }
        }
        #pragma unroll
        for (int s = 0; s < S; s++) {
            if (w0 + s >= p.W) continue;
            const int64_t pix = row0 + w0 + s;
            if (residual) {
                float r[8];
                load8((const T*)residual + pix * p.C + c, r);
                #pragma unroll
                for (int j = 0; j < 8; j++) acc[s][j] += r[j];
            }
            if (!p.layer_norm) {
                #pragma unroll
                for (int j = 0; j < 8; j++) acc[s][j] = rounded<T>(acc[s][j]);  // y as stored (y_norm reads it)
                store8((T*)p.y + pix * p.C + c, acc[s]);
            }
        }
    }
    if (!p.layer_norm && !y_norm) return;
    // Mean and 1/sqrt(var + eps) over each pixel's channels, two-pass as row_mean_rstd.
    float mean[S], rstd[S];
    #pragma unroll
    for (int s = 0; s < S; s++) {
        mean[s] = 0.f;
        if (active)
            #pragma unroll
            for (int j = 0; j < 8; j++) mean[s] += acc[s][j];
    }
    block_sums<S>(mean, scratch);
    #pragma unroll
    for (int s = 0; s < S; s++) {
        mean[s] /= p.C;
        rstd[s] = 0.f;
        if (active)
            #pragma unroll
            for (int j = 0; j < 8; j++) rstd[s] += (acc[s][j] - mean[s]) * (acc[s][j] - mean[s]);
    }
    block_sums<S>(rstd, scratch);
    if (!active) return;
    #pragma unroll
    for (int s = 0; s < S; s++) {
        if (w0 + s >= p.W) continue;
        const int64_t pix = row0 + w0 + s;
        const float r = rsqrtf(rstd[s] / p.C + p.eps);
        float o[8];
        #pragma unroll
        for (int j = 0; j < 8; j++) o[j] = (acc[s][j] - mean[s]) * r;
        if (p.layer_norm) {
            store8((T*)p.y + pix * p.C + c, o);
        } else {
            float ow[8], ob[8];
            load8((const T*)p.out_weight + c, ow);
            load8((const T*)p.out_bias + c, ob);
            #pragma unroll
            for (int j = 0; j < 8; j++) o[j] = o[j] * ow[j] + ob[j];
            store8((T*)y_norm + pix * p.C + c, o);
        }
    }
}

template <typename T, typename TI = T, bool SW = false, bool BATCH = false> __device__ void depthwise_impl(const DepthwiseParams& p) {
    extern __shared__ float out[];
    __shared__ float scratch[32 * CASCADE_DW_STRIP];
    if (p.vec8) {
        depthwise_vec8<T, TI, SW, BATCH, CASCADE_DW_STRIP>(p, scratch);
        return;
    }
    const int w0 = blockIdx.x, h0 = blockIdx.y;
    const int64_t b = blockIdx.z, pix = ((int64_t)b * p.H + h0) * p.W + w0;
    const TI* x = (const TI*)p.x + b * p.H * p.W * p.C;
    const T* wt = (const T*)p.weight;
    const float* st = p.in_stats ? p.in_stats + 2 * b * p.H * p.W : nullptr;
    for (int c = threadIdx.x; c < p.C; c += blockDim.x) {
        float acc = to_f32(((const T*)p.bias)[c]);
        const float lw = st ? to_f32(((const T*)p.in_weight)[c]) : 1.f, lb = st ? to_f32(((const T*)p.in_bias)[c]) : 0.f;
        const TI* ab = p.in_ab ? (const TI*)p.in_ab + b * p.in_ab_stride : nullptr;
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
                    const TI m = from_f32<TI>(v * ma + ms);
                    if (ky == 1 && kx == 1) ((TI*)p.x_out)[pix * p.C + c] = m;
                    v = to_f32(m);
                }
                if (sizeof(TI) != sizeof(T)) v = rounded<T>(v);  // the stream's copy in T
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
// bf16: at most 128 registers (ptxas: no spills), so two 256-thread blocks (C = 2048) fit an SM;
// f32 would spill under that cap and keeps its 167.
extern "C" __global__ void depthwise_f32(DepthwiseParams p) { pdl_enter(); depthwise_impl<float>(p); }
extern "C" __global__ void __launch_bounds__(256, 2) depthwise_bf16(DepthwiseParams p) { pdl_enter(); depthwise_impl<bf16>(p); }
// An f32 residual stream (modulated in f32 when in_ab is set) convolved as its bf16 copy.
extern "C" __global__ void __launch_bounds__(256, 2) depthwise_f32_bf16(DepthwiseParams p) { pdl_enter(); depthwise_impl<bf16, float>(p); }
// The same two with the weights parked in shared memory (vec8 launches with bf16 weights: 144
// bytes of dynamic shared memory per thread). They spend the freed registers on loads in flight
// (BATCH): each row of taps' 6 pixels (and their input statistics) are loaded before any is
// used, 126 registers (f32 input: 128, 24 bytes spilled), two blocks per SM. On an H200 this beat
// loading tap by tap under three blocks per SM by 0.67 ms per Stage B step and 0.38 ms on Stage
// A, and parking the weights beat holding them in registers by 0.37 and 0.57 ms
// (docs/performance.md, sixth session).
extern "C" __global__ void __launch_bounds__(256, 2) depthwise_bf16_sw(DepthwiseParams p) { pdl_enter(); depthwise_impl<bf16, bf16, true, true>(p); }
extern "C" __global__ void __launch_bounds__(256, 2) depthwise_f32_bf16_sw(DepthwiseParams p) { pdl_enter(); depthwise_impl<bf16, float, true, true>(p); }

// The parked-weight kernels' other two versions, picked by the launcher by waves of resident
// blocks (src/ops/conv.rs, depthwise_strip_kernel); always the eight-channel path (p.vec8 set).
template <typename TI, int S> __device__ void depthwise_parked(const DepthwiseParams& p) {
    __shared__ float scratch[32 * S];
    depthwise_vec8<bf16, TI, true, true, S>(p, scratch);
}
// Strips of CASCADE_DW_WIDE_STRIP (5) pixels: fewer blocks for the same image, where that takes
// fewer waves (Stage C's 24 × 24 × 2 images: 240 blocks instead of 288, one wave of two blocks per
// SM on an H200 instead of 1.09). Each block's time is latency (four round trips to memory and two
// block-wide sums whatever the strip), so a fifth pixel per block costs little, and a second wave
// for the last 24 blocks was about half the launch.
extern "C" __global__ void __launch_bounds__(256, 2) depthwise_bf16_sw5(DepthwiseParams p) {
    pdl_enter();
    depthwise_parked<bf16, CASCADE_DW_WIDE_STRIP>(p);
}
extern "C" __global__ void __launch_bounds__(256, 2) depthwise_f32_bf16_sw5(DepthwiseParams p) {
    pdl_enter();
    depthwise_parked<float, CASCADE_DW_WIDE_STRIP>(p);
}
// ---- The tiled path: large images (Stage A) -------------------------------------------------
// The strip kernel above reads each input pixel 4.5 times (three rows of taps for each of its
// one-row strips, 6 columns for 4 outputs) and waits on a round trip to memory for each row of
// taps, so on Stage A's 256² and 512² images it ran at about a fifth of memory speed. Here a
// block takes a tile of CASCADE_DW_TILE_W × tile_h output pixels with all C channels: the
// (tile_h + 2) × (CASCADE_DW_TILE_W + 2) input pixels it needs are copied into shared memory once
// (cp.async: the whole halo in flight at once, no registers held while it lands), transformed there
// once (the input LayerNorm or the modulation, rounded to bf16 as stored; zero padding stays
// zero), and every tap is then read from shared memory. Thread t takes channel group g = t % G
// (8 channels; G = C / 8) throughout: in the copies and the transform, halo pixels t / G,
// t / G + 2 · tile_h, …; in the convolution, a run of 4 pixels of one row (2 · tile_h · G
// threads). Sums over a pixel's channels (the LayerNorms' statistics) are taken by K lanes per
// pixel (K a power of two up to G / 4) and a butterfly over them. bf16 only (the launcher's
// choice: bf16 input and weights, C % 8 == 0, every operand 16-byte aligned, within 48 KiB).
//
// Shared memory (dynamic): the halo [NP][G] (16-byte chunks of 8 channels, reused for the sums
// once the taps are read), the weights parked tap-major [9][G] (as the SW path), the input
// transform's two terms [2][G], and the halo's input statistics [NP] (float2).

// v summed over each aligned group of K lanes (K a power of two up to 32); every lane of the
// block calls it (mask: the warp's lanes that exist).
__device__ __forceinline__ float lane_group_sum(float v, int K, unsigned mask) {
    for (int o = K >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o);
    return v;
}


// The pieces both tiled kernels share (the same arithmetic, so that they agree bit for bit).

// A pixel's mean and 1/sqrt(var + eps) over its G chunks of 8 channels at `pix`, two-pass (as
// row_stats), summed by the K lanes of an aligned group (lane_k: this lane's place in it). A lane
// with `on` false adds nothing but still joins the shuffles: every lane of the block calls it.
__device__ __forceinline__ float2 dw_chunk_stats(const uint4* pix, bool on, int G, int K, int lane_k, unsigned mask, int C, float eps) {
    float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (on)
        for (int k = lane_k; k < G; k += K) {
            float v[8];
            unpack8(pix[k], v);
            #pragma unroll
            for (int j = 0; j < 8; j++) s[j] += v[j];
        }
    const float m = lane_group_sum(((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])), K, mask) / C;
    #pragma unroll
    for (int j = 0; j < 8; j++) s[j] = 0.f;
    if (on)
        for (int k = lane_k; k < G; k += K) {
            float v[8];
            unpack8(pix[k], v);
            #pragma unroll
            for (int j = 0; j < 8; j++) s[j] += (v[j] - m) * (v[j] - m);
        }
    const float d = lane_group_sum(((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])), K, mask);
    return make_float2(m, rsqrtf(d / C + eps));
}

// The input transform of one chunk: (x − mean) · rstd · a + b with `norm` (st: the pixel's mean
// and rstd), else x · a + b (a modulation, a already 1 + its scale); rounded to bf16.
__device__ __forceinline__ uint4 dw_transform(uint4 chunk, bool norm, float2 st, const float (&fa)[8], const float (&fb)[8]) {
    float v[8];
    unpack8(chunk, v);
    if (norm) {
        #pragma unroll
        for (int j = 0; j < 8; j++) v[j] = (v[j] - st.x) * st.y * fa[j] + fb[j];
    } else {
        #pragma unroll
        for (int j = 0; j < 8; j++) v[j] = v[j] * fa[j] + fb[j];
    }
    return make_uint4(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]), pack_bf16x2(v[4], v[5]), pack_bf16x2(v[6], v[7]));
}

// A run's 4 outputs of 8 channels started from their bias.
__device__ __forceinline__ void dw_bias_init(float (&acc)[4][8], const bf16* bias) {
    float bv[8];
    ldg8(bias, bv);
    #pragma unroll
    for (int s = 0; s < 4; s++)
        #pragma unroll
        for (int j = 0; j < 8; j++) acc[s][j] = bv[j];
}

// One row of taps for a run of 4 outputs: input columns c0 − 1 .. c0 + 4 at `row` (chunks G
// apart), column i feeding outputs s = i − 2 .. i with tap i − s.
__device__ __forceinline__ void dw_taps_row(float (&acc)[4][8], const float (&wt)[3][8], const uint4* row, int G) {
    #pragma unroll
    for (int i = 0; i < 6; i++) {
        float v[8];
        unpack8(row[i * G], v);
        #pragma unroll
        for (int s = 0; s < 4; s++) {
            const int kx = i - s;
            if (kx < 0 || kx > 2) continue;
            #pragma unroll
            for (int j = 0; j < 8; j++) acc[s][j] += wt[kx][j] * v[j];
        }
    }
}

// A run's outputs after the taps: the residual added (loaded only now: held over the taps, its 16
// registers would spill; L2 has it, for Stage A it is x), then y rounded and stored unless y is
// the LayerNorm (`valid`: the outputs inside the image; pix0: output 0's pixel).
__device__ __forceinline__ void dw_residual_and_store(float (&acc)[4][8], const DepthwiseParams& p, const bool (&valid)[4], int64_t pix0, int g) {
    Raw8<bf16> res[4];
    if (p.residual)
        #pragma unroll
        for (int s = 0; s < 4; s++)
            if (valid[s]) res[s].load((const bf16*)p.residual + (pix0 + s) * p.C + 8 * g);
    #pragma unroll
    for (int s = 0; s < 4; s++) {
        if (p.residual) {
            float rv[8];
            res[s].unpack(rv);
            #pragma unroll
            for (int j = 0; j < 8; j++) acc[s][j] += rv[j];
        }
        if (!p.layer_norm) {
            #pragma unroll
            for (int j = 0; j < 8; j++) acc[s][j] = rounded<bf16>(acc[s][j]);  // y as stored (y_norm reads it)
            if (valid[s]) store8((bf16*)p.y + (pix0 + s) * p.C + 8 * g, acc[s]);
        }
    }
}

// Each output pixel's mean and 1/sqrt(var + eps) over its channels, two-pass: every thread's
// sums of its 8 channels go to `sums` ([npix][G]), then K lanes per pixel add them; then the
// LayerNorm written (y: no affine; else y_norm with out_weight, out_bias). px: the run's first
// pixel among the block's npix. Four barriers, the first after the sums are written (a caller
// whose sums overwrite what other threads still read waits before the call).
__device__ __forceinline__ void dw_output_norm(const float (&acc)[4][8], const DepthwiseParams& p, const bool (&valid)[4], int64_t pix0, int g, int G,
                                               float* sums, float* mean_s, float* rstd_s, int px, int npix, int K, int lane_k, int per_round, unsigned mask) {
    const int t = threadIdx.x;
    auto pixel_totals = [&](float* out, bool rstd) {
        for (int base = 0; base < npix; base += per_round) {
            const int q = base + t / K;
            const bool on = t / K < per_round && q < npix;
            float v = 0.f;
            if (on)
                for (int k = lane_k; k < G; k += K) v += sums[q * G + k];
            v = lane_group_sum(v, K, mask);
            if (on && lane_k == 0) out[q] = rstd ? rsqrtf(v / p.C + p.eps) : v / p.C;
        }
    };
    #pragma unroll
    for (int s = 0; s < 4; s++) {
        float m = 0.f;
        #pragma unroll
        for (int j = 0; j < 8; j++) m += acc[s][j];
        sums[(px + s) * G + g] = m;
    }
    __syncthreads();
    pixel_totals(mean_s, false);
    __syncthreads();
    #pragma unroll
    for (int s = 0; s < 4; s++) {
        const float m = mean_s[px + s];
        float d = 0.f;
        #pragma unroll
        for (int j = 0; j < 8; j++) d += (acc[s][j] - m) * (acc[s][j] - m);
        sums[(px + s) * G + g] = d;
    }
    __syncthreads();
    pixel_totals(rstd_s, true);
    __syncthreads();
    // Two branches: terms loaded in one branch and used after it were carried over the rolling
    // kernel's steps in local memory.
    if (p.layer_norm) {
        #pragma unroll
        for (int s = 0; s < 4; s++) {
            if (!valid[s]) continue;
            const float m = mean_s[px + s], rs = rstd_s[px + s];
            float o[8];
            #pragma unroll
            for (int j = 0; j < 8; j++) o[j] = (acc[s][j] - m) * rs;
            store8((bf16*)p.y + (pix0 + s) * p.C + 8 * g, o);
        }
    } else {
        float ow[8], ob[8];
        ldg8((const bf16*)p.out_weight + 8 * g, ow);
        ldg8((const bf16*)p.out_bias + 8 * g, ob);
        #pragma unroll
        for (int s = 0; s < 4; s++) {
            if (!valid[s]) continue;
            const float m = mean_s[px + s], rs = rstd_s[px + s];
            float o[8];
            #pragma unroll
            for (int j = 0; j < 8; j++) o[j] = (acc[s][j] - m) * rs * ow[j] + ob[j];
            store8((bf16*)p.y_norm + (pix0 + s) * p.C + 8 * g, o);
        }
    }
}

// At most 85 registers (ptxas: 80, no spills) so that three blocks of 256 fit an SM; the
// residual is loaded after the taps for that (held over them it spilled).
extern "C" __global__ void __launch_bounds__(256, 3) depthwise_tile_bf16(DepthwiseParams p) {
    pdl_enter();
    constexpr int TW = CASCADE_DW_TILE_W, HW = TW + 2;
    const int G = p.C >> 3, TH = p.tile_h, NP = HW * (TH + 2), RUNS = 2 * TH;
    extern __shared__ uint4 dw_smem[];
    uint4* tile = dw_smem;
    uint4* park = tile + NP * G;
    uint4* aff = park + 9 * G;
    float2* stats = (float2*)(aff + 2 * G);
    __shared__ float mean_s[TW * CASCADE_DW_TILE_MAX_H], rstd_s[TW * CASCADE_DW_TILE_MAX_H];
    const int w0 = blockIdx.x * TW, h0 = blockIdx.y * TH, t = threadIdx.x, nt = blockDim.x;
    const int g = t % G, run = t / G;
    const int64_t b = blockIdx.z, plane = (int64_t)p.H * p.W;
    const bf16* x = (const bf16*)p.x + b * plane * p.C;
    const float* st = p.in_stats ? p.in_stats + 2 * b * plane : nullptr;
    const bool norm_in = st || p.in_norm_here;  // an input LayerNorm, its statistics read or computed
    const bf16* ab = p.in_ab ? (const bf16*)p.in_ab + b * p.in_ab_stride : nullptr;
    // The reductions over a pixel's channels: K lanes per pixel, nt / K pixels at a time.
    int K = 1;
    while (2 * K <= G / 4 && K < 32) K *= 2;
    const int lane_k = t & (K - 1), per_round = nt / K;
    const unsigned mask = (t | 31) < nt ? 0xffffffffu : (1u << (nt & 31)) - 1u;
    // Halo pixel q's image coordinates, clamped into the image (replicate padding reads the
    // nearest pixel), and whether it lies inside.
    auto halo = [&](int q, int& h, int& w) {
        h = h0 + q / HW - 1, w = w0 + q % HW - 1;
        const bool inside = h >= 0 && h < p.H && w >= 0 && w < p.W;
        h = min(max(h, 0), p.H - 1), w = min(max(w, 0), p.W - 1);
        return inside;
    };

    // 1. Everything the tile reads, in one group of copies.
    for (int q = run; q < NP; q += RUNS) {
        int h, w;
        const bool inside = halo(q, h, w);
        cp_async16(&tile[q * G + g], x + ((int64_t)h * p.W + w) * p.C + 8 * g, inside || p.replicate);
    }
    if (st)
        for (int q = t; q < NP; q += nt) {
            int h, w;
            halo(q, h, w);
            cp_async8(&stats[q], st + 2 * ((int64_t)h * p.W + w));
        }
    if (run == 0 && (norm_in || ab)) {
        cp_async16(&aff[g], norm_in ? (const bf16*)p.in_weight + 8 * g : ab + 8 * g, true);
        cp_async16(&aff[G + g], norm_in ? (const bf16*)p.in_bias + 8 * g : ab + p.C + 8 * g, true);
    }
    cp_async_commit();
    // The weights of channels 8g .. 8g + 7 ([C, 9]: 72 consecutive), parked tap by tap.
    if (run == 0) {
        uint32_t raw[36];
        #pragma unroll
        for (int i = 0; i < 9; i++) {
            const uint4 a = __ldg((const uint4*)((const bf16*)p.weight + (int64_t)g * 72 + 8 * i));
            raw[4 * i] = a.x, raw[4 * i + 1] = a.y, raw[4 * i + 2] = a.z, raw[4 * i + 3] = a.w;
        }
        auto half = [&](int e) { return (e & 1) ? raw[e >> 1] >> 16 : raw[e >> 1] & 0xffffu; };
        #pragma unroll
        for (int k = 0; k < 9; k++)
            park[k * G + g] = make_uint4(half(k) | half(9 + k) << 16, half(18 + k) | half(27 + k) << 16,
                                         half(36 + k) | half(45 + k) << 16, half(54 + k) | half(63 + k) << 16);
    }
    cp_async_wait<0>();
    __syncthreads();

    // 1b. in_norm_here: each halo pixel's mean and 1/sqrt(var + eps) over its channels, two-pass
    // as row_stats.
    if (p.in_norm_here) {
        for (int base = 0; base < NP; base += per_round) {
            const int q = base + t / K;
            const bool on = t / K < per_round && q < NP;
            const float2 st = dw_chunk_stats(tile + (on ? q : 0) * G, on, G, K, lane_k, mask, p.C, p.in_eps);
            if (on && lane_k == 0) stats[q] = st;
        }
        __syncthreads();
    }

    // 2. The input transform, in place: tap = (x − mean) · rstd · weight + bias, or
    // x · (1 + a) + s (whose centre pixels are also the modulated x_out); zero padding's pixels
    // stay zero.
    if (norm_in || ab) {
        float fa[8], fb[8];
        unpack8(aff[g], fa);
        unpack8(aff[G + g], fb);
        if (!norm_in)
            #pragma unroll
            for (int j = 0; j < 8; j++) fa[j] += 1.f;
        for (int q = run; q < NP; q += RUNS) {
            int h, w;
            if (!halo(q, h, w) && !p.replicate) continue;
            const uint4 packed = dw_transform(tile[q * G + g], norm_in, norm_in ? stats[q] : make_float2(0.f, 0.f), fa, fb);
            tile[q * G + g] = packed;
            const int hy = q / HW, hx = q % HW;  // the tile's own pixels: rows 1 .. TH, columns 1 .. TW
            if (ab && hy >= 1 && hy <= TH && hx >= 1 && hx <= TW && h0 + hy - 1 < p.H && w0 + hx - 1 < p.W)
                *(uint4*)((bf16*)p.x_out + (b * plane + (int64_t)h * p.W + w) * p.C + 8 * g) = packed;
        }
        __syncthreads();
    }

    // 3. The convolution: channels 8g .. 8g + 7 of pixels c0 .. c0 + 3 of tile row r.
    const int r = run >> 1, c0 = (run & 1) * 4;
    const int h = h0 + r;
    bool valid[4];
    #pragma unroll
    for (int s = 0; s < 4; s++) valid[s] = h < p.H && w0 + c0 + s < p.W;
    const int64_t pix0 = b * plane + (int64_t)h * p.W + w0 + c0;  // pixel of output s: pix0 + s
    float acc[4][8];
    dw_bias_init(acc, (const bf16*)p.bias + 8 * g);
    #pragma unroll
    for (int ky = 0; ky < 3; ky++) {
        float wt[3][8];
        #pragma unroll
        for (int kx = 0; kx < 3; kx++) unpack8(park[(ky * 3 + kx) * G + g], wt[kx]);
        dw_taps_row(acc, wt, tile + ((r + ky) * HW + c0) * G + g, G);
    }
    dw_residual_and_store(acc, p, valid, pix0, g);
    if (!p.layer_norm && !p.y_norm) return;  // the same for the whole block

    // 4. The output LayerNorm, its sums in the halo's space once every thread has read it.
    __syncthreads();
    dw_output_norm(acc, p, valid, pix0, g, G, (float*)dw_smem, mean_s, rstd_s, r * TW + c0, TW * TH, K, lane_k, per_round, mask);
}

// ---- The rolling tiled path (opt-in until measured: CASCADE_DW_TILE=roll) -------------------
// The tiled kernel above copies, normalises and converts every halo pixel of its tile: on Stage
// A's 256² × 384 launch a tile of 8 × 2 outputs takes 10 × 4 = 40 pixels (2.5 per output), and
// the halo's statistics and transform are about half of its instructions (it is bound by
// instructions, not memory). Here a block takes a column strip CASCADE_DW_ROLL_W = 16 pixels wide
// and roll_steps steps of tile_h output rows down it. The halo rows live in a ring of
// 2 · tile_h + 2 rows of shared memory (halo row rel of the block, image row hb − 1 + rel, in slot
// rel % (2 · tile_h + 2)): each is copied, normalised and transformed once, and the next step's
// tile_h rows are copied (cp.async) while the current step computes. Stage A's halo falls to
// (18 / 16) · (1 + 2 / rows per block) pixels per output, about 1.2 to 1.3. The arithmetic is the
// tiled kernel's, in the same order (the same sums, the same roundings), so the two agree bit for
// bit; the taps and the transform's terms are parked as f32 (no unpacking in the loop).
//
// Thread t takes channel group g = t % G (8 channels; G = C / 8) and run t / G throughout: in the
// convolution a run of 4 pixels of one row of the step (4 runs a row, 4 · tile_h · G threads), in
// the copies and the transform halo pixels run, run + 4 · tile_h, … of the rows new to the step.
// The input LayerNorm's statistics are taken by K lanes per pixel as in the tiled kernel. bf16
// only, with the input statistics computed here (in_norm_here) or no input LayerNorm.
//
// Shared memory (dynamic): the ring [slots · 18][G] (16-byte chunks), the taps [9][G] and the
// transform's two terms [2][G] as f32 (32 bytes a chunk), the ring's input statistics [slots · 18]
// (float2), the output LayerNorm's sums [16 · tile_h][G] and its means and 1/σ [2][16 · tile_h].
extern "C" __global__ void __launch_bounds__(192, 3) depthwise_roll_bf16(DepthwiseParams p) {
    pdl_enter();
    constexpr int TW = CASCADE_DW_ROLL_W, HW = TW + 2, RPR = TW / 4;
    const int G = p.C >> 3, TH = p.tile_h, SLOTS = 2 * TH + 2, RUNS = RPR * TH, npix = TW * TH;
    extern __shared__ uint4 dw_smem[];
    uint4* ring = dw_smem;
    float4* park = (float4*)(ring + SLOTS * HW * G);
    float4* aff = park + 18 * G;
    float2* stats = (float2*)(aff + 4 * G);
    float* sums = (float*)(stats + SLOTS * HW);
    float* mean_s = sums + npix * G;
    float* rstd_s = mean_s + npix;
    const int t = threadIdx.x, nt = blockDim.x, g = t % G, run = t / G;
    const int w0 = blockIdx.x * TW, hb = blockIdx.y * TH * p.roll_steps;
    const int steps = min(p.roll_steps, (p.H - hb + TH - 1) / TH);
    const int64_t b = blockIdx.z, plane = (int64_t)p.H * p.W;
    const bf16* x = (const bf16*)p.x + b * plane * p.C;
    const bool norm_in = p.in_norm_here;
    const bf16* ab = p.in_ab ? (const bf16*)p.in_ab + b * p.in_ab_stride : nullptr;
    int K = 1;
    while (2 * K <= G / 4 && K < 32) K *= 2;
    const int lane_k = t & (K - 1), per_round = nt / K;
    const unsigned mask = (t | 31) < nt ? 0xffffffffu : (1u << (nt & 31)) - 1u;
    // Pixel q of the halo rows from rel0 on (slot0: rel0's slot; at most SLOTS rows): its ring
    // cell, its image coordinates clamped into the image (replicate padding reads the nearest
    // pixel), and whether it lies inside.
    auto cell = [&](int slot0, int q) {
        const int slot = slot0 + q / HW;
        return (slot < SLOTS ? slot : slot - SLOTS) * HW + q % HW;
    };
    auto locate = [&](int rel0, int q, int& h, int& w) {
        h = hb - 1 + rel0 + q / HW, w = w0 + q % HW - 1;
        const bool inside = h >= 0 && h < p.H && w >= 0 && w < p.W;
        h = min(max(h, 0), p.H - 1), w = min(max(w, 0), p.W - 1);
        return inside;
    };
    // Halo rows rel0 .. rel0 + n − 1 into the ring, one group of copies.
    auto copy_rows = [&](int rel0, int n) {
        const int slot0 = rel0 % SLOTS;
        for (int q = run; q < n * HW; q += RUNS) {
            int h, w;
            const bool inside = locate(rel0, q, h, w);
            cp_async16(&ring[cell(slot0, q) * G + g], x + ((int64_t)h * p.W + w) * p.C + 8 * g, inside || p.replicate);
        }
        cp_async_commit();
    };

    copy_rows(0, TH + 2);
    // The taps of channels 8g .. 8g + 7 ([C, 9]: 72 consecutive) as f32, tap by tap, and the
    // input transform's terms.
    if (run == 0) {
        uint32_t raw[36];
        #pragma unroll
        for (int i = 0; i < 9; i++) {
            const uint4 a = __ldg((const uint4*)((const bf16*)p.weight + (int64_t)g * 72 + 8 * i));
            raw[4 * i] = a.x, raw[4 * i + 1] = a.y, raw[4 * i + 2] = a.z, raw[4 * i + 3] = a.w;
        }
        auto tap = [&](int e) { return __uint_as_float(((e & 1) ? raw[e >> 1] >> 16 : raw[e >> 1] & 0xffffu) << 16); };
        #pragma unroll
        for (int k = 0; k < 9; k++) {
            park[2 * (k * G + g)] = make_float4(tap(k), tap(9 + k), tap(18 + k), tap(27 + k));
            park[2 * (k * G + g) + 1] = make_float4(tap(36 + k), tap(45 + k), tap(54 + k), tap(63 + k));
        }
        if (norm_in || ab) {
            float fa[8], fb[8];
            ldg8(norm_in ? (const bf16*)p.in_weight + 8 * g : ab + 8 * g, fa);
            ldg8(norm_in ? (const bf16*)p.in_bias + 8 * g : ab + p.C + 8 * g, fb);
            if (!norm_in)
                #pragma unroll
                for (int j = 0; j < 8; j++) fa[j] += 1.f;
            aff[2 * g] = make_float4(fa[0], fa[1], fa[2], fa[3]);
            aff[2 * g + 1] = make_float4(fa[4], fa[5], fa[6], fa[7]);
            aff[2 * (G + g)] = make_float4(fb[0], fb[1], fb[2], fb[3]);
            aff[2 * (G + g) + 1] = make_float4(fb[4], fb[5], fb[6], fb[7]);
        }
    }
    const int r = run / RPR, c0 = (run % RPR) * 4, px = r * TW + c0;

    for (int step = 0; step < steps; step++) {
        // The rows new to this step (all of its halo at first), and the next step's in flight.
        const int new0 = step == 0 ? 0 : step * TH + 2, fresh = (step == 0 ? TH + 2 : TH) * HW;
        const int slot0 = new0 % SLOTS, top = (step * TH + r) % SLOTS;  // top: the slot of row r's first row of taps
        if (step + 1 < steps) {
            copy_rows((step + 1) * TH + 2, TH);  // into the slots of rows only the last step read
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        // 1. The new pixels' input statistics: mean and 1/sqrt(var + eps), two-pass.
        if (norm_in) {
            for (int base = 0; base < fresh; base += per_round) {
                const int q = base + t / K;
                const bool on = t / K < per_round && q < fresh;
                const float2 st = dw_chunk_stats(ring + (on ? cell(slot0, q) : 0) * G, on, G, K, lane_k, mask, p.C, p.in_eps);
                if (on && lane_k == 0) stats[cell(slot0, q)] = st;
            }
            __syncthreads();
        }

        // 2. The input transform of the new pixels, in place (as the tiled kernel's); zero
        // padding's pixels stay zero. A modulation's centre pixels of this block's own rows are
        // also the modulated x_out.
        if (norm_in || ab) {
            float fa[8], fb[8];
            {
                const float4 a0 = aff[2 * g], a1 = aff[2 * g + 1], b0 = aff[2 * (G + g)], b1 = aff[2 * (G + g) + 1];
                fa[0] = a0.x, fa[1] = a0.y, fa[2] = a0.z, fa[3] = a0.w, fa[4] = a1.x, fa[5] = a1.y, fa[6] = a1.z, fa[7] = a1.w;
                fb[0] = b0.x, fb[1] = b0.y, fb[2] = b0.z, fb[3] = b0.w, fb[4] = b1.x, fb[5] = b1.y, fb[6] = b1.z, fb[7] = b1.w;
            }
            for (int q = run; q < fresh; q += RUNS) {
                int h, w;
                if (!locate(new0, q, h, w) && !p.replicate) continue;
                const int at = cell(slot0, q);
                const uint4 packed = dw_transform(ring[at * G + g], norm_in, norm_in ? stats[at] : make_float2(0.f, 0.f), fa, fb);
                ring[at * G + g] = packed;
                const int rel = new0 + q / HW, col = q % HW;  // the block's own rows: rel 1 .. steps · TH
                if (ab && col >= 1 && col <= TW && w0 + col - 1 < p.W && rel >= 1 && rel <= steps * TH && hb + rel - 1 < p.H)
                    *(uint4*)((bf16*)p.x_out + (b * plane + (int64_t)h * p.W + w) * p.C + 8 * g) = packed;
            }
            __syncthreads();
        }

        // 3. The convolution: channels 8g .. 8g + 7 of pixels c0 .. c0 + 3 of the step's row r.
        const int h = hb + step * TH + r;
        bool valid[4];
        #pragma unroll
        for (int s = 0; s < 4; s++) valid[s] = h < p.H && w0 + c0 + s < p.W;
        const int64_t pix0 = b * plane + (int64_t)h * p.W + w0 + c0;  // pixel of output s: pix0 + s
        float acc[4][8];
        dw_bias_init(acc, (const bf16*)p.bias + 8 * g);
        #pragma unroll
        for (int ky = 0; ky < 3; ky++) {
            float wt[3][8];
            #pragma unroll
            for (int kx = 0; kx < 3; kx++) {
                const float4 a = park[2 * ((ky * 3 + kx) * G + g)], c = park[2 * ((ky * 3 + kx) * G + g) + 1];
                wt[kx][0] = a.x, wt[kx][1] = a.y, wt[kx][2] = a.z, wt[kx][3] = a.w;
                wt[kx][4] = c.x, wt[kx][5] = c.y, wt[kx][6] = c.z, wt[kx][7] = c.w;
            }
            const int slot = top + ky < SLOTS ? top + ky : top + ky - SLOTS;
            dw_taps_row(acc, wt, ring + (slot * HW + c0) * G + g, G);
        }
        dw_residual_and_store(acc, p, valid, pix0, g);
        if (!p.layer_norm && !p.y_norm) {  // the same for the whole block
            __syncthreads();  // the ring's rows read before the next step's copies land in them
            continue;
        }
        // 4. The output LayerNorm (its first barrier also ends every read of the ring in this step).
        dw_output_norm(acc, p, valid, pix0, g, G, sums, mean_s, rstd_s, px, npix, K, lane_k, per_round, mask);
    }
}

// One thread per element of the used high-resolution region [B, H*r, W*r, C].
// Index arithmetic in I: 32-bit when the tensor has fewer than 2^31 elements (a division by a
// run-time value costs several times more in 64 bits).
template <typename T, typename I> __device__ void pixel_shuffle_loop(const PixelShuffleParams& p) {
    const I r = p.r, Wr = (I)p.W * r, Hr = (I)p.H * r, C = p.C;
    const I total = (I)p.B * Hr * Wr * C;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
        const I c = i % C;
        I t = i / C;
        const I X = t % Wr;
        t /= Wr;
        const I Y = t % Hr, b = t / Hr;
        const I h = Y / r, ii = Y % r, w = X / r, jj = X % r;
        const int64_t lo = p.phase_major ? ((((int64_t)b * p.H + h) * p.W + w) * r * r + ii * r + jj) * C + c
                                         : ((((int64_t)b * p.H + h) * p.W + w) * C + c) * r * r + ii * r + jj;
        const int64_t hi = (((int64_t)b * p.Hs + Y) * p.Ws + X) * C + c;
        if (p.unshuffle) ((T*)p.y)[lo] = ((const T*)p.x)[hi];
        else ((T*)p.y)[hi] = ((const T*)p.x)[lo];
    }
}
template <typename T> __device__ void pixel_shuffle_impl(const PixelShuffleParams& p) {
    const int64_t total = (int64_t)p.B * p.H * p.W * p.C * p.r * p.r;
    if (p.phase_major && !p.unshuffle && p.C % 8 == 0 && total / 8 < (1ll << 31) && aligned16(p.x) && aligned16(p.y)) {
        // Each sub-pixel's channels are contiguous on both sides: one thread per output pixel
        // and 8 channels, 16-byte copies.
        const uint32_t cv = p.C / 8, Wr = p.W * p.r, Hr = p.H * p.r;
        GRID_STRIDE32(v, total / 8) {
            const uint32_t c = (v % cv) * 8, pix = v / cv, X = pix % Wr, Y = (pix / Wr) % Hr, b = pix / (Wr * Hr);
            const int64_t lo = ((((int64_t)b * p.H + Y / p.r) * p.W + X / p.r) * p.r * p.r + (Y % p.r) * p.r + X % p.r) * p.C + c;
            copy8((T*)p.y + (int64_t)pix * p.C + c, (const T*)p.x + lo);
        }
        return;
    }
    if (total < (1ll << 31)) pixel_shuffle_loop<T, uint32_t>(p);
    else pixel_shuffle_loop<T, int64_t>(p);
}
extern "C" __global__ void pixel_shuffle_f32(PixelShuffleParams p) { pdl_enter(); pixel_shuffle_impl<float>(p); }
extern "C" __global__ void pixel_shuffle_bf16(PixelShuffleParams p) { pdl_enter(); pixel_shuffle_impl<bf16>(p); }

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
                if (hs >= 0 && hs < p.H && ws >= 0 && ws < p.W) {
                    copy8(out + tap * p.C, (const T*)p.x + (((int64_t)b * p.H + hs) * p.W + ws) * p.C + c);
                } else {
                    for (int i = 0; i < (int)sizeof(T) / 2; i++) ((uint4*)(out + tap * p.C))[i] = make_uint4(0u, 0u, 0u, 0u);
                }
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
extern "C" __global__ void im2col3x3_f32(Im2Col3x3Params p) { pdl_enter(); im2col3x3_impl<float>(p); }
extern "C" __global__ void im2col3x3_bf16(Im2Col3x3Params p) { pdl_enter(); im2col3x3_impl<bf16>(p); }
