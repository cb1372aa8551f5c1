"""The trainer's extension points (imagenet_repro.train.callbacks) on real tiny runs: when each
hook is called and with what, that a callback which only watches changes no number, that
``Trainer.interrupt`` stops a run as a deferred signal does and it resumes exactly, and the
callback kept outside the package (examples/keep_best.py) on a run and on a resumed one."""
from __future__ import annotations

import importlib.util
import json
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch

from imagenet_repro import rundir
from imagenet_repro.config import load_config
from imagenet_repro.train.callbacks import Callback
from imagenet_repro.train.compare import compare_runs
from imagenet_repro.train.loop import Trainer, run_training

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "demo.yaml"
pytestmark = pytest.mark.slow


def keep_best_module():
    spec = importlib.util.spec_from_file_location("keep_best", ROOT / "examples" / "keep_best.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_step_end(self, trainer, images, labels) -> None:
        self.calls.append(("step", trainer.step, trainer.batch_in_epoch, tuple(images.shape), tuple(labels.shape)))

    def on_epoch_end(self, trainer, evaluation) -> None:
        self.calls.append(("epoch", trainer.epoch, evaluation))

    def on_checkpoint(self, trainer, path) -> None:
        self.calls.append(("checkpoint", trainer.step, path, torch.load(path, weights_only=True)["step"]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fmnist_tiny) -> Path:
    out = tmp_path_factory.mktemp("ref") / "r"
    assert run_training(load_config(DEMO, fmnist_tiny), out) == "done"
    return out


def test_hooks_are_called_at_each_step_epoch_and_checkpoint_and_change_nothing(tmp_path, fmnist_tiny, reference):
    out, recorder, keep_best = tmp_path / "watched", Recorder(), keep_best_module().KeepBest()
    assert run_training(load_config(DEMO, fmnist_tiny), out, callbacks=[recorder, keep_best]) == "done"
    assert compare_runs(reference, out) == []  # watching changes no number
    steps = [c for c in recorder.calls if c[0] == "step"]
    assert [c[1] for c in steps] == list(range(1, 33))  # 2 epochs x 16 steps, after each step
    assert [c[2] for c in steps] == list(range(1, 17)) * 2
    assert {c[3] for c in steps} == {(128, 3, 32, 32)} and {c[4] for c in steps} == {(128,)}
    evals = pd.read_parquet(out / rundir.EVAL)
    epochs = [c for c in recorder.calls if c[0] == "epoch"]
    assert [c[1] for c in epochs] == [1, 2]
    assert [(e.epoch, e.step, e.top1) for _, _, e in epochs] == list(zip(evals.epoch, evals.step, evals.top1))
    # a checkpoint at each epoch end (every_epoch), on disk when told, before that epoch's hook
    checkpoints = [c for c in recorder.calls if c[0] == "checkpoint"]
    assert [(c[1], c[3]) for c in checkpoints] == [(16, 16), (32, 32)]
    assert {c[2] for c in checkpoints} == {out / rundir.LAST_CHECKPOINT}
    kinds = [c[0] for c in recorder.calls]
    assert kinds[15:18] == ["step", "checkpoint", "epoch"]  # epoch 1: its last step, its checkpoint, its hook
    # the example: the best epoch's weights and its row
    best = json.loads((out / "best.json").read_text())
    top = evals.loc[evals.top1.idxmax()]
    assert best == {"epoch": int(top.epoch), "step": int(top.step), "top1": float(top.top1)}
    saved = torch.load(out / "best.pt", weights_only=True)
    assert saved["step"] == best["step"] and set(saved["model"]) == set(
        Trainer(load_config(DEMO, fmnist_tiny), tmp_path / "fresh").model.state_dict())


def test_interrupt_stops_at_the_step_boundary_and_the_run_resumes_exactly(tmp_path, fmnist_tiny, reference):
    class StopAt5(Callback):
        def on_step_end(self, trainer, images, labels) -> None:
            if trainer.step == 5:
                trainer.interrupt(signal.SIGUSR1)

    out, calls = tmp_path / "interrupted", []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))  # e.g. submitit's requeue
    try:
        with pytest.raises(SystemExit) as info:
            run_training(load_config(DEMO, fmnist_tiny), out, callbacks=[StopAt5()])
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert info.value.code == 128 + signal.SIGUSR1 and calls == [signal.SIGUSR1]
    status = rundir.read_status(out)
    assert status["state"] == "failed" and status["step"] == 5
    assert status["reason"] == "interrupted by SIGUSR1 at step 5; resumes from its checkpoint"
    assert torch.load(out / rundir.LAST_CHECKPOINT, weights_only=True)["step"] == 5
    recorder = Recorder()
    assert run_training(load_config(DEMO, fmnist_tiny), out, callbacks=[recorder]) == "done"
    assert rundir.read_status(out)["resumed_from_step"] == 5
    assert [c[1] for c in recorder.calls if c[0] == "step"] == list(range(6, 33))  # the resumed steps only
    assert compare_runs(reference, out) == []


def test_keep_best_carries_its_best_over_a_resume(tmp_path, fmnist_tiny):
    KeepBest = keep_best_module().KeepBest
    out = tmp_path / "best"
    (out).mkdir()
    (out / "best.json").write_text(json.dumps({"epoch": 0, "step": 0, "top1": 0.999}))  # a best no epoch beats
    assert run_training(load_config(DEMO, fmnist_tiny + ["train.epochs=1"]), out, callbacks=[KeepBest()]) == "done"
    assert json.loads((out / "best.json").read_text())["top1"] == 0.999 and not (out / "best.pt").exists()
