"""Shared fixtures and helpers: the real Fashion-MNIST idx folder and .beton files (found/written
once per session), a copy of the checkout's specs to plan in, placeholder data paths and one
optimizer step for the optimizer tests, the exact comparison of two runs' tables, and whether
the SLURM tests run (by the launcher's own rule, launcher.slurm_available)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
CHECKOUT_PARTS = ("sweeps", "experiments")  # what planning a shipped spec reads (its base configs)


SLURM_SKIP = "SLURM tests: no cluster answers sinfo, and "


# The modules whose tests submit to the cluster (explicitly, or through the launcher's `auto`,
# which picks SLURM when it answers): under `make test`'s two pytest-xdist workers they run
# one after another in one worker, as the single-node cluster runs one 2-rank job at a time
# and some of these tests restart its controller. Every other module is a unit of its own: its
# module-scoped fixtures (the DDP runs, the real-runs sweep) are then trained once, not once
# per worker.
CLUSTER_MODULES = ("test_sweep_cluster.py", "test_sweep_families.py", "test_sweep_rehearse.py", "test_dataset_example.py")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: absent when it is not installed
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` with the cluster modules as one unit (see CLUSTER_MODULES). Built on
    xdist's file scheduler, not on `xdist_group` marks: with pytest 9.2 xdist 3.8's loadgroup
    no longer groups (pytest-dev/pytest-xdist#1386), and nothing fails when it does not."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModuleOrClusterScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "cluster" if Path(module).name in CLUSTER_MODULES else module

    return ModuleOrClusterScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Tests marked `slurm` use a running cluster, else start one with scripts/slurm-up.sh --
    the only part of the suite that needs root (and apt-get). Where neither is possible they
    are skipped with one reason, reported in one line (below)."""
    from imagenet_repro.sweep.launcher import slurm_available  # the launcher's own rule: one rule for both

    slurm = [item for item in items if item.get_closest_marker("slurm")]
    stray = sorted({item.path.name for item in slurm} - set(CLUSTER_MODULES))
    if stray:  # they would run beside the cluster unit, on the other worker
        raise pytest.UsageError(f"tests marked slurm outside CLUSTER_MODULES (tests/conftest.py): {', '.join(stray)}")
    if not slurm or slurm_available():
        return
    if os.geteuid() != 0:
        reason = SLURM_SKIP + "starting one (scripts/slurm-up.sh) needs root"
    elif shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        reason = SLURM_SKIP + "scripts/slurm-up.sh installs SLURM with apt-get (absent)"
    else:
        return
    for item in slurm:
        item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_logreport(report):
    """Drop the line number from those skips, so that -ra's summary folds them into one line
    per file ("SKIPPED [3] tests/test_sweep_cluster.py: SLURM tests: ...")."""
    if report.skipped and isinstance(report.longrepr, tuple) and str(report.longrepr[2]).startswith(
            ("Skipped: " + SLURM_SKIP, SLURM_SKIP)):
        report.longrepr = (report.longrepr[0], None, report.longrepr[2])


def fmnist_folder() -> Path:
    """Fashion-MNIST's idx folder, by the package's one lookup ($FASHION_MNIST_DIR, Debian's
    folder, else torchvision's download into the repo's data/). When there is none, the tests
    needing it are skipped with the lookup's one line (it names every way to get it), except
    as root with apt-get, where `make test`'s set-up (scripts/runtime-deps.sh) installs it:
    there its absence is a broken set-up, and they fail."""
    from imagenet_repro.data.imagefolder import fashion_mnist_source
    from imagenet_repro.errors import ConfigError

    try:
        return fashion_mnist_source(download_root=REPO / "data")
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


# ---------------------------------------------------------------------------- optimizers
@pytest.fixture
def data_paths(tmp_path: Path) -> dict:
    """A ``data`` section whose train/val files exist (placeholders: configs are built, no data is read)."""
    for split in ("train", "val"):
        (tmp_path / f"{split}.beton").write_bytes(b"x")
    return {"train_path": str(tmp_path / "train.beton"), "val_path": str(tmp_path / "val.beton"), "num_classes": 10}


def one_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """One optimizer step of ``model`` on a fixed random batch of four 8x8 images, ten classes."""
    import torch

    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


# ---------------------------------------------------------------------------- runs
def assert_same_tables(reference: Path, other: Path, tables: tuple[str, ...] | None = None) -> None:
    """The steps, layers and eval tables (or only ``tables``) of two runs are equal bit for bit,
    the wall-clock images/s aside: the package's own comparison (the rehearsal's resume check)."""
    from imagenet_repro.train.compare import RUN_TABLES, compare_runs

    problems = compare_runs(reference, other, tables or RUN_TABLES)
    assert not problems, problems
