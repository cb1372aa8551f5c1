"""scripts/runtime-deps.sh: what the demo and the tests use that pip does not give (Fashion-MNIST,
Chromium) is found, installed as root with apt-get, or named in one line with how to get it.

Run for real, with fake `id` (root or not) and a fake apt-get that records what it was asked."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "runtime-deps.sh"
IDX = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
       "t10k-labels-idx1-ubyte.gz"]


def fake(bin_dir: Path, name: str, body: str) -> None:
    (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
    (bin_dir / name).chmod(0o755)


@pytest.fixture
def machine(tmp_path):
    """A fresh machine's view: no Debian data set folder, no chromium on PATH, apt-get recorded."""
    bins, log = tmp_path / "bin", tmp_path / "apt.log"
    bins.mkdir()
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    # the fake apt-get "installs" the data set into the (moved) Debian folder
    fake(bins, "apt-get", f'echo "apt-get $*" >> {log}; case "$*" in *dataset-fashion-mnist*) '
                          f'mkdir -p {debian} && cd {debian} && touch {" ".join(IDX)};; esac')
    for tool in ("bash", "sh", "dirname", "mkdir", "touch", "cat"):  # all the script runs, and no chromium
        (bins / tool).symlink_to(shutil.which(tool))
    path = str(bins)

    def run(what: str, root: bool, **env) -> subprocess.CompletedProcess:
        fake(bins, "id", f'if [ "$1" = -u ]; then echo {0 if root else 1000}; else exec /usr/bin/id "$@"; fi')
        base = {k: v for k, v in os.environ.items() if k != "FASHION_MNIST_DIR"}
        base.update(PATH=path, RUNTIME_DEPS_DEBIAN_FMNIST=str(debian), **env)
        return subprocess.run([str(SCRIPT), what], capture_output=True, text=True, env=base, cwd=tmp_path, timeout=60)

    return run, log, debian


def test_as_root_it_installs_the_data_set_and_the_browser(machine):
    run, log, debian = machine
    res = run("test", root=True)
    assert res.returncode == 0, res.stderr
    calls = log.read_text()
    assert "install -y -qq dataset-fashion-mnist" in calls and "install -y -qq chromium" in calls
    assert "Acquire::Retries=3" in calls  # a transient mirror error is retried
    assert all((debian / f).is_file() for f in IDX)
    assert "installing with apt-get: dataset-fashion-mnist" in res.stderr


def test_the_demo_needs_no_browser(machine):
    run, log, _ = machine
    assert run("demo", root=True).returncode == 0
    assert "chromium" not in log.read_text()


def test_without_root_one_line_each_says_how_and_nothing_is_installed(machine):
    run, log, _ = machine
    res = run("test", root=False)
    assert res.returncode == 0 and not log.exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert "sudo apt-get install -y dataset-fashion-mnist" in lines[0] and "FASHION_MNIST_DIR=DIR" in lines[0]
    assert "report's browser test will be skipped" in lines[1] and "sudo apt-get install -y chromium" in lines[1]


def test_a_given_folder_is_used_and_a_bad_one_is_named(machine, tmp_path):
    run, log, _ = machine
    given = tmp_path / "fm"
    given.mkdir()
    res = run("demo", root=True, FASHION_MNIST_DIR=str(given))
    assert res.returncode == 0 and not log.exists()  # the user's folder: nothing installed
    assert res.stderr.strip() == f"setup: FASHION_MNIST_DIR={given} does not hold the four idx .gz files ({' '.join(IDX)})"
    for f in IDX:
        (given / f).touch()
    assert run("demo", root=True, FASHION_MNIST_DIR=str(given)).stderr == ""


def test_bad_usage_is_exit_2_and_the_package_list_is_printed():
    assert subprocess.run([str(SCRIPT), "bogus"], capture_output=True).returncode == 2
    out = subprocess.run([str(SCRIPT), "--packages"], capture_output=True, text=True).stdout.split()
    assert out == ["dataset-fashion-mnist", "chromium"]
