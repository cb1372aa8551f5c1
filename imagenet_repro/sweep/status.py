"""``repro status``: the state of every run of a sweep, from its run folder and the scheduler.

A run's state comes from ``status.json`` (written by the trainer) and its job claim
(``job.json``, see :mod:`.claims`), never from the parquet tables, so a sweep of
hundreds of runs is classified in a fraction of a second:

=========  ===============================================================
done       status.json says done          (final; never resubmitted)
diverged   status.json says diverged      (final; never resubmitted)
running    its job runs and the trainer has started
queued     its job is pending, starting, or requeued after a preemption
failed     not final and its job is gone (crashed, killed, time limit)
pending    never submitted (no status, no claim)
unknown    its job's fate cannot be told (SLURM unreachable): left alone
=========  ===============================================================

A run whose process died without a word (a signal, a native abort in a decoder, the
OOM killer, a disk so full that not even the failed status fits) leaves ``status.json``
saying ``running``: it is reconciled with the
scheduler (its claim's SLURM job id, or local pid) and, when it has no claim (a plain
``repro train`` into the sweep folder), with the pid and host the trainer records in
``status.json``.  A dead one is ``failed`` and :attr:`RunState.reason` says why.

The list of runs and their ids is cached in ``<sweep_dir>/.plan.json`` under a
fingerprint of the spec, its base config and the config code, so ``repro status``
does not resolve hundreds of configs again.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

from imagenet_repro import files, rundir
from imagenet_repro.errors import StorageError
from imagenet_repro.rundir import RunState
from imagenet_repro.sweep import claims
from imagenet_repro.sweep.spec import SHORT_NAMES, SweepSpec, resolve_runs, same_value

PLAN_CACHE = ".plan.json"


@dataclass(frozen=True)
class RunRef:
    """What status needs of a planned run."""

    run_id: str
    run_dir: Path
    point: dict
    summary: dict  # optimizer, lr, wd, seed, epochs


@dataclass(frozen=True)
class TrackedRun:
    ref: RunRef
    state: str
    status: dict
    claim: Optional[dict]
    job_state: str

    @property
    def reason(self) -> str:
        """One line: why a failed run failed (status.json's reason, or the reconciliation's)."""
        if self.state != "failed":
            return ""
        written = self.status.get("state", "pending")
        if written == "failed" and self.status.get("reason"):
            return str(self.status["reason"])
        if (self.claim or {}).get("unreadable"):
            return f"unreadable job claim {self.claim['unreadable']}: the next sweep removes it"
        if written == "running":
            if self.claim:
                return (f"job {self.job_id} is gone while status.json says running (killed by a signal, "
                        f"time limit, a native crash or a disk it could not write: see its log)")
            return (f"process {self.status.get('pid', '?')} on {self.status.get('host', '?')} is gone while "
                    f"status.json says running (killed by a signal, a native crash or a disk it could not write)")
        return "its job is gone"

    @property
    def job_id(self) -> str:
        return str((self.claim or {}).get("job_id") or self.status.get("job_id") or "")


def summary_of(config: dict) -> dict:
    return {"optimizer": config["optim"]["name"], "lr": config["optim"]["lr"],
            "wd": config["optim"]["weight_decay"], "seed": config["seed"], "epochs": config["train"]["epochs"]}


def run_refs(spec: SweepSpec, use_cache: bool = True) -> list[RunRef]:
    """Every run of the spec's grid, from the plan cache when it is current."""
    cache = spec.sweep_dir / PLAN_CACHE
    fingerprint = spec.fingerprint()
    if use_cache:
        cached = files.read_json(cache)
        if cached and cached.get("fingerprint") == fingerprint:
            return [RunRef(r["run_id"], spec.sweep_dir / r["run_id"], r["point"], r["summary"]) for r in cached["runs"]]
    runs = resolve_runs(spec)
    refs = [RunRef(r.run_id, r.run_dir, r.point, summary_of(r.config)) for r in runs]
    if spec.sweep_dir.is_dir():
        try:
            save_plan_cache(spec, refs, fingerprint)
        except StorageError:
            pass  # only a cache: a full or read-only disk must not keep `repro status` from telling
    return refs


def save_plan_cache(spec: SweepSpec, refs: list[RunRef], fingerprint: Optional[str] = None) -> None:
    files.atomic_write_json(spec.sweep_dir / PLAN_CACHE, {
        "fingerprint": fingerprint or spec.fingerprint(),
        "runs": [{"run_id": r.run_id, "point": r.point, "summary": r.summary} for r in refs]})


