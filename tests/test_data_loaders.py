"""Fashion-MNIST .beton files, deterministic/resumable epochs, CPU pipeline order, torchvision fallback."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from imagenet_repro.config import build_config
from imagenet_repro.data import build_loaders
from imagenet_repro.data.beton import check_beton
from imagenet_repro.data.common import train_resolution
from imagenet_repro.errors import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def fmnist(fmnist_betons) -> Path:
    """The session's real Fashion-MNIST .beton files (tests/conftest.py), written once."""
    return fmnist_betons


def cfg_for(folder: Path, **data):
    base = {"dataset": "fashion_mnist", "train_path": str(folder / "train.beton"), "val_path": str(folder / "val.beton"),
            "num_classes": 10, "batch_size": 32, "val_batch_size": 250, "num_workers": 1, "min_res": 24,
            "max_res": 32, "val_res": 32, "train_subset": 320, "val_subset": 500, "rrc_scale_min": 0.35}
    seed, train = data.pop("seed", 0), data.pop("train", {})
    return build_config({"seed": seed, "data": {**base, **data}, "model": {"name": "small_resnet"}, "train": train})


def digest(batches) -> str:
    h = hashlib.sha256()
    for x, y in batches:
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def train_loader(fmnist):
    # CPU pipeline order (NormalizeImage before ToTensor): the loader must build; the
    # ffcv-imagenet order would make Loader() spin forever (libffcv/ffcv#396).
    train, _ = build_loaders(cfg_for(fmnist), torch.device("cpu"))
    return train


def test_fashion_mnist_betons(fmnist):
    from ffcv.reader import Reader

    for split, n in (("train", 60000), ("val", 10000)):
        assert check_beton(fmnist / f"{split}.beton") == n
        reader = Reader(str(fmnist / f"{split}.beton"))
        labels = reader.metadata["f1"]
        assert Counter(labels.tolist()) == {c: n // 10 for c in range(10)}
        assert set(reader.metadata["f0"]["height"].tolist()) == {32}


@pytest.mark.timeout(180)  # a regression to the GPU op order on CPU hangs here instead of failing
def test_cpu_pipeline_builds_and_yields(train_loader):
    x, y = next(iter(train_loader.epoch(0)))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (32,) and y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) <= 9
    assert abs(float(x.mean())) < 0.5 and 0.6 < float(x.std()) < 1.4  # normalised with FMNIST constants
    assert len(train_loader) == 10 and train_loader.num_examples == 320


@pytest.mark.timeout(180)
def test_same_seed_same_batches_and_skip_resumes(train_loader, fmnist):
    full = [(x.clone(), y.clone()) for x, y in train_loader.epoch(1)]
    assert len(full) == 10
    again = [(x.clone(), y.clone()) for x, y in train_loader.epoch(1)]
    assert digest(full) == digest(again)
    resumed = [(x.clone(), y.clone()) for x, y in train_loader.epoch(1, skip=4)]
    assert digest(full[4:]) == digest(resumed)
    other_epoch = [(x.clone(), y.clone()) for x, y in train_loader.epoch(2)]
    assert digest(other_epoch) != digest(full)
    # order: a permutation of the subset, changed by the seed, not by the process
    order = train_loader.epoch_indices(1)
    assert sorted(order.tolist()) == list(range(320))
    assert not np.array_equal(order, train_loader.epoch_indices(2))
    # a fresh process, with 2 numba threads instead of 1, sees the same epoch 1 from batch 4 on:
    # crops and flips do not depend on threads, processes or what ran before
    script = (
        "import sys, torch, hashlib; sys.path.insert(0, %r); from test_data_loaders import cfg_for, digest; "
        "from imagenet_repro.data import build_loaders; from pathlib import Path; "
        "tr, _ = build_loaders(cfg_for(Path(%r), num_workers=2), torch.device('cpu')); "
        "print(digest([(x.clone(), y.clone()) for x, y in tr.epoch(1, skip=4)]))"
    ) % (str(Path(__file__).parent), str(fmnist))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == digest(resumed)


def test_seed_changes_order(fmnist):
    from imagenet_repro.data.seeding import epoch_order

    idx = np.arange(320)
    assert np.array_equal(epoch_order(idx, 0, 3), epoch_order(idx, 0, 3))
    assert not np.array_equal(epoch_order(idx, 0, 3), epoch_order(idx, 1, 3))
    shards = [epoch_order(idx, 0, 3, rank=r, world_size=3) for r in range(3)]
    assert all(len(s) == 107 for s in shards) and set(np.concatenate(shards).tolist()) == set(range(320))


def test_progressive_resolution():
    assert [train_resolution(e, 160, 192, 0, 0) for e in (0, 5)] == [192, 192]
    assert [train_resolution(e, 160, 224, 2, 6) for e in (0, 2, 4, 6, 9)] == [160, 160, 192, 224, 224]


