// Emulated WMMA. A fragment holds its whole tile; the warp-collective operations are carried
// out by lane 0 alone (the other lanes' fragments are never read), so the data a kernel shares
// between lanes goes through memory exactly as on the GPU, where fragment layouts are opaque.
#pragma once
#include "cuda_bf16.h"
#include "cuda_fp16.h"

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

inline float as_f32(float v) { return v; }
inline float as_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float as_f32(__half v) { return __half2float(v); }

template <typename Use, int M, int N, int K> struct dims;
template <int M, int N, int K> struct dims<matrix_a, M, N, K> {
    enum { R = M, C = K };
};
template <int M, int N, int K> struct dims<matrix_b, M, N, K> {
    enum { R = K, C = N };
};
template <int M, int N, int K> struct dims<accumulator, M, N, K> {
    enum { R = M, C = N };
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    enum { R = dims<Use, M, N, K>::R, C = dims<Use, M, N, K>::C };
    float v[R * C];  // logical [row][col], the element type's values widened to f32
};

inline bool leader() { return emu::lane_id() == 0; }

template <typename Use, int M, int N, int K, typename T, typename Layout, typename S>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const S* p, unsigned ldm) {
    if (!leader()) return;
    const bool col = std::is_same<Layout, col_major>::value;
    for (int r = 0; r < f.R; r++)
        for (int c = 0; c < f.C; c++) f.v[r * f.C + c] = as_f32(col ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c]);
}
template <int M, int N, int K, typename T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void>& f, const T* p, unsigned ldm, layout_t layout) {
    if (!leader()) return;
    for (int r = 0; r < f.R; r++)
        for (int c = 0; c < f.C; c++) f.v[r * f.C + c] = layout == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
}
template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T, void>& f, unsigned ldm, layout_t layout) {
    if (!leader()) return;
    for (int r = 0; r < f.R; r++)
        for (int c = 0; c < f.C; c++) (layout == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c]) = f.v[r * f.C + c];
}
template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float value) {
    for (int i = 0; i < f.R * f.C; i++) f.v[i] = value;
}
template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC, void>& c) {
    if (!leader()) return;
    float out[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = c.v[i * N + j];
            for (int k = 0; k < K; k++) s += a.v[i * K + k] * b.v[k * N + j];
            out[i * N + j] = s;
        }
    memcpy(d.v, out, sizeof out);
}
}  // namespace wmma
}  // namespace nvcuda
