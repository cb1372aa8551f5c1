"""Update health (train.health), its steady-state theory (optim.equilibrium) and the public monitor.

* the device computation against a float64 reference on the same steps (angle, relative
  update, update/gradient cosine, below-ε fraction);
* the derivation's rotation against a simulated scale-invariant weight at equilibrium (SGD
  with momentum, dampening, Nesterov; AdamW), and against Kosson et al.'s values;
* telemetry with the health changes nothing in training (bit for bit);
* the run tables follow the run-folder schema;
* the examples/ loops with NormMonitor: at most 5 added lines, real numbers out.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from imagenet_repro import rundir
from imagenet_repro.optim.adamc import AdamC
from imagenet_repro.optim.adamw import AdamW
from imagenet_repro.optim.equilibrium import adamw_rotation, kosson_adamw, kosson_sgdm, sgd_rotation
from imagenet_repro.optim.sgd import SGD
from imagenet_repro.optim.sgdc import SGDC
from imagenet_repro.train.telemetry import Telemetry

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _groups(model: nn.Module, wd: float = 0.01, lr_max: float = 0.05) -> list[dict]:
    """The suite's groups as optim.param_groups makes them: the normalized one carries γ_max
    (the tests' optimizers run at a flat lr 0.05)."""
    rest = [(n, p) for n, p in model.named_parameters() if n != "0.weight"]
    return [{"params": [model[0].weight], "names": ["0.weight"], "normalized": True, "weight_decay": wd,
             "peak_lr": lr_max},
            {"params": [p for _, p in rest], "names": [n for n, _ in rest], "normalized": False, "weight_decay": 0.0}]


def _telemetry(model, opt, health: bool = True) -> Telemetry:
    return Telemetry(list(model.named_parameters()), {"0.weight"}, predicted=lambda n: math.nan, layer_every=2,
                     flush_every=3, device=torch.device("cpu"), optimizer=opt if health else None,
                     predicted_rotation=lambda n: opt.predicted_rotation(opt.param_groups[0]))


def _train(opt_factory, steps: int = 9, health: bool = True):
    """A few steps with telemetry; returns (layers table, float64 reference per logged step, model)."""
    model = _model()
    opt = opt_factory(_groups(model))
    tel = _telemetry(model, opt, health)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    ref = {}
    for t in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        tel.record(t, 0, opt.param_groups[0]["lr"], loss, 32)
        w0, g = model[0].weight.detach().double().clone(), model[0].weight.grad.double().clone()
        opt.step()
        tel.after_step()
        if t % 2 == 0:
            w1 = model[0].weight.detach().double()
            d = w1 - w0
            cos = (w0 * w1).sum() / (w0.norm() * w1.norm())
            ref[t] = {"angular_update": float(torch.arccos(cos.clamp(-1, 1))),
                      "relative_update": float(d.norm() / w0.norm()),
                      "update_grad_cos": float(-(d * g).sum() / (d.norm() * g.norm()))}
            state = opt.state[model[0].weight]
            if "exp_avg_sq" in state:
                group = opt.param_groups[0]
                v_hat = state["exp_avg_sq"].double() / (1 - group["betas"][1] ** float(state["step"]))
                ref[t]["eps_fraction"] = float((v_hat.sqrt() < 10 * group["eps"]).double().mean())
    tel.flush()
    steps_table, layers = tel.frames()
    return steps_table, layers, ref, model


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_health_matches_a_float64_reference(name):
    if name == "sgd":
        factory = lambda groups: SGD(groups, lr=0.05, momentum=0.9)  # noqa: E731
    else:  # a large ε so that a real share of coordinates is below 10ε
        factory = lambda groups: AdamW(groups, lr=0.05, betas=(0.9, 0.999), eps=3e-3)  # noqa: E731
    steps, layers, ref, _ = _train(factory)
    layers = layers.set_index("step")
    assert sorted(layers.index) == sorted(ref)
    for t, expected in ref.items():
        row = layers.loc[t]
        # the angle is small: float32 arccos could not resolve it, the atan2 form must
        assert row["angular_update"] == pytest.approx(expected["angular_update"], rel=2e-3)
        assert row["relative_update"] == pytest.approx(expected["relative_update"], rel=1e-4)
        if name == "adamw":
            assert row["update_grad_cos"] == pytest.approx(expected["update_grad_cos"], rel=1e-4, abs=1e-5)
            assert row["eps_fraction"] == pytest.approx(expected["eps_fraction"], abs=1e-9)
        else:
            assert math.isnan(row["update_grad_cos"]) and math.isnan(row["eps_fraction"])
        assert row["predicted_rotation"] > 0
    if name == "adamw":
        assert 0 < layers["eps_fraction"].max() < 1  # the check above saw both kinds of coordinate
    on_layer_steps = steps.set_index("step").loc[sorted(ref), "angular_update_normalized"]
    assert np.allclose(on_layer_steps, layers["angular_update"].groupby(level=0).mean())
    assert steps.set_index("step").loc[[1, 3], "angular_update_normalized"].isna().all()


def test_health_changes_nothing_in_training():
    for factory in (lambda g: SGD(g, lr=0.05, momentum=0.9), lambda g: AdamW(g, lr=0.05)):
        *_, with_health = _train(factory, health=True)
        *_, without = _train(factory, health=False)
        for a, b in zip(with_health.parameters(), without.parameters()):
            assert torch.equal(a, b)


def test_steps_hold_the_mean_over_normalized_layers_and_a_flush_before_the_step_drops_its_health():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    names = ["0.weight", "3.weight"]
    rest = [(n, p) for n, p in model.named_parameters() if n not in names]
    opt = SGD([{"params": [model[0].weight, model[3].weight], "names": names, "normalized": True,
                "weight_decay": 0.01, "peak_lr": 0.05},
               {"params": [p for _, p in rest], "names": [n for n, _ in rest], "normalized": False,
                "weight_decay": 0.0}], lr=0.05, momentum=0.9)
    tel = Telemetry(list(model.named_parameters()), set(names), predicted=lambda n: math.nan, layer_every=1,
                    flush_every=10, device=torch.device("cpu"), optimizer=opt, predicted_rotation=lambda n: math.nan)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    for t in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        tel.record(t, 0, 0.05, loss, 32)
        if t == 2:
            tel.flush()  # between the norms and the step (as an eval or a checkpoint may): no health this step
            assert tel.health.armed is False
        opt.step()
        tel.after_step()
    tel.flush()
    steps, layers = tel.frames()
    per_step = layers.groupby("step").angular_update.mean()  # the mean of the two layers, not their sum
    assert (layers[layers.step < 2].angular_update > 0).all() and layers.step.tolist() == [0, 0, 1, 1, 2, 2]
    assert steps.angular_update_normalized.iloc[:2].tolist() == pytest.approx(per_step.iloc[:2].tolist())
    assert layers[layers.step == 2].angular_update.isna().all() and math.isnan(steps.angular_update_normalized.iloc[2])


def test_run_tables_follow_the_run_folder_schema():
    steps, layers, _, _ = _train(lambda g: AdamW(g, lr=0.05))
    for frame, schema in ((steps, rundir.STEPS_SCHEMA), (layers, rundir.LAYERS_SCHEMA)):
        assert list(frame.columns) == list(schema)
        for column, dtype in schema.items():
            if dtype == "object":  # text: object, or pandas' own string dtype
                assert pd.api.types.is_string_dtype(frame[column]) or frame[column].dtype == object, column
            else:
                assert str(frame[column].dtype) == dtype, column


# ---- the theory --------------------------------------------------------------------------

def _simulate(make_opt, dim: int = 1000, steps: int = 600, seed: int = 0) -> tuple[float, float]:
    """A scale-invariant weight: gradient = noise orthogonal to x, of size 1/||x||.
    Returns (rms relative update, rms angle) over the last third of the steps."""
    gen = torch.Generator().manual_seed(seed)
    x = nn.Parameter(5.0 * torch.randn(dim, generator=gen, dtype=torch.float64) / math.sqrt(dim))  # ||x|| ~ 5
    opt = make_opt([x])
    rel, ang = [], []
    for t in range(steps):
        with torch.no_grad():
            noise = torch.randn(dim, generator=gen, dtype=torch.float64)
            unit = x / x.norm()
            x.grad = (noise - (noise @ unit) * unit) / x.norm()
            before = x.detach().clone()
        opt.step()
        if t >= 2 * steps // 3:
            d = x.detach() - before
            rel.append(float(d.norm() / before.norm()))
            cos = float(before @ x.detach() / (before.norm() * x.detach().norm()))
            ang.append(math.acos(min(1.0, cos)))
    return float(np.sqrt(np.mean(np.square(rel)))), float(np.sqrt(np.mean(np.square(ang))))


# weight decays chosen so that ||x||² relaxes within ~50 steps (rate 2γλ(1-τ)/(1-β) per step)
@pytest.mark.parametrize("momentum,dampening,nesterov,wd", [(0.0, 0.0, False, 0.2), (0.9, 0.0, False, 0.02),
                                                            (0.9, 0.5, False, 0.04), (0.8, 0.0, True, 0.04)])
def test_sgd_rotation_at_equilibrium(momentum, dampening, nesterov, wd):
    lr = 0.1
    rel, ang = _simulate(lambda p: torch.optim.SGD(p, lr=lr, weight_decay=wd, momentum=momentum, dampening=dampening,
                                                   nesterov=nesterov))
    predicted = sgd_rotation(lr, wd, momentum, dampening, nesterov)
    assert rel == pytest.approx(predicted, rel=0.03)
    assert ang == pytest.approx(predicted, rel=0.03)


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adamw_rotation_at_equilibrium(beta1):
    lr, wd = 0.01, 1.0
    rel, ang = _simulate(lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd, betas=(beta1, 0.999)))
    assert rel == pytest.approx(adamw_rotation(lr, wd, beta1), rel=0.03)
    assert ang == pytest.approx(adamw_rotation(lr, wd, beta1), rel=0.03)


