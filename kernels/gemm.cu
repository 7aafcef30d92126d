// A ResBlock's first MLP layer with GlobalResponseNorm's statistics in its epilogue, on Hopper's
// warpgroup products (sm_90a; an empty body elsewhere, never launched there).
//
// Why a GEMM of our own here: cuBLASLt's epilogues cannot sum the squares of the output per
// column, so GRN needs a pass over u = GELU(fc1(y)) of its own, and on an H200 that pass costs
// more than its traffic (Stage B's level 2: 31 µs against a 24 µs GEMM; docs/performance.md).
// This kernel writes u and each 64-row chunk's sums of squares from the accumulators, and the
// last block to finish turns them into GRN's factor: the sums pass goes.
//
// Tiles: 128 × 128 outputs (two consumer warpgroups of 64 rows; the tall and paired versions 256
// rows, four), K in steps of 64, both operands K-major tiles of 128 bytes a row in the 128-byte
// swizzle, read by wgmma.m64n128k16 from shared memory. A first version copied the operands with
// cp.async by the threads that multiply (no warp specialisation, no TMA): on an H200 it reached
// 295 TFLOP/s on Stage C's MLP (131 µs) against cuBLASLt's GEMM alone at about 57 µs plus GRN's
// sums pass at about 28 (docs/performance.md, thirteenth session), and was removed. The versions
// below bring the operands in with TMA from a producer warp.
#include "common.cuh"

#define GG_BM 128     // rows per block: two warpgroups of 64
#define GG_BN 128     // columns per block: one m64n128k16 per warpgroup and 16 of K
#define GG_BK 64      // K per stage: a tile row is 128 bytes, one swizzle atom wide
#define GG_TILE (GG_BM * GG_BK * 2)   // bytes of one operand's tile (BM == BN)
// Bytes per row of the staged output tile: 16 of padding put a warp's 8 rows on distinct banks.
#define GG_OUT_STRIDE (GG_BN * 2 + 16)

#ifdef CASCADE_WGMMA
// Where an output tile of the fused GEMM lies: its first row and column, its column of tiles
// among `tiles_n`, and how many tiles each column has (the blocks that report to its counter).
struct GrnTile {
    int m0, n0, tile_n, tiles_n, tiles_m;
};
// The tile of a block of the grid (tiles_n × tiles_m), one tile per block.
__device__ __forceinline__ GrnTile grid_tile() {
    return GrnTile{(int)blockIdx.y * GG_BM, (int)blockIdx.x * GG_BN, (int)blockIdx.x, (int)gridDim.x, (int)gridDim.y};
}
// The bytes of scratch the epilogue uses (below): the staged output tile, the warps' column sums,
// the halves, the warp sums and the flag.
#define GG_EPILOGUE_BYTES (GG_BM * GG_OUT_STRIDE + 8 * GG_BN * 4 + 2 * GG_BN * 4 + 4 * 4 + 16)

// Adds B chunk sums to s in order: rows ch, ch + 2, … of `pb` (rows `stride` floats apart), read
// through L2 (other blocks wrote them), every load issued before the first add.
template <int B> __device__ __forceinline__ void add_every_second(float& s, const float* pb, const int ch, const int stride) {
    float u[B];
#pragma unroll
    for (int i = 0; i < B; i++) u[i] = __ldcg(pb + (int64_t)(ch + 2 * i) * stride);
#pragma unroll
    for (int i = 0; i < B; i++) s += u[i];
}

