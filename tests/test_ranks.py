"""Several ranks as one run, under torch.distributed.run over gloo (tests/rank_signals.py):
a signal that reaches the ranks at different steps stops all of them at one step with one
checkpoint, and the resumed run's tables equal an uninterrupted run's (2 and 3 ranks, both
orders); a rank that raises or is killed ends the others promptly with a status naming it;
evaluation is sharded and counts each val image once, with one rank's counts and top-1; the
logged loss is the mean over the ranks.  The same on a real multi-task SLURM job:
tests/test_sweep_cluster.py."""
from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_same_tables, fmnist_folder
from ranks import launch_ranks

from imagenet_repro import rundir
from imagenet_repro.train.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STOP_NOW = 1e-3  # stop_within_s so small that the ranks agree at every step: stops land on chosen steps


def tiny(extra: tuple[str, ...] = ()) -> list[str]:
    """The demo on 480 Fashion-MNIST images through the torchvision backend (no FFCV compile
    per process): global batch 48 (2 or 3 ranks), 10 steps an epoch, 2 epochs."""
    fm = fmnist_folder()
    return [f"data.train_path={fm}", f"data.val_path={fm}", "data.backend=torchvision", "data.num_workers=0",
            "data.train_subset=480", "data.val_subset=300", "data.batch_size=48", "data.val_batch_size=64",
            "train.epochs=2", "train.threads=1", "train.progress=false", "telemetry.layer_every=2",
            "telemetry.flush_every=4", *extra]


def torchrun(folder: Path, ranks: int, plan: dict, name: str = "plan") -> subprocess.CompletedProcess:
    """tests/rank_signals.py with ``plan`` on ``ranks`` ranks under torchrun (0: one plain process)."""
    return launch_ranks("rank_signals.py", plan, folder, ranks, name=name)


def seen_steps(out: Path, rank: int) -> list[int]:
    """The steps rank ``rank`` saw end, in order (tests/rank_signals.py's log)."""
    lines = out.with_name(f"{out.name}.rank{rank}").read_text().splitlines()
    return [int(line) for line in lines if not line.startswith("exit ")]


def exit_codes(out: Path, ranks: int) -> dict[int, int]:
    """The code each rank left its last attempt with, as it wrote it (a rank killed before it
    could write: missing)."""
    codes = {}
    for rank in range(ranks):
        lines = out.with_name(f"{out.name}.rank{rank}").read_text().split("\n")
        last = [ln for ln in lines if ln.startswith("exit ")]
        if last:
            codes[rank] = int(last[-1].split()[1])
    return codes


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[int, Path]:
    """Uninterrupted runs of :func:`tiny` on 2 and 3 ranks, trained on demand."""
    root = tmp_path_factory.mktemp("ranks")
    cache: dict[int, Path] = {}

    class Lazy(dict):
        def __missing__(self, ranks: int) -> Path:
            out = root / f"reference{ranks}"
            proc = torchrun(root, ranks, {"out": str(out), "overrides": tiny()}, f"reference{ranks}")
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert rundir.read_status(out)["state"] == "done"
            cache[ranks] = out
            return out

    return Lazy()


def stop_then_resume(tmp_path: Path, ranks: int, signal_at: dict[int, int], signal_name: str = "SIGUSR2") -> dict:
    out = tmp_path / "run"
    plan = {"out": str(out), "overrides": tiny(), "stop_within_s": STOP_NOW, "signal_name": signal_name,
            "signal": {str(r): s for r, s in signal_at.items()}}
    stopped = torchrun(tmp_path, ranks, plan, "stop")
    status = rundir.read_status(out)
    checkpoint = read_checkpoint(out / rundir.LAST_CHECKPOINT)
    codes = exit_codes(out, ranks)
    resumed = torchrun(tmp_path, ranks, {"out": str(out), "overrides": tiny()}, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"out": out, "stopped": stopped, "status": status, "checkpoint_step": int(checkpoint["step"]),
            "exit_codes": codes,
            "steps": {r: seen_steps(out, r) for r in range(ranks)}}


