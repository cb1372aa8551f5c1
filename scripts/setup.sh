#!/usr/bin/env bash
# One-time set-up, as any user: check what the FFCV build needs (scripts/check-system.sh; it
# installs missing libraries itself only as root with apt-get or dnf), make the venv, install
# torch + torchvision (pinned in pyproject.toml, first), then every other dependency at the
# versions and hashes of requirements.lock (scripts/lock.sh writes it), then the package.
# Idempotent and fast when nothing changed (a stamp of the inputs lives in $VENV/).
#
# Environment:
#   VENV=DIR          where the venv goes (default .venv; e.g. VENV=/scratch/$USER/repro-venv)
#   PYTHON=python3    the interpreter the venv is made from (>= 3.10)
#   TORCH_INDEX_URL=  a PyTorch wheel index for torch/torchvision, e.g.
#                     https://download.pytorch.org/whl/cu126 (the CUDA variant your driver takes)
#                     or .../whl/cpu; unset: the default index (PyPI: its CUDA build on Linux x86-64)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
# the exact pins, read from pyproject.toml, so they are written in one place
read -ra TORCH_PINS <<< "$(grep -oE '"(torch|torchvision)==[^"]+"' pyproject.toml | tr -d '"' | paste -sd' ' -)"
((${#TORCH_PINS[@]} == 2)) || { echo "setup: pyproject.toml must pin torch== and torchvision==" >&2; exit 1; }

stamp_now=$( (cat pyproject.toml requirements.lock scripts/setup.sh scripts/check-system.sh; "$PYTHON" --version 2>&1 || true
              echo "torch index: $TORCH_INDEX_URL") | sha256sum | cut -c1-16)
if [ -x "$VENV/bin/repro" ] && [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" = "$stamp_now" ]; then
  exit 0
fi

env_lines=$(scripts/check-system.sh --install) || exit 1
eval "$env_lines"   # PKG_CONFIG_PATH (conda/module folders it found), LDFLAGS (rpath to them) for ffcv's build

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --retries 5)   # a transient registry error is retried
"${pip[@]}" --upgrade pip setuptools wheel
# torch first and pinned, so nothing later can pull another torch. From a PyTorch index
# .../whl/<variant> the pins get that local label (torch==2.13.0+cu126), so an installed
# other variant is replaced; the package's own torch==2.13.0 accepts any of them.
if [ -n "$TORCH_INDEX_URL" ]; then
  variant=${TORCH_INDEX_URL%/}; variant=${variant##*/}
  case $variant in
    cpu|cu[0-9]*|rocm[0-9]*|xpu) pins=("${TORCH_PINS[@]/%/+$variant}") ;;
    *) pins=("${TORCH_PINS[@]}") ;;
  esac
  echo "setup: ${pins[*]} from $TORCH_INDEX_URL"
  "${pip[@]}" "${pins[@]}" --index-url "$TORCH_INDEX_URL"
else
  "${pip[@]}" "${TORCH_PINS[@]}"
fi
# everything else exactly as locked (hash-checked; --no-deps: the lock is the whole closure),
# then the package itself; pip check proves the result is consistent (torch's own CUDA
# libraries came with torch above, pinned exactly by it)
"${pip[@]}" --require-hashes --no-deps -r requirements.lock
"${pip[@]}" --no-deps -e .
"$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check >&2; echo "setup: the venv's packages do not fit together (above)" >&2; exit 1; }
# ffcv's C extension must load (it links libturbojpeg and OpenCV), without importing all of ffcv
"$VENV/bin/python" - <<'EOF' || { echo "setup: ffcv's C extension was built but does not load (is the libraries' folder on LD_LIBRARY_PATH?)" >&2; exit 1; }
import ctypes, glob, importlib.util, sys
libs = glob.glob(importlib.util.find_spec("ffcv").submodule_search_locations[0] + "/_libffcv*.so")
if not libs:
    sys.exit("setup: no ffcv/_libffcv*.so in the venv")
try:
    ctypes.CDLL(libs[0])
except OSError as exc:
    sys.exit(f"setup: {exc}")
EOF
echo "$stamp_now" > "$VENV/.setup-stamp"
echo "setup: ready ($VENV/bin/repro)"
