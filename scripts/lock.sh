#!/usr/bin/env bash
# Regenerate requirements.lock: every Python dependency of the package (and its dev extras),
# transitively, pinned with sha256 hashes, for Linux and every Python >= 3.10 at once
# (uv's universal resolution: one file, environment markers where versions differ).
#
# torch and torchvision are pinned in pyproject.toml and installed first by scripts/setup.sh
# from the index that gives the variant a machine needs (PyPI's default CUDA build, or
# TORCH_INDEX_URL=.../whl/cu126, .../whl/cpu): the lock leaves them and the CUDA libraries
# that come with each variant (nvidia-*, cuda-*, triton, pinned exactly by torch itself) out.
#
# Usage: scripts/lock.sh   (or make lock) -- needs uv (pip install uv) and PyPI; commit the result,
# then regenerate the committed results whose numbers change (README "Reproducing the numbers").
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
command -v "$UV" >/dev/null || { [ -x .venv/bin/uv ] && UV=.venv/bin/uv; } \
  || { echo "lock: uv not found (pip install uv, or UV=/path/to/uv)" >&2; exit 2; }
# torch's own variant-specific dependencies, as uv resolves PyPI's torch for Linux
variant_deps=(torch torchvision triton cuda-bindings cuda-pathfinder cuda-toolkit)
probe=$(mktemp); trap 'rm -f "$probe"' EXIT
"$UV" pip compile pyproject.toml --extra dev --universal --python-version 3.10 \
  --no-header --no-annotate -q -o "$probe"
while read -r name; do variant_deps+=("$name"); done < <(grep -oE '^nvidia-[a-z0-9-]+' "$probe" | sort -u)
no_emit=(); for p in "${variant_deps[@]}"; do no_emit+=(--no-emit-package "$p"); done
"$UV" pip compile pyproject.toml --extra dev --universal --python-version 3.10 --generate-hashes \
  "${no_emit[@]}" --custom-compile-command "scripts/lock.sh" -q -o requirements.lock
echo "lock: requirements.lock ($(grep -cE '^[a-z0-9]' requirements.lock) pins; left to the torch variant: ${variant_deps[*]})"
