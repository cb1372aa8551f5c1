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
