"""The run directory contract, and atomic file writes.

One run = one directory holding everything needed to plot it and to resume it::

    config.yaml       fully resolved RunConfig
    manifest.json     git commit, package versions, host, start/end time, world size
    status.json       {"state": "running"|"done"|"failed"|"diverged", "reason", "pid", "host", ...}
    steps.parquet     one row per step (see train.telemetry.STEP_COLUMNS)
    layers.parquet    one row per (step, normalized layer)
    eval.parquet      one row per epoch: epoch, step, top1, top5, loss
    checkpoints/      last.pt (model, optimizer, schedule, step, RNG states, loader position)
                      and prev.pt, the one before it, each with a .sha256 sidecar
                      (see train.checkpoint: verified on resume, prev.pt the fallback)

Every file appears atomically: written to a temporary name in the same folder, flushed,
then renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

STATES = ("pending", "running", "done", "failed", "diverged")
FINAL_STATES = ("done", "diverged")

CONFIG = "config.yaml"
MANIFEST = "manifest.json"
STATUS = "status.json"
STEPS = "steps.parquet"
LAYERS = "layers.parquet"
EVAL = "eval.parquet"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "checkpoints/last.pt"
PREV_CHECKPOINT = "checkpoints/prev.pt"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's default 0600 hides files from colleagues


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_parquet(path: str | Path, frame) -> None:
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def read_json(path: str | Path) -> dict | None:
    """The JSON object at ``path``, or None if missing or unreadable."""
    try:
        with open(path) as fh:
            obj = json.load(fh)
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None


def read_status(run_dir: str | Path) -> dict:
    status = read_json(Path(run_dir) / STATUS)
    if status is None:
        return {"state": "pending"}
    return status


def write_status(run_dir: str | Path, state: str, **extra: Any) -> None:
    assert state in STATES, state
    current = read_json(Path(run_dir) / STATUS) or {}
    current.update(extra)
    current["state"] = state
    atomic_write_json(Path(run_dir) / STATUS, current)
