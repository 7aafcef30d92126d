// A dense product with its epilogue fused: y = GELU(x · wᵀ + bias) in bf16, optionally with the
// sums of squares of y over chunks of 64 rows that GlobalResponseNorm needs next (params.h
// GemmParams). cuBLASLt is faster as a product alone, but its epilogues have no exact (erf)
// GELU, so the MLPs' activation would be a separate pass that reads and writes the whole
// 4×-wide hidden tensor once more: on Stage A that pass moves 400 MB per block, more time than
// this kernel loses to cuBLASLt on the product. The GELU is common.cuh's gelu_bf16_out (the erf
// form, erf to 1.5e-7: what bf16 stores is gelu_erf's value), as the 64 GELUs per thread would
// otherwise issue more instructions than the K loop on Stage A's short K.
//
// Structure (the sm_80 tensor-core recipe): a block computes a 128 × 128 tile with 8 warps, each
// a 64 × 32 sub-tile (4 × 4 mma.m16n8k16 per 16 of K, f32 accumulators in registers). K goes
// through shared memory in steps of 32, three stages deep: cp.async fills stage k + 2 while the
// warps multiply stage k. Fragments come by ldmatrix.x4 from rows of 64 bytes (32 bf16) whose
// four 16-byte chunks are XOR-swizzled by (row / 2) % 4, so the 8 rows of each 8 × 8 matrix, and
// each 8 threads' cp.async stores, fall in 8 different 16-byte bank groups.
#include "common.cuh"

// Position (in elements) of chunk `ch` (0..3, 8 elements each) of tile row `r`.
__device__ __forceinline__ int gemm_swizzle(int r, int ch) { return r * CASCADE_GEMM_BK + ((ch ^ ((r >> 1) & 3)) << 3); }

// One thread's share of a stage's copies: chunk `ch` (8 elements of K) of tile rows r and r + 64
// of x and of w. The row pointers and shared-memory offsets are fixed for the whole K loop;
// each step only moves along K. Chunks past M, N or K are zero-filled (nothing read), so the
// tails multiply zeros.
struct GemmLoader {
    const bf16* src[4];  // x rows r, r + 64; w rows r, r + 64 (row 0 where out of range)
    bool in[4];
    int so[2];  // shared-memory offsets of the two rows' chunk
    int k;      // this thread's column within a step

    __device__ __forceinline__ GemmLoader(const GemmParams& p, int m0, int n0) {
        const int r = threadIdx.x >> 2, ch = threadIdx.x & 3;
        k = ch * 8;
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            const int m = m0 + r + 64 * i, n = n0 + r + 64 * i;
            in[i] = m < p.M, in[2 + i] = n < p.N;
            src[i] = (const bf16*)p.x + (in[i] ? (size_t)m * p.K : 0) + k;
            src[2 + i] = (const bf16*)p.w + (in[2 + i] ? (size_t)n * p.K : 0) + k;
            so[i] = gemm_swizzle(r + 64 * i, ch);
        }
    }
    // Queues the copies of K step `kt` (columns kt·32 .. kt·32 + 31) into one stage.
    __device__ __forceinline__ void load(bf16* as, bf16* bs, int kt, int K) const {
        const int k0 = kt * CASCADE_GEMM_BK;
        const bool kin = k0 + k < K;
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            cp_async16(as + so[i], src[i] + (kin ? k0 : 0), kin && in[i]);
            cp_async16(bs + so[i], src[2 + i] + (kin ? k0 : 0), kin && in[2 + i]);
        }
    }
};

