"""The numbers the science rests on, by hand: the cosine's endpoints with a final LR fraction,
warmup and step boundaries, SGDC's decay factor γ_t/γ_max through a real step, and the
40-60% / last-10% windows of the tail ratio, row by row."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from imagenet_repro.analysis.metrics import (
    MID_WINDOW,
    TAIL_WINDOW,
    bin_index,
    binned_means,
    positions,
    tail_ratio,
    window_mask,
)
from imagenet_repro.config import ScheduleConfig
from imagenet_repro.optim.decay import DecayHook, correct, corrected_weight_decay
from imagenet_repro.optim.sgd import SGD
from imagenet_repro.optim.sgdc import SGDC
from imagenet_repro.train.schedule import LRSchedule


def schedule(total=100, steps_per_epoch=10, peak=0.4, **kw) -> LRSchedule:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = OmegaConf.merge(OmegaConf.structured(ScheduleConfig), kw)
    return LRSchedule(opt, cfg, peak_lr=peak, total_steps=total, steps_per_epoch=steps_per_epoch)


# ---- schedule -----------------------------------------------------------------------------------

def test_cosine_runs_from_the_peak_to_the_final_fraction():
    s = schedule(final_lr_fraction=0.1)
    assert s.lr(0) == pytest.approx(0.4)  # no warmup: the peak on the first step
    assert s.lr(50) == pytest.approx(0.4 * (0.1 + 0.9 * 0.5))  # halfway: the mean of peak and floor
    assert s.lr(25) == pytest.approx(0.4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert s.lr(99) == pytest.approx(0.4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.99))))
    assert s.lr(99) > 0.04 and s.lr(100) == pytest.approx(0.04)  # T itself would be the floor: never taken
    lrs = [s.lr(t) for t in range(100)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # strictly decreasing


def test_warmup_is_linear_from_the_first_step_then_the_cosine_starts_at_the_peak():
    s = schedule(warmup_epochs=0.5, final_lr_fraction=0.0)  # 5 steps of warmup
    assert s.warmup_steps == 5
    assert [s.lr(t) for t in range(5)] == pytest.approx([0.08, 0.16, 0.24, 0.32, 0.4])
    assert s.lr(5) == pytest.approx(0.4)
    assert s.lr(5 + 95 // 2) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 47 / 95)))
    s = schedule(name="step", warmup_epochs=0.3, milestones=[0.5], step_gamma=0.5)
    assert [s.lr(t) for t in (0, 2, 3, 49, 50)] == pytest.approx([0.4 / 3, 0.4, 0.4, 0.4, 0.2])


def test_step_schedule_milestones_are_rounded_fractions_of_the_run():
    s = schedule(name="step", total=10, milestones=[0.75, 0.26], step_gamma=0.5)  # unsorted: 2.6 -> 3, 7.5 -> 8
    assert s.milestones == [3, 8]
    assert [s.lr(t) for t in range(10)] == pytest.approx([0.4] * 3 + [0.2] * 5 + [0.1] * 2)


def test_one_step_run_and_apply_write_gamma_t_into_every_group_and_leave_gamma_max_alone():
    assert schedule(total=1).lr(0) == pytest.approx(0.4)
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 9.0}], lr=1.0)
    cfg = OmegaConf.merge(OmegaConf.structured(ScheduleConfig), {"final_lr_fraction": 0.5})
    s = LRSchedule(opt, cfg, peak_lr=0.2, total_steps=4, steps_per_epoch=2)
    assert s.apply(2) == pytest.approx(0.2 * (0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi / 2))))
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.15)] * 2
    assert all("peak_lr" not in g for g in opt.param_groups)  # γ_max is set where the groups are made, only


# ---- the corrected decay --------------------------------------------------------------------------

def test_the_corrected_decay_is_lambda_times_gamma_t_over_gamma_max_on_normalized_groups_only():
    assert corrected_weight_decay({"normalized": True, "weight_decay": 0.04, "lr": 0.1, "peak_lr": 0.4}) == \
        pytest.approx(0.01)
    assert corrected_weight_decay({"normalized": False, "weight_decay": 0.04, "lr": 0.1, "peak_lr": 0.4}) == 0.04
    assert corrected_weight_decay({"normalized": True, "weight_decay": 0.04, "lr": 0.4, "peak_lr": 0.4}) == 0.04


def test_one_step_decays_a_normalized_weight_by_lr_squared_lambda_over_lr_max():
    """Zero gradient, no momentum: x <- x - γ_t λ_t x, λ_t = λ γ_t/γ_max on the normalized group (SGDC) and
    λ elsewhere; plain SGD decays both by λ."""
    lam, lr, lr_max = 0.5, 0.1, 0.4

    def one_step(cls):
        x, y = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
        opt = cls([{"params": [x], "normalized": True, "weight_decay": lam, "peak_lr": lr_max},
                   {"params": [y], "normalized": False, "weight_decay": lam, "peak_lr": lr_max}], lr=lr, momentum=0.0)
        x.grad, y.grad = torch.zeros_like(x), torch.zeros_like(y)
        opt.step()
        assert [g["weight_decay"] for g in opt.param_groups] == [lam, lam]  # the nominal λ is kept
        return x.detach()[0].item(), y.detach()[0].item(), opt.corrects_decay

    assert one_step(SGDC) == (pytest.approx(1 - lr * lam * lr / lr_max), pytest.approx(1 - lr * lam), True)
    assert one_step(SGD) == (pytest.approx(1 - lr * lam), pytest.approx(1 - lr * lam), False)


def test_decay_hook_groups_get_the_normalized_default_and_a_missing_or_zero_peak_is_refused():
    opt = SGD([torch.zeros(2, requires_grad=True)], lr=0.3, momentum=0.0)
    assert isinstance(opt, DecayHook)
    assert "peak_lr" not in opt.param_groups[0] and opt.param_groups[0]["normalized"] is False
    # the whole message: what is missing, what it is, where a suite run gets it
    with pytest.raises(ValueError, match=r"^a normalized param group needs peak_lr \(the schedule's peak LR γ_max; "
                                         r"imagenet_repro\.optim\.param_groups\.param_groups\(\) sets it\)$"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "normalized": True})
    opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "peak_lr": 0.7, "normalized": True})
    assert opt.param_groups[1]["peak_lr"] == 0.7 and opt.param_groups[1]["normalized"] is True
    for bad in (0.0, -0.1):
        with pytest.raises(ValueError, match=r"invalid peak_lr \(the schedule's peak LR\)"):
            opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "peak_lr": bad})
    corrected = correct(opt)
    assert corrected is opt and opt.corrects_decay is True and opt.decay is corrected_weight_decay


def test_correct_leaves_an_optimizer_that_already_corrects_alone():
    opt = SGDC([{"params": [torch.zeros(2, requires_grad=True)], "normalized": True, "peak_lr": 0.4}], lr=0.4)
    hooks = len(opt._optimizer_step_pre_hooks)
    decay = opt.decay
    assert correct(opt) is opt and opt.decay == decay and len(opt._optimizer_step_pre_hooks) == hooks


# ---- windows and the tail ratio -----------------------------------------------------------------

def test_windows_hold_exactly_steps_40_to_59_and_90_to_99():
    pos = positions(np.arange(100))
    assert np.flatnonzero(window_mask(pos, MID_WINDOW)).tolist() == list(range(40, 60))
    assert np.flatnonzero(window_mask(pos, TAIL_WINDOW)).tolist() == list(range(90, 100))
    assert MID_WINDOW == (0.4, 0.6) and TAIL_WINDOW == (0.9, 1.0)
    assert positions(np.arange(10, 20)).tolist() == pytest.approx([i / 10 for i in range(10)])
    assert positions(np.array([])).size == 0
    assert positions(np.array([5])).tolist() == [0.0]


def test_positions_against_the_planned_steps():
    """``total_steps``: a run stopped early sits where it stopped, not stretched over [0, 1)."""
    pos = positions(np.arange(50), total_steps=100)
    assert pos.tolist() == pytest.approx([i / 100 for i in range(50)])
    assert positions(np.arange(10, 15), total_steps=20).tolist() == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])


def test_tail_ratio_is_the_mean_of_steps_90_99_over_the_mean_of_steps_40_59():
    steps = np.arange(100)
    values = steps.astype(float) + 1.0  # every row different: any boundary slip changes a mean
    assert tail_ratio(steps, values) == pytest.approx(95.5 / 50.5)
    values[95] = np.nan  # a non-finite row leaves both means (here the tail's)
    assert tail_ratio(steps, values) == pytest.approx(np.mean([v for v in range(91, 101) if v != 96]) / 50.5)
    values = np.ones(100)
    values[40:60] = 0.0
    assert math.isnan(tail_ratio(steps, values))  # a middle mean of 0
    values = np.ones(100)
    values[90:] = np.inf
    assert math.isnan(tail_ratio(steps, values))  # no finite tail row
    # a sparse log (steps 0, 4, 9 of 10): one row in each window is enough
    assert tail_ratio(np.array([0, 4, 9]), np.array([1.0, 2.0, 6.0])) == pytest.approx(3.0)
    assert math.isnan(tail_ratio(np.array([0, 4]), np.array([1.0, 2.0])))  # no tail row


def test_a_window_that_ends_at_1_keeps_rows_past_the_planned_steps():
    """``b >= 1`` includes the last row even where it sits at p >= 1 (logged past ``total_steps``)."""
    pos = positions(np.arange(11), total_steps=10)
    assert pos[-1] == 1.0
    assert np.flatnonzero(window_mask(pos, TAIL_WINDOW)).tolist() == [9, 10]
    assert np.flatnonzero(window_mask(pos, (0.5, 0.9))).tolist() == [5, 6, 7, 8]  # b < 1: half-open


def test_binned_means_ignore_non_finite_values_and_give_nan_for_an_empty_bin():
    assert bin_index(3, 5).tolist() == [0, 1, 2] and bin_index(0, 5).tolist() == []
    out = binned_means({"a": np.array([1.0, np.inf, np.nan, np.nan]), "b": np.arange(4.0)}, 2)
    assert out["a"][0] == 1.0 and math.isnan(out["a"][1]) and out["b"].tolist() == [0.5, 2.5]
    assert binned_means({"a": np.array([])}, 3)["a"].size == 0
    assert binned_means({}, 3) == {}
