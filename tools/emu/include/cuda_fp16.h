// Emulated f16 storage type, through the compiler's _Float16 (IEEE binary16, nearest even).
#pragma once
#include "cuda_emu.h"

struct __half {
    uint16_t x;
};

inline float __half2float(__half h) {
    _Float16 v;
    memcpy(&v, &h.x, 2);
    return (float)v;
}
inline __half __float2half_rn(float f) {
    _Float16 v = (_Float16)f;
    __half h;
    memcpy(&h.x, &v, 2);
    return h;
}
inline __half __float2half(float f) { return __float2half_rn(f); }
