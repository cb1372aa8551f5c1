"""Optimizer registry: ``@register_optimizer("name", config=SomeConfig)``, and where names come from.

``optim.name`` is looked up in this order:

1. a registered name: the built-ins of this folder (``sgd``, ``sgdc``, ``adamw``,
   ``adamc``), anything registered by a module listed in ``optim.imports`` (module
   names or ``.py`` files, imported before the name is looked up), and anything
   registered by a module named in an installed package's entry points, group
   ``imagenet_repro.optimizers``;
2. ``<module>:<name>``: a maintained library's optimizer (:mod:`.library`), e.g.
   ``timm:lion`` or ``pytorch_optimizer:Lion``.

A registered optimizer is a config dataclass (subclass of :class:`OptimConfig`)
declaring its hyper-parameters, and checking them in its ``check`` classmethod (which
extends its parent's: ``super().check(o)``; :func:`require` and the key checks below
make the one-line messages), and a ``torch.optim.Optimizer`` subclass that accepts
``(param_groups, lr=..., weight_decay=..., **other_config_fields)``; it may define
``predicted_ratio(group) -> float``, the theory's steady-state ||g||/||x|| for a
normalized layer of that group (NaN where the paper gives none), and a ``capabilities``
class attribute when it needs more than ``step()`` (:mod:`.capabilities`).

Every parameter group handed to an optimizer carries two extra keys: ``normalized``
and ``peak_lr`` (the schedule's peak LR γ_max; a partition's fallback side has its own),
both set where the groups are made (:func:`~imagenet_repro.optim.param_groups.param_groups`,
the one place γ_max enters them).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Optional

from imagenet_repro.errors import ConfigError
from imagenet_repro.optim.capabilities import Capabilities, capabilities_of
from imagenet_repro.optim.library import config_class, library_optimizer
from imagenet_repro.plugins import import_user_module, load_entry_points

ENTRY_POINT_GROUP = "imagenet_repro.optimizers"
RULES = ("graph", "transformer")
BUILTIN_MODULES = tuple(f"imagenet_repro.optim.{m}" for m in ("sgd", "sgdc", "adamw", "adamc"))


def require(ok: bool, message: str) -> None:
    """A check of an ``optim`` key: ``message`` (one line, naming the key and the value) when not ``ok``."""
    if not ok:
        raise ConfigError(message)


def check_fraction(o, key: str) -> None:
    """``optim.<key>`` in [0, 1): a momentum, a dampening."""
    require(0 <= o[key] < 1, f"optim.{key} must be in [0, 1) (got {o[key]})")


def check_nesterov(o) -> None:
    if o.get("nesterov"):
        require(o.momentum > 0 and o.dampening == 0, f"optim.nesterov needs optim.momentum > 0 and optim.dampening = 0 "
                                                     f"(got momentum {o.momentum}, dampening {o.dampening})")


def check_betas(o) -> None:
    require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
            f"optim.betas must be two numbers in [0, 1) (got {list(o.betas)})")


def check_eps(o) -> None:
    require(o.eps > 0, f"optim.eps must be > 0 (got {o.eps})")


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1  # peak learning rate γ_max
    weight_decay: float = 5e-5  # λ
    decay_norm_and_bias: bool = True  # apply λ to norm-layer affine params and biases too
    corrected_decay: bool = False  # λ·γ_t/γ_max on normalized groups, for any optimizer (optim.decay.correct)
    normalized_rule: str = "graph"  # graph: conv/linear feeding a norm layer; transformer: every linear but the output layer
    imports: list[str] = field(default_factory=list)  # modules or .py files to import first (they register optimizers)

    @classmethod
    def check(cls, o) -> None:
        """The rules of this optimizer's keys that types cannot say, over ``o`` (a run's ``optim``
        section: a DictConfig, or a sweep point's plain container); raise ConfigError (one line).
        A subclass checks its own keys after its parent's: ``super().check(o)``."""
        require(o.lr > 0, f"optim.lr must be > 0 (got {o.lr})")
        require(o.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {o.weight_decay})")


@dataclass
class LibraryOptimConfig(OptimConfig):
    """The base of a library optimizer's config (:func:`.library.config_class` adds its fields).

    A library's optimizer is judged by its library: the suite's rules of its own optimizers
    (SGD's dampening and nesterov, Adam's two betas, finite numbers) do not apply to the
    library's keys, whose meaning is the library's.  Its constructor decides, on the probe
    build of :func:`check_optim_config`; only the suite's own keys (``lr``, ``weight_decay``,
    ...) are checked here."""


SUITE_KEYS = frozenset(f.name for f in fields(OptimConfig)) - {"lr", "weight_decay"}  # not constructor arguments


@dataclass(frozen=True)
class _Entry:
    name: str
    cls: Callable[..., Any]  # a torch.optim.Optimizer subclass (or a partial of one)
    config: type
    accepts: Optional[frozenset[str]] = None  # constructor keywords (library optimizers); None: every config field


