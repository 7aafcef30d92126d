#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, as gpu-bundle/run.sh (see
# scripts/gpu-bundle.sh). Every test binary runs with --include-ignored (so the GPU tests run),
# then every bench in its short mode; with SANITIZE=1, compute-sanitizer's memcheck, racecheck
# and initcheck run over the kernel tests and one step of Stage C lite and Stage B lite. Prints the GPU's name and a summary table last; exits
# non-zero on any failure.
#   BENCH=0  skip the benches        TESTS=0  skip the tests      SANITIZE=1  add the sanitizer
#   FIDELITY=1  full-size fidelity against diffusers (tools/gpu/fidelity.py, a few minutes)
#   TEST_TIMEOUT / BENCH_TIMEOUT  seconds per binary (300); CASCADE_BENCH_STAGES=clip,stage_c,…
#   narrows the stage bench; SANITIZE_STAGES picks the stages run once under memcheck;
#   CASCADE_SHAPES=odd,clip narrows the kernel tests to shapes whose names contain those words
#   SIDE_BY_SIDE=1  diffusers and the engine timed in this run (tools/gpu/side_by_side.py)
#   (BENCH also times PyTorch's SDPA on the attention shapes: tools/gpu/sdpa_bench.py)
#   GEMM_TUNE_AB=1  the stage bench again with CASCADE_GEMM_TUNE=0 (cuBLASLt's heuristic choice),
#   printed as "BENCH untuned …" lines beside the tuned ones
#   PROFILE=1  one graph-replayed step of each of PROFILE_STAGES (clip,stage_c,stage_b,stage_a)
#   under Nsight Compute, kernel by kernel: where the step's time goes (tools/gpu/ncu_summary.py)
set -uo pipefail
packed=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
logs=${LOGS:-${OUT:-/tmp}/cascade-gpu-logs}
mkdir -p "$logs"
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
[ -d "$packed/wheels" ] && ln -sfn "$packed/wheels" "$bundle/wheels"
export CASCADE_ROOT=${CASCADE_ROOT:-$(pwd)}
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
echo "GPU: ${gpu:-none found}"
failed=0
rows=()

if [ "${TESTS:-1}" = 1 ]; then
    for t in "$bundle"/tests/*; do
        name=$(basename "$t")
        start=$(date +%s)
        # Graph buffers poisoned at each replay: a step reading memory it never wrote shows NaN.
        CASCADE_POISON_GRAPH_MEMORY=1 timeout "${TEST_TIMEOUT:-300}" "$t" --include-ignored --nocapture > "$logs/$name.log" 2>&1
        rc=$?
        [ $rc -eq 124 ] && echo "$name: timed out after ${TEST_TIMEOUT:-300} s" >> "$logs/$name.log"
        secs=$(( $(date +%s) - start ))
        result=$(grep -E "^test result:" "$logs/$name.log" | tail -n 1 | sed 's/^test result: //; s/; finished.*//')
        [ $rc -eq 0 ] || failed=1
        rows+=("$(printf '%-28s %-4s %4ss  %s' "$name" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" "$secs" "$result")")
        if [ $rc -ne 0 ]; then grep -E "panicked|FAILED|error" "$logs/$name.log" | head -n 20; fi
    done
fi

if [ "${SANITIZE:-0}" = 1 ] && ! command -v compute-sanitizer >/dev/null; then
    failed=1
    rows+=("sanitize                     FAIL compute-sanitizer is not on PATH")
elif [ "${SANITIZE:-0}" = 1 ]; then
    # The kernel tests on the small odd shapes (SANITIZE_SHAPES=… picks others: the sanitizer is
    # slow on the real sizes), then one graph-replayed step of each stage (the stages bench,
    # each case run once), under memcheck, racecheck and initcheck.
    for tool in memcheck racecheck initcheck; do
        CASCADE_SHAPES=${SANITIZE_SHAPES:-odd} compute-sanitizer --tool "$tool" --error-exitcode 9 "$bundle/tests/kernels" --include-ignored --test-threads=1 > "$logs/sanitize-$tool.log" 2>&1
        rc=$?
        summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$logs/sanitize-$tool.log" | tail -n 1)
        [ $rc -eq 0 ] || failed=1
        rows+=("$(printf '%-28s %-4s %s' "sanitize-$tool kernels" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" "$summary")")
    done
    for tool in memcheck racecheck initcheck; do
        CASCADE_BENCH_ONCE=1 CASCADE_BENCH_STAGES=${SANITIZE_STAGES:-stage_c_lite,stage_b_lite} compute-sanitizer --tool "$tool" --error-exitcode 9 "$bundle/benches/stages" --bench > "$logs/sanitize-$tool-stages.log" 2>&1
        rc=$?
        [ $rc -eq 0 ] || failed=1
        rows+=("$(printf '%-28s %-4s %s' "sanitize-$tool stages" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" "$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$logs/sanitize-$tool-stages.log" | tail -n 1)")")
    done
