"""Keep the weights of the best epoch so far, a trainer callback kept outside the package.

After each epoch's evaluation on the whole val set, when its top-1 beats every earlier
epoch's, rank 0 writes ``<run>/best.pt`` (the model's state_dict, with its epoch, step and
top-1) and ``<run>/best.json`` (the same without the weights), each atomically.  A resumed
run reads ``best.json`` back, so its best stays the best of the whole run.  It changes
neither the model nor the optimizer nor any RNG stream: the run's tables are the same with
or without it.

    from imagenet_repro.config import load_config
    from imagenet_repro.train.loop import run_training
    from keep_best import KeepBest            # this file (examples/ on sys.path)

    run_training(load_config("experiments/demo.yaml"), "runs/demo-best", callbacks=[KeepBest()])
"""
from pathlib import Path

import torch

from imagenet_repro import files
from imagenet_repro.train.callbacks import Callback


class KeepBest(Callback):
    def __init__(self, metric: str = "top1") -> None:
        self.metric = metric  # a field of the eval row, larger is better: top1 or top5
        self.best: float | None = None

    def on_epoch_end(self, trainer, evaluation) -> None:
        if not trainer.dist.is_main:
            return
        out = Path(trainer.out)
        if self.best is None:  # first epoch of this process: a resumed run's best so far
            self.best = (files.read_json(out / "best.json") or {}).get(self.metric)
        value = getattr(evaluation, self.metric)
        if self.best is not None and value <= self.best:
            return
        self.best = value
        info = {"epoch": evaluation.epoch, "step": evaluation.step, self.metric: value}
        weights = {**info, "model": trainer.model.state_dict()}
        files.atomic_write(out / "best.pt", lambda tmp: torch.save(weights, tmp))
        files.atomic_write_json(out / "best.json", info)
