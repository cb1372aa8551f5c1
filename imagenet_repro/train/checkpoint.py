"""Checkpoints: everything needed to continue a run bit-for-bit.

A checkpoint holds the model, the optimizer, the schedule position (the step), the loader
position (epoch and batches already taken in it) and the RNG states of torch (CPU and
CUDA), numpy and Python.  Only tensors and plain containers are stored, so it loads with
``torch.load(weights_only=True)``.  It is written atomically (temp file + rename).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from imagenet_repro.rundir import atomic_write


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": int(version), "state": list(py_state), "gauss": py_gauss},
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    epoch: int, batch_in_epoch: int) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "rng": _rng_state(),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG states; return {step, epoch, batch_in_epoch}.

    Loaded on the CPU (RNG states must stay there); ``load_state_dict`` moves the model's
    and the optimizer's tensors to the parameters' device."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    _set_rng_state(payload["rng"])
    return {k: int(payload[k]) for k in ("step", "epoch", "batch_in_epoch")}
