// Element-wise kernels: dtype casts and fills, activations (optionally after a bias), residual
// add, TimestepBlock modulation, classifier-free guidance and the DDPM update. All arithmetic
// in f32; bf16 is a storage type.
#include "common.cuh"

// Converts n elements; f32 round-trips exactly, narrowing rounds to nearest even.
extern "C" __global__ void cast(CastParams p) {
    pdl_enter();
    GRID_STRIDE(i, p.n) { store_from_f32(p.dst, i, p.dst_dtype, load_as_f32(p.src, i, p.src_dtype)); }
}

// Writes `value` into every element (NaN poisoning in tests, zeroing).
extern "C" __global__ void fill(FillParams p) {
    pdl_enter();
    GRID_STRIDE(i, p.n) { store_from_f32(p.dst, i, p.dtype, p.value); }
}

// T: the type the result is stored as (which GELU: common.cuh gelu_as).
template <typename T, int ACT> __device__ __forceinline__ float activation(float v) {
    return ACT == CASCADE_ACT_GELU ? gelu_as<T>(v) : ACT == CASCADE_ACT_SILU ? silu(v) : v;
}
// Eight elements per thread and step (see load8); the bias's channel by one 32-bit remainder per
// eight elements.
template <typename T, int ACT> __device__ void act_vec8(const ActParams& p) {
    const T* x = (const T*)p.x;
    const T* b = (const T*)p.bias;
    T* y = (T*)p.y;
    const uint32_t cv = p.C / 8;
    GRID_STRIDE32(v, p.n / 8) {
        float e[8], be[8];
        load8(x + 8 * (int64_t)v, e);
        if (b) {
            load8(b + 8 * (v % cv), be);
            for (int j = 0; j < 8; j++) e[j] += be[j];
        }
        for (int j = 0; j < 8; j++) e[j] = activation<T, ACT>(e[j]);
        store8(y + 8 * (int64_t)v, e);
    }
}
template <typename T> __device__ void act_impl(const ActParams& p) {
    const T* x = (const T*)p.x;
    const T* b = (const T*)p.bias;
    T* y = (T*)p.y;
    if (p.C % 8 == 0 && p.n / 8 < (1ll << 31) && aligned16(x) && aligned16(y) && (!b || aligned16(b))) {
        if (p.act == CASCADE_ACT_GELU) act_vec8<T, CASCADE_ACT_GELU>(p);
        else if (p.act == CASCADE_ACT_SILU) act_vec8<T, CASCADE_ACT_SILU>(p);
        else act_vec8<T, CASCADE_ACT_NONE>(p);
        return;
    }
    GRID_STRIDE(i, p.n) {
        float v = to_f32(x[i]);
        if (b) v += to_f32(b[i % p.C]);
        if (p.act == CASCADE_ACT_GELU) v = gelu_as<T>(v);
        else if (p.act == CASCADE_ACT_SILU) v = silu(v);
        y[i] = from_f32<T>(v);
    }
}
extern "C" __global__ void act_f32(ActParams p) { pdl_enter(); act_impl<float>(p); }
extern "C" __global__ void act_bf16(ActParams p) { pdl_enter(); act_impl<bf16>(p); }

template <typename T> __device__ void add_impl(const AddParams& p) {
    const T *a = (const T*)p.a, *b = (const T*)p.b;
    T* y = (T*)p.y;
    if (p.n % 8 == 0 && p.n / 8 < (1ll << 31) && aligned16(a) && aligned16(b) && aligned16(y)) {
        GRID_STRIDE32(v, p.n / 8) {
            float e[8], f[8];
            load8(a + 8 * (int64_t)v, e);
            load8(b + 8 * (int64_t)v, f);
            for (int j = 0; j < 8; j++) e[j] += f[j];
            store8(y + 8 * (int64_t)v, e);
        }
        return;
    }
    GRID_STRIDE(i, p.n) { ((T*)p.y)[i] = from_f32<T>(to_f32(((const T*)p.a)[i]) + to_f32(((const T*)p.b)[i])); }
}
extern "C" __global__ void add_f32(AddParams p) { pdl_enter(); add_impl<float>(p); }
extern "C" __global__ void add_bf16(AddParams p) { pdl_enter(); add_impl<bf16>(p); }

