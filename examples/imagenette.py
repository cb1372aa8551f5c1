"""Imagenette, a 10-class subset of ImageNet (fast.ai), a dataset kept outside the package.

Its files: fast.ai's ``imagenette2-160.tgz`` (or ``imagenette2.tgz``, full size) from
https://github.com/fastai/imagenette, unpacked to a folder holding ``train/`` and ``val/``,
each with one folder per ImageNet class (``n01440764/`` ...).  Give that folder to
``repro data write`` (or set ``$IMAGENETTE_DIR``); it writes ``OUT/train.beton`` and
``OUT/val.beton`` with ffcv-imagenet's knobs:

    repro data write --source examples/imagenette.py:imagenette ~/imagenette2-160 --out data/imagenette

and select it in a run or a sweep with ``data.dataset: examples/imagenette.py:imagenette``,
``data.num_classes: 10`` and the two files as ``data.train_path`` / ``data.val_path`` (with
``data.backend: torchvision`` the two class-folder roots instead).  ImageNet's normalisation;
labels are the ImageNet classes in WordNet-id order, and any other set of class folders is
refused (a folder of another dataset would train with the wrong labels).
"""
import os
from pathlib import Path

from imagenet_repro.data.datasets import DatasetEntry, WriteOptions, register_dataset
from imagenet_repro.data.datasets.imagenet import IMAGENET_MEAN, IMAGENET_STD, read_folder
from imagenet_repro.errors import ConfigError

WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079",  # tench, springer, cassette player,
         "n03394916", "n03417042", "n03425413", "n03445777", "n03888605")  # chain saw, church, horn, truck, ...
ENV = "IMAGENETTE_DIR"


def _check_classes(split_dir: Path) -> None:
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
    if tuple(found) != WNIDS:
        raise ConfigError(f"{split_dir}: expected Imagenette's 10 class folders ({', '.join(WNIDS)}), "
                          f"found {len(found)}: {', '.join(found[:4])}{' ...' if len(found) > 4 else ''}")


def write(src, out, options: WriteOptions):
    from imagenet_repro.data.writer import write_imagefolder

    src = src or os.environ.get(ENV)
    if not src:
        raise ConfigError(f"imagenette: give the unpacked imagenette2 folder (repro data write --source "
                          f"examples/imagenette.py:imagenette DIR --out FOLDER) or set ${ENV}; "
                          f"download it from https://github.com/fastai/imagenette")
    for split in ("train", "val"):
        _check_classes(Path(src) / split)  # both, before anything is written
    return tuple(write_imagefolder(Path(src) / split, Path(out) / f"{split}.beton",
                                   max_resolution=options.max_resolution, jpeg_quality=options.jpeg_quality,
                                   compress_probability=options.compress_probability,
                                   num_workers=options.num_workers) for split in ("train", "val"))


def read(path, split):
    _check_classes(Path(path))
    return read_folder(path, split)


IMAGENETTE = register_dataset(DatasetEntry(
    name="imagenette", num_classes=10, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    source=f"fast.ai's imagenette2 (https://github.com/fastai/imagenette) unpacked, train/ and val/; or ${ENV}",
    write=write, read=read))
