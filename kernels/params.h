// Kernel parameter structs, shared by nvcc (C++) and bindgen (C): the Rust side is generated
// from this file, so both agree on every field by construction. Fixed-width types only.
// Each kernel takes one of these by value. Pointers are device addresses; the comment on each
// says the layout. Shapes are scalars here, never device memory, so launches capture into
// CUDA graphs.
#pragma once
#include <stdint.h>

// Element type codes (Rust: DType::code).
#define CASCADE_F32 0
#define CASCADE_BF16 1
#define CASCADE_F16 2

// Element-wise dtype conversion: dst[i] = (dst type) src[i].
typedef struct CastParams {
    const void* src;   // [n] of src_dtype
    void* dst;         // [n] of dst_dtype
    int64_t n;
    int32_t src_dtype;
    int32_t dst_dtype;
} CastParams;

// dst[i] = value (converted to dtype): used to poison outputs in tests and to zero buffers.
typedef struct FillParams {
    void* dst;         // [n] of dtype
    int64_t n;
    float value;
    int32_t dtype;
} FillParams;
