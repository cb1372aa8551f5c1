"""Photo-like synthetic ImageFolders: ImageNet-shaped JPEGs for rehearsals and benchmarks.

Each image is octaves of smooth coloured noise over a sinusoidal gradient, so its JPEG
decode costs about what a photo's does (flat colour would decode unrealistically fast).
Sizes follow ImageNet's typical ~400-500 x 350-375; labels cycle through every class so a
folder of at least ``num_classes`` images holds all of them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def natural_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One RGB uint8 image of shape (h, w, 3) with a photo-like spectrum."""
    import cv2

    img = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((4, 90.0), (16, 45.0), (64, 20.0), (160, 12.0)):
        noise = rng.normal(0, 1, (cells, max(2, cells * w // h), 3)).astype(np.float32)
        img += amp * cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img += (60 * np.sin(x / rng.uniform(20, 80)) + 40 * np.cos(y / rng.uniform(20, 80)))[..., None]
    return np.clip(img + 128, 0, 255).astype(np.uint8)


def write_synthetic_imagefolder(root: str | Path, n_images: int, num_classes: int, seed: int = 0,
                                height: tuple[int, int] = (350, 376), width: tuple[int, int] = (400, 501),
                                jpeg_quality: int = 90) -> list[Path]:
    """Write ``n_images`` JPEGs as ``root/c<class>/<index>.jpg``; image k has class k mod num_classes."""
    import cv2

    root = Path(root)
    rng = np.random.default_rng(seed)
    digits = len(str(max(num_classes - 1, 1)))
    paths = []
    for k in range(n_images):
        h, w = int(rng.integers(*height)), int(rng.integers(*width))
        folder = root / f"c{k % num_classes:0{digits}d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{k:06d}.jpg"
        cv2.imwrite(str(path), natural_image(rng, h, w)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        paths.append(path)
    return paths
