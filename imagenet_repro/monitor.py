"""Gradient health for any PyTorch loop: ``NormMonitor(model, optimizer)``, four lines in a loop.

::

    from imagenet_repro.monitor import NormMonitor

    monitor = NormMonitor(model, optimizer, every=10, log_dir="runs/tb")   # 1
    for images, labels in loader:
        loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        monitor.after_backward(loss)                                         # 2
        optimizer.step()
        monitor.after_step()                                                 # 3
    layers = monitor.frame()                                                 # 4: a pandas DataFrame

It is the suite's trainer telemetry (:class:`imagenet_repro.train.telemetry.Telemetry`, the
same code): every step the loss, ||g||, ||x|| (all weights and the normalized ones), and
every ``every`` steps per normalized layer ||g||, ||x||, ||g||/||x||, the angular and relative
update (:mod:`imagenet_repro.train.health`), for Adam-family optimizers the update/gradient
cosine and the share of coordinates with sqrt(v̂) < 10ε, and the theory's steady-state ratio
and rotation where it has one (this suite's optimizers, ``torch.optim.SGD``, ``torch.optim.AdamW``
and optimizers named AdamW such as timm's: :mod:`imagenet_repro.optim.equilibrium`).  Values
stay on the device until a flush every ``flush_every`` steps (no per-step host sync); the
columns are those of the run folder's ``layers.parquet`` / ``steps.parquet``
(:data:`imagenet_repro.rundir.LAYERS_SCHEMA`, :data:`~imagenet_repro.rundir.STEPS_SCHEMA`).
``log_dir`` writes the step-level numbers as TensorBoard scalars at each flush.

Which weights count as normalized (scale-invariant, the theory's subject): ``layers="graph"``
(default: conv/linear layers whose output feeds a norm layer, found from the model graph,
:func:`imagenet_repro.optim.param_groups.normalized_layers`), ``"transformer"`` (every linear
layer but the output one, the paper's rule for pre-norm transformers) or a list of parameter names.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch

from imagenet_repro.optim.equilibrium import predicted_ratio_of, predicted_rotation_of
from imagenet_repro.optim.param_groups import normalized_layers
from imagenet_repro.train.telemetry import Telemetry, TensorBoardLog


class NormMonitor:
    """Norms, ratios and update health of ``model``'s normalized weights under ``optimizer``."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, every: int = 10,
                 flush_every: int = 50, layers: str | Iterable[str] = "graph",
                 example_input: torch.Tensor | None = None, log_dir: str | Path | None = None) -> None:
        if every < 1 or flush_every < 1:
            raise ValueError(f"every and flush_every must be >= 1 (got {every}, {flush_every})")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if isinstance(layers, str):
            modules, _ = normalized_layers(model, example_input, rule=layers)
            normalized = {f"{m}.weight" for m in modules}
        else:
            normalized = set(layers)
        known = {n for n, _ in named}
        normalized &= known
        if not normalized:
            raise ValueError("NormMonitor: no normalized weight found; pass layers=[parameter names] "
                             "(or layers='transformer' for a pre-norm transformer)")
        self.optimizer = optimizer
        group_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
        by_name = dict(named)

        def group(name: str) -> dict:
            g = optimizer.param_groups[group_of[id(by_name[name])]] if id(by_name[name]) in group_of else {}
            return {**g, "normalized": True}

        device = next(iter(by_name.values())).device
        self.telemetry = Telemetry(
            named, normalized, predicted=lambda n: _safe(predicted_ratio_of, optimizer, group(n)),
            layer_every=every, flush_every=flush_every, device=device, optimizer=optimizer,
            predicted_rotation=lambda n: _safe(predicted_rotation_of, optimizer, group(n)))
        if log_dir is not None:
            self.telemetry.sink = TensorBoardLog(Path(log_dir))
        self.step = 0

    @property
    def layer_names(self) -> list[str]:
        return list(self.telemetry.layer_names)

    def after_backward(self, loss: torch.Tensor | None = None, images: int = 0) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``; ``images``: the batch size (for images/s)."""
        lr = float(self.optimizer.param_groups[0].get("lr", math.nan))
        loss = loss if loss is not None else torch.zeros((), device=self.telemetry.device)
        self.telemetry.record(self.step, 0, lr, loss, images)

    def after_step(self) -> None:
        """After ``optimizer.step()``."""
        self.telemetry.after_step()
        self.step += 1

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(steps, layers) so far: the tables of a run folder's ``steps.parquet`` and ``layers.parquet``."""
        self.telemetry.flush()
        return self.telemetry.frames()

    def frame(self) -> pd.DataFrame:
        """The per-layer table so far (one row per logged step and normalized layer)."""
        return self.frames()[1]

    def close(self) -> None:
        """Flush and close the TensorBoard log (if any)."""
        self.telemetry.flush()
        if self.telemetry.sink is not None:
            self.telemetry.sink.close()


def _safe(fn, optimizer, group: dict) -> float:
    """The theory's value, NaN where a group lacks what the formula needs."""
    try:
        return float(fn(optimizer, group))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return math.nan
