"""Job arrays that fit the site: read its limits, split a grid into arrays, keep the parallelism.

SLURM refuses an array with an index >= ``MaxArraySize`` (``scontrol show config``; often
1001, at some sites far less) and submitit submits a whole batch as one array, so a large
grid is split here into ``k = ceil(n / MaxArraySize)`` arrays of near-equal size.

``slurm.array_parallelism`` (P) stays the bound on the tasks running at once across all of
them.  The arrays are dealt round-robin onto ``L = min(k, P)`` lanes; the lanes run side by
side and split P between them (``P // L`` each, the first ``P % L`` one more), and within a
lane each array waits for the one before it (``--dependency=afterany:<previous array>``), so
at any time at most one array per lane runs, with at most its lane's share of P:

* k <= P: no dependencies, the budget is split (each array drains at the same pace, so none
  idles a share while the others still have work: better than chaining, which leaves slots
  idle at every array boundary);
* k > P: a split alone cannot give every array a slot, so the arrays of a lane are chained.

Caveat: a task of an earlier array that SLURM requeues after its successor started runs
beside it, one task over P until it ends.

Job-count limits are checked before anything is submitted (a one-line ConfigError):
``MaxJobCount`` (the controller's job records: each array is one record, each running task
one more) and, where ``sacctmgr`` answers, the user's association limits ``MaxSubmitJobs``
(every array task counts) and ``MaxJobs`` (running at once; below P it only means fewer run
together, said in a note).  Account- and QOS-level limits are not read (the scheduler still
enforces them).
"""
from __future__ import annotations

import getpass
import math
import os
import subprocess
from dataclasses import dataclass, field
from typing import Optional

from imagenet_repro.errors import ConfigError

TIMEOUT_S = 30


@dataclass(frozen=True)
class SiteLimits:
    """What the scheduler says bounds a submission (None: no limit, or not known)."""

    max_array_size: Optional[int] = None   # array indices 0 .. MaxArraySize - 1
    max_job_count: Optional[int] = None    # MaxJobCount: job records the controller holds
    jobs_now: Optional[int] = None         # job records in the queue now (all users)
    max_submit_jobs: Optional[int] = None  # the user's association: jobs (array tasks) submitted at once
    max_jobs: Optional[int] = None         # the user's association: jobs running at once
    user_jobs_now: Optional[int] = None    # the user's jobs and array tasks in the queue now
    notes: tuple = field(default_factory=tuple)  # one line each: what could not be read


@dataclass(frozen=True)
class ArrayPlan:
    """One array of a split submission: the runs ``start:stop`` of the list to submit."""

    start: int
    stop: int
    parallelism: int        # its %N: its lane's share of slurm.array_parallelism
    after: Optional[int]    # index of the array it waits for (afterany), None: starts at once

    @property
    def size(self) -> int:
        return self.stop - self.start


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config``'s ``Key = value`` lines as a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def _int(value: Optional[str], what: str) -> Optional[int]:
    """A limit read from the scheduler: an int > 0, None when unset; else a ConfigError."""
    if value is None or value.strip() in ("", "(null)", "N/A", "UNLIMITED"):
        return None
    try:
        number = int(value.strip().split()[0])
    except ValueError:
        raise ConfigError(f"{what} = {value.strip()!r} is not a number") from None
    if number <= 0:
        raise ConfigError(f"{what} = {number}: not a positive number of jobs (a MaxArraySize of 0 disables job "
                          f"arrays, which the launcher submits); ask your admins or use --cluster local")
    return number


