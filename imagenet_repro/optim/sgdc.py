r"""SGDC: SGD with the weight decay corrected on normalized layers (Defazio, 2025).

Identical to :mod:`imagenet_repro.optim.sgd` except the decay at step t of a group
marked ``normalized`` is

.. math::  \lambda_t = \lambda \, \gamma_t / \gamma_{\max},

with :math:`\gamma_t` the group's current ``lr`` and :math:`\gamma_{\max}` its ``peak_lr``
(the schedule's peak LR, passed explicitly).  Other groups keep :math:`\lambda`.
Putting :math:`\lambda_t` into the steady-state balance of SGD gives
:math:`\|g\|/\|x\| = \sqrt{2\lambda_t(1-\beta)/\gamma_t} = \sqrt{2\lambda(1-\beta)/\gamma_{\max}}`,
independent of the schedule: the end-of-training rise of the gradient norm disappears.
With :math:`\gamma_t = \gamma_{\max}` SGDC computes bit for bit what SGD computes.
``sgd`` with ``optim.corrected_decay: true`` is the same optimizer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from imagenet_repro.optim.decay import corrected_weight_decay
from imagenet_repro.optim.registry import register_optimizer
from imagenet_repro.optim.sgd import SGD, SGDConfig


@dataclass
class SGDCConfig(SGDConfig):
    name: str = "sgdc"


@register_optimizer("sgdc", config=SGDCConfig)
class SGDC(SGD):
    """SGD whose decay on normalized groups follows the LR schedule: λ·γ_t/γ_max."""

    corrects_decay = True

    def decay(self, group: dict) -> float:
        return corrected_weight_decay(group)

    def predicted_ratio(self, group: dict) -> float:
        """sqrt(2 λ_t (1-β) / γ_t) = sqrt(2 λ (1-β) / γ_max), also at γ_t = 0."""
        if not group["normalized"]:
            return math.nan
        return math.sqrt(2.0 * group["weight_decay"] * (1.0 - group["momentum"]) / group["peak_lr"])
