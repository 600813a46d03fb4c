#!/usr/bin/env bash
# The test suite against another PyTorch: a virtual environment that sees this machine's packages
# but has its own torch, torchvision and triton, then `pytest` from this checkout.
#
#   bash tools/torch_compat.sh 2.1.2 0.16.2 "numpy<2"    # the oldest torch pyproject.toml allows
#   bash tools/torch_compat.sh 2.11.0 0.26.0 triton==3.6.0 # the GPU image's torch and triton
#
# Arguments: TORCH TORCHVISION [EXTRA ...] (extra requirements of that torch, e.g. "numpy<2" for
# torch < 2.3, built against NumPy 1). The environment is kept under $COMPAT_DIR (default
# .compat/, git-ignored) per torch version; PYTEST_ARGS (default -q) go to pytest and the log is
# .compat/<torch>/pytest.log. Packages of the outer environment built for a newer torch may refuse
# the older one (e.g. transformers 5 needs torch >= 2.6): their tests skip with that reason.
set -u -o pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    sed -n 2,13p "$0" >&2
    exit 2
fi
torch_v=$1 vision_v=$2
shift 2
root=${COMPAT_DIR:-.compat}/$torch_v
py=${PYTHON:-python}
if [ ! -x "$root/venv/bin/python" ]; then
    mkdir -p "$root/wheels"
    # with their dependencies (the CUDA libraries of that build, triton); the outer env has the rest
    $py -m pip download -q -d "$root/wheels" "torch==$torch_v" "torchvision==$vision_v" "$@" || exit 1
    $py -m venv --system-site-packages "$root/venv" || exit 1
    # numpy and pillow come from the outer environment unless an extra asks for them
    keep=$(printf '%s\n' "$@" | grep -o '^[A-Za-z0-9_.-]*' | tr 'A-Z-' 'a-z_')
    for whl in "$root"/wheels/*.whl; do
        name=$(basename "$whl" | cut -d- -f1 | tr 'A-Z-' 'a-z_')
        case "$name" in numpy | pillow) grep -qx "$name" <<<"$keep" || continue ;; esac
        echo "$whl"
    done >"$root/install.txt"
    "$root/venv/bin/python" -m pip install -q --no-deps $(cat "$root/install.txt") || exit 1
fi
"$root/venv/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of flags
"$root/venv/bin/python" -m pytest -p no:cacheprovider ${PYTEST_ARGS:--q} 2>&1 | tee "$root/pytest.log"
