"""Optimizers that need more than step(): gradients with their graph (create_graph), a closure
(SAM's family, AliG), declared per class (optim/capabilities.py) and served by the trainer, refused
where DDP cannot serve them; a user's optimizer declares its own (examples/sam_sgd.py)."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import REPO

from imagenet_repro import cli, rundir
from imagenet_repro.config import check_placement, load_config, placement_problems
from imagenet_repro.errors import ConfigError
from imagenet_repro.optim import unregister_optimizer
from imagenet_repro.optim.capabilities import Capabilities, capabilities_of
from imagenet_repro.train.closure import optimizer_step, step_closure
from imagenet_repro.train.loop import run_training

DEMO = REPO / "experiments" / "demo.yaml"
SHORT = ["train.epochs=1", "train.steps_per_epoch=6"]


@pytest.mark.parametrize("name,extra", [
    ("pytorch_optimizer:AdaHessian", ["optim.lr=0.05"]),  # create_graph
    ("timm:adahessian", ["optim.lr=0.05"]),  # create_graph (timm's is_second_order)
    ("pytorch_optimizer:AliG", ["optim.weight_decay=0"]),  # a closure that gives the loss
    ("sam_sgd", ["optim.imports=[examples/sam_sgd.py]", "optim.lr=0.1"]),  # a user's wrapper, its closure
])
def test_an_optimizer_that_needs_more_than_step_trains(tmp_path, fmnist_tiny, name, extra, monkeypatch):
    monkeypatch.chdir(REPO)  # optim.imports is relative to where repro runs
    try:
        tiny = [o for o in fmnist_tiny if not o.startswith("optim.momentum=")]  # (an SGD key)
        cfg = load_config(DEMO, tiny + SHORT + [f"optim.name={name}", *extra])
        assert run_training(cfg, tmp_path / "run") == "done"
    finally:  # as if examples/sam_sgd.py had never been imported
        unregister_optimizer("sam_sgd")
        for module in [m for m in sys.modules if m.startswith("_repro_user_sam_sgd")]:
            del sys.modules[module]
    steps = pd.read_parquet(tmp_path / "run" / rundir.STEPS)
    assert len(steps) == 6 and steps[["loss", "grad_norm"]].map(math.isfinite).all().all()
    assert math.isfinite(pd.read_parquet(tmp_path / "run" / rundir.EVAL).loss.iloc[-1])


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)).mean((2, 3))


class CountingSAM(torch.optim.SGD):
    """A closure-taking step that records what its closure gives."""

    capabilities = Capabilities(closure=True)

    def step(self, closure=None):
        self.seen = closure
        with torch.no_grad():
            self.param_groups[0]["params"][0].add_(1.0)  # a perturbation, as SAM's
        self.loss = closure()
        self.grads = [p.grad.clone() for p in self.param_groups[0]["params"]]
        return super().step()


def test_the_closure_evaluates_again_with_gradients_and_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model, x, y = _Model(), torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))
    opt = CountingSAM(model.parameters(), lr=0.1)

    def forward_loss():
        return torch.nn.functional.cross_entropy(model(x), y)

    forward_loss().backward()  # the step's first forward: BN's statistics move once
    running = model.bn.running_mean.clone(), model.bn.num_batches_tracked.clone()
    first = model.conv.weight.grad.clone()
    with torch.no_grad():
        optimizer_step(opt, capabilities_of(CountingSAM), model, forward_loss, world_size=1)
    assert opt.seen is not None and torch.is_tensor(opt.loss) and not opt.loss.requires_grad
    assert not torch.equal(opt.grads[0], first)  # recomputed at the perturbed weights, under the step's no_grad
    assert torch.equal(model.bn.running_mean, running[0]) and model.bn.num_batches_tracked == running[1]

    graph = step_closure(model, opt, forward_loss, create_graph=True, world_size=1)
    graph()
    assert model.conv.weight.grad.grad_fn is not None  # create_graph reaches the closure's backward too


def test_a_plain_optimizer_gets_no_closure():
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append((args, kwargs)))
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer_step(opt, capabilities_of(torch.optim.SGD), model, lambda: pytest.fail("no closure"), world_size=1)
    assert calls == [((opt,), {})]  # step(), nothing passed (the hook's args start with the optimizer itself)


def test_create_graph_is_refused_on_several_ranks_at_placement(data_paths):
    cfg = load_config(None, [f"data.train_path={data_paths['train_path']}", f"data.val_path={data_paths['val_path']}",
                             "data.num_classes=10", "optim.name=pytorch_optimizer:AdaHessian", "optim.lr=0.1"])
    assert placement_problems(cfg, 1, False) == []
    problems = placement_problems(cfg, 2, False)
    assert problems == ["optim.name=pytorch_optimizer:AdaHessian needs gradients with their graph (create_graph), "
                        "which DDP does not average into its Hessian-vector products: run it on one rank (2 ranks here)"]
    with pytest.raises(ConfigError, match="create_graph"):
        check_placement(cfg, 2, False)


def test_a_sweep_of_a_create_graph_optimizer_on_two_ranks_is_refused_before_submission(tmp_path, capsys, data_paths):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""name: hessian
runs_root: {tmp_path / 'runs'}
base: {DEMO}
overrides: {{data.train_path: {data_paths['train_path']}, data.val_path: {data_paths['val_path']}}}
axes:
  optimizer: [pytorch_optimizer:AdaHessian]
  optim.lr: [0.1]
  seed: [0]
slurm: {{nodes: 1, tasks_per_node: 2}}
""")
    assert cli.main(["sweep", str(spec), "--dry-run", "--cluster", "local"]) == 2
    err = capsys.readouterr().err
    assert "create_graph" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_a_step_that_raises_on_the_numbers_of_a_diverged_run_ends_it_diverged(tmp_path, fmnist_tiny):
    """pytorch-optimizer's Shampoo at its defaults turns the demo's stem weights to NaN within a few
    steps (its preconditioner's inverse root), and its next step's SVD raises on the NaN gradient:
    the run ends `diverged` at that step, not in a traceback."""
    drop = ("optim.momentum=", "optim.lr=", "optim.weight_decay=", "data.batch_size=", "model.head_norm=")
    tiny = [o for o in fmnist_tiny if not o.startswith(drop)]  # the demo's batch of 32 and its head
    cfg = load_config(DEMO, tiny + SHORT + ["optim.name=pytorch_optimizer:Shampoo", "optim.lr=0.001",
                                            "optim.weight_decay=0"])
    assert run_training(cfg, tmp_path / "run") == "diverged"
    status = rundir.read_status(tmp_path / "run")
    assert re.fullmatch(r"non-finite loss or gradient at step \d", status["reason"]), status
    assert status["step"] < 6


