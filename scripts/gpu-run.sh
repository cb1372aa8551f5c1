#!/usr/bin/env bash
# The one command of a lent GPU machine (the device tool's `run`; docs/benchmarks.md):
#
#   command: bash scripts/gpu-run.sh      carry: [".whl"]      timeout_s: 330
#
# It installs the wheels scripts/gpu-carry.sh built into .whl/ (ffcv, omegaconf, submitit: what
# the machine's Python lacks) into a folder of its own, then runs benchmarks/gpu.py: its phases in
# order of value, each under its own time cap, all under a 295 s deadline (so the call ends inside
# its timeout, leaving the session's 15 minutes room for one rerun).  Everything comes back under
# $OUT: gpu.json (written after every phase), gpu.log (this whole output) and the training
# checks' tables (faithful_train_*.parquet, budget_train_*.parquet): six files.  Arguments go to
# gpu.py (a second call for what the first did not reach: `bash scripts/gpu-run.sh --phases
# variants,optim,loader,compile`); on the same (warm) machine it reuses the first call's data and
# keeps its finished phases in gpu.json (both from $GPU_BENCH_WORKDIR).
#
# On a machine without CUDA the same command runs every phase tiny (the CPU check of this
# command: `PYTHON=.venv/bin/python OUT=/tmp/x bash scripts/gpu-run.sh`; GPU_BENCH_TINY=1 forces
# it anywhere).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -n "${OUT:-}" ] && [ -d "$OUT" ] || { echo "gpu-run: OUT must name an existing folder (where the results go)" >&2; exit 2; }
wheels=${GPU_BENCH_WHEELS:-.whl}
compgen -G "$wheels/*.whl" >/dev/null || { echo "gpu-run: no wheels in $wheels/ (build them with scripts/gpu-carry.sh --check)" >&2; exit 2; }

site=$(mktemp -d "${TMPDIR:-/tmp}/gpu-run-site.XXXXXX")
trap 'rm -rf "$site"' EXIT
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl ||
  { echo "gpu-run: installing $wheels/*.whl failed" >&2; exit 2; }
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 GPU_BENCH_LAUNCHER=scripts/gpu-run.sh
workdir=${GPU_BENCH_WORKDIR:-${TMPDIR:-/tmp}/gpu-bench-work}
{
  echo "gpu-run: $(date -Is) on $(hostname); python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'); wheels: $(cd "$wheels" && echo *.whl)"
  nvidia-smi -L 2>&1 || echo "gpu-run: nvidia-smi: not here"
  "$PYTHON" benchmarks/gpu.py --workdir "$workdir" "$@"
} 2>&1 | tee -a "$OUT/gpu.log"  # -a: a rerun into the same OUT keeps the first log
