"""The tests never touch a cluster they did not start: `scripts/slurm-up.sh --check` tells whose
SLURM a machine has, slurm-up.sh (and slurm-down.sh) refuse a configuration they did not write,
and on such a machine a test session skips its SLURM tests in one line saying how to opt in,
submits nothing, and runs what goes through `--cluster auto` locally (tests/conftest.py).

No cluster is needed: the "site" is a slurm.conf under tmp_path (``SLURM_CONF``) and stand-in
SLURM commands on PATH that answer as a site's would and record every call."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SLURM_OPT_IN, SlurmTarget, decide_slurm

REPO = Path(__file__).resolve().parents[1]
UP, DOWN = REPO / "scripts" / "slurm-up.sh", REPO / "scripts" / "slurm-down.sh"
MARK = "# Written by scripts/slurm-up.sh: a single-node cluster for tests and the CPU demo."


def site_bin(tmp_path: Path) -> tuple[Path, Path]:
    """Stand-ins for a site's SLURM commands: sinfo answers with a partition, every call is
    appended to calls.log (sbatch "submits" job 4242)."""
    folder, log = tmp_path / "site-bin", tmp_path / "calls.log"
    folder.mkdir()
    for name in ("sinfo", "sbatch", "squeue", "sacct", "scontrol", "scancel", "srun"):
        answer = {"sinfo": "echo batch", "sbatch": "echo 'Submitted batch job 4242'"}.get(name, "true")
        (folder / name).write_text(f"#!/bin/sh\necho \"{name} $*\" >> {log}\n{answer}\n")
        (folder / name).chmod(0o755)
    return folder, log


def conf(tmp_path: Path, first_line: str, cluster: str) -> Path:
    path = tmp_path / "etc" / "slurm.conf"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"{first_line}\nClusterName={cluster}\nSlurmctldHost=head01\n")
    return path


def check(env: dict) -> str:
    proc = subprocess.run([str(UP), "--check"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout.strip()


def no_slurm_path(tmp_path: Path) -> str:
    """PATH with a failing sinfo first: as on a machine where no controller answers."""
    folder = tmp_path / "no-slurm"
    folder.mkdir(exist_ok=True)
    (folder / "sinfo").write_text("#!/bin/sh\nexit 1\n")
    (folder / "sinfo").chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


# ---------------------------------------------------------------------------- slurm-up.sh --check
def test_check_tells_ours_from_a_site_s(tmp_path):
    base = dict(os.environ, PATH=no_slurm_path(tmp_path))
    ours = conf(tmp_path, MARK, "repro")
    assert check(dict(base, SLURM_CONF=str(ours))) == f"ours {ours}"
    site = conf(tmp_path, "# the site's", "hpc")
    assert check(dict(base, SLURM_CONF=str(site))) == f"foreign {site} (ClusterName=hpc)"
    renamed = conf(tmp_path, MARK, "hpc")  # our mark, another cluster: not ours either
    assert check(dict(base, SLURM_CONF=str(renamed))) == f"foreign {renamed} (ClusterName=hpc)"
    missing = tmp_path / "none" / "slurm.conf"
    assert check(dict(base, SLURM_CONF=str(missing))) == "none"
    # no file, but a controller answers (a configless node): a site's
    answering, _ = site_bin(tmp_path)
    got = check(dict(base, SLURM_CONF=str(missing), PATH=f"{answering}{os.pathsep}{os.environ['PATH']}"))
    assert got == f"foreign configless cluster (sinfo answers; no {missing})"


@pytest.mark.parametrize("script", [UP, DOWN], ids=["slurm-up", "slurm-down"])
def test_the_scripts_refuse_a_configuration_they_did_not_write(tmp_path, script):
    site = conf(tmp_path, "# the site's", "hpc")
    before = {p.name: p.read_bytes() for p in site.parent.iterdir()}
    bin_dir, log = site_bin(tmp_path)
    env = dict(os.environ, SLURM_CONF=str(site), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "refused" in proc.stderr and f"{site} (ClusterName=hpc)" in proc.stderr
    assert {p.name: p.read_bytes() for p in site.parent.iterdir()} == before  # not a byte written
    assert not log.exists()  # no SLURM command run


# ---------------------------------------------------------------------------- the rule
def never() -> bool:
    raise AssertionError("asked whether a cluster answers where it must not matter")


@pytest.mark.parametrize("site, partition, root, installable, answers, want", [
    ("ours /etc/slurm/slurm.conf", None, False, True, lambda: True, SlurmTarget(own=True)),
    ("ours /etc/slurm/slurm.conf", None, True, True, lambda: False, SlurmTarget(own=True, start=True)),
    ("ours /etc/slurm/slurm.conf", "debug", False, True, lambda: True, SlurmTarget(own=True, partition="debug")),
    ("none", None, True, True, lambda: False, SlurmTarget(own=True, start=True)),
    ("foreign /etc/slurm/slurm.conf (ClusterName=hpc)", "debug", False, False, lambda: True,
     SlurmTarget(partition="debug", hide=True)),
])
def test_where_the_slurm_tests_run(site, partition, root, installable, answers, want):
    assert decide_slurm(site, partition, root, installable, answers) == want


@pytest.mark.parametrize("site, partition, root, installable, answers, why", [
    ("foreign /etc/slurm/slurm.conf (ClusterName=hpc)", None, True, True, never,
     f"was not started by scripts/slurm-up.sh, and the tests never submit to a cluster they did not start; "
     f"{SLURM_OPT_IN}=PARTITION runs them there"),
    ("foreign /etc/slurm/slurm.conf (ClusterName=hpc)", "debug", True, True, lambda: False, "but no cluster answers"),
    ("none", "debug", True, True, lambda: False, "debug given, but no cluster answers sinfo"),
    ("none", None, False, True, lambda: False, "no cluster answers sinfo, and starting it (scripts/slurm-up.sh) needs root"),
    ("ours /etc/slurm/slurm.conf", None, False, True, lambda: False, "configured is not running"),
    ("none", None, True, False, lambda: False, "installs SLURM with apt-get (absent)"),
])
def test_where_they_skip_in_one_line(site, partition, root, installable, answers, why):
    got = decide_slurm(site, partition, root, installable, answers)
    assert got.skip.startswith("SLURM tests: ") and why in got.skip and "\n" not in got.skip
    assert not got.own and not got.start
    assert got.hide == site.startswith("foreign")  # another's SLURM: hidden from the other tests


# ---------------------------------------------------------------------------- a session on a site's machine
INNER = '''
import subprocess

import pytest
from conftest import slurm_spec_keys

from imagenet_repro.sweep.launcher import pick_cluster


def test_auto_runs_locally():
    assert pick_cluster("auto") == "local"
    assert subprocess.run(["sinfo"], capture_output=True).returncode != 0  # nothing reaches the site


@pytest.mark.slurm
def test_submits(slurm_cluster):
    assert slurm_cluster.partition and slurm_spec_keys() == f"partition: {slurm_cluster.partition}, "
    subprocess.run(["sbatch", "--wrap", "true"], check=True)
'''


def inner_session(tmp_path: Path, extra_env: dict, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """pytest on a module named like a cluster module (INNER), with this checkout's conftest, on a
    machine whose SLURM is a site's: its slurm.conf and its answering commands."""
    (tmp_path / "inner").mkdir(parents=True)
    (tmp_path / "inner" / "test_sweep_cluster.py").write_text(INNER)
    bin_dir, log = site_bin(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != SLURM_OPT_IN and not k.startswith("PYTEST")}
    env.update(SLURM_CONF=str(conf(tmp_path, "# the site's", "hpc")), PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
               PYTHONPATH=str(REPO / "tests"), **extra_env)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", "-rs",
                           "-c", str(REPO / "pyproject.toml"), "--rootdir", str(REPO), *args,
                           str(tmp_path / "inner" / "test_sweep_cluster.py")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    return proc, log