// The fused GEMM's epilogue, from each consumer warpgroup's 64 × 128 accumulators (warpgroup w:
// rows 64w .. 64w + 63 of tile `at`) and GG_EPILOGUE_BYTES of shared memory at `scratch`: u, the
// chunks' sums of squares, and in the last blocks GRN's factor (SUMS false: u alone, an MLP's
// first layer and its GELU). Every thread that waits at the block's barriers calls it: with NAMED
// false every thread of the block (__syncthreads), of which only the 256 threads of the two
// consumer warpgroups (`worker`, threads 0–255) hold accumulators and do the work; with NAMED
// the 256 consumer threads alone (named barrier BAR: the stream-K kernel, whose producer warp
// has ended, and each half of the tall kernel's tile), every one a worker, `tid` counted from
// the first of them.
template <bool SUMS = true, bool NAMED = false, int BAR = 1>
__device__ __forceinline__ void gemm_grn_epilogue(const GemmGrnParams& p, float (&acc)[64], unsigned char* const scratch, const int tid, const bool worker,
                                                  const GrnTile at) {
    const int warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
    const int g = lane >> 2, t = lane & 3;
    const int m0 = at.m0, n0 = at.n0;
    auto sync = [] {
        if (NAMED) named_barrier_sync(BAR, 256);
        else __syncthreads();
    };
    // Counts this block's tile in `count` once its writes are fenced: true in every thread of the
    // block that arrives last of `expected`, which also resets the counter for the next launch.
    auto arrived_last = [&](unsigned* count, unsigned expected, bool* flag) {
        __threadfence();
        sync();
        if (tid == 0) *flag = atomicAdd(count, 1u) == expected - 1;
        sync();
        if (!*flag) return false;
        __threadfence();
        if (tid == 0) *count = 0;
        return true;
    };
    // The scratch: the output tile [128][GG_OUT_STRIDE], then the warps' column sums [8][128]
    // f32, the halves of the last block's chunk sums [2][128], four warp sums and a flag.
    unsigned char* const out = scratch;
    float* const red = (float*)(scratch + GG_BM * GG_OUT_STRIDE);
    float* const halves = red + 8 * GG_BN;
    float* const wsum = halves + 2 * GG_BN;
    bool* const flag = (bool*)(wsum + 4);
    const bf16* bias = (const bf16*)p.bias;
    constexpr bool sums = SUMS;
    // A block that runs several tiles: the previous tile's readers of the scratch are done.
    if (NAMED) sync();
    // This thread's rows of the tile: row0 and row0 + 8. With sums, M is a multiple of 64, so a
    // warpgroup's rows are all in the matrix or all past it (then its sums are not written).
    const int row0 = 64 * wg + 16 * (warp & 3) + g;
#pragma unroll
    for (int j = 0; j < 16 && worker; j++) {
        const int c = 8 * j + 2 * t;
        const bool cin = n0 + c < p.N;  // and c + 1: N is a multiple of 8
        float b0 = 0.f, b1 = 0.f;
        if (bias && cin) b0 = to_f32(bias[n0 + c]), b1 = to_f32(bias[n0 + c + 1]);
        // With the sums, u as the separate path stores it: the product plus bias rounded to bf16
        // (cuBLASLt's output), then its GELU rounded again (GRN's sums pass), so that the factor
        // sums what that path sums. Alone, the GELU of the f32 sum, rounded once.
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float pre = acc[4 * j + i] + (i & 1 ? b1 : b0);
            v[i] = rounded<bf16>(gelu_as<bf16>(sums ? rounded<bf16>(pre) : pre));
        }
        *(uint32_t*)(out + row0 * GG_OUT_STRIDE + 2 * c) = pack_bf16x2(v[0], v[1]);
        *(uint32_t*)(out + (row0 + 8) * GG_OUT_STRIDE + 2 * c) = pack_bf16x2(v[2], v[3]);
        if (!sums) continue;
        // Column sums over the warp's 16 rows, lanes of one t in a fixed butterfly order.
        float s0 = v[0] * v[0] + v[2] * v[2], s1 = v[1] * v[1] + v[3] * v[3];
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) {
            s0 += __shfl_xor_sync(0xffffffff, s0, o);
            s1 += __shfl_xor_sync(0xffffffff, s1, o);
        }
        if (g == 0) red[warp * GG_BN + c] = s0, red[warp * GG_BN + c + 1] = s1;
    }
    sync();
    {
        // The chunk sums: thread i takes column i % 128 of warpgroup i / 128's 64 rows, its four
        // warps added in order.
        const int c = tid & 127, h = tid >> 7;
        const float* r = red + 4 * h * GG_BN + c;
        if (sums && worker && m0 + 64 * h < p.M && n0 + c < p.N) p.part[(int64_t)(m0 / 64 + h) * p.N + n0 + c] = r[0] + r[GG_BN] + r[2 * GG_BN] + r[3 * GG_BN];
    }
    // u: 16 bytes per thread and step, a row's 256 bytes by 16 consecutive threads.
    bf16* y = (bf16*)p.y;
#pragma unroll
    for (int i = 0; i < GG_BM * GG_BN / 8 / 256; i++) {
        const int q = tid + 256 * i, row = q >> 4, c8 = (q & 15) * 8;
        if (worker && m0 + row < p.M && n0 + c8 < p.N) *(uint4*)(y + (int64_t)(m0 + row) * p.N + n0 + c8) = *(const uint4*)(out + row * GG_OUT_STRIDE + 2 * c8);
    }

    if (!sums) return;

    // The last block of this column tile to finish: every chunk sum of its columns is written.
    // Each sample's norms of these columns (the chunk sums added in a fixed order: even chunks by
    // one half of the block, odd by the other), and their sum over the tile.
    const int tiles_n = at.tiles_n, samples = p.M / p.rows, chunks = p.rows / 64;
    if (!arrived_last(p.counters + at.tile_n, at.tiles_m, flag)) return;
    {
        const int c = tid & 127, h = tid >> 7, col = n0 + c;
        const bool cin = worker && col < p.N;
        for (int b = 0; b < samples; b++) {
            float s = 0.f;
            if (cin) {
                const float* pb = p.part + (int64_t)b * chunks * p.N + col;
                // Eight loads in flight, then four, then one at a time: each batch is one round
                // trip to L2 on the launch's critical path (Stage B's level 0: 128 chunks per
                // thread, 16 round trips instead of 32). The chunks are added in order either way.
                int ch = h;
                for (; ch + 14 < chunks; ch += 16) add_every_second<8>(s, pb, ch, p.N);
                for (; ch + 6 < chunks; ch += 8) add_every_second<4>(s, pb, ch, p.N);
                for (; ch < chunks; ch += 2) add_every_second<1>(s, pb, ch, p.N);
            }
            if (worker) halves[h * GG_BN + c] = s;
            sync();
            if (h == 0) {
                const float norm = cin ? sqrtf(halves[c] + halves[GG_BN + c]) : 0.f;
                if (cin) p.scale[(int64_t)b * p.N + col] = norm;
                float gs = norm;
                for (int o = 16; o > 0; o >>= 1) gs += __shfl_xor_sync(0xffffffff, gs, o);
                if (lane == 0) wsum[warp] = gs;
            }
            sync();
            if (tid == 0) p.group_sums[(int64_t)b * tiles_n + at.tile_n] = wsum[0] + wsum[1] + wsum[2] + wsum[3];
            sync();  // halves and wsum are rewritten for the next sample
        }
    }

    // The last column tile: each sample's mean norm, then the factor 1 + γ·norm / (mean + 1e-6)
    // (GRN's, as grn_partial computes it).
    if (!arrived_last(p.counters + tiles_n, tiles_n, flag)) return;
    const bf16* gamma = (const bf16*)p.gamma;
    for (int b = 0; b < samples; b++) {
        float sum = 0.f;
        for (int i = 0; i < tiles_n; i++) sum += __ldcg(&p.group_sums[(int64_t)b * tiles_n + i]);
        const float denom = sum / p.N + 1e-6f;
        float* sc = p.scale + (int64_t)b * p.N;
        for (int d = tid; d < p.N && worker; d += 256) sc[d] = 1.f + to_f32(gamma[d]) * (__ldcg(&sc[d]) / denom);
    }
}

