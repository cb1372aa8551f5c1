"""Fashion-MNIST: the four idx ``.gz`` files ($FASHION_MNIST_DIR, Debian's
``dataset-fashion-mnist``, else torchvision's MD5-checked download into ``data/``), grey
28 x 28 resized and copied to RGB, written raw to ``train.beton`` (60000) and ``val.beton``
(10000); the torchvision backend reads the idx files themselves at the writer's default size."""
from __future__ import annotations

from pathlib import Path

from imagenet_repro.data.datasets import DatasetEntry, WriteOptions, register_dataset

SIZE = 32  # the writer's default size, so both backends see the same pixels
# Fashion-MNIST train-set pixel statistics in [0, 1] (grey, copied to 3 channels).
MEAN = (0.286,) * 3
STD = (0.353,) * 3


def write(src: str | None, out: str, options: WriteOptions):
    from imagenet_repro.data.writer import write_fashion_mnist

    return write_fashion_mnist(out, source=src, size=options.size, num_workers=options.num_workers)


def read(path: str, split: str):
    """``data.train_path``/``val_path``: a folder holding the idx files, else they are looked up."""
    import torch

    from imagenet_repro.data.imagefolder import (
        FASHION_MNIST_FILES,
        fashion_mnist_rgb,
        fashion_mnist_source,
        read_fashion_mnist,
    )

    folder = Path(path) if Path(path).is_dir() and (Path(path) / FASHION_MNIST_FILES[split][0]).is_file() \
        else fashion_mnist_source()
    images, labels = read_fashion_mnist(split, folder)

    def load(i: int) -> torch.Tensor:  # resized when read: a run on a subset resizes only its images
        return torch.from_numpy(fashion_mnist_rgb(images[i:i + 1], SIZE)[0]).permute(2, 0, 1)

    return load, labels


FASHION_MNIST = register_dataset(DatasetEntry(
    name="fashion_mnist", num_classes=10, mean=MEAN, std=STD,
    source="the four idx .gz files: $FASHION_MNIST_DIR, else Debian's dataset-fashion-mnist, else torchvision's "
           "download into data/; repro data write --source fashion-mnist [DIR] --out FOLDER",
    write=write, read=read, path_kind="any", small_images=True,
    target_top1=0.75))  # a demo convenience (no published target): the demo's small ResNet passes it in one epoch
