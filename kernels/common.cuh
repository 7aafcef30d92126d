// Device helpers shared by every kernel file: loading and storing f32/bf16/f16 as f32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include "params.h"

__device__ __forceinline__ float load_as_f32(const void* p, int64_t i, int dtype) {
    switch (dtype) {
        case CASCADE_BF16: return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p)[i]);
        case CASCADE_F16: return __half2float(reinterpret_cast<const __half*>(p)[i]);
        default: return reinterpret_cast<const float*>(p)[i];
    }
}

__device__ __forceinline__ void store_from_f32(void* p, int64_t i, int dtype, float v) {
    switch (dtype) {
        case CASCADE_BF16: reinterpret_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
        case CASCADE_F16: reinterpret_cast<__half*>(p)[i] = __float2half_rn(v); break;
        default: reinterpret_cast<float*>(p)[i] = v;
    }
}

// Typed access for kernels templated on the storage type T (float or __nv_bfloat16).
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

// Grid-stride loop over [0, n).
#define GRID_STRIDE(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

typedef __nv_bfloat16 bf16;

// Kernels are device templates `name_impl<T>`; each file declares its f32 and bf16 entry points
// as literal `extern "C" __global__` lines (build.rs reads those lines for the kernel table).

// Sum over the block; every thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();  // scratch may still be read from a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffff, t, o);
    return t;
}

// Mean and 1/sqrt(var + eps) of row[0..C) in shared memory, two-pass (exact variance). Every
// thread of the block calls it; each reads back only the elements it wrote itself.
__device__ __forceinline__ void row_mean_rstd(const float* row, int C, float eps, float* scratch, float& mean, float& rstd) {
    float s = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += row[c];
    mean = block_sum(s, scratch) / C;
    float q = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float d = row[c] - mean;
        q += d * d;
    }
    rstd = rsqrtf(block_sum(q, scratch) / C + eps);
}

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

// One warp-wide tensor-core product D = A·B + C, m16n8k16, bf16 inputs, f32 accumulators, in
// the PTX ISA's fragment layouts (groupID g = lane / 4, t = lane % 4; in each 32-bit register
// the lower-indexed bf16 sits in the low half):
//   A 16×16 (row-major): a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]
//   B 16×8 (k × n):      b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
//   C, D 16×8:           c[0], c[1] = C[g][2t], C[g][2t+1]; c[2], c[3] = C[g+8][2t], C[g+8][2t+1]
// The CPU emulator (tools/emu) implements the same layouts from the same description.
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
#ifdef CASCADE_EMU
    emu_mma_m16n8k16_bf16(d, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

// Four 8×8 matrices of 16-bit elements from shared memory in one warp-wide load (sm_75
// ldmatrix): lanes 8i..8i+7 give the addresses of matrix i's 8 rows (16 bytes each, 16-byte
// aligned). Lane l receives in d[i] the pair (M_i[l/4][2(l%4)], M_i[l/4][2(l%4)+1]), or with
// TRANS the pair (M_i[2(l%4)][l/4], M_i[2(l%4)+1][l/4]). For a [key][dim] tile the first is an
// mma B fragment of Kᵀ (two neighbouring dims of one key), the second one of V (two keys of one
// dim).
template <bool TRANS> __device__ __forceinline__ void ldmatrix_x4(uint32_t d[4], const void* row) {
#ifdef CASCADE_EMU
    emu_ldmatrix_x4(d, row, TRANS);
#else
    unsigned a = (unsigned)__cvta_generic_to_shared(row);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                     : "r"(a));
#endif
}

// Two floats as a bf16 pair in one register (lo in the low half), rounded to nearest even: one
// cvt.rn.bf16x2.f32 (sm_80) instead of two conversions, a shift and an or.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
#ifdef CASCADE_EMU
    uint32_t l = __bfloat16_as_ushort(__float2bfloat16_rn(lo)), h = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
    return l | (h << 16);
#else
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

// 2^x by the special-function unit alone (ex2.approx.ftz: about 2 ulp, results below 2^-126
// flushed to zero, 2^-inf = 0). exp2f adds a range reduction around it for denormal results,
// which a softmax whose terms are at most 1 and rounded to bf16 does not need.
__device__ __forceinline__ float ex2_approx(float x) {
#ifdef CASCADE_EMU
    const float y = exp2f(x);
    return y < 1.17549435e-38f ? 0.f : y;
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
#endif
}

