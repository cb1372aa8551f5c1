"""Sweep specs: a grid of runs in YAML, parsed strictly and resolved into run configs.

A spec names a base experiment config and/or inline overrides, the grid axes, where
the runs go, the SLURM resources of one run and a cost estimate::

    name: fig5                       # runs go to <runs_root>/<name>/<run_id>/
    runs_root: runs                  # default: runs (relative to the working directory)
    base: experiments/demo.yaml      # optional experiment config
    overrides: {train.epochs: 2}     # optional dotted keys applied over the base
    axes:                            # the grid: the product of every axis
      optimizer: [sgd, sgdc]         # alias of optim.name
      optim.lr: [0.05, 0.1]
      seed: [0, 1]
    gpu_hours_per_run: 20            # or gpu_hours_per_epoch (x train.epochs of each run)
    slurm: {partition: gpu, gpus_per_node: 8, timeout_min: 1440}
    local: {parallelism: 2}          # submitit local executor: runs at a time
    stages:                          # optional two-stage plan (see sweep/stages.py)
      - {name: search, seeds: [0]}
      - {name: confirm, seeds: [1], at: best, neighbours: false}

Every grid point becomes a full :class:`~imagenet_repro.config.RunConfig`; its run id is
:func:`~imagenet_repro.config.config_hash` of that config.  Resolving goes through
``build_config`` once per optimizer (the only key that changes the config's structure),
then sets each point's values on a copy with the same type rules and runs the same
semantic ``validate``: hundreds of points resolve in well under a second, with run ids
equal to ``config_hash(build_config(...))`` (checked by the tests).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from imagenet_repro.config import ConfigError, build_config, placement_problems, read_yaml, validate

AXIS_ALIASES = {"optimizer": "optim.name"}
SHORT_NAMES = {"optim.name": "optimizer", "optim.lr": "lr", "optim.weight_decay": "wd"}
TOP_KEYS = {"name", "runs_root", "base", "overrides", "axes", "slurm", "local", "gpu_hours_per_run",
            "gpu_hours_per_epoch", "stages"}
DEFAULT_RUNS_ROOT = "runs"


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
    mem_gb: float = 0  # per node; 0: SLURM's default (DefMemPerCPU)
    timeout_min: int = 60
    array_parallelism: int = 256  # array tasks running at once
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: checkpoint and requeue
    max_timeout_requeues: int = 3  # requeues after hitting the time limit (preemptions: unlimited)
    setup: tuple[str, ...] = ()  # shell lines run before the job (module load ..., source ...)
    additional_parameters: dict = field(default_factory=dict)  # any other sbatch option: {"mail-type": "END"}

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


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    name: str
    runs_root: Path  # absolute
    base: Optional[Path]
    overrides: dict  # dotted key -> value
    axes: dict  # canonical dotted key -> list of values, in spec order
    slurm: SlurmSpec
    local: LocalSpec
    gpu_hours_per_run: Optional[float] = None
    gpu_hours_per_epoch: Optional[float] = None
    stages: tuple = ()  # two-stage plan, see :mod:`.stages` (empty: one grid)

    @property
    def sweep_dir(self) -> Path:
        return self.runs_root / self.name

    def fingerprint(self) -> str:
        """Changes whenever the resolved runs could: spec, base config, config code."""
        import imagenet_repro

        h = hashlib.sha256(self.path.read_bytes())
        if self.base is not None:
            h.update(self.base.read_bytes())
        pkg = Path(imagenet_repro.__file__).parent
        for src in [pkg / "config.py", *sorted((pkg / "optim").glob("*.py"))]:
            h.update(src.read_bytes())
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
def _fail(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _check_keys(path: Path, where: str, got: Iterable[str], allowed: Iterable[str]) -> None:
    unknown = sorted(set(got) - set(allowed))
    if unknown:
        raise _fail(path, f"unknown key{'s' if len(unknown) > 1 else ''} in {where}: {', '.join(unknown)} "
                          f"(allowed: {', '.join(sorted(allowed))})")


def _number(path: Path, key: str, value: Any, kind: type, minimum: float) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or value < minimum:
        raise _fail(path, f"{key} must be {'an integer' if kind is int else 'a number'} >= {minimum} (got {value!r})")
    return kind(value)


def _parse_slurm(path: Path, raw: Any) -> SlurmSpec:
    if raw is None:
        return SlurmSpec()
    if not isinstance(raw, dict):
        raise _fail(path, "slurm must be a mapping")
    fields_ = SlurmSpec.__dataclass_fields__
    _check_keys(path, "slurm", raw, fields_)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        default = fields_[key].default
        if key in ("partition", "account", "qos", "constraint"):
            if value is not None and not isinstance(value, str):
                raise _fail(path, f"slurm.{key} must be a string (got {value!r})")
            out[key] = value
        elif key == "setup":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise _fail(path, "slurm.setup must be a list of shell lines")
            out[key] = tuple(value)
        elif key == "additional_parameters":
            if not (isinstance(value, dict) and all(isinstance(v, (str, int, float, bool)) for v in value.values())):
                raise _fail(path, "slurm.additional_parameters must map sbatch option names to values")
            out[key] = dict(value)
        else:
            minimum = {"nodes": 1, "timeout_min": 1, "array_parallelism": 1}.get(key, 0)
            out[key] = _number(path, f"slurm.{key}", value, float if key == "mem_gb" else int, minimum)
    spec = SlurmSpec(**out)
    if spec.gpus_per_node and spec.tasks_per_node and spec.tasks_per_node != spec.gpus_per_node:
        raise _fail(path, f"slurm.tasks_per_node ({spec.tasks_per_node}) must equal slurm.gpus_per_node "
                          f"({spec.gpus_per_node}): DDP runs one task per GPU")
    return spec


def _parse_local(path: Path, raw: Any) -> LocalSpec:
    if raw is None:
        return LocalSpec()
    if not isinstance(raw, dict):
        raise _fail(path, "local must be a mapping")
    _check_keys(path, "local", raw, LocalSpec.__dataclass_fields__)
    return LocalSpec(**{k: _number(path, f"local.{k}", v, int, 1) for k, v in raw.items()})


def _parse_axes(path: Path, raw: Any) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(path, "axes must be a mapping of config keys to lists of values")
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


def _parse_overrides(path: Path, raw: Any) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(path, "overrides must be a mapping of dotted config keys to values")
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[AXIS_ALIASES.get(prefix, prefix)] = node

    walk("", raw)
    return flat


def load_spec(path: str | Path) -> SweepSpec:
    """Parse and check a sweep spec; any problem raises a one-line ConfigError."""
    path = Path(path)
    loaded = read_yaml(path, what="sweep spec")
    try:
        raw = OmegaConf.to_container(loaded, resolve=True)
    except Exception as exc:
        raise _fail(path, f"cannot resolve: {str(exc).splitlines()[0]}") from None
    _check_keys(path, "the sweep spec", raw, TOP_KEYS)

    name = raw.get("name")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise _fail(path, f"'name' must be a non-empty sweep name without '/' (got {name!r})")
    runs_root = raw.get("runs_root", DEFAULT_RUNS_ROOT)
    if not isinstance(runs_root, str) or not runs_root:
        raise _fail(path, f"'runs_root' must be a folder path (got {runs_root!r})")
    base = raw.get("base")
    base_path = None
    if base is not None:
        if not isinstance(base, str):
            raise _fail(path, f"'base' must be the path of an experiment config (got {base!r})")
        candidates = [Path(base), path.parent / base]
        base_path = next((c for c in candidates if c.is_file()), None)
        if base_path is None:
            raise _fail(path, f"base config not found: {base}")
        base_path = base_path.resolve()
    overrides = _parse_overrides(path, raw.get("overrides"))
    axes = _parse_axes(path, raw.get("axes"))
    both = sorted(set(overrides) & set(axes))
    if both:
        raise _fail(path, f"{both[0]} is both an override and an axis")
    cost = {k: raw[k] for k in ("gpu_hours_per_run", "gpu_hours_per_epoch") if raw.get(k) is not None}
    if len(cost) > 1:
        raise _fail(path, "give gpu_hours_per_run or gpu_hours_per_epoch, not both")
    cost = {k: _number(path, k, v, float, 0) for k, v in cost.items()}
    from imagenet_repro.sweep.stages import parse_stages

    stages = parse_stages(path, raw.get("stages"), axes)
    return SweepSpec(path=path, name=name, runs_root=Path(runs_root).resolve(), base=base_path,
                     overrides=overrides, axes=axes, slurm=_parse_slurm(path, raw.get("slurm")),
                     local=_parse_local(path, raw.get("local")), stages=stages, **cost)


# ---------------------------------------------------------------------------- grid
def grid_points(spec: SweepSpec) -> list[dict]:
    """Every combination of the axes, in spec order (the last axis varies fastest)."""
    keys = list(spec.axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*spec.axes.values())]


def _parse_value(text: str) -> Any:
    """A ``--only`` value as YAML reads it (0.1 -> float, sgd -> str)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _same(a: Any, b: Any) -> bool:
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
        if not any(_same(value, v) for v in spec.axes[canon]):
            raise ConfigError(f"--only {item}: no grid point has this value (values: {spec.axes[canon]})")
        wanted.setdefault(canon, []).append(value)
    return [p for p in points if all(any(_same(p[k], v) for v in vs) for k, vs in wanted.items())]


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


