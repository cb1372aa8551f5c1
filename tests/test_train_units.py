"""Fast unit tests of the trainer's parts: schedules, telemetry, checkpoint round trip."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from imagenet_repro.config import ScheduleConfig
from imagenet_repro.train.checkpoint import gather_rng_states, load_checkpoint, save_checkpoint
from imagenet_repro.train.schedule import LRSchedule
from imagenet_repro.train.telemetry import Telemetry


def schedule(**kw) -> LRSchedule:
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "peak_lr": 0.4}], lr=1.0)
    cfg = OmegaConf.merge(OmegaConf.structured(ScheduleConfig), kw)
    return LRSchedule(opt, cfg, peak_lr=0.4, total_steps=100, steps_per_epoch=10)


def test_cosine_with_warmup_sets_gamma_t_and_leaves_the_groups_gamma_max():
    s = schedule(name="cosine", warmup_epochs=1)
    assert [s.lr(t) for t in (0, 4, 9)] == pytest.approx([0.04, 0.2, 0.4])
    assert s.lr(10) == pytest.approx(0.4)
    assert s.lr(55) == pytest.approx(0.2)  # halfway through the cosine part
    assert 0 < s.lr(99) < 1e-3
    assert s.apply(55) == pytest.approx(0.2)
    group = s.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.2) and group["peak_lr"] == 0.4  # set where the groups were made


def test_flat_and_step_schedules():
    assert {schedule(name="flat").lr(t) for t in (0, 50, 99)} == {0.4}
    s = schedule(name="step", milestones=[0.5, 0.75], step_gamma=0.1)
    assert [s.lr(t) for t in (49, 50, 74, 75)] == pytest.approx([0.4, 0.04, 0.04, 0.004])


def make_telemetry(flush_every=3, layer_every=2):
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))
    tel = Telemetry([("a", a), ("b", b)], normalized={"a"}, predicted=lambda n: 0.5, layer_every=layer_every,
                    flush_every=flush_every, device=torch.device("cpu"))
    return tel, a, b


def test_telemetry_norms_rows_and_layers():
    tel, a, b = make_telemetry()
    for step in range(5):
        a.grad, b.grad = torch.full_like(a, step + 1.0), torch.full_like(b, 2.0)
        tel.record(step, 0, 0.1, torch.tensor(1.5), batch_images=8)
    assert len(tel.step_rows) == 3  # flushed once, automatically, when the buffer filled
    assert tel.flush()
    steps, layers = tel.frames()
    assert steps.step.tolist() == [0, 1, 2, 3, 4]
    g2 = 12 * 9.0 + 5 * 4.0  # step 2: ||g||² = 12·3² + 5·2²
    assert steps.grad_norm[2] == pytest.approx(math.sqrt(g2))
    assert steps.grad_norm_normalized[2] == pytest.approx(math.sqrt(12 * 9.0))
    assert steps.weight_norm_normalized[0] == pytest.approx(a.detach().norm().item())
    assert steps.weight_norm[0] == pytest.approx(torch.cat([a.detach().flatten(), b.detach()]).norm().item())
    assert layers.step.tolist() == [0, 2, 4] and set(layers.layer) == {"a"}
    assert layers.ratio[1] == pytest.approx(math.sqrt(12 * 9.0) / a.detach().norm().item())
    assert (layers.predicted_ratio == 0.5).all()


def test_telemetry_stops_at_first_non_finite_step():
    tel, a, b = make_telemetry(flush_every=10)
    for step, value in enumerate([1.0, 1.0, float("nan"), 1.0]):
        a.grad, b.grad = torch.full_like(a, value), torch.ones_like(b)
        tel.record(step, 0, 0.1, torch.tensor(1.0), batch_images=8)
    assert not tel.flush() and tel.diverged and tel.diverged_at == 2
    assert not tel.flush()  # sticky
    assert tel.frames()[0].step.tolist() == [0, 1, 2]


def test_checkpoint_round_trip_restores_rng_and_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, step=7, epoch=1, batch_in_epoch=2,
                    rng_states=gather_rng_states(torch.device("cpu"), 1))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    weights = model.weight.detach().clone()

    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    pos = load_checkpoint(tmp_path / "c.pt", model=model2, optimizer=opt2)
    assert pos == {"step": 7, "epoch": 1, "batch_in_epoch": 2}
    assert torch.equal(model2.weight, weights)
    assert torch.equal(opt2.state[model2.weight]["momentum_buffer"], opt.state[model.weight]["momentum_buffer"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_beton_fresh_run_writes_nothing_but_an_existing_run_records_the_failure(tmp_path):
    from imagenet_repro.config import build_config
    from imagenet_repro.errors import ConfigError
    from imagenet_repro.rundir import read_status
    from imagenet_repro.train.loop import run_training

    bad = tmp_path / "bad.beton"
    bad.write_bytes(b"not an ffcv file")
    cfg = build_config({"data": {"dataset": "fashion_mnist", "num_classes": 10, "train_path": str(bad),
                                 "val_path": str(bad)}, "model": {"name": "small_resnet"}})
    fresh = tmp_path / "fresh"
    with pytest.raises(ConfigError):
        run_training(cfg, fresh)
    assert not fresh.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(ConfigError):
        run_training(cfg, existing)
    status = read_status(existing)
    assert status["state"] == "failed" and status["reason"].startswith("ConfigError: ")
