"""A sweep's grid points, ``--only``, and each point resolved into a validated run.

Every point of every grid (:func:`grid_points`; ``--only KEY=VAL`` keeps some,
:func:`select_points`) becomes a :class:`PlannedRun` in :func:`resolve_runs`: a
``build_config`` template per (grid, optimizer) (:class:`_Templates`), the point's axis
values typed by an OmegaConf merge into that template (once per value, not per point),
set into a copy of the template's plain container, then ``validate`` and ``config_hash``
(the run id) on that container.

The forms a grid point takes from the spec to the submitted job, three:

1. **YAML** in the spec file: its axis values and overrides (read by :func:`.spec.load_spec`).
2. **The plain container** (``PlannedRun.config``, a ``dict``): the resolved RunConfig of the
   point.  ``validate`` reads it in place (through an attribute view, no copy), the run id
   is the hash of its canonical JSON bytes (a digest, not a form passed on), placement and
   cost read it, and submitit pickles this same dict into the job.
3. **The RunConfig** (a DictConfig): ``build_config(config)`` in the job
   (:class:`~imagenet_repro.sweep.job.TrainJob`), what the trainer runs.

The template and the per-value typing are OmegaConf objects, built once per (grid,
optimizer) and per axis value: no point is ever a DictConfig or YAML text in between.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from imagenet_repro.config import build_config, config_hash, merge_error, validate
from imagenet_repro.errors import ConfigError
from imagenet_repro.sweep.schema import AXIS_ALIASES, SHORT_NAMES, Grid, SweepSpec, same_value


@dataclass(frozen=True)
class PlannedRun:
    """One grid point: its axis values, resolved config (plain container), id and folder."""

    point: dict  # canonical axis key -> value
    config: dict  # the resolved RunConfig as a plain container
    run_id: str
    run_dir: Path

    def label(self) -> str:
        return " ".join(f"{SHORT_NAMES.get(k, k)}={v}" for k, v in self.point.items()) or "(single run)"


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
            validate(container, check_paths=False)
        except ConfigError as exc:
            raise ConfigError(f"grid point {label}: {exc}") from None
        run_id = config_hash(container)
        if run_id in by_id:
            other = PlannedRun(by_id[run_id], {}, "", Path()).label()
            raise ConfigError(f"grid points {other} and {label} resolve to the same run {run_id}")
        by_id[run_id] = point
        runs.append(PlannedRun(point, container, run_id, spec.sweep_dir / run_id))
    return runs