// 1/x by the special-function unit alone (rcp.approx.ftz: about 1 ulp).
__device__ __forceinline__ float rcp_approx(float x) {
#ifdef CASCADE_EMU
    return 1.f / x;
#else
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
#endif
}

// GELU for values that are stored as bf16 next: the erf form, with erf(|x|/√2) from Abramowitz and
// Stegun's 7.1.26 (1 − erf z = t·(a1 + t·(a2 + …))·e^(−z²), t = 1/(1 + p·z): within 1.5e-7 of erf),
// so that the result is within 6e-7 of gelu_erf in absolute terms over all x (0.05 % relative at
// x = −4, where GELU is −1.3e-4; the product form keeps the negative tail relative, not a
// difference from 1). bf16 keeps 8 bits, so the stored value is gelu_erf's but for rare rounding
// ties. About 17 instructions with two special-function ones, against about 28 for gelu_erf
// (erff's two polynomial branches are both evaluated): in GRN's sums pass over a 4×-wide hidden
// tensor, the erf is a large share of the instructions issued.
__device__ __forceinline__ float gelu_bf16_out(float x) {
    const float z = fabsf(x) * 0.70710678118654752f;
    const float t = rcp_approx(fmaf(0.3275911f, z, 1.f));
    float poly = fmaf(1.061405429f, t, -1.453152027f);
    poly = fmaf(poly, t, 1.421413741f);
    poly = fmaf(poly, t, -0.284496736f);
    poly = fmaf(poly, t, 0.254829592f);
    const float q = poly * t * ex2_approx(z * (z * -1.44269504088896341f));  // 1 − erf(z)
    return 0.5f * x * (x >= 0.f ? 2.f - q : q);
}

// The GELU of a value about to be stored as T: gelu_bf16_out for bf16, gelu_erf for f32.
template <typename T> __device__ __forceinline__ float gelu_as(float x) { return gelu_erf(x); }
template <> __device__ __forceinline__ float gelu_as<__nv_bfloat16>(float x) { return gelu_bf16_out(x); }

// ---- Eight consecutive elements per access -------------------------------------------------
// Memory-bound kernels move 16 bytes per load or store instruction (eight bf16, or four f32
// twice) instead of one element: with 2-byte accesses and per-element index arithmetic those
// kernels are bound by instruction issue, several times below memory bandwidth. The pointer must
// be 16-byte aligned; the unpacking of bf16 is exact (a shift), as __bfloat162float is.
__device__ __forceinline__ bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }
__device__ __forceinline__ void unpack_bf16x2(uint32_t w, float& lo, float& hi) {
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
}
// Eight values from raw 16-byte words: one word of bf16, or two of f32.
__device__ __forceinline__ void unpack8(uint4 a, float v[8]) {
    unpack_bf16x2(a.x, v[0], v[1]);
    unpack_bf16x2(a.y, v[2], v[3]);
    unpack_bf16x2(a.z, v[4], v[5]);
    unpack_bf16x2(a.w, v[6], v[7]);
}
__device__ __forceinline__ void unpack8(uint4 a, uint4 b, float v[8]) {
    v[0] = __uint_as_float(a.x), v[1] = __uint_as_float(a.y), v[2] = __uint_as_float(a.z), v[3] = __uint_as_float(a.w);
    v[4] = __uint_as_float(b.x), v[5] = __uint_as_float(b.y), v[6] = __uint_as_float(b.z), v[7] = __uint_as_float(b.w);
}
__device__ __forceinline__ void load8(const bf16* p, float v[8]) { unpack8(*(const uint4*)p, v); }
__device__ __forceinline__ void load8(const float* p, float v[8]) { unpack8(((const uint4*)p)[0], ((const uint4*)p)[1], v); }
__device__ __forceinline__ void store8(bf16* p, const float v[8]) {
    *(uint4*)p = make_uint4(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]), pack_bf16x2(v[4], v[5]), pack_bf16x2(v[6], v[7]));
}
__device__ __forceinline__ void store8(float* p, const float v[8]) {
    ((uint4*)p)[0] = make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
    ((uint4*)p)[1] = make_uint4(__float_as_uint(v[4]), __float_as_uint(v[5]), __float_as_uint(v[6]), __float_as_uint(v[7]));
}
// The same through the read-only path (ld.global.nc): for operands no thread of the launch
// writes (weights, biases, modulation terms). Besides the cache, it tells the compiler that no
// store of the kernel can change them, so it may issue such loads ahead of earlier stores.
__device__ __forceinline__ void ldg8(const bf16* p, float v[8]) { unpack8(__ldg((const uint4*)p), v); }
__device__ __forceinline__ void ldg8(const float* p, float v[8]) { unpack8(__ldg((const uint4*)p), __ldg((const uint4*)p + 1), v); }
// Eight elements of T as raw 16-byte words (1 for bf16, 2 for f32), to be unpacked later: loads
// held this way can all be issued before the first is used.
template <typename T> struct Raw8 {
    uint4 w[sizeof(T) / 2];
    __device__ __forceinline__ void load(const T* p) {
        for (int i = 0; i < (int)sizeof(T) / 2; i++) w[i] = ((const uint4*)p)[i];
    }
    __device__ __forceinline__ void unpack(float v[8]) const {
        if (sizeof(T) == 2) unpack8(w[0], v);
        else unpack8(w[0], w[sizeof(T) / 2 - 1], v);
    }
};
// Eight elements copied as they are (16 bytes of bf16, 32 of f32); both 16-byte aligned.
template <typename T> __device__ __forceinline__ void copy8(T* dst, const T* src) {
    for (int i = 0; i < (int)sizeof(T) / 2; i++) ((uint4*)dst)[i] = ((const uint4*)src)[i];
}
// A value as T stores it (f32: itself; bf16: rounded to nearest even).
template <typename T> __device__ __forceinline__ float rounded(float v) { return to_f32(from_f32<T>(v)); }

