"""What both loader backends (FFCV and torchvision) share, so they compute the same thing:
normalisation constants (each data set's, from its registry entry: :mod:`imagenet_repro.data.datasets`), ffcv-imagenet's progressive resolution, the per-rank batch
geometry of DDP (``data.batch_size`` is global, drop_last), subsets and the label check."""
from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from imagenet_repro.data import datasets
from imagenet_repro.data.datasets import imagenet
from imagenet_repro.errors import ConfigError

IMAGENET_MEAN = np.array(imagenet.IMAGENET_MEAN) * 255
IMAGENET_STD = np.array(imagenet.IMAGENET_STD) * 255
VAL_CROP_RATIO = 224 / 256
RES_STEP = 32  # progressive resolutions are rounded to a multiple of this, as ffcv-imagenet


def mean_std(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel normalisation constants on the 0..255 scale for ``data.dataset`` (its registry entry)."""
    return datasets.mean_std(dataset)


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


# The loaders' image buffers: ffcv keeps batches_ahead (3) + 2 batches in flight, each as the
# decoded uint8 RGB batch and its normalised float32 copy (the torchvision DataLoader holds
# fewer: 2 per worker); their size is what a resolution or batch size costs before the model.
BUFFER_SLOTS = 5
BYTES_PER_PIXEL = 3 * (1 + 4)


def loader_bytes(d: DictConfig, world_size: int) -> int:
    """Bytes of the train and val loaders' image buffers on one rank (see :data:`BUFFER_SLOTS`)."""
    train = max(1, d.batch_size // world_size) * d.max_res ** 2
    val = d.val_batch_size * d.val_res ** 2
    return (train + val) * BYTES_PER_PIXEL * BUFFER_SLOTS


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(d: DictConfig, world_size: int) -> None:
    """ConfigError when the loaders' buffers alone exceed this machine's available memory."""
    need, have = loader_bytes(d, world_size), available_memory()
    if have is not None and need > have:
        raise ConfigError(f"data.max_res={d.max_res} / data.val_res={d.val_res} with data.batch_size={d.batch_size} "
                          f"/ data.val_batch_size={d.val_batch_size}: the loaders' buffers need "
                          f"{need / 2**30:.1f} GiB, this machine has {have / 2**30:.1f} GiB available "
                          f"(lower the resolutions or the batch sizes)")


def subset_indices(n: int, subset: int) -> np.ndarray:
    return np.arange(min(n, subset) if subset > 0 else n, dtype=np.int64)


def val_shard(indices: np.ndarray, rank: int, world_size: int, limit: int = 0) -> np.ndarray:
    """Rank ``rank``'s part of the first ``limit`` of ``indices`` (0: all of them): contiguous,
    disjoint blocks in order (``np.array_split``), not padded, so that the ranks together
    evaluate each image exactly once (a rank may get none).  FFCV's own distributed mode and
    torch's DistributedSampler pad the set to a multiple of the ranks, counting some images twice."""
    chosen = indices[:limit] if limit > 0 else indices
    return np.array_split(np.asarray(chosen), world_size)[rank]


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


def check_labels_array(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Same rule for labels already in memory (torchvision backend)."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(f"{where} has labels {int(labels.min())}..{int(labels.max())}, outside "
                          f"[0, data.num_classes={num_classes}): set data.num_classes to {int(labels.max()) + 1}")