_REGISTRY: dict[str, _Entry] = {}
_LIBRARY: dict[str, _Entry] = {}
_LOADED: set[str] = set()  # built-in modules and entry points imported so far


def register_optimizer(name: str, config: type = OptimConfig) -> Callable[[type], type]:
    if ":" in name:
        raise ValueError(f"optimizer name {name!r}: ':' is reserved for library optimizers (timm:lion)")

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
    """Import the built-in optimizers once, as plugins are (their decorators register them):
    on the first lookup, so that reading a config file does not import torch."""
    if "builtin" in _LOADED:
        return
    _LOADED.add("builtin")
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def _load_entry_points() -> None:
    """Import the modules that installed packages name under ``imagenet_repro.optimizers``."""
    load_entry_points(ENTRY_POINT_GROUP, _LOADED)


def import_modules(imports: Iterable[str]) -> None:
    """Import ``optim.imports``: dotted module names, or paths of ``.py`` files (relative to
    the working directory).  Each is imported once per process; its decorators register."""
    for item in [imports] if isinstance(imports, str) else imports:
        import_user_module(str(item), "optim.imports", "_repro_user")


def available_optimizers() -> list[str]:
    """Registered names (library optimizers are named ``<module>:<name>`` on demand)."""
    _load_builtin()
    _load_entry_points()
    return sorted(_REGISTRY)


def registered(name: str) -> _Entry:
    _load_builtin()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        if name not in _LIBRARY:
            cls = library_optimizer(name)
            config, accepts = config_class(name, cls, LibraryOptimConfig)
            _LIBRARY[name] = _Entry(name, cls, config, accepts)
        return _LIBRARY[name]
    _load_entry_points()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown optimizer name: {name!r} (known: {', '.join(sorted(_REGISTRY))}; "
                          f"or a library's, e.g. timm:lion, pytorch_optimizer:Lion)")
    return _REGISTRY[name]


def optimizer_config_class(name: str, imports: Iterable[str] = ()) -> type:
    """The config dataclass of optimizer ``name``, after importing ``imports``."""
    import_modules(imports)
    return registered(name).config


def constructor_kwargs(entry: _Entry, cfg) -> dict:
    kwargs = {}
    for f in fields(entry.config):
        if f.name in SUITE_KEYS or (entry.accepts is not None and f.name not in entry.accepts):
            continue
        value = getattr(cfg, f.name)
        kwargs[f.name] = tuple(value) if isinstance(value, list) or type(value).__name__ == "ListConfig" else value
    return kwargs


def library_keys(name: str) -> frozenset[str]:
    """The ``optim`` keys of ``name`` that its library judges (its constructor's own: none for a
    registered optimizer, whose config's ``check`` judges every key)."""
    entry = registered(name)
    if entry.accepts is None:
        return frozenset()
    return frozenset(f.name for f in fields(entry.config)) - {f.name for f in fields(OptimConfig)}


def optimizer_class(name: str, imports: Iterable[str] = ()) -> Callable[..., Any]:
    """The class (or timm's partial of one) of optimizer ``name``, after importing ``imports``."""
    import_modules(imports)
    return registered(name).cls


def optimizer_capabilities(name: str, imports: Iterable[str] = ()) -> Capabilities:
    """The declared :class:`~.capabilities.Capabilities` of optimizer ``name``."""
    return capabilities_of(optimizer_class(name, imports))


def check_optim_config(cfg) -> None:
    """What the config schema cannot check, torch-free: the optimizer's own rules (its config's
    ``check``; a library's: none, :class:`LibraryOptimConfig`), the rule's name, a class that
    cannot run here at all (its :mod:`.capabilities`' ``refused``), the switch's
    preconditions.  Whether the optimizer accepts these hyper-parameters is its constructor's
    (and first step's) say: :func:`imagenet_repro.optim.probe.check_by_probe`."""
    entry = registered(cfg.name)
    entry.config.check(cfg)
    if cfg.normalized_rule not in RULES:
        raise ConfigError(f"optim.normalized_rule must be {' or '.join(RULES)} (got {cfg.normalized_rule!r})")
    caps = capabilities_of(entry.cls)
    if caps.refused:
        raise ConfigError(f"optim: {cfg.name} {caps.refused}")
    if entry.accepts is not None and "weight_decay" not in entry.accepts:
        if cfg.weight_decay != 0 or cfg.corrected_decay:
            raise ConfigError(f"optimizer {cfg.name!r} takes no weight_decay: set optim.weight_decay=0 "
                              f"and optim.corrected_decay=false")
    if cfg.corrected_decay and getattr(cfg, "corrected_weight_decay", False):
        raise ConfigError("optim.corrected_decay and the library's own optim.corrected_weight_decay are both on; "
                          "keep one (corrected_decay corrects normalized groups only, as the paper does)")
