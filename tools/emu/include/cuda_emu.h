// CPU emulation of the CUDA device language, enough to compile kernels/*.cu with a host C++
// compiler and run them exactly as written: every CUDA thread is a fiber, a block's fibers run
// cooperatively on one OS thread, __syncthreads / __syncwarp / warp shuffles are real barriers
// (a barrier some threads can never reach is reported as a deadlock), shared memory is per
// block, and bf16/f16 round like the hardware (nearest even). Used only by the emulated driver
// in tools/emu (a test tool, never the engine).
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

struct uint3 {
    unsigned x, y, z;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}

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
// bar.sync id, count: waits until `count` threads of the block (whole warps) wait at barrier `id`.
void sync_named(unsigned id, unsigned count);
void* dynamic_smem();
// Clusters (sm_90): the block's rank in its cluster (%cluster_ctarank; 0 outside cluster
// launches) and the cluster's blocks; mapa: the address in rank `rank`'s shared memory that
// corresponds to p in this block's (dynamic shared memory only: the static arrays are shared
// by the blocks that run on one OS thread); barrier.cluster.arrive and .wait over every thread
// of the cluster.
unsigned cluster_rank();
unsigned cluster_size();
void* cluster_map(const void* p, unsigned rank);
void cluster_arrive();
void cluster_wait();
// Yields until *p >= target (a block waiting at a grid barrier of a cooperative launch, whose
// blocks the emulator runs at once).
void spin_until_at_least(const volatile unsigned* p, unsigned target);
// One turn of a spin-wait inside a block (an mbarrier's phase): the other fibers run before this
// one is resumed; spin_end() when the wait is over. A block whose live threads all spin without
// any getting past is reported as a deadlock.
void spin_once();
void spin_end();
// 32 slots of 8 bytes for the current warp's shuffle exchange.
uint64_t* warp_slots();
// 32 slots of 64 bytes for the current warp's matrix-fragment exchange.
void* warp_fragments();
// 1 KiB of the current thread's own (zeroed when the thread starts): emulated instructions' state.
void* thread_scratch();
// Counts the threads of the running launch that passed griddepcontrol.wait (pdl_enter).
void note_pdl_wait();
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
#define __grid_constant__
#define __maxnreg__(...)
#define __align__(n) __attribute__((aligned(n)))
// One copy per OS thread; a block's fibers share it, blocks run one after another (in a
// cooperative launch, one at a time from one grid-wide wait to the next; a cluster's blocks
// interleave, so cluster kernels keep their shared data in dynamic shared memory, the only
// kind mapa maps).
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

// Warp votes over the lanes the warp has (a block's last warp may be partial); the mask is
// taken as every lane, as the kernels pass it.
inline unsigned __ballot_sync(unsigned, int pred) {
    uint64_t* slots = emu::warp_slots();
    const int lane = emu::lane_id();
    const int threads = (int)(blockDim.x * blockDim.y * blockDim.z);
    const int lanes = std::min(32, threads - 32 * emu::warp_id());
    slots[lane] = pred ? 1u : 0u;
    emu::sync_warp();
    unsigned r = 0;
    for (int i = 0; i < lanes; i++) r |= (unsigned)slots[i] << i;
    emu::sync_warp();  // nobody overwrites a slot before every lane has read
    return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }

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

// Blocks run one after another (in a cooperative launch, one at a time between grid-wide waits), so
// every write is visible to the blocks after it.
inline void __threadfence() {}
template <typename T> inline T __ldcg(const T* p) { return *p; }
template <typename T> inline T __ldg(const T* p) { return *p; }

template <typename T> inline T atomicAdd(T* p, T v) {
    // Blocks of one launch run on one OS thread, one fiber at a time: no race to guard.
    T old = *p;
    *p = old + v;
    return old;
}

template <typename T> inline T atomicExch(T* p, T v) {
    T old = *p;
    *p = v;
    return old;
}

