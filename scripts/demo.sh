#!/usr/bin/env bash
# Runs the long-tail demo (examples/long_tail/): on the GPU when libtorch sees
# one, else on the CPU (`--device cpu` forces it). Installs libtorch first when
# none is configured.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/libtorch-env.sh
seesaw_libtorch_env
cargo run --release --example long_tail -- "$@"
