"""A new optimizer is one registered class + config dataclass, selected by ``optim.name``."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
from conftest import one_step

from imagenet_repro.config import build_config
from imagenet_repro.errors import ConfigError
from imagenet_repro.models import build_model
from imagenet_repro.optim import (
    OptimConfig,
    available_optimizers,
    register_optimizer,
    unregister_optimizer,
)
from imagenet_repro.optim.factory import build_optimizer, predicted_ratio


@dataclass
class SignSGDConfig(OptimConfig):
    name: str = "test_signsgd"
    scale: float = 1.0


class SignSGD(torch.optim.Optimizer):
    """x <- x - lr * scale * sign(g) - lr * λ_t x   (a throw-away optimizer for this test)."""

    def __init__(self, params, lr: float = 0.1, weight_decay: float = 0.0, scale: float = 1.0) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, scale=scale, peak_lr=lr, normalized=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(torch.sign(p.grad), alpha=-group["lr"] * group["scale"])


@contextmanager
def registered(name: str, cls: type, config: type):
    """Register for the duration of a test only, so nothing leaks into other tests."""
    register_optimizer(name, config=config)(cls)
    try:
        yield
    finally:
        unregister_optimizer(name)


def small_config(data_paths: dict, optim: dict):
    return build_config({"model": {"name": "small_resnet"}, "data": data_paths, "optim": optim})


def test_registered_optimizer_is_built_from_config_and_trains(data_paths):
    with registered("test_signsgd", SignSGD, SignSGDConfig):
        assert "test_signsgd" in available_optimizers()
        cfg = small_config(data_paths, {"name": "test_signsgd", "lr": 0.05, "weight_decay": 0.0, "scale": 2.0})
        assert cfg.optim.scale == 2.0
        torch.manual_seed(0)
        model = build_model(cfg.model, num_classes=10)
        opt = build_optimizer(model, cfg.optim)
        assert isinstance(opt, SignSGD)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        one_step(model, opt)
        for n, p in model.named_parameters():  # every parameter moved by exactly lr*scale*sign(g)
            expected = before[n] - 0.05 * 2.0 * torch.sign(p.grad)
            torch.testing.assert_close(p.detach(), expected)
        assert math.isnan(predicted_ratio(opt, opt.param_groups[0]))  # no predicted_ratio: NaN
        with pytest.raises(ConfigError, match="unknown config key: optim.momentum"):
            small_config(data_paths, {"name": "test_signsgd", "momentum": 0.9})
    assert "test_signsgd" not in available_optimizers()
    with pytest.raises(ConfigError, match="unknown optimizer name"):
        small_config(data_paths, {"name": "test_signsgd"})


@dataclass
class HeavyBallConfig(OptimConfig):
    """An optimizer whose `momentum` follows its own rule, [0, 2): not torch SGD's [0, 1)."""

    name: str = "test_heavyball"
    momentum: float = 1.5

    @classmethod
    def check(cls, o) -> None:
        super().check(o)
        if not 0 <= o.momentum < 2:
            raise ConfigError(f"optim.momentum must be in [0, 2) for test_heavyball (got {o.momentum})")


class HeavyBall(torch.optim.SGD):
    def __init__(self, params, lr=0.1, weight_decay=0.0, momentum=1.5):
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum / 2)


def test_each_optimizer_config_checks_its_own_keys(data_paths):
    """The momentum/betas/eps rules belong to each optimizer's config (its `check`), not to the
    run config's validation: a key of the same name may follow another rule elsewhere."""
    with registered("test_heavyball", HeavyBall, HeavyBallConfig):
        assert small_config(data_paths, {"name": "test_heavyball", "momentum": 1.5}).optim.momentum == 1.5
        with pytest.raises(ConfigError, match=r"^optim.momentum must be in \[0, 2\) for test_heavyball \(got 2.5\)$"):
            small_config(data_paths, {"name": "test_heavyball", "momentum": 2.5})
        with pytest.raises(ConfigError, match=r"^optim.lr must be > 0 \(got -1.0\)$"):  # the shared keys' rules
            small_config(data_paths, {"name": "test_heavyball", "lr": -1.0})
    with pytest.raises(ConfigError, match=r"^optim.momentum must be in \[0, 1\) \(got 1.5\)$"):  # sgd's own rule
        small_config(data_paths, {"name": "sgd", "momentum": 1.5})
    with pytest.raises(ConfigError, match=r"^optim.betas must be two numbers in \[0, 1\) \(got \[0.9, 1.5\]\)$"):
        small_config(data_paths, {"name": "adamw", "betas": [0.9, 1.5]})  # adamw's own rule
    with pytest.raises(ConfigError, match=r"^optim: torch.optim:Adam refuses these settings: ValueError: Invalid beta "
                                          r"parameter at index 1: 1.5$"):
        small_config(data_paths, {"name": "torch.optim:Adam", "betas": [0.9, 1.5]})  # a library's: its own say


