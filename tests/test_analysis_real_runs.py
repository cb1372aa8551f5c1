"""aggregate -> figures -> report on real trainer output: a small sweep trained for real on the
Fashion-MNIST .beton files (sgd at lr 0.1 and sgdc at lr 0.2, 2 seeds each, plus one sgd run at
lr 1000 that diverges), checked through the data each figure draws and the numbers the report
shows; and ``repro status --counts-only`` / ``repro sweep --only ... --dry-run`` on that sweep."""
from __future__ import annotations

import html
import json
import math
import re
import socket
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.container import ErrorbarContainer
from matplotlib.patches import Rectangle
from scipy import stats

from imagenet_repro.analysis.aggregate import aggregate_sweep
from imagenet_repro.analysis.figures import draw_figures, read_tables
from imagenet_repro.analysis.report import make_report
from imagenet_repro.cli import main
from imagenet_repro.config import build_config
from imagenet_repro.sweep.spec import load_spec, resolve_runs
from imagenet_repro.train.loop import run_training

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
WD, MOMENTUM, STEPS = 0.005, 0.9, 16  # 1024 images / batch 128 = 8 steps per epoch, 2 epochs
BEST_LR = {"sgd": 0.1, "sgdc": 0.2}
TRAINED = [("sgd", 0.1, 0), ("sgd", 0.1, 1), ("sgdc", 0.2, 0), ("sgdc", 0.2, 1), ("sgd", 1000.0, 0)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, fmnist_tiny) -> dict:
    root = tmp_path_factory.mktemp("real_sweep")
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in fmnist_tiny)}
    overrides.update({"data.train_subset": 1024, "data.val_subset": 500})
    for key in ("optim.lr", "optim.weight_decay"):
        overrides.pop(key)
    overrides["optim.weight_decay"] = WD
    spec = root / "real.yaml"
    spec.write_text(yaml.safe_dump({"name": "real", "runs_root": str(root / "runs"), "base": str(ROOT / "experiments/demo.yaml"),
                                    "overrides": overrides, "axes": {"optimizer": ["sgd", "sgdc"],
                                                                     "optim.lr": [0.1, 0.2, 1000.0], "seed": [0, 1]}}))
    planned = {(r.point["optim.name"], r.point["optim.lr"], r.point["seed"]): r for r in resolve_runs(load_spec(spec))}
    states = {key: run_training(build_config(planned[key].config), planned[key].run_dir) for key in TRAINED}
    assert states == {key: "diverged" if key[1] == 1000.0 else "done" for key in TRAINED}
    results = root / "results"
    aggregate_sweep(load_spec(spec).description(), results_root=results, quiet=True)
    runs, curves = read_tables(load_spec(spec).description(), results, quiet=True)
    return {"spec": spec, "results": results / "real", "runs": runs, "curves": curves,
            "dirs": {key: planned[key].run_dir for key in TRAINED}}


def steps_of(sweep, key) -> pd.DataFrame:
    return pd.read_parquet(sweep["dirs"][key] / "steps.parquet")


def evals_of(sweep, key) -> pd.DataFrame:
    return pd.read_parquet(sweep["dirs"][key] / "eval.parquet")


def theory(opt: str, lr: float, step: np.ndarray) -> np.ndarray:
    """sqrt(2λ(1-β)/γ_t), γ_t the cosine at step t (SGD), or γ_max throughout (SGDC)."""
    gamma = lr * 0.5 * (1 + np.cos(np.pi * step / STEPS)) if opt == "sgd" else np.full(step.shape, lr)
    return np.sqrt(2 * WD * (1 - MOMENTUM) / gamma)


def test_aggregate_rows_match_the_run_folders(sweep):
    runs = sweep["runs"].set_index(["optimizer", "lr_max", "seed"])
    assert len(runs) == 5 and runs["state"].value_counts().to_dict() == {"done": 4, "diverged": 1}
    for key in TRAINED[:4]:
        row, steps = runs.loc[key], steps_of(sweep, key)
        assert row["final_top1"] == evals_of(sweep, key).top1.iloc[-1]
        assert steps.step.tolist() == list(range(STEPS))
        # tail ratio by hand: last 10% of 16 steps = step 15; the 40-60% window = steps 7, 8, 9
        g = steps.grad_norm.to_numpy()
        assert row["grad_norm_tail_ratio"] == pytest.approx(g[15] / g[7:10].mean(), rel=1e-12)
    assert runs.loc[("sgd", 1000.0, 0), "state"] == "diverged"


def test_manifest_records_git_commit_host_and_param_groups(sweep):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    for key in TRAINED[:4]:
        run = sweep["dirs"][key]
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["git_commit"].removesuffix("-dirty") == head and len(head) == 40
        assert manifest["host"] == socket.gethostname() and manifest["starts"][0]["host"] == socket.gethostname()
        groups = manifest["param_groups"]
        assert groups["normalized_rule"] == "graph" and groups["corrected_decay"] is (key[0] == "sgdc")
        layers = pd.read_parquet(run / "layers.parquet")
        assert sorted(groups["normalized"]["names"]) == sorted(layers.layer.unique())  # the 9 convs before a BN
        assert groups["normalized"]["tensors"] == 9 and groups["other"]["tensors"] > 0