// Grid-stride loop over [0, n) in 32-bit arithmetic (callers keep n below 2^31).
#define GRID_STRIDE32(i, n) \
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < (uint32_t)(n); i += gridDim.x * blockDim.x)

// Asynchronous 16-byte copies global → shared (sm_80 cp.async): `valid` false writes zeros and
// reads nothing. commit closes a group of copies; wait<N> blocks until at most N groups are in
// flight (the caller then needs __syncthreads before other threads read the data). The emulator
// copies at once.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#ifdef CASCADE_EMU
    if (valid) memcpy(smem, gmem, 16);
    else memset(smem, 0, 16);
#else
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0) : "memory");
#endif
}
// The same for 8 bytes (through L1: cp.async.cg takes only 16).
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem) {
#ifdef CASCADE_EMU
    memcpy(smem, gmem, 8);
#else
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(s), "l"(gmem) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifndef CASCADE_EMU
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
#ifndef CASCADE_EMU
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// ---- Programmatic dependent launch (sm_90) -----------------------------------------------------
// Every kernel's first statement. Launched with programmatic stream serialization (the engine
// does so on compute capability 9.0 with CASCADE_PDL=1), a kernel may start while the kernel
// before it still runs, so it first waits until that kernel has completed and its writes are
// visible (griddepcontrol.wait: nothing is read or written before), then lets the kernel after it
// start early in turn (launch_dependents: its blocks take SMs as this grid's last blocks retire,
// instead of after the launch gap). Without that launch attribute both are no-ops. Older images
// and other architectures' PTX have neither, which is why the attribute is used on 9.0 only.
__device__ __forceinline__ void pdl_enter() {
#if defined(CASCADE_EMU)
    emu_pdl_enter();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// ---- Warpgroup products (wgmma: sm_90a, H100/H200) ------------------------------------------
// Compiled only into the sm_90a image (and the emulator); kernels that use them have an empty
// body elsewhere and are launched only on a device of compute capability 9.0.
#if defined(CASCADE_EMU) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CASCADE_WGMMA 1
// A shared-memory operand of wgmma: a tile of rows of 128 bytes (64 bf16) with the 128-byte
// swizzle (16-byte chunk c of row r stored at chunk c ^ (r % 8)), groups of 8 rows 1024 bytes
// apart, starting on a 1024-byte boundary (or 32·i bytes past one, for the i-th 16-wide slice of
// a K-major row). Descriptor fields (PTX ISA, "matrix descriptor"): start address >> 4 in bits
// 0–13, leading byte offset >> 4 in 16–29 (unused by these layouts: one swizzle atom spans
// the 64 columns), stride byte offset >> 4 in 32–45 (1024: the next 8 rows), swizzle mode in
// 62–63 (1: 128 bytes).
#ifdef CASCADE_EMU
typedef EmuSmemDesc SmemDesc;
__device__ __forceinline__ SmemDesc smem_desc_sw128(const void* p) { return EmuSmemDesc{(const unsigned char*)p, 1024u}; }
#else
typedef uint64_t SmemDesc;
__device__ __forceinline__ SmemDesc smem_desc_sw128(const void* p) {
    const uint64_t a = (uint32_t)__cvta_generic_to_shared(p);
    return ((a & 0x3ffff) >> 4) | (1ull << 16) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}
#endif
// The first 1024-byte boundary at or after p in shared memory (swizzled tiles start on one; a
// buffer that holds them is declared 1 KiB larger). In the emulator the swizzle follows host
// addresses, so the boundary is a host one.
__device__ __forceinline__ unsigned char* align_1024(unsigned char* p) {
#ifdef CASCADE_EMU
    const unsigned at = (unsigned)(uintptr_t)p;
#else
    const unsigned at = (unsigned)__cvta_generic_to_shared(p);
#endif
    return p + ((1024u - (at & 1023u)) & 1023u);
}
// D (64 × 64, f32) = A·B (+ D when `accumulate`): A 64 × 16 bf16 from registers, each warp w of
// the warpgroup holding rows 16w .. 16w + 15 as an mma.m16n8k16 A fragment; B 16 × 64 bf16 from
// shared memory, K-major (TRANS_B 0: B[k][n] at row n, column k of the tile, i.e. Kᵀ from a
// [key][dim] tile) or MN-major (TRANS_B 1: at row k, column n: V from a [key][dim] tile). Each
// thread holds 32 accumulators of its warp's 16 rows: d[4j + i] is row g + 8·(i / 2), column
// 8j + 2t + i % 2 (eight m16n8 C fragments side by side). Asynchronous: d and a must not be
// touched until a wgmma_wait covers it (wgmma_fence_operands keeps the compiler from moving
// reads of d before that wait).
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n64k16_bf16(float (&d)[32], const uint32_t (&a)[4], SmemDesc b, bool accumulate) {
#ifdef CASCADE_EMU
    emu_wgmma_m64n64k16(d, a, b, TRANS_B, accumulate);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
          "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
          "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TRANS_B), "r"((int)accumulate)
        : "memory");
#endif
}
// The same with A from shared memory too: a 64 × 16 slice of a K-major tile (row m of A at row
// m of the tile; warp w reads rows 16w .. 16w + 15), e.g. Q from a [query][dim] tile.
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n64k16_bf16_ss(float (&d)[32], SmemDesc a, SmemDesc b, bool accumulate) {
#ifdef CASCADE_EMU
    emu_wgmma_m64n64k16_ss(d, a, b, TRANS_B, accumulate);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %35, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, 0, %34;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
          "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
          "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b), "n"(TRANS_B), "r"((int)accumulate)
        : "memory");
#endif
}
// D (64 × 128, f32) = A·B (+ D): A a 64 × 16 slice of a K-major tile, B 16 × 128 from a K-major
// tile (B[k][n] at row n, column k: nn.Linear's weight rows), both from shared memory. The GEMM
// tile's product: sixteen m16n8 C fragments side by side, d[4j + i] row g + 8·(i / 2), column
// 8j + 2t + i % 2 of the warp's 16 rows.
__device__ __forceinline__ void wgmma_m64n128k16_bf16_ss(float (&d)[64], SmemDesc a, SmemDesc b, bool accumulate) {
#ifdef CASCADE_EMU
    emu_wgmma_ss(d, a, b, 0, accumulate, 128);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "%64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(a), "l"(b), "r"((int)accumulate)
        : "memory");
