"""Sweep specs: one or more grids of runs in YAML, read as an OmegaConf structured config.

A spec names a base experiment config and/or inline overrides, the grid axes, where
the runs go, the SLURM resources of one run and a cost estimate::

    name: fig5                       # runs go to <runs_root>/<name>/<run_id>/
    runs_root: runs                  # default: runs (relative to the working directory)
    base: experiments/demo.yaml      # optional experiment config
    overrides: {train.epochs: 2}     # optional dotted keys applied over the base
    axes:                            # shared by every grid (here: the seeds)
      seed: [0, 1]
    grids:                           # optional: several grids in one sweep, each with its own
      - axes:                        #   optimizers, lr/wd values and optimizer-specific keys
          optimizer: [sgd, sgdc]     #   (optimizer is an alias of optim.name)
          optim.lr: [0.05, 0.1]
          optim.momentum: [0.9]
      - axes: {optimizer: [adamw, adamc], optim.lr: [1.0e-3, 2.0e-3]}
        overrides: {optim.betas: [0.9, 0.95]}
    gpu_hours_per_run: 20            # or gpu_hours_per_epoch (x train.epochs of each run)
    slurm: {partition: gpu, gpus_per_node: 8, timeout_min: 1440}
    local: {parallelism: 2}          # submitit local executor: runs at a time
    stages:                          # optional two-stage plan (see sweep/stages.py)
      - {name: search, seeds: [0]}
      - {name: confirm, seeds: [1], at: best, neighbours: false}

Without ``grids`` the spec's ``axes`` are the one grid.  The sweep is the union of its
grids: one folder, one ``status``/``aggregate``/``figures``.  A grid whose optimizer is of
another family than the base config's drops the base's optimizer keys the new optimizer
does not declare (``build_config``'s rule, as for ``repro train ... optim.name=adamw``).

The spec's own shape is checked by OmegaConf against :class:`SpecSchema` (unknown keys,
types); every grid point is a full :class:`~imagenet_repro.config.RunConfig` built with
the rules of :func:`~imagenet_repro.config.build_config`: one template per (grid,
optimizer) through ``build_config`` itself, each axis value typed by an OmegaConf merge
into that template (once per value, not per point), then the same ``validate`` and the
same :func:`~imagenet_repro.config.config_hash` (the run id) on every point.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from imagenet_repro.config import (
    Bound,
    ContainerView,
    build_config,
    check_bounds,
    config_hash,
    data_path_problem,
    merge_error,
    placement_problems,
    read_yaml,
    validate,
)
from imagenet_repro.errors import ConfigError
from imagenet_repro.paths import out_dir_problem
from imagenet_repro.rundir import DEFAULT_RUNS_ROOT

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

    def fingerprint(self) -> str:
        """Key of the plan cache: the spec and base config files (data, not code).  Every
        ``repro sweep`` (and ``--dry-run``) resolves the grid afresh and rewrites the cache,
        so a change of the config code reaches ``repro status`` at the next sweep."""
        h = hashlib.sha256(self.path.read_bytes())
        if self.base is not None:
            h.update(self.base.read_bytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class PlannedRun:
    """One grid point: its axis values, resolved config (plain container), id and folder."""

    point: dict  # canonical axis key -> value
    config: dict  # the resolved RunConfig as a plain container
    run_id: str
    run_dir: Path

    def label(self) -> str:
        return " ".join(f"{SHORT_NAMES.get(k, k)}={v}" for k, v in self.point.items()) or "(single run)"

    def config_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.config))


# ---------------------------------------------------------------------------- parsing
# ---------------------------------------------------------------------------- stages (see sweep.stages)
STAGE_AXES = ("optim.name", "optim.lr", "optim.weight_decay", "seed")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Stage:
    number: int  # 1 or 2
    name: str
    seeds: tuple
    at: str  # "grid" (stage 1) or "best" (stage 2)
    neighbours: bool = False

    def title(self) -> str:
        return f"stage {self.number} ({self.name})"


def parse_stages(path: Path, raw: Any, axes: dict) -> tuple[Stage, ...]:
    """The ``stages`` section of a spec (None: no stages); any problem is a one-line ConfigError."""
    if raw is None:
        return ()

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{path}: stages: {message}")

    if not isinstance(raw, list) or len(raw) != 2:
        raise fail("must be a list of exactly two stages (stage 1: the grid; stage 2: at: best)")
    if "seed" not in axes:
        raise fail("need a seed axis to split between the stages")
    others = [k for k in axes if k not in STAGE_AXES]
    if others:
        raise fail(f"axis {others[0]} is not supported with stages (allowed: optimizer, optim.lr, "
                   f"optim.weight_decay, seed)")
    allowed = ({"name", "seeds", "at"}, {"name", "seeds", "at", "neighbours"})
    stages: list[Stage] = []
    for number, (entry, keys) in enumerate(zip(raw, allowed), start=1):
        where = f"stage {number}"
        if not isinstance(entry, dict):
            raise fail(f"{where} must be a mapping like {{name: search, seeds: [0]}}")
        unknown = sorted(set(entry) - keys)
        if unknown:
            raise fail(f"unknown key in {where}: {', '.join(unknown)} (allowed: {', '.join(sorted(keys))})")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise fail(f"{where}: name must be a word like search or confirm (got {name!r})")
        seeds = entry.get("seeds")
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                 for s in seeds):
            raise fail(f"{where} ({name}): seeds must be a non-empty list of integers (got {seeds!r})")
        if len(set(seeds)) != len(seeds):
            raise fail(f"{where} ({name}): repeated seeds {seeds}")
        outside = [s for s in seeds if not any(same_value(s, v) for v in axes["seed"])]
        if outside:
            raise fail(f"{where} ({name}): seed {outside[0]} is not in the seed axis {axes['seed']}")
        at = entry.get("at", "grid" if number == 1 else None)
        expected = "grid" if number == 1 else "best"
        if at != expected:
            raise fail(f"{where} ({name}): at must be {expected} (got {at!r})")
        neighbours = entry.get("neighbours", False)
        if not isinstance(neighbours, bool):
            raise fail(f"{where} ({name}): neighbours must be true or false (got {neighbours!r})")
        stages.append(Stage(number, name, tuple(seeds), at, neighbours))
    first, second = stages
    if first.name == second.name:
        raise fail(f"both stages are named {first.name}")
    both = sorted(set(first.seeds) & set(second.seeds))
    if both:
        raise fail(f"seed {both[0]} is in both stages")
    left = [s for s in axes["seed"] if s not in first.seeds + second.seeds]
    if left:
        raise fail(f"seed {left[0]} of the seed axis is in no stage")
    return tuple(stages)


def _fail(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _flat(path: Path, what: str, raw: dict) -> dict:
    """Nested or dotted mapping -> {dotted key: value} (the optimizer alias resolved)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif prefix:
            flat[AXIS_ALIASES.get(prefix, prefix)] = node

    walk("", raw)
    return flat


