"""Where a sweep's runs go and what they cost: the folders and data paths checked at plan
time, the placement rules of the spec's resources (the ranks a run gets, the world size a
run folder was made on, the CPUs each task needs), and the GPU-hour estimate of a run."""
from __future__ import annotations

from typing import Optional

from imagenet_repro.config import data_path_problem, placement_problems
from imagenet_repro.errors import ConfigError
from imagenet_repro.identity import check_world_size
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


def planned_world_size(spec: SweepSpec, cluster: str) -> int:
    """The DDP ranks each run of ``spec`` gets on ``cluster``: ``slurm.nodes x tasks`` (SLURM,
    and the local executor, which starts the spec's tasks per node); 1 in the debug executor
    (the runs in the launcher's own process)."""
    return 1 if cluster == "debug" else spec.slurm.world_size


def check_world_sizes(spec: SweepSpec, runs: list[PlannedRun], cluster: str) -> None:
    """Refuse (ConfigError) a plan that would start or resume a run folder on another world size
    than its ``manifest.json`` records (a re-sweep with another ``slurm.tasks_per_node`` or
    ``nodes``): the trainer's own check (:func:`imagenet_repro.identity.check_world_size`),
    before anything is submitted."""
    world = planned_world_size(spec, cluster)
    for run in runs:
        try:
            check_world_size(run.run_dir, run.config, world)
        except ConfigError as exc:
            where = f"{spec.slurm.nodes} node(s) x {spec.slurm.tasks} task(s)" if cluster != "debug" else "debug executor"
            raise ConfigError(f"grid point {run.label()}: {exc} [resources: {where}]") from None


# The training process's own threads besides its loader workers, each of which wants a core:
# the main thread (it launches the GPU's kernels), the loader's thread (FFCV's batch thread,
# the DataLoader's pin-memory thread) and NCCL's.
OWN_THREADS = {"main": 1, "loader": 1, "NCCL": 1}


def cpus_needed(cfg) -> int:
    """CPUs one GPU task of ``cfg`` keeps busy: ``data.num_workers`` + :data:`OWN_THREADS`."""
    return cfg["data"]["num_workers"] + sum(OWN_THREADS.values())


def placement_warnings(spec: SweepSpec, runs: list[PlannedRun]) -> list[str]:
    """Lines saying what to set when the spec gives each GPU task fewer CPUs
    (``slurm.cpus_per_task``; 0: SLURM's default, often 1) than its runs keep busy
    (:func:`cpus_needed`): a starved main thread leaves the GPU waiting.  The fix is more CPUs
    per task, not fewer workers (``data.num_workers`` is part of the run's identity).  A CPU
    spec is not checked: there the training's own compute shares the task's CPUs with its
    loader by design (the demo: 1 CPU per task, 2 runs on a 2-core node)."""
    s = spec.slurm
    if s.gpus_per_node <= 0 or not runs:
        return []
    needed = max(cpus_needed(run.config) for run in runs)
    if s.cpus_per_task >= needed:
        return []
    workers = max(run.config["data"]["num_workers"] for run in runs)
    given = f"slurm.cpus_per_task={s.cpus_per_task}" if s.cpus_per_task else "slurm.cpus_per_task unset (SLURM's default, often 1)"
    own = ", ".join(OWN_THREADS)
    return [f"{spec.path}: {given} for data.num_workers={workers} loader workers and the training process's own "
            f"{sum(OWN_THREADS.values())} threads ({own}) per task: set slurm.cpus_per_task: {needed} "
            f"(x {s.tasks} tasks = {needed * s.tasks} CPUs per node); fewer workers would change the runs' identity"]


def run_hours(spec: SweepSpec, run: PlannedRun) -> Optional[float]:
    """Estimated GPU-hours of one run, from the spec (None: no estimate given)."""
    if spec.gpu_hours_per_run is not None:
        return spec.gpu_hours_per_run
    if spec.gpu_hours_per_epoch is not None:
        return spec.gpu_hours_per_epoch * run.config["train"]["epochs"]
    return None
