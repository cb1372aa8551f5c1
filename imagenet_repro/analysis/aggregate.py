"""Collect a sweep's run directories into tidy tables under ``results/<sweep>/``.

``aggregate_sweep(sweep)`` reads every run folder of a sweep (its folder ``<runs_root>/<name>``, described
by the ``sweep.json`` there: :mod:`imagenet_repro.sweepdir`; the analysis never reads a spec) and
writes, each file atomically:

    runs.parquet    one row per run: state, problem, config axes (optimizer: optim.name, with
                    "+corrected" when optim.corrected_decay is on (paired.optimizer_label); lr_max: the
                    schedule's peak γ_max = optim.lr, wd, seed and every config leaf as ``cfg.<dotted key>``), final/best top-1/top-5,
                    tail ratios (mean over the last 10% of steps / mean over 40-60%) of the
                    gradient norm, the normalized-layer ||g||/||x|| and the weight norm, and
                    the theory's median |relative error| over normalized layers
    curves.parquet  per run: the step curves as <= 200 binned means (source "train") and
                    the eval curve (source "eval"); their lr is the step's γ_t
    configs.csv     one row per (optimizer, lr_max, wd): seed counts by state, mean/std metrics
    summary.csv     per optimizer, its best (best_lr_max, best_wd) and mean ± std over that config's seeds
    paired.csv      per (plain, corrected) optimizer pair: per-seed differences of final
                    top-1, ||g|| tail ratio and final val loss at the same (lr_max, wd) and at
                    each one's best, with a 95% t interval (see :mod:`.paired`)
    environment.json  what the runs' environments share and where they differ (packages,
                    CPU capability or CUDA device/driver/cuDNN, thread counts; see
                    :mod:`.environment`); one warning line on stderr per differing key;
                    under ``ranks`` the runs' world sizes and per-rank batches (a warning
                    line when they differ, one per run resumed on another world size)

Time-to-target: each run's ``steps_to_target`` is the step of its first eval (intermediate
evals on the val subset included) with top-1 >= ``target_top1`` (the sweep's, from its spec, else
the dataset's default, see :mod:`.paired`), ``epochs_to_target`` the same in epochs; NaN
when not reached.  Per config, their means are over the seeds that reached it
(``n_reached_target`` of them).

Runs that are running, failed, diverged or corrupt (unreadable status/config/parquet) keep
their row, with ``state`` saying so; only ``done`` runs feed the metrics of a config, and a
config with any diverged seed is not eligible as the best one.  Use :func:`aggregate_runs`
for an arbitrary list of run folders (no spec, nothing written).
"""
from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from imagenet_repro import files, rundir
from imagenet_repro.analysis.environment import (
    compare_environments,
    compare_world_sizes,
    environment_warnings,
    world_size_warnings,
)
from imagenet_repro.analysis.metrics import binned_means, tail_ratio
from imagenet_repro.analysis.paired import default_target, format_paired, optimizer_label, paired_table, time_to_target
from imagenet_repro.analysis.theory import LAYER_READ_COLUMNS, agreement_arrays, default_window
from imagenet_repro.errors import ConfigError, first_line
from imagenet_repro.sweepdir import SweepDescription, as_description

STEP_READ_COLUMNS = ["step", "epoch", "lr", "loss", "grad_norm", "weight_norm",
                     "grad_norm_normalized", "weight_norm_normalized"]
EVAL_READ_COLUMNS = ["epoch", "step", "top1", "top5", "loss"]
EVAL_OPTIONAL_COLUMNS = ["images"]  # val images of each eval (absent in older run folders)
assert set(STEP_READ_COLUMNS) <= set(rundir.STEPS_SCHEMA)
assert set(EVAL_READ_COLUMNS + EVAL_OPTIONAL_COLUMNS) <= set(rundir.EVAL_SCHEMA)
CURVE_POINTS = 200
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
AXES = ["optimizer", "lr_max", "wd"]
METRICS = ["final_top1", "final_top5", "best_top1", "best_top5", "grad_norm_tail_ratio",
           "ratio_tail_ratio", "weight_norm_tail_ratio", "theory_median_abs_err", "steps_to_target",
           "epochs_to_target"]


