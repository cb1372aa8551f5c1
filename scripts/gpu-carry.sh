#!/usr/bin/env bash
# Assemble .whl/: the wheels a bare GPU machine (Python 3.12, PyTorch, torchvision, timm, numba,
# opencv-python-headless, pandas, pyarrow, seaborn, tqdm, CuPy; no registry) lacks to run
# benchmarks/gpu.py:
#   omegaconf, submitit        pure-Python wheels from PyPI (omegaconf 2.4 vendors its antlr
#                              runtime; cloudpickle/typing_extensions/PyYAML are already there)
#   ffcv 1.0.2                 built here from its sdist (PyPI has no binary wheel), see below
#
# ffcv's compiled part, ffcv/_libffcv, is a dummy Python module (its only Python C-API call is
# PyModule_Create, part of the stable ABI) that ffcv/libffcv.py imports and then re-opens with
# ctypes.CDLL to call plain C functions (imdecode via libturbojpeg, resize via OpenCV's
# cv::resize).  So it is built with Py_LIMITED_API=3.8 as `_libffcv.abi3.so` in a
# cp38-abi3 wheel: this machine's Python 3.11 builds it and Python 3.12 imports it.  The
# shared libraries it needs beyond glibc/libstdc++/libgcc/zlib (libturbojpeg, libopencv_core,
# libopencv_imgproc and their closure: tbb, lapack, blas, gfortran, GLX, X11, ...) are copied
# into the wheel as ffcv/.libs/, found through an RPATH of $ORIGIN/.libs on _libffcv (old-style
# DT_RPATH, so it also serves the dependencies' own dependencies).  They come from Debian 12
# (glibc 2.36, GCC 12), older than the GPU machine's Ubuntu 24.04 (glibc 2.39), so they load there.
# Two one-line source patches, in the build copy only: setup.py uses setuptools' setup/Extension
# (for py_limited_api), and ffcv/pipeline/graph.py's `from distutils.log import warn` falls back
# to warnings.warn on Python >= 3.12, where distutils is gone.
#
# Needs: pkg-config, libturbojpeg0-dev, libopencv-dev (scripts/setup.sh installs them), a Python
# with pip, setuptools and wheel (default: .venv/bin/python, or $PYTHON).
#
# The one call for a lent GPU machine (device tool `run`; scripts/gpu-run.sh installs these wheels
# into a folder of its own, then runs benchmarks/gpu.py; DEVICE_RUN in benchmarks/gpu.py):
#
#   command: bash scripts/gpu-run.sh      carry: [".whl"]      timeout_s: 330
#
# (printed at the end).  The device tool sends the checkout the session started in: build .whl/
# there (with this branch merged), not in another worktree.
#
# Usage: scripts/gpu-carry.sh [--check]   (--check: also verify the build here)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
case "$PYTHON" in */*) [[ $PYTHON = /* ]] || PYTHON=$PWD/$PYTHON ;; esac  # the build runs in another folder
DEST=.whl
FFCV_VERSION=1.0.2
PURE=(omegaconf==2.4.0 submitit==1.5.4)
# already on the GPU machine (or part of every Linux with Python): not carried
SYSTEM_LIBS='^(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libz|ld-linux-x86-64|linux-vdso)\.so'
LIMIT_MIB=64
CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1

for tool in pkg-config gcc g++ readelf ldd; do
  command -v "$tool" >/dev/null || { echo "gpu-carry: $tool not found (run scripts/setup.sh)" >&2; exit 2; }
done
pkg-config --exists libturbojpeg opencv4 ||
  { echo "gpu-carry: libturbojpeg/opencv4 dev files missing (apt-get install libturbojpeg0-dev libopencv-dev)" >&2; exit 2; }
grep -qx '/.whl/' .gitignore || { echo "gpu-carry: .gitignore must ignore /.whl/" >&2; exit 2; }

build=$(mktemp -d /tmp/gpu-carry.XXXXXX)
trap 'rm -rf "$build"' EXIT
rm -rf "$DEST.new" && mkdir -p "$DEST.new"

echo "gpu-carry: pure-Python wheels for cp312 manylinux x86_64: ${PURE[*]}"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST.new" "${PURE[@]}" 2> >(grep -v '^WARNING: Location' >&2)

echo "gpu-carry: building ffcv $FFCV_VERSION (abi3 _libffcv + bundled shared libraries)"
"$PYTHON" -m pip download -q --no-deps --no-binary=:all: -d "$build" "ffcv==$FFCV_VERSION" 2> >(grep -v '^WARNING: Location' >&2)
tar -xzf "$build/ffcv-$FFCV_VERSION.tar.gz" -C "$build"
src="$build/ffcv-$FFCV_VERSION"
"$PYTHON" - "$src" <<'EOF'
import re, sys
from pathlib import Path
src = Path(sys.argv[1])
setup = src / "setup.py"
s = setup.read_text()
s = s.replace("from distutils.core import setup, Extension", "from setuptools import setup, Extension")
s, n = re.subn(r"libffcv = Extension\('ffcv._libffcv',\s*\*\*extension_kwargs\)",
               "libffcv = Extension('ffcv._libffcv', py_limited_api=True, "
               "define_macros=[('Py_LIMITED_API', '0x03080000')], "
               "extra_link_args=['-Wl,-rpath,$ORIGIN/.libs', '-Wl,--disable-new-dtags'], **extension_kwargs)", s)
assert n == 1, "setup.py: Extension(...) not found; ffcv's setup.py changed"
setup.write_text(s)
graph = src / "ffcv/pipeline/graph.py"
g = graph.read_text()
assert g.startswith("from distutils.log import warn\n"), "graph.py: first line changed"
graph.write_text("try:\n    from distutils.log import warn\nexcept ImportError:  # Python >= 3.12\n"
                 "    from warnings import warn\n" + g[len("from distutils.log import warn\n"):])
EOF
(cd "$src" && "$PYTHON" setup.py -q bdist_wheel --py-limited-api=cp38 -d "$build/dist" >"$build/build.log" 2>&1) ||
  { tail -30 "$build/build.log" >&2; echo "gpu-carry: ffcv build failed" >&2; exit 1; }
wheel=$(ls "$build"/dist/ffcv-*.whl)
"$PYTHON" -m wheel unpack -d "$build/unpacked" "$wheel" >/dev/null
pkg=$(ls -d "$build"/unpacked/ffcv-*/)
so=$(ls "$pkg"ffcv/_libffcv*.so)
case "$so" in *.abi3.so) ;; *) echo "gpu-carry: expected _libffcv.abi3.so, got $so" >&2; exit 1 ;; esac
# Python symbols it uses must all be stable-ABI ones (PyModule_Create2 only, in fact)
py_syms=$(nm -D --undefined-only "$so" | awk '{print $2}' | grep -E '^_?Py' || true)
[ "$py_syms" = "PyModule_Create2" ] || { echo "gpu-carry: unexpected Python symbols: $py_syms" >&2; exit 1; }
readelf -d "$so" | grep -q 'RPATH.*\$ORIGIN/.libs' || { echo "gpu-carry: RPATH not set on $so" >&2; exit 1; }

