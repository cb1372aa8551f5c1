"""Optimizers of maintained libraries, selected by name: ``timm:<name>`` and ``<module>:<Class>``.

``optim.name=timm:lion`` takes the class timm's optimizer registry gives for ``lion``
(``timm.optim.get_optimizer_class``, its defaults bound, and ``momentum=0.9`` where the
optimizer has one: timm's factory's default, so ``timm:sgd``'s Nesterov has its momentum); ``optim.name=pytorch_optimizer:Lion`` (or any
``<importable module>:<torch.optim.Optimizer subclass>``, e.g. ``torch.optim:RAdam``)
takes the class by attribute.  The class is called with this suite's parameter groups,
exactly as a registered optimizer is, so groups, ``peak_lr``, telemetry, the correction
switch and sweeps work unchanged.

The accepted ``optim.*`` keys are read off the constructor's signature: each named
parameter with a default a YAML value can hold (number, bool, string, list, None, an
enum's value) becomes a field of a config dataclass made on the fly, typed by its
annotation (an unannotated integer default such as timm's ``momentum=0`` takes a float
too), so an unknown key is the same one-line ``ConfigError`` as for a built-in optimizer.
The values are the library's to judge: its constructor and first step decide, on the
probe (:mod:`.probe`).  ``lr`` and ``weight_decay`` are
the suite's own keys (the peak LR γ_max and λ); the library's defaults for them do not
apply.  ``**kwargs`` catch-alls are not keys.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import inspect
from typing import Any, Optional

from imagenet_repro.errors import ConfigError, describe

MISSING = "???"  # OmegaConf's mark for a value the user must give
TIMM_MOMENTUM = 0.9  # timm's create_optimizer gives every optimizer that has a momentum 0.9 ("backward compat")


def split_name(name: str) -> tuple[str, str]:
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ConfigError(f"optimizer name {name!r}: expected <module>:<name>, e.g. timm:lion or pytorch_optimizer:Lion")
    return module, attr


def library_optimizer(name: str) -> type:
    """The class (or a ``functools.partial`` of one, as timm's registry gives) named by ``name``."""
    module, attr = split_name(name)
    if module == "timm":
        import timm.optim

        if attr not in timm.optim.list_optimizers():
            raise ConfigError(f"unknown optimizer name: {name!r} (timm knows: {', '.join(timm.optim.list_optimizers())})")
        try:
            cls = timm.optim.get_optimizer_class(attr)
        except Exception as exc:  # e.g. bitsandbytes' `assert torch.cuda.is_available()`
            raise ConfigError(f"optimizer {name!r} cannot be used here: {describe(exc)}") from None
        if timm.optim.get_optimizer_info(attr).has_momentum:
            cls = functools.partial(cls, momentum=TIMM_MOMENTUM)  # timm's own default, as its factory gives it
        return cls
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"optimizer {name!r}: cannot import {module!r}: {exc}") from None
    cls = getattr(mod, attr, None)
    import torch  # loaded with the library's module above; kept out of reading configs

    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"unknown optimizer name: {name!r} ({module} has no torch.optim.Optimizer named {attr!r})")
    return cls


def _field(param: inspect.Parameter) -> Optional[tuple[str, Any, dataclasses.Field]]:
    """(name, type, field) of a YAML-settable constructor parameter; None for the others."""
    default = param.default
    text = str(param.annotation)
    if isinstance(default, enum.Enum):  # an IntEnum / str Enum: its value (libraries take the matching value)
        default = default.value
    if default is inspect.Parameter.empty:
        return param.name, Any, dataclasses.field(default=MISSING)
    if isinstance(default, bool):
        return param.name, bool, dataclasses.field(default=default)
    if isinstance(default, int) and param.annotation is inspect.Parameter.empty:
        return param.name, Any, dataclasses.field(default=default)  # momentum=0: an int or a float, the library says
    if isinstance(default, int) and "float" not in text:
        return param.name, int, dataclasses.field(default=default)
    if isinstance(default, (int, float)):
        return param.name, float, dataclasses.field(default=float(default))
    if isinstance(default, str):
        return param.name, str, dataclasses.field(default=default)
    if isinstance(default, (tuple, list)) and all(isinstance(v, (int, float, bool, str)) for v in default):
        return param.name, Any, dataclasses.field(default_factory=lambda d=default: list(d))
    if default is None:
        return param.name, Any, dataclasses.field(default=None)
    return None  # a callable, a tensor, ...: not a YAML value


def config_class(name: str, cls: type, base: type) -> tuple[type, frozenset[str]]:
    """A config dataclass (subclass of ``base``) for ``cls``'s constructor, and the names it accepts."""
    params = list(inspect.signature(cls).parameters.values())[1:]  # [0] is params
    accepted = frozenset(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    own = {f.name for f in dataclasses.fields(base)}
    extra = [f for p in params if p.name in accepted and p.name not in own and (f := _field(p)) is not None]
    title = "".join(c for c in name.title() if c.isalnum())
    config = dataclasses.make_dataclass(f"{title}Config", [("name", str, dataclasses.field(default=name)), *extra],
                                        bases=(base,))
    return config, accepted
