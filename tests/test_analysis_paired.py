"""Paired statistics (corrected - plain, per seed, 95% t interval) and time-to-target, with
exact numbers on synthetic runs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_runs import write_run

from imagenet_repro.analysis.aggregate import aggregate_runs, format_summary, write_aggregate
from imagenet_repro.analysis.paired import (
    CORRECTED,
    default_target,
    format_paired,
    paired_display,
    t_interval,
)
from imagenet_repro.errors import ConfigError
from imagenet_repro.sweep.spec import load_spec

N = 100  # steps 0..99: the 40-60% window is steps 40..59, the last 10% is 90..99
T975_2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2): 3 seeds


def grad_with_tail_ratio(c: float) -> np.ndarray:
    """||g|| = 1 except c over the last 10% of steps: tail ratio exactly c."""
    return np.where(np.arange(N) >= 90, c, 1.0)


def run(root: Path, optimizer: str, lr: float, seed: int, final: float, tail: float, **kw) -> Path:
    # 4 epochs of 25 steps; the final top-1 is the last eval's, the val loss 1 + 3 (0.8 - top-1)
    return write_run(root / f"{optimizer}-{lr:g}-s{seed}", optimizer=optimizer, lr=lr, wd=5e-5, seed=seed,
                     n_steps=N, epochs=4, layer_every=10, n_layers=4, sweep_name="p",
                     eval_top1=kw.pop("eval_top1", [0.5, 0.6, 0.65, final]),
                     overrides={"grad_norm": grad_with_tail_ratio(tail)}, **kw)


@pytest.fixture(scope="module")
def agg(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    for seed, (top1, tail) in enumerate([(0.70, 1.5), (0.71, 1.6), (0.72, 1.4)]):
        run(root, "sgd", 0.5, seed, top1, tail)
    for seed, (top1, tail) in enumerate([(0.72, 1.0), (0.72, 1.1), (0.74, 1.0)]):
        run(root, "sgdc", 0.5, seed, top1, tail)
    for seed, (top1, tail) in enumerate([(0.73, 1.2), (0.70, 1.25), (0.76, 1.0)]):  # sgdc's best: mean 0.73
        run(root, "sgdc", 0.1, seed, top1, tail)
    run(root, "sgdc", 0.5, 3, 0.99, 1.0, state="diverged", stop_fraction=0.7)  # not paired; lr 0.5 not eligible
    return aggregate_runs(sorted(root.iterdir()))


def row(paired: pd.DataFrame, comparison: str, metric: str) -> pd.Series:
    hit = paired[(paired.comparison == comparison) & (paired.metric == metric)]
    assert len(hit) == 1, hit
    return hit.iloc[0]


def test_t_interval_matches_the_formula():
    mean, sd, lo, hi = t_interval(np.array([0.02, 0.01, 0.02]))
    assert mean == pytest.approx(1 / 60) and sd == pytest.approx(0.01 / math.sqrt(3))
    assert (lo, hi) == pytest.approx((1 / 60 - T975_2 * 0.01 / 3, 1 / 60 + T975_2 * 0.01 / 3))
    one = t_interval(np.array([0.5]))
    assert one[0] == 0.5 and all(math.isnan(v) for v in one[1:])


def test_paired_differences_at_the_same_config(agg):
    p = agg.paired
    assert set(p.comparison) == {"same (lr, wd)", "each at its best"}
    assert set(p.metric) == {"final_top1", "grad_norm_tail_ratio", "final_eval_loss"}
    top1 = row(p, "same (lr, wd)", "final_top1")  # diffs 0.02 0.01 0.02
    assert (top1.plain, top1.corrected, top1.plain_lr_max, top1.corrected_lr_max) == ("sgd", "sgdc", 0.5, 0.5)
    assert top1.n_seeds == 3 and top1.seeds == "0 1 2" and top1.ci_method == "t"  # seed 3 diverged: not paired
    assert top1.mean_diff == pytest.approx(0.0166666667) and top1.sd_diff == pytest.approx(0.0057735027)
    assert (top1.ci_low, top1.ci_high) == pytest.approx((0.0023244909, 0.0310088424))
    assert not top1.includes_zero
    tail = row(p, "same (lr, wd)", "grad_norm_tail_ratio")  # diffs -0.5 -0.5 -0.4
    assert tail.mean_diff == pytest.approx(-0.4666666667)
    assert (tail.ci_low, tail.ci_high) == pytest.approx((-0.6100884243, -0.3232449090))
    assert (tail.plain_mean, tail.corrected_mean) == pytest.approx((1.5, 1.0333333333))
    loss = row(p, "same (lr, wd)", "final_eval_loss")  # -3 x the top-1 diffs
    assert loss.mean_diff == pytest.approx(-0.05)
    assert (loss.ci_low, loss.ci_high) == pytest.approx((-0.0930265273, -0.0069734727))


def test_paired_differences_each_at_its_best(agg):
    top1 = row(agg.paired, "each at its best", "final_top1")  # sgdc best: lr 0.1 (mean 0.73 > 0.7267)
    assert (top1.plain_lr_max, top1.corrected_lr_max) == (0.5, 0.1)
    assert top1.n_seeds == 3
    assert top1.mean_diff == pytest.approx(0.02) and top1.sd_diff == pytest.approx(0.0264575131)
    assert (top1.ci_low, top1.ci_high) == pytest.approx((-0.0457241061, 0.0857241061))
    assert top1.includes_zero
    tail = row(agg.paired, "each at its best", "grad_norm_tail_ratio")  # diffs -0.3 -0.35 -0.4
    assert tail.mean_diff == pytest.approx(-0.35)
    assert (tail.ci_low, tail.ci_high) == pytest.approx((-0.35 - T975_2 * 0.05 / math.sqrt(3),
                                                        -0.35 + T975_2 * 0.05 / math.sqrt(3)))
    assert not tail.includes_zero


def test_printed_table_says_when_the_interval_includes_zero(agg):
    text = format_paired(agg.paired)
    assert "Student's t interval" in text and "scipy.stats.t" in text
    shown = paired_display(agg.paired)
    best_top1 = shown[(shown.comparison == "each at its best") & (shown.metric == "final top-1 (pp)")].iloc[0]
    assert best_top1["verdict"] == "interval includes 0: no significant difference"
    assert best_top1["mean diff"] == "2.00" and best_top1["95% CI (t)"] == "[-4.57, 8.57]"
    same_top1 = shown[(shown.comparison == "same (lr, wd)") & (shown.metric == "final top-1 (pp)")].iloc[0]
    assert same_top1["verdict"] == "sgdc higher (interval excludes 0)"


def test_paired_csv_written_beside_summary(agg, tmp_path):
    write_aggregate(agg, tmp_path)
    back = pd.read_csv(tmp_path / "paired.csv")
    assert len(back) == 6 and back.ci_low.notna().all()


def test_no_pair_no_rows(tmp_path):
    for seed in (0, 1):
        run(tmp_path, "sgd", 0.5, seed, 0.7, 1.5)
    agg = aggregate_runs(sorted(tmp_path.iterdir()))
    assert agg.paired.empty and "no plain/corrected optimizer pair" in format_paired(agg.paired)
    assert CORRECTED == {"sgd": "sgdc", "adamw": "adamc"}


def test_time_to_target_default_and_explicit(tmp_path):
    # 4 epochs of 25 steps: evals at steps 25, 50, 75, 100
    a = run(tmp_path, "sgd", 0.5, 0, 0.80, 1.5, eval_top1=[0.5, 0.76, 0.78, 0.80])
    b = run(tmp_path, "sgd", 0.5, 1, 0.70, 1.5, eval_top1=[0.5, 0.6, 0.65, 0.70])
    c = run(tmp_path, "sgd", 0.5, 2, 0.80, 1.5, eval_top1=[0.5, 0.8, 0.8, 0.80])
    agg = aggregate_runs([a, b, c])  # synthetic runs are "imagenet": the AlgoPerf target 0.7743
    runs = agg.runs.set_index("seed")
    assert default_target("imagenet") == 0.7743 and (runs.target_top1 == 0.7743).all()
    assert runs.steps_per_epoch.tolist() == [25.0, 25.0, 25.0]
    assert runs.loc[0, "steps_to_target"] == 75 and runs.loc[0, "epochs_to_target"] == 3.0
    assert math.isnan(runs.loc[1, "steps_to_target"])
    assert runs.loc[2, "steps_to_target"] == 50
    cfg = agg.configs.iloc[0]
    assert cfg.n_reached_target == 2 and cfg.steps_to_target_mean == 62.5 and cfg.epochs_to_target_mean == 2.5
    assert "62" in format_summary(agg.summary)  # the "steps to target" column
    explicit = aggregate_runs([a, b, c], target_top1=0.6).runs.set_index("seed")
    assert explicit.steps_to_target.tolist() == [50.0, 50.0, 50.0]


def test_spec_target_accessor(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\n")
    assert load_spec(spec).target_top1 is None
    spec.write_text("name: s\ntarget_top1: 0.7743\n")
    assert load_spec(spec).target_top1 == 0.7743
    for bad in ("77.43", "high"):
        spec.write_text(f"name: s\ntarget_top1: {bad}\n")
        with pytest.raises(ConfigError, match="target_top1"):
            load_spec(spec).target_top1
