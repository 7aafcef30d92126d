// Bilinear resize (align_corners=True, f32 arithmetic in PyTorch's order) and channel concat.
#include "common.cuh"

template <typename T> __device__ void resize_bilinear_impl(const ResizeParams& p) {
    // PyTorch computes the scale once in f32, then src = scale * dst.
    float sh = p.Ho > 1 ? (float)(p.H - 1) / (float)(p.Ho - 1) : 0.f;
    float sw = p.Wo > 1 ? (float)(p.W - 1) / (float)(p.Wo - 1) : 0.f;
    int64_t total = (int64_t)p.B * p.Ho * p.Wo * p.C;
    const T* x = (const T*)p.x;
    GRID_STRIDE(i, total) {
        int c = i % p.C;
        int64_t t = i / p.C;
        int ox = t % p.Wo;
        t /= p.Wo;
        int oy = t % p.Ho;
        int64_t b = t / p.Ho;
        float fy = sh * oy, fx = sw * ox;
        int y0 = (int)fy, x0 = (int)fx;
        int y1 = min(y0 + 1, p.H - 1), x1 = min(x0 + 1, p.W - 1);
        float ly = fy - y0, lx = fx - x0;
        const T* base = x + b * p.H * p.W * p.C + c;
        float v00 = to_f32(base[((int64_t)y0 * p.W + x0) * p.C]), v01 = to_f32(base[((int64_t)y0 * p.W + x1) * p.C]);
        float v10 = to_f32(base[((int64_t)y1 * p.W + x0) * p.C]), v11 = to_f32(base[((int64_t)y1 * p.W + x1) * p.C]);
        float v = (1.f - ly) * ((1.f - lx) * v00 + lx * v01) + ly * ((1.f - lx) * v10 + lx * v11);
        ((T*)p.y)[i] = from_f32<T>(v);
    }
}
extern "C" __global__ void resize_bilinear_f32(ResizeParams p) { pdl_enter(); resize_bilinear_impl<float>(p); }
extern "C" __global__ void resize_bilinear_bf16(ResizeParams p) { pdl_enter(); resize_bilinear_impl<bf16>(p); }

// a and y are T; b is B: T, or f32 for a bf16 concatenation whose second part is an f32
// residual stream's skip (converted as it is copied).
template <typename T, typename B> __device__ void concat_impl(const ConcatParams& p) {
    int Cy = p.Ca + p.Cb;
    if (p.Ca % 8 == 0 && p.Cb % 8 == 0 && p.rows * Cy / 8 < (1ll << 31) && aligned16(p.a) && aligned16(p.b) && aligned16(p.y)) {
        // Eight channels per thread and step, copied as 16-byte pieces (b's converted).
        const uint32_t av = p.Ca / 8, yv = Cy / 8;
        GRID_STRIDE32(v, p.rows * Cy / 8) {
            const uint32_t r = v / yv, c8 = v % yv;
            T* dst = (T*)p.y + 8 * (int64_t)v;
            if (c8 < av) {
                copy8(dst, (const T*)p.a + (int64_t)r * p.Ca + 8 * c8);
            } else if constexpr (sizeof(B) == sizeof(T)) {
                copy8(dst, (const T*)p.b + (int64_t)r * p.Cb + 8 * (c8 - av));
            } else {
                float e[8];
                load8((const B*)p.b + (int64_t)r * p.Cb + 8 * (c8 - av), e);
                store8(dst, e);
            }
        }
        return;
    }
    GRID_STRIDE(i, p.rows * Cy) {
        int64_t r = i / Cy;
        int c = i % Cy;
        ((T*)p.y)[i] = c < p.Ca ? ((const T*)p.a)[r * p.Ca + c] : from_f32<T>(to_f32(((const B*)p.b)[r * p.Cb + c - p.Ca]));
    }
}
extern "C" __global__ void concat_f32(ConcatParams p) { pdl_enter(); concat_impl<float, float>(p); }
extern "C" __global__ void concat_bf16(ConcatParams p) { pdl_enter(); concat_impl<bf16, bf16>(p); }
extern "C" __global__ void concat_bf16_f32(ConcatParams p) { pdl_enter(); concat_impl<bf16, float>(p); }

template <typename T> __device__ void columns_impl(const ColumnsParams& p) {
    GRID_STRIDE(i, p.rows * p.width) {
        int64_t r = i / p.width;
        int c = i % p.width;
        ((T*)p.y)[i] = ((const T*)p.x)[r * p.C + p.col + c];
    }
}
extern "C" __global__ void columns_f32(ColumnsParams p) { pdl_enter(); columns_impl<float>(p); }
extern "C" __global__ void columns_bf16(ColumnsParams p) { pdl_enter(); columns_impl<bf16>(p); }
