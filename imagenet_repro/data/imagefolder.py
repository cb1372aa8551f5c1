"""PyTorch ImageFolder layout (``root/<class>/<image>``) and Fashion-MNIST idx files.

Both backends read their sources through this module, so a bad folder gives the same
one-line :class:`~imagenet_repro.errors.ConfigError` whether it is being written to a
``.beton`` or loaded by the torchvision fallback.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from imagenet_repro.errors import ConfigError, first_line
from imagenet_repro.paths import in_path_problem

# torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_MNIST_ENV = "FASHION_MNIST_DIR"  # environment variable naming a folder of the four idx .gz files
FASHION_MNIST_DOWNLOAD_ROOT = "data"  # torchvision downloads into <root>/FashionMNIST/raw/
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _has_idx_files(folder: Path) -> bool:
    return all((folder / name).is_file() for pair in FASHION_MNIST_FILES.values() for name in pair)


def fashion_mnist_source(given: str | Path | None = None, download_root: str | Path | None = None) -> Path:
    """The folder holding Fashion-MNIST's four idx ``.gz`` files -- the one lookup used by the
    writer, ``repro data write``, ``repro demo``, the torchvision backend and the tests.

    In order: a folder the user gives (``given``, i.e. ``repro data write --source fashion-mnist
    DIR``; else ``$FASHION_MNIST_DIR``) -- never ignored, an unusable one is an error;
    else Debian's folder (``apt-get install dataset-fashion-mnist``) when present; else
    a cached or new download by torchvision into ``<download_root>/FashionMNIST/raw``
    (torchvision checks each file's MD5). ConfigError (one line, naming all three ways)
    when none works, e.g. offline and absent.
    """
    given = given if given not in (None, "") else os.environ.get(FASHION_MNIST_ENV) or None
    if given is not None:
        folder = Path(given)
        if not _has_idx_files(folder):
            raise ConfigError(f"Fashion-MNIST folder {folder} does not hold the four idx files "
                              f"({', '.join(n for pair in FASHION_MNIST_FILES.values() for n in pair)})")
        return folder
    if _has_idx_files(Path(FASHION_MNIST_DIR)):
        return Path(FASHION_MNIST_DIR)
    download_root = Path(download_root if download_root is not None else FASHION_MNIST_DOWNLOAD_ROOT)
    raw = download_root / "FashionMNIST" / "raw"
    if _has_idx_files(raw):
        return raw
    try:
        from torchvision.datasets import FashionMNIST

        log = io.StringIO()  # torchvision prints each mirror it tries; keep only the outcome
        with contextlib.redirect_stdout(log):
            FashionMNIST(str(download_root), train=True, download=True)  # downloads all four, MD5-checked
    except Exception as exc:  # offline (URLError), bad checksum (RuntimeError), full disk, ...
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300] or type(exc).__name__
        raise ConfigError(
            f"Fashion-MNIST not found: install Debian's dataset-fashion-mnist ({FASHION_MNIST_DIR}), "
            f"or give its folder (FASHION_MNIST_DIR=DIR, or repro data write --source fashion-mnist DIR), "
            f"or go online so torchvision can download it into {raw} (download failed: {reason})") from None
    if not _has_idx_files(raw):
        raise ConfigError(f"torchvision's Fashion-MNIST download did not leave the idx files in {raw}")
    print(f"downloaded Fashion-MNIST to {raw} (MD5 checked by torchvision)", flush=True)
    return raw


def scan_imagefolder(root: str | Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted folder names) and ``(path, label)`` samples, as torchvision's ImageFolder.

    Raises ConfigError for a missing root, a root without class folders, or a class
    folder without images, so nothing is written from a half-valid tree.
    """
    root = Path(root)
    problem = in_path_problem(root, "folder")
    if problem == "does not exist":
        raise ConfigError(f"image folder not found: {root}")
    if problem is not None:
        raise ConfigError(f"image folder {root} {problem}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ConfigError(f"no class folders in {root} (expected {root}/<class>/<image>)")
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        files = sorted(str(p) for p in (root / name).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise ConfigError(f"class folder has no images: {root / name}")
        samples.extend((f, label) for f in files)
    return classes, samples


def load_rgb(path: str) -> Image.Image:
    """Decode one image to RGB like torchvision's default loader; ConfigError names the file."""
    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            return img.convert("RGB")
    except Exception as exc:  # PIL raises several types (UnidentifiedImageError, OSError, ...)
        reason = first_line(exc)
        raise ConfigError(f"unreadable image {path}: {reason}") from None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    if not path.is_file():
        raise ConfigError(f"Fashion-MNIST file not found: {path}")
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise ConfigError(f"{path}: not a readable gzip file ({exc})") from None
    ndim = magic & 0xFF
    if len(raw) < 4 + 4 * ndim or int.from_bytes(raw[:4], "big") != magic:
        raise ConfigError(f"{path}: not an idx file with magic {magic}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ConfigError(f"{path}: truncated idx file ({body.size} bytes for shape {shape})")
    return body.reshape(shape)


def read_fashion_mnist(split: str, source: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of the ``train`` or ``val`` (t10k) split.

    ``source`` None: :func:`fashion_mnist_source` finds the folder.
    """
    source = fashion_mnist_source() if source is None else Path(source)
    if not source.is_dir():
        raise ConfigError(f"Fashion-MNIST folder not found: {source}")
    img_name, lbl_name = FASHION_MNIST_FILES[split]
    images = _read_idx(source / img_name, 2051)
    labels = _read_idx(source / lbl_name, 2049).astype(np.int64)
    if len(images) != len(labels):
        raise ConfigError(f"{source}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels


def fashion_mnist_rgb(images: np.ndarray, size: int) -> np.ndarray:
    """Grey 28x28 -> RGB ``size`` x ``size`` uint8 [N, size, size, 3] (bilinear resize, channel copy)."""
    if size <= 0:
        raise ConfigError(f"--size must be > 0 (got {size})")
    if images.shape[1:] != (size, size):
        images = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in images])
    return np.ascontiguousarray(np.repeat(images[..., None], 3, axis=-1))
