"""The trainer on several ranks under torchrun, told to stop, fail or die at chosen steps
(tests/test_ranks.py), or evaluating a checkpoint sharded.

    python -m torch.distributed.run --standalone --nproc_per_node=N tests/rank_signals.py PLAN.json

PLAN.json, a training run::

    {"out": DIR, "overrides": [...], "stop_within_s": S,
     "signal": {"RANK": STEP, ...}, "signal_name": "SIGUSR2",   # that rank signals itself at the
                                                                 # boundary after STEP steps
     "raise": {"RANK": STEP}, "kill": {"RANK": STEP},           # raise RuntimeError / SIGKILL itself there
     "ctrl_c_agent": {"RANK": STEP},                            # SIGINT to torchrun's agent (a Ctrl-C)
     "repeat": 1}                                               # how many times each signal is sent at once

run with :func:`imagenet_repro.train.loop.run_training`; the process ends as it leaves it (a
stop: SystemExit(128 + signal)).  Every rank appends the steps it saw end to ``DIR.rank<R>``
(so a test sees that no rank ran ahead of the agreed stop) and, last, ``exit CODE``: the code
the rank leaves with (torchrun reports only those of ranks that end before the others, and none
when it is itself interrupted).  Or an evaluation::

    {"evaluate": RUN_DIR, "overrides": [...], "limits": [N, ...], "result": FILE.json}

the weights of RUN_DIR's last checkpoint evaluated by these ranks (each its own part of the
first N val images, 0: all) once per limit; rank 0 writes a list of ``{limit, top1, top5, loss,
images, seconds, per_rank_images}`` to FILE.json.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from imagenet_repro.config import load_config
from imagenet_repro.train.callbacks import Callback

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"


class AtSteps(Callback):
    def __init__(self, plan: dict, rank: int, log: Path) -> None:
        self.signal_at = plan.get("signal", {}).get(str(rank))
        self.signum = signal.Signals[plan.get("signal_name", "SIGUSR2")]
        self.raise_at = plan.get("raise", {}).get(str(rank))
        self.kill_at = plan.get("kill", {}).get(str(rank))
        self.agent_at = plan.get("ctrl_c_agent", {}).get(str(rank))
        self.repeat = int(plan.get("repeat", 1))
        self.log = log

    def on_step_end(self, trainer, images, labels) -> None:
        with open(self.log, "a") as fh:
            fh.write(f"{trainer.step}\n")
        if trainer.step == self.signal_at:
            for _ in range(self.repeat):
                os.kill(os.getpid(), self.signum)
        if trainer.step == self.agent_at:
            os.kill(os.getppid(), signal.SIGINT)  # the agent forwards it to every worker
        if trainer.step == self.raise_at:
            raise RuntimeError(f"injected failure on rank {trainer.dist.rank}")
        if trainer.step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def train(plan: dict) -> None:
    from imagenet_repro.train.loop import run_training

    rank = int(os.environ.get("RANK", "0"))
    out = Path(plan["out"])
    log = out.with_name(f"{out.name}.rank{rank}")
    code = 1
    try:
        run_training(load_config(DEMO, plan["overrides"]), out, callbacks=[AtSteps(plan, rank, log)],
                     stop_within_s=float(plan.get("stop_within_s", 30.0)))
        code = 0
    except SystemExit as exc:
        code = exc.code
        raise
    finally:
        with open(log, "a") as fh:
            fh.write(f"exit {code}\n")


def evaluate(plan: dict) -> None:
    import torch.distributed as dist

    from imagenet_repro.train.checkpoint import load_checkpoint
    from imagenet_repro.train.distributed import shutdown
    from imagenet_repro.train.loop import Trainer

    run = Path(plan["evaluate"])
    scratch = Path(plan["result"]).with_suffix(".trainer")  # the Trainer's folder: nothing is written there
    trainer = Trainer(load_config(DEMO, plan["overrides"]), scratch)
    load_checkpoint(run / "checkpoints" / "last.pt", model=trainer.model, optimizer=trainer.optimizer)
    results = []
    for limit in plan.get("limits", [0]):
        shard = sum(labels.shape[0] for _, labels in trainer.val_loader.batches(limit))
        t0 = time.perf_counter()
        row = trainer.evaluate(limit=limit)
        seconds = time.perf_counter() - t0
        shards: list = [shard]
        if trainer.dist.enabled:
            shards = [None] * trainer.dist.world_size
            dist.all_gather_object(shards, shard)
        results.append({"limit": limit, "top1": row.top1, "top5": row.top5, "loss": row.loss, "images": row.images,
                        "seconds": seconds, "per_rank_images": shards})
    if trainer.dist.is_main:
        Path(plan["result"]).write_text(json.dumps(results))
    shutdown(trainer.dist)


if __name__ == "__main__":
    plan = json.loads(Path(sys.argv[1]).read_text())
    evaluate(plan) if "evaluate" in plan else train(plan)