def _run(cmd: list[str]) -> Optional[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def association_limits(text: str) -> tuple[Optional[int], Optional[int]]:
    """The tightest ``MaxSubmitJobs|MaxJobs`` over ``sacctmgr -n -P`` lines (a user may have one
    association per account and partition)."""
    submit, running = [], []
    for line in text.splitlines():
        if "|" not in line:
            continue
        a, b = (line.split("|") + [""])[:2]
        for value, into, name in ((a, submit, "MaxSubmitJobs"), (b, running, "MaxJobs")):
            number = _int(value, f"sacctmgr {name}")
            if number is not None:
                into.append(number)
    return (min(submit) if submit else None), (min(running) if running else None)


def read_site_limits(account: Optional[str] = None) -> SiteLimits:
    """MaxArraySize and MaxJobCount from ``scontrol show config``, the queue's size from
    ``squeue``, the user's association limits from ``sacctmgr`` (skipped, with a note, when it
    is missing or does not answer)."""
    notes = []
    text = _run(["scontrol", "show", "config"])
    if text is None:
        raise ConfigError("`scontrol show config` did not answer: cannot read MaxArraySize (is slurmctld up?)")
    config = parse_config(text)
    max_array = _int(config.get("MaxArraySize"), "scontrol show config: MaxArraySize")
    max_jobs_count = _int(config.get("MaxJobCount"), "scontrol show config: MaxJobCount")
    if "MaxArraySize" not in config:
        notes.append("scontrol show config has no MaxArraySize: one array per submission")
    queue = _run(["squeue", "-h", "-o", "%i"])
    jobs_now = None if queue is None else len(queue.split())
    user = os.environ.get("USER") or getpass.getuser()
    mine = _run(["squeue", "-h", "-r", "-u", user, "-o", "%i"])
    user_jobs_now = None if mine is None else len(mine.split())
    submit = running = None
    cmd = ["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={user}"]
    if account:
        cmd.append(f"account={account}")
    assoc = _run(cmd + ["format=MaxSubmitJobs,MaxJobs"])
    if assoc is None:
        notes.append("sacctmgr did not answer: the user's association limits (MaxSubmitJobs, MaxJobs) not checked")
    else:
        submit, running = association_limits(assoc)
    return SiteLimits(max_array, max_jobs_count, jobs_now, submit, running, user_jobs_now, tuple(notes))


def plan_arrays(n_runs: int, parallelism: int, max_array_size: Optional[int]) -> list[ArrayPlan]:
    """Split ``n_runs`` into arrays of at most ``max_array_size`` tasks on ``min(k, P)`` lanes
    (see the module docstring): their parallelisms add up to at most ``parallelism``."""
    if n_runs <= 0:
        return []
    if parallelism <= 0:
        raise ConfigError(f"slurm.array_parallelism must be > 0 (got {parallelism})")
    size = n_runs if max_array_size is None else max_array_size
    if size <= 0:
        raise ConfigError(f"MaxArraySize = {size}: not a positive number of array tasks")
    k = math.ceil(n_runs / size)
    base, extra = divmod(n_runs, k)
    lanes = min(k, parallelism)
    share, more = divmod(parallelism, lanes)
    plans, start = [], 0
    for i in range(k):
        stop = start + base + (1 if i < extra else 0)
        lane = i % lanes
        plans.append(ArrayPlan(start, stop, share + (1 if lane < more else 0), i - lanes if i >= lanes else None))
        start = stop
    return plans


def running_at_once(plans: list[ArrayPlan]) -> int:
    """The most tasks the arrays can run together: the shares of the lanes (their first arrays)."""
    return sum(p.parallelism for p in plans if p.after is None)


def check_fits(n_runs: int, plans: list[ArrayPlan], limits: SiteLimits) -> list[str]:
    """Refuse (ConfigError) a submission the site's job-count limits cannot take; return the
    note lines worth printing (limits not read, a MaxJobs below the parallelism)."""
    notes = list(limits.notes)
    if limits.max_job_count is not None and limits.jobs_now is not None:
        room = limits.max_job_count - limits.jobs_now
        if len(plans) > room:
            raise ConfigError(f"{n_runs} runs need {len(plans)} job arrays but SLURM holds {limits.jobs_now} of its "
                              f"MaxJobCount={limits.max_job_count} jobs: room for {max(room, 0)}; submit part of the "
                              f"grid with --only, or later")
    if limits.max_submit_jobs is not None:
        room = limits.max_submit_jobs - (limits.user_jobs_now or 0)
        if n_runs > room:
            raise ConfigError(f"{n_runs} runs to submit but your association allows MaxSubmitJobs="
                              f"{limits.max_submit_jobs} and you have {limits.user_jobs_now or 0} in the queue "
                              f"(sacctmgr): room for {max(room, 0)}; submit part of the grid with --only, or later")
    total = running_at_once(plans)
    if limits.max_jobs is not None and limits.max_jobs < total:
        notes.append(f"your association runs at most MaxJobs={limits.max_jobs} jobs at once (sacctmgr): fewer than "
                     f"the {total} the arrays allow will run together")
    return notes


def describe(plans: list[ArrayPlan], limits: SiteLimits) -> str:
    """One line: how the runs are split (for the launcher's announcement)."""
    cap = f"MaxArraySize={limits.max_array_size}" if limits.max_array_size else "no MaxArraySize"
    sizes = ", ".join(f"{p.size}" + (f" after #{p.after + 1}" if p.after is not None else "") for p in plans)
    return (f"{len(plans)} array(s) ({cap}; tasks: {sizes}), at most "
            f"{running_at_once(plans)} running at once")
