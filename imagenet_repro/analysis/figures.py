"""The paper's figures from a sweep's aggregated tables, as PNG and PDF.

``make_figures(sweep)`` (a sweep's description or folder, see :mod:`imagenet_repro.sweepdir`) reads ``results/<sweep>/runs.parquet`` and ``curves.parquet``
(running ``aggregate_sweep`` first if they are missing; ``read_tables``) and writes to
``results/<sweep>/figures/`` the Figures that ``draw_figures(runs, curves)`` returns by stem:

    fig5_training_curves   test top-1 vs step (every eval, intermediate ones included), ||g|| vs step, ||x|| vs step and the
                           normalized-layer ||g||/||x|| with the theory, per optimizer at its
                           best (lr, wd): mean over seeds with a ±1 std band
    heatmap_top1           final top-1 over the lr x wd grid, one panel per optimizer (on its
                           own grid); configs with a diverged seed are marked D, the best is boxed
    fig2_layer_ratios      per-layer ||g||/||x|| (EMA-smoothed) with the theory line, for the
                           best config of each optimizer (its lowest done seed), log y
    layer_rotation         per-layer rotation per step (the angle between x_t and x_{t+1},
                           EMA-smoothed) with the theory line, same runs, plain and corrected
                           optimizers side by side (SGD vs SGDC, AdamW vs AdamC), log y

and ``results/<sweep>/theory_agreement.csv`` (per optimizer, seed and normalized layer: the
ratio's and the rotation's agreement) and ``theory_summary.csv`` (per optimizer, over
layers, with the end-of-training verdict of :func:`~.theory.verdict`), which are also printed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from imagenet_repro import files, rundir  # noqa: E402
from imagenet_repro.analysis.aggregate import aggregate_sweep, config_table, select_best  # noqa: E402
from imagenet_repro.analysis.paired import plain_of  # noqa: E402
from imagenet_repro.analysis.theory import (  # noqa: E402
    LATE_WINDOW,
    format_summary,
    summarize_agreement,
    theory_agreement,
    verdict,
)
from imagenet_repro.sweepdir import SweepDescription, as_description  # noqa: E402

FORMATS = ("png", "pdf")
THEME = {"style": "whitegrid", "context": "notebook"}  # seaborn's theme for every figure (draw_figures sets it)
EMA_POINTS = 0.05  # EMA time constant as a fraction of the logged points


def _log_label(v: float) -> str:
    """Tick label for a log-spaced value: plain for 0.01..100, mantissa·10^k otherwise."""
    if v == 0 or not np.isfinite(v):
        return f"{v:g}"
    if 0.01 <= abs(v) < 100:
        return f"{v:g}"
    exp = int(math.floor(math.log10(abs(v))))
    mant = v / 10**exp
    mant_s = "" if math.isclose(mant, 1.0) else f"{mant:.3g}\\cdot"
    return f"${mant_s}10^{{{exp}}}$"


def _steps_axis(ax: plt.Axes) -> None:
    """Step axis in thousands ("5k") so large step counts stay legible."""
    ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if abs(v) >= 1000 else f"{v:g}"))


def _save(fig: plt.Figure, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        files.atomic_write(path, lambda tmp, f=fmt: fig.savefig(tmp, format=f, dpi=150))
        paths.append(path)
    plt.close(fig)
    return paths


def _best_runs(runs: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """The done runs of each optimizer's best config, with a ``label`` column for legends."""
    picked = runs[runs["state"] == "done"].merge(best[["optimizer", "lr_max", "wd"]], on=["optimizer", "lr_max", "wd"])
    picked = picked.copy()
    picked["label"] = [f"{o} (lr={lr:g}, wd={wd:g})" for o, lr, wd in zip(picked["optimizer"], picked["lr_max"], picked["wd"])]
    return picked.sort_values(["optimizer", "seed"])


def _mean_band(ax: plt.Axes, frame: pd.DataFrame, x: str, y: str, color, label: str) -> None:
    """Mean over runs of ``y`` at each ``x`` with a ±1 (sample) std band; seeds share their x."""
    if frame.empty:
        return
    stats = frame.groupby(x, sort=True)[y].agg(["mean", "std"])
    xs, mean, std = stats.index.to_numpy(), stats["mean"].to_numpy(), stats["std"].fillna(0).to_numpy()
    if len(xs) < 30:  # sparse (e.g. one eval per epoch over few epochs): points with ±1 std bars
        ax.errorbar(xs, mean, yerr=std, color=color, linewidth=1.6, marker="o", capsize=4, label=label)
        return
    ax.plot(xs, mean, color=color, linewidth=1.6, label=label)
    ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.25, linewidth=0)


