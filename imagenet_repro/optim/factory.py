"""``build_optimizer``: the optimizer of a run, from its ``optim`` config section and its model.

The registered (or library) optimizer class is called with the model's parameter groups
(:mod:`.param_groups`: normalized layers found from the model graph, each group with its
``lr_max``), and ``optim.corrected_decay: true`` switches any optimizer to the paper's
corrected decay (:func:`.decay.correct`).  Kept apart from :mod:`.registry`, which only
reads configs, so that parsing a config never imports torch.
"""
from __future__ import annotations

import math

import torch

from imagenet_repro.optim.decay import correct
from imagenet_repro.optim.equilibrium import predicted_rotation_of
from imagenet_repro.optim.param_groups import param_groups
from imagenet_repro.optim.registry import constructor_kwargs, import_modules, registered


def build_optimizer(model: torch.nn.Module, cfg, example_input: torch.Tensor | None = None) -> torch.optim.Optimizer:
    """Optimizer for ``model`` from an optim config section (DictConfig or dataclass)."""
    import_modules(getattr(cfg, "imports", ()))
    entry = registered(cfg.name)
    groups = param_groups(model, weight_decay=cfg.weight_decay, lr_max=cfg.lr,
                          decay_norm_and_bias=cfg.decay_norm_and_bias, example_input=example_input,
                          rule=getattr(cfg, "normalized_rule", "graph"))
    optimizer = entry.cls(groups, **constructor_kwargs(entry, cfg))
    if getattr(cfg, "corrected_decay", False):
        correct(optimizer)
    return optimizer


def predicted_ratio(optimizer: torch.optim.Optimizer, group: dict) -> float:
    fn = getattr(optimizer, "predicted_ratio", None)
    return float(fn(group)) if fn is not None else math.nan


def predicted_rotation(optimizer: torch.optim.Optimizer, group: dict) -> float:
    """The theory's steady-state rotation per step of a normalized weight of ``group``
    (:mod:`.equilibrium`); NaN where there is none."""
    if not group.get("normalized", False):
        return math.nan
    return predicted_rotation_of(optimizer, group)
