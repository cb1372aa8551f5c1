"""Agreement between measured per-layer ||g||/||x|| and the theory's steady-state ratio.

For a normalized layer the theory balances squared norms: at equilibrium
``E||g_t||² / ||x_t||² = r_t²`` with ``r_t`` the optimizer's ``predicted_ratio`` (e.g.
sqrt(2λ/γ_t) for SGD, sqrt(2λ/γ_max) for SGDC).  ||g|| is heavy-tailed, so its median reads
10-25% under the root mean square; the measured ratio is therefore the root mean square::

    measured  = sqrt(mean_t (||g_t|| / ||x_t||)²)        over the steady-state window
    rel_err   = sqrt(mean_t (||g_t|| / (||x_t|| r_t))²) - 1

which for constant ||x|| and r is ``sqrt(mean ||g||²) / ||x|| / r - 1``.  The window is a
fraction of the run's steps: the second half for a flat LR, 20%-60% otherwise (cosine).

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
FLAT_WINDOW = (0.5, 1.0)
DEFAULT_WINDOW = (0.2, 0.6)


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
    """Per-layer table (layer, n_points, measured, predicted, rel_err) from a layers table.

    Layers whose prediction is NaN (no theory for that optimizer) are left out.
    """
    _check_window(window)
    codes, names = pd.factorize(layers["layer"], sort=False)
    n, measured, pred, rel_err = agreement_arrays(
        layers["step"].to_numpy(), codes, layers["grad_norm"].to_numpy(), layers["weight_norm"].to_numpy(),
        layers["predicted_ratio"].to_numpy(), window, total_steps)
    present = n > 0
    return pd.DataFrame({"layer": np.asarray(names, dtype=object)[present], "n_points": n[present].astype(np.int64),
                         "measured": measured[present], "predicted": pred[present], "rel_err": rel_err[present]})


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
        layers = pq.read_table(path, columns=LAYER_READ_COLUMNS).to_pandas()
    except Exception as exc:
        raise ConfigError(f"{path}: unreadable parquet: {first_line(exc)}") from None
    table = agreement_from_layers(layers, window, total_steps=_total_steps(run_dir))
    table.attrs["window"] = tuple(window)
    table.attrs["summary"] = summarize_agreement(table)
    return table


def summarize_agreement(table: pd.DataFrame) -> dict[str, float]:
    """Summary over layers: median |err|, mean err, max |err| and the number of layers."""
    err = table["rel_err"].to_numpy(np.float64) if len(table) else np.array([])
    if err.size == 0:
        return {"n_layers": 0, "median_abs_err": math.nan, "mean_err": math.nan, "max_abs_err": math.nan}
    return {"n_layers": int(err.size), "median_abs_err": float(np.median(np.abs(err))),
            "mean_err": float(err.mean()), "max_abs_err": float(np.abs(err).max())}


def format_summary(summary: dict[str, float]) -> str:
    return (f"{summary['n_layers']} layers: median |err| {100 * summary['median_abs_err']:.1f}%, "
            f"mean err {100 * summary['mean_err']:+.1f}%, max |err| {100 * summary['max_abs_err']:.1f}%")


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
