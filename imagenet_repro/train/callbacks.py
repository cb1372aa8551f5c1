"""The trainer's extension points: a :class:`Callback` is told of every step end, epoch end
and checkpoint of a run.

Subclass it, override the methods you need (the others do nothing), and hand instances to
the trainer: ``run_training(cfg, out, callbacks=[MyCallback()])``,
``Trainer(cfg, out, callbacks=[...])``, or ``trainer.add_callback(cb)`` before ``fit()``.
They run in the order given, on every rank of a DDP run (act on ``trainer.dist.is_main`` for
what one process should do), in the training process, so they see the live trainer: its
``step`` (optimizer steps done), ``epoch`` (epochs completed), ``model``, ``optimizer``,
``telemetry``, ``eval_rows`` and ``out`` (the run folder).  The public things a callback may
do to the run are :meth:`Trainer.save_checkpoint` (a checkpoint now, as a timed one is) and
:meth:`Trainer.interrupt` (stop at this step boundary as a deferred SIGTERM/SIGUSR1 does);
an exception raised by a callback ends the run ``failed`` with it, as any error does.

A callback that changes neither the model, the optimizer nor the RNG streams leaves the run's
numbers bit for bit as they are without it (``tests/test_train_callbacks.py`` checks one).
``examples/keep_best.py`` is a callback kept outside the package.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imagenet_repro.train.telemetry import EvalRow

Trainer = Any  # imagenet_repro.train.loop.Trainer (which imports this module)


class Callback:
    """Hooks into one training run; every method is optional (the defaults do nothing)."""

    def on_step_end(self, trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> None:
        """After each optimizer step (``trainer.step`` already counts it), with the batch it
        trained on, before the step-boundary work (telemetry flush, intermediate eval, a
        deferred signal, a timed checkpoint)."""

    def on_epoch_end(self, trainer: Trainer, evaluation: EvalRow) -> None:
        """After each epoch's evaluation on the whole val set (``evaluation``), its checkpoint
        (when one is due) and its status update."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """After each checkpoint is on disk (``path``: ``checkpoints/last.pt``, with the run
        tables written just before it), timed, at an epoch end, for a signal or asked for."""


__all__ = ["Callback"]
