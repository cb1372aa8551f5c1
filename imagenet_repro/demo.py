"""``repro demo``: the whole path on the embedded default, on CPU.

Fashion-MNIST (``$FASHION_MNIST_DIR``, Debian's ``dataset-fashion-mnist`` or torchvision's
download: :func:`~imagenet_repro.data.imagefolder.fashion_mnist_source`) -> FFCV ``.beton`` files -> the grid in
``sweeps/demo.yaml`` through ``repro sweep`` (SLURM if ``sbatch`` is on PATH, else
submitit's local executor) -> ``repro aggregate`` -> ``repro figures`` -> ``repro report``
(``results/demo/report.html``) into ``results/demo/``.
Each stage is skipped when its output is already there, so a re-run only redoes what is missing.
"""
from __future__ import annotations

import time
from pathlib import Path

from imagenet_repro.analysis.aggregate import aggregate_sweep
from imagenet_repro.analysis.figures import make_figures
from imagenet_repro.analysis.report import make_report
from imagenet_repro.data import writer
from imagenet_repro.sweep.launcher import launch
from imagenet_repro.sweep.spec import load_spec

DATA_DIR = Path("data/fashion_mnist")


def run_demo(spec: str, cluster: str = "auto") -> int:
    t0 = time.monotonic()
    if not all((DATA_DIR / f).exists() for f in ("train.beton", "val.beton")):
        print(f"demo: writing Fashion-MNIST to {DATA_DIR}/ (train.beton, val.beton)", flush=True)
        writer.write_fashion_mnist(DATA_DIR, source=None, size=32, num_workers=2)  # fashion_mnist_source()
    print(f"demo: sweep {spec}", flush=True)
    code = launch(spec, cluster=cluster, dry_run=False, only=[], wait=True)
    print("demo: aggregate, figures and report", flush=True)
    sweep = load_spec(spec).sweep_dir  # its sweep.json, written by the launcher
    aggregate_sweep(sweep, results_root="results")
    make_figures(sweep, results_root="results")
    report = make_report(sweep, results_root="results")
    print(f"demo: finished in {(time.monotonic() - t0) / 60:.1f} min; see results/demo/ and {report}", flush=True)
    return code
