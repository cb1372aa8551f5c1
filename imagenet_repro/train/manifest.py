"""manifest.json: where and with what a run was made (git commit, host, times, and the
environment that decides its numbers besides its config).

The environment (:func:`environment`) is everything that moves a run's numbers when its config
and code do not change: the CPU (vendor, model, the instruction sets the kernel libraries pick
their code paths from), torch's build (its oneDNN and MKL) and the kernel family it dispatches
to, the libraries FFCV's decoding and resize are linked to (libjpeg-turbo, the system OpenCV),
every installed distribution's version with one hash over the runtime ones
(:func:`runtime_packages_sha256`), the CUDA device with its driver, CUDA and cuDNN, and the
thread counts. Which of these must match for two machines to give equal numbers is decided in
:mod:`imagenet_repro.analysis.environment`. Importing this module does not import torch.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from imagenet_repro.rundir import flatten_environment

if TYPE_CHECKING:
    import torch

LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"  # the checkout's lock (an editable install)
PACKAGE = "imagenet-repro"  # the distribution whose runtime requirements are "the runtime packages"
# environment variables that change kernels or thread counts, hence the numbers
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                    "MKL_CBWR", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")
# the CPU flags that torch's ATen, oneDNN and MKL choose their code paths from (the others --
# virtualization, power, security mitigations -- change no number, and differ between VMs of one CPU)
ISA_FLAG = re.compile(r"^(sse\d\w*|ssse3|avx\w*|fma\w*|f16c|amx\w*|\w*vnni\w*|\w*bf16\w*|\w*fp16\w*)$")
# the shared libraries of FFCV's extension (JPEG decoding, resize) whose versions move the pixels
FFCV_LIBRARIES = ("libturbojpeg", "libopencv_imgproc", "libopencv_core", "libopencv_imgcodecs")


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


# ---------------------------------------------------------------------------- the CPU
def cpu_info(cpuinfo: str | None = None) -> dict:
    """``{"vendor", "model", "isa_flags"}`` of the first CPU: from ``/proc/cpuinfo`` on Linux (or
    the text given), ``isa_flags`` the kernel-relevant flags (:data:`ISA_FLAG`), sorted, one
    string; elsewhere what :mod:`platform` knows, flags None."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():  # the first processor's block
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags") or fields.get("Features")  # x86 / arm64
    return {
        "vendor": fields.get("vendor_id") or fields.get("CPU implementer") or platform.processor() or None,
        "model": fields.get("model name") or fields.get("CPU part") or platform.machine() or None,
        "isa_flags": " ".join(sorted(f for f in flags.split() if ISA_FLAG.match(f))) if flags else None,
    }


# ---------------------------------------------------------------------------- torch's build
def torch_build() -> dict:
    """torch's version and commit, and the oneDNN / MKL versions and BLAS it was built with
    (from ``torch.__config__.show()``)."""
    import torch

    shown = torch.__config__.show()

    def find(pattern: str) -> str | None:
        match = re.search(pattern, shown)
        return match.group(1) if match else None

    return {
        "version": torch.__version__,
        "git": torch.version.git_version,
        "onednn": find(r"(?:MKL-DNN|oneDNN) v([\w.]+)"),
        "mkl": find(r"Math Kernel Library Version ([\w.]+)"),
        "blas": find(r"BLAS_INFO=(\w+)"),
    }


# ---------------------------------------------------------------------------- FFCV's libraries
def _soname_version(path: str) -> str:
    """``/lib/x86_64-linux-gnu/libopencv_imgproc.so.406`` -> ``4.6.0``: the version in the name
    of the file the link resolves to (``libopencv_imgproc.so.4.6.0``)."""
    name = Path(os.path.realpath(path)).name
    return name.split(".so.", 1)[1] if ".so." in name else name