extern "C" __global__ void __launch_bounds__(CASCADE_GEMM_THREADS, 2) gemm_bias_gelu_bf16(GemmParams p) {
    __shared__ __align__(128) bf16 as[CASCADE_GEMM_STAGES][CASCADE_GEMM_BM * CASCADE_GEMM_BK];  // x's rows, swizzled
    __shared__ __align__(128) bf16 bs[CASCADE_GEMM_STAGES][CASCADE_GEMM_BN * CASCADE_GEMM_BK];  // w's rows, swizzled
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = (warp & 1) * 64, wn = (warp >> 1) * 32;  // the warp's 64 × 32 within the tile
    const int m0 = blockIdx.y * CASCADE_GEMM_BM, n0 = blockIdx.x * CASCADE_GEMM_BN;
    const int steps = (p.K + CASCADE_GEMM_BK - 1) / CASCADE_GEMM_BK;

    float acc[4][4][4];
    #pragma unroll
    for (int i = 0; i < 4; i++)
        #pragma unroll
        for (int j = 0; j < 4; j++)
            #pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

    const GemmLoader loader(p, m0, n0);
    #pragma unroll
    for (int s = 0; s < CASCADE_GEMM_STAGES - 1; s++) {
        if (s < steps) loader.load(as[s], bs[s], s, p.K);
        cp_async_commit();
    }
    // The stage step kt reads, and the one its copies fill (step kt − 1's): kt and kt + 2 mod 3.
    int stage = 0, next_stage = CASCADE_GEMM_STAGES - 1;
    for (int kt = 0; kt < steps; kt++) {
        // Step kt's copies are done (at most the one younger group in flight), and every warp is
        // past step kt − 1, whose stage the copies queued next overwrite.
        cp_async_wait<CASCADE_GEMM_STAGES - 2>();
        __syncthreads();
        const int next = kt + CASCADE_GEMM_STAGES - 1;
        if (next < steps) loader.load(as[next_stage], bs[next_stage], next, p.K);
        cp_async_commit();
        next_stage = stage;
        const bf16* a_s = as[stage];
        const bf16* b_s = bs[stage];
        stage = stage == CASCADE_GEMM_STAGES - 1 ? 0 : stage + 1;
        #pragma unroll
        for (int kk = 0; kk < CASCADE_GEMM_BK / 16; kk++) {
            // A fragments: lanes 0–15 address rows 0–15 at k 0–7 of this 16, lanes 16–31 the same
            // rows at k 8–15, giving a[0..3] in mma's order (rows g / g + 8, k low / high).
            uint32_t a[4][4], b[4][2];
            #pragma unroll
            for (int i = 0; i < 4; i++) {
                const int r = wm + i * 16 + (lane & 15);
                ldmatrix_x4<false>(a[i], a_s + gemm_swizzle(r, kk * 2 + (lane >> 4)));
            }
            // B fragments from w's rows (one row per output column): matrices (n 0–7, k 0–7),
            // (n 0–7, k 8–15), (n 8–15, k 0–7), (n 8–15, k 8–15) are b[0], b[1] of two n-tiles.
            #pragma unroll
            for (int j = 0; j < 2; j++) {
                const int r = wn + j * 16 + (lane & 7) + ((lane >> 4) << 3);
                uint32_t d[4];
                ldmatrix_x4<false>(d, b_s + gemm_swizzle(r, kk * 2 + ((lane >> 3) & 1)));
                b[2 * j][0] = d[0], b[2 * j][1] = d[1], b[2 * j + 1][0] = d[2], b[2 * j + 1][1] = d[3];
            }
            #pragma unroll
            for (int i = 0; i < 4; i++)
                #pragma unroll
                for (int j = 0; j < 4; j++) mma_m16n8k16_bf16(acc[i][j], a[i], b[j], acc[i][j]);
        }
    }
    cp_async_wait<0>();

    // Epilogue: lane (g, t) holds columns 2t, 2t + 1 of rows g and g + 8 of each 16 × 8 tile.
    const bf16* bias = (const bf16*)p.bias;
    bf16* y = (bf16*)p.y;
    const int g = lane >> 2, t = lane & 3;
    // With part: this warp's 64 rows are one chunk of one sample (the launcher checks that
    // M and the rows per sample are multiples of 64), or all past M.
    const bool sums = p.part != nullptr && m0 + wm < p.M;
    #pragma unroll
    for (int j = 0; j < 4; j++) {
        const int n = n0 + wn + j * 8 + 2 * t;
        const bool col = n < p.N;  // N is even, so n + 1 < N too
        float b0 = 0.f, b1 = 0.f;
        if (bias && col) unpack_bf16x2(__ldg((const unsigned int*)(bias + n)), b0, b1);
        float s0 = 0.f, s1 = 0.f;  // sums of squares of the stored (rounded) values
        #pragma unroll
        for (int i = 0; i < 4; i++)
            #pragma unroll
            for (int h = 0; h < 2; h++) {
                const int m = m0 + wm + i * 16 + g + h * 8;
                if (m < p.M && col) {
                    const float* a = acc[i][j] + 2 * h;
                    const uint32_t v = pack_bf16x2(gelu_bf16_out(a[0] + b0), gelu_bf16_out(a[1] + b1));
                    *(uint32_t*)(y + (size_t)m * p.N + n) = v;
                    float v0, v1;
                    unpack_bf16x2(v, v0, v1);
                    s0 += v0 * v0, s1 += v1 * v1;
                }
            }
        if (p.part) {  // uniform across the block: every lane takes the shuffles
            // Columns n, n + 1 summed over the 8 lanes that share t (rows g = 0..7).
            #pragma unroll
            for (int o = 4; o < 32; o <<= 1) {
                s0 += __shfl_xor_sync(0xffffffff, s0, o);
                s1 += __shfl_xor_sync(0xffffffff, s1, o);
            }
            if (sums && col && g == 0) {
                float* part = p.part + (size_t)((m0 + wm) / 64) * p.N + n;
                part[0] = s0, part[1] = s1;
            }
        }
    }
}
