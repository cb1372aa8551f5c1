"""Write FFCV ``.beton`` files: an ImageFolder (ImageNet ``train/``/``val/``) or Fashion-MNIST.

Same fields and knobs as ffcv-imagenet's ``write_imagenet.py``: ``image`` is an
``RGBImageField`` (longest side capped at ``max_resolution``, a ``compress_probability``
share stored as JPEG at ``jpeg_quality``, the rest raw) and ``label`` an ``IntField``.

Every file is written to a temporary name beside it and renamed once complete and checked
(:func:`imagenet_repro.files.atomic_write`), so an interrupted or failed write never leaves
a ``.beton`` that looks complete.

ffcv's ``DatasetWriter`` waits for a sample count, so an exception in a worker process
would hang it forever.  The dataset wrappers below therefore never raise: a failing
image is replaced by a placeholder and its path logged to a side file, and the whole
write is then rejected with a ConfigError naming the first bad file.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from imagenet_repro.bounds import MAX_WORKERS, Bound, check_bounds
from imagenet_repro.data.beton import check_beton
from imagenet_repro.data.imagefolder import (
    FASHION_MNIST_DIR,
    fashion_mnist_rgb,
    fashion_mnist_source,
    load_rgb,
    read_fashion_mnist,
    scan_imagefolder,
)
from imagenet_repro.errors import ConfigError
from imagenet_repro.files import atomic_write
from imagenet_repro.paths import check_out_dir, check_out_file

__all__ = ["FASHION_MNIST_DIR", "fashion_mnist_source", "write_imagefolder", "write_fashion_mnist"]

_MIN_PAGE = 1 << 23  # ffcv's default page (4 x 2 MiB)
MAX_WRITE_RES = 8192  # a raw 8192 px image is 192 MiB, a page of the file holds one


class _FolderSamples:
    """Indexable ``(RGB uint8 HxWx3, label)`` over ImageFolder samples, for ffcv's writer."""

    def __init__(self, samples: list[tuple[str, int]], error_log: str):
        self.samples = samples
        self.error_log = error_log

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[i]
        try:
            return np.asarray(load_rgb(path)), label
        except ConfigError as exc:  # logged, reported by the parent after the write
            with open(self.error_log, "a") as fh:
                fh.write(str(exc).replace("\n", " ") + "\n")
            return np.zeros((8, 8, 3), np.uint8), label


class _ArraySamples:
    """Indexable ``(image, label)`` over in-memory arrays (shared with forked writer workers)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


def _page_size(max_side: int) -> int:
    need = max_side * max_side * 3  # a raw image must fit in one page
    return max(_MIN_PAGE, 1 << int(np.ceil(np.log2(max(need, 1)))))


def _write(out: Path, dataset, image_field, num_workers: int, page_size: int,
           error_log: Path | None = None) -> None:
    """ffcv DatasetWriter into a temp file; rename to ``out`` once complete and checked."""
    from ffcv.fields import IntField
    from ffcv.writer import DatasetWriter

    def write(tmp: str) -> None:
        writer = DatasetWriter(tmp, {"image": image_field, "label": IntField()},
                               page_size=page_size, num_workers=num_workers)
        writer.from_indexed_dataset(dataset, chunksize=100)
        if error_log is not None and error_log.exists() and error_log.read_text().strip():
            raise ConfigError(sorted(error_log.read_text().splitlines())[0])
        check_beton(tmp)

    atomic_write(out, write)


# The writer's knobs, bounded as the run config's are (imagenet_repro.config.Bound).
WRITE_BOUNDS = {
    "--num-workers": Bound(1, MAX_WORKERS, "no node has that many cores"),
    "--jpeg-quality": Bound(1, 100, interval=True),
    "--compress-probability": Bound(0, 1, interval=True),
    "--max-res": Bound(1, MAX_WRITE_RES, "each raw image fills one page of the file "
                                          "(192 MiB at 8192 px)"),
    "--size": Bound(1, 256, "Fashion-MNIST's 70000 images are resized in memory (70000 x size^2 x 3 bytes)"),
}


def _check_knobs(num_workers: int, jpeg_quality: int = 90, compress_probability: float = 0.0,
                 max_resolution: int = 1) -> None:
    values = {"--num-workers": num_workers, "--jpeg-quality": jpeg_quality,
              "--compress-probability": compress_probability, "--max-res": max_resolution}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number (got {value})")
    check_bounds(values, WRITE_BOUNDS)


def write_imagefolder(src: str | Path, out: str | Path, max_resolution: int = 256, jpeg_quality: int = 90,
                      compress_probability: float = 0.5, num_workers: int = 2) -> Path:
    """Write the ImageFolder ``src`` to the ``.beton`` file ``out`` (labels = sorted class folders)."""
    from ffcv.fields import RGBImageField

    _check_knobs(num_workers, jpeg_quality, compress_probability, max_resolution)
    out = check_out_file(out, "--out")
    _, samples = scan_imagefolder(src)
    error_log = out.with_name(f"{out.name}.errors-{os.getpid()}")
    error_log.parent.mkdir(parents=True, exist_ok=True)
    error_log.unlink(missing_ok=True)
    field = RGBImageField(write_mode="proportion", max_resolution=max_resolution,
                          jpeg_quality=jpeg_quality, compress_probability=compress_probability)
    try:
        _write(out, _FolderSamples(samples, str(error_log)), field, num_workers, _page_size(max_resolution),
               error_log)
    finally:
        error_log.unlink(missing_ok=True)
    print(f"wrote {out}: {len(samples)} images")
    return out


def write_fashion_mnist(out_dir: str | Path, source: str | Path | None = None, size: int = 32,
                        num_workers: int = 2) -> tuple[Path, Path]:
    """Write ``out_dir/train.beton`` (60000) and ``out_dir/val.beton`` (10000), RGB ``size`` px, raw pixels.

    ``source``: the idx folder; None looks it up (:func:`fashion_mnist_source`: $FASHION_MNIST_DIR,
    Debian's folder, torchvision's download). Small images are stored raw, not JPEG: decoding
    is a memcpy, and writing takes seconds.
    """
    _check_knobs(num_workers)
    check_bounds({"--size": size}, WRITE_BOUNDS)
    out_dir = Path(out_dir)
    if out_dir.suffix == ".beton":
        raise ConfigError(f"--out for fashion-mnist is a folder (gets train.beton and val.beton), not {out_dir}")
    check_out_dir(out_dir, "--out")
    for split in ("train", "val"):
        check_out_file(out_dir / f"{split}.beton", "--out")
    source = fashion_mnist_source(source)
    splits = {split: read_fashion_mnist(split, source) for split in ("train", "val")}  # validate both first
    from ffcv.fields import RGBImageField
    paths = []
    for split, (images, labels) in splits.items():
        rgb = fashion_mnist_rgb(images, size)
        path = out_dir / f"{split}.beton"
        _write(path, _ArraySamples(rgb, labels), RGBImageField(write_mode="raw"), num_workers, _page_size(size))
        print(f"wrote {path}: {len(labels)} images {size}x{size}")
        paths.append(path)
    return paths[0], paths[1]
