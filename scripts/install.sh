#!/usr/bin/env bash
# Install napari-lit and everything it needs into ./.venv on a fresh Debian/Ubuntu machine.
#
#   bash scripts/install.sh            # CPU-only PyTorch (default)
#   NAPARI_LIT_TORCH="torch==2.13.0" bash scripts/install.sh
#
# - Debian packages for napari's Qt viewer on a virtual display (xvfb and the xcb/GL libs Qt
#   loads), when run as root or with sudo; skipped otherwise.
# - PyTorch first (a CPU build where one is available), then sam2 1.1.0 built from its sdist
#   without CUDA and without torchvision (its video predictor does not need it), then the
#   rest of napari-lit's dependencies and napari-lit itself in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH=${NAPARI_LIT_TORCH:-torch==2.13.0}

apt_packages=(xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
  libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0
  libxcb-shape0 libxcb-cursor0 libxcb-xkb1 libdbus-1-3 libfontconfig1 libglib2.0-0)
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "== Debian packages for the Qt viewer"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
  else
    echo "== skipping Debian packages (not root, no sudo): GUI tests need: ${apt_packages[*]}"
  fi
fi

echo "== virtual environment .venv"
"$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel
echo "== $TORCH"
$PIP install -q "$TORCH"
# keep that torch: every later step is constrained to the installed version
.venv/bin/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > .venv/torch-constraint.txt
CONSTRAINT=(-c .venv/torch-constraint.txt)

echo "== sam2 1.1.0 (CPU build, no torchvision)"
$PIP install -q "${CONSTRAINT[@]}" numpy hydra-core iopath tqdm pillow
SAM2_BUILD_CUDA=0 $PIP install -q "${CONSTRAINT[@]}" --no-build-isolation --no-deps "sam2==1.1.0"

echo "== napari-lit and its other dependencies"
# every dependency of pyproject.toml (with the dev and qt extras) except sam2, whose
# declared torchvision requirement would pull a second, CUDA build of torch
.venv/bin/python - > .venv/requirements-no-sam2.txt <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = project["dependencies"] + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["qt"]
print("\n".join(r for r in reqs if not r.lower().startswith("sam2")))
PY
$PIP install -q "${CONSTRAINT[@]}" -r .venv/requirements-no-sam2.txt
$PIP install -q "${CONSTRAINT[@]}" --no-deps --no-build-isolation -e .
.venv/bin/python -c "import napari_lit, sam2, torch, peft, napari; print('napari-lit', napari_lit.__version__, 'torch', torch.__version__, 'sam2 ok')"
