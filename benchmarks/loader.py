"""Train-loader throughput per worker: FFCV vs torchvision, against the libjpeg-turbo ceiling.

One ImageFolder of ImageNet-like JPEGs (``--images`` files, ~400x350, quality 90,
multi-scale coloured noise and gradients so that JPEG decoding costs what it does on
photos) is generated into a temp dir and written to a ``.beton`` with every image
stored as JPEG (``compress_probability=1``, same size, quality 90).  Then, single
thread each (one numba thread, ``num_workers=0`` DataLoader, ``torch.set_num_threads(1)``)
and with the same train augmentations at ``--res`` px (RandomResizedCrop(0.08, 1) + flip
+ normalise to float32):

* ffcv:        our FFCV train loader (``build_loaders``), second epoch timed; the first
               epoch carries numba's compilation and is reported apart, not in the rate.
* torchvision: our torchvision fallback (PIL decode + transforms.v2 + DataLoader).
* ceiling:     libjpeg-turbo decode (ffcv's own ``imdecode`` binding) of the same files'
               bytes + ffcv's crop-and-resize, in a bare loop: the work any JPEG loader
               must do per image, with nothing else.

Targets: ffcv >= 3x torchvision and >= 70% of the ceiling.  Writes results/bench/loader.json.

    python benchmarks/loader.py [--images 1200] [--res 160] [--tv-images 400]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import imagenet_repro  # noqa: F401  (torchvision shim)
from imagenet_repro.config import build_config
from imagenet_repro.data import build_loaders
from imagenet_repro.data.synthetic import write_synthetic_imagefolder
from imagenet_repro.data.writer import write_imagefolder
from imagenet_repro.files import atomic_write_text

OUT = Path(__file__).resolve().parents[1] / "results" / "bench" / "loader.json"
CLASSES = 10


def make_folder(root: Path, n: int, seed: int = 0) -> list[Path]:
    """The benchmark's ImageFolder: ``n`` photo-like JPEGs, 330-380 x 380-440, CLASSES classes."""
    return write_synthetic_imagefolder(root, n, CLASSES, seed, width=(380, 440), height=(330, 380),
                                       class_signal=0.0)


def cfg(train: Path, val: Path, backend: str, res: int, subset: int, batch: int):
    return build_config({"seed": 0, "data": {
        "dataset": "imagefolder", "backend": backend, "train_path": str(train), "val_path": str(val),
        "num_classes": CLASSES, "batch_size": batch, "val_batch_size": batch, "num_workers": 0 if backend ==
        "torchvision" else 1, "min_res": res, "max_res": res, "val_res": res, "train_subset": subset},
        "model": {"name": "small_resnet"}})


def time_epoch(train, epoch: int) -> tuple[float, int]:
    n, start = 0, time.perf_counter()
    for x, _ in train.epoch(epoch):
        n += x.shape[0]
    return time.perf_counter() - start, n


def ceiling_rate(paths: list[Path], res: int, n: int) -> float:
    """Images/s of turbojpeg decode + RandomResizedCrop-style crop/resize, single thread."""
    from ffcv.libffcv import imdecode, resize_crop
    from PIL import Image

    from imagenet_repro.data.seeding import random_crop, sample_key

    blobs = [np.frombuffer(p.read_bytes(), np.uint8) for p in paths[:n]]
    dims = []
    for p in paths[:n]:
        with Image.open(p) as im:
            dims.append((im.height, im.width))
    buf = np.empty(max(h * w for h, w in dims) * 3, np.uint8)
    out = np.empty((res, res, 3), np.uint8)
    lr = (float(np.log(3 / 4)), float(np.log(4 / 3)))
    random_crop(np.uint64(sample_key(1, 0)), 100, 100, 0.08, 1.0, *lr)  # compile outside the timing
    start = time.perf_counter()
    for k, (blob, (h, w)) in enumerate(zip(blobs, dims)):
        img = buf[: h * w * 3].reshape(h, w, 3)
        imdecode(blob, img, h, w, h, w, 0, 0, 1, 1, False, False)
        i, j, ch, cw = random_crop(np.uint64(sample_key(1, k)), h, w, 0.08, 1.0, *lr)
        resize_crop(img, i, i + ch, j, j + cw, out)
        if k % 2:
            out[:] = out[:, ::-1]
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--tv-images", type=int, default=400, help="torchvision is timed on this many (it is slow)")
    ap.add_argument("--res", type=int, default=160)
    ap.add_argument("--batch", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        root = Path(tmp) / "train"
        paths = make_folder(root, args.images)
        beton = Path(tmp) / "train.beton"
        write_imagefolder(root, beton, max_resolution=512, jpeg_quality=90, compress_probability=1.0, num_workers=2)
        t_setup = time.perf_counter() - t0

        ffcv_train, _ = build_loaders(cfg(beton, beton, "ffcv", args.res, 0, args.batch), torch.device("cpu"))
        t_first, _ = time_epoch(ffcv_train, 0)  # includes numba compilation
        t_ffcv, n_ffcv = time_epoch(ffcv_train, 1)
        tv_train, _ = build_loaders(cfg(root, root, "torchvision", args.res, args.tv_images, args.batch),
                                    torch.device("cpu"))
        t_tv, n_tv = time_epoch(tv_train, 0)
        ceiling = ceiling_rate(sorted(paths), args.res, min(args.images, 1000))
        jpeg_kb = float(np.mean([p.stat().st_size for p in paths]) / 1024)

    ffcv_rate, tv_rate = n_ffcv / t_ffcv, n_tv / t_tv
    result = {
        "benchmark": "loader", "device": "cpu", "machine": platform.node(), "cpu_count": os.cpu_count(),
        "images": args.images, "image_size": "330-380 x 380-440", "mean_jpeg_kb": round(jpeg_kb, 1),
        "resolution": args.res, "batch_size": args.batch, "workers": 1,
        "ffcv_images_per_s": round(ffcv_rate, 1), "ffcv_timed_images": n_ffcv,
        "ffcv_first_epoch_s_incl_numba_compile": round(t_first, 2),
        "torchvision_images_per_s": round(tv_rate, 1), "torchvision_timed_images": n_tv,
        "ceiling_turbojpeg_decode_crop_images_per_s": round(ceiling, 1),
        "ffcv_over_torchvision": round(ffcv_rate / tv_rate, 2), "ffcv_over_ceiling": round(ffcv_rate / ceiling, 3),
        "targets": {"ffcv_over_torchvision": 3.0, "ffcv_over_ceiling": 0.70},
        "setup_s": round(t_setup, 1), "total_s": round(time.perf_counter() - t0, 1),
        "note": "single thread each; ffcv rate excludes the first epoch (numba compile); shared 2-core machine, load average at start %s" % (os.getloadavg()[0],),
    }
    result["meets_targets"] = bool(result["ffcv_over_torchvision"] >= 3.0 and result["ffcv_over_ceiling"] >= 0.70)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