template <typename T> inline T atomicMin(T* p, T v) {
    T old = *p;
    if (v < old) *p = v;
    return old;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, with the fragment layouts of the PTX ISA
// (groupID = lane / 4, t = lane % 4; the lower-indexed element in a register's low half):
//   A 16×16: a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B 16×8 (k × n): b[0] = (k 2t..2t+1, n g), b[1] = (k 2t+8..2t+9, n g)
//   C, D 16×8: c[0..1] = (g, 2t..2t+1), c[2..3] = (g+8, 2t..2t+1)
// Every lane posts its fragments, every lane then computes its own four outputs.
inline float emu_bf16_lo(uint32_t r) {
    uint32_t u = r << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline float emu_bf16_hi(uint32_t r) {
    uint32_t u = r & 0xffff0000u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline void emu_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    struct Frag {
        uint32_t a[4], b[2];
        float c[4];
    };
    static_assert(sizeof(Frag) <= 64, "fragment slot");
    Frag* x = (Frag*)emu::warp_fragments();
    int lane = emu::lane_id();
    memcpy(x[lane].a, a, 16);
    memcpy(x[lane].b, b, 8);
    memcpy(x[lane].c, c, 16);
    emu::sync_warp();
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; l++) {
        int g = l >> 2, t = l & 3;
        const Frag& f = x[l];
        A[g][2 * t] = emu_bf16_lo(f.a[0]), A[g][2 * t + 1] = emu_bf16_hi(f.a[0]);
        A[g + 8][2 * t] = emu_bf16_lo(f.a[1]), A[g + 8][2 * t + 1] = emu_bf16_hi(f.a[1]);
        A[g][2 * t + 8] = emu_bf16_lo(f.a[2]), A[g][2 * t + 9] = emu_bf16_hi(f.a[2]);
        A[g + 8][2 * t + 8] = emu_bf16_lo(f.a[3]), A[g + 8][2 * t + 9] = emu_bf16_hi(f.a[3]);
        B[2 * t][g] = emu_bf16_lo(f.b[0]), B[2 * t + 1][g] = emu_bf16_hi(f.b[0]);
        B[2 * t + 8][g] = emu_bf16_lo(f.b[1]), B[2 * t + 9][g] = emu_bf16_hi(f.b[1]);
    }
    int g = lane >> 2, t = lane & 3;
    float out[4];
    for (int i = 0; i < 4; i++) {
        int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float acc = x[lane].c[i];
        for (int k = 0; k < 16; k++) acc += A[row][k] * B[k][col];
        out[i] = acc;
    }
    emu::sync_warp();  // every lane has read the posted fragments
    memcpy(d, out, 16);
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8i..8i+7 give the row addresses of
// 8×8 matrix i (8 consecutive 16-bit elements a row); lane l receives in d[i] the pair
// M_i[l/4][2(l%4)], M_i[l/4][2(l%4)+1], or with trans M_i[2(l%4)][l/4], M_i[2(l%4)+1][l/4]
// (the lower-indexed element in the low half).
inline void emu_ldmatrix_x4(uint32_t d[4], const void* row, bool trans) {
    const uint16_t** rows = (const uint16_t**)emu::warp_fragments();
    int lane = emu::lane_id();
    rows[lane * 8] = (const uint16_t*)row;  // one pointer per 64-byte slot
    emu::sync_warp();
    int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; i++) {
        const uint16_t* const* m = &rows[(8 * i) * 8];
        uint16_t lo, hi;
        if (trans) {
            lo = m[(2 * t) * 8][g];
            hi = m[(2 * t + 1) * 8][g];
        } else {
            lo = m[g * 8][2 * t];
            hi = m[g * 8][2 * t + 1];
        }
        d[i] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    emu::sync_warp();  // every lane has read the posted addresses
}

// ---- wgmma (sm_90a warpgroup products), emulated --------------------------------------------
// A shared-memory operand: the tile's first byte (128-byte swizzle; the hardware descriptor's
// 14-bit address and fields, kept here as a host pointer) and the stride byte offset between
// groups of 8 rows.
struct EmuSmemDesc {
    const unsigned char* start;
    uint32_t sbo;
};
// Element (k, n) of B (k × n, k < 16, n < 64) from a 128B-swizzled tile, in the canonical layouts
// of the PTX ISA / CUTLASS (T = 8 bf16 = 16 bytes):
//   K-major  (trans 0): ((8, m), (T, 2)) : ((8T, SBO), (1, T))   n → row n % 8 (128 B apart), group n / 8 (SBO)
//   MN-major (trans 1): ((T, 8, m), (8, k)) : ((1, T, LBO), (8T, SBO))   n contiguous; k → row k % 8, group k / 8
// The swizzle XORs address bits 4–6 (the 16-byte chunk) with bits 7–9 (the row within 8) of
// the absolute address, which is why such tiles must start on a 1024-byte boundary.
inline float emu_wgmma_b(const EmuSmemDesc& b, bool trans, int k, int n) {
    uintptr_t a = (uintptr_t)b.start + (trans ? (uintptr_t)(2 * n + (k % 8) * 128 + (k / 8) * b.sbo)
                                              : (uintptr_t)((n % 8) * 128 + (n / 8) * b.sbo + 2 * k));
    a ^= ((a >> 7) & 7) << 4;
    uint16_t v;
    memcpy(&v, (const void*)a, 2);
    return emu_bf16_lo(v);
}
struct EmuWgmmaQueue {
    struct Op {
        float* d;
        const uint32_t* a;  // null: A from shared memory (a_smem)
        EmuSmemDesc a_smem, b;
        bool trans, accumulate;
        short n;  // columns: 64, 128 or 160
        int group;
    };
    int count, committed;
    Op ops[16];
};
static_assert(sizeof(EmuWgmmaQueue) <= 1024, "wgmma queue in the thread scratch");
inline EmuWgmmaQueue& emu_wgmma_queue() { return *(EmuWgmmaQueue*)emu::thread_scratch(); }
// wgmma.mma_async.m64n64k16.f32.bf16.bf16 with A from registers: queued, not run. It runs at the
// wgmma.wait_group that covers its group, so that a kernel reading the accumulators (or changing
// A or the tile) before waiting gets wrong results here too.
inline void emu_wgmma_m64n64k16(float* d, const uint32_t* a, EmuSmemDesc b, bool trans, bool accumulate) {
    EmuWgmmaQueue& q = emu_wgmma_queue();
    if (q.count == 16) {
        fprintf(stderr, "emulated wgmma: more than 16 products in flight\n");
        abort();
    }
    q.ops[q.count++] = EmuWgmmaQueue::Op{d, a, EmuSmemDesc{nullptr, 0}, b, trans, accumulate, 64, q.committed};
}
// m64nNk16 (N = 64, 128 or 160) with A from shared memory (K-major, the layout of emu_wgmma_b's
// trans 0 with m for n).
inline void emu_wgmma_ss(float* d, EmuSmemDesc a, EmuSmemDesc b, bool trans, bool accumulate, int n) {
    emu_wgmma_m64n64k16(d, nullptr, b, trans, accumulate);
    EmuWgmmaQueue::Op& op = emu_wgmma_queue().ops[emu_wgmma_queue().count - 1];
    op.a_smem = a;
    op.n = (short)n;
}
// m64nNk16 (N = 64 or 128) with A from registers.
inline void emu_wgmma_rs(float* d, const uint32_t* a, EmuSmemDesc b, bool trans, bool accumulate, int n) {
    emu_wgmma_m64n64k16(d, a, b, trans, accumulate);
    emu_wgmma_queue().ops[emu_wgmma_queue().count - 1].n = (short)n;
}
inline void emu_wgmma_m64n64k16_ss(float* d, EmuSmemDesc a, EmuSmemDesc b, bool trans, bool accumulate) {
    emu_wgmma_ss(d, a, b, trans, accumulate, 64);
}
inline void emu_wgmma_commit() { emu_wgmma_queue().committed++; }
// One queued product, by the warp: every lane posts its A fragment (the mma.m16n8k16 A layout
// for rows 16·(warp % 4) .. + 15 of the 64) and computes its 32 accumulators, laid out as eight
// m16n8 C fragments side by side: d[4j + i] is row g + 8·(i / 2), column 8j + 2t + i % 2.
inline void emu_wgmma_run(const EmuWgmmaQueue::Op& op) {
    struct Post {
        uint32_t a[4];
        const unsigned char* b;
        int trans;
    };
    Post* x = (Post*)emu::warp_fragments();
    const int lane = emu::lane_id();
    if (op.a) memcpy(x[lane].a, op.a, 16);
    x[lane].b = op.b.start;
    x[lane].trans = op.trans;
    emu::sync_warp();
    if (x[0].b != op.b.start || x[0].trans != (int)op.trans) {
        fprintf(stderr, "emulated wgmma: lanes of one warp issued different products\n");
        abort();
    }
    float A[16][16], B[16][160];
    for (int l = 0; l < 32 && op.a; l++) {
        const int g = l >> 2, t = l & 3;
        const uint32_t* a = x[l].a;
        A[g][2 * t] = emu_bf16_lo(a[0]), A[g][2 * t + 1] = emu_bf16_hi(a[0]);
        A[g + 8][2 * t] = emu_bf16_lo(a[1]), A[g + 8][2 * t + 1] = emu_bf16_hi(a[1]);
        A[g][2 * t + 8] = emu_bf16_lo(a[2]), A[g][2 * t + 9] = emu_bf16_hi(a[2]);
        A[g + 8][2 * t + 8] = emu_bf16_lo(a[3]), A[g + 8][2 * t + 9] = emu_bf16_hi(a[3]);
    }
    if (!op.a) {
        const int first = 16 * (emu::warp_id() % 4);  // this warp's rows of the 64
        for (int m = 0; m < 16; m++)
            for (int k = 0; k < 16; k++) A[m][k] = emu_wgmma_b(op.a_smem, false, k, first + m);
    }
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < op.n; n++) B[k][n] = emu_wgmma_b(op.b, op.trans, k, n);
    emu::sync_warp();  // every lane has read the posted fragments
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < op.n / 2; i++) {
        const int row = g + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * t + (i & 1);
        float acc = op.accumulate ? op.d[i] : 0.f;
        for (int k = 0; k < 16; k++) acc += A[row][k] * B[k][col];
        op.d[i] = acc;
    }
}
// wgmma.wait_group N: runs every queued product of all but the N most recent committed groups.
inline void emu_wgmma_wait(int n) {
    EmuWgmmaQueue& q = emu_wgmma_queue();
    int done = 0;
    while (done < q.count && q.ops[done].group < q.committed - n) emu_wgmma_run(q.ops[done++]);
    if (done < q.count && q.ops[done].group >= q.committed) {
        fprintf(stderr, "emulated wgmma: a wait with products issued but not committed\n");
        abort();
    }
    memmove(q.ops, q.ops + done, (q.count - done) * sizeof(q.ops[0]));
    q.count -= done;
}

