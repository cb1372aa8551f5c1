"""Sweeps that really train: submitit's local executor, and a real single-node SLURM
cluster with job arrays, idempotent re-sweeps and a requeued array task that resumes from
its checkpoint, and a task sent submitit's time-limit signal that checkpoints, is requeued
and finishes exactly. The SLURM tests use the tests' own cluster (scripts/slurm-up.sh's, started by
conftest's `slurm_cluster` as root when it is not running) or an opted-in partition, never
another (tests/conftest.py: slurm_target); elsewhere they are skipped, in one line."""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_same_tables, fmnist_folder, slurm_spec_keys

from imagenet_repro import cli, rundir
from imagenet_repro.sweep import arrays, claims
from imagenet_repro.sweep.launcher import launch
from imagenet_repro.sweep.spec import load_spec
from imagenet_repro.sweep.status import classify_all, run_refs
from imagenet_repro.sweepdir import read_description

REPO = Path(__file__).resolve().parents[1]

# Tiny runs: a few hundred Fashion-MNIST images through the torchvision backend, seconds each.
TINY = f"""
runs_root: RUNS
base: {REPO}/experiments/demo.yaml
overrides:
  data.backend: torchvision
  data.train_path: FMNIST
  data.val_path: FMNIST
  data.train_subset: 256
  data.val_subset: 128
  data.batch_size: 64
  data.num_workers: 0
  train.epochs: EPOCHS
  train.progress: false
  train.threads: 1
  telemetry.layer_every: 2
  telemetry.flush_every: 2
slurm: {{SLURM_KEYScpus_per_task: 1, timeout_min: 10, signal_delay_s: 20}}
"""


def tiny_spec(tmp_path: Path, name: str, axes: str, epochs: int = 2, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + TINY.replace("RUNS", str(tmp_path / "runs")).replace("EPOCHS", str(epochs))
                    .replace("FMNIST", str(fmnist_folder())).replace("SLURM_KEYS", slurm_spec_keys())
                    + f"axes:\n{axes}\n{extra}")
    return path