def _coerce(template: Any, value: Any, key: str) -> Any:
    """``value`` converted the way an OmegaConf structured merge converts it, or ConfigError."""
    def bad() -> ConfigError:
        return ConfigError(f"bad value for {key}: {value!r} (expected {type(template).__name__})")

    if template is None or isinstance(template, dict):
        if isinstance(template, dict):
            raise ConfigError(f"{key} is a section, not a value")
        return value
    if isinstance(template, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise bad()
    if isinstance(template, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise bad()
    if isinstance(template, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise bad()
    if isinstance(template, str):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad()
    if isinstance(template, list):
        if isinstance(value, list):
            return list(value)
        raise bad()
    return value


def _set(container: dict, key: str, value: Any) -> None:
    node = container
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"unknown config key: {'.'.join(parts[:i + 1])}")
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        raise ConfigError(f"unknown config key: {key}")
    node[parts[-1]] = _coerce(node[parts[-1]], value, key)


class _View(dict):
    """Attribute access over a plain container, enough for ``config.validate``."""

    def __getattr__(self, item: str) -> Any:
        try:
            value = self[item]
        except KeyError:
            raise AttributeError(item) from None
        return _View(value) if isinstance(value, dict) else value

    def __getitem__(self, item: str) -> Any:
        value = dict.__getitem__(self, item)
        return _View(value) if isinstance(value, dict) else value


def container_hash(container: dict, length: int = 10) -> str:
    """:func:`imagenet_repro.config.config_hash` of a resolved config given as a plain container."""
    c = copy.deepcopy(container)
    c.pop("name", None)
    c.get("train", {}).pop("progress", None)
    blob = json.dumps(c, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _has_interpolation(node: Any) -> bool:
    return "${" in OmegaConf.to_yaml(node) if isinstance(node, (DictConfig, ListConfig)) else False


def resolve_runs(spec: SweepSpec, points: Optional[list[dict]] = None) -> list[PlannedRun]:
    """Resolve and validate every grid point (data paths are checked separately).

    Raises ConfigError naming the first bad point; two points with the same run id are
    an error too (an axis that changes nothing, or a value repeated under two spellings).
    """
    points = grid_points(spec) if points is None else points
    base = OmegaConf.load(spec.base) if spec.base is not None else OmegaConf.create()
    common = [base, _nest(spec.overrides), {"name": spec.name}]
    exact = _has_interpolation(base)  # interpolations: resolve every point the slow, literal way
    templates: dict[str, dict] = {}
    runs: list[PlannedRun] = []
    by_id: dict[str, dict] = {}
    for point in points:
        label = PlannedRun(point, {}, "", Path()).label()
        try:
            if exact:
                cfg = build_config(*common, _nest(point), check_paths=False)
                container = OmegaConf.to_container(cfg, resolve=True)
            else:
                optim_name = point.get("optim.name")
                key = json.dumps(optim_name)
                if key not in templates:
                    extra = [{"optim": {"name": optim_name}}] if optim_name is not None else []
                    cfg = build_config(*common, *extra, check_paths=False)
                    templates[key] = OmegaConf.to_container(cfg, resolve=True)
                container = copy.deepcopy(templates[key])
                for k, v in point.items():
                    _set(container, k, v)
                validate(_View(container), check_paths=False)
        except ConfigError as exc:
            raise ConfigError(f"grid point {label}: {exc}") from None
        run_id = container_hash(container)
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


def missing_data_paths(runs: list[PlannedRun]) -> list[str]:
    """The data paths of these runs that do not exist on this machine."""
    paths = sorted({r.config["data"][k] for r in runs for k in ("train_path", "val_path")})
    return [p for p in paths if not Path(p).exists()]


def run_hours(spec: SweepSpec, run: PlannedRun) -> Optional[float]:
    """Estimated GPU-hours of one run, from the spec (None: no estimate given)."""
    if spec.gpu_hours_per_run is not None:
        return spec.gpu_hours_per_run
    if spec.gpu_hours_per_epoch is not None:
        return spec.gpu_hours_per_epoch * run.config["train"]["epochs"]
    return None
