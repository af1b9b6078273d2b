#!/usr/bin/env bash
# Run the test suite on another torch release than the one installed, in a virtual environment kept under
# ~/.cache/mixerlab/ that sees every other installed package (--system-site-packages) and shadows only
# torch + torchvision.
#   bash scripts/test_torch.sh 2.5.1 0.20.1            # the oldest supported release
#   bash scripts/test_torch.sh 2.15.0 0.29.2 tests/test_mixers.py -x
# A machine-wide pip constraints file may cap torch; this environment ignores it (PIP_CONSTRAINT), so
# a release above the cap can be tested without changing the machine's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: bash scripts/test_torch.sh TORCH_VERSION TORCHVISION_VERSION [pytest args...]" >&2
    exit 2
fi
TORCH="$1"; VISION="$2"; shift 2
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/mixerlab/venv-torch-$TORCH"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PIP_CONSTRAINT=/dev/null "$VENV/bin/python" -m pip install --quiet "torch==$TORCH" "torchvision==$VISION"
"$VENV/bin/python" -c "import torch, torchvision; print('testing on torch', torch.__version__, 'torchvision', torchvision.__version__)"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
