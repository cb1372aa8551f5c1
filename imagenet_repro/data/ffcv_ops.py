"""FFCV operations made reproducible, and a GPU normalisation that needs no cupy.

ffcv 1.0.2's ``RandomResizedCropRGBImageDecoder`` and ``RandomHorizontalFlip`` draw from
numba's global ``np.random`` inside ``prange`` loops: the state is per thread, seeded
from OS entropy, and the sample-to-thread assignment varies, so two runs with the same
seed get different crops.  The subclasses below keep ffcv's decode/resize code and only
replace the draws by :mod:`imagenet_repro.data.seeding`'s counter-based stream keyed by
``(epoch key, sample index)``.  The epoch key lives in an :class:`EpochKey` that the
compiled code reads once per batch (a numba ``objmode`` call; closure arrays would be
frozen at compile time), so nothing is recompiled between epochs.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Callable, Optional, Tuple

import numpy as np
import torch
from ffcv.fields.rgb_image import IMAGE_MODES, RandomResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from ffcv.traversal_order.base import TraversalOrder
from numba import objmode, prange
from numba.core.errors import NumbaWarning

from imagenet_repro._numba_cache import cached_njit
from imagenet_repro.data.seeding import flip_coin, random_crop, sample_key

_KEY_MASK = (1 << 63) - 1
# The objmode block only reads the key; the per-sample loop still runs without the GIL.
warnings.filterwarnings("ignore", message="Code running in object mode won't allow parallel", category=NumbaWarning)


class EpochKey:
    """Mutable holder of the current epoch's 63-bit key, read by the compiled ops."""

    def __init__(self) -> None:
        self.value = 0

    def set(self, key: int) -> None:
        self.value = int(key) & _KEY_MASK

    def get(self) -> int:
        return self.value


class SeededRandomResizedCropRGBImageDecoder(RandomResizedCropRGBImageDecoder):
    """ffcv's RandomResizedCrop decoder with crops drawn from ``(epoch key, sample index)``."""

    def __init__(self, output_size: tuple[int, int], key: EpochKey, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        super().__init__(output_size, scale=scale, ratio=ratio)
        self.key = key

    def generate_code(self) -> Callable:
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        s_lo, s_hi = float(self.scale[0]), float(self.scale[1])
        r_lo, r_hi = float(np.log(self.ratio[0])), float(np.log(self.ratio[1]))
        key = self.key

        def decode(batch_indices, my_storage, metadata, storage_state):
            with objmode(epoch_key="int64"):
                epoch_key = key.get()
            destination, temp_storage = my_storage
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                if field["mode"] == jpg:
                    temp_buffer = temp_storage[dst_ix]
                    imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                    selected_size = 3 * height * width
                    temp_buffer = temp_buffer.reshape(-1)[:selected_size]
                    temp_buffer = temp_buffer.reshape(height, width, 3)
                else:
                    temp_buffer = image_data.reshape(height, width, 3)
                skey = sample_key(epoch_key, source_ix)
                i, j, h, w = random_crop(skey, np.int64(height), np.int64(width), s_lo, s_hi, r_lo, r_hi)
                resize_crop_c(temp_buffer, i, i + h, j, j + w, destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


def _flip_batch(images, dst, indices, epoch_key, prob):
    """Each image of the batch mirrored left-right or copied, by its own coin."""
    for i in prange(images.shape[0]):
        if flip_coin(sample_key(epoch_key, indices[i]), prob):
            dst[i] = images[i, :, ::-1]
        else:
            dst[i] = images[i]
    return dst


# Compiled once per machine and kept on disk (numba's cache): a closure FFCV compiles in every
# process took seconds to compile there; prange is a plain range in the serial one.
_flip_images = cached_njit()(_flip_batch)
_flip_images_parallel = cached_njit(parallel=True)(_flip_batch)


class SeededRandomHorizontalFlip(Operation):
    """ffcv's RandomHorizontalFlip with the coin drawn from ``(epoch key, sample index)``."""

    def __init__(self, key: EpochKey, flip_prob: float = 0.5):
        super().__init__()
        self.key = key
        self.flip_prob = flip_prob

    def generate_code(self) -> Callable:
        parallel = Compiler.get_iterator() is not range
        flip_images = _flip_images_parallel if parallel else _flip_images
        prob = float(self.flip_prob)
        key = self.key

        def flip(images, dst, indices):
            with objmode(epoch_key="int64"):
                epoch_key = key.get()
            return flip_images(images, dst, indices, epoch_key, prob)

        flip.is_parallel = False  # a serial shell: the loop is in flip_images (prange with several threads)
        flip.with_indices = True
        return flip

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        return replace(previous_state, jit_mode=True), AllocationQuery(previous_state.shape, previous_state.dtype)


class TorchNormalizeImage(Operation):
    """``(x - mean) / std`` of a uint8 channels-last NCHW CUDA batch into float32, in torch.

    Same result as ffcv's NormalizeImage GPU path, which needs cupy and
    pytorch-pfn-extras; used when those are not installed.  Writes into a buffer that
    ffcv allocates per batch slot, so it is safe with ffcv's side CUDA streams.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.mean_np, self.std_np = np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def generate_code(self) -> Callable:
        mean, std = self.mean, self.std

        def normalize(images, dst):
            b, c, h, w = images.shape
            out = dst[:b].view(b, h, w, c).permute(0, 3, 1, 2)  # channels_last view of the slot
            out.copy_(images)
            out.sub_(mean).div_(std)
            return out

        return normalize

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        device = previous_state.device
        self.mean = torch.from_numpy(self.mean_np).view(1, -1, 1, 1).to(device)
        self.std = torch.from_numpy(self.std_np).view(1, -1, 1, 1).to(device)
        return (replace(previous_state, dtype=torch.float32, jit_mode=False),
                AllocationQuery(previous_state.shape, dtype=torch.float32, device=device))


class PlannedOrder(TraversalOrder):
    """Traversal order that returns the order the caller planned for the next epoch.

    The loaders compute each epoch's order themselves (see ``seeding.epoch_order``), so
    sharding, subsets and skipped batches are applied before ffcv sees the indices.
    """

    def __init__(self, loader) -> None:
        super().__init__(loader)
        self.planned: np.ndarray = np.asarray(loader.indices)

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.planned
