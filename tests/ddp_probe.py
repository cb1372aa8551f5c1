"""The trainer under torchrun, watched at every step boundary (tests/test_train.py's DDP tests).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_probe.py PLAN.json

PLAN.json lists runs, ``{"out": DIR, "overrides": [...], "sync": true}``, trained one after
the other in these processes (one process group) with the trainer's public surface:
``Trainer(cfg, out, callbacks=[probe]).fit()``.  ``"sync": false`` trains inside DDP's own
``no_sync()``, the switch that turns the gradient all-reduce off: each rank then steps on the
gradient of its own shard, which is what the checks must catch.

On every rank, tensor hooks on the parameters keep the gradient of the rank's own shard
(a leaf's hook runs before DDP's reducer, which hooks the gradient accumulator).  After each
step the probe gathers, on rank 0, into ``DIR/probe.json``:

* ``weights_equal``: the parameters of every rank, bit for bit, equal rank 0's;
* ``grad_norm_allreduced``: the norm of the explicit all-reduce (sum / world size) of the
  ranks' own gradients, computed as the telemetry computes ||g|| (float32 per-tensor norms);
* ``grad_norm_local``: each rank's own-shard gradient norm (how far from the average they are);
* ``grad_max_diff``: max |the .grad the optimizer used - the explicit average|, over all ranks.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from imagenet_repro.config import load_config
from imagenet_repro.train.callbacks import Callback
from imagenet_repro.train.distributed import shutdown
from imagenet_repro.train.loop import Trainer

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"


def norm_like_telemetry(tensors: list[torch.Tensor]) -> float:
    return float(torch.stack(torch._foreach_norm(tensors)).float().square().sum().sqrt())


class Probe(Callback):
    def __init__(self) -> None:
        self.own: dict[int, torch.Tensor] = {}
        self.rows: list[dict] = []

    def attach(self, trainer: Trainer) -> None:
        self.params = list(trainer.model.parameters())
        for i, p in enumerate(self.params):
            p.register_hook(lambda g, i=i: self.own.__setitem__(i, g.detach().clone()))

    @torch.no_grad()
    def on_step_end(self, trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> None:
        world = dist.get_world_size()
        weights = torch.cat([p.detach().reshape(-1) for p in self.params])
        gathered = [torch.empty_like(weights) for _ in range(world)]
        dist.all_gather(gathered, weights)
        own = [self.own[i] for i in range(len(self.params))]
        reduced = torch.cat([g.reshape(-1) for g in own])
        dist.all_reduce(reduced)  # sum over ranks
        reduced /= world
        average = list(torch.split(reduced, [g.numel() for g in own]))
        average = [a.view_as(g) for a, g in zip(average, own)]
        diff = max(float((p.grad - a).abs().max()) for p, a in zip(self.params, average))
        local = torch.tensor([norm_like_telemetry(own), diff], dtype=torch.float64)
        per_rank = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(per_rank, local)
        self.rows.append({"step": trainer.step - 1,
                          "weights_equal": all(torch.equal(gathered[0], w) for w in gathered[1:]),
                          "weights_max_diff": max(float((gathered[0] - w).abs().max()) for w in gathered[1:]),
                          "grad_norm_allreduced": norm_like_telemetry(average),
                          "grad_norm_local": [float(r[0]) for r in per_rank],
                          "grad_max_diff": max(float(r[1]) for r in per_rank)})
        self.own.clear()


def main(plan_path: str) -> None:
    for run in json.loads(Path(plan_path).read_text()):
        probe = Probe()
        trainer = Trainer(load_config(DEMO, run["overrides"]), Path(run["out"]), callbacks=[probe])
        probe.attach(trainer)
        if run["sync"]:
            state = trainer.fit()
        else:
            with trainer.ddp_model.no_sync():  # DDP's switch: no gradient all-reduce in backward
                state = trainer.fit()
        if trainer.dist.is_main:
            (Path(run["out"]) / "probe.json").write_text(json.dumps({"state": state, "steps": probe.rows}))
        dist.barrier()
    shutdown(trainer.dist)


if __name__ == "__main__":
    main(sys.argv[1])