@pytest.mark.slow
def test_local_executor_runs_the_grid_then_submits_nothing(tmp_path, capsys):
    spec = tiny_spec(tmp_path, "loc", "  optimizer: [sgd, sgdc]\n", extra="local: {parallelism: 2}\n")
    assert cli.main(["sweep", str(spec), "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    assert "submitted 2 runs: 2 local job(s)" in out and "sweep loc: done 2" in out
    for st in classify_all(run_refs(load_spec(spec))):
        assert st.state == "done" and st.claim is None  # the lane released its claims
        assert len(pd.read_parquet(st.ref.run_dir / rundir.EVAL)) == 2
    assert read_description(load_spec(spec).sweep_dir) == load_spec(spec).description()  # sweep.json, for the analysis
    assert cli.main(["sweep", str(spec), "--cluster", "local"]) == 0
    assert "submitted 0 runs" in capsys.readouterr().out


# ---------------------------------------------------------------------------- SLURM
@contextmanager
def held_past_epoch_one(run_dir: Path, timeout_s: float = 600):
    """Hold the run's trainer (SIGSTOP, every rank) as soon as its status.json says epoch 1 is done, for the
    block, then let it go on (SIGCONT): what the block does to its job (a requeue, a signal)
    lands mid-training whatever the machine's speed, instead of racing the run's last steps.
    (On a node that is not this machine -- an opted-in partition -- the block runs unheld.)"""
    deadline = time.monotonic() + timeout_s
    while (rundir.read_status(run_dir).get("epoch") or 0) < 1:
        assert rundir.read_status(run_dir).get("state") != "done", "finished before epoch 1 was seen"
        assert time.monotonic() < deadline, "run never reached epoch 1"
        time.sleep(0.01)
    status = rundir.read_status(run_dir)
    ranks = status.get("ranks") or [{"host": status.get("host"), "pid": status.get("pid")}]  # every rank's process
    pids = [r["pid"] for r in ranks if r.get("pid") and r.get("host") == socket.gethostname()]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        assert rundir.read_status(run_dir).get("state") == "running", "finished before it could be held"
        yield status
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:  # a rank the block killed
                pass


def sacct_jobs(name: str) -> set[str]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", "now-1days", "--name", f"repro-{name}", "-o", "JobID"],
                         capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_job_array_end_to_end_then_no_new_jobs(slurm_cluster, tmp_path, capsys):
    name = f"e2e{os.getpid()}"
    spec = tiny_spec(tmp_path, name, "  optimizer: [sgd, sgdc]\n  optim.lr: [0.05, 0.2]\n", epochs=1)
    t0 = time.monotonic()
    assert launch(spec, cluster="slurm", poll_s=1.0) == 0
    print(f"4-run array submit -> all done: {time.monotonic() - t0:.1f} s")
    out = capsys.readouterr().out
    assert "submitted 4 runs: SLURM job" in out and "(4 array tasks)" in out
    states = classify_all(run_refs(load_spec(spec)))
    assert [s.state for s in states] == ["done"] * 4
    array_ids = {s.claim["job_id"].split("_")[0] for s in states}
    assert len(array_ids) == 1 and {s.status["job_id"] for s in states} == {s.claim["job_id"] for s in states}
    jobs_before = sacct_jobs(name)
    assert len(jobs_before) == 4

    assert launch(spec, cluster="slurm", poll_s=1.0) == 0
    assert "submitted 0 runs" in capsys.readouterr().out
    assert sacct_jobs(name) == jobs_before


@pytest.mark.slow
@pytest.mark.slurm
def test_requeued_array_task_resumes_from_its_checkpoint(slurm_cluster, tmp_path, capsys):
    # the same single run twice: in "ref" undisturbed, in "rq" requeued mid-training
    axes = "  optimizer: [sgdc]\n  seed: [3, 4]\n"  # two runs: a real array, requeue task 0 only
    ref, rq = (tiny_spec(tmp_path, f"{n}{os.getpid()}", axes, epochs=3) for n in ("ref", "rq"))
    assert launch(ref, cluster="slurm", wait=False) == 0
    assert launch(rq, cluster="slurm", wait=False) == 0
    target = run_refs(load_spec(rq))[0]
    with held_past_epoch_one(target.run_dir):  # a checkpoint exists, still training
        job_id = claims.read_claim(target.run_dir)["job_id"]
        t0 = time.monotonic()
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    assert launch(rq, cluster="slurm", poll_s=1.0) == 0  # nothing new submitted: the requeued task is live
    out = capsys.readouterr().out
    assert "submitted 0 runs" in out
    print(f"requeue -> done: {time.monotonic() - t0:.1f} s")
    assert launch(ref, cluster="slurm", poll_s=1.0) == 0

    status = rundir.read_status(target.run_dir)
    assert status["state"] == "done" and status["job_id"] == job_id
    assert (status.get("resumed_from_step") or 0) > 0
    assert len(pd.read_parquet(target.run_dir / rundir.EVAL)) == 3
    assert_same_tables(run_refs(load_spec(ref))[0].run_dir, target.run_dir)


def restarts(job_id: str) -> int:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"\bRestarts=(\d+)", out).group(1))


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.long  # make test's 10 minutes: in make test-rehearsals (CI runs both)
def test_timeout_signal_checkpoints_at_a_step_boundary_requeues_and_finishes_exactly(slurm_cluster, tmp_path, capsys):
    """The signal submitit has SLURM send before the time limit (`--signal=USR2@signal_delay_s`),
    sent now with `scancel --signal=USR2` to a training array task: the trainer checkpoints at
    the next step boundary and hands over to submitit's handler, which (the job past its
    guaranteed walltime: the timed-out case) checkpoints the job and requeues it with
    `scontrol requeue`; the same job resumes from that step and ends with the tables of an
    uninterrupted run."""
    axes = "  optimizer: [sgd]\n  seed: [5]\n"
    ref, sig = (tiny_spec(tmp_path, f"{n}{os.getpid()}", axes, epochs=5) for n in ("tref", "tsig"))
    assert launch(ref, cluster="slurm", wait=False) == 0
    assert launch(sig, cluster="slurm", wait=False) == 0
    target = run_refs(load_spec(sig))[0]
    with held_past_epoch_one(target.run_dir):  # training, past its first epoch
        job_id = claims.read_claim(target.run_dir)["job_id"]
        assert restarts(job_id) == 0
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    deadline = time.monotonic() + 300
    while not (rundir.read_status(target.run_dir).get("reason") or "").startswith("interrupted by SIGUSR2"):
        assert rundir.read_status(target.run_dir).get("state") != "done", "the signal changed nothing"
        assert time.monotonic() < deadline, "the trainer never took the signal"
        time.sleep(0.1)
    interrupted = rundir.read_status(target.run_dir)
    step = interrupted["step"]
    assert interrupted["reason"] == f"interrupted by SIGUSR2 at step {step}; resumes from its checkpoint"
    assert 4 <= step < 20  # after epoch 1, before the end (5 epochs x 4 steps)
    while restarts(job_id) == 0:  # submitit's handler requeued the job
        assert time.monotonic() < deadline, "the job was not requeued"
        time.sleep(0.2)
    assert launch(sig, cluster="slurm", poll_s=1.0) == 0  # nothing new submitted: the requeued job is live
    assert "submitted 0 runs" in capsys.readouterr().out
    assert launch(ref, cluster="slurm", poll_s=1.0) == 0

    status = rundir.read_status(target.run_dir)
    assert status["state"] == "done" and status["job_id"] == job_id and restarts(job_id) == 1
    assert status["resumed_from_step"] == step  # from the checkpoint written at the signal's step boundary
    assert_same_tables(run_refs(load_spec(ref))[0].run_dir, target.run_dir)


