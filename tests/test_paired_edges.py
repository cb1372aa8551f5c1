"""Paired statistics on small hand-made tables: the sign of the difference, which seeds pair,
the interval's edges, the verdicts and the printed numbers; time-to-target's edges."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from imagenet_repro.analysis.paired import (
    PAIRED_COLUMNS,
    PAIRED_METRICS,
    default_target,
    format_paired,
    paired_display,
    paired_table,
    t_interval,
    time_to_target,
)


def runs_table(rows) -> pd.DataFrame:
    """(optimizer, lr, wd, seed, final_top1, tail, loss, state) per run."""
    return pd.DataFrame(rows, columns=["optimizer", "lr_max", "wd", "seed", "final_top1", "grad_norm_tail_ratio",
                                       "final_eval_loss", "state"])


def best_table(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["optimizer", "lr_max", "wd"])


RUNS = runs_table([
    ("sgd", 0.1, 0.01, 0, 0.70, 1.5, 1.0, "done"),
    ("sgd", 0.1, 0.01, 1, 0.72, 1.6, 0.9, "done"),
    ("sgd", 0.1, 0.01, 2, 0.60, 1.7, 1.1, "done"),
    ("sgd", 0.1, 0.01, 3, 0.60, 1.7, 1.1, "done"),       # sgdc's seed 3 diverged: not paired
    ("sgd", 0.2, 0.01, 0, 0.50, 2.0, 2.0, "done"),       # sgdc has no lr 0.2: no same-config pair
    ("sgdc", 0.1, 0.01, 0, 0.71, 1.0, 0.95, "done"),
    ("sgdc", 0.1, 0.01, 1, 0.74, 1.1, np.nan, "done"),   # no val loss: seed 1 leaves that metric only
    ("sgdc", 0.1, 0.01, 2, 0.66, 1.2, 1.0, "done"),
    ("sgdc", 0.1, 0.01, 3, 0.99, 1.0, 0.1, "diverged"),
    ("sgdc", 0.3, 0.02, 0, 0.80, 0.9, 0.8, "done"),
    ("sgdc", 0.3, 0.02, 4, 0.80, 0.9, 0.8, "done"),      # seed 4: sgd has none
])


def test_same_config_pairs_by_seed_and_subtracts_plain_from_corrected():
    paired = paired_table(RUNS, best_table([]))
    assert list(paired.columns) == PAIRED_COLUMNS
    assert set(paired.comparison) == {"same (lr, wd)"} and len(paired) == 3
    top1 = paired[paired.metric == "final_top1"].iloc[0]
    diffs = np.array([0.01, 0.02, 0.06])
    assert (top1.plain_lr_max, top1.plain_wd, top1.corrected_lr_max, top1.corrected_wd) == (0.1, 0.01, 0.1, 0.01)
    assert top1.n_seeds == 3 and top1.seeds == "0 1 2"
    assert top1.mean_diff == pytest.approx(diffs.mean()) and top1.sd_diff == pytest.approx(diffs.std(ddof=1))
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    assert (top1.ci_low, top1.ci_high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert top1.plain_mean == pytest.approx(np.mean([0.70, 0.72, 0.60]))
    assert top1.corrected_mean == pytest.approx(np.mean([0.71, 0.74, 0.66]))
    assert bool(top1.includes_zero) is True and top1.ci_method == "t"
    loss = paired[paired.metric == "final_eval_loss"].iloc[0]
    assert loss.seeds == "0 2" and loss.n_seeds == 2 and loss.mean_diff == pytest.approx(-0.075)
    assert loss.plain_mean == pytest.approx(1.05)  # over the paired seeds only
    tail = paired[paired.metric == "grad_norm_tail_ratio"].iloc[0]
    assert tail.mean_diff == pytest.approx(-0.5) and tail.sd_diff == pytest.approx(0.0)
    assert (tail.ci_low, tail.ci_high) == pytest.approx((-0.5, -0.5)) and bool(tail.includes_zero) is False


def test_each_at_its_best_pairs_the_two_best_configs():
    paired = paired_table(RUNS, best_table([("sgd", 0.1, 0.01), ("sgdc", 0.3, 0.02)]))
    best = paired[paired.comparison == "each at its best"]
    assert len(best) == 3
    top1 = best[best.metric == "final_top1"].iloc[0]
    assert (top1.plain_lr_max, top1.plain_wd, top1.corrected_lr_max, top1.corrected_wd) == (0.1, 0.01, 0.3, 0.02)
    assert top1.seeds == "0" and top1.n_seeds == 1 and top1.mean_diff == pytest.approx(0.10)
    assert math.isnan(top1.sd_diff) and math.isnan(top1.ci_low) and top1.includes_zero is None
    shown = paired_display(paired)
    one = shown[(shown.comparison == "each at its best") & (shown.metric == "final top-1 (pp)")].iloc[0]
    assert one["verdict"] == "too few paired seeds for an interval" and one["95% CI (t)"] == "[-, -]"
    assert one["config"] == "sgd: lr=0.1 wd=0.01; sgdc: lr=0.3 wd=0.02" and one["mean diff"] == "10.00"
    assert one["pair"] == "sgdc - sgd" and one["n seeds"] == 1
    same_tail = shown[(shown.comparison == "same (lr, wd)") & (shown.metric == "||g|| tail ratio")].iloc[0]
    assert same_tail["verdict"] == "sgdc lower (interval excludes 0)" and same_tail["mean diff"] == "-0.5"
    assert same_tail["config"] == "lr=0.1 wd=0.01" and same_tail["95% CI (t)"] == "[-0.5, -0.5]"
    assert paired_table(RUNS, best_table([("sgd", 0.1, 0.01)])).comparison.eq("same (lr, wd)").all()


def test_only_done_runs_with_a_config_enter_and_a_missing_partner_gives_no_rows():
    alone = paired_table(RUNS[RUNS.optimizer == "sgd"], best_table([]))
    assert alone.empty and list(alone.columns) == PAIRED_COLUMNS  # paired.csv keeps its header
    no_seed = RUNS.copy()
    no_seed.loc[no_seed.optimizer == "sgdc", "seed"] = np.nan
    assert paired_table(no_seed, best_table([])).empty
    adam = RUNS.replace({"optimizer": {"sgd": "adamw", "sgdc": "adamc"}})
    paired = paired_table(adam, best_table([]))
    assert set(zip(paired.plain, paired.corrected)) == {("adamw", "adamc")}
    text = format_paired(paired)
    assert text.startswith("paired differences (corrected - plain, per seed; 95% CI: Student's t interval")
    assert "adamc - adamw" in text
    assert format_paired(paired_table(RUNS.iloc[:0], best_table([]))) == \
        "(no plain/corrected optimizer pair with done runs: sgd/sgdc, adamw/adamc, X/X+corrected)"


def test_every_shared_config_an_interval_of_0_and_two_seeds_get_their_verdicts():
    runs = runs_table([
        ("sgd", 0.1, 0.01, 0, 0.70, 1.5, 1.0, "done"), ("sgd", 0.1, 0.01, 1, 0.72, 1.6, 0.9, "done"),
        ("sgdc", 0.1, 0.01, 0, 0.70, 1.5, 1.0, "done"), ("sgdc", 0.1, 0.01, 1, 0.72, 1.6, 0.9, "done"),  # diffs 0
        ("sgd", 0.2, 0.01, 0, 0.60, 2.0, 1.2, "done"), ("sgd", 0.2, 0.01, 1, 0.62, 2.1, 1.1, "done"),
        ("sgdc", 0.2, 0.01, 0, 0.70, 1.0, 1.0, "done"), ("sgdc", 0.2, 0.01, 1, 0.73, 1.1, 0.9, "done"),
    ])
    paired = paired_table(runs, best_table([]))
    assert sorted(set(paired.plain_lr_max)) == [0.1, 0.2] and len(paired) == 2 * len(PAIRED_METRICS)  # both configs
    equal = paired[paired.plain_lr_max == 0.1]
    assert (equal.ci_low == 0).all() and (equal.ci_high == 0).all() and equal.includes_zero.all()  # [0, 0] holds 0
    shown = paired_display(paired)
    assert set(shown.verdict[(paired.plain_lr_max == 0.1).to_numpy()]) == {"interval includes 0: no significant difference"}
    better = shown[((paired.plain_lr_max == 0.2) & (paired.metric == "final_top1")).to_numpy()].iloc[0]
    assert better.verdict == "sgdc higher (interval excludes 0)"  # two seeds (diffs 0.10, 0.11) are enough
    lines = format_paired(paired).splitlines()
    assert lines[1].split()[:2] == ["pair", "comparison"] and lines[2].split()[:3] == ["sgdc", "-", "sgd"]  # no index


def test_t_interval_edges():
    assert all(math.isnan(v) for v in t_interval(np.array([])))
    mean, sd, low, high = t_interval(np.array([1.0, 3.0]), level=0.9)
    half = stats.t.ppf(0.95, 1) * math.sqrt(2) / math.sqrt(2)
    assert (mean, sd) == pytest.approx((2.0, math.sqrt(2))) and (low, high) == pytest.approx((2 - half, 2 + half))


def test_time_to_target_is_the_first_eval_at_or_above_the_target():
    steps, top1 = np.array([10, 20, 30, 40]), np.array([0.5, 0.75, 0.74, 0.8])
    assert time_to_target(steps, top1, 0.75) == 20.0  # reaching it exactly counts
    assert time_to_target(steps, top1, 0.76) == 40.0
    assert math.isnan(time_to_target(steps, top1, 0.9)) and math.isnan(time_to_target(steps, top1, math.nan))
    assert default_target("imagenet") == 0.7743 and default_target("fashion_mnist") == 0.75
    assert math.isnan(default_target("cifar10")) and math.isnan(default_target(None))