def check_one_stop(result: dict, ranks: int, first_step: int, signum: int, seen_by: str) -> None:
    assert result["stopped"].returncode != 0
    assert result["exit_codes"] == {r: 128 + signum for r in range(ranks)}, (
        result["stopped"].stdout + result["stopped"].stderr)[-3000:]
    status = result["status"]
    assert status["state"] == "failed" and status["step"] == first_step
    assert status["reason"] == (f"interrupted by {signal.Signals(signum).name} at step {first_step} (seen by rank "
                                f"{seen_by} of {ranks}); resumes from its checkpoint")
    assert result["checkpoint_step"] == first_step  # one checkpoint, at the agreed step
    for r in range(ranks):  # no rank ran ahead of the agreed step before the resume
        assert result["steps"][r][:first_step] == list(range(1, first_step + 1))
        assert result["steps"][r][first_step] == first_step + 1  # the resumed run's first step, on every rank
    assert rundir.read_status(result["out"])["resumed_from_step"] == first_step


@pytest.mark.slow
def test_two_ranks_signalled_rank_1_first_stop_once_and_resume_exactly(tmp_path, references):
    """The issue's case: SIGUSR2 reaches rank 1 at step 3 and rank 0 only at step 6 (before:
    rank 1 left alone, rank 0's next all-reduce failed, no checkpoint, status failed with a
    gloo RuntimeError)."""
    result = stop_then_resume(tmp_path, 2, {1: 3, 0: 6})
    check_one_stop(result, 2, 3, signal.SIGUSR2, "1")
    assert_same_tables(references[2], result["out"])


@pytest.mark.slow
@pytest.mark.long
def test_two_ranks_signalled_rank_0_first_stop_once_and_resume_exactly(tmp_path, references):
    result = stop_then_resume(tmp_path, 2, {0: 4, 1: 7})
    check_one_stop(result, 2, 4, signal.SIGUSR2, "0")
    assert_same_tables(references[2], result["out"])


@pytest.mark.slow
@pytest.mark.long
def test_three_ranks_sigterm_to_the_last_one_first_stop_once_and_resume_exactly(tmp_path, references):
    result = stop_then_resume(tmp_path, 3, {2: 13, 0: 15, 1: 16}, "SIGTERM")  # mid-way through epoch 2
    check_one_stop(result, 3, 13, signal.SIGTERM, "2")
    assert_same_tables(references[3], result["out"])


@pytest.mark.slow
@pytest.mark.long  # make test's 10 minutes: Ctrl-C's counting is test_stopping's, a step-boundary stop test_train's
def test_ctrl_c_on_one_process_checkpoints_at_the_step_boundary_and_exits_130(tmp_path, references):
    """Ctrl-C (SIGINT) on `repro train`'s process: before, exit 130 with KeyboardInterrupt, status
    failed and no checkpoint.  Now the step ends, a checkpoint is written, exit 130; the same
    Ctrl-C delivered twice at once counts once; the run resumes exactly."""
    out = tmp_path / "run"
    overrides = tiny(("data.batch_size=24",))  # 1 rank, the 2-rank run's per-rank batch: its own reference
    stopped = torchrun(tmp_path, 0, {"out": str(out), "overrides": overrides, "signal_name": "SIGINT",
                                     "signal": {"0": 3}, "repeat": 2})
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    status = rundir.read_status(out)
    assert status["reason"] == "interrupted by SIGINT at step 3; resumes from its checkpoint"
    assert read_checkpoint(out / rundir.LAST_CHECKPOINT)["step"] == 3
    assert torchrun(tmp_path, 0, {"out": str(out), "overrides": overrides}, "resume").returncode == 0
    reference = tmp_path / "reference"
    assert torchrun(tmp_path, 0, {"out": str(reference), "overrides": overrides}, "reference").returncode == 0
    assert_same_tables(reference, out)


@pytest.mark.slow
@pytest.mark.long
def test_ctrl_c_to_torchrun_stops_every_rank_at_one_step_and_resumes_exactly(tmp_path, references):
    """Ctrl-C in torchrun's terminal reaches its agent, which forwards SIGINT to every worker
    and kills them 30 s later: the workers agree on a step, checkpoint once and exit 130."""
    out = tmp_path / "run"
    stopped = torchrun(tmp_path, 2, {"out": str(out), "overrides": tiny(), "stop_within_s": STOP_NOW,
                                     "ctrl_c_agent": {"0": 5}}, "stop")
    status = rundir.read_status(out)
    step = status["step"]
    assert exit_codes(out, 2) == {0: 130, 1: 130}, (stopped.stdout + stopped.stderr)[-3000:]
    # the agent forwards it to one worker, then the other: one or both have it at the agreed step
    assert re.fullmatch(rf"interrupted by SIGINT at step {step} \(seen by rank (0|1|0, 1) of 2\); resumes from its "
                        rf"checkpoint", status["reason"]), status["reason"]
    assert step >= 5 and read_checkpoint(out / rundir.LAST_CHECKPOINT)["step"] == step
    assert torchrun(tmp_path, 2, {"out": str(out), "overrides": tiny()}, "resume").returncode == 0
    assert_same_tables(references[2], out)