def fig_training_curves(curves: pd.DataFrame, picked: pd.DataFrame) -> plt.Figure:
    """Fig. 5: accuracy, gradient norm, weight norm and normalized ||g||/||x|| (with theory)."""
    labels = picked[["run_id", "label", "optimizer"]]
    data = curves.merge(labels, on="run_id")
    train, ev = data[data["source"] == "train"], data[data["source"] == "eval"].copy()
    ev["top1_pct"] = 100 * ev["top1"]
    order = list(dict.fromkeys(picked["label"]))
    palette = dict(zip(order, sns.color_palette("deep", len(order))))
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    subset = "images" in ev.columns and ev["images"].nunique() > 1  # intermediate evals on a val subset
    acc_title = "Test accuracy" + (" (between epoch ends: val subset)" if subset else "")
    panels = [(axes[0, 0], ev, "step", "top1_pct", acc_title, "step", "top-1 accuracy (%)", False),
              (axes[0, 1], train, "step", "grad_norm", "Gradient norm ||g||", "step", "||g|| (log scale)", True),
              (axes[1, 0], train, "step", "weight_norm", "Weight norm ||x||", "step", "||x||", False),
              (axes[1, 1], train, "step", "ratio_normalized", "Normalized layers ||g||/||x|| vs theory",
               "step", "||g|| / ||x|| (log scale)", True)]
    for ax, frame, x, y, title, xl, yl, logy in panels:
        for label in order:
            _mean_band(ax, frame[frame["label"] == label], x, y, palette[label], label)
        ax.set(title=title, xlabel=xl, ylabel=yl)
        if logy:
            ax.set_yscale("log")
    ax = axes[1, 1]
    if "predicted_ratio" in train.columns:
        for label, part in train.groupby("label", sort=False):
            pred = part.groupby("step")["predicted_ratio"].mean()
            ax.plot(pred.index, pred.to_numpy(), linestyle="--", color=palette[label], linewidth=1.4)
    ax.plot([], [], linestyle="--", color="0.3", label="theory (dashed)")
    handles, texts = axes[1, 1].get_legend_handles_labels()
    fig.legend(handles, texts, loc="lower center", ncol=len(texts), frameon=False, bbox_to_anchor=(0.5, 0.0))
    seeds = picked.groupby("label").size()
    fig.suptitle("Best config per optimizer: mean over seeds ± 1 std  (" +
                 ", ".join(f"{lab.split()[0]}: {n} seeds" for lab, n in seeds.items()) + ")")
    for ax in (axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]):
        _steps_axis(ax)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


HEATMAP_CELL_IN = (0.85, 0.5)  # inches per (lr, wd) cell: room for "76.5" and "D1" at 8 pt