def status_refs(spec: SweepSpec, refs: list) -> list:
    """What ``repro status`` shows of a staged sweep: stage 1's runs and every other grid
    run that has a run folder (stage 2 once launched); all of the grid without stages."""
    if not spec.stages:
        return refs
    seeds = spec.stages[0].seeds
    return [r for r in refs if any(same_value(r.point.get("seed"), s) for s in seeds) or r.run_dir.is_dir()]


def needs_slurm(refs: list[RunRef]) -> bool:
    """Whether any run has a SLURM claim (then one squeue call is worth making)."""
    return any((claims.read_claim(r.run_dir) or {}).get("cluster") == "slurm" for r in refs)


def classify(ref: RunRef, slurm_jobs: Optional[dict[str, str]], stale_submitting: bool = False) -> TrackedRun:
    """The state of one run.  ``stale_submitting``: the caller holds the sweep lock, so a
    claim still saying "submitting" was left by a launcher that died."""
    status = files.read_json(ref.run_dir / rundir.STATUS) or {}
    written = status.get("state", "pending")
    claim = claims.read_claim(ref.run_dir)
    live = claims.claim_liveness(claim, slurm_jobs)
    if stale_submitting and live.job_state == "SUBMITTING":
        live = claims.Liveness(False)
    if written in rundir.FINAL_STATES:
        state = written
    elif live.alive:
        running = written == "running" and live.job_state in ("RUNNING", "COMPLETING")
        state = "running" if running else "queued"
    elif live.alive is None:
        state = "unknown"
    elif claim is None and written == "running":
        # no job: the trainer's own pid decides (a plain `repro train` on this machine); one
        # from another machine, or without a pid, is failed as before (no job can be running it)
        alive = claims.process_alive(status.get("host"), status.get("pid"), status.get("pid_start")) is True
        state = "running" if alive else "failed"
        live = claims.Liveness(alive, "RUNNING" if alive else "")
    elif claim is None and written == "pending":
        state = "pending"
    else:
        state = "failed"
    return TrackedRun(ref, RunState(state), status, claim, live.job_state)


def classify_all(refs: list[RunRef], stale_submitting: bool = False) -> list[TrackedRun]:
    slurm_jobs = claims.live_slurm_jobs() if needs_slurm(refs) else {}
    return [classify(r, slurm_jobs, stale_submitting) for r in refs]


def counts(states: list[TrackedRun]) -> dict[str, int]:
    out = {s: 0 for s in RunState}
    for st in states:
        out[st.state] += 1
    return {str(s): n for s, n in out.items() if n}


def format_counts(states: list[TrackedRun]) -> str:
    return ", ".join(f"{s} {n}" for s, n in counts(states).items()) or "no runs"


# ---------------------------------------------------------------------------- the table
FIXED = ("optimizer", "lr", "wd", "seed")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None or value == "" else str(value)


def run_table(states: list[TrackedRun]) -> str:
    """A plain-text table: id, optimizer, lr, wd, seed, other axes, state, epoch, top-1, job."""
    extra = []
    for st in states:
        for key in st.ref.point:
            short = SHORT_NAMES.get(key, key)
            if short not in FIXED and short not in extra:
                extra.append(short)
    header = ["run_id", *FIXED, *extra, "state", "epoch", "top1", "job"]
    rows = []
    for st in states:
        point = {SHORT_NAMES.get(k, k): v for k, v in st.ref.point.items()}
        epoch = st.status.get("epoch")
        epochs = st.ref.summary.get("epochs")
        top1 = st.status.get("top1")
        rows.append([st.ref.run_id, *(_fmt(st.ref.summary.get(k)) for k in FIXED), *(_fmt(point.get(k)) for k in extra),
                     st.state, f"{epoch}/{epochs}" if epoch is not None else f"-/{epochs}",
                     f"{top1:.4f}" if isinstance(top1, (int, float)) else "-",
                     st.job_id + (f" ({st.job_state})" if st.job_state and st.state not in ("done", "diverged") else "")])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows])


# ---------------------------------------------------------------------------- measured costs
@dataclass(frozen=True)
class RunCost:
    """What one run has cost so far: epochs run (fractional) and GPU-hours (wall time x ranks)."""

    run_id: str
    epochs: float
    gpu_hours: float


