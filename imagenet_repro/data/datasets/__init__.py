"""Dataset registry: a data set is one :class:`DatasetEntry` in one file, as an optimizer is one
registered class (:mod:`imagenet_repro.optim.registry`).

An entry says everything the suite needs of a data set: its name (``data.dataset``), its
normalisation, its class count, where its files come from, how ``repro data write`` writes
it to FFCV ``.beton`` files, how the torchvision backend reads it, and what the rehearsal
and the paired statistics need (stand-in image size, time-to-target).  Everything else
(the FFCV loaders, augmentations, seeding, DDP sharding) is the same for every data set.

``data.dataset`` (and ``repro data write --source``) is looked up in this order:

1. a registered name: the built-ins (``imagenet``, ``imagefolder``, ``fashion_mnist``: the
   modules of this folder) and anything registered by a module that an installed package
   names under the entry-point group ``imagenet_repro.data.datasets``;
2. ``<file.py or module>:<name>``: the file (relative to the working directory) or module is
   imported first, and registers ``<name>``, e.g. ``examples/imagenette.py:imagenette``.

On the command line ``-`` and ``_`` are the same (``--source fashion-mnist``).  This module
and the built-in entries import no torch; their writers and readers load it when called.
See docs/datasets.md.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from imagenet_repro.errors import ConfigError
from imagenet_repro.plugins import import_user_module, load_entry_points

ENTRY_POINT_GROUP = "imagenet_repro.data.datasets"
BUILTIN_MODULES = tuple(f"imagenet_repro.data.datasets.{m}" for m in ("imagenet", "fashion_mnist"))
PATH_KINDS = ("folder", "any")


@dataclass(frozen=True)
class WriteOptions:
    """``repro data write``'s knobs (ffcv-imagenet's); each writer uses those that apply to it."""

    max_resolution: int = 256
    jpeg_quality: int = 90
    compress_probability: float = 0.5
    num_workers: int = 2
    size: int = 32


@dataclass(frozen=True)
class DatasetEntry:
    """One data set.  ``write(src, out, options)`` writes it to ``.beton`` files (``src``: where
    its files are, None: look them up as ``source`` says); ``read(path, split)`` is the
    torchvision backend's ``(load(i) -> uint8 CHW tensor, labels int64 array)`` of
    ``data.train_path``/``val_path`` (``split``: ``train`` or ``val``)."""

    name: str
    num_classes: Optional[int]  # what data.num_classes must be; None: any (labels from class folders)
    mean: tuple[float, float, float]  # per-channel normalisation on the 0..1 scale
    std: tuple[float, float, float]
    source: str  # where its files come from (one line: docs, --help, errors)
    write: Callable[[Optional[str], str, WriteOptions], Any]
    read: Callable[[str, str], tuple[Callable[[int], Any], Any]]
    path_kind: str = "folder"  # torchvision backend's train_path/val_path: folder (ImageFolder root) | any
    small_images: bool = False  # rehearsal stand-ins: data.max_res px squares (else ImageNet-sized photos)
    target_top1: float = math.nan  # time-to-target default of the paired statistics (NaN: none)

    @property
    def cli_name(self) -> str:
        return self.name.replace("_", "-")


_REGISTRY: dict[str, DatasetEntry] = {}
_LOADED: set[str] = set()


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Register ``entry`` under ``entry.name`` (a module-level call of the dataset's file)."""
    if ":" in entry.name or not entry.name:
        raise ValueError(f"dataset name {entry.name!r}: non-empty, and ':' is reserved for FILE.py:NAME")
    if entry.path_kind not in PATH_KINDS:
        raise ValueError(f"dataset {entry.name!r}: path_kind must be one of {PATH_KINDS}")
    if len(entry.mean) != 3 or len(entry.std) != 3 or min(entry.std) <= 0:
        raise ValueError(f"dataset {entry.name!r}: mean and std are 3 per-channel values, std > 0")
    old = _REGISTRY.get(entry.name)
    if old is not None and old != entry:
        raise ValueError(f"dataset {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def unregister_dataset(name: str) -> None:
    """Remove a registered dataset (tests register throw-away ones and clean up)."""
    _REGISTRY.pop(name, None)


def _load_builtin() -> None:
    if "builtin" not in _LOADED:
        _LOADED.add("builtin")
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def _load_entry_points() -> None:
    load_entry_points(ENTRY_POINT_GROUP, _LOADED)


def _import(ref: str) -> None:
    """Import the module part of ``FILE.py:NAME`` / ``module:NAME`` once per process."""
    import_user_module(ref, "data.dataset", "_repro_dataset")


def available_datasets() -> list[str]:
    """Registered names (built-ins, entry points, and files imported so far)."""
    _load_builtin()
    _load_entry_points()
    return sorted(_REGISTRY)


def get_dataset(name: Any) -> DatasetEntry:
    """The entry of ``data.dataset`` = ``name`` (a registered name or ``FILE.py:NAME``); ConfigError if none."""
    name = str(name)
    _load_builtin()
    ref, _, short = name.rpartition(":")
    if ref:
        _import(ref)
    else:
        short = name.replace("-", "_") if name.replace("-", "_") in _REGISTRY else name
    if short not in _REGISTRY:
        _load_entry_points()
    if short not in _REGISTRY:
        where = f"{ref} registers no dataset {short!r}; " if ref else ""
        raise ConfigError(f"unknown dataset {name!r}: {where}known: {', '.join(sorted(_REGISTRY))}, "
                          f"or FILE.py:NAME / module:NAME (see docs/datasets.md)")
    return _REGISTRY[short]


def mean_std(name: Any) -> tuple[Any, Any]:
    """Per-channel normalisation on the 0..255 scale (numpy arrays), as both loader backends use it."""
    import numpy as np

    entry = get_dataset(name)
    return np.array(entry.mean) * 255, np.array(entry.std) * 255


__all__ = ["DatasetEntry", "WriteOptions", "available_datasets", "get_dataset", "mean_std", "register_dataset",
           "unregister_dataset", "ENTRY_POINT_GROUP"]