@pytest.mark.slow
def test_a_rank_that_raises_ends_the_others_and_the_status_names_it(tmp_path):
    out = tmp_path / "run"
    proc = torchrun(tmp_path, 2, {"out": str(out), "overrides": tiny(), "raise": {"1": 3}})
    assert proc.returncode != 0
    status = rundir.read_status(out)
    assert status["state"] == "failed" and status["failed_rank"] == 1
    assert status["reason"] == "rank 1 of 2 failed at step 3: RuntimeError: injected failure on rank 1"
    assert seen_steps(out, 0)[-1] <= 4  # rank 0 ended at once, not at the collective timeout


@pytest.mark.slow
@pytest.mark.long  # make test's 10 minutes: the same kill -9 of a rank, on SLURM, is test_sweep_cluster's
def test_a_rank_killed_outright_is_named_by_the_survivor(tmp_path, references):
    """kill -9 of rank 1 (as the OOM killer would): rank 0's next collective fails, it finds rank
    1's process gone and says so; the same command then resumes from the last checkpoint (the
    epoch-1 one) and ends with the tables of an uninterrupted run."""
    out = tmp_path / "run"
    proc = torchrun(tmp_path, 2, {"out": str(out), "overrides": tiny(), "kill": {"1": 13}})
    assert proc.returncode != 0
    status = rundir.read_status(out)
    assert status["state"] == "failed" and status["failed_rank"] == 1, status
    assert status["reason"].startswith("rank 1 (pid ") and " of 2 died at step 13 without a word" in status["reason"]
    assert read_checkpoint(out / rundir.LAST_CHECKPOINT)["step"] == 10  # the epoch-end checkpoint
    resumed = torchrun(tmp_path, 2, {"out": str(out), "overrides": tiny()}, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert rundir.read_status(out)["resumed_from_step"] == 10
    assert_same_tables(references[2], out)


# ---------------------------------------------------------------------------- evaluation
EVAL_RANKS = (1, 3)  # one rank's numbers, and 3 ranks' shards (100 each of 300; 42/42/41 of 125)

@pytest.fixture(scope="module")
def evaluations(tmp_path_factory, references) -> dict:
    """The 2-rank reference's checkpoint evaluated by 1 and 3 ranks, on the whole val subset
    (300 images) and on the first 125 (an intermediate evaluation's ``train.eval_subset``):
    shards of unequal sizes. (2 ranks: every evaluation of the 2-rank reference, whose final
    one :func:`test_the_final_eval_of_a_multi_rank_run_is_that_of_its_checkpoint_on_one_rank`
    checks against 1 rank's.)"""
    root = tmp_path_factory.mktemp("evals")
    results = {}
    for ranks in EVAL_RANKS:
        result = root / f"eval{ranks}.json"
        proc = torchrun(root, ranks, {"evaluate": str(references[2]), "overrides": tiny(), "limits": [0, 125],
                                      "result": str(result)}, f"eval{ranks}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.update({(ranks, r["limit"]): r for r in json.loads(result.read_text())})
    return results


@pytest.mark.slow
def test_sharded_evaluation_counts_each_image_once_with_one_ranks_top1(evaluations):
    for limit, total in ((0, 300), (125, 125)):
        one = evaluations[1, limit]
        assert one["images"] == total
        for ranks in EVAL_RANKS[1:]:
            many = evaluations[ranks, limit]
            assert many["per_rank_images"] == [len(part) for part in __import__("numpy").array_split(range(total), ranks)]
            assert many["images"] == total and many["top1"] == one["top1"] and many["top5"] == one["top5"]
            assert many["loss"] == pytest.approx(one["loss"], rel=1e-6)


@pytest.mark.slow
def test_the_final_eval_of_a_multi_rank_run_is_that_of_its_checkpoint_on_one_rank(evaluations, references):
    final = pd.read_parquet(references[2] / rundir.EVAL).iloc[-1]
    one = evaluations[1, 0]
    assert int(final.images) == one["images"] and final.top1 == one["top1"]
    assert final.loss == pytest.approx(one["loss"], rel=1e-6)
