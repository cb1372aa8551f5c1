"""FFCV loaders as ffcv-imagenet builds them, made deterministic and resumable.

Pipelines (ffcv-imagenet's ``create_train_loader`` / ``create_val_loader``):

* train: RandomResizedCrop decoder (scale ``(data.rrc_scale_min, 1)``) -> RandomHorizontalFlip
  -> ToTensor -> ToDevice -> ToTorchImage(channels_last) -> NormalizeImage
* val:   CenterCrop decoder (ratio 224/256, output ``data.val_res``) -> same tail

On CUDA that order is used as is.  On CPU it is not: ffcv 1.0.2's
``Graph.group_operations`` alternates jitted and non-jitted stages and re-uses one set
object as both the current and the next front, so a jitted op (CPU NormalizeImage)
after a non-jitted one (ToTensor) makes ``Loader()`` spin forever (libffcv/ffcv#396).
On CPU, NormalizeImage therefore runs right after the jitted decode/flip, before
ToTensor; ToDevice is dropped (the batch is already on the CPU).

ffcv's ``Loader`` sets torch's thread count to its ``num_workers`` when it is built and at
each epoch's start; with ``train.threads`` > 0 both loaders put that count back before
handing out each batch, so training and evaluation run with the configured threads.

The first epoch of each loader includes numba's compilation (~12-18 s here).
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import NormalizeImage, Squeeze, ToDevice, ToTensor, ToTorchImage
from ffcv.traversal_order.quasi_random import QuasiRandom
from omegaconf import DictConfig

from imagenet_repro.data.beton import check_beton
from imagenet_repro.data.common import (
    VAL_CROP_RATIO,
    mean_std,
    subset_indices,
    train_geometry,
    train_resolution,
    val_shard,
)
from imagenet_repro.data.ffcv_ops import (
    EpochKey,
    PlannedOrder,
    SeededRandomHorizontalFlip,
    SeededRandomResizedCropRGBImageDecoder,
    TorchNormalizeImage,
)
from imagenet_repro.data.seeding import epoch_key, epoch_order


def _keep_threads(threads: int) -> None:
    """Put torch's thread count back to ``threads`` (``train.threads``; 0: leave ffcv's)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _batches(loader: Loader, threads: int):
    """(images, labels) of one pass; the epoch iterator is closed even if the caller stops early."""
    it = iter(loader)  # sets torch's thread count to num_workers
    try:
        for images, labels in it:
            _keep_threads(threads)
            yield images, labels.view(-1)
    finally:
        it.close()


def _cupy_available() -> bool:
    try:
        import cupy  # noqa: F401
        import pytorch_pfn_extras  # noqa: F401
    except Exception:
        return False
    return True


def image_tail(device: torch.device, mean: np.ndarray, std: np.ndarray) -> tuple[list, list]:
    """``(ops before ToTensor, ops from ToTensor on)`` of an image pipeline for ``device``."""
    if device.type == "cuda":
        normalize = (NormalizeImage(mean, std, np.float32) if _cupy_available()
                     else TorchNormalizeImage(mean, std))
        return [], [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(channels_last=True), normalize]
    # CPU: NormalizeImage before ToTensor (see the module docstring: the GPU order hangs ffcv on CPU)
    return [NormalizeImage(mean, std, np.float32)], [ToTensor(), ToTorchImage(channels_last=False)]


def label_pipeline(device: torch.device) -> list:
    ops = [IntDecoder(), ToTensor(), Squeeze()]
    if device.type == "cuda":
        ops.append(ToDevice(device, non_blocking=True))
    return ops


def _num_threads(requested: int) -> int:
    """ffcv's numba thread count: numba refuses more than NUMBA_NUM_THREADS (the core count)."""
    return max(1, min(int(requested), numba.config.NUMBA_NUM_THREADS))


