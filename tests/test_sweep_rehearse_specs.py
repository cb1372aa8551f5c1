"""``repro sweep SPEC --rehearse`` on every shipped spec but the flagship, and on a grid with a
bad variant: through submitit's local executor, so that each of its tests is a unit of its own in
`make test-rehearsals` (tests/conftest.py's PER_TEST_MODULES) and runs beside the cluster unit (the flagship rehearses through SLURM
there, in tests/test_sweep_rehearse.py, with the tests that restart the controller)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_sweep_rehearse import FLAGSHIP, rehearse, table_rows

REPO = Path(__file__).resolve().parents[1]


# Specs rehearsed on one rank here, to keep CI's rehearsals within their time: the multi-rank paths
# of their runs are proven elsewhere. paper_fig5_quick and _budget are the flagship's model, data
# pipeline and optimizers with other grid values and budgets, and the flagship's rehearsal
# (tests/test_sweep_rehearse.py) runs that ResNet-50 pipeline under 2-rank DDP with the multi-rank
# signal; vit_adamc's timm ViT under 2-rank DDP (gradients, loss and eval equal to one rank's) is
# tests/test_train.py's ddp_runs. A user's `make rehearse SPEC=...` runs 2 ranks (the default).
ONE_RANK = {"paper_fig5_quick.yaml", "paper_fig5_budget.yaml", "vit_adamc.yaml"}


@pytest.mark.slow
@pytest.mark.rehearsal
@pytest.mark.parametrize("spec", sorted(p.name for p in (REPO / "sweeps").glob("*.yaml") if p.name != FLAGSHIP.name))
def test_every_other_shipped_spec_rehearses_clean(spec, rehearsal_root):
    ranks = ["--ranks", "1"] if spec in ONE_RANK else []
    proc = rehearse(REPO / "sweeps" / spec, rehearsal_root, "--cluster", "local", *ranks)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed: " in proc.stdout
    if ranks:
        assert "1 rank(s) on CPU over gloo (spec: 8)" in proc.stdout


def test_the_one_rank_specs_share_the_flagships_model_and_pipeline():
    """What ONE_RANK leaves to the flagship's 2-rank rehearsal must be the same code there."""
    from imagenet_repro.sweep.spec import load_spec, resolve_runs

    def shape(name: str) -> set:
        return {(r.config["model"]["name"], r.config["data"]["backend"], r.config["data"]["dataset"], r.config["optim"]["name"])
                for r in resolve_runs(load_spec(REPO / "sweeps" / name))}

    flagship = shape(FLAGSHIP.name)
    for name in ONE_RANK - {"vit_adamc.yaml"}:
        assert shape(name) <= flagship, name
    assert {model for model, *_ in shape("vit_adamc.yaml")} == {"timm:vit_small_patch16_224"}


# ---------------------------------------------------------------------------- a bad variant
FORGETFUL = '''"""SGD whose warm-up counter lives outside the optimizer state: not checkpointed, so a
resumed run starts its warm-up over and its numbers leave the uninterrupted run's."""
from dataclasses import dataclass

import torch

from imagenet_repro.optim import OptimConfig, register_optimizer


@dataclass
class ForgetfulConfig(OptimConfig):
    name: str = "forgetful"
    momentum: float = 0.0


@register_optimizer("forgetful", config=ForgetfulConfig)
class Forgetful(torch.optim.SGD):
    def __init__(self, params, lr=0.1, weight_decay=0.0, momentum=0.0):
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
        self.calls = 0  # the bug: not in state_dict()

    @torch.no_grad()
    def step(self, closure=None):
        self.calls += 1
        for group in self.param_groups:
            group["lr"] = group["lr"] * min(1.0, self.calls / 10)
        return super().step(closure)
'''


@pytest.mark.slow
@pytest.mark.long
def test_rehearsal_exits_non_zero_on_a_bad_variant_and_corners_runs_both_corners(tmp_path):
    """`--variants corners` on a 2-optimizer x 2-lr x 2-wd grid: each optimizer at the
    all-minimum and the all-maximum corner (4 variants); the optimizer that does not checkpoint
    its state fails its kill-and-resume check in both, the other passes, the exit code is 1."""
    (tmp_path / "forgetful.py").write_text(FORGETFUL)
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\nruns_root: {tmp_path / 'runs'}\nbase: {REPO / 'experiments/demo.yaml'}\n"
                    f"overrides:\n  optim.imports: [{tmp_path / 'forgetful.py'}]\n  model.widths: [4, 8, 8]\n"
                    "  data.backend: torchvision\n"  # no FFCV pipeline to compile in each of the 12 jobs
                    "  train.eval_every_steps: 0\n  train.tensorboard: false\n"
                    "axes:\n  optimizer: [sgd, forgetful]\n  optim.lr: [0.01, 0.1]\n  optim.weight_decay: [0.0, 0.005]\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "imagenet_repro", "sweep", str(spec), "--rehearse", "--variants", "corners",
                           "--cluster", "local", "--rehearse-root", str(tmp_path / "rehearsal")],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=1800)  # 12 jobs
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:] + proc.stderr[-3000:]
    assert "rehearsal of bad: 4 variants" in out
    rows = {row.split("  ")[0].strip(): row for row in table_rows(out)}
    assert set(rows) == {f"optimizer={o} lr={lr} wd={wd}"
                         for o in ("sgd", "forgetful") for lr, wd in (("0.01", "0.0"), ("0.1", "0.005"))}, rows
    for label, row in rows.items():
        if label.startswith("optimizer=sgd"):
            assert " yes " in row and row.rstrip().endswith("none"), row
        else:
            assert " NO " in row and "differs after resume" in row, row
    assert "rehearsal of bad FAILED: 2/4 variants clean" in out
