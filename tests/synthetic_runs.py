"""Synthetic run directories that follow the run-directory contract (imagenet_repro.rundir).

Shared by the analysis tests and ``benchmarks/analysis.py``.  Curves follow the theory's
shape: per normalized layer ||g_t|| = r_t ||x_t|| (1 + bias_l) n_t with r_t the predicted
ratio (sqrt(2λ/γ_t) for "sgd", sqrt(2λ/γ_max) for the corrected "sgdc"), γ_t a cosine or
flat schedule and n_t heavy-tailed noise with E[n_t²] = 1, so the theory's relative error
of layer l is exactly ``bias_l`` up to sampling noise.  Any column can be overridden with an
explicit array to test exact numbers.
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

RESNET50_STAGES = (3, 4, 6, 3)


def resnet50_layer_names() -> list[str]:
    """The 53 conv weights of a torchvision ResNet-50 (all feed a BatchNorm)."""
    names = ["conv1.weight"]
    for s, blocks in enumerate(RESNET50_STAGES, start=1):
        for b in range(blocks):
            names += [f"layer{s}.{b}.conv{k}.weight" for k in (1, 2, 3)]
            if b == 0:
                names.append(f"layer{s}.0.downsample.0.weight")
    return names


def lr_curve(n_steps: int, lr: float, schedule: str) -> np.ndarray:
    t = np.arange(n_steps, dtype=np.float64)
    if schedule == "flat":
        return np.full(n_steps, lr)
    return lr * 0.5 * (1 + np.cos(np.pi * t / n_steps))


def predicted_ratio(optimizer: str, lr_t: np.ndarray, lr: float, wd: float) -> np.ndarray:
    if optimizer.endswith("c"):  # corrected: λ_t = λ γ_t / γ_max
        return np.full_like(lr_t, math.sqrt(2 * wd / lr))
    return np.sqrt(2 * wd / np.maximum(lr_t, 1e-12))


def final_top1(optimizer: str, lr: float, wd: float, seed: int) -> float:
    """A smooth bowl in (log lr, log wd) peaking at lr=0.5 wd=5e-5, plus a seed offset."""
    score = 0.76 - 0.02 * math.log10(lr / 0.5) ** 2 - 0.015 * math.log10(wd / 5e-5) ** 2
    score += 0.004 if optimizer.endswith("c") else 0.0
    return score + 0.001 * ((seed * 7919) % 5 - 2)


def write_config(run_dir: Path, optimizer: str, lr: float, wd: float, seed: int, schedule: str,
                 epochs: int, name: str = "synthetic") -> None:
    cfg = {"name": name, "seed": seed,
           "optim": {"name": optimizer, "lr": lr, "weight_decay": wd, "momentum": 0.9, "decay_norm_and_bias": True},
           "schedule": {"name": schedule, "warmup_epochs": 0.0, "final_lr_fraction": 0.0, "milestones": [0.5, 0.75]},
           "train": {"epochs": epochs, "steps_per_epoch": 0}, "model": {"name": "resnet50"},
           "data": {"dataset": "imagenet", "batch_size": 1024}, "telemetry": {"layer_every": 100}}
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))


def write_run(run_dir: str | Path, *, optimizer: str = "sgd", lr: float = 0.5, wd: float = 5e-5, seed: int = 0,
              state: str = "done", n_steps: int = 2000, epochs: int = 4, layer_every: int = 100,
              n_layers: int = 8, schedule: str = "cosine", stop_fraction: float = 1.0,
              layer_bias: np.ndarray | None = None, overrides: dict[str, np.ndarray] | None = None,
              eval_top1: np.ndarray | None = None, sweep_name: str = "synthetic") -> Path:
    """Write one run folder. ``stop_fraction`` < 1 cuts the run (running/failed/diverged).

    ``overrides`` replaces steps.parquet columns (arrays of length ``n_steps`` before the cut);
    ``eval_top1`` replaces the per-epoch top-1.  A diverged run's last step is NaN.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(repr((optimizer, lr, wd, seed)).encode()))
    write_config(run_dir, optimizer, lr, wd, seed, schedule, epochs, sweep_name)
    names = resnet50_layer_names()[:n_layers] if n_layers <= 53 else [f"l{i}.weight" for i in range(n_layers)]
    steps_per_epoch = n_steps // epochs
    t = np.arange(n_steps)
    lr_t = lr_curve(n_steps, lr, schedule)
    r_t = predicted_ratio(optimizer, lr_t, lr, wd)
    x_norm = 20.0 * (0.6 + 0.4 * np.exp(-t / (0.3 * n_steps))) if not optimizer.endswith("c") else np.full(n_steps, 18.0)
    noise = np.sqrt(rng.chisquare(4, n_steps) / 4)  # E[noise²] = 1, right-skewed
    g_norm_n = r_t * x_norm * noise
    other = 2.0
    steps = pd.DataFrame({
        "step": t.astype(np.int64), "epoch": (t // max(steps_per_epoch, 1)).astype(np.int64), "lr": lr_t,
        "loss": 6.9 * np.exp(-3 * t / n_steps) + 0.9 + 0.05 * rng.standard_normal(n_steps),
        "grad_norm": np.sqrt(g_norm_n**2 + (0.1 * other) ** 2), "weight_norm": np.sqrt(x_norm**2 + other**2),
        "grad_norm_normalized": g_norm_n, "weight_norm_normalized": x_norm,
        "images_per_s": np.full(n_steps, 2500.0)})
    for key, values in (overrides or {}).items():
        steps[key] = np.asarray(values, dtype=steps[key].dtype)
    bias = np.zeros(len(names)) if layer_bias is None else np.asarray(layer_bias, dtype=np.float64)
    logged = t[t % layer_every == 0]
    share = np.linspace(0.5, 1.5, len(names))
    share = share / np.sqrt((share**2).sum())
    lx = np.outer(x_norm[logged], share)
    lnoise = np.sqrt(rng.chisquare(4, lx.shape) / 4)
    lg = lx * r_t[logged, None] * (1 + bias[None, :]) * lnoise
    # rotation: SGD-M 0.9's steady state sqrt(2 γ_t λ_t / 1.9) (optim.equilibrium), measured with the same bias
    lam_t = wd * lr_t / lr if optimizer.endswith("c") else np.full(n_steps, wd)
    rot_t = np.sqrt(2 * lr_t * lam_t / 1.9)
    angle = rot_t[logged, None] * (1 + bias[None, :]) * np.sqrt(rng.chisquare(8, lx.shape) / 8)
    layers = pd.DataFrame({"step": np.repeat(logged, len(names)).astype(np.int64),
                           "layer": np.tile(names, len(logged)), "grad_norm": lg.ravel(), "weight_norm": lx.ravel(),
                           "ratio": (lg / lx).ravel(), "predicted_ratio": np.repeat(r_t[logged], len(names)),
                           "angular_update": angle.ravel(), "relative_update": angle.ravel(),
                           "predicted_rotation": np.repeat(rot_t[logged], len(names)),
                           "update_grad_cos": np.nan, "eps_fraction": np.nan})
    top1 = final_top1(optimizer, lr, wd, seed)
    ep = np.arange(1, epochs + 1)
    top1s = np.asarray(eval_top1, dtype=np.float64) if eval_top1 is not None else top1 * (1 - 0.6 * np.exp(-3 * ep / epochs)) / (1 - 0.6 * np.exp(-3.0))
    # as the trainer writes it: the eval after epoch e has step = e * steps_per_epoch (steps done)
    ev = pd.DataFrame({"epoch": ep.astype(np.int64), "step": (ep * steps_per_epoch).astype(np.int64),
                       "top1": top1s, "top5": np.minimum(top1s + 0.17, 1.0), "loss": 1.0 + 3 * (0.8 - top1s),
                       "images": np.full(epochs, 50000, dtype=np.int64)})

    cut = n_steps if stop_fraction >= 1 else int(n_steps * stop_fraction)
    steps, layers = steps[steps.step < cut].copy(), layers[layers.step < cut]
    ev = ev[ev.step <= cut]
    if state == "diverged":
        steps.loc[steps.index[-1], ["loss", "grad_norm", "grad_norm_normalized"]] = np.nan
    steps.to_parquet(run_dir / "steps.parquet", index=False)
    layers.to_parquet(run_dir / "layers.parquet", index=False)
    ev.to_parquet(run_dir / "eval.parquet", index=False)
    status: dict[str, Any] = {"state": state, "job_id": "0", "step": int(cut - 1), "epoch": int((cut - 1) // steps_per_epoch)}
    (run_dir / "status.json").write_text(json.dumps(status))
    (run_dir / "manifest.json").write_text(json.dumps({"synthetic": True}))
    return run_dir


def truncate_file(path: Path, keep: float = 0.5) -> None:
    """Cut a file to a fraction of its bytes (a half-copied parquet)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_spec(path: Path, name: str, runs_root: Path) -> Path:
    path.write_text(f"name: {name}\nruns_root: {runs_root}\n")
    return path


def describe(spec: Path):
    """The description of the sweep of ``spec`` that the analysis reads (the launcher writes
    it as ``sweep.json``; synthetic sweeps are never launched)."""
    from imagenet_repro.sweep.spec import load_spec

    return load_spec(spec).description()


def write_grid(runs_root: Path, name: str, optimizers=("sgd", "sgdc"), lrs=(0.1, 0.5, 2.0),
               wds=(1e-5, 5e-5, 2e-4), seeds=(0, 1), diverge_lr: float | None = None, **kw) -> list[Path]:
    """A full grid under ``runs_root/name``; runs with lr >= ``diverge_lr`` and seed 0 diverge."""
    dirs = []
    for opt in optimizers:
        for lr in lrs:
            for wd in wds:
                for seed in seeds:
                    diverged = diverge_lr is not None and lr >= diverge_lr and seed == 0
                    run_id = f"{opt}-lr{lr:g}-wd{wd:g}-s{seed}"
                    dirs.append(write_run(runs_root / name / run_id, optimizer=opt, lr=lr, wd=wd, seed=seed,
                                          state="diverged" if diverged else "done",
                                          stop_fraction=0.7 if diverged else 1.0, sweep_name=name, **kw))
    return dirs
