#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, as gpu-bundle/run.sh (see
# scripts/gpu-bundle.sh). Two phases, so that one call of the lease does all GPU work:
#
#  1. correctness (processes side by side; timings here mean nothing): the reliability tests
#     alone first (one of them takes all but 1 GiB of the card), then every other test binary
#     with --include-ignored (so the GPU tests run), full-size fidelity against diffusers and
#     compute-sanitizer, all at once;
#  2. timing (one process on the card at a time): the ops and stages benches in their short
#     mode, PyTorch's SDPA and the card's ceilings, diffusers side by side, the Nsight Compute
#     profile, and the stages bench with cuBLASLt's untuned choice.
#
# DRY=1 prints what each step would run (its CASCADE_* environment and command) and runs none.
# Switches (1 runs, 0 skips): TESTS=1 VARIANT_TESTS=1 BENCH=1 FIDELITY=0 FIDELITY_WGMMA=0 FIDELITY_TUNE=0 FIDELITY_ATTENTION=0 SANITIZE=0 SIDE_BY_SIDE=0
# PROFILE=0 GEMM_TUNE_AB=0 (FIDELITY_WGMMA=ws or ws_deep: with a warp-specialised version of the fused GEMM); ALL=1 turns every one on (STAGE_VARIANTS, below, lists A/B environments). DEADLINE=seconds bounds the whole run: each step is
# cut to what is left and a step that would start too late is reported as skipped, so the
# summary is always printed. Phase 2's processes share one tuning file (CASCADE_TUNING_FILE),
# seeded from tools/gpu/tuning.txt unless TUNING_SEED=0. TEST_TIMEOUT / BENCH_TIMEOUT / SIDE_BY_SIDE_TIMEOUT cap one step (300 s);
# CASCADE_BENCH_STAGES narrows the stage bench; SANITIZE_STAGES picks the stages run once under
# the sanitizer; CASCADE_SHAPES=odd,clip narrows the kernel tests (and the stages bench too: leave
# it unset when the stage timings matter); PROFILE_STAGES picks the
# profiled stages. Logs go to $LOGS (default /tmp/cascade-gpu-logs) and, packed, to
# $OUT/cascade-gpu-logs.tar.gz. Prints the GPU's name and a summary table last; exits non-zero
# on any failure.
set -uo pipefail
start_ts=$(date +%s)
deadline=$((start_ts + ${DEADLINE:-100000}))
# Phase 1 ends by PHASE1_SECONDS after the start (when a DEADLINE is set: the timings need the rest).
# The kernel tests need about 120 s on an H200 once everything else runs beside them (135 cut them
# in the ninth session): give phase 1 at least 170 s when TESTS=1.
phase_end=$deadline
[ -n "${DEADLINE:-}" ] && phase_end=$((start_ts + ${PHASE1_SECONDS:-270}))
packed=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
logs=${LOGS:-/tmp/cascade-gpu-logs}
rm -rf "$logs"
mkdir -p "$logs"
on() { [ "${ALL:-0}" = 1 ] || [ "${!1:-$2}" = 1 ]; }
# Unpack the xz-compressed executables (Python's lzma: no xz binary needed).
bundle=${BUNDLE_DIR:-/tmp/cascade-bundle}
mkdir -p "$bundle/tests" "$bundle/benches" "$bundle/bin"
python3 - "$packed" "$bundle" <<'PY'
import lzma, os, pathlib, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for f in src.glob("*/*.xz"):
    out = dst / f.parent.name / f.stem
    out.write_bytes(lzma.decompress(f.read_bytes()))
    os.chmod(out, 0o755)
PY
export CASCADE_ROOT=${CASCADE_ROOT:-$(pwd)}
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
echo "GPU: ${gpu:-none found}"
# The engine dlopens libcuda and libcublasLt by bare name. Where cuBLASLt is not on the loader
# path, take the first copy found in a CUDA install or PyTorch's wheels.
if ! ldconfig -p 2> /dev/null | grep -q 'libcublasLt\.so'; then
    lt=$(ls /usr/local/cuda*/lib64/libcublasLt.so* /usr/local/cuda*/targets/*/lib/libcublasLt.so* \
        /opt/*/.venv/lib/python3*/site-packages/nvidia/cu13/lib/libcublasLt.so* \
        /opt/*/.venv/lib/python3*/site-packages/nvidia/cublas/lib/libcublasLt.so* 2> /dev/null | head -n 1)
    [ -n "$lt" ] && export LD_LIBRARY_PATH="$(dirname "$lt")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "cuBLASLt: ${lt:-not found}"
fi