class CorruptRun(Exception):
    """A run folder whose files cannot be read; the message says which and why."""


@dataclass
class Aggregate:
    runs: pd.DataFrame
    curves: pd.DataFrame
    configs: pd.DataFrame
    summary: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)
    environment: dict = field(default_factory=dict)  # analysis.environment.compare_environments, + "ranks"


# ---------------------------------------------------------------------------- one run

Columns = dict[str, np.ndarray]


def _read_parquet(path: Path, columns: list[str], optional: list[str] | None = None) -> Columns | None:
    """``columns`` (and those of ``optional`` the file has) of the table at ``path`` as numpy
    arrays (string columns as integer codes plus ``<name>__names``); None if absent;
    CorruptRun if unreadable."""
    if not path.is_file():
        return None
    try:
        if optional:
            names = set(pq.ParquetFile(path).schema_arrow.names)
            columns = columns + [c for c in optional if c in names]
        table = pq.read_table(path, columns=columns, use_threads=False)
        out: Columns = {}
        for name in columns:
            col = table.column(name)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_dictionary(col.type):
                encoded = pc.dictionary_encode(col.combine_chunks())
                out[name] = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
                out[f"{name}__names"] = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
            else:
                out[name] = col.to_numpy()
        return out
    except Exception as exc:
        raise CorruptRun(f"{path.name}: {first_line(exc)}") from None


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(node, (list, tuple)):
        out[f"cfg.{prefix}"] = str(list(node))
    else:
        out[f"cfg.{prefix}"] = node


