"""Paired statistics (plain vs corrected optimizer, per seed) and the time-to-target setting.

Runs of two optimizers with the same seed share the initialisation and the data order, so
the natural statistic is the per-seed difference ``corrected - plain``.  For every pair of
:data:`CORRECTED` present in a sweep, :func:`paired_table` compares

* ``same (lr, wd)``: each (lr, wd) where both optimizers have done runs, and
* ``each at its best``: each optimizer at its own best config (:func:`aggregate.select_best`),

on :data:`PAIRED_METRICS`, over the seeds done in both configs: the mean difference, its
sample std, a 95% confidence interval from Student's t distribution
(``scipy.stats.t.ppf(0.975, n - 1)``, two-sided: mean ± t · sd / √n) and the number of
seeds ``n``.  An interval needs n >= 2; ``includes_zero`` says when it contains 0 (no
significant difference at the 5% level).

The top-1 target of time-to-target is the sweep spec's optional ``target_top1`` (a field of
the spec schema, :class:`imagenet_repro.sweep.schema.SpecSchema`, recorded in the sweep's
``sweep.json``: :mod:`imagenet_repro.sweepdir`); without it the ``target_top1`` of the runs'
dataset's registry entry (:mod:`imagenet_repro.data.datasets`) applies.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from imagenet_repro.data.datasets import get_dataset
from imagenet_repro.errors import ConfigError

# plain optimizer -> its corrected version (λ_t = λ γ_t / γ_max); add a line per new pair
CORRECTED: dict[str, str] = {"sgd": "sgdc", "adamw": "adamc"}
# a run with optim.corrected_decay: true is labelled <optim.name><SWITCHED> (aggregate's optimizer
# column), and pairs with <optim.name>: the switch's corrected version of any optimizer
SWITCHED = "+corrected"


def optimizer_label(name: str, corrected_decay: bool) -> str:
    """The analysis' name of a run's optimizer: ``optim.name``, marked when the switch is on."""
    return f"{name}{SWITCHED}" if corrected_decay else name


def corrected_pairs(present) -> dict[str, str]:
    """plain -> corrected of :data:`CORRECTED`, and each ``X`` -> ``X+corrected`` of the optimizers ``present``."""
    return {**CORRECTED, **{n[: -len(SWITCHED)]: n for n in present if n.endswith(SWITCHED)}}


def plain_of(optimizer: str) -> str | None:
    """The plain optimizer ``optimizer`` is the corrected version of (None: it is no corrected one)."""
    if optimizer.endswith(SWITCHED):
        return optimizer[: -len(SWITCHED)]
    return {c: p for p, c in CORRECTED.items()}.get(optimizer)

# metric column of runs.parquet -> label in the printed table and the report
PAIRED_METRICS: dict[str, str] = {
    "final_top1": "final top-1 (pp)",
    "grad_norm_tail_ratio": "||g|| tail ratio",
    "final_eval_loss": "final val loss",
}
CI_LEVEL = 0.95
CI_METHOD = "t"  # Student's t interval on the per-seed differences (scipy.stats.t)
CI_DESCRIPTION = "95% CI: Student's t interval on the per-seed differences (scipy.stats.t, two-sided)"


PAIRED_COLUMNS = ["comparison", "plain", "corrected", "metric", "plain_lr_max", "plain_wd", "corrected_lr_max",
                  "corrected_wd", "n_seeds", "plain_mean", "corrected_mean", "mean_diff", "sd_diff", "ci_low",
                  "ci_high", "includes_zero", "ci_method", "seeds"]


def default_target(dataset: Any) -> float:
    """The time-to-target default when the spec has no target_top1: the dataset's registry
    entry's ``target_top1`` (imagenet: AlgoPerf's 77.43%; fashion_mnist: 75%, the demo's;
    NaN for a dataset without one, or one that is no longer registered)."""
    try:
        return float(get_dataset(dataset).target_top1)
    except ConfigError:
        return math.nan


def time_to_target(steps: np.ndarray, top1: np.ndarray, target: float) -> float:
    """The first eval step whose top-1 >= ``target`` (NaN if never or no target)."""
    if not np.isfinite(target):
        return math.nan
    hit = np.flatnonzero(np.asarray(top1, dtype=np.float64) >= target)
    return float(np.asarray(steps)[hit[0]]) if hit.size else math.nan


def t_interval(diffs: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float, float, float]:
    """(mean, sample sd, low, high) of the t interval; low/high NaN for fewer than 2 values."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def _pair(done: pd.DataFrame, plain: str, corrected: str, p_cfg: tuple[float, float], c_cfg: tuple[float, float],
          comparison: str) -> list[dict[str, Any]]:
    a = done[(done["optimizer"] == plain) & (done["lr_max"] == p_cfg[0]) & (done["wd"] == p_cfg[1])]
    b = done[(done["optimizer"] == corrected) & (done["lr_max"] == c_cfg[0]) & (done["wd"] == c_cfg[1])]
    both = a.merge(b, on="seed", suffixes=("_p", "_c")).sort_values("seed")
    rows = []
    for metric in PAIRED_METRICS:
        pair = both[["seed", f"{metric}_p", f"{metric}_c"]].dropna()
        diffs = (pair[f"{metric}_c"] - pair[f"{metric}_p"]).to_numpy(np.float64)
        mean, sd, low, high = t_interval(diffs)
        rows.append({"comparison": comparison, "plain": plain, "corrected": corrected, "metric": metric,
                     "plain_lr_max": p_cfg[0], "plain_wd": p_cfg[1], "corrected_lr_max": c_cfg[0], "corrected_wd": c_cfg[1],
                     "n_seeds": int(diffs.size), "plain_mean": float(pair[f"{metric}_p"].mean()),
                     "corrected_mean": float(pair[f"{metric}_c"].mean()), "mean_diff": mean, "sd_diff": sd,
                     "ci_low": low, "ci_high": high,
                     "includes_zero": bool(low <= 0 <= high) if np.isfinite(low) else None,
                     "ci_method": CI_METHOD, "seeds": " ".join(str(int(s)) for s in pair["seed"])})
    return rows


