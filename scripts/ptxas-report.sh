#!/usr/bin/env bash
# Registers, spills and shared memory of every kernel in kernels/seesaw.cu, as
# ptxas reports them, with no GPU: installs the pinned CUDA 13.0 compiler
# wheels from PyPI into a cached venv (nvidia-cuda-nvcc, -cccl, nvidia-nvvm and
# nvidia-cuda-crt, all pinned to 13.0.*: unpinned, the last two come as a newer
# release whose PTX the 13.0 ptxas rejects) and compiles the source to cubins
# for sm_80 and sm_90.
#   scripts/ptxas-report.sh [ARCH ...]      # default: 80 90
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SEESAW_NVCC_VENV:-$HOME/.cache/seesaw-loss/nvcc-13.0}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*"
fi
cu13="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)"
export PATH="$cu13/bin:$PATH"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for arch in "${@:-80 90}"; do
    for a in $arch; do
        echo "== sm_$a"
        nvcc -arch="sm_$a" -cubin -std=c++17 -Xptxas -v -I"$cu13/include" -I"$cu13/include/cccl" \
            -o "$tmp/seesaw_$a.cubin" kernels/seesaw.cu 2>&1 |
            grep -E "Compiling entry|Used|spill" | sed -E 's/^ptxas info *: //'
    done
done
