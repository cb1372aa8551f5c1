"""The flagship in the shape users launch it: placement rules caught by the planner, and
``repro sweep SPEC --rehearse`` on it (real ResNet-50, 2 DDP ranks over gloo, real SLURM when
the tests' cluster is up, else submitit's local executor). Every other shipped spec and a bad
variant are rehearsed locally in tests/test_sweep_rehearse_specs.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from imagenet_repro import cli, rundir
from imagenet_repro.config import build_config, check_placement, placement_problems
from imagenet_repro.errors import ConfigError
from imagenet_repro.models import build_model
from imagenet_repro.sweep.launcher import slurm_available
from imagenet_repro.sweep.rehearse import Scale, VariantResult, choose_variants, format_table, shrink
from imagenet_repro.sweep.spec import load_spec
from imagenet_repro.train.compare import compare_runs

REPO = Path(__file__).resolve().parents[1]
FLAGSHIP = REPO / "sweeps/paper_fig5.yaml"


# ---------------------------------------------------------------------------- planner rules
def flagship_variant(tmp_path: Path, extra: str = "", slurm: str = "") -> Path:
    """sweeps/paper_fig5.yaml with extra overrides / slurm keys, runs under tmp_path."""
    text = FLAGSHIP.read_text()
    text = text.replace("runs_root: runs", f"runs_root: {tmp_path / 'runs'}")
    text = text.replace("base: experiments/imagenet_resnet50.yaml", f"base: {REPO / 'experiments/imagenet_resnet50.yaml'}")
    if extra:
        text = text.replace("overrides:\n", "overrides:\n" + extra + "\n", 1)
    for line in slurm.splitlines():
        key = line.split(":")[0].strip()
        text = "\n".join(f"  {line.strip()}" if ln.strip().startswith(key + ":") and ln.startswith("  ") else ln
                         for ln in text.splitlines())
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("extra, slurm, message", [
    ("  data.order: quasi_random", "",
     "data.order=quasi_random is not available with several ranks (ffcv 1.0; 8 ranks here): use data.order=random"),
    ("  data.batch_size: 250", "", "data.batch_size=250 is not divisible by the 8 ranks (the per-rank batch would be 31.25)"),
    ("  data.batch_size: 4", "", "data.batch_size=4 gives a per-rank batch of 0 on 8 ranks"),
    ("", "gpus_per_node: 0\ntasks_per_node: 2",
     "train.device=cuda but the run has no GPU (give the job GPUs, or train.device=cpu)"),
    ("", "nodes: 3", "data.batch_size=256 is not divisible by the 24 ranks (the per-rank batch would be 10.6667)"),
])
def test_dry_run_refuses_what_the_trainer_would_reject(tmp_path, capsys, extra, slurm, message):
    spec = flagship_variant(tmp_path, extra, slurm)
    assert cli.main(["sweep", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert message in err and "grid point optimizer=sgd lr=0.015625 wd=5e-05 seed=0" in err
    assert not (tmp_path / "runs").exists()  # nothing planned, claimed or submitted


def test_real_submission_is_refused_the_same_way(tmp_path, capsys):
    spec = flagship_variant(tmp_path, "  data.order: quasi_random")
    assert cli.main(["sweep", str(spec), "--cluster", "local"]) == 2
    assert "quasi_random" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_shipped_flagship_plans_clean(capsys, checkout_copy):
    assert cli.main(["sweep", "sweeps/paper_fig5.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "560 runs" in out and "to submit: 112 (new 112, failed 0)" in out


def flagship_config(*overrides: str):
    from omegaconf import OmegaConf

    from imagenet_repro.config import build_config

    return build_config(OmegaConf.load(REPO / "experiments/imagenet_resnet50.yaml"),
                        OmegaConf.from_dotlist(list(overrides)), check_paths=False)


def test_trainer_and_planner_share_one_rule_source():
    cfg = flagship_config("data.order=quasi_random")
    assert placement_problems(cfg, 1, True) == []
    with pytest.raises(ConfigError, match="quasi_random is not available with several ranks"):
        check_placement(cfg, 2, True)
    assert placement_problems(flagship_config(), 8, True) == []


# ---------------------------------------------------------------------------- variants
def test_cover_variants_hit_every_optimizer_and_every_extreme():
    spec = load_spec(FLAGSHIP)
    got = choose_variants(spec, "cover")
    assert got == [
        {"optim.name": "sgd", "optim.lr": 0.015625, "optim.weight_decay": 5e-5, "seed": 0},
        {"optim.name": "sgdc", "optim.lr": 1.0, "optim.weight_decay": 0.01, "seed": 0},
    ]
    corners = choose_variants(spec, "corners")
    assert len(corners) == 4 and {(p["optim.name"], p["optim.lr"]) for p in corners} == {
        ("sgd", 0.015625), ("sgd", 1.0), ("sgdc", 0.015625), ("sgdc", 1.0)}


def test_single_run_spec_has_one_variant():
    assert choose_variants(load_spec(REPO / "sweeps/fig2_flat.yaml")) == [{"seed": 0}]


def test_shrink_keeps_the_code_paths(tmp_path):
    from omegaconf import OmegaConf

    cfg = flagship_config()
    over = shrink(OmegaConf.to_container(cfg), ("t.beton", "v.beton"), Scale(ranks=2, batch_per_rank=4, gpu=False))
    assert over["data"]["batch_size"] == 8 and over["train"]["device"] == "cpu"
    assert over["data"]["start_ramp"] == 0 and over["data"]["end_ramp"] == 1  # the resolution ramp still runs
    for kept in ("optim", "model"):
        assert kept not in over


def test_shrink_scales_resolutions_down_on_cpu_only():
    """On CPU the largest resolution becomes CPU_MAX_RES, the others keep their ratio (the ramp
    still ramps); a ViT gets the size through model.kwargs.img_size; on GPUs nothing is scaled."""
    from omegaconf import OmegaConf

    from imagenet_repro.sweep.rehearse import CPU_MAX_RES, cpu_resolutions

    cfg = OmegaConf.to_container(build_config(OmegaConf.load(REPO / "experiments/imagenet_resnet50.yaml"), check_paths=False))
    d = cfg["data"]
    assert d["min_res"] < d["max_res"] < d["val_res"] and d["val_res"] > CPU_MAX_RES
    small = shrink(cfg, ("t", "v"), Scale(ranks=2, batch_per_rank=4, gpu=False))["data"]
    assert small["val_res"] == CPU_MAX_RES and small["min_res"] < small["max_res"] < small["val_res"]
    assert abs(small["max_res"] / small["val_res"] - d["max_res"] / d["val_res"]) < 0.02
    on_gpu = shrink(cfg, ("t", "v"), Scale(ranks=2, batch_per_rank=4, gpu=True))
    assert "min_res" not in on_gpu["data"] and "max_res" not in on_gpu["data"] and "model" not in on_gpu
    vit = OmegaConf.to_container(build_config(OmegaConf.load(REPO / "experiments/vit_adamc.yaml"), check_paths=False))
    over = cpu_resolutions(vit)
    assert over["data"] == {"min_res": CPU_MAX_RES, "max_res": CPU_MAX_RES, "val_res": CPU_MAX_RES}
    assert over["model"]["kwargs"] == {**vit["model"]["kwargs"], "img_size": CPU_MAX_RES}
    model = build_model(build_config(vit, {"model": over["model"]}, check_paths=False).model, 10)
    assert model(torch.zeros(1, 3, CPU_MAX_RES, CPU_MAX_RES)).shape == (1, 10)
    vit["data"]["val_res"] = 256  # a fixed-size model evaluated at another size: left as the spec says
    assert cpu_resolutions(vit) == {}
    fmnist = OmegaConf.to_container(build_config(OmegaConf.load(REPO / "experiments/demo.yaml"), check_paths=False))
    assert cpu_resolutions(fmnist) == {}  # small images stay small


def test_compare_runs_finds_a_changed_number(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        pd.DataFrame({"step": [0, 1], "loss": [2.0, 1.5], "images_per_s": [10.0, 11.0]}).to_parquet(d / rundir.STEPS)
        pd.DataFrame({"step": [0], "layer": ["x"], "ratio": [0.1]}).to_parquet(d / rundir.LAYERS)
        pd.DataFrame({"epoch": [1], "step": [2], "top1": [0.5]}).to_parquet(d / rundir.EVAL)
    pd.DataFrame({"step": [0, 1], "loss": [2.0, 1.5], "images_per_s": [99.0, 1.0]}).to_parquet(b / rundir.STEPS)
    assert compare_runs(a, b) == []  # wall-clock throughput is not compared
    pd.DataFrame({"step": [0, 1], "loss": [2.0, 1.5000001], "images_per_s": [1.0, 1.0]}).to_parquet(b / rundir.STEPS)
    problems = compare_runs(a, b)
    assert len(problems) == 1 and problems[0].startswith("steps.parquet differs after resume")


def test_table_layout():
    text = format_table([VariantResult("optimizer=sgd lr=0.1", 2, True, 1.234, "yes", []),
                         VariantResult("optimizer=sgdc lr=1", 2, False, float("nan"), "-", ["reference run failed"])])
    lines = text.splitlines()
    assert lines[0].split() == ["variant", "ranks", "started", "steps/s", "resumed", "exactly", "problems"]
    assert "1.23" in lines[2] and "none" in lines[2] and "NO" in lines[3] and "reference run failed" in lines[3]


def test_rehearse_rejects_bad_flags(capsys):
    assert cli.main(["sweep", str(FLAGSHIP), "--rehearse", "--dry-run"]) == 2
    assert cli.main(["sweep", str(FLAGSHIP), "--rehearse", "--ranks", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--ranks must be >= 1" in err[1]


# ---------------------------------------------------------------------------- end to end
def rehearse(spec: Path, root: Path, *args: str) -> subprocess.CompletedProcess:
    """``repro sweep SPEC --rehearse`` as a user runs it (SLURM when it answers, else local; ``args``: more options)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "imagenet_repro", "sweep", str(spec), "--rehearse",
                           "--rehearse-root", str(root), *args], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=3600)  # a hang guard, not a speed test: minutes here, more on a slower machine