def _select(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _read_config(run_dir: Path) -> dict[str, Any]:
    """Axes and every leaf of the run's resolved config.yaml (plain YAML: no interpolation)."""
    path = run_dir / rundir.CONFIG
    if not path.is_file():
        raise CorruptRun(f"{rundir.CONFIG} is missing")
    try:
        tree = yaml.load(path.read_text(), Loader=_YAML_LOADER)
        if not isinstance(tree, dict):
            raise ValueError("not a mapping")
    except Exception as exc:
        raise CorruptRun(f"{rundir.CONFIG}: {first_line(exc)}") from None
    row: dict[str, Any] = {}
    for key, dotted in (("optimizer", "optim.name"), ("lr_max", "optim.lr"), ("wd", "optim.weight_decay"),
                        ("seed", "seed")):
        value = _select(tree, dotted)
        if value is None:
            raise CorruptRun(f"{rundir.CONFIG} has no {dotted}")
        row[key] = value
    try:
        row["lr_max"], row["wd"], row["seed"] = float(row["lr_max"]), float(row["wd"]), int(row["seed"])
    except (TypeError, ValueError) as exc:
        raise CorruptRun(f"{rundir.CONFIG}: {first_line(exc)}") from None
    row["optimizer"] = optimizer_label(str(row["optimizer"]), _select(tree, "optim.corrected_decay") is True)
    row["schedule"] = _select(tree, "schedule.name")
    flat: dict[str, Any] = {}
    _flatten(tree, "", flat)
    row.update(flat)
    return row


def _step_metrics(steps: Columns, row: dict[str, Any]) -> Columns:
    order = np.argsort(steps["step"], kind="stable")
    step = steps["step"][order].astype(np.int64)
    cols = {c: steps[c][order].astype(np.float64) for c in STEP_READ_COLUMNS if c != "step"}
    with np.errstate(invalid="ignore", divide="ignore"):
        cols["ratio_normalized"] = cols["grad_norm_normalized"] / cols["weight_norm_normalized"]
    row["n_steps"] = int(step.size)
    row["last_step"] = int(step[-1])
    row["grad_norm_tail_ratio"] = tail_ratio(step, cols["grad_norm"])
    row["ratio_tail_ratio"] = tail_ratio(step, cols["ratio_normalized"])
    row["weight_norm_tail_ratio"] = tail_ratio(step, cols["weight_norm"])
    cols["step"] = step.astype(np.float64)
    return cols


def _eval_metrics(ev: Columns, row: dict[str, Any], target_top1: float | None) -> Columns:
    """Final/best top-k (best: over the whole-val-set evals), steps per epoch, time-to-target."""
    order = np.argsort(ev["step"], kind="stable")
    ev = {k: v[order].astype(np.float64) for k, v in ev.items()}
    # whole-set evals: the epoch ends (intermediate evals on a val subset have fewer images)
    full = ev["images"] == np.nanmax(ev["images"]) if "images" in ev and order.size else np.ones(order.size, bool)
    row["epochs_evaluated"] = int(full.sum())
    row["evals"] = int(order.size)
    if order.size:
        row["final_top1"], row["final_top5"] = float(ev["top1"][-1]), float(ev["top5"][-1])
        row["best_top1"], row["best_top5"] = float(np.nanmax(ev["top1"][full])), float(np.nanmax(ev["top5"][full]))
        row["final_eval_loss"] = float(ev["loss"][-1])
        epoch_ends = full & (ev["epoch"] > 0)
        if epoch_ends.any():
            row["steps_per_epoch"] = float(ev["step"][epoch_ends][0] / ev["epoch"][epoch_ends][0])
    target = target_top1 if target_top1 is not None else default_target(row.get("cfg.data.dataset"))
    row["target_top1"] = target
    row["steps_to_target"] = time_to_target(ev["step"], ev["top1"], target)
    row["epochs_to_target"] = row["steps_to_target"] / row.get("steps_per_epoch", math.nan)
    return ev


def _predicted_per_step(layers: Columns) -> tuple[np.ndarray, np.ndarray]:
    """Mean over layers of the theory's finite ratio, per logged step."""
    pred = layers["predicted_ratio"].astype(np.float64)
    ok = np.isfinite(pred)
    steps, inverse = np.unique(layers["step"][ok], return_inverse=True)
    sums = np.bincount(inverse, weights=pred[ok], minlength=steps.size)
    counts = np.bincount(inverse, minlength=steps.size)
    return steps.astype(np.float64), sums / np.maximum(counts, 1)


def read_run(run_dir: str | Path, max_points: int = CURVE_POINTS,
             target_top1: float | None = None) -> tuple[dict[str, Any], Columns | None]:
    """One run folder -> (row of runs.parquet, its curve columns or None). Never raises on bad files.

    Curve columns: the binned step curves (``source`` "train") followed by the eval rows
    (``source`` "eval"); a column missing from one part is NaN there.
    """
    run_dir = Path(run_dir)
    row: dict[str, Any] = {"run_id": run_dir.name, "run_dir": str(run_dir), "problem": None}
    status_path = run_dir / rundir.STATUS
    status = rundir.read_status(run_dir)
    row["reported_state"] = str(status.get("state", "pending"))
    row["state"] = row["reported_state"]
    try:
        if status_path.exists() and files.read_json(status_path) is None:
            raise CorruptRun(f"{rundir.STATUS} is not a JSON object")
        if row["state"] not in rundir.WRITTEN_STATES:
            raise CorruptRun(f"{rundir.STATUS} has unknown state {row['state']!r}")
        if row["state"] == "pending" and not (run_dir / rundir.CONFIG).exists():
            return row, None
        row.update(_read_config(run_dir))
        steps = _read_parquet(run_dir / rundir.STEPS, STEP_READ_COLUMNS)
        ev = _read_parquet(run_dir / rundir.EVAL, EVAL_READ_COLUMNS, EVAL_OPTIONAL_COLUMNS)
        layers = _read_parquet(run_dir / rundir.LAYERS, LAYER_READ_COLUMNS)
        if row["state"] in rundir.FINAL_STATES and steps is None:
            raise CorruptRun(f"state {row['state']} but {rundir.STEPS} is missing")
        if row["state"] == "done" and ev is None:
            raise CorruptRun(f"state done but {rundir.EVAL} is missing")
    except CorruptRun as exc:
        row["state"], row["problem"] = "corrupt", str(exc)
        return row, None

    train: Columns = {}
    if steps is not None and steps["step"].size:
        train = binned_means(_step_metrics(steps, row), max_points)
        train["bin"] = np.arange(train["step"].size, dtype=np.float64)
        if layers is not None and layers["step"].size:
            xs, ys = _predicted_per_step(layers)
            train["predicted_ratio"] = np.interp(train["step"], xs, ys) if xs.size else np.full(train["step"].size, np.nan)
    evals: Columns = {}
    if ev is not None:
        ev = _eval_metrics(ev, row, target_top1)
        evals = {"epoch": ev["epoch"], "step": ev["step"], "top1": ev["top1"], "top5": ev["top5"], "eval_loss": ev["loss"],
                 "images": ev.get("images", np.full(ev["step"].size, np.nan))}
    if layers is not None and layers["step"].size:
        total = row["last_step"] + 1 if row.get("last_step", -1) >= 0 else None
        n, _, _, rel_err = agreement_arrays(layers["step"], layers["layer"], layers["grad_norm"], layers["weight_norm"],
                                            layers["predicted_ratio"], default_window(row.get("schedule")), total)
        err = rel_err[n > 0]
        if err.size:
            row["theory_median_abs_err"] = float(np.median(np.abs(err)))
            row["theory_mean_err"] = float(err.mean())
    n_train = train["step"].size if train else 0
    n_eval = evals["step"].size if evals else 0
    if n_train + n_eval == 0:
        return row, None
    curves: Columns = {}
    for key in dict.fromkeys([*train, *evals]):
        parts = [train.get(key, np.full(n_train, np.nan)), evals.get(key, np.full(n_eval, np.nan))]
        curves[key] = np.concatenate(parts)
    curves["source"] = np.array(["train"] * n_train + ["eval"] * n_eval, dtype=object)
    curves["run_id"] = np.full(n_train + n_eval, row["run_id"], dtype=object)
    return row, curves


# ------------------------------------------------------------------------- many runs

def aggregate_runs(run_dirs: Iterable[str | Path], max_points: int = CURVE_POINTS, workers: int = 2,
                   target_top1: float | None = None) -> Aggregate:
    """Read ``run_dirs`` into the tables of an :class:`Aggregate` (nothing is written).

    ``target_top1``: the time-to-target threshold (None: each run's dataset default)."""
    run_dirs = sorted(Path(d) for d in run_dirs)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda d: read_run(d, max_points, target_top1), run_dirs))
    runs = pd.DataFrame([row for row, _ in results])
    for col in ["optimizer", "lr_max", "wd", "seed", "schedule", "n_steps", "last_step", "epochs_evaluated",
                "final_eval_loss", "theory_mean_err", "target_top1", "steps_per_epoch", "evals", *METRICS]:
        if col not in runs.columns:
            runs[col] = np.nan
    front = ["run_id", "state", "problem", "optimizer", "lr_max", "wd", "seed", "schedule", *METRICS,
             "theory_mean_err", "target_top1", "n_steps", "last_step", "steps_per_epoch", "epochs_evaluated", "evals",
             "final_eval_loss", "reported_state", "run_dir"]
    runs = runs[front + sorted(c for c in runs.columns if c not in front)]
    curves = _concat_curves([c for _, c in results if c is not None])
    configs = config_table(runs)
    summary = summarize(runs, configs)
    counts = {s: int((runs["state"] == s).sum()) for s in rundir.RunState if (runs["state"] == s).any()}
    paired = paired_table(runs, select_best(configs))
    return Aggregate(runs=runs, curves=curves, configs=configs, summary=summary, counts=counts, paired=paired,
                     environment={**compare_environments(run_dirs), "ranks": compare_world_sizes(run_dirs)})


