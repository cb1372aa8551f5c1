"""Rehearsal cost: ``repro sweep sweeps/paper_fig5.yaml --rehearse`` at CPU scale (2 ranks,
the real ResNet-50, every variant run three times: reference, killed, resumed), end to end
as a user runs it, through SLURM when a cluster answers, else the local executor.

The synthetic ImageNet-shaped dataset is built once and cached under the rehearsal root
(timed apart: the first rehearsal of a spec pays it once); the rehearsal itself is then timed
with the cache warm, which is what a user pays again after changing a config.  Target: the
warm rehearsal in <= 5 min on 2 cores.  Baseline in
the same run: one bare 2-rank ``torch.distributed.run`` of ``repro train`` on the same
shrunk config (one run of the nine process starts a 2-variant rehearsal makes), so the
JSON also gives the rehearsal as a multiple of one run.  That run is timed twice more with
an empty, then a warm, numba cache (``NUMBA_CACHE_DIR``): the compilation every rank of every job
paid before :mod:`imagenet_repro._numba_cache`, as a ratio.
Writes results/bench/rehearse.json.

    python benchmarks/rehearse.py [--spec sweeps/paper_fig5.yaml]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imagenet_repro.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "bench" / "rehearse.json"


def timed(args: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, **kw)
    return time.perf_counter() - t0, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="sweeps/paper_fig5.yaml")
    args = ap.parse_args()
    repro = [sys.executable, "-m", "imagenet_repro"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rehearsal"
        from imagenet_repro.sweep.rehearse import rehearsal_data
        from imagenet_repro.sweep.spec import load_spec, resolve_runs

        t0 = time.perf_counter()
        rehearsal_data(root, resolve_runs(load_spec(REPO / args.spec))[0].config)
        data_s = time.perf_counter() - t0
        warm_s, warm = timed([*repro, "sweep", args.spec, "--rehearse", "--rehearse-root", str(root)])
        if warm.returncode != 0:
            raise SystemExit(f"rehearsal failed:\n{warm.stdout[-3000:]}{warm.stderr[-3000:]}")
        table = [ln for ln in warm.stdout.splitlines() if ln.startswith(("variant", "optimizer=", "seed="))]
        # baseline: one reference run of the first variant, by hand, 2 ranks over gloo
        config = next((root / "runs").glob("*/*/config.yaml"))
        one_run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m",
                   "imagenet_repro", "train", str(config), "--out"]
        base_s, base = timed([*one_run, str(Path(tmp) / "one-run")])
        if base.returncode != 0:
            raise SystemExit(f"baseline run failed:\n{base.stderr[-3000:]}")
        # the same run with numba's cache empty (imagenet_repro/_numba_cache.py): what every rank of
        # every job compiled again before that cache, then warm again, in the same folder
        starts = {}
        numba_env = dict(os.environ, NUMBA_CACHE_DIR=str(Path(tmp) / "numba"))
        for label in ("cold", "warm"):
            starts[label], proc = timed([*one_run, str(Path(tmp) / f"one-run-{label}")], env=numba_env)
            if proc.returncode != 0:
                raise SystemExit(f"{label}-cache run failed:\n{proc.stderr[-3000:]}")
    cluster = re.search(r"cluster (\w+);", warm.stdout)
    result = {
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "spec": args.spec,
        "cluster": cluster.group(1) if cluster else None,
        "synthetic_data_build_s": round(data_s, 1),
        "rehearsal_warm_s": round(warm_s, 1),
        "target_warm_s": 300,
        "target_met": warm_s <= 300,
        "baseline_one_2rank_run_s": round(base_s, 1),
        "warm_over_one_run": round(warm_s / base_s, 2),
        "one_run_numba_cache_cold_s": round(starts["cold"], 1),
        "one_run_numba_cache_warm_s": round(starts["warm"], 1),
        "numba_cache_warm_over_cold": round(starts["warm"] / starts["cold"], 2),
        "table": table,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