#endif
}
// The same with A from registers: each warp w of the warpgroup holds rows 16w .. 16w + 15 of A
// (64 × 16 bf16) as an mma.m16n8k16 A fragment (as wgmma_m64n64k16_bf16's). The registers must
// not change until a wgmma_wait covers the product.
__device__ __forceinline__ void wgmma_m64n128k16_bf16_rs(float (&d)[64], const uint32_t (&a)[4], SmemDesc b, bool accumulate) {
#ifdef CASCADE_EMU
    emu_wgmma_rs(d, a, b, 0, accumulate, 128);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"((int)accumulate)
        : "memory");
#endif
}
// D (64 × N, f32) = A·B (+ D) for N = 32 and 16, B K-major from shared memory (only its first N
// rows are read), A from registers as wgmma_m64n64k16_bf16's or (_ss) from a K-major tile as
// wgmma_m64n64k16_bf16_ss's: the attention's narrow last tile of keys, S = Q·Kᵀ over 32 or 16 keys.
// The accumulators are the first N / 2 of the 64-wide layout: d[4j + i] row g + 8·(i / 2), column
// 8j + 2t + i % 2.
__device__ __forceinline__ void wgmma_m64n32k16_bf16(float (&d)[16], const uint32_t (&a)[4], SmemDesc b, bool accumulate) {
#ifdef CASCADE_EMU
    emu_wgmma_rs(d, a, b, 0, accumulate, 32);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"((int)accumulate)
        : "memory");
