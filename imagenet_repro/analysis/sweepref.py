"""Where a sweep's runs live: the sweep name and the runs folder, read from its spec YAML.

This is the only place the analysis looks at a sweep spec.  It needs two keys, ``name``
and ``runs_root`` (default ``runs``); everything else about a run (optimizer, lr, weight
decay, seed, ...) comes from the run's own ``config.yaml``.  Reading the YAML directly
keeps the analysis usable on any run folder, whatever else the spec format grows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imagenet_repro.config import ConfigError

DEFAULT_RUNS_ROOT = "runs"


@dataclass(frozen=True)
class SweepRef:
    name: str
    runs_dir: Path  # <runs_root>/<name>: one sub-folder per run


def sweep_ref(spec: str | Path) -> SweepRef:
    """The sweep name and its runs folder, from the spec YAML at ``spec``."""
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"sweep spec not found: {path}")
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # yaml errors of all kinds
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{path}: not valid YAML: {first}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    name = raw.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{path}: 'name' must be a non-empty sweep name without '/' (got {name!r})")
    runs_root = raw.get("runs_root", DEFAULT_RUNS_ROOT)
    if not isinstance(runs_root, str) or not runs_root:
        raise ConfigError(f"{path}: 'runs_root' must be a folder path (got {runs_root!r})")
    return SweepRef(name=name, runs_dir=Path(runs_root) / name)