def _panel(fig: plt.Figure, title_start: str) -> plt.Axes:
    found = [ax for ax in fig.axes if ax.get_title().startswith(title_start)]
    assert len(found) == 1, [ax.get_title() for ax in fig.axes]
    return found[0]


def _bars(ax: plt.Axes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label -> (x, y) of each mean curve drawn with error bars."""
    return {c.get_label(): (np.asarray(c.lines[0].get_xdata()), np.asarray(c.lines[0].get_ydata()))
            for c in ax.containers if isinstance(c, ErrorbarContainer)}


def test_fig5_draws_each_optimizer_at_its_best_with_the_theory_line(sweep):
    fig = draw_figures(sweep["runs"], sweep["curves"])["fig5_training_curves"]
    try:
        labels = {f"{o} (lr={lr:g}, wd={WD:g})": o for o, lr in BEST_LR.items()}
        acc, grad = _panel(fig, "Test accuracy"), _panel(fig, "Gradient norm")
        ratio = _panel(fig, "Normalized layers")
        for ax in (acc, grad, ratio):
            assert set(_bars(ax)) == set(labels)  # a curve per optimizer, at its best config only
        for label, opt in labels.items():
            keys = [(opt, BEST_LR[opt], s) for s in (0, 1)]
            x, y = _bars(acc)[label]
            ev = pd.concat([evals_of(sweep, k) for k in keys]).groupby("step").top1.mean()
            assert x.tolist() == [8, 16] and y == pytest.approx(100 * ev.to_numpy(), rel=1e-12)
            x, y = _bars(grad)[label]
            st = pd.concat([steps_of(sweep, k) for k in keys]).groupby("step")
            assert x.tolist() == list(range(STEPS)) and y == pytest.approx(st.grad_norm.mean().to_numpy(), rel=1e-12)
            x, y = _bars(ratio)[label]
            measured = pd.concat([steps_of(sweep, k).assign(r=lambda f: f.grad_norm_normalized / f.weight_norm_normalized)
                                  for k in keys]).groupby("step").r.mean()
            assert y == pytest.approx(measured.to_numpy(), rel=1e-12)
        dashed = [line for line in ratio.lines if line.get_linestyle() == "--" and len(line.get_xdata())]
        assert len(dashed) == 2
        colour = {c.lines[0].get_color(): labels[c.get_label()] for c in ratio.containers}
        assert sorted(colour[line.get_color()] for line in dashed) == ["sgd", "sgdc"]  # in its optimizer's colour
        for line in dashed:
            opt = colour[line.get_color()]
            x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
            logged = np.isin(x, [0, 4, 8, 12])  # telemetry.layer_every=4: the prediction is logged there
            assert logged.sum() == 4
            assert y[logged] == pytest.approx(theory(opt, BEST_LR[opt], x[logged]), rel=1e-6)
        assert "theory (dashed)" in [t.get_text() for t in fig.legends[0].get_texts()]
    finally:
        plt.close("all")


def test_heatmap_marks_the_diverged_config_and_boxes_the_best(sweep):
    fig = draw_figures(sweep["runs"], sweep["curves"])["heatmap_top1"]
    try:
        own_lrs = {"sgd": [0.1, 1000.0], "sgdc": [0.2]}  # each optimizer on its own lr grid
        for opt in ("sgd", "sgdc"):
            (ax,) = [a for a in fig.axes if a.get_title() == opt]  # one panel per optimizer, titled by it
            cells = {(round(t.get_position()[0] - 0.5), round(t.get_position()[1] - 0.5)): t.get_text()
                     for t in ax.texts if t.get_text()}
            col = own_lrs[opt].index(BEST_LR[opt])
            top1 = np.mean([evals_of(sweep, (opt, BEST_LR[opt], s)).top1.iloc[-1] for s in (0, 1)])
            expected = {(col, 0): f"{100 * top1:.1f}"}
            if opt == "sgd":
                expected[(1, 0)] = "D"  # lr 1000: its one run diverged
            assert cells == expected, (cells, expected)
            values = np.ma.ravel(ax.collections[0].get_array())
            assert values.shape == (len(own_lrs[opt]),) and values[col] == pytest.approx(100 * top1, rel=1e-12)
            assert int(np.ma.count(values)) == 1  # the diverged config has no mean: no colour, its D instead
            boxes = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
            assert [b.get_xy() for b in boxes] == [(col, 0)] and (boxes[0].get_width(), boxes[0].get_height()) == (1, 1)
    finally:
        plt.close("all")


def test_layer_ratio_figure_has_a_panel_per_optimizer_with_every_layer_and_the_theory(sweep):
    fig = draw_figures(sweep["runs"], sweep["curves"])["fig2_layer_ratios"]
    try:
        for opt in ("sgd", "sgdc"):
            ax = _panel(fig, f"{opt} (lr={BEST_LR[opt]:g}, wd={WD:g}), seed 0")
            layers = pd.read_parquet(sweep["dirs"][(opt, BEST_LR[opt], 0)] / "layers.parquet")
            theory_lines = [line for line in ax.lines if line.get_label() == "theory: steady-state ratio"]
            assert len(theory_lines) == 1
            x, y = np.asarray(theory_lines[0].get_xdata()), np.asarray(theory_lines[0].get_ydata())
            assert x.tolist() == [0, 4, 8, 12] and y == pytest.approx(theory(opt, BEST_LR[opt], x), rel=1e-6)
            per_layer = [line for line in ax.lines if line not in theory_lines]
            assert len(per_layer) == layers.layer.nunique() == 9
            first = layers[layers.step == 0].set_index("layer")
            starts = sorted(float(line.get_ydata()[0]) for line in per_layer)  # an EMA starts at the first value
            assert starts == pytest.approx(sorted(first.grad_norm / first.weight_norm), rel=1e-9)
    finally:
        plt.close("all")


def _fmt(metric: str, v: float) -> str:
    return f"{100 * v:.2f}" if metric == "final_top1" else f"{v:.4g}"


def test_report_shows_the_paired_intervals_and_verdicts_of_paired_csv(sweep):
    page = make_report(load_spec(sweep["spec"]).description(), results_root=sweep["results"].parent, quiet=True).read_text()
    paired = pd.read_csv(sweep["results"] / "paired.csv")
    best = paired[paired.comparison == "each at its best"].set_index("metric")
    assert set(best.index) == {"final_top1", "grad_norm_tail_ratio", "final_eval_loss"}
    runs = sweep["runs"][sweep["runs"].state == "done"].set_index(["optimizer", "seed"])
    for metric, r in best.iterrows():
        # paired.csv against the runs: per-seed sgdc - sgd, Student's t with n - 1 = 1 degree of freedom
        d = np.array([runs.loc[("sgdc", s), metric] - runs.loc[("sgd", s), metric] for s in (0, 1)])
        half = stats.t.ppf(0.975, 1) * d.std(ddof=1) / math.sqrt(2)
        assert r.n_seeds == 2 and (r.plain_lr_max, r.corrected_lr_max) == (0.1, 0.2)
        assert (r.mean_diff, r.ci_low, r.ci_high) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
        label = {"final_top1": "final top-1 (pp)", "grad_norm_tail_ratio": "||g|| tail ratio",
                 "final_eval_loss": "final val loss"}[metric]
        interval = f"[{_fmt(metric, r.ci_low)}, {_fmt(metric, r.ci_high)}]"
        head = f"sgdc - sgd, each at its best: {label}: mean difference {_fmt(metric, r.mean_diff)}, 95% CI {interval}"
        if r.ci_low <= 0 <= r.ci_high:
            cls, text = "verdict-zero", f"{head} includes zero: no significant difference over 2 seeds."
        else:
            cls, text = "verdict-sig", f"{head} excludes zero (2 seeds)."
        assert f'<li class="{cls}">{html.escape(text)}</li>' in page
    # the best-config table: each optimizer's best lr and its mean ± std final top-1 over the 2 seeds
    table = page.split("<h2>Best config per optimizer</h2>")[1].split("</table>")[0]
    rows = [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
            for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)]
    for opt, lr in BEST_LR.items():
        top1 = 100 * np.array([evals_of(sweep, (opt, lr, s)).top1.iloc[-1] for s in (0, 1)])
        (row,) = [r for r in rows if r[:1] == [opt]]
        assert row[1:4] == [f"{lr:g}", f"{WD:g}", "2"]
        assert row[4] == f"{top1.mean():.2f} ± {top1.std(ddof=1):.2f}"  # final top-1 %
    assert 'class="state-diverged"' in page


def test_status_counts_only_on_the_sweep(sweep, capsys):
    assert main(["status", str(sweep["spec"]), "--counts-only"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("sweep real: 12 runs in ")
    counts = dict(part.rsplit(" ", 1) for part in out[0].split(": ", 1)[1].split(": ", 1)[1].split(", "))
    assert {k: int(v) for k, v in counts.items() if int(v)} == {"pending": 7, "done": 4, "diverged": 1}
    assert main(["status", str(sweep["spec"])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # counts, the table's header, 12 runs, then the measured cost of the finished runs and the projection
    assert len(lines) == 1 + 1 + 12 + 2, lines
    assert lines[-2].startswith("cost: measured ") and lines[-1].startswith("  projected sweep: 12 runs, ")


def test_only_on_the_command_line_plans_those_grid_points(sweep, capsys):
    assert main(["sweep", str(sweep["spec"]), "--only", "optimizer=sgdc", "seed=0", "--dry-run",
                 "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    assert "sweep real: 3 runs" in out and "to submit: 2 (new 2, failed 0); already done: 1" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("submit", "skip"))]
    assert sorted((r[0], r[2], float(r[3]), r[5]) for r in rows) == [
        ("skip", "sgdc", 0.2, "0"), ("submit", "sgdc", 0.1, "0"), ("submit", "sgdc", 1000.0, "0")]
