# shellcheck shell=bash
# Sourced by the scripts in this folder: makes sure a libtorch that tch 0.24.0
# accepts is configured, installing the PyTorch 2.11.0 wheel from PyPI into a
# cached virtual environment when none is.
#
# Precedence:
#   1. LIBTORCH already set: used as it is (tch's own convention).
#   2. LIBTORCH_USE_PYTORCH=1 with a python on PATH whose torch is 2.11.0.
#   3. The cached environment $SEESAW_VENV (default
#      ${XDG_CACHE_HOME:-$HOME/.cache}/seesaw-loss/torch-2.11.0), created on
#      first use and reused afterwards.

SEESAW_TORCH_VERSION=2.11.0

seesaw_python_torch_version() {
    "$1" -c 'import torch, sys; sys.stdout.write(torch.__version__.split("+")[0])' 2>/dev/null
}

seesaw_ensure_venv() {
    local venv="$1"
    if [ -x "$venv/bin/python" ] &&
        [ "$(seesaw_python_torch_version "$venv/bin/python")" = "$SEESAW_TORCH_VERSION" ]; then
        return 0
    fi
    echo "seesaw-loss: installing torch==$SEESAW_TORCH_VERSION into $venv" >&2
    echo "seesaw-loss: once per machine; about 4.6 GB and a few minutes (pip's progress follows)" >&2
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" || return 1
    # pip's own progress (a bar on a terminal, a line per package elsewhere),
    # so that a long first install does not look like a hang.
    "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar on \
        "torch==$SEESAW_TORCH_VERSION" numpy >&2 || return 1
    echo "seesaw-loss: torch==$SEESAW_TORCH_VERSION installed" >&2
}

seesaw_libtorch_env() {
    if [ -n "${LIBTORCH:-}" ]; then
        return 0
    fi
    if [ "${LIBTORCH_USE_PYTORCH:-}" = 1 ] && command -v python3 >/dev/null &&
        [ "$(seesaw_python_torch_version python3)" = "$SEESAW_TORCH_VERSION" ]; then
        return 0
    fi
    local venv="${SEESAW_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/seesaw-loss/torch-$SEESAW_TORCH_VERSION}"
    seesaw_ensure_venv "$venv" || {
        echo "seesaw-loss: could not install torch==$SEESAW_TORCH_VERSION into $venv" >&2
        return 1
    }
    # torch-sys runs `python` when VIRTUAL_ENV is set, `python3` otherwise.
    export VIRTUAL_ENV="$venv"
    export PATH="$venv/bin:$PATH"
    export LIBTORCH_USE_PYTORCH=1
}
