// The block scheduler of the emulator: each CUDA thread of a block is a fiber (ucontext) with
// its own stack; fibers run in turn until they finish or wait at a barrier, and a barrier opens
// when every live thread of its scope (warp or block) waits at it. If every live thread waits
// and no barrier can open, the kernel has a barrier that some threads never reach: on a GPU
// that hangs or corrupts, here it is reported.
#include "fiber.h"

#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <string>
#include <vector>

#include "include/cuda_emu.h"

// Switching between fibers. On x86-64 a few instructions that save the callee-saved registers
// and the FP control words (glibc's swapcontext also saves the signal mask, a system call per
// switch, which made it most of the emulator's time); ucontext elsewhere.
#if defined(__x86_64__)
extern "C" void emu_switch(void** save_sp, void* load_sp);
extern "C" void emu_fiber_entry();
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
#define EMU_ASM_SWITCH 1
#endif

namespace emu {

enum State { READY, WAIT_BLOCK, WAIT_WARP, WAIT_NAMED, SPIN, DONE };

struct Fiber {
#if EMU_ASM_SWITCH
    void* sp;
#else
    ucontext_t ctx;
#endif
    uint3 tid;
    uint3 block;
    char* smem;        // its block's shared memory
    size_t warp_base;  // its block's first warp among the running blocks'
    int linear;
    State state;
    unsigned bar_id, bar_count;  // the named barrier it waits at (WAIT_NAMED)
    size_t group;                // its block's index among the blocks running together
    unsigned cluster_rank;       // its block's rank in its cluster (0 outside cluster launches)
    unsigned cluster_phase;      // the cluster barrier's phase it last arrived in
    char* stack;
    alignas(16) char scratch[1024];  // per-thread state of the emulated instructions (wgmma's queue)
};

static const size_t STACK_BYTES = 256 << 10;

thread_local uint3 block_idx, block_dim, grid_dim;
thread_local Fiber* current;

namespace {
struct Runner {
#if EMU_ASM_SWITCH
    void* sched_sp;
#else
    ucontext_t sched;
#endif
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
    std::vector<uint64_t> slots;  // 32 per warp
    std::vector<char> fragments;  // 32 × 64 bytes per warp
    std::vector<char> smem;
    size_t smem_bytes = 0, smem_stride = 0;
    // Clusters (a cluster launch's blocks run together; the blocks of a cooperative launch are
    // clusters of one): their size, and per running block (the first of each cluster's entries
    // serving the cluster) the cluster barrier's arrivals and phase. Rank r of the cluster whose
    // first block is running block f has its shared memory at smem + (f + r) · smem_stride.
    unsigned cluster_blocks = 1, cluster_threads = 0;
    std::vector<unsigned> cluster_arrived, cluster_phase;
    std::vector<unsigned> live;  // per running block: its threads that have not ended
    void (*body)(void*) = nullptr;
    void* params = nullptr;
    ~Runner() {
        for (char* s : stacks) free(s);
    }
};
thread_local Runner runner;

#if EMU_ASM_SWITCH
void yield() { emu_switch(&current->sp, runner.sched_sp); }
void resume(Fiber* f) { emu_switch(&runner.sched_sp, f->sp); }
void start(Fiber* f) {
    // A stack that emu_switch can "return" into: the FP control words, six zeroed registers,
    // then the entry point as the return address, aligned as if the entry had been called.
    uint64_t mxcsr_fpucw[1];
    asm volatile("stmxcsr (%0)\n fnstcw 4(%0)" : : "r"(mxcsr_fpucw) : "memory");
    uintptr_t top = ((uintptr_t)f->stack + STACK_BYTES) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)top;
    *--sp = 0;  // padding: at the entry rsp % 16 == 8, as after a call
    *--sp = (uint64_t)(uintptr_t)emu_fiber_entry;
    for (int i = 0; i < 6; i++) *--sp = 0;
    *--sp = mxcsr_fpucw[0];
    f->sp = sp;
}
#else
void trampoline() {
    Fiber* f = current;
    runner.body(runner.params);
    f->state = DONE;
    runner.live[f->group]--;
    // uc_link returns to the scheduler.
}
void yield() { swapcontext(&current->ctx, &runner.sched); }
void resume(Fiber* f) { swapcontext(&runner.sched, &f->ctx); }
void start(Fiber* f) {
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack;
    f->ctx.uc_stack.ss_size = STACK_BYTES;
    f->ctx.uc_link = &runner.sched;
    makecontext(&f->ctx, trampoline, 0);
}
#endif
}  // namespace