def test_registering_a_taken_name_is_refused():
    with registered("test_signsgd", SignSGD, SignSGDConfig):
        with pytest.raises(ValueError, match="already registered"):
            register_optimizer("test_signsgd", config=SignSGDConfig)(type("Other", (SignSGD,), {}))


@pytest.mark.parametrize("name", ["sgd", "sgdc", "adamw", "adamc"])
def test_builtin_optimizers_build_from_config(data_paths, name):
    extra = {"momentum": 0.8, "nesterov": True} if name.startswith("sgd") else {"betas": [0.8, 0.99], "eps": 1e-6}
    cfg = small_config(data_paths, {"name": name, "lr": 0.2, "weight_decay": 1e-3, "decay_norm_and_bias": False,
                                    **extra})
    model = build_model(cfg.model, num_classes=10)
    opt = build_optimizer(model, cfg.optim)
    assert type(opt).__name__.lower() == name
    kinds = {g["group"]: g for g in opt.param_groups}
    assert kinds["normalized"]["normalized"] and not kinds["other"]["normalized"]
    assert all(g["peak_lr"] == 0.2 and g["lr"] == 0.2 for g in opt.param_groups)
    assert kinds["normalized"]["weight_decay"] == 1e-3 and kinds["other"]["weight_decay"] == 1e-3
    assert kinds["bias"]["weight_decay"] == 0.0 and kinds["norm-affine"]["weight_decay"] == 0.0
    if name.startswith("sgd"):
        assert opt.param_groups[0]["momentum"] == 0.8 and opt.param_groups[0]["nesterov"] is True
    else:
        assert opt.param_groups[0]["betas"] == (0.8, 0.99) and opt.param_groups[0]["eps"] == 1e-6
    before = [p.detach().clone() for p in model.parameters()]
    one_step(model, opt)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


# ---- optimizers from outside the package: optim.imports ------------------------------------------

MODULE = '''
from dataclasses import dataclass
import torch
from imagenet_repro.optim import OptimConfig, register_optimizer

@dataclass
class HalfSGDConfig(OptimConfig):
    name: str = "{name}"
    factor: float = 0.5

@register_optimizer("{name}", config=HalfSGDConfig)
class HalfSGD(torch.optim.SGD):
    def __init__(self, params, lr=0.1, weight_decay=0.0, factor=0.5):
        super().__init__(params, lr=lr * factor, weight_decay=weight_decay)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's optimizer module outside the package: a file, also importable by name."""
    name = f"test_half_sgd_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(MODULE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, tmp_path / f"{name}.py"
    unregister_optimizer(name)


@pytest.mark.parametrize("how", ["module", "file"])
def test_optimizer_from_a_users_module_via_optim_imports(data_paths, user_module, how):
    name, path = user_module
    imports = [name] if how == "module" else [str(path)]
    with pytest.raises(ConfigError, match="unknown optimizer name"):
        small_config(data_paths, {"name": name})  # not known before the import
    cfg = small_config(data_paths, {"imports": imports, "name": name, "lr": 0.2, "factor": 0.25})
    model = build_model(cfg.model, num_classes=10)
    opt = build_optimizer(model, cfg.optim)
    assert type(opt).__name__ == "HalfSGD" and opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert {g["group"] for g in opt.param_groups} >= {"normalized", "other"}
    one_step(model, opt)
    # importing the same thing again (every sweep point builds a config) registers nothing twice
    small_config(data_paths, {"imports": imports, "name": name})


def test_optim_imports_errors_are_one_line(data_paths, tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('no\\nway')\n")
    for imports, message in (([str(tmp_path / "missing.py")], "file not found"),
                             (["no_such_module_xyz"], "cannot import 'no_such_module_xyz': ModuleNotFoundError"),
                             ([str(tmp_path / "broken.py")], "RuntimeError: no$")):
        with pytest.raises(ConfigError, match=message):
            small_config(data_paths, {"imports": imports, "name": "sgd"})


def test_sweep_resolves_a_users_optimizer_from_the_base_config(tmp_path, user_module, data_paths):
    from imagenet_repro.sweep.spec import load_spec, resolve_runs

    name, path = user_module
    base = tmp_path / "base.yaml"
    base.write_text(f"data: {{train_path: {data_paths['train_path']}, val_path: {data_paths['val_path']}, "
                    f"num_classes: 10}}\nmodel: {{name: small_resnet}}\noptim: {{imports: ['{path}']}}\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: s\nruns_root: {tmp_path / 'runs'}\nbase: {base}\n"
                    f"axes:\n  optimizer: [sgd, {name}]\n  optim.lr: [0.1, 0.2]\ngpu_hours_per_run: 0\n")
    runs = resolve_runs(load_spec(spec))
    assert sorted(r.config["optim"]["name"] for r in runs) == sorted(["sgd", "sgd", name, name])
    assert all(r.config["optim"]["imports"] == [str(path)] for r in runs)
    assert {r.config["optim"].get("factor") for r in runs} == {None, 0.5}