def fig_heatmaps(configs: pd.DataFrame, best: pd.DataFrame) -> plt.Figure:
    """Final top-1 (%) over the lr x wd grid, one panel per optimizer on that optimizer's own
    grid (optimizer families may search different lr/wd values); D marks divergence.

    Matplotlib's constrained layout places the panels (titled by optimizer), the shared
    colorbar, the shared axis labels and the key above the panels, so none of them overlaps
    at any grid size; the figure grows with the grid."""
    opts = sorted(configs["optimizer"].unique())
    grids = {o: (sorted(configs.loc[configs["optimizer"] == o, "lr_max"].unique()),
                 sorted(configs.loc[configs["optimizer"] == o, "wd"].unique())) for o in opts}
    n_lr = [len(lrs) for lrs, _ in grids.values()]
    n_wd = max(len(wds) for _, wds in grids.values())
    values = 100 * configs["final_top1_mean"]
    vmin, vmax = (np.nanpercentile(values, 10), np.nanmax(values)) if values.notna().any() else (0, 1)
    cell_w, cell_h = HEATMAP_CELL_IN
    width = sum(max(cell_w * n, 1.6) + 0.9 for n in n_lr) + 1.6  # + tick labels per panel, + colorbar
    height = max(cell_h * n_wd, 1.2) + 2.0  # + key, panel titles, x ticks and label
    fig, axes = plt.subplots(1, len(opts), figsize=(max(width, 6.5), height), squeeze=False, layout="constrained",
                             gridspec_kw={"width_ratios": [max(n, 2) for n in n_lr]})
    for ax, opt in zip(axes[0], opts):
        lrs, wds = grids[opt]
        mine = configs[configs["optimizer"] == opt]
        grid = mine.pivot(index="wd", columns="lr_max", values="final_top1_mean").reindex(index=wds, columns=lrs) * 100
        div = mine.pivot(index="wd", columns="lr_max", values="n_diverged").reindex(index=wds, columns=lrs).fillna(0)
        annot = np.empty(grid.shape, dtype=object)
        for r in range(grid.shape[0]):
            for c in range(grid.shape[1]):
                v, d = grid.iat[r, c], int(div.iat[r, c])
                annot[r, c] = ("D" if not np.isfinite(v) else f"{v:.1f}\nD{d}") if d else ("" if not np.isfinite(v) else f"{v:.1f}")
        sns.heatmap(grid, annot=annot, fmt="", cmap="viridis", vmin=vmin, vmax=vmax, ax=ax, cbar=False,
                    linewidths=0.5, linecolor="white", annot_kws={"size": 8})
        for r, c in zip(*np.nonzero(grid.isna().to_numpy() & (div.to_numpy() > 0))):  # seaborn skips NaN cells
            ax.text(c + 0.5, r + 0.5, "D", ha="center", va="center", size=8, color="0.2")
        ax.set_facecolor("0.85")
        ax.grid(False)
        ax.invert_yaxis()
        ax.set_xticklabels([_log_label(v) for v in lrs], rotation=0)
        ax.set_yticklabels([_log_label(v) for v in wds], rotation=0)
        ax.set(xlabel="", ylabel="", title=opt)
        pick = best[best["optimizer"] == opt]
        if len(pick):
            r, c = wds.index(pick["wd"].iloc[0]), lrs.index(pick["lr_max"].iloc[0])
            ax.add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    fig.colorbar(axes[0, 0].collections[0], ax=axes[0].tolist(), label="final top-1 (%), mean over seeds",
                 aspect=max(10, 3 * n_wd))
    fig.supxlabel("peak learning rate γ_max (log grid)", fontsize="medium")
    fig.supylabel("weight decay λ (log grid)", fontsize="medium")
    key = [Patch(fill=False, edgecolor="red", linewidth=2.5, label="best config"),
           Patch(facecolor="0.85", label="no finished run"),
           Line2D([], [], linestyle="none", marker="$Dk$", markersize=14, color="0.2",
                  label="k seeds diverged (not eligible)")]
    # above the panels: constrained layout gives a figure edge to one of an outside legend and a
    # suptitle/supxlabel (the larger margin, not both), so the key takes the top edge
    fig.legend(handles=key, loc="outside upper center", ncol=3, frameon=False, fontsize="small")
    return fig


