"""Arrays that fit the site (imagenet_repro/sweep/arrays.py): the split of a grid into job
arrays under MaxArraySize with slurm.array_parallelism kept across them, the limits read from
the scheduler, and the refusals (one line, exit 2, nothing written) when a submission cannot fit.

No cluster: stand-in scontrol/squeue/sacctmgr/sbatch scripts on PATH answer as a site would.
The real split on SLURM is tests/test_sweep_cluster.py's MaxArraySize test."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagenet_repro import cli
from imagenet_repro.errors import ConfigError
from imagenet_repro.sweep.arrays import (
    SiteLimits,
    association_limits,
    check_fits,
    parse_config,
    plan_arrays,
    read_site_limits,
    running_at_once,
)

REPO = Path(__file__).resolve().parents[1]


def max_concurrent(plans) -> int:
    """Replay the plan as SLURM would with every task taking one time unit: each array runs
    at most its %N tasks at once and starts when the array it waits for has ended."""
    remaining = [p.size for p in plans]
    ended = [False] * len(plans)
    most = 0
    while not all(ended):
        now = 0
        for i, p in enumerate(plans):
            if ended[i] or (p.after is not None and not ended[p.after]):
                continue
            n = min(p.parallelism, remaining[i])
            now += n
            remaining[i] -= n
        for i in range(len(plans)):
            ended[i] = remaining[i] == 0
        most = max(most, now)
    return most


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 600), parallelism=st.integers(1, 64), size=st.one_of(st.none(), st.integers(1, 300)))
def test_split_fits_covers_and_keeps_the_parallelism(n, parallelism, size):
    plans = plan_arrays(n, parallelism, size)
    assert [p.start for p in plans] == [0] + [p.stop for p in plans[:-1]] and plans[-1].stop == n  # each run once
    assert all(p.size <= (size or n) for p in plans)  # each array fits MaxArraySize
    assert max(p.size for p in plans) - min(p.size for p in plans) <= 1  # near-equal: the lanes drain together
    assert len(plans) == -(-n // (size or n))  # no more arrays than needed
    assert running_at_once(plans) <= parallelism
    assert max_concurrent(plans) <= parallelism
    assert all(p.after is None or p.after < i for i, p in enumerate(plans))
    if len(plans) <= parallelism:  # one lane per array: nothing waits, the whole budget is used
        assert all(p.after is None for p in plans) and running_at_once(plans) == parallelism


def test_split_examples():
    assert [(p.size, p.parallelism, p.after) for p in plan_arrays(2500, 32, 1001)] == \
        [(834, 11, None), (833, 11, None), (833, 10, None)]
    assert [(p.size, p.parallelism, p.after) for p in plan_arrays(5, 2, 2)] == \
        [(2, 1, None), (2, 1, None), (1, 1, 0)]
    assert [(p.size, p.parallelism, p.after) for p in plan_arrays(8, 32, None)] == [(8, 32, None)]


def test_parse_scontrol_config_and_associations():
    config = parse_config("Configuration data as of 2026-12-01T12:00:00\nMaxArraySize            = 1001\n"
                          "MaxJobCount             = 10000\nSLURM_CONF              = /etc/slurm/slurm.conf\n")
    assert config["MaxArraySize"] == "1001" and config["MaxJobCount"] == "10000"
    assert association_limits("|\n") == (None, None)
    assert association_limits("500|64\n200|\n") == (200, 64)  # the tightest of the user's associations


def fake_site(tmp_path: Path, monkeypatch, max_array: str = "1001", assoc: str | None = "|", queue: int = 0) -> Path:
    """Stand-ins for the SLURM commands, first on PATH (assoc None: sacctmgr fails)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "scontrol": f'echo "MaxArraySize            = {max_array}"; echo "MaxJobCount             = 10000"',
        "squeue": f"for i in $(seq 1 {queue}); do echo $((1000 + i)); done",
        "sacctmgr": f"printf '{assoc}\\n'" if assoc is not None else "exit 1",
        "sbatch": "echo 'sbatch must not be called' >&2; exit 1",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_read_site_limits_from_the_scheduler(tmp_path, monkeypatch):
    fake_site(tmp_path, monkeypatch, max_array="300", assoc="40|8", queue=3)
    limits = read_site_limits()
    assert (limits.max_array_size, limits.max_job_count, limits.max_submit_jobs, limits.max_jobs) == (300, 10000, 40, 8)
    assert limits.jobs_now == 3 and limits.user_jobs_now == 3 and limits.notes == ()


def test_without_sacctmgr_the_user_limits_are_skipped_with_a_note(tmp_path, monkeypatch):
    fake_site(tmp_path, monkeypatch, assoc=None)
    limits = read_site_limits()
    assert limits.max_submit_jobs is None
    assert any("sacctmgr did not answer" in note for note in limits.notes)
    assert any("sacctmgr" in note for note in check_fits(5, plan_arrays(5, 2, 1001), limits))


def test_job_count_limits_refuse_or_note():
    plans = plan_arrays(10, 4, 1001)
    with pytest.raises(ConfigError, match="MaxSubmitJobs=12 and you have 5 in the queue.*room for 7"):
        check_fits(10, plans, SiteLimits(max_submit_jobs=12, user_jobs_now=5))
    with pytest.raises(ConfigError, match="holds 9999 of its MaxJobCount=10000 jobs: room for 1"):
        check_fits(10, plan_arrays(10, 4, 5), SiteLimits(max_job_count=10000, jobs_now=9999))
    notes = check_fits(10, plans, SiteLimits(max_submit_jobs=12, user_jobs_now=2, max_jobs=2))
    assert notes == ["your association runs at most MaxJobs=2 jobs at once (sacctmgr): fewer than the 4 the arrays "
                     "allow will run together"]


def quick_spec(tmp_path: Path) -> Path:
    """The shipped quick spec (6 runs), its runs under tmp_path."""
    text = (REPO / "sweeps/paper_fig5_quick.yaml").read_text()
    path = tmp_path / "quick.yaml"
    path.write_text(text.replace("runs_root: runs", f"runs_root: {tmp_path / 'runs'}")
                    .replace("base: experiments/", f"base: {REPO}/experiments/")
                    .replace("  # data.train_path: /datasets/imagenet-ffcv/train_500_0.50_90.beton",
                             f"  data.train_path: {path}").replace(
                        "  # data.val_path: /datasets/imagenet-ffcv/val_500_0.50_90.beton", f"  data.val_path: {path}"))
    return path


@pytest.mark.parametrize("max_array, assoc, message", [
    ("0", "|", "MaxArraySize = 0: not a positive number of jobs (a MaxArraySize of 0 disables job arrays"),
    ("-5", "|", "MaxArraySize = -5: not a positive number"),
    ("lots", "|", "MaxArraySize = 'lots' is not a number"),
    ("1001", "4|", "6 runs to submit but your association allows MaxSubmitJobs=4"),
])
def test_a_site_that_cannot_take_the_sweep_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys,
                                                                                max_array, assoc, message):
    spec = quick_spec(tmp_path)
    fake_site(tmp_path, monkeypatch, max_array=max_array, assoc=assoc)
    assert cli.main(["sweep", str(spec), "--cluster", "slurm", "--no-wait"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "runs").exists()  # no lock, no plan cache, no claim, nothing submitted