class FFCVTrainLoader:
    """One ffcv Loader re-driven per epoch with a planned order, an epoch key and a resolution."""

    def __init__(self, cfg: DictConfig, device: torch.device, rank: int, world_size: int):
        d = cfg.data
        self.seed, self.rank, self.world_size = int(cfg.seed), rank, world_size
        self.threads = int(cfg.train.threads)
        self.min_res, self.max_res, self.start_ramp, self.end_ramp = d.min_res, d.max_res, d.start_ramp, d.end_ramp
        self.quasi_random = d.order == "quasi_random"
        # several ranks with quasi_random are refused by config.placement_problems at the trainer's start
        n = check_beton(d.train_path)
        self.indices = subset_indices(n, d.train_subset)
        self.num_examples = len(self.indices)
        self.batch_size, self._len = train_geometry(d, self.num_examples, world_size)
        self.key = EpochKey()
        res = self.resolution(0)
        self.decoder = SeededRandomResizedCropRGBImageDecoder((res, res), self.key, scale=(d.rrc_scale_min, 1.0))
        pre, post = image_tail(device, *mean_std(d.dataset))
        self.loader = Loader(str(d.train_path), batch_size=self.batch_size, num_workers=_num_threads(d.num_workers),
                             os_cache=d.os_cache, order=OrderOption.SEQUENTIAL, seed=self.seed, indices=self.indices,
                             drop_last=True, batches_ahead=3,
                             pipelines={"image": [self.decoder, SeededRandomHorizontalFlip(self.key), *pre, *post],
                                        "label": label_pipeline(device)})
        # ffcv's `distributed=True` only swaps in a DistributedSampler order, which needs an
        # initialised process group; PlannedOrder shards the same way from (rank, world_size).
        self.loader.distributed = world_size > 1
        self.order = PlannedOrder(self.loader)
        self.loader.traversal_order = self.order
        _keep_threads(self.threads)
        if self.quasi_random:
            self._quasi = QuasiRandom(self.loader)
            self._quasi_pages = self._quasi.page_to_samples_array.copy()

    def __len__(self) -> int:
        return self._len

    def resolution(self, epoch: int) -> int:
        return train_resolution(epoch, self.min_res, self.max_res, self.start_ramp, self.end_ramp)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch`` on this rank, in batch order, ``len(self)`` full batches."""
        if self.quasi_random:  # ffcv's page-aware order; it shuffles its page table in place, so reset it
            self._quasi.page_to_samples_array = self._quasi_pages.copy()
            self._quasi.seed = self.seed
            order = self._quasi.sample_order(epoch)
        else:
            order = epoch_order(self.indices, self.seed, epoch, self.rank, self.world_size)
        return np.asarray(order[: self._len * self.batch_size], dtype=np.uint64)

    def epoch(self, epoch: int, skip: int = 0):
        if skip < 0:
            raise ValueError(f"skip must be >= 0 (got {skip})")
        res = self.resolution(epoch)
        self.decoder.output_size = (res, res)  # re-read when ffcv allocates the epoch's buffers
        self.order.planned = self.epoch_indices(epoch)[skip * self.batch_size:]
        self.key.set(epoch_key(self.seed, epoch))
        if len(self.order.planned) == 0:
            return
        yield from _batches(self.loader, self.threads)


class FFCVValLoader:
    """Sequential val loader over the val set (or its first ``data.val_subset`` images), each
    rank reading its own contiguous part (:func:`~imagenet_repro.data.common.val_shard`)."""

    def __init__(self, cfg: DictConfig, device: torch.device, rank: int = 0, world_size: int = 1):
        d = cfg.data
        self.threads, self.rank, self.world_size = int(cfg.train.threads), rank, world_size
        n = check_beton(d.val_path)
        self.indices = subset_indices(n, d.val_subset)
        self.num_examples = len(self.indices)
        decoder = CenterCropRGBImageDecoder((d.val_res, d.val_res), ratio=VAL_CROP_RATIO)
        pre, post = image_tail(device, *mean_std(d.dataset))
        self.loader = Loader(str(d.val_path), batch_size=d.val_batch_size, num_workers=_num_threads(d.num_workers),
                             os_cache=d.os_cache, order=OrderOption.SEQUENTIAL, indices=self.indices,
                             drop_last=False, batches_ahead=3,
                             pipelines={"image": [decoder, *pre, *post], "label": label_pipeline(device)})
        self.order = PlannedOrder(self.loader)  # each pass reads the planned shard, in order
        self.loader.traversal_order = self.order
        _keep_threads(self.threads)

    def __len__(self) -> int:
        return -(-len(val_shard(self.indices, self.rank, self.world_size)) // self.loader.batch_size)

    def batches(self, limit: int = 0):
        """This rank's part of the first ``limit`` val images (0: all of them)."""
        shard = val_shard(self.indices, self.rank, self.world_size, limit)
        if len(shard) == 0:
            return
        self.order.planned = np.asarray(shard, dtype=np.uint64)
        yield from _batches(self.loader, self.threads)

    def __iter__(self):
        return self.batches()


def build_ffcv_loaders(cfg: DictConfig, device: torch.device, rank: int, world_size: int):
    return FFCVTrainLoader(cfg, device, rank, world_size), FFCVValLoader(cfg, device, rank, world_size)
