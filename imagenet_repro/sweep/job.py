"""What a sweep job runs: one training run (SLURM array task) or a lane of runs (local).

Both are ``submitit.helpers.Checkpointable``: on preemption or at the time limit
submitit sends SIGUSR2; the trainer checkpoints at the next step boundary and calls the
previous handler (submitit's), which calls :meth:`checkpoint` and requeues the job with
the same arguments; the requeued job calls ``run_training`` again, which resumes from
``checkpoints/last.pt``.  A run already done is not trained again.

A job receives each run's planned config as the plain container the planner validated
and hashed (:class:`~imagenet_repro.sweep.grid.PlannedRun.config`, pickled by submitit)
and builds its RunConfig from it with :func:`~imagenet_repro.config.build_config`.
"""
from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path
from typing import Any, Callable, Optional

import submitit
from submitit.helpers import DelayedSubmission

from imagenet_repro.config import build_config
from imagenet_repro.errors import ConfigError, StorageError
from imagenet_repro.sweep import claims
from imagenet_repro.train.stopping import DEFAULT_STOP_WITHIN_S

Trainer = Callable[[Any, Path], str]


class TrainJob(submitit.helpers.Checkpointable):
    """``TrainJob()(config, run_dir)``: train (or resume) one run; DDP across the job's tasks.

    ``stop_within_s``: the spec's ``signal_delay_s``, the time between SLURM's signal and the
    kill: the ranks agree on stopping often enough to checkpoint within it
    (:mod:`imagenet_repro.train.stopping`)."""

    def __init__(self, trainer: Optional[Trainer] = None, stop_within_s: Optional[float] = None) -> None:
        self.trainer = trainer  # None: imagenet_repro.train.loop.run_training (tests may pass another)
        self.stop_within_s = stop_within_s

    def _default_trainer(self, cfg, run_dir: Path) -> str:
        from imagenet_repro.train.loop import run_training  # in the job's process, not the submitting one

        return run_training(cfg, run_dir, stop_within_s=self.stop_within_s or DEFAULT_STOP_WITHIN_S)

    def __call__(self, config: dict, run_dir: str) -> str:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for torch.distributed's env://;
            # every task keeps all GPUs visible and picks cuda:LOCAL_RANK.
            dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                               overwrite=True)
            # A local lane runs several DDP runs in the same tasks one after the other: each gets
            # its own rendezvous port (same on every task), so no rank of the next run can reach
            # the previous run's store while rank 0 still tears it down.
            os.environ["MASTER_PORT"] = str(20000 + (zlib.crc32(run_dir.encode()) + dist_env.master_port) % 40000)
        cfg = build_config(config)
        return (self.trainer or self._default_trainer)(cfg, Path(run_dir))

    def checkpoint(self, config: dict, run_dir: str) -> DelayedSubmission:
        """Requeue: the same job again (the trainer has saved its checkpoint)."""
        return DelayedSubmission(self, config, run_dir)


class RunLane(submitit.helpers.Checkpointable):
    """A local job running several runs one after the other (``local.parallelism`` lanes).

    A failed run does not stop the lane; after each run the lane drops that run's claim,
    so the run is seen as finished (done, diverged or failed) while the lane goes on.
    """

    def __init__(self, trainer: Optional[Trainer] = None, stop_within_s: Optional[float] = None) -> None:
        self.trainer = trainer
        self.stop_within_s = stop_within_s

    def __call__(self, items: list[tuple[dict, str]]) -> list[str]:
        import traceback

        job_id = submitit.JobEnvironment().job_id
        states = []
        for config, run_dir in items:
            try:
                states.append(TrainJob(self.trainer, self.stop_within_s)(config, run_dir))
            except (ConfigError, StorageError) as exc:  # a refused folder, a failed write: one line in the log
                print(f"repro: error: {exc}", file=sys.stderr, flush=True)
                states.append("failed")
            except Exception:  # the trainer marked the run failed; go on with the next
                traceback.print_exc()
                states.append("failed")
            claims.release(Path(run_dir), job_id)
        return states

    def checkpoint(self, items: list[tuple[dict, str]]) -> DelayedSubmission:
        return DelayedSubmission(self, items)