def test_kosson_cross_check():
    assert sgd_rotation(0.1, 5e-4, 0.9) == pytest.approx(kosson_sgdm(0.1, 5e-4, 0.9), rel=1e-12)
    assert sgd_rotation(0.1, 5e-4) == pytest.approx(math.sqrt(2 * 0.1 * 5e-4), rel=1e-12)
    assert adamw_rotation(1e-3, 0.1, 0.9) == pytest.approx(kosson_adamw(1e-3, 0.1, 0.9), rel=1e-12)
    assert adamw_rotation(1e-3, 0.1, 0.0) == pytest.approx(math.sqrt(2 * 1e-3 * 0.1), rel=1e-12)


def test_corrected_rotation_follows_the_schedule_linearly():
    """SGDC/AdamC: rotation ∝ γ_t; SGD/AdamW: ∝ sqrt(γ_t)."""
    p = nn.Parameter(torch.ones(4, 4))
    for plain, corrected, extra in ((SGD, SGDC, {}), (AdamW, AdamC, {})):
        for cls, power in ((plain, 0.5), (corrected, 1.0)):
            opt = cls([{"params": [p], "normalized": True, "weight_decay": 0.01, "peak_lr": 0.1}], lr=0.1, **extra)
            group = opt.param_groups[0]
            values = []
            for lr in (0.1, 0.025):
                group["lr"] = lr
                values.append(opt.predicted_rotation(group))
            assert values[1] / values[0] == pytest.approx(0.25 ** power, rel=1e-12), cls.__name__


