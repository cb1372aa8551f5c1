"""Library optimizers by name (timm:<name>, <module>:<Class>) and the corrected_decay switch on them."""
from __future__ import annotations

import pytest
import torch
from conftest import one_step

from imagenet_repro import cli
from imagenet_repro.config import build_config
from imagenet_repro.errors import ConfigError
from imagenet_repro.models import build_model
from imagenet_repro.optim.factory import build_optimizer, predicted_ratio

LIONS = ["timm:lion", "pytorch_optimizer:Lion"]


def config(data_paths: dict, **optim):
    return build_config({"model": {"name": "small_resnet", "widths": [4, 8]}, "data": data_paths, "optim": optim})


@pytest.mark.parametrize("name", LIONS + ["torch.optim:RAdam"])
def test_library_optimizer_is_built_with_the_suites_groups_and_trains(data_paths, name):
    extra = {"betas": [0.8, 0.95]}
    cfg = config(data_paths, name=name, lr=1e-3, weight_decay=0.5, decay_norm_and_bias=False, **extra)
    assert list(cfg.optim.betas) == [0.8, 0.95] and cfg.optim.name == name
    model = build_model(cfg.model, num_classes=10)
    opt = build_optimizer(model, cfg.optim)
    assert type(opt).__module__.split(".")[0] == name.split(":")[0].split(".")[0]
    kinds = {g["group"]: g for g in opt.param_groups}
    assert set(kinds) == {"normalized", "other", "norm-affine", "bias"}
    assert kinds["normalized"]["normalized"] and all(g["peak_lr"] == 1e-3 and g["lr"] == 1e-3 for g in opt.param_groups)
    assert kinds["other"]["weight_decay"] == 0.5 and kinds["bias"]["weight_decay"] == 0.0
    assert all(tuple(g["betas"]) == (0.8, 0.95) for g in opt.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    one_step(model, opt)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert predicted_ratio(opt, kinds["normalized"]) != predicted_ratio(opt, kinds["normalized"])  # NaN: no theory


def test_library_hyper_parameters_are_checked_against_the_constructor(data_paths):
    with pytest.raises(ConfigError, match="unknown config key: optim.eps"):
        config(data_paths, name="timm:lion", eps=1e-8)  # Lion has no eps
    with pytest.raises(ConfigError, match="unknown config key: optim.use_gc"):
        config(data_paths, name="pytorch_optimizer:Lion", use_gc=True)  # taken by its **kwargs, not a key
    with pytest.raises(ConfigError, match=r"^optim: torch.optim:RAdam refuses these settings: ValueError: Invalid epsilon"):
        config(data_paths, name="torch.optim:RAdam", eps=-1.0)  # the library's own check, at config time
    with pytest.raises(ConfigError, match="refuses these settings"):
        config(data_paths, name="torch.optim:Adagrad", lr_decay=-1.0)  # the class's own check, at config time
    with pytest.raises(ConfigError, match="unknown optimizer name: 'timm:no_such_opt'"):
        config(data_paths, name="timm:no_such_opt")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        config(data_paths, name="no_such_module:Lion")
    with pytest.raises(ConfigError, match="has no torch.optim.Optimizer named 'Linear'"):
        config(data_paths, name="torch.nn:Linear")
    with pytest.raises(ConfigError, match="both on"):
        config(data_paths, name="timm:lion", corrected_decay=True, corrected_weight_decay=True)


def test_cli_unknown_library_key_is_one_line_exit_2(tmp_path, capsys, data_paths):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"data: {{train_path: {data_paths['train_path']}, val_path: {data_paths['val_path']}}}\n")
    out = tmp_path / "run"
    assert cli.main(["train", str(exp), "optim.name=pytorch_optimizer:Lion", "optim.momentum=0.9",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "repro: error: unknown config key: optim.momentum" and not out.exists()


@pytest.mark.parametrize("name", LIONS)
@pytest.mark.parametrize("corrected", [False, True])
def test_switch_on_a_library_lion_makes_the_decay_follow_the_schedule(data_paths, name, corrected):
    """With zero gradients Lion's update is sign(0) = 0, so one step only decays:
    x <- (1 - γ_t λ_t) x, with λ_t = λ γ_t/γ_max on normalized groups under the switch."""
    lam, lr_max = 0.5, 0.1
    cfg = config(data_paths, name=name, lr=lr_max, weight_decay=lam, corrected_decay=corrected)
    model = build_model(cfg.model, num_classes=10)
    opt = build_optimizer(model, cfg.optim)
    for lr in (lr_max, lr_max / 4, lr_max / 20):
        for group in opt.param_groups:
            group["lr"] = lr
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        before = {id(p): p.detach().clone() for p in model.parameters()}
        opt.step()
        for group in opt.param_groups:
            lam_t = lam * lr / lr_max if (corrected and group["normalized"]) else group["weight_decay"]
            for p in group["params"]:
                torch.testing.assert_close(p.detach(), before[id(p)] * (1 - lr * lam_t), rtol=1e-6, atol=0)
            assert group["weight_decay"] in (lam, 0.0)  # the nominal λ is back after the step
    assert getattr(opt, "corrects_decay", False) is corrected


@pytest.mark.parametrize("plain,builtin", [("adamw", "adamc"), ("sgd", "sgdc")])
def test_switch_gives_identical_updates_to_the_builtin_corrected_optimizer(data_paths, plain, builtin):
    models, opts = [], []
    for name, switch in ((plain, True), (builtin, False)):
        cfg = config(data_paths, name=name, lr=0.05, weight_decay=0.1, corrected_decay=switch)
        torch.manual_seed(1)
        models.append(build_model(cfg.model, num_classes=10))
        opts.append(build_optimizer(models[-1], cfg.optim))
    for t in range(6):
        for model, opt in zip(models, opts):
            for group in opt.param_groups:
                group["lr"] = 0.05 * (1 - t / 6)
            one_step(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters()))


# ------------------------------------------------------------------ judged by its library
@pytest.mark.parametrize("name,keys", [
    ("pytorch_optimizer:Muon", {"nesterov": True}),  # has nesterov, no dampening: SGD's rule is not its
    ("pytorch_optimizer:NorMuon", {}),
    ("pytorch_optimizer:ASGD", {}),  # its default dampening is 1.0
    ("pytorch_optimizer:AdEMAMix", {}),  # three betas
    ("pytorch_optimizer:Prodigy", {}),  # growth_rate = inf
    ("pytorch_optimizer:SCION", {}),  # an IntEnum default (norm_type)
    ("timm:adafactor", {}),  # betas=None, eps=None: Adam's rules would read them
    ("timm:adamp", {}),  # no momentum although it has nesterov
    ("timm:sgdp", {"momentum": 0.9}),  # momentum=0 unannotated: a float is the library's to judge
])
def test_a_library_default_is_judged_by_its_library(data_paths, name, keys):
    cfg = config(data_paths, name=name, lr=1e-3, weight_decay=0.0, **keys)
    model = build_model(cfg.model, num_classes=10)
    before = [p.detach().clone() for p in model.parameters()]
    one_step(model, build_optimizer(model, cfg.optim))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_prodigy_keeps_its_infinite_growth_rate_and_a_suite_key_must_still_be_finite(data_paths):
    assert config(data_paths, name="pytorch_optimizer:Prodigy").optim.growth_rate == float("inf")
    with pytest.raises(ConfigError, match=r"^optim.weight_decay must be a finite number \(got inf\)$"):
        config(data_paths, name="pytorch_optimizer:Prodigy", weight_decay=float("inf"))


@pytest.mark.parametrize("name,message", [
    ("timm:bnbadam", r"^optimizer 'timm:bnbadam' cannot be used here: AssertionError: CUDA required"),
    ("pytorch_optimizer:LOMO", r"^optim: pytorch_optimizer:LOMO takes the model, not parameter groups"),
    ("pytorch_optimizer:Lookahead", r"^optim: pytorch_optimizer:Lookahead wraps another optimizer"),
    ("pytorch_optimizer:DistributedMuon", r"^optim: pytorch_optimizer:DistributedMuon shards its work over"),
    ("pytorch_optimizer:BSAM", r"^bad value for optim.num_data: Missing mandatory value"),
    ("torch.optim:LBFGS", r"^optim: torch.optim:LBFGS refuses these settings: ValueError: LBFGS doesn't support "
                          r"per-parameter options"),
])
def test_what_cannot_run_here_is_one_line_at_config_time(data_paths, name, message):
    extra = {"weight_decay": 0.0} if name == "torch.optim:LBFGS" else {}
    with pytest.raises(ConfigError, match=message):
        config(data_paths, name=name, **extra)


def test_a_first_step_that_fails_is_refused_at_config_time_and_the_probe_keeps_the_rng(data_paths):
    """An optimizer whose constructor accepts a setting but whose step cannot run with it is
    refused when the config is built (one line), not mid-run; the probe draws no random number."""
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    config(data_paths, name="pytorch_optimizer:AdaHessian", lr=0.1)  # builds and steps the probe network
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(ConfigError, match=r"^optim: pytorch_optimizer:LoRARite fails its first step on a probe "
                                          r"network: RuntimeError: mat1 and mat2 shapes cannot be multiplied"):
        config(data_paths, name="pytorch_optimizer:LoRARite")  # built for LoRA factor pairs, not a convnet's weights
