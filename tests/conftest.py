"""Shared fixtures and helpers: the real Fashion-MNIST idx folder and .beton files (found/written
once per session), a copy of the checkout's specs to plan in, placeholder data paths and one
optimizer step for the optimizer tests, the exact comparison of two runs' tables, and the one
place that decides which SLURM cluster the tests may use (:func:`slurm_target`), and which
tests need root (marker ``root``)."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
CHECKOUT_PARTS = ("sweeps", "experiments")  # what planning a shipped spec reads (its base configs)


# ---------------------------------------------------------------------------- SLURM: whose cluster
# The tests submit only to a cluster scripts/slurm-up.sh started for them (its configuration
# carries its mark: `slurm-up.sh --check` says "ours"), starting one as root where the machine
# has no SLURM of its own, or to the partition a user names in SLURM_OPT_IN
# (docs/install.md, "On your cluster"). On any other SLURM they skip, in one line saying how to
# opt in, and every other test sees stand-ins for the SLURM commands that fail (so a sweep or
# rehearsal through `--cluster auto` runs locally, and nothing reaches the site's cluster).
#
# A new cluster test: mark it `slurm` (and `root` if it restarts or reconfigures the
# controller, `slurm_own` if it needs the tests' own node, e.g. its fake GPUs), put its module
# in CLUSTER_MODULES, take the `slurm_cluster` fixture and write its specs' `slurm:` section
# with slurm_spec_keys() (the opted-in partition); keep its run folders under tmp_path.
SLURM_OPT_IN = "REPRO_TEST_SLURM_PARTITION"
SLURM_SKIP = "SLURM tests: "
ROOT_SKIP = "needs root: "
SLURM_COMMANDS = ("sbatch", "srun", "salloc", "sinfo", "squeue", "sacct", "scancel", "scontrol", "sacctmgr", "sstat")


@dataclass(frozen=True)
class SlurmTarget:
    """Where the `slurm` tests submit. ``own``: the tests' own cluster (slurm-up.sh's; ``start``:
    not running yet, the `slurm_cluster` fixture starts it); else a user's opted-in
    ``partition``; ``skip``: why they do not run here (one line); ``hide``: the machine's SLURM
    is not the tests', so the other tests get failing stand-ins for its commands."""
    own: bool = False
    start: bool = False
    partition: str | None = None
    skip: str | None = None
    hide: bool = False


def decide_slurm(site: str, partition: str | None, root: bool, installable: bool,
                 answers: Callable[[], bool]) -> SlurmTarget:
    """The rule, from ``site`` (`slurm-up.sh --check`: "ours CONF", "none", "foreign WHAT"), the
    opted-in ``partition``, whether we are root, whether slurm-up.sh could install SLURM here
    (apt-get, or SLURM installed) and whether a controller ``answers`` sinfo."""
    kind, _, what = site.partition(" ")
    if partition is not None and kind != "ours":  # a user's cluster, opted in
        if not answers():
            return SlurmTarget(hide=kind == "foreign",
                               skip=SLURM_SKIP + f"{SLURM_OPT_IN}={partition} given, but no cluster answers sinfo")
        return SlurmTarget(partition=partition, hide=True)
    if kind == "foreign":
        return SlurmTarget(hide=True, skip=SLURM_SKIP + f"this machine's SLURM ({what}) was not started by "
                           f"scripts/slurm-up.sh, and the tests never submit to a cluster they did not start; "
                           f"{SLURM_OPT_IN}=PARTITION runs them there (docs/install.md)")
    if kind == "ours" and answers():
        return SlurmTarget(own=True, partition=partition)
    if not root:
        return SlurmTarget(skip=SLURM_SKIP + ("the cluster scripts/slurm-up.sh configured is not running, and "
                                              if kind == "ours" else "no cluster answers sinfo, and ")
                           + "starting it (scripts/slurm-up.sh) needs root")
    if not installable:
        return SlurmTarget(skip=SLURM_SKIP + "no cluster answers sinfo, and scripts/slurm-up.sh installs SLURM "
                           "with apt-get (absent)")
    return SlurmTarget(own=True, start=True, partition=partition)


