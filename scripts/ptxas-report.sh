#!/usr/bin/env bash
# Registers, spills and shared memory of every kernel in kernels/seesaw.cu, as
# ptxas reports them, with no GPU (the CUDA 13 wheels: scripts/cuda-tools.sh).
#   scripts/ptxas-report.sh [ARCH ...]      # default: 80 90
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-tools.sh
seesaw_cuda_tools
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for arch in "${@:-80 90}"; do
    for a in $arch; do
        echo "== sm_$a"
        nvcc -arch="sm_$a" -cubin -std=c++17 -Xptxas -v -I"$SEESAW_CU13/include" -I"$SEESAW_CU13/include/cccl" \
            -o "$tmp/seesaw_$a.cubin" kernels/seesaw.cu 2>&1 |
            grep -E "Compiling entry|Used|spill" | sed -E 's/^ptxas info *: //'
    done
done
