"""Optimizers with modes: every evaluation at the average x, the training point y put back exactly.

A schedule-free optimizer (Defazio et al., 2024: pytorch-optimizer's ``ScheduleFree*``, the
``schedulefree`` package, any optimizer with its own ``train()``/``eval()``,
:func:`~imagenet_repro.optim.capabilities.has_modes`) keeps two points: the gradient is
taken, and the model's parameters sit, at the interpolation y; the point it converges, and
the one to evaluate, is the average x, which ``optimizer.eval()`` writes into the
parameters (``optimizer.train()`` goes back).  BatchNorm's running statistics were
gathered at y, so at x they must be estimated again (the schedule-free authors' advice).

:class:`EvaluationPoint` is the context manager the trainer wraps each evaluation in
(intermediate ones included)::

    with trainer.evaluation_point(epoch):   # x, BN re-estimated; y and the buffers back after
        row = trainer.evaluate()

For an optimizer without modes it does nothing at all (no copy, no read, no RNG drawn).  For
one with modes it

1. keeps y (every parameter) and every buffer (BN's running statistics and counters);
2. ``optimizer.eval()``: the parameters become x;
3. with BatchNorm layers, re-estimates their running statistics at x: a forward pass in
   train mode, without gradients, over the first :data:`BN_BATCHES` training batches of
   the epoch in training (at an epoch's end: the epoch just trained), read by a loader of their own (:class:`ReestimationBatches`: the
   training iterator is not touched, and every rank reads the same batches in the same
   order, so every rank ends with the same statistics), averaged with equal weights
   (``torch.optim.swa_utils.update_bn``: momentum None);
4. afterwards, ``optimizer.train()`` (the optimizer's own flags), then y and the buffers
   are copied back bit for bit: the ``eval()``/``train()`` round trip is not exact in
   floating point, the copy is.  Every RNG state is kept.

So training continues from exactly where it was, an evaluation changes nothing in the
run, checkpoints are always written in train mode (outside the context), and a resumed
run equals an uninterrupted one.  The telemetry (``steps``/``layers`` tables) measures
the training point: ‖g‖ is the gradient at y, the only point where one is taken, and
‖x‖ (and the per-layer norms, rotation, update health) are the norms of the parameters as
they are during training, i.e. of y; the evaluation's top-1 and loss are x's.
"""
from __future__ import annotations

import contextlib
import itertools
import random
from typing import Callable, ContextManager, Iterable, Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.optim.swa_utils import update_bn

from imagenet_repro.data.loaders import build_loaders
from imagenet_repro.optim.capabilities import has_modes

BN_BATCHES = 50  # training batches (of the per-rank batch size) that re-estimate BatchNorm at x, as the schedule-free README advises


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


class ReestimationBatches:
    """The first ``count`` training batches of an epoch, read by a train loader of their own:
    rank 0's view of a one-rank run at the per-rank batch size (so every rank reads the same
    images, with the same augmentations, deterministic in (seed, epoch)); built on first use."""

    def __init__(self, cfg: DictConfig, device: torch.device, world_size: int, count: int = BN_BATCHES) -> None:
        self.cfg, self.device, self.world_size, self.count = cfg, device, world_size, count
        self._loader = None

    def _build(self):
        cfg = OmegaConf.to_container(self.cfg, resolve=True)
        cfg["data"]["batch_size"] = cfg["data"]["batch_size"] // self.world_size  # the batch BN saw in training
        train, _ = build_loaders(OmegaConf.create(cfg), self.device, rank=0, world_size=1)
        return train

    def __call__(self, epoch: int) -> Iterator[torch.Tensor]:
        if self._loader is None:
            self._loader = self._build()
        batches = self._loader.epoch(epoch)
        try:
            for images, _ in itertools.islice(batches, min(self.count, len(self._loader))):
                yield images
        finally:
            batches.close()  # an early stop: the loader's epoch iterator ends now


class _RNGState:
    """Every RNG state a forward pass or a loader may draw from: CPU torch, this CUDA device, numpy, random."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.states = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if self.cuda else None,
                       np.random.get_state(), random.getstate())

    def restore(self) -> None:
        cpu, cuda, np_state, py_state = self.states
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
        np.random.set_state(np_state)
        random.setstate(py_state)


class EvaluationPoint:
    """``with point(epoch):`` evaluates ``model`` at ``optimizer``'s x (see the module docstring).

    ``batches(epoch)``: the images that re-estimate BatchNorm (:class:`ReestimationBatches`);
    ``autocast()``: the training forward's autocast context (bf16 on CUDA)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 batches: Callable[[int], Iterable[torch.Tensor]], device: torch.device,
                 autocast: Optional[Callable[[], ContextManager]] = None) -> None:
        self.model, self.optimizer, self.batches, self.device = model, optimizer, batches, device
        self.autocast = autocast or contextlib.nullcontext
        self.active = has_modes(optimizer)
        if self.active:
            optimizer.train()  # the mode it trains and checkpoints in (the schedulefree package starts in eval)

    @contextlib.contextmanager
    def __call__(self, epoch: int) -> Iterator[None]:
        if not self.active:
            yield
            return
        params = [p.detach().clone() for p in self.model.parameters()]
        buffers = [b.detach().clone() for b in self.model.buffers()]
        rng = _RNGState(self.device)
        try:
            self.optimizer.eval()
            if has_batchnorm(self.model):
                with torch.no_grad(), self.autocast():
                    update_bn(self.batches(epoch), self.model)
            yield
        finally:
            self.optimizer.train()
            with torch.no_grad():
                for p, kept in zip(self.model.parameters(), params):
                    p.copy_(kept)
                for b, kept in zip(self.model.buffers(), buffers):
                    b.copy_(kept)
            rng.restore()
