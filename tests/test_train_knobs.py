"""The trainer's `train:` / `schedule:` / `checkpoint:` knobs do what the README says, watched
inside real runs (tiny: Fashion-MNIST through the torchvision backend, a few steps):

* ``train.grad_clip``: the logged ‖g‖ is the norm before clipping, the update applied is
  the clipped one (‖g‖ scaled to ``grad_clip``);
* ``train.label_smoothing``: the logged loss is ``F.cross_entropy(logits, labels,
  label_smoothing=...)`` of the step's own logits and labels;
* ``schedule.final_lr_fraction``: the cosine ends at that fraction of γ_max (the logged and
  the applied LR of every step follow the schedule's formula);
* ``train.steps_per_epoch``: an epoch stops after that many steps, the loader has more;
* ``checkpoint.every_epoch``: a checkpoint at every epoch end, or (false) only after the last.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from imagenet_repro import rundir
from imagenet_repro.config import load_config
from imagenet_repro.train.callbacks import Callback
from imagenet_repro.train.loop import Trainer

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
BATCH, SUBSET, STEPS_PER_EPOCH, EPOCHS = 16, 128, 3, 2  # the loader has 8 batches; the cap takes 3
LR = 0.1


def tiny(fmnist_dir: Path, *extra: str) -> list[str]:
    return [f"data.train_path={fmnist_dir}", f"data.val_path={fmnist_dir}", "data.backend=torchvision",
            f"data.train_subset={SUBSET}", "data.val_subset=32", f"data.batch_size={BATCH}", "data.num_workers=0",
            f"train.epochs={EPOCHS}", f"train.steps_per_epoch={STEPS_PER_EPOCH}", "train.threads=1",
            "train.progress=false", "train.tensorboard=false", "train.eval_every_steps=0",
            "telemetry.layer_every=1", "telemetry.flush_every=1", "checkpoint.every_minutes=0",
            f"optim.lr={LR}", "schedule.name=cosine", "schedule.warmup_epochs=0", *extra]


def norm_like_telemetry(tensors: list[torch.Tensor]) -> float:
    return float(torch.stack(torch._foreach_norm(tensors)).float().square().sum().sqrt())


class Watch(Callback):
    """Per step: the gradients as backward made them (tensor hooks, before any clipping), the
    logits and labels of the training forward pass, the weights before and after the
    optimizer step, the .grad it used, the LR it applied, and whether a checkpoint exists."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, self.rows, self.own, self.batch = trainer, [], {}, {}
        self.params = list(trainer.model.parameters())
        for i, p in enumerate(self.params):
            p.register_hook(lambda g, i=i: self.own.__setitem__(i, g.detach().clone()))
        trainer.model.register_forward_hook(self._forward)
        epoch = trainer.train_loader.epoch

        def labelled_epoch(*args, **kwargs):  # the loader's own batches, their labels kept
            for images, labels in epoch(*args, **kwargs):
                self.batch["labels"] = labels.clone()
                yield images, labels

        trainer.train_loader.epoch = labelled_epoch
        self.before = self._weights()

    def _weights(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]

    def _forward(self, module, inputs, output) -> None:
        if module.training:
            self.batch["logits"] = output.detach().clone()

    @torch.no_grad()
    def on_step_end(self, trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> None:
        after = self._weights()
        ckpt = trainer.out / rundir.LAST_CHECKPOINT
        self.rows.append({
            "step": trainer.step - 1, "epoch": trainer.epoch,
            "own": [self.own[i] for i in range(len(self.params))], "used": [p.grad.clone() for p in self.params],
            "delta": [a - b for a, b in zip(after, self.before)],
            "lr": trainer.optimizer.param_groups[0]["lr"], **self.batch,
            "checkpoint_step": torch.load(ckpt, weights_only=True)["step"] if ckpt.exists() else None})
        self.before, self.own, self.batch = after, {}, {}


def watched_run(out: Path, overrides: list[str]) -> tuple[Watch, pd.DataFrame]:
    trainer = Trainer(load_config(DEMO, overrides), out)
    watch = Watch(trainer)
    trainer.add_callback(watch)
    assert trainer.fit() == "done"
    return watch, pd.read_parquet(out / rundir.STEPS)


@pytest.fixture(scope="module")
def clipped(tmp_path_factory, fmnist_dir):
    """SGD without momentum or decay (the update is -γ_t·grad), clipped at 0.05, no smoothing,
    a checkpoint only after the last epoch, the cosine to 0."""
    return watched_run(tmp_path_factory.mktemp("knobs") / "clipped", tiny(
        fmnist_dir, "optim.momentum=0", "optim.weight_decay=0", "train.grad_clip=0.05", "train.label_smoothing=0",
        "checkpoint.every_epoch=false", "schedule.final_lr_fraction=0"))


@pytest.fixture(scope="module")
def smoothed(tmp_path_factory, fmnist_dir):
    """Label smoothing 0.3, no clipping, a checkpoint at every epoch end, the cosine to 0.4 γ_max."""
    return watched_run(tmp_path_factory.mktemp("knobs") / "smoothed", tiny(
        fmnist_dir, "train.label_smoothing=0.3", "train.grad_clip=0", "checkpoint.every_epoch=true",
        "schedule.final_lr_fraction=0.4"))


def test_grad_clip_logs_the_norm_before_clipping_and_applies_the_clipped_update(clipped):
    watch, steps = clipped
    clip = 0.05
    for row, logged in zip(watch.rows, steps.itertuples()):
        unclipped = norm_like_telemetry(row["own"])
        assert unclipped > 4 * clip  # so clipping really acts on every step
        assert logged.grad_norm == pytest.approx(unclipped, rel=1e-6)
        assert norm_like_telemetry(row["used"]) == pytest.approx(clip, rel=1e-4)
        assert norm_like_telemetry(row["delta"]) == pytest.approx(row["lr"] * clip, rel=1e-3)  # the step taken
        scale = clip / unclipped
        for own, used, delta in zip(row["own"], row["used"], row["delta"]):
            torch.testing.assert_close(used, own * scale, rtol=1e-4, atol=1e-9)
            # w_after - w_before in float32: exact up to the rounding of the weight (|w| <~ 1)
            torch.testing.assert_close(delta, -row["lr"] * used, rtol=1e-4, atol=3e-7)


def test_grad_clip_off_updates_with_the_raw_gradient(smoothed):
    watch, steps = smoothed
    for row, logged in zip(watch.rows, steps.itertuples()):
        assert logged.grad_norm == pytest.approx(norm_like_telemetry(row["own"]), rel=1e-6)
        for own, used in zip(row["own"], row["used"]):
            assert torch.equal(own, used)


@pytest.mark.parametrize("run, smoothing", [("smoothed", 0.3), ("clipped", 0.0)])
def test_label_smoothing_is_the_loss_of_the_step(run, smoothing, request):
    watch, steps = request.getfixturevalue(run)
    for row, logged in zip(watch.rows, steps.itertuples()):
        expected = F.cross_entropy(row["logits"], row["labels"], label_smoothing=smoothing)
        assert logged.loss == pytest.approx(float(expected), rel=1e-5)
        other = F.cross_entropy(row["logits"], row["labels"], label_smoothing=0.3 - smoothing)
        assert abs(float(other) - logged.loss) > 1e-3  # the knob moves the loss


@pytest.mark.parametrize("run, fraction", [("smoothed", 0.4), ("clipped", 0.0)])
def test_final_lr_fraction_is_where_the_cosine_ends(run, fraction, request):
    watch, steps = request.getfixturevalue(run)
    total = EPOCHS * STEPS_PER_EPOCH
    expected = [LR * (fraction + (1 - fraction) * 0.5 * (1 + math.cos(math.pi * t / total))) for t in range(total)]
    assert steps.lr.tolist() == pytest.approx(expected, rel=1e-12)
    assert [row["lr"] for row in watch.rows] == pytest.approx(expected, rel=1e-12)  # what the optimizer applied
    # the last step's LR is within one cosine step of final_lr_fraction x γ_max, and above it
    assert fraction * LR < steps.lr.iloc[-1] <= fraction * LR + (1 - fraction) * LR * (1 - math.cos(math.pi / total)) / 2


@pytest.mark.parametrize("run", ["smoothed", "clipped"])
def test_steps_per_epoch_caps_each_epoch(run, request):
    watch, steps = request.getfixturevalue(run)
    assert SUBSET // BATCH > STEPS_PER_EPOCH  # the loader has more batches than the cap
    assert steps.step.tolist() == list(range(EPOCHS * STEPS_PER_EPOCH))
    assert steps.epoch.tolist() == [e for e in range(EPOCHS) for _ in range(STEPS_PER_EPOCH)]
    evals = pd.read_parquet(watch.trainer.out / rundir.EVAL)
    assert evals.step.tolist() == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    assert rundir.read_status(watch.trainer.out)["total_steps"] == EPOCHS * STEPS_PER_EPOCH


@pytest.mark.parametrize("run, every_epoch", [("smoothed", True), ("clipped", False)])
def test_checkpoint_every_epoch(run, every_epoch, request):
    watch, _ = request.getfixturevalue(run)
    # seen after each step of the second epoch: epoch 1's checkpoint (at its last step), or none
    second = [row["checkpoint_step"] for row in watch.rows if row["step"] >= STEPS_PER_EPOCH]
    assert second == [STEPS_PER_EPOCH if every_epoch else None] * STEPS_PER_EPOCH
    # after the last epoch, always
    assert torch.load(watch.trainer.out / rundir.LAST_CHECKPOINT, weights_only=True)["step"] == EPOCHS * STEPS_PER_EPOCH