#endif
}
__device__ __forceinline__ void wgmma_m64n32k16_bf16_ss(float (&d)[16], SmemDesc a, SmemDesc b, bool accumulate) {
#ifdef CASCADE_EMU
    emu_wgmma_ss(d, a, b, 0, accumulate, 32);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(a), "l"(b), "r"((int)accumulate)
        : "memory");
#endif
}
__device__ __forceinline__ void wgmma_m64n16k16_bf16(float (&d)[8], const uint32_t (&a)[4], SmemDesc b, bool accumulate) {
#ifdef CASCADE_EMU
    emu_wgmma_rs(d, a, b, 0, accumulate, 16);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"((int)accumulate)
        : "memory");
#endif
}
__device__ __forceinline__ void wgmma_m64n16k16_bf16_ss(float (&d)[8], SmemDesc a, SmemDesc b, bool accumulate) {
#ifdef CASCADE_EMU
    emu_wgmma_ss(d, a, b, 0, accumulate, 16);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "l"(a), "l"(b), "r"((int)accumulate)
        : "memory");
#endif
}
// D (64 × 8, f32) = A·B (+ D) with A (64 × 16 bf16) from registers as wgmma_m64n64k16_bf16's and
// B K-major from shared memory: the attention's row sums, P times a tile of ones.
__device__ __forceinline__ void wgmma_m64n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], SmemDesc b, bool accumulate) {
#ifdef CASCADE_EMU
    emu_wgmma_rs(d, a, b, 0, accumulate, 8);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"((int)accumulate)
        : "memory");
#endif
}
// D (64 × 160, f32) = A·B (+ D): as wgmma_m64n128k16_bf16_ss with B 160 rows wide (the skinny
// GEMM: A a 64-row slice of nn.Linear's weight, B up to 160 rows of the input, both K-major).
// Twenty m16n8 C fragments side by side: d[4j + i] row g + 8·(i / 2), column 8j + 2t + i % 2.
__device__ __forceinline__ void wgmma_m64n160k16_bf16_ss(float (&d)[80], SmemDesc a, SmemDesc b, bool accumulate) {
#ifdef CASCADE_EMU
    emu_wgmma_ss(d, a, b, 0, accumulate, 160);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %82, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n160k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79}, "
        "%80, %81, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79])
        : "l"(a), "l"(b), "r"((int)accumulate)
        : "memory");
