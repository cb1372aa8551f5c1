"""Optimizer families in one sweep: sub-grids, switching family, one config system."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from test_sweep_cluster import tiny_spec

from imagenet_repro import cli, rundir
from imagenet_repro.config import build_config, config_hash
from imagenet_repro.errors import ConfigError
from imagenet_repro.sweep.launcher import launch
from imagenet_repro.sweep.spec import grid_points, load_spec, resolve_runs, select_points
from imagenet_repro.sweep.status import classify_all, run_refs

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments/demo.yaml"

FAMILIES = f"""
name: fam
runs_root: RUNS
base: {DEMO}
axes:
  seed: [0, 1]
grids:
  - axes:
      optimizer: [sgd, sgdc]
      optim.lr: [0.05, 0.1]
      optim.momentum: [0.9]
  - axes:
      optimizer: [adamw, adamc]
      optim.lr: [1.0e-3]
      optim.weight_decay: [0.1, 0.5]
    overrides:
      optim.betas: [0.9, 0.95]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace("RUNS", str(tmp_path / "runs")))
    return path


def test_switching_family_drops_the_replaced_optimizers_keys():
    base = OmegaConf.load(DEMO)
    cfg = build_config(base, OmegaConf.from_dotlist(["optim.name=adamw", "optim.lr=1e-3"]), check_paths=False)
    assert cfg.optim.name == "adamw" and cfg.optim.lr == 1e-3 and "momentum" not in cfg.optim
    assert cfg.optim.weight_decay == base.optim.weight_decay  # shared keys carry over
    # a key given together with the new optimizer must still be one it declares
    with pytest.raises(ConfigError, match="unknown config key: optim.momentum"):
        build_config(base, OmegaConf.from_dotlist(["optim.name=adamw", "optim.momentum=0.9"]), check_paths=False)


