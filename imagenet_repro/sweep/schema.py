"""A sweep spec's shape: the OmegaConf schema of its YAML, its bounds and checks, and the
loaded :class:`SweepSpec` with its :class:`Grid` s (read by :func:`.spec.load_spec`).

``SpecSchema`` is what OmegaConf merges the YAML into (unknown keys and wrong types are
refused there, :func:`shape_error` says so in the spec's words); :func:`check_schema` adds
what types cannot say (ranges, :data:`SPEC_BOUNDS`, the checkpoint signal before the time
limit).  Every problem is a one-line :class:`~imagenet_repro.errors.ConfigError` that
names the spec file (:func:`spec_error`).
"""
from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING
from omegaconf.errors import OmegaConfBaseException

from imagenet_repro.bounds import Bound, check_bounds
from imagenet_repro.config import merge_error
from imagenet_repro.errors import ConfigError
from imagenet_repro.rundir import DEFAULT_RUNS_ROOT
from imagenet_repro.sweepdir import SweepDescription

AXIS_ALIASES = {"optimizer": "optim.name"}
SHORT_NAMES = {"optim.name": "optimizer", "optim.lr": "lr", "optim.weight_decay": "wd"}


@dataclass(frozen=True)
class SlurmSpec:
    """Resources of one run (one array task); names follow submitit's executor parameters."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0  # 0: one task per GPU (DDP), or 1 without GPUs
    cpus_per_task: int = 0  # 0: SLURM's default
    mem_gb: float = 0.0  # per node; 0: SLURM's default (DefMemPerCPU)
    timeout_min: int = 60
    array_parallelism: int = 256  # array tasks running at once
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: checkpoint and requeue
    max_timeout_requeues: int = 3  # requeues after hitting the time limit (preemptions: unlimited)
    setup: List[str] = field(default_factory=list)  # shell lines run before the job (module load ...)
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # other sbatch options: {mail-type: END}

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        """DDP ranks of one run: nodes x tasks per node."""
        return self.nodes * self.tasks


@dataclass(frozen=True)
class LocalSpec:
    """submitit's local executor (no SLURM): runs are split into ``parallelism`` lanes."""

    parallelism: int = 1


@dataclass
class GridSchema:
    axes: Optional[Dict[str, Any]] = None  # dotted config key -> list of values
    overrides: Optional[Dict[str, Any]] = None  # this grid's own fixed keys


@dataclass
class SpecSchema:
    """What a sweep spec YAML may hold (OmegaConf rejects other keys and wrong types)."""

    name: str = MISSING
    runs_root: str = DEFAULT_RUNS_ROOT
    base: Optional[str] = None
    overrides: Optional[Dict[str, Any]] = None  # None (an empty YAML key): none
    axes: Optional[Dict[str, Any]] = None
    grids: Optional[List[GridSchema]] = None
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    local: LocalSpec = field(default_factory=LocalSpec)
    gpu_hours_per_run: Optional[float] = None
    gpu_hours_per_epoch: Optional[float] = None
    target_top1: Optional[float] = None  # time-to-target threshold for the analysis (fraction)
    stages: Optional[Any] = None  # checked by parse_stages


@dataclass(frozen=True)
class Grid:
    """One grid of a sweep: its axes (its own and the spec's shared ones) and its overrides."""

    axes: dict  # canonical dotted key -> list of values, in spec order
    overrides: dict  # dotted key -> value

    def points(self) -> list[dict]:
        keys = list(self.axes)
        return [dict(zip(keys, combo)) for combo in itertools.product(*self.axes.values())]

    def holds(self, point: dict) -> bool:
        return set(point) == set(self.axes) and all(any(same_value(point[k], v) for v in self.axes[k]) for k in point)


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    name: str
    runs_root: Path  # absolute
    base: Optional[Path]
    overrides: dict  # dotted key -> value
    axes: dict  # canonical dotted key -> every value it takes in any grid, in spec order
    slurm: SlurmSpec
    local: LocalSpec
    gpu_hours_per_run: Optional[float] = None
    gpu_hours_per_epoch: Optional[float] = None
    stages: tuple = ()  # two-stage plan, see :mod:`.stages` (empty: one grid)
    grids: tuple = ()  # the Grids; one for a spec without ``grids``
    target_top1: Optional[float] = None

    @property
    def sweep_dir(self) -> Path:
        return self.runs_root / self.name

    def description(self) -> SweepDescription:
        """What the analysis reads of this sweep (``sweep.json`` in its folder, :mod:`imagenet_repro.sweepdir`)."""
        stages = tuple({"number": s.number, "name": s.name, "seeds": list(s.seeds), "at": s.at,
                        "neighbours": s.neighbours} for s in self.stages)
        return SweepDescription(name=self.name, folder=self.sweep_dir, axes=self.axes, target_top1=self.target_top1,
                                stages=stages, spec=str(self.path))

    def fingerprint(self) -> str:
        """Key of the plan cache: the spec and base config files (data, not code).  Every
        ``repro sweep`` (and ``--dry-run``) resolves the grid afresh and rewrites the cache,
        so a change of the config code reaches ``repro status`` at the next sweep."""
        h = hashlib.sha256(self.path.read_bytes())
        if self.base is not None:
            h.update(self.base.read_bytes())
        return h.hexdigest()[:16]


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b or str(a) == str(b)


