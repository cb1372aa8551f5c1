"""A dataset added in one file outside the package (examples/imagenette.py) works like a built-in:
``repro data write`` writes it, a run trains on it (FFCV and torchvision backends), a sweep
plans it and ``repro sweep --rehearse`` rehearses it.  Its data here: a synthetic ImageFolder
with Imagenette's ten class folders (no download)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from imagenet_repro.cli import main
from imagenet_repro.data.datasets import available_datasets, get_dataset, mean_std
from imagenet_repro.data.synthetic import write_synthetic_imagefolder

ROOT = Path(__file__).resolve().parents[1]
DATASET = f"{ROOT}/examples/imagenette.py:imagenette"
DEMO = str(ROOT / "experiments" / "demo.yaml")
E = "repro: error: "
SMALL = dict(width=(40, 48), height=(36, 40))


def imagenette_like(root: Path, per_class: int = 4) -> Path:
    """``root/train`` and ``root/val`` with Imagenette's ten class folders of small photo-like JPEGs."""
    module = sys.modules[get_dataset(DATASET).write.__module__]  # the example, as data.dataset imports it
    for split, seed in (("train", 0), ("val", 1)):
        write_synthetic_imagefolder(root / split, 10 * per_class, 10, seed=seed, **SMALL)
        for label, folder in enumerate(sorted((root / split).iterdir())):  # c0000.. -> the WordNet ids, in order
            folder.rename(root / split / module.WNIDS[label])
    return root


@pytest.fixture(scope="module", autouse=True)
def forget_the_example():
    """Other modules in this process see only the built-in datasets (error lines list them)."""
    yield
    from imagenet_repro.data.datasets import unregister_dataset

    unregister_dataset("imagenette")


@pytest.fixture(scope="module")
def betons(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("imagenette")
    src = imagenette_like(tmp / "src")
    assert main(["data", "write", "--source", DATASET, str(src), "--out", str(tmp / "ffcv"), "--max-res", "64"]) == 0
    return src, tmp / "ffcv"


def test_the_example_registers_one_entry_like_the_builtins():
    entry = get_dataset(DATASET)
    assert entry.name == "imagenette" and entry.num_classes == 10 and "imagenette" in available_datasets()
    assert [list(x) for x in mean_std(DATASET)] == [list(x) for x in mean_std("imagenet")]  # ImageNet's normalisation
    assert {"fashion_mnist", "imagenet", "imagefolder"} <= set(available_datasets())


def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys):
    wrong = tmp_path / "wrong"
    write_synthetic_imagefolder(wrong / "train", 10, 10, **SMALL)  # c0000.. folders, not Imagenette's classes
    write_synthetic_imagefolder(wrong / "val", 10, 10, **SMALL)
    assert main(["data", "write", "--source", DATASET, str(wrong), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{E}{wrong}/train: expected Imagenette's 10 class folders (n01440764, ") and \
        len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert main(["data", "write", "--source", "cifar-10", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"{E}--source: unknown dataset 'cifar-10': known: fashion_mnist, ")
    assert main(["train", DEMO, f"data.dataset={DATASET}", "data.num_classes=12", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"{E}data.num_classes must be 10 for data.dataset=imagenette (got 12)\n"
    assert not (tmp_path / "run").exists()


def tiny(ffcv: Path) -> list[str]:
    return [f"data.dataset={DATASET}", "data.num_classes=10", f"data.train_path={ffcv / 'train.beton'}",
            f"data.val_path={ffcv / 'val.beton'}", "data.batch_size=8", "data.val_batch_size=20", "train.epochs=1",
            "train.threads=1", "train.progress=false", "telemetry.layer_every=2", "telemetry.flush_every=2"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ffcv", "torchvision"])
def test_a_run_trains_on_it(betons, tmp_path, capsys, backend):
    src, ffcv = betons
    overrides = tiny(ffcv) + ([f"data.train_path={src / 'train'}", f"data.val_path={src / 'val'}",
                               "data.backend=torchvision", "data.num_workers=0"] if backend == "torchvision" else [])
    out = tmp_path / "run"
    assert main(["train", DEMO, *overrides, "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}: done\n"
    steps, evals = pd.read_parquet(out / "steps.parquet"), pd.read_parquet(out / "eval.parquet")
    assert len(steps) == 5 and steps.loss.notna().all()  # 40 images / batch 8
    assert evals.images.tolist() == [40] and 0 <= evals.top1.iloc[0] <= 1
    assert f"dataset: {DATASET}" in (out / "config.yaml").read_text()


def spec(tmp_path: Path, ffcv: Path) -> Path:
    path = tmp_path / "imagenette_tiny.yaml"
    overrides = "\n".join(f"  {k}: {v}" for k, v in (o.split("=", 1) for o in tiny(ffcv)))
    path.write_text(f"name: imagenette_tiny\nruns_root: {tmp_path / 'runs'}\nbase: {DEMO}\n"
                    f"overrides:\n{overrides}\n  train.steps_per_epoch: 4\n"
                    f"axes:\n  optimizer: [sgdc]\n  optim.lr: [0.05, 0.1]\n  seed: [0]\n"
                    f"gpu_hours_per_run: 0.0\nlocal:\n  parallelism: 1\n")
    return path


@pytest.mark.slow
def test_a_sweep_plans_it(betons, tmp_path, capsys):
    assert main(["sweep", str(spec(tmp_path, betons[1])), "--dry-run", "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "2 runs" in out, out
    assert not (tmp_path / "runs").exists()  # a dry run submits and writes nothing


@pytest.mark.slow
@pytest.mark.long  # make test's 10 minutes: in make test-rehearsals, with the other rehearsals
def test_the_rehearsal_rehearses_it(betons, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "imagenet_repro", "sweep", str(spec(tmp_path, betons[1])),
                           "--rehearse", "--rehearse-root", str(tmp_path / "rehearsal"), "--ranks", "1",
                           "--cluster", "local"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rehearsal of imagenette_tiny passed: 2/2 variants clean" in proc.stdout
    configs = [p.read_text() for p in (tmp_path / "rehearsal" / "runs" / "imagenette_tiny").glob("*/config.yaml")]
    assert len(configs) == 2 and all(f"dataset: {DATASET}" in c and "num_classes: 10" in c for c in configs)


def test_docs_name_every_field_of_an_entry():
    """docs/datasets.md's entry block lists exactly DatasetEntry's fields, in order."""
    import dataclasses
    import re

    from imagenet_repro.data.datasets import DatasetEntry

    text = (ROOT / "docs" / "datasets.md").read_text()
    block = re.search(r"^```python\n(.*?)^```$", text, flags=re.S | re.M).group(1)
    assert re.findall(r"^    (\w+)=", block, flags=re.M) == [f.name for f in dataclasses.fields(DatasetEntry)]
