#!/usr/bin/env bash
# The SASS report of the kernels for sm_90, with no GPU: registers, spills,
# shared memory, the widest global load, instructions and MUFU operations per
# logit of the main path, and a model of the time at LVIS shape
# (scripts/sass_report.py says how each is measured). Compiles with the CUDA
# 13 wheels (scripts/cuda-tools.sh).
#   scripts/sass-report.sh            # the report (markdown)
#   scripts/sass-report.sh --check    # the same; fails on a spill, on more
#                                     # registers than the occupancy budget,
#                                     # or a row kernel without 16-byte loads
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-tools.sh
seesaw_cuda_tools
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
compile() {
    local name="$1"
    shift
    nvcc -arch=sm_90 -cubin -std=c++17 -Xptxas -v "$@" -o "$tmp/$name.cubin" kernels/seesaw.cu 2>"$tmp/$name.ptxas" ||
        { cat "$tmp/$name.ptxas" >&2; return 1; }
    cuobjdump -sass "$tmp/$name.cubin" >"$tmp/$name.sass"
}
constant() { sed -n "s/^#define SEESAW_$1 \([0-9]*\)\$/\1/p" kernels/seesaw_params.h; }
held="$(constant HELD_PER_THREAD)"
export SEESAW_BLOCKS_PER_SM="$(constant BLOCKS_PER_SM)"
compile shipped
compile main_a -DSEESAW_RARE_PATHS=0 -DSEESAW_HELD_PER_THREAD="$((held - 8))"
compile main_b -DSEESAW_RARE_PATHS=0 -DSEESAW_HELD_PER_THREAD="$held"
python3 scripts/sass_report.py "$tmp" "$held" "$@"