def test_switching_family_from_the_command_line(tmp_path, capsys, fmnist_tiny):
    out = tmp_path / "run"
    tiny = [o for o in fmnist_tiny if not o.startswith("optim.momentum=")]  # an SGD key, given in this layer
    code = cli.main(["train", str(DEMO), *tiny, "optim.name=adamw", "optim.lr=1e-3",
                     "train.epochs=1", "train.steps_per_epoch=2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "name: adamw" in (out / rundir.CONFIG).read_text() and "momentum" not in (out / rundir.CONFIG).read_text()


def test_sub_grids_are_one_sweep(tmp_path):
    spec = load_spec(write(tmp_path, FAMILIES))
    assert len(spec.grids) == 2
    points = grid_points(spec)
    assert len(points) == 2 * 2 * 2 + 2 * 2 * 2
    runs = resolve_runs(spec)
    assert len({r.run_id for r in runs}) == 16 and {r.run_dir.parent for r in runs} == {spec.sweep_dir}
    sgd = [r for r in runs if r.config["optim"]["name"] in ("sgd", "sgdc")]
    adam = [r for r in runs if r.config["optim"]["name"] in ("adamw", "adamc")]
    assert all(r.config["optim"]["momentum"] == 0.9 and "betas" not in r.config["optim"] for r in sgd)
    assert all(r.config["optim"]["betas"] == [0.9, 0.95] and "momentum" not in r.config["optim"] for r in adam)
    assert {r.config["optim"]["weight_decay"] for r in sgd} == {OmegaConf.load(DEMO).optim.weight_decay}
    # every run id is the config hash build_config gives the same point
    for run in runs:
        layers = [OmegaConf.load(DEMO), {"name": "fam"}, OmegaConf.from_dotlist(
            [f"{k}={v}" if not isinstance(v, list) else f"{k}=[{','.join(map(str, v))}]" for k, v in run.point.items()])]
        if run in adam:
            layers.append({"optim": {"betas": [0.9, 0.95]}})
        assert config_hash(build_config(*layers, check_paths=False)) == run.run_id
    # --only spans the grids
    assert len(select_points(spec, points, ["optimizer=adamc"])) == 4
    assert len(select_points(spec, points, ["seed=1"])) == 8


def test_families_dry_run_and_status_treat_the_union_as_one_sweep(tmp_path, capsys):
    path = write(tmp_path, FAMILIES)
    assert cli.main(["sweep", str(path), "--dry-run", "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    assert "16 runs (2 grids: 2 optimizer x 2 lr x 1 optim.momentum x 2 seed; " \
           "2 optimizer x 1 lr x 2 wd x 2 seed)" in out
    assert "to submit: 16" in out
    assert cli.main(["status", str(path)]) == 0
    assert "sweep fam: 16 runs" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("grids: {axes: {seed: [0]}}", "wrong shape"),
    ("grids:\n  - axes: {optimizer: [sgd]}\n    bogus: 1", "unknown key in a grid: bogus (allowed: axes, overrides)"),
    ("axes: {seed: [0]}\ngrids:\n  - axes: {seed: [1]}", "grids[0]: axis seed is also a shared axis"),
    ("grids:\n  - axes: {optimizer: [adamw], optim.momentum: [0.9]}",
     "grid point optimizer=adamw optim.momentum=0.9: unknown config key: optim.momentum"),
    ("grids:\n  - axes: {optim.lr: [0.1]}\n    overrides: {optim.lr: 0.2}", "optim.lr is both an override and an axis"),
    ("grids:\n  - axes: {optimizer: [sgd]}\n  - axes: {optimizer: [sgd]}", "resolve to the same run"),
])
def test_bad_grids_are_one_line_exit_2(tmp_path, capsys, text, message):
    path = write(tmp_path, f"name: bad\nruns_root: RUNS\nbase: {DEMO}\n{text}\n")
    assert cli.main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("given", ["0", "false", "False"])
def test_booleans_mean_the_same_in_train_and_sweep(tmp_path, given):
    """0/1 for a boolean: repro train and repro sweep agree (one config system)."""
    cli_cfg = build_config(OmegaConf.load(DEMO), OmegaConf.from_dotlist([f"train.amp={given}"]), {"name": "b"},
                           check_paths=False)
    path = write(tmp_path, f"name: b\nruns_root: RUNS\nbase: {DEMO}\noverrides: {{train.amp: {given}}}\n")
    axis = write(tmp_path, f"name: b\nruns_root: RUNS\nbase: {DEMO}\naxes: {{train.amp: [{given}]}}\n")
    ids = {config_hash(cli_cfg), resolve_runs(load_spec(path))[0].run_id}
    ids.add(resolve_runs(load_spec(axis))[0].run_id)
    assert len(ids) == 1 and cli_cfg.train.amp is False


def test_shipped_families_spec_plans():
    spec = load_spec(REPO / "sweeps/demo_families.yaml")
    runs = resolve_runs(spec)
    assert sorted({r.config["optim"]["name"] for r in runs}) == ["adamc", "adamw", "sgd", "sgdc"]
    assert len(runs) == 8


@pytest.mark.slow
@pytest.mark.slurm
def test_families_sweep_end_to_end_on_slurm(slurm_cluster, tmp_path, capsys):
    """sgd/sgdc and adamw/adamc grids as one SLURM sweep, tiny: all done, aggregate has all four."""
    name = f"fam{os.getpid()}"
    grids = ("grids:\n  - axes: {optimizer: [sgd, sgdc], optim.lr: [0.1]}\n"
             "  - axes: {optimizer: [adamw, adamc], optim.lr: [0.002]}\n")
    spec = tiny_spec(tmp_path, name, "  seed: [0]", epochs=1, extra=grids)
    t0 = time.monotonic()
    assert launch(spec, cluster="slurm", poll_s=1.0) == 0
    print(f"families sweep (4 runs) on SLURM: {time.monotonic() - t0:.1f} s")
    assert "submitted 4 runs: SLURM job" in capsys.readouterr().out
    assert [s.state for s in classify_all(run_refs(load_spec(spec)))] == ["done"] * 4
    assert cli.main(["aggregate", str(spec), "--results", str(tmp_path / "results")]) == 0
    summary = pd.read_csv(tmp_path / "results" / name / "summary.csv")
    assert sorted(summary["optimizer"]) == ["adamc", "adamw", "sgd", "sgdc"]
    assert launch(spec, cluster="slurm", poll_s=1.0) == 0  # re-sweep: nothing new
    assert "submitted 0 runs" in capsys.readouterr().out
