"""The run directory contract: the files of one run, and its status.

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

Every file appears atomically (:mod:`imagenet_repro.files`), so a reader never sees half a file.
"""
from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Optional

from imagenet_repro.files import atomic_write_json, read_json


class RunState(StrEnum):
    """Every state a run is shown in, in the order tables list them: the suite's one list.

    The trainer writes the first five into ``status.json`` (:data:`WRITTEN_STATES`);
    ``repro status`` adds what the scheduler says of a run that is not final (``queued``,
    ``unknown``; see :mod:`imagenet_repro.sweep.status`) and the analysis marks a run whose
    files cannot be read ``corrupt``.  A member *is* its string (``RunState.done == "done"``)."""

    done = "done"          # trained to the end (final: never resubmitted)
    diverged = "diverged"  # a non-finite loss or gradient ended it (final)
    running = "running"    # the trainer is at work
    queued = "queued"      # submitted, not started yet (scheduler)
    failed = "failed"      # stopped by an error, a signal or a time limit; resumable
    pending = "pending"    # never started
    unknown = "unknown"    # its job's fate cannot be told (scheduler unreachable)
    corrupt = "corrupt"    # its files cannot be read (analysis)


WRITTEN_STATES = (RunState.pending, RunState.running, RunState.done, RunState.failed, RunState.diverged)
FINAL_STATES = (RunState.done, RunState.diverged)

DEFAULT_RUNS_ROOT = "runs"  # where `repro train` and a spec without runs_root put runs

CONFIG = "config.yaml"
MANIFEST = "manifest.json"
STATUS = "status.json"
STEPS = "steps.parquet"
LAYERS = "layers.parquet"
EVAL = "eval.parquet"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "checkpoints/last.pt"


def read_status(run_dir: str | Path) -> dict:
    status = read_json(Path(run_dir) / STATUS)
    if status is None:
        return {"state": RunState.pending}
    return status


def write_status(run_dir: str | Path, state: str, **extra: Any) -> None:
    assert state in WRITTEN_STATES, state
    current = read_json(Path(run_dir) / STATUS) or {}
    current.update(extra)
    current["state"] = state
    atomic_write_json(Path(run_dir) / STATUS, current)


def process_start(pid: int) -> Optional[str]:
    """Start time of a process (field 22 of /proc/PID/stat), to tell a reused pid apart: status.json
    records the trainer's pid, its start and host, so a run whose process died is recognised."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]  # a zombie has finished


def flatten_environment(env: dict, prefix: str = "") -> dict[str, str]:
    """A manifest's ``environment`` as dotted keys: ``{"packages": {"numpy": "2.4.6"}, "cuda": None}``
    -> ``{"packages.numpy": "2.4.6", "cuda": "None"}`` (what ``repro aggregate`` compares across runs)."""
    flat: dict[str, str] = {}
    for key, value in env.items():
        if isinstance(value, dict):
            flat.update(flatten_environment(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat
