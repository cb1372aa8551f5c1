"""``repro sweep SPEC``: validate the whole grid, then submit what is missing, once.

1. Parse the spec and resolve every grid point (one bad point: a one-line ConfigError,
   nothing submitted).  Data paths are checked too: an error for a real submission, a
   warning for ``--dry-run`` (cluster paths need not exist on this machine).
2. Under the sweep lock, classify every run (:mod:`.status`): done/diverged are skipped,
   queued/running (a live job) are left alone, failed and pending ones are claimed
   (``job.json``, O_EXCL) and submitted: SLURM job arrays with the spec's resources
   (``executor.batch()``; several when the grid exceeds the site's ``MaxArraySize``, keeping
   ``slurm.array_parallelism`` across them, see :mod:`.arrays`; the site's job-count limits
   are checked before anything is written), or ``local.parallelism`` lanes on submitit's
   local executor.
3. With ``wait`` (the default) follow the runs with a progress bar (on a terminal; else a
   plain line every 30 s) until none is queued or running, print the counts, and return 0
   iff every selected run is done or diverged.

``cluster="auto"`` picks SLURM when ``sbatch`` is on PATH and the controller answers,
else the local executor.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

import submitit

from imagenet_repro.errors import ConfigError
from imagenet_repro.identity import check_run_folder
from imagenet_repro.progress import progress as progress_bar
from imagenet_repro.rundir import FINAL_STATES, RunState
from imagenet_repro.sweep import arrays, claims
from imagenet_repro.sweep.job import RunLane, TrainJob
from imagenet_repro.sweep.placement import check_world_sizes, placement_warnings
from imagenet_repro.sweep.spec import (
    SHORT_NAMES,
    PlannedRun,
    SweepSpec,
    check_paths,
    check_placements,
    grid_points,
    load_spec,
    resolve_runs,
    run_hours,
    select_points,
)
from imagenet_repro.sweep.stages import plan_stage
from imagenet_repro.sweep.status import (
    RunRef,
    TrackedRun,
    classify_all,
    counts,
    format_counts,
    run_refs,
    run_table,
    save_plan_cache,
    summary_of,
)
from imagenet_repro.sweepdir import write_description

SUBMIT_STATES = (RunState.pending, RunState.failed)
LIVE_STATES = (RunState.queued, RunState.running, RunState.unknown)
ACTIONS = {RunState.pending: "submit", RunState.failed: "resubmit", RunState.done: "skip", RunState.diverged: "skip",
           RunState.running: "leave", RunState.queued: "leave", RunState.unknown: "leave"}  # the plan's column
POLL_S = 2.0


def slurm_available() -> bool:
    """``sbatch`` is installed and the controller answers."""
    if shutil.which("sbatch") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pick_cluster(cluster: str) -> str:
    if cluster not in ("auto", "slurm", "local", "debug"):
        raise ConfigError(f"--cluster must be auto, slurm, local or debug (got {cluster!r})")
    if cluster == "auto":
        return "slurm" if slurm_available() else "local"
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--cluster slurm: sbatch is not on PATH (try --cluster local, or `make slurm-up`)")
    return cluster


def check_run_folders(runs: list[PlannedRun]) -> None:
    """Refuse (ConfigError) a plan in which a run's folder holds a run of another config: the
    trainer's own check (:func:`imagenet_repro.identity.check_run_folder`), before anything is
    submitted, so a spec edited by hand never resumes or skips a folder of the old config."""
    for run in runs:
        try:
            check_run_folder(run.run_dir, run.config)
        except ConfigError as exc:
            raise ConfigError(f"grid point {run.label()}: {exc}") from None


def _ref(run: PlannedRun) -> RunRef:
    return RunRef(run.run_id, run.run_dir, run.point, summary_of(run.config))


# ---------------------------------------------------------------------------- plan
def print_plan(spec: SweepSpec, runs: list[PlannedRun], states: list[TrackedRun], cluster: str,
               missing: list[str], show_runs: bool = True, label: str = "") -> None:
    to_submit = [s for s in states if s.state in SUBMIT_STATES]
    c = counts(states)
    shapes = [" x ".join(f"{len(v)} {SHORT_NAMES.get(k, k)}" for k, v in g.axes.items()) or "no axes"
              for g in spec.grids]
    axes = shapes[0] if len(shapes) == 1 else f"{len(shapes)} grids: " + "; ".join(shapes)
    axes = f"{label} of the {axes} grid" if label else axes
    print(f"sweep {spec.name}: {len(runs)} runs ({axes}) in {spec.sweep_dir}, cluster {cluster}")
    print(f"  to submit: {len(to_submit)} (new {c.get('pending', 0)}, failed {c.get('failed', 0)});"
          f" already done: {c.get('done', 0) + c.get('diverged', 0)} (diverged {c.get('diverged', 0)});"
          f" running: {c.get('running', 0)}; queued: {c.get('queued', 0)}"
          + (f"; unknown (SLURM unreachable, left alone): {c['unknown']}" if c.get("unknown") else ""))
    by_id = {r.run_id: r for r in runs}
    hours = [run_hours(spec, by_id[s.ref.run_id]) for s in to_submit]
    if to_submit and all(h is not None for h in hours):
        total = sum(hours)
        print(f"  cost estimate: {total:,.1f} GPU-hours for the {len(to_submit)} runs to submit"
              f" ({total / len(to_submit):,.2f} per run; all {len(runs)} selected runs"
              f" {sum(run_hours(spec, r) for r in runs):,.1f})")
    elif to_submit:
        s = spec.slurm
        bound = len(to_submit) * s.nodes * max(s.gpus_per_node, 0) * s.timeout_min / 60
        print(f"  cost estimate: none in the spec (gpu_hours_per_run); upper bound from the time limit: {bound:,.1f} GPU-hours")
    for path in missing:
        print(f"  warning: data path missing here: {path} (must exist where the jobs run)")
    for line in placement_warnings(spec, runs):  # CPUs per task
        print(f"  warning: {line}")
    if show_runs:
        table = run_table(states).splitlines()
        print("  " + "action    " + table[0])
        for st, line in zip(states, table[1:]):
            print("  " + ACTIONS[st.state].ljust(10) + line)


# ---------------------------------------------------------------------------- submission
def _slurm_executor(spec: SweepSpec, parallelism: Optional[int] = None, after: Optional[str] = None):
    """submitit's executor with the spec's resources; ``parallelism``: this array's %N (default
    slurm.array_parallelism); ``after``: a job id it waits for (``--dependency=afterany:ID``)."""
    s = spec.slurm
    ex = submitit.SlurmExecutor(folder=spec.sweep_dir / ".submitit" / "%j", max_num_timeout=s.max_timeout_requeues)
    params = dict(job_name=f"repro-{spec.name}", time=s.timeout_min, nodes=s.nodes, ntasks_per_node=s.tasks,
                  array_parallelism=parallelism or s.array_parallelism, signal_delay_s=s.signal_delay_s,
                  stderr_to_stdout=True)
    extra = dict(s.additional_parameters)
    # with several tasks a rank that dies (kill -9, the OOM killer) ends the step at once:
    # srun signals the others (their collectives fail and they record which rank died) and kills
    # them after the site's KillWait, instead of leaving them in a collective until the time limit
    srun_args = ["--kill-on-bad-exit=1"] if s.world_size > 1 else None
    if after is not None:  # the spec's own dependency, if any, and ours (',' = both)
        extra["dependency"] = ",".join(d for d in (extra.get("dependency"), f"afterany:{after}") if d)
    optional = dict(partition=s.partition, account=s.account, qos=s.qos, constraint=s.constraint,
                    gpus_per_node=s.gpus_per_node or None, cpus_per_task=s.cpus_per_task or None,
                    mem=f"{int(s.mem_gb * 1024)}MB" if s.mem_gb else None,
                    setup=list(s.setup) or None, additional_parameters=extra or None, srun_args=srun_args)
    params.update({k: v for k, v in optional.items() if v is not None})
    ex.update_parameters(**params)
    return ex


def check_site(spec: SweepSpec, n_runs: int, limits: Optional[arrays.SiteLimits] = None
               ) -> tuple[list[arrays.ArrayPlan], arrays.SiteLimits, list[str]]:
    """The arrays ``n_runs`` will be submitted as, under the site's limits (read when not given);
    a ConfigError when they cannot fit.  Returns the plan, the limits and the notes to print."""
    limits = limits if limits is not None else arrays.read_site_limits(spec.slurm.account)
    plans = arrays.plan_arrays(n_runs, spec.slurm.array_parallelism, limits.max_array_size)
    return plans, limits, arrays.check_fits(n_runs, plans, limits)


def _submit_slurm(spec: SweepSpec, runs: list[PlannedRun], trainer=None,
                  limits: Optional[arrays.SiteLimits] = None) -> list:
    """One array per :class:`~.arrays.ArrayPlan` (one when the grid fits MaxArraySize), each
    claim recording its own task's job id, so status and re-sweeps see one sweep."""
    plans, limits, _ = check_site(spec, len(runs), limits)
    jobs: list = []
    array_ids: list[str] = []
    for plan in plans:
        ex = _slurm_executor(spec, plan.parallelism, None if plan.after is None else array_ids[plan.after])
        part = runs[plan.start:plan.stop]
        with ex.batch():
            submitted = [ex.submit(TrainJob(trainer, spec.slurm.signal_delay_s), run.config, str(run.run_dir))
                         for run in part]
        for run, job in zip(part, submitted):
            claims.record_job(run.run_dir, "slurm", job.job_id, job.paths.folder)
        array_ids.append(str(submitted[0].job_id).split("_")[0])
        jobs += submitted
    if len(plans) > 1:
        print(f"  split into {arrays.describe(plans, limits)}: SLURM jobs "
              + ", ".join(a + (f" (after {array_ids[p.after]})" if p.after is not None else "")
                          for a, p in zip(array_ids, plans)), flush=True)
    return jobs