# ---------------------------------------------------------------------------- several ranks
TWO_TASKS = "cpus_per_task: 1, tasks_per_node: 2, timeout_min: 10, signal_delay_s: 10}"


def two_task_specs(tmp_path: Path, names: tuple[str, ...], epochs: int = 5) -> list[Path]:
    """Tiny specs whose one run is a 2-task SLURM job (2 DDP ranks over gloo), the signal 10 s
    before the time limit as the rehearsal sets it."""
    specs = [tiny_spec(tmp_path, f"{n}{os.getpid()}", "  optimizer: [sgd]\n  seed: [6]\n", epochs=epochs)
             for n in names]
    for spec in specs:
        text = spec.read_text()
        assert "cpus_per_task: 1, timeout_min: 10, signal_delay_s: 20}" in text
        spec.write_text(text.replace("cpus_per_task: 1, timeout_min: 10, signal_delay_s: 20}", TWO_TASKS))
    return specs


def wait_until(what: str, done, seconds: float = 300.0, poll_s: float = 0.1):
    deadline = time.monotonic() + seconds
    while not (value := done()):
        assert time.monotonic() < deadline, what
        time.sleep(poll_s)
    return value


def job_gone(job_id: str) -> bool:
    return not subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.long  # make test's 10 minutes: in make test-rehearsals (CI runs both)
