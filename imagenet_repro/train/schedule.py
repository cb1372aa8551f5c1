"""Learning-rate schedules, stepped per iteration.

The schedule writes, before every step, ``group["lr"] = γ_t`` into each optimizer param
group.  γ_max (``optim.lr``) is its peak; the groups carry their peak as ``peak_lr`` from
where they are made (:func:`imagenet_repro.optim.param_groups.param_groups`, the one place),
and corrected optimizers (SGDC, AdamC) read it there: handed over explicitly, never guessed.
Each group follows γ_t/γ_max from its own peak, ``group["lr"] = peak_lr · γ_t/γ_max``: a
partition-based optimizer's fallback side (Muon's AdamW groups, ``adamw_lr``) has a peak of
its own; every other group's peak is γ_max, so its ``lr`` is γ_t.

    cosine: γ_t = γ_max · (f + (1 - f) · ½(1 + cos(π p)))      p = (t - w) / (T - w)
    flat:   γ_t = γ_max
    step:   γ_t = γ_max · gamma^(number of milestones (fractions of T) passed)

with a linear warmup γ_t = γ_max · (t + 1) / w over the first w steps.  The last step
t = T - 1 has p < 1, so γ_t > 0 on every step that is taken.
"""
from __future__ import annotations

import bisect
import math

import torch


class LRSchedule:
    def __init__(self, optimizer: torch.optim.Optimizer, cfg, peak_lr: float, total_steps: int,
                 steps_per_epoch: int) -> None:
        self.optimizer = optimizer
        self.name = cfg.name
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.final_fraction = float(cfg.final_lr_fraction)
        self.milestones = sorted(int(round(m * total_steps)) for m in cfg.milestones)
        self.gamma = float(cfg.step_gamma)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.name == "flat":
            return 1.0
        if self.name == "step":
            return self.gamma ** bisect.bisect_right(self.milestones, step)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.final_fraction + (1 - self.final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    def lr(self, step: int) -> float:
        return self.peak_lr * self.factor(step)

    def apply(self, step: int) -> float:
        """Set the LR of ``step`` on every param group (its own peak times the factor); return γ_t."""
        factor = self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("peak_lr", self.peak_lr) * factor
        return self.peak_lr * factor
