"""``repro report SPEC``: one self-contained HTML page with a sweep's whole story.

``make_report(sweep)`` (a sweep's description or folder, see :mod:`imagenet_repro.sweepdir`) writes ``results/<sweep>/report.html``: the run status table (every
run, with why it is not in the statistics), the best config per optimizer, the paired
statistics (corrected - plain, per seed, 95% t interval), time-to-target per config, Fig 5,
the heatmaps, the per-layer ratio figure and the theory-agreement tables.  Figures are
embedded as base64 PNG and the style is inline, so the file can be opened anywhere or
sent on its own: it references no other file.

It reads ``runs.parquet`` (running :func:`aggregate_sweep` first if it is missing) and the
PNGs of ``figures/`` (running :func:`make_figures` first if Fig 5 is missing), and
recomputes the config, summary and paired tables from ``runs.parquet``, so the page always
agrees with it.
"""
from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from imagenet_repro import files, rundir
from imagenet_repro.analysis.aggregate import aggregate_sweep, config_table, select_best, summarize
from imagenet_repro.analysis.aggregate import summary_table as aggregate_summary_table
from imagenet_repro.analysis.figures import make_figures
from imagenet_repro.analysis.paired import CI_DESCRIPTION, CORRECTED, SWITCHED, paired_display, paired_table
from imagenet_repro.rundir import RunState
from imagenet_repro.sweepdir import SweepDescription, as_description

