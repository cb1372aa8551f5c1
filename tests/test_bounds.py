"""Issue 22 parts 3-4: every numeric knob has a declared range (one table per schema, checked
here field by field), and every path a user gives is checked before any work: one line on
stderr, exit 2, nothing written."""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import pytest

from imagenet_repro.cli import main
from imagenet_repro.config import BOUNDS, MAX_RES, RunConfig, build_config, read_yaml
from imagenet_repro.errors import ConfigError
from imagenet_repro.paths import check_in_path, check_out_dir, check_out_file
from imagenet_repro.sweep.spec import SPEC_BOUNDS, SpecSchema

REPO = Path(__file__).resolve().parents[1]
E = "repro: error: "


def numeric_fields(cls: type, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """Dotted names of every int/float field (and list of them, as ``key[]``) of a dataclass schema."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = prefix + f.name, hints[f.name]
        if key in skip:
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp
        if dataclasses.is_dataclass(base):
            out += numeric_fields(base, key + ".", skip)
        elif base in (int, float):
            out.append(key)
        elif typing.get_origin(base) is list and typing.get_args(base)[0] in (int, float):
            out.append(key + "[]")
    return out


def test_every_numeric_field_of_the_run_config_has_a_bound():
    keys = numeric_fields(RunConfig, skip=("optim",))  # each optimizer's checks: optim.registry
    assert len(keys) > 25
    assert sorted(set(keys) - set(BOUNDS)) == [] and sorted(set(BOUNDS) - set(keys)) == []
    for key, bound in BOUNDS.items():
        assert bound.lo < bound.hi, key
        assert bound.interval or bound.why or bound.hi == float("inf"), f"{key}: say what breaks above {bound.hi}"


def test_every_numeric_field_of_the_spec_has_a_bound():
    keys = numeric_fields(SpecSchema)
    assert len(keys) >= 12
    assert sorted(set(keys) ^ set(SPEC_BOUNDS)) == []


def test_shipped_configs_are_inside_the_bounds():
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        build_config(read_yaml(path), check_paths=False)


@pytest.fixture()
def exp(tmp_path) -> Path:
    for split in ("train", "val"):
        (tmp_path / f"{split}.beton").write_bytes(b"x")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "name: t\n"
        f"data: {{dataset: fashion_mnist, num_classes: 10, max_res: 32, min_res: 32, val_res: 32, "
        f"train_path: {tmp_path / 'train.beton'}, val_path: {tmp_path / 'val.beton'}}}\n"
        "model: {name: small_resnet}\noptim: {name: sgd, lr: 0.1}\ntrain: {epochs: 2}\n")
    (tmp_path / "afile").write_text("x")
    return cfg


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(capsys, argv: list[str], root: Path) -> str:
    before = listing(root)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(E), (code, err)
    assert listing(root) == before
    return err[len(E):].strip()


UPPER = [
    (["data.max_res=100000"], f"data.max_res must be <= {MAX_RES} (got 100000): the decoders' buffers grow with res^2"),
    (["data.val_res=4096"], f"data.val_res must be <= {MAX_RES} (got 4096): the decoders' buffers grow with res^2"),
    (["data.batch_size=2000000"], "data.batch_size must be <= 1048576 (got 2000000): a batch is allocated whole"),
    (["data.num_workers=100000"], "data.num_workers must be <= 1024 (got 100000): no node has that many cores"),
    (["data.num_classes=10000000"],
     "data.num_classes must be <= 1000000 (got 10000000): the classifier has num_classes x features weights"),
    (["train.epochs=1000000"],
     "train.epochs must be <= 10000 (got 1000000): a typo: the longest shipped recipe has 300 epochs"),
    (["train.threads=5000"], "train.threads must be <= 1024 (got 5000): no node has that many cores"),
    (["telemetry.flush_every=1000000000"], "telemetry.flush_every must be <= 100000 (got 1000000000): "
                                           "the telemetry buffers hold flush_every steps on the device"),
    (["data.train_subset=4294967296"],
     "data.train_subset must be <= 2147483647 (got 4294967296): ffcv's sample indices are 32-bit"),
    (["model.widths=[8,100000]"],
     "model.widths[1] must be <= 4096 (got 100000): a 3x3 convolution of that width holds 150M weights"),
    (["model.blocks_per_stage=1000"], "model.blocks_per_stage must be <= 64 (got 1000): deeper than any ResNet"),
    (["data.start_ramp=0", "data.end_ramp=5"],
     "data.end_ramp must be <= train.epochs (got 5 > 2): the ramp would never reach data.max_res"),
]


@pytest.mark.parametrize("overrides,message", UPPER, ids=[" ".join(o) for o, _ in UPPER])
def test_upper_bounds_one_line_exit_2(exp, capsys, overrides, message):
    out = exp.parent / "run"
    assert refused(capsys, ["train", str(exp), *overrides, "--out", str(out)], exp.parent) == message


def test_loader_buffers_against_available_memory(exp, capsys, monkeypatch):
    from imagenet_repro.data import common

    monkeypatch.setattr(common, "available_memory", lambda: 2**30)
    cfg = build_config(read_yaml(exp), {"data": {"max_res": 512, "min_res": 512, "batch_size": 256}})
    with pytest.raises(ConfigError, match=r"the loaders' buffers need 4\.\d GiB, this machine has 1\.0 GiB available"):
        common.check_memory(cfg.data, 1)
    common.check_memory(cfg.data, 8)  # a per-rank batch of 32 fits


@pytest.mark.parametrize("out,message", [
    ("afile", "--out '{root}/afile' is a file, not a folder"),
    ("afile/run", "--out '{root}/afile/run' cannot be created: {root}/afile is a file, not a folder"),
    ("x" * 300, "--out '{root}/" + "x" * 300 + "' has a 300-byte name (the limit is 255)"),
])
def test_train_out_checked_before_work(exp, capsys, out, message):
    root = exp.parent
    got = refused(capsys, ["train", str(exp), "--out", str(root / out)], root)
    assert got == message.format(root=root)


def test_data_path_of_the_wrong_kind(exp, capsys):
    root = exp.parent
    got = refused(capsys, ["train", str(exp), f"data.train_path={root}", "--out", str(root / "r")], root)
    assert got == f"data.train_path is a folder, not a file: {root}"


def spec(tmp_path: Path, runs_root: str, extra: str = "") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: s\nruns_root: {runs_root}\nbase: {REPO / 'experiments/demo.yaml'}\n"
                    f"axes: {{seed: [0, 1]}}\n{extra}")
    return path


@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "submit"])
@pytest.mark.parametrize("runs_root,message", [
    ("{root}/afile", "runs_root '{root}/afile' is a file, not a folder"),
    ("{root}/afile/runs", "runs_root '{root}/afile/runs' cannot be created: {root}/afile is a file, not a folder"),
    ("/proc/none/runs", "runs_root '/proc/none/runs' cannot be created: this user cannot write into /proc"),
])
def test_spec_runs_root_checked_at_plan_time(exp, capsys, dry, runs_root, message):
    root = exp.parent
    path = spec(root, runs_root.format(root=root))
    got = refused(capsys, ["sweep", str(path), "--cluster", "local", *(["--dry-run"] if dry else [])], root)
    assert got == f"{path}: " + message.format(root=root)


def test_spec_sweep_folder_that_is_a_file(exp, capsys):
    root = exp.parent
    (root / "runs").mkdir()
    (root / "runs" / "s").write_text("x")
    path = spec(root, str(root / "runs"))
    assert refused(capsys, ["sweep", str(path), "--dry-run"], root) == \
        f"{path}: sweep folder '{root}/runs/s' is a file, not a folder"


def test_spec_data_paths_warn_on_dry_run_fail_on_submit(exp, capsys):
    root = exp.parent
    path = spec(root, str(root / "runs"), "overrides: {data.train_path: /cluster/train.beton}\n")
    assert main(["sweep", str(path), "--dry-run", "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    assert "  warning: data path missing here: /cluster/train.beton (must exist where the jobs run)" in out
    assert not (root / "runs").exists()
    got = refused(capsys, ["sweep", str(path), "--cluster", "local"], root)
    assert got.startswith("data path does not exist: /cluster/train.beton")
    wrong = spec(root, str(root / "runs"), f"overrides: {{data.train_path: {root}}}\n")
    assert refused(capsys, ["sweep", str(wrong), "--dry-run"], root) == \
        f"{wrong}: grid point seed=0: data.train_path is a folder, not a file: {root}"


@pytest.mark.parametrize("extra,message", [
    ("slurm: {mem_gb: .nan}\n", "slurm.mem_gb must be a finite number (got nan)"),
    ("slurm: {mem_gb: .inf}\n", "slurm.mem_gb must be a finite number (got inf)"),
    ("slurm: {nodes: 100000}\n", "slurm.nodes must be <= 1024 (got 100000): more nodes than one run of this suite can use"),
    ("slurm: {timeout_min: 10, signal_delay_s: 600}\n", "slurm.signal_delay_s (600) must be below the time limit "
     "slurm.timeout_min x 60 (600): the checkpoint signal would come at the start"),
    ("local: {parallelism: 100000}\n", "local.parallelism must be <= 1024 (got 100000): runs at a time on this one machine"),
    ("gpu_hours_per_run: .inf\n", "gpu_hours_per_run must be a finite number (got inf)"),
])
def test_spec_numbers_bounded(exp, capsys, extra, message):
    root = exp.parent
    path = spec(root, str(root / "runs"), extra)
    assert refused(capsys, ["sweep", str(path), "--dry-run"], root) == f"{path}: {message}"


def test_results_root_checked_before_work(exp, capsys):
    root = exp.parent
    path = spec(root, str(root / "runs"))
    for verb in ("aggregate", "figures", "report"):
        assert refused(capsys, [verb, str(path), "--results", str(root / "afile")], root) == \
            f"--results '{root}/afile' is a file, not a folder"
    (root / "res" / "s").mkdir(parents=True)
    (root / "res" / "s" / "figures").write_text("x")
    assert refused(capsys, ["figures", str(path), "--results", str(root / "res")], root) == \
        f"figures folder '{root}/res/s/figures' is a file, not a folder"
    (root / "res" / "s" / "figures").unlink()
    (root / "res" / "s" / "report.html").mkdir()
    assert refused(capsys, ["report", str(path), "--results", str(root / "res")], root) == \
        f"report '{root}/res/s/report.html' is a folder, not a file"


def test_rehearse_root_checked_before_work(exp, capsys):
    root = exp.parent
    path = spec(root, str(root / "runs"))
    assert refused(capsys, ["sweep", str(path), "--rehearse", "--rehearse-root", str(root / "afile")], root) == \
        f"--rehearse-root '{root}/afile' is a file, not a folder"


def test_data_write_paths_checked_before_work(exp, capsys):
    root = exp.parent
    (root / "img").mkdir()
    assert refused(capsys, ["data", "write", "--source", "imagefolder", str(root / "img"), "--out",
                            str(root / "afile/x.beton")], root) == \
        f"--out '{root}/afile/x.beton' cannot be written: its folder {root}/afile is a file, not a folder"
    assert refused(capsys, ["data", "write", "--source", "imagefolder", str(root / "img"), "--out",
                            str(root / "img")], root) == f"--out '{root}/img' is a folder, not a file"
    assert refused(capsys, ["data", "write", "--source", "imagefolder", str(root / "afile"), "--out",
                            str(root / "x.beton")], root) == f"image folder {root}/afile is a file, not a folder"
    assert refused(capsys, ["data", "write", "--source", "fashion-mnist", "--out", str(root / "afile")], root) == \
        f"--out '{root}/afile' is a file, not a folder"
    assert refused(capsys, ["data", "write", "--source", "fashion-mnist", "--out", str(root / "fm"),
                            "--size", "100000"], root).startswith("--size must be <= 256 (got 100000)")
    assert refused(capsys, ["data", "write", "--source", "imagefolder", str(root / "img"), "--out",
                            str(root / "x.beton"), "--max-res", "100000"], root).startswith(
        "--max-res must be <= 8192 (got 100000)")


def test_path_checks_create_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    assert check_out_dir(target, "--out") == target and not (tmp_path / "a").exists()
    assert check_out_file(tmp_path / "new" / "f.beton", "--out") and not (tmp_path / "new").exists()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ConfigError, match="holds a NUL byte"):
        check_out_dir(str(tmp_path / "a\0b"), "--out")
    with pytest.raises(ConfigError, match="is empty"):
        check_out_dir(" ", "--out")
    with pytest.raises(ConfigError, match="does not exist"):
        check_in_path(tmp_path / "none", "x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder: the permission case needs a user")
def test_folder_without_write_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(ConfigError, match="is a folder this user cannot write into"):
        check_out_dir(locked, "--out")
    with pytest.raises(ConfigError, match="cannot be created: this user cannot write into"):
        check_out_dir(locked / "run", "--out")
