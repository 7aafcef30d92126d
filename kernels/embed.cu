// Embeddings: the timestep-ratio embedding (computed in f32, spec §3.7) and token + position
// lookup (CLIP).
#include "common.cuh"

template <typename T> __device__ void timestep_embed_impl(const TimestepEmbedParams& p) {
    int half = p.dim / 2, width = p.dim * (1 + p.n_extra);
    GRID_STRIDE(i, (int64_t)p.B * width) {
        int b = i / width, j = i % width;
        int part = j / p.dim, k = j % p.dim;
        float r = part == 0 ? p.t[b] * p.max_positions : 0.f;
        float v;
        if (k < 2 * half) {
            float arg = r * p.freqs[k % half];
            v = k < half ? sinf(arg) : cosf(arg);
        } else {
            v = 0.f;  // odd dim: one trailing zero
        }
        ((T*)p.y)[i] = from_f32<T>(v);
    }
}
extern "C" __global__ void timestep_embed_f32(TimestepEmbedParams p) { pdl_enter(); timestep_embed_impl<float>(p); }
extern "C" __global__ void timestep_embed_bf16(TimestepEmbedParams p) { pdl_enter(); timestep_embed_impl<bf16>(p); }

template <typename T> __device__ void token_embed_impl(const EmbedParams& p) {
    GRID_STRIDE(i, (int64_t)p.B * p.L * p.D) {
        int d = i % p.D;
        int64_t bl = i / p.D;
        int l = bl % p.L;
        int id = (int)p.ids[bl];
        id = min(max(id, 0), p.V - 1);  // the launcher validates ids; this only keeps reads in bounds
        float v = to_f32(((const T*)p.tok)[(int64_t)id * p.D + d]) + to_f32(((const T*)p.pos)[(int64_t)l * p.D + d]);
        ((T*)p.y)[i] = from_f32<T>(v);
    }
}
extern "C" __global__ void token_embed_f32(EmbedParams p) { pdl_enter(); token_embed_impl<float>(p); }
extern "C" __global__ void token_embed_bf16(EmbedParams p) { pdl_enter(); token_embed_impl<bf16>(p); }