def _parse_axes(path: Path, raw: dict, where: str = "axes") -> dict:
    axes: dict[str, list] = {}
    for key, values in raw.items():
        canon = AXIS_ALIASES.get(str(key), str(key))
        if canon in axes:
            raise _fail(path, f"axis {key} given twice (optimizer is an alias of optim.name)")
        if not isinstance(values, list) or not values:
            raise _fail(path, f"axis {key} must be a non-empty list of values")
        if any(isinstance(v, dict) for v in values):
            raise _fail(path, f"axis {key}: values must be scalars or lists, not mappings")
        seen = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(seen)) != len(seen):
            raise _fail(path, f"axis {key} has repeated values: {values}")
        axes[canon] = values
    return axes


def _spec_error(exc: OmegaConfBaseException) -> str:
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


def _check_spec(path: Path, spec: SpecSchema) -> None:
    if not spec.name or "/" in spec.name or spec.name.startswith("."):
        raise _fail(path, f"'name' must be a non-empty sweep name without '/' (got {spec.name!r})")
    if not spec.runs_root:
        raise _fail(path, "'runs_root' must be a folder path")
    s = spec.slurm
    values = {f"slurm.{k}": getattr(s, k) for k in SlurmSpec.__dataclass_fields__}
    values.update({"local.parallelism": spec.local.parallelism, "gpu_hours_per_run": spec.gpu_hours_per_run,
                   "gpu_hours_per_epoch": spec.gpu_hours_per_epoch, "target_top1": spec.target_top1})
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(path, f"{key} must be a finite number (got {value})")
    for key in ("nodes", "timeout_min", "array_parallelism"):
        if getattr(s, key) < 1:
            raise _fail(path, f"slurm.{key} must be an integer >= 1 (got {getattr(s, key)})")
    for key in ("gpus_per_node", "tasks_per_node", "cpus_per_task", "signal_delay_s", "max_timeout_requeues", "mem_gb"):
        if getattr(s, key) < 0:
            raise _fail(path, f"slurm.{key} must be >= 0 (got {getattr(s, key)})")
    if s.gpus_per_node and s.tasks_per_node and s.tasks_per_node != s.gpus_per_node:
        raise _fail(path, f"slurm.tasks_per_node ({s.tasks_per_node}) must equal slurm.gpus_per_node "
                          f"({s.gpus_per_node}): DDP runs one task per GPU")
    if spec.local.parallelism < 1:
        raise _fail(path, f"local.parallelism must be an integer >= 1 (got {spec.local.parallelism})")
    if spec.gpu_hours_per_run is not None and spec.gpu_hours_per_epoch is not None:
        raise _fail(path, "give gpu_hours_per_run or gpu_hours_per_epoch, not both")
    for key in ("gpu_hours_per_run", "gpu_hours_per_epoch"):
        value = getattr(spec, key)
        if value is not None and not value >= 0:
            raise _fail(path, f"{key} must be a number >= 0 (got {value})")
    if spec.target_top1 is not None and not 0 < spec.target_top1 <= 1:
        raise _fail(path, f"target_top1 must be a fraction in (0, 1] (got {spec.target_top1})")
    try:
        check_bounds({k: v for k, v in values.items() if v is not None}, SPEC_BOUNDS)
    except ConfigError as exc:
        raise _fail(path, str(exc)) from None
    if s.signal_delay_s >= s.timeout_min * 60:
        raise _fail(path, f"slurm.signal_delay_s ({s.signal_delay_s}) must be below the time limit "
                          f"slurm.timeout_min x 60 ({s.timeout_min * 60}): the checkpoint signal would come at the start")