# ---- the monitor in a user's loop ------------------------------------------------------------

def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["monitor_plain_loop", "monitor_timm_loop"])
def test_examples_add_at_most_five_lines(name):
    lines = [line for line in (EXAMPLES / f"{name}.py").read_text().splitlines() if line.rstrip().endswith("# monitor")]
    assert 3 <= len(lines) <= 5


def test_plain_loop_example(tmp_path):
    layers = _example("monitor_plain_loop").main(steps=40, log_dir=str(tmp_path / "tb"), quiet=True)
    assert list(layers.columns) == list(rundir.LAYERS_SCHEMA)
    assert layers["layer"].nunique() == 3 and sorted(layers["step"].unique()) == [0, 10, 20, 30]
    assert (layers["angular_update"] > 0).all() and (layers["predicted_rotation"] > 0).all()
    assert (layers["predicted_ratio"] > 0).all()  # torch.optim.SGD gets the theory's ratio too
    assert layers["eps_fraction"].isna().all()  # not an Adam-family optimizer
    assert any((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_timm_loop_example(tmp_path):
    pytest.importorskip("timm", reason="the timm example needs timm: pip install timm")
    layers = _example("monitor_timm_loop").main(steps=30, log_dir=str(tmp_path / "tb"), quiet=True)
    assert list(layers.columns) == list(rundir.LAYERS_SCHEMA)
    assert layers["layer"].nunique() >= 6  # 2 blocks x (qkv, proj, fc1, fc2), head excluded
    assert (layers["angular_update"] > 0).all()
    assert (layers["predicted_rotation"] > 0).all()  # timm's factory returns torch's AdamW: the formula applies
    assert layers["update_grad_cos"].between(-1, 1).all()
    assert layers["eps_fraction"].between(0, 1).all()
