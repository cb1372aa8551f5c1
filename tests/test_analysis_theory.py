"""Theory agreement of per-layer ||g||/||x||: exact numbers on hand-made layer tables."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_runs import write_config

from imagenet_repro.analysis.theory import (
    agreement_from_layers,
    default_window,
    main,
    summarize_agreement,
    theory_agreement,
    verdict,
)
from imagenet_repro.errors import ConfigError


def layer_table(n_logged: int = 20, every: int = 10) -> pd.DataFrame:
    """Layer A: g alternates 0.1/0.3 at x=2, r=0.1 -> rms ratio sqrt(0.05)/2, err sqrt(5)/2 - 1.
    Layer B: g = r_t x exactly with a varying r_t -> err 0.  Outside [0.5, 1) everything is 100x."""
    rows = []
    for i in range(n_logged):
        step = i * every
        junk = 100.0 if i < n_logged // 2 else 1.0
        r_t = 0.1 * (1 + i / n_logged)
        rows.append((step, "A", junk * (0.1 if i % 2 else 0.3), 2.0, 0.1))
        rows.append((step, "B", junk * r_t * 3.0, 3.0, r_t))
        rows.append((step, "C", 1.0, 1.0, math.nan))  # no theory for this layer
    return pd.DataFrame(rows, columns=["step", "layer", "grad_norm", "weight_norm", "predicted_ratio"])


def test_rms_ratio_and_window_by_hand():
    table = agreement_from_layers(layer_table(), (0.5, 1.0), total_steps=200).set_index("layer")
    assert list(table.index) == ["A", "B"]
    assert table.loc["A", "n_points"] == 10
    assert table.loc["A", "measured"] == pytest.approx(math.sqrt(0.05) / 2)
    assert table.loc["A", "rel_err"] == pytest.approx(math.sqrt(5) / 2 - 1)  # +11.8%; a median would read -50%
    assert table.loc["B", "rel_err"] == pytest.approx(0.0, abs=1e-12)
    early = agreement_from_layers(layer_table(), (0.0, 0.5), total_steps=200).set_index("layer")
    assert early.loc["B", "rel_err"] == pytest.approx(99.0)  # the junk half is really excluded above


def test_default_windows():
    assert default_window("flat") == (0.5, 1.0)
    assert default_window("cosine") == (0.2, 0.6)
    with pytest.raises(ConfigError, match="window"):
        agreement_from_layers(layer_table(), (0.6, 0.2))


def write_layers_run(run_dir: Path, schedule: str) -> Path:
    run_dir.mkdir(parents=True)
    write_config(run_dir, "sgd", 0.1, 5e-5, 0, schedule, epochs=2)
    layer_table().to_parquet(run_dir / "layers.parquet", index=False)
    pd.DataFrame({"step": np.arange(200)}).to_parquet(run_dir / "steps.parquet", index=False)
    return run_dir


def test_theory_agreement_on_a_run_dir(tmp_path, capsys):
    run_dir = write_layers_run(tmp_path / "flat", "flat")
    table = theory_agreement(run_dir)  # flat -> second half
    assert table.attrs["window"] == (0.5, 1.0)
    s = table.attrs["summary"]
    errs = [math.sqrt(5) / 2 - 1, 0.0]
    assert s["n_layers"] == 2
    assert s["median_abs_err"] == pytest.approx(np.median(errs))
    assert s["mean_err"] == pytest.approx(np.mean(errs))
    assert s["max_abs_err"] == pytest.approx(max(errs))
    cosine = theory_agreement(write_layers_run(tmp_path / "cos", "cosine"))
    assert cosine.attrs["window"] == (0.2, 0.6)
    assert main([str(run_dir), "--window", "0.5", "1"]) == 0
    out = capsys.readouterr().out
    assert "median |err| 5.9%" in out and "max |err| 11.8%" in out
    assert main([str(tmp_path / "missing")]) == 2


def test_rotation_agreement_by_hand():
    """Rotation: rms of the angle over the window against predicted_rotation; a layer with only a
    rotation prediction (Adam: no ratio theory) keeps its row with NaN ratio columns."""
    frame = layer_table()
    frame["angular_update"] = np.where(frame["layer"] == "A", 0.02, 0.01)
    frame.loc[frame.index % 6 == 0, "angular_update"] = 0.04  # A: alternating 0.04 / 0.02
    frame["predicted_rotation"] = 0.02
    table = agreement_from_layers(frame, (0.5, 1.0), total_steps=200).set_index("layer")
    assert list(table.index) == ["A", "B", "C"]
    assert table.loc["A", "rotation_measured"] == pytest.approx(math.sqrt((0.04**2 + 0.02**2) / 2))
    assert table.loc["B", "rotation_rel_err"] == pytest.approx(-0.5)
    assert math.isnan(table.loc["C", "rel_err"]) and table.loc["C", "rotation_rel_err"] == pytest.approx(-0.5)
    s = summarize_agreement(table)
    assert s["n_layers"] == 2 and s["rotation_n_layers"] == 3
    assert s["rotation_median_err"] == pytest.approx(-0.5)


def test_verdicts_in_words():
    assert verdict({"median_err": 0.1}).startswith("as the theory predicts")
    lag = verdict({"median_err": -0.4, "rotation_median_err": -0.3})
    assert "falls short" in lag and "-40%" in lag and "lag" in lag and "-30%" in lag
    assert verdict({"median_err": 0.6}).startswith("not what the theory explains")
    adam = verdict({"median_err": math.nan, "rotation_median_err": 0.05})
    assert "no closed form" in adam and "holds within ±25%" in adam
    assert "lag" in verdict({"median_err": math.nan, "rotation_median_err": -0.5})
    assert verdict({}).startswith("no theory")