def test_on_a_site_s_machine_the_slurm_tests_skip_in_one_line_and_nothing_is_submitted(tmp_path):
    proc, log = inner_session(tmp_path, {})
    out = proc.stdout
    assert proc.returncode == 0 and "1 passed, 1 skipped" in out, out + proc.stderr
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and "test_sweep_cluster.py: SLURM tests: this machine's SLURM" in skipped[0], skipped
    assert f"{SLURM_OPT_IN}=PARTITION runs them there (docs/install.md)" in skipped[0]
    assert not log.exists() or "sbatch" not in log.read_text()  # nothing submitted
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["slurm.conf"]  # nothing written beside it


def test_an_opted_in_partition_gets_the_slurm_tests_and_only_them(tmp_path):
    proc, log = inner_session(tmp_path, {SLURM_OPT_IN: "batch"})  # no --basetemp: /tmp is not the nodes'
    assert proc.returncode == 0 and "1 passed, 1 skipped" in proc.stdout, proc.stdout + proc.stderr
    assert "give --basetemp=DIR on shared storage" in proc.stdout
    assert not log.exists() or "sbatch" not in log.read_text()
    proc, log = inner_session(tmp_path / "again", {SLURM_OPT_IN: "batch"}, "--basetemp", str(tmp_path / "shared"))
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "sbatch --wrap true" in log.read_text()  # the opted-in test submitted; the auto one ran locally
