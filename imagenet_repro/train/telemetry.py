"""Gradient and weight norms, every step, accumulated on the device; update health per layer.

After ``backward()`` (and so after DDP's all-reduce: the norms are those of the reduced
gradient) and before ``optimizer.step()`` (so before weight decay or clipping touch
anything), :meth:`Telemetry.record` takes one ``torch._foreach_norm`` over all gradients
and one over all weights (:func:`.norms.norm_pair`: on CPU the two at once), and keeps the loss
and each tensor's two norms in a device buffer (the gradients' norms are global already: DDP
reduced them; the loss, each rank's own batch's, is averaged over the ranks at flush by
``reduce_loss``, so the logged loss means the same on any number of ranks and every rank
sees the same non-finite step).  At :meth:`flush` the buffer is reduced, for all
pending steps in a few ops (the per-step cost on a small model is the number of ops, not the
data), to the rows

    loss, ||g||, ||x||, ||g_N||, ||x_N||        (N: the normalized-layer weights)

and, every ``layer_every`` steps, the per-layer ||g|| and ||x|| of each normalized weight;
on those steps it also keeps x_t, and :meth:`Telemetry.after_step` (after
``optimizer.step()``) adds the layer's update health (:mod:`.health`: angular and relative
update, update/gradient cosine and below-ε fraction for Adam-family optimizers) with the
theory's steady-state rotation (:mod:`imagenet_repro.optim.equilibrium`).
Nothing is copied to the host until :meth:`flush` (every ``flush_every`` steps), so the
GPU never waits for a per-step ``.item()``.  The host keeps the rows; :meth:`frames`
returns them as the ``steps`` and ``layers`` tables of the run-directory contract
(:data:`imagenet_repro.rundir.STEPS_SCHEMA`, :data:`~imagenet_repro.rundir.LAYERS_SCHEMA`);
the steps table gets the mean over layers of the health columns on the per-layer steps.

With ``train.tensorboard`` a :class:`TensorBoardLog` (the ``sink``) gets the rows of each
flush, already on the host, and writes them as TensorBoard scalars to ``<run>/tensorboard/``
(so ``tensorboard --logdir runs/<sweep>`` follows a sweep live): no extra device sync.
"""
from __future__ import annotations

import functools
import math
import threading
import time
import weakref
from typing import Callable, NamedTuple, get_type_hints

import pandas as pd
import torch

from imagenet_repro.errors import StorageError
from imagenet_repro.rundir import EVAL_SCHEMA, LAYERS_SCHEMA, STEPS_SCHEMA, typed
from imagenet_repro.train.health import HEALTH_COLUMNS, UpdateHealth
from imagenet_repro.train.norms import norm_pair

STEP_COLUMNS = list(STEPS_SCHEMA)
LAYER_COLUMNS = list(LAYERS_SCHEMA)
ONE_CHUNK = 32768  # from this many elements on, torch's CPU sum may split a 1-D reduction over threads
_SUMMARIZED = ("angular_update", "predicted_rotation", "update_grad_cos", "eps_fraction")  # -> <name>_normalized


class _Pending(NamedTuple):
    """A recorded step whose norms are still in the device buffer (row ``i`` of a flush)."""
    step: int
    epoch: int
    lr: float
    with_layers: bool  # a per-layer step: its layers get rows (and update health in ``health_buf``)
    predicted: dict[str, float] | None  # the theory's ratio per layer, on those steps
    rotation: dict[str, float] | None  # the theory's rotation per layer, on those steps



class EvalRow(NamedTuple):
    """One evaluation: a row of ``eval.parquet``."""
    epoch: int  # epochs completed when it ran
    step: int  # global steps completed
    top1: float
    top5: float
    loss: float  # mean cross-entropy
    images: int  # how many val images

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> list[EvalRow]:
        return [cls(int(r.epoch), int(r.step), float(r.top1), float(r.top5), float(r.loss), int(r.images))
                for r in frame.itertuples(index=False)]


EVAL_COLUMNS = list(EVAL_SCHEMA)
EVAL_DTYPES = dict(EVAL_SCHEMA)
assert EVAL_COLUMNS == list(EvalRow._fields) and EVAL_DTYPES == {
    name: "int64" if kind is int else "float64" for name, kind in get_type_hints(EvalRow).items()}


