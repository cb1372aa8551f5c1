"""Small helpers shared by the optimizers' foreach paths."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


def by_device_and_dtype(*lists: list) -> Iterator[tuple[list[int], list[list]]]:
    """Split parallel lists into runs that share (device, dtype) of the first list.

    ``torch._foreach_*`` kernels need tensors of one device and dtype.  In the common
    case (one device, one dtype) the lists come back unchanged, without copying.
    """
    keys: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(lists[0]):
        keys.setdefault((p.device, p.dtype), []).append(i)
    if len(keys) <= 1:
        yield list(range(len(lists[0]))), list(lists)
        return
    for idx in keys.values():
        yield idx, [[lst[i] for i in idx] for lst in lists]


def check_group(group: dict) -> None:
    """Validate the keys every group carries (see ``param_groups``)."""
    if group["lr"] < 0:
        raise ValueError(f"invalid learning rate: {group['lr']}")
    if group["weight_decay"] < 0:
        raise ValueError(f"invalid weight_decay: {group['weight_decay']}")
    if not group["lr_max"] > 0:
        raise ValueError(f"invalid lr_max (the schedule's peak LR): {group['lr_max']}")


def grads_of(group: dict) -> tuple[list[Tensor], list[Tensor]]:
    """Parameters of a group that have a gradient, and those gradients."""
    params, grads = [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError("sparse gradients are not supported")
        params.append(p)
        grads.append(p.grad)
    return params, grads
