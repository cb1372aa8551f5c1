""""Resumed exactly": the one comparison of two runs' tables, bit for bit.

A run killed (or interrupted) and resumed from its checkpoint must write the same steps,
per-layer and eval tables as the same config trained without a stop.  The rehearsal's
resume check (:mod:`imagenet_repro.sweep.rehearse`), the GPU benchmark's train part
(``benchmarks/gpu.py``) and the trainer's tests all ask :func:`compare_runs`.
"""
from __future__ import annotations

from pathlib import Path

from imagenet_repro import rundir
from imagenet_repro.errors import describe

RUN_TABLES = (rundir.STEPS, rundir.LAYERS, rundir.EVAL)
TIMING_COLUMNS = ("images_per_s",)  # wall-clock, not part of the exact comparison


def compare_runs(reference: str | Path, other: str | Path, tables: tuple[str, ...] = RUN_TABLES) -> list[str]:
    """Differences between the ``tables`` (default: steps, layers and eval) of two run folders,
    one line each (empty: equal bit for bit, the wall-clock :data:`TIMING_COLUMNS` aside)."""
    import pandas as pd

    problems = []
    for table in tables:
        try:
            a, b = pd.read_parquet(Path(reference) / table), pd.read_parquet(Path(other) / table)
        except Exception as exc:  # missing or unreadable
            problems.append(f"{table}: {describe(exc)}")
            continue
        drop = [c for c in TIMING_COLUMNS if c in a.columns]
        try:
            pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop, errors="ignore"), check_exact=True)
        except AssertionError as exc:
            problems.append(f"{table} differs after resume: {' '.join(str(exc).split())[:160]}")
    return problems


__all__ = ["RUN_TABLES", "TIMING_COLUMNS", "compare_runs"]