// One 64-deep step of K for one warpgroup: its four m64n128k16 products from a stage's tiles (its
// 64 rows of x at `a`, the 128 rows of w at `b`), issued and committed as one group; the first
// step's first product starts the accumulators (`accumulate` false).
__device__ __forceinline__ void gemm_grn_step(float (&acc)[64], const unsigned char* a, const unsigned char* b, bool accumulate) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < GG_BK / 16; kk++)
        wgmma_m64n128k16_bf16_ss(acc, smem_desc_sw128(a + 32 * kk), smem_desc_sw128(b + 32 * kk), accumulate || kk > 0);
    wgmma_commit();
}
#endif

// The warp-specialised version: the operands brought in by the copy engine (TMA), not by the
// threads that multiply.
//
// Block: 288 threads. Warps 0–7 are the two consumer warpgroups (rows 64w .. 64w + 63 of the
// 128 × 128 tile); warp 8 is the producer, one lane of which issues each stage's two
// TMA copies (a 128 × 64 box of x and of w, 16 KiB each, in the 128-byte swizzle) onto the
// stage's `full` barrier. A consumer warpgroup waits on `full`, issues its four products and
// leaves them in flight while it waits for the previous step's, then frees that step's stage on
// its `empty` barrier (one arrival per warpgroup). So no thread that multiplies ever copies or
// waits at a block-wide barrier inside the K loop, and the tensor cores always have the next
// step's products queued: what the removed cp.async version (one block-wide barrier and an empty
// pipeline per step) lacked.
//
// Two versions, to be told apart by measurement:
// - gemm_gelu_grn_ws_bf16: three stages (96 KiB), two blocks per SM (288 threads at 96
//   registers: ptxas spills 8 bytes in the epilogue), so one block's epilogue overlaps the
//   other's products;
// - gemm_gelu_grn_ws_deep_bf16: six stages (192 KiB), one block per SM, no register pressure;
//   the copies of the next tile's first stages cannot start before this block ends, so the
//   epilogue is exposed.
#define GG_WS_THREADS 288
#ifdef CASCADE_WGMMA
// The producer's copies of one stage: waits until the slot's previous use has been handed back
// (the phase of `empty` before round `round`; the first round passes at once), announces the two
// tiles' `bytes` on `full`, and copies the boxes of x at (k, m0) and w at (k, n0) (128 × 64, or
// 256 rows of x for the tall version). Rows past M or N and columns past K arrive as zeros: they
// add nothing.
__device__ __forceinline__ void ws_produce(uint64_t* full, uint64_t* empty, int round, unsigned char* a, unsigned char* b, const TensorMap* x_map,
                                           const TensorMap* w_map, int k, int m0, int n0, unsigned bytes = 2 * GG_TILE) {
    mbar_wait(empty, (round & 1) ^ 1);
    mbar_arrive_expect_tx(full, bytes);
    tma_load_2d(a, x_map, k, m0, full);
    tma_load_2d(b, w_map, k, n0, full);
}
#endif
// WGS consumer warpgroups (2, or 4 for the tall version): the block's tile is WGS · 64 rows of x
// by 128 columns of w, and its producer warp is warp 4 · WGS. PAIR (tall only): the block is one
// of a cluster of two, neighbours along the columns with the same 256 rows of x; each producer
// copies its half of those rows (128 × 64) into both blocks' stage with one multicast, and its
// own w. A slot is then written by both producers, so each block's `empty` counts the consumer
// warpgroups of both blocks, and each consumer frees a slot in both.
template <int STAGES, bool SUMS = true, int WGS = 2, bool PAIR = false> __device__ __forceinline__ void gemm_gelu_grn_ws(const GemmGrnTmaParams& q) {
#ifdef CASCADE_WGMMA
    static_assert(WGS == 2 || WGS == 4, "two or four consumer warpgroups");
    static_assert(!PAIR || WGS == 4, "pairs of tall tiles");
    constexpr int A_BYTES = WGS * 64 * GG_BK * 2, STAGE = A_BYTES + GG_TILE;  // x's rows, then w's 128
    const GemmGrnParams& p = q.g;
    extern __shared__ uint4 smem_words[];
    unsigned char* const tiles = align_1024((unsigned char*)smem_words);  // the launch asks for 1 KiB more
    auto atile = [&](int s) { return tiles + s * STAGE; };
    auto btile = [&](int s) { return tiles + s * STAGE + A_BYTES; };
    // The barriers lie past the stages, out of the epilogue's way.
    uint64_t* const full = (uint64_t*)(tiles + STAGES * STAGE);
    uint64_t* const empty = full + STAGES;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
    const bool producer = warp == 4 * WGS;
    const int m0 = blockIdx.y * (64 * WGS), n0 = blockIdx.x * GG_BN;
    const int steps = (p.K + GG_BK - 1) / GG_BK;
    const unsigned rank = PAIR ? cluster_ctarank() : 0;  // of the pair: which half of x it copies
    if (tid == 128 * WGS) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(&full[s], 1);                     // the producer's arrival, with the copies' bytes
            mbar_init(&empty[s], PAIR ? 2 * WGS : WGS);  // one arrival per consumer warpgroup
        }
        mbar_init_fence();
    }
    // A pair: neither block copies into the other's stages or arrives on its barriers before
    // they are initialised.
    if (PAIR) {
        cluster_arrive();
        cluster_wait();
    } else {
        __syncthreads();
    }

    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; i++) acc[i] = 0.f;
    if (producer) {
        if (lane == 0) {
            for (int kt = 0; kt < steps; kt++) {
                const int s = kt % STAGES;
                // The slot's previous use (step kt − STAGES) is done with: its round's phase of
                // `empty` has completed (the first round passes at once).
                if (PAIR) {
                    // Both blocks' slot s is free (empty counts both blocks' consumers): this
                    // block's 128 rows of x into both, its w into its own; 48 KiB land here.
                    mbar_wait(&empty[s], ((kt / STAGES) & 1) ^ 1);
                    mbar_arrive_expect_tx(&full[s], STAGE);
                    tma_load_2d_multicast(atile(s) + rank * GG_TILE, &q.x_map, kt * GG_BK, m0 + GG_BM * rank, &full[s], 0x3);
                    tma_load_2d(btile(s), &q.w_map, kt * GG_BK, n0, &full[s]);
                } else {
                    ws_produce(&full[s], &empty[s], kt / STAGES, atile(s), btile(s), &q.x_map, &q.w_map, kt * GG_BK, m0, n0, STAGE);
                }
            }
        }
        __syncwarp();
    } else {
        for (int kt = 0; kt < steps; kt++) {
            const int s = kt % STAGES;
            mbar_wait(&full[s], (kt / STAGES) & 1);
            // (A warpgroup whose rows are all past M multiplies the zeros TMA brought: its
            // products are the same instructions as the others', so every wait stays uniform.)
            gemm_grn_step(acc, atile(s) + wg * 64 * 128, btile(s), kt > 0);
            // Step kt − 1's products are done (this step's stay in flight): its stage is free.
            wgmma_wait<1>();
            wgmma_fence_operands(acc);
            if (kt > 0 && (tid & 127) == 0) {
                mbar_arrive(&empty[(kt - 1) % STAGES]);
                if (PAIR) mbar_arrive_cluster(&empty[(kt - 1) % STAGES], rank ^ 1);
            }
        }
        wgmma_wait<0>();
        wgmma_fence_operands(acc);
    }
    // A pair: this block's last remote arrivals are made; the other may end once it has waited
    // for them (the kernel's end), and nothing lands in this block's stages any more.
    if (PAIR) cluster_arrive();
    // Every product is done and every copy has landed (each was waited for): the stages become
    // the epilogue's. The epilogue writes them through the generic proxy after the async one.
    fence_proxy_async_shared();
    __syncthreads();
    if (WGS == 2) {
        gemm_grn_epilogue<SUMS>(p, acc, tiles, tid, !producer, grid_tile());
    } else if (!producer) {
        // The tall tile's two halves of 128 rows at once: warpgroups 2h and 2h + 1 write half h
        // as threads 0–255 of the 128-row epilogue, meeting at named barrier 1 + h, in scratch of
        // their own (the stages hold both). The producer warp has no part. A half whose rows are
        // all past M is not counted: the column counters expect ⌈M / 128⌉ arrivals.
        static_assert(2 * GG_EPILOGUE_BYTES <= STAGES * STAGE, "both halves' scratch in the stages");
        const int h = wg >> 1;
        // A pair's grid has an even number of column tiles: its last block may lie past N (it
        // copies its half of x for the other, and writes nothing).
        const int tiles_n = PAIR ? (p.N + GG_BN - 1) / GG_BN : (int)gridDim.x;
        const GrnTile at{m0 + 128 * h, n0, (int)blockIdx.x, tiles_n, (p.M + GG_BM - 1) / GG_BM};
        if (at.m0 < p.M && (!PAIR || n0 < p.N)) {  // uniform across the half's 256 threads
            if (h == 0)
                gemm_grn_epilogue<SUMS, true, 1>(p, acc, tiles, tid, true, at);
            else
                gemm_grn_epilogue<SUMS, true, 2>(p, acc, tiles + GG_EPILOGUE_BYTES, tid - 256, true, at);
        }
    }
    if (PAIR) cluster_wait();
