r"""The paper's corrected weight decay, and how any ``torch.optim`` optimizer is made to use it.

The correction (Defazio, 2025, Sec. 5) replaces the decay λ of a *normalized* layer by

.. math::  \lambda_t = \lambda\,\gamma_t/\gamma_{\max}

(γ_t the group's current ``lr``, γ_max its ``peak_lr``, the schedule's peak LR); other
groups keep λ.  An optimizer whose decay is decoupled (x ← x - γ_t λ_t x, as AdamW, Lion)
then decays by γ_t²λ/γ_max per step, Algorithm 1's AdamC line.

:func:`schedule_decay` applies any such rule without touching the optimizer's code: a
step pre-hook writes ``decay(group)`` into each group's ``weight_decay``, the
optimizer's own step (torch's foreach/fused kernels, timm's, pytorch-optimizer's) does
the arithmetic, and a step post-hook writes the nominal λ back, so ``state_dict()``,
checkpoints and resumes only ever see λ.
"""
from __future__ import annotations

from typing import Callable

import torch

Decay = Callable[[dict], float]


def corrected_weight_decay(group: dict) -> float:
    """λ·γ_t/γ_max on normalized groups, λ elsewhere.

    The ratio is taken first, so γ_t == γ_max gives exactly λ (λ * 1.0) and a corrected
    optimizer then equals its plain version bit for bit."""
    if not group["normalized"]:
        return group["weight_decay"]
    return group["weight_decay"] * (group["lr"] / group["peak_lr"])


class _PerStepDecay:
    """The pair of step hooks behind :func:`schedule_decay`."""

    def __init__(self, decay: Decay) -> None:
        self.decay = decay
        self.nominal: list[float] = []  # λ of each group while a step runs; empty between steps

    def before(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self.after(optimizer, args, kwargs)  # a previous step that raised left its λ_t in place
        groups = optimizer.param_groups
        decays = [self.decay(g) for g in groups]
        self.nominal = [g["weight_decay"] for g in groups]
        for group, lam in zip(groups, decays):
            group["weight_decay"] = lam

    def after(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        for group, lam in zip(optimizer.param_groups, self.nominal):
            group["weight_decay"] = lam
        self.nominal = []


def schedule_decay(optimizer: torch.optim.Optimizer, decay: Decay) -> torch.optim.Optimizer:
    """Make every step of ``optimizer`` use ``decay(group)`` as the group's ``weight_decay``."""
    hooks = _PerStepDecay(decay)
    optimizer.register_step_pre_hook(hooks.before)
    optimizer.register_step_post_hook(hooks.after)
    return optimizer


class DecayHook:
    """Mixin for a ``torch.optim`` optimizer: each step decays by :meth:`decay` (λ here).

    Subclasses change the decay by overriding ``decay(group)``; :func:`correct` swaps
    it for :func:`corrected_weight_decay` on an instance.  A group without ``normalized``
    is not normalized; a normalized group must bring its ``peak_lr`` (γ_max: the groups of
    :func:`~imagenet_repro.optim.param_groups.param_groups` do), and a given one must be > 0."""

    corrects_decay = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        schedule_decay(self, lambda group: self.decay(group))

    def decay(self, group: dict) -> float:
        """λ_t of this group at its current LR: the constant λ."""
        return group["weight_decay"]

    def add_param_group(self, param_group: dict) -> None:
        param_group.setdefault("normalized", False)
        if param_group["normalized"] and "peak_lr" not in param_group:
            raise ValueError("a normalized param group needs peak_lr (the schedule's peak LR γ_max; "
                             "imagenet_repro.optim.param_groups.param_groups() sets it)")
        if "peak_lr" in param_group and not param_group["peak_lr"] > 0:
            raise ValueError(f"invalid peak_lr (the schedule's peak LR): {param_group['peak_lr']}")
        super().add_param_group(param_group)


def correct(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``optim.corrected_decay: true``: λ·γ_t/γ_max on normalized groups from now on.

    An optimizer of this package switches its ``decay`` hook (so ``predicted_ratio``
    follows); any other gets the step hooks of :func:`schedule_decay`.  Applying it to
    an optimizer that already corrects (SGDC, AdamC) changes nothing."""
    if getattr(optimizer, "corrects_decay", False):
        return optimizer
    if isinstance(optimizer, DecayHook):
        optimizer.decay = corrected_weight_decay
    else:
        schedule_decay(optimizer, corrected_weight_decay)
    optimizer.corrects_decay = True
    return optimizer
