#!/usr/bin/env bash
# Builds everything the GPU machine runs (it has no cargo and no network) into the git-ignored
# folder gpu-bundle/: the test and bench executables built with --features cuda --no-run, the
# cascade binary, stripped and xz-compressed, diffusers wheels, plus gpu-bundle/run.sh. Carry `gpu-bundle` to the GPU machine and
# run `gpu-bundle/run.sh` from the repository root there.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
out=gpu-bundle
rm -rf "$out"
mkdir -p "$out/tests" "$out/benches" "$out/bin"

executables() { # $@: cargo subcommand and flags; prints "target-name<TAB>path" lines
    cargo "$@" --features cuda --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"] + "\t" + m["target"]["kind"][0] + "\t" + m["executable"])
'
}

cargo build --release --features cuda --bin cascade
cp target/release/cascade "$out/bin/cascade"
cargo test --release --features cuda --no-run
executables test --release | while IFS=$'\t' read -r name kind path; do
    # Only the targets that hold GPU tests (the lib/bin harnesses and the other integration
    # tests are CPU-only, and CI runs them).
    if [ "$kind" = test ] && grep -q 'needs a CUDA GPU' "tests/$name.rs" 2>/dev/null; then cp "$path" "$out/tests/$name"; fi
done
cargo bench --features cuda --no-run
executables bench | while IFS=$'\t' read -r name kind path; do
    if [ "$kind" = bench ]; then cp "$path" "$out/benches/$name"; fi
done
strip "$out"/bin/* "$out"/tests/* "$out"/benches/* 2>/dev/null || true
# xz shrinks the executables about fourfold (run.sh unpacks them with Python's lzma).
xz -T0 -6 "$out"/bin/* "$out"/tests/* "$out"/benches/*
cp scripts/gpu-run.sh "$out/run.sh"
# diffusers for the fidelity and side-by-side scripts (the GPU machine has torch and
# transformers but no network): wheels for its Python 3.12.
mkdir -p "$out/wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d "$out/wheels" \
    diffusers==0.42.1 importlib_metadata zipp requests urllib3 idna certifi charset_normalizer 2>/dev/null ||
    echo "gpu-bundle: could not download the diffusers wheel (no network?); FIDELITY=1 will be unavailable" >&2
chmod +x "$out/run.sh"
size=$(du -sm "$out" | cut -f1)
echo "gpu-bundle: $(ls "$out/tests" | wc -l) test binaries, $(ls "$out/benches" | wc -l) benches, ${size} MiB" >&2
if [ "$size" -ge 60 ]; then
    echo "gpu-bundle: over the 60 MiB limit" >&2
    exit 1
fi