REPORT = rundir.REPORT
FIGURES = [("fig5_training_curves.png", "Fig 5: training curves of each optimizer's best config"),
           ("heatmap_top1.png", "Final top-1 over the (lr, wd) grid"),
           ("fig2_layer_ratios.png", "Per-layer ||g||/||x|| against the steady-state prediction"),
           ("layer_rotation.png", "Per-layer rotation per step (angle between x_t and x_t+1) against the steady-state "
                                  "rotation: plain and corrected optimizer side by side")]
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
table.numbers td { white-space: nowrap; }
tr.state-diverged td { background: #fde8e8; } tr.state-failed td, tr.state-corrupt td { background: #fff3cd; }
tr.state-running td, tr.state-pending td { background: #eef4ff; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; } .note { color: #555; font-size: .9em; }
.verdict-zero { color: #7a5b00; } .verdict-sig { color: #0a6b2d; font-weight: 600; }
"""


def _table(frame: pd.DataFrame, row_classes: list[str] | None = None, css: str = "") -> str:
    if frame.empty:
        return '<p class="note">(none)</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i, (_, r) in enumerate(frame.iterrows()):
        cls = f' class="{row_classes[i]}"' if row_classes else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r) + "</tr>")
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pct(v) -> float:
    return 100 * v if v is not None and np.isfinite(v) else np.nan


# the report lists the runs that need a look first
PROBLEMS_FIRST = (RunState.diverged, RunState.failed, RunState.corrupt, RunState.running, RunState.pending,
                  RunState.queued, RunState.unknown, RunState.done)


def status_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    order = {s: i for i, s in enumerate(PROBLEMS_FIRST)}
    r = runs.assign(_o=runs["state"].map(order).fillna(9)).sort_values(["_o", "optimizer", "lr_max", "wd", "seed"])
    table = pd.DataFrame({
        "run": r["run_id"], "state": r["state"], "optimizer": r["optimizer"], "lr_max": r["lr_max"], "wd": r["wd"],
        "seed": r["seed"].map(lambda s: "-" if pd.isna(s) else str(int(s))),
        "final top-1 %": r["final_top1"].map(_pct), "steps to target": r["steps_to_target"],
        "last step": r["last_step"], "problem": r["problem"].fillna("")})
    return table, [f"state-{s}" for s in r["state"]]


# the report's column names for aggregate.summary_table's ASCII ones
HTML_SUMMARY_NAMES = {"|g| tail ratio": "‖g‖ tail ratio", "|g|/|x| tail ratio": "‖g‖/‖x‖ tail ratio (normalized layers)",
                      "|x| tail ratio": "‖x‖ tail ratio"}


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The best config per optimizer, one row each (:func:`aggregate.summary_table`), as the report names it."""
    return aggregate_summary_table(summary).rename(columns=HTML_SUMMARY_NAMES)


def target_table(configs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    if configs.empty:
        return pd.DataFrame()
    return pd.DataFrame({
        "optimizer": configs["optimizer"], "lr_max": configs["lr_max"], "wd": configs["wd"],
        "done seeds": configs["n_done"], "reached target": configs["n_reached_target"],
        "steps to target (mean)": configs["steps_to_target_mean"],
        "steps to target (std)": configs["steps_to_target_std"],
        "epochs to target (mean)": configs["epochs_to_target_mean"],
        "final top-1 % (mean)": configs["final_top1_mean"].map(_pct)})


def _figure(path: Path, caption: str) -> str:
    if not path.is_file():
        return f'<p class="note">({html.escape(path.name)} was not drawn: no run to plot)</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _paired_section(paired: pd.DataFrame) -> str:
    if paired.empty:
        return ('<p class="note">No plain/corrected optimizer pair with done runs in this sweep (pairs: '
                + html.escape(", ".join(f"{p} / {c}" for p, c in CORRECTED.items()) + f", X / X{SWITCHED}")
                + ").</p>")
    shown = paired_display(paired)
    sentences = []
    for (_, r), (_, d) in zip(paired.iterrows(), shown.iterrows()):
        if r["comparison"] != "each at its best":
            continue
        if r["includes_zero"] is None or r["n_seeds"] < 2:
            text, cls = f"{d['metric']}: {d['verdict']} (n = {r['n_seeds']}).", "verdict-zero"
        elif r["includes_zero"]:
            text = (f"{d['metric']}: mean difference {d['mean diff']}, 95% CI {d['95% CI (t)']} includes zero: "
                    f"no significant difference over {r['n_seeds']} seeds.")
            cls = "verdict-zero"
        else:
            text = (f"{d['metric']}: mean difference {d['mean diff']}, 95% CI {d['95% CI (t)']} excludes zero "
                    f"({r['n_seeds']} seeds).")
            cls = "verdict-sig"
        sentences.append(f'<li class="{cls}">{html.escape(d["pair"])}, each at its best: {html.escape(text)}</li>')
    at_best = (paired["comparison"] == "each at its best").to_numpy()
    every = shown[~at_best]  # one row per shared (lr, wd) and metric: 168 on the flagship's grid
    return (f'<p class="note">Differences are corrected - plain, per seed (same initialisation and data order); '
            f'top-1 in percentage points. {html.escape(CI_DESCRIPTION)}.</p>'
            + (f"<ul>{''.join(sentences)}</ul>" if sentences else "") + _table(shown[at_best])
            + (f"<details><summary>at every shared (lr, wd): {len(every)} rows</summary>{_table(every)}</details>"
               if len(every) else ""))


THEORY_SHOWN = {"optimizer": "optimizer", "n_seeds": "seeds", "n_layers": "layers (ratio)",
                "median_abs_err": "ratio median |err|", "mean_err": "ratio mean err",
                "rotation_n_layers": "layers (rotation)", "rotation_median_abs_err": "rotation median |err|",
                "rotation_mean_err": "rotation mean err", "window_start": "window from", "window_end": "window to",
                "late_median_err": "last 20%: ratio median err", "late_rotation_median_err": "last 20%: rotation median err"}


def theory_summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """theory_summary.csv as the report shows it: the numbers that fit a page, named in words
    (the verdict is its own list)."""
    return summary[[c for c in THEORY_SHOWN if c in summary]].rename(columns=THEORY_SHOWN)


def _verdicts(theory_summary: pd.DataFrame | None) -> str:
    """One plain-words sentence per optimizer: is its end of training what the theory predicts?"""
    if theory_summary is None or "verdict" not in theory_summary:
        return '<p class="note">(no verdict: the theory tables predate it, or no run has per-layer telemetry)</p>'
    items = [f"<li><b>{html.escape(str(r['optimizer']))}</b>: {html.escape(str(r['verdict']))}</li>"
             for _, r in theory_summary.iterrows()]
    return "<ul>" + "".join(items) + "</ul>"


def render_report(name: str, runs: pd.DataFrame, figures_dir: Path, theory_summary: pd.DataFrame | None,
                  theory_layers: pd.DataFrame | None) -> str:
    configs = config_table(runs)
    best = select_best(configs)
    summary = summarize(runs, configs)
    paired = paired_table(runs, best)
    counts = runs["state"].value_counts()
    count_text = ", ".join(f"{int(n)} {s}" for s, n in counts.items())
    target = runs["target_top1"].dropna().unique() if "target_top1" in runs else []
    target_text = (", ".join(f"{100 * t:.2f}%" for t in target) if len(target) else "none")
    status, classes = status_table(runs)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Sweep report: {html.escape(name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Sweep report: {html.escape(name)}</h1>",
        f'<p>{len(runs)} runs: {html.escape(count_text)}. Written {time.strftime("%Y-%m-%d %H:%M:%S %Z")} '
        f"by <code>repro report</code>. Only done runs enter the statistics; a config with a diverged seed "
        f"cannot be the best one.</p>",
        "<h2>Best config per optimizer</h2>",
        _table(summary_table(summary), css="numbers"),
        '<p class="note">mean ± std over the best config\'s seeds; tail ratio = mean over the last 10% of steps / '
        "mean over 40-60%.</p>",
        "<h2>Paired statistics: corrected vs plain optimizer</h2>", _paired_section(paired),
        "<h2>Time to target</h2>",
        f'<p class="note">Target top-1: {html.escape(target_text)} (the spec\'s <code>target_top1</code>, else the '
        "dataset default: ImageNet 77.43%, the AlgoPerf ResNet-50 validation target). Steps to the first eval "
        "(intermediate evals on the val subset included) at or above it; means over the seeds that reached it. "
        "Each optimizer's best config:</p>",
        _table(target_table(best, runs), css="numbers"),
        (f"<details><summary>every config: {len(configs)} rows</summary>"
         f'{_table(target_table(configs, runs), css="numbers")}</details>' if len(configs) > len(best) else ""),
        "<h2>Figures</h2>",
        *(_figure(figures_dir / f, cap) for f, cap in FIGURES),
        "<h2>Theory check</h2>",
        "<p>Is the end-of-training rise of ||g|| what the weight-decay/schedule theory predicts? Per optimizer "
        "(best config, its layers' errors averaged over seeds, median over layers, last 20% of steps, "
        "tolerance ±25%):</p>",
        _verdicts(theory_summary),
        '<p class="note">Relative error of the measured sqrt(mean ||g||²)/||x|| per normalized layer against the '
        "steady-state prediction, and of the measured rotation per step sqrt(mean θ²) against the steady-state "
        "rotation (rotation_*), best configs, in the steady-state window.</p>",
        _table(theory_summary_display(theory_summary) if theory_summary is not None else pd.DataFrame()),
        "<details><summary>per layer and seed</summary>",
        _table(theory_layers if theory_layers is not None else pd.DataFrame()), "</details>",
        "<h2>Run status</h2>", _table(status, classes),
        "</body></html>",
    ]
    return "\n".join(parts)


def make_report(sweep: SweepDescription | str | Path, results_root: str | Path = "results",
                quiet: bool = False) -> Path:
    """Write ``results/<sweep>/report.html`` for ``sweep`` (its description or folder); returns its path."""
    sweep = as_description(sweep)
    res = Path(results_root) / sweep.name
    runs_file = res / rundir.RUNS_TABLE
    if not runs_file.is_file() or "steps_to_target" not in pq.read_schema(runs_file).names:  # missing or older
        aggregate_sweep(sweep, results_root=results_root, quiet=quiet)
    if not (res / rundir.FIGURES_DIR / FIGURES[0][0]).is_file():
        make_figures(sweep, results_root=results_root, quiet=quiet)
    runs = pd.read_parquet(res / rundir.RUNS_TABLE)

    def csv(name: str) -> pd.DataFrame | None:
        path = res / name
        return pd.read_csv(path) if path.is_file() and path.stat().st_size > 1 else None

    page = render_report(sweep.name, runs, res / rundir.FIGURES_DIR, csv(rundir.THEORY_SUMMARY),
                         csv(rundir.THEORY_AGREEMENT))
    out = res / REPORT
    files.atomic_write_text(out, page)
    if not quiet:
        print(f"{sweep.name}: report -> {out}")
    return out
