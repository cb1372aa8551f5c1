"""Config loading and validation: every bad input gives one line on stderr, exit 2, no files."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imagenet_repro.cli import main
from imagenet_repro.config import config_hash, load_config
from imagenet_repro.errors import ConfigError


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    (tmp_path / "train.beton").write_bytes(b"x")
    (tmp_path / "val.beton").write_bytes(b"x")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "name: t\n"
        "data: {dataset: fashion_mnist, num_classes: 10, "
        f"train_path: {tmp_path / 'train.beton'}, val_path: {tmp_path / 'val.beton'}}}\n"
        "model: {name: small_resnet}\n"
        "optim: {name: sgd, lr: 0.1, weight_decay: 0.0005, momentum: 0.9}\n"
        "train: {epochs: 2}\n"
    )
    return cfg


def test_defaults_yaml_and_overrides_merge(experiment: Path) -> None:
    cfg = load_config(experiment, ["optim.lr=0.2", "seed=3", "optim.name=sgdc"])
    assert cfg.optim.lr == 0.2 and cfg.seed == 3 and cfg.optim.name == "sgdc"
    assert cfg.optim.momentum == 0.9  # kept from the YAML across the optimizer switch
    assert cfg.train.epochs == 2 and cfg.schedule.name == "cosine"  # YAML, then defaults
    assert cfg.data.num_classes == 10


def test_optimizer_section_follows_the_chosen_optimizer(experiment: Path) -> None:
    cfg = load_config(None, ["optim.name=adamw", "optim.betas=[0.9,0.95]", "model.name=small_resnet",
                             f"data.train_path={experiment}", f"data.val_path={experiment}"])
    assert list(cfg.optim.betas) == [0.9, 0.95] and cfg.optim.eps == 1e-8
    assert "momentum" not in cfg.optim
    # switching family drops the YAML's SGD momentum (it belonged to the replaced optimizer) ...
    switched = load_config(experiment, ["optim.name=adamw"])
    assert switched.optim.name == "adamw" and "momentum" not in switched.optim
    # ... but a key given together with the new optimizer must be one it declares
    with pytest.raises(ConfigError, match="unknown config key: optim.momentum"):
        load_config(experiment, ["optim.name=adamw", "optim.momentum=0.9"])


def test_config_hash_is_stable_and_ignores_name(experiment: Path) -> None:
    a = load_config(experiment, ["seed=1"])
    b = load_config(experiment, ["seed=1", "name=other"])
    c = load_config(experiment, ["seed=2"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


BAD = [
    (["optim.lrr=0.1"], "unknown config key: optim.lrr"),
    (["trian.epochs=3"], "unknown config key: trian"),
    (["train.epochs=many"], "bad value for train.epochs"),
    (["optim.lr=0"], "optim.lr must be > 0 (got 0"),
    (["optim.lr=-0.1"], "optim.lr must be > 0 (got -0.1)"),
    (["optim.weight_decay=-1e-4"], "optim.weight_decay must be >= 0 (got -0.0001)"),
    (["optim.momentum=1.0"], "optim.momentum must be in [0, 1) (got 1.0)"),
    (["optim.momentum=-0.5"], "optim.momentum must be in [0, 1) (got -0.5)"),
    (["train.epochs=0"], "train.epochs must be > 0 (got 0)"),
    (["data.train_path=/nonexistent/train.beton"], "data.train_path does not exist: /nonexistent/train.beton"),
    (["optim.name=sgdx"], "unknown optimizer name: 'sgdx'"),
    (["model.name=resnet51"], "unknown model name: 'resnet51'"),
    (["optim.lr"], "override 'optim.lr' is not of the form key=value"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[b[1].split(":")[0][:30] for b in BAD])
def test_invalid_config_is_one_line_exit_2_nothing_written(experiment, tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    code = main(["train", str(experiment), *overrides, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("repro: error: "), err
    assert message in err, err
    assert not out.exists()


def test_load_config_raises_config_error_for_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_process_exit_code_and_stderr(experiment, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "imagenet_repro", "train", str(experiment), "optim.lr=-1",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "repro: error: optim.lr must be > 0 (got -1.0)"
    assert not (tmp_path / "r").exists()


def test_every_verb_has_help():
    from imagenet_repro.cli import build_parser

    verbs = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "data", "sweep", "status", "aggregate", "figures", "inspect-model", "demo", "bench"} <= set(verbs)
    for verb in verbs:
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0


def test_accepting_another_world_size_keeps_the_run_id(experiment: Path) -> None:
    """checkpoint.accept_world_size_change is set to resume a run on another number of ranks:
    the run (a sweep's folder) must be the same one."""
    a = load_config(experiment, ["seed=1"])
    b = load_config(experiment, ["seed=1", "checkpoint.accept_world_size_change=true"])
    assert config_hash(a) == config_hash(b)