def _seconds(stamp) -> Optional[float]:
    """A manifest's ``%Y-%m-%dT%H:%M:%S%z`` time (or a number) as epoch seconds."""
    if isinstance(stamp, (int, float)):
        return float(stamp)
    try:
        return datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def run_cost(st: TrackedRun) -> Optional[RunCost]:
    """The cost of a run with at least one finished epoch, from its manifest (start time,
    world size: one GPU per rank) and status.json (last update, step of total steps).  None
    when it cannot be measured: no finished epoch, unreadable files, or a run started more than
    once (the manifest records each start but not when each ended, so the wall time between
    a requeue's end and the next start is unknown)."""
    status = st.status
    if not isinstance(status.get("epoch"), int) or status["epoch"] < 1:
        return None
    manifest = files.read_json(st.ref.run_dir / rundir.MANIFEST) or {}
    if len(manifest.get("starts") or []) != 1:
        return None
    start, end = _seconds(manifest.get("start_time")), _seconds(status.get("updated"))
    step, total, epochs = status.get("step"), status.get("total_steps"), st.ref.summary.get("epochs")
    ranks = manifest.get("world_size")
    if None in (start, end) or not all(isinstance(v, (int, float)) and v > 0 for v in (step, total, epochs, ranks)):
        return None
    return RunCost(st.ref.run_id, epochs * min(step / total, 1.0), max(end - start, 0.0) / 3600 * ranks)


@dataclass(frozen=True)
class Projection:
    label: str
    runs: int
    epochs: float
    spec_hours: Optional[float]
    projected_hours: Optional[float]
    bound: bool = False  # "at most" (stage 2 before stage 1 chose)


def spec_hours_per_epoch(spec: SweepSpec, epochs: Optional[float]) -> Optional[float]:
    if spec.gpu_hours_per_epoch is not None:
        return spec.gpu_hours_per_epoch
    if spec.gpu_hours_per_run is not None and epochs:
        return spec.gpu_hours_per_run / epochs
    return None


def _projection(spec: SweepSpec, label: str, refs: list, per_epoch: Optional[float], bound: bool = False,
                runs: Optional[int] = None) -> Projection:
    epochs_each = [float(r.summary.get("epochs") or 0) for r in refs]
    n = len(refs) if runs is None else runs
    epochs = sum(epochs_each) if runs is None else n * (max(epochs_each) if epochs_each else 0.0)
    if spec.gpu_hours_per_run is not None:
        spec_h = spec.gpu_hours_per_run * n
    else:
        spec_h = None if spec.gpu_hours_per_epoch is None else spec.gpu_hours_per_epoch * epochs
    return Projection(label, n, epochs, spec_h, None if per_epoch is None else per_epoch * epochs, bound)


def projections(spec: SweepSpec, refs: list, per_epoch: Optional[float]) -> list[Projection]:
    """The sweep's total (the whole grid; a staged sweep: its two stages) and each stage's, at
    ``per_epoch`` GPU-hours per epoch.  Stage 2 counts its launched runs, else the most it can
    have (each optimizer's best config, with its neighbours when the spec asks for them)."""
    if not spec.stages:
        return [_projection(spec, "sweep", refs, per_epoch)]
    one, two = spec.stages
    first = [r for r in refs if any(same_value(r.point.get("seed"), s) for s in one.seeds)]
    second = [r for r in refs if any(same_value(r.point.get("seed"), s) for s in two.seeds) and r.run_dir.is_dir()]
    p1 = _projection(spec, f"stage 1 ({one.name})", first, per_epoch)
    if second:
        p2 = _projection(spec, f"stage 2 ({two.name})", second, per_epoch)
    else:
        most = len(spec.axes.get("optim.name", [None])) * (5 if two.neighbours else 1) * len(two.seeds)
        p2 = _projection(spec, f"stage 2 ({two.name})", first, per_epoch, bound=True, runs=most)
    add = (lambda a, b: None if a is None or b is None else a + b)
    total = Projection("sweep (two stages)", p1.runs + p2.runs, p1.epochs + p2.epochs,
                       add(p1.spec_hours, p2.spec_hours), add(p1.projected_hours, p2.projected_hours), p2.bound)
    return [total, p1, p2]


def format_costs(spec: SweepSpec, refs: list, states: list[TrackedRun]) -> list[str]:
    """``repro status``'s cost lines: the measured GPU-hours per epoch beside the spec's, and
    the projected totals; nothing until a run has finished an epoch."""
    costs = [c for c in (run_cost(st) for st in states) if c is not None]
    started_more = sum(1 for st in states if isinstance(st.status.get("epoch"), int) and st.status["epoch"] >= 1
                       and len((files.read_json(st.ref.run_dir / rundir.MANIFEST) or {}).get("starts") or []) > 1)
    if not costs:
        return []
    epochs = sum(c.epochs for c in costs)
    measured = sum(c.gpu_hours for c in costs) / epochs if epochs > 0 else None
    if measured is None:
        return []
    first_epochs = next((r.summary.get("epochs") for r in refs), None)
    given = spec_hours_per_epoch(spec, first_epochs)
    versus = ("no estimate in the spec" if given is None else
              f"spec gpu_hours_per_epoch {given:.4g}" + (f", measured/spec x{measured / given:.2f}" if given > 0 else ""))
    left_out = f"; {started_more} resumed run(s) left out: their wall time between starts is not recorded" \
        if started_more else ""
    lines = [f"cost: measured {measured:.4g} GPU-hours per epoch (wall time x GPUs of {len(costs)} run(s), "
             f"{epochs:.1f} epochs run; {versus}){left_out}"]
    def gpu_h(x: float) -> str:  # 3 significant digits for the small sweeps of a CPU check
        return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"

    for p in projections(spec, refs, measured):
        bound = "at most " if p.bound else ""
        spec_h = "no spec estimate" if p.spec_hours is None else f"spec {bound}{gpu_h(p.spec_hours)}"
        lines.append(f"  projected {p.label}: {bound}{p.runs} runs, {bound}{gpu_h(p.projected_hours)} GPU-hours "
                     f"({spec_h})")
    return lines


# ---------------------------------------------------------------------------- failed runs
TAIL_LINES = 5


def scheduler_logs(spec: SweepSpec, st: TrackedRun) -> list[Path]:
    """The scheduler log files of a run's job (submitit's ``<job>_<task>_log.out/.err``, rank 0's
    first), those that exist: from its claim's folder, else its job id (or, on the local
    executor, the trainer's pid, which is the job's) under ``<sweep>/.submitit/``."""
    from submitit.core.utils import JobPaths  # submitit only: `repro status` stays free of torch

    claim = st.claim or {}
    job_id = str(claim.get("job_id") or st.status.get("job_id") or st.status.get("pid") or "")
    if not job_id:
        return []
    folder = Path(claim.get("submitit_folder") or spec.sweep_dir / ".submitit" / "%j")
    paths = JobPaths(folder, job_id=job_id, task_id=0)
    out = [p for p in (paths.stdout, paths.stderr) if p.is_file()]
    others = sorted(p for p in paths.folder.glob(f"{job_id}_*_log.*") if p not in out) if paths.folder.is_dir() else []
    return out + others


def tail(path: Path, n: int = TAIL_LINES, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``n`` non-empty lines of a (possibly huge) text file."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return [f"(unreadable: {exc.strerror})"]
    lines = [ln.rstrip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-n:]


def triage_lines(spec: SweepSpec, st: TrackedRun, n: int = TAIL_LINES) -> list[str]:
    """A failed run: its reason, then each scheduler log's path and last lines (empty logs skipped)."""
    lines = [f"  {st.ref.run_id} ({' '.join(f'{SHORT_NAMES.get(k, k)}={v}' for k, v in st.ref.point.items())}): "
             f"{st.reason}"]
    logs = scheduler_logs(spec, st)
    if not logs:
        lines.append("    log: none found (no job id recorded, or its .submitit folder was removed)")
    tails = [(path, tail(path, n)) for path in logs]
    tails = [(path, last) for path, last in tails if last]
    for path, last in tails[:2]:  # rank 0's out and err; further tasks' logs by count only
        lines.append(f"    log: {path} (last {len(last)} lines)")
        lines += [f"      | {line}" for line in last]
    if len(tails) > 2:
        lines.append(f"    {len(tails) - 2} more non-empty task log(s) in {tails[2][0].parent}")
    return lines


def array_line(states: list[TrackedRun]) -> str:
    """The SLURM arrays the live runs of the sweep belong to (a grid split to fit MaxArraySize
    is several), from their claims: one line, empty when none is queued or running."""
    live: dict[str, int] = {}
    for st in states:
        claim = st.claim or {}
        if claim.get("cluster") == "slurm" and st.state in ("queued", "running") and claim.get("job_id"):
            array = str(claim["job_id"]).split("_")[0]
            live[array] = live.get(array, 0) + 1
    if not live:
        return ""
    return f"SLURM: {len(live)} array(s) with live runs: " + ", ".join(f"{a} ({n})" for a, n in live.items())
