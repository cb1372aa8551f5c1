"""A run folder belongs to one config (imagenet_repro.identity).

Starting or resuming a folder with another config is refused (exit 2, one line naming each
differing key with both values, nothing written), in ``repro train`` and in ``repro sweep``;
a restart that differs only in :data:`NON_METRIC_KEYS` is accepted, and each of those keys,
changed half-way through a run, leaves its steps/layers/eval tables equal to the unchanged
run's (the package's :func:`~imagenet_repro.train.compare.compare_runs`)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from imagenet_repro import rundir
from imagenet_repro.cli import main
from imagenet_repro.config import NON_METRIC_KEYS, build_config, load_config, to_yaml
from imagenet_repro.identity import check_run_folder, config_differences
from imagenet_repro.sweep.spec import load_spec, resolve_runs
from imagenet_repro.train.callbacks import Callback
from imagenet_repro.train.compare import compare_runs
from imagenet_repro.train.loop import run_training

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments/demo.yaml")
E = "repro: error: "
STOP_AT = 5  # mid-epoch 1 of the 2 x 16 steps of fmnist_tiny


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stopped_run(out: Path, overrides: list[str], at: int = STOP_AT) -> None:
    """A run interrupted at step ``at`` as a preempted job is: checkpoint there, status failed."""
    class Send(Callback):
        def on_step_end(self, trainer, images, labels) -> None:
            if trainer.step == at:
                os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        with pytest.raises(SystemExit):
            run_training(load_config(DEMO, overrides), out, callbacks=[Send()])
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert rundir.read_status(out)["state"] == "failed"


@pytest.fixture
def reference(reference_run) -> Path:
    return reference_run


# ------------------------------------------------------------------ unit: the comparison
def test_differences_name_keys_and_both_values_and_skip_non_metric_keys():
    a = {"name": "a", "optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "train": {"progress": True, "epochs": 2}}
    b = {"name": "b", "optim": {"lr": 0.05, "betas": [0.9, 0.999], "eps": 1e-8}, "train": {"progress": False,
                                                                                          "epochs": 2}}
    assert config_differences(a, b) == [("optim.lr", 0.1, 0.05), ("optim.betas", [0.9, 0.99], [0.9, 0.999]),
                                        ("optim.eps", "(absent)", 1e-8)]
    assert config_differences(a, a) == []


def test_folder_config_missing_a_key_added_since_is_completed_with_its_default(tmp_path, fmnist_betons):
    cfg = load_config(DEMO, [f"data.train_path={fmnist_betons / 'train.beton'}",
                             f"data.val_path={fmnist_betons / 'val.beton'}"])
    stored = yaml.safe_load(to_yaml(cfg))
    del stored["train"]["grad_clip"]  # as a run started before the key existed wrote it (default value)
    (tmp_path / rundir.CONFIG).write_text(yaml.safe_dump(stored))
    check_run_folder(tmp_path, cfg)  # no difference
    stored["train"]["eval_every_steps"] = 7
    (tmp_path / rundir.CONFIG).write_text(yaml.safe_dump(stored))
    with pytest.raises(Exception, match=r"train.eval_every_steps: 7 in the folder, 125 given"):
        check_run_folder(tmp_path, cfg)


@pytest.mark.parametrize("content", [b"{unclosed: [", b"- a list\n", b"\xff\xfe\x00"], ids=["bad-yaml", "list", "binary"])
def test_unreadable_folder_config_is_refused(tmp_path, capsys, fmnist_tiny, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / rundir.CONFIG).write_bytes(content)
    before = snapshot(out)
    assert main(["train", DEMO, *fmnist_tiny, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(E + f"{out / rundir.CONFIG}: ") and err.count("\n") == 1
    assert f"cannot tell which config this run folder belongs to; delete {out} to start it over" in err
    assert snapshot(out) == before


# ------------------------------------------------------------------ repro train
@pytest.mark.slow
def test_finished_run_with_another_config_is_refused_and_untouched(reference, capsys, fmnist_tiny):
    before = snapshot(reference)
    assert main(["train", DEMO, *fmnist_tiny, "optim.lr=0.05", "--out", str(reference)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (E + f"{reference} holds a run of another config (optim.lr: 0.1 in the folder, 0.05 given)"
                            f": nothing done; to train this config use another --out (or folder), or delete "
                            f"{reference} to start it over\n")
    assert snapshot(reference) == before
    # non-metric keys only: accepted (a done run is not trained again)
    assert main(["train", DEMO, *fmnist_tiny, "train.progress=true", "name=x", "--out", str(reference)]) == 0
    assert capsys.readouterr().out == f"{reference}: done\n" and snapshot(reference) == before


@pytest.mark.slow
def test_half_finished_run_restarted_with_another_config_is_refused(tmp_path, reference, capsys, fmnist_tiny):
    out = tmp_path / "half"
    stopped_run(out, fmnist_tiny)
    before = snapshot(out)
    code = main(["train", DEMO, *fmnist_tiny, "optim.weight_decay=0.01", "data.batch_size=64", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert ("(data.batch_size: 128 in the folder, 64 given; optim.weight_decay: 0.005 in the folder, 0.01 given)"
            in err)
    assert snapshot(out) == before  # not a byte written: status still failed at its step
    assert run_training(load_config(DEMO, fmnist_tiny), out) == "done"  # its own config resumes, exactly
    assert compare_runs(reference, out) == []


# A changed value for every key of NON_METRIC_KEYS (fmnist_tiny: the demo's tensorboard on,
# checkpoint every 5 min and at every epoch end, progress off).
NON_METRIC_CASES = {
    "name": "renamed",
    "train.progress": "true",
    "train.tensorboard": "false",
    "checkpoint.every_minutes": "0.0001",  # a checkpoint at every step boundary from the resume on
    "checkpoint.every_epoch": "false",
    "train.collective_timeout_min": "0.5",  # several ranks' wait on a peer; one rank has no collective
    "checkpoint.accept_world_size_change": "true",  # on the same world size (another: tests/test_resume_ranks.py)
}


def test_every_non_metric_key_has_a_case():
    assert sorted(NON_METRIC_CASES) == sorted(NON_METRIC_KEYS)


@pytest.mark.slow
@pytest.mark.parametrize("key", [pytest.param(k, marks=() if k == "train.tensorboard" else pytest.mark.long)
                                 for k in NON_METRIC_CASES])  # one in make test, every key in make test-rehearsals
def test_non_metric_key_changed_mid_run_is_accepted_and_changes_no_table(tmp_path, reference, fmnist_tiny, key):
    out = tmp_path / "run"
    stopped_run(out, fmnist_tiny)
    changed = fmnist_tiny + [f"{key}={NON_METRIC_CASES[key]}"]
    assert run_training(load_config(DEMO, changed), out) == "done"
    assert rundir.read_status(out)["resumed_from_step"] == STOP_AT
    assert compare_runs(reference, out) == []


# ------------------------------------------------------------------ repro sweep
def assert_sweep_refuses(spec: Path, capsys, runs_root: Path, error: str) -> None:
    """``repro sweep`` (a dry run, and a real submission) says ``error`` in one line, exit 2,
    and leaves ``runs_root`` as it was: no claim, no lock, no plan cache, no job folder."""
    before = snapshot(runs_root)
    for extra in (["--dry-run"], ["--cluster", "local"]):
        assert main(["sweep", str(spec), *extra]) == 2
        assert capsys.readouterr().err == E + error + "\n"
        assert snapshot(runs_root) == before


def test_sweep_refuses_a_run_folder_of_another_config(tmp_path, capsys, fmnist_betons):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\nruns_root: {tmp_path / 'runs'}\nbase: {DEMO}\n"
                    f"overrides: {{data.train_path: {fmnist_betons / 'train.beton'}, "
                    f"data.val_path: {fmnist_betons / 'val.beton'}}}\naxes:\n  optim.lr: [0.1, 0.2]\n")
    runs = resolve_runs(load_spec(spec))
    for run in runs:  # the folders as a sweep that trained them left them (as the trainer writes them)
        run.run_dir.mkdir(parents=True)
        (run.run_dir / rundir.CONFIG).write_text(OmegaConf.to_yaml(run.config))
        check_run_folder(run.run_dir, run.config)
    # a folder edited by hand: its config says another weight decay
    stored = yaml.safe_load((runs[1].run_dir / rundir.CONFIG).read_text())
    stored["optim"]["weight_decay"] = 0.5
    (runs[1].run_dir / rundir.CONFIG).write_text(yaml.safe_dump(stored))
    assert_sweep_refuses(spec, capsys, tmp_path / "runs",
                         f"grid point lr=0.2: {runs[1].run_dir} holds a run of another config (optim.weight_decay: "
                         f"0.5 in the folder, 0.02 given): nothing done; to train this config use another --out (or "
                         f"folder), or delete {runs[1].run_dir} to start it over")
    before = snapshot(tmp_path / "runs")
    # the job itself refuses too (run_training), before writing anything
    with pytest.raises(Exception, match="holds a run of another config"):
        run_training(build_config(runs[1].config), runs[1].run_dir)
    assert snapshot(tmp_path / "runs") == before


def test_sweep_refuses_a_run_folder_made_on_another_world_size(tmp_path, capsys, fmnist_betons):
    """A re-sweep with another slurm.tasks_per_node: the world size a run gets is nodes x tasks."""
    spec = tmp_path / "s.yaml"
    common = (f"name: s\nruns_root: {tmp_path / 'runs'}\nbase: {DEMO}\noverrides: {{data.train_path: "
              f"{fmnist_betons / 'train.beton'}, data.val_path: {fmnist_betons / 'val.beton'}ACCEPT}}\n"
              f"axes:\n  optim.lr: [0.1, 0.2]\nslurm:\n  tasks_per_node: TASKS\n")
    spec.write_text(common.replace("ACCEPT", "").replace("TASKS", "2"))
    runs = resolve_runs(load_spec(spec))
    for run in runs:  # the folders as a sweep on 2 tasks left them
        run.run_dir.mkdir(parents=True)
        (run.run_dir / rundir.CONFIG).write_text(OmegaConf.to_yaml(run.config))
        (run.run_dir / rundir.MANIFEST).write_text('{"world_size": 2}')
    assert main(["sweep", str(spec), "--dry-run"]) == 0  # the same world size
    capsys.readouterr()
    spec.write_text(common.replace("ACCEPT", "").replace("TASKS", "1"))  # re-swept on 1 task per node
    assert_sweep_refuses(spec, capsys, tmp_path / "runs",
                         f"grid point lr=0.1: {runs[0].run_dir} was trained on 2 rank(s) (per-rank batch 16), not 1 "
                         f"(per-rank batch 32): nothing done; resume it on 2 rank(s), or set "
                         f"checkpoint.accept_world_size_change=true to go on with 1 (BatchNorm then sees another "
                         f"batch), or delete {runs[0].run_dir} to start it over [resources: 1 node(s) x 1 task(s)]")
    # the key says the user accepts it, and finds the same run folders (it is not part of the run id)
    spec.write_text(common.replace("ACCEPT", ", checkpoint.accept_world_size_change: true").replace("TASKS", "1"))
    assert [r.run_dir for r in resolve_runs(load_spec(spec))] == [r.run_dir for r in runs]
    assert main(["sweep", str(spec), "--dry-run"]) == 0