const uint3& thread_idx() { return current->tid; }
int lane_id() { return current->linear & 31; }
int warp_id() { return current->linear >> 5; }
void sync_block() {
    current->state = WAIT_BLOCK;
    yield();
}
void sync_warp() {
    current->state = WAIT_WARP;
    yield();
}
void sync_named(unsigned id, unsigned count) {
    if (id > 15 || count == 0 || count % 32 != 0) {
        fprintf(stderr, "emulated bar.sync: barrier %u with a count of %u threads (ids 0-15, whole warps)\n", id, count);
        abort();
    }
    current->bar_id = id;
    current->bar_count = count;
    current->state = WAIT_NAMED;
    yield();
}
void* dynamic_smem() { return current->smem; }
unsigned cluster_rank() { return current->cluster_rank; }
unsigned cluster_size() { return runner.cluster_blocks; }
void* cluster_map(const void* p, unsigned rank) {
    const char* c = (const char*)p;
    if (c < current->smem || c >= current->smem + runner.smem_bytes || rank >= runner.cluster_blocks) {
        fprintf(stderr, "emulated mapa: %s (rank %u of a cluster of %u)\n",
                rank >= runner.cluster_blocks ? "a rank beyond the cluster" : "an address outside the block's dynamic shared memory", rank,
                runner.cluster_blocks);
        abort();
    }
    // A block's shared memory is gone once all its threads have ended: a copy into it or an
    // arrival on its barriers then is undefined on a GPU (a cluster wait before the end prevents it).
    const size_t block = current->group - current->cluster_rank + rank;
    if (runner.live[block] == 0) {
        fprintf(stderr, "emulated mapa: rank %u of the cluster has ended, its shared memory with it\n", rank);
        abort();
    }
    return runner.smem.data() + block * runner.smem_stride + (c - current->smem);
}
void cluster_arrive() {
    const size_t first = current->group - current->cluster_rank;
    current->cluster_phase = runner.cluster_phase[first];
    if (++runner.cluster_arrived[first] == runner.cluster_threads) {
        runner.cluster_arrived[first] = 0;
        runner.cluster_phase[first]++;
    }
}
void cluster_wait() {
    const size_t first = current->group - current->cluster_rank;
    while (runner.cluster_phase[first] == current->cluster_phase) spin_once();
    spin_end();
}
void* thread_scratch() { return current->scratch; }
thread_local unsigned long long pdl_waits;  // threads of the running launch past pdl_enter
void note_pdl_wait() { pdl_waits++; }
unsigned long long take_pdl_waits() {
    const unsigned long long n = pdl_waits;
    pdl_waits = 0;
    return n;
}
uint64_t* warp_slots() { return &runner.slots[(current->warp_base + warp_id()) * 32]; }
void* warp_fragments() { return &runner.fragments[(current->warp_base + warp_id()) * 32 * 64]; }

