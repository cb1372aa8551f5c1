#!/usr/bin/env bash
# What building FFCV (and the venv) needs, checked as capabilities, not distribution packages:
# Python >= 3.10 with venv/ensurepip and its headers, the compiler Python builds extensions
# with (ffcv's libffcv.cpp is C++), pkg-config, and pkg-config modules libturbojpeg and
# opencv4 (or opencv) -- then a probe program is compiled, linked and run against all of it.
#
# pkg-config searches PKG_CONFIG_PATH, then the active conda/mamba environment
# ($CONDA_PREFIX/lib/pkgconfig) and the pkgconfig folders next to LIBRARY_PATH,
# LD_LIBRARY_PATH and CPATH entries (what `module load` and spack set), then its default path.
#
# Usage: scripts/check-system.sh [--install] | --packages
#   exit 0: all there; stdout has `export ...` lines (PKG_CONFIG_PATH, LDFLAGS) for setup.sh.
#   exit 1: says on stderr what is missing and the install line for apt, dnf and conda-forge.
#   --install: if something is missing and this runs as root with apt-get or dnf, install
#   it and check again. Nothing here needs root or Debian otherwise.
#   --packages: print the Debian library packages it may install (not the toolchain: .ci/run removes these)
set -uo pipefail

PYTHON=${PYTHON:-python3}
say() { echo "setup: $*" >&2; }

# ------------------------------------------------------------------ pkg-config search path
pc_dirs=()
add_dir() { [ -n "$1" ] && [ -d "$1" ] && pc_dirs+=("$(cd "$1" && pwd)"); }
split() { local IFS=:; read -ra parts <<< "${1:-}"; }
split "${PKG_CONFIG_PATH:-}"; for d in "${parts[@]}"; do add_dir "$d"; done
if [ -n "${CONDA_PREFIX:-}" ]; then add_dir "$CONDA_PREFIX/lib/pkgconfig"; add_dir "$CONDA_PREFIX/share/pkgconfig"; fi
for var in LIBRARY_PATH LD_LIBRARY_PATH; do
  split "${!var:-}"; for d in "${parts[@]}"; do [ -n "$d" ] && add_dir "$d/pkgconfig"; done
done
split "${CPATH:-}"; for d in "${parts[@]}"; do [ -n "$d" ] && { add_dir "$d/../lib/pkgconfig"; add_dir "$d/../lib64/pkgconfig"; }; done
PKG_CONFIG_PATH=$(printf '%s\n' "${pc_dirs[@]}" | awk 'NF && !seen[$0]++' | paste -sd: -)
export PKG_CONFIG_PATH

# ------------------------------------------------------------------ checks
missing=()   # keys below; what[key] is the one-line explanation
declare -A what
miss() { missing+=("$1"); what[$1]=$2; }

pyinc="" cc="" cxx=""
if ! command -v "$PYTHON" >/dev/null; then
  miss python "Python >= 3.10 ($PYTHON is not on PATH; set PYTHON=/path/to/python3 to use another)"
elif ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  miss python "Python >= 3.10 ($PYTHON is $("$PYTHON" --version 2>&1); set PYTHON=/path/to/python3.10+)"
else
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || miss venv "Python's venv/ensurepip modules ($PYTHON -m venv cannot make a venv with pip)"
  pyinc=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  [ -f "$pyinc/Python.h" ] || miss pyheaders "Python's C headers ($pyinc/Python.h: ffcv builds a C extension)"
  # the compilers Python builds extensions with (CC compiles libffcv.cpp, CXX links it), unless CC/CXX are set
  cc=${CC:-$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("CC") or "cc")')}
  cxx=${CXX:-$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("CXX") or "c++")')}
  cc=${cc%% *} cxx=${cxx%% *}
  if ! command -v "$cc" >/dev/null || ! command -v "$cxx" >/dev/null; then
    miss compiler "a C/C++ compiler: $cc and $cxx, which Python builds extensions with (or set CC/CXX, e.g. CC=gcc CXX=g++)"
  fi
fi

searched="PKG_CONFIG_PATH=${PKG_CONFIG_PATH:-(empty)} and pkg-config's default path"
opencv=""
if ! command -v pkg-config >/dev/null; then
  miss pkgconfig "pkg-config (ffcv's build asks it for libjpeg-turbo's and OpenCV's flags)"
  miss turbojpeg "libjpeg-turbo (cannot be looked up without pkg-config)"
  miss opencv "OpenCV (cannot be looked up without pkg-config)"
else
  pkg-config --exists libturbojpeg || miss turbojpeg "libjpeg-turbo: pkg-config finds no module libturbojpeg (libturbojpeg.pc; searched $searched)"
  for mod in opencv4 opencv; do pkg-config --exists "$mod" && { opencv=$mod; break; }; done
  [ -n "$opencv" ] || miss opencv "OpenCV: pkg-config finds no module opencv4 or opencv (opencv4.pc; searched $searched)"
fi

# ------------------------------------------------------------------ what to install
declare -A APT=([python]=python3 [venv]=python3-venv [pyheaders]=python3-dev [compiler]="gcc g++"
                [pkgconfig]=pkg-config [turbojpeg]=libturbojpeg0-dev [opencv]=libopencv-dev)
