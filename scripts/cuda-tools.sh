# shellcheck shell=bash
# Sourced by the scripts that inspect the compiled kernels without a GPU:
# `seesaw_cuda_tools` installs, once per machine, the CUDA 13 compiler and
# disassembler wheels from PyPI into a cached virtual environment and puts
# their `bin` on PATH (nvcc, ptxas, cuobjdump, nvdisasm).
#
# Pins: nvidia-cuda-nvcc, -cccl, nvidia-nvvm and nvidia-cuda-crt at 13.0.*
# (unpinned, the last two come as a newer release whose PTX the 13.0 ptxas
# rejects); cuobjdump and nvdisasm at 13.2.86, the oldest CUDA 13 build of
# each on PyPI (there is no 13.0 one), which read 13.0 cubins.

SEESAW_CUDA_TOOL_WHEELS=(
    "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*"
    "nvidia-cuda-cuobjdump==13.2.86" "nvidia-cuda-nvdisasm==13.2.86"
)

# Sets SEESAW_CU13 to the wheels' nvidia/cu13 folder and puts its bin on PATH.
seesaw_cuda_tools() {
    local venv="${SEESAW_NVCC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/seesaw-loss/cuda-tools-13.0}"
    if [ ! -x "$venv/bin/python" ] || [ ! -e "$venv/.complete" ]; then
        echo "seesaw-loss: installing the CUDA 13 compiler and disassembler wheels into $venv (once)" >&2
        rm -rf "$venv"
        python3 -m venv "$venv" || return 1
        "$venv/bin/pip" install --quiet "${SEESAW_CUDA_TOOL_WHEELS[@]}" || return 1
        touch "$venv/.complete"
    fi
    SEESAW_CU13="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)"
    export PATH="$SEESAW_CU13/bin:$PATH"
}