// x and the terms are T; the result is stored as Y: T in place, or bf16 for an f32 x whose
// modulated value is only read as bf16 (a level's last TimestepBlock before a repeat mapper).
template <typename T, typename Y> __device__ void modulate_impl(const ModulateParams& p) {
    const T* x = (const T*)p.x;
    const T* ab = (const T*)p.ab;
    int64_t total = (int64_t)p.B * p.N * p.C;
    if (p.C % 8 == 0 && p.ab_stride % 8 == 0 && total / 8 < (1ll << 31) && aligned16(x) && aligned16(ab) && aligned16(p.y)) {
        const uint32_t cv = p.C / 8, per_sample = (uint32_t)(p.N * cv);
        GRID_STRIDE32(v, total / 8) {
            const uint32_t c = (v % cv) * 8, b = v / per_sample;
            float e[8], a[8], s[8];
            load8(x + 8 * (int64_t)v, e);
            load8(ab + b * p.ab_stride + c, a);
            load8(ab + b * p.ab_stride + p.C + c, s);
            for (int j = 0; j < 8; j++) e[j] = e[j] * (1.f + a[j]) + s[j];
            store8((Y*)p.y + 8 * (int64_t)v, e);
        }
        return;
    }
    GRID_STRIDE(i, total) {
        int64_t c = i % p.C, b = i / ((int64_t)p.N * p.C);
        float a = to_f32(ab[b * p.ab_stride + c]), s = to_f32(ab[b * p.ab_stride + p.C + c]);
        ((Y*)p.y)[i] = from_f32<Y>(to_f32(x[i]) * (1.f + a) + s);
    }
}
extern "C" __global__ void modulate_f32(ModulateParams p) { pdl_enter(); modulate_impl<float, float>(p); }
extern "C" __global__ void modulate_bf16(ModulateParams p) { pdl_enter(); modulate_impl<bf16, bf16>(p); }
extern "C" __global__ void modulate_f32_bf16(ModulateParams p) { pdl_enter(); modulate_impl<float, bf16>(p); }

template <typename T> __device__ void cfg_impl(const CfgParams& p) {
    const T* e = (const T*)p.eps;
    float w = *p.w;
    GRID_STRIDE(i, p.n) {
        float c = to_f32(e[i]), u = to_f32(e[p.n + i]);
        ((T*)p.y)[i] = from_f32<T>(u + w * (c - u));
    }
}
extern "C" __global__ void cfg_f32(CfgParams p) { pdl_enter(); cfg_impl<float>(p); }
extern "C" __global__ void cfg_bf16(CfgParams p) { pdl_enter(); cfg_impl<bf16>(p); }

template <typename T> __device__ void ddpm_step_impl(const DdpmStepParams& p) {
    float c0 = p.coef[0], c1 = p.coef[1], c2 = p.coef[2];
    GRID_STRIDE(i, p.n) {
        float v = c0 * (to_f32(((const T*)p.x)[i]) - c1 * to_f32(((const T*)p.eps)[i]));
        if (p.noise) v += c2 * to_f32(((const T*)p.noise)[i]);
        ((T*)p.y)[i] = from_f32<T>(v);
    }
}
extern "C" __global__ void ddpm_step_f32(DdpmStepParams p) { pdl_enter(); ddpm_step_impl<float>(p); }
extern "C" __global__ void ddpm_step_bf16(DdpmStepParams p) { pdl_enter(); ddpm_step_impl<bf16>(p); }

template <typename T> __device__ void affine_impl(const AffineParams& p) {
    GRID_STRIDE(i, p.n) { ((T*)p.y)[i] = from_f32<T>(p.a * to_f32(((const T*)p.x)[i]) + p.b); }
}
extern "C" __global__ void affine_f32(AffineParams p) { pdl_enter(); affine_impl<float>(p); }
extern "C" __global__ void affine_bf16(AffineParams p) { pdl_enter(); affine_impl<bf16>(p); }

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Random weights for benchmarks and full-size checks, generated where they are used.
extern "C" __global__ void fill_random(RandomParams p) {
    pdl_enter();
    GRID_STRIDE(i, p.n) {
        uint64_t h = splitmix64(p.seed ^ splitmix64((uint64_t)i));
        float u1 = ((float)(h >> 40) + 1.f) * (1.f / 16777216.f);  // (0, 1]
        float u2 = (float)((h >> 16) & 0xFFFFFF) * (1.f / 16777216.f);
        float z = sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
        store_from_f32(p.y, i, p.dtype, p.mean + p.scale * z);
    }
}

// The arithmetic of the host's `cpu::quantize_u8`: one f32 product, then round half to even.
template <typename T> __device__ void to_rgb8_impl(const ToRgb8Params& p) {
    GRID_STRIDE(i, p.n) {
        const float v = to_f32(((const T*)p.x)[i]);
        if (!isfinite(v)) atomicMin(p.first_bad, (uint32_t)i);
        p.y[i] = (uint8_t)rintf(fminf(fmaxf(v, 0.f), 1.f) * 255.f);
    }
}
extern "C" __global__ void to_rgb8_f32(ToRgb8Params p) { pdl_enter(); to_rgb8_impl<float>(p); }
extern "C" __global__ void to_rgb8_bf16(ToRgb8Params p) { pdl_enter(); to_rgb8_impl<bf16>(p); }