#endif
}

extern "C" __global__ void __launch_bounds__(GG_WS_THREADS, 2) gemm_gelu_grn_ws_bf16(const __grid_constant__ GemmGrnTmaParams p) {
    pdl_enter();
    gemm_gelu_grn_ws<3>(p);
}
extern "C" __global__ void __launch_bounds__(GG_WS_THREADS, 1) gemm_gelu_grn_ws_deep_bf16(const __grid_constant__ GemmGrnTmaParams p) {
    pdl_enter();
    gemm_gelu_grn_ws<6>(p);
}
// The tall version (opt-in until measured: CASCADE_GEMM_WGMMA=ws_tall, and timed beside the others
// under CASCADE_KERNEL_TUNE): tiles of 256 rows of x by 128 columns of w, four consumer
// warpgroups (rows 64w .. 64w + 63) and the producer warp (544 threads), four stages of 48 KiB,
// one block per SM. Each 16 KiB tile of w copied from L2 now serves 256 rows instead of 128: a
// 64-deep step brings 48 KiB for 4.2 MFLOP where the 128 × 128 tile brings 32 KiB for 2.1
// (cuBLASLt's 128 × 256 tiles in pairs of blocks sharing one operand bring 32 KiB for 4.2). What
// it gives up: a second block on the SM whose products hide this block's epilogue.
#define GG_WS_TALL_THREADS (4 * 128 + 32)
extern "C" __global__ void __launch_bounds__(GG_WS_TALL_THREADS, 1) gemm_gelu_grn_ws_tall_bf16(const __grid_constant__ GemmGrnTmaParams p) {
    pdl_enter();
    gemm_gelu_grn_ws<4, true, 4>(p);
}
// The tall version in clusters of two blocks (opt-in until measured: CASCADE_GEMM_WGMMA=ws_pair,
// the only switch that checks, times or takes it until it has run on a GPU): neighbouring column tiles share the
// copy of their 256 rows of x, each block bringing 128 of them to both by TMA multicast. A 64-deep
// step then reads 32 KiB from L2 per block for 4.2 MFLOP, as cuBLASLt's kernels for these shapes
// do. Launched with a cluster dimension of (2, 1, 1) on a grid of an even number of column
// tiles, its x map's box 128 rows.
extern "C" __global__ void __launch_bounds__(GG_WS_TALL_THREADS, 1) gemm_gelu_grn_ws_pair_bf16(const __grid_constant__ GemmGrnTmaParams p) {
    pdl_enter();
    gemm_gelu_grn_ws<4, true, 4, true>(p);
}
// The first of them with GRN's sums left out: an MLP's first layer and its GELU (Stage A's
// MixBlocks; opt-in until measured, CASCADE_GEMM_WS_GELU=1), the GELU's epilogue overlapping the
// other block's products where cuBLASLt's GELU epilogue follows its own. p.g.part, scale,
// group_sums, gamma, counters and rows are unused; M is any size.
extern "C" __global__ void __launch_bounds__(GG_WS_THREADS, 2) gemm_gelu_ws_bf16(const __grid_constant__ GemmGrnTmaParams p) {
    pdl_enter();
    gemm_gelu_grn_ws<3, false>(p);
}

