"""Data: the dataset registry (:mod:`imagenet_repro.data.datasets`), FFCV ``.beton`` writers
and loaders (ffcv-imagenet style), with a torchvision fallback.

``build_loaders(cfg, device, rank, world_size)`` is the trainer's entry point (see
:mod:`imagenet_repro.data.loaders`); ``writer`` holds ``repro data write``.  Importing the
package (or its torch-free registry, as ``config`` does) loads no torch: the loaders load on
first use of these names.  Heavy modules (ffcv, numba) are imported only when a loader or
writer is built.
"""
__all__ = ["build_loaders", "TrainLoader", "ValLoader"]


def __getattr__(name: str):
    if name in __all__:
        from imagenet_repro.data import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
