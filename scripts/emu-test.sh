#!/usr/bin/env bash
# Runs the GPU tests (the ones marked "needs a CUDA GPU") on the CPU, through the CUDA emulator
# in tools/emu: the real kernels, launchers, cuBLASLt calls and graph captures, with device
# memory guarded against out-of-bounds access and barriers checked for deadlock. It proves the
# GPU code paths run as written on a machine without a GPU; it measures no speed and it is not
# a GPU result. Small shapes only (CASCADE_SHAPES=odd), emulated memory of 2 GiB (so the
# out-of-memory test fails fast).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 tools/emu/build.py
export LD_LIBRARY_PATH="$PWD/target/emu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CASCADE_EMU=1 CASCADE_SHAPES="${CASCADE_SHAPES:-odd}" CASCADE_EMU_MEMORY_GIB="${CASCADE_EMU_MEMORY_GIB:-2}"
# Graph buffers are filled with 0xff where each replay first gets them (as the emulator does for
# memory nodes): a captured step that reads memory it never wrote gives NaN.
export CASCADE_POISON_GRAPH_MEMORY=1
# Every kernel a test launches is logged (once per process), so that the end of a full run can
# check that no kernel in kernels/ goes untested. A run narrowed by arguments skips the check.
launch_log="$PWD/target/emu/launched.txt"
rm -f "$launch_log"
[ $# -eq 0 ] && export CASCADE_EMU_LAUNCH_LOG="$launch_log"
cargo test --release --features cuda -- --ignored "$@"
# The tiled depthwise kernel wherever it can run (by default only on large images): the kernel
# test and the tiny models.
CASCADE_DW_TILE=force cargo test --release --features cuda --test kernels -- --ignored depthwise "$@"
CASCADE_DW_TILE=force cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
# The rolling depthwise kernel (opt-in) likewise, in short blocks so that its ring of rows wraps.
CASCADE_DW_TILE=roll-force cargo test --release --features cuda --test kernels -- --ignored depthwise "$@"
CASCADE_DW_TILE=roll-force cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
# The wide-strip depthwise kernels wherever the parked-weight kernels run (by default only where
# they save a wave, Stage C's images): the kernel test and the tiny models.
CASCADE_DW_STRIPS=wide cargo test --release --features cuda --test kernels -- --ignored depthwise "$@"
CASCADE_DW_STRIPS=wide cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
# The skinny GEMM (opt-in, compute capability 9.0, which the emulator reports) on the linear
# shapes it takes, and the tiny models, most of whose products it then computes.
CASCADE_GEMM_SKINNY=1 cargo test --release --features cuda --test kernels -- --ignored linear_gelu "$@"
CASCADE_GEMM_SKINNY=1 cargo test --release --features cuda --test linear -- --ignored gpu_ "$@"
CASCADE_GEMM_SKINNY=1 cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
# The warp-specialised GEMM as an MLP's first layer and its GELU (opt-in) on every product it can
# take (=force; by default only from 4096 rows, Stage A's): the linear kernel test and the tiny
# models, whose VQGAN and CLIP MLPs then take it.
CASCADE_GEMM_WS_GELU=force cargo test --release --features cuda --test kernels -- --ignored linear_gelu_kernel "$@"
CASCADE_GEMM_WS_GELU=force cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
# The wgmma attention's lean softmax (opt-in until measured; its kernel test runs it in the
# first run above): the tiny models with it in every wgmma attention.
CASCADE_ATTENTION_SOFTMAX=lean cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
# The wgmma attention's K and V tiles copied by TMA (CASCADE_ATTENTION_COPY=tma, opt-in until
# measured): the attention kernel tests (the explicit wgmma kernels then take the copies; the
# TMA test compares them with cp.async's) and the tiny models.
CASCADE_ATTENTION_COPY=tma cargo test --release --features cuda --test kernels -- --ignored attention "$@"
CASCADE_ATTENTION_COPY=tma cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
# The device's defaults of the attention options (the stages bench's in-process A/B) with every
# option's kernels checked at start-up, so that each default has something to decide.
CASCADE_ATTENTION_COPY=tma CASCADE_ATTENTION_SOFTMAX=lean cargo test --release --features cuda --test kernels -- --ignored attention_device_defaults "$@"
# The same copies shared by clusters of two blocks, and of three or four where those fit a
# head's query blocks better (CASCADE_ATTENTION_COPY=pair, or cluster for all three; opt-in until
# measured, checked only where asked for): the attention kernel tests (the TMA test runs pairs
# and the wider clusters beside the others, with blocks past the queries where their count asks
# for them: trios on three and five query blocks, quads on four with a second key source), the
# device's defaults, the tiny models and the tiny pipeline (pairs: their heads have one or two
# query blocks).
CASCADE_ATTENTION_COPY=cluster CASCADE_ATTENTION_SOFTMAX=lean cargo test --release --features cuda --test kernels -- --ignored attention "$@"
CASCADE_ATTENTION_COPY=pair cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
CASCADE_ATTENTION_COPY=pair cargo test --release --features cuda --test pipeline -- --ignored "$@"
# The wgmma attention's last tile of keys kept 64 wide (CASCADE_ATTENTION_TAIL=full; narrowed by
# default): the tiny models with the full tiles.
CASCADE_ATTENTION_TAIL=full cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
# Kernel choice by timing (CASCADE_KERNEL_TUNE=1): every kernel awaiting measurement is checked
# at start-up and timed against the default per shape (on the emulator the defaults win almost
# everywhere; what is checked is that the timing, its nested captures and the choices leave the
# results within their bounds and graphs equal to direct launches): the tiny models and the
# tiny pipeline (the models with the tiled depthwise kernel wherever it runs, so that the rolling
# one is timed against it: the tiny images are too small for the default to tile them).
CASCADE_KERNEL_TUNE=1 CASCADE_DW_TILE=force cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
CASCADE_KERNEL_TUNE=1 cargo test --release --features cuda --test pipeline -- --ignored "$@"
# ... and GRN's kernel test, whose odd shapes are large enough for its chunk sizes to differ.
CASCADE_KERNEL_TUNE=1 cargo test --release --features cuda --test kernels -- --ignored grn "$@"
# The 32-query mma attention kernel for every shape (by default only where its grid fills one
# wave, which the tiny models' shapes never do): the tiny models, whose attention then takes it.
CASCADE_ATTENTION=mma32 cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
# The mma.sync attention path that cards other than compute capability 9.0 take (the emulator
# reports 9.0, so by default the wgmma kernels run): the tiny models and the tiny pipeline.
CASCADE_ATTENTION_WGMMA=0 cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
CASCADE_ATTENTION_WGMMA=0 cargo test --release --features cuda --test pipeline -- --ignored "$@"
# The fused fc1 + GRN-statistics wgmma GEMM, warp-specialised (TMA copies onto transaction
# barriers; opt-in until measured): the tiny models and the tiny pipeline against diffusers'
# seeded images, their ResBlocks taking it wherever the positions per sample are a multiple of
# 64. The kernel test above already runs it beside the others.
CASCADE_GEMM_WGMMA=ws cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
CASCADE_GEMM_WGMMA=ws cargo test --release --features cuda --test pipeline -- --ignored "$@"
# Its stream-K version (opt-in until measured) likewise, then in the tiny pipeline with the
# stream-K fc2 after it (no pass over u at all). The kernel test above runs it too, on a few
# blocks as well.
CASCADE_GEMM_WGMMA=sk cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
CASCADE_GEMM_WGMMA=sk CASCADE_GEMM_WS_FC2=1 cargo test --release --features cuda --test pipeline -- --ignored "$@"
# Its version on 256-row tiles (four consumer warpgroups; opt-in until measured) likewise: the
# tiny models, whose ResBlocks' row counts leave the second half of a tile empty or partial.
CASCADE_GEMM_WGMMA=ws_tall cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
# The same tiles in clusters of two blocks sharing x's copy by TMA multicast (opt-in until
# measured) likewise: the tiny models' odd numbers of column tiles leave the pair's second
# block past N.
CASCADE_GEMM_WGMMA=ws_pair cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
# The ResBlocks' fc2 with GRN's factor on its input (the stream-K kernel, opt-in until measured;
# its kernel test runs in the first run above): the tiny models with GRN's sums pass before it,
# then the tiny pipeline with the warp-specialised fc1 + GRN GEMM before it (their MLPs then
# make no pass over u at all).
CASCADE_GEMM_WS_FC2=1 cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
CASCADE_GEMM_WGMMA=ws CASCADE_GEMM_WS_FC2=1 cargo test --release --features cuda --test pipeline -- --ignored "$@"
# The same kernel without a factor for residual products with few output tiles (opt-in): the
# linear tests (their bf16 products added to bf16 and f32 outputs take it) and the tiny models.
CASCADE_GEMM_SK=1 cargo test --release --features cuda --test linear -- --ignored gpu_ "$@"
CASCADE_GEMM_SK=1 cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
# The device's GEMM defaults (the stages bench's in-process A/B) with every GEMM kernel they
# decide checked at start-up.
CASCADE_GEMM_WGMMA=ws CASCADE_GEMM_WS_FC2=1 CASCADE_GEMM_SK=1 cargo test --release --features cuda --test linear -- --ignored gpu_gemm_defaults "$@"
# The split-key wgmma attention (opt-in until measured) in every unmasked attention, two ranges
# each (=2 forces the split: the planned one never splits the tiny models' small grids): the
# tiny models and the tiny pipeline against diffusers' seeded images.
CASCADE_ATTENTION_SPLIT=2 cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
CASCADE_ATTENTION_SPLIT=2 cargo test --release --features cuda --test pipeline -- --ignored "$@"
# The two-warpgroup wgmma attention kernel (opt-in until measured) for every attention, CLIP's
# masked ones included: the tiny models, then the tiny pipeline with its unmasked attention's
# keys split in two as well.
CASCADE_ATTENTION=wgmma2 cargo test --release --features cuda --test models -- --ignored tiny_components "$@"
CASCADE_ATTENTION=wgmma2 CASCADE_ATTENTION_SPLIT=2 cargo test --release --features cuda --test pipeline -- --ignored "$@"
# Every kernel must be launched by some test above, where a CPU reference checks it (the
# device's start-up self-checks, which run in every process, count as launches too).
if [ $# -eq 0 ]; then
    untested=$(LC_ALL=C sort -u "$launch_log" | LC_ALL=C comm -23 target/emu/kernels.txt -)
    if [ -n "$untested" ]; then
        echo "error: no emulated test launches these kernels (add a test case that reaches each):" >&2
        echo "$untested" >&2
        exit 1
    fi
    echo "every kernel in kernels/ ($(wc -l < target/emu/kernels.txt)) was launched by a test"
fi
unset CASCADE_EMU_LAUNCH_LOG
# The per-op bench's code paths, each odd-shaped case once (its numbers mean nothing here), the
# opt-in split-key and two-warpgroup attention kernels' rows included.
CASCADE_ATTENTION_SPLIT=1 CASCADE_ATTENTION=wgmma2 CASCADE_BENCH_ONCE=1 cargo bench --features cuda --bench ops
