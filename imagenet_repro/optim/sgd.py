r"""SGD with momentum: ``torch.optim.SGD`` (coupled weight decay, dampening, Nesterov).

With learning rate :math:`\gamma_t` (the group's current ``lr``), weight decay
:math:`\lambda_t` (see :meth:`SGD.decay`; plain SGD uses :math:`\lambda_t=\lambda`),
momentum :math:`\beta` and dampening :math:`\tau`, torch's step is

.. math::

    d_t &= \nabla f(x_t) + \lambda_t x_t \\
    b_t &= d_t \ (t = 1), \qquad b_t = \beta b_{t-1} + (1-\tau)\, d_t \ (t > 1) \\
    u_t &= d_t + \beta b_t \ \text{(Nesterov)}, \qquad u_t = b_t \ \text{(otherwise)} \\
    x_{t+1} &= x_t - \gamma_t u_t .

For a scale-invariant ("normalized") weight the gradient is orthogonal to the weight,
and the norm settles where decay and gradient growth balance, :math:`2\lambda\gamma\|x\|^2/(1-\beta)
= \gamma^2\|g\|^2/(1-\beta)^2`, i.e. :math:`\|g\|/\|x\| = \sqrt{2\lambda(1-\beta)/\gamma_t}`
(:meth:`SGD.predicted_ratio`): the ratio grows without bound as :math:`\gamma_t \to 0`.

The class only adds the ``decay(group)`` hook (:class:`~imagenet_repro.optim.decay.DecayHook`)
and ``predicted_ratio``; torch's foreach / per-tensor / fused code does the arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from imagenet_repro.optim.decay import DecayHook
from imagenet_repro.optim.equilibrium import sgd_rotation
from imagenet_repro.optim.registry import OptimConfig, check_fraction, check_nesterov, register_optimizer


@dataclass
class SGDConfig(OptimConfig):
    name: str = "sgd"
    momentum: float = 0.9  # β
    dampening: float = 0.0  # τ
    nesterov: bool = False

    @classmethod
    def check(cls, o) -> None:
        super().check(o)
        check_fraction(o, "momentum")
        check_fraction(o, "dampening")
        check_nesterov(o)


@register_optimizer("sgd", config=SGDConfig)
class SGD(DecayHook, torch.optim.SGD):
    """``torch.optim.SGD`` (default momentum 0.9) whose step decays by ``decay(group)``."""

    def __init__(self, params, lr: float = 0.1, weight_decay: float = 0.0, momentum: float = 0.9,
                 dampening: float = 0.0, nesterov: bool = False, **torch_options) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening,
                         nesterov=nesterov, **torch_options)

    def predicted_ratio(self, group: dict) -> float:
        """Steady-state ||g||/||x|| of a normalized weight: sqrt(2 λ_t (1-β) / γ_t)."""
        if not group["normalized"] or group["lr"] <= 0:
            return math.nan
        return math.sqrt(2.0 * self.decay(group) * (1.0 - group["momentum"]) / group["lr"])

    def predicted_rotation(self, group: dict) -> float:
        """Steady-state ||Δx||/||x|| (≈ the angle) per step of a normalized weight at γ_t, λ_t
        (:func:`~imagenet_repro.optim.equilibrium.sgd_rotation`; SGDC's λ_t makes it linear in γ_t)."""
        if not group["normalized"]:
            return math.nan
        return sgd_rotation(group["lr"], self.decay(group), group["momentum"], group["dampening"], group["nesterov"])
