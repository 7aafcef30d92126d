// Dtype conversion and fill: the element-wise kernels the runtime itself needs.
#include "common.cuh"

// Converts n elements; f32 round-trips exactly, narrowing rounds to nearest even.
extern "C" __global__ void cast(CastParams p) {
    GRID_STRIDE(i, p.n) { store_from_f32(p.dst, i, p.dst_dtype, load_as_f32(p.src, i, p.src_dtype)); }
}

// Writes `value` into every element (NaN poisoning in tests, zeroing).
extern "C" __global__ void fill(FillParams p) {
    GRID_STRIDE(i, p.n) { store_from_f32(p.dst, i, p.dtype, p.value); }
}
