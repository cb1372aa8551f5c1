"""The environment a sweep's runs were made in (``manifest.json``'s ``environment``, written by
:func:`imagenet_repro.train.manifest.environment`): what they share, and where they differ.

Runs of one sweep compare fairly only when made with the same packages, CPU kernels (or CUDA
device, driver, CUDA and cuDNN) and thread counts: ``repro aggregate`` writes the comparison to
``environment.json`` beside the tables and warns, one line per differing key, when they are not.
The number of DDP ranks (``manifest.json``'s ``world_size``) and so each rank's share of the
batch are compared apart (:func:`compare_world_sizes`, under ``ranks`` in ``environment.json``):
one warning line when the runs differ in them, one per run resumed on another world size.
"""
from __future__ import annotations

from collections import defaultdict
from itertools import groupby
from pathlib import Path
from typing import Iterable

import yaml

from imagenet_repro import files, rundir


def read_environment(run_dir: Path) -> tuple[dict[str, str] | None, list[dict]]:
    """(the run's flattened environment or None for a run with none recorded, its resume changes)."""
    manifest = files.read_json(Path(run_dir) / rundir.MANIFEST) or {}
    env = manifest.get("environment")
    return (rundir.flatten_environment(env) if isinstance(env, dict) else None,
            list(manifest.get("environment_changes") or []))


def compare_environments(run_dirs: Iterable[Path]) -> dict:
    """``{"runs": n, "common": {key: value}, "differs": {key: {value: [run ids]}},
    "changed_on_resume": {run id: [keys]}, "unrecorded": [run ids]}`` over the runs that recorded one."""
    envs, changed, unrecorded = {}, {}, []
    for run_dir in run_dirs:
        env, changes = read_environment(run_dir)
        if env is None:
            if (Path(run_dir) / rundir.MANIFEST).exists():
                unrecorded.append(Path(run_dir).name)
            continue
        envs[Path(run_dir).name] = env
        if changes:
            changed[Path(run_dir).name] = sorted({k for c in changes for k in c.get("keys", [])})
    keys = sorted({k for env in envs.values() for k in env})
    common, differs = {}, {}
    for key in keys:
        by_value: dict[str, list[str]] = defaultdict(list)
        for run_id, env in sorted(envs.items()):
            by_value[env.get(key, "(absent)")].append(run_id)
        if len(by_value) == 1:
            common[key] = next(iter(by_value))
        else:
            differs[key] = dict(sorted(by_value.items(), key=lambda kv: -len(kv[1])))
    return {"runs": len(envs), "common": common, "differs": differs, "changed_on_resume": changed,
            "unrecorded": unrecorded}


def environment_warnings(sweep: str, comparison: dict) -> list[str]:
    """One line per key in which the runs differ (and per run whose environment changed on resume)."""
    lines = []
    for key, by_value in comparison["differs"].items():
        values = ", ".join(f"{value} ({len(ids)} run{'s' * (len(ids) != 1)})" for value, ids in by_value.items())
        lines.append(f"warning: the runs of {sweep} differ in {key}: {values}; their numbers may not compare")
    for run_id, keys in comparison["changed_on_resume"].items():
        lines.append(f"warning: run {run_id} of {sweep} was resumed in another environment ({', '.join(keys)})")
    if comparison["unrecorded"]:
        lines.append(f"warning: {len(comparison['unrecorded'])} run(s) of {sweep} recorded no environment "
                     f"(made before it was recorded): {', '.join(comparison['unrecorded'][:3])}")
    return lines


# ---------------------------------------------------------------------------- ranks
def read_world_size(run_dir: Path) -> tuple[int | None, int | None, list[int]]:
    """(the world size the run's ``manifest.json`` records or None, its per-rank batch (the
    config's global ``data.batch_size`` over it) or None, the world size of each start that
    recorded one)."""
    manifest = files.read_json(Path(run_dir) / rundir.MANIFEST) or {}
    world = manifest.get("world_size")
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        return None, None, []
    starts = [s["world_size"] for s in manifest.get("starts") or [] if isinstance(s, dict)
              and isinstance(s.get("world_size"), int)]
    try:
        config = yaml.load((Path(run_dir) / rundir.CONFIG).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        batch = config["data"]["batch_size"]
        per_rank = batch // world if isinstance(batch, int) and batch % world == 0 else None
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        per_rank = None
    return world, per_rank, starts


def compare_world_sizes(run_dirs: Iterable[Path]) -> dict:
    """``{"runs": n, "world_size": {ranks: [run ids]}, "per_rank_batch": {images: [run ids]},
    "changed_on_resume": {run id: [world sizes in the order of its starts]}}`` over the runs whose manifest
    records a world size (keys as strings, for JSON)."""
    world_sizes: dict[str, list[str]] = defaultdict(list)
    per_rank: dict[str, list[str]] = defaultdict(list)
    changed: dict[str, list[int]] = {}
    for run_dir in sorted(Path(d) for d in run_dirs):
        world, batch, starts = read_world_size(run_dir)
        if world is None:
            continue
        world_sizes[str(world)].append(run_dir.name)
        per_rank[str(batch) if batch is not None else "(unknown)"].append(run_dir.name)
        if len(set(starts)) > 1:
            changed[run_dir.name] = [size for size, _ in groupby(starts)]
    order = lambda d: dict(sorted(d.items(), key=lambda kv: -len(kv[1])))  # noqa: E731
    return {"runs": sum(len(v) for v in world_sizes.values()), "world_size": order(world_sizes),
            "per_rank_batch": order(per_rank), "changed_on_resume": changed}


def world_size_warnings(sweep: str, comparison: dict) -> list[str]:
    """A line when the runs were made on different numbers of ranks (so with other per-rank
    batches, which BatchNorm normalises over), and one per run resumed on another number.
    Per-rank batches that differ on one world size come from a swept ``data.batch_size``: no line."""
    def counted(by_value: dict, unit: str) -> str:
        return ", ".join(f"{value}{unit} ({len(ids)} run{'s' * (len(ids) != 1)})" for value, ids in by_value.items())

    lines = []
    if len(comparison["world_size"]) > 1:
        lines.append(f"warning: the runs of {sweep} differ in world size: {counted(comparison['world_size'], ' ranks')};"
                     f" per-rank batch {counted(comparison['per_rank_batch'], '')}: BatchNorm sees another batch, "
                     f"their numbers may not compare")
    for run_id, starts in comparison["changed_on_resume"].items():
        lines.append(f"warning: run {run_id} of {sweep} was resumed on another world size "
                     f"({' then '.join(map(str, starts))} ranks)")
    return lines
