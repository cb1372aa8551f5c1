"""The step of an optimizer, and the closure the trainer hands to an optimizer that declares ``closure``
(:mod:`imagenet_repro.optim.capabilities`: SAM's family, L-BFGS, AliG).

``optimizer.step(closure)`` may call it any number of times; each call evaluates the step's
batch again at the current weights:

* ``zero_grad``, forward (the trainer's: autocast, DDP), backward (with the graph for an
  optimizer that also declares ``create_graph``);
* BatchNorm's running statistics are left as the step's first forward made them (they are
  kept and put back around the closure's forward: a SAM step must not count its perturbed
  pass, nor L-BFGS its line search, as extra batches);
* with several ranks the loss it returns is the mean over the ranks (the gradients are
  already averaged by DDP), so that every rank takes the same decisions (an L-BFGS line
  search stops at the same evaluation everywhere, so every rank runs the same number of
  all-reduces).

The gradient telemetry records the step's first gradients (at the weights the step starts
from); ``train.grad_clip`` clips those, not the closure's.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed


def _batchnorm_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for b in m.buffers()]


def step_closure(model: torch.nn.Module, optimizer: torch.optim.Optimizer, forward_loss: Callable[[], torch.Tensor],
                 create_graph: bool, world_size: int) -> Callable[[], torch.Tensor]:
    """The closure of one step: ``forward_loss()`` is the trainer's forward on the step's batch."""
    buffers = _batchnorm_buffers(model)

    @torch.enable_grad()  # optimizers call it inside their own no_grad step (AliG, SAM)
    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        kept = [b.detach().clone() for b in buffers]
        loss = forward_loss()
        loss.backward(create_graph=create_graph)
        with torch.no_grad():  # after backward: batch_norm's backward holds the running buffers it was given
            for b, k in zip(buffers, kept):
                b.copy_(k)
        value = loss.detach().clone()
        if world_size > 1:
            torch.distributed.all_reduce(value)
            value /= world_size
        return value

    return closure


def optimizer_step(optimizer: torch.optim.Optimizer, capabilities, model: torch.nn.Module,
                   forward_loss: Callable[[], torch.Tensor], world_size: int) -> None:
    """``optimizer.step()``, with the closure of :func:`step_closure` for an optimizer that declares
    one (``capabilities``: its :class:`~imagenet_repro.optim.capabilities.Capabilities`)."""
    if capabilities.closure:
        optimizer.step(step_closure(model, optimizer, forward_loss, capabilities.create_graph, world_size))
    else:
        optimizer.step()
