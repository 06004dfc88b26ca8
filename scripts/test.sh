#!/usr/bin/env bash
# Runs the test suite. Installs the PyTorch 2.11.0 wheel into a cached
# virtual environment first when no libtorch is configured (see
# scripts/libtorch-env.sh). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/libtorch-env.sh
seesaw_libtorch_env
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test "$@"
