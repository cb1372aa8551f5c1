"""Make ``import torchvision`` (and hence ``import timm``) work beside a CPU-only torch.

Every x86_64 torchvision wheel on PyPI is a CUDA build.  Next to the CPU build of
torch its compiled extension ``torchvision/_C.so`` fails to load, and torchvision's
Python code then registers fake kernels for ``torchvision::nms`` / ``torchvision::qnms``
whose schemas were never defined, so the import dies with::

    RuntimeError: operator torchvision::nms does not exist

This module defines those two schemas *only when* ``_C`` cannot be loaded, before the
first torchvision import.  Models, ``transforms.v2`` and ``ImageFolder`` then work; the
compiled ops (``torchvision.ops.nms``, ``torchvision.io.decode_jpeg``) stay unavailable,
which this project never uses.  Where ``_C`` loads (a matching CUDA torch on a cluster,
or a CPU torchvision build) this is a no-op.

``import imagenet_repro`` arms it lazily: a meta-path hook runs :func:`install` just
before the first ``import torchvision`` (timm's included), so commands that never touch
torchvision (``repro status``, ``repro --help``) do not pay for importing torch.
"""
from __future__ import annotations

import importlib.util
import os

from imagenet_repro._before_import import run_before_first_import

_LIBRARY = None  # keeps the torch.library.Library alive (dropping it unregisters the ops)


def _torchvision_extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to fix
    import torch

    for folder in spec.submodule_search_locations:
        for name in os.listdir(folder):
            if name.startswith("_C.") and name.endswith((".so", ".pyd")):
                try:
                    torch.ops.load_library(os.path.join(folder, name))
                    return True
                except (OSError, RuntimeError):
                    return False
    return False


def install() -> bool:
    """Register the missing op schemas if needed. Returns True if it had to."""
    global _LIBRARY
    if _LIBRARY is not None or _torchvision_extension_loads():
        return False
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
    return True


def arm() -> None:
    run_before_first_import("torchvision", install)
