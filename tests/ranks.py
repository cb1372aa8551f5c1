"""Several ranks in a test: a probe script under ``torch.distributed.run`` on this machine
(gloo on CPU, one process per rank, one process group), given a plan of runs as JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_ranks(script: str, plan: list[dict], folder: Path, ranks: int = 2, timeout: int = 600) -> str:
    """``python -m torch.distributed.run --standalone --nproc_per_node=RANKS tests/SCRIPT folder/plan.json``
    (one thread per rank, the checkout importable); its stdout + stderr.  Fails the test, with
    the end of its stderr, when it exits non-zero."""
    (folder / "plan.json").write_text(json.dumps(plan))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                           str(ROOT / "tests" / script), str(folder / "plan.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr
