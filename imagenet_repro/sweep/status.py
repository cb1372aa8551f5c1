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
