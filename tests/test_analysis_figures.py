"""Figures of a small synthetic sweep: every file exists and is a real PNG / PDF."""
from __future__ import annotations

import struct

import pandas as pd
import pytest
from synthetic_runs import describe, write_grid, write_spec

from imagenet_repro.analysis.figures import _log_label, make_figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_log_labels():
    assert _log_label(0.5) == "0.5"
    assert _log_label(5e-5) == r"$5\cdot10^{-5}$"
    assert _log_label(1e-4) == "$10^{-4}$"


@pytest.mark.slow
def test_make_figures_writes_images(tmp_path, capsys):
    write_grid(tmp_path / "runs", "fig", lrs=(0.1, 0.5, 2.0), wds=(1e-5, 5e-5), seeds=(0, 1), diverge_lr=2.0,
               n_steps=400, layer_every=20, n_layers=6)
    spec = write_spec(tmp_path / "fig.yaml", "fig", tmp_path / "runs")
    files = make_figures(describe(spec), results_root=tmp_path / "results")  # aggregates first: no tables yet
    out = tmp_path / "results" / "fig"
    assert (out / "runs.parquet").is_file() and (out / "summary.csv").is_file()
    names = {p.name for p in files}
    for stem in ("fig5_training_curves", "heatmap_top1", "fig2_layer_ratios", "layer_rotation"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
        png = (out / "figures" / f"{stem}.png").read_bytes()
        assert png[:8] == PNG_MAGIC and len(png) > 20_000
        width, height = struct.unpack(">II", png[16:24])  # IHDR
        assert width >= 800 and height >= 400
        pdf = (out / "figures" / f"{stem}.pdf").read_bytes()
        assert pdf[:5] == b"%PDF-" and b"%%EOF" in pdf[-32:] and len(pdf) > 5_000
    summary = pd.read_csv(out / "theory_summary.csv").set_index("optimizer")
    assert list(summary.index) == ["sgd", "sgdc"] and (summary["n_layers"] == 6).all()
    assert (summary["n_seeds"] == 2).all()
    per_layer = pd.read_csv(out / "theory_agreement.csv")
    assert len(per_layer) == 2 * 2 * 6  # optimizers x seeds x layers
    # the synthetic rotation is the theory's times noise with E = 1: agreement within a few %
    assert (per_layer["rotation_rel_err"].abs() < 0.25).all() and (summary["rotation_n_layers"] == 6).all()
    assert summary["verdict"].str.len().gt(40).all()
    printed = capsys.readouterr().out
    assert "theory agreement" in printed and "median |err|" in printed