def _submit_local(spec: SweepSpec, runs: list[PlannedRun], cluster: str, trainer=None) -> list:
    folder = spec.sweep_dir / ".submitit" / "%j"
    lanes = max(1, min(spec.local.parallelism, len(runs)))
    items = [[(r.config, str(r.run_dir)) for r in runs[i::lanes]] for i in range(lanes)]
    if cluster == "debug":
        ex = submitit.DebugExecutor(folder=folder)
        job = ex.submit(RunLane(trainer, spec.slurm.signal_delay_s), [it for lane in items for it in lane])
        for run in runs:
            claims.record_job(run.run_dir, "debug", str(os.getpid()), job.paths.folder, pid=os.getpid())
        return [job]
    if spec.slurm.nodes > 1:
        raise ConfigError(f"{spec.path}: the {cluster} executor runs on this one machine: slurm.nodes must be 1 "
                          f"(got {spec.slurm.nodes}); use --cluster slurm")
    ex = submitit.LocalExecutor(folder=folder, max_num_timeout=spec.slurm.max_timeout_requeues)
    jobs = []
    for i, lane in enumerate(items):
        # a lane runs its runs in turn: its time limit is the sum of theirs; each run is DDP
        # over the spec's tasks per node, as on SLURM
        ex.update_parameters(timeout_min=spec.slurm.timeout_min * len(lane), signal_delay_s=spec.slurm.signal_delay_s,
                             tasks_per_node=spec.slurm.tasks)
        job = ex.submit(RunLane(trainer, spec.slurm.signal_delay_s), lane)
        for r in runs[i::lanes]:
            claims.record_job(r.run_dir, "local", job.job_id, job.paths.folder, pid=int(job.job_id))
        jobs.append(job)
    return jobs