// ---- Skinny products: few rows of x, many of w (opt-in until measured: CASCADE_GEMM_SKINNY=1) --
// CLIP's GEMMs multiply 154 tokens by weights of 1280 × 3840, 1280 × 1280, 1280 × 5120 and
// 5120 × 1280: each reads far more weight than it has rows to use it on. cuBLASLt tiles them
// along the 154 rows (128-row tiles: two, the second mostly empty) and runs them at 120–160
// TFLOP/s on an H200, about a quarter of what reading the weights once allows.
//
// Here the roles are swapped: w's rows are wgmma's M (64 per block, one warpgroup) and x's rows
// its N (all of them, up to 160: m64n160k16), so every block reads its slice of w once and all of
// x's rows use it; x (at most 160 × K) is read from L2 by every block. K is cut into `splits`
// ranges when N / 64 blocks would leave SMs idle; the last block of each column of the grid adds
// the ranges' sums in order (deterministic) and applies the epilogue: bias, GELU, residual.
// Stages: 4 of 8 KiB of w and 20 KiB of x (112 KiB and 1 KiB of alignment: up to two blocks per
// SM; the launcher aims for one, CASCADE_SKINNY_BLOCKS_PER_SM=2 for two), copied with cp.async
// two steps ahead of the products, one step's products left in flight (the deep schedule of
// gemm_gelu_grn above). What bounds it: x read from L2 by every block (2.5 bytes for each byte of
// w at 64 rows of w a block) and the ranges' f32 sums, written and read back once each.
#define GS_BN 64
#define GS_STAGES 4
#define GS_ATILE (GS_BN * GG_BK * 2)
#define GS_BTILE (CASCADE_SKINNY_ROWS * GG_BK * 2)
extern "C" __global__ void __launch_bounds__(128, 2) gemm_skinny_bf16(GemmSkinnyParams p) {
    pdl_enter();
#ifdef CASCADE_WGMMA
    constexpr int AHEAD = GS_STAGES - 2, ROWS = CASCADE_SKINNY_ROWS;
    extern __shared__ uint4 gs_smem[];
    unsigned char* const tiles = align_1024((unsigned char*)gs_smem);  // the launch asks for 1 KiB more
    auto atile = [&](int s) { return tiles + s * (GS_ATILE + GS_BTILE); };
    auto btile = [&](int s) { return tiles + s * (GS_ATILE + GS_BTILE) + GS_ATILE; };
    const int tid = threadIdx.x, n0 = blockIdx.x * GS_BN, split = blockIdx.y;
    const int kt0 = split * p.k_steps, steps = min(p.K / GG_BK - kt0, p.k_steps);  // ≥ 1 (the launcher)
    const bf16* x = (const bf16*)p.x;
    const bf16* w = (const bf16*)p.w;

    // Thread i copies 16-byte chunk i % 8 of rows i / 8 + 16r into chunk (i % 8) ^ (row % 8) of
    // the row (the 128-byte swizzle; row % 8 is the same for every r). x's rows past M are zeros.
    const int lr = tid >> 3, lc = tid & 7, swz = (lc ^ (lr & 7)) << 4;
    auto copy_step = [&](int kt, int s) {
        const int k = kt * GG_BK + lc * 8;
#pragma unroll
        for (int r = 0; r < GS_BN / 16; r++) {
            const int row = lr + 16 * r;
            cp_async16(atile(s) + row * 128 + swz, w + (int64_t)(n0 + row) * p.K + k, true);
        }
#pragma unroll
        for (int r = 0; r < ROWS / 16; r++) {
            const int row = lr + 16 * r;
            const bool in = row < p.M;
            cp_async16(btile(s) + row * 128 + swz, in ? x + (int64_t)row * p.K + k : x, in);
        }
    };

    float acc[80];
#pragma unroll
    for (int i = 0; i < 80; i++) acc[i] = 0.f;
#pragma unroll
    for (int s = 0; s < AHEAD; s++) {
        if (s < steps) copy_step(kt0 + s, s);
        cp_async_commit();  // empty groups too: the wait below counts groups
    }
    for (int i = 0; i < steps; i++) {
        cp_async_wait<AHEAD - 1>();  // this thread's copies of step i have landed
        fence_proxy_async_shared();  // ... visible to the tensor cores' reads
        __syncthreads();             // ... every thread's; and step i − 2's products are done
        if (i + AHEAD < steps) copy_step(kt0 + i + AHEAD, (i + AHEAD) % GS_STAGES);  // into step i − 2's slot
        cp_async_commit();
        const int s = i % GS_STAGES;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < GG_BK / 16; kk++)
            wgmma_m64n160k16_bf16_ss(acc, smem_desc_sw128(atile(s) + 32 * kk), smem_desc_sw128(btile(s) + 32 * kk), i > 0 || kk > 0);
        wgmma_commit();
        wgmma_wait<1>();
        wgmma_fence_operands(acc);
    }
    wgmma_wait<0>();
    wgmma_fence_operands(acc);
    cp_async_wait<0>();

    // K in ranges: every block leaves its sums ([20][128] float4, a block's 128 threads writing
    // consecutive ones), and the last one of the column adds all ranges in order.
    if (gridDim.y > 1) {
        __shared__ bool last;
        float4* const part = (float4*)p.partials;
        const int64_t tile = (int64_t)gridDim.x * 20 * 128, col = (int64_t)blockIdx.x * 20 * 128 + tid;
#pragma unroll
        for (int i = 0; i < 20; i++) part[split * tile + col + 128 * i] = make_float4(acc[4 * i], acc[4 * i + 1], acc[4 * i + 2], acc[4 * i + 3]);
        if (!block_arrived_last(p.counters + blockIdx.x, gridDim.y, &last)) return;
#pragma unroll
        for (int i = 0; i < 80; i++) acc[i] = 0.f;
        for (int r = 0; r < (int)gridDim.y; r++)
#pragma unroll
            for (int i = 0; i < 20; i++) {
                const float4 v = __ldcg(&part[r * tile + col + 128 * i]);
                acc[4 * i] += v.x, acc[4 * i + 1] += v.y, acc[4 * i + 2] += v.z, acc[4 * i + 3] += v.w;
            }
    }

    // The epilogue: d[4j + i] is w's row n0 + 16·warp + g + 8·(i / 2) (y's column) and x's row
    // 8j + 2t + i % 2 (y's row).
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const bf16* bias = (const bf16*)p.bias;
    bf16* y = (bf16*)p.y;
    float b[2];
