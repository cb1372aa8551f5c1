"""manifest.json: where and with what a run was made (git commit, versions, host, times)."""
from __future__ import annotations

import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("imagenet_repro", "torch", "torchvision", "timm", "ffcv", "numpy", "numba", "submitit", "omegaconf",
            "pandas", "pyarrow")


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


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def build_manifest(world_size: int, device: torch.device, previous: dict) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    starts = list(previous.get("starts", [])) + [{"time": now, "host": socket.gethostname()}]
    return {
        "git_commit": git_commit(),
        "packages": {name: _version(name) for name in PACKAGES},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "start_time": previous.get("start_time", now),
        "starts": starts,
        "end_time": None,
        "world_size": world_size,
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "argv": sys.argv,
    }
