"""A run's ranks across a resume, with 2 processes over gloo under torchrun
(tests/rank_rng_probe.py): each rank gets its own RNG streams back from the checkpoint, and
the number of ranks is part of the run's identity (a resume on another one is refused in one
line unless ``checkpoint.accept_world_size_change`` says the user accepts it)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from ranks import run_ranks

from imagenet_repro import rundir
from imagenet_repro.cli import main
from imagenet_repro.config import load_config
from imagenet_repro.train.compare import compare_runs
from imagenet_repro.train.loop import run_training

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "demo.yaml")
STOP = 3  # the checkpoint after step 3 of the 8
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def overrides(fmnist_tiny) -> list[str]:
    return fmnist_tiny + ["train.epochs=1", "train.steps_per_epoch=8", "data.val_subset=256"]  # 2 ranks x 64 images


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, overrides) -> dict[str, Path]:
    """Two runs of the same config by 2 ranks: ``whole`` (uninterrupted) and ``resumed`` (left
    after a checkpoint at step STOP, then resumed), and ``stopped``: that run's folder as it was left."""
    root = tmp_path_factory.mktemp("ranks")
    plan = [{"out": str(root / "whole"), "overrides": overrides},
            {"out": str(root / "resumed"), "overrides": overrides, "stop_after": STOP, "copy_to": str(root / "stopped")}]
    run_ranks("rank_rng_probe.py", plan, root, ranks=2)
    return {name: root / name for name in ("whole", "resumed", "stopped")}


def draws(run: Path) -> dict:
    return json.loads((run / "draws.json").read_text())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_each_rank_gets_its_own_rng_streams_back_on_resume(two_ranks):
    whole, resumed = draws(two_ranks["whole"]), draws(two_ranks["resumed"])
    assert whole["state"] == resumed["state"] == "done"
    steps = [str(s) for s in range(1, 9)]
    for rank in ("0", "1"):
        assert list(resumed["draws"][rank]) == steps  # steps 1-3, then 4-8 after the resume
        assert resumed["draws"][rank] == whole["draws"][rank], f"rank {rank}'s streams after the resume"
    # the ranks' streams part from the first step on: rank 1 resumed with rank 0's would differ
    assert whole["draws"]["0"]["4"][:3] != whole["draws"]["1"]["4"][:3]
    assert compare_runs(two_ranks["whole"], two_ranks["resumed"]) == []


def test_the_checkpoint_holds_each_ranks_states(two_ranks):
    rng = torch.load(two_ranks["stopped"] / rundir.LAST_CHECKPOINT, weights_only=True)["rng"]
    assert len(rng) == 2 and all(state["cuda"] is None for state in rng)  # CPU ranks: no CUDA state
    assert not torch.equal(rng[0]["torch"], rng[1]["torch"])
    assert rng[0]["python"]["state"] != rng[1]["python"]["state"]


def test_a_resume_on_another_world_size_is_refused_in_one_line(tmp_path, two_ranks, overrides, capsys, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(two_ranks["stopped"], out)
    before = snapshot(out)
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # `repro train`: one process
    assert main(["train", DEMO, *overrides, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"repro: error: {out} was trained on 2 rank(s) (per-rank batch 64), not 1 (per-rank "
                            f"batch 128): nothing done; resume it on 2 rank(s), or set "
                            f"checkpoint.accept_world_size_change=true to go on with 1 (BatchNorm then sees another "
                            f"batch), or delete {out} to start it over\n")
    assert snapshot(out) == before


def test_the_accepting_key_resumes_on_another_world_size_and_the_manifest_keeps_it(tmp_path, two_ranks, overrides,
                                                                                   monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(two_ranks["stopped"], out)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = load_config(DEMO, overrides + ["checkpoint.accept_world_size_change=true"])
    assert run_training(cfg, out) == "done"
    assert rundir.read_status(out)["resumed_from_step"] == STOP
    manifest = json.loads((out / rundir.MANIFEST).read_text())
    assert manifest["world_size"] == 1 and [s["world_size"] for s in manifest["starts"]] == [2, 1]
    assert run_training(load_config(DEMO, overrides), out) == "done"  # now a 1-rank run: the key is not needed
