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

This module reads the YAML into a :class:`~.schema.SweepSpec` (:func:`load_spec`); the
other jobs have a module each, and this one names them all for its callers (``__all__``)::

    schema.py      the YAML's schema, bounds and checks; SweepSpec, Grid, SlurmSpec, LocalSpec
    stage_spec.py  the ``stages`` section (Stage, parse_stages)
    grid.py        grid points, ``--only``, each point resolved into a validated run (PlannedRun)
    placement.py   folders and data paths at plan time, placement on the resources, GPU-hours
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from imagenet_repro.config import read_yaml
from imagenet_repro.sweep.grid import PlannedRun, grid_points, resolve_runs, select_points
from imagenet_repro.sweep.placement import check_paths, check_placements, run_hours
from imagenet_repro.sweep.schema import (
    AXIS_ALIASES,
    SHORT_NAMES,
    SPEC_BOUNDS,
    Grid,
    LocalSpec,
    SlurmSpec,
    SpecSchema,
    SweepSpec,
    check_schema,
    same_value,
    shape_error,
    spec_error,
)
from imagenet_repro.sweep.stage_spec import Stage, parse_stages

__all__ = ["SHORT_NAMES", "SPEC_BOUNDS", "Grid", "LocalSpec", "PlannedRun", "SlurmSpec", "SpecSchema", "Stage",
           "SweepSpec", "check_paths", "check_placements", "grid_points", "load_spec", "resolve_runs", "run_hours",
           "same_value", "select_points"]


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
            raise spec_error(path, f"axis {key} given twice (optimizer is an alias of optim.name)")
        if not isinstance(values, list) or not values:
            raise spec_error(path, f"axis {key} must be a non-empty list of values")
        if any(isinstance(v, dict) for v in values):
            raise spec_error(path, f"axis {key}: values must be scalars or lists, not mappings")
        seen = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(seen)) != len(seen):
            raise spec_error(path, f"axis {key} has repeated values: {values}")
        axes[canon] = values
    return axes


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; any problem raises a one-line ConfigError."""
    path = Path(path)
    loaded = read_yaml(path, what="sweep spec")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SpecSchema), loaded)
        schema: SpecSchema = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise spec_error(path, shape_error(exc)) from None
    except TypeError as exc:  # OmegaConf: a mapping where a list belongs, or the reverse
        raise spec_error(path, f"a section has the wrong shape: {exc}") from None
    check_schema(path, schema)
    base_path = None
    if schema.base is not None:
        base_path = next((c for c in (Path(schema.base), path.parent / schema.base) if c.is_file()), None)
        if base_path is None:
            raise spec_error(path, f"base config not found: {schema.base}")
        base_path = base_path.resolve()
    plain = OmegaConf.to_container(merged, resolve=True)
    overrides = _flat(path, "overrides", plain["overrides"] or {})
    shared = _parse_axes(path, plain["axes"] or {})
    grids = []
    for i, g in enumerate(plain["grids"] or [{"axes": {}, "overrides": {}}]):
        own = _parse_axes(path, g["axes"] or {}, where=f"grids[{i}].axes")
        twice = sorted(set(own) & set(shared))
        if twice:
            raise spec_error(path, f"grids[{i}]: axis {twice[0]} is also a shared axis")
        grid_over = _flat(path, f"grids[{i}].overrides", g["overrides"] or {})
        axes = {**own, **shared}
        both = sorted((set(overrides) | set(grid_over)) & set(axes))
        if both:
            raise spec_error(path, f"{both[0]} is both an override and an axis")
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