def paired_table(runs: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """Per pair of :func:`corrected_pairs`, per comparison and metric: the per-seed difference statistics.

    Only ``done`` runs enter; a seed counts when it is done in both configs (and the metric is finite).
    """
    done = runs[runs["state"] == "done"].dropna(subset=["optimizer", "lr_max", "wd", "seed"])
    rows: list[dict[str, Any]] = []
    present = set(done["optimizer"])
    for plain, corrected in corrected_pairs(present).items():
        if plain not in present or corrected not in present:
            continue
        cfg_p = set(map(tuple, done[done["optimizer"] == plain][["lr_max", "wd"]].drop_duplicates().to_numpy()))
        cfg_c = set(map(tuple, done[done["optimizer"] == corrected][["lr_max", "wd"]].drop_duplicates().to_numpy()))
        for cfg in sorted(cfg_p & cfg_c):
            rows += _pair(done, plain, corrected, cfg, cfg, "same (lr, wd)")
        bp, bc = best[best["optimizer"] == plain], best[best["optimizer"] == corrected]
        if len(bp) and len(bc):
            rows += _pair(done, plain, corrected, (float(bp["lr_max"].iloc[0]), float(bp["wd"].iloc[0])),
                          (float(bc["lr_max"].iloc[0]), float(bc["wd"].iloc[0])), "each at its best")
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _verdict(r: pd.Series) -> str:
    if r["n_seeds"] < 2 or not np.isfinite(r["ci_low"]):
        return "too few paired seeds for an interval"
    if r["includes_zero"]:
        return "interval includes 0: no significant difference"
    return f"{r['corrected']} {'higher' if r['mean_diff'] > 0 else 'lower'} (interval excludes 0)"


def paired_display(paired: pd.DataFrame) -> pd.DataFrame:
    """The paired table as strings for printing and the report (top-1 in percentage points)."""
    lines = []
    for _, r in paired.iterrows():
        scale, fmt = (100.0, ".2f") if r["metric"] == "final_top1" else (1.0, ".4g")

        def f(v: float) -> str:
            return "-" if v is None or not np.isfinite(v) else f"{scale * v:{fmt}}"

        config = (f"lr={r['plain_lr_max']:g} wd={r['plain_wd']:g}" if r["comparison"] == "same (lr, wd)" else
                  f"{r['plain']}: lr={r['plain_lr_max']:g} wd={r['plain_wd']:g}; "
                  f"{r['corrected']}: lr={r['corrected_lr_max']:g} wd={r['corrected_wd']:g}")
        lines.append({"pair": f"{r['corrected']} - {r['plain']}", "comparison": r["comparison"], "config": config,
                      "metric": PAIRED_METRICS.get(r["metric"], r["metric"]), "n seeds": int(r["n_seeds"]),
                      "mean diff": f(r["mean_diff"]), "95% CI (t)": f"[{f(r['ci_low'])}, {f(r['ci_high'])}]",
                      "verdict": _verdict(r)})
    return pd.DataFrame(lines)


def format_paired(paired: pd.DataFrame) -> str:
    if paired.empty:
        return "(no plain/corrected optimizer pair with done runs: " + \
            ", ".join(f"{p}/{c}" for p, c in CORRECTED.items()) + f", X/X{SWITCHED})"
    return (f"paired differences (corrected - plain, per seed; {CI_DESCRIPTION}):\n"
            + paired_display(paired).to_string(index=False))
