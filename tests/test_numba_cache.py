"""imagenet_repro/_numba_cache.py: numba's on-disk cache for the code every FFCV process compiled
again (numba's typed-dict functions that `import ffcv` compiles, the suite's own kernels), and an
uncached fallback where numba has nowhere to write."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from imagenet_repro._numba_cache import cached_njit

REPO = Path(__file__).resolve().parents[1]


def test_import_ffcv_and_the_seeded_kernels_fill_numba_cache_folder(tmp_path):
    """A fresh process: `import ffcv` (through imagenet_repro's hook) and a seeded crop leave their
    compiled code in NUMBA_CACHE_DIR; a second process loads it (the index is not rewritten)."""
    code = ("import imagenet_repro, ffcv\n"
            "from imagenet_repro.data.seeding import random_crop, sample_key\n"
            "import numpy as np\n"
            "print(random_crop(sample_key(np.int64(7), np.int64(3)), 375, 500, 0.08, 1.0, -0.28, 0.28))\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    index = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in (tmp_path / "numba").rglob("*.nbi")}
    names = " ".join(str(p) for p in index)
    assert "typeddict._make_dict" in names and "typeddict._setitem" in names, names
    assert "seeding.random_crop" in names, names
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and second.stdout == first.stdout, second.stderr[-2000:]
    again = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in (tmp_path / "numba").rglob("*.nbi")}
    assert again == index  # loaded, not compiled and saved again


def test_a_kernel_numba_cannot_cache_is_compiled_without_the_cache():
    scope: dict = {}
    exec("def twice(x):\n    return 2 * x\n", scope)  # no source file: numba has no cache locator for it
    kernel = cached_njit()(scope["twice"])
    assert kernel(np.int64(21)) == 42


def test_the_hook_is_armed_by_importing_the_package_without_importing_numba():
    out = subprocess.run([sys.executable, "-c", "import sys, imagenet_repro; print('numba' in sys.modules)"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
