"""Where a sweep's runs go and what they cost: the folders and data paths checked at plan
time, the placement rules of the spec's resources, and the GPU-hour estimate of a run."""
from __future__ import annotations

from typing import Optional

from imagenet_repro.config import data_path_problem, placement_problems
from imagenet_repro.errors import ConfigError
from imagenet_repro.paths import out_dir_problem
from imagenet_repro.sweep.grid import PlannedRun
from imagenet_repro.sweep.schema import SweepSpec, spec_error


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
            raise spec_error(spec.path, f"{what} {str(folder)!r} {problem}")
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
                raise spec_error(spec.path, f"grid point {run.label()}: data.{key} {problem}: {path}")
    if missing and not dry_run:
        raise ConfigError(f"data path does not exist: {missing[0]} (grid of {spec.name}; --dry-run to plan anyway)")
    return sorted(missing)


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
