"""``build_loaders``: the train and val loaders of a run, FFCV or torchvision.

Interface used by the trainer::

    train, val = build_loaders(cfg, device, rank, world_size)
    len(train)                      # batches per epoch on this rank (drop_last)
    for x, y in train.epoch(e, skip=k): ...   # deterministic in (cfg.seed, e); skips k batches
    train.resolution(e)             # progressive resizing, as ffcv-imagenet
    for x, y in val.batches(limit): ...   # this rank's part of the first `limit` val images
                                          # (0: the whole val set or data.val_subset), fixed order

Images are float32, normalised, NCHW on ``device`` (channels_last on CUDA); labels are
int64 1-D on ``device``.  ``data.batch_size`` is global: each rank gets
``batch_size // world_size``.  Evaluation is sharded too: each rank reads a disjoint
contiguous part of the val images (``common.val_shard``: no padding, each image once), and
the trainer sums the ranks' totals.  ``data.backend=torchvision`` selects the fallback.  The
backend is part of the run's config and so of its id: a requested backend that cannot be
used (ffcv not importable) is a ConfigError, never a silent switch.  Before any loader is
built, :func:`check_data` checks the data files and that their labels fit
``data.num_classes``.

Only one epoch iterator of a TrainLoader may be live at a time; FFCV batches live in
buffers that are reused a few batches later, so clone what you keep.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import torch
from omegaconf import DictConfig

from imagenet_repro.data.beton import check_beton, check_labels
from imagenet_repro.data.common import check_labels_array, check_memory
from imagenet_repro.errors import ConfigError, describe


class TrainLoader(Protocol):
    num_examples: int

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def resolution(self, epoch: int) -> int: ...


class ValLoader(Protocol):
    num_examples: int  # on all ranks together

    def __len__(self) -> int: ...  # this rank's batches of the whole val set

    def batches(self, limit: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


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
    d = cfg.data
    for key in ("train_path", "val_path"):
        check_beton(d[key])
        check_labels(d[key], d.num_classes, f"data.{key}")


def build_loaders(cfg: DictConfig, device: torch.device, rank: int = 0,
                  world_size: int = 1) -> tuple[TrainLoader, ValLoader]:
    """Train and val loaders for ``cfg`` (the whole RunConfig) on ``device``, for DDP rank ``rank``."""
    device = torch.device(device)
    check_memory(cfg.data, world_size)
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