CURVE_COLUMNS = ["run_id", "source", "bin", "step", "epoch", "lr", "loss", "grad_norm", "weight_norm",
                 "grad_norm_normalized", "weight_norm_normalized", "ratio_normalized", "predicted_ratio",
                 "top1", "top5", "eval_loss", "images"]


def _concat_curves(parts: list[Columns]) -> pd.DataFrame:
    """One frame from many runs' curve columns (NaN where a run lacks a column)."""
    sizes = [p["run_id"].size for p in parts]
    data = {}
    for key in CURVE_COLUMNS:
        data[key] = (np.concatenate([p.get(key, np.full(n, np.nan)) for p, n in zip(parts, sizes)])
                     if parts else np.array([], dtype=np.float64))
    frame = pd.DataFrame(data)
    for key in ("run_id", "source"):
        frame[key] = frame[key].astype("category")
    return frame


def config_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (optimizer, lr_max, wd): seeds by state, mean/std (sample) of done seeds' metrics."""
    valid = runs[runs["state"] != "corrupt"].dropna(subset=AXES)
    if valid.empty:
        return pd.DataFrame(columns=[*AXES, "n_done", "n_diverged", "n_failed", "n_running", "eligible"])
    keys = valid.groupby(AXES, sort=True)
    table = keys.size().rename("n_runs").to_frame()
    for state in ("done", "diverged", "failed", "running"):
        table[f"n_{state}"] = keys["state"].agg(lambda s, st=state: int((s == st).sum()))
    done = valid[valid["state"] == "done"].groupby(AXES)
    table["n_reached_target"] = done["steps_to_target"].count()
    table["n_reached_target"] = table["n_reached_target"].fillna(0).astype(int)
    for metric in METRICS:
        table[f"{metric}_mean"] = done[metric].mean()
        table[f"{metric}_std"] = done[metric].std(ddof=1)
    table = table.reset_index()
    table["eligible"] = (table["n_done"] > 0) & (table["n_diverged"] == 0)
    return table