@pytest.mark.timeout(180)
def test_ffcv_loaders_keep_the_configured_torch_threads(fmnist):
    # ffcv's Loader sets torch's thread count to its num_workers (2 here) when built and at each
    # epoch's start; with train.threads=1 both loaders put 1 back before every batch they hand out
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2+ cores (numba sees one: ffcv's thread count is then 1 as well): run on 2+ cores")
    before = torch.get_num_threads()
    try:
        cfg = cfg_for(fmnist, num_workers=2, train_subset=64, val_subset=250, train={"threads": 1})
        train, val = build_loaders(cfg, torch.device("cpu"))
        assert train.loader.num_workers == val.loader.num_workers == 2
        assert torch.get_num_threads() == 1
        during = [torch.get_num_threads() for _ in train.epoch(0)] + [torch.get_num_threads() for _ in val]
        assert during == [1] * (len(train) + len(val)) and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.timeout(180)
def test_resolution_follows_epoch(train_loader):
    train_loader.start_ramp, train_loader.end_ramp = 0, 2  # ramp 24 -> 32 px over epochs 0..2
    try:
        assert next(iter(train_loader.epoch(0)))[0].shape[-1] == 24
        assert next(iter(train_loader.epoch(2)))[0].shape[-1] == 32
    finally:
        train_loader.start_ramp, train_loader.end_ramp = 0, 0


@pytest.mark.timeout(120)
def test_torchvision_backend(fmnist):
    cfg = cfg_for(fmnist, backend="torchvision", num_workers=0, seed=3)
    train, val = build_loaders(cfg, torch.device("cpu"))
    full = [(x.clone(), y.clone()) for x, y in train.epoch(0)]
    assert len(full) == len(train) == 10
    assert full[0][0].shape == (32, 3, 32, 32) and full[0][0].dtype == torch.float32
    assert digest(full[6:]) == digest(train.epoch(0, skip=6))
    xs, ys = zip(*val)
    assert sum(len(y) for y in ys) == 500 and xs[0].shape == (250, 3, 32, 32) and ys[0].dtype == torch.int64
    # the same epoch order as the ffcv backend for the same seed
    assert torch.equal(torch.cat([y for _, y in full]),
                       torch.from_numpy(np.asarray(
                           __import__("imagenet_repro.data.imagefolder", fromlist=["x"]).read_fashion_mnist("train")[1]
                       )[train.epoch_indices(0)]))


def test_torchvision_augmentation_seeds_only_the_cpu_generator_and_puts_it_back(fmnist, monkeypatch):
    """Each image's transforms run under the CPU generator seeded for it; CUDA's generator is left
    alone (torch.manual_seed would seed it too: where CUDA is not initialised, a DataLoader
    worker's, by queueing the call with a formatted stack, ~2 ms an image; where it is, a
    num_workers=0 run's, by reseeding training's CUDA stream), and the caller's CPU stream is
    left as it was (the DataLoader draws its base seed from a generator of its own)."""
    train, _ = build_loaders(cfg_for(fmnist, backend="torchvision", num_workers=0, seed=3), torch.device("cpu"))
    torch.manual_seed(11)
    before = torch.get_rng_state()
    seeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    first = next(iter(train.epoch(0)))[0]
    assert seeded == [] and torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first, next(iter(train.epoch(0)))[0])  # seeded per image, not by the stream


def test_fashion_mnist_images_are_resized_when_read_as_the_writer_resizes_them():
    """The torchvision backend's reader resizes an image when it is read (a run on a subset
    resizes only its own): the same pixels as the writer's resize of the whole split."""
    from conftest import fmnist_folder

    from imagenet_repro.data.datasets.fashion_mnist import SIZE, read
    from imagenet_repro.data.imagefolder import fashion_mnist_rgb, read_fashion_mnist

    images, labels = read_fashion_mnist("val", fmnist_folder())
    load, read_labels = read(str(fmnist_folder()), "val")
    whole = torch.from_numpy(fashion_mnist_rgb(images[:64], SIZE)).permute(0, 3, 1, 2)
    assert np.array_equal(read_labels, labels)
    for i in (0, 7, 63):
        assert load(i).shape == (3, SIZE, SIZE) and torch.equal(load(i), whole[i])


def test_missing_ffcv_is_an_error_not_a_silent_switch(fmnist, monkeypatch):
    import imagenet_repro.data.loaders as loaders

    monkeypatch.setattr(loaders, "ffcv_import_error", lambda: "ImportError: no module named ffcv")
    with pytest.raises(ConfigError, match="data.backend=ffcv but ffcv cannot be imported"):
        loaders.build_loaders(cfg_for(fmnist, num_workers=0), torch.device("cpu"))