class Telemetry:
    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], normalized: set[str],
                 predicted: Callable[[str], float], layer_every: int, flush_every: int,
                 device: torch.device, optimizer: torch.optim.Optimizer | None = None,
                 predicted_rotation: Callable[[str], float] | None = None) -> None:
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        norm_idx = [i for i, n in enumerate(self.names) if n in normalized]
        self.layer_names = [self.names[i] for i in norm_idx]
        self.norm_idx = torch.tensor(norm_idx, dtype=torch.long, device=device)
        self.predicted = predicted
        self.predicted_rotation = predicted_rotation or (lambda name: math.nan)
        self.layer_every = layer_every
        self.flush_every = flush_every
        self.device = device
        # per step: the loss, and the norm of every tensor (row 0: gradients, row 1: weights); the
        # global and normalized-layer norms are reduced from these at flush, for all pending steps at once
        self.loss_buf = torch.zeros(flush_every, device=device, dtype=torch.float32)
        self.norm_buf = torch.zeros(flush_every, 2, len(self.params), device=device, dtype=torch.float32)
        # per layer step: HEALTH_COLUMNS (NaN until after_step fills them)
        self.health_buf = torch.zeros(flush_every, len(HEALTH_COLUMNS), len(norm_idx), device=device,
                                      dtype=torch.float32)
        # without the optimizer (no after_step calls) the health columns stay NaN
        self.health = (UpdateHealth([self.params[i] for i in norm_idx], optimizer) if optimizer is not None
                       else None)
        self._health_slot: tuple[int, torch.Tensor] | None = None  # (buffer row, ||g_N|| per layer)
        self.pending: list[_Pending] = []
        self.step_rows: list[list] = []
        self.layer_rows: list[list] = []
        self._window_start = time.perf_counter()
        self._window_images = 0
        self.diverged = False  # sticky: set by the first flush that sees a non-finite value
        self.diverged_at: int | None = None  # the first step with a non-finite loss or norm
        self.sink: "TensorBoardLog | None" = None  # gets each flush's new host rows
        # with several ranks: the mean over ranks of the pending steps' losses, in place, at each
        # flush (a collective: every rank flushes at the same steps); None: this rank's own loss
        self.reduce_loss: Callable[[torch.Tensor], object] | None = None

    @torch.no_grad()
    def record(self, step: int, epoch: int, lr: float, loss: torch.Tensor, batch_images: int) -> None:
        """After backward, before the optimizer's step: the norms of step ``step``."""
        if len(self.pending) == self.flush_every:  # full and not flushed by after_step
            self.flush()
        k = len(self.pending)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        g, x = norm_pair(grads, self.params)  # under no_grad: the parameters themselves, no detach() per step
        self.loss_buf[k].copy_(loss.detach().reshape(()))
        self.norm_buf[k, 0].copy_(g)
        self.norm_buf[k, 1].copy_(x)
        with_layers = step % self.layer_every == 0
        predicted = rotation = None
        self._health_slot = None
        if with_layers:
            self.health_buf[k].fill_(math.nan)
            predicted = {n: self.predicted(n) for n in self.layer_names}
            rotation = {n: self.predicted_rotation(n) for n in self.layer_names}
            if self.health is not None and self.health.params:  # a model with no normalized layer has none
                self.health.before_step()
                self._health_slot = (k, g.index_select(0, self.norm_idx))
        self.pending.append(_Pending(step, epoch, lr, with_layers, predicted, rotation))
        self._window_images += batch_images

    @torch.no_grad()
    def after_step(self) -> None:
        """After the optimizer's step: the update health of a per-layer step (on the device)."""
        if self._health_slot is not None:
            k, g_n = self._health_slot
            self._health_slot = None
            self.health_buf[k].copy_(self.health.after_step(g_n))
        if len(self.pending) == self.flush_every:
            self.flush()

    def flush(self) -> bool:
        """Copy the pending rows to the host. Returns False if a loss or norm is non-finite."""
        if not self.pending:
            return not self.diverged
        if self._health_slot is not None:  # flushed between record and after_step: no health this step
            self._health_slot = None
            if self.health is not None:
                self.health.armed = False
        n = len(self.pending)
        if self.reduce_loss is not None:
            self.reduce_loss(self.loss_buf[:n])
        first_step_row, first_layer_row = len(self.step_rows), len(self.layer_rows)
        values, layers = self._reduce(n, any(p.with_layers for p in self.pending))
        now = time.perf_counter()
        rate = self._window_images / max(now - self._window_start, 1e-9)
        self._window_start, self._window_images = now, 0
        finite = True
        for i, p in enumerate(self.pending):
            summary = [math.nan] * len(_SUMMARIZED)
            if p.with_layers:
                rows = []
                for j, name in enumerate(self.layer_names):
                    gn, xn, angle, rel, cos, frac = (layers[i][c][j] for c in range(2 + len(HEALTH_COLUMNS)))
                    rows.append([p.step, name, gn, xn, gn / xn if xn > 0 else math.nan, p.predicted[name],
                                 angle, rel, p.rotation[name], cos, frac])
                self.layer_rows.extend(rows)
                summary = [_mean([r[LAYER_COLUMNS.index(c)] for r in rows]) for c in _SUMMARIZED]
            self.step_rows.append([p.step, p.epoch, p.lr, *values[i], rate, *summary])
            if not all(math.isfinite(v) for v in values[i]):  # rows end at the first non-finite step
                finite = False
                self.diverged_at = p.step
                break
        self.pending.clear()
        self.diverged = self.diverged or not finite
        if self.sink is not None:
            self.sink.steps(self.step_rows[first_step_row:], self.layer_rows[first_layer_row:])
        return not self.diverged

    def _reduce(self, n: int, with_layers: bool) -> tuple[list, list | None]:
        """The first ``n`` pending steps on the host: rows (loss, ||g||, ||x||, ||g_N||, ||x_N||) and,
        if ``with_layers``, per step the (2 + len(HEALTH_COLUMNS), n_layers) per-layer values.

        Each global norm is the square root of the sum of the squared tensor norms.  With fewer
        than :data:`ONE_CHUNK` tensors the sums run along the buffer's last (contiguous) dimension
        for all pending steps in one op: on CPU each row is then one chunk, the same sum bit for bit
        as the step's own vector would give (``tests/test_telemetry_rows.py``); above that a 1-D sum
        may be split over threads, so each step is reduced on its own."""
        norms = self.norm_buf[:n]
        squared = norms.square()
        if norms.shape[2] < ONE_CHUNK:
            reduced = torch.cat([squared.sum(dim=2), squared.index_select(2, self.norm_idx).sum(dim=2)], dim=1)
        else:
            reduced = torch.stack([torch.stack([squared[i, 0].sum(), squared[i, 1].sum(),
                                                squared[i, 0].index_select(0, self.norm_idx).sum(),
                                                squared[i, 1].index_select(0, self.norm_idx).sum()])
                                   for i in range(n)])
        summary = torch.cat([self.loss_buf[:n, None], reduced.sqrt()], dim=1)
        layers = None
        if with_layers:
            layers = torch.cat([norms.index_select(2, self.norm_idx), self.health_buf[:n]], dim=1).cpu().tolist()
        return summary.cpu().tolist(), layers

    @property
    def last(self) -> dict[str, float]:
        if not self.step_rows:
            return {}
        return dict(zip(STEP_COLUMNS, self.step_rows[-1]))

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        steps = typed(pd.DataFrame(self.step_rows, columns=STEP_COLUMNS), STEPS_SCHEMA)
        layers = typed(pd.DataFrame(self.layer_rows, columns=LAYER_COLUMNS), LAYERS_SCHEMA)
        return steps, layers

    def restore(self, steps: pd.DataFrame, layers: pd.DataFrame, before_step: int) -> None:
        """Resume: keep the rows of steps < ``before_step`` (later ones will be recomputed)."""
        self.step_rows = typed(steps[steps.step < before_step], STEPS_SCHEMA).values.tolist()
        for row in self.step_rows:
            row[0], row[1] = int(row[0]), int(row[1])
        self.layer_rows = typed(layers[layers.step < before_step], LAYERS_SCHEMA).values.tolist()
        for row in self.layer_rows:
            row[0] = int(row[0])


