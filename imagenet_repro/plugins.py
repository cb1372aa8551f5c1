"""How a registry finds code outside the package: a user's ``.py`` file or module named in a
config, and the modules installed packages name under an entry-point group.  The optimizer
registry (``optim.imports``, ``imagenet_repro.optimizers``) and the dataset registry
(``data.dataset: FILE.py:NAME``, ``imagenet_repro.datasets``) both come here, so a plugin is
imported the same way, once per process, and a broken one is one ConfigError line."""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from imagenet_repro.errors import ConfigError, describe


def import_user_module(ref: str, key: str, prefix: str) -> None:
    """Import ``ref``, a path of a ``.py`` file (relative to the working directory, loaded as the
    module ``<prefix>_<stem>_<hash of its path>``) or a dotted module name, once per process.
    ``key`` names the config key in errors (``optim.imports``, ``data.dataset``)."""
    try:
        if ref.endswith(".py"):
            path = Path(ref).resolve()
            if not path.is_file():
                raise ConfigError(f"{key}: file not found: {ref}")
            name = f"{prefix}_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
            if name in sys.modules:
                return
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            importlib.import_module(ref)
    except ConfigError:
        raise
    except Exception as exc:  # ImportError, SyntaxError, an error the module raises
        raise ConfigError(f"{key}: cannot import {ref!r}: {describe(exc)}") from None


def load_entry_points(group: str, loaded: set[str]) -> None:
    """Import each module installed packages name under the entry-point ``group`` that is not
    in ``loaded`` yet (the registry's own record of what it has imported)."""
    for ep in importlib.metadata.entry_points(group=group):
        if ep.value in loaded:
            continue
        loaded.add(ep.value)
        try:
            ep.load()
        except Exception as exc:
            raise ConfigError(f"entry point {ep.name} = {ep.value} ({group}): {describe(exc)}") from None


__all__ = ["import_user_module", "load_entry_points"]
