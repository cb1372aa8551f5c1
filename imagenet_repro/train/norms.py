"""The L2 norms of two tensor lists, each with ``torch._foreach_norm``; on CPU the two at once.

On CUDA :func:`norm_pair` issues the two foreach kernels one after the other (they are
asynchronous: nothing waits).  On CPU ``torch._foreach_norm`` runs each tensor's reduction on
one core and is memory-bound (about 9 ms over ResNet-50's 25.6M weights on this machine), so
with more than one intra-op thread the second list's norms run in a helper thread while the
caller computes the first's (``torch`` releases the GIL inside the kernel): for ResNet-50's
gradients + weights 21 -> 14 ms alone, 25 -> 20 ms right after a backward pass (whose OpenMP
worker still spins on one core for a few ms; ``benchmarks/telemetry.py``).  Each tensor's norm is the same kernel on the same data either way, so
the values are bit-identical to the sequential ones (``tests/test_norms.py``), whatever the
thread count; a BLAS dot per tensor would be faster still, but MKL's ``sdot`` changes its last
bits with the thread count and the data's alignment.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid that made it, one worker thread)


def _helper() -> ThreadPoolExecutor:
    """The helper thread of this process (a forked child makes its own: threads do not fork)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagenet_repro-norms"))
    return _pool[1]


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():  # grad mode is per thread
        return torch.stack(torch._foreach_norm(tensors)).float()


def concurrent_on(device: torch.device) -> bool:
    """Whether :func:`norm_pair` splits its work over two threads on ``device``."""
    return device.type == "cpu" and torch.get_num_threads() > 1


def norm_pair(first: list[torch.Tensor], second: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(‖t‖ for t in first)``, ``(‖t‖ for t in second)``: two float32 vectors on the tensors' device."""
    if not first or not second or not concurrent_on(first[0].device):
        return _norms(first), _norms(second)
    later = _helper().submit(_norms, second)
    try:
        here = _norms(first)
    finally:
        there = later.result()  # waits even if ours failed: the helper never outlives its inputs' use
    return here, there
