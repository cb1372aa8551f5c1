"""ImageNet and any ImageFolder: FFCV ``.beton`` files written from ``root/<class>/<image>``
trees (ffcv-imagenet's ``write_imagenet.py`` knobs), or the folders themselves for the
torchvision backend.  ImageNet's normalisation for both."""
from __future__ import annotations

from imagenet_repro.data.datasets import DatasetEntry, WriteOptions, register_dataset
from imagenet_repro.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def write_folder(src: str | None, out: str, options: WriteOptions):
    """One ImageFolder ``src`` -> the ``.beton`` file ``out``."""
    from imagenet_repro.data.writer import write_imagefolder

    if not src:
        raise ConfigError("--source imagefolder needs the image folder: "
                          "repro data write --source imagefolder DIR --out FILE.beton")
    return write_imagefolder(src, out, max_resolution=options.max_resolution, jpeg_quality=options.jpeg_quality,
                             compress_probability=options.compress_probability, num_workers=options.num_workers)


def read_folder(path: str, split: str):
    """An ImageFolder root for the torchvision backend: ``(load(i) -> uint8 CHW, labels)``."""
    import numpy as np
    from torchvision.transforms.v2 import functional as F

    from imagenet_repro.data.imagefolder import load_rgb, scan_imagefolder

    if str(path).endswith(".beton"):
        raise ConfigError(f"data.backend=torchvision needs an ImageFolder root, got the .beton file {path}")
    _, samples = scan_imagefolder(path)
    paths = [p for p, _ in samples]
    labels = np.array([lbl for _, lbl in samples], dtype=np.int64)
    return (lambda i: F.pil_to_tensor(load_rgb(paths[i]))), labels


# num_classes None: the full set has 1000, but a class subset (ImageNet-100, the tests' tiny
# configs) keeps the name; the loaders check every label against data.num_classes
IMAGENET = register_dataset(DatasetEntry(
    name="imagenet", num_classes=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    source="ILSVRC-2012 from image-net.org as ImageFolder trees train/ and val/ (val sorted into class folders), "
           "each written with repro data write --source imagenet DIR --out FILE.beton",
    write=write_folder, read=read_folder,
    # the AlgoPerf ResNet-50 ImageNet validation target (MLCommons AlgoPerf, workload imagenet_resnet)
    target_top1=0.7743))

IMAGEFOLDER = register_dataset(DatasetEntry(
    name="imagefolder", num_classes=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    source="your own ImageFolder trees (root/<class>/<image>, labels = sorted class folders), "
           "written with repro data write --source imagefolder DIR --out FILE.beton",
    write=write_folder, read=read_folder))
