"""Data: FFCV ``.beton`` writers and loaders (ffcv-imagenet style), with a torchvision fallback.

``build_loaders(cfg, device, rank, world_size)`` is the trainer's entry point (see
:mod:`imagenet_repro.data.loaders`); ``writer`` holds ``repro data write``.
Heavy modules (ffcv, numba) are imported only when a loader or writer is built.
"""
from imagenet_repro.data.loaders import TrainLoader, ValLoader, build_loaders

__all__ = ["build_loaders", "TrainLoader", "ValLoader"]