def check_paths(spec: "SweepSpec", runs: list["PlannedRun"], dry_run: bool) -> list[str]:
    """The spec's paths at plan time (``--dry-run`` included), before anything is written or
    submitted: the sweep folder must be (or can be created as) a folder this user can write
    into (the launcher writes claims and logs there); a data path that exists here must be
    the right kind (a ``.beton`` file for ffcv, a folder for an ImageFolder) and readable.
    A data path missing here is an error for a submission and, for ``--dry-run``, one of the
    returned warnings (it must exist only where the jobs run)."""
    for what, folder in (("runs_root", spec.runs_root), ("sweep folder", spec.sweep_dir)):
        problem = out_dir_problem(folder)
        if problem is not None:
            raise _fail(spec.path, f"{what} {str(folder)!r} {problem}")
    missing: list[str] = []
    seen: set[tuple[str, str]] = set()
    for run in runs:
        for key in ("train_path", "val_path"):
            path = run.config["data"][key]
            if (key, path) in seen:
                continue
            seen.add((key, path))
            problem = data_path_problem(run.config, key)
            if problem == "does not exist":
                if path not in missing:
                    missing.append(path)
            elif problem is not None:
                raise _fail(spec.path, f"grid point {run.label()}: data.{key} {problem}: {path}")
    if missing and not dry_run:
        raise ConfigError(f"data path does not exist: {missing[0]} (grid of {spec.name}; --dry-run to plan anyway)")
    return sorted(missing)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; any problem raises a one-line ConfigError."""
    path = Path(path)
    loaded = read_yaml(path, what="sweep spec")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SpecSchema), loaded)
        schema: SpecSchema = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _fail(path, _spec_error(exc)) from None
    except TypeError as exc:  # OmegaConf: a mapping where a list belongs, or the reverse
        raise _fail(path, f"a section has the wrong shape: {exc}") from None
    _check_spec(path, schema)
    base_path = None
    if schema.base is not None:
        base_path = next((c for c in (Path(schema.base), path.parent / schema.base) if c.is_file()), None)
        if base_path is None:
            raise _fail(path, f"base config not found: {schema.base}")
        base_path = base_path.resolve()
    plain = OmegaConf.to_container(merged, resolve=True)
    overrides = _flat(path, "overrides", plain["overrides"] or {})
    shared = _parse_axes(path, plain["axes"] or {})
    grids = []
    for i, g in enumerate(plain["grids"] or [{"axes": {}, "overrides": {}}]):
        own = _parse_axes(path, g["axes"] or {}, where=f"grids[{i}].axes")
        twice = sorted(set(own) & set(shared))
        if twice:
            raise _fail(path, f"grids[{i}]: axis {twice[0]} is also a shared axis")
        grid_over = _flat(path, f"grids[{i}].overrides", g["overrides"] or {})
        axes = {**own, **shared}
        both = sorted((set(overrides) | set(grid_over)) & set(axes))
        if both:
            raise _fail(path, f"{both[0]} is both an override and an axis")
        grids.append(Grid(axes, grid_over))
    union: dict[str, list] = {}
    for grid in grids:
        for key, values in grid.axes.items():
            union.setdefault(key, [])
            union[key] += [v for v in values if not any(same_value(v, u) for u in union[key])]
    stages = parse_stages(path, plain["stages"], union)
    return SweepSpec(path=path, name=schema.name, runs_root=Path(schema.runs_root).resolve(), base=base_path,
                     overrides=overrides, axes=union, slurm=schema.slurm, local=schema.local,
                     gpu_hours_per_run=schema.gpu_hours_per_run, gpu_hours_per_epoch=schema.gpu_hours_per_epoch,
                     stages=stages, grids=tuple(grids), target_top1=schema.target_top1)


def as_spec(spec: "SweepSpec | str | Path") -> SweepSpec:
    """A loaded spec as it is, or the spec YAML at ``spec`` loaded (the analysis takes either:
    the CLI passes paths, the rehearsal its own specs)."""
    return spec if isinstance(spec, SweepSpec) else load_spec(spec)


# ---------------------------------------------------------------------------- grid
def grid_points(spec: SweepSpec) -> list[dict]:
    """Every point of every grid, grid by grid (in each, the last axis varies fastest)."""
    return [p for grid in spec.grids for p in grid.points()]


def _parse_value(text: str) -> Any:
    """A ``--only`` value as YAML reads it (0.1 -> float, sgd -> str)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b or str(a) == str(b)


