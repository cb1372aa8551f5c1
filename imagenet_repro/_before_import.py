"""Run a function just before a module's first import: a meta-path finder that steps aside after.

``import imagenet_repro`` arms two (:mod:`imagenet_repro._torchvision_compat`,
:mod:`imagenet_repro._numba_cache`), so that commands that never import those libraries do not
pay for the fixes they need.
"""
from __future__ import annotations

import importlib.abc
import sys
from typing import Callable


class _RunBeforeImport(importlib.abc.MetaPathFinder):
    """Runs ``fn`` when ``name`` is first imported, then steps aside."""

    def __init__(self, name: str, fn: Callable[[], object]) -> None:
        self.name, self.fn = name, fn

    def find_spec(self, name, path=None, target=None):
        if name == self.name:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            self.fn()
        return None  # the normal finders do the actual import


def run_before_first_import(name: str, fn: Callable[[], object]) -> None:
    """Arrange for ``fn()`` to run just before ``import name`` first happens (once; nothing if it has)."""
    if name in sys.modules:
        return
    if not any(isinstance(f, _RunBeforeImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _RunBeforeImport(name, fn))
