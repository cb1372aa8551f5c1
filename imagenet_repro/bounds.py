"""Numeric bounds: the range of one knob (:class:`Bound`), the upper ends several knobs share,
and the check of a table of them (:func:`check_bounds`). The tables themselves live with what
they bound: ``config.BOUNDS`` (a run), ``sweep.schema.SPEC_BOUNDS`` (a spec); ``repro data
write`` checks its knobs here too. At the bottom of the package: nothing of it is imported."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from imagenet_repro.errors import ConfigError


def _in(value: float, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> bool:
    return (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)


def _num(b: float) -> str:
    return str(b) if isinstance(b, int) else f"{b:g}"


@dataclass(frozen=True)
class Bound:
    """The range of one numeric knob, ``lo`` to ``hi`` (ends open with ``lo_open``/``hi_open``).

    ``why`` says what breaks above ``hi`` (printed with a value above it); ``interval``
    knobs (fractions) name both ends in every message, the others only the end broken."""

    lo: float
    hi: float
    why: str = ""
    lo_open: bool = False
    hi_open: bool = False
    interval: bool = False

    def problem(self, key: str, value: float) -> Optional[str]:
        if _in(value, self.lo, self.hi, self.lo_open, self.hi_open):
            return None
        if self.interval:
            ends = f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
            return f"{key} must be in {ends} (got {value})"
        if value < self.hi:  # below lo
            return f"{key} must be {'>' if self.lo_open else '>='} {_num(self.lo)} (got {value})"
        why = f": {self.why}" if self.why else ""
        return f"{key} must be {'<' if self.hi_open else '<='} {_num(self.hi)} (got {value}){why}"


# Upper bounds shared by several knobs, each from what the pipeline can take.
MAX_RES = 2048  # px: a decoded batch is batch x res^2 x 3 bytes per buffer slot (ffcv keeps 5)
MAX_BATCH = 1 << 20  # a batch is allocated whole by the loaders
MAX_COUNT = (1 << 31) - 1  # image and step counts: ffcv's sample indices are 32-bit
MAX_WORKERS = 1024  # processes (torchvision) or numba threads (ffcv, capped at the cores): no node has more cores
MAX_EPOCHS = 10_000
NO_LIMIT = math.inf  # any finite value works (the finite check still applies)

def check_bounds(values: dict[str, float], table: dict[str, Bound]) -> None:
    """ConfigError for the first value outside its bound (``values``: dotted key -> value;
    a key ``k[i]`` is checked against ``k[]``)."""
    for key, value in values.items():
        bound = table.get(re.sub(r"\[\d+\]$", "[]", key))
        if bound is not None and not isinstance(value, bool) and isinstance(value, (int, float)):
            problem = bound.problem(key, value)
            if problem is not None:
                raise ConfigError(problem)