def select_points(spec: SweepSpec, points: list[dict], only: Iterable[str]) -> list[dict]:
    """Keep the points matching every ``KEY=VAL`` (repeated keys: any of their values)."""
    wanted: dict[str, list] = {}
    for item in only:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"--only {item!r} is not of the form KEY=VAL")
        key, text = item.split("=", 1)
        canon = AXIS_ALIASES.get(key, key)
        if canon not in spec.axes:
            raise ConfigError(f"--only {key}: not an axis of {spec.name} (axes: {', '.join(spec.axes) or 'none'})")
        value = _parse_value(text)
        if not any(same_value(value, v) for v in spec.axes[canon]):
            raise ConfigError(f"--only {item}: no grid point has this value (values: {spec.axes[canon]})")
        wanted.setdefault(canon, []).append(value)
    return [p for p in points if all(any(same_value(p[k], v) for v in vs) for k, vs in wanted.items())]


# ---------------------------------------------------------------------------- resolution
def _nest(dotted: dict) -> dict:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _grid_of(spec: SweepSpec, point: dict) -> Grid:
    for grid in spec.grids:
        if grid.holds(point):
            return grid
    raise ConfigError(f"{spec.path}: {PlannedRun(point, {}, '', Path()).label()} is not a point of any grid")


class _Templates:
    """Resolved configs per (grid, optimizer) and typed axis values, each built once.

    A template is ``build_config(base, overrides, grid overrides, name, optimizer)``; an axis
    value is typed by merging it into its template with OmegaConf (so ``0.1`` -> float,
    ``"3"`` -> int, a wrong type or an undeclared key -> ConfigError), exactly as
    ``build_config`` would type it."""

    def __init__(self, spec: SweepSpec) -> None:
        self.base = OmegaConf.load(spec.base) if spec.base is not None else OmegaConf.create()
        self.spec = spec
        self.configs: dict[tuple, DictConfig] = {}
        self.containers: dict[tuple, dict] = {}
        self.values: dict[tuple, Any] = {}

    def template(self, grid: Grid, optim_name: Any) -> tuple[tuple, dict]:
        key = (id(grid), json.dumps(optim_name))
        if key not in self.configs:
            extra = [{"optim": {"name": optim_name}}] if optim_name is not None else []
            cfg = build_config(self.base, _nest(self.spec.overrides), _nest(grid.overrides), {"name": self.spec.name},
                               *extra, check_paths=False)
            self.configs[key] = cfg
            self.containers[key] = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        return key, self.containers[key]

    def typed(self, key: tuple, dotted: str, value: Any) -> Any:
        vkey = (key, dotted, json.dumps(value, sort_keys=True))
        if vkey not in self.values:
            cfg = self.configs[key]
            if OmegaConf.select(cfg, dotted, default=MISSING) is MISSING:
                raise ConfigError(f"unknown config key: {dotted}")
            if isinstance(OmegaConf.select(cfg, dotted), DictConfig):
                raise ConfigError(f"{dotted} is a section, not a value")
            try:
                merged = OmegaConf.merge(cfg, _nest({dotted: value}))
            except OmegaConfBaseException as exc:
                raise merge_error(exc) from None
            node = OmegaConf.select(merged, dotted)
            if OmegaConf.is_config(node):
                node = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
            elif isinstance(node, Enum):
                node = node.name
            self.values[vkey] = node
        return self.values[vkey]


