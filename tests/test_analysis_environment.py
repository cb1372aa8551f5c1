"""The environment of a sweep's runs: recorded by the trainer, compared by `repro aggregate`."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from synthetic_runs import describe, write_run, write_spec

from imagenet_repro.analysis.aggregate import aggregate_sweep
from imagenet_repro.rundir import flatten_environment
from imagenet_repro.train.manifest import build_manifest, environment


def with_environment(run_dir: Path, **changes) -> Path:
    env = environment(torch.device("cpu"))
    env.update(changes)
    (run_dir / "manifest.json").write_text(json.dumps({"environment": env}))
    return run_dir


def sweep_of(tmp_path: Path, envs: list[dict]) -> Path:
    for seed, changes in enumerate(envs):
        for opt in ("sgd", "sgdc"):
            with_environment(write_run(tmp_path / "runs" / "e" / f"{opt}-s{seed}", optimizer=opt, seed=seed,
                                       n_steps=40, sweep_name="e"), **changes)
    return write_spec(tmp_path / "spec.yaml", "e", tmp_path / "runs")


def test_the_environment_records_what_decides_the_numbers():
    env = environment(torch.device("cpu"))
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch_threads"] == torch.get_num_threads() and env["cuda"] is None
    assert env["packages"]["torch"] == torch.__version__ and "numpy" in env["packages"] and "pandas" in env["packages"]
    assert "ATEN_CPU_CAPABILITY" in env["kernel_env"] and "ONEDNN_MAX_CPU_ISA" in env["kernel_env"]
    flat = flatten_environment(env)
    assert flat["packages.numpy"] == env["packages"]["numpy"] and flat["cuda"] == "None"


def test_a_resume_in_another_environment_is_kept_in_the_manifest():
    first = build_manifest(1, torch.device("cpu"), {})
    assert first["environment_changes"] == []
    first["environment"]["cpu_capability"] = "AVX512"   # as if the first start ran on another CPU
    second = build_manifest(1, torch.device("cpu"), first)
    assert [c["keys"] for c in second["environment_changes"]] == [["cpu_capability"]]


def test_aggregate_warns_once_per_differing_key(tmp_path, capsys):
    spec = sweep_of(tmp_path, [{}, {}, {"cpu_capability": "DEFAULT", "torch_threads": 7}])
    aggregate_sweep(describe(spec), results_root=tmp_path / "results", quiet=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("aggregate: warning: the runs of e differ in cpu_capability: ")
    assert "DEFAULT (2 runs)" in err[0] and f"{torch.backends.cpu.get_cpu_capability()} (4 runs)" in err[0]
    assert "torch_threads" in err[1] and "7 (2 runs)" in err[1]
    written = json.loads((tmp_path / "results" / "e" / "environment.json").read_text())
    assert written["runs"] == 6 and set(written["differs"]) == {"cpu_capability", "torch_threads"}
    assert written["differs"]["cpu_capability"]["DEFAULT"] == ["sgd-s2", "sgdc-s2"]
    assert written["common"]["packages.torch"] == torch.__version__


def test_aggregate_is_silent_when_the_runs_share_one_environment(tmp_path, capsys):
    spec = sweep_of(tmp_path, [{}, {}])
    aggregate_sweep(describe(spec), results_root=tmp_path / "results", quiet=True)
    assert capsys.readouterr().err == ""
    assert json.loads((tmp_path / "results" / "e" / "environment.json").read_text())["differs"] == {}


def on_ranks(run_dir: Path, *starts: int) -> None:
    """The run's manifest as the trainer leaves it after starts on these world sizes."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest.update(world_size=starts[-1], starts=[{"time": "t", "host": "h", "world_size": w} for w in starts])
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


def test_aggregate_warns_when_the_runs_differ_in_world_size_or_changed_it_on_resume(tmp_path, capsys):
    spec = sweep_of(tmp_path, [{}, {}, {}])
    runs = tmp_path / "runs" / "e"
    for run_dir in sorted(runs.iterdir()):
        on_ranks(run_dir, 8)
    on_ranks(runs / "sgd-s2", 4)
    on_ranks(runs / "sgdc-s2", 4)
    on_ranks(runs / "sgd-s0", 4, 4, 8)  # resumed on 8 ranks (checkpoint.accept_world_size_change)
    aggregate_sweep(describe(spec), results_root=tmp_path / "results", quiet=True)
    err = capsys.readouterr().err.splitlines()
    assert err == ["aggregate: warning: the runs of e differ in world size: 8 ranks (4 runs), 4 ranks (2 runs); "
                   "per-rank batch 128 (4 runs), 256 (2 runs): BatchNorm sees another batch, their numbers may not "
                   "compare",
                   "aggregate: warning: run sgd-s0 of e was resumed on another world size (4 then 8 ranks)"]
    ranks = json.loads((tmp_path / "results" / "e" / "environment.json").read_text())["ranks"]
    assert ranks["world_size"] == {"8": ["sgd-s0", "sgd-s1", "sgdc-s0", "sgdc-s1"], "4": ["sgd-s2", "sgdc-s2"]}
    assert ranks["changed_on_resume"] == {"sgd-s0": [4, 8]}


def test_aggregate_is_silent_when_the_runs_share_one_world_size(tmp_path, capsys):
    spec = sweep_of(tmp_path, [{}, {}])
    for run_dir in (tmp_path / "runs" / "e").iterdir():
        on_ranks(run_dir, 8, 8)
    aggregate_sweep(describe(spec), results_root=tmp_path / "results", quiet=True)
    assert capsys.readouterr().err == ""
    ranks = json.loads((tmp_path / "results" / "e" / "environment.json").read_text())["ranks"]
    assert ranks == {"runs": 4, "world_size": {"8": ["sgd-s0", "sgd-s1", "sgdc-s0", "sgdc-s1"]},
                     "per_rank_batch": {"128": ["sgd-s0", "sgd-s1", "sgdc-s0", "sgdc-s1"]}, "changed_on_resume": {}}
