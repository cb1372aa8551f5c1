"""Synthetic ImageNet-shaped JPEG folders, for benchmarks and rehearsals without ImageNet.

:func:`write_synthetic_imagefolder` writes an ImageFolder (``root/c0000/00000.jpg`` ...)
of photo-like JPEGs: octaves of smooth coloured noise over sine gradients, so that the
JPEG spectrum, file size and decoding cost are those of photographs rather than of flat
colour (a flat image decodes several times faster and would flatter any loader).  Sizes
default to ImageNet's typical ``~400-500 x 350-375`` (width x height), quality 90.

Each class has its own colour cast (``class_signal``), so a network learns the labels
in a few hundred steps: a training smoke run on these files shows a falling loss and an
above-chance top-1, not only the label prior.

Everything is a pure function of ``seed`` and the image index (one NumPy generator per
image), so the files are identical whatever ``workers`` is.  Write the result to a
``.beton`` with :func:`imagenet_repro.data.writer.write_imagefolder`.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from imagenet_repro.errors import ConfigError

__all__ = ["natural_image", "class_dir", "write_synthetic_imagefolder"]

# ImageNet's typical photo: 500x375 or 500x333 landscape, ~400-500 wide.
DEFAULT_WIDTH = (400, 500)
DEFAULT_HEIGHT = (350, 375)


def natural_image(rng: np.random.Generator, h: int, w: int, tint: np.ndarray | None = None) -> np.ndarray:
    """``h x w x 3`` uint8 RGB: octaves of smooth coloured noise over a gradient (photo-like spectrum).

    ``tint`` (3 values, added to every pixel) gives the image a colour cast.
    """
    import cv2

    img = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((4, 90.0), (16, 45.0), (64, 20.0), (160, 12.0)):
        noise = rng.normal(0, 1, (cells, max(2, cells * w // h), 3)).astype(np.float32)
        img += amp * cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img += (60 * np.sin(x / rng.uniform(20, 80)) + 40 * np.cos(y / rng.uniform(20, 80)))[..., None]
    if tint is not None:
        img += np.asarray(tint, np.float32)
    return np.clip(img + 128, 0, 255).astype(np.uint8)


def class_dir(label: int, num_classes: int) -> str:
    """Folder name of class ``label``: zero-padded so that sorted order is label order."""
    return f"c{label:0{max(4, len(str(num_classes - 1)))}d}"


def _class_tint(seed: int, label: int, strength: float) -> np.ndarray:
    return np.random.default_rng([seed, 1_000_003, label]).uniform(-1, 1, 3) * 40.0 * strength


def _write_one(args: tuple) -> str:
    import cv2

    root, k, num_classes, seed, width, height, quality, class_signal = args
    rng = np.random.default_rng([seed, k])
    label = k % num_classes
    h = int(rng.integers(height[0], height[1] + 1))
    w = int(rng.integers(width[0], width[1] + 1))
    tint = _class_tint(seed, label, class_signal) if class_signal else None
    path = Path(root) / class_dir(label, num_classes) / f"{k:06d}.jpg"
    if not cv2.imwrite(str(path), natural_image(rng, h, w, tint)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"could not write {path}")
    return str(path)


def write_synthetic_imagefolder(root: str | Path, n_images: int, num_classes: int, seed: int = 0, *,
                                width: tuple[int, int] = DEFAULT_WIDTH, height: tuple[int, int] = DEFAULT_HEIGHT,
                                quality: int = 90, class_signal: float = 1.0, workers: int = 1) -> list[Path]:
    """Write ``n_images`` photo-like JPEGs into the ImageFolder ``root``; return their paths (index order).

    Image ``k`` has label ``k % num_classes`` and lives in
    ``root/<class_dir(label)>/<k:06d>.jpg``; its width and height are drawn uniformly from
    ``width`` and ``height`` (inclusive).  ``n_images >= num_classes`` is required, so
    every class folder holds an image and the ImageFolder label of a file (its folder's
    sorted position) is its ``k % num_classes``.  ``class_signal`` scales the
    per-class colour cast (0: labels carry no signal).  Output depends only on the
    arguments other than ``workers`` (processes used to encode).  Use two seeds for a
    train and a val folder.  Bad arguments raise :class:`ConfigError`.
    """
    if num_classes < 1 or n_images < num_classes:
        raise ConfigError(f"need 1 <= num_classes <= n_images (got num_classes={num_classes}, n_images={n_images})")
    for name, (lo, hi) in (("width", width), ("height", height)):
        if not 8 <= lo <= hi:
            raise ConfigError(f"{name} range must satisfy 8 <= low <= high (got {lo}, {hi})")
    if not 1 <= quality <= 100:
        raise ConfigError(f"quality must be in [1, 100] (got {quality})")
    root = Path(root)
    for label in range(num_classes):
        (root / class_dir(label, num_classes)).mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), k, num_classes, seed, tuple(width), tuple(height), quality, class_signal)
            for k in range(n_images)]
    workers = max(1, min(int(workers), os.cpu_count() or 1, n_images))
    if workers == 1:
        paths = [_write_one(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            paths = list(pool.map(_write_one, jobs, chunksize=max(1, n_images // (8 * workers))))
    return [Path(p) for p in paths]