declare -A DNF=([python]=python3 [venv]=python3 [pyheaders]=python3-devel [compiler]="gcc gcc-c++"
                [pkgconfig]=pkgconf-pkg-config [turbojpeg]=turbojpeg-devel [opencv]=opencv-devel)
declare -A CONDA=([python]=python [venv]=python [pyheaders]=python [compiler]="c-compiler cxx-compiler"
                  [pkgconfig]=pkg-config [turbojpeg]=libjpeg-turbo [opencv]=opencv)
if [ "${1:-}" = --packages ]; then echo "${APT[turbojpeg]} ${APT[opencv]}"; exit 0; fi
pkgs() {  # pkgs TABLE: the table's packages for the missing keys, each once
  local -n table=$1; local k
  for k in "${missing[@]}"; do echo "${table[$k]}"; done | tr ' ' '\n' | awk 'NF && !seen[$0]++' | paste -sd' ' -
}

if ((${#missing[@]})); then
  if [ "${1:-}" = --install ] && [ "$(id -u)" = 0 ]; then
    exec 3>&1 1>&2  # the package managers' chatter goes to stderr: stdout is for setup.sh's exports
    if command -v apt-get >/dev/null; then
      say "installing with apt-get: $(pkgs APT)"
      apt-get -o Acquire::Retries=3 update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=3 install -y -qq $(pkgs APT) >/dev/null \
        || { say "apt-get install failed"; exit 1; }
      exec "$0" 1>&3 3>&-
    elif command -v dnf >/dev/null; then
      say "installing with dnf: $(pkgs DNF)"
      if ! dnf install -y -q $(pkgs DNF); then  # RHEL-family: OpenCV and turbojpeg-devel live in EPEL / CRB
        dnf install -y -q epel-release || true
        dnf config-manager --set-enabled crb 2>/dev/null || dnf config-manager --set-enabled powertools 2>/dev/null || true
        dnf install -y -q $(pkgs DNF) || { say "dnf install failed"; exit 1; }
      fi
      exec "$0" 1>&3 3>&-
    fi
  fi
  for k in "${missing[@]}"; do say "missing: ${what[$k]}"; done
  epel=""
  [[ " ${missing[*]} " =~ " "(turbojpeg|opencv)" " ]] && epel="   # RHEL/Rocky/Alma: first sudo dnf install -y epel-release && sudo dnf config-manager --set-enabled crb"
  say "install it with one of these, then run make install again:"
  say "  Debian/Ubuntu:  sudo apt-get install -y $(pkgs APT)"
  say "  RHEL-family:    sudo dnf install -y $(pkgs DNF)$epel"
  say "  conda-forge:    conda install -c conda-forge $(pkgs CONDA)   # or mamba; no root; keep the env active for make install"
  say "or, with a library from module load / spack / your own build, put the folder with its .pc file on PKG_CONFIG_PATH"
  exit 1
fi

# ------------------------------------------------------------------ probe: build against all of it
# ffcv 1.0.2's setup.py turns `pkg-config --cflags --libs` into include/library dirs and libraries
# and cannot take any other flag, so look at the flags the way it does.
flags=$(pkg-config --cflags --libs "$opencv" libturbojpeg)
for tok in $flags; do
  case $tok in -I*|-L*|-l*) ;; *) say "pkg-config flags for $opencv/libturbojpeg contain '$tok', which ffcv 1.0.2's setup.py cannot pass on (only -I, -L, -l)"; exit 1 ;; esac
done
rpath=""
for tok in $(pkg-config --libs-only-L "$opencv" libturbojpeg); do rpath+=" -Wl,-rpath,${tok#-L}"; done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/probe.cpp" <<'EOF'
#include <Python.h>
#include <turbojpeg.h>
#include <opencv2/core/version.hpp>
int main() { tjhandle h = tjInitDecompress(); if (h) tjDestroy(h); return h == 0; }
EOF
# shellcheck disable=SC2086
if ! "$cxx" "$tmp/probe.cpp" -I"$pyinc" $flags $rpath -o "$tmp/probe" 2> "$tmp/err"; then
  say "a test program does not build with $cxx against Python.h, libturbojpeg and $opencv (flags from pkg-config: $flags):"
  head -5 "$tmp/err" | sed 's/^/setup:   /' >&2
  exit 1
fi
if ! "$tmp/probe" 2> "$tmp/err"; then
  say "a test program built against libturbojpeg and $opencv does not run: $(head -1 "$tmp/err")"
  exit 1
fi
say "found: $cxx, Python $("$PYTHON" -c 'import platform; print(platform.python_version())') headers, libturbojpeg $(pkg-config --modversion libturbojpeg), $opencv $(pkg-config --modversion "$opencv")"
[ -n "$PKG_CONFIG_PATH" ] && printf 'export PKG_CONFIG_PATH=%q\n' "$PKG_CONFIG_PATH"
[ -n "$rpath" ] && printf 'export LDFLAGS=%q\n' "${LDFLAGS:+$LDFLAGS }${rpath# }"
exit 0
