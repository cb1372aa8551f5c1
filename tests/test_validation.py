"""Every invalid run-config value, one case each: exit code 2, the exact one-line message on
stderr, and no run directory.  The cases are grouped by config section.  The issue note's
table is printed from these parametrisations (and test_robust_files.py's) by
``python tests/test_validation.py``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imagenet_repro.cli import main

ROOT = Path(__file__).resolve().parents[1]
E = "repro: error: "

# (group, overrides, exact message after "repro: error: ")
CASES: list[tuple[str, list[str], str]] = [
    # ---- top level
    ("run", ["name=''"], "name must be a non-empty folder name without '/' (got '')"),
    ("run", ["name=a/b"], "name must be a non-empty folder name without '/' (got 'a/b')"),
    ("run", ["name=.."], "name must be a non-empty folder name without '/' (got '..')"),
    ("run", ["seed=-1"], "seed must be in [0, 4294967295] (got -1)"),
    ("run", ["seed=4294967296"], "seed must be in [0, 4294967295] (got 4294967296)"),
    ("run", ["seed=1.5"], "bad value for seed: Value '1.5' of type 'float' could not be converted to Integer"),
    ("run", ["trian.epochs=3"], "unknown config key: trian"),
    # ---- data
    ("data", ["data.dataset=cifar10"],
     "bad value for data.dataset: unknown dataset 'cifar10': known: fashion_mnist, imagefolder, imagenet, "
     "or FILE.py:NAME / module:NAME (see docs/datasets.md)"),
    ("data", ["data.dataset=fashion_mnist", "data.num_classes=12"],
     "data.num_classes must be 10 for data.dataset=fashion_mnist (got 12)"),
    ("data", ["data.backend=dali"], "bad value for data.backend: Invalid value 'dali', expected one of [ffcv, torchvision]"),
    ("data", ["data.order=shuffled"], "bad value for data.order: Invalid value 'shuffled', expected one of [random, quasi_random]"),
    ("data", ["data.num_classes=0"], "data.num_classes must be >= 2 (got 0)"),
    ("data", ["data.num_classes=1"], "data.num_classes must be >= 2 (got 1)"),
    ("data", ["data.num_classes=-10"], "data.num_classes must be >= 2 (got -10)"),
    ("data", ["data.batch_size=0"], "data.batch_size must be > 0 (got 0)"),
    ("data", ["data.val_batch_size=0"], "data.val_batch_size must be > 0 (got 0)"),
    ("data", ["data.num_workers=-1"], "data.num_workers must be >= 0 (got -1)"),
    ("data", ["data.num_workers=many"],
     "bad value for data.num_workers: Value 'many' of type 'str' could not be converted to Integer"),
    ("data", ["data.min_res=0"], "data.min_res must be in (0, data.max_res] (got 0)"),
    ("data", ["data.min_res=64"], "data.min_res must be in (0, data.max_res] (got 64)"),
    ("data", ["data.val_res=0"], "data.val_res must be > 0 (got 0)"),
    ("data", ["data.val_res=-32"], "data.val_res must be > 0 (got -32)"),
    ("data", ["data.start_ramp=-1"], "data.start_ramp must be >= 0 (got -1)"),
    ("data", ["data.end_ramp=-1"], "data.end_ramp must be >= 0 (got -1)"),
    ("data", ["data.start_ramp=3", "data.end_ramp=2"], "data.start_ramp must be <= data.end_ramp (got 3 > 2)"),
    ("data", ["data.rrc_scale_min=0"], "data.rrc_scale_min must be in (0, 1] (got 0.0)"),
    ("data", ["data.rrc_scale_min=1.5"], "data.rrc_scale_min must be in (0, 1] (got 1.5)"),
    ("data", ["data.rrc_scale_min=nan"], "data.rrc_scale_min must be a finite number (got nan)"),
    ("data", ["data.train_subset=-1"], "data.train_subset must be >= 0 (got -1)"),
    ("data", ["data.val_subset=-5"], "data.val_subset must be >= 0 (got -5)"),
    ("data", ["data.os_cache=maybe"],
     "bad value for data.os_cache: Value 'maybe' is not a valid bool (type str)"),
    ("data", ["data.train_path=' '"], "data.train_path must not be empty"),
    ("data", ["data.train_path=/nonexistent/train.beton"], "data.train_path does not exist: /nonexistent/train.beton"),
    ("data", ["data.val_path=/nonexistent/val.beton"], "data.val_path does not exist: /nonexistent/val.beton"),
    # ---- model
    ("model", ["model.name=resnet51"], "unknown model name: 'resnet51'"),
    ("model", ["model.name=timm:nonet"], "unknown model name: 'timm:nonet'"),
    ("model", ["model.widths=[]"], "model.widths must be a non-empty list of positive integers (got [])"),
    ("model", ["model.widths=[8,0,32]"], "model.widths must be a non-empty list of positive integers (got [8, 0, 32])"),
    ("model", ["model.widths=[8,-16]"], "model.widths must be a non-empty list of positive integers (got [8, -16])"),
    ("model", ["model.blocks_per_stage=0"], "model.blocks_per_stage must be >= 1 (got 0)"),
    ("model", ["model.head_norm=sometimes"],
     "bad value for model.head_norm: Value 'sometimes' is not a valid bool (type str)"),
    # ---- optim
    ("optim", ["optim.lr=inf"], "optim.lr must be a finite number (got inf)"),
    ("optim", ["optim.lr=-inf"], "optim.lr must be a finite number (got -inf)"),
    ("optim", ["optim.lr=nan"], "optim.lr must be a finite number (got nan)"),
    ("optim", ["optim.lr=0"], "optim.lr must be > 0 (got 0.0)"),
    ("optim", ["optim.lr=-0.1"], "optim.lr must be > 0 (got -0.1)"),
    ("optim", ["optim.weight_decay=-1e-4"], "optim.weight_decay must be >= 0 (got -0.0001)"),
    ("optim", ["optim.weight_decay=inf"], "optim.weight_decay must be a finite number (got inf)"),
    ("optim", ["optim.momentum=1.0"], "optim.momentum must be in [0, 1) (got 1.0)"),
    ("optim", ["optim.momentum=-0.5"], "optim.momentum must be in [0, 1) (got -0.5)"),
    ("optim", ["optim.dampening=1"], "optim.dampening must be in [0, 1) (got 1.0)"),
    ("optim", ["optim.nesterov=true", "optim.momentum=0"],
     "optim.nesterov needs optim.momentum > 0 and optim.dampening = 0 (got momentum 0.0, dampening 0.0)"),
    ("optim", ["optim.name=sgdx"], "unknown optimizer name: 'sgdx' (known: adamc, adamw, sgd, sgdc; or a library's, e.g. timm:lion, pytorch_optimizer:Lion)"),
    ("optim", ["optim.lrr=0.1"], "unknown config key: optim.lrr"),
    ("optim", ["optim.name=adamw", "optim.momentum=0.9"], "unknown config key: optim.momentum"),
    ("optim", ["optim.name=adamw", "optim.betas=[0.9]"], "optim.betas must be two numbers in [0, 1) (got [0.9])"),
    ("optim", ["optim.name=adamw", "optim.betas=[0.9,1.0]"], "optim.betas must be two numbers in [0, 1) (got [0.9, 1.0])"),
    ("optim", ["optim.name=adamw", "optim.eps=0"], "optim.eps must be > 0 (got 0.0)"),
    ("optim", ["optim.name=adamc", "optim.betas=[0.9,inf]"], "optim.betas[1] must be a finite number (got inf)"),
    # ---- schedule
    ("schedule", ["schedule.name=linear"],
     "bad value for schedule.name: Invalid value 'linear', expected one of [cosine, flat, step]"),
    ("schedule", ["schedule.warmup_epochs=-1"], "schedule.warmup_epochs must be >= 0 (got -1.0)"),
    ("schedule", ["schedule.warmup_epochs=2"], "schedule.warmup_epochs must be < train.epochs (got 2.0 >= 2)"),
    ("schedule", ["schedule.warmup_epochs=inf"], "schedule.warmup_epochs must be a finite number (got inf)"),
    ("schedule", ["schedule.final_lr_fraction=1.5"], "schedule.final_lr_fraction must be in [0, 1] (got 1.5)"),
    ("schedule", ["schedule.final_lr_fraction=-0.1"], "schedule.final_lr_fraction must be in [0, 1] (got -0.1)"),
    ("schedule", ["schedule.milestones=[0.75,0.5]"],
     "schedule.milestones must be increasing fractions of the run in (0, 1) (got [0.75, 0.5])"),
    ("schedule", ["schedule.milestones=[0.0,0.5]"],
     "schedule.milestones must be increasing fractions of the run in (0, 1) (got [0.0, 0.5])"),
    ("schedule", ["schedule.milestones=[0.5,1.0]"],
     "schedule.milestones must be increasing fractions of the run in (0, 1) (got [0.5, 1.0])"),
    ("schedule", ["schedule.step_gamma=0"], "schedule.step_gamma must be in (0, 1] (got 0.0)"),
    ("schedule", ["schedule.step_gamma=1.5"], "schedule.step_gamma must be in (0, 1] (got 1.5)"),
    # ---- train
    ("train", ["train.epochs=0"], "train.epochs must be > 0 (got 0)"),
    ("train", ["train.epochs=-3"], "train.epochs must be > 0 (got -3)"),
    ("train", ["train.epochs=many"], "bad value for train.epochs: Value 'many' of type 'str' could not be converted to Integer"),
    ("train", ["train.device=tpu"], "bad value for train.device: Invalid value 'tpu', expected one of [auto, cpu, cuda]"),
    ("train", ["train.label_smoothing=1.0"], "train.label_smoothing must be in [0, 1) (got 1.0)"),
    ("train", ["train.label_smoothing=-0.1"], "train.label_smoothing must be in [0, 1) (got -0.1)"),
    ("train", ["train.threads=-1"], "train.threads must be >= 0 (got -1)"),
    ("train", ["train.steps_per_epoch=-1"], "train.steps_per_epoch must be >= 0 (got -1)"),
    ("train", ["train.grad_clip=-1"], "train.grad_clip must be >= 0 (got -1.0)"),
    ("train", ["train.grad_clip=inf"], "train.grad_clip must be a finite number (got inf)"),
    ("train", ["train.amp=perhaps"], "bad value for train.amp: Value 'perhaps' is not a valid bool (type str)"),
    # ---- telemetry
    ("telemetry", ["telemetry.layer_every=0"], "telemetry.layer_every must be > 0 (got 0)"),
    ("telemetry", ["telemetry.flush_every=0"], "telemetry.flush_every must be > 0 (got 0)"),
    ("telemetry", ["telemetry.flush_every=-5"], "telemetry.flush_every must be > 0 (got -5)"),
    # ---- checkpoint
    ("checkpoint", ["checkpoint.every_minutes=-1"], "checkpoint.every_minutes must be >= 0 (got -1.0)"),
    ("checkpoint", ["checkpoint.every_minutes=nan"], "checkpoint.every_minutes must be a finite number (got nan)"),
    ("checkpoint", ["checkpoint.every_epoch=sometimes"],
     "bad value for checkpoint.every_epoch: Value 'sometimes' is not a valid bool (type str)"),
    # ---- command line
    ("cli", ["optim.lr"], "override 'optim.lr' is not of the form key=value"),
    ("cli", ["=0.1"], "override '=0.1' is not of the form key=value"),
]


def _id(case: tuple[str, list[str], str]) -> str:
    return f"{case[0]}:{' '.join(case[1])}"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """A valid experiment (epochs 2, small_resnet) over placeholder data files: every case
    here fails in validation, before any data file is opened."""
    folder = tmp_path_factory.mktemp("exp")
    for split in ("train", "val"):
        (folder / f"{split}.beton").write_bytes(b"x")
    cfg = folder / "exp.yaml"
    cfg.write_text(
        "name: t\n"
        f"data: {{dataset: fashion_mnist, num_classes: 10, max_res: 32, min_res: 32, val_res: 32, "
        f"train_path: {folder / 'train.beton'}, val_path: {folder / 'val.beton'}}}\n"
        "model: {name: small_resnet}\n"
        "optim: {name: sgd, lr: 0.1, weight_decay: 0.0005}\n"
        "train: {epochs: 2}\n")
    return cfg


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_the_base_experiment_is_valid(experiment):
    from imagenet_repro.config import load_config

    assert load_config(experiment).train.epochs == 2


@pytest.mark.parametrize("group,overrides,message", CASES, ids=[_id(c) for c in CASES])
def test_invalid_value_is_one_line_exit_2_nothing_written(experiment, tmp_path, capsys, group, overrides, message):
    out = tmp_path / "run"
    code, err = run_cli(capsys, ["train", str(experiment), *overrides, "--out", str(out)])
    assert (code, err) == (2, E + message + "\n")
    assert not out.exists() and not (tmp_path / "runs").exists()


CLI_CASES: list[tuple[str, str, str]] = [
    # (group, config-file text or None for a missing file, message with {path})
    ("cli", None, "config file not found: {path}"),
    ("cli", "name: [unclosed\n", "{path}: not valid YAML: while parsing a flow sequence"),
    ("cli", "- a\n- b\n", "{path}: expected a mapping at the top level"),
    ("cli", "optim: 3\n", "optim must be a mapping"),
    ("cli", "data: {num_classes: ten}\n",
     "bad value for data.num_classes: Value 'ten' of type 'str' could not be converted to Integer"),
]


@pytest.mark.parametrize("group,text,message", CLI_CASES, ids=[c[2].split(":")[0][:30] for c in CLI_CASES])
def test_bad_config_file_is_one_line_exit_2(tmp_path, capsys, group, text, message):
    path = tmp_path / "exp.yaml"
    if text is not None:
        path.write_text(text)
    code, err = run_cli(capsys, ["train", str(path), "--out", str(tmp_path / "run")])
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(E + message.format(path=path)), err
    assert not (tmp_path / "run").exists()


def test_demo_config_hash_and_yaml_unchanged_by_enum_fields():
    """Choice fields are StrEnums; the shipped configs' run ids and config.yaml are what the
    same configs give with plain strings (an untyped copy of every value)."""
    from omegaconf import OmegaConf

    from imagenet_repro.config import Backend, build_config, config_hash, read_yaml, to_yaml

    for name in ("demo", "fig2_flat", "imagenet_resnet50"):
        cfg = build_config(read_yaml(ROOT / "experiments" / f"{name}.yaml"), check_paths=False)
        assert cfg.data.backend is Backend.ffcv and cfg.data.backend == "ffcv"
        plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        assert all(type(v) is str for v in (plain["data"]["backend"], plain["data"]["order"], plain["train"]["device"]))
        assert config_hash(cfg) == config_hash(plain)
        assert to_yaml(cfg) == OmegaConf.to_yaml(OmegaConf.create(plain))
        assert "backend: ffcv" in to_yaml(cfg) and "Backend" not in to_yaml(cfg)


def test_plain_container_views_get_the_same_choice_and_finite_checks():
    """``validate`` also runs on plain containers (the sweep planner's fast path)."""
    from omegaconf import OmegaConf

    from imagenet_repro.config import ContainerView, build_config, read_yaml, validate
    from imagenet_repro.errors import ConfigError

    base = OmegaConf.to_container(build_config(read_yaml(ROOT / "experiments/demo.yaml"), check_paths=False))
    for section, key, value, message in (("data", "backend", "dali", "data.backend must be one of ffcv, torchvision"),
                                         ("optim", "lr", float("inf"), "optim.lr must be a finite number (got inf)"),
                                         ("data", "val_res", 0, "data.val_res must be > 0 (got 0)")):
        container = OmegaConf.to_container(OmegaConf.create(base))
        container[section][key] = value
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            validate(ContainerView(container), check_paths=False)


@pytest.mark.parametrize("overrides,message", [
    (["optim.lr=inf"], "optim.lr must be a finite number (got inf)"),
    (["data.val_res=0"], "data.val_res must be > 0 (got 0)"),
])
def test_real_process_exit_code_and_stderr(experiment, tmp_path, overrides, message):
    proc = subprocess.run([sys.executable, "-m", "imagenet_repro", "train", str(experiment), *overrides,
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, E + message + "\n")
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


def note_tables() -> str:
    """The invalid-input table of the issue note, from the parametrisations themselves."""
    sys.path.insert(0, str(Path(__file__).parent))
    import test_robust_files as rf

    lines = ["Every line is one test case; messages are exact (`{path}` etc. stand for the file named).", ""]

    def table(title: str, header: str, rows: list[str]) -> None:
        lines.extend([f"#### {title}", "", header, "|---|---|", *rows, ""])

    for group in dict.fromkeys(c[0] for c in CASES):
        table(f"config: {group}", "| `repro train exp.yaml ...` | stderr (after `repro: error: `), exit 2, no run dir |",
              [f"| `{' '.join(o)}` | `{m}` |" for g, o, m in CASES if g == group])
    table("config file", "| file | stderr, exit 2, no run dir |",
          [f"| {t!r} | `{m}` |" if t is not None else f"| (missing) | `{m}` |" for _, t, m in CLI_CASES])
    table("data files (through the trainer, before anything is written)", "| file / override | stderr, exit 2, no run dir |",
          [f"| `data.{w[0]}` = {w[1]} {' '.join(x)} | `{m}` |" for _, w, x, m in rf.FILE_CASES]
          + ["| ffcv not importable (monkeypatched) | `data.backend=ffcv but ffcv cannot be imported (...): install it "
             "(make install) or set data.backend=torchvision` |"])
    table("checkpoint damage to last.pt (falls back to prev.pt with a warning)", "| damage | recorded reason |",
          [f"| {n} | `{r}` |" for n, _, r in rf.CKPT_CASES])
    table("runs that cannot resume (exit 2 for `repro train`; status.json failed with `CheckpointError: <msg>`)",
          "| damage | message |", [f"| {d} | `{m}` |" for d, m in rf.RESUME_CASES])
    table("job claims (job.json)", "| content | state |",
          [f"| {c!r} | unknown without the sweep lock; failed (`unreadable job claim ...`) under it, then released |"
           for c in rf.CLAIM_CASES])
    total = len(CASES) + len(CLI_CASES) + len(rf.FILE_CASES) + 1 + len(rf.CKPT_CASES) + len(rf.RESUME_CASES) \
        + len(rf.CLAIM_CASES)
    lines.append(f"{total} cases.")
    return "\n".join(lines)


if __name__ == "__main__":  # the table of the issue note: python tests/test_validation.py
    print(note_tables())


@pytest.mark.parametrize("sweep", ["demo", "demo_vit", "demo_families", "demo_modern", "fig2_flat"])
def test_committed_results_keep_the_run_ids_their_specs_plan(sweep, monkeypatch):
    """A key added to the config must not change the id of an earlier run (config.RUN_ID_EXCLUDED):
    else `make demo` would train every committed run again in new folders, and the reproduction
    test would not find its row."""
    import pandas as pd

    from imagenet_repro.sweep.spec import load_spec, resolve_runs

    monkeypatch.chdir(ROOT)
    committed = set(pd.read_parquet(ROOT / "results" / sweep / "runs.parquet").run_id)
    planned = {r.run_id for r in resolve_runs(load_spec(ROOT / "sweeps" / f"{sweep}.yaml"))}
    assert committed <= planned, sorted(committed - planned)


def test_a_key_left_out_of_the_run_id_changes_no_id():
    from imagenet_repro.config import RUN_ID_EXCLUDED, build_config, config_hash, read_yaml

    def run_id(**train) -> str:
        return config_hash(build_config(read_yaml(ROOT / "experiments" / "demo.yaml"), {"train": train},
                                        check_paths=False))

    assert run_id(collective_timeout_min=3.0) == run_id()
    assert run_id(eval_every_steps=7) != run_id()
    assert "train.collective_timeout_min" in RUN_ID_EXCLUDED