def _mean(values: list[float]) -> float:
    """Mean of the finite values; NaN if none."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


TENSORBOARD_DIR = "tensorboard"
HEALTH_TAGS = (("rotation/angular", "angular_update_normalized"), ("rotation/predicted", "predicted_rotation_normalized"),
               ("adam/update_grad_cos", "update_grad_cos_normalized"), ("adam/eps_fraction", "eps_fraction_normalized"))


_TB_WORKERS: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()  # TensorBoard's writer threads
_previous_excepthook = threading.excepthook


def _quiet_tb_workers(args) -> None:
    """A TensorBoard writer thread that fails keeps its error for the next write or flush in
    the trainer's thread (raised there as a StorageError); it prints no traceback of its own."""
    if args.thread in _TB_WORKERS and isinstance(args.exc_value, OSError):
        return
    _previous_excepthook(args)


def _install_excepthook() -> None:
    global _previous_excepthook
    if threading.excepthook is not _quiet_tb_workers:
        _previous_excepthook, threading.excepthook = threading.excepthook, _quiet_tb_workers


def _storage_errors(method):
    """A TensorBoard write that fails (full disk, read-only...) is a StorageError naming the log folder."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(self.log_dir, exc) from exc
    return wrapper


class TensorBoardLog:
    """TensorBoard scalars of one run, from rows already on the host.

    Tags: ``train/loss``, ``train/lr``, ``norms/grad``, ``norms/weight``,
    ``ratio/normalized`` (||g_N||/||x_N|| of the normalized layers) with
    ``ratio/predicted`` (the theory's steady-state ratio, mean over layers, at the per-layer
    steps), on the per-layer steps the means over normalized layers ``rotation/angular``
    (radians per step) with ``rotation/predicted``, and for Adam-family optimizers
    ``adam/update_grad_cos`` and ``adam/eps_fraction``; and ``eval/top1``, ``eval/top5``, ``eval/loss`` (x: the global step).  The
    writer is opened at the first write with ``purge_step`` set to that step, so a resumed
    run replaces the events it is about to recompute instead of duplicating them.
    """

    def __init__(self, log_dir) -> None:
        self.log_dir = log_dir
        self._writer = None

    def _open(self, first_step: int):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=int(first_step), flush_secs=3600)
            worker = getattr(getattr(getattr(self._writer.file_writer, "event_writer", None), "_async_writer", None),
                             "_worker", None)
            if worker is not None:
                _TB_WORKERS.add(worker)
                _install_excepthook()
        return self._writer

    @_storage_errors
    def steps(self, step_rows: list[list], layer_rows: list[list]) -> None:
        if not step_rows:
            return
        w = self._open(step_rows[0][0])
        col = {name: i for i, name in enumerate(STEP_COLUMNS)}
        for row in step_rows:
            step = int(row[col["step"]])
            for tag, name in (("train/loss", "loss"), ("train/lr", "lr"), ("norms/grad", "grad_norm"),
                              ("norms/weight", "weight_norm")):
                w.add_scalar(tag, row[col[name]], step)
            x_n = row[col["weight_norm_normalized"]]
            if x_n > 0:
                w.add_scalar("ratio/normalized", row[col["grad_norm_normalized"]] / x_n, step)
            for tag, name in HEALTH_TAGS:
                if math.isfinite(row[col[name]]):
                    w.add_scalar(tag, row[col[name]], step)
        predicted: dict[int, list[float]] = {}
        lcol = {name: i for i, name in enumerate(LAYER_COLUMNS)}
        for row in layer_rows:
            if math.isfinite(row[lcol["predicted_ratio"]]):
                predicted.setdefault(int(row[lcol["step"]]), []).append(row[lcol["predicted_ratio"]])
        for step, values in predicted.items():
            w.add_scalar("ratio/predicted", sum(values) / len(values), step)
        w.flush()

    @_storage_errors
    def eval(self, row: EvalRow) -> None:
        """One evaluation (:class:`EvalRow`), at its global step."""
        w = self._open(row.step)
        for tag, value in (("eval/top1", row.top1), ("eval/top5", row.top5), ("eval/loss", row.loss)):
            w.add_scalar(tag, value, int(row.step))
        w.flush()

    @_storage_errors
    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
