"""``build_optimizer``: the optimizer of a run, from its ``optim`` config section and its model.

The registered (or library) optimizer class is called with the model's parameter groups
(:mod:`.param_groups`: normalized layers found from the model graph, each group with its
``peak_lr``; split for a partition-based optimizer as its :mod:`.capabilities` declare), and ``optim.corrected_decay: true`` switches any optimizer to the paper's
corrected decay (:func:`.decay.correct`).  Kept apart from :mod:`.registry`, which only
reads configs, so that parsing a config never imports torch.
"""
from __future__ import annotations

import math

import torch

from imagenet_repro.errors import ConfigError
from imagenet_repro.optim.capabilities import Capabilities, capabilities_of
from imagenet_repro.optim.decay import correct
from imagenet_repro.optim.equilibrium import predicted_rotation_of
from imagenet_repro.optim.param_groups import Sides, param_groups
from imagenet_repro.optim.registry import constructor_kwargs, import_modules, registered


def sides_of(caps: Capabilities, cfg) -> Sides | None:
    """The group split of a partition-based optimizer, its fallback side's peak LR and decay read
    from the ``optim`` keys its :class:`~.capabilities.Partition` names."""
    part = caps.partition
    if part is None:
        return None
    return Sides(part.flag, part.matrix, part.other,
                 other_peak_lr=float(cfg[part.other_lr]) if part.other_lr else float(cfg.lr),
                 other_weight_decay=float(cfg[part.other_weight_decay]) if part.other_weight_decay
                 else float(cfg.weight_decay))


def build_optimizer(model: torch.nn.Module, cfg, example_input: torch.Tensor | None = None) -> torch.optim.Optimizer:
    """Optimizer for ``model`` from an optim config section (DictConfig or dataclass)."""
    import_modules(getattr(cfg, "imports", ()))
    entry = registered(cfg.name)
    caps = capabilities_of(entry.cls)
    if caps.refused:
        raise ConfigError(f"optim: {cfg.name} {caps.refused}")
    groups = param_groups(model, weight_decay=cfg.weight_decay, peak_lr=cfg.lr,
                          decay_norm_and_bias=cfg.decay_norm_and_bias, example_input=example_input,
                          rule=getattr(cfg, "normalized_rule", "graph"), sides=sides_of(caps, cfg))
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
