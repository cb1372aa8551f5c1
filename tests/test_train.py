"""The trainer end to end on the real FFCV files: the run-directory contract, exact resume
after SIGKILL, divergence, and 2-process DDP over gloo, watched at every step by
tests/ddp_probe.py (weights equal on every rank, the logged ||g|| that of the all-reduced
gradient, 2 ranks = 1 rank on the same global batch; each check also run with DDP's
gradient averaging switched off, where it must fail)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import assert_same_tables, train_killed_after_checkpoints
from ranks import run_ranks

from imagenet_repro import rundir
from imagenet_repro.config import load_config
from imagenet_repro.train.callbacks import Callback
from imagenet_repro.train.loop import run_training

DEMO = "experiments/demo.yaml"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def train(out: Path, overrides: list[str]) -> str:
    return run_training(load_config(ROOT / DEMO, overrides), out)


def tables(run: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(run / f"{name}.parquet") for name in ("steps", "layers", "eval")}


def sigkill_after_checkpoint(out: Path, overrides: list[str], step: int) -> int:
    """`repro train` into ``out``, SIGKILLed right after a checkpoint at ``step`` (driven by the
    run's steps, not a timer); that checkpoint's step."""
    train_killed_after_checkpoints(ROOT / DEMO, overrides, out, steps=(step,))
    return torch.load(out / rundir.LAST_CHECKPOINT, weights_only=True)["step"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fmnist_tiny) -> Path:
    out = tmp_path_factory.mktemp("run") / "r"
    assert train(out, fmnist_tiny) == "done"
    return out


def test_run_directory_contract(finished_run):
    out = finished_run
    for name in ("config.yaml", "manifest.json", "status.json", "steps.parquet", "layers.parquet",
                 "eval.parquet", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "done" and status["step"] == status["total_steps"] == 32 and status["epoch"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 1 and manifest["packages"]["torch"] and manifest["end_time"]
    assert load_config(out / "config.yaml").optim.name == "sgd"

    t = tables(out)
    steps = t["steps"]
    assert list(steps.step) == list(range(32)) and set(steps.epoch) == {0, 1}
    assert steps.lr.iloc[0] == pytest.approx(0.1) and steps.lr.is_monotonic_decreasing and steps.lr.iloc[-1] > 0
    assert (steps[["loss", "grad_norm", "weight_norm", "images_per_s"]] > 0).all().all()
    assert (steps.grad_norm_normalized <= steps.grad_norm).all()
    assert (steps.weight_norm_normalized <= steps.weight_norm).all()
    assert steps.loss.iloc[-8:].mean() < steps.loss.iloc[:4].mean()

    layers = t["layers"]
    assert sorted(layers.step.unique()) == list(range(0, 32, 4))
    assert layers.layer.nunique() == 9 and "fc.weight" not in set(layers.layer)  # 9 convs feed a BatchNorm
    assert (layers.ratio - layers.grad_norm / layers.weight_norm).abs().max() < 1e-9
    first = layers[layers.step == 0].iloc[0]
    assert first.predicted_ratio == pytest.approx((2 * 0.005 * (1 - 0.9) / 0.1) ** 0.5)  # sqrt(2λ(1-β)/γ_0)

    ev = t["eval"]
    assert dict(ev.dtypes.astype(str)) == {"epoch": "int64", "step": "int64", "top1": "float64", "top5": "float64",
                                           "loss": "float64", "images": "int64"}
    assert list(ev.epoch) == [1, 2] and list(ev.step) == [16, 32]
    assert ev.top1.iloc[-1] > 0.3  # chance is 0.1
    assert ((ev.top5 >= ev.top1) & (ev.top5 <= 1)).all()


def test_finished_run_is_not_trained_again(finished_run, fmnist_tiny):
    before = (finished_run / "steps.parquet").stat().st_mtime_ns
    assert train(finished_run, fmnist_tiny) == "done"
    assert (finished_run / "steps.parquet").stat().st_mtime_ns == before


def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path, finished_run, fmnist_tiny):
    killed = tmp_path / "killed"
    overrides = fmnist_tiny + ["checkpoint.every_minutes=600"]  # no timed checkpoint: the one at step 7
    step = sigkill_after_checkpoint(killed, overrides, 7)
    assert step == 7, f"killed at step {step}: not mid-epoch 1"
    assert json.loads((killed / "status.json").read_text())["state"] == "running"

    assert train(killed, overrides) == "done"
    assert json.loads((killed / "status.json").read_text())["resumed_from_step"] == step
    assert_same_tables(finished_run, killed)


def test_deferred_signal_checkpoints_at_the_step_boundary_then_resume_is_exact(tmp_path, finished_run, fmnist_tiny):
    # SIGUSR1 in the middle of step 3's boundary work: checkpoint at step 3, status failed with the
    # reason, the previously installed handler (submitit's requeue), then SystemExit(128 + signum)
    out, calls = tmp_path / "signalled", []

    class SendAtStep3(Callback):
        def on_step_end(self, trainer, images, labels) -> None:
            if trainer.step == 3:
                os.kill(os.getpid(), signal.SIGUSR1)

    def requeue(signum, frame) -> None:
        calls.append(signum)

    previous = signal.signal(signal.SIGUSR1, requeue)
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_training(load_config(ROOT / DEMO, fmnist_tiny), out, callbacks=[SendAtStep3()])
        assert exit_info.value.code == 128 + signal.SIGUSR1 and calls == [signal.SIGUSR1]
        assert signal.getsignal(signal.SIGUSR1) is requeue  # the trainer's handlers are gone
    finally:
        signal.signal(signal.SIGUSR1, previous)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["step"] == 3
    assert status["reason"] == "interrupted by SIGUSR1 at step 3; resumes from its checkpoint"
    assert torch.load(out / rundir.LAST_CHECKPOINT, weights_only=True)["step"] == 3
    assert train(out, fmnist_tiny) == "done"
    assert json.loads((out / "status.json").read_text())["resumed_from_step"] == 3
    assert_same_tables(finished_run, out)


def test_huge_lr_ends_diverged_with_metrics_kept(tmp_path, fmnist_tiny):
    out = tmp_path / "div"
    code = subprocess.run([sys.executable, "-m", "imagenet_repro", "train", str(ROOT / DEMO), *fmnist_tiny,
                           "optim.lr=1e3", "train.epochs=1", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert code.returncode == 0, code.stderr[-2000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "diverged" and "non-finite" in status["reason"]
    steps = pd.read_parquet(out / "steps.parquet")
    assert len(steps) > 0 and steps.step.tolist() == list(range(len(steps)))
    last = steps.iloc[-1]
    assert not all(map(torch.isfinite, torch.tensor(last[["loss", "grad_norm"]].astype(float).values)))
    assert steps.iloc[:-1][["loss", "grad_norm"]].map(lambda v: v == v and abs(v) != float("inf")).all().all()


# ---------------------------------------------------------------------------- DDP
# A model whose forward does not depend on how the global batch is split: LayerNorm (per
# image) where the demo's ResNet has BatchNorm (per rank's 64 images, no SyncBN), so that a
# 2-rank run must equal a 1-rank run on the same 128 images to float tolerance.
TINY_VIT = ["model.name=timm:vit_tiny_patch16_224", "train.epochs=1", "train.steps_per_epoch=6", "data.val_subset=256",
            "model.kwargs={img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}"]
DDP_RUNS = {"resnet": (["train.epochs=1", "train.progress=true"], True),  # the demo's model
            "vit": (TINY_VIT, True),
            "vit-no-averaging": (TINY_VIT, False)}  # DDP's no_sync(): no gradient all-reduce at all


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, fmnist_tiny) -> dict:
    """The runs of DDP_RUNS, trained by 2 processes over gloo under tests/ddp_probe.py (one
    torchrun, one process group): each run's folder with its probe.json, and the output."""
    root = tmp_path_factory.mktemp("ddp")
    plan = [{"out": str(root / name), "overrides": fmnist_tiny + extra, "sync": sync}
            for name, (extra, sync) in DDP_RUNS.items()]
    output = run_ranks("ddp_probe.py", plan, root, ranks=2)
    runs = {name: root / name for name in DDP_RUNS}
    return {**runs, "output": output,
            "probe": {name: json.loads((run / "probe.json").read_text()) for name, run in runs.items()}}


def test_two_process_ddp_over_gloo(ddp_runs):
    out = ddp_runs["resnet"]
    assert json.loads((out / "manifest.json").read_text())["world_size"] == 2
    assert json.loads((out / "status.json").read_text())["state"] == "done"
    steps = pd.read_parquet(out / "steps.parquet")
    # global batch 128 = 2 x 64: 2048 images give 16 steps, each logged once (rank 0 only)
    assert steps.step.tolist() == list(range(16))
    assert ddp_runs["output"].count("epoch 1: top1") == 1  # one progress/eval line, from rank 0
    assert pd.read_parquet(out / "eval.parquet").top1.iloc[-1] > 0.2
    assert [r["step"] for r in ddp_runs["probe"]["resnet"]["steps"]] == list(range(16))  # probed at every step


def weight_problems(probe: dict) -> list[str]:
    """Steps after which some rank's parameters are not bit-identical to rank 0's."""
    return [f"step {r['step']}: ranks' weights differ by up to {r['weights_max_diff']:.3g}"
            for r in probe["steps"] if not r["weights_equal"]]


def grad_norm_problems(run: Path, probe: dict) -> list[str]:
    """Steps whose logged ||g|| is not the norm of the explicit all-reduce (mean over ranks) of
    the ranks' own gradients, or whose .grad (what the optimizer used) is not that mean."""
    logged = pd.read_parquet(run / "steps.parquet").set_index("step").grad_norm
    problems = []
    for r in probe["steps"]:
        if logged[r["step"]] != pytest.approx(r["grad_norm_allreduced"], rel=1e-6):
            problems.append(f"step {r['step']}: logged ||g|| {logged[r['step']]:.7g} != ||all-reduced g|| "
                            f"{r['grad_norm_allreduced']:.7g}")
        if r["grad_max_diff"] > 1e-7:
            problems.append(f"step {r['step']}: .grad differs from the ranks' mean gradient by {r['grad_max_diff']:.3g}")
    return problems


def one_rank_problems(two: Path, one: Path) -> list[str]:
    """Where a 2-rank run differs from a 1-rank run of the same global batches beyond float
    tolerance: the step table (the loss too: the mean over the ranks' halves of the batch, the
    whole batch's; but the wall-clock images/s), the final weights (checkpoint) and the eval
    table (sharded: each rank half of the val images)."""
    problems = []
    a, b = pd.read_parquet(two / "steps.parquet"), pd.read_parquet(one / "steps.parquet")
    columns = [c for c in a.columns if c != "images_per_s"]
    try:
        pd.testing.assert_frame_equal(a[columns], b[columns], check_exact=False, rtol=1e-5, atol=1e-7)
    except AssertionError as exc:
        problems.append(f"steps: {' '.join(str(exc).split())[:200]}")
    wa, wb = (torch.load(r / rundir.LAST_CHECKPOINT, weights_only=True)["model"] for r in (two, one))
    for name in wb:
        if not torch.allclose(wa[name], wb[name], rtol=1e-5, atol=1e-6):
            problems.append(f"weights {name}: differ by up to {float((wa[name] - wb[name]).abs().max()):.3g}")
    try:
        pd.testing.assert_frame_equal(pd.read_parquet(two / "eval.parquet"), pd.read_parquet(one / "eval.parquet"),
                                      check_exact=False, rtol=1e-5)
    except AssertionError as exc:
        problems.append(f"eval: {' '.join(str(exc).split())[:200]}")
    return problems


def test_ddp_ranks_hold_bit_identical_weights_after_every_step(ddp_runs):
    for name in ("resnet", "vit"):
        assert weight_problems(ddp_runs["probe"][name]) == [], name
    # without the averaging every step moves each rank its own way: the check sees every step
    off = ddp_runs["probe"]["vit-no-averaging"]
    assert len(weight_problems(off)) == len(off["steps"]) == 6


def test_ddp_logged_grad_norm_is_the_norm_of_the_all_reduced_gradient(ddp_runs):
    for name in ("resnet", "vit"):
        probe = ddp_runs["probe"][name]
        assert grad_norm_problems(ddp_runs[name], probe) == [], name
        # the check has teeth: rank 0's own gradient norm (what it would log without the
        # all-reduce) is 100 x the tolerance away from the mean's at every step
        assert all(abs(r["grad_norm_local"][0] - r["grad_norm_allreduced"]) > 1e-4 * r["grad_norm_allreduced"]
                   for r in probe["steps"]), name
    off = ddp_runs["probe"]["vit-no-averaging"]
    problems = grad_norm_problems(ddp_runs["vit-no-averaging"], off)
    assert len(problems) == 2 * len(off["steps"]), problems  # logged: rank 0's own gradient, not the mean


@pytest.fixture(scope="module")
def one_rank_vit(tmp_path_factory, fmnist_tiny) -> Path:
    out = tmp_path_factory.mktemp("run") / "vit-1rank"
    assert train(out, fmnist_tiny + TINY_VIT) == "done"
    return out


def test_ddp_two_ranks_equal_one_rank_on_the_same_global_batch(ddp_runs, one_rank_vit):
    # each rank's 64 images are every other one of the 1-rank run's 128 (data.seeding.epoch_order)
    assert one_rank_problems(ddp_runs["vit"], one_rank_vit) == []
    problems = one_rank_problems(ddp_runs["vit-no-averaging"], one_rank_vit)
    assert any(p.startswith("steps: ") for p in problems) and any(p.startswith("weights ") for p in problems), problems


EVAL_EVERY = ["train.eval_every_steps=5", "train.eval_subset=300", "train.tensorboard=true"]


@pytest.fixture(scope="module")
def run_with_intermediate_evals(tmp_path_factory, fmnist_tiny) -> Path:
    out = tmp_path_factory.mktemp("run") / "evals"
    assert train(out, fmnist_tiny + EVAL_EVERY) == "done"
    return out


def test_intermediate_evals_land_on_their_steps_and_change_nothing_in_training(run_with_intermediate_evals,
                                                                                finished_run):
    ev = tables(run_with_intermediate_evals)["eval"]
    # every 5th global step except the epoch ends (16, 32), which get the whole val subset
    assert list(ev.step) == [5, 10, 15, 16, 20, 25, 30, 32]
    assert list(ev.epoch) == [0, 0, 0, 1, 1, 1, 1, 2]
    assert list(ev.images) == [300, 300, 300, 1000, 300, 300, 300, 1000]
    assert ((ev.top1 > 0) & (ev.top1 <= ev.top5) & (ev.top5 <= 1)).all()
    assert_same_tables(finished_run, run_with_intermediate_evals, (rundir.STEPS, rundir.LAYERS))
    a, b = tables(finished_run), tables(run_with_intermediate_evals)
    full = b["eval"][b["eval"].images == 1000].reset_index(drop=True)
    pd.testing.assert_frame_equal(a["eval"], full, check_exact=True)


@pytest.mark.long  # make test's 10 minutes: in make test-rehearsals (CI runs both)
def test_sigkill_then_resume_with_intermediate_evals_is_exact(tmp_path, run_with_intermediate_evals, fmnist_tiny):
    killed = tmp_path / "killed"
    overrides = fmnist_tiny + EVAL_EVERY + ["checkpoint.every_minutes=600"]
    step = sigkill_after_checkpoint(killed, overrides, 12)  # past the intermediate eval of step 10
    assert step == 12, f"killed at step {step}"
    assert train(killed, overrides) == "done"
    assert_same_tables(run_with_intermediate_evals, killed)


def test_tensorboard_scalars_readable_by_tensorboard(run_with_intermediate_evals):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_with_intermediate_evals / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {"train/loss", "train/lr", "norms/grad", "norms/weight", "ratio/normalized", "ratio/predicted",
                    "rotation/angular", "rotation/predicted",  # the update health (SGD: no Adam scalars)
                    "eval/top1", "eval/top5", "eval/loss"}
    t = tables(run_with_intermediate_evals)
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(32))
    assert [e.value for e in loss] == pytest.approx(t["steps"].loss.tolist(), rel=1e-6)
    ratio = [e.value for e in acc.Scalars("ratio/normalized")]
    assert ratio == pytest.approx((t["steps"].grad_norm_normalized / t["steps"].weight_norm_normalized).tolist(),
                                  rel=1e-5)
    predicted = acc.Scalars("ratio/predicted")
    assert [e.step for e in predicted] == list(range(0, 32, 4))
    assert [e.value for e in predicted] == pytest.approx(
        t["layers"].groupby("step").predicted_ratio.mean().tolist(), rel=1e-6)
    top1 = acc.Scalars("eval/top1")
    assert [e.step for e in top1] == t["eval"].step.tolist()
    assert [e.value for e in top1] == pytest.approx(t["eval"].top1.tolist(), rel=1e-6)
