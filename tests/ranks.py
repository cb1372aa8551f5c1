"""Several ranks in a test: a probe script under ``torch.distributed.run`` on this machine
(gloo on CPU, one process per rank, one process group), given a plan of runs as JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch_ranks(script: str, plan: list[dict] | dict, folder: Path, ranks: int = 2, timeout: int = 600,
                 name: str = "plan") -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=RANKS tests/SCRIPT folder/NAME.json``
    (one thread per rank, the checkout importable; ``ranks`` 0: the script as one plain process,
    without torchrun), whatever it exits with."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps(plan))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks else []
    return subprocess.run([sys.executable, *launcher, str(ROOT / "tests" / script), str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def run_ranks(script: str, plan: list[dict], folder: Path, ranks: int = 2, timeout: int = 600) -> str:
    """:func:`launch_ranks`, failing the test (with the end of its stderr) when it exits non-zero;
    its stdout + stderr."""
    proc = launch_ranks(script, plan, folder, ranks, timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr
