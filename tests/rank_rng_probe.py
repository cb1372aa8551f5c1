"""Each rank's RNG streams across a checkpoint, under torchrun (tests/test_resume_ranks.py).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/rank_rng_probe.py PLAN.json

PLAN.json lists runs, ``{"out": DIR, "overrides": [...], "stop_after": K or null, "copy_to": DIR or null}``,
trained one after the other in these processes (one process group) with the trainer's public
surface.  After every step each rank draws from torch's, numpy's and Python's generators,
``rank + 1`` times each, so that the ranks' streams part (a checkpoint holding rank 0's states
only would give rank 1 rank 0's stream on resume).  With ``stop_after`` K every rank saves a
checkpoint after step K and leaves the run (as a killed job would); rank 0 copies the folder
as it was left to ``copy_to``, then a new trainer resumes the folder to its end.  Rank 0 writes ``DIR/draws.json``:
``{"state": ..., "draws": {rank: {step: [torch, numpy, python]}}}``, over every step trained.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from imagenet_repro.config import load_config
from imagenet_repro.train.callbacks import Callback
from imagenet_repro.train.loop import Trainer

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"


class _Left(Exception):
    """The run left after its checkpoint (``stop_after``)."""


class Draws(Callback):
    def __init__(self, stop_after: int | None) -> None:
        self.stop_after = stop_after
        self.rows: dict[int, list[float]] = {}

    def on_step_end(self, trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> None:
        rank = trainer.dist.rank
        self.rows[trainer.step] = [v for _ in range(rank + 1)
                                   for v in (float(torch.rand(1)), float(np.random.rand()), random.random())]
        if trainer.step == self.stop_after:
            trainer.save_checkpoint()
            raise _Left


def train(run: dict) -> tuple[str, dict[int, list[float]]]:
    cfg = load_config(DEMO, run["overrides"])
    draws = Draws(run.get("stop_after"))
    try:
        state = Trainer(cfg, Path(run["out"]), callbacks=[draws]).fit()
    except _Left:
        if dist.get_rank() == 0 and run.get("copy_to"):
            shutil.copytree(run["out"], run["copy_to"])
        dist.barrier()
        resumed = Draws(None)
        state = Trainer(cfg, Path(run["out"]), callbacks=[resumed]).fit()
        draws.rows.update(resumed.rows)
    return state, draws.rows


def main(plan_path: str) -> None:
    for run in json.loads(Path(plan_path).read_text()):
        state, rows = train(run)
        gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(rows, gathered, dst=0)
        if dist.get_rank() == 0:
            (Path(run["out"]) / "draws.json").write_text(json.dumps(
                {"state": state, "draws": {rank: rows for rank, rows in enumerate(gathered)}}))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