def table_rows(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("variant"))
    end = next(i for i in range(start + 2, len(lines)) if not lines[i].startswith("optimizer=")
               and not lines[i].startswith("seed="))
    return lines[start + 2:end]


@pytest.mark.slow
@pytest.mark.rehearsal  # five minutes on 2 cores (six serial 2-rank ResNet-50 jobs): make test-rehearsals
def test_flagship_rehearses_clean_under_two_rank_ddp(rehearsal_root):
    """The paper's grid, real ResNet-50, 2 ranks: every variant starts, is killed after a
    mid-epoch checkpoint, resumes exactly; aggregate and figures run over the rehearsal."""
    root = rehearsal_root
    real_sweep = REPO / "runs" / "paper_fig5"
    existed = real_sweep.exists()
    proc = rehearse(FLAGSHIP, root)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"cluster {'slurm' if slurm_available() else 'local'}" in out  # the launcher's own choice
    assert "2 rank(s) on CPU over gloo (spec: 8)" in out
    rows = table_rows(out)
    assert len(rows) == 2
    for row in rows:
        assert "  2  " in row and " yes " in row and row.rstrip().endswith("none"), row
    # the time-limit signal reaching rank 1 at step 4 and rank 0 at step 5: one stop at step 4, exact resume
    assert re.search(r"^multi-rank signal \(.*2 ranks, SIGUSR2 at steps 5, 4 of ranks 0\.\.1\): every rank stopped "
                     r"at step 4, one checkpoint, resumed exactly$", out, re.M), out[-3000:]
    assert "not rehearsed here (no GPU): CUDA" in out
    assert (root / "results" / "paper_fig5" / "figures" / "fig5_training_curves.png").is_file()
    assert real_sweep.exists() == existed  # the real sweep's folder is not the rehearsal's
    cfg = (root / "runs" / "paper_fig5").glob("*/config.yaml")
    texts = [p.read_text() for p in cfg]
    assert len(texts) == 2 and all("name: resnet50" in t and "batch_size: 8" in t for t in texts)
