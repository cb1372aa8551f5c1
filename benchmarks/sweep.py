"""Sweep planning speed: ``repro sweep sweeps/paper_fig5.yaml --dry-run`` (560 runs) and
``repro status`` on a sweep of 560 synthetic run folders, each end to end as a user runs
it (a fresh ``repro`` process) and in-process (the library call alone).

Targets: dry run <= 5 s, status <= 0.5 s (the whole 560-run grid: ``--stage all``).  The baseline measured in the same run is the
interpreter start with ``import imagenet_repro`` (every ``repro`` command pays it), so
the JSON also reports each timing as a ratio to that start-up cost.
Writes results/bench/sweep.json.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imagenet_repro.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "bench" / "sweep.json"
REPRO = [sys.executable, "-m", "imagenet_repro.cli"]


def timed_process(args: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def timed_call(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        fn(*args, **kwargs)
    return time.perf_counter() - t0


def synthetic_sweep(root: Path) -> Path:
    """paper_fig5's grid under ``root``, every run folder with a status.json (mixed states)."""
    from imagenet_repro import rundir
    from imagenet_repro.sweep.spec import load_spec
    from imagenet_repro.sweep.status import run_refs

    text = (REPO / "sweeps/paper_fig5.yaml").read_text()
    text = text.replace("runs_root: runs", f"runs_root: {root / 'runs'}")
    text = text.replace("base: experiments/", f"base: {REPO}/experiments/")
    spec_path = root / "fig5.yaml"
    spec_path.write_text(text)
    spec = load_spec(spec_path)
    spec.sweep_dir.mkdir(parents=True)
    for i, ref in enumerate(run_refs(spec)):  # also writes the plan cache, as `repro sweep` does
        ref.run_dir.mkdir()
        state = ("done", "diverged", "running", "failed")[i % 4]
        rundir.write_status(ref.run_dir, state, epoch=16 if state == "done" else 7, step=1000, top1=0.71, job_id=f"9_{i}")
    return spec_path


def main() -> None:
    from imagenet_repro.cli import main as repro
    from imagenet_repro.sweep.launcher import launch

    startup, _ = timed_process([sys.executable, "-c", "import imagenet_repro"], REPO)
    dry_cli, out = timed_process([*REPRO, "sweep", "sweeps/paper_fig5.yaml", "--dry-run", "--stage", "all"], REPO)
    assert "560 runs" in out, out[:500]
    os.chdir(REPO)
    dry_lib = timed_call(launch, "sweeps/paper_fig5.yaml", dry_run=True, stage="all")
    with tempfile.TemporaryDirectory() as tmp:
        spec = synthetic_sweep(Path(tmp))
        status_cli, out = timed_process([*REPRO, "status", str(spec)], REPO)
        assert "560 runs" in out and "done 140" in out, out[:500]
        status_lib = timed_call(repro, ["status", str(spec)])
    result = {
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "baseline_python_import_imagenet_repro_s": round(startup, 3),
        "dry_run_paper_fig5_560_runs": {"cli_s": round(dry_cli, 3), "in_process_s": round(dry_lib, 3),
                                        "target_s": 5, "cli_over_startup": round(dry_cli / startup, 2)},
        "status_560_synthetic_runs": {"cli_s": round(status_cli, 3), "in_process_s": round(status_lib, 3),
                                      "target_s": 0.5, "cli_over_startup": round(status_cli / startup, 2)},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
