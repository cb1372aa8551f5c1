r"""AdamW (Loshchilov & Hutter), PyTorch semantics: decoupled weight decay.

With learning rate :math:`\gamma_t` (the group's current ``lr``), decay
:math:`\lambda_t` (see :meth:`AdamW.decay`; AdamW uses :math:`\lambda_t = \lambda`),
betas :math:`(\beta_1, \beta_2)` and :math:`\epsilon`, step :math:`t = 1, 2, \dots` is

.. math::

    g_t &= \nabla f(x_t) \\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    x_{t+1} &= x_t - \gamma_t \lambda_t x_t
               - \gamma_t \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

which is ``torch.optim.AdamW`` (``amsgrad=False, maximize=False``) and the AdamW line
of the paper's Algorithm 1.  The steady-state ||g||/||x|| of a normalized weight has no
closed form here (Adam's update norm does not scale with ||g||), so
:meth:`AdamW.predicted_ratio` is NaN.

Two code paths compute the same update: foreach (``torch._foreach_*``) and a
per-tensor loop.  The step count is kept per parameter (``state["step"]``, an int).
Groups carry ``lr_max`` and ``normalized`` (defaults: constructor ``lr``, ``False``);
extra keys (e.g. ``names``) are kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from imagenet_repro.optim._tensors import by_device_and_dtype, check_group, grads_of
from imagenet_repro.optim.registry import OptimConfig, register_optimizer


@dataclass
class AdamWConfig(OptimConfig):
    name: str = "adamw"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # a list: OmegaConf has no tuples
    eps: float = 1e-8


@register_optimizer("adamw", config=AdamWConfig)
class AdamW(torch.optim.Optimizer):
    """AdamW; ``decay(group)`` gives the decoupled weight decay λ_t used this step."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        foreach: Optional[bool] = None,
    ) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate: {lr}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid betas: {betas}")
        if eps < 0:
            raise ValueError(f"invalid eps: {eps}")
        defaults = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, foreach=foreach,
                        lr_max=lr, normalized=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_group(group)

    def decay(self, group: dict) -> float:
        """λ_t for this group at its current LR. AdamW: the constant λ."""
        return group["weight_decay"]

    def predicted_ratio(self, group: dict) -> float:
        """No closed form for ||g||/||x|| under Adam: NaN."""
        return math.nan

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
            exp_avgs, exp_avg_sqs, steps = [], [], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = int(state["step"]) + 1
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            beta1, beta2 = group["betas"]
            foreach = group["foreach"] if group["foreach"] is not None else True
            update = _adamw_foreach if foreach else _adamw_single
            update(params, grads, exp_avgs, exp_avg_sqs, steps, lr=group["lr"], weight_decay=self.decay(group),
                   beta1=beta1, beta2=beta2, eps=group["eps"])
        return loss


def _adamw_single(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                  steps: list[int], *, lr: float, weight_decay: float, beta1: float, beta2: float,
                  eps: float) -> None:
    """Per-tensor path (``steps`` already counts this step)."""
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = lr / (1 - beta1 ** t)
        denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)


def _adamw_foreach(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                   steps: list[int], *, lr: float, weight_decay: float, beta1: float, beta2: float,
                   eps: float) -> None:
    """Foreach path: the arithmetic of :func:`_adamw_single`.  When every tensor is at
    the same step (the usual case) the bias corrections are single scalars."""
    for idx, (ps, gs, ms, vs) in by_device_and_dtype(params, grads, exp_avgs, exp_avg_sqs):
        ts = [steps[i] for i in idx]
        if weight_decay != 0:
            torch._foreach_mul_(ps, 1 - lr * weight_decay)
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, 1 - beta2)
        denom = torch._foreach_sqrt(vs)
        if all(t == ts[0] for t in ts):
            torch._foreach_div_(denom, math.sqrt(1 - beta2 ** ts[0]))
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(ps, ms, denom, -lr / (1 - beta1 ** ts[0]))
        else:
            torch._foreach_div_(denom, [math.sqrt(1 - beta2 ** t) for t in ts])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(ps, ms, denom, [-lr / (1 - beta1 ** t) for t in ts])