std::string run_grid(void (*body)(void*), void* params, uint3 grid, uint3 block, size_t smem_bytes, bool cooperative, uint3 cluster) {
    Runner& r = runner;
    const size_t n = (size_t)block.x * block.y * block.z;
    const size_t warps = (n + 31) / 32;
    const size_t blocks = (size_t)grid.x * grid.y * grid.z;
    const size_t per_cluster = (size_t)cluster.x * cluster.y * cluster.z;
    // A cooperative launch starts all its blocks together, so a block may wait for others (a
    // grid-wide wait); a cluster launch starts each cluster's blocks together (they may wait for
    // one another and use one another's shared memory); otherwise blocks run one after another.
    const size_t at_once = cooperative ? blocks : per_cluster;
    // A cluster's blocks' shared memory a multiple of 1 KiB apart: an address mapped into
    // another block (mapa) keeps its alignment to the 128-byte swizzle's period, as on a GPU,
    // where every block's shared memory has the same layout.
    const size_t align = per_cluster > 1 ? 1024 : 16;
    const size_t smem_stride = (smem_bytes + 16 + align - 1) & ~(align - 1);
    r.smem_bytes = smem_bytes;
    r.smem_stride = smem_stride;
    r.cluster_blocks = (unsigned)per_cluster;
    r.cluster_threads = (unsigned)(per_cluster * n);
    while (r.stacks.size() < at_once * n) {
        char* s = (char*)malloc(STACK_BYTES);
        if (!s) return "out of host memory for fiber stacks";
        r.stacks.push_back(s);
    }
    r.body = body;
    r.params = params;
    grid_dim = grid;
    block_dim = block;
    for (size_t first = 0; first < blocks; first += at_once) {
        const size_t count = blocks - first < at_once ? blocks - first : at_once;
        r.fibers.assign(count * n, Fiber());
        r.live.assign(count, (unsigned)n);
        r.slots.assign(count * warps * 32, 0);
        r.fragments.assign(count * warps * 32 * 64, 0);
        // Fresh shared memory per block, filled with a pattern (reading shared memory before
        // writing it is a bug; NaN-like bytes make it show).
        r.smem.assign(count * smem_stride, (char)0xff);
        r.cluster_arrived.assign(count, 0);
        r.cluster_phase.assign(count, 0);
        // Copies the blocks before left in flight (never waited for) can no longer land.
        emu_tma_queue().count = 0;
        for (size_t j = 0; j < count; j++) {
            const size_t id = first + j;
            uint3 blk{(unsigned)(id % grid.x), (unsigned)((id / grid.x) % grid.y), (unsigned)(id / ((size_t)grid.x * grid.y))};
            if (per_cluster > 1) {
                // Cluster id / per_cluster, rank j: x fastest within the cluster, as %cluster_ctarank.
                const size_t c = id / per_cluster, cgx = grid.x / cluster.x, cgy = grid.y / cluster.y;
                blk = uint3{(unsigned)((c % cgx) * cluster.x + j % cluster.x), (unsigned)(((c / cgx) % cgy) * cluster.y + (j / cluster.x) % cluster.y),
                            (unsigned)((c / (cgx * cgy)) * cluster.z + j / ((size_t)cluster.x * cluster.y))};
            }
            for (size_t i = 0; i < n; i++) {
                Fiber& f = r.fibers[j * n + i];
                f.linear = (int)i;
                f.tid = uint3{(unsigned)(i % block.x), (unsigned)((i / block.x) % block.y), (unsigned)(i / ((size_t)block.x * block.y))};
                f.block = blk;
                f.group = j;
                f.cluster_rank = per_cluster > 1 ? (unsigned)j : 0;
                f.cluster_phase = 0;
                f.smem = r.smem.data() + j * smem_stride;
                f.warp_base = j * warps;
                f.state = READY;
                f.stack = r.stacks[j * n + i];
                block_idx = blk;
                start(&f);
            }
        }
        // One block runs at a time: its fibers in turn, its barriers opened as its threads all
        // reach them, until it ends or can only wait for other blocks (a grid-wide wait); then
        // the next block with live threads runs. The kernels' static __shared__ arrays are one
        // copy per OS thread, so in a cooperative launch a block has them to itself only from one
        // grid-wide wait to the next (kernels keep nothing there across a wait); dynamic shared
        // memory is the block's own.
        size_t active = 0, stalled = 0;  // stalled: blocks in a row that could not move
        const bool rotate = per_cluster > 1 && !cooperative && (first / per_cluster) % 2 == 1;
        for (;;) {
            Fiber* bf = &r.fibers[active * n];
            // A fiber spinning at a grid-wide wait re-reads its condition; it counts as progress
            // only once it gets past.
            bool progressed = false;
            for (size_t i = 0; i < n; i++) {
                Fiber& f = bf[i];
                if (f.state != READY && f.state != SPIN) continue;
                const State before = f.state;
                current = &f;
                block_idx = f.block;
                resume(current);
                if (!(before == SPIN && f.state == SPIN)) progressed = true;
            }
            current = nullptr;
            // Open every warp barrier whose live lanes all wait at it; else the block barrier
            // if all the block's live threads wait at it.
            bool opened = false, live = false, all_block = true, spinning = false;
            for (size_t w = 0; w < warps; w++) {
                size_t lo = w * 32, hi = lo + 32 < n ? lo + 32 : n;
                bool warp_live = false, all_warp = true;
                for (size_t i = lo; i < hi; i++) {
                    State st = bf[i].state;
                    if (st == DONE) continue;
                    warp_live = true;
                    spinning |= st == SPIN;
                    if (st != WAIT_WARP) all_warp = false;
                    if (st != WAIT_BLOCK) all_block = false;
                }
                live |= warp_live;
                if (warp_live && all_warp) {
                    for (size_t i = lo; i < hi; i++)
                        if (bf[i].state == WAIT_WARP) bf[i].state = READY;
                    opened = true;
                }
            }
            // A named barrier opens when as many threads as its count wait at it (threads of
            // one barrier that disagree on the count are a bug: reported as a deadlock).
            for (unsigned id = 0; id < 16 && live; id++) {
                unsigned waiting = 0, count = 0;
                bool agree = true;
                for (size_t i = 0; i < n; i++)
                    if (bf[i].state == WAIT_NAMED && bf[i].bar_id == id) {
                        if (waiting && bf[i].bar_count != count) agree = false;
                        count = bf[i].bar_count;
                        waiting++;
                    }
                if (waiting && agree && waiting == count) {
                    for (size_t i = 0; i < n; i++)
                        if (bf[i].state == WAIT_NAMED && bf[i].bar_id == id) bf[i].state = READY;
                    opened = true;
                }
            }
            if (live && !opened && all_block) {
                for (size_t i = 0; i < n; i++)
                    if (bf[i].state == WAIT_BLOCK) bf[i].state = READY;
                opened = true;
            }
            const bool moved = live && (opened || progressed);
            if (moved) {
                stalled = 0;
                // Every second cluster's blocks take turns after every round, so that one
                // block's copies into another's shared memory and its remote arrivals fall
                // between that block's steps; the other clusters' blocks (and all others) run
                // until they end or can only wait, as far ahead of one another as they can get.
                // A GPU may do either.
                if (!rotate) continue;
            } else {
                if (live && !spinning) {
                    char msg[200];
                    snprintf(msg, sizeof msg,
                             "barrier deadlock in block (%u, %u, %u): threads wait at barriers (__syncthreads, a warp's or a named one) that cannot open",
                             bf[0].block.x, bf[0].block.y, bf[0].block.z);
                    return msg;
                }
                // The block ended, or waits for others: the next block with live threads.
                if (live && ++stalled > count) return "grid barrier deadlock: every live block waits at a grid-wide or cluster-wide wait that never opens";
            }
            size_t next = count;
            for (size_t k = 1; k <= count && next == count; k++) {
                size_t j = (active + k) % count;
                for (size_t i = 0; i < n; i++)
                    if (r.fibers[j * n + i].state != DONE) {
                        next = j;
                        break;
                    }
            }
            if (next == count) break;  // every block ended
            active = next;
        }
    }
    return "";
}

void spin_once() {
    current->state = SPIN;
    yield();
}
void spin_end() { current->state = READY; }

void spin_until_at_least(const volatile unsigned* p, unsigned target) {
    while (*p < target) spin_once();
    spin_end();
}

}  // namespace emu

#if EMU_ASM_SWITCH
// Where a new fiber starts: run the kernel body, then hand back to the scheduler for good.
extern "C" void emu_fiber_entry() {
    emu::Fiber* f = emu::current;
    emu::runner.body(emu::runner.params);
    f->state = emu::DONE;
    emu::runner.live[f->group]--;
    emu_switch(&f->sp, emu::runner.sched_sp);
    __builtin_unreachable();
}
#endif
