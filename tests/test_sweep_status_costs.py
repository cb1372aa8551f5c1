"""`repro status`: measured costs beside the spec's estimate with projected totals, and the
triage of failed runs (reason, scheduler log path and last lines; `--failed` lists only those).

No cluster and no training: run folders at the spec's run ids hold the status.json and
manifest.json a trainer writes, with known times, and a submitit log where a job wrote one."""
from __future__ import annotations

import json
from pathlib import Path

from test_sweep_stages import write_spec as write_staged_spec

from imagenet_repro import cli, rundir
from imagenet_repro.sweep.spec import load_spec
from imagenet_repro.sweep.status import classify_all, projections, run_cost, run_refs

REPO = Path(__file__).resolve().parents[1]
T0 = 1_796_000_000.0  # 2026-11-29: any fixed time

SPEC = """
name: costs
runs_root: RUNS
base: BASE
overrides: {train.epochs: 4, data.train_path: DATA, data.val_path: DATA}
axes:
  optimizer: [sgd, sgdc]
  seed: [0, 1, 2]
gpu_hours_per_epoch: 0.5
"""


def write_spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("RUNS", str(tmp_path / "runs")).replace("BASE", str(REPO / "experiments/demo.yaml"))
                    .replace("DATA", str(path)))
    return path


