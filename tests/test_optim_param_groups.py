"""Normalized-layer detection (fx, and forward hooks for untraceable models), groups, inspect-model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import imagenet_repro  # noqa: F401  (torchvision shim)
from imagenet_repro import cli
from imagenet_repro.config import ModelConfig
from imagenet_repro.models import build_model
from imagenet_repro.optim.param_groups import classify, normalized_layers, param_groups


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    import torchvision

    return torchvision.models.resnet50(num_classes=1000)


def conv_weights(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_resnet50_all_53_conv_weights_are_normalized_and_fc_is_not(resnet50):
    groups = {g["group"]: g for g in param_groups(resnet50, weight_decay=5e-5, peak_lr=1.0)}
    normalized = set(groups["normalized"]["names"])
    assert len(normalized) == 53 and normalized == conv_weights(resnet50)
    assert groups["other"]["names"] == ["fc.weight"] and groups["bias"]["names"] == ["fc.bias"]
    assert len(groups["norm-affine"]["names"]) == 106
    params = dict(resnet50.named_parameters())
    for g in groups.values():  # names line up with params, keys the optimizers need are there
        assert len(g["names"]) == len(g["params"])
        assert all(params[n] is p for n, p in zip(g["names"], g["params"]))
        assert g["peak_lr"] == 1.0 and g["normalized"] == (g["group"] == "normalized")


def test_resnet50_hook_fallback_agrees_with_fx(resnet50, monkeypatch):
    import imagenet_repro.optim.param_groups as pg

    def untraceable(model):
        raise RuntimeError("pretend fx cannot trace this model")

    monkeypatch.setattr(pg, "_normalized_by_fx", untraceable)
    names, method = normalized_layers(resnet50, torch.randn(2, 3, 32, 32))
    assert method == "hooks"
    assert {f"{n}.weight" for n in names} == conv_weights(resnet50)


def test_small_resnet():
    model = build_model(ModelConfig(name="small_resnet", widths=[4, 8], blocks_per_stage=2), num_classes=10)
    kinds = {name: kind for name, _, kind in classify(model)}
    assert {n for n, k in kinds.items() if k == "normalized"} == conv_weights(model)
    assert kinds["fc.weight"] == "other" and kinds["fc.bias"] == "bias"


class DataDependent(nn.Module):
    """Untraceable by fx (Python control flow on a tensor value); also exercises the
    cases that are *not* normalized: a conv whose output also skips the norm, a conv
    into a norm via an activation, a linear into LayerNorm, and a layer called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)  # -> bn_a only: normalized
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 1)  # -> bn_b and residual add: not normalized
        self.bn_b = nn.BatchNorm2d(4)
        self.c = nn.Conv2d(4, 4, 1)  # -> relu -> gn: not normalized
        self.gn = nn.GroupNorm(2, 4)
        self.lin = nn.Linear(4, 6)  # -> LayerNorm: normalized
        self.ln = nn.LayerNorm(6)
        self.shared = nn.Linear(6, 6, bias=False)  # once into ln2, once into the head: not normalized
        self.ln2 = nn.LayerNorm(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_a(self.a(x))
        if x.sum() > -1e9:  # data-dependent branch
            y = self.b(x)
            x = self.bn_b(y) + y
        x = self.gn(torch.relu(self.c(x)))
        x = self.ln(self.lin(x.mean(dim=(2, 3))))
        x = self.ln2(self.shared(x))
        return self.head(self.shared(x))


def test_untraceable_model_uses_hooks_and_reads_each_case():
    model = DataDependent()
    names, method = normalized_layers(model, torch.randn(2, 3, 8, 8))
    assert method == "hooks"
    assert names == {"a", "lin"}
    assert model.training  # restored after the eval-mode forward


def test_fx_reads_the_same_cases():
    class Traceable(DataDependent):
        def forward(self, x):
            x = self.bn_a(self.a(x))
            y = self.b(x)
            x = self.gn(torch.relu(self.c(self.bn_b(y) + y)))
            x = self.ln(self.lin(x.mean(dim=(2, 3))))
            return self.head(self.shared(self.ln2(self.shared(x))))

    names, method = normalized_layers(Traceable())
    assert (names, method) == ({"a", "lin"}, "fx")


def test_decay_norm_and_bias_policy():
    model = DataDependent()
    for decay, expected in ((True, 0.1), (False, 0.0)):
        groups = {g["group"]: g for g in param_groups(model, 0.1, 1.0, decay, example_input=torch.randn(2, 3, 8, 8))}
        assert groups["normalized"]["weight_decay"] == 0.1 and groups["other"]["weight_decay"] == 0.1
        assert groups["norm-affine"]["weight_decay"] == expected and groups["bias"]["weight_decay"] == expected
        assert set(groups["normalized"]["names"]) == {"a.weight", "lin.weight"}
        assert set(groups["other"]["names"]) == {"b.weight", "c.weight", "shared.weight", "head.weight"}
    # every trainable parameter is in exactly one group
    all_names = [n for g in groups.values() for n in g["names"]]
    assert sorted(all_names) == sorted(n for n, _ in model.named_parameters())


def test_inspect_model_resnet50_table(capsys):
    assert cli.main(["inspect-model", "resnet50", "--no-decay-norm-and-bias"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip() and "." in line.split()[0]}
    assert rows["layer1.0.conv1.weight"][1:3] == ["64x64x1x1", "normalized"]
    assert "λ·γ_t/γ_max" in " ".join(rows["layer1.0.conv1.weight"])
    assert rows["fc.weight"][1:] == ["1000x2048", "other", "λ"]
    assert rows["fc.bias"][2:] == ["bias", "0"] and rows["bn1.weight"][2:] == ["norm-affine", "0"]
    assert sum(r[2] == "normalized" for r in rows.values()) == 53
    assert "normalized     53 tensors" in out


def test_inspect_model_unknown_model_is_a_one_line_error(capsys):
    assert cli.main(["inspect-model", "no_such_net"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "repro: error: unknown model name: 'no_such_net'"
    assert captured.out == ""


# ---- optim.normalized_rule: graph (above) or the paper's transformer rule ----------------------

def tiny_vit() -> nn.Module:
    return build_model(ModelConfig(name="timm:vit_tiny_patch16_224",
                                   kwargs={"img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2}),
                       num_classes=10)


def test_transformer_rule_counts_every_linear_layer_but_the_output_layer():
    model = tiny_vit()
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert normalized_layers(model)[0] == set()  # pre-norm blocks: the graph rule finds nothing
    names, method = normalized_layers(model, rule="transformer")
    assert names == linears - {"head"} and len(names) == 8 and "'head'" in method
    groups = {g["group"]: g for g in param_groups(model, 0.05, 1e-3, rule="transformer")}
    assert set(groups["normalized"]["names"]) == {f"{n}.weight" for n in names}
    assert "head.weight" in groups["other"]["names"] and "patch_embed.proj.weight" in groups["other"]["names"]
    # a ResNet's output layer is its last linear layer: the rule leaves its convolutions out
    assert normalized_layers(build_model(ModelConfig(name="small_resnet"), 10), rule="transformer")[0] == set()


def test_normalized_rule_is_a_checked_config_key_and_reaches_the_optimizer(tmp_path):
    from imagenet_repro.config import build_config
    from imagenet_repro.errors import ConfigError
    from imagenet_repro.optim.factory import build_optimizer

    for name in ("train.beton", "val.beton"):  # data paths of the right kind (files): checked before the rule
        (tmp_path / name).write_bytes(b"")
    data = {"train_path": str(tmp_path / "train.beton"), "val_path": str(tmp_path / "val.beton"), "num_classes": 10}
    with pytest.raises(ConfigError, match="optim.normalized_rule must be graph or transformer"):
        build_config({"data": data, "optim": {"normalized_rule": "all"}})
    cfg = build_config({"data": data, "model": {"name": "timm:vit_tiny_patch16_224", "kwargs": {
        "img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2}},
        "optim": {"name": "adamc", "normalized_rule": "transformer"}})
    opt = build_optimizer(build_model(cfg.model, 10), cfg.optim)
    assert len(next(g for g in opt.param_groups if g["normalized"])["params"]) == 8


def test_inspect_model_rule_flag(capsys):
    assert cli.main(["inspect-model", "timm:vit_small_patch16_224", "--rule", "transformer"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip() and "." in line.split()[0]}
    assert rows["blocks.0.attn.qkv.weight"][2] == "normalized" and rows["head.weight"][2] == "other"
    assert "normalized_rule=transformer" in out and "normalized     48 tensors" in out
    assert cli.main(["inspect-model", "timm:vit_small_patch16_224", "--rule", "graph"]) == 0
    assert "normalized      0 tensors" in capsys.readouterr().out