def _read_layers(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / rundir.LAYERS
    have = set(pq.ParquetFile(path).schema_arrow.names)
    wanted = ["step", "layer", "grad_norm", "weight_norm", "predicted_ratio", "angular_update", "predicted_rotation"]
    frame = pq.read_table(path, columns=[c for c in wanted if c in have]).to_pandas()
    frame["ratio"] = frame["grad_norm"] / frame["weight_norm"]
    return frame


def _has_rotation(run_dir: str | Path) -> bool:
    names = pq.ParquetFile(Path(run_dir) / rundir.LAYERS).schema_arrow.names
    return "angular_update" in names


def _pair_key(optimizer: str) -> str:
    """Sort key putting each corrected optimizer right after its plain one (sgd, sgdc; adamw, adamc; X, X+corrected)."""
    plain = plain_of(optimizer)
    return f"{plain}\x01" if plain else f"{optimizer}\x00"


def _per_layer_panels(picked: pd.DataFrame, value: str, theory: str, ylabel: str, theory_label: str,
                      title: str, ema_fraction: float, smooth_theory: bool = False) -> plt.Figure:
    """One panel per optimizer (its best config's lowest done seed): ``value`` per layer
    (EMA) coloured by depth, the median over layers of ``theory`` dashed (through the same
    EMA with ``smooth_theory``, so the smoothing's lag does not pass for a disagreement), log y."""
    first = picked.groupby("optimizer", sort=True).head(1)
    first = first.sort_values("optimizer", key=lambda names: names.map(_pair_key), kind="stable")
    fig, axes = plt.subplots(1, max(len(first), 1), figsize=(6.5 * max(len(first), 1), 4.8), squeeze=False,
                             sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, (_, run) in zip(axes[0], first.iterrows()):
        layers = _read_layers(run["run_dir"])
        order = list(dict.fromkeys(layers["layer"]))
        wide = layers.pivot_table(index="step", columns="layer", values=value, aggfunc="mean", dropna=False)
        wide = wide.reindex(columns=order)
        alpha = min(0.5, 1.0 / max(ema_fraction * len(wide), 1.0))
        smooth = wide.ewm(alpha=alpha, adjust=True, ignore_na=True).mean()
        for j, name in enumerate(order):
            ax.plot(smooth.index, smooth[name], color=cmap(j / max(len(order) - 1, 1)), linewidth=0.8, alpha=0.85)
        line = layers.groupby("step")[theory].median()
        if smooth_theory:
            line = line.ewm(alpha=alpha, adjust=True, ignore_na=True).mean()
        ax.plot(line.index, line.to_numpy(), "k--", linewidth=2, label=theory_label)
        ax.set_yscale("log")
        ax.set(title=f"{run['label']}, seed {int(run['seed'])}", xlabel="step", ylabel=ylabel)
        ax.legend(loc="upper left")
        _steps_axis(ax)
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(order) - 1))
        fig.colorbar(sm, ax=ax, label="layer depth (index of normalized layer)")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def fig_layer_ratios(picked: pd.DataFrame, ema_fraction: float = EMA_POINTS) -> plt.Figure:
    """Fig. 2/3: per-layer ||g||/||x|| (EMA) coloured by depth, theory dashed, log y."""
    return _per_layer_panels(picked, "ratio", "predicted_ratio", "||g|| / ||x|| per layer (EMA, log scale)",
                             "theory: steady-state ratio",
                             "Per-layer gradient-to-weight norm ratio against the steady-state prediction", ema_fraction)


def fig_layer_rotation(picked: pd.DataFrame, ema_fraction: float = EMA_POINTS) -> plt.Figure:
    """Per-layer rotation per step, angle(x_t, x_{t+1}) (EMA), against the steady-state rotation
    (:mod:`imagenet_repro.optim.equilibrium`): it follows γ_t linearly with the corrected decay,
    as sqrt(γ_t) without it."""
    return _per_layer_panels(picked, "angular_update", "predicted_rotation",
                             "angle(x_t, x_t+1) per step, rad (EMA, log)",
                             "theory: steady-state rotation (same EMA)",
                             "Per-layer rotation per step (a normalized layer's effective LR) against the steady state",
                             ema_fraction, smooth_theory=True)


def _per_layer_tables(picked: pd.DataFrame, window: tuple[float, float] | None) -> pd.DataFrame:
    parts = []
    for _, run in picked.iterrows():
        table = theory_agreement(run["run_dir"], window)
        a, b = table.attrs["window"]
        table.insert(0, "seed", int(run["seed"]))
        table.insert(0, "optimizer", run["optimizer"])
        table["window_start"], table["window_end"] = a, b
        parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _seed_mean_summary(part: pd.DataFrame) -> dict[str, float]:
    """Summary over layers of each layer's errors averaged over the seeds."""
    errors = [c for c in ("rel_err", "rotation_rel_err") if c in part]
    return summarize_agreement(part.groupby("layer", sort=False)[errors].mean())


