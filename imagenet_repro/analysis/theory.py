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
from imagenet_repro.config import ConfigError

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


def agreement_from_layers(layers: pd.DataFrame, window: tuple[float, float],
                          total_steps: int | None = None) -> pd.DataFrame:
    """Per-layer table (layer, n_points, measured, predicted, rel_err) from a layers table.

    Layers whose prediction is NaN (no theory for that optimizer) are left out.
    """
    a, b = _check_window(window)
    cols = ["layer", "n_points", "measured", "predicted", "rel_err"]
    if layers.empty:
        return pd.DataFrame(columns=cols)
    step = layers["step"].to_numpy()
    keep = window_mask(positions(step, total_steps), (a, b))
    g = layers["grad_norm"].to_numpy(np.float64)[keep]
    x = layers["weight_norm"].to_numpy(np.float64)[keep]
    r = layers["predicted_ratio"].to_numpy(np.float64)[keep]
    names = layers["layer"].to_numpy()[keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        measured_sq = (g / x) ** 2
        scaled_sq = measured_sq / r**2
    ok = np.isfinite(scaled_sq) & np.isfinite(r) & (r > 0)
    frame = pd.DataFrame({"layer": names[ok], "m": measured_sq[ok], "s": scaled_sq[ok], "p": r[ok] ** 2})
    if frame.empty:
        return pd.DataFrame(columns=cols)
    grouped = frame.groupby("layer", sort=False)
    out = pd.DataFrame({
        "n_points": grouped.size(),
        "measured": np.sqrt(grouped["m"].mean()),
        "predicted": np.sqrt(grouped["p"].mean()),
        "rel_err": np.sqrt(grouped["s"].mean()) - 1.0,
    }).reset_index()
    return out[cols]


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
        raise ConfigError(f"{path}: unreadable parquet: {(str(exc).splitlines() or [''])[0]}") from None
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
