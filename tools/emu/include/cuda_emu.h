// CPU emulation of the CUDA device language, enough to compile kernels/*.cu with a host C++
// compiler and run them exactly as written: every CUDA thread is a fiber, a block's fibers run
// cooperatively on one OS thread, __syncthreads / __syncwarp / warp shuffles are real barriers
// (a barrier some threads can never reach is reported as a deadlock), shared memory is per
// block, and bf16/f16 round like the hardware (nearest even). Used only by the emulated driver
// in tools/emu (a test tool, never the engine).
#pragma once
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <type_traits>

struct uint3 {
    unsigned x, y, z;
};

namespace emu {
struct Fiber;
// Per block (thread-local: blocks of different launches may run on different OS threads).
extern thread_local uint3 block_idx, block_dim, grid_dim;
extern thread_local Fiber* current;
const uint3& thread_idx();
int lane_id();
int warp_id();
void sync_block();
void sync_warp();
void* dynamic_smem();
// 32 slots of 8 bytes for the current warp's shuffle exchange.
uint64_t* warp_slots();
}  // namespace emu

#define threadIdx (emu::thread_idx())
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One copy per OS thread; a block's fibers share it, blocks run one after another.
#define __shared__ static thread_local

inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::sync_warp(); }

template <typename T> inline T emu_shfl(T v, int src_lane_of_mine) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t* slots = emu::warp_slots();
    int lane = emu::lane_id();
    memcpy(&slots[lane], &v, sizeof(T));
    emu::sync_warp();
    T r;
    memcpy(&r, &slots[src_lane_of_mine], sizeof(T));
    emu::sync_warp();  // nobody overwrites a slot before every lane has read
    return r;
}
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    int lane = emu::lane_id();
    int src = lane ^ mask;
    if ((src / width) != (lane / width)) src = lane;
    return emu_shfl(v, src & 31);
}
template <typename T> inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    int lane = emu::lane_id();
    return emu_shfl(v, (lane / width) * width + (src % width));
}
template <typename T> inline T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {
    int lane = emu::lane_id();
    int src = lane + (int)d;
    if (src / width != lane / width || src > 31) src = lane;
    return emu_shfl(v, src);
}

// Mixed-type min/max follow the usual arithmetic conversions, as CUDA's overloads do.
template <typename A, typename B> inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return (C)a < (C)b ? (C)a : (C)b;
}
template <typename A, typename B> inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return (C)a > (C)b ? (C)a : (C)b;
}
#include <math.h>  // erff, expf, logf, sqrtf, sinf, cosf, fmaxf in the global namespace
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float cospif(float x) { return (float)std::cos(M_PI * (double)x); }
inline float sinpif(float x) { return (float)std::sin(M_PI * (double)x); }

template <typename T> inline T atomicAdd(T* p, T v) {
    // Blocks of one launch run one after another on one OS thread: no race to guard.
    T old = *p;
    *p = old + v;
    return old;
}
