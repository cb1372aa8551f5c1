"""Optimizer registry: ``@register_optimizer("name", config=SomeConfig)``.

Adding an optimizer is one new file in this folder: a config dataclass (subclass of
:class:`OptimConfig`) declaring its hyper-parameters, and a ``torch.optim.Optimizer``
subclass decorated with ``@register_optimizer``.  The class must accept
``(params, **config_fields_except_name)`` and may define
``predicted_ratio(group) -> float`` giving the theory's steady-state ||g||/||x|| for a
normalized layer of that group (NaN where the paper gives none).

Every parameter group handed to an optimizer carries two extra keys:
``normalized`` (the weights feed a normalization layer; see ``param_groups``) and
``lr_max`` (the schedule's peak LR γ_max, set explicitly by the schedule).
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, fields
from typing import Callable, Type

import torch

from imagenet_repro.config import ConfigError


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1  # peak learning rate γ_max
    weight_decay: float = 5e-5  # λ
    decay_norm_and_bias: bool = True  # apply λ to norm-layer affine params and biases too


@dataclass(frozen=True)
class _Entry:
    name: str
    cls: Type[torch.optim.Optimizer]
    config: type


_REGISTRY: dict[str, _Entry] = {}
_LOADED = False


def register_optimizer(name: str, config: type = OptimConfig) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"optimizer {name!r} is already registered")
        _REGISTRY[name] = _Entry(name, cls, config)
        return cls

    return decorate


def unregister_optimizer(name: str) -> None:
    """Remove a registered optimizer (tests register throw-away ones and clean up)."""
    _REGISTRY.pop(name, None)


def _load_builtin() -> None:
    """Import every module of this package once so their decorators run."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    package = importlib.import_module("imagenet_repro.optim")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"imagenet_repro.optim.{info.name}")


def available_optimizers() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown optimizer name: {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def optimizer_config_class(name: str) -> type:
    return _entry(name).config


def optimizer_class(name: str) -> Type[torch.optim.Optimizer]:
    return _entry(name).cls


def build_optimizer(model: torch.nn.Module, cfg, example_input: torch.Tensor | None = None) -> torch.optim.Optimizer:
    """Optimizer for ``model`` from an optim config section (DictConfig or dataclass)."""
    from imagenet_repro.optim.param_groups import param_groups

    entry = _entry(cfg.name)
    kwargs = {f.name: getattr(cfg, f.name) for f in fields(entry.config) if f.name not in ("name", "decay_norm_and_bias")}
    kwargs = {k: (tuple(v) if isinstance(v, (list,)) or type(v).__name__ == "ListConfig" else v) for k, v in kwargs.items()}
    groups = param_groups(model, weight_decay=cfg.weight_decay, lr_max=cfg.lr,
                          decay_norm_and_bias=cfg.decay_norm_and_bias, example_input=example_input)
    return entry.cls(groups, **kwargs)


def predicted_ratio(optimizer: torch.optim.Optimizer, group: dict) -> float:
    fn = getattr(optimizer, "predicted_ratio", None)
    return float(fn(group)) if fn is not None else math.nan
