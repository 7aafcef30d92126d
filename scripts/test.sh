#!/usr/bin/env bash
# The project's test command (README): CPU tests, CUDA build + tests (GPU tests ignored
# without a GPU), clippy, rustfmt, and the benches compiled. Needs scripts/setup-cuda.sh once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
set -x
cargo fmt --check
cargo test --release
cargo test --release --features cuda
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --all-features -- -D warnings
cargo bench --features cuda --no-run
scripts/emu-test.sh
