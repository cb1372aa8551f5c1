"""Deterministic epoch orders and per-sample random keys, shared by both backends.

Exact mid-epoch resume needs the batches of epoch ``e`` to be a pure function of
``(seed, epoch)``: the order is a permutation drawn from ``(seed, epoch)`` and every
random augmentation of a sample is drawn from a counter-based generator keyed by
``(seed, epoch, sample index)``.  Nothing depends on which thread or worker process
decodes a sample, on how many batches were skipped, or on what ran before.

The compiled functions are ``cache=True`` (numba's on-disk cache): every rank of every job
calls them from FFCV's pipelines, and compiling them again each time cost seconds per process.
"""
from __future__ import annotations

import numpy as np

from imagenet_repro._numba_cache import cached_njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53


def epoch_key(seed: int, epoch: int) -> int:
    """64-bit key of one epoch of one run (SeedSequence mixing of ``(seed, epoch)``)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), 0xDA7A]).generate_state(1, np.uint64)[0])


@cached_njit()
def splitmix64(x):
    """SplitMix64 finaliser: a bijective 64-bit mix (uint64 in, uint64 out)."""
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@cached_njit()
def sample_key(key, index):
    """Key of one sample within an epoch."""
    return splitmix64(np.uint64(key) ^ splitmix64(np.uint64(index)))


@cached_njit()
def uniform(skey, counter):
    """The ``counter``-th uniform in [0, 1) of a sample's stream (counter-based, stateless)."""
    return float(splitmix64(skey + np.uint64(counter) * _GOLDEN) >> _S11) * _INV53


@cached_njit()
def random_crop(skey, height, width, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi):
    """torchvision/ffcv RandomResizedCrop box ``(i, j, h, w)`` from a sample's stream."""
    area = height * width
    for attempt in range(10):
        c = 4 * attempt
        target_area = area * (scale_lo + (scale_hi - scale_lo) * uniform(skey, c))
        aspect = np.exp(log_ratio_lo + (log_ratio_hi - log_ratio_lo) * uniform(skey, c + 1))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(uniform(skey, c + 2) * (height - h + 1))
            j = int(uniform(skey, c + 3) * (width - w + 1))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < np.exp(log_ratio_lo):
        w = width
        h = int(round(w / np.exp(log_ratio_lo)))
    elif in_ratio > np.exp(log_ratio_hi):
        h = height
        w = int(round(h * np.exp(log_ratio_hi)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


FLIP_COUNTER = 1000  # stream position of the flip coin, clear of the crop draws


@cached_njit()
def flip_coin(skey, prob):
    return uniform(skey, FLIP_COUNTER) < prob


def epoch_order(indices: np.ndarray, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This rank's sample order for ``epoch``: a ``(seed, epoch)`` permutation, sharded like
    torch's DistributedSampler (padded by wrap-around to a multiple of ``world_size``)."""
    perm = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)]).permutation(np.asarray(indices))
    if world_size > 1:
        total = -(-len(perm) // world_size) * world_size
        perm = np.resize(perm, total)  # wrap-around padding, as DistributedSampler
        perm = perm[rank::world_size]
    return perm


@cached_njit()
def sample_keys(key, indices):
    """:func:`sample_key` of every index (vectorised, for the torchvision backend)."""
    out = np.empty(len(indices), dtype=np.uint64)
    for k in range(len(indices)):
        out[k] = sample_key(np.uint64(key), np.uint64(indices[k]))
    return out
