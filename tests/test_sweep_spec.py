"""Sweep specs, planning, claims and status: no cluster, no training."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from imagenet_repro import cli, rundir
from imagenet_repro.config import build_config, config_hash
from imagenet_repro.errors import ConfigError
from imagenet_repro.sweep import claims
from imagenet_repro.sweep.spec import grid_points, load_spec, resolve_runs, select_points
from imagenet_repro.sweep.status import classify_all, run_refs

REPO = Path(__file__).resolve().parents[1]


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("RUNS", str(tmp_path / "runs")).replace("BASE", str(REPO / "experiments/demo.yaml")))
    return path


SMALL = """
name: small
runs_root: RUNS
base: BASE
overrides: {train.epochs: 2}
axes:
  optimizer: [sgd, sgdc]
  optim.lr: [0.05, 1]
  optim.weight_decay: [5.0e-4, 0.005]
  seed: [0, 1]
gpu_hours_per_run: 0.5
"""


def test_run_ids_equal_config_hash_of_build_config(tmp_path):
    spec = load_spec(write_spec(tmp_path, SMALL))
    runs = resolve_runs(spec)
    assert len(runs) == 16 and len({r.run_id for r in runs}) == 16
    base = OmegaConf.load(REPO / "experiments/demo.yaml")
    for run in runs:
        p = run.point
        cfg = build_config(base, {"train": {"epochs": 2}}, {"name": "small", "seed": p["seed"]},
                           {"optim": {"name": p["optim.name"], "lr": p["optim.lr"], "weight_decay": p["optim.weight_decay"]}},
                           check_paths=False)
        assert config_hash(cfg) == run.run_id
        assert OmegaConf.to_container(cfg) == run.config
        assert run.run_dir == tmp_path / "runs" / "small" / run.run_id
    assert isinstance(runs[0].config["optim"]["lr"], float)  # lr: 1 became 1.0 as OmegaConf does


def test_paper_fig5_grid_and_dry_run(capsys, checkout_copy):
    spec = load_spec("sweeps/paper_fig5.yaml")
    assert [len(v) for v in spec.axes.values()] == [2, 7, 8, 5]
    assert spec.axes["optim.lr"] == [2.0 ** -k for k in range(6, -1, -1)]
    # the whole grid (the spec's two-stage plan: tests/test_sweep_stages.py)
    assert cli.main(["sweep", "sweeps/paper_fig5.yaml", "--dry-run", "--cluster", "slurm", "--stage", "all"]) == 0
    out = capsys.readouterr().out
    assert "560 runs (2 optimizer x 7 lr x 8 wd x 5 seed)" in out
    assert "to submit: 560" in out and "14,000.0 GPU-hours" in out
    assert "warning: data path missing here: data/imagenet/train.beton" in out
    run_lines = [line for line in out.splitlines() if line.strip().startswith("submit ")]
    assert len(run_lines) == 560
    assert not (checkout_copy / "runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize("text, message", [
    ("name: x\naxes: {seed: [0]}\nbogus: 1\n", "unknown key in the sweep spec: bogus"),
    ("name: x\nslurm: {partition: a, gpus: 2}\n", "unknown key in slurm: gpus"),
    ("name: x\naxes: {seed: []}\n", "axis seed must be a non-empty list"),
    ("name: x\naxes: {optimizer: [sgd], optim.name: [sgdc]}\n", "given twice"),
    ("name: x\nslurm: {gpus_per_node: 4, tasks_per_node: 2}\n", "must equal slurm.gpus_per_node"),
    ("name: x\nbase: BASE\naxes: {optim.lr: [0.1, -1.0]}\n", "grid point lr=-1.0: optim.lr must be > 0"),
    ("name: x\nbase: BASE\naxes: {optimizer: [sgd, adamw], optim.momentum: [0.9]}\n",
     "grid point optimizer=adamw optim.momentum=0.9: unknown config key: optim.momentum"),
    ("name: x\nbase: BASE\naxes: {optim.lr: [fast]}\n", "grid point lr=fast: bad value for optim.lr"),
    ("name: x\nbase: BASE\naxes: {optim.lr: [0.1, 0.10]}\n", "repeated values"),
    ("name: x\nbase: BASE\naxes: {train.progress: [true, false]}\n", "resolve to the same run"),
])
def test_bad_spec_or_grid_point_is_one_line_exit_2_nothing_submitted(tmp_path, capsys, text, message):
    spec = write_spec(tmp_path, "runs_root: RUNS\n" + text)
    assert cli.main(["sweep", str(spec), "--cluster", "local", "--no-wait"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("repro: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_missing_data_path_is_an_error_for_a_real_submission(tmp_path, capsys):
    spec = write_spec(tmp_path, "name: x\nruns_root: RUNS\nbase: BASE\n"
                                "overrides: {data.train_path: /nonexistent/train.beton}\n")
    assert cli.main(["sweep", str(spec), "--cluster", "local"]) == 2
    assert "data path does not exist: /nonexistent/train.beton" in capsys.readouterr().err
    assert cli.main(["sweep", str(spec), "--cluster", "local", "--dry-run"]) == 0


def test_only_selects_grid_points(tmp_path):
    spec = load_spec(write_spec(tmp_path, SMALL))
    points = grid_points(spec)
    picked = select_points(spec, points, ["optimizer=sgdc", "optim.lr=1", "seed=0", "seed=1"])
    assert len(picked) == 4 and all(p["optim.name"] == "sgdc" and p["optim.lr"] == 1 for p in picked)
    with pytest.raises(ConfigError, match="not an axis"):
        select_points(spec, points, ["optim.momentum=0.9"])
    with pytest.raises(ConfigError, match="no grid point has this value"):
        select_points(spec, points, ["optim.lr=0.3"])


def test_claims_are_exclusive_and_dead_jobs_are_seen(tmp_path):
    run = tmp_path / "r"
    assert claims.try_claim(run, "local") and not claims.try_claim(run, "local")
    assert claims.claim_liveness(claims.read_claim(run), {}).alive is None  # "submitting": only the lock holder knows
    claims.record_job(run, "local", str(os.getpid()), tmp_path, pid=os.getpid())
    assert claims.claim_liveness(claims.read_claim(run), {}).alive is True
    claims.record_job(run, "slurm", "41_3", tmp_path)
    assert claims.claim_liveness(claims.read_claim(run), {"41_3": "PENDING"}).alive is True
    assert claims.claim_liveness(claims.read_claim(run), {"41_2": "RUNNING"}).alive is False
    assert claims.claim_liveness(claims.read_claim(run), None).alive is None  # SLURM unreachable
    claims.release(run, job_id="other")
    assert claims.read_claim(run) is not None
    claims.release(run, job_id="41_3")
    assert claims.read_claim(run) is None


def _fake_run(run_dir: Path, state: str | None, claim: dict | None = None, **status) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if state is not None:
        rundir.write_status(run_dir, state, **status)
    if claim is not None:
        (run_dir / claims.CLAIM).write_text(json.dumps(claim))


def test_status_and_plan_on_hundreds_of_synthetic_runs(tmp_path, capsys):
    spec_path = write_spec(tmp_path, SMALL.replace("seed: [0, 1]", "seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]"))
    spec = load_spec(spec_path)
    refs = run_refs(spec)
    assert len(refs) == 160
    dead = {"state": "submitted", "cluster": "local", "host": os.uname().nodename, "job_id": "1", "pid": 1,
            "pid_start": "not-a-start-time"}
    mine = {"state": "submitted", "cluster": "local", "host": os.uname().nodename, "job_id": str(os.getpid()),
            "pid": os.getpid(), "pid_start": rundir.process_start(os.getpid())}
    expected = {"done": 0, "diverged": 0, "running": 0, "queued": 0, "failed": 0, "pending": 0}
    for i, ref in enumerate(refs):
        kind = ("done", "diverged", "running", "queued", "failed", "lost", "pending")[i % 7]
        if kind in ("done", "diverged"):
            _fake_run(ref.run_dir, kind, epoch=2, top1=0.5, job_id="7_1")
        elif kind == "running":
            _fake_run(ref.run_dir, "running", mine, epoch=1, top1=0.25)
        elif kind == "queued":
            _fake_run(ref.run_dir, None, mine)
        elif kind == "failed":
            _fake_run(ref.run_dir, "failed", None, epoch=1, reason="boom")
        elif kind == "lost":  # the trainer said running, but its job is gone
            _fake_run(ref.run_dir, "running", dead, epoch=1)
        expected["failed" if kind == "lost" else kind] += 1
    states = {s.ref.run_id: s.state for s in classify_all(run_refs(spec))}
    got = {k: sum(v == k for v in states.values()) for k in expected}
    assert got == expected

    assert cli.main(["status", str(spec_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sweep small: 160 runs")
    assert f"done {expected['done']}, diverged {expected['diverged']}, running {expected['running']}" in out[0]
    assert f"failed {expected['failed']}, pending {expected['pending']}" in out[0]
    assert out[1].split() == ["run_id", "optimizer", "lr", "wd", "seed", "state", "epoch", "top1", "job"]
    table_end = out.index("failed runs:")
    # then per failed run its reason and its scheduler log (none here: no job wrote one)
    assert table_end == 2 + 160 and len(out) == table_end + 1 + 2 * expected["failed"]
    assert all(line.startswith("    log: none found") for line in out[table_end + 2::2])
    first = out[2].split()
    assert first[0] == refs[0].run_id and first[1:7] == ["sgd", "0.05", "0.0005", "0", "done", "2/2"]
    assert first[7:] == ["0.5000", "7_1"]

    # the plan of a re-sweep: done/diverged skipped, live left alone, failed and pending submitted
    assert cli.main(["sweep", str(spec_path), "--dry-run", "--cluster", "local"]) == 0
    plan = capsys.readouterr().out
    assert f"to submit: {expected['failed'] + expected['pending']} (new {expected['pending']}, failed {expected['failed']})" in plan
    assert f"already done: {expected['done'] + expected['diverged']}" in plan
    assert f"running: {expected['running']}; queued: {expected['queued']}" in plan
    n = expected["failed"] + expected["pending"]
    assert f"cost estimate: {0.5 * n:,.1f} GPU-hours for the {n} runs to submit" in plan


def test_status_uses_the_plan_cache_until_the_spec_changes(tmp_path):
    spec_path = write_spec(tmp_path, SMALL)
    spec = load_spec(spec_path)
    spec.sweep_dir.mkdir(parents=True)
    refs = run_refs(spec)
    cache = json.loads((spec.sweep_dir / ".plan.json").read_text())
    assert [r["run_id"] for r in cache["runs"]] == [r.run_id for r in refs]
    time.sleep(0.01)
    spec_path.write_text(spec_path.read_text().replace("train.epochs: 2", "train.epochs: 3"))
    refs3 = run_refs(load_spec(spec_path))
    assert {r.run_id for r in refs3}.isdisjoint({r.run_id for r in refs})
    assert all(r.summary["epochs"] == 3 for r in refs3)


PLANNER_TESTS = ["tests/test_sweep_spec.py::test_paper_fig5_grid_and_dry_run",
                 "tests/test_sweep_stages.py::test_paper_fig5_two_stage_plan",
                 "tests/test_sweep_rehearse.py::test_shipped_flagship_plans_clean"]


@pytest.mark.long  # make test's 10 minutes: a nested pytest of the planner tests (they run in make test itself)
def test_planner_tests_pass_in_a_checkout_with_imagenet_and_a_launched_stage(tmp_path, checkout_copy, capsys):
    """The planner tests of the shipped flagship, run (pytest, as `make test` does) in a copy
    of the checkout where the user has done the README's "Cluster usage" steps 1 and 3:
    ImageNet written to data/imagenet/ and stage 1 of sweeps/paper_fig5.yaml launched (half
    of its runs done, half running under a live job).  They plan in their own temporary
    folders, so they pass there, and they leave the user's files alone."""
    for part in ("tests", "pyproject.toml", "scripts"):  # the test files, pytest's settings (markers), slurm-up.sh --check
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, checkout_copy / part)
    data = checkout_copy / "data" / "imagenet"
    data.mkdir(parents=True)
    for split in ("train", "val"):  # the planner only checks that they exist where it plans
        (data / f"{split}.beton").write_bytes(b"ImageNet-like placeholder\n")
    spec = load_spec("sweeps/paper_fig5.yaml")  # (cwd: the copy, so its runs/ and data/)
    assert spec.sweep_dir == checkout_copy / "runs" / "paper_fig5"
    stage_one = [r for r in resolve_runs(spec) if r.point["seed"] == 0]
    assert len(stage_one) == 112
    live = {"state": "submitted", "cluster": "local", "host": os.uname().nodename, "job_id": str(os.getpid()),
            "pid": os.getpid(), "pid_start": rundir.process_start(os.getpid())}
    for i, run in enumerate(stage_one):
        if i % 2:
            _fake_run(run.run_dir, "running", live, epoch=37, top1=0.61)
        else:
            _fake_run(run.run_dir, "done", epoch=100, top1=0.76, job_id="41_%d" % i)
    # the user's plan here: stage 1 is launched and the data is in place
    assert cli.main(["sweep", "sweeps/paper_fig5.yaml", "--dry-run", "--cluster", "slurm"]) == 0
    plan = capsys.readouterr().out
    assert "to submit: 0 (new 0, failed 0); already done: 56 (diverged 0); running: 56" in plan
    assert "data path missing" not in plan
    before = sorted((p.relative_to(checkout_copy), p.stat().st_mtime_ns) for p in checkout_copy.rglob("*")
                    if "tests" not in p.relative_to(checkout_copy).parts[:1])
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["PYTHONPATH"] = str(REPO)  # the package under test; tests, specs and configs from the copy
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                           str(tmp_path / "basetemp"), *PLANNER_TESTS], cwd=checkout_copy, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"{len(PLANNER_TESTS)} passed" in proc.stdout
    after = sorted((p.relative_to(checkout_copy), p.stat().st_mtime_ns) for p in checkout_copy.rglob("*")
                   if "tests" not in p.relative_to(checkout_copy).parts[:1])
    assert after == before  # the user's data, runs and specs untouched


