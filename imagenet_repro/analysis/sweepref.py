"""Where a sweep's runs live: the sweep name and its runs folder, from the spec YAML.

This is the only place the analysis looks at a sweep spec.  It takes ``name`` and
``runs_root`` from :func:`imagenet_repro.sweep.spec.load_spec` (which checks the spec and
raises a one-line ConfigError); everything else about a run (optimizer, lr, weight decay,
seed, ...) comes from the run's own ``config.yaml``, so the analysis also works on run
folders written by hand or by an older spec.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SweepRef:
    name: str
    runs_dir: Path  # <runs_root>/<name>: one sub-folder per run


def sweep_ref(spec) -> SweepRef:
    """The sweep name and its runs folder, from the spec YAML at ``spec`` (or a loaded
    :class:`~imagenet_repro.sweep.spec.SweepSpec`, e.g. the rehearsal's)."""
    from imagenet_repro.sweep.spec import load_spec

    if hasattr(spec, "sweep_dir"):
        return SweepRef(name=spec.name, runs_dir=spec.sweep_dir)
    loaded = load_spec(spec)
    return SweepRef(name=loaded.name, runs_dir=loaded.sweep_dir)
