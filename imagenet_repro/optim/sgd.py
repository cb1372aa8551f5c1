r"""SGD with momentum, PyTorch semantics (coupled weight decay, dampening, Nesterov).

With learning rate :math:`\gamma_t` (the group's current ``lr``), weight decay
:math:`\lambda_t` (see :meth:`SGD.decay`; plain SGD uses :math:`\lambda_t=\lambda`),
momentum :math:`\beta` and dampening :math:`\tau`, one step is

.. math::

    d_t &= \nabla f(x_t) + \lambda_t x_t \\
    b_t &= d_t \ (t = 1), \qquad b_t = \beta b_{t-1} + (1-\tau)\, d_t \ (t > 1) \\
    u_t &= d_t + \beta b_t \ \text{(Nesterov)}, \qquad u_t = b_t \ \text{(otherwise)} \\
    x_{t+1} &= x_t - \gamma_t u_t

which is exactly ``torch.optim.SGD`` (``maximize=False``).  For a scale-invariant
("normalized") weight the gradient is orthogonal to the weight, and the norm settles
where decay and gradient growth balance, :math:`2\lambda\gamma\|x\|^2/(1-\beta)
= \gamma^2\|g\|^2/(1-\beta)^2`, i.e. :math:`\|g\|/\|x\| = \sqrt{2\lambda(1-\beta)/\gamma_t}`
(:meth:`SGD.predicted_ratio`): the ratio grows without bound as :math:`\gamma_t \to 0`.

Two code paths compute the same update: a foreach path (``torch._foreach_*``, one
kernel per op for all tensors of a group) and a per-tensor loop.  Every parameter
group must carry ``lr_max`` (the schedule's peak LR) and ``normalized``; both default
to the constructor's ``lr`` and ``False``.  Extra keys (e.g. ``names``) are kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from imagenet_repro.optim._tensors import by_device_and_dtype, check_group, grads_of
from imagenet_repro.optim.registry import OptimConfig, register_optimizer


@dataclass
class SGDConfig(OptimConfig):
    name: str = "sgd"
    momentum: float = 0.9  # β
    dampening: float = 0.0  # τ
    nesterov: bool = False


@register_optimizer("sgd", config=SGDConfig)
class SGD(torch.optim.Optimizer):
    """SGD with momentum; ``decay(group)`` gives the weight decay used this step."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 0.1,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        dampening: float = 0.0,
        nesterov: bool = False,
        foreach: Optional[bool] = None,
    ) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate: {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"invalid momentum: {momentum}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening,
                        nesterov=nesterov, foreach=foreach, lr_max=lr, normalized=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_group(group)

    def decay(self, group: dict) -> float:
        """λ_t for this group at its current LR. SGD: the constant λ."""
        return group["weight_decay"]

    def predicted_ratio(self, group: dict) -> float:
        """Steady-state ||g||/||x|| of a normalized weight: sqrt(2 λ_t (1-β) / γ_t)."""
        if not group["normalized"]:
            return math.nan
        lr = group["lr"]
        if lr <= 0:
            return math.inf
        return math.sqrt(2.0 * self.decay(group) * (1.0 - group["momentum"]) / lr)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = grads_of(group)
            if not params:
                continue
            momentum = group["momentum"]
            bufs = [self.state[p].get("momentum_buffer") for p in params] if momentum != 0 else []
            foreach = group["foreach"] if group["foreach"] is not None else True
            update = _sgd_foreach if foreach else _sgd_single
            update(params, grads, bufs, lr=group["lr"], weight_decay=self.decay(group), momentum=momentum,
                   dampening=group["dampening"], nesterov=group["nesterov"])
            for p, buf in zip(params, bufs):
                self.state[p]["momentum_buffer"] = buf
        return loss


def _sgd_single(params: list[Tensor], grads: list[Tensor], bufs: list[Optional[Tensor]], *, lr: float,
                weight_decay: float, momentum: float, dampening: float, nesterov: bool) -> None:
    """Per-tensor path; fills ``bufs`` in place (new buffers on the first step)."""
    for i, (p, g) in enumerate(zip(params, grads)):
        d = g.add(p, alpha=weight_decay) if weight_decay != 0 else g
        if momentum != 0:
            buf = bufs[i]
            if buf is None:
                buf = bufs[i] = d.detach().clone()
            else:
                buf.mul_(momentum).add_(d, alpha=1 - dampening)
            d = d.add(buf, alpha=momentum) if nesterov else buf
        p.add_(d, alpha=-lr)


def _sgd_foreach(params: list[Tensor], grads: list[Tensor], bufs: list[Optional[Tensor]], *, lr: float,
                 weight_decay: float, momentum: float, dampening: float, nesterov: bool) -> None:
    """Foreach path: the same arithmetic as :func:`_sgd_single`, op for op."""
    lists = [params, grads, bufs] if momentum != 0 else [params, grads]
    for idx, parts in by_device_and_dtype(*lists):
        ps, gs = parts[0], parts[1]
        ds = torch._foreach_add(gs, ps, alpha=weight_decay) if weight_decay != 0 else gs
        if momentum != 0:
            bs = parts[2]
            if all(b is not None for b in bs):
                torch._foreach_mul_(bs, momentum)
                torch._foreach_add_(bs, ds, alpha=1 - dampening)
            else:
                for j, (b, d) in enumerate(zip(bs, ds)):
                    if b is None:
                        bs[j] = bufs[idx[j]] = d.detach().clone()
                    else:
                        b.mul_(momentum).add_(d, alpha=1 - dampening)
            if nesterov:
                ds = torch._foreach_add(ds, bs, alpha=momentum)
            else:
                ds = bs
        torch._foreach_add_(ps, ds, alpha=-lr)
