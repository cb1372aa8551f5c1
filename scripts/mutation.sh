#!/usr/bin/env bash
# Mutation testing (`make mutation`): mutmut, pinned in requirements-mutation.txt, in its own venv
# (MUTATION_VENV, default build/mutation-venv) layered on the project's venv (VENV, default .venv):
# the project's pinned environment and requirements.lock are not touched.
#
#   scripts/mutation.sh [--keep|--no-run] [MODULE.py ...]
#                                         set up (first time, or when requirements-mutation.txt
#                                         changed), then score every module of [tool.mutmut]
#                                         only_mutate (or the ones named) -> results/mutation/
#                                         (--keep, --no-run: scripts/mutation_scores.py's docstring)
#   scripts/mutation.sh --lock            regenerate requirements-mutation.txt (needs uv)
#
# The mutation venv sees the project's venv through a .pth file (`site.addsitedir`), so torch,
# pytest and the package come from VENV; it installs only what VENV lacks, with hashes
# (pip --require-hashes --no-deps, then pip check). Runs niced (nice -n 19) with
# MUTATION_WORKERS (default 2) workers, one module at a time: scripts/mutation_scores.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
MVENV=${MUTATION_VENV:-build/mutation-venv}
REQ=requirements-mutation.txt

if [ "${1:-}" = "--lock" ]; then
  UV=${UV:-uv}
  command -v "$UV" >/dev/null || { [ -x "$VENV/bin/uv" ] && UV=$VENV/bin/uv; } \
    || { echo "mutation: uv not found (pip install uv, or UV=/path/to/uv)" >&2; exit 2; }
  # what requirements.lock (the project's venv) already pins is constrained to that pin and not emitted
  no_emit=(--no-emit-package torch --no-emit-package torchvision)
  while read -r name; do no_emit+=(--no-emit-package "$name"); done \
    < <(grep -oE '^[a-z0-9][a-z0-9._-]*' requirements.lock | sort -u)
  "$UV" pip compile requirements-mutation.in -c requirements.lock --universal --python-version 3.10 \
    --generate-hashes "${no_emit[@]}" --custom-compile-command "scripts/mutation.sh --lock" -q -o "$REQ"
  echo "mutation: $REQ ($(grep -cE '^[a-z0-9]' "$REQ") pins on top of requirements.lock)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || { echo "mutation: no project venv at $VENV (run make install first)" >&2; exit 2; }
for arg in "$@"; do
  case "$arg" in
    --keep|--no-run) ;;
    -*) echo "mutation: unknown option $arg (--keep, --no-run, or module paths)" >&2; exit 2 ;;
    *) [ -f "$arg" ] || { echo "mutation: no such module: $arg" >&2; exit 2; } ;;
  esac
done

stamp="$MVENV/.requirements-mutation.sha256"
want=$( (sha256sum "$REQ"; readlink -f "$VENV/bin/python") | sha256sum | cut -d' ' -f1)
if [ ! -x "$MVENV/bin/mutmut" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "mutation: setting up $MVENV (mutmut from $REQ, on top of $VENV)"
  rm -rf "$MVENV"
  "$VENV/bin/python" -m venv --without-pip "$MVENV"
  base=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  own=$("$MVENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import site; site.addsitedir('$base')" > "$own/_project_venv.pth"
  "$MVENV/bin/python" -m pip install --retries 5 --disable-pip-version-check -q \
    --require-hashes --no-deps -r "$REQ"
  "$MVENV/bin/python" -m pip check --disable-pip-version-check
  echo "$want" > "$stamp"
fi

exec nice -n 19 "$MVENV/bin/python" scripts/mutation_scores.py --workers "${MUTATION_WORKERS:-2}" "$@"
