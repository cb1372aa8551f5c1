"""``build_loaders``: the train and val loaders of a run, FFCV or torchvision.

Interface used by the trainer::

    train, val = build_loaders(cfg, device, rank, world_size)
    len(train)                      # batches per epoch on this rank (drop_last)
    for x, y in train.epoch(e, skip=k): ...   # deterministic in (cfg.seed, e); skips k batches
    train.resolution(e)             # progressive resizing, as ffcv-imagenet
    for x, y in val: ...            # whole val set (or data.val_subset), fixed order

Images are float32, normalised, NCHW on ``device`` (channels_last on CUDA); labels are
int64 1-D on ``device``.  ``data.batch_size`` is global: each rank gets
``batch_size // world_size``.  ``data.backend=torchvision`` selects the fallback.  The
backend is part of the run's config and so of its id: a requested backend that cannot be
used (ffcv not importable) is a ConfigError, never a silent switch.  Before any loader is
built, :func:`check_data` checks the data files and that their labels fit
``data.num_classes``.

Only one epoch iterator of a TrainLoader may be live at a time; FFCV batches live in
buffers that are reused a few batches later, so clone what you keep.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import torch
from omegaconf import DictConfig

from imagenet_repro.errors import ConfigError, describe

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255
# Fashion-MNIST train-set pixel statistics in [0, 1] (grey, copied to 3 channels).
FASHION_MNIST_MEAN = np.array([0.286] * 3) * 255
FASHION_MNIST_STD = np.array([0.353] * 3) * 255
VAL_CROP_RATIO = 224 / 256
RES_STEP = 32  # progressive resolutions are rounded to a multiple of this, as ffcv-imagenet


class TrainLoader(Protocol):
    num_examples: int

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def resolution(self, epoch: int) -> int: ...


class ValLoader(Protocol):
    num_examples: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def mean_std(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel normalisation constants on the 0..255 scale for ``data.dataset``."""
    if dataset == "fashion_mnist":
        return FASHION_MNIST_MEAN, FASHION_MNIST_STD
    return IMAGENET_MEAN, IMAGENET_STD


def train_resolution(epoch: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int) -> int:
    """ffcv-imagenet's progressive resizing: ``min_res`` until ``start_ramp``, linear to
    ``max_res`` at ``end_ramp`` (rounded to a multiple of 32); ``end_ramp <= 0``: fixed ``max_res``."""
    if end_ramp <= 0:
        return max_res
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])[0]
    return int(min(max(round(interp / RES_STEP) * RES_STEP, min_res), max_res))


def per_rank_batch_size(global_batch: int, world_size: int) -> int:
    bs = global_batch // world_size
    if bs < 1:
        raise ConfigError(f"data.batch_size={global_batch} is smaller than the world size {world_size}")
    return bs


def subset_indices(n: int, subset: int) -> np.ndarray:
    return np.arange(min(n, subset) if subset > 0 else n, dtype=np.int64)


def shard_length(n: int, world_size: int) -> int:
    return -(-n // world_size) if world_size > 1 else n


def train_geometry(d: DictConfig, num_examples: int, world_size: int) -> tuple[int, int]:
    """(per-rank batch size, full batches per epoch on each rank); drop_last semantics."""
    batch_size = per_rank_batch_size(d.batch_size, world_size)
    length = shard_length(num_examples, world_size) // batch_size
    if length == 0:
        raise ConfigError(f"{d.train_path}: {num_examples} training images give no full batch of "
                          f"{batch_size} per rank (data.batch_size / world size)")
    return batch_size, length


def ffcv_import_error() -> str | None:
    """None when ffcv's loader imports; else the first line of the error."""
    try:
        import ffcv.loader  # noqa: F401
    except Exception as exc:  # ImportError, or a broken compiled extension
        return describe(exc)
    return None


def ffcv_available() -> bool:
    return ffcv_import_error() is None


def check_data(cfg: DictConfig) -> None:
    """The data files of ``cfg`` (ffcv backend): complete ``.beton`` files whose labels lie in
    ``[0, data.num_classes)`` (read from the metadata table, no image is decoded)."""
    from imagenet_repro.data.beton import check_beton, check_labels

    d = cfg.data
    for key in ("train_path", "val_path"):
        check_beton(d[key])
        check_labels(d[key], d.num_classes, f"data.{key}")


def check_labels_array(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Same rule for labels already in memory (torchvision backend)."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(f"{where} has labels {int(labels.min())}..{int(labels.max())}, outside "
                          f"[0, data.num_classes={num_classes}): set data.num_classes to {int(labels.max()) + 1}")


def build_loaders(cfg: DictConfig, device: torch.device, rank: int = 0,
                  world_size: int = 1) -> tuple[TrainLoader, ValLoader]:
    """Train and val loaders for ``cfg`` (the whole RunConfig) on ``device``, for DDP rank ``rank``."""
    device = torch.device(device)
    backend = cfg.data.backend
    if backend == "ffcv":
        error = ffcv_import_error()
        if error is not None:
            raise ConfigError(f"data.backend=ffcv but ffcv cannot be imported ({error}): "
                              f"install it (make install) or set data.backend=torchvision")
        check_data(cfg)
        from imagenet_repro.data.ffcv_backend import build_ffcv_loaders

        return build_ffcv_loaders(cfg, device, rank, world_size)
    from imagenet_repro.data.torchvision_backend import build_torchvision_loaders

    train, val = build_torchvision_loaders(cfg, device, rank, world_size)
    check_labels_array(train.dataset.labels, cfg.data.num_classes, f"data.train_path {cfg.data.train_path}")
    check_labels_array(val.dataset.labels, cfg.data.num_classes, f"data.val_path {cfg.data.val_path}")
    return train, val
