"""norm_pair: the two lists' norms, on CPU in two threads, bit-identical to the sequential ones."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from imagenet_repro.train import norms


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _tensors(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 3, 7, 7), (64,), (256, 64, 1, 1), (1000, 2048), (3,), (2, 5, 3)]
    return [torch.randn(s, generator=g) * (i + 1) for i, s in enumerate(shapes)]


def _sequential(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(tensors)).float()


@pytest.mark.parametrize("threads", [1, 2])
def test_norm_pair_is_bit_identical_to_sequential_foreach_norm(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = _tensors(0), _tensors(1)[::-1]
        first, second = norms.norm_pair(a, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(first, _sequential(a)) and torch.equal(second, _sequential(b))
    assert first.dtype == second.dtype == torch.float32 and first.shape == (len(a),)


def test_the_second_list_runs_in_the_helper_thread_on_cpu(two_threads, monkeypatch):
    seen = []
    real = norms._norms

    def spy(tensors):
        seen.append((len(tensors), threading.current_thread().name))
        return real(tensors)

    monkeypatch.setattr(norms, "_norms", spy)
    norms.norm_pair(_tensors(0)[:2], _tensors(1))
    by_length = dict(seen)
    assert len(seen) == 2 and by_length[2] == threading.current_thread().name
    assert by_length[6].startswith("imagenet_repro-norms")


def test_one_thread_or_another_device_is_sequential(two_threads):
    assert norms.concurrent_on(torch.device("cpu"))
    assert not norms.concurrent_on(torch.device("cuda"))  # CUDA kernels are asynchronous already
    assert not norms.concurrent_on(torch.device("meta"))
    torch.set_num_threads(1)
    assert not norms.concurrent_on(torch.device("cpu"))


def test_the_helper_computes_without_a_graph(two_threads):
    """Grad mode is per thread: the helper's norms of leaves that require grad build no graph."""
    a = [t.requires_grad_() for t in _tensors(0)]
    b = [t.requires_grad_() for t in _tensors(1)]
    with torch.no_grad():
        first, second = norms.norm_pair(a, b)
    assert not first.requires_grad and not second.requires_grad


@pytest.mark.parametrize("bad", ["first", "second"])
def test_an_error_in_either_list_reaches_the_caller(two_threads, bad):
    good, wrong = _tensors(0), [torch.arange(5)]  # an integer tensor has no float norm
    pair = (wrong, good) if bad == "first" else (good, wrong)
    with pytest.raises(RuntimeError):
        norms.norm_pair(*pair)
    first, second = norms.norm_pair(good, good)  # the helper is still there afterwards
    assert torch.equal(first, second)


def _in_child(queue, first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    torch.set_num_threads(2)  # the kernels here are serial: no OpenMP region, which a forked child may not use
    a, b = norms.norm_pair(first, second)
    queue.put((a.tolist(), b.tolist()))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_makes_its_own_helper(two_threads):
    """Threads do not survive fork: the parent's helper is useless in the child (it would hang)."""
    first, second = _tensors(0), _tensors(1)
    norms.norm_pair(first, second)  # the parent's helper exists
    parent_helper = norms._helper()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_in_child, args=(queue, first, second), daemon=True)
    child.start()
    try:
        a, b = queue.get(timeout=60)
        child.join(timeout=60)
    finally:
        child.kill()  # a hung child must not keep pytest from exiting
    assert child.exitcode == 0
    assert a == _sequential(first).tolist() and b == _sequential(second).tolist()
    assert norms._helper() is parent_helper  # the parent keeps its own


def test_the_telemetry_benchmark_refuses_a_bad_config_in_one_line(tmp_path):
    out = tmp_path / "telemetry.json"
    root = Path(__file__).resolve().parents[1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: small_resnet\n  widths: oops\n")
    for config in (str(tmp_path / "missing.yaml"), str(bad)):
        done = subprocess.run([sys.executable, str(root / "benchmarks" / "telemetry.py"), "--config", config],
                              capture_output=True, text=True, cwd=root,
                              env={**os.environ, "TELEMETRY_BENCH_OUT": str(out)}, timeout=120)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("telemetry.py: ")
        assert not out.exists()
