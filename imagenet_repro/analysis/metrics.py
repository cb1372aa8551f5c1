"""Small numeric helpers shared by aggregation and figures (numpy only, no pandas).

Windows are fractions of a run's steps: a row at step ``s`` of a run whose logged steps
span ``first..last`` sits at position ``p = (s - first) / (last - first + 1)`` in [0, 1).
For steps 0..99 the window [0.4, 0.6) holds steps 40..59 and [0.9, 1] holds 90..99.
"""
from __future__ import annotations

import math

import numpy as np

MID_WINDOW = (0.4, 0.6)
TAIL_WINDOW = (0.9, 1.0)


def positions(steps: np.ndarray, total_steps: int | None = None) -> np.ndarray:
    """Position in [0, 1) of each step; ``total_steps`` overrides the span seen in ``steps``."""
    steps = np.asarray(steps, dtype=np.float64)
    if steps.size == 0:
        return steps
    first = float(steps.min())
    span = float(total_steps) - first if total_steps else float(steps.max()) - first + 1.0
    return (steps - first) / max(span, 1.0)


def window_mask(pos: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Rows with ``a <= p < b`` (``b >= 1`` includes the last row)."""
    a, b = window
    return (pos >= a) & ((pos < b) | (b >= 1.0))


def tail_ratio(steps: np.ndarray, values: np.ndarray) -> float:
    """Mean over the last 10% of steps divided by the mean over the 40-60% window.

    Non-finite values (a diverged run's last rows) are left out of both means; NaN when
    either window is empty or the middle mean is 0.
    """
    values = np.asarray(values, dtype=np.float64)
    pos = positions(steps)
    finite = np.isfinite(values)
    mid = values[window_mask(pos, MID_WINDOW) & finite]
    tail = values[window_mask(pos, TAIL_WINDOW) & finite]
    if mid.size == 0 or tail.size == 0 or mid.mean() == 0:
        return math.nan
    return float(tail.mean() / mid.mean())


def bin_index(n: int, max_points: int) -> np.ndarray:
    """Bin of each of ``n`` consecutive rows, ``min(n, max_points)`` bins of near-equal size."""
    bins = min(n, max_points)
    return (np.arange(n, dtype=np.int64) * bins) // max(n, 1)


def binned_means(columns: dict[str, np.ndarray], max_points: int) -> dict[str, np.ndarray]:
    """Means of consecutive rows in at most ``max_points`` bins, for every column.

    Non-finite values are ignored within a bin (a bin holding none gives NaN).
    """
    n = len(next(iter(columns.values()))) if columns else 0
    if n == 0:
        return {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    idx = bin_index(n, max_points)
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    out = {}
    for key, col in columns.items():
        col = np.asarray(col, dtype=np.float64)
        ok = np.isfinite(col)
        sums = np.add.reduceat(np.where(ok, col, 0.0), starts)
        counts = np.add.reduceat(ok.astype(np.float64), starts)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[key] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out