@pytest.mark.long
def test_a_closure_and_schedule_free_under_two_rank_ddp(tmp_path, fmnist_tiny):
    """Two gloo ranks (tests/ddp_probe.py): SAM's closure (its loss averaged over the ranks) and
    schedule-free's evaluations at x (BatchNorm re-estimated on the same batches on every rank) keep
    the ranks' weights bit-identical after every step, and both runs finish."""
    plan = [{"out": str(tmp_path / "sam"), "sync": True,
             "overrides": fmnist_tiny + SHORT + ["optim.imports=[examples/sam_sgd.py]", "optim.name=sam_sgd"]},
            {"out": str(tmp_path / "sf"), "sync": True,
             "overrides": fmnist_tiny + SHORT + ["optim.name=pytorch_optimizer:ScheduleFreeSGD", "optim.lr=0.5",
                                                 "schedule.name=flat", "train.eval_every_steps=2",
                                                 "train.eval_subset=256"]}]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "ddp_probe.py"), str(tmp_path / "plan.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("sam", "sf"):
        probe = json.loads((tmp_path / name / "probe.json").read_text())
        assert probe["state"] == "done" and len(probe["steps"]) == 6
        assert all(r["weights_equal"] for r in probe["steps"]), name
    evals = pd.read_parquet(tmp_path / "sf" / rundir.EVAL)
    assert list(evals.step) == [2, 4, 6] and evals.loss.map(math.isfinite).all()