def test_two_task_job_signalled_stops_every_rank_at_one_step_requeues_and_resumes_exactly(slurm_cluster, tmp_path,
                                                                                           capsys):
    """`scancel --signal=USR2` of a running 2-task job: SLURM delivers the signal to both tasks,
    each meets it at its own step boundary; the ranks agree on one step, rank 0 writes one
    checkpoint and requeues the job, the requeued job resumes there and ends with the tables
    of an uninterrupted 2-task run."""
    ref, sig = two_task_specs(tmp_path, ("mref", "msig"))
    assert launch(sig, cluster="slurm", wait=False) == 0
    target = run_refs(load_spec(sig))[0]
    job_id = claims.read_claim(target.run_dir)["job_id"]
    with held_past_epoch_one(target.run_dir) as running:  # both ranks held: the signal lands mid-training
        assert running["world_size"] == 2 and restarts(job_id) == 0
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)

    def interrupted_status():
        st = rundir.read_status(target.run_dir)
        return st if (st.get("reason") or "").startswith("interrupted by") else None

    interrupted = wait_until("the ranks never took the signal", interrupted_status)
    step = interrupted["step"]
    assert interrupted["reason"] == (f"interrupted by SIGUSR2 at step {step} (seen by rank 0, 1 of 2); "
                                     f"resumes from its checkpoint")
    assert 4 <= step < 20  # after epoch 1 (4 steps), before the end
    wait_until("the job was not requeued", lambda: restarts(job_id) == 1, poll_s=0.2)
    assert launch(sig, cluster="slurm", poll_s=1.0) == 0  # nothing new submitted: the requeued job is live
    assert "submitted 0 runs" in capsys.readouterr().out
    assert launch(ref, cluster="slurm", poll_s=1.0) == 0

    status = rundir.read_status(target.run_dir)
    assert status["state"] == "done" and status["job_id"] == job_id and restarts(job_id) == 1
    assert status["resumed_from_step"] == step and status["resumed_after"] == interrupted["reason"]
    assert_same_tables(run_refs(load_spec(ref))[0].run_dir, target.run_dir)


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.slurm_own  # kills a rank's process: on this machine
def test_a_killed_rank_ends_its_job_promptly_with_a_status_naming_it_and_a_resweep_resumes_exactly(
        slurm_cluster, tmp_path, capsys):
    """kill -9 of rank 1 of a running 2-task job (what the OOM killer does): srun's
    --kill-on-bad-exit ends the step at once, rank 0 finds rank 1's process gone and says so in
    status.json before it is killed; a re-sweep resubmits the failed run, which resumes from its
    last checkpoint and ends with the tables of an uninterrupted run."""
    ref, sweep = two_task_specs(tmp_path, ("kref", "kill"), epochs=4)
    assert launch(sweep, cluster="slurm", wait=False) == 0
    target = run_refs(load_spec(sweep))[0]
    job_id = claims.read_claim(target.run_dir)["job_id"]
    with held_past_epoch_one(target.run_dir) as running:  # mid-training, whatever the machine's speed
        rank1 = next(r for r in running["ranks"] if r["rank"] == 1)
        os.kill(rank1["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
    wait_until("the job outlived its killed rank", lambda: job_gone(job_id), seconds=120, poll_s=0.2)
    with capsys.disabled():  # the measured time, in the log (-s)
        print(f"job {job_id} gone {time.monotonic() - killed_at:.1f} s after kill -9 of rank 1")
    status = rundir.read_status(target.run_dir)
    assert status["state"] == "failed" and status["failed_rank"] == 1, status
    assert status["reason"].startswith(f"rank 1 (pid {rank1['pid']} on {rank1['host']}) of 2 died at step "), status
    assert " without a word (killed: kill -9, the OOM killer or a native crash)" in status["reason"]
    assert classify_all(run_refs(load_spec(sweep)))[0].state == "failed"

    assert launch(sweep, cluster="slurm", poll_s=1.0) == 0  # the re-sweep: the failed run resubmitted
    assert "submitted 1 runs" in capsys.readouterr().out
    status = rundir.read_status(target.run_dir)
    assert status["state"] == "done" and status["resumed_from_step"] >= 4  # from a checkpoint past epoch 1
    assert status["resumed_after"].startswith("rank 1 (pid ")
    assert launch(ref, cluster="slurm", poll_s=1.0) == 0
    assert_same_tables(run_refs(load_spec(ref))[0].run_dir, target.run_dir)


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.slurm_own  # the 2 GPUs slurm-up.sh's node advertises
def test_multi_gpu_submission_asks_one_task_per_gpu(slurm_cluster, tmp_path):
    """The sbatch script of a 2-GPU run: --gpus-per-node=2 and 2 tasks (DDP), accepted by SLURM."""
    from imagenet_repro.sweep.launcher import _slurm_executor

    spec = load_spec(tiny_spec(tmp_path, "gpu", "  seed: [0]\n"))
    spec = dataclasses.replace(spec, slurm=dataclasses.replace(spec.slurm, gpus_per_node=2, timeout_min=5))
    ex = _slurm_executor(spec)
    assert ex.parameters["gpus_per_node"] == 2 and ex.parameters["ntasks_per_node"] == 2
    job = ex.submit(shutil.which, "sh")  # a trivial callable: checks placement, not training
    assert job.results() == [shutil.which("sh")] * 2  # one result per task


# ---------------------------------------------------------------------------- arrays that fit the site
def slurm_config() -> dict[str, str]:
    return arrays.parse_config(subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                                              check=True).stdout)


def _array_accepted(size: int) -> bool:
    """Whether the controller takes an array of ``size`` tasks now (a held job, cancelled at once):
    what it enforces, which `scontrol show config` alone does not tell (see below)."""
    proc = subprocess.run(["sbatch", "--hold", f"--array=0-{size - 1}", "--wrap", "true", "-o", "/dev/null",
                           "-J", "repro-probe"], capture_output=True, text=True, timeout=60)
    if proc.returncode == 0:
        subprocess.run(["scancel", proc.stdout.split()[-1]], check=True, timeout=60)
    return proc.returncode == 0


def _enforces(value: int, exact: bool) -> bool:
    return _array_accepted(value) and (not exact or not _array_accepted(value + 1))


def _restart_controller() -> None:
    """Stop slurmctld and start it again (running jobs live on in slurmd; the state is saved)."""
    pid_file = Path(slurm_config()["SlurmctldPidFile"])
    pid = int(pid_file.read_text().split()[0])
    subprocess.run(["scontrol", "shutdown", "slurmctld"], check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "slurmctld did not stop"
        time.sleep(0.1)
    subprocess.run(["slurmctld"], check=True, timeout=60)
    while subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "slurmctld did not come back"
        time.sleep(0.1)


def _reconfigure_to(conf: Path, text: str, value: int, exact: bool) -> None:
    """Write slurm.conf and make the controller enforce it: arrays of ``value`` tasks taken and,
    ``exact``, one more refused.  `scontrol reconfigure` first; measured on SLURM 22.05 it does
    not reliably change the MaxArraySize the controller enforces (`scontrol show config` shows
    the new value, submissions are checked against an old one), so when a probe array says it
    did not, slurmctld is restarted (a few seconds; jobs keep running)."""
    conf.write_text(text)
    subprocess.run(["scontrol", "reconfigure"], check=True, capture_output=True, timeout=60)
    time.sleep(1.0)
    if not _enforces(value, exact):
        _restart_controller()
    deadline = time.monotonic() + 30
    while not _enforces(value, exact):
        assert time.monotonic() < deadline, f"slurmctld does not enforce MaxArraySize={value}"
        time.sleep(0.5)


@contextmanager
def lowered_max_array_size(value: int):
    """MaxArraySize lowered in slurm.conf for the block only, and ALWAYS restored, file and
    controller, however the block ends: other tests use this cluster (see _reconfigure_to)."""
    config = slurm_config()
    conf, before = Path(config["SLURM_CONF"]), int(config["MaxArraySize"])
    original = conf.read_text()
    kept = [ln for ln in original.splitlines() if not ln.strip().startswith("MaxArraySize")]
    try:
        _reconfigure_to(conf, "\n".join(kept + [f"MaxArraySize={value}"]) + "\n", value, exact=True)
        yield
    finally:
        _reconfigure_to(conf, original, before, exact=True)
        _wait_until_a_job_runs()


def _wait_until_a_job_runs(timeout_s: float = 180) -> None:
    """After a controller restart the node may take a while to take jobs again (a job sent
    meanwhile fails at once): wait until a one-task job runs to completion, so the tests
    after this one find the cluster as it was."""
    deadline = time.monotonic() + timeout_s
    while True:
        proc = subprocess.run(["sbatch", "--wait", "--wrap", "true", "-o", "/dev/null", "-J", "repro-probe"],
                              capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode == 0:
            return
        assert time.monotonic() < deadline, f"the cluster runs no job after the restart: {proc.stderr.strip()}"
        time.sleep(2.0)


def _sacct_times(job_ids: list[str]) -> dict[str, tuple[datetime, datetime]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", "JobID,Start,End"],
                         capture_output=True, text=True, check=True).stdout
    times = {}
    for line in out.splitlines():
        job, start, end = line.split("|")
        times[job] = (datetime.fromisoformat(start), datetime.fromisoformat(end))
    return times


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.slurm_own  # it rewrites slurm.conf and restarts slurmctld:
@pytest.mark.root       # only the tests' own cluster, as root
@pytest.mark.long  # make test's 10 minutes: in make test-rehearsals (CI runs both)
def test_grid_over_max_array_size_is_split_and_keeps_the_parallelism(slurm_cluster, tmp_path, capsys):
    """4 runs, MaxArraySize lowered to 2, array_parallelism 1: two arrays of 2, the second
    waiting for the first (afterany), never more than 1 task running (the node fits 2);
    a re-sweep submits nothing and status sees one sweep."""
    name = f"split{os.getpid()}"
    spec = tiny_spec(tmp_path, name, "  optimizer: [sgd, sgdc]\n  seed: [0, 1]\n", epochs=1)
    spec.write_text(spec.read_text().replace("signal_delay_s: 20}", "signal_delay_s: 20, array_parallelism: 1}"))
    with lowered_max_array_size(2):  # the limit counts at submission only: restored right after
        assert launch(spec, cluster="slurm", wait=False) == 0
    assert _array_accepted(8)  # restored: the other tests' arrays fit again
    out = capsys.readouterr().out
    print(out)
    assert "split into 2 array(s) (MaxArraySize=2; tasks: 2, 2 after #1), at most 1 running at once" in out
    assert "submitted 4 runs: SLURM jobs " in out and "(2 arrays, 4 tasks)" in out
    most, seen, deadline = 0, set(), time.monotonic() + 600
    while True:  # follow the queue: how many of our tasks run at once
        q = subprocess.run(["squeue", "-h", "-r", "-n", f"repro-{name}", "-o", "%i|%T"], capture_output=True,
                           text=True, check=True).stdout.split()
        running = [j.split("|")[0] for j in q if j.endswith("|RUNNING")]
        seen |= set(running)
        most = max(most, len(running))
        if not q:
            break
        assert time.monotonic() < deadline, f"still queued: {q}"
        time.sleep(0.2)
    states = classify_all(run_refs(load_spec(spec)))
    assert [s.state for s in states] == ["done"] * 4
    ids = sorted({s.claim["job_id"] for s in states})
    by_array: dict[str, list[str]] = {}
    for job in ids:
        by_array.setdefault(job.split("_")[0], []).append(job)
    assert len(by_array) == 2 and all(len(v) == 2 for v in by_array.values()), ids
    assert most == 1 and len(seen) >= 2, (most, seen)
    first, second = sorted(by_array, key=int)
    times = _sacct_times(ids)
    assert min(times[j][0] for j in by_array[second]) >= max(times[j][1] for j in by_array[first]), times
    script = (tmp_path / "runs" / name / ".submitit" / second / f"{second}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterany:{first}" in script and "#SBATCH --array=0-1%1" in script

    assert launch(spec, cluster="slurm", poll_s=1.0) == 0  # the re-sweep sees both arrays' runs done
    assert "submitted 0 runs" in capsys.readouterr().out
    assert cli.main(["status", str(spec)]) == 0
    assert f"sweep {name}: 4 runs in {tmp_path / 'runs' / name}: done 4" in capsys.readouterr().out