def submit(spec: SweepSpec, runs: list[PlannedRun], cluster: str, trainer=None,
           limits: Optional[arrays.SiteLimits] = None) -> list:
    """Claim and submit ``runs`` (the caller holds the sweep lock); claims are released on failure.
    ``limits``: the SLURM site's, when the caller has read them (else read here)."""
    claimed = []
    try:
        for run in runs:
            if not claims.try_claim(run.run_dir, cluster):
                raise ConfigError(f"run {run.run_id} ({run.label()}) was claimed by another launcher")
            claimed.append(run)
        if cluster == "slurm":
            return _submit_slurm(spec, runs, trainer, limits)
        return _submit_local(spec, runs, cluster, trainer)
    except BaseException:
        for run in claimed:
            claim = claims.read_claim(run.run_dir) or {}
            if claim.get("state") == "submitting":
                claims.release(run.run_dir)
        raise


# ---------------------------------------------------------------------------- waiting
def wait_for(refs: list[RunRef], jobs: list, poll_s: float = POLL_S, progress: bool = True) -> list[TrackedRun]:
    """Follow ``refs`` until none is queued or running; a progress bar (plain lines in a log)
    counts finished runs."""
    bar = progress_bar(len(refs), "runs finished", unit="run", enabled=progress)
    try:
        while True:
            for job in jobs:  # local jobs: poll reaps the finished processes
                if hasattr(job, "_process") and job._process is not None:
                    job._process.poll()
            states = classify_all(refs)
            finished = sum(s.state not in LIVE_STATES for s in states)
            bar.set_postfix_str(format_counts(states), refresh=False)
            bar.update(finished - bar.n)  # redraws (in a log: at most every LOG_EVERY_S), also when 0
            if finished == len(refs) or all(s.state == "unknown" for s in states if s.state in LIVE_STATES):
                return states
            time.sleep(poll_s)
    finally:
        bar.close()


