"""The package's import graph has no cycles, and every function-level import of its own
modules is one that scripts/import_graph.py lists with its reason (run by `make lint`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "import_graph.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_the_package_has_no_cycles_and_no_unlisted_deferred_imports():
    result = _run("--check")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_graph_lists_every_module():
    result = _run()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    modules = {line.split(" -> ")[0] for line in lines if " -> " in line}
    on_disk = {p.relative_to(REPO / "imagenet_repro").with_suffix("").as_posix().replace("/", ".")
               for p in (REPO / "imagenet_repro").rglob("*.py")}
    on_disk = {m.removesuffix(".__init__") if m != "__init__" else "imagenet_repro" for m in on_disk}
    assert modules == on_disk
    assert "errors -> (nothing)" in lines  # the bottom of the house imports nothing of it


def _package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "imagenet_repro"
    for name, text in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "config.py": "def build():\n    from imagenet_repro.optim import registry\n",
        "optim/__init__.py": "",
        "optim/registry.py": "from imagenet_repro.config import build\n",
    })
    result = _run("--check", "--root", str(pkg))
    assert result.returncode == 1
    assert "import cycle among: imagenet_repro.config, imagenet_repro.optim.registry" in result.stderr
    assert ("imagenet_repro.config:2: imports imagenet_repro.optim.registry inside a function" in result.stderr)


def test_relative_and_package_imports_resolve_to_modules(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from . import b\nfrom .c import thing\n",
        "b.py": "",
        "c.py": "thing = 1\nfrom imagenet_repro import a\n",
    })
    result = _run("--root", str(pkg))
    assert "a -> b, c" in result.stdout
    assert "import cycle among: imagenet_repro.a, imagenet_repro.c" in result.stderr and result.returncode == 1


def test_a_cycle_between_packages_fails_though_the_modules_have_none(tmp_path):
    """sweep -> analysis and analysis -> sweep through different modules: no module cycle, a package cycle."""
    files = {
        "__init__.py": "",
        "rundir.py": "",
        "sweep/__init__.py": "",
        "sweep/spec.py": "from imagenet_repro import rundir\n",
        "sweep/rehearse.py": "from imagenet_repro.analysis import aggregate\n",
        "analysis/__init__.py": "",
        "analysis/aggregate.py": "from imagenet_repro.sweep.spec import load\n",
    }
    result = _run("--check", "--root", str(_package(tmp_path, files)))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "package import cycle among: imagenet_repro.analysis, imagenet_repro.sweep "
        "(imagenet_repro.analysis.aggregate imports imagenet_repro.sweep.spec; "
        "imagenet_repro.sweep.rehearse imports imagenet_repro.analysis.aggregate)"]
    one_way = {**files, "analysis/aggregate.py": "from imagenet_repro import rundir\n"}
    result = _run("--root", str(_package(tmp_path / "one_way", one_way)))
    assert result.returncode == 0, result.stderr
    assert "  sweep => analysis, rundir" in result.stdout and "  analysis => rundir" in result.stdout


def test_the_package_graph_goes_one_way_from_analysis_to_the_contract():
    lines = _run().stdout.splitlines()
    analysis = next(line for line in lines if line.startswith("  analysis => "))
    targets = analysis.removeprefix("  analysis => ").split(", ")
    assert "sweep" not in targets and "sweepdir" in targets, analysis


def test_ruff_checks_every_module_of_the_package_and_the_tests():
    """`make lint`'s ruff reads every .py file of the package and the tests: its excludes name
    the checkout's own folders (./data, ./runs), not any folder of that name (a bare "data" once
    left imagenet_repro/data/, 14 modules, unchecked)."""
    ruff = Path(sys.executable).with_name("ruff")
    shown = subprocess.run([str(ruff), "check", "--show-files", "."], cwd=REPO, capture_output=True, text=True,
                           timeout=60, check=True).stdout
    shown_files = {Path(line.strip()).resolve() for line in shown.splitlines() if line.strip().endswith(".py")}
    ours = {p.resolve() for part in ("imagenet_repro", "tests") for p in (REPO / part).rglob("*.py")}
    assert ours <= shown_files, sorted(str(p.relative_to(REPO)) for p in ours - shown_files)
