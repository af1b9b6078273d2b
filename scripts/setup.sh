#!/usr/bin/env bash
# Install everything mixerlab needs on a fresh Debian machine: system libraries, then Python packages.
#   system: ffcv's JPEG/OpenCV libraries, chromium (dashboard tests), slurm-wlm + slurmdbd + munge + mariadb
#           (the local one-node SLURM cluster the tests run on)
#   python: the registry's regular torch + torchvision (a CPU-only torch breaks torchvision), lightning,
#           hydra, timm, wandb, ffcv, test tools, mkdocs (the documentation site)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PYTHON="${PYTHON:-python3}"

$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    git pkg-config build-essential libturbojpeg0-dev libopencv-dev \
    chromium chromium-driver \
    slurm-wlm slurmdbd munge mariadb-server >/dev/null

"$PYTHON" -m pip install --upgrade --quiet pip
# ffcv's build imports numpy (and finds OpenCV through pkg-config): install the core first.
"$PYTHON" -m pip install --quiet -e ".[dev,docs]"
"$PYTHON" -m pip install --quiet -e ".[dev,ffcv,docs]"
"$PYTHON" -c "import torch, torchvision, timm, lightning, hydra, ffcv; print('mixerlab setup ok: torch', torch.__version__)"
