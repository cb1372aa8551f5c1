"""Checkpoints: everything needed to continue a run where it stopped (bit for bit on CPU,
tested with 1 and 2 ranks; on CUDA not measured: docs/run-folder.md, "What is exact where").

A checkpoint holds the model, the optimizer, the schedule position (the step), the loader
position (epoch and batches already taken in it) and the RNG states of every rank: torch's
CPU generator, the rank's own CUDA device's, numpy's and Python's, gathered to rank 0 by
:func:`gather_rng_states` (a collective every rank calls) and stored as a list in rank order;
on resume each rank restores its own (:func:`restore_rng_state`; a checkpoint written before
holds rank 0's states only, which every rank restores, as then).  Only tensors and plain
containers are stored, so it loads with ``torch.load(weights_only=True)``.

Two are kept: ``checkpoints/last.pt`` and the one before it, ``checkpoints/prev.pt``, each
with a ``.sha256`` sidecar (the zip container catches a truncated file, not a flipped
byte inside a tensor).  A new checkpoint is written to a temporary file, hashed, then
rotated in by renames ordered so that a crash at any point leaves at least one
checkpoint that verifies (a missing sidecar means: check the structure only).
:func:`load_latest` tries ``last.pt`` then ``prev.pt``: a candidate is used only if it
loads with ``weights_only``, has every key, matches its sidecar and fits the model and
the optimizer; when none does it raises :class:`CheckpointError` naming each file and why.
"""
from __future__ import annotations

import hashlib
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from imagenet_repro.errors import ConfigError, describe
from imagenet_repro.files import atomic_write, atomic_write_text

KEYS = ("model", "optimizer", "step", "epoch", "batch_in_epoch", "rng")
LAST, PREV, SUFFIX = "last.pt", "prev.pt", ".sha256"


class CheckpointError(ConfigError):
    """No checkpoint of a run can be used; the message names every file and why (one line)."""


def rank_rng_state(device: torch.device) -> dict:
    """This process's RNG states: torch's CPU generator, its own CUDA device's (``device``, only
    when it is one; never every visible device's), numpy's and Python's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": int(version), "state": list(py_state), "gauss": py_gauss},
    }


def gather_rng_states(device: torch.device, world_size: int) -> list[dict] | None:
    """Every rank's :func:`rank_rng_state`, in rank order, on rank 0; None on the other ranks.

    A collective of the default process group when ``world_size`` > 1: every rank calls it
    at the same checkpoint (before rank 0 writes the file).  One process: its own state."""
    own = rank_rng_state(device)
    if world_size <= 1:
        return [own]
    rank = dist.get_rank()
    gathered: list[dict] | None = [{} for _ in range(world_size)] if rank == 0 else None
    dist.gather_object(own, gathered, dst=0)
    return gathered


def _cuda_state(saved, device: torch.device) -> torch.Tensor | None:
    """This rank's CUDA state from a checkpoint's entry: its own device's (this format), or the
    entry of its device index in the list of every visible device's (the format before)."""
    if isinstance(saved, torch.Tensor):
        return saved
    if isinstance(saved, (list, tuple)) and device.index is not None and device.index < len(saved):
        return saved[device.index]
    return None


def restore_rng_state(saved: list | dict, rank: int, device: torch.device) -> bool:
    """Set this rank's RNG states from a checkpoint's ``rng`` entry: one state per rank (this
    format: rank ``rank``'s), or a single state (checkpoints written before: rank 0's, which
    every rank restored then and still does).  A rank the checkpoint has no state for (a
    resume on more ranks than it was written by) keeps the states it has, as at a fresh start,
    and False is returned.  The CUDA state goes to ``device`` only, whatever the number of
    devices the writer saw; a state saved on CPU leaves the CUDA generator as it is."""
    if isinstance(saved, dict):
        state = saved
    elif rank < len(saved):
        state = saved[rank]
    else:
        return False
    torch.set_rng_state(state["torch"])
    cuda = _cuda_state(state.get("cuda"), device)
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    epoch: int, batch_in_epoch: int, rng_states: list[dict]) -> None:
    """Write ``path`` (``.../last.pt``), keeping the checkpoint it replaces as ``prev.pt``;
    ``rng_states``: every rank's, from :func:`gather_rng_states` (rank 0 writes)."""
    path = Path(path)
    prev = path.with_name(PREV)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "rng": list(rng_states),
    }

    def rotate(tmp: str) -> None:  # every intermediate state keeps one checkpoint that verifies
        digest = _sha256(Path(tmp))
        _unlink(_sidecar(prev))                         # prev.pt: structure-checked only
        if path.exists():
            os.replace(path, prev)                      # prev.pt = old last.pt (no sidecar yet)
            if _sidecar(path).exists():
                os.replace(_sidecar(path), _sidecar(prev))
        else:
            _unlink(_sidecar(path))                     # an orphan from an interrupted rotation
        atomic_write_text(_sidecar(path), digest + "\n")  # names a last.pt that does not exist yet

    atomic_write(path, lambda tmp: _save(payload, tmp), before_replace=rotate)  # then tmp -> last.pt


