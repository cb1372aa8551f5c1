"""manifest.json: where and with what a run was made (git commit, host, times, and the
environment that decides its numbers besides its config)."""
from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from imagenet_repro.rundir import flatten_environment

LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"  # the checkout's lock (an editable install)
# environment variables that change kernels or thread counts, hence the numbers
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")


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


def environment(device: torch.device) -> dict:
    """What decides a run's numbers besides its config and code: every installed distribution's
    version, torch's CPU kernel family (``ATEN_CPU_CAPABILITY`` picks another), the CUDA device
    with its driver, CUDA and cuDNN versions, and the thread counts. ``repro aggregate`` warns when
    the runs of one sweep differ in any of these (:mod:`imagenet_repro.analysis.environment`)."""
    packages = {dist.metadata["Name"].lower().replace("_", "-"): dist.version for dist in metadata.distributions()
                if dist.metadata["Name"]}
    cuda = None
    if device.type == "cuda":
        cuda = {"device": torch.cuda.get_device_name(device),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "driver": _nvidia_driver()}
    return {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "packages": dict(sorted(packages.items())),
        "lock_sha256": hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()[:16] if LOCK_FILE.is_file() else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "kernel_env": {name: os.environ.get(name) for name in KERNEL_VARIABLES},
        "cuda": cuda,
    }


def build_manifest(world_size: int, device: torch.device, previous: dict) -> dict:
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