mkdir -p "$pkg/ffcv/.libs"
ldd "$so" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
  [[ $name =~ $SYSTEM_LIBS ]] && continue
  cp -L "$path" "$pkg/ffcv/.libs/$name"
done
strip --strip-unneeded "$pkg"/ffcv/.libs/*.so* "$so" 2>/dev/null || true
"$PYTHON" -m wheel pack -d "$DEST.new" "$pkg" >/dev/null

rm -rf "$DEST" && mv "$DEST.new" "$DEST"
echo "gpu-carry: $DEST/"
ls -l "$DEST"
echo "gpu-carry: bundled libraries: $(unzip -Z1 "$DEST"/ffcv-*.whl | grep '/.libs/' | xargs -n1 basename | tr '\n' ' ')"
bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((bytes + tree + ${untracked:-0}))
printf 'gpu-carry: .whl = %.1f MiB; with the working tree that travels: %.1f MiB (limit %d MiB)\n' \
  "$(echo "$bytes / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
[ "$total" -le $((LIMIT_MIB * 1048576)) ] || { echo "gpu-carry: over the ${LIMIT_MIB} MiB limit" >&2; exit 1; }

if [ "$CHECK" = 1 ]; then
  # Install like the GPU machine does, then, with this Python (abi3 loads on 3.11 as on 3.12):
  # every bundled library resolves inside the wheel, and ffcv decodes a JPEG through it.
  site="$build/site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$DEST"/*.whl
  missing=$(ldd "$site"/ffcv/_libffcv.abi3.so | grep -E 'not found' || true)
  [ -z "$missing" ] || { echo "gpu-carry: unresolved: $missing" >&2; exit 1; }
  outside=$(ldd "$site"/ffcv/_libffcv.abi3.so | awk '$2 == "=>" {print $1, $3}' | grep -vE "$SYSTEM_LIBS" | grep -v "$site/ffcv/.libs/" || true)
  [ -z "$outside" ] || { echo "gpu-carry: resolved outside the wheel: $outside" >&2; exit 1; }
  PYTHONPATH="$site" "$PYTHON" - <<'EOF'
import ffcv, ffcv.libffcv, ffcv.loader, omegaconf, submitit
import cv2, numpy as np
assert "/site/" in ffcv.__file__, ffcv.__file__
img = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
ok, jpg = cv2.imencode(".jpg", img)
out = np.zeros_like(img)
assert ffcv.libffcv.imdecode(jpg.reshape(-1), out, 48, 64, 48, 64, 0, 0, 1, 1, False, False) == 0
small = np.zeros((24, 32, 3), np.uint8)
ffcv.libffcv.resize_crop(out, 0, 48, 0, 64, small)
assert abs(float(out.mean()) - float(img.mean())) < 3 and small.mean() > 0
print(f"gpu-carry: check ok: ffcv {ffcv.__file__} decodes and resizes; omegaconf {omegaconf.__version__}, "
      f"submitit {submitit.__version__} import")
EOF
fi
echo "gpu-carry: on a lent GPU machine, the device tool's run with:"
echo '  command: bash scripts/gpu-run.sh      carry: [".whl"]      timeout_s: 330'