@functools.lru_cache(maxsize=1)
def ffcv_libraries() -> dict | None:
    """The versions of the system libraries FFCV's compiled extension is linked to (JPEG decoding,
    the OpenCV of its resize): ``{"libturbojpeg": "0.2.0", "libopencv_imgproc": "4.6.0", ...}``,
    as ``ldd`` resolves them here; None without FFCV or ``ldd``. (The ``opencv-python`` wheel
    among the packages is another OpenCV, used by the synthetic rehearsal data only.)"""
    import importlib.util

    spec = importlib.util.find_spec("ffcv")
    if spec is None or not spec.submodule_search_locations or shutil.which("ldd") is None:
        return None
    extensions = sorted(Path(next(iter(spec.submodule_search_locations))).glob("_libffcv*.so"))
    if not extensions:
        return None
    try:
        out = subprocess.run(["ldd", str(extensions[0])], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = {}
    for line in out.splitlines():  # "libopencv_imgproc.so.406 => /lib/.../libopencv_imgproc.so.406 (0x...)"
        name, _, rest = line.strip().partition(" => ")
        stem = name.split(".so", 1)[0]
        if stem in FFCV_LIBRARIES:
            target = rest.split(" (", 1)[0].strip()
            found[stem] = _soname_version(target) if target.startswith("/") else "not found"
    return dict(sorted(found.items()))


# ---------------------------------------------------------------------------- packages
def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_packages() -> dict[str, str]:
    """Every installed distribution: ``{name: version}``, names lower-case with ``-`` for ``_``.
    The first of a name on ``sys.path`` (the one an import loads); copies vendored inside another
    package are not installed distributions and are left out: once setuptools is imported, its
    ``_vendor`` folder is on ``sys.path`` and its private ``packaging`` 26.3 would otherwise
    stand for the installed 26.4 (as it did in the runs recorded before this rule)."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        where = Path(str(dist.locate_file(""))).parts  # the folder on sys.path it was found in
        if name and "_vendor" not in where:
            found.setdefault(name.lower().replace("_", "-"), dist.version)
    return dict(sorted(found.items()))


@functools.lru_cache(maxsize=1)
def runtime_distributions() -> frozenset[str] | None:
    """The distributions this package needs to run (its requirements without extras, and
    theirs, transitively, with markers evaluated here), normalized names; the package itself
    is left out (its code is the git commit). None where it is not installed."""
    from packaging.requirements import Requirement

    try:
        metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(PACKAGE, frozenset())]
    while todo:
        name, extras = todo.pop()
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # a requirement whose marker holds but that is not installed: recorded as absent
        for text in requires:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            key = _normalize(req.name)
            if key not in seen:
                seen.add(key)
                todo.append((req.name, frozenset(req.extras)))
    seen.discard(_normalize(PACKAGE))
    return frozenset(seen)


def runtime_packages_sha256(packages: Mapping[str, str], runtime: frozenset[str] | None = None) -> str | None:
    """One hash over the versions of the runtime packages (:func:`runtime_distributions`) in a
    ``{name: version}`` record: what decides the numbers among the packages, so that a test
    tool added to the lock does not make results look stale. Computable from any recorded
    ``packages`` (committed results included: no retraining); a runtime package missing from
    the record counts as absent."""
    runtime = runtime_distributions() if runtime is None else runtime
    if runtime is None:
        return None
    recorded = {_normalize(name): version for name, version in packages.items()}
    text = "\n".join(f"{name}=={recorded.get(name, '(absent)')}" for name in sorted(runtime))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- the record
def environment(device: torch.device) -> dict:
    """What decides a run's numbers besides its config and code (see the module docstring):
    ``repro aggregate`` warns when the runs of one sweep differ in any of these
    (:mod:`imagenet_repro.analysis.environment`), and ``repro environment`` says whether a
    machine should give a committed sweep's numbers exactly."""
    import torch

    packages = installed_packages()
    cuda = None
    if device.type == "cuda":
        cuda = {"device": torch.cuda.get_device_name(device),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "driver": _nvidia_driver()}
    return {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpu": cpu_info(),
        "packages": packages,
        "runtime_packages_sha256": runtime_packages_sha256(packages),
        "lock_sha256": hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()[:16] if LOCK_FILE.is_file() else None,
        "torch_build": torch_build(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ffcv_libraries": ffcv_libraries(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "kernel_env": {name: os.environ.get(name) for name in KERNEL_VARIABLES},
        "cuda": cuda,
    }


def build_manifest(world_size: int, device: torch.device, previous: dict) -> dict:
    import torch

    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    env = environment(device)
    starts = list(previous.get("starts", [])) + [{"time": now, "host": socket.gethostname(), "world_size": world_size}]
    # a resume in another environment is kept in the record: its keys, at each such start
    changes = list(previous.get("environment_changes", []))
    if previous.get("environment") and previous["environment"] != env:
        from_flat, to_flat = flatten_environment(previous["environment"]), flatten_environment(env)
        changes.append({"time": now, "keys": sorted(k for k in from_flat.keys() | to_flat.keys()
                                                     if from_flat.get(k) != to_flat.get(k))})
    return {
        "git_commit": git_commit(),
        "packages": env["packages"],
        "python": env["python"],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "start_time": previous.get("start_time", now),
        "starts": starts,
        "end_time": None,
        "world_size": world_size,
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "environment": env,
        "environment_changes": changes,
        "argv": sys.argv,
    }