class _Sink:
    """A file for ``torch.save`` that keeps the OSError of a failed write: torch reports a full
    disk as a RuntimeError ("unexpected pos ..."), this lets the disk's own error through.  A
    failed flush needs nothing: its OSError reaches the caller as it is (a test holds both)."""

    def __init__(self, fh) -> None:
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _save(payload: dict, tmp: str) -> None:
    with open(tmp, "wb") as fh:
        sink = _Sink(fh)
        try:
            torch.save(payload, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


def kept_checkpoint(folder: str | Path) -> tuple[Path, int] | None:
    """The checkpoint a resume would use (the newest that verifies) and its step; None if none."""
    for path in checkpoint_paths(folder):
        try:
            return path, int(read_checkpoint(path)["step"])
        except (CheckpointError, OSError):
            continue
    return None


def checkpoint_paths(folder: str | Path) -> list[Path]:
    """The candidates to resume from, newest first (whether or not they exist)."""
    return [Path(folder) / LAST, Path(folder) / PREV]


def read_checkpoint(path: str | Path) -> dict:
    """The payload of ``path`` after the file checks (sidecar, weights_only load, keys);
    raises CheckpointError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("missing")
    side = _sidecar(path)
    if side.is_file():
        expected = side.read_text().strip()
        if expected and _sha256(path) != expected:
            raise CheckpointError(f"checksum mismatch with {side.name} (truncated or corrupted on disk)")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":  # torch.save's zip container
        raise CheckpointError(f"not a PyTorch checkpoint (starts with {magic!r})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, objects weights_only refuses...
        raise CheckpointError(f"unreadable: truncated or corrupted ({describe(exc)[:100]})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in KEYS):
        raise CheckpointError(f"not a checkpoint of this suite (keys {sorted(payload) if isinstance(payload, dict) else type(payload).__name__})")
    return payload


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int = 0,
                    device: torch.device = torch.device("cpu")) -> dict:
    """Restore model, optimizer and rank ``rank``'s RNG states (its CUDA state on ``device``)
    from ``path``; return {step, epoch, batch_in_epoch}.

    Loaded on the CPU (RNG states must stay there); ``load_state_dict`` moves the model's
    and the optimizer's tensors to the parameters' device.  Raises CheckpointError
    (reason only, no file name) when the file cannot be used."""
    payload = read_checkpoint(path)
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        restore_rng_state(payload["rng"], rank, device)
        return {k: int(payload[k]) for k in ("step", "epoch", "batch_in_epoch")}
    except Exception as exc:
        raise CheckpointError(f"does not fit this run's model/optimizer ({describe(exc)})") from None


def load_latest(folder: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int = 0,
                device: torch.device = torch.device("cpu")) -> dict | None:
    """Resume rank ``rank`` (on ``device``) from the newest checkpoint in ``folder`` that verifies: ``last.pt``, else
    ``prev.pt`` (with a warning).  None when the run has no checkpoint at all; the dict
    has ``step, epoch, batch_in_epoch`` and ``path``.  Raises CheckpointError (one line,
    naming each file and why) when checkpoints exist but none can be used."""
    candidates = checkpoint_paths(folder)
    if not any(p.exists() for p in candidates):
        return None
    problems = []
    for path in candidates:
        try:
            pos = load_checkpoint(path, model=model, optimizer=optimizer, rank=rank, device=device)
        except CheckpointError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        if problems:
            warnings.warn(f"{path.parent}: {'; '.join(problems)}; resuming from {path.name} (step {pos['step']})",
                          RuntimeWarning, stacklevel=2)
        return {**pos, "path": path, "skipped": problems}
    raise CheckpointError(f"no usable checkpoint in {Path(folder)} ({'; '.join(problems)}): the run cannot resume; "
                          f"delete {Path(folder).parent} to start it over")
