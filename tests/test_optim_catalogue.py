"""The catalogue (`repro optimizers`, imagenet_repro/train/catalogue.py): every optimizer that
pytorch-optimizer and timm list by name trains a few steps with finite numbers on the demo model, or is
refused at config time in one line, or (its library's numerics at its defaults: Shampoo's inverse roots)
diverges and is reported so, never a traceback; docs/optimizer-catalogue.md is its generated table."""
from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import REPO

from imagenet_repro import cli
from imagenet_repro.train.catalogue import library_names, library_versions

DEMO = str(REPO / "experiments" / "demo.yaml")
TABLE = REPO / "docs" / "optimizer-catalogue.md"
# one optimizer per capability, and a refusal of each kind the suite itself says
ONE_PER_CAPABILITY = {
    "pytorch_optimizer:Lion": ("works", "-"),
    "pytorch_optimizer:ScheduleFreeSGD": ("works", "modes"),
    "pytorch_optimizer:Muon": ("works", "partition (use_muon)"),
    "pytorch_optimizer:AdaHessian": ("works", "create_graph"),
    "pytorch_optimizer:AliG": ("works", "closure"),
    "pytorch_optimizer:Shampoo": ("diverged", "-"),  # its defaults' inverse roots: NaN weights at step 0
    "timm:bnbadam": ("refused", "-"),
    "pytorch_optimizer:LOMO": ("refused", "-"),
}


def catalogue(tmp_path, fmnist_betons, names=(), *extra) -> tuple[int, list[dict], str]:
    data = [f"data.train_path={fmnist_betons / 'train.beton'}", f"data.val_path={fmnist_betons / 'val.beton'}"]
    args = ["optimizers", DEMO, *data, "--table", str(tmp_path / "table.md"), "--json", str(tmp_path / "trials.json"),
            *extra]
    code = cli.main(args + (["--only", *names] if names else []))
    return code, json.loads((tmp_path / "trials.json").read_text()), (tmp_path / "table.md").read_text()


def rows(table: str) -> dict[str, list[str]]:
    return {cells[0].strip("` "): [c.strip() for c in cells[1:]]
            for line in table.splitlines() if line.startswith("| `")
            for cells in [re.split(r"(?<!\\)\|", line)[1:-1]]}


def test_one_optimizer_per_capability(tmp_path, fmnist_betons, capsys):
    code, trials, table = catalogue(tmp_path, fmnist_betons, list(ONE_PER_CAPABILITY))
    assert code == 0  # (a divergence is reported, not an error: only a failure exits 1)
    by_name = {t["name"]: t for t in trials}
    table_rows = rows(table)
    for name, (outcome, needs) in ONE_PER_CAPABILITY.items():
        assert by_name[name]["outcome"] == outcome, by_name[name]
        assert table_rows[name][0] == outcome and table_rows[name][1] == needs
    assert by_name["timm:bnbadam"]["group"] == "needs CUDA (bitsandbytes, APEX)"
    assert by_name["pytorch_optimizer:LOMO"]["group"] == "takes the model, not parameter groups"
    assert by_name["pytorch_optimizer:Lion"]["corrected"] is True
    assert by_name["pytorch_optimizer:Muon"]["corrected"] is True  # the switch reaches Muon's decoupled decay
    assert by_name["pytorch_optimizer:Shampoo"]["reason"] == "non-finite loss or gradient at step 1"
    assert "8 optimizers: 5 works, 2 refused, 1 diverged, 0 failed" in capsys.readouterr().out


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert cli.main(["optimizers", DEMO, "--steps", "0", "--table", str(tmp_path / "t.md")]) == 2
    assert capsys.readouterr().err.strip() == "repro: error: --steps and --eval-images must be > 0 (got 0, 500)"
    (tmp_path / "a-file").write_text("")
    assert cli.main(["optimizers", DEMO, "--table", str(tmp_path / "a-file" / "t.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("repro: error: --table ") and len(err.splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_the_names_are_the_libraries_lists():
    names = library_names()
    import pytorch_optimizer
    import timm.optim

    assert len(names) == len(pytorch_optimizer.get_supported_optimizers()) + len(timm.optim.list_optimizers())
    assert "pytorch_optimizer:ScheduleFreeSGD" in names and "timm:nadamuon" in names


@pytest.mark.long
def test_the_whole_catalogue_trains_or_refuses_in_one_line_and_matches_the_docs_table(tmp_path, fmnist_betons):
    code, trials, table = catalogue(tmp_path, fmnist_betons)
    assert [(t["name"], t["reason"]) for t in trials if t["outcome"] == "failed"] == []  # no traceback
    assert len(trials) == len(library_names()) and all(t["outcome"] in ("works", "refused", "diverged") for t in trials)
    assert all(re.fullmatch(r"non-finite loss or gradient at step \d+", t["reason"])
               for t in trials if t["outcome"] == "diverged")  # the library's own numerics, at its defaults
    assert all("\n" not in t["reason"] and (t["reason"] or t["outcome"] == "works") for t in trials)
    committed = TABLE.read_text()
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items())
    if versions not in committed or torch.cuda.is_available():  # another environment: its own table
        pytest.skip(f"docs/optimizer-catalogue.md was made with other libraries or on CUDA (here: {versions})")
    assert rows(table) == rows(committed)
