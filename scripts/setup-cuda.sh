#!/usr/bin/env bash
# Installs what `cargo build --features cuda` needs on a machine without CUDA:
#   - libclang 14 and clang's builtin headers (for bindgen), from Debian's packages;
#   - the CUDA 13.0.2 compiler toolchain (nvcc, ptxas, headers) from PyPI, pinned, into the
#     git-ignored folder .venv-cuda of this repository.
# CUDA 13.0 is pinned because the GPU machines run driver 580, which rejects PTX from a newer nvcc.
# Idempotent: a second run checks and returns in about a second.
# Afterwards, `cargo build --features cuda` finds nvcc by itself (build.rs looks in .venv-cuda);
# to use nvcc in a shell:  source <(scripts/setup-cuda.sh --env)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv-cuda"
pin="cuda-toolkit[nvcc,cudart,cccl,crt,nvvm]==13.0.2"

cuda_home() { ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -n 1 || true; }

if [ "${1:-}" = "--env" ]; then
    home=$(cuda_home)
    [ -n "$home" ] || { echo "echo 'CUDA toolchain not installed: run scripts/setup-cuda.sh' >&2"; exit 1; }
    echo "export CUDA_HOME='$home'"
    echo "export PATH='$home/bin':\"\$PATH\""
    exit 0
fi

# 1. libclang for bindgen (both packages: libclang1-14 alone lacks stddef.h).
if ! ls /usr/lib/llvm-14/lib/libclang*.so* >/dev/null 2>&1 || [ ! -d /usr/lib/llvm-14/lib/clang ]; then
    echo "setup-cuda: installing libclang1-14 libclang-common-14-dev" >&2
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
        libclang1-14 libclang-common-14-dev >/dev/null
fi

# 2. The pinned CUDA toolchain from PyPI.
home=$(cuda_home)
if [ -z "$home" ] || [ ! -x "$home/bin/nvcc" ] || ! "$home/bin/nvcc" --version | grep -q "release 13.0"; then
    echo "setup-cuda: installing $pin into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$pin"
    home=$(cuda_home)
fi
[ -x "$home/bin/nvcc" ] || { echo "setup-cuda: nvcc missing after install in $home" >&2; exit 1; }

echo "setup-cuda: ready: $("$home/bin/nvcc" --version | grep release)" >&2
echo "setup-cuda: CUDA_HOME=$home (build.rs finds it; for a shell: source <(scripts/setup-cuda.sh --env))" >&2
