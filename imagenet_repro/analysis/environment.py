"""The environment a sweep's runs were made in (``manifest.json``'s ``environment``, written by
:func:`imagenet_repro.train.manifest.environment`): what they share, and where they differ.

Runs of one sweep compare fairly only when made with the same packages, CPU kernels (or CUDA
device, driver, CUDA and cuDNN) and thread counts: ``repro aggregate`` writes the comparison to
``environment.json`` beside the tables and warns, one line per differing key, when they are not.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable

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