@functools.lru_cache(maxsize=1)
def slurm_target() -> SlurmTarget:
    """This machine's :class:`SlurmTarget` (decided once per process)."""
    from imagenet_repro.sweep.launcher import slurm_available

    site = subprocess.run([str(REPO / "scripts" / "slurm-up.sh"), "--check"], capture_output=True, text=True,
                          timeout=60).stdout.strip() or "none"
    installable = shutil.which("apt-get") is not None or shutil.which("slurmctld") is not None
    return decide_slurm(site, os.environ.get(SLURM_OPT_IN) or None, os.geteuid() == 0, installable, slurm_available)


def slurm_spec_keys() -> str:
    """What a test spec's `slurm:` flow mapping starts with: the opted-in partition, if any."""
    partition = slurm_target().partition
    return f"partition: {partition}, " if partition else ""


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmTarget:
    """The cluster of the `slurm` tests (collection has skipped them where there is none):
    started with scripts/slurm-up.sh when it is the tests' own and not running yet."""
    target = slurm_target()
    if target.start:
        proc = subprocess.run([str(REPO / "scripts" / "slurm-up.sh")], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"scripts/slurm-up.sh failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return target


@pytest.fixture(scope="session")
def _slurm_stand_ins(tmp_path_factory) -> Path:
    """A folder of SLURM commands that only fail: first on PATH, no test reaches the site's SLURM."""
    folder = tmp_path_factory.mktemp("slurm-stand-ins")
    for name in SLURM_COMMANDS:
        path = folder / name
        path.write_text(f"#!/bin/sh\necho '{name}: not the tests' cluster (tests/conftest.py: slurm_target)' >&2\n"
                        "exit 1\n")
        path.chmod(0o755)
    return folder


@pytest.fixture(autouse=True)
def _hide_a_slurm_not_ours(request, monkeypatch):
    """Every test but the `slurm` ones, where this machine's SLURM is not the tests' own: its
    commands fail, so `--cluster auto` picks the local executor, in-process and in subprocesses."""
    if slurm_target().hide and request.node.get_closest_marker("slurm") is None:
        stand_ins = request.getfixturevalue("_slurm_stand_ins")
        monkeypatch.setenv("PATH", f"{stand_ins}{os.pathsep}{os.environ.get('PATH', '')}")


# The modules whose tests submit to the cluster (explicitly, or through the launcher's `auto`,
# which picks SLURM when it answers): under `make test`'s two pytest-xdist workers they run
# one after another in one worker, as the single-node cluster runs one 2-rank job at a time
# and some of these tests restart its controller. Every other module is a unit of its own: its
# module-scoped fixtures (the DDP runs, the real-runs sweep) are then trained once, not once
# per worker.
CLUSTER_MODULES = ("test_sweep_cluster.py", "test_sweep_families.py", "test_sweep_rehearse.py", "test_dataset_example.py")
# The modules whose tests are each a unit of their own: one rehearsal of a shipped spec each (minutes,
# on the local executor, with only session fixtures), which in one unit left the other worker idle.
PER_TEST_MODULES = ("test_sweep_rehearse_specs.py",)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: absent when it is not installed
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` with the cluster modules as one unit (see CLUSTER_MODULES) and each test of
    PER_TEST_MODULES a unit of its own. Built on
    xdist's file scheduler, not on `xdist_group` marks: with pytest 9.2 xdist 3.8's loadgroup
    no longer groups (pytest-dev/pytest-xdist#1386), and nothing fails when it does not."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModuleOrClusterScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            if Path(module).name in PER_TEST_MODULES:
                return nodeid
            return "cluster" if Path(module).name in CLUSTER_MODULES else module

    return ModuleOrClusterScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Skip, each with one reason reported in one line (below): the `slurm` tests where
    :func:`slurm_target` finds no cluster for them, the `slurm_own` ones off the tests' own
    cluster, the `root` ones for a user (restarting slurmctld, mounting a tmpfs)."""
    slurm = [item for item in items if item.get_closest_marker("slurm")]
    stray = sorted({item.path.name for item in slurm} - set(CLUSTER_MODULES))
    if stray:  # they would run beside the cluster unit, on the other worker
        raise pytest.UsageError(f"tests marked slurm outside CLUSTER_MODULES (tests/conftest.py): {', '.join(stray)}")
    if os.geteuid() != 0:
        for item in items:
            if item.get_closest_marker("root"):
                item.add_marker(pytest.mark.skip(reason=ROOT_SKIP + "restarting slurmctld, mounting a tmpfs: "
                                                 "skipped as a user"))
    if not slurm:
        return
    target = slurm_target()
    reason = target.skip
    if reason is None and not target.own and config.option.basetemp is None:
        reason = (SLURM_SKIP + f"{SLURM_OPT_IN}={target.partition} needs the tests' folders where the compute nodes "
                  "see them: give --basetemp=DIR on shared storage (docs/install.md)")
    for item in slurm:
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
        elif not target.own and item.get_closest_marker("slurm_own"):
            item.add_marker(pytest.mark.skip(reason=SLURM_SKIP + "this one needs the tests' own single-node cluster "
                                             "(scripts/slurm-up.sh's): not run on an opted-in partition"))


def pytest_runtest_logreport(report):
    """Drop the line number from those skips, so that -ra's summary folds them into one line
    per file ("SKIPPED [3] tests/test_sweep_cluster.py: SLURM tests: ...")."""
    if report.skipped and isinstance(report.longrepr, tuple) and str(report.longrepr[2]).startswith(
            tuple(f"{p}{s}" for p in ("Skipped: ", "") for s in (SLURM_SKIP, ROOT_SKIP))):
        report.longrepr = (report.longrepr[0], None, report.longrepr[2])


_DOWNLOADS: list[Path] = []  # the session's folder for a download (set by _session_downloads)


@pytest.fixture(scope="session", autouse=True)
def _session_downloads(tmp_path_factory) -> None:
    _DOWNLOADS[:] = [tmp_path_factory.getbasetemp() / "downloads"]


def fmnist_folder() -> Path:
    """Fashion-MNIST's idx folder, by the package's one lookup ($FASHION_MNIST_DIR, Debian's
    folder, else torchvision's download -- into this session's temporary folder: a test never
    reads the checkout's data/). When there is none, the tests needing it are skipped with
    the lookup's one line (it names every way to get it), except as root with apt-get, where
    `make test`'s set-up (scripts/runtime-deps.sh) installs it: there its absence is a broken
    set-up, and they fail."""
    from imagenet_repro.data.imagefolder import fashion_mnist_source
    from imagenet_repro.errors import ConfigError

    try:
        return fashion_mnist_source(download_root=_DOWNLOADS[0])
    except ConfigError as exc:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail(f"{exc} (as root, scripts/runtime-deps.sh test installs it: did the set-up run?)", pytrace=False)
        pytest.skip(f"Fashion-MNIST tests: {exc}")


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    return fmnist_folder()


@pytest.fixture(scope="session")
def fmnist_betons(tmp_path_factory, fmnist_dir) -> Path:
    """train.beton (60000) and val.beton (10000), 32x32 RGB, from the real Fashion-MNIST."""
    from imagenet_repro.data.writer import write_fashion_mnist

    out = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(out, source=fmnist_dir, num_workers=2)
    return out


@pytest.fixture(scope="session")
def fmnist_tiny(fmnist_betons) -> list[str]:
    """Overrides for a tiny, fast run of experiments/demo.yaml on the real FFCV files."""
    return [
        f"data.train_path={fmnist_betons / 'train.beton'}",
        f"data.val_path={fmnist_betons / 'val.beton'}",
        "data.train_subset=2048", "data.val_subset=1000", "data.batch_size=128",
        "train.epochs=2", "train.threads=1", "train.progress=false",
        "telemetry.layer_every=4", "telemetry.flush_every=8",
        # pinned here, so tests do not move when the demo's tuning does
        "optim.lr=0.1", "optim.weight_decay=0.005", "optim.momentum=0.9", "model.head_norm=false",
    ]



@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, fmnist_tiny) -> Path:
    """One uninterrupted run of experiments/demo.yaml with :func:`fmnist_tiny`, trained once per
    session (per xdist worker): the reference that the fault, storage and identity tests
    compare their interrupted and resumed runs with.  Read it, never write into it."""
    from imagenet_repro.config import load_config
    from imagenet_repro.train.loop import run_training

    out = tmp_path_factory.mktemp("reference") / "run"
    assert run_training(load_config(str(REPO / "experiments" / "demo.yaml"), fmnist_tiny), out) == "done"
    return out

# ---------------------------------------------------------------------------- planning
@pytest.fixture
def checkout_copy(tmp_path, monkeypatch) -> Path:
    """The working directory for planning a shipped spec: a fresh copy of the checkout's
    sweeps/ and experiments/ under tmp_path, so that the specs' relative runs_root (runs/)
    and data paths (data/imagenet/...) point into tmp_path, whatever the checkout holds
    (ImageNet written to data/imagenet/, a launched runs/paper_fig5)."""
    root = tmp_path / "checkout"
    for part in CHECKOUT_PARTS:
        shutil.copytree(REPO / part, root / part)
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="session")
def rehearsal_root(tmp_path_factory) -> Path:
    """One rehearsal root for the session (per xdist worker): `repro sweep --rehearse` caches its
    synthetic datasets there by shape."""
    return tmp_path_factory.mktemp("rehearsal")


# ---------------------------------------------------------------------------- optimizers
@pytest.fixture
def data_paths(tmp_path: Path) -> dict:
    """A ``data`` section whose train/val files exist (placeholders: configs are built, no data is read)."""
    for split in ("train", "val"):
        (tmp_path / f"{split}.beton").write_bytes(b"x")
    return {"train_path": str(tmp_path / "train.beton"), "val_path": str(tmp_path / "val.beton"), "num_classes": 10}


def one_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """One optimizer step of ``model`` on a fixed random batch of four 8x8 images, ten classes,
    taken as the trainer takes it: the closure or ``create_graph`` its capabilities declare."""
    import torch

    from imagenet_repro.optim.capabilities import capabilities_of
    from imagenet_repro.train.closure import optimizer_step

    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    caps = capabilities_of(type(opt))

    def forward_loss() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x), y)

    opt.zero_grad()
    forward_loss().backward(create_graph=caps.create_graph)
    optimizer_step(opt, caps, model, forward_loss, world_size=1)


# ---------------------------------------------------------------------------- runs
KILLED_AFTER_CHECKPOINTS = """
import sys, time
from pathlib import Path
from imagenet_repro.config import load_config
from imagenet_repro.train.callbacks import Callback
from imagenet_repro.train.loop import run_training

out, ready, steps = Path(sys.argv[1]), Path(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")]


class CheckpointThenWait(Callback):
    def on_step_end(self, trainer, images, labels):
        if trainer.step in steps:
            trainer.save_checkpoint()
        if trainer.step == steps[-1]:
            ready.write_text(str(trainer.step))
            while True:  # until the test kills us
                time.sleep(1)


run_training(load_config(sys.argv[4], sys.argv[5:]), out, callbacks=[CheckpointThenWait()])
"""


def train_killed_after_checkpoints(config: Path | str, overrides: list[str], out: Path, steps: tuple[int, ...]) -> None:
    """Train ``config`` with ``overrides`` into ``out`` in a child process that checkpoints at each
    of ``steps`` (the trainer's public save_checkpoint, from a callback: the same at any machine
    speed, unlike a timer racing the run), waits at the last one and is SIGKILLed there."""
    import signal
    import sys
    import time

    ready = out.parent / f"{out.name}.ready"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_AFTER_CHECKPOINTS, str(out), str(ready),
                             ",".join(map(str, steps)), str(config), *overrides],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # a guard against a hang only: the child waits for us
    while proc.poll() is None and not ready.exists():
        assert time.monotonic() < deadline, f"the run never reached step {steps[-1]}"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]


def assert_same_tables(reference: Path, other: Path, tables: tuple[str, ...] | None = None) -> None:
    """The steps, layers and eval tables (or only ``tables``) of two runs are equal bit for bit,
    the wall-clock images/s aside: the package's own comparison (the rehearsal's resume check)."""
    from imagenet_repro.train.compare import RUN_TABLES, compare_runs

    problems = compare_runs(reference, other, tables or RUN_TABLES)
    assert not problems, problems
