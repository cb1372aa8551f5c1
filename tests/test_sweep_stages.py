"""Two-stage sweeps (imagenet_repro/sweep/stages.py): schema, plan, refusal, choice of stage 2.

No cluster and no training: stage-1 results are synthetic run folders (tests/synthetic_runs.py)
written at the run ids the spec resolves to; a real stage-2 launch uses the debug executor
with a stand-in trainer.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from synthetic_runs import write_run

from imagenet_repro import cli, rundir
from imagenet_repro.config import to_yaml
from imagenet_repro.sweep.launcher import launch
from imagenet_repro.sweep.spec import load_spec, resolve_runs
from imagenet_repro.sweepdir import read_description

REPO = Path(__file__).resolve().parents[1]

LRS = [0.05, 0.1, 0.2]
WDS = [1.0e-4, 1.0e-3, 1.0e-2]
STAGED = """
name: staged
runs_root: RUNS
base: BASE
overrides: {train.epochs: 2, data.train_path: DATA, data.val_path: DATA}
axes:
  optimizer: [sgd, sgdc]
  optim.lr: [0.05, 0.1, 0.2]
  optim.weight_decay: [1.0e-4, 1.0e-3, 1.0e-2]
  seed: [0, 1, 2]
stages:
  - {name: search, seeds: [0]}
  - {name: confirm, seeds: [1, 2], at: best, neighbours: NEIGHBOURS}
gpu_hours_per_epoch: 0.5
"""


def write_spec(tmp_path: Path, text: str = STAGED, neighbours: bool = False) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace("RUNS", str(tmp_path / "runs")).replace("BASE", str(REPO / "experiments/demo.yaml"))
                    .replace("DATA", str(path)).replace("NEIGHBOURS", str(neighbours).lower()))
    return path


# final top-1 of stage 1 (seed 0) by (optimizer, lr, wd); missing cells get 0.50
TOP1 = {("sgd", 0.2, 1e-3): 0.80,     # the highest, but its run diverged: not eligible
        ("sgd", 0.1, 1e-3): 0.70,     # so sgd's best is this one, in the middle of the grid
        ("sgd", 0.1, 1e-2): 0.69,
        ("sgdc", 0.05, 1e-4): 0.72,   # sgdc's best: a corner, two neighbours only
        ("sgdc", 0.2, 1e-2): 0.71}
DIVERGED = {("sgd", 0.2, 1e-3)}


def write_stage_one(spec_path: Path, skip: int = 0) -> list:
    """Synthetic stage-1 run folders at the spec's run ids (all but the last ``skip``)."""
    spec = load_spec(spec_path)
    firsts = [r for r in resolve_runs(spec) if r.point["seed"] == 0]
    for run in firsts[:len(firsts) - skip]:
        p = run.point
        key = (p["optim.name"], p["optim.lr"], p["optim.weight_decay"])
        top1 = TOP1.get(key, 0.50)
        diverged = key in DIVERGED
        write_run(run.run_dir, optimizer=key[0], lr=key[1], wd=key[2], seed=0, n_steps=40, epochs=2,
                  layer_every=10, n_layers=2, eval_top1=[top1 - 0.1, top1],
                  state="diverged" if diverged else "done", stop_fraction=0.6 if diverged else 1.0)
        (run.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(run.config))  # the planned config, as the trainer writes it
    return firsts


def planned(out: str) -> list[tuple]:
    """(optimizer, lr, wd, seed) of the `submit` lines of a dry run."""
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "submit":
            rows.append((parts[2], float(parts[3]), float(parts[4]), int(parts[5])))
    return rows


def expected(cells: list[tuple], seeds=(1, 2)) -> list[tuple]:
    """Grid order: optimizer, lr, wd, seed (the last axis fastest)."""
    return sorted((o, lr, wd, s) for o, lr, wd in cells for s in seeds)