#endif
}
// Orders the warpgroup's earlier register writes (accumulators, A fragments) before the next
// wgmma reads them.
__device__ __forceinline__ void wgmma_fence() {
#ifndef CASCADE_EMU
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef CASCADE_EMU
    emu_wgmma_commit();
#else
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most N committed groups of this warpgroup's products are in flight.
template <int N> __device__ __forceinline__ void wgmma_wait() {
#ifdef CASCADE_EMU
    emu_wgmma_wait(N);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Pins registers in place around wgmma issue and wait: an empty volatile asm that reads and
// writes each, so the compiler neither moves their reads before the wait nor their writes after
// the issue.
template <int N> __device__ __forceinline__ void wgmma_fence_operands(float (&r)[N]) {
#ifndef CASCADE_EMU
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
#endif
}
// Makes this thread's generic-proxy writes to shared memory (cp.async copies, stores) visible to
// the async proxy that wgmma reads through; a barrier after it covers the other threads.
__device__ __forceinline__ void fence_proxy_async_shared() {
#ifndef CASCADE_EMU
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// ---- Transaction barriers and tensor copies (sm_90: mbarrier, TMA) --------------------------
// An mbarrier is 8 bytes of shared memory that counts arrivals and transaction bytes; a phase
// completes when both reach zero, its parity flips and the arrivals are re-armed. A TMA copy
// moves a box of a tensor (its map made on the host by cuTensorMapEncodeTiled, held in the
// kernel's __grid_constant__ parameters) into shared memory with no thread's registers involved,
// and completes its bytes on an mbarrier; wgmma then reads the tile through the same async proxy.
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
#ifdef CASCADE_EMU
    emu_mbar_init(bar, count);
#else
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)), "r"(count) : "memory");
#endif
}
// After a block's barriers are initialised, before a barrier (__syncthreads) lets others use them:
// makes the initialisation visible to the async proxy (the copies' complete_tx).
__device__ __forceinline__ void mbar_init_fence() {
#ifndef CASCADE_EMU
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#ifdef CASCADE_EMU
    emu_mbar_arrive(bar, 0);
#else
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)) : "memory");
#endif
}
// One arrival that also announces `bytes` of copies to complete on the barrier in this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
#ifdef CASCADE_EMU
    emu_mbar_arrive(bar, bytes);
#else
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)), "r"(bytes) : "memory");
#endif
}
// Waits until the phase of this parity has completed (a fresh barrier is in phase 0, so a wait
// for parity 1 passes at once: the producer's first round over empty slots).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
#ifdef CASCADE_EMU
    emu_mbar_wait(bar, parity);
#else
    const unsigned a = (unsigned)__cvta_generic_to_shared(bar);
    unsigned done;
    do {
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done) : "r"(a), "r"(parity) : "memory");
    } while (!done);
#endif
}
// The box of `map` at (c0 inner, c1 outer) into shared memory at dst (1024-byte aligned for the
// 128-byte swizzle), its bytes completed on bar. Elements outside the tensor arrive as zeros.
__device__ __forceinline__ void tma_load_2d(void* dst, const TensorMap* map, int c0, int c1, uint64_t* bar) {
#ifdef CASCADE_EMU
    emu_tma_load_2d(dst, map, c0, c1, bar);
#else
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
            (unsigned)__cvta_generic_to_shared(dst)),
        "l"(map), "r"(c0), "r"(c1), "r"((unsigned)__cvta_generic_to_shared(bar))
        : "memory");
#endif
}
// The same for a rank-3 map: the box at (c0 inner, c1, c2 outer), e.g. 64 rows of one sample.
__device__ __forceinline__ void tma_load_3d(void* dst, const TensorMap* map, int c0, int c1, int c2, uint64_t* bar) {
#ifdef CASCADE_EMU
    emu_tma_load_3d(dst, map, c0, c1, c2, bar);
#else
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
            (unsigned)__cvta_generic_to_shared(dst)),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"((unsigned)__cvta_generic_to_shared(bar))
        : "memory");
#endif
}

