"""Job claims: ``<run_dir>/job.json`` says which job owns a run, so a run never gets two.

A launcher takes the sweep lock (``<sweep_dir>/.lock``, ``flock``), then claims each run it
will submit by creating ``job.json`` with ``O_CREAT | O_EXCL`` (``{"state": "submitting"}``),
submits, and replaces the claim with the job id (atomic rename) before it lets the lock go.
So under the lock, a claim still saying "submitting" belongs to a launcher that died, and
a claim with a job id is live exactly when the scheduler (``squeue``, or the local process)
still has that job.  Dead claims are removed and the run may be claimed again.

Liveness of the jobs of many claims is decided with one ``squeue`` call
(:func:`live_slurm_jobs`), never one call per run.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from imagenet_repro import files
from imagenet_repro.rundir import process_start

CLAIM = "job.json"
LOCK = ".lock"


@contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Exclusive lock of a sweep's launchers (blocks while another launcher submits)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / LOCK, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_claim(run_dir: Path) -> Optional[dict]:
    """The claim of a run; None when it has none.

    An empty, truncated or non-JSON claim (a launcher died between creating and writing
    it, or the file was damaged) reads as ``{"state": "submitting", "unreadable": ...}``:
    like any claim left in "submitting", the next launcher (which holds the sweep lock)
    treats it as dead and removes it, so the run is never blocked by a broken file."""
    path = run_dir / CLAIM
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"state": "submitting", "unreadable": f"{path}: {exc.strerror or exc}"}
    try:
        claim = json.loads(text)
    except ValueError:  # bad JSON or bad UTF-8
        claim = None
    if not isinstance(claim, dict):
        return {"state": "submitting", "unreadable": f"{path}: not a JSON object ({len(text)} bytes)"}
    return claim


def try_claim(run_dir: Path, cluster: str) -> bool:
    """Create the claim; False if the run already has one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(run_dir / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump({"state": "submitting", "cluster": cluster, "host": socket.gethostname(),
                   "launcher_pid": os.getpid(), "time": time.time()}, fh)
    return True


def record_job(run_dir: Path, cluster: str, job_id: str, folder: Path, pid: Optional[int] = None) -> None:
    """Replace our claim with the submitted job's identity."""
    claim = {"state": "submitted", "cluster": cluster, "job_id": str(job_id), "host": socket.gethostname(),
             "submitit_folder": str(folder), "time": time.time()}
    if pid is not None:
        claim.update(pid=pid, pid_start=process_start(pid))
    files.atomic_write_json(run_dir / CLAIM, claim)


def release(run_dir: Path, job_id: Optional[str] = None) -> None:
    """Remove the claim (only if it still names ``job_id``, when given)."""
    path = run_dir / CLAIM
    if job_id is not None:
        claim = files.read_json(path)
        if not claim or str(claim.get("job_id")) != str(job_id):
            return
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------- liveness
def process_alive(host: Optional[str], pid, pid_start: Optional[str]) -> Optional[bool]:
    """Whether process ``pid`` (started at ``pid_start``) still runs on ``host``; None when
    it is on another machine (cannot tell from here)."""
    if host != socket.gethostname():
        return None
    if pid is None:
        return False
    start = process_start(int(pid))
    return start is not None and (pid_start is None or start == pid_start)


def live_slurm_jobs() -> Optional[dict[str, str]]:
    """Every job SLURM still has (pending, running, requeued...): ``{"123_4": "RUNNING"}``.

    Array tasks are listed one per line (``-r``).  None when SLURM cannot be asked.
    """
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    jobs = {}
    for line in out.stdout.splitlines():
        if "|" in line:
            job_id, state = line.strip().split("|", 1)
            jobs[job_id] = state
    return jobs


@dataclass(frozen=True)
class Liveness:
    """What the scheduler says about a claim: alive (None = cannot tell) and its job state."""

    alive: Optional[bool]
    job_state: str = ""


def claim_liveness(claim: Optional[dict], slurm_jobs: Optional[dict[str, str]]) -> Liveness:
    if not claim:
        return Liveness(False)
    if claim.get("state") == "submitting":
        # a launcher is between claim and submission (or died there): only the lock holder knows
        return Liveness(None, "SUBMITTING")
    job_id = str(claim.get("job_id", ""))
    if claim.get("cluster") == "slurm":
        if slurm_jobs is None:
            return Liveness(None, "UNKNOWN")
        state = slurm_jobs.get(job_id)
        return Liveness(state is not None, state or "")
    alive = process_alive(claim.get("host"), claim.get("pid"), claim.get("pid_start") or "")
    if alive is None:
        return Liveness(None, "UNKNOWN")
    return Liveness(alive, "RUNNING" if alive else "")
