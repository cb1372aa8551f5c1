"""Optimizers with modes (schedule-free): every evaluation at the average x with BatchNorm re-estimated,
checked against an evaluation at x done by hand; y and the buffers back exactly, so evaluations change
nothing in training, checkpoints are in train mode and a resumed run equals an uninterrupted one."""
from __future__ import annotations

import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, assert_same_tables

from imagenet_repro import rundir
from imagenet_repro.config import load_config
from imagenet_repro.data.loaders import build_loaders
from imagenet_repro.models import build_model
from imagenet_repro.optim.factory import build_optimizer
from imagenet_repro.train.callbacks import Callback
from imagenet_repro.train.checkpoint import load_latest
from imagenet_repro.train.loop import run_training
from imagenet_repro.train.modes import BN_BATCHES, EvaluationPoint

DEMO = REPO / "experiments" / "demo.yaml"
SCHEDULE_FREE = ["optim.name=pytorch_optimizer:ScheduleFreeSGD", "optim.lr=0.5", "schedule.name=flat"]


@pytest.fixture(scope="module")
def schedule_free_run(tmp_path_factory, fmnist_tiny) -> Path:
    """Two epochs of the tiny demo with schedule-free SGD, evaluated at each epoch's end only."""
    out = tmp_path_factory.mktemp("sf") / "run"
    assert run_training(load_config(DEMO, fmnist_tiny + SCHEDULE_FREE), out) == "done"
    return out


@torch.no_grad()
def evaluate_by_hand(model: torch.nn.Module, val) -> tuple[float, float]:
    model.eval()
    hits = loss = count = 0.0
    for images, labels in val:
        logits = model(images)
        hits += float((logits.argmax(1) == labels).sum())
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        count += labels.shape[0]
    return hits / count, loss / count


def test_schedule_free_is_evaluated_at_x_with_batchnorm_reestimated(schedule_free_run, fmnist_tiny):
    cfg = load_config(DEMO, fmnist_tiny + SCHEDULE_FREE)
    model = build_model(cfg.model, cfg.data.num_classes)
    optimizer = build_optimizer(model, cfg.optim)
    assert load_latest(schedule_free_run / rundir.CHECKPOINTS, model=model, optimizer=optimizer)["step"] == 32
    assert all(g["train_mode"] for g in optimizer.param_groups)  # checkpointed in train mode, at y
    train, val = build_loaders(cfg, torch.device("cpu"))
    top1_y, _ = evaluate_by_hand(model, val)  # what the suite logged before: the training point y

    optimizer.eval()  # x
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # an equal-weight average of the batches' statistics
    model.train()
    batches = train.epoch(1)  # the epoch the evaluation ends (one rank: the per-rank batch is the batch)
    with torch.no_grad():
        for _, (images, _) in zip(range(min(BN_BATCHES, len(train))), batches):
            model(images)
    batches.close()
    top1_x, loss_x = evaluate_by_hand(model, val)

    logged = pd.read_parquet(schedule_free_run / rundir.EVAL).iloc[-1]
    assert (logged.epoch, logged.step) == (2, 32)
    assert logged.top1 == top1_x and logged.loss == pytest.approx(loss_x, rel=1e-6)
    assert abs(top1_x - top1_y) > 0.01, (top1_x, top1_y)  # at y the logged number would be another one


def test_evaluations_change_nothing_and_a_resume_is_exact(schedule_free_run, fmnist_tiny, tmp_path):
    """Intermediate evaluations at x every 4 steps, and a stop at step 10 then a resume: the training
    tables equal the uninterrupted run's without intermediate evaluations, and so do its epoch-end evals."""

    class StopAt10(Callback):
        def on_step_end(self, trainer, images, labels) -> None:
            if trainer.step == 10:
                trainer.interrupt(signal.SIGUSR1)

    cfg = load_config(DEMO, fmnist_tiny + SCHEDULE_FREE + ["train.eval_every_steps=4", "train.eval_subset=300"])
    out = tmp_path / "run"
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        with pytest.raises(SystemExit):
            run_training(cfg, out, callbacks=[StopAt10()])
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert run_training(cfg, out) == "done" and rundir.read_status(out)["resumed_from_step"] == 10
    assert_same_tables(schedule_free_run, out, (rundir.STEPS, rundir.LAYERS))
    evals = pd.read_parquet(out / rundir.EVAL)
    assert list(evals.step) == [4, 8, 12, 16, 20, 24, 28, 32]  # 16: the epoch's end (whole val set)
    full = evals[evals.images == evals.images.max()].reset_index(drop=True)
    pd.testing.assert_frame_equal(full, pd.read_parquet(schedule_free_run / rundir.EVAL))


def test_the_evaluation_point_puts_y_and_every_buffer_back_bit_for_bit():
    """eval()/train() is not an exact round trip in floating point; the copy is."""
    from pytorch_optimizer import ScheduleFreeAdamW

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    optimizer = ScheduleFreeAdamW(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 3, 6, 6)).square().mean().backward()
        optimizer.step()
    y = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    state = [v.clone() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    optimizer.eval()
    optimizer.train()
    assert any(not torch.equal(a, b) for a, b in zip(y, model.parameters()))  # the round trip moves y
    for a, b in zip(y, model.parameters()):
        b.data.copy_(a)

    drawn = []
    point = EvaluationPoint(model, optimizer, lambda epoch: drawn.append(epoch) or [torch.randn(8, 3, 6, 6)],
                            torch.device("cpu"))
    rng = torch.get_rng_state()
    with point(3):
        assert any(not torch.equal(a, b) for a, b in zip(y, model.parameters()))  # at x
        assert not torch.equal(model[1].running_mean, buffers[0])  # re-estimated at x
    assert drawn == [3] and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(y, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert all(g["train_mode"] for g in optimizer.param_groups)
    after = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    assert len(after) == len(state) and all(torch.equal(a, b) for a, b in zip(state, after))


def test_an_optimizer_without_modes_is_left_alone():
    model = torch.nn.Linear(2, 2)
    point = EvaluationPoint(model, torch.optim.SGD(model.parameters(), lr=0.1),
                            lambda epoch: pytest.fail("no batch is read"), torch.device("cpu"))
    with point(0):
        pass
    assert not point.active
