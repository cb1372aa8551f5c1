"""What ``train.deterministic`` needs before CUDA starts: cuBLAS's fixed workspace.

cuBLAS gives the same bits run to run only with a fixed workspace configuration,
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` or ``:16:8`` (PyTorch's reproducibility notes; without one,
``torch.use_deterministic_algorithms`` warns or raises on the first cuBLAS matrix product).
PyTorch reads the variable once, when a process first sets up a cuBLAS workspace, so it must be
in the environment before the process touches CUDA: :class:`~imagenet_repro.train.loop.Trainer`
calls :func:`fix_cublas_workspace` first thing, before it picks and binds its device.  A value
the user set that is one of the two deterministic ones is kept; any other is replaced.  The
manifest records the variable (:mod:`imagenet_repro.train.manifest`).
"""
from __future__ import annotations

import os
import warnings

import torch

CUBLAS_WORKSPACE_VAR = "CUBLAS_WORKSPACE_CONFIG"
DETERMINISTIC_WORKSPACES = (":4096:8", ":16:8")


def fix_cublas_workspace(deterministic: bool) -> None:
    """With ``deterministic``, make sure CUBLAS_WORKSPACE_CONFIG is a deterministic value (set
    ``:4096:8`` unless it already is one); without, change nothing."""
    if not deterministic or os.environ.get(CUBLAS_WORKSPACE_VAR) in DETERMINISTIC_WORKSPACES:
        return
    if torch.cuda.is_initialized():  # a second Trainer in one process, after a CUDA one
        warnings.warn(f"train.deterministic: CUDA started before {CUBLAS_WORKSPACE_VAR} was set; cuBLAS may "
                      f"keep its first workspace (start a fresh process for an exactly reproducible run)",
                      stacklevel=2)
    os.environ[CUBLAS_WORKSPACE_VAR] = DETERMINISTIC_WORKSPACES[0]