// ---- mbarrier and TMA (sm_90 transaction barriers and tensor copies), emulated ---------------
// The 8 bytes of a barrier in shared memory: arrivals still pending in this phase (bits 0–14),
// the arrivals a phase expects (15–29), the phase's parity (31); then the transaction bytes still
// expected (signed). A phase completes when both its pending arrivals and bytes reach zero: the
// parity flips and the arrivals are re-armed, as on the hardware.
struct EmuMbar {
    uint32_t w;
    int32_t tx;
};
static_assert(sizeof(EmuMbar) == 8, "an mbarrier is 8 bytes");
inline void emu_mbar_settle(EmuMbar* b) {
    const uint32_t pending = b->w & 0x7fff, expected = (b->w >> 15) & 0x7fff;
    if (pending == 0 && b->tx < 0) {
        fprintf(stderr, "emulated mbarrier: more transaction bytes arrived than were expected\n");
        abort();
    }
    if (pending == 0 && b->tx == 0) b->w = ((b->w ^ 0x80000000u) & 0x80000000u) | (expected << 15) | expected;
}
inline bool emu_tma_land_one(void* bar);
inline void emu_tma_forget(const void* bar);
inline void emu_mbar_init(void* bar, unsigned count) {
    if (count == 0 || count > 0x7fff || ((uintptr_t)bar & 7)) {
        fprintf(stderr, "emulated mbarrier: init with count %u at a misaligned or bad address\n", count);
        abort();
    }
    emu_tma_forget(bar);
    EmuMbar* b = (EmuMbar*)bar;
    b->w = (count << 15) | count;
    b->tx = 0;
}
// An arrival, after `tx` more transaction bytes were announced (arrive.expect_tx).
inline void emu_mbar_arrive(void* bar, unsigned tx) {
    EmuMbar* b = (EmuMbar*)bar;
    if ((b->w & 0x7fff) == 0) {
        fprintf(stderr, "emulated mbarrier: an arrival beyond the phase's expected count\n");
        abort();
    }
    b->tx += (int32_t)tx;
    b->w -= 1;
    emu_mbar_settle(b);
}
inline void emu_mbar_complete_tx(void* bar, unsigned bytes) {
    EmuMbar* b = (EmuMbar*)bar;
    b->tx -= (int32_t)bytes;
    emu_mbar_settle(b);
}
// try_wait.parity: true once the phase of this parity has completed (the current phase's parity
// differs from it).
inline bool emu_mbar_done(const void* bar, unsigned parity) { return (((const EmuMbar*)bar)->w >> 31) != (parity & 1); }
// Queued copies on this barrier land one by one while the phase is incomplete; then the wait
// yields to the block's other threads until it completes.
inline void emu_mbar_wait(void* bar, unsigned parity) {
    while (!emu_mbar_done(bar, parity))
        if (!emu_tma_land_one(bar)) emu::spin_once();
    emu::spin_end();
}
// What the emulated cuTensorMapEncodeTiled keeps in a tensor map's 128 bytes (rank 2 or 3; a
// rank-2 map has one plane).
struct EmuTensorMap {
    const unsigned char* base;
    uint64_t dims[3];    // elements: inner, rows, planes
    uint64_t stride[2];  // bytes between rows, between planes
    uint32_t box[3];     // elements: inner, rows, planes
    uint32_t elem;       // bytes per element
    uint32_t swizzle;    // CU_TENSOR_MAP_SWIZZLE_*: 0 none, 3 128 bytes
    uint32_t magic;
};
static_assert(sizeof(EmuTensorMap) <= 128, "a tensor map is 128 bytes");
#define EMU_TENSOR_MAP_MAGIC 0x7e45a11u
// cp.async.bulk.tensor.2d/.3d ... mbarrier::complete_tx: the box at (c0, c1, c2) into shared
// memory (planes of box rows one after another), elements outside the tensor as zeros (the whole
// box counts as transferred bytes), in the 128-byte swizzle (address bits 4–6 XOR bits 7–9, as
// emu_wgmma_b reads it), then the bytes completed on the barrier.
inline void emu_tma_copy(void* dst, const EmuTensorMap& m, int c0, int c1, int c2, void* bar) {
    const uint32_t row_bytes = m.box[0] * m.elem;
    for (uint32_t pl = 0; pl < m.box[2]; pl++) {
        for (uint32_t r = 0; r < m.box[1]; r++) {
            for (uint32_t e = 0; e < m.box[0]; e++) {
                const int64_t x = (int64_t)c0 + e, y = (int64_t)c1 + r, z = (int64_t)c2 + pl;
                uintptr_t a = (uintptr_t)dst + (pl * m.box[1] + r) * row_bytes + e * m.elem;
                if (m.swizzle == 3) a ^= ((a >> 7) & 7) << 4;
                if (x >= 0 && y >= 0 && z >= 0 && (uint64_t)x < m.dims[0] && (uint64_t)y < m.dims[1] && (uint64_t)z < m.dims[2])
                    memcpy((void*)a, m.base + (uint64_t)z * m.stride[1] + (uint64_t)y * m.stride[0] + (uint64_t)x * m.elem, m.elem);
                else
                    memset((void*)a, 0, m.elem);
            }
        }
    }
    emu_mbar_complete_tx(bar, row_bytes * m.box[1] * m.box[2]);
}
// Copies issued but not yet landed, of the block that runs on this OS thread. At issue the box's
// shared memory is filled with 0xff (the hardware may be writing it from then on); the data lands
// only when a thread waits on the copy's barrier and the phase is not complete yet, the latest
// moment the hardware could take. So whatever order the fibers run in, a thread that reads a tile
// without waiting for the right phase, or a slot refilled while products still read it, gets NaN.
struct EmuTmaCopy {
    void* dst;
    EmuTensorMap map;
    int c0, c1, c2;
    void* bar;
};
struct EmuTmaQueue {
    EmuTmaCopy copies[64];
    int count;
};
inline EmuTmaQueue& emu_tma_queue() {
    static thread_local EmuTmaQueue q;
    return q;
}
// A barrier (re)initialised: copies still queued on its address belong to a block that ended.
inline void emu_tma_forget(const void* bar) {
    EmuTmaQueue& q = emu_tma_queue();
    int kept = 0;
    for (int i = 0; i < q.count; i++)
        if (q.copies[i].bar != bar) q.copies[kept++] = q.copies[i];
    q.count = kept;
}
// Lands the oldest queued copy on `bar`; false if there is none.
inline bool emu_tma_land_one(void* bar) {
    EmuTmaQueue& q = emu_tma_queue();
    for (int i = 0; i < q.count; i++) {
        if (q.copies[i].bar != bar) continue;
        const EmuTmaCopy c = q.copies[i];
        memmove(&q.copies[i], &q.copies[i + 1], (q.count - i - 1) * sizeof(EmuTmaCopy));
        q.count--;
        emu_tma_copy(c.dst, c.map, c.c0, c.c1, c.c2, c.bar);
        return true;
    }
    return false;
}
inline void emu_tma_load(void* dst, const void* map, int rank, int c0, int c1, int c2, void* bar) {
    const EmuTensorMap* m = (const EmuTensorMap*)map;
    if (m->magic == EMU_TENSOR_MAP_MAGIC && (rank == 2) != (m->dims[2] == 0)) {
        fprintf(stderr, "emulated TMA: a rank-%d copy from a map of the other rank\n", rank);
        abort();
    }
    if (m->magic != EMU_TENSOR_MAP_MAGIC) {
        fprintf(stderr, "emulated TMA: the tensor map was not made by cuTensorMapEncodeTiled\n");
        abort();
    }
    if (((uintptr_t)dst & (m->swizzle == 3 ? 1023 : 127)) || (m->swizzle == 3 && m->box[0] * m->elem != 128)) {
        fprintf(stderr, "emulated TMA: destination not aligned for the swizzle, or a box row that is not 128 bytes\n");
        abort();
    }
    EmuTmaQueue& q = emu_tma_queue();
    if (q.count == 64) {
        fprintf(stderr, "emulated TMA: more than 64 copies in flight\n");
        abort();
    }
    EmuTensorMap one = *m;
    if (rank == 2) one.dims[2] = one.box[2] = 1;  // one plane
    const size_t bytes = (size_t)one.box[0] * one.elem * one.box[1] * one.box[2];
    // A copy into shared memory that another copy still in flight fills: the slot was refilled
    // before anyone waited for (and consumed) its previous tile. On a GPU the two race.
    for (int i = 0; i < q.count; i++) {
        const EmuTmaCopy& c = q.copies[i];
        const size_t other = (size_t)c.map.box[0] * c.map.elem * c.map.box[1] * c.map.box[2];
        if ((char*)dst < (char*)c.dst + other && (char*)c.dst < (char*)dst + bytes) {
            fprintf(stderr, "emulated TMA: a copy into shared memory that an earlier copy, not yet waited for, still fills (a slot refilled too early)\n");
            abort();
        }
    }
    // In flight, the box's bytes are undefined: 0xff (NaN in bf16 and f32) until the copy lands,
    // so a product still reading the slot's previous tile (its slot freed too early) sees it.
    memset(dst, 0xff, bytes);
    q.copies[q.count++] = EmuTmaCopy{dst, one, c0, c1, rank == 2 ? 0 : c2, bar};
}
inline void emu_tma_load_2d(void* dst, const void* map, int c0, int c1, void* bar) { emu_tma_load(dst, map, 2, c0, c1, 0, bar); }
// .multicast::cluster: the same box into dst of every block of the cluster whose rank is set in
// `mask`, each copy's bytes completed on that block's barrier at bar's offset (one queued copy
// per block, landing when that block waits on its barrier).
inline void emu_tma_load_multicast(void* dst, const void* map, int rank, int c0, int c1, int c2, void* bar, uint16_t mask) {
    if (mask == 0 || (mask >> emu::cluster_size()) != 0) {
        fprintf(stderr, "emulated TMA: multicast mask 0x%x for a cluster of %u blocks\n", mask, emu::cluster_size());
        abort();
    }
    for (unsigned r = 0; r < emu::cluster_size(); r++)
        if (mask >> r & 1) emu_tma_load(emu::cluster_map(dst, r), map, rank, c0, c1, c2, emu::cluster_map(bar, r));
}
inline void emu_tma_load_2d_multicast(void* dst, const void* map, int c0, int c1, void* bar, uint16_t mask) {
    emu_tma_load_multicast(dst, map, 2, c0, c1, 0, bar, mask);
}
inline void emu_tma_load_3d(void* dst, const void* map, int c0, int c1, int c2, void* bar) { emu_tma_load(dst, map, 3, c0, c1, c2, bar); }
inline void emu_tma_load_3d_multicast(void* dst, const void* map, int c0, int c1, int c2, void* bar, uint16_t mask) {
    emu_tma_load_multicast(dst, map, 3, c0, c1, c2, bar, mask);
}

// griddepcontrol.wait and .launch_dependents: launches run one after another here, so there is
// nothing to wait for; the driver checks that every thread of a launch made with programmatic
// stream serialization passed the wait.
inline void emu_pdl_enter() { emu::note_pdl_wait(); }