// ---- Clusters (sm_90) ---------------------------------------------------------------------------
// The blocks of a cluster launch (cuLaunchKernelEx with a cluster dimension) run at once on SMs of
// one GPC, and each may write the others' shared memory (a TMA multicast) and arrive on their
// barriers. A block must not end while another may still do either: the kernel's last cluster
// wait covers that.
__device__ __forceinline__ unsigned cluster_ctarank() {
#ifdef CASCADE_EMU
    return emu::cluster_rank();
#else
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
#endif
}
// barrier.cluster in its two halves, each executed by every thread of the cluster, whole warps
// together: the arrival releases this thread's earlier writes and remote arrivals, the wait
// returns once every thread of the cluster has arrived.
__device__ __forceinline__ void cluster_arrive() {
#ifdef CASCADE_EMU
    emu::cluster_arrive();
#else
    asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#ifdef CASCADE_EMU
    emu::cluster_wait();
#else
    asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
// One arrival on the barrier at bar's offset in the shared memory of the cluster's block `rank`
// (release semantics, the default: this thread's reads of the slot it frees come first).
__device__ __forceinline__ void mbar_arrive_cluster(uint64_t* bar, unsigned rank) {
#ifdef CASCADE_EMU
    emu_mbar_arrive(emu::cluster_map(bar, rank), 0);
#else
    asm volatile(
        "{\n .reg .b32 remote;\n mapa.shared::cluster.u32 remote, %0, %1;\n"
        " mbarrier.arrive.shared::cluster.b64 _, [remote];\n}\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)),
        "r"(rank)
        : "memory");
#endif
}
// tma_load_2d into every block of the cluster whose rank's bit is set in `mask`: the box lands at
// dst's offset in each one's shared memory, its bytes completed on each one's barrier at bar's
// offset. One read from L2 serves them all.
__device__ __forceinline__ void tma_load_2d_multicast(void* dst, const TensorMap* map, int c0, int c1, uint64_t* bar, uint16_t mask) {
#ifdef CASCADE_EMU
    emu_tma_load_2d_multicast(dst, map, c0, c1, bar, mask);
#else
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(
            (unsigned)__cvta_generic_to_shared(dst)),
        "l"(map), "r"(c0), "r"(c1), "r"((unsigned)__cvta_generic_to_shared(bar)), "h"(mask)
        : "memory");
#endif
}
// The same for a rank-3 map (tma_load_3d's box) into every block of the cluster in `mask`.
__device__ __forceinline__ void tma_load_3d_multicast(void* dst, const TensorMap* map, int c0, int c1, int c2, uint64_t* bar, uint16_t mask) {
#ifdef CASCADE_EMU
    emu_tma_load_3d_multicast(dst, map, c0, c1, c2, bar, mask);
#else
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%2, %3, %4}], [%5], %6;\n" ::"r"(
            (unsigned)__cvta_generic_to_shared(dst)),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"((unsigned)__cvta_generic_to_shared(bar)), "h"(mask)
        : "memory");
#endif
}
#endif  // wgmma

// ---- Last block to finish --------------------------------------------------------------------
// Counts this block in `count` once its writes are fenced; true in every thread of the block
// that arrives last of `expected`, which also resets the counter for the next launch.
__device__ __forceinline__ bool block_arrived_last(unsigned int* count, unsigned int expected, bool* flag) {
    __threadfence();  // this block's writes are visible device-wide before it is counted
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) *flag = atomicAdd(count, 1u) == expected - 1;
    __syncthreads();
    if (!*flag) return false;
    __threadfence();
    if (threadIdx.x == 0 && threadIdx.y == 0) *count = 0;
    return true;
}

// ---- Named barriers ---------------------------------------------------------------------------
// bar.sync id, count: the `count` threads (whole warps) that reach barrier `id` wait for one
// another. For the threads of a block that go on working after others have ended (the consumer
// warpgroups of a warp-specialised kernel whose producer warp has returned), where __syncthreads
// would count the ended threads. Id 0 is __syncthreads' own.
__device__ __forceinline__ void named_barrier_sync(unsigned id, unsigned count) {
#ifdef CASCADE_EMU
    emu::sync_named(id, count);
#else
    asm volatile("bar.sync %0, %1;\n" : : "r"(id), "r"(count) : "memory");
#endif
}

// ---- Grid-wide waits (cooperative launches only) -------------------------------------------
// Returns once *p >= target, read with acquire semantics at device scope. Only a launch whose
// blocks are all resident at once (cuLaunchCooperativeKernel, which fails rather than start a
// grid that does not fit) may wait for other blocks; the emulator runs such a grid's blocks
// interleaved and yields here.
__device__ __forceinline__ void spin_until_at_least(unsigned* p, unsigned target) {
#ifdef CASCADE_EMU
    emu::spin_until_at_least(p, target);
#else
    for (;;) {
        unsigned v;
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
        if (v >= target) return;
        __nanosleep(32);
    }
#endif
}
// A barrier over the blocks that share `count`: this block's writes are made visible
// device-wide, the block is counted, and it waits until `target` arrivals are counted. Reads
// of other blocks' writes after it go through L2 (__ldcg): L1 is not coherent across SMs. Keep
// nothing in static __shared__ arrays across it (the emulator's blocks share those; dynamic
// shared memory is per block there too).
__device__ __forceinline__ void grid_arrive_wait(unsigned* count, unsigned target) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
        atomicAdd(count, 1u);
        spin_until_at_least(count, target);
        __threadfence();
    }
    __syncthreads();
}
