r"""AdamC: AdamW with the decay corrected on normalized layers (Defazio, 2025, Algorithm 1).

Identical to :mod:`imagenet_repro.optim.adamw` (decoupled decay
:math:`x_{t+1} = x_t - \gamma_t\lambda_t x_t - \gamma_t \hat m_t/(\sqrt{\hat v_t}+\epsilon)`)
except that on groups marked ``normalized``

.. math::  \lambda_t = \lambda \, \gamma_t / \gamma_{\max},

so the decoupled decay applied per step is :math:`\gamma_t^2 \lambda / \gamma_{\max}`,
Algorithm 1's line 12, with :math:`\gamma_t` the group's current ``lr`` and
:math:`\gamma_{\max}` its ``peak_lr`` (the schedule's peak LR).  Other groups keep
:math:`\lambda`.  With :math:`\gamma_t = \gamma_{\max}` AdamC computes bit for bit what
AdamW computes.  ``adamw`` with ``optim.corrected_decay: true`` is the same optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass

from imagenet_repro.optim.adamw import AdamW, AdamWConfig
from imagenet_repro.optim.decay import corrected_weight_decay
from imagenet_repro.optim.registry import register_optimizer


@dataclass
class AdamCConfig(AdamWConfig):
    name: str = "adamc"


@register_optimizer("adamc", config=AdamCConfig)
class AdamC(AdamW):
    """AdamW whose decay on normalized groups follows the LR schedule: λ·γ_t/γ_max."""

    corrects_decay = True

    def decay(self, group: dict) -> float:
        return corrected_weight_decay(group)
