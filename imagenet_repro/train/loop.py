"""One training run: config in, run directory out (see :mod:`imagenet_repro.rundir`).

:meth:`Trainer.fit` is the recipe: :meth:`~Trainer.start` (or resume) the run's files, then for
each epoch ``_train_epoch()`` (its steps, each followed by the step-boundary work of
``_after_step``) and ``_end_epoch()`` (flush, eval, checkpoint).  Code outside ``train/``
extends a run through :class:`~imagenet_repro.train.callbacks.Callback` (step end, epoch end,
checkpoint) and the public methods ``start``, ``train_step``, ``evaluate``,
``save_checkpoint`` and ``interrupt``, never the private ones.  It ends ``done``;
``diverged`` (a helper raises ``_Diverged``, caught once in ``fit``); with SystemExit for a deferred signal (below);
or with the error, which :func:`run_training` records as ``failed``.

The loop, in the order it happens each step::

    schedule.apply(t)            γ_t into every param group (each group's peak_lr · γ_t/γ_max, from build_optimizer)
    loss = model(x) vs y         bf16 autocast + channels_last on CUDA
    loss.backward()              DDP all-reduces the gradient here (create_graph if the optimizer declares it)
    telemetry.record(t)          ||g||, ||x|| (global, normalized layers, per layer)
    [clip], optimizer.step()     (with train.closure's closure if the optimizer declares one)
    telemetry.after_step()       per-layer steps: rotation, relative update, Adam's health

every ``flush_every`` steps the telemetry is synced to the host (non-finite → the run ends
``diverged``), every ``checkpoint.every_minutes`` and at every epoch end (with
``checkpoint.every_epoch``; after the last one always) a checkpoint is written, and each
epoch ends with an evaluation on the whole val set.  With ``train.eval_every_steps`` N > 0
the model is also evaluated after every global step that is a multiple of N (not the last
of an epoch: the epoch-end eval covers it) on the first ``train.eval_subset`` val images;
the steps depend only on N, so a resumed run evaluates at the same steps, and evaluation
saves and restores every RNG state, so it changes nothing in training.  Every evaluation runs
inside ``evaluation_point`` (:mod:`.modes`): for an optimizer with modes (schedule-free) the
model is evaluated at x with BatchNorm re-estimated, and y is put back exactly afterwards.
SIGTERM/SIGUSR1/SIGUSR2/SIGINT are deferred to a step boundary (:mod:`.stopping`); with several
ranks every rank acts at the same agreed step, and timed checkpoints are agreed there too:
checkpoint, status ``failed`` with the reason, then the previously installed handler
(submitit's, which requeues the job from rank 0), a barrier (no rank leaves before the
requeue), then SystemExit(128 + signum).  A second Ctrl-C stops at once.  A run directory
with a checkpoint resumes where it stopped.

With several ranks the logged loss is the mean over ranks (so the divergence check is the same
on every rank), evaluation is sharded (each rank a disjoint part of the val images, BatchNorm
buffers made rank 0's first, totals summed), and a rank that fails writes status ``failed``
naming itself; a rank that sees a collective fail names the peers it finds dead
(:func:`run_training`).
"""
from __future__ import annotations

import functools
import math
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from imagenet_repro import files, rundir
from imagenet_repro.config import check_placement, to_yaml
from imagenet_repro.data.loaders import build_loaders
from imagenet_repro.errors import ConfigError, StorageError, describe
from imagenet_repro.identity import check_run_folder, check_world_size
from imagenet_repro.models import build_model
from imagenet_repro.optim.capabilities import capabilities_of
from imagenet_repro.optim.factory import build_optimizer, predicted_ratio, predicted_rotation
from imagenet_repro.optim.param_groups import group_summary
from imagenet_repro.progress import progress
from imagenet_repro.rundir import process_start
from imagenet_repro.train.callbacks import Callback
from imagenet_repro.train.checkpoint import (
    CheckpointError,
    gather_rng_states,
    kept_checkpoint,
    load_latest,
    save_checkpoint,
)
from imagenet_repro.train.closure import optimizer_step
from imagenet_repro.train.determinism import fix_cublas_workspace
from imagenet_repro.train.distributed import (
    all_gather_rows,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    dead_peers,
    init_from_env,
    is_collective_failure,
    peer_processes,
    settle_buckets,
    shutdown,
)
from imagenet_repro.train.manifest import build_manifest
from imagenet_repro.train.modes import EvaluationPoint, ReestimationBatches
from imagenet_repro.train.schedule import LRSchedule
from imagenet_repro.train.stopping import DEFAULT_STOP_WITHIN_S, Decision, DeferredSignals, StepAgreement
from imagenet_repro.train.telemetry import (
    EVAL_COLUMNS,
    EVAL_DTYPES,
    TENSORBOARD_DIR,
    EvalRow,
    Telemetry,
    TensorBoardLog,
)


class _Diverged(Exception):
    """A non-finite loss, gradient or eval loss: caught once, in :meth:`Trainer.fit`."""


def cuda_backend_flags(deterministic: bool) -> None:
    """cuDNN autotuning as ffcv-imagenet (``cudnn.benchmark``), unless the run must be deterministic."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """``stop_within_s``: the time between a stop signal and the kill (SLURM's
    ``signal_delay_s``): the ranks agree on stopping often enough to act within it."""

    def __init__(self, cfg: DictConfig, out_dir: Path, callbacks: Iterable[Callback] = (),
                 stop_within_s: float = DEFAULT_STOP_WITHIN_S) -> None:
        self.cfg = cfg
        self.callbacks: list[Callback] = list(callbacks)  # told of each step end, epoch end, checkpoint
        self.out = Path(out_dir)
        self.started_at = time.time()
        fix_cublas_workspace(cfg.train.deterministic)  # before CUDA starts (init_from_env binds the device)
        self.dist, self.device = init_from_env(cfg.train.device, cfg.train.collective_timeout_min)
        self.peers = peer_processes(self.dist)  # where every rank runs, to name one that dies
        check_placement(cfg, self.dist.world_size, self.device.type == "cuda")
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed)
        self.train_loader, self.val_loader = build_loaders(cfg, self.device, self.dist.rank, self.dist.world_size)
        self.steps_per_epoch = len(self.train_loader)
        if cfg.train.steps_per_epoch > 0:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.steps_per_epoch)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch

        self.cuda = self.device.type == "cuda"
        if self.cuda:
            cuda_backend_flags(cfg.train.deterministic)
        model = build_model(cfg.model, cfg.data.num_classes)
        self.channels_last = self.cuda and cfg.model.channels_last
        model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.model = model
        res = self.train_loader.resolution(0)
        example = torch.zeros(2, 3, res, res, device=self.device)
        self.optimizer = build_optimizer(model, cfg.optim, example_input=example)
        self.capabilities = capabilities_of(type(self.optimizer))  # a closure, create_graph (optim.capabilities)
        self.evaluation_point = EvaluationPoint(  # schedule-free: evaluate at x (train.modes); else nothing
            model, self.optimizer, ReestimationBatches(cfg, self.device, self.dist.world_size), self.device,
            autocast=lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and cfg.train.amp))
        self.schedule = LRSchedule(self.optimizer, cfg.schedule, cfg.optim.lr, self.total_steps, self.steps_per_epoch)
        self.ddp_model = model
        if self.dist.enabled:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.cuda else None)
            settle_buckets(self.ddp_model, example)  # the same buckets at every step, fresh or resumed

        # index, not the dict: optimizer.load_state_dict() replaces the group dicts on resume
        group_index = {name: i for i, g in enumerate(self.optimizer.param_groups) for name in g.get("names", [])}
        normalized = {n for g in self.optimizer.param_groups if g.get("normalized") for n in g["names"]}
        self.telemetry = Telemetry(
            list(model.named_parameters()), normalized,
            predicted=lambda name: predicted_ratio(self.optimizer, self.optimizer.param_groups[group_index[name]]),
            layer_every=cfg.telemetry.layer_every, flush_every=cfg.telemetry.flush_every, device=self.device,
            optimizer=self.optimizer,
            predicted_rotation=lambda name: predicted_rotation(self.optimizer, self.optimizer.param_groups[group_index[name]]))
        self.eval_rows: list[EvalRow] = []
        self.tensorboard = (TensorBoardLog(self.out / TENSORBOARD_DIR)
                            if cfg.train.tensorboard and self.dist.is_main else None)
        self.telemetry.sink = self.tensorboard
        self.telemetry.reduce_loss = functools.partial(all_reduce_mean, d=self.dist)  # the loss over all ranks
        self.show_bar = self.dist.is_main and cfg.train.progress
        self.step = self.epoch = self.batch_in_epoch = self.first_step = 0
        self.signals = DeferredSignals()
        self.agreement = StepAgreement(self.dist.world_size, functools.partial(all_gather_rows, d=self.dist),
                                       stop_within_s, cfg.checkpoint.every_minutes * 60)

    def add_callback(self, callback: Callback) -> None:
        """Tell ``callback`` of this run's step ends, epoch ends and checkpoints (after the others)."""
        self.callbacks.append(callback)

    # ---- files ---------------------------------------------------------------------
    def _write_tables(self) -> None:
        if not self.dist.is_main:
            return
        steps, layers = self.telemetry.frames()
        files.atomic_write_parquet(self.out / rundir.STEPS, steps)
        files.atomic_write_parquet(self.out / rundir.LAYERS, layers)
        evals = pd.DataFrame(self.eval_rows, columns=EVAL_COLUMNS).astype(EVAL_DTYPES)
        files.atomic_write_parquet(self.out / rundir.EVAL, evals)

    def _status(self, state: str, any_rank: bool = False, **extra) -> None:
        """status.json (rank 0; with ``any_rank`` the calling rank: a failure only it knows)."""
        if not (self.dist.is_main or any_rank):
            return
        top1 = self.eval_rows[-1].top1 if self.eval_rows else None
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
        rundir.write_status(self.out, state, epoch=self.epoch, step=self.step, total_steps=self.total_steps,
                            top1=top1, job_id=job_id or os.environ.get("SLURM_JOB_ID"), updated=time.time(), **extra)

    def save_checkpoint(self) -> None:
        """Flush telemetry, write the tables, then the checkpoint (so they always agree); then
        the callbacks' ``on_checkpoint``.  Call it on every rank (rank 0 writes)."""
        self.telemetry.flush()
        path = self.out / rundir.LAST_CHECKPOINT
        rng_states = gather_rng_states(self.device, self.dist.world_size)  # a collective: every rank's, on rank 0
        if self.dist.is_main:
            self._write_tables()
            save_checkpoint(path, model=self.model, optimizer=self.optimizer, step=self.step, epoch=self.epoch,
                            batch_in_epoch=self.batch_in_epoch, rng_states=rng_states)
        self.agreement.checkpointed()
        for callback in self.callbacks:
            callback.on_checkpoint(self, path)

    def _read_table(self, name: str) -> pd.DataFrame:
        path = self.out / name
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # missing, truncated, not parquet
            raise CheckpointError(f"{path}: unreadable run table ({type(exc).__name__}) next to a checkpoint: the "
                                  f"run cannot resume exactly; delete {self.out} to start it over") from None

    def start(self) -> None:
        """Start the run's files (config, manifest, status ``running``), resuming from the newest
        checkpoint that verifies (``last.pt``, else ``prev.pt``), the tables cut back to its position; a run with checkpoints none of which can be used
        raises CheckpointError (marked failed by :func:`run_training`)."""
        pos = load_latest(self.out / rundir.CHECKPOINTS, model=self.model, optimizer=self.optimizer,
                          rank=self.dist.rank, device=self.device)
        if pos is not None:
            self.step, self.epoch, self.batch_in_epoch = pos["step"], pos["epoch"], pos["batch_in_epoch"]
            steps, layers = self._read_table(rundir.STEPS), self._read_table(rundir.LAYERS)
            self.telemetry.restore(steps, layers, before_step=self.step)
            evals = self._read_table(rundir.EVAL)
            # an eval row belongs to the checkpoint's past if it came before its step, or at
            # that step within the epochs it had completed (a checkpoint taken at the last
            # step of an epoch, before that epoch's evaluation, must not keep the eval row)
            keep = (evals.step < self.step) | ((evals.step == self.step) & (evals.epoch <= self.epoch))
            self.eval_rows = EvalRow.from_frame(evals[keep])
        if self.dist.is_main:
            files.make_dir(self.out)
            files.atomic_write_text(self.out / rundir.CONFIG, to_yaml(self.cfg))
            manifest = files.read_json(self.out / rundir.MANIFEST) or {}
            manifest.update(build_manifest(self.dist.world_size, self.device, manifest))
            manifest["param_groups"] = {"normalized_rule": self.cfg.optim.normalized_rule,
                                        "corrected_decay": bool(getattr(self.optimizer, "corrects_decay", False)),
                                        **group_summary(self.optimizer)}
            files.atomic_write_json(self.out / rundir.MANIFEST, manifest)
        # (always written, so a later resume never shows an earlier one's fallback)
        previous = rundir.read_status(self.out) if pos is not None else {}
        extra = {"resumed_from": pos["path"].name if pos else None, "skipped_checkpoints": pos["skipped"] if pos else [],
                 # why the attempt before this one ended (the reason it left in status.json)
                 "resumed_after": previous.get("reason") if previous.get("state") == "failed" else None,
                 # where every rank runs (the ranks' own pids: the process to look at, or to kill)
                 "ranks": [{k: p[k] for k in ("rank", "host", "pid")} for p in self.peers]}
        self._status("running", resumed_from_step=self.step if pos is not None else None, reason=None,
                     failed_rank=None, pid=os.getpid(), pid_start=process_start(os.getpid()),
                     host=socket.gethostname(), world_size=self.dist.world_size, **extra)
        self.first_step = self.step  # where this attempt began (0: a fresh run)
        self.agreement.start(self.step)

    # ---- signals ----------------------------------------------------------------------
    def interrupt(self, signum: int = signal.SIGTERM) -> None:
        """End the run as the deferred signal ``signum`` would (with several ranks: at the next
        agreement step, on every rank): checkpoint, status ``failed`` with the reason, the
        previously installed handler of ``signum`` (submitit's requeue), then SystemExit(128 + signum)."""
        self.signals.pending = int(signal.Signals(signum))  # (ValueError for a number no signal has)

    def _stop(self, decision: Decision) -> None:
        """Every rank, at the same step: one checkpoint, one status, the requeue, then exit."""
        signum = decision.signal
        self.save_checkpoint()
        self._status("failed", reason=decision.reason(self.step, self.dist.world_size))
        # the signals stay deferred until fit() ends: the requeue's own SIGTERM is nothing to act on
        handler, error = self.signals.previous_handler(signum), None
        try:
            if handler is not None:
                handler(signum, None)  # submitit: rank 0 requeues the job, then exits; the others return
        except BaseException as exc:  # submitit's exit after the requeue, or why it did not requeue
            error = exc
        try:  # no rank leaves before rank 0's requeue (srun --kill-on-bad-exit ends a step at the first exit)
            barrier(self.dist)
        except Exception:  # a peer already ended by the requeue: the checkpoint and status are written
            pass
        if error is not None:
            raise error
        raise SystemExit(128 + signum)

    # ---- the loop -------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One optimizer step on a batch, telemetry recorded (and flushed only when its buffer
        is full); none of the step-boundary work nor the callbacks."""
        lr = self.schedule.apply(self.step)

        def forward_loss() -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and self.cfg.train.amp):
                return F.cross_entropy(self.ddp_model(images), labels, label_smoothing=self.cfg.train.label_smoothing)

        loss = forward_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward(create_graph=self.capabilities.create_graph)
        self.telemetry.record(self.step, self.epoch, lr, loss, images.shape[0] * self.dist.world_size)
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        try:
            optimizer_step(self.optimizer, self.capabilities, self.model, forward_loss, self.dist.world_size)
        except Exception:  # e.g. a preconditioner's SVD of a NaN gradient: the run had diverged before it
            if not self.telemetry.flush():
                raise _Diverged from None
            raise
        self.telemetry.after_step()
        self.step += 1
        self.batch_in_epoch += 1

    @torch.no_grad()
    def evaluate(self, limit: int = 0) -> EvalRow:
        """The model on the val set (its first ``limit`` images if > 0); every RNG state is kept.

        With several ranks each rank evaluates its own part of those images, with rank 0's
        BatchNorm buffers (the checkpoint's), and the totals are summed: the counts and top-1 of
        one rank evaluating the same weights.  Call it on every rank."""
        rng = (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.cuda else None,
               np.random.get_state(), random.getstate())
        broadcast_buffers(self.model, self.dist)
        self.model.eval()
        totals = torch.zeros(4, device=self.device, dtype=torch.float64)  # top1, top5, loss sum, count
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and self.cfg.train.amp):
            for images, labels in self.val_loader.batches(limit):
                logits = self.model(images).float()
                top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
                hit = top5 == labels[:, None]
                totals += torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum(),
                                       F.cross_entropy(logits, labels, reduction="sum"),
                                       torch.tensor(labels.shape[0], device=self.device)]).to(torch.float64)
        all_reduce_sum(totals, self.dist)
        self.model.train()
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state(rng[1], self.device)
        np.random.set_state(rng[2])
        random.setstate(rng[3])
        top1, top5, loss, count = totals.tolist()
        return EvalRow(self.epoch, self.step, top1 / count, top5 / count, loss / count, int(count))

    def _intermediate_eval_due(self) -> bool:
        every = self.cfg.train.eval_every_steps
        return every > 0 and self.step % every == 0 and self.batch_in_epoch < self.steps_per_epoch

    def _record_eval(self, row: EvalRow) -> None:
        """Keep (and log) ``row``; a non-finite eval loss ends the run ``diverged``."""
        self.eval_rows.append(row)
        if self.tensorboard is not None:
            self.tensorboard.eval(row)
        if not math.isfinite(row.loss):
            raise _Diverged

    def _progress(self, bar) -> None:
        last = self.telemetry.last
        if last:
            bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{last['lr']:.3g}", g=f"{last['grad_norm']:.3g}",
                            img_s=f"{last['images_per_s']:.0f}", refresh=False)

    def fit(self) -> str:
        """Train (or resume) to the last epoch; return ``done`` or ``diverged``.

        A deferred signal exits (SystemExit) at a step boundary; an error is recorded in
        status.json (:meth:`record_failure`, while the signals are still deferred: a SIGTERM
        that follows a peer's death cannot end the process before it is written) and propagates.
        """
        self.signals.install()
        try:
            self.start()
            while self.epoch < self.cfg.train.epochs:
                self._train_epoch()
                self._end_epoch()
            return self._finish("done")
        except _Diverged:
            return self._finish("diverged")
        except (SystemExit, StorageError):  # a stop (status written), a failed write (run_training's one line)
            raise
        except BaseException as exc:
            try:
                self.record_failure(exc)
            except StorageError:
                pass  # status.json stays `running`: `repro status` tells the process is gone
            raise
        finally:
            self.signals.restore()
            if self.tensorboard is not None:
                try:
                    self.tensorboard.close()
                except StorageError:
                    if sys.exc_info()[1] is None:  # else the error in flight is the one to report
                        raise

    def _train_epoch(self) -> None:
        """The current epoch's remaining steps (all of them unless resumed mid-epoch)."""
        with progress(self.steps_per_epoch, f"epoch {self.epoch + 1}/{self.cfg.train.epochs}",
                      initial=self.batch_in_epoch, enabled=self.show_bar) as bar:  # a bar on a TTY, else lines
            for images, labels in self.train_loader.epoch(self.epoch, skip=self.batch_in_epoch):
                if self.batch_in_epoch >= self.steps_per_epoch:  # train.steps_per_epoch caps the epoch
                    break
                self.train_step(images, labels)
                for callback in self.callbacks:
                    callback.on_step_end(self, images, labels)
                bar.update(1)
                self._after_step(bar)

    def _after_step(self, bar) -> None:
        """The step boundary: telemetry flush, intermediate eval, then what the ranks agree on
        (:mod:`.stopping`): a deferred signal, a timed checkpoint."""
        if self.step % self.telemetry.flush_every == 0:  # (record() flushes a full buffer itself)
            self.telemetry.flush()
            self._progress(bar)
        if self.telemetry.diverged:
            raise _Diverged
        if self._intermediate_eval_due():  # before any checkpoint of this step: saved with it
            with self.evaluation_point(self.epoch):
                row = self.evaluate(limit=self.cfg.train.eval_subset)
            self._record_eval(row)
            self.agreement.after_pause(self.step)
        decision = self.agreement.boundary(self.step, self.signals.pending)
        if decision is None:
            return
        if decision.signal is not None:
            self._stop(decision)  # checkpoint, status failed, requeue, SystemExit
        if decision.checkpoint:
            self.save_checkpoint()  # (its flush may find a non-finite step)
            if self.telemetry.diverged:
                raise _Diverged

    def _end_epoch(self) -> None:
        """Flush, evaluate on the whole val set, checkpoint (every epoch or the last), status."""
        if not self.telemetry.flush():
            raise _Diverged
        self.epoch += 1
        self.batch_in_epoch = 0
        with self.evaluation_point(self.epoch - 1):  # (BatchNorm re-estimated on the epoch just trained)
            row = self.evaluate()
        self._record_eval(row)
        if self.show_bar:
            tqdm.write(f"epoch {self.epoch}: top1 {row.top1:.4f} top5 {row.top5:.4f} loss {row.loss:.4f}")
        if self.cfg.checkpoint.every_epoch or self.epoch == self.cfg.train.epochs:
            self.save_checkpoint()
        # (with several ranks: how many steps apart the ranks last agreed on stopping, from their step time)
        self._status("running", **({"agree_every_steps": self.agreement.interval} if self.dist.enabled else {}))
        self.agreement.after_pause(self.step)
        for callback in self.callbacks:
            callback.on_epoch_end(self, row)

    def storage_failure(self, exc: StorageError) -> StorageError:
        """The one line a failed write ends the run with: what could not be written where, what
        is kept (the checkpoint a resume would use, and its step), and the status left behind;
        status.json says ``failed`` with that reason when it can still be written."""
        kept = kept_checkpoint(self.out / rundir.CHECKPOINTS)
        what = (f"kept: {kept[0]} at step {kept[1]}, the last good checkpoint (the same command resumes from it "
                f"once the disk can be written)" if kept else "kept: no checkpoint yet (the same command starts over)")
        reason = f"{exc}; {what}"
        try:
            self._status("failed", reason=reason)
            left = "status.json: failed"
        except StorageError:
            left = ("status.json could not be written either" if rundir.read_status(self.out)["state"] != "running"
                    else f"status.json could not be updated (it says running; `repro status` sees that process "
                         f"{os.getpid()} is gone)")
        return StorageError(exc.path, exc, f"{reason}; {left}")

    def record_failure(self, exc: BaseException) -> None:
        """status.json ``failed`` for the error ``exc`` of this rank, one line naming the rank
        that failed.  With several ranks any rank writes it: the first report of this attempt
        that names a rank is kept (the others' collectives failed because of it), and a rank
        whose collective failed names the peers it finds dead on its host (kill -9, the OOM
        killer: they could not say it themselves)."""
        where = f"at step {self.step}"
        if isinstance(exc, KeyboardInterrupt):
            kept = kept_checkpoint(self.out / rundir.CHECKPOINTS)
            since = f"its checkpoint at step {kept[1]} is kept" if kept else "no checkpoint yet"
            self._status("failed", any_rank=True, reason=f"stopped at once by a second Ctrl-C {where} ({since})",
                         failed_rank=self.dist.rank)
            return
        if not self.dist.enabled:
            self._status("failed", reason=describe(exc))
            return
        rank, world = self.dist.rank, self.dist.world_size
        current = rundir.read_status(self.out)
        if (current.get("state") == "failed" and current.get("failed_rank") is not None
                and (current.get("updated") or 0) >= self.started_at):
            return  # a peer has said why already
        dead = dead_peers(self.peers)
        if dead:
            names = ", ".join(f"rank {p['rank']} (pid {p['pid']} on {p['host']})" for p in dead)
            reason = (f"{names} of {world} died {where} without a word (killed: kill -9, the OOM killer or a "
                      f"native crash); rank {rank} then saw: {describe(exc)}")
            failed: Optional[int] = dead[0]["rank"]
        elif is_collective_failure(exc):
            reason = (f"rank {rank} of {world} lost its peers {where} ({describe(exc)}): a rank on another "
                      f"node failed or was killed; see the job's log")
            failed = None  # a peer's own report, if it comes, says more
        else:
            reason, failed = f"rank {rank} of {world} failed {where}: {describe(exc)}", rank
        self._status("failed", any_rank=True, reason=reason, failed_rank=failed)

    def _finish(self, state: str) -> str:
        self.telemetry.flush()
        self._write_tables()
        if self.dist.is_main:
            manifest = files.read_json(self.out / rundir.MANIFEST) or {}
            manifest["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            files.atomic_write_json(self.out / rundir.MANIFEST, manifest)
        extra = {}
        if state == "diverged":
            at = self.telemetry.diverged_at
            extra["reason"] = f"non-finite loss or gradient at step {at}" if at is not None else "non-finite eval loss"
        self._status(state, **extra)
        return state


def run_training(cfg: DictConfig, out_dir: str | Path, callbacks: Iterable[Callback] = (),
                 stop_within_s: float = DEFAULT_STOP_WITHIN_S) -> str:
    """Train (or resume) the run in ``out_dir`` (``callbacks``: :class:`Callback` instances told of
    its step ends, epoch ends and checkpoints); return its final state.  ``stop_within_s``: the
    time between a stop signal and the kill (a sweep job passes its ``signal_delay_s``).

    A folder holding a run of another config, or made on another number of ranks, is refused
    first (ConfigError, nothing written: :mod:`imagenet_repro.identity`).  A run already ``done``
    or ``diverged`` is not trained again.  An exception marks the run ``failed``
    (:meth:`Trainer.record_failure`: the rank that failed and why) and propagates; a failed write
    (:class:`StorageError`: full disk, read-only, no permission) comes out as one line saying what
    could not be written where, which checkpoint is kept at which step, and what status.json says
    (:meth:`Trainer.storage_failure`).
    """
    out = Path(out_dir)
    check_run_folder(out, cfg)
    check_world_size(out, cfg, int(os.environ.get("WORLD_SIZE", "1")))  # the ranks init_from_env will join
    state = rundir.read_status(out).get("state")
    if state in rundir.FINAL_STATES:
        return state
    try:
        trainer = Trainer(cfg, out, callbacks=callbacks, stop_within_s=stop_within_s)
    except BaseException as exc:
        # bad input for a fresh run leaves nothing behind; anything else is recorded
        fresh_bad_input = isinstance(exc, ConfigError) and not out.exists()
        if not fresh_bad_input and int(os.environ.get("RANK", "0")) == 0:
            try:
                rundir.write_status(out, "failed", reason=describe(exc), updated=time.time())
            except StorageError:
                pass  # the error in flight is the one to report
        raise
    clean = False
    try:
        state = trainer.fit()
        clean = True
        return state
    except SystemExit:
        clean = True  # a deferred signal: every rank stopped at the same step
        raise
    except StorageError as exc:  # a write failed: one line with what is kept, status failed if it can be
        raise (trainer.storage_failure(exc) if trainer.dist.is_main else exc) from None
    finally:  # (any other error: Trainer.fit has recorded it)
        if clean or not trainer.dist.enabled:  # after a peer's failure a collective teardown could hang
            shutdown(trainer.dist)