def select_best(configs: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer, the eligible config with the highest mean final top-1 (ties: smaller lr_max, wd).

    Only the configs with the most runs of their optimizer compete: after the second stage of
    a two-stage sweep (:mod:`imagenet_repro.sweep.stages`) the confirmed configs have all the
    seeds and the others one, and a single lucky seed must not beat a mean over five.  In a
    plain grid every config has the same number of runs, so this changes nothing there."""
    ok = configs[configs["eligible"] & configs["final_top1_mean"].notna()]
    if ok.empty:
        return ok
    ok = ok[ok["n_runs"] == ok.groupby("optimizer")["n_runs"].transform("max")]
    ranked = ok.sort_values(["optimizer", "final_top1_mean", "lr_max", "wd"], ascending=[True, False, True, True])
    return ranked.groupby("optimizer", sort=True).head(1).reset_index(drop=True)


def summarize(runs: pd.DataFrame, configs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per optimizer: best lr_max (γ_max) and wd, seed count, mean and std of the metrics (top-k in %)."""
    configs = config_table(runs) if configs is None else configs
    best = select_best(configs)
    rows = []
    for opt in sorted(runs["optimizer"].dropna().unique()):
        mine = configs[configs["optimizer"] == opt]
        row: dict[str, Any] = {"optimizer": opt, "n_configs": int(len(mine)),
                               "n_configs_diverged": int((mine["n_diverged"] > 0).sum()) if len(mine) else 0}
        pick = best[best["optimizer"] == opt]
        if pick.empty:
            row.update(best_lr_max=math.nan, best_wd=math.nan, n_seeds=0)
            rows.append(row)
            continue
        p = pick.iloc[0]
        row.update(best_lr_max=float(p["lr_max"]), best_wd=float(p["wd"]), n_seeds=int(p["n_done"]),
                   n_reached_target=int(p["n_reached_target"]))
        for metric in METRICS:
            scale = 100.0 if "top" in metric else 1.0
            name = f"{metric}_pct" if "top" in metric else metric
            row[f"{name}_mean"] = float(p[f"{metric}_mean"]) * scale
            row[f"{name}_std"] = float(p[f"{metric}_std"]) * scale
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: Any, std: Any, fmt: str) -> str:
    if mean is None or not np.isfinite(mean):
        return "-"
    return f"{mean:{fmt}}" + (f" ± {std:{fmt}}" if std is not None and np.isfinite(std) else "")


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The best config per optimizer (:func:`summarize`), one row each, mean ± std as text: what
    ``repro aggregate`` prints (:func:`format_summary`) and the report shows as an HTML table."""
    rows = []
    for _, r in summary.iterrows():
        def pm(name: str, fmt: str, scale: float = 1.0) -> str:
            return _pm(scale * r.get(f"{name}_mean", math.nan), scale * r.get(f"{name}_std", math.nan), fmt)

        rows.append({
            "optimizer": r["optimizer"],
            "best lr_max": f"{r['best_lr_max']:g}" if np.isfinite(r["best_lr_max"]) else "-",
            "best wd": f"{r['best_wd']:g}" if np.isfinite(r["best_wd"]) else "-",
            "seeds": int(r["n_seeds"]),
            "final top-1 %": pm("final_top1_pct", ".2f"),
            "best top-1 %": pm("best_top1_pct", ".2f"),
            "|g| tail ratio": pm("grad_norm_tail_ratio", ".3g"),
            "|g|/|x| tail ratio": pm("ratio_tail_ratio", ".3g"),
            "|x| tail ratio": pm("weight_norm_tail_ratio", ".3g"),
            "theory |err| %": pm("theory_median_abs_err", ".1f", 100.0),
            "steps to target": pm("steps_to_target", ".0f"),
            "configs (diverged)": f"{r['n_configs']} ({r['n_configs_diverged']})",
        })
    return pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as an aligned text table (mean ± std)."""
    if summary.empty:
        return "(no runs with an optimizer)"
    return summary_table(summary).to_string(index=False)


