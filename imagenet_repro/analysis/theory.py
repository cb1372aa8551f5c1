"""Agreement between measured per-layer ||g||/||x|| and the theory's steady-state ratio.

For a normalized layer the theory balances squared norms: at equilibrium
``E||g_t||² / ||x_t||² = r_t²`` with ``r_t`` the optimizer's ``predicted_ratio`` (e.g.
sqrt(2λ/γ_t) for SGD, sqrt(2λ/γ_max) for SGDC).  ||g|| is heavy-tailed, so its median reads
10-25% under the root mean square; the measured ratio is therefore the root mean square::

    measured  = sqrt(mean_t (||g_t|| / ||x_t||)²)        over the steady-state window
    rel_err   = sqrt(mean_t (||g_t|| / (||x_t|| r_t))²) - 1

which for constant ||x|| and r is ``sqrt(mean ||g||²) / ||x|| / r - 1``.  The window is a
fraction of the run's steps: the second half for a flat LR, 20%-60% otherwise (cosine).

The rotation (the angle between x_t and x_{t+1}, ``angular_update``) is checked the same way
against ``predicted_rotation`` (:mod:`imagenet_repro.optim.equilibrium`, a mean-square
balance too): ``rotation_measured`` = sqrt(mean θ²), ``rotation_rel_err``.  It is the
theory's check for Adam-family optimizers, which have no closed-form ||g||/||x||.

:func:`verdict` puts the end of training in plain words: over :data:`LATE_WINDOW` (the last
20% of steps), is the measured ratio (else the rotation) within :data:`TOLERANCE` of the
steady-state prediction, i.e. is the end-of-training rise of ||g|| the one the
weight-decay/schedule theory predicts?

``python -m imagenet_repro.analysis.theory RUN_DIR [--window A B]`` prints the table.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from imagenet_repro import rundir
from imagenet_repro.analysis.metrics import positions, window_mask
from imagenet_repro.errors import ConfigError, first_line

LAYER_READ_COLUMNS = ["step", "layer", "grad_norm", "weight_norm", "predicted_ratio"]
ROTATION_READ_COLUMNS = ["angular_update", "predicted_rotation"]  # absent in run folders written before them
assert set(LAYER_READ_COLUMNS + ROTATION_READ_COLUMNS) <= set(rundir.LAYERS_SCHEMA)
FLAT_WINDOW = (0.5, 1.0)
DEFAULT_WINDOW = (0.2, 0.6)
LATE_WINDOW = (0.8, 1.0)  # "the end of training" of the verdict
TOLERANCE = 0.25  # the verdict's: |median relative error over layers| within 25%
ROTATION_COLUMNS = ["rotation_n_points", "rotation_measured", "rotation_predicted", "rotation_rel_err"]


def default_window(schedule_name: str | None) -> tuple[float, float]:
    """Steady-state window: second half for a flat LR, 20%-60% for cosine and the rest."""
    return FLAT_WINDOW if schedule_name == "flat" else DEFAULT_WINDOW


def _check_window(window: tuple[float, float]) -> tuple[float, float]:
    a, b = float(window[0]), float(window[1])
    if not (0.0 <= a < b <= 1.0):
        raise ConfigError(f"theory window must satisfy 0 <= a < b <= 1 (got {a}, {b})")
    return a, b


def agreement_arrays(step: np.ndarray, codes: np.ndarray, grad_norm: np.ndarray, weight_norm: np.ndarray,
                     predicted: np.ndarray, window: tuple[float, float], total_steps: int | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per layer code 0..max(codes): (n_points, measured, predicted, rel_err); NaN where no point.

    Rows outside ``window`` or whose prediction is NaN/non-positive are left out.
    """
    a, b = _check_window(window)
    n_codes = int(codes.max()) + 1 if codes.size else 0
    keep = window_mask(positions(step, total_steps), (a, b))
    g, x, r = (np.asarray(v, dtype=np.float64) for v in (grad_norm, weight_norm, predicted))
    with np.errstate(invalid="ignore", divide="ignore"):
        measured_sq = (g / x) ** 2
        scaled_sq = measured_sq / r**2
    ok = keep & np.isfinite(scaled_sq) & np.isfinite(r) & (r > 0)
    c = codes[ok]
    n = np.bincount(c, minlength=n_codes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        measured = np.sqrt(np.bincount(c, weights=measured_sq[ok], minlength=n_codes) / n)
        pred = np.sqrt(np.bincount(c, weights=r[ok] ** 2, minlength=n_codes) / n)
        rel_err = np.sqrt(np.bincount(c, weights=scaled_sq[ok], minlength=n_codes) / n) - 1.0
    return n, measured, pred, rel_err


def agreement_from_layers(layers: pd.DataFrame, window: tuple[float, float],
                          total_steps: int | None = None) -> pd.DataFrame:
    """Per-layer table (layer, n_points, measured, predicted, rel_err, and the same for the
    rotation: :data:`ROTATION_COLUMNS`) from a layers table.

    Layers with neither a ratio nor a rotation prediction (no theory) are left out; a layer
    with only one of them has NaN in the other's columns.
    """
    _check_window(window)
    codes, names = pd.factorize(layers["layer"], sort=False)
    step = layers["step"].to_numpy()
    n, measured, pred, rel_err = agreement_arrays(
        step, codes, layers["grad_norm"].to_numpy(), layers["weight_norm"].to_numpy(),
        layers["predicted_ratio"].to_numpy(), window, total_steps)
    if "angular_update" in layers and "predicted_rotation" in layers:
        rot = agreement_arrays(step, codes, layers["angular_update"].to_numpy(), np.ones(len(layers)),
                               layers["predicted_rotation"].to_numpy(), window, total_steps)
    else:
        rot = tuple(np.zeros(len(names)) if i == 0 else np.full(len(names), np.nan) for i in range(4))
    present = (n > 0) | (rot[0] > 0)
    table = pd.DataFrame({"layer": np.asarray(names, dtype=object)[present], "n_points": n[present].astype(np.int64),
                          "measured": measured[present], "predicted": pred[present], "rel_err": rel_err[present]})
    for name, values in zip(ROTATION_COLUMNS, rot):
        table[name] = values[present].astype(np.int64) if name == "rotation_n_points" else values[present]
    return table


def _total_steps(run_dir: Path) -> int | None:
    path = run_dir / rundir.STEPS
    if not path.is_file():
        return None
    steps = pq.read_table(path, columns=["step"]).column("step").to_numpy()
    return int(steps.max()) + 1 if steps.size else None


def _schedule_name(run_dir: Path) -> str | None:
    try:
        return str(OmegaConf.select(OmegaConf.load(run_dir / rundir.CONFIG), "schedule.name"))
    except Exception:
        return None


def theory_agreement(run_dir: str | Path, window: tuple[float, float] | None = None) -> pd.DataFrame:
    """Per-normalized-layer relative error of the measured ||g||/||x|| against the theory.

    ``window`` (fractions of the run's steps) defaults to :func:`default_window` of the run's
    schedule.  The frame's ``attrs`` hold the window used and the summary over layers.
    """
    run_dir = Path(run_dir)
    path = run_dir / rundir.LAYERS
    if not path.is_file():
        raise ConfigError(f"no {rundir.LAYERS} in {run_dir}")
    if window is None:
        window = default_window(_schedule_name(run_dir))
    try:
        names = set(pq.ParquetFile(path).schema_arrow.names)
        columns = LAYER_READ_COLUMNS + [c for c in ROTATION_READ_COLUMNS if c in names]
        layers = pq.read_table(path, columns=columns).to_pandas()
    except Exception as exc:
        raise ConfigError(f"{path}: unreadable parquet: {first_line(exc)}") from None
    table = agreement_from_layers(layers, window, total_steps=_total_steps(run_dir))
    table.attrs["window"] = tuple(window)
    table.attrs["summary"] = summarize_agreement(table)
    return table


def _summary(err: np.ndarray, prefix: str = "") -> dict[str, float]:
    err = err[np.isfinite(err)]
    if err.size == 0:
        return {f"{prefix}n_layers": 0, f"{prefix}median_abs_err": math.nan, f"{prefix}mean_err": math.nan,
                f"{prefix}median_err": math.nan, f"{prefix}max_abs_err": math.nan}
    return {f"{prefix}n_layers": int(err.size), f"{prefix}median_abs_err": float(np.median(np.abs(err))),
            f"{prefix}mean_err": float(err.mean()), f"{prefix}median_err": float(np.median(err)),
            f"{prefix}max_abs_err": float(np.abs(err).max())}


def summarize_agreement(table: pd.DataFrame) -> dict[str, float]:
    """Summary over layers of the ratio's error (median |err|, mean err, median err, max |err|,
    number of layers) and, with the ``rotation_`` prefix, of the rotation's."""
    def col(name: str) -> np.ndarray:
        return table[name].to_numpy(np.float64) if name in table and len(table) else np.array([])

    return {**_summary(col("rel_err")), **_summary(col("rotation_rel_err"), "rotation_")}


def verdict(late: dict[str, float], tolerance: float = TOLERANCE, window: tuple[float, float] = LATE_WINDOW) -> str:
    """Plain words for one optimizer's end of training, from :func:`summarize_agreement` of the
    :data:`LATE_WINDOW`: is the measured ||g||/||x|| (else, for Adam, the rotation) within
    ``tolerance`` (median signed error over layers) of the steady-state prediction?"""
    part = f"over the last {100 * (window[1] - window[0]):.0f}% of steps"
    tol = f"±{100 * tolerance:.0f}%"
    ratio, rot = late.get("median_err", math.nan), late.get("rotation_median_err", math.nan)
    rot_text = (f"; its rotation per step is {100 * rot:+.0f}% off the predicted one" if math.isfinite(rot) else "")
    if math.isfinite(ratio):
        if abs(ratio) <= tolerance:
            return (f"as the theory predicts: {part} the measured ||g||/||x|| is within {tol} of the steady-state "
                    f"prediction (median over layers {100 * ratio:+.0f}%){rot_text}.")
        if ratio < 0:
            return (f"the rise goes the theory's way but falls short of it: {part} the measured ||g||/||x|| is "
                    f"{100 * ratio:+.0f}% below the steady-state prediction (tolerance {tol}): γ_t falls faster than "
                    f"the weight norm can follow, so the weights lag the moving steady state{rot_text}.")
        return (f"not what the theory explains: {part} the measured ||g||/||x|| is {100 * ratio:+.0f}% above the "
                f"steady-state prediction (tolerance {tol}){rot_text}.")
    if math.isfinite(rot):
        if abs(rot) <= tolerance:
            return (f"no closed form for ||g|| under this optimizer, but {part} the rotation per step the "
                    f"weight-decay/schedule theory predicts holds within {tol} (median over layers {100 * rot:+.0f}%): "
                    f"the layers sit at the equilibrium the decay and γ_t set, so the end-of-training ||g|| is that "
                    f"equilibrium's.")
        return (f"no closed form for ||g|| under this optimizer, and {part} the rotation per step is {100 * rot:+.0f}% "
                f"off the predicted one (tolerance {tol}): the end-of-training behaviour is not the equilibrium the "
                f"theory describes" + (": the weights lag the moving steady state as γ_t falls." if rot < 0 else "."))
    return "no theory for this optimizer's normalized layers."


def format_summary(summary: dict[str, float]) -> str:
    parts = []
    if summary.get("n_layers", 0):
        parts.append(f"{summary['n_layers']} layers: median |err| {100 * summary['median_abs_err']:.1f}%, "
                     f"mean err {100 * summary['mean_err']:+.1f}%, max |err| {100 * summary['max_abs_err']:.1f}%")
    if summary.get("rotation_n_layers", 0):
        parts.append(f"rotation: median |err| {100 * summary['rotation_median_abs_err']:.1f}% over "
                     f"{summary['rotation_n_layers']} layers")
    return "; ".join(parts) if parts else "no layer with a prediction"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imagenet_repro.analysis.theory", description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--window", nargs=2, type=float, metavar=("A", "B"), help="fractions of the run's steps")
    args = p.parse_args(argv)
    try:
        table = theory_agreement(args.run_dir, tuple(args.window) if args.window else None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    a, b = table.attrs["window"]
    with pd.option_context("display.max_rows", None, "display.width", 120, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    print(f"window {a:g}-{b:g} of the steps; {format_summary(table.attrs['summary'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
