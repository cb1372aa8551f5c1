"""Every example of docs/optimizers.md ("Add an optimizer") runs: the own-module file, its YAML,
the entry point, the library optimizers by name and the correction switch."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_step

from imagenet_repro import cli
from imagenet_repro.config import build_config
from imagenet_repro.models import build_model
from imagenet_repro.optim import available_optimizers, registry, unregister_optimizer
from imagenet_repro.optim.factory import build_optimizer

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = {"name": "timm:vit_tiny_patch16_224",
            "kwargs": {"img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}}


def section() -> str:
    return (REPO / "docs" / "optimizers.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", section(), flags=re.S | re.M)


@pytest.fixture
def fresh_signsgd(monkeypatch):
    """No 'signsgd' registered and no copy of its module imported, before and after."""
    def purge():
        unregister_optimizer("signsgd")
        for name in [m for m in sys.modules if m.startswith(("_repro_user_signsgd", "my_optimizers"))]:
            del sys.modules[name]
        registry._LOADED.discard("my_optimizers.signsgd")

    monkeypatch.chdir(REPO)  # the page's paths are relative to the repository
    purge()
    yield
    purge()


def train_a_step(cfg) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=10)
    opt = build_optimizer(model, cfg.optim)
    before = [p.detach().clone() for p in model.parameters()]
    one_step(model, opt)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    return opt


def test_the_python_example_is_the_shipped_file():
    (code,) = blocks("python")
    assert code == (REPO / "examples/signsgd.py").read_text()


def test_every_yaml_example_builds_and_trains(fresh_signsgd, data_paths):
    examples = blocks("yaml")
    assert len(examples) == 7
    for text in examples:
        optim = build_config({"data": data_paths}, _yaml(text), check_paths=False).optim
        model = TINY_VIT if optim.normalized_rule == "transformer" else {"name": "small_resnet", "widths": [4, 8]}
        cfg = build_config({"data": data_paths, "model": model}, _yaml(text))
        opt = train_a_step(cfg)
        groups = {g["group"]: g for g in opt.param_groups}
        assert len(groups["normalized"]["params"]) > 0
        assert getattr(opt, "corrects_decay", False) is bool(cfg.optim.corrected_decay)
        if cfg.optim.normalized_rule == "transformer":  # every linear layer but the head
            assert "head.weight" in groups["other"]["names"]
            assert all(".attn." in n or ".mlp." in n for n in groups["normalized"]["names"])


def _yaml(text: str):
    from omegaconf import OmegaConf

    return OmegaConf.create(text)


def test_the_command_line_example_imports_the_file(fresh_signsgd, tmp_path, capsys, data_paths):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"data: {{train_path: {data_paths['train_path']}, val_path: {data_paths['val_path']}}}\n")
    args = ["train", str(exp), "optim.imports=[examples/signsgd.py]", "optim.name=signsgd", "optim.scale=0.5"]
    # an unknown key after the import: the name resolved (the file was imported) and its keys are checked
    assert cli.main(args + ["optim.momentum=0.9", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == "repro: error: unknown config key: optim.momentum"
    # the file's own check of its own key (SignSGDConfig.check), before anything is written
    assert cli.main(args + ["optim.scale=0", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == "repro: error: optim.scale must be > 0 (got 0.0)"
    assert not (tmp_path / "run").exists()
    assert "signsgd" in available_optimizers()


def test_the_entry_point_example(fresh_signsgd, tmp_path, monkeypatch, data_paths):
    tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with tomllib, Python 3.11+: "
                                                    "run the suite with PYTHON=python3.11 (or newer)")
    (toml,) = blocks("toml")
    entries = tomllib.loads(toml)["project"]["entry-points"]["imagenet_repro.optimizers"]
    assert entries == {"signsgd": "my_optimizers.signsgd"}
    # an installed distribution with that entry point: its module and its .dist-info on sys.path
    (tmp_path / "my_optimizers").mkdir()
    (tmp_path / "my_optimizers/__init__.py").write_text("")
    (tmp_path / "my_optimizers/signsgd.py").write_text((REPO / "examples/signsgd.py").read_text())
    info = tmp_path / "my_optimizers-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-optimizers\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[imagenet_repro.optimizers]\n"
                                           + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = build_config({"data": data_paths, "model": {"name": "small_resnet", "widths": [4, 8]},
                        "optim": {"name": "signsgd", "lr": 0.01, "weight_decay": 0.1, "scale": 0.5}})
    opt = train_a_step(cfg)
    assert type(opt).__module__ == "my_optimizers.signsgd"
