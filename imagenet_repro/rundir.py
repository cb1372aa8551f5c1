"""The run directory contract: the files of one run, and its status.

One run = one directory holding everything needed to plot it and to resume it::

    config.yaml       fully resolved RunConfig
    manifest.json     git commit, package versions, host, start/end time, world size
    status.json       {"state": "running"|"done"|"failed"|"diverged", "reason", "pid", "host", ...}
    steps.parquet     one row per step (columns and dtypes: :data:`STEPS_SCHEMA`)
    layers.parquet    one row per (step, normalized layer) every ``telemetry.layer_every`` steps
                      (:data:`LAYERS_SCHEMA`)
    eval.parquet      one row per evaluation: epoch, step, top1, top5, loss, images (:data:`EVAL_SCHEMA`)
    checkpoints/      last.pt (model, optimizer, schedule, step, RNG states, loader position)
                      and prev.pt, the one before it, each with a .sha256 sidecar
                      (see train.checkpoint: verified on resume, prev.pt the fallback)

The tables' schemas below are the one declaration of their columns: the trainer writes
them (:mod:`imagenet_repro.train.telemetry`), the analysis reads them, the tests check
them.  Two learning rates appear in the suite's tables, each under its own name: ``lr`` is
the step's γ_t (``steps.parquet``, a sweep's ``curves.parquet``); ``lr_max`` is the schedule's
peak γ_max, the config's ``optim.lr`` (a sweep's ``runs.parquet``, ``configs.csv``,
``summary.csv``'s ``best_lr_max``, ``paired.csv``'s ``plain_lr_max`` and ``corrected_lr_max``).

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

# ---- the run tables: column -> dtype, in file order -------------------------------------
STEPS_SCHEMA: dict[str, str] = {
    "step": "int64", "epoch": "int64",
    "lr": "float64",                      # γ_t of this step
    "loss": "float64", "grad_norm": "float64", "weight_norm": "float64",
    "grad_norm_normalized": "float64",    # ||g_N||, ||x_N||: the normalized layers together
    "weight_norm_normalized": "float64",
    "images_per_s": "float64",
    # means over the normalized layers, on the per-layer steps (NaN on the others; see LAYERS_SCHEMA)
    "angular_update_normalized": "float64", "predicted_rotation_normalized": "float64",
    "update_grad_cos_normalized": "float64", "eps_fraction_normalized": "float64",
}
LAYERS_SCHEMA: dict[str, str] = {
    "step": "int64", "layer": "object",
    "grad_norm": "float64", "weight_norm": "float64",  # ||g_t||, ||x_t|| before the step
    "ratio": "float64", "predicted_ratio": "float64",  # ||g||/||x|| and the theory's steady state
    "angular_update": "float64",          # angle(x_t, x_{t+1}), radians (train.health)
    "relative_update": "float64",         # ||x_{t+1} - x_t|| / ||x_t||
    "predicted_rotation": "float64",      # the theory's steady-state rotation (optim.equilibrium)
    "update_grad_cos": "float64",         # cos(-Δx, g): Adam-family only, else NaN
    "eps_fraction": "float64",            # share of coordinates with sqrt(v̂) < 10ε: Adam-family only
}
EVAL_SCHEMA: dict[str, str] = {"epoch": "int64", "step": "int64", "top1": "float64", "top5": "float64",
                               "loss": "float64", "images": "int64"}
RUN_TABLES = {STEPS: STEPS_SCHEMA, LAYERS: LAYERS_SCHEMA, EVAL: EVAL_SCHEMA}

# ---- a sweep's results folder (results/<sweep>/): what the analysis writes ------------------
RUNS_TABLE = "runs.parquet"              # one row per run (lr_max: γ_max, the config's optim.lr)
CURVES_TABLE = "curves.parquet"          # binned step curves + eval rows per run (lr: γ_t)
CONFIGS_TABLE = "configs.csv"
SUMMARY_TABLE = "summary.csv"
PAIRED_TABLE = "paired.csv"
ENVIRONMENT = "environment.json"
THEORY_AGREEMENT = "theory_agreement.csv"
THEORY_SUMMARY = "theory_summary.csv"
FIGURES_DIR = "figures"
REPORT = "report.html"


def typed(frame, schema: dict[str, str]):
    """``frame`` with exactly the columns of ``schema``, in its order and dtypes (a column the
    frame lacks, e.g. in a run folder written before it existed, comes back NaN)."""
    frame = frame.reindex(columns=list(schema))
    return frame.astype({c: t for c, t in schema.items() if t != "object"})


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