# step NAME CAP CMD...: runs CMD with its output in $logs/NAME.log, for at most CAP seconds and
# never past the deadline (less 20 s for the summary); its exit status goes to $logs/NAME.rc
# (124: cut off, 125: skipped, too late to start).
step() {
    local name=$1 cap=$2
    shift 2
    local end=$deadline
    [ "$phase_end" -lt "$end" ] && end=$phase_end
    local left=$((end - $(date +%s) - 20))
    [ "$left" -lt "$cap" ] && cap=$left
    if [ "$cap" -lt 15 ]; then
        echo 125 > "$logs/$name.rc"
        echo "skipped: the deadline was too near" > "$logs/$name.log"
        return 125
    fi
    local t0=$(date +%s)
    echo "[$((t0 - start_ts))s] $name: start (cap ${cap}s)"
    if [ "${DRY:-0}" = 1 ]; then
        # DRY=1: what each step would run (its CASCADE_* environment and command), nothing run.
        echo "    $(env | grep -E '^CASCADE_' | grep -v '^CASCADE_ROOT=' | sort | tr '\n' ' ')$*"
        echo 0 > "$logs/$name.rc"
        echo 0 > "$logs/$name.secs"
        : > "$logs/$name.log"
        return 0
    fi
    timeout -k 10 "$cap" "$@" > "$logs/$name.log" 2>&1
    local rc=$?
    echo $rc > "$logs/$name.rc"
    echo $(($(date +%s) - t0)) > "$logs/$name.secs"
    echo "[$(($(date +%s) - start_ts))s] $name: rc $rc"
    return $rc
}
# vetting_steps ENV: the phase-1 test steps (without "test-") that vet the opt-in kernels ENV
# turns on.
vetting_steps() {
    local t=
    # Every switch in ENV adds its step (a variant may combine several).
    case $1 in
        # Kernel choice by timing may take any kernel awaiting measurement.
        *CASCADE_KERNEL_TUNE=1* | *CASCADE_KERNEL_TUNE=log*) t="kernels kernels-gemmwg kernels-split kernels-skinny kernels-tma pipeline-tuned" ;;
    esac
    case $1 in *CASCADE_ATTENTION_SOFTMAX=lean*) t="$t kernels" ;; esac
    case $1 in *CASCADE_ATTENTION_COPY=tma*) t="$t kernels-tma" ;; esac
    case $1 in *CASCADE_ATTENTION_COPY=pair* | *CASCADE_ATTENTION_COPY=cluster*) t="$t kernels-tmacluster" ;; esac
    case $1 in *CASCADE_GEMM_WGMMA=* | *CASCADE_GEMM_WS_GELU=* | *CASCADE_GEMM_WS_FC2=* | *CASCADE_GEMM_SK=*) t="$t kernels-gemmwg" ;; esac
    case $1 in *CASCADE_GEMM_WGMMA=ws_pair*) t="$t kernels-pair" ;; esac
    case $1 in *CASCADE_ATTENTION_SPLIT=* | *CASCADE_ATTENTION=wgmma2*) t="$t kernels-split" ;; esac
    case $1 in *CASCADE_DW_TILE=roll*) t="$t kernels-dwroll" ;; esac
    case $1 in *CASCADE_GEMM_SKINNY=*) t="$t kernels-skinny" ;; esac
    case $1 in *CASCADE_DW_STRIPS=*) t="$t kernels-dwstrips" ;; esac
    case $1 in *CASCADE_PDL=*) t="$t pipeline-pdl" ;; esac
    echo "$t"
}
# vetting_test ENV: the phase-1 test step that vets the opt-in kernel ENV turns on, printed only
# when that step ran and did not pass (a fault, wrong results, or a hang cut off at its cap).
# Phase 2 skips such a variant: its timings would mean nothing, and a kernel that hangs would
# hold the card until the step's cap, taking the rest of the call with it.
vetting_test() {
    local one
    for one in $(vetting_steps "$1"); do
        if [ -f "$logs/test-$one.rc" ] && [ "$(cat "$logs/test-$one.rc")" != 0 ]; then
            echo "test-$one"
            return
        fi
    done
}
# vetted NAME ENV: false (with NAME recorded as skipped) when vetting_test ENV names a failure.
vetted() {
    local bad
    bad=$(vetting_test "$2")
    [ -z "$bad" ] && return 0
    echo 125 > "$logs/$1.rc"
    echo "skipped: $bad did not pass" > "$logs/$1.log"
    echo "[$(($(date +%s) - start_ts))s] $1: skipped ($bad did not pass)"
    return 1
}
row() { # NAME [DETAIL]: one summary line from the step's files
    local name=$1 detail=${2:-} rc secs
    rc=$(cat "$logs/$name.rc" 2>/dev/null || echo "?")
    secs=$(cat "$logs/$name.secs" 2>/dev/null || echo "-")
    case $rc in 0) status=ok ;; 124) status=TIMEOUT ;; 125) status=skipped ;; *) status=FAIL ;; esac
    printf '%-30s %-7s %5ss  %s\n' "$name" "$status" "$secs" "$detail"
}

# VARIANT_TESTS=needed runs only the opt-in kernels' test steps that vet this call's timing
# variants (STAGE_VARIANTS, the ops bench's OPS_VARIANTS when BENCHES has ops, FIDELITY_WGMMA,
# FIDELITY_TUNE): fewer processes beside the ones that matter, for a call that measures a few
# variants whose kernels are the only ones changed since the others passed on a GPU.
needed=" "
if [ "${VARIANT_TESTS:-1}" = needed ]; then
    envs=(${STAGE_VARIANTS:-})
    [ "${FIDELITY_WGMMA:-0}" != 0 ] && envs+=("CASCADE_GEMM_WGMMA=$FIDELITY_WGMMA")
    on FIDELITY_TUNE 0 && envs+=(CASCADE_KERNEL_TUNE=1)
    if [[ " ${BENCHES:-ops stages} " == *" ops "* ]]; then
        for v in ${OPS_VARIANTS:-gemmwg pair split wgmma2 tma tmacluster dw dwroll skinny}; do
            case $v in
                gemmwg) envs+=(CASCADE_GEMM_WGMMA=ws) ;;
                pair) envs+=(CASCADE_GEMM_WGMMA=ws_pair) ;;
                split | wgmma2) envs+=(CASCADE_ATTENTION_SPLIT=1) ;;
                tma) envs+=(CASCADE_ATTENTION_COPY=tma) ;;
                tmacluster) envs+=(CASCADE_ATTENTION_COPY=cluster) ;;
                dw) envs+=(CASCADE_DW_STRIPS=narrow) ;;
                dwroll) envs+=(CASCADE_DW_TILE=roll) ;;
                skinny) envs+=(CASCADE_GEMM_SKINNY=1) ;;
            esac
        done
    fi
    for e in ${envs[@]+"${envs[@]}"}; do needed="$needed$(vetting_steps "$e") "; done
    echo "variant test steps needed:" $(printf '%s\n' $needed | sort -u)
fi
# variant_test NAME: whether the opt-in kernels' test step test-NAME runs.
variant_test() { [ "${VARIANT_TESTS:-1}" = 1 ] || [[ $needed == *" $1 "* ]]; }