def _set(container: dict, dotted: str, value: Any) -> None:
    node = container
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = copy.deepcopy(value)


def resolve_runs(spec: SweepSpec, points: Optional[list[dict]] = None) -> list[PlannedRun]:
    """Resolve and validate every grid point (data paths are checked separately).

    Raises ConfigError naming the first bad point; two points with the same run id are
    an error too (an axis that changes nothing, or a value repeated under two spellings).
    """
    points = grid_points(spec) if points is None else points
    templates = _Templates(spec)
    runs: list[PlannedRun] = []
    by_id: dict[str, dict] = {}
    for point in points:
        label = PlannedRun(point, {}, "", Path()).label()
        try:
            key, template = templates.template(_grid_of(spec, point), point.get("optim.name"))
            container = copy.deepcopy(template)
            for k, v in point.items():
                if k != "optim.name":
                    _set(container, k, templates.typed(key, k, v))
            validate(ContainerView(container), check_paths=False)
        except ConfigError as exc:
            raise ConfigError(f"grid point {label}: {exc}") from None
        run_id = config_hash(container)
        if run_id in by_id:
            other = PlannedRun(by_id[run_id], {}, "", Path()).label()
            raise ConfigError(f"grid points {other} and {label} resolve to the same run {run_id}")
        by_id[run_id] = point
        runs.append(PlannedRun(point, container, run_id, spec.sweep_dir / run_id))
    return runs


def check_placements(spec: SweepSpec, runs: list[PlannedRun]) -> None:
    """Refuse (ConfigError) a grid whose runs would be rejected at start on the spec's resources.

    The rules are :func:`imagenet_repro.config.placement_problems`, the ones the trainer
    applies at start, evaluated for ``slurm.nodes x tasks`` ranks and ``slurm.gpus_per_node``."""
    world, has_gpu = spec.slurm.world_size, spec.slurm.gpus_per_node > 0
    for run in runs:
        problems = placement_problems(run.config, world, has_gpu)
        if problems:
            where = f"{spec.slurm.nodes} node(s) x {spec.slurm.tasks} task(s)"
            raise ConfigError(f"{spec.path}: grid point {run.label()}: {problems[0]} [resources: {where}]")


def run_hours(spec: SweepSpec, run: PlannedRun) -> Optional[float]:
    """Estimated GPU-hours of one run, from the spec (None: no estimate given)."""
    if spec.gpu_hours_per_run is not None:
        return spec.gpu_hours_per_run
    if spec.gpu_hours_per_epoch is not None:
        return spec.gpu_hours_per_epoch * run.config["train"]["epochs"]
    return None