#pragma unroll
    for (int h = 0; h < 2; h++) b[h] = bias ? to_f32(bias[n0 + 16 * warp + g + 8 * h]) : 0.f;
#pragma unroll
    for (int j = 0; j < 20; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int m = 8 * j + 2 * t + (i & 1), n = n0 + 16 * warp + g + 8 * (i >> 1);
            if (m >= p.M) continue;
            float v = acc[4 * j + i] + b[i >> 1];
            if (p.gelu) v = gelu_bf16_out(v);
            bf16* at = y + (int64_t)m * p.N + n;
            if (p.accumulate) v += to_f32(*at);
            *at = from_f32<bf16>(v);
        }
#endif
}

// ---- A ResBlock's second layer with GRN's factor on its input, stream-K (opt-in until measured) --
// fc2(GRN(u)) = (u ⊙ f) · w₂ᵀ + (b₂ + w₂ · β): GRN's β folds into the bias once, at load, and its
// per-sample, per-channel factor f multiplies u's columns as the products read them, so GRN's
// apply pass (a read and a write of u) goes. The factor cannot be an epilogue (it scales K, not
// M or N), so A comes to the tensor cores through registers: each warp loads its 16 rows × 16
// columns of the stage's u tile with ldmatrix, multiplies them by f (rounded to bf16, as the
// apply pass stores u · f), and issues wgmma with A from registers and w₂ from shared memory.
//
// The outputs of these layers are narrow (N = C: 1280 or 2048 columns) and their products deep
// (K = 4C): 128 × 128 tiles give Stage C 144 tiles and Stage B's level 2 80, for 132 SMs. So the
// work is shared out stream-K: the grid is one block per SM, all resident at once (a cooperative
// launch), and block b takes the 64-deep steps [b·T/G, (b+1)·T/G) of all T = tiles × steps in
// order, tile by tile. A block whose range begins inside a tile leaves the sums of that piece in
// `partials` and counts its warpgroups' 128 threads each into a counter; the block that holds the
// tile's first step (which reaches it last, at the end of its range) waits for the counts, adds
// the later pieces in order (the same order in every launch of the same shape: deterministic),
// adds the bias and the residual and writes y. No block waits on one that waits: a piece that
// begins inside a tile is the first thing its block does.
//
// Block: 288 threads, as the fused GEMM's warp-specialised version: warps 0–7 two consumer
// warpgroups (rows 64w .. 64w + 63 of each tile), warp 8 the producer, one lane of which follows
// the same steps with TMA copies of u's and w₂'s tiles into a ring of GK_STAGES stages. One block
// per SM (167 registers, of the 168 that 288 threads leave: the accumulators, two sets of A
// fragments, the factors of the fragment in hand).
//
// Three modes of the same loop:
// - SK_SCALED (gemm_scaled_sk_bf16): as above.
// - SK_PLAIN (gemm_sk_bf16, no factor: a plain residual product) reads A from shared memory in
//   the products themselves, as the fused GEMM does: no ldmatrix, no A registers.
// - SK_GRN (gemm_gelu_grn_sk_bf16): a ResBlock's fc1 with the fused GEMM's epilogue (u = GELU,
//   the chunks' sums of squares, the last tiles' GRN factor), A as SK_PLAIN reads it. The fused
//   GEMM's grid of one tile per block leaves SMs idle where the tiles are few or a last wave
//   nearly empty (Stage B's level 3: 80 tiles, level 2: 320 tiles on 132 SMs, 2 per SM); shared
//   out stream-K, every SM has the same number of steps. The tile's first block writes it, both
//   consumer warpgroups together: they meet at named barrier 1 (the producer warp has ended),
//   and the epilogue's scratch lies past the stages (the producer is already filling them with
//   the next tile's steps).
#define GK_STAGES 5
#define GK_THREADS 288
enum SkMode { SK_PLAIN, SK_SCALED, SK_GRN };
__device__ __forceinline__ float* sk_partials(const GemmScaledTmaParams& q) { return q.g.partials; }
__device__ __forceinline__ float* sk_partials(const GemmGrnSkParams& q) { return q.partials; }
__device__ __forceinline__ unsigned* sk_counters(const GemmScaledTmaParams& q) { return q.g.counters; }
__device__ __forceinline__ unsigned* sk_counters(const GemmGrnSkParams& q) { return q.counters; }
#ifdef CASCADE_WGMMA
// The stream-K residual modes' epilogue: one warp's 16 rows (r0 and r0 + 8 per thread, `t` its
// lane's column pair in each 8) of a 128-column tile at n0, plus the bias, added to y or written.
__device__ __forceinline__ void sk_residual_epilogue(const GemmScaledParams& p, const float (&acc)[64], const int r0, const int n0, const int t) {
    const int r1 = r0 + 8;
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const int col = n0 + 8 * j + 2 * t;
        if (col >= p.N) continue;  // N is a multiple of 8: col + 1 is in too
        float b0 = 0.f, b1 = 0.f;
        if (p.bias) {
            if (p.out_f32) b0 = ((const float*)p.bias)[col], b1 = ((const float*)p.bias)[col + 1];
            else b0 = to_f32(((const bf16*)p.bias)[col]), b1 = to_f32(((const bf16*)p.bias)[col + 1]);
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = h ? r1 : r0;
            if (row >= p.M) continue;
            float v0 = acc[4 * j + 2 * h] + b0, v1 = acc[4 * j + 2 * h + 1] + b1;
            const int64_t at = (int64_t)row * p.N + col;
            if (p.out_f32) {
                float2* const y = (float2*)((float*)p.y + at);
                if (p.accumulate) {
                    const float2 r = *y;
                    v0 += r.x, v1 += r.y;
                }
                *y = make_float2(v0, v1);
            } else {
                uint32_t* const y = (uint32_t*)((bf16*)p.y + at);
                if (p.accumulate) {
                    float r0f, r1f;
                    unpack_bf16x2(*y, r0f, r1f);
                    v0 += r0f, v1 += r1f;
                }
                *y = pack_bf16x2(v0, v1);
            }
        }
    }
}
#endif
template <SkMode MODE, class Q> __device__ __forceinline__ void gemm_sk(const Q& q) {
#ifdef CASCADE_WGMMA
    constexpr bool SCALED = MODE == SK_SCALED;
    const auto& p = q.g;
    float* const partials = sk_partials(q);
    unsigned* const counters = sk_counters(q);
    extern __shared__ uint4 smem_words[];
    unsigned char* const tiles = align_1024((unsigned char*)smem_words);  // the launch asks for 1 KiB more
    auto atile = [&](int s) { return tiles + s * 2 * GG_TILE; };
    auto btile = [&](int s) { return tiles + s * 2 * GG_TILE + GG_TILE; };
    uint64_t* const full = (uint64_t*)(tiles + GK_STAGES * 2 * GG_TILE);
    uint64_t* const empty = full + GK_STAGES;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
    const int ks = (p.K + GG_BK - 1) / GG_BK, tiles_n = (p.N + GG_BN - 1) / GG_BN;
    const int64_t total = (int64_t)ks * tiles_n * ((p.M + GG_BM - 1) / GG_BM);
    const int grid = gridDim.x, b = blockIdx.x;
    // Block c's first step (the launcher keeps the grid at most the steps: no range is empty).
    auto start_of = [&](int c) { return (int64_t)c * total / grid; };
    const int64_t start = start_of(b), end = start_of(b + 1);
    if (tid == 256) {
        for (int s = 0; s < GK_STAGES; s++) {
            mbar_init(&full[s], 1);   // the producer's arrival, with the copies' bytes
            mbar_init(&empty[s], 2);  // one arrival per consumer warpgroup
        }
        mbar_init_fence();
    }
    __syncthreads();  // the last block-wide barrier: the producer warp leaves early

    if (warp == 8) {
        if (lane == 0) {
            for (int64_t it = start; it < end; it++) {
                const int i = (int)(it - start), s = i % GK_STAGES;
                const int tile = (int)(it / ks), kt = (int)(it % ks);
                ws_produce(&full[s], &empty[s], i / GK_STAGES, atile(s), btile(s), &q.x_map, &q.w_map, kt * GG_BK, (tile / tiles_n) * GG_BM,
                           (tile % tiles_n) * GG_BN);
            }
        }
        return;
    }

    const int g = lane >> 2, t = lane & 3, wt = tid & 127;
    const int wrow = 64 * wg + 16 * (warp & 3);  // this warp's first row of the tile
    // ldmatrix.x4 of a 16 × 16 A fragment: lane l gives row (l % 8) + 8·((l / 8) % 2) of the
    // warp's 16, 16-byte chunk 2kk + l / 16 of the row (matrices: rows 0–7 and 8–15 of columns
    // 0–7, then of columns 8–15: a0 … a3 in the mma.m16n8k16 order).
    const int lrow = wrow + (lane & 7) + 8 * ((lane >> 3) & 1), lhi = lane >> 4;
    const int samples = p.M / p.rows;
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; i++) acc[i] = 0.f;
    int pending = -1;  // the stage whose products are in flight and not yet handed back
    int seg_kt0 = 0;   // the first step of the piece of a tile in hand

    // The end of a piece of a tile: its sums left for the tile's first block, or (that block) the
    // later pieces added in order, then the epilogue (bias and residual, or u and GRN's sums).
    auto finish_piece = [&](int tile, int kt_last) {
        const int slot = 2 * b + wg;
        if (seg_kt0 > 0) {
            float4* const part = (float4*)partials + (int64_t)slot * 16 * 128 + wt;
#pragma unroll
            for (int j = 0; j < 16; j++) part[j * 128] = make_float4(acc[4 * j], acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3]);
            __threadfence();
            atomicAdd(&counters[slot], 1u);
            return;
        }
        if (kt_last < ks - 1) {
            const int64_t tile_end = (int64_t)(tile + 1) * ks;
            for (int c = b + 1; c < grid && start_of(c) < tile_end; c++) {
                unsigned* const count = counters + 2 * c + wg;
                if (lane == 0) spin_until_at_least(count, 128);  // all 128 threads of its warpgroup
                __syncwarp();
                const float4* const part = (const float4*)partials + (int64_t)(2 * c + wg) * 16 * 128 + wt;
#pragma unroll
                for (int j = 0; j < 16; j++) {
                    const float4 v = __ldcg(&part[j * 128]);
                    acc[4 * j] += v.x, acc[4 * j + 1] += v.y, acc[4 * j + 2] += v.z, acc[4 * j + 3] += v.w;
                }
                __syncwarp();
                // The four warps count themselves out; the last resets the counter for the next launch.
                if (lane == 0 && atomicAdd(count, 1u) == 128 + 3) *count = 0;
            }
        }
        const int m0 = (tile / tiles_n) * GG_BM, n0 = (tile % tiles_n) * GG_BN;
        if constexpr (MODE == SK_GRN) {
            const GrnTile at{m0, n0, tile % tiles_n, tiles_n, (p.M + GG_BM - 1) / GG_BM};
            gemm_grn_epilogue<true, true>(p, acc, (unsigned char*)(empty + GK_STAGES), tid, true, at);
        } else {
            sk_residual_epilogue(p, acc, m0 + wrow + g, n0, t);
        }
    };

    // One step: its factors (this warp's sample; columns 16kk + 2t, + 1, + 8 and + 9 of the
    // step), its A fragments from the stage's u tile, scaled, and its four products.
    auto step = [&](int64_t it, bool first, uint32_t (&a)[4][4]) {
        const int i = (int)(it - start), s = i % GK_STAGES;
        const int tile = (int)(it / ks), kt = (int)(it % ks);
        if constexpr (!SCALED) {
            // A straight from the stage's tile, as the fused GEMM reads it.
            mbar_wait(&full[s], (i / GK_STAGES) & 1);
            gemm_grn_step(acc, atile(s) + wg * 64 * 128, btile(s), !first);
        } else {
            // This warp's sample's factors, read per 16 columns as they are applied (the loads hit
            // L1: every warp of the sample reads the same 256 bytes a step). The launcher never
            // passes a NULL factor here; the test keeps ptxas's schedule of the loads (without it
            // the kernel spills 16 bytes).
            const float* const fr = p.factor ? p.factor + (int64_t)min(((tile / tiles_n) * GG_BM + wrow) / p.rows, samples - 1) * p.K : nullptr;
            mbar_wait(&full[s], (i / GK_STAGES) & 1);
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                const int chunk = 2 * kk + lhi;
                ldmatrix_x4<false>(a[kk], atile(s) + lrow * 128 + ((chunk ^ (lrow & 7)) << 4));
                if (!fr) continue;
                // Columns k, k + 1 (a0, a1: rows g and g + 8) and k + 8, k + 9 (a2, a3). K is a
                // multiple of 8, so each pair is in K or past it (where u is zero) together.
                const int k = kt * GG_BK + 16 * kk + 2 * t;
                const float2 lo = k < p.K ? __ldg((const float2*)(fr + k)) : make_float2(0.f, 0.f);
                const float2 hi = k + 8 < p.K ? __ldg((const float2*)(fr + k + 8)) : make_float2(0.f, 0.f);
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    float x0, x1;
                    unpack_bf16x2(a[kk][r], x0, x1);
                    a[kk][r] = r < 2 ? pack_bf16x2(x0 * lo.x, x1 * lo.y) : pack_bf16x2(x0 * hi.x, x1 * hi.y);
                }
            }
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < 4; kk++) wgmma_m64n128k16_bf16_rs(acc, a[kk], smem_desc_sw128(btile(s) + 32 * kk), !(first && kk == 0));
            wgmma_commit();
        }
        // The previous step's products are done (this step's stay in flight): its stage is free.
        wgmma_wait<1>();
        wgmma_fence_operands(acc);
        if (pending >= 0 && wt == 0) mbar_arrive(&empty[pending]);
        pending = s;
    };
    // Piece by piece (the steps of one tile in this block's range), two sets of A fragments
    // alternating: a step's fragments stay untouched while its products are in flight, through
    // the next step's issue. Every wait for all products is outside a branch (ptxas serialises
    // the products of a kernel whose waits it cannot prove uniform across the warpgroup).
    uint32_t a0[4][4], a1[4][4];
    for (int64_t it = start; it < end;) {
        const int tile = (int)(it / ks);
        const int64_t piece_end = min(end, (int64_t)(tile + 1) * ks);
        seg_kt0 = (int)(it % ks);
        const int64_t piece_start = it;
        for (; it + 1 < piece_end; it += 2) {
            step(it, it == piece_start, a0);
            step(it + 1, false, a1);
        }
        if (it < piece_end) {
            step(it, it == piece_start, a0);
            it++;
        }
        wgmma_wait<0>();
        wgmma_fence_operands(acc);
        if (wt == 0) mbar_arrive(&empty[pending]);
        pending = -1;
        finish_piece(tile, (int)((piece_end - 1) % ks));
    }
#endif
}

extern "C" __global__ void __launch_bounds__(GK_THREADS, 1) gemm_scaled_sk_bf16(const __grid_constant__ GemmScaledTmaParams q) {
    pdl_enter();
    gemm_sk<SK_SCALED>(q);
}
// Without a factor (p.g.factor NULL): the residual products with few output tiles
// (CASCADE_GEMM_SK=1; opt-in until measured).
extern "C" __global__ void __launch_bounds__(GK_THREADS, 1) gemm_sk_bf16(const __grid_constant__ GemmScaledTmaParams q) {
    pdl_enter();
    gemm_sk<SK_PLAIN>(q);
}
// A ResBlock's fc1, GELU and GRN's statistics, stream-K (opt-in until measured:
// CASCADE_GEMM_WGMMA=sk, or timed faster under CASCADE_KERNEL_TUNE). Shared memory: the five
// stages, their barriers, then GG_EPILOGUE_BYTES of scratch.
extern "C" __global__ void __launch_bounds__(GK_THREADS, 1) gemm_gelu_grn_sk_bf16(const __grid_constant__ GemmGrnSkParams q) {
    pdl_enter();
    gemm_sk<SK_GRN>(q);
}