# ---- phase 1: correctness ----
# Every fidelity run and the side by side need diffusers from the bundle's wheels.
if on FIDELITY 0 || on SIDE_BY_SIDE 0 || on FIDELITY_TUNE 0 || on FIDELITY_ATTENTION 0 || [ "${FIDELITY_WGMMA:-0}" != 0 ]; then
    pydeps=/tmp/cascade-pydeps
    python3 -m pip install --quiet --no-index --no-deps --target "$pydeps" "$packed"/wheels/*.whl > "$logs/pip.log" 2>&1
    export PYTHONPATH="$pydeps${PYTHONPATH:+:$PYTHONPATH}"
fi
tests=()
if on TESTS 1; then
    for t in "$bundle"/tests/*; do tests+=("$(basename "$t")"); done
    # Graph buffers poisoned at each replay: a step reading memory it never wrote shows NaN.
    export CASCADE_POISON_GRAPH_MEMORY=1
    [ -x "$bundle/tests/reliability" ] && step test-reliability "${TEST_TIMEOUT:-300}" "$bundle/tests/reliability" --include-ignored --nocapture
fi
pids=()
for name in "${tests[@]}"; do
    [ "$name" = reliability ] && continue
    step "test-$name" "${TEST_TIMEOUT:-300}" "$bundle/tests/$name" --include-ignored --nocapture &
    pids+=($!)
done
# VARIANT_TESTS=0 skips the opt-in kernels' test steps below (the pipeline without the wgmma
# attention kernels still runs): for a short call after they have passed on the card; =needed
# runs only those this call's variants need (above).
# variant_step VET NAME CMD...: the opt-in kernels' test step test-NAME (CMD, in the background,
# in the caller's environment), where variant_test VET says it runs.
variant_step() {
    local vet=$1 name=$2
    shift 2
    variant_test "$vet" || return 0
    tests+=("$name")
    step "test-$name" "${TEST_TIMEOUT:-300}" "$@" &
    pids+=($!)
}
kernels_test="$bundle/tests/kernels"
if on TESTS 1 && [ "${VARIANT_TESTS:-1}" != 0 ] && [ -x "$kernels_test" ]; then
    # The tiled depthwise kernel wherever it can run (CASCADE_DW_TILE=force), on every shape of
    # the depthwise test (the default takes it only for large images); then the rolling one
    # (opt-in: CASCADE_DW_TILE=roll) in short blocks wherever it can run, and as its plan cuts
    # Stage A's real launches (one wave of long blocks), in one process after the other.
    CASCADE_DW_TILE=force variant_step kernels-dwtile kernels-dwtile "$kernels_test" --include-ignored --nocapture depthwise
    variant_step kernels-dwroll kernels-dwroll bash -c "CASCADE_DW_TILE=roll-force '$kernels_test' --include-ignored --nocapture depthwise && CASCADE_DW_TILE=roll CASCADE_SHAPES=stage_a '$kernels_test' --include-ignored --nocapture depthwise"
    # The wide-strip depthwise kernels wherever the parked-weight ones run (CASCADE_DW_STRIPS=wide;
    # by default they run only where they save a wave, Stage C's shape).
    CASCADE_DW_STRIPS=wide variant_step kernels-dwstrips kernels-dwstrips "$kernels_test" --include-ignored --nocapture depthwise
    # The fused fc1 + GRN-statistics wgmma GEMM (opt-in: CASCADE_GEMM_WGMMA=ws), all five
    # versions (the warp-specialised TMA ones, the stream-K one, also on a few blocks, and the
    # one on 256-row tiles included), beside the separate path on the odd
    # shapes and every real ResBlock's fc1, likewise alone; the warp-specialised one as an MLP's
    # first layer and its GELU alone (opt-in: CASCADE_GEMM_WS_GELU=1) on every linear shape; the
    # stream-K fc2 with GRN's factor on its input (opt-in: CASCADE_GEMM_WS_FC2=1) on every real
    # ResBlock's fc2 and the odd shapes (also without a factor: CASCADE_GEMM_SK=1, residual
    # products with few tiles); then the linear tests and the pipeline tests with all of them on.
    variant_step kernels-gemmwg kernels-gemmwg bash -c "export CASCADE_GEMM_WGMMA=1 CASCADE_GEMM_WS_GELU=1 CASCADE_GEMM_WS_FC2=1 CASCADE_GEMM_SK=1; '$kernels_test' --include-ignored --nocapture linear_gelu linear_scaled && '$bundle/tests/linear' --include-ignored --nocapture gpu_ && CASCADE_GEMM_WGMMA=ws '$bundle/tests/pipeline' --include-ignored --nocapture"
    # The fused GEMM's paired version (clusters of two blocks sharing x's copy by TMA multicast;
    # opt-in: CASCADE_GEMM_WGMMA=ws_pair, the only switch that checks or runs it until it has run
    # on a GPU) alone on the odd shapes and every real ResBlock's fc1, then the pipeline tests
    # with it: a step of its own, so that a cluster kernel that hangs takes only its own
    # variants with it, and a light one beside test-kernels-gemmwg.
    # Last, how many pairs the card holds at once (its GPCs may leave SMs out), for the summary.
    variant_step kernels-pair kernels-pair bash -c "export CASCADE_GEMM_WGMMA=ws_pair; '$kernels_test' --include-ignored --nocapture linear_gelu_grn && '$bundle/tests/pipeline' --include-ignored --nocapture && '$bundle/bin/cascade' device | grep 'pairs resident'"
    # The skinny GEMM (opt-in: CASCADE_GEMM_SKINNY=1) on every linear shape it takes (at most 160
    # rows: CLIP's, Stage C's stacked mappers, the odd ones; the others, whose CPU references
    # were most of this step's time, run the default kernels the other steps test), with its GELU
    # and residual epilogues, then the pipeline tests, whose tiny models send most of their
    # products through it.
    variant_step kernels-skinny kernels-skinny bash -c "export CASCADE_GEMM_SKINNY=1; CASCADE_SHAPES=clip,mappers,odd '$kernels_test' --include-ignored --nocapture linear_gelu && CASCADE_SHAPES=clip,mappers,odd '$bundle/tests/linear' --include-ignored --nocapture gpu_ && '$bundle/tests/pipeline' --include-ignored --nocapture"
    # The split-key and the two-warpgroup wgmma attention kernels (opt-in:
    # CASCADE_ATTENTION_SPLIT=1, CASCADE_ATTENTION=wgmma2) on every attention shape, then the
    # pipeline tests with every unmasked attention split in two (CASCADE_ATTENTION_SPLIT=2: the
    # tiny models' grids are too small for the planned split) and with every attention on the
    # two-warpgroup kernel, its keys split in two where unmasked.
    CASCADE_ATTENTION_SPLIT=1 CASCADE_ATTENTION=wgmma2 variant_step kernels-split kernels-split "$kernels_test" --include-ignored --nocapture attention
    if [ -x "$bundle/tests/pipeline" ]; then
        CASCADE_ATTENTION_SPLIT=2 variant_step kernels-split pipeline-split "$bundle/tests/pipeline" --include-ignored --nocapture
        CASCADE_ATTENTION=wgmma2 CASCADE_ATTENTION_SPLIT=2 variant_step kernels-split pipeline-wgmma2 "$bundle/tests/pipeline" --include-ignored --nocapture
    fi
    # The wgmma attention kernels whose K and V tiles TMA copies (opt-in:
    # CASCADE_ATTENTION_COPY=tma), the split-key ones included (CASCADE_ATTENTION_SPLIT=1),
    # against the cp.async ones and the CPU, then on every attention shape (the explicit wgmma
    # kernels take the copies), then the pipeline tests with them.
    variant_step kernels-tma kernels-tma bash -c "export CASCADE_ATTENTION_COPY=tma CASCADE_ATTENTION_SPLIT=1; '$kernels_test' --include-ignored --nocapture attention && '$bundle/tests/pipeline' --include-ignored --nocapture"
    # The same copies shared by clusters of two blocks, and of three or four where those fit a
    # head's query blocks better (opt-in: CASCADE_ATTENTION_COPY=pair, or cluster for all three,
    # the only switches that check or run them until they have run on a GPU): the attention tests
    # (the TMA test runs pairs and the wider clusters beside the unshared copies and cp.async; the
    # real shapes' explicit wgmma kernels take them: trios on Stage C, quads on Stage B's levels
    # 2 and 3), then the pipeline tests, then how many clusters of each the card holds at once.
    # A step of its own: a cluster kernel that hangs takes only its own variants with it.
    variant_step kernels-tmacluster kernels-tmacluster bash -c "export CASCADE_ATTENTION_COPY=cluster; '$kernels_test' --include-ignored --nocapture attention && '$bundle/tests/pipeline' --include-ignored --nocapture && '$bundle/bin/cascade' device | grep 'clusters resident'"
fi
# The pipeline tests (graphs, every stage, against diffusers' seeded images) again in two
# configurations.
if on TESTS 1 && [ -x "$bundle/tests/pipeline" ]; then
    # Programmatic dependent launches (opt-in: CASCADE_PDL=1), every kernel launched that way.
    CASCADE_PDL=1 variant_step pipeline-pdl pipeline-pdl "$bundle/tests/pipeline" --include-ignored --nocapture
    # Kernel choice by timing (opt-in: CASCADE_KERNEL_TUNE=1): every kernel awaiting
    # measurement checked at start-up and timed against the default per shape, the tiny
    # pipeline's choices printed (log).
    tests+=(pipeline-tuned)
    CASCADE_KERNEL_TUNE=log step test-pipeline-tuned "${TEST_TIMEOUT:-300}" "$bundle/tests/pipeline" --include-ignored --nocapture &
    pids+=($!)
    # On compute capability 9.0 the wgmma attention kernels run by default; the pipeline tests
    # again without them keep the mma.sync path that other cards take checked on this one.
    tests+=(pipeline-nowgmma)
    CASCADE_ATTENTION_WGMMA=0 step test-pipeline-nowgmma "${TEST_TIMEOUT:-300}" "$bundle/tests/pipeline" --include-ignored --nocapture &
    pids+=($!)
fi
if on FIDELITY 0; then
    step fidelity "${FIDELITY_TIMEOUT:-420}" python3 tools/gpu/fidelity.py --engine "$bundle/bin/cascade" ${FIDELITY_ARGS:-} &
    pids+=($!)
fi
# FIDELITY_WGMMA=1: full-size fidelity again with the fused fc1 + GRN wgmma GEMM (opt-in:
# CASCADE_GEMM_WGMMA=1, its warp-specialised version) in every stage, beside the first;
# FIDELITY_WGMMA=ws (or ws_deep, ws_tall, ws_pair) with that version, together with the
# other TMA GEMMs: Stage A's fc1 and GELU (CASCADE_GEMM_WS_GELU=1) and the ResBlocks' fc2 with
# GRN's factor on its input (CASCADE_GEMM_WS_FC2=1).
fidelity_runs=()
if on FIDELITY_WGMMA 0 || [[ ${FIDELITY_WGMMA:-0} == ws* ]]; then
    if [[ ${FIDELITY_WGMMA:-0} == ws* ]]; then
        fidelity_runs+=("fidelity-wgmma-$FIDELITY_WGMMA")
        CASCADE_GEMM_WGMMA=$FIDELITY_WGMMA CASCADE_GEMM_WS_GELU=1 CASCADE_GEMM_WS_FC2=1 step "fidelity-wgmma-$FIDELITY_WGMMA" "${FIDELITY_TIMEOUT:-420}" python3 tools/gpu/fidelity.py --engine "$bundle/bin/cascade" ${FIDELITY_ARGS:-} &
    else
        fidelity_runs+=(fidelity-wgmma)
        CASCADE_GEMM_WGMMA=1 step fidelity-wgmma "${FIDELITY_TIMEOUT:-420}" python3 tools/gpu/fidelity.py --engine "$bundle/bin/cascade" ${FIDELITY_ARGS:-} &
    fi
    pids+=($!)
fi
# FIDELITY_TUNE=1: likewise with kernel choice by timing (CASCADE_KERNEL_TUNE=1): the kernels
# awaiting measurement wherever they timed faster, as the engine would ship them tuned.
if on FIDELITY_TUNE 0; then
    fidelity_runs+=(fidelity-tuned)
    CASCADE_KERNEL_TUNE=1 step fidelity-tuned "${FIDELITY_TIMEOUT:-420}" python3 tools/gpu/fidelity.py --engine "$bundle/bin/cascade" ${FIDELITY_ARGS:-} &
    pids+=($!)
fi
# FIDELITY_ATTENTION=1: likewise with the split-key attention where it is planned (opt-in:
# CASCADE_ATTENTION_SPLIT=1; Stage B's levels 2 and 3 on an H100 or H200), and with the
# two-warpgroup wgmma kernel for every attention (CASCADE_ATTENTION=wgmma2), two more processes.
if on FIDELITY_ATTENTION 0; then
    fidelity_runs+=(fidelity-split fidelity-wgmma2)
    CASCADE_ATTENTION_SPLIT=1 step fidelity-split "${FIDELITY_TIMEOUT:-420}" python3 tools/gpu/fidelity.py --engine "$bundle/bin/cascade" ${FIDELITY_ARGS:-} &
    pids+=($!)
    CASCADE_ATTENTION=wgmma2 step fidelity-wgmma2 "${FIDELITY_TIMEOUT:-420}" python3 tools/gpu/fidelity.py --engine "$bundle/bin/cascade" ${FIDELITY_ARGS:-} &
    pids+=($!)
fi
sanitize_runs=()
if on SANITIZE 0; then
    if ! command -v compute-sanitizer > /dev/null; then
        echo 1 > "$logs/sanitize.rc"
        echo "compute-sanitizer is not on PATH" > "$logs/sanitize.log"
        sanitize_runs+=(sanitize)
    else
        # The kernel tests on the small odd shapes (the sanitizer is slow on the real sizes), then
        # one graph-replayed step of each of SANITIZE_STAGES (the stages bench, each case once,
        # cuBLASLt's heuristic choice: no tuning under the sanitizer). Tools in sequence, the
        # kernels and the stages side by side. initcheck reports every read of a buffer that a
        # cuBLASLt kernel wrote on this card (seen on an H200: it does not see those stores), so it
        # runs on the kernel tests without the one that reads GEMM outputs, and not on the stages
        # (docs/reliability.md).
        (for tool in ${SANITIZE_KERNEL_TOOLS:-memcheck initcheck racecheck}; do
            skip=()
            [ "$tool" = initcheck ] && skip=(--skip strided_and_transposed_convolutions)
            CASCADE_SHAPES=${SANITIZE_SHAPES:-odd} step "sanitize-$tool-kernels" "${SANITIZE_TIMEOUT:-240}" \
                compute-sanitizer --tool "$tool" --error-exitcode 9 "$bundle/tests/kernels" --include-ignored --test-threads=4 "${skip[@]}"
        done
        # The opt-in kernels, each in a process of its own: the fused fc1 + GRN GEMM (shared
        # memory reused by its epilogue, the last blocks' statistics) ...
        for tool in memcheck racecheck; do
            CASCADE_GEMM_WGMMA=1 CASCADE_GEMM_WS_GELU=1 CASCADE_GEMM_WS_FC2=1 CASCADE_SHAPES=${SANITIZE_SHAPES:-odd} step "sanitize-$tool-gemmwg" "${SANITIZE_TIMEOUT:-240}" \
                compute-sanitizer --tool "$tool" --error-exitcode 9 "$bundle/tests/kernels" --include-ignored linear_gelu linear_scaled
        done
        # Then the ones that ran clean before: the tiled depthwise kernel (shared memory reused
        # between its phases) under memcheck and racecheck, forced onto the small shapes.
        for tool in memcheck racecheck; do
            CASCADE_DW_TILE=force CASCADE_SHAPES=${SANITIZE_SHAPES:-odd} step "sanitize-$tool-dwtile" "${SANITIZE_TIMEOUT:-240}" \
                compute-sanitizer --tool "$tool" --error-exitcode 9 "$bundle/tests/kernels" --include-ignored depthwise
        done
        # The skinny GEMM (its ranges' sums, the counters, the last block's epilogue).
        for tool in memcheck racecheck; do
            CASCADE_GEMM_SKINNY=1 CASCADE_SHAPES=${SANITIZE_SHAPES:-odd} step "sanitize-$tool-skinny" "${SANITIZE_TIMEOUT:-240}" \
                compute-sanitizer --tool "$tool" --error-exitcode 9 "$bundle/tests/linear" --include-ignored gpu_linear_
        done
        # The rolling depthwise kernel (its ring of rows refilled by cp.async while the last step's
        # rows are read) likewise, in short blocks so that the ring wraps around.
        for tool in memcheck racecheck; do
            CASCADE_DW_TILE=roll-force CASCADE_SHAPES=${SANITIZE_SHAPES:-odd} step "sanitize-$tool-dwroll" "${SANITIZE_TIMEOUT:-240}" \
                compute-sanitizer --tool "$tool" --error-exitcode 9 "$bundle/tests/kernels" --include-ignored depthwise
        done
        # The attention kernels (the 32-query ones with every block size, and the wgmma ones on
        # compute capability 9.0, the opt-in split-key and two-warpgroup ones included) under
        # racecheck, and the opt-in ones (the split's scratch and counters) under memcheck.
        CASCADE_ATTENTION_SPLIT=1 CASCADE_ATTENTION=wgmma2 CASCADE_SHAPES=${SANITIZE_SHAPES:-odd} step sanitize-racecheck-attention "${SANITIZE_TIMEOUT:-240}" \
            compute-sanitizer --tool racecheck --error-exitcode 9 "$bundle/tests/kernels" --include-ignored attention
        CASCADE_ATTENTION_SPLIT=1 CASCADE_ATTENTION=wgmma2 CASCADE_SHAPES=${SANITIZE_SHAPES:-odd} step sanitize-memcheck-split "${SANITIZE_TIMEOUT:-240}" \
            compute-sanitizer --tool memcheck --error-exitcode 9 "$bundle/tests/kernels" --include-ignored attention) &
        pids+=($!)
        sanitize_runs+=(sanitize-memcheck-gemmwg sanitize-racecheck-gemmwg
            sanitize-memcheck-dwtile sanitize-racecheck-dwtile sanitize-memcheck-dwroll sanitize-racecheck-dwroll sanitize-memcheck-skinny sanitize-racecheck-skinny sanitize-racecheck-attention sanitize-memcheck-split)
        # racecheck over the stage steps is not run by default: on an H200 it stops inside
        # cuBLASLt's GEMMs at these shapes ("Internal Sanitizer Error: The Sanitizer failed to
        # handle a hardware exception", then CUDA_ERROR_ILLEGAL_ADDRESS), also with the nvjet
        # kernels excluded, and without the exclusion the full Stage C step ran past 225 s
        # (docs/reliability.md). SANITIZE_STAGE_TOOLS="memcheck racecheck" asks for it, one stage
        # per process (SANITIZE_RACECHECK_STAGES, default SANITIZE_STAGES), with
        # SANITIZE_RACECHECK_ARGS added (e.g. --kernel-name-exclude kns=nvjet).
        stage_runs=()
        for tool in ${SANITIZE_STAGE_TOOLS:-memcheck}; do
            if [ "$tool" = racecheck ]; then
                for s in $(echo "${SANITIZE_RACECHECK_STAGES:-${SANITIZE_STAGES:-clip,stage_c,stage_b,stage_a}}" | tr , ' '); do stage_runs+=("$tool:$s"); done
            else
                stage_runs+=("$tool:${SANITIZE_STAGES:-clip,stage_c,stage_b,stage_a}")
            fi
        done
        (for run in "${stage_runs[@]}"; do
            tool=${run%%:*} stages=${run#*:}
            name="sanitize-$tool-stages"
            extra=()
            if [ "$tool" = racecheck ]; then
                name="sanitize-racecheck-$stages"
                extra=(${SANITIZE_RACECHECK_ARGS:-})
            fi
            CASCADE_GEMM_TUNE=0 CASCADE_BENCH_ONCE=1 CASCADE_BENCH_STAGES=$stages step "$name" \
                "${SANITIZE_TIMEOUT:-240}" compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 9 "$bundle/benches/stages" --bench
        done) &
        pids+=($!)
        for tool in ${SANITIZE_KERNEL_TOOLS:-memcheck initcheck racecheck}; do sanitize_runs+=("sanitize-$tool-kernels"); done
        for run in "${stage_runs[@]}"; do
            tool=${run%%:*}
            if [ "$tool" = racecheck ]; then sanitize_runs+=("sanitize-racecheck-${run#*:}"); else sanitize_runs+=("sanitize-$tool-stages"); fi
        done
    fi
fi
for p in "${pids[@]}"; do wait "$p"; done
phase_end=$deadline

# ---- phase 2: timing, one process on the card at a time ----
# The tests' poisoning of graph memory (one memset node per buffer at every replay) is not part of
# what a user runs: until this line was added, every bench of a run with TESTS=1 timed it too.
unset CASCADE_POISON_GRAPH_MEMORY
# Every timing process shares one tuning file: the first to meet a GEMM shape (or, under
# CASCADE_KERNEL_TUNE, a kernel site) times its candidates, and every later process runs that
# choice. Without it, near-ties fell differently in different processes (Stage B's graph had 1416
# to 1532 nodes), and A/B variants compared different cuBLASLt algorithms as well as the change.
# The file kept in the repository from an earlier run (tools/gpu/tuning.txt, copied from that
# run's $OUT/tuning.txt) seeds it, so that runs in different sessions take the same algorithms
# too (TUNING_SEED=0 starts from nothing); one made for another card, driver or version is
# rewritten by the first process.
if [ -z "${CASCADE_TUNING_FILE:-}" ]; then
    export CASCADE_TUNING_FILE=$logs/tuning.txt
    if [ "${TUNING_SEED:-1}" = 1 ] && [ -s tools/gpu/tuning.txt ]; then
        cp tools/gpu/tuning.txt "$CASCADE_TUNING_FILE"
        echo "tuning file seeded from tools/gpu/tuning.txt ($(grep -c '^gemm ' tools/gpu/tuning.txt) GEMM shapes)"
    fi
fi
benches=()
if on BENCH 1; then
    for b in "$bundle"/benches/*; do
        name=$(basename "$b")
        # BENCHES="stages" (names, space-separated) runs only those.
        [ -n "${BENCHES:-}" ] && [[ " $BENCHES " != *" $name "* ]] && continue
        benches+=("bench-$name")
        CASCADE_BENCH_QUICK=1 step "bench-$name" "${BENCH_TIMEOUT:-300}" "$b" --bench
        # OPS_VARIANTS (default "gemmwg pair split wgmma2 tma tmacluster dw dwroll skinny") picks which of these opt-in variant
        # steps run after the ops bench: each is a process of its own.
        if [ "$name" = ops ]; then
            variants=" ${OPS_VARIANTS:-gemmwg pair split wgmma2 tma tmacluster dw dwroll skinny} "
            # The ops bench's fc1 + GRN rows again with the fused wgmma GEMM's rows among them
            # (the separate path's rows give a same-run comparison), Stage A's fc1 with its GELU
            # on the warp-specialised GEMM beside cuBLASLt's GELU epilogue, and the ResBlocks'
            # fc2 on the stream-K kernel beside GRN's apply pass then cuBLASLt (and its plain
            # version, no factor, beside cuBLASLt's product alone).
            if [[ $variants == *" gemmwg "* ]]; then
                benches+=("bench-ops-wgmma")
                vetted bench-ops-wgmma CASCADE_GEMM_WGMMA=1 &&
                    CASCADE_GEMM_WGMMA=1 CASCADE_GEMM_WS_GELU=1 CASCADE_GEMM_WS_FC2=1 CASCADE_SHAPES="linear_gelu_grn,linear_gelu_ws/,linear_gelu/stage_a,linear_scaled/" CASCADE_BENCH_QUICK=1 step bench-ops-wgmma "${BENCH_TIMEOUT:-300}" "$b" --bench
            fi
            # The fc1 + GRN rows with every fused version's among them, the paired one (clusters
            # of two blocks sharing x's copy; opt-in: CASCADE_GEMM_WGMMA=ws_pair, the only switch
            # that runs it until it has run on a GPU) included: per launch, in one process, the
            # times of the same mainloop at 15.6, 11.7 and 7.8 bytes of L2 traffic per kFLOP.
            if [[ $variants == *" pair "* ]]; then
                benches+=("bench-ops-pair")
                vetted bench-ops-pair CASCADE_GEMM_WGMMA=ws_pair &&
                    CASCADE_GEMM_WGMMA=ws_pair CASCADE_SHAPES="linear_gelu_grn" CASCADE_BENCH_QUICK=1 step bench-ops-pair "${BENCH_TIMEOUT:-300}" "$b" --bench
            fi
            # The wgmma attention rows again with the split-key kernels' rows among them
            # (opt-in: CASCADE_ATTENTION_SPLIT=1), for a same-run comparison per launch.
            if [[ $variants == *" split "* ]]; then
                benches+=("bench-ops-split")
                vetted bench-ops-split CASCADE_ATTENTION_SPLIT=1 &&
                    CASCADE_ATTENTION_SPLIT=1 CASCADE_SHAPES=attention_wgmma CASCADE_BENCH_QUICK=1 step bench-ops-split "${BENCH_TIMEOUT:-300}" "$b" --bench
            fi
            # ... and the two-warpgroup kernel's rows, whole and split (opt-in:
            # CASCADE_ATTENTION=wgmma2), in a process of their own.
            if [[ $variants == *" wgmma2 "* ]]; then
                benches+=("bench-ops-wgmma2")
                vetted bench-ops-wgmma2 CASCADE_ATTENTION=wgmma2 &&
                    CASCADE_ATTENTION=wgmma2 CASCADE_ATTENTION_SPLIT=1 CASCADE_SHAPES=attention_wgmma2 CASCADE_BENCH_QUICK=1 step bench-ops-wgmma2 "${BENCH_TIMEOUT:-300}" "$b" --bench
            fi
            # The wgmma attention rows with those of the kernels whose K and V tiles TMA copies
            # (opt-in: CASCADE_ATTENTION_COPY=tma; the split-key ones too, CASCADE_ATTENTION_SPLIT=1)
            # among them, and the lean and full-tail rows, in one process: a same-run comparison
            # per launch.
            if [[ $variants == *" tma "* ]]; then
                benches+=("bench-ops-tma")
                vetted bench-ops-tma CASCADE_ATTENTION_COPY=tma &&
                    CASCADE_ATTENTION_COPY=tma CASCADE_ATTENTION_SPLIT=1 CASCADE_SHAPES=attention_wgmma CASCADE_BENCH_QUICK=1 step bench-ops-tma "${BENCH_TIMEOUT:-300}" "$b" --bench
            fi
            # The TMA copies shared by clusters of two blocks and by the cluster that fits a head's
            # query blocks best (opt-in: CASCADE_ATTENTION_COPY=cluster asks for both) beside the
            # unshared ones, full and lean softmax, in one process.
            if [[ $variants == *" tmacluster "* ]]; then
                benches+=("bench-ops-tmacluster")
                vetted bench-ops-tmacluster CASCADE_ATTENTION_COPY=cluster &&
                    CASCADE_ATTENTION_COPY=cluster CASCADE_SHAPES=attention_wgmma CASCADE_BENCH_QUICK=1 step bench-ops-tmacluster "${BENCH_TIMEOUT:-300}" "$b" --bench
            fi
            # The depthwise rows with the narrow strips everywhere (the first run takes the wide
            # ones where they save a wave: the Stage C rows), for a same-run comparison per launch.
            if [[ $variants == *" dw "* ]]; then
                benches+=("bench-ops-dw-narrow")
                CASCADE_DW_STRIPS=narrow CASCADE_SHAPES=depthwise CASCADE_BENCH_QUICK=1 step bench-ops-dw-narrow "${BENCH_TIMEOUT:-300}" "$b" --bench
            fi
            # CLIP's products and the odd skinny ones on the skinny GEMM (opt-in:
            # CASCADE_GEMM_SKINNY=1), beside the first run's cuBLASLt rows.
            if [[ $variants == *" skinny "* ]]; then
                benches+=("bench-ops-skinny")
                vetted bench-ops-skinny CASCADE_GEMM_SKINNY=1 &&
                    CASCADE_GEMM_SKINNY=1 CASCADE_SHAPES="/clip.,/odd_skinny" CASCADE_BENCH_QUICK=1 step bench-ops-skinny "${BENCH_TIMEOUT:-300}" "$b" --bench
            fi
            # Stage A's depthwise rows with the rolling kernel where the tiled one runs (opt-in:
            # CASCADE_DW_TILE=roll), for a same-run comparison per launch.
            if [[ $variants == *" dwroll "* ]]; then
                benches+=("bench-ops-dwroll")
                vetted bench-ops-dwroll CASCADE_DW_TILE=roll &&
                    CASCADE_DW_TILE=roll CASCADE_SHAPES="depthwise/stage_a,depthwise+=/stage_a,depthwise+x/stage_a,depthwise+x+ln/stage_a" CASCADE_BENCH_QUICK=1 step bench-ops-dwroll "${BENCH_TIMEOUT:-300}" "$b" --bench
            fi
        fi
    done
    # PyTorch's SDPA on the same attention shapes, and the card's copy and matrix ceilings.
    if [ -s "$logs/bench-ops.log" ]; then
        step sdpa "${BENCH_TIMEOUT:-300}" python3 tools/gpu/sdpa_bench.py "$logs/bench-ops.log"
    fi
fi
if on SIDE_BY_SIDE 0; then
    # The engine's figures from this run's stages bench when there is one (same card, same run).
    if [ -s "$logs/bench-stages.log" ]; then src=(--bench-log "$logs/bench-stages.log"); else src=(--bench "$bundle/benches/stages"); fi
    # torch.compile takes minutes per model: SIDE_BY_SIDE_ARGS="--compile --stages stage_c"
    # narrows a call to one model, and SIDE_BY_SIDE_TIMEOUT gives its step more time.
    step side_by_side "${SIDE_BY_SIDE_TIMEOUT:-${BENCH_TIMEOUT:-300}}" python3 tools/gpu/side_by_side.py "${src[@]}" ${SIDE_BY_SIDE_ARGS:-}
fi
profiled=()
# PROFILE_ENV="CASCADE_DW_TILE=0,NAME=VALUE": the environment of the profiled runs (PROFILE and
# PROFILE_DETAIL), for profiling a variant.
profile_env=()
IFS=, read -ra profile_env <<< "${PROFILE_ENV:-}"
if on PROFILE 0; then
    ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/bin/ncu 2> /dev/null | tail -n 1)
    for stage in ${PROFILE_STAGES:-stage_c stage_b stage_a clip}; do
        profiled+=("profile-$stage")
        if [ -z "$ncu_bin" ]; then
            echo 1 > "$logs/profile-$stage.rc"
            continue
        fi
        # Only the profiled range (one replay) is measured; the clocks are left alone and L2
        # keeps its contents between kernels, as in a real replay.
        CASCADE_BENCH_PROFILE=1 CASCADE_BENCH_STAGES=$stage step "profile-$stage" "${PROFILE_TIMEOUT:-180}" env "${profile_env[@]}" "$ncu_bin" --profile-from-start off \
            --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --log-file "$logs/ncu-$stage.csv" \
            "$bundle/benches/stages" --bench
        [ -s "$logs/ncu-$stage.csv" ] && python3 tools/gpu/ncu_summary.py "$logs/ncu-$stage.csv" --title "$stage" > "$logs/profile-$stage.txt" 2>&1
    done
fi
# PROFILE_DETAIL="grn_partial depthwise_tile@stage_a" (kernel-name substrings, each optionally
# @stage): Nsight Compute's detailed sections (throughput against the card's peaks, occupancy,
# warp stall reasons, memory and compute workload) for the first 3 launches of each in one
# replayed step of its stage (default PROFILE_DETAIL_STAGE, else stage_c): what limits a kernel,
# not only how long it takes. In the logs (detail-*.log).
if [ -n "${PROFILE_DETAIL:-}" ]; then
    ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/bin/ncu 2> /dev/null | tail -n 1)
    for spec in $PROFILE_DETAIL; do
        k=${spec%@*} dstage=${PROFILE_DETAIL_STAGE:-stage_c}
        [ "$spec" != "$k" ] && dstage=${spec#*@}
        profiled+=("detail-$k")
        if [ -z "$ncu_bin" ]; then
            echo 1 > "$logs/detail-$k.rc"
            continue
        fi
        CASCADE_BENCH_PROFILE=1 CASCADE_BENCH_STAGES=$dstage step "detail-$k" "${PROFILE_TIMEOUT:-180}" env "${profile_env[@]}" "$ncu_bin" \
            --profile-from-start off --kernel-name "regex:$k" --launch-count 3 --section SpeedOfLight --section Occupancy \
            --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
            "$bundle/benches/stages" --bench
    done
fi
if on GEMM_TUNE_AB 0; then
    CASCADE_GEMM_TUNE=0 CASCADE_BENCH_QUICK=1 step stages-untuned "${BENCH_TIMEOUT:-300}" "$bundle/benches/stages" --bench
    sed 's/^BENCH /BENCH untuned /' "$logs/stages-untuned.log" > "$logs/bench-stages-untuned.txt" 2> /dev/null
fi

# STAGE_VARIANTS="CASCADE_GRN_CHUNK=32 CASCADE_GEMM_REDUCTION=any,CASCADE_GEMM_TUNE=0": the stages
# bench again under each variant's environment (NAME=VALUE pairs joined by commas; a part without
# "=" continues the value before it, so CASCADE_BENCH_STAGES=stage_c,stage_b keeps its list), its
# rows labelled with the variant, for A/B measurements in the same run (CASCADE_BENCH_STAGES
# applies).
variants=()
for v in ${STAGE_VARIANTS:-}; do
    label=$(echo "$v" | tr -c 'A-Za-z0-9_=\n' _)
    variants+=("stages-$label")
    vetted "stages-$label" "$v" || continue
    (IFS=,; cur=; for kv in $v; do
        if [[ $kv == *=* ]]; then
            [ -n "$cur" ] && export "$cur"
            cur=$kv
        else
            cur="$cur,$kv"
        fi
    done; [ -n "$cur" ] && export "$cur"; CASCADE_BENCH_QUICK=1 step "stages-$label" "${BENCH_TIMEOUT:-300}" "$bundle/benches/stages" --bench)
    sed -E "s/^(BENCH|GRAPH|AB) /\1 [$v] /" "$logs/stages-$label.log" > "$logs/bench-stages-$label.txt" 2> /dev/null
done

# ---- summary ----
failed=0
for f in "$logs"/*.rc; do
    rc=$(cat "$f")
    [ "$rc" = 0 ] || [ "$rc" = 125 ] || failed=1
done
if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/cascade-gpu-logs.tar.gz" -C "$(dirname "$logs")" "$(basename "$logs")" 2> /dev/null
fi
{
    echo
    echo "== summary (${gpu:-no GPU}; $(($(date +%s) - start_ts)) s) =="
    for name in "${tests[@]}"; do
        row "test-$name" "$(grep -E '^test result:' "$logs/test-$name.log" 2> /dev/null | tail -n 1 | sed 's/^test result: //; s/; finished.*//')"
        [ "$(cat "$logs/test-$name.rc" 2> /dev/null)" = 0 ] || grep -E "panicked|FAILED|^error" "$logs/test-$name.log" 2> /dev/null | head -n 8
    done
    grep -h "pairs resident" "$logs/test-kernels-pair.log" 2> /dev/null
    grep -h "clusters resident" "$logs/test-kernels-tmacluster.log" 2> /dev/null
    for name in "${sanitize_runs[@]}"; do
        row "$name" "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$logs/$name.log" 2> /dev/null | tail -n 1)"
    done
    for name in "${benches[@]}"; do row "$name"; done
    [ -f "$logs/sdpa.rc" ] && row sdpa
    [ -f "$logs/fidelity.rc" ] && { row fidelity; sed -n '/== fidelity/,$p' "$logs/fidelity.log"; }
    [ -f "$logs/fidelity.rc" ] && [ "$(cat "$logs/fidelity.rc")" != 0 ] && tail -n 6 "$logs/fidelity.log"
    for name in "${fidelity_runs[@]}"; do
        row "$name"
        sed -n '/== fidelity/,$p' "$logs/$name.log"
        [ "$(cat "$logs/$name.rc" 2> /dev/null)" = 0 ] || tail -n 6 "$logs/$name.log"
    done
    [ -f "$logs/side_by_side.rc" ] && { row side_by_side; sed -n '/== side by side/,$p' "$logs/side_by_side.log"; }
    [ -f "$logs/side_by_side.rc" ] && [ "$(cat "$logs/side_by_side.rc")" != 0 ] && tail -n 6 "$logs/side_by_side.log"
    for name in "${profiled[@]}"; do row "$name"; cat "$logs/$name.txt" 2> /dev/null; done
    [ -f "$logs/stages-untuned.rc" ] && row stages-untuned
    for name in "${variants[@]}"; do row "$name"; done
    # The stages bench's kernel choices by timing (CASCADE_KERNEL_TUNE=log variants): all in
    # kernel-choices.txt (with $OUT), here the ones where a kernel other than the default won.
    grep -h "cascade: kernel choice" "$logs"/stages-*.log 2> /dev/null | sort -u > "$logs/kernel-choices.txt"
    [ -n "${OUT:-}" ] && cp "$logs/kernel-choices.txt" "$OUT/kernel-choices.txt"
    [ -n "${OUT:-}" ] && [ -s "$CASCADE_TUNING_FILE" ] && cp "$CASCADE_TUNING_FILE" "$OUT/tuning.txt"
    if [ -s "$logs/kernel-choices.txt" ]; then
        echo "kernel choices: $(wc -l < "$logs/kernel-choices.txt") shapes timed; where another than the default won:"
        grep -v "(the default)$" "$logs/kernel-choices.txt" | sed 's/^cascade: kernel choice //' | head -n 40
    fi
    [ -f "$logs/sdpa.log" ] && sed -n '/== attention beside SDPA/,$p' "$logs/sdpa.log"
    cat "$logs"/bench-*.log "$logs"/bench-stages-untuned.txt "$logs"/bench-stages-*=*.txt "$logs"/sdpa.log 2> /dev/null | grep -E "^BENCH|^GRAPH|^AB|^PIPELINE|skipped" || true
    [ $failed -eq 0 ] && echo "ALL OK" || echo "FAILURES (logs in $logs and \$OUT/cascade-gpu-logs.tar.gz)"
} | tee "$logs/summary.txt"
[ -n "${OUT:-}" ] && cp "$logs/summary.txt" "$OUT/summary.txt"
exit $failed