# ---------------------------------------------------------------------------- schema
@pytest.mark.parametrize("stages, message", [
    ("stages: {name: search}\n", "must be a list of exactly two stages"),
    ("stages:\n  - {name: search, seeds: [0]}\n", "must be a list of exactly two stages"),
    ("stages:\n  - {name: a, seeds: [0]}\n  - {name: b, seeds: [1, 2], at: best, extra: 1}\n",
     "unknown key in stage 2: extra"),
    ("stages:\n  - {name: a, seeds: [0], neighbours: true}\n  - {name: b, seeds: [1, 2], at: best}\n",
     "unknown key in stage 1: neighbours"),
    ("stages:\n  - {name: a, seeds: [0]}\n  - {name: b, seeds: [1, 2]}\n", "stage 2 (b): at must be best"),
    ("stages:\n  - {name: a, seeds: [0], at: best}\n  - {name: b, seeds: [1, 2], at: best}\n",
     "stage 1 (a): at must be grid"),
    ("stages:\n  - {name: a, seeds: []}\n  - {name: b, seeds: [1, 2], at: best}\n",
     "seeds must be a non-empty list of integers"),
    ("stages:\n  - {name: a, seeds: [0]}\n  - {name: b, seeds: [1, 7], at: best}\n",
     "seed 7 is not in the seed axis"),
    ("stages:\n  - {name: a, seeds: [0, 1]}\n  - {name: b, seeds: [1, 2], at: best}\n", "seed 1 is in both stages"),
    ("stages:\n  - {name: a, seeds: [0]}\n  - {name: b, seeds: [1], at: best}\n",
     "seed 2 of the seed axis is in no stage"),
    ("stages:\n  - {name: a, seeds: [0]}\n  - {name: a, seeds: [1, 2], at: best}\n", "both stages are named a"),
    ("stages:\n  - {name: '1', seeds: [0]}\n  - {name: b, seeds: [1, 2], at: best}\n", "name must be a word"),
    ("stages:\n  - {name: a, seeds: [0]}\n  - {name: b, seeds: [1, 2], at: best, neighbours: maybe}\n",
     "neighbours must be true or false"),
])
def test_bad_stage_specs_are_one_line_exit_2_nothing_submitted(tmp_path, capsys, stages, message):
    text = STAGED[:STAGED.index("stages:")] + stages + "gpu_hours_per_epoch: 0.5\n"
    spec = write_spec(tmp_path, text)
    for extra in ([], ["--dry-run"]):
        assert cli.main(["sweep", str(spec), "--cluster", "local", "--no-wait", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("repro: error: ") and "stages: " in err and message in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_stages_need_a_seed_axis_and_only_optimizer_lr_wd_axes(tmp_path, capsys):
    no_seed = STAGED.replace("  seed: [0, 1, 2]\n", "")
    assert cli.main(["sweep", str(write_spec(tmp_path, no_seed)), "--dry-run"]) == 2
    assert "need a seed axis" in capsys.readouterr().err
    other = STAGED.replace("  seed: [0, 1, 2]\n", "  seed: [0, 1, 2]\n  optim.momentum: [0.8, 0.9]\n")
    assert cli.main(["sweep", str(write_spec(tmp_path, other)), "--dry-run"]) == 2
    assert "axis optim.momentum is not supported with stages" in capsys.readouterr().err


def test_stage_argument_is_checked(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert cli.main(["sweep", str(spec), "--dry-run", "--stage", "3"]) == 2
    err = capsys.readouterr().err
    assert "--stage 3: staged has stages 1 (search), 2 (confirm), or `all`" in err
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"name: plain\nruns_root: {tmp_path / 'runs'}\nbase: {REPO / 'experiments/demo.yaml'}\n")
    assert cli.main(["sweep", str(plain), "--dry-run", "--stage", "2"]) == 2
    assert "declares no stages" in capsys.readouterr().err


# ---------------------------------------------------------------------------- plan
def test_stage_one_dry_run_counts_and_costs(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert cli.main(["sweep", str(spec), "--dry-run", "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    # 54-run grid of 2-epoch runs at 0.5 GPU-hour per epoch: 1 GPU-hour per run
    assert "sweep staged: 2 stages over the grid of 54 runs (54.0 GPU-hours)" in out
    assert "stage 1 (search): 18 runs, the whole lr x wd grid at seed 0: 18.0 GPU-hours" in out
    assert "stage 2 (confirm): 4 runs, seeds 1, 2 at each optimizer's best (lr, wd) from stage 1: 4.0 GPU-hours" in out
    assert "two stages: 22 runs, 22.0 GPU-hours; the whole grid: 54 runs, 54.0 GPU-hours; saving 32 runs, " \
           "32.0 GPU-hours (59.3 %)" in out
    assert "(no --stage given: stage 1; after it, `repro sweep" in out
    assert "to submit: 18 (new 18" in out and "cost estimate: 18.0 GPU-hours for the 18 runs" in out
    rows = planned(out)
    assert len(rows) == 18 and {r[3] for r in rows} == {0}
    assert sorted(rows) == sorted((o, lr, wd, 0) for o in ("sgd", "sgdc") for lr in LRS for wd in WDS)
    assert cli.main(["sweep", str(spec), "--dry-run", "--cluster", "local", "--stage", "search"]) == 0
    assert planned(capsys.readouterr().out) == rows
    assert cli.main(["sweep", str(spec), "--dry-run", "--cluster", "local", "--stage", "all"]) == 0
    assert len(planned(capsys.readouterr().out)) == 54
    assert not (tmp_path / "runs").exists()


def test_stage_one_dry_run_with_neighbours_gives_a_bound(tmp_path, capsys):
    spec = write_spec(tmp_path, neighbours=True)
    assert cli.main(["sweep", str(spec), "--dry-run", "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    assert "stage 2 (confirm): at most 20 runs" in out and "at most 20.0 GPU-hours" in out
    assert "two stages: 38 runs, 38.0 GPU-hours" in out


def test_paper_fig5_two_stage_plan(capsys, checkout_copy):
    for spec, per_run, grid_h in (("sweeps/paper_fig5.yaml", 25.0, "14,000.0"),
                                  ("sweeps/paper_fig5_budget.yaml", 2.0, "1,120.0")):
        loaded = load_spec(spec)
        assert [s.seeds for s in loaded.stages] == [(0,), (1, 2, 3, 4)]
        assert cli.main(["sweep", spec, "--dry-run", "--cluster", "slurm"]) == 0
        out = capsys.readouterr().out
        assert f"2 stages over the grid of 560 runs ({grid_h} GPU-hours)" in out
        assert f"stage 1 (search): 112 runs, the whole lr x wd grid at seed 0: {112 * per_run:,.1f} GPU-hours" in out
        assert f"stage 2 (confirm): 8 runs, seeds 1, 2, 3, 4 at each optimizer's best (lr, wd) from stage 1: " \
               f"{8 * per_run:,.1f} GPU-hours" in out
        assert f"saving 440 runs, {440 * per_run:,.1f} GPU-hours (78.6 %)" in out
        assert len(planned(out)) == 112
        assert out.count("warning: data path missing here: data/imagenet/") == 2  # train and val
    assert load_spec("sweeps/paper_fig5.yaml").base.name == "imagenet_resnet50_faithful.yaml"
    assert not (checkout_copy / "runs").exists()  # a dry run writes nothing


# ---------------------------------------------------------------------------- stage 2
def test_stage_two_is_refused_while_stage_one_is_incomplete(tmp_path, capsys):
    spec = write_spec(tmp_path)
    write_stage_one(spec, skip=3)
    before = sorted(p.name for p in (tmp_path / "runs" / "staged").iterdir())
    assert cli.main(["sweep", str(spec), "--stage", "2", "--cluster", "local", "--no-wait"]) == 2
    out, err = capsys.readouterr()
    err = err.strip()
    assert out == ""  # the refusal is the one line on stderr
    assert err.startswith("repro: error: stage 2 (confirm) waits for stage 1 (search): 3 of its 18 runs are not "
                          "done or diverged (done 14, diverged 1, pending 3)") and "\n" not in err
    after = sorted(p.name for p in (tmp_path / "runs" / "staged").iterdir())
    assert after == before  # nothing claimed or created
    assert not any((tmp_path / "runs" / "staged" / d / "job.json").exists() for d in after)
    # a dry run says what it waits for and exits 0
    assert cli.main(["sweep", str(spec), "--stage", "2", "--dry-run", "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    assert "stage 2 (confirm) waits for stage 1 (search): 3 of its 18 runs" in out
    assert "(chosen when stage 1 is complete)" in out and planned(out) == []


def test_stage_two_runs_each_optimizers_best(tmp_path, capsys):
    spec = write_spec(tmp_path)
    write_stage_one(spec)
    assert cli.main(["sweep", str(spec), "--dry-run", "--cluster", "local"]) == 0
    assert "stage 1 is complete: next `repro sweep" in capsys.readouterr().out
    assert cli.main(["sweep", str(spec), "--stage", "2", "--dry-run", "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    assert "sgd: best lr=0.1 wd=0.001 (stage-1 final top-1 70.00 %)" in out  # not the diverged 0.80
    assert "sgdc: best lr=0.05 wd=0.0001 (stage-1 final top-1 72.00 %)" in out
    assert "stage 2 (confirm): 4 runs" in out and "saving 32 runs" in out
    assert planned(out) == expected([("sgd", 0.1, 1e-3), ("sgdc", 0.05, 1e-4)])
    assert "to submit: 4 (new 4" in out


def test_stage_two_with_neighbours(tmp_path, capsys):
    spec = write_spec(tmp_path, neighbours=True)
    write_stage_one(spec)
    assert cli.main(["sweep", str(spec), "--stage", "confirm", "--dry-run", "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    sgd = [("sgd", 0.1, 1e-3), ("sgd", 0.05, 1e-3), ("sgd", 0.2, 1e-3), ("sgd", 0.1, 1e-4), ("sgd", 0.1, 1e-2)]
    sgdc = [("sgdc", 0.05, 1e-4), ("sgdc", 0.1, 1e-4), ("sgdc", 0.05, 1e-3)]  # a corner: two neighbours
    assert planned(out) == expected(sgd + sgdc)
    assert "stage 2 (confirm): 16 runs" in out and "two stages: 34 runs" in out


def test_stage_two_launch_then_status_and_aggregate_see_one_sweep(tmp_path, capsys):
    spec_path = write_spec(tmp_path)
    write_stage_one(spec_path)
    ran = []

    def trainer(cfg, run_dir: Path) -> str:  # a stand-in: record the run, write it as done
        ran.append((cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.seed))
        # seeds 1 and 2 do a little worse than seed 0 did (0.70 / 0.72): the mean of the
        # confirmed config falls below the single seed of the runner-up (0.69 / 0.71)
        write_run(run_dir, optimizer=cfg.optim.name, lr=cfg.optim.lr, wd=cfg.optim.weight_decay, seed=cfg.seed,
                  n_steps=40, epochs=2, layer_every=10, n_layers=2, eval_top1=[0.5, 0.68])
        (run_dir / "config.yaml").write_text(to_yaml(cfg))  # the folder holds the run's own config, as a trainer's
        return "done"

    assert launch(spec_path, cluster="debug", stage="2", trainer=trainer, poll_s=0.01) == 0
    want = expected([("sgd", 0.1, 1e-3), ("sgdc", 0.05, 1e-4)])
    assert sorted(ran) == want
    capsys.readouterr()
    # run ids are the grid's: the stage-2 folders are the full grid's points
    spec = load_spec(spec_path)
    grid = {r.run_id: r.point for r in resolve_runs(spec)}
    folders = [p.name for p in spec.sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(folders) == 22 and set(folders) <= set(grid)
    cache = json.loads((spec.sweep_dir / ".plan.json").read_text())
    assert len(cache["runs"]) == 54  # the plan cache lists the whole grid
    # the launcher described the sweep for the analysis (sweep.json; the analysis never reads the spec)
    described = read_description(spec.sweep_dir)
    assert described == spec.description() and described.axes["optim.lr"] == LRS
    assert [(s["name"], s["seeds"]) for s in described.stages] == [("search", [0]), ("confirm", [1, 2])]
    # status: stage 1 and the stage-2 runs, not the 32 grid points never launched
    assert cli.main(["status", str(spec_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sweep staged: 22 runs (staged: stage 1 and the runs launched of a 54-run grid)")
    assert "done 21, diverged 1" in out[0] and len(out) == 2 + 22
    # aggregate (of the sweep folder: its sweep.json): one sweep; the confirmed configs have 3 seeds
    assert cli.main(["aggregate", str(spec.sweep_dir), "--results", str(tmp_path / "results")]) == 0
    import pandas as pd

    configs = pd.read_csv(tmp_path / "results" / "staged" / "configs.csv")
    seeds = {(r.optimizer, r.lr_max, r.wd): r.n_runs for r in configs.itertuples()}
    assert seeds[("sgd", 0.1, 1e-3)] == 3 and seeds[("sgdc", 0.05, 1e-4)] == 3
    assert sum(seeds.values()) == 22
    # the best config of the sweep is the confirmed one (3 seeds), not a runner-up's single seed
    summary = pd.read_csv(tmp_path / "results" / "staged" / "summary.csv").set_index("optimizer")
    assert (summary.loc["sgd", "best_lr_max"], summary.loc["sgd", "best_wd"], summary.loc["sgd", "n_seeds"]) == (0.1, 1e-3, 3)
    assert (summary.loc["sgdc", "best_lr_max"], summary.loc["sgdc", "best_wd"], summary.loc["sgdc", "n_seeds"]) == (0.05, 1e-4, 3)
    assert summary.loc["sgd", "final_top1_pct_mean"] == pytest.approx(100 * (0.70 + 0.68 + 0.68) / 3)
    # a second stage-2 launch submits nothing: every run is done
    assert launch(spec_path, cluster="debug", stage="2", trainer=trainer, poll_s=0.01) == 0
    assert len(ran) == 4 and "submitted 0 runs" in capsys.readouterr().out
    assert rundir.read_status(spec.sweep_dir / folders[0]).get("state") in ("done", "diverged")
