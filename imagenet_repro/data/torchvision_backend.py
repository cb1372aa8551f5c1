"""Torchvision fallback: the data set's own reader (ImageFolder, Fashion-MNIST idx arrays, ...) + transforms.v2 + DataLoader.

Same augmentations as the FFCV pipelines (RandomResizedCrop + horizontal flip for
train; centre crop of 224/256 of the short side resized to ``data.val_res`` for val;
normalisation on the 0..255 scale), same epoch orders (:func:`seeding.epoch_order`),
and the same determinism contract: each sample's transforms run under a torch RNG
seeded from ``(seed, epoch, sample index)``, so ``epoch(e, skip=k)`` reproduces the
tail of an uninterrupted epoch whatever the number of workers.

``data.train_path``/``val_path`` are read by the ``read`` of ``data.dataset``'s registry entry
(:mod:`imagenet_repro.data.datasets`): ImageFolder roots for ImageNet and image folders; for
``fashion_mnist`` folders holding the idx ``.gz`` files, otherwise ``fashion_mnist_source()`` finds them.
"""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from imagenet_repro.data.common import (
    VAL_CROP_RATIO,
    mean_std,
    subset_indices,
    train_geometry,
    train_resolution,
    val_shard,
)
from imagenet_repro.data.datasets import get_dataset
from imagenet_repro.data.seeding import epoch_key, epoch_order, sample_keys

_MASK63 = (1 << 63) - 1


class _Images(Dataset):
    """Items are ``(index, sample seed or -1, resolution)``; returns ``(float image, label)``."""

    def __init__(self, load, labels: np.ndarray, train: bool, scale_min: float, mean, std):
        self.load, self.labels, self.train, self.scale_min = load, labels, train, scale_min
        self.normalize = v2.Normalize(list(map(float, mean)), list(map(float, std)))
        self.flip = v2.RandomHorizontalFlip()
        self._crops: dict[int, v2.RandomResizedCrop] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def _augment(self, img: torch.Tensor, res: int) -> torch.Tensor:
        crop = self._crops.setdefault(res, v2.RandomResizedCrop(res, scale=(self.scale_min, 1.0), antialias=True))
        return self.flip(crop(img))

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        index, seed, res = item
        img = self.load(index)  # uint8 CHW tensor
        if self.train:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed would also seed CUDA's (in a process
                # whose CUDA is not initialised, a DataLoader worker's, by queueing the call with
                # its formatted stack: ~2 ms an image), which fork_rng(devices=[]) does not restore
                torch.default_generator.manual_seed(seed)
                img = self._augment(img, res)
        else:
            c = int(VAL_CROP_RATIO * min(img.shape[-2:]))
            img = F.resize(F.center_crop(img, [c, c]), [res, res], antialias=True)
        return self.normalize(img.float()), int(self.labels[index])


def _source(d: DictConfig, split: str):
    """``(load(i) -> uint8 CHW tensor, labels)`` of a split, by the data set's registered reader."""
    return get_dataset(d.dataset).read(str(d.train_path if split == "train" else d.val_path), split)


def _own_generator() -> torch.Generator:
    """The DataLoader's own generator: it draws its workers' base seed from it, not from the
    training's CPU stream (which every epoch's iterator would otherwise advance; the images'
    transforms are seeded per sample and need no base seed)."""
    return torch.Generator().manual_seed(0)


def _to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device):
    if device.type == "cuda":
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
    return images, labels


class TorchvisionTrainLoader:
    def __init__(self, cfg: DictConfig, device: torch.device, rank: int, world_size: int):
        d = cfg.data
        self.cfg, self.device, self.seed, self.rank, self.world_size = d, device, int(cfg.seed), rank, world_size
        load, labels = _source(d, "train")
        self.dataset = _Images(load, labels, True, d.rrc_scale_min, *mean_std(d.dataset))
        self.indices = subset_indices(len(labels), d.train_subset)
        self.num_examples = len(self.indices)
        self.batch_size, self._len = train_geometry(d, self.num_examples, world_size)

    def __len__(self) -> int:
        return self._len

    def resolution(self, epoch: int) -> int:
        d = self.cfg
        return train_resolution(epoch, d.min_res, d.max_res, d.start_ramp, d.end_ramp)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        order = epoch_order(self.indices, self.seed, epoch, self.rank, self.world_size)
        return order[: self._len * self.batch_size]

    def epoch(self, epoch: int, skip: int = 0):
        if skip < 0:
            raise ValueError(f"skip must be >= 0 (got {skip})")
        res, key = self.resolution(epoch), epoch_key(self.seed, epoch)
        order = self.epoch_indices(epoch)
        order = order[skip * self.batch_size:]
        seeds = (sample_keys(key & _MASK63, order.astype(np.int64)) & np.uint64(_MASK63)).tolist()
        items = [(int(i), s, res) for i, s in zip(order.tolist(), seeds)]
        batches = [items[k:k + self.batch_size] for k in range(0, len(items), self.batch_size)]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.cfg.num_workers,
                            pin_memory=self.device.type == "cuda", generator=_own_generator())
        for images, labels in loader:
            yield _to_device(images, labels, self.device)


class TorchvisionValLoader:
    """The val set (or its first ``data.val_subset`` images) in order, each rank reading its own
    contiguous part (:func:`~imagenet_repro.data.common.val_shard`)."""

    def __init__(self, cfg: DictConfig, device: torch.device, rank: int = 0, world_size: int = 1):
        d = cfg.data
        self.device, self.res, self.rank, self.world_size = device, d.val_res, rank, world_size
        load, labels = _source(d, "val")
        self.dataset = _Images(load, labels, False, d.rrc_scale_min, *mean_std(d.dataset))
        self.indices = subset_indices(len(labels), d.val_subset)
        self.num_examples = len(self.indices)
        self.batch_size, self.num_workers = d.val_batch_size, d.num_workers

    def __len__(self) -> int:
        return -(-len(val_shard(self.indices, self.rank, self.world_size)) // self.batch_size)

    def batches(self, limit: int = 0):
        """This rank's part of the first ``limit`` val images (0: all of them)."""
        items = [(int(i), -1, self.res) for i in val_shard(self.indices, self.rank, self.world_size, limit)]
        if not items:
            return
        batches = [items[k:k + self.batch_size] for k in range(0, len(items), self.batch_size)]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", generator=_own_generator())
        for images, labels in loader:
            yield _to_device(images, labels, self.device)

    def __iter__(self):
        return self.batches()


def build_torchvision_loaders(cfg: DictConfig, device: torch.device, rank: int, world_size: int):
    return TorchvisionTrainLoader(cfg, device, rank, world_size), TorchvisionValLoader(cfg, device, rank, world_size)
