r"""AdamW (Loshchilov & Hutter): ``torch.optim.AdamW``, decoupled weight decay.

With learning rate :math:`\gamma_t` (the group's current ``lr``), decay
:math:`\lambda_t` (see :meth:`AdamW.decay`; AdamW uses :math:`\lambda_t = \lambda`),
betas :math:`(\beta_1, \beta_2)` and :math:`\epsilon`, torch's step :math:`t = 1, 2, \dots` is

.. math::

    g_t &= \nabla f(x_t) \\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    x_{t+1} &= x_t - \gamma_t \lambda_t x_t
               - \gamma_t \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

the AdamW line of the paper's Algorithm 1.  The steady-state ||g||/||x|| of a normalized
weight has no closed form here (Adam's update norm does not scale with ||g||), so
:meth:`AdamW.predicted_ratio` is NaN.  The class only adds the ``decay(group)`` hook
(:class:`~imagenet_repro.optim.decay.DecayHook`); torch's kernels do the arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from imagenet_repro.optim.decay import DecayHook
from imagenet_repro.optim.equilibrium import adamw_rotation
from imagenet_repro.optim.registry import OptimConfig, check_betas, check_eps, register_optimizer


@dataclass
class AdamWConfig(OptimConfig):
    name: str = "adamw"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # a list: OmegaConf has no tuples
    eps: float = 1e-8

    @classmethod
    def check(cls, o) -> None:
        super().check(o)
        check_betas(o)
        check_eps(o)


@register_optimizer("adamw", config=AdamWConfig)
class AdamW(DecayHook, torch.optim.AdamW):
    """``torch.optim.AdamW`` whose step decays by ``decay(group)``."""

    def predicted_ratio(self, group: dict) -> float:
        """No closed form for ||g||/||x|| under Adam: NaN."""
        return math.nan

    def predicted_rotation(self, group: dict) -> float:
        """Steady-state ||Δx||/||x|| (≈ the angle) per step of a normalized weight at γ_t, λ_t
        (:func:`~imagenet_repro.optim.equilibrium.adamw_rotation`; AdamC's λ_t makes it linear in γ_t)."""
        if not group["normalized"]:
            return math.nan
        return adamw_rotation(group["lr"], self.decay(group), group["betas"][0])
