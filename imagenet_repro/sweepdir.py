"""The sweep folder contract: what a sweep folder holds beside its run folders.

    <runs_root>/<name>/
      sweep.json     the sweep's description (this module): name, axes, target_top1, stages, spec
      <run_id>/      one run folder per grid point (the run-folder contract: :mod:`imagenet_repro.rundir`)
      .plan.json, .lock, .claims, .submitit/   the launcher's own files (hidden)

The launcher writes ``sweep.json`` when it submits (``repro sweep``, the rehearsal, ``repro
demo``: all through :func:`imagenet_repro.sweep.launcher.execute`), from the loaded spec
(:meth:`imagenet_repro.sweep.schema.SweepSpec.description`).  The analysis reads only this
file and the run folders: it never reads a spec, so ``analysis`` does not import ``sweep``.
A sweep folder made before ``sweep.json`` existed has none: ``repro aggregate SPEC`` (or
``figures``/``report``) with its spec writes it; the analysis of the bare folder says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from imagenet_repro.errors import ConfigError
from imagenet_repro.files import atomic_write_json

SWEEP_FILE = "sweep.json"
FORMAT = 1  # the layout of sweep.json; a reader refuses another


@dataclass(frozen=True)
class SweepDescription:
    """What the analysis needs of a sweep: where its runs are, its name, axes and target."""

    name: str
    folder: Path  # the sweep folder: <runs_root>/<name>
    axes: dict = field(default_factory=dict)  # canonical dotted key -> its values, in spec order
    target_top1: Optional[float] = None  # time-to-target threshold (fraction); None: the dataset's default
    stages: tuple = ()  # ({"number", "name", "seeds", "at", "neighbours"}, ...); empty: one grid
    spec: str = ""  # the spec file it was written from (shown in messages only)

    def as_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "name": self.name, "axes": self.axes, "target_top1": self.target_top1,
                "stages": [dict(s) for s in self.stages], "spec": self.spec}


def write_description(desc: SweepDescription) -> bool:
    """Write ``<folder>/sweep.json`` unless it already says the same; True if it was written."""
    path = desc.folder / SWEEP_FILE
    new = json.loads(json.dumps(desc.as_json()))
    try:
        if json.loads(path.read_text()) == new:
            return False
    except (OSError, ValueError):
        pass
    desc.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, new)
    return True


def read_description(folder: str | Path) -> SweepDescription:
    """The description in a sweep folder; a missing folder or file is a one-line ConfigError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"no runs folder {folder} (has the sweep been launched?)")
    path = folder / SWEEP_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: no {SWEEP_FILE} (a sweep folder from before the launcher wrote one): "
                          f"run `repro aggregate SPEC` once with the sweep's spec to write it")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); `repro aggregate SPEC` with the sweep's spec rewrites it") \
            from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(raw.get("name"), str):
        raise ConfigError(f"{path}: not a sweep description of format {FORMAT}; `repro aggregate SPEC` with the "
                          f"sweep's spec rewrites it")
    return SweepDescription(name=raw["name"], folder=folder.resolve(), axes=dict(raw.get("axes") or {}),
                            target_top1=raw.get("target_top1"), stages=tuple(raw.get("stages") or ()),
                            spec=str(raw.get("spec") or ""))


def as_description(sweep: SweepDescription | str | Path) -> SweepDescription:
    """A description as it is, or the one in the sweep folder at ``sweep``."""
    return sweep if isinstance(sweep, SweepDescription) else read_description(sweep)
