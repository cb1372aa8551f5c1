"""torch.distributed set-up from the environment (torchrun, or submitit's
``TorchDistributedEnvironment().export()``): gloo on CPU, NCCL on GPU.

Besides the training collectives (DDP's gradient all-reduce, the telemetry's loss, the
evaluation's totals: on the device's backend), the ranks exchange small host-side values
(:func:`all_gather_rows`: when to stop, :mod:`.stopping`) and wait for each other
(:func:`barrier`) over a **control group**: gloo on CPU tensors, so that with NCCL the
exchange blocks the host thread until every rank is there without waiting on the GPU.  With
gloo as the training backend the default group is the control group.

Every collective times out after ``train.collective_timeout_min`` (not torch's 10/30-minute
defaults): a rank that waits on a peer that is gone raises instead of hanging until the job's
time limit.  :func:`peer_processes` records where every rank runs (host, pid), so that a
survivor can name the rank that died (:func:`dead_peers`).
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from imagenet_repro.errors import ConfigError
from imagenet_repro.rundir import process_start


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = field(default=None, compare=False)  # the gloo group of host-side exchanges (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int) -> torch.device:
    """``cuda:LOCAL_RANK`` when every task sees all the node's GPUs (SLURM's default, torchrun);
    ``cuda:0`` when the task sees exactly one (``--gpus-per-task``/``--gpu-bind``)."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available")
        visible = torch.cuda.device_count()
        index = 0 if visible == 1 else local_rank
        if index >= visible:
            raise ConfigError(f"LOCAL_RANK={local_rank} but this task sees only {visible} GPUs")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_from_env(device_request: str, timeout_min: float = 10.0) -> tuple[Dist, torch.device]:
    """The rank's :class:`Dist` and device; with WORLD_SIZE > 1 the process group (and, with
    NCCL, the gloo control group), every collective timing out after ``timeout_min``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_request, local_rank)
    control = None
    if world_size > 1:
        timeout = timedelta(minutes=timeout_min)
        if not dist.is_initialized():
            if device.type == "cuda":  # device_id binds NCCL to this rank's GPU (no guessing at barriers)
                dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=device, timeout=timeout)
            else:
                dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timeout)
        if dist.get_backend() != "gloo":
            control = dist.new_group(backend="gloo", timeout=timeout)
    return Dist(rank, world_size, local_rank, control), device


def all_reduce_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_mean(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """The mean over ranks, in place (unchanged, bit for bit, with one rank)."""
    if d.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= d.world_size
    return values


def all_gather_rows(row: list[float], d: Dist) -> list[list[float]]:
    """Every rank's ``row`` (same length on every rank), in rank order, over the control group."""
    if not d.enabled:
        return [list(row)]
    mine = torch.tensor(row, dtype=torch.float64)
    rows = [torch.empty_like(mine) for _ in range(d.world_size)]
    dist.all_gather(rows, mine, group=d.control)
    return [r.tolist() for r in rows]


def barrier(d: Dist) -> None:
    """Wait until every rank is here (host side, over the control group)."""
    if d.enabled:
        dist.barrier(group=d.control)


def broadcast_buffers(module: torch.nn.Module, d: Dist) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) to every rank.  DDP broadcasts them at
    the start of each training forward; after that forward each rank's own batch has moved its
    copy, so an evaluation first makes them rank 0's (the checkpoint's)."""
    if d.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


@torch.no_grad()
def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for b in module.buffers()]


def settle_buckets(ddp_model: torch.nn.parallel.DistributedDataParallel, example: torch.Tensor) -> None:
    """Let DDP fix its gradient buckets before the first step, leaving everything else as it was.

    DDP packs the gradients into buckets in parameter order for the first backward, then, at the
    next forward, rebuilds them in the order the gradients became ready.  The all-reduce sums each
    element in an order set by its place in its bucket: with 3 or more ranks (where a + b + c
    depends on the order; with 2 it does not) a run's first step would be summed differently
    from its later steps, so a run resumed mid-way (its first step a later one) would differ in
    the last bits from an uninterrupted one.  One forward and backward of ``example`` (a small
    batch) settles the buckets in both; the gradients are dropped, and the buffers (BatchNorm's
    statistics) and the RNG states are put back."""
    module = ddp_model.module
    buffers = _snapshot(module)
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(example.device) if example.device.type == "cuda" else None
    ddp_model(example).float().sum().backward()
    for param in module.parameters():
        param.grad = None
    with torch.no_grad():
        for buffer, saved in zip(module.buffers(), buffers):
            buffer.copy_(saved)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, example.device)


def peer_processes(d: Dist) -> list[dict]:
    """``{rank, host, pid, start}`` of every rank (a collective: call it on every rank)."""
    me = {"rank": d.rank, "host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid())}
    if not d.enabled:
        return [me]
    everyone: list[Any] = [None] * d.world_size
    dist.all_gather_object(everyone, me, group=d.control)
    return everyone


def dead_peers(peers: list[dict], settle_s: float = 2.0) -> list[dict]:
    """The ranks of ``peers`` on this host whose process is gone (a pid reused since is gone too).

    A killed process closes its sockets before it is a zombie, so a survivor's collective can
    fail while the dead peer still looks alive in /proc: look again for up to ``settle_s``
    before concluding that every peer lives (a peer on another host cannot be seen at all)."""
    host = socket.gethostname()
    local = [p for p in peers if p["host"] == host and p["pid"] != os.getpid()]
    deadline = time.monotonic() + settle_s
    while True:
        dead = [p for p in local if process_start(p["pid"]) != p["start"]]
        if dead or not local or time.monotonic() >= deadline:
            return dead
        time.sleep(0.05)


def is_collective_failure(exc: BaseException) -> bool:
    """``exc`` is a collective that failed because a peer is gone (gloo: connection closed or
    reset; NCCL: a communicator error or a timeout), not an error of this rank's own."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(mark in text for mark in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL", "ProcessGroup", "timed out"))


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
