#!/usr/bin/env bash
# Runs the test suite. Installs the PyTorch 2.11.0 wheel into a cached
# virtual environment first when no libtorch is configured (see
# scripts/libtorch-env.sh). Extra arguments go to `cargo test`. Ends with a
# one-epoch run of the demo (the README's first command), in both variants,
# and a check of the JSON and plot each writes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/libtorch-env.sh
seesaw_libtorch_env
cargo fmt --check
# The tests run with the test aids (feature testing): the kernel emulator, so
# the CUDA path's kernels and host code are checked on machines without a
# GPU, and the counters of launches, host reads and libtorch operations.
# The NCCL count hook (feature nccl) builds and is tested too.
cargo clippy --all-targets --features testing,nccl --quiet -- -D warnings
cargo clippy --lib --quiet -- -D warnings
cargo test --features testing,nccl "$@"
# The kernels as compiled for sm_90 (no GPU needed): no spills, registers
# within the occupancy budget, 16-byte loads in every row kernel.
bash scripts/sass-report.sh --check
# The documentation as docs.rs builds it: its features (doc-only, nccl), no
# libtorch, the DOCS_RS variable set, rustdoc warnings as errors.
(
    unset LIBTORCH VIRTUAL_ENV LIBTORCH_USE_PYTORCH
    export DOCS_RS=1 RUSTDOCFLAGS="-D warnings" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}-docs"
    cargo doc --no-deps --quiet --features doc-only,nccl
)
smoke="$(mktemp -d)"
trap 'rm -rf "$smoke"' EXIT
cargo run --release --quiet --example long_tail -- --device cpu --epochs 1 --json "$smoke/demo.json" >/dev/null
python3 scripts/demo-smoke.py "$smoke/demo.json" "$smoke/demo.svg"
cargo run --release --quiet --example long_tail -- --device cpu --epochs 1 --head detection --json "$smoke/det.json" >/dev/null
python3 scripts/demo-smoke.py "$smoke/det.json" "$smoke/det.svg"
