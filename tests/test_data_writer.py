"""ImageFolder -> .beton round trip, and the one-line errors of writing and reading datasets."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_repro.cli import main
from imagenet_repro.config import build_config
from imagenet_repro.data import build_loaders
from imagenet_repro.data.beton import check_beton
from imagenet_repro.data.common import IMAGENET_MEAN, IMAGENET_STD, VAL_CROP_RATIO
from imagenet_repro.data.writer import write_imagefolder
from imagenet_repro.errors import ConfigError

COUNTS = {"cat": 5, "dog": 3, "eel": 4}


def _natural(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour gradients plus blobs: JPEG-friendly, yet every pixel differs."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 6)),
                    np.cos(5 * y * rng.uniform(0.5, 2) + rng.uniform(0, 6)),
                    np.sin(4 * (x + y) * rng.uniform(0.5, 2))], -1)
    return ((img * 0.5 + 0.5) * 220 + 10).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imgfolder")
    rng = np.random.default_rng(0)
    for name, count in COUNTS.items():
        (root / name).mkdir()
        for k in range(count):
            h, w = int(rng.integers(40, 64)), int(rng.integers(40, 64))
            Image.fromarray(_natural(rng, h, w)).save(root / name / f"{k}.jpg", quality=95)
    return root


def _cfg(train: Path, val: Path, **data) -> object:
    base = {"dataset": "imagefolder", "train_path": str(train), "val_path": str(val), "num_classes": 3,
            "batch_size": 4, "val_batch_size": 5, "num_workers": 1, "min_res": 32, "max_res": 32, "val_res": 32}
    return build_config({"data": {**base, **data}, "model": {"name": "small_resnet"}})


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_imagefolder_round_trip(folder, tmp_path):
    out = tmp_path / "set.beton"
    write_imagefolder(folder, out, max_resolution=64, jpeg_quality=95, compress_probability=0.5, num_workers=1)
    assert check_beton(out) == sum(COUNTS.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.beton"]  # no temporary file left

    # NormalizeImage-before-ToTensor is the CPU order; the ffcv-imagenet order would hang here.
    train, val = build_loaders(_cfg(out, out), torch.device("cpu"))
    images, labels = [], []
    for x, y in val:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64 and y.ndim == 1
        images.append(x.clone())
        labels.append(y.clone())
    images, labels = torch.cat(images), torch.cat(labels)
    assert Counter(labels.tolist()) == {i: COUNTS[n] for i, n in enumerate(sorted(COUNTS))}

    # val pixels: centre crop 224/256 of the short side, resized, as computed from the source JPEG
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    sources = sorted(folder.glob("*/*.jpg"))
    for k, path in enumerate(sources):
        src = np.asarray(Image.open(path).convert("RGB"))
        h, w = src.shape[:2]
        c = int(VAL_CROP_RATIO * min(h, w))
        crop = src[(h - c) // 2:(h - c) // 2 + c, (w - c) // 2:(w - c) // 2 + c]
        expect = cv2.resize(crop, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
        got = (images[k].double() * std + mean).permute(1, 2, 0).numpy()
        assert np.abs(got - expect).mean() < 6.0, path

    batch = next(iter(train.epoch(0)))
    assert batch[0].shape == (4, 3, 32, 32) and len(train) == sum(COUNTS.values()) // 4


def test_write_errors_are_one_line(tmp_path, folder, capsys):
    out = tmp_path / "x.beton"
    with pytest.raises(ConfigError, match="image folder not found"):
        write_imagefolder(tmp_path / "missing", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class folders"):
        write_imagefolder(tmp_path / "empty", out)
    (tmp_path / "empty" / "a").mkdir()
    (tmp_path / "empty" / "a" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"class folder has no images: .*empty/a"):
        write_imagefolder(tmp_path / "empty", out)
    with pytest.raises(ConfigError, match="--jpeg-quality"):
        write_imagefolder(folder, out, jpeg_quality=0)
    assert main(["data", "write", "--source", "imagefolder", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("repro: error: image folder not found") and "\n" not in err
    assert not out.exists()


@pytest.mark.timeout(120)
def test_unreadable_image_names_the_file_and_leaves_nothing(tmp_path, folder):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    out = tmp_path / "bad.beton"
    with pytest.raises(ConfigError, match=r"unreadable image .*dog/broken\.jpg"):
        write_imagefolder(bad, out, num_workers=2)
    assert list(tmp_path.glob("bad.beton*")) == []


def test_bad_beton_is_rejected_at_loader_construction(tmp_path, folder):
    out = tmp_path / "ok.beton"
    write_imagefolder(folder, out, max_resolution=48, num_workers=1)
    data = out.read_bytes()
    truncated = tmp_path / "truncated.beton"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.beton"
    foreign.write_bytes(np.random.default_rng(0).integers(0, 255, 50_000, dtype=np.uint8).tobytes())
    for path, why in ((truncated, "truncated"), (foreign, "not a complete FFCV .beton")):
        with pytest.raises(ConfigError, match=why) as info:
            build_loaders(_cfg(path, out), torch.device("cpu"))
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="dataset file not found"):
        check_beton(tmp_path / "nope.beton")
