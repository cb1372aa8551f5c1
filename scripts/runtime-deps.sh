#!/usr/bin/env bash
# What `make demo` and `make test` use at run time that no pip install gives: the embedded data
# set (Fashion-MNIST) for both, and a headless browser (Chromium) for the report's test.
# (SLURM for the SLURM tests: tests/conftest.py starts scripts/slurm-up.sh when no cluster answers.)
#
# Each is looked for first; when missing and this runs as root with apt-get (or dnf), it is
# installed; otherwise one line on stderr says how to get it, and the caller goes on: without
# Fashion-MNIST the demo stops with the same one line, a test without Chromium is skipped.
#
# Usage: scripts/runtime-deps.sh demo|test
#        scripts/runtime-deps.sh --packages   the Debian packages it may install (for .ci/run)
set -uo pipefail
cd "$(dirname "$0")/.."

# Debian's dataset-fashion-mnist (imagefolder.FASHION_MNIST_DIR); the variable only lets tests move it
FMNIST_DEBIAN=${RUNTIME_DEPS_DEBIAN_FMNIST:-/usr/share/datasets/fashion-mnist}
FMNIST_FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
APT_RETRY=(-o Acquire::Retries=3)   # a transient mirror error is retried
say() { echo "setup: $*" >&2; }

if [ "${1:-}" = --packages ]; then echo "dataset-fashion-mnist chromium"; exit 0; fi
case "${1:-}" in demo|test) ;; *) echo "usage: scripts/runtime-deps.sh demo|test|--packages" >&2; exit 2 ;; esac

have_idx() { local f; for f in "${FMNIST_FILES[@]}"; do [ -f "$1/$f" ] || return 1; done; }

root_install() {  # root_install APT_PKG DNF_PKG: 0 when installed here
  [ "$(id -u)" = 0 ] || return 1
  if command -v apt-get >/dev/null; then
    say "installing with apt-get: $1"
    { apt-get "${APT_RETRY[@]}" update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get "${APT_RETRY[@]}" install -y -qq "$1"; } >/dev/null 2>&1 && return 0
    say "apt-get install $1 failed"
  elif [ -n "$2" ] && command -v dnf >/dev/null; then
    say "installing with dnf: $2"
    dnf install -y -q "$2" >/dev/null 2>&1 && return 0
    say "dnf install $2 failed"
  fi
  return 1
}

# -------------------------------------------------- Fashion-MNIST (the lookup order of
# imagenet_repro.data.imagefolder.fashion_mnist_source: $FASHION_MNIST_DIR, Debian's folder,
# torchvision's cache in data/)
if [ -n "${FASHION_MNIST_DIR:-}" ]; then
  have_idx "$FASHION_MNIST_DIR" || say "FASHION_MNIST_DIR=$FASHION_MNIST_DIR does not hold the four idx .gz files (${FMNIST_FILES[*]})"
elif ! have_idx "$FMNIST_DEBIAN" && ! have_idx data/FashionMNIST/raw; then
  root_install dataset-fashion-mnist "" && have_idx "$FMNIST_DEBIAN" \
    || say "Fashion-MNIST (the demo's and the tests' data) is not here: sudo apt-get install -y dataset-fashion-mnist (Debian/Ubuntu), or FASHION_MNIST_DIR=DIR (a folder with ${FMNIST_FILES[*]}), or be online at first use (torchvision downloads it into data/)"
fi

# -------------------------------------------------- Chromium (tests/test_report.py)
if [ "$1" = test ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  root_install chromium chromium \
    || say "no Chromium: the report's browser test will be skipped (sudo apt-get install -y chromium, or sudo dnf install -y chromium, or put a chromium on PATH)"
fi
exit 0
