"""torch.distributed set-up from the environment (torchrun, or submitit's
``TorchDistributedEnvironment().export()``): gloo on CPU, NCCL on GPU."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imagenet_repro.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

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


def init_from_env(device_request: str) -> tuple[Dist, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_request, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":  # device_id binds NCCL to this rank's GPU (no guessing at barriers)
            dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=device)
        else:
            dist.init_process_group("gloo", rank=rank, world_size=world_size)
    return Dist(rank, world_size, local_rank), device


def all_reduce_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
