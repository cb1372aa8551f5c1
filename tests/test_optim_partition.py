"""Partition-based optimizers (the Muon family): the suite hands them the groups they need, from the
graph analysis, as declared per class (optim/capabilities.py), each group following γ_t/γ_max from its
own peak, and the paper's correction carried to them (optim.corrected_decay)."""
from __future__ import annotations

import pytest
import torch
from conftest import one_step
from omegaconf import OmegaConf

from imagenet_repro.config import ScheduleConfig, build_config
from imagenet_repro.models import build_model
from imagenet_repro.optim import register_optimizer, unregister_optimizer
from imagenet_repro.optim.capabilities import LIBRARY, Capabilities, Partition, capabilities_of
from imagenet_repro.optim.factory import build_optimizer
from imagenet_repro.optim.param_groups import group_summary, matrix_layers
from imagenet_repro.train.schedule import LRSchedule

MODEL = {"name": "small_resnet", "widths": [4, 8], "head_norm": True}


def config(data_paths: dict, **optim):
    return build_config({"model": MODEL, "data": data_paths, "optim": optim})


def built(data_paths: dict, **optim):
    cfg = config(data_paths, **optim)
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=10)
    return cfg, model, build_optimizer(model, cfg.optim)


def by_side(opt, flag: str) -> dict:
    out: dict = {}
    for g in opt.param_groups:
        out.setdefault(g[flag], set()).update(g["names"])
    return out


def test_hidden_layers_are_every_conv_and_linear_but_the_stem_and_the_head(data_paths):
    model = build_model(config(data_paths).model, num_classes=10)
    hidden = matrix_layers(model)
    layers = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert layers - hidden == {"stem.0", "fc"}  # the first layer called and the output layer
    assert "layers.1.shortcut.0" in hidden  # a 1x1 projection is a hidden matrix too


def test_muon_gets_use_muon_groups_with_its_adamw_side_at_its_own_peak_and_decay(data_paths):
    cfg, model, opt = built(data_paths, name="pytorch_optimizer:Muon", lr=0.02, weight_decay=0.1, adamw_lr=3e-3,
                            adamw_wd=0.01, decay_norm_and_bias=False)
    sides = by_side(opt, "use_muon")
    hidden = {f"{n}.weight" for n in matrix_layers(model)}
    assert sides[True] == hidden  # 4-D conv weights as they are: the library flattens them
    assert sides[False] == {n for n, _ in model.named_parameters()} - hidden
    for g in opt.param_groups:
        if g["use_muon"]:
            assert (g["peak_lr"], g["weight_decay"], g["side"]) == (0.02, 0.1, "matrix")
        else:
            decays = g["group"] in ("normalized", "other")
            assert (g["peak_lr"], g["weight_decay"], g["side"]) == (3e-3, 0.01 if decays else 0.0, "other")
    kinds = {(g["group"], g["use_muon"]) for g in opt.param_groups}
    assert ("normalized", True) in kinds and ("normalized", False) in kinds  # the stem conv and the BN'd head
    assert group_summary(opt)["normalized (matrix)"]["tensors"] == len([n for n in hidden if n != "fc.weight"])
    one_step(model, opt)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_timm_muon_gets_use_fallback_groups_at_one_peak(data_paths):
    cfg, model, opt = built(data_paths, name="timm:muon", lr=0.02, weight_decay=0.05)
    hidden = {f"{n}.weight" for n in matrix_layers(model)}
    assert by_side(opt, "use_fallback")[False] == hidden
    assert all(g["peak_lr"] == 0.02 for g in opt.param_groups)  # timm scales its fallback's lr itself
    one_step(model, opt)


@pytest.mark.parametrize("name", ["pytorch_optimizer:AdaMuon", "pytorch_optimizer:NorMuon", "pytorch_optimizer:AdaGO",
                                  "timm:adamuon", "timm:nmuon"])
def test_the_family_builds_and_steps(data_paths, name):
    cfg, model, opt = built(data_paths, name=name, lr=0.01, weight_decay=0.01)
    assert capabilities_of(type(opt)).partition is not None
    before = [p.detach().clone() for p in model.parameters()]
    one_step(model, opt)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(not torch.equal(b, p) for b, p in zip(before, model.parameters())) > len(before) // 2


def test_each_group_follows_the_schedule_from_its_own_peak(data_paths):
    cfg, model, opt = built(data_paths, name="pytorch_optimizer:Muon", lr=0.02, adamw_lr=3e-3)
    schedule = LRSchedule(opt, OmegaConf.structured(ScheduleConfig), 0.02, total_steps=100, steps_per_epoch=10)
    assert schedule.apply(50) == pytest.approx(0.01)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(g["peak_lr"] / 2)


@pytest.mark.parametrize("corrected", [False, True])
def test_corrected_decay_on_muon_decays_normalized_weights_by_lambda_gamma_t_over_gamma_max(data_paths, corrected):
    """Muon's decay is decoupled (x <- x(1 - γλ) - γ·update); the same gradient with and without
    weight decay isolates it: the difference is x·γ_t·λ_t, λ_t = λ·γ_t/γ_max on normalized groups."""
    lam, peak, adamw_peak, frac = 0.2, 0.02, 4e-3, 0.25
    params = []
    for wd in (0.0, lam):
        cfg, model, opt = built(data_paths, name="pytorch_optimizer:Muon", lr=peak, weight_decay=wd, adamw_lr=adamw_peak,
                                adamw_wd=wd, corrected_decay=corrected)
        for g in opt.param_groups:
            g["lr"] = g["peak_lr"] * frac
        x0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        one_step(model, opt)
        params.append(dict(model.named_parameters()))
        groups = opt.param_groups
    for g in groups:
        lam_t = lam * frac if (corrected and g["normalized"]) else g["weight_decay"]
        for name in g["names"]:
            decayed = x0[name] * g["lr"] * lam_t
            torch.testing.assert_close(params[0][name] - params[1][name], decayed, rtol=1e-4, atol=1e-7)


def test_a_users_optimizer_declares_its_partition(data_paths):
    """A class attribute `capabilities` is the declaration for a user's optimizer (docs/optimizers.md)."""

    @register_optimizer("test_split_sgd")
    class SplitSGD(torch.optim.SGD):
        capabilities = Capabilities(partition=Partition("orthogonal", True))

    try:
        cfg, model, opt = built(data_paths, name="test_split_sgd", lr=0.1)
        assert by_side(opt, "orthogonal")[True] == {f"{n}.weight" for n in matrix_layers(model)}
        assert capabilities_of(torch.optim.SGD).partition is None and "timm.optim.muon.Muon" in LIBRARY
    finally:
        unregister_optimizer("test_split_sgd")