def stamp(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def write_run(run_dir: Path, state: str, epoch: int, step: int, total: int, hours: float, ranks: int,
              starts: int = 1, **status) -> None:
    """A run folder: started at T0, last status update ``hours`` later, on ``ranks`` ranks."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / rundir.MANIFEST).write_text(json.dumps({
        "start_time": stamp(T0), "starts": [{"time": stamp(T0 + i * 60), "host": "gpu1"} for i in range(starts)],
        "world_size": ranks, "device": "cuda:0"}))
    rundir.write_status(run_dir, state, epoch=epoch, step=step, total_steps=total, updated=T0 + hours * 3600,
                        host="gpu1", pid=4242, **status)


def test_status_shows_measured_cost_per_epoch_and_projections(tmp_path, capsys):
    spec_path = write_spec(tmp_path)
    refs = run_refs(load_spec(spec_path))
    # 4 epochs of 100 steps each: done in 2.5 h on 2 GPUs = 5 GPU-hours = 1.25 per epoch
    write_run(refs[0].run_dir, "done", 4, 400, 400, 2.5, 2)
    # 1.5 epochs (150 steps) in 56.25 min on 2 GPUs = 1.875 GPU-hours = 1.25 per epoch
    write_run(refs[1].run_dir, "running", 1, 150, 400, 0.9375, 2)
    # resumed: its wall time between starts is not known, left out (else it would move the mean)
    write_run(refs[2].run_dir, "running", 2, 200, 400, 10.0, 2, starts=2)
    # not yet a finished epoch: no measurement
    write_run(refs[3].run_dir, "running", 0, 50, 400, 5.0, 2)
    costs = [run_cost(st) for st in classify_all(refs)]
    assert [c is not None for c in costs] == [True, True, False, False, False, False]
    assert costs[0].epochs == 4 and abs(costs[0].gpu_hours - 5.0) < 1e-9
    assert costs[1].epochs == 1.5 and abs(costs[1].gpu_hours - 1.875) < 1e-9

    assert cli.main(["status", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert ("cost: measured 1.25 GPU-hours per epoch (wall time x GPUs of 2 run(s), 5.5 epochs run; "
            "spec gpu_hours_per_epoch 0.5, measured/spec x2.50); 1 resumed run(s) left out") in out
    assert "  projected sweep: 6 runs, 30.0 GPU-hours (spec 12.0)" in out  # 6 runs x 4 epochs x 1.25


def test_no_cost_line_before_a_finished_epoch(tmp_path, capsys):
    spec_path = write_spec(tmp_path)
    write_run(run_refs(load_spec(spec_path))[0].run_dir, "running", 0, 50, 400, 1.0, 2)
    assert cli.main(["status", str(spec_path)]) == 0
    assert "cost:" not in capsys.readouterr().out


def test_staged_projection_per_stage(tmp_path):
    """Stage 1 is the 18-point grid at seed 0; stage 2 before stage 1 chose: at most 2 optimizers
    x 2 seeds (x5 with neighbours), 2 epochs each."""
    spec = load_spec(write_staged_spec(tmp_path))
    got = {p.label: p for p in projections(spec, run_refs(spec), 1.0)}
    assert (got["stage 1 (search)"].runs, got["stage 1 (search)"].projected_hours) == (18, 36.0)
    two = got["stage 2 (confirm)"]
    assert (two.runs, two.projected_hours, two.spec_hours, two.bound) == (4, 8.0, 4.0, True)
    assert (got["sweep (two stages)"].runs, got["sweep (two stages)"].projected_hours) == (22, 44.0)
    (tmp_path / "n").mkdir()
    spec = load_spec(write_staged_spec(tmp_path / "n", neighbours=True))
    assert [p.runs for p in projections(spec, run_refs(spec), 1.0)] == [38, 18, 20]


def test_failed_runs_show_reason_and_their_scheduler_log(tmp_path, capsys):
    spec_path = write_spec(tmp_path)
    spec = load_spec(spec_path)
    refs = run_refs(spec)
    write_run(refs[0].run_dir, "done", 4, 400, 400, 2.5, 2)
    # failed, its claim gone: the log is found by the job id status.json records
    write_run(refs[1].run_dir, "failed", 1, 120, 400, 1.0, 2, reason="CUDA out of memory", job_id="4242_1")
    log = spec.sweep_dir / ".submitit" / "4242_1" / "4242_1_0_log.out"
    log.parent.mkdir(parents=True)
    log.write_text("\n".join(f"line {i}" for i in range(20)) + "\ntorch.OutOfMemoryError: CUDA out of memory\n")
    # died without a word, its (dead) SLURM claim still there: the log from the claim's folder
    write_run(refs[2].run_dir, "running", 1, 130, 400, 1.0, 2)
    folder = tmp_path / "elsewhere" / "77_2"
    folder.mkdir(parents=True)
    (folder / "77_2_0_log.out").write_text("epoch 1\nslurmstepd: error: *** JOB 77 CANCELLED DUE TO TIME LIMIT ***\n")
    (refs[2].run_dir / "job.json").write_text(json.dumps({"state": "submitted", "cluster": "slurm", "job_id": "77_2",
                                                          "submitit_folder": str(folder)}))
    # failed, no log anywhere
    write_run(refs[3].run_dir, "failed", 0, 10, 400, 0.1, 2, reason="data path missing")

    assert cli.main(["status", str(spec_path), "--failed"]) == 0
    out = capsys.readouterr().out
    assert refs[0].run_id not in out  # --failed: the done run is not listed
    lines = out.splitlines()
    i = lines.index(f"  {refs[1].run_id} (optimizer=sgd seed=1): CUDA out of memory")
    assert lines[i + 1] == f"    log: {log} (last 5 lines)"
    assert lines[i + 2:i + 7] == ["      | line 16", "      | line 17", "      | line 18", "      | line 19",
                                  "      | torch.OutOfMemoryError: CUDA out of memory"]
    j = next(k for k, ln in enumerate(lines) if ln.startswith(f"  {refs[2].run_id} (optimizer=sgd seed=2): job 77_2"))
    assert lines[j + 1] == f"    log: {folder / '77_2_0_log.out'} (last 2 lines)"
    assert lines[j + 3] == "      | slurmstepd: error: *** JOB 77 CANCELLED DUE TO TIME LIMIT ***"
    k = lines.index(f"  {refs[3].run_id} (optimizer=sgdc seed=0): data path missing")
    assert lines[k + 1].startswith("    log: none found")
    assert "cost:" not in out  # --failed shows only the failed runs

    assert cli.main(["status", str(spec_path)]) == 0  # the full status has the same triage after the table
    full = capsys.readouterr().out
    assert refs[0].run_id in full and "failed runs:" in full and f"    log: {log} (last 5 lines)" in full


def test_failed_with_none_failed(tmp_path, capsys):
    spec_path = write_spec(tmp_path)
    write_run(run_refs(load_spec(spec_path))[0].run_dir, "done", 4, 400, 400, 2.5, 2)
    assert cli.main(["status", str(spec_path), "--failed"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no failed runs"