def spec_error(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def shape_error(exc: OmegaConfBaseException) -> str:
    """OmegaConf's complaint about the spec's shape, in the spec's words (one line)."""
    key = str(getattr(exc, "full_key", "") or "")
    if type(exc).__name__ == "ConfigKeyError" and key:
        schema = getattr(exc, "object_type", None)
        where = {SlurmSpec: "slurm", LocalSpec: "local", GridSchema: "a grid"}.get(schema, "the sweep spec")
        name = key.rpartition(".")[2]
        allowed = f" (allowed: {', '.join(sorted(schema.__dataclass_fields__))})" if schema else ""
        return f"unknown key in {where}: {name}{allowed}"
    if type(exc).__name__ == "MissingMandatoryValue" and key:
        return f"'{key}' is missing (every spec names its sweep: runs go to <runs_root>/<name>/)"
    return str(merge_error(exc))


# Every numeric field of a spec (tests/test_bounds.py fails on one missing here); the run
# configs of its grid points are bounded by imagenet_repro.config.BOUNDS.
SPEC_BOUNDS: dict[str, Bound] = {
    "slurm.nodes": Bound(1, 1024, "more nodes than one run of this suite can use"),
    "slurm.gpus_per_node": Bound(0, 64, "no node has that many GPUs"),
    "slurm.tasks_per_node": Bound(0, 256, "DDP runs one task per GPU"),
    "slurm.cpus_per_task": Bound(0, 1024, "no node has that many cores"),
    "slurm.mem_gb": Bound(0, 65536, "no node has 64 TiB of memory"),
    "slurm.timeout_min": Bound(1, 525_600, "SLURM time limits beyond a year are a typo"),
    "slurm.array_parallelism": Bound(1, 1_000_000, "beyond SLURM's MaxArraySize"),
    "slurm.signal_delay_s": Bound(0, 86_400, "must also be below the time limit"),
    "slurm.max_timeout_requeues": Bound(0, 1000, "a run requeued that often never ends"),
    "local.parallelism": Bound(1, 1024, "runs at a time on this one machine"),
    "gpu_hours_per_run": Bound(0, 1e7, "a typo: the flagship's runs take ~25"),
    "gpu_hours_per_epoch": Bound(0, 1e7, "a typo: the flagship's epochs take ~0.12"),
    "target_top1": Bound(0, 1, lo_open=True, interval=True),
}


def check_schema(path: Path, spec: SpecSchema) -> None:
    if not spec.name or "/" in spec.name or spec.name.startswith("."):
        raise spec_error(path, f"'name' must be a non-empty sweep name without '/' (got {spec.name!r})")
    if not spec.runs_root:
        raise spec_error(path, "'runs_root' must be a folder path")
    s = spec.slurm
    values = {f"slurm.{k}": getattr(s, k) for k in SlurmSpec.__dataclass_fields__}
    values.update({"local.parallelism": spec.local.parallelism, "gpu_hours_per_run": spec.gpu_hours_per_run,
                   "gpu_hours_per_epoch": spec.gpu_hours_per_epoch, "target_top1": spec.target_top1})
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise spec_error(path, f"{key} must be a finite number (got {value})")
    for key in ("nodes", "timeout_min", "array_parallelism"):
        if getattr(s, key) < 1:
            raise spec_error(path, f"slurm.{key} must be an integer >= 1 (got {getattr(s, key)})")
    for key in ("gpus_per_node", "tasks_per_node", "cpus_per_task", "signal_delay_s", "max_timeout_requeues", "mem_gb"):
        if getattr(s, key) < 0:
            raise spec_error(path, f"slurm.{key} must be >= 0 (got {getattr(s, key)})")
    if s.gpus_per_node and s.tasks_per_node and s.tasks_per_node != s.gpus_per_node:
        raise spec_error(path, f"slurm.tasks_per_node ({s.tasks_per_node}) must equal slurm.gpus_per_node "
                          f"({s.gpus_per_node}): DDP runs one task per GPU")
    if spec.local.parallelism < 1:
        raise spec_error(path, f"local.parallelism must be an integer >= 1 (got {spec.local.parallelism})")
    if spec.gpu_hours_per_run is not None and spec.gpu_hours_per_epoch is not None:
        raise spec_error(path, "give gpu_hours_per_run or gpu_hours_per_epoch, not both")
    for key in ("gpu_hours_per_run", "gpu_hours_per_epoch"):
        value = getattr(spec, key)
        if value is not None and not value >= 0:
            raise spec_error(path, f"{key} must be a number >= 0 (got {value})")
    if spec.target_top1 is not None and not 0 < spec.target_top1 <= 1:
        raise spec_error(path, f"target_top1 must be a fraction in (0, 1] (got {spec.target_top1})")
    try:
        check_bounds({k: v for k, v in values.items() if v is not None}, SPEC_BOUNDS)
    except ConfigError as exc:
        raise spec_error(path, str(exc)) from None
    if s.signal_delay_s >= s.timeout_min * 60:
        raise spec_error(path, f"slurm.signal_delay_s ({s.signal_delay_s}) must be below the time limit "
                          f"slurm.timeout_min x 60 ({s.timeout_min * 60}): the checkpoint signal would come at the start")


