"""The synthetic ImageNet-shaped JPEG generator (benchmarks, GPU check, sweep rehearsal)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from imagenet_repro.data.imagefolder import scan_imagefolder
from imagenet_repro.data.synthetic import write_synthetic_imagefolder
from imagenet_repro.errors import ConfigError


def digest(paths) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "train"
    return root, write_synthetic_imagefolder(root, 14, 5, seed=3)


def test_sizes_are_imagenet_like_jpegs(folder):
    _, paths = folder
    assert len(paths) == 14
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 400 <= im.width <= 500 and 350 <= im.height <= 375
        assert p.stat().st_size > 20_000  # photo-like detail, not flat colour (which would be ~5 KB)


def test_labels_span_num_classes_in_imagefolder_order(folder):
    root, paths = folder
    classes, samples = scan_imagefolder(root)
    assert len(classes) == 5
    labels = {path: label for path, label in samples}
    assert [labels[str(p)] for p in paths] == [k % 5 for k in range(14)]


def test_deterministic_by_seed_and_independent_of_workers(folder, tmp_path):
    _, paths = folder
    again = write_synthetic_imagefolder(tmp_path / "again", 14, 5, seed=3, workers=2)
    assert digest(again) == digest(paths)
    other = write_synthetic_imagefolder(tmp_path / "other", 14, 5, seed=4)
    assert all(a != b for a, b in zip(digest(other), digest(paths)))


def test_class_signal_gives_each_class_its_own_colour(tmp_path):
    paths = write_synthetic_imagefolder(tmp_path / "t", 40, 2, seed=0, width=(64, 64), height=(64, 64))
    means = np.array([np.asarray(Image.open(p)).reshape(-1, 3).mean(0) for p in paths])
    a, b = means[0::2], means[1::2]  # labels 0 and 1
    assert np.abs(a.mean(0) - b.mean(0)).max() > 3 * max(a.std(0).max(), b.std(0).max()) / np.sqrt(20)


@pytest.mark.parametrize("kwargs", [dict(n_images=3, num_classes=5), dict(n_images=5, num_classes=0),
                                    dict(n_images=5, num_classes=5, width=(500, 400)),
                                    dict(n_images=5, num_classes=5, quality=0)])
def test_bad_arguments_raise_config_error_and_write_nothing(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        write_synthetic_imagefolder(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
