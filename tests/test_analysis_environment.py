"""The environment of a sweep's runs: recorded by the trainer, compared by `repro aggregate`, and
the verdict a machine gets against committed results (`repro environment`, the reproduction test).

Every "other environment" here is derived from the one this test runs in (another kernel family
than this machine's, one more thread than it has, ...), never a literal that some machine has."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synthetic_runs import describe, write_run, write_spec

from imagenet_repro.analysis.aggregate import aggregate_sweep
from imagenet_repro.analysis.environment import (
    compare_environments,
    deciding_fields,
    reproduction_verdict,
)
from imagenet_repro.cli import main
from imagenet_repro.rundir import flatten_environment
from imagenet_repro.train import manifest
from imagenet_repro.train.manifest import build_manifest, environment

CAPABILITIES = ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256")  # torch's kernel families (ATen)


def another(current: str, choices=CAPABILITIES) -> str:
    """A value of ``choices`` that is not ``current``: "another machine", whatever this one is."""
    return next(c for c in choices if c != current)


THIS_CAPABILITY = torch.backends.cpu.get_cpu_capability()
OTHER_CAPABILITY = another(THIS_CAPABILITY)
OTHER_THREADS = torch.get_num_threads() + 3


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


def test_helpers_derive_another_environment_from_this_one():
    assert OTHER_CAPABILITY != THIS_CAPABILITY and another("DEFAULT") != "DEFAULT" and another("AVX2") != "AVX2"
    assert OTHER_THREADS != torch.get_num_threads()


def test_the_environment_records_what_decides_the_numbers():
    env = environment(torch.device("cpu"))
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch_threads"] == torch.get_num_threads() and env["cuda"] is None
    assert env["packages"]["torch"] == torch.__version__ and "numpy" in env["packages"] and "pandas" in env["packages"]
    assert "ATEN_CPU_CAPABILITY" in env["kernel_env"] and "ONEDNN_MAX_CPU_ISA" in env["kernel_env"]
    assert "MKL_ENABLE_INSTRUCTIONS" in env["kernel_env"]
    build = env["torch_build"]
    assert build["version"] == torch.__version__ and build["git"] == torch.version.git_version
    if torch.backends.mkldnn.is_available():
        assert build["onednn"] and build["onednn"] in torch.__config__.show()
    if torch.backends.mkl.is_available():
        assert build["mkl"] and build["mkl"] in torch.__config__.show()
    assert set(env["cpu"]) == {"vendor", "model", "isa_flags"}
    if Path("/proc/cpuinfo").is_file():
        assert env["cpu"]["vendor"] and env["cpu"]["model"]
    assert env["runtime_packages_sha256"] == manifest.runtime_packages_sha256(env["packages"])
    if env["ffcv_libraries"] is not None:  # FFCV installed, ldd there: the OpenCV of its resize
        assert "libopencv_imgproc" in env["ffcv_libraries"] and "libturbojpeg" in env["ffcv_libraries"]
    flat = flatten_environment(env)
    assert flat["packages.numpy"] == env["packages"]["numpy"] and flat["cuda"] == "None"


def test_cpu_fields_come_from_the_first_processor_and_keep_only_kernel_flags():
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338\n"
            "flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni "
            "hypervisor md_clear amx_tile\n\nprocessor\t: 1\nvendor_id\t: Other\n")
    assert manifest.cpu_info(text) == {
        "vendor": "GenuineIntel", "model": "Intel(R) Xeon(R) Gold 6338",
        "isa_flags": "amx_tile avx avx2 avx512_vnni avx512bw avx512f f16c fma sse2 sse4_1 sse4_2 ssse3"}
    arm = "processor\t: 0\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\nCPU part\t: 0xd40\n"
    assert manifest.cpu_info(arm) == {"vendor": "0x41", "model": "0xd40", "isa_flags": ""}


def test_the_runtime_hash_ignores_test_tools_and_sees_a_runtime_version():
    packages = manifest.installed_packages()
    runtime = manifest.runtime_distributions()
    assert {"torch", "numpy", "ffcv", "pandas"} <= runtime and not {"pytest", "ruff", "pip", "imagenet-repro"} & runtime
    base = manifest.runtime_packages_sha256(packages)
    assert manifest.runtime_packages_sha256({**packages, "pytest": "0.0.1", "some-new-tool": "1"}) == base
    assert manifest.runtime_packages_sha256({**packages, "numpy": packages["numpy"] + ".post1"}) != base
    assert manifest.runtime_packages_sha256({k: v for k, v in packages.items() if k != "scipy"}) != base
    # spelled as a record spells it (jaraco.text, typing_extensions): the same hash
    assert manifest.runtime_packages_sha256({k.replace("-", "_"): v for k, v in packages.items()}) == base


def test_vendored_copies_are_not_installed_packages():
    """Once setuptools is imported its _vendor folder is on sys.path, with its own packaging:
    the record keeps the installed one (the one `import packaging` loads)."""
    import packaging
    import setuptools  # noqa: F401  (puts setuptools/_vendor on sys.path)

    packages = manifest.installed_packages()
    assert packages["packaging"] == packaging.__version__
    assert not any(n.startswith("jaraco") for n in packages if n not in manifest.runtime_distributions())


def test_a_resume_in_another_environment_is_kept_in_the_manifest():
    first = build_manifest(1, torch.device("cpu"), {})
    assert first["environment_changes"] == []
    first["environment"]["cpu_capability"] = OTHER_CAPABILITY  # as if the first start ran on another CPU
    second = build_manifest(1, torch.device("cpu"), first)
    assert [c["keys"] for c in second["environment_changes"]] == [["cpu_capability"]]


def test_aggregate_warns_once_per_differing_key(tmp_path, capsys):
    spec = sweep_of(tmp_path, [{}, {}, {"cpu_capability": OTHER_CAPABILITY, "torch_threads": OTHER_THREADS}])
    aggregate_sweep(describe(spec), results_root=tmp_path / "results", quiet=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("aggregate: warning: the runs of e differ in cpu_capability: ")
    assert f"{OTHER_CAPABILITY} (2 runs)" in err[0] and f"{THIS_CAPABILITY} (4 runs)" in err[0]
    assert "torch_threads" in err[1] and f"{OTHER_THREADS} (2 runs)" in err[1]
    written = json.loads((tmp_path / "results" / "e" / "environment.json").read_text())
    assert written["runs"] == 6 and set(written["differs"]) == {"cpu_capability", "torch_threads"}
    assert written["differs"]["cpu_capability"][OTHER_CAPABILITY] == ["sgd-s2", "sgdc-s2"]
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


# ---------------------------------------------------------------------------- equality or spread
def committed(tmp_path: Path, **changes) -> dict:
    """An environment.json as `repro aggregate` writes it for two runs made here (with ``changes``)."""
    torch.set_num_threads(1)  # as the demo's runs (train.threads: 1)
    spec = sweep_of(tmp_path, [changes])
    return compare_environments(sorted((tmp_path / "runs" / "e").iterdir())) if spec else {}


def here() -> dict:
    torch.set_num_threads(1)
    return flatten_environment(environment(torch.device("cpu")))


@pytest.mark.parametrize("key, value", [
    ("cpu_capability", OTHER_CAPABILITY),
    ("cpu", {"vendor": "OtherVendor", "model": "Other CPU", "isa_flags": "sse2"}),
    ("torch_build", {"version": torch.__version__, "git": "0" * 40, "onednn": "0.1", "mkl": "0.1", "blas": "none"}),
    ("ffcv_libraries", {"libopencv_imgproc": "0.0.1", "libturbojpeg": "0.0.1"}),
    ("runtime_packages_sha256", "0" * 16),
    ("kernel_env", {"ONEDNN_MAX_CPU_ISA": "SSE41"}),
    ("torch_threads", 5),
])
def test_equality_only_where_every_deciding_field_matches(tmp_path, key, value):
    same = reproduction_verdict(committed(tmp_path / "same"), here())
    assert same.expect == "equality" and same.differences == [], same.differences
    verdict = reproduction_verdict(committed(tmp_path / "changed", **{key: value}), here())
    assert verdict.expect == "spread" and verdict.differences
    assert all(k == key or k.startswith(key + ".") for k, _, _ in verdict.differences), verdict.differences
    assert verdict.line().startswith("spread expected") and key in verdict.line()


def test_a_lock_that_gained_a_test_tool_still_gets_equality(tmp_path):
    record = committed(tmp_path)
    record["common"] = {**record["common"], "lock_sha256": "0" * 16, "packages.pytest": "0.0.1",
                        "packages.a-new-test-tool": "1.0"}
    assert reproduction_verdict(record, here()).expect == "equality"


def test_results_recorded_before_the_fields_are_matched_through_a_machine_that_reproduced_them(tmp_path):
    """Runs that recorded packages but neither the runtime hash nor the CPU fields: the hash is
    derived from their packages, and the missing fields come from `reproduced_on`."""
    record = committed(tmp_path)
    full = dict(record["common"])
    record["common"] = {k: v for k, v in full.items() if k.startswith(("packages.", "python", "machine",
                                                                         "cpu_capability", "kernel_env.ATEN"))}
    assert deciding_fields(record["common"])["runtime_packages_sha256"] == full["runtime_packages_sha256"]
    verdict = reproduction_verdict(record, here())
    assert verdict.expect == "spread" and ("cpu.vendor", "(not recorded)", full["cpu.vendor"]) in verdict.differences
    record["reproduced_on"] = [{"how": "a test", "environment": {k: v for k, v in full.items()
                                                                 if not k.startswith("packages.")}}]
    verdict = reproduction_verdict(record, here())
    assert verdict.expect == "equality" and "reproduced" in verdict.reference
    record["reproduced_on"][0]["environment"]["cpu_capability"] = OTHER_CAPABILITY  # reproduced elsewhere only
    assert reproduction_verdict(record, here()).expect == "spread"


def test_repro_environment_prints_the_fields_and_the_verdict(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "environment.json").write_text(json.dumps(committed(tmp_path / "same")))
    assert main(["environment", str(results)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("this machine: what decides a run's numbers")
    fields = dict(line.split(None, 1) for line in out[1:-1])
    assert fields["cpu_capability"] == THIS_CAPABILITY and fields["torch_threads"] == "1"
    assert {"cpu.model", "torch_build.onednn", "runtime_packages_sha256", "python"} <= set(fields)
    assert out[-1] == f"{results}: equality expected (every field matches the 2 runs' own record)"

    (results / "environment.json").write_text(json.dumps(committed(tmp_path / "other", cpu_capability=OTHER_CAPABILITY)))
    assert main(["environment", str(results)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith(f"{results}: spread expected (docs/reproducing.md): 1 field(s) differ")
    assert out[-1] == f"  cpu_capability: {OTHER_CAPABILITY} there, {THIS_CAPABILITY} here"


def test_repro_environment_without_a_record_is_one_line(tmp_path, capsys):
    assert main(["environment", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no environment record of a sweep here" in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- the measured spread
RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_the_spread_table_pairs_the_runs_and_marks_the_verdicts_that_flip(capsys):
    """The committed demo against the same grid under ATen's default kernels (results/
    demo_cpu_default/): per metric the largest and mean |change| of a run, and the paired
    verdicts, '*' where the interval's verdict on 0 differs (docs/reproducing.md's table)."""
    import pandas as pd

    assert main(["environment", str(RESULTS / "demo"), "--spread", str(RESULTS / "demo_cpu_default")]) == 0
    out = capsys.readouterr().out.splitlines()
    point = ["optimizer", "lr_max", "wd", "seed"]
    a, b = (pd.read_parquet(RESULTS / d / "runs.parquet").set_index(point) for d in ("demo", "demo_cpu_default"))
    moved = (b.loc[a.index, "final_top1"] - a["final_top1"]).abs()
    row = next(line for line in out if line.startswith("final_top1 "))
    assert row.split()[1:] == ["max", f"{moved.max():.4f}", "mean", f"{moved.mean():.4f}"]
    assert next(line for line in out if line.startswith("runs paired")).split()[-1] == "12"
    flips = {" ".join(line.split()[:2]) for line in out if line.rstrip().endswith("*")}
    assert flips == {"final_eval_loss, 0.04", "final_top1, 0.04"}  # the tail ratio's verdict carries


def test_the_spread_of_a_folder_without_runs_is_one_line(tmp_path, capsys):
    assert main(["environment", str(RESULTS / "demo"), "--spread", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runs.parquet: no runs table" in err