# ---------------------------------------------------------------------------- entry point
def _plan_stage(sweep: SweepSpec, stage: Optional[str], only: Iterable[str], dry_run: bool
                ) -> tuple[Optional[list[PlannedRun]], list[PlannedRun], str]:
    """A staged spec (or ``--stage``): the selected stage's runs (None: a dry run of a stage
    that waits), the whole grid (for the plan cache) and the plan's label."""
    grid = resolve_runs(sweep)
    check_placements(sweep, grid)  # every point of the grid, before anything is printed
    runs, label = plan_stage(sweep, grid, stage, dry_run)
    if runs is not None and only:
        keep = select_points(sweep, [r.point for r in runs], only)
        runs = [r for r in runs if r.point in keep]
    return runs, grid, label


def launch(spec: str | Path, cluster: str = "auto", dry_run: bool = False, only: Iterable[str] = (),
           wait: bool = True, trainer=None, poll_s: float = POLL_S, stage: Optional[str] = None) -> int:
    """Plan, submit and (optionally) wait for a sweep; the exit code of ``repro sweep``.

    ``stage``: for a spec with ``stages`` (see :mod:`.stages`), "1", "2", a stage name or
    "all" (the whole grid); None runs stage 1."""
    sweep = load_spec(spec)
    grid, label = None, ""
    if sweep.stages or stage is not None:
        runs, grid, label = _plan_stage(sweep, stage, only, dry_run)
        if runs is None:  # dry run of stage 2 while stage 1 runs: plan_stage said what it waits for
            return 0
    else:
        points = select_points(sweep, grid_points(sweep), only)
        runs = resolve_runs(sweep, points)
        check_placements(sweep, runs)
    missing = check_paths(sweep, runs, dry_run)  # runs_root and data paths; missing data: a dry run's warnings
    chosen = pick_cluster(cluster) if not dry_run else (cluster if cluster != "auto" else
                                                         ("slurm" if slurm_available() else "local"))
    if dry_run:
        check_run_folders(runs)
        check_world_sizes(sweep, runs, chosen)
        print_plan(sweep, runs, classify_all([_ref(r) for r in runs]), chosen, missing, label=label)
        return 0
    states = execute(sweep, runs, chosen, whole_grid=not only, wait=wait, trainer=trainer, poll_s=poll_s,
                     grid=grid, label=label)
    if not wait:
        return 0
    print(f"sweep {sweep.name}: {format_counts(states)}")
    bad = [s for s in states if s.state not in FINAL_STATES]
    for st in bad[:10]:
        reason = st.status.get("reason", "")
        print(f"  {st.state}: {st.ref.run_id} ({' '.join(f'{k}={v}' for k, v in st.ref.point.items())}) {reason}")
    return 0 if not bad else 1


