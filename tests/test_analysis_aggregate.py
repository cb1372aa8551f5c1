"""Aggregation of a sweep's run folders: states, exact tail ratios, best-config selection."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_runs import describe, truncate_file, write_run, write_spec

from imagenet_repro.analysis.aggregate import aggregate_runs, aggregate_sweep
from imagenet_repro.analysis.metrics import bin_index, binned_means, tail_ratio
from imagenet_repro.cli import main
from imagenet_repro.errors import ConfigError
from imagenet_repro.sweep.spec import load_spec
from imagenet_repro.sweepdir import read_description

N = 100  # steps 0..99: the 40-60% window is steps 40..59, the last 10% is 90..99


def exact_overrides() -> dict[str, np.ndarray]:
    """Step columns whose tail ratios are known by hand."""
    t = np.arange(N)
    mid, tail = (t >= 40) & (t < 60), t >= 90
    grad = np.where(mid, 2.0, np.where(tail, 5.0, 1.0))          # tail 5 / mid 2 = 2.5
    g_n = np.where(tail, 0.3, 0.1)
    x_n = np.where(mid, 2.0, 1.0)                                 # ratio: tail 0.3 / mid 0.05 = 6
    weight = np.where(mid, 16.0, np.where(tail, 8.0, 10.0))      # tail 8 / mid 16 = 0.5
    return {"grad_norm": grad, "grad_norm_normalized": g_n, "weight_norm_normalized": x_n, "weight_norm": weight}


def run(root: Path, run_id: str, **kw) -> Path:
    kw.setdefault("n_steps", N)
    kw.setdefault("epochs", 4)
    kw.setdefault("layer_every", 10)
    kw.setdefault("n_layers", 4)
    kw.setdefault("sweep_name", "t")
    return write_run(root / run_id, **kw)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("agg")
    root = base / "runs" / "t"
    ex = exact_overrides()
    # sgd lr=0.1: two done seeds (final 0.65 / 0.66), one failed seed, one corrupt (truncated steps)
    run(root, "a0", lr=0.1, wd=1e-4, seed=0, overrides=ex, eval_top1=[0.5, 0.6, 0.7, 0.65])
    run(root, "a1", lr=0.1, wd=1e-4, seed=1, overrides=ex, eval_top1=[0.5, 0.6, 0.7, 0.66])
    run(root, "a2", lr=0.1, wd=1e-4, seed=2, state="failed", stop_fraction=0.3)
    truncate_file(run(root, "a3", lr=0.1, wd=1e-4, seed=3, eval_top1=[0.9] * 4) / "steps.parquet")
    # sgd lr=0.2: better done seed, but the other seed diverged -> not eligible
    run(root, "b0", lr=0.2, wd=1e-4, seed=0, eval_top1=[0.5, 0.6, 0.7, 0.80])
    run(root, "b1", lr=0.2, wd=1e-4, seed=1, state="diverged", stop_fraction=0.6)
    # sgd lr=0.05: still running
    run(root, "c0", lr=0.05, wd=1e-4, seed=0, state="running", stop_fraction=0.5)
    # sgdc: two done seeds 0.70 / 0.72, and one with a broken config.yaml
    run(root, "d0", optimizer="sgdc", lr=0.1, wd=1e-4, seed=0, eval_top1=[0.5, 0.6, 0.7, 0.70])
    run(root, "d1", optimizer="sgdc", lr=0.1, wd=1e-4, seed=1, eval_top1=[0.5, 0.6, 0.7, 0.72])
    bad = run(root, "d2", optimizer="sgdc", lr=0.1, wd=1e-4, seed=2, eval_top1=[0.99] * 4)
    (bad / "config.yaml").write_text("optim: {name: sgdc, lr: [unclosed\n")
    spec = write_spec(base / "spec.yaml", "t", base / "runs")
    return spec, base / "results"


def test_metric_helpers_by_hand():
    ex = exact_overrides()
    steps = np.arange(N)
    assert tail_ratio(steps, ex["grad_norm"]) == pytest.approx(2.5)
    assert tail_ratio(steps + 1000, ex["grad_norm"]) == pytest.approx(2.5)  # positions are relative
    assert math.isnan(tail_ratio(np.arange(3), np.ones(3)))  # no 40-60% row
    assert bin_index(10, 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    out = binned_means({"v": np.array([1, 2, 3, 4, 5, 6, 7, 8, np.nan, 10.0])}, 4)
    assert out["v"].tolist() == pytest.approx([2.0, 4.5, 7.0, 10.0])


def test_states_are_all_reported_and_counted(sweep, capsys):
    spec, results = sweep
    agg = aggregate_sweep(describe(spec), results_root=results)
    assert agg.counts == {"done": 5, "diverged": 1, "running": 1, "failed": 1, "corrupt": 2}
    states = agg.runs.set_index("run_id")["state"]
    assert states["a3"] == "corrupt" and states["d2"] == "corrupt"
    problems = agg.runs.set_index("run_id")["problem"]
    assert "steps.parquet" in problems["a3"] and "config.yaml" in problems["d2"]
    printed = capsys.readouterr().out
    assert "10 runs (5 done, 1 diverged, 1 running, 1 failed, 2 corrupt)" in printed
    for run_id in ("a2", "a3", "b1", "c0", "d2"):
        assert f"{run_id}: " in printed
    on_disk = pd.read_parquet(results / "t" / "runs.parquet")
    assert len(on_disk) == 10 and set(on_disk["state"]) == {"done", "diverged", "running", "failed", "corrupt"}


def test_exact_per_run_numbers(sweep):
    spec, _ = sweep
    runs = aggregate_runs(sorted(load_spec(spec).sweep_dir.iterdir())).runs.set_index("run_id")
    a0 = runs.loc["a0"]
    assert (a0["optimizer"], a0["lr_max"], a0["wd"], a0["seed"]) == ("sgd", 0.1, 1e-4, 0)
    assert a0["grad_norm_tail_ratio"] == pytest.approx(2.5)
    assert a0["ratio_tail_ratio"] == pytest.approx(6.0)
    assert a0["weight_norm_tail_ratio"] == pytest.approx(0.5)
    assert a0["final_top1"] == pytest.approx(0.65) and a0["best_top1"] == pytest.approx(0.70)
    assert a0["final_top5"] == pytest.approx(0.82)
    assert a0["n_steps"] == N and a0["cfg.optim.momentum"] == 0.9
    assert runs.loc["c0", "n_steps"] == 50 and runs.loc["c0", "state"] == "running"
    assert runs.loc["b1", "n_steps"] == 60  # diverged: cut at 60%, last row NaN is ignored
    assert np.isfinite(runs.loc["b1", "grad_norm_tail_ratio"])


def test_curves_are_downsampled(sweep):
    spec, _ = sweep
    agg = aggregate_runs(sorted(load_spec(spec).sweep_dir.iterdir()), max_points=20)
    a0 = agg.curves[agg.curves["run_id"] == "a0"]
    train, ev = a0[a0["source"] == "train"], a0[a0["source"] == "eval"]
    assert len(train) == 20 and len(ev) == 4
    assert train["step"].iloc[0] == pytest.approx(2.0)  # mean of steps 0..4
    assert train["grad_norm"].iloc[-1] == pytest.approx(5.0)  # steps 95..99 are all in the tail
    assert ev["top1"].tolist() == pytest.approx([0.5, 0.6, 0.7, 0.65])
    assert {"d2", "a3"}.isdisjoint(agg.curves["run_id"])  # corrupt runs bring no curves


def test_best_config_and_summary(sweep):
    spec, results = sweep
    agg = aggregate_sweep(describe(spec), results_root=results, quiet=True)
    cfg = agg.configs.set_index(["optimizer", "lr_max"])
    assert bool(cfg.loc[("sgd", 0.2), "eligible"]) is False and cfg.loc[("sgd", 0.2), "n_diverged"] == 1
    assert cfg.loc[("sgd", 0.1), "n_done"] == 2 and cfg.loc[("sgd", 0.1), "n_failed"] == 1
    summary = pd.read_csv(results / "t" / "summary.csv").set_index("optimizer")
    sgd, sgdc = summary.loc["sgd"], summary.loc["sgdc"]
    assert (sgd["best_lr_max"], sgd["best_wd"], sgd["n_seeds"]) == (0.1, 1e-4, 2)
    assert sgd["final_top1_pct_mean"] == pytest.approx(65.5)
    assert sgd["final_top1_pct_std"] == pytest.approx(np.std([65, 66], ddof=1))
    assert sgd["grad_norm_tail_ratio_mean"] == pytest.approx(2.5) and sgd["grad_norm_tail_ratio_std"] == pytest.approx(0)
    assert sgd["ratio_tail_ratio_mean"] == pytest.approx(6.0)
    assert sgd["n_configs"] == 3 and sgd["n_configs_diverged"] == 1
    assert (sgdc["best_lr_max"], sgdc["n_seeds"]) == (0.1, 2)  # the corrupt 0.99 seed is not mixed in
    assert sgdc["final_top1_pct_mean"] == pytest.approx(71.0)


def test_bad_specs_and_sweep_folders_are_config_errors(tmp_path, capsys):
    for args, message in (([str(tmp_path / "nope.yaml")], "not found"), ([str(tmp_path / "noname.yaml")], "'name'")):
        (tmp_path / "noname.yaml").write_text("runs_root: runs\n")
        assert main(["aggregate", *args, "--results", str(tmp_path / "results")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    spec = write_spec(tmp_path / "s.yaml", "missing", tmp_path / "runs")
    with pytest.raises(ConfigError, match="no runs folder"):
        aggregate_sweep(describe(spec), results_root=tmp_path / "results")
    with pytest.raises(ConfigError, match="no runs folder"):
        aggregate_sweep(tmp_path / "runs" / "missing", results_root=tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_a_sweep_folder_without_sweep_json_gets_it_from_its_spec(tmp_path, capsys):
    """A folder made before the launcher wrote sweep.json: the analysis of the bare folder says
    how to fix it (exit 2, nothing written); `repro aggregate SPEC` writes it; then the folder
    alone is enough, and a changed spec rewrites it."""
    write_run(tmp_path / "runs" / "old" / "r0", optimizer="sgd", seed=0, sweep_name="old")
    folder, results = tmp_path / "runs" / "old", tmp_path / "results"
    assert main(["aggregate", str(folder), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "no sweep.json" in err and "repro aggregate SPEC" in err and err.count("\n") == 1, err
    assert not results.exists()
    spec = tmp_path / "old.yaml"
    spec.write_text(f"name: old\nruns_root: {tmp_path / 'runs'}\naxes: {{seed: [0]}}\n")
    assert main(["aggregate", str(spec), "--results", str(results)]) == 0
    assert read_description(folder) == describe(spec)
    assert read_description(folder).axes == {"seed": [0]} and read_description(folder).target_top1 is None
    spec.write_text(f"name: old\nruns_root: {tmp_path / 'runs'}\naxes: {{seed: [0]}}\ntarget_top1: 0.5\n")
    assert main(["aggregate", str(spec), "--results", str(results)]) == 0
    assert read_description(folder).target_top1 == 0.5
    (results / "old" / "runs.parquet").unlink()
    capsys.readouterr()
    assert main(["aggregate", str(folder), "--results", str(results)]) == 0
    assert "old: 1 runs" in capsys.readouterr().out
    assert pd.read_parquet(results / "old" / "runs.parquet")["target_top1"].tolist() == [0.5]


def test_the_correction_switch_is_its_own_optimizer_and_pairs_with_the_plain_one(tmp_path):
    """`optim.corrected_decay: true` on a library optimizer (Lion, Muon) is another optimizer for the
    analysis: `<name>+corrected`, paired per seed with `<name>` (paired.csv), never averaged with it."""
    import yaml

    from imagenet_repro.analysis.paired import paired_table

    dirs = []
    for corrected in (False, True):
        for seed in (0, 1):
            d = run(tmp_path, f"lion-{corrected}-{seed}", optimizer="pytorch_optimizer:Lion", lr=1e-4, wd=1.0, seed=seed)
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            cfg["optim"]["corrected_decay"] = corrected
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
            dirs.append(d)
    result = aggregate_runs(dirs)
    assert sorted(set(result.runs.optimizer)) == ["pytorch_optimizer:Lion", "pytorch_optimizer:Lion+corrected"]
    assert set(result.summary.optimizer) == {"pytorch_optimizer:Lion", "pytorch_optimizer:Lion+corrected"}
    from imagenet_repro.analysis.aggregate import select_best

    paired = paired_table(result.runs, select_best(result.configs))
    assert set(zip(paired.plain, paired.corrected)) == {("pytorch_optimizer:Lion", "pytorch_optimizer:Lion+corrected")}
    assert set(paired.n_seeds) == {2}
