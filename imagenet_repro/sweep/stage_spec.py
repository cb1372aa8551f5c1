"""The ``stages`` section of a sweep spec: two :class:`Stage` s that split the seed axis
(stage 1 runs the grid, stage 2 the best config; planned by :mod:`.stages`)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_repro.errors import ConfigError
from imagenet_repro.sweep.schema import same_value

STAGE_AXES = ("optim.name", "optim.lr", "optim.weight_decay", "seed")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Stage:
    number: int  # 1 or 2
    name: str
    seeds: tuple
    at: str  # "grid" (stage 1) or "best" (stage 2)
    neighbours: bool = False

    def title(self) -> str:
        return f"stage {self.number} ({self.name})"


def parse_stages(path: Path, raw: Any, axes: dict) -> tuple[Stage, ...]:
    """The ``stages`` section of a spec (None: no stages); any problem is a one-line ConfigError."""
    if raw is None:
        return ()

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{path}: stages: {message}")

    if not isinstance(raw, list) or len(raw) != 2:
        raise fail("must be a list of exactly two stages (stage 1: the grid; stage 2: at: best)")
    if "seed" not in axes:
        raise fail("need a seed axis to split between the stages")
    others = [k for k in axes if k not in STAGE_AXES]
    if others:
        raise fail(f"axis {others[0]} is not supported with stages (allowed: optimizer, optim.lr, "
                   f"optim.weight_decay, seed)")
    allowed = ({"name", "seeds", "at"}, {"name", "seeds", "at", "neighbours"})
    stages: list[Stage] = []
    for number, (entry, keys) in enumerate(zip(raw, allowed), start=1):
        where = f"stage {number}"
        if not isinstance(entry, dict):
            raise fail(f"{where} must be a mapping like {{name: search, seeds: [0]}}")
        unknown = sorted(set(entry) - keys)
        if unknown:
            raise fail(f"unknown key in {where}: {', '.join(unknown)} (allowed: {', '.join(sorted(keys))})")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise fail(f"{where}: name must be a word like search or confirm (got {name!r})")
        seeds = entry.get("seeds")
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                 for s in seeds):
            raise fail(f"{where} ({name}): seeds must be a non-empty list of integers (got {seeds!r})")
        if len(set(seeds)) != len(seeds):
            raise fail(f"{where} ({name}): repeated seeds {seeds}")
        outside = [s for s in seeds if not any(same_value(s, v) for v in axes["seed"])]
        if outside:
            raise fail(f"{where} ({name}): seed {outside[0]} is not in the seed axis {axes['seed']}")
        at = entry.get("at", "grid" if number == 1 else None)
        expected = "grid" if number == 1 else "best"
        if at != expected:
            raise fail(f"{where} ({name}): at must be {expected} (got {at!r})")
        neighbours = entry.get("neighbours", False)
        if not isinstance(neighbours, bool):
            raise fail(f"{where} ({name}): neighbours must be true or false (got {neighbours!r})")
        stages.append(Stage(number, name, tuple(seeds), at, neighbours))
    first, second = stages
    if first.name == second.name:
        raise fail(f"both stages are named {first.name}")
    both = sorted(set(first.seeds) & set(second.seeds))
    if both:
        raise fail(f"seed {both[0]} is in both stages")
    left = [s for s in axes["seed"] if s not in first.seeds + second.seeds]
    if left:
        raise fail(f"seed {left[0]} of the seed axis is in no stage")
    return tuple(stages)