fi

if [ "${BENCH:-1}" = 1 ]; then
    for b in "$bundle"/benches/*; do
        name=$(basename "$b")
        CASCADE_BENCH_QUICK=1 timeout "${BENCH_TIMEOUT:-300}" "$b" --bench > "$logs/bench-$name.log" 2>&1 || { failed=1; rows+=("bench $name FAILED (see $logs/bench-$name.log)"); }
    done
    # PyTorch's SDPA on the same attention shapes, and the card's copy and matrix ceilings, in
    # this run (tools/gpu/sdpa_bench.py reads the shapes from the ops bench's lines).
    if [ -s "$logs/bench-ops.log" ]; then
        timeout "${BENCH_TIMEOUT:-300}" python3 tools/gpu/sdpa_bench.py "$logs/bench-ops.log" > "$logs/bench-sdpa.log" 2>&1 || { failed=1; rows+=("bench sdpa FAILED (see $logs/bench-sdpa.log)"); }
        rows+=("$(sed -n '/== attention beside SDPA/,$p' "$logs/bench-sdpa.log")")
    fi
fi

if [ "${GEMM_TUNE_AB:-0}" = 1 ]; then
    CASCADE_GEMM_TUNE=0 CASCADE_BENCH_QUICK=1 timeout "${BENCH_TIMEOUT:-300}" "$bundle/benches/stages" --bench > "$logs/stages-untuned.log" 2>&1 || { failed=1; rows+=("bench stages (untuned) FAILED (see $logs/stages-untuned.log)"); }
    sed 's/^BENCH /BENCH untuned /' "$logs/stages-untuned.log" > "$logs/bench-stages-untuned.log"
fi

if [ "${PROFILE:-0}" = 1 ]; then
    ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/bin/ncu 2>/dev/null | tail -n 1)
    if [ -z "$ncu_bin" ]; then
        failed=1
        rows+=("profile                      FAIL ncu (Nsight Compute) was not found")
    else
        for stage in ${PROFILE_STAGES:-clip stage_c stage_b stage_a}; do
            # Only the profiled range (one replay) is measured; the clocks are left alone and L2
            # keeps its contents between kernels, as in a real replay.
            CASCADE_BENCH_PROFILE=1 CASCADE_BENCH_STAGES=$stage timeout "${PROFILE_TIMEOUT:-300}" "$ncu_bin" --profile-from-start off \
                --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --log-file "$logs/ncu-$stage.csv" \
                "$bundle/benches/stages" --bench > "$logs/profile-$stage.log" 2>&1 || { failed=1; rows+=("profile $stage FAILED (see $logs/profile-$stage.log)"); }
            python3 tools/gpu/ncu_summary.py "$logs/ncu-$stage.csv" --title "$stage" > "$logs/profile-$stage.txt" 2>&1 || failed=1
            rows+=("$(cat "$logs/profile-$stage.txt")")
        done
    fi
fi

if [ "${FIDELITY:-0}" = 1 ] || [ "${SIDE_BY_SIDE:-0}" = 1 ]; then
    pydeps=/tmp/cascade-pydeps
    python3 -m pip install --quiet --no-index --no-deps --target "$pydeps" "$bundle"/wheels/*.whl > "$logs/pip.log" 2>&1
    export PYTHONPATH="$pydeps${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ "${FIDELITY:-0}" = 1 ]; then
    python3 tools/gpu/fidelity.py --engine "$bundle/bin/cascade" ${FIDELITY_ARGS:-} > "$logs/fidelity.log" 2>&1 || failed=1
    rows+=("$(sed -n '/== fidelity/,$p' "$logs/fidelity.log")")
fi
if [ "${SIDE_BY_SIDE:-0}" = 1 ]; then
    python3 tools/gpu/side_by_side.py --bench "$bundle/benches/stages" ${SIDE_BY_SIDE_ARGS:-} > "$logs/side_by_side.log" 2>&1 || failed=1
    rows+=("$(sed -n '/== side by side/,$p' "$logs/side_by_side.log")")
fi

echo
echo "== summary (${gpu:-no GPU}) =="
printf '%s\n' "${rows[@]}"
cat "$logs"/bench-*.log 2>/dev/null | grep -E "^BENCH|^GRAPH|^PIPELINE|skipped" || true
[ $failed -eq 0 ] && echo "ALL OK" || echo "FAILURES (logs in $logs)"
exit $failed
