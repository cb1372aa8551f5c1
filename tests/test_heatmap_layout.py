"""The lr x wd heatmaps keep every title, tick label, axis label, legend and annotation apart
and inside the figure, at each grid size a shipped sweep draws: the demo's 1 lr x 2 wd per
optimizer (sweeps/demo.yaml), the families demo (sweeps/demo_families.yaml: four optimizers,
two of them on another grid) and the flagship's 7 lr x 8 wd (sweeps/paper_fig5.yaml).

Checked on the drawn figure itself: each text's window extent from the figure's renderer
(after the layout engine ran), against every other text and against the figure's box."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import matplotlib.pyplot as plt
import pytest
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from synthetic_runs import write_grid

from imagenet_repro.analysis.aggregate import aggregate_runs, select_best
from imagenet_repro.analysis.figures import THEME, fig_heatmaps

TINY = dict(n_steps=40, epochs=2, layer_every=20, n_layers=2)
FLAGSHIP_LRS = tuple(2.0**k for k in range(-6, 1))  # sweeps/paper_fig5.yaml: 2^-6 .. 1
FLAGSHIP_WDS = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)


def _demo(root: Path) -> list[Path]:
    return write_grid(root, "demo", lrs=(0.1,), wds=(0.02, 0.04), seeds=(0, 1, 2), **TINY)


def _families(root: Path) -> list[Path]:
    return (write_grid(root, "fam", optimizers=("sgd", "sgdc"), lrs=(0.1,), wds=(0.02,), seeds=(0, 1), **TINY)
            + write_grid(root, "fam", optimizers=("adamw", "adamc"), lrs=(0.002,), wds=(0.5,), seeds=(0, 1), **TINY))


def _flagship(root: Path) -> list[Path]:  # stage 1: the whole grid at seed 0, the largest lr diverged
    return write_grid(root, "flag", lrs=FLAGSHIP_LRS, wds=FLAGSHIP_WDS, seeds=(0,), diverge_lr=1.0, **TINY)


GRIDS = {"demo 1x2": _demo, "families": _families, "flagship 7x8": _flagship}


def _drawn(labels: list[Text], view, coord: int) -> list[Text]:
    """The tick labels at a tick inside the axis' view (a locator also returns ones beyond it)."""
    lo, hi = sorted(view)
    tol = 1e-9 * max(abs(hi - lo), 1e-300)
    return [t for t in labels if lo - tol <= t.get_position()[coord] <= hi + tol]


def _texts(fig: Figure) -> list[tuple[str, Text]]:
    """Every visible, non-empty text of the figure that must stay clear of the others."""
    out: list[tuple[str, Text]] = []
    for name in ("_suptitle", "_supxlabel", "_supylabel"):
        t = getattr(fig, name, None)
        if t is not None:
            out.append((name.strip("_"), t))
    out += [("figure text", t) for t in fig.texts if all(t is not s for _, s in out)]
    for i, ax in enumerate(fig.axes):
        where = f"axes {i} ({ax.get_label() or ax.get_title() or 'colorbar'})"
        out += [(f"{where} title", t) for t in (ax.title, ax._left_title, ax._right_title)]
        out += [(f"{where} x label", ax.xaxis.label), (f"{where} y label", ax.yaxis.label)]
        out += [(f"{where} x tick", t) for t in _drawn(ax.get_xticklabels(), ax.xaxis.get_view_interval(), 0)]
        out += [(f"{where} y tick", t) for t in _drawn(ax.get_yticklabels(), ax.yaxis.get_view_interval(), 1)]
    return [(k, t) for k, t in out if t.get_visible() and t.get_text().strip()]


def _px(box: Bbox) -> str:
    return "x {:.0f}..{:.0f}, y {:.0f}..{:.0f} px".format(box.x0, box.x1, box.y0, box.y1)


def layout_problems(fig: Figure) -> list[str]:
    """What overlaps or sticks out of ``fig``, one line each (empty: the layout is clean)."""
    fig.canvas.draw()  # runs the layout engine
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    boxes: list[tuple[str, Bbox]] = [(f"{k} {t.get_text()!r}", t.get_window_extent(renderer)) for k, t in _texts(fig)]
    boxes += [(f"legend {i}", leg.get_window_extent(renderer)) for i, leg in enumerate(fig.legends)]
    boxes += [(f"axes legend {i}", ax.get_legend().get_window_extent(renderer))
              for i, ax in enumerate(fig.axes) if ax.get_legend() is not None]
    problems = []
    for name, box in boxes:
        if box.x0 < page.x0 or box.y0 < page.y0 or box.x1 > page.x1 or box.y1 > page.y1:
            problems.append(f"{name} sticks out of the figure: {_px(box)} vs {_px(page)}")
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        if box_a.overlaps(box_b):
            problems.append(f"{a} overlaps {b}")
    for i, ax in enumerate(fig.axes):  # the cell annotations stay inside their panel
        frame = ax.get_window_extent(renderer)
        for t in ax.texts:
            box = t.get_window_extent(renderer)
            if t.get_text().strip() and not (frame.x0 <= box.x0 and box.x1 <= frame.x1
                                             and frame.y0 <= box.y0 and box.y1 <= frame.y1):
                problems.append(f"axes {i} annotation {t.get_text()!r} sticks out of its panel")
    return problems


@pytest.fixture(scope="module", params=list(GRIDS))
def heatmap(request, tmp_path_factory) -> Iterator[tuple[str, Figure]]:
    agg = aggregate_runs(GRIDS[request.param](tmp_path_factory.mktemp("runs")), workers=2)
    with plt.rc_context():  # make_figures' theme, without leaking it into other tests
        sns.set_theme(**THEME)
        fig = fig_heatmaps(agg.configs, select_best(agg.configs))
        fig.canvas.draw()
    yield request.param, fig
    plt.close(fig)


def test_heatmap_texts_are_apart_and_inside_the_figure(heatmap):
    name, fig = heatmap
    problems = layout_problems(fig)
    assert not problems, f"{name}: " + "\n".join(problems)


def _figure(**kw) -> Figure:
    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def test_the_layout_check_sees_an_overlap_and_a_clipped_label():
    fig = _figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.set_title("a title long enough to run out of a three-inch figure on both sides")
    assert any("sticks out of the figure" in p for p in layout_problems(fig))
    fig = _figure(figsize=(4, 3), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.set_title("left panel: a long title")
    right.set_title("right panel: a long title")
    assert any("overlaps" in p for p in layout_problems(fig))
    fig = _figure(figsize=(4, 3), layout="constrained")
    fig.subplots(1, 2)[0].set_title("short")
    assert layout_problems(fig) == []


def test_every_config_with_a_diverged_seed_is_marked(heatmap):
    name, fig = heatmap
    panels = [ax for ax in fig.axes if ax.get_title()]
    marks = [sum(t.get_text().split("\n")[-1].startswith("D") for t in ax.texts) for ax in panels]
    # the flagship's lr 1.0 diverged at seed 0 at each of the 8 wds, in both panels; the demos never diverge
    assert marks == ([len(FLAGSHIP_WDS)] * 2 if name.startswith("flagship") else [0] * len(panels))