def format_problems(runs: pd.DataFrame) -> str:
    """One line per run that is not done: its id, state and, for corrupt ones, why."""
    lines = []
    for _, r in runs[runs["state"] != "done"].iterrows():
        lines.append(f"  {r['run_id']}: {r['state']}" + (f" ({r['problem']})" if r["problem"] else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- a sweep

def sweep_run_dirs(runs_dir: Path) -> list[Path]:
    """The run folders of a sweep: every visible sub-folder of ``runs_dir``."""
    if not runs_dir.is_dir():
        raise ConfigError(f"no runs folder {runs_dir} (has the sweep been launched?)")
    dirs = sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise ConfigError(f"no run folders under {runs_dir}")
    return dirs


def write_aggregate(agg: Aggregate, out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files.atomic_write_parquet(out / rundir.RUNS_TABLE, agg.runs)
    files.atomic_write_parquet(out / rundir.CURVES_TABLE, agg.curves)
    files.atomic_write_csv(out / rundir.CONFIGS_TABLE, agg.configs)
    files.atomic_write_csv(out / rundir.SUMMARY_TABLE, agg.summary)
    files.atomic_write_csv(out / rundir.PAIRED_TABLE, agg.paired)
    files.atomic_write_json(out / rundir.ENVIRONMENT, agg.environment)


def aggregate_sweep(sweep: SweepDescription | str | Path, results_root: str | Path = "results",
                    max_points: int = CURVE_POINTS, workers: int = 2, quiet: bool = False) -> Aggregate:
    """Aggregate a sweep (its description, or its folder holding ``sweep.json``) into
    ``results_root/<sweep>/`` and print the summary."""
    sweep = as_description(sweep)
    agg = aggregate_runs(sweep_run_dirs(sweep.folder), max_points=max_points, workers=workers,
                         target_top1=sweep.target_top1)
    out = Path(results_root) / sweep.name
    write_aggregate(agg, out)
    ranks = world_size_warnings(sweep.name, agg.environment["ranks"])
    for line in environment_warnings(sweep.name, agg.environment) + ranks:
        print(f"aggregate: {line}", file=sys.stderr)
    if not quiet:
        counts = ", ".join(f"{n} {s}" for s, n in agg.counts.items())
        print(f"{sweep.name}: {len(agg.runs)} runs ({counts}) -> {out}/")
        problems = format_problems(agg.runs)
        if problems:
            print("not in the statistics:\n" + problems)
        print(format_summary(agg.summary))
        print(format_paired(agg.paired))
    return agg