def execute(sweep: SweepSpec, runs: list[PlannedRun], cluster: str, whole_grid: bool = True, wait: bool = True,
            trainer=None, poll_s: float = POLL_S, progress: bool = True, announce: bool = True,
            grid: Optional[list[PlannedRun]] = None, label: str = "") -> list[TrackedRun]:
    """Submit what is missing of the planned ``runs`` on ``cluster`` (under the sweep lock) and,
    with ``wait``, follow them to the end; returns their states (none without ``wait``).
    ``grid``: the whole grid of a staged sweep (for the plan cache); ``label``: the stage's.

    The one submission path: ``repro sweep`` and the rehearsal (:mod:`.rehearse`) both come here."""
    refs = [_ref(r) for r in runs]
    check_run_folders(runs)  # before the lock: a refused plan leaves no file behind
    check_world_sizes(sweep, runs, cluster)
    limits = None
    n_todo = sum(s.state in SUBMIT_STATES for s in classify_all(refs)) if cluster == "slurm" else 0
    if n_todo:  # the site's limits, before the lock too: a submission that cannot fit writes nothing
        _, limits, notes = check_site(sweep, n_todo)
        for note in notes if announce else ():
            print(f"  note: {note}")
    with claims.sweep_lock(sweep.sweep_dir):
        write_description(sweep.description())  # sweep.json: what the analysis reads of this sweep
        if grid is not None:  # staged: the cache lists the whole grid, as `repro status` reads it
            save_plan_cache(sweep, [_ref(r) for r in grid])
        elif whole_grid:
            save_plan_cache(sweep, refs)
        else:  # the cache lists the whole grid: refresh it when it is stale
            run_refs(sweep)
        states = classify_all(refs, stale_submitting=True)
        by_id = {r.run_id: r for r in runs}
        todo = [by_id[s.ref.run_id] for s in states if s.state in SUBMIT_STATES]
        for st in states:
            if st.state == "failed" and st.claim is not None:
                claims.release(st.ref.run_dir)  # dead job (or a launcher that died): the run is claimed anew
        if announce:
            print_plan(sweep, runs, states, cluster, [], show_runs=False, label=label)
        jobs = submit(sweep, todo, cluster, trainer, limits) if todo else []
    if announce and jobs:
        ids = list(dict.fromkeys(str(j.job_id).split("_")[0] for j in jobs))
        where = (f"SLURM job {ids[0]} ({len(todo)} array tasks)" if len(ids) == 1 else
                 f"SLURM jobs {', '.join(ids)} ({len(ids)} arrays, {len(todo)} tasks)") if cluster == "slurm" else \
            f"{len(jobs)} {cluster} job(s)"
        print(f"submitted {len(todo)} runs: {where}; logs in {sweep.sweep_dir / '.submitit'}", flush=True)
    elif announce:
        print("submitted 0 runs", flush=True)
    if cluster == "debug" and jobs:
        try:
            jobs[0].result()
        except Exception as exc:  # the runs' own states tell what failed
            print(f"debug job raised {type(exc).__name__}: {exc}", file=sys.stderr)
        for run in todo:
            claims.release(run.run_dir, str(os.getpid()))
    if not wait:
        return []
    return wait_for(refs, jobs, poll_s, progress) if refs else []
