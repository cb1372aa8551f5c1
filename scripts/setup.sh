#!/usr/bin/env bash
# One-time set-up of a fresh machine: system packages, .venv, torch (pinned, first), the package.
# Idempotent and fast when nothing changed (a stamp of the inputs lives in .venv/).
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(libturbojpeg0-dev libopencv-dev pkg-config dataset-fashion-mnist)
TORCH_PIN="torch==2.13.0"
VENV=.venv

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: missing system packages: ${missing[*]}" >&2
    echo "setup: run as root, or ask an admin: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

stamp_now=$( (cat pyproject.toml scripts/setup.sh; python3 --version) | sha256sum | cut -c1-16)
if [ -x "$VENV/bin/repro" ] && [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" = "$stamp_now" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
# torch first and pinned, so nothing later can pull an unpinned (CUDA, multi-GB) torch.
"$VENV/bin/python" -m pip install -q "$TORCH_PIN"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "$stamp_now" > "$VENV/.setup-stamp"
echo "setup: ready ($VENV/bin/repro)"
