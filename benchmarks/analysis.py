"""Benchmark: aggregate + figures + report over a synthetic sweep of the paper's grid size.

2 optimizers x 7 lr x 8 wd x 5 seeds = 560 runs, each ImageNet-sized: 16 epochs x 1250
steps = 20,000 rows of steps.parquet, layers.parquet every 100 steps x 53 normalized layers
(ResNet-50), 16 eval rows.  The largest lr diverges on seed 0.  Target: aggregate (with the
paired statistics and time-to-target) + figures + report.html in <= 30 s on 2 cores.  Generation is timed apart.  Baseline of the same run: reading the
same parquet columns with pyarrow and nothing else (the I/O floor aggregation must pay).
The files were just written, so they are read from the page cache.

    python benchmarks/analysis.py [--keep DIR]   -> results/bench/analysis.json
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import pyarrow.parquet as pq  # noqa: E402
from synthetic_runs import describe, write_grid, write_spec  # noqa: E402

from imagenet_repro.files import atomic_write_text

OPTIMIZERS = ("sgd", "sgdc")
LRS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
WDS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3)
SEEDS = (0, 1, 2, 3, 4)
EPOCHS, STEPS_PER_EPOCH, LAYER_EVERY, N_LAYERS = 16, 1250, 100, 53
BUDGET_S = 30.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", help="generate into this folder and keep it (default: a temporary folder)")
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "analysis.json"))
    args = p.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_analysis_"))
    try:
        t0 = time.perf_counter()
        dirs = write_grid(work / "runs", "bench", optimizers=OPTIMIZERS, lrs=LRS, wds=WDS, seeds=SEEDS,
                          diverge_lr=max(LRS), n_steps=EPOCHS * STEPS_PER_EPOCH, epochs=EPOCHS,
                          layer_every=LAYER_EVERY, n_layers=N_LAYERS)
        generation_s = time.perf_counter() - t0
        spec = write_spec(work / "bench.yaml", "bench", work / "runs")
        disk = sum(f.stat().st_size for d in dirs for f in d.iterdir())

        t0 = time.perf_counter()
        from imagenet_repro.analysis.aggregate import EVAL_READ_COLUMNS, STEP_READ_COLUMNS, aggregate_sweep
        from imagenet_repro.analysis.figures import make_figures
        from imagenet_repro.analysis.report import make_report
        from imagenet_repro.analysis.theory import LAYER_READ_COLUMNS
        import_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        for d in dirs:  # baseline: the bare pyarrow reads of the columns aggregation needs
            pq.read_table(d / "steps.parquet", columns=STEP_READ_COLUMNS, use_threads=False)
            pq.read_table(d / "layers.parquet", columns=LAYER_READ_COLUMNS, use_threads=False)
            pq.read_table(d / "eval.parquet", columns=EVAL_READ_COLUMNS, use_threads=False)
        read_only_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        agg = aggregate_sweep(describe(spec), results_root=work / "results")
        aggregate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        files = make_figures(describe(spec), results_root=work / "results")
        figures_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = make_report(describe(spec), results_root=work / "results")
        report_s = time.perf_counter() - t0
        total = aggregate_s + figures_s + report_s
        result = {
            "n_runs": len(dirs), "grid": {"optimizers": len(OPTIMIZERS), "lr": len(LRS), "wd": len(WDS),
                                          "seeds": len(SEEDS)},
            "steps_rows_per_run": EPOCHS * STEPS_PER_EPOCH, "layer_rows_per_run": EPOCHS * STEPS_PER_EPOCH // LAYER_EVERY * N_LAYERS,
            "disk_mb": round(disk / 2**20, 1), "counts": agg.counts,
            "curve_rows": int(len(agg.curves)), "figure_files": len(files),
            "generation_s": round(generation_s, 2), "import_s": round(import_s, 2),
            "baseline_read_only_s": round(read_only_s, 2), "aggregate_s": round(aggregate_s, 2),
            "figures_s": round(figures_s, 2), "report_s": round(report_s, 2),
            "report_mb": round(report.stat().st_size / 2**20, 2), "paired_rows": int(len(agg.paired)),
            "aggregate_figures_report_s": round(total, 2),
            "aggregate_over_read_only": round(aggregate_s / read_only_s, 2),
            "budget_s": BUDGET_S, "within_budget": total <= BUDGET_S,
            "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                        "load_average_1_5_15min_at_end": [round(v, 2) for v in __import__("os").getloadavg()],
                        "note": "files just written (page cache warm); 2 worker threads"},
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