def theory_tables(picked: pd.DataFrame, window: tuple[float, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-(optimizer, seed, layer) agreement and the per-optimizer summary over layers.

    The summary uses each layer's error averaged over the best config's seeds; its ``late_*``
    columns are the same over :data:`~.theory.LATE_WINDOW` and ``verdict`` says in words
    whether the end of training is what the theory predicts (:func:`~.theory.verdict`).
    """
    per_layer, late = _per_layer_tables(picked, window), _per_layer_tables(picked, LATE_WINDOW)
    rows = []
    for opt, part in (per_layer.groupby("optimizer", sort=True) if len(per_layer) else []):
        summary = _seed_mean_summary(part)
        late_summary = _seed_mean_summary(late[late["optimizer"] == opt])
        rows.append({"optimizer": opt, "n_seeds": int(part["seed"].nunique()), **summary,
                     "window_start": part["window_start"].iloc[0], "window_end": part["window_end"].iloc[0],
                     "late_median_err": late_summary["median_err"],
                     "late_rotation_median_err": late_summary["rotation_median_err"],
                     "late_window_start": LATE_WINDOW[0], "late_window_end": LATE_WINDOW[1],
                     "verdict": verdict(late_summary)})
    return per_layer, pd.DataFrame(rows)


def read_tables(sweep: SweepDescription | str | Path, results_root: str | Path = "results", quiet: bool = False
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``runs.parquet`` and ``curves.parquet`` of ``sweep`` (its description or folder; aggregated first if missing)."""
    sweep = as_description(sweep)
    res = Path(results_root) / sweep.name
    if not (res / rundir.RUNS_TABLE).is_file() or not (res / rundir.CURVES_TABLE).is_file():
        aggregate_sweep(sweep, results_root=results_root, quiet=quiet)
    return pd.read_parquet(res / rundir.RUNS_TABLE), pd.read_parquet(res / rundir.CURVES_TABLE)


def _with_layers(picked: pd.DataFrame) -> pd.DataFrame:
    return picked[[Path(d, rundir.LAYERS).is_file() for d in picked["run_dir"]]]


def _best_config_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(configs, each optimizer's best config, the runs of those best configs)."""
    configs = config_table(runs)
    best = select_best(configs)
    return configs, best, _best_runs(runs, best)


def draw_figures(runs: pd.DataFrame, curves: pd.DataFrame) -> dict[str, plt.Figure]:
    """Every figure of a sweep's tables, by file stem, drawn but not saved (the caller closes them)."""
    return _draw(curves, *_best_config_runs(runs))


def _draw(curves: pd.DataFrame, configs: pd.DataFrame, best: pd.DataFrame, picked: pd.DataFrame) -> dict[str, plt.Figure]:
    sns.set_theme(**THEME)
    figures: dict[str, plt.Figure] = {}
    if len(configs):
        figures["heatmap_top1"] = fig_heatmaps(configs, best)
    if len(picked):
        figures["fig5_training_curves"] = fig_training_curves(curves, picked)
        if len(_with_layers(picked)):
            figures["fig2_layer_ratios"] = fig_layer_ratios(_with_layers(picked))
            rotating = _with_layers(picked)
            rotating = rotating[[_has_rotation(d) for d in rotating["run_dir"]]]
            if len(rotating):
                figures["layer_rotation"] = fig_layer_rotation(rotating)
    return figures


def make_figures(sweep: SweepDescription | str | Path, results_root: str | Path = "results",
                 theory_window: tuple[float, float] | None = None, formats: Sequence[str] = FORMATS,
                 quiet: bool = False) -> list[Path]:
    """Draw every figure of ``sweep`` (its description or folder) and save it; returns the files written."""
    sweep = as_description(sweep)
    res = Path(results_root) / sweep.name
    runs, curves = read_tables(sweep, results_root, quiet)
    out = res / rundir.FIGURES_DIR
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    configs, best, picked = _best_config_runs(runs)  # selected once, for the figures and the theory tables
    for stem, fig in _draw(curves, configs, best, picked).items():
        written += _save(fig, out, stem, formats)
    have_layers = _with_layers(picked)
    if len(have_layers):
        per_layer, summary = theory_tables(have_layers, theory_window)
        for name, frame in ((rundir.THEORY_AGREEMENT, per_layer), (rundir.THEORY_SUMMARY, summary)):
            files.atomic_write(res / name, lambda tmp, f=frame: f.to_csv(tmp, index=False))
            written.append(res / name)
        if not quiet:
            print("theory agreement (rel. error of sqrt(mean ||g||²)/||x|| and of the rotation vs prediction, "
                  "best configs):")
            for _, r in summary.iterrows():
                print(f"  {r['optimizer']} ({r['n_seeds']} seeds, window {r['window_start']:g}-{r['window_end']:g}):"
                      f" {format_summary(r.to_dict())}")
                print(f"    end of training: {r['verdict']}")
    if not quiet:
        print(f"{sweep.name}: {len(written)} files -> {out}/")
    return written