def test_quick_spec_is_one_config_three_seeds_within_twenty_gpu_hours(capsys, checkout_copy):
    """sweeps/paper_fig5_quick.yaml: SGD vs SGDC at one (lr, wd), 3 seeds, 16 epochs, <= 20 GPU-hours."""
    assert cli.main(["sweep", "sweeps/paper_fig5_quick.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 runs (2 optimizer x 1 lr x 1 wd x 3 seed)" in out and "-/16" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("cost estimate:"))
    hours = float(line.split("cost estimate:")[1].split("GPU-hours")[0].replace(",", ""))
    assert hours <= 20, line


def test_every_shipped_spec_gives_each_gpu_task_a_cpu_per_thread(checkout_copy):
    """slurm.cpus_per_task covers data.num_workers and the training process's own threads (main,
    loader, NCCL) in every shipped spec: more CPUs per task, the workers (run identity) as they were."""
    from imagenet_repro.sweep.placement import placement_warnings

    checked = 0
    for path in sorted(Path("sweeps").glob("*.yaml")):
        spec = load_spec(path)
        runs = resolve_runs(spec)
        assert placement_warnings(spec, runs) == [], path
        if spec.slurm.gpus_per_node:
            checked += 1
            assert spec.slurm.cpus_per_task == max(r.config["data"]["num_workers"] for r in runs) + 3, path
    assert checked == 4  # the paper_fig5 family and vit_adamc


@pytest.mark.parametrize("cpus, given", [("10", "slurm.cpus_per_task=10"),
                                         ("0", "slurm.cpus_per_task unset (SLURM's default, often 1)")])
def test_too_few_cpus_per_gpu_task_is_a_plan_time_warning_saying_what_to_set(tmp_path, capsys, checkout_copy, cpus,
                                                                              given):
    spec = checkout_copy / "s.yaml"
    spec.write_text(f"name: s\nruns_root: runs\nbase: experiments/imagenet_resnet50.yaml\naxes: {{seed: [0, 1]}}\n"
                    f"slurm: {{gpus_per_node: 8, cpus_per_task: {cpus}}}\n")
    assert cli.main(["sweep", str(spec), "--dry-run", "--cluster", "slurm"]) == 0
    out = capsys.readouterr().out.splitlines()
    warning = (f"  warning: {spec}: {given} for data.num_workers=10 loader workers and the training process's own 3 "
               f"threads (main, loader, NCCL) per task: set slurm.cpus_per_task: 13 (x 8 tasks = 104 CPUs per node); "
               f"fewer workers would change the runs' identity")
    assert warning in out and "2 runs" in out[0]  # in the plan, which goes on
    spec.write_text(spec.read_text().replace(f"cpus_per_task: {cpus}", "cpus_per_task: 13"))
    assert cli.main(["sweep", str(spec), "--dry-run", "--cluster", "slurm"]) == 0
    assert "cpus_per_task" not in capsys.readouterr().out
