"""The flagship on one GPU, measured the way the sweep runs it, in phases ordered by value.

The one command of a lent GPU machine is ``bash scripts/gpu-run.sh`` (:data:`DEVICE_RUN`:
it installs the wheels ``scripts/gpu-carry.sh`` built into ``.whl/``, then runs this file and
tees its log to ``$OUT/gpu.log``).  Each phase runs in a child process of its own, so a crash,
a hang, a poisoned CUDA context or the deterministic settings of a training check stay inside
it, under its own time cap, and all phases under one deadline that ends the command inside the
device call's timeout.  After every phase the driver writes the whole JSON
(``results/bench/gpu.json``, and ``$OUT/gpu.json`` when ``OUT`` is set): a phase's numbers are
kept as soon as it ends, also when a later one fails, is killed at its cap or never starts
(``skipped: deadline``).  A phase writes its partial numbers as it goes, so one killed at its cap
still reports what it measured.  A rerun of some phases (``--phases``) keeps the earlier run's
finished phases of the same card, torch and scale (``kept_from_run``; from the result file, or
on a warm GPU machine, whose copy of the repository is re-sent each call, from the workdir's copy).

    phase           cap (s)  what
    data               60    synthetic ImageNet-shaped JPEGs (:mod:`imagenet_repro.data.synthetic`,
                             ~400-500 x 350-375 px) written to .beton as ffcv-imagenet writes its
                             rn50 files (max side 500, 50% JPEG at quality 90); reused by a rerun
                             into the same ``--workdir`` when the sizes match
    faithful_train    100    ``experiments/imagenet_resnet50_faithful.yaml`` through the real
                             ``run_training`` at its own settings (224 px, per-GPU batch 32 =
                             256 / the spec's 8 GPUs, lr scaled to it, 10 loader workers on the
                             spec's 10 CPUs, bf16, channels_last, FFCV's GPU pipeline, telemetry)
                             with ``train.deterministic``: loss falls, norms finite, eval runs, the
                             first batch is float32 channels_last on the GPU; a second run stopped
                             mid-epoch at a step boundary (as SIGUSR1 does) and resumed must equal
                             the first bit for bit (``compare_runs``)
    faithful_speed     60    the same config, not deterministic: images/s of the whole step
                             (FFCV loader + model + optimizer + telemetry, the trainer's own
                             ``train_step``) against the same steps on GPU-resident tensors; eval
                             images/s; the telemetry overhead; GPU-hours per epoch at 224 px
    budget_train       90    ``experiments/imagenet_resnet50.yaml`` likewise (160 px in epoch 0,
                             192 px in epoch 1: its resolution ramp squeezed into the 2 epochs;
                             label smoothing 0.1; val 256 px)
    budget_speed       60    the budget at 32 images/GPU and 160 px (GPU-hours per epoch) and at
                             ffcv-imagenet's own batch of 512 at 160 px, beside ffcv-imagenet's
                             published ~2.9k images/s per A100
    variants           45    compute-only step at 32 x 224 px, interleaved rounds: bf16 + the
                             suite's SGD (foreach; the trainer's step) against fp16 + GradScaler,
                             fused SGD, and DDP on one rank with and without gradient_as_bucket_view
    optim              20    sgd/sgdc/adamw/adamc steps against torch's foreach and fused SGD/AdamW
                             on ResNet-50's parameters (benchmarks/optim.py's set-up)
    loader             40    the FFCV train loader alone against torchvision's DataLoader, at the
                             faithful sweep's settings (224 px, batch 32, 10 workers)
    compile            90    ``torch.compile`` of the same step against eager, last (its
                             compile time is most of the phase)

Method.  *Whole step vs compute-only*: the loader-fed steps of the timed epochs (after each
epoch's first steps) are timed, then the compute-only arm replays exactly those step numbers
(``trainer.step`` set back), so both hold the same telemetry flushes and per-layer steps.
*Telemetry overhead*: the mean step time over rounds that are whole windows of
lcm(``flush_every``, ``layer_every``) steps (50 in both configs), each starting at a multiple
of it, so every round holds the same host syncs (flushes) and per-layer norm/health steps;
rounds with and without ``record``/``after_step``/``flush`` run in shuffled pairs; overhead =
mean(with) / mean(without) - 1, with a 95% interval from the paired differences.  (A median of
short rounds drops exactly the steps that carry those costs.)  *GPU-hours per epoch*:
(1,281,167 / whole-step images/s + 50,000 / eval images/s) / 3600, one GPU's share of an
8-GPU epoch at the spec's per-GPU batch, loader workers and CPUs; the all-reduce of 8 GPUs and
the checkpoint are not in it, so it is a lower bound.  It is reported with the card's name and
the line to write beside the spec's ``gpu_hours_per_epoch`` estimate.  The device's torch
version is recorded beside the one pyproject.toml pins (they differ on the lent machines).

Scales: on CUDA every phase at the sizes above, under a 295 s deadline (the device call's
timeout is 330 s); ``--tiny`` (automatic without CUDA, or ``GPU_BENCH_TINY=1``) runs every
phase tiny (small ResNet, 32-64 px, 2 workers, ``torch.compile`` with the aot_eager backend,
no deadline): the test suite and the CPU check of the device command.

    bash scripts/gpu-run.sh                                  # the device command (docs/benchmarks.md)
    python benchmarks/gpu.py                                 # CUDA: every phase
    python benchmarks/gpu.py --tiny                          # every phase, tiny
    python benchmarks/gpu.py --phases compile --caps compile=240 --deadline-s 280
"""
from __future__ import annotations

import argparse
import collections
import importlib.metadata
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import imagenet_repro  # noqa: E402,F401  (torchvision shim)
from imagenet_repro.config import build_config, load_config, read_yaml  # noqa: E402
from imagenet_repro.files import atomic_write_text  # noqa: E402

# The device tool's call for this benchmark (docs/benchmarks.md; scripts/gpu-carry.sh prints it).
DEVICE_RUN = {"command": "bash scripts/gpu-run.sh", "carry": [".whl"], "timeout_s": 330}
GPU_DEADLINE_S = 295  # the driver ends by then: pip install before it and the last write fit in 330 s
MIN_PHASE_S = 15  # at GPU scale a phase is not started with less time than this left


@dataclass(frozen=True)
class Phase:
    name: str
    cap_s: float  # GPU scale
    needs_data: bool


PHASES = (Phase("data", 60, False), Phase("faithful_train", 100, True), Phase("faithful_speed", 60, True),
          Phase("budget_train", 90, True), Phase("budget_speed", 60, True), Phase("variants", 45, False),
          Phase("optim", 20, False), Phase("loader", 40, True), Phase("compile", 90, False))
PHASE_NAMES = tuple(p.name for p in PHASES)
TINY_CAP_S = 900  # per phase on a loaded 2-core CPU

IMAGENET_TRAIN_IMAGES, IMAGENET_VAL_IMAGES = 1_281_167, 50_000
FFCV_IMAGENET_IMG_S_PER_A100 = IMAGENET_TRAIN_IMAGES * 16 / (14.9 * 60) / 8  # 16 epochs in 14.9 min on 8 x A100
TARGETS = {"loader_fed_over_compute_only": 0.90, "telemetry_overhead": 0.01,
           "optimizer_over_fastest_torch": 1.10, "ffcv_over_torchvision": 3.0}


@dataclass(frozen=True)
class Flagship:
    yaml: Path
    spec: Path  # the sweep that runs it: its per-GPU batch, CPUs per task and GPU-hour estimate


FLAGSHIPS = {"faithful": Flagship(ROOT / "experiments" / "imagenet_resnet50_faithful.yaml",
                                  ROOT / "sweeps" / "paper_fig5.yaml"),
             "budget": Flagship(ROOT / "experiments" / "imagenet_resnet50.yaml",
                                ROOT / "sweeps" / "paper_fig5_budget.yaml")}


class Scale:
    """Everything that differs between the GPU run and the tiny one."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        self.name = "tiny" if tiny else "gpu"
        if tiny:  # the small ResNet, 32-64 px, 2 workers: the same code paths in seconds on a CPU
            self.n_train, self.n_val, self.classes, self.data_workers = 48, 16, 4, 2
            self.image_size = dict(width=(72, 96), height=(64, 72))
            self.train_steps_per_epoch, self.stop_at = 3, 4  # 2 epochs; stopped in epoch 2
            self.warm_steps, self.skip_steps, self.timed_epochs, self.max_steps = 1, 1, 1, 1000
            self.min_timed_steps = 1
            self.tel_pairs, self.tel_windows, self.eval_passes = 2, 1, 1
            self.variant_rounds, self.variant_steps, self.compile_steps = 2, 2, 2
            self.optim_rounds, self.loader_epochs = 1, 1
        else:
            self.n_train, self.n_val, self.classes, self.data_workers = 6144, 512, 100, min(16, os.cpu_count() or 1)
            self.image_size = {}
            self.train_steps_per_epoch, self.stop_at = 80, 112  # 160 steps; stopped 32 steps into epoch 2
            self.warm_steps, self.skip_steps, self.timed_epochs, self.max_steps = 40, 8, 1, 1000
            self.min_timed_steps = 40  # batch 512 has 12 steps an epoch here: several epochs
            self.tel_pairs, self.tel_windows, self.eval_passes = 6, 1, 3
            self.variant_rounds, self.variant_steps, self.compile_steps = 5, 20, 30
            self.optim_rounds, self.loader_epochs = 50, 1

    def overrides(self) -> list[str]:
        """Tiny: the small ResNet, 2 workers, 1 thread, telemetry every 2 steps."""
        if not self.tiny:
            return []
        return ["model.name=small_resnet", f"data.num_workers={self.data_workers}", "train.threads=1",
                "telemetry.layer_every=2", "telemetry.flush_every=2"]

    def resolutions(self, flagship: str, cfg) -> tuple[int, int, int]:
        """(epoch-0 res, epoch-1 res, val res) of a training check: the config's own at GPU scale."""
        if self.tiny:
            return (32, 32, 32) if flagship == "faithful" else (32, 64, 64)
        return int(cfg.data.min_res), int(cfg.data.max_res), int(cfg.data.val_res)

    def speed_configs(self, flagship: str, per_gpu: int, cfg) -> list[tuple[int, int]]:
        """(per-GPU batch, resolution) of the whole-step timings; the first is the sweep's own."""
        if self.tiny:
            return [(8, 32)] if flagship == "faithful" else [(8, 32), (16, 32)]
        res = int(cfg.data.min_res)  # faithful: 224 fixed; budget: 160, most of its epochs
        return [(per_gpu, res)] if flagship == "faithful" else [(per_gpu, res), (512, res)]


# ---- small helpers -------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _now(device: torch.device) -> float:
    _sync(device)
    return time.perf_counter()


def _error(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pinned_torch() -> str | None:
    import re

    m = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    return m.group(1) if m else None


def _nvidia_smi() -> list[dict] | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    keys = ("name", "driver", "memory", "max_sm_clock")
    return [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in out.stdout.strip().splitlines()]


def environment(device: str, sc: Scale) -> dict:
    """The driver's view (it never starts CUDA itself: each phase's child does, and records the card)."""
    from imagenet_repro.data.loaders import ffcv_available

    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_pinned": _pinned_torch(),
           "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
           "device": device, "scale": sc.name, "nvidia_smi": _nvidia_smi(), "cpu_count": os.cpu_count(),
           "cpus_allowed": len(os.sched_getaffinity(0)), "machine": platform.node(),
           "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "ffcv_importable": ffcv_available()}
    env["torch_matches_pin"] = env["torch"].split("+")[0] == env["torch_pinned"]
    for name in ("ffcv", "numba", "omegaconf", "submitit", "torchvision", "timm", "scipy"):
        try:
            env[f"{name}_version"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # recorded: the phases that need it will say so
            env[f"{name}_version"] = None
    if env["ffcv_importable"]:
        import ffcv

        env["ffcv_file"] = ffcv.__file__  # the carried wheel's, on the GPU machine
    return env


# ---- the child's context -------------------------------------------------------------------
class Context:
    """What a phase child gets: scale, device, scratch folder, and its result (saved as it grows)."""

    def __init__(self, phase: str, sc: Scale, device: torch.device, work: Path, out: Path):
        self.phase, self.sc, self.device, self.work, self.out = phase, sc, device, work, out
        self.result: dict = {}

    def save(self) -> None:
        _write_json(self.out, self.result)

    def data(self) -> dict:
        from imagenet_repro import files

        data = files.read_json(self.work / "data.json")
        if not data:
            raise RuntimeError("no data: the data phase did not complete")
        return data

    def phase_dir(self) -> Path:
        d = self.work / self.phase
        shutil.rmtree(d, ignore_errors=True)  # a rerun into the same workdir starts this phase over
        d.mkdir(parents=True)
        return d

    def card(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"

    def limit_cpus(self, flagship: str) -> None:
        """The spec's slurm.cpus_per_task, as SLURM would give the task (when more are here)."""
        want = int(_spec(flagship)["slurm"]["cpus_per_task"])
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) > want:
            os.sched_setaffinity(0, allowed[:want])
        self.result["cpus"] = {"spec_cpus_per_task": want, "allowed_here": len(allowed),
                               "used": len(os.sched_getaffinity(0))}


def _spec(flagship: str) -> dict:
    import yaml

    return yaml.safe_load(FLAGSHIPS[flagship].spec.read_text())


def flagship_settings(flagship: str) -> dict:
    """The sweep's per-GPU view of its base config: batch and lr per GPU, loader workers."""
    cfg = read_yaml(FLAGSHIPS[flagship].yaml)
    slurm = _spec(flagship)["slurm"]
    gpus = int(slurm.get("nodes", 1)) * int(slurm["gpus_per_node"])
    per_gpu = int(cfg.data.batch_size) // gpus
    return {"config": str(FLAGSHIPS[flagship].yaml.relative_to(ROOT)), "spec": str(FLAGSHIPS[flagship].spec.relative_to(ROOT)),
            "gpus": gpus, "global_batch": int(cfg.data.batch_size), "per_gpu_batch": per_gpu,
            "lr_global": float(cfg.optim.lr), "num_workers": int(cfg.data.num_workers),
            "cpus_per_task": int(slurm["cpus_per_task"]), "spec_gpu_hours_per_epoch": _spec(flagship).get("gpu_hours_per_epoch")}


def flagship_cfg(ctx: Context, flagship: str, data: dict, extra: list[str]):
    """The config on one GPU at the sweep's per-GPU batch (tiny: 8), lr scaled linearly to it."""
    s = flagship_settings(flagship)
    own = read_yaml(FLAGSHIPS[flagship].yaml)
    batch = 8 if ctx.sc.tiny else s["per_gpu_batch"]
    return load_config(FLAGSHIPS[flagship].yaml, [
        f"data.train_path={data['train_beton']}", f"data.val_path={data['val_beton']}",
        f"data.val_batch_size={min(int(own.data.val_batch_size), data['val_images'])}",
        f"train.device={ctx.device.type}", "train.progress=false", "checkpoint.every_minutes=0",
        f"data.batch_size={batch}", f"optim.lr={s['lr_global'] * batch / s['global_batch']}",
    ] + ctx.sc.overrides() + extra)


# ---- data ----------------------------------------------------------------------------------
def data_key(sc: Scale) -> dict:
    """What the data phase's files depend on (as JSON reads it back)."""
    return json.loads(json.dumps({"scale": sc.name, "train": sc.n_train, "val": sc.n_val, "classes": sc.classes,
                                  "image_size": sc.image_size, "write": [500, 0.5, 90], "version": 1}))


def reusable(old: dict | None, key: dict) -> bool:
    """A rerun into the same workdir reuses the data when it was written for the same key and
    both .beton files are there at their recorded sizes (data.json is written last)."""
    return bool(old) and old.get("key") == key and all(
        Path(old[f]).is_file() and Path(old[f]).stat().st_size == old[f + "_bytes"] for f in ("train_beton", "val_beton"))


def phase_data(ctx: Context) -> None:
    from imagenet_repro import files
    from imagenet_repro.data.synthetic import write_synthetic_imagefolder
    from imagenet_repro.data.writer import write_imagefolder

    sc, work = ctx.sc, ctx.work
    key = data_key(sc)
    old = files.read_json(work / "data.json")
    if reusable(old, key):
        ctx.result.update(old, reused=True)
        return
    (work / "data.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    shutil.rmtree(work / "imagefolder", ignore_errors=True)
    train_dir, val_dir = work / "imagefolder" / "train", work / "imagefolder" / "val"
    paths = write_synthetic_imagefolder(train_dir, sc.n_train, sc.classes, seed=0, workers=sc.data_workers,
                                        **sc.image_size)
    write_synthetic_imagefolder(val_dir, sc.n_val, sc.classes, seed=1, workers=sc.data_workers, **sc.image_size)
    t_gen = time.perf_counter() - t0
    betons = {}
    for name, folder in (("train", train_dir), ("val", val_dir)):  # ffcv-imagenet's rn50 files: 500 0.50 90
        betons[name] = write_imagefolder(folder, work / f"{name}.beton", max_resolution=500, jpeg_quality=90,
                                         compress_probability=0.5, num_workers=sc.data_workers)
    data = {"key": key, "train_dir": str(train_dir), "val_dir": str(val_dir),
            "train_beton": str(betons["train"]), "val_beton": str(betons["val"]),
            "train_beton_bytes": betons["train"].stat().st_size, "val_beton_bytes": betons["val"].stat().st_size,
            "train_images": sc.n_train, "val_images": sc.n_val, "classes": sc.classes,
            "mean_jpeg_kb": round(float(np.mean([p.stat().st_size for p in paths[:500]])) / 1024, 1),
            "generate_s": round(t_gen, 1), "total_s": round(time.perf_counter() - t0, 1), "workers": sc.data_workers,
            "write": "max_resolution 500, compress_probability 0.5, jpeg_quality 90 (ffcv-imagenet rn50)"}
    files.atomic_write_json(work / "data.json", data)  # last: a killed data phase leaves no data.json
    ctx.result.update(data, reused=False)


# ---- the training checks -------------------------------------------------------------------
def phase_train(ctx: Context, flagship: str) -> None:
    import warnings

    import pandas as pd

    from imagenet_repro import files, rundir
    from imagenet_repro.train.callbacks import Callback
    from imagenet_repro.train.compare import compare_runs
    from imagenet_repro.train.distributed import shutdown
    from imagenet_repro.train.loop import Trainer, run_training

    sc, device, res = ctx.sc, ctx.device, ctx.result
    ctx.limit_cpus(flagship)
    data, work = ctx.data(), ctx.phase_dir()
    own = read_yaml(FLAGSHIPS[flagship].yaml)
    r0, r1, val_res = sc.resolutions(flagship, own)
    warmup = min(float(own.schedule.warmup_epochs), 1.0)  # < the check's 2 epochs, as the config requires
    cfg = flagship_cfg(ctx, flagship, data, [
        "train.epochs=2", f"train.steps_per_epoch={sc.train_steps_per_epoch}", "train.deterministic=true",
        f"data.min_res={r0}", f"data.max_res={r1}", "data.start_ramp=0", f"data.end_ramp={0 if r0 == r1 else 1}",
        f"data.val_res={val_res}", f"schedule.warmup_epochs={warmup}"])
    res.update(flagship_settings(flagship), model=cfg.model.name, batch=int(cfg.data.batch_size),
               resolutions=[r0, r1], val_res=val_res, lr=float(cfg.optim.lr), warmup_epochs=warmup,
               label_smoothing=float(cfg.train.label_smoothing), workers=int(cfg.data.num_workers), epochs=2,
               steps_per_epoch=sc.train_steps_per_epoch, deterministic=True,
               cublas_workspace_before=os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    ctx.save()
    a_dir, b_dir = work / "run_a", work / "run_b"
    out = os.environ.get("OUT")
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res["state"] = run_training(cfg, a_dir)
        res["run_s"] = round(time.perf_counter() - t0, 1)
        res["cublas_workspace_after"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        res["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
        res["nondeterministic_op_warnings"] = sorted({str(w.message)[:300] for w in caught
                                                      if "determinis" in str(w.message)})
        if device.type == "cuda":
            res["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        steps, evals = pd.read_parquet(a_dir / rundir.STEPS), pd.read_parquet(a_dir / rundir.EVAL)
        k = max(1, len(steps) // 6)
        first, last = float(steps.loss.iloc[:k].mean()), float(steps.loss.iloc[-k:].mean())
        norms = steps[["loss", "grad_norm", "weight_norm", "grad_norm_normalized", "weight_norm_normalized"]]
        res.update({"steps": int(len(steps)), "loss_first": round(first, 4), "loss_last": round(last, 4),
                    "loss_falls": bool(last < first), "norms_finite": bool(np.isfinite(norms.to_numpy()).all()),
                    "grad_norm_first_last": [round(float(steps.grad_norm.iloc[0]), 4),
                                             round(float(steps.grad_norm.iloc[-1]), 4)],
                    "eval": evals.round(4).to_dict(orient="records"),
                    "eval_ran": bool(len(evals) == 2 and np.isfinite(evals.loss).all()),
                    "top1_over_chance": round(float(evals.top1.iloc[-1]) * data["classes"], 2) if len(evals) else None,
                    "manifest_device": files.read_json(a_dir / rundir.MANIFEST).get("device")})
        ctx.save()

        class StopAt(Callback):  # the SIGUSR1 path: flag at a step boundary -> checkpoint -> exit
            def __init__(self):
                self.batches: dict[int, dict] = {}  # what the first step of each epoch was fed

            def on_step_end(self, trainer, images, labels):
                if trainer.batch_in_epoch == 1:
                    self.batches[trainer.epoch] = {
                        "images": [str(images.device), str(images.dtype), list(images.shape),
                                   images.is_contiguous(memory_format=torch.channels_last)],
                        "labels": [str(labels.device), str(labels.dtype), list(labels.shape)]}
                if trainer.step == sc.stop_at:
                    trainer.interrupt(signal.SIGUSR1)

        stop = StopAt()
        trainer = Trainer(cfg, b_dir, callbacks=[stop])
        try:
            trainer.fit()
            res["interrupt"] = "did not stop"
        except SystemExit as exc:
            res["interrupt"] = f"SystemExit({exc.code}) at step {trainer.step}"
        finally:
            shutdown(trainer.dist)
        res["batches_fed"] = stop.batches
        fb = stop.batches.get(0)
        # what the model is fed: float32 on the training device, channels_last on CUDA; int64 labels there too
        res["inputs_ok"] = bool(fb and fb["images"][0] == str(device) and fb["images"][1] == "torch.float32"
                                and fb["images"][3] == (device.type == "cuda") and fb["labels"][0] == str(device)
                                and fb["labels"][1] == "torch.int64")
        res["resolutions_fed"] = [b["images"][2][-1] for _, b in sorted(stop.batches.items())]
        res["resolutions_ok"] = res["resolutions_fed"] == [r0, r1]
        del trainer
        res["resumed_state"] = run_training(cfg, b_dir)
        res["resumed_from_step"] = rundir.read_status(b_dir).get("resumed_from_step")
        res["resume_problems"] = compare_runs(a_dir, b_dir)  # [] when the tables are equal bit for bit
        res["resume_exact"] = not res["resume_problems"]
        res["ok"] = bool(res["state"] == "done" and res["resumed_state"] == "done" and res["loss_falls"]
                         and res["norms_finite"] and res["eval_ran"] and res["resume_exact"] and res["inputs_ok"]
                         and res["resolutions_ok"] and res["resumed_from_step"] == sc.stop_at)
    finally:
        if out and a_dir.is_dir():
            for name in (rundir.STEPS, rundir.EVAL):
                if (a_dir / name).exists():
                    shutil.copy(a_dir / name, Path(out) / f"{ctx.phase}_{name}")


# ---- whole-step speed ----------------------------------------------------------------------
def _with_telemetry(t, on: bool, fn):
    """Run ``fn()`` with the trainer's telemetry on or off (record, after_step and flush no-ops)."""
    tel = t.telemetry
    if not on:
        tel.record = lambda *a, **k: None
        tel.after_step = lambda: None
    try:
        return fn()
    finally:
        for name in ("record", "after_step"):
            tel.__dict__.pop(name, None)


def _steps(t, images, labels, start: int, n: int, telemetry: bool = True) -> None:
    """``n`` train steps on one batch from global step ``start``, flushed as fit() flushes."""
    t.step = start
    for _ in range(n):
        t.train_step(images, labels)
        if telemetry and t.step % t.telemetry.flush_every == 0:
            t.telemetry.flush()


def loader_fed(t, sc: Scale, device: torch.device) -> dict:
    """The whole step as fit() runs it (FFCV epoch, train_step, flush), timed after each epoch's
    first steps (a quarter of an epoch at most); epoch 0 warms up (numba compile, cuDNN autotune)
    for ``warm_steps``; as many timed epochs as give ``min_timed_steps``."""
    ranges, timed_s, images, first_epoch_s = [], 0.0, 0, None
    per_epoch = min(len(t.train_loader), sc.max_steps)
    skip = min(sc.skip_steps, max(1, per_epoch // 4))
    timed_epochs = max(sc.timed_epochs, math.ceil(sc.min_timed_steps / max(1, per_epoch - skip)))
    for epoch in range(1 + timed_epochs):
        e0, w0, start, n = _now(device), None, None, 0
        gen = t.train_loader.epoch(epoch)
        try:
            for i, (x, y) in enumerate(gen):
                if (epoch == 0 and i == sc.warm_steps) or i == sc.max_steps:
                    break
                if epoch > 0 and i == skip:
                    w0, start = _now(device), t.step
                t.train_step(x, y)
                if t.step % t.telemetry.flush_every == 0:
                    t.telemetry.flush()
                if start is not None:
                    n += 1
                    images += x.shape[0]
        finally:
            gen.close()
        end = _now(device)
        t.telemetry.flush()  # fit() flushes at each epoch end too (untimed here, as in compute_only)
        if epoch == 0:
            first_epoch_s = end - e0
        elif start is not None:
            ranges.append([start, n])
            timed_s += end - w0
    return {"images_per_s": round(images / timed_s, 1) if timed_s else None, "timed_images": images,
            "timed_s": round(timed_s, 4), "timed_steps": sum(n for _, n in ranges),
            "step_ranges": ranges, "steps_per_epoch": len(t.train_loader), "skipped_per_epoch": skip,
            "warm_epoch_s_incl_compile": round(first_epoch_s, 2)}


def compute_only(t, ranges: list, batch: int, res: int, device: torch.device) -> float:
    """Images/s of the same steps (same step numbers: same flushes and per-layer steps) on one
    GPU-resident batch: the limit a loader cannot beat."""
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    images = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, t.cfg.data.num_classes, (batch,), device=device)
    _steps(t, images, labels, ranges[0][0], 3)  # warm
    t.telemetry.flush()
    dt = 0.0
    for start, n in ranges:
        t0 = _now(device)
        _steps(t, images, labels, start, n)
        dt += _now(device) - t0
        t.telemetry.flush()
    return batch * sum(n for _, n in ranges) / dt


def telemetry_overhead(t, sc: Scale, batch: int, res: int, device: torch.device) -> dict:
    """Mean step time with vs without telemetry over rounds of whole windows (see the docstring)."""
    from scipy import stats

    flush, layer = int(t.telemetry.flush_every), int(t.telemetry.layer_every)
    window = math.lcm(flush, layer)
    steps = window * sc.tel_windows
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    images = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, t.cfg.data.num_classes, (batch,), device=device)
    start = window * (t.step // window + 1)  # every round starts at a multiple of the window

    def round_s(on: bool) -> float:
        t0 = _now(device)
        _with_telemetry(t, on, lambda: _steps(t, images, labels, start, steps, telemetry=on))
        return (_now(device) - t0) / steps

    round_s(True), round_s(False)  # warm both
    rng = random.Random(0)
    pairs = []
    for _ in range(sc.tel_pairs):
        order = [True, False]
        rng.shuffle(order)
        got = {arm: round_s(arm) for arm in order}
        pairs.append((got[True], got[False]))
    on, off = [p[0] for p in pairs], [p[1] for p in pairs]
    diffs = [a - b for a, b in pairs]
    half = (float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
            if len(diffs) > 1 else math.nan)
    mean_off = statistics.fmean(off)
    return {"overhead": round(statistics.fmean(on) / mean_off - 1, 5),
            "overhead_ci95": [round((statistics.fmean(diffs) - half) / mean_off, 5),
                              round((statistics.fmean(diffs) + half) / mean_off, 5)],
            "step_ms_with": round(1e3 * statistics.fmean(on), 3), "step_ms_without": round(1e3 * mean_off, 3),
            "per_window_ms": round(1e3 * statistics.fmean(diffs) * window, 3),
            "window_steps": window, "windows_per_round": sc.tel_windows, "round_pairs": sc.tel_pairs,
            "flush_every": flush, "layer_every": layer,
            "method": "mean over rounds of whole lcm(flush_every, layer_every) windows, aligned; shuffled pairs"}


def eval_rate(t, passes: int, device: torch.device) -> float:
    t.evaluate()  # warm: the val loader's compile, cuDNN's eval shapes
    t0 = _now(device)
    n = sum(t.evaluate().images for _ in range(passes))
    return n / (_now(device) - t0)


def gpu_hours(ctx: Context, flagship: str, entry: dict, res: int) -> dict:
    """GPU-hours of one ImageNet epoch (train + eval) from a speed entry, beside the spec's estimate."""
    s = flagship_settings(flagship)
    hours = (IMAGENET_TRAIN_IMAGES / entry["images_per_s"] + IMAGENET_VAL_IMAGES / entry["eval_images_per_s"]) / 3600
    card, value = ctx.card(), round(hours, 4)
    line = (f"gpu_hours_per_epoch: {s['spec_gpu_hours_per_epoch']}  # estimate; measured {value} on one {card} "
            f"(benchmarks/gpu.py, {time.strftime('%Y-%m-%d')}: {res} px, {entry['batch']}/GPU, {entry['workers']} "
            f"loader workers on {ctx.result['cpus']['used']} CPUs; without the 8-GPU all-reduce)")
    return {"gpu_hours_per_epoch": value, "card": card, "resolution": res, "batch": entry["batch"],
            "workers": entry["workers"], "eval_res": entry["eval_res"], "spec": s["spec"],
            "spec_estimate": s["spec_gpu_hours_per_epoch"],
            "measured_over_estimate": round(hours / float(s["spec_gpu_hours_per_epoch"]), 3), "scale": ctx.sc.name,
            "spec_line": None if ctx.sc.tiny else line,  # tiny: not a measurement of the config
            "note": "one GPU's share of an epoch: train images over whole-step images/s plus val images over "
                    "eval images/s; lower bound (no DDP all-reduce across GPUs, no checkpoint)"}


def phase_speed(ctx: Context, flagship: str) -> None:
    from imagenet_repro.train.loop import Trainer

    sc, device, res = ctx.sc, ctx.device, ctx.result
    ctx.limit_cpus(flagship)
    data, work = ctx.data(), ctx.phase_dir()
    s = flagship_settings(flagship)
    own = read_yaml(FLAGSHIPS[flagship].yaml)
    res.update(s, card=ctx.card(), configs={})
    if flagship == "budget":
        res["ffcv_imagenet_images_per_s_per_a100"] = round(FFCV_IMAGENET_IMG_S_PER_A100, 1)
        res["ffcv_imagenet_source"] = ("8 x A100, 16 epochs of ImageNet (1,281,167 images) in 14.9 min, res "
                                       "160-171, batch 512 per GPU, fp16 (ffcv-imagenet rn50 table)")
    for i, (batch, r) in enumerate(sc.speed_configs(flagship, s["per_gpu_batch"], own)):
        entry: dict = {"batch": batch, "resolution": r}
        res["configs"][f"batch{batch}_res{r}"] = entry
        t = None
        try:
            cfg = flagship_cfg(ctx, flagship, data, [f"data.batch_size={batch}",
                                                     f"optim.lr={s['lr_global'] * batch / s['global_batch']}",
                                                     f"data.min_res={r}", f"data.max_res={r}", "data.end_ramp=0",
                                                     "train.epochs=1000"] + ([f"data.val_res={r}"] if sc.tiny else []))
            entry["workers"] = int(cfg.data.num_workers)
            t = Trainer(cfg, work / f"b{batch}_r{r}")
            entry["loader"] = type(t.train_loader).__name__
            entry.update(loader_fed(t, sc, device))
            ctx.save()
            entry["compute_only_images_per_s"] = round(compute_only(t, entry["step_ranges"], batch, r, device), 1)
            if entry["images_per_s"]:
                entry["loader_fed_over_compute_only"] = round(entry["images_per_s"] / entry["compute_only_images_per_s"], 4)
                if flagship == "budget":
                    entry["over_ffcv_imagenet_a100"] = round(entry["images_per_s"] / FFCV_IMAGENET_IMG_S_PER_A100, 3)
            if device.type == "cuda":
                entry["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            ctx.save()
            if i == 0:  # the sweep's own setting: eval rate, GPU-hours, telemetry
                entry["eval_images_per_s"] = round(eval_rate(t, sc.eval_passes, device), 1)
                entry["eval_res"] = int(cfg.data.val_res)
                if entry["images_per_s"]:
                    res["gpu_hours"] = gpu_hours(ctx, flagship, entry, r)
                ctx.save()
                entry["telemetry"] = telemetry_overhead(t, sc, batch, r, device)
        except Exception as exc:
            entry.update(_error(exc))
        finally:
            del t
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            ctx.save()


# ---- variants of the step (the benchmark only) ---------------------------------------------
def _variant_model_cfg(ctx: Context):
    s = flagship_settings("faithful")
    batch, r = (8, 32) if ctx.sc.tiny else (s["per_gpu_batch"], 224)
    cfg = build_config(read_yaml(FLAGSHIPS["faithful"].yaml), {"train": {"device": ctx.device.type}},
                       {"optim": {"lr": s["lr_global"] * s["per_gpu_batch"] / s["global_batch"]}},
                       *([{"model": {"name": "small_resnet"}}] if ctx.sc.tiny else []), check_paths=False)
    return cfg, batch, r


class BareStep:
    """model(x) -> loss -> backward -> optimizer.step, as Trainer.train_step without schedule
    and telemetry, in one of the variants' precisions / optimizers / wrappers."""

    def __init__(self, model, cfg, device, example, *, dtype=torch.bfloat16, scaler=False, fused=False,
                 ddp: dict | None = None, compile_backend: str | None = None):
        from imagenet_repro.optim.param_groups import param_groups
        from imagenet_repro.optim.registry import constructor_kwargs, registered

        o = cfg.optim
        groups = param_groups(model, weight_decay=o.weight_decay, peak_lr=o.lr, decay_norm_and_bias=o.decay_norm_and_bias,
                              example_input=example, rule=getattr(o, "normalized_rule", "graph"))
        extra = {"fused": True} if fused else {"foreach": True}
        self.optimizer = registered(o.name).cls(groups, **constructor_kwargs(registered(o.name), o), **extra)
        self.model = model
        self.forward = model
        if ddp is not None:
            self.forward = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, **ddp)
        if compile_backend:
            self.forward = torch.compile(self.forward, backend=compile_backend)
        self.device, self.dtype = device, dtype
        self.scaler = torch.amp.GradScaler(device.type) if scaler else None

    def __call__(self, images, labels) -> None:
        import torch.nn.functional as F

        with torch.autocast(self.device.type, dtype=self.dtype):
            loss = F.cross_entropy(self.forward(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()


def _interleaved(steps_fns: dict, images, labels, rounds: int, steps: int, device) -> dict:
    """Mean ms per step of each variant over ``rounds`` shuffled rounds of ``steps`` steps."""
    times: dict[str, list[float]] = {n: [] for n in steps_fns}
    names = list(steps_fns)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(names)
        for n in names:
            t0 = _now(device)
            for _ in range(steps):
                steps_fns[n](images, labels)
            times[n].append((_now(device) - t0) / steps)
    return {n: 1e3 * statistics.fmean(v) for n, v in times.items()}


def _batch(cfg, batch: int, r: int, device, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(batch, 3, r, r, device=device).contiguous(memory_format=fmt)
    return images, torch.randint(0, cfg.data.num_classes, (batch,), device=device)


def _fresh_model(cfg, device, channels_last: bool):
    from imagenet_repro.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes)
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def phase_variants(ctx: Context) -> None:
    import torch.distributed as dist

    sc, device, res = ctx.sc, ctx.device, ctx.result
    cfg, batch, r = _variant_model_cfg(ctx)
    cl = device.type == "cuda"
    images, labels = _batch(cfg, batch, r, device, cl)
    example = torch.zeros(2, 3, r, r, device=device)
    res.update(model=cfg.model.name, batch=batch, resolution=r, optimizer=cfg.optim.name, card=ctx.card(),
               baseline="bf16 autocast + the suite's SGD (foreach), as Trainer.train_step",
               rounds=sc.variant_rounds, steps_per_round=sc.variant_steps)
    variants = {"bf16+foreach": dict(), "fp16+scaler+foreach": dict(dtype=torch.float16, scaler=True),
                "bf16+fused": dict(fused=True), "fp16+scaler+fused": dict(dtype=torch.float16, scaler=True, fused=True),
                "bf16+foreach+ddp1": dict(ddp={}),
                "bf16+foreach+ddp1+bucket_view": dict(ddp={"gradient_as_bucket_view": True})}
    try:  # one rank: DDP's hooks, buckets and all-reduce calls without other GPUs
        if cl:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cl else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    except Exception as exc:
        res.setdefault("errors", {})["init_process_group"] = _error(exc)
        variants = {n: kw for n, kw in variants.items() if "ddp" not in kw}
    try:
        fns = {}
        for name, kw in variants.items():
            try:
                fns[name] = BareStep(_fresh_model(cfg, device, cl), cfg, device, example, **kw)
                for _ in range(3):  # warm: cuDNN autotune, the fused kernels, DDP's buckets
                    fns[name](images, labels)
            except Exception as exc:
                res.setdefault("errors", {})[name] = _error(exc)
                fns.pop(name, None)
        ms = _interleaved(fns, images, labels, sc.variant_rounds, sc.variant_steps, device)
        base = ms.get("bf16+foreach")
        res["step_ms"] = {n: round(v, 3) for n, v in ms.items()}
        res["over_baseline"] = {n: round(v / base, 4) for n, v in ms.items()} if base else {}
        res["images_per_s"] = {n: round(batch * 1e3 / v, 1) for n, v in ms.items()}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def phase_compile(ctx: Context) -> None:
    sc, device, res = ctx.sc, ctx.device, ctx.result
    cfg, batch, r = _variant_model_cfg(ctx)
    cl = device.type == "cuda"
    backend = "aot_eager" if sc.tiny else "inductor"
    images, labels = _batch(cfg, batch, r, device, cl)
    example = torch.zeros(2, 3, r, r, device=device)
    res.update(model=cfg.model.name, batch=batch, resolution=r, backend=backend, card=ctx.card(),
               note="torch.compile(model) in the bare bf16 + foreach step; tiny: aot_eager (no code generation)")
    eager = BareStep(_fresh_model(cfg, device, cl), cfg, device, example)
    compiled = BareStep(_fresh_model(cfg, device, cl), cfg, device, example, compile_backend=backend)
    for _ in range(3):
        eager(images, labels)
    t0 = _now(device)
    compiled(images, labels)  # forward and backward graphs compile here
    res["compile_s"] = round(_now(device) - t0, 1)
    for _ in range(2):
        compiled(images, labels)
    ctx.save()
    ms = _interleaved({"eager": eager, "compiled": compiled}, images, labels, sc.variant_rounds, sc.compile_steps, device)
    res["step_ms"] = {n: round(v, 3) for n, v in ms.items()}
    res["compiled_over_eager"] = round(ms["compiled"] / ms["eager"], 4)
    res["breakeven_steps"] = (round(res["compile_s"] * 1e3 / (ms["eager"] - ms["compiled"]))
                              if ms["compiled"] < ms["eager"] else None)


# ---- optimizers alone, loaders alone -------------------------------------------------------
def phase_optim(ctx: Context) -> None:
    from omegaconf import OmegaConf

    from imagenet_repro.config import ModelConfig
    from imagenet_repro.models import build_model
    from imagenet_repro.optim.param_groups import param_groups

    sc, device = ctx.sc, ctx.device
    bench = _bench_module("optim")
    torch.manual_seed(0)
    name = "small_resnet" if sc.tiny else "resnet50"
    model = build_model(OmegaConf.structured(ModelConfig(name=name)), 1000).to(device)
    groups = param_groups(model, weight_decay=5e-5, peak_lr=0.1)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opts = {n: o for n, (_, o) in bench.contenders(groups).items()}
    fused = device.type == "cuda"  # torch's fused SGD/AdamW: CUDA kernels
    if fused:
        g = lambda: [dict(x) for x in groups]  # noqa: E731
        opts["torch.SGD[fused]"] = torch.optim.SGD(g(), lr=0.1, momentum=0.9, fused=True)
        opts["torch.AdamW[fused]"] = torch.optim.AdamW(g(), lr=1e-3, fused=True)
    names = list(opts)
    times: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(0)
    for r in range(sc.optim_rounds + 3):
        lr = 0.1 * (1 - r / (sc.optim_rounds + 3))
        rng.shuffle(names)
        for n in names:
            for group in opts[n].param_groups:
                group["lr"] = lr if "sgd" in n.lower() else lr * 1e-2
            t0 = _now(device)
            opts[n].step()
            if r >= 3:
                times[n].append(_now(device) - t0)
    med = {n: statistics.median(ts) for n, ts in times.items()}
    fastest = {b: min((n for n in med if n.startswith(f"torch.{b}")), key=med.get) for b in ("SGD", "AdamW")}
    base = {"sgd[foreach]": "SGD", "sgdc[foreach]": "SGD", "adamw[foreach]": "AdamW", "adamc[foreach]": "AdamW"}
    ctx.result.update({"model": name, "params": sum(p.numel() for p in model.parameters()), "rounds": sc.optim_rounds,
                       "median_step_ms": {n: round(1e3 * v, 4) for n, v in sorted(med.items())},
                       "fastest_torch": fastest, "fused_available": fused,
                       "ratio_vs_fastest_torch": {n: round(med[n] / med[fastest[b]], 4) for n, b in base.items()}})


def phase_loader(ctx: Context) -> None:
    from imagenet_repro.data import build_loaders

    sc, device = ctx.sc, ctx.device
    ctx.limit_cpus("faithful")
    data = ctx.data()
    s = flagship_settings("faithful")
    batch, r = (8, 32) if sc.tiny else (s["per_gpu_batch"], 224)

    def rate(backend: str, path: str) -> dict:
        cfg = load_config(FLAGSHIPS["faithful"].yaml, [
            f"data.backend={backend}", f"data.train_path={path}", f"data.val_path={path}", "data.dataset=imagefolder",
            f"data.num_classes={data['classes']}", f"data.batch_size={batch}", f"data.min_res={r}", f"data.max_res={r}",
            "data.end_ramp=0"] + [o for o in sc.overrides() if o.startswith("data.")])
        train, _ = build_loaders(cfg, device)
        out = {"loader": type(train).__name__, "workers": int(cfg.data.num_workers)}
        for epoch in range(1 + sc.loader_epochs):  # epoch 0 warms up (ffcv: numba compile)
            t0, n = _now(device), 0
            for x, _ in train.epoch(epoch):
                n += x.shape[0]
            dt = _now(device) - t0
            out["first_epoch_s" if epoch == 0 else "images_per_s"] = round(dt if epoch == 0 else n / dt, 1)
        out["batch_device"] = str(x.device)
        return out

    ffcv = ctx.result["ffcv"] = rate("ffcv", data["train_beton"])
    ctx.save()
    tv = ctx.result["torchvision"] = rate("torchvision", data["train_dir"])
    ctx.result.update({"batch": batch, "resolution": r, "images": data["train_images"],
                       "ffcv_over_torchvision": round(ffcv["images_per_s"] / tv["images_per_s"], 3),
                       "note": "the faithful sweep's loader settings; same images: ffcv reads the .beton (50% JPEG "
                               "q90, 50% raw, as ffcv-imagenet), torchvision the JPEG folder; both deliver normalised "
                               "float batches on the device"})


CHILD_PHASES = {
    "data": phase_data,
    "faithful_train": lambda ctx: phase_train(ctx, "faithful"),
    "faithful_speed": lambda ctx: phase_speed(ctx, "faithful"),
    "budget_train": lambda ctx: phase_train(ctx, "budget"),
    "budget_speed": lambda ctx: phase_speed(ctx, "budget"),
    "variants": phase_variants, "optim": phase_optim, "loader": phase_loader, "compile": phase_compile,
}


def child_main(phase: str, tiny: bool, device: str, work: Path, out: Path) -> int:
    if tiny and "numba" not in sys.modules:
        os.environ.setdefault("NUMBA_OPT", "0")  # tiny data: compile time dominates, not code speed
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    if dev.type == "cpu":
        torch.set_num_threads(1)
    ctx = Context(phase, Scale(tiny), dev, work, out)
    try:
        CHILD_PHASES[phase](ctx)
        return 0
    except Exception as exc:
        ctx.result.update(_error(exc))
        print(f"gpu.py: {phase} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        ctx.save()


# ---- the driver ----------------------------------------------------------------------------
def run_phase(phase: str, cap: float, tiny: bool, device: str, work: Path) -> dict:
    """One phase in a child process (own session: killed with its workers at ``cap``)."""
    out = work / f"phase_{phase}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", phase, "--child-device", device,
           "--workdir", str(work), "--child-out", str(out)] + (["--tiny"] if tiny else [])
    tail: collections.deque[str] = collections.deque(maxlen=25)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)

    def relay():  # its stderr to ours (the log), keeping the end for the JSON
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip())

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    status: dict = {"cap_s": round(cap, 1)}
    try:
        rc = proc.wait(timeout=cap)
        status["exit"] = rc
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status["exit"] = None
        status["timed_out"] = f"killed at its cap of {cap:.0f} s; the numbers below are those it had written"
    reader.join(timeout=5)
    status["phase_s"] = round(time.perf_counter() - t0, 1)
    from imagenet_repro import files

    result = files.read_json(out) or {}
    if status["exit"] not in (0, None) and "error" not in result:
        result["error"] = f"exit {status['exit']}"
    if status["exit"] != 0:
        result["stderr_tail"] = list(tail)
    return {**result, **status}


def evaluate_targets(result: dict) -> dict:
    """The issue's targets as ratios with pass/fail (None where the measure is missing)."""
    def configs(name):
        c = (result.get(name) or {}).get("configs") or {}
        return c.values() if isinstance(c, dict) else []

    speed = [*configs("faithful_speed"), *configs("budget_speed")]
    fed = [c.get("loader_fed_over_compute_only") for c in speed]
    tel = [(c.get("telemetry") or {}).get("overhead") for c in speed]
    opt = (result.get("optim") or {}).get("ratio_vs_fastest_torch") or {}
    ld = (result.get("loader") or {}).get("ffcv_over_torchvision")
    trains = [(result.get(p) or {}).get("ok") for p in ("faithful_train", "budget_train") if p in result]

    def check(values, ok):
        values = [v for v in values if v is not None]
        return {"values": values, "pass": all(ok(v) for v in values) if values else None}

    t = TARGETS
    return {
        "loader_fed_over_compute_only >= 0.90": check(fed, lambda v: v >= t["loader_fed_over_compute_only"]),
        "telemetry_overhead <= 0.01": check(tel, lambda v: v <= t["telemetry_overhead"]),
        "optimizer_over_fastest_torch <= 1.10": check(list(opt.values()), lambda v: v <= t["optimizer_over_fastest_torch"]),
        "ffcv_over_torchvision >= 3": check([ld], lambda v: v >= t["ffcv_over_torchvision"]),
        "train_checks (loss falls, finite, eval, exact resume, inputs, resolutions)": check(trains, lambda v: v is True),
    }


def headline(name: str, r: dict) -> str:
    """One line per phase for the end of the log (the device reply carries the log's end)."""
    if "skipped" in r:
        return r["skipped"]
    bits = []
    if r.get("timed_out"):
        bits.append("TIMED OUT")
    if r.get("error"):
        bits.append(f"ERROR {r['error'][:80]}")
    if name == "data":
        bits.append(f"{r.get('train_images')} + {r.get('val_images')} images" + (" (reused)" if r.get("reused") else ""))
    elif name.endswith("_train"):
        bits.append(f"ok={r.get('ok')} loss {r.get('loss_first')}->{r.get('loss_last')} exact={r.get('resume_exact')}")
    elif name.endswith("_speed"):
        for k, c in (r.get("configs") or {}).items():
            tel = (c.get("telemetry") or {}).get("overhead")
            bits.append(f"{k}: {c.get('images_per_s')} img/s, x{c.get('loader_fed_over_compute_only')} of compute-only"
                        + (f", telemetry {tel:+.2%}" if tel is not None else "")
                        + (f", ERROR {c['error'][:80]}" if c.get("error") else ""))
        if r.get("gpu_hours"):
            bits.append(f"GPU-h/epoch {r['gpu_hours']['gpu_hours_per_epoch']} (estimate {r['gpu_hours']['spec_estimate']})")
    elif name == "variants":
        bits.append("step time over bf16+foreach: " + ", ".join(f"{k} {v}" for k, v in (r.get("over_baseline") or {}).items()))
        bits += [f"{k}: ERROR {e['error'][:60]}" for k, e in (r.get("errors") or {}).items()]
    elif name == "compile":
        bits.append(f"compile {r.get('compile_s')} s, compiled/eager x{r.get('compiled_over_eager')}")
    elif name == "optim":
        bits.append(str(r.get("ratio_vs_fastest_torch")))
    elif name == "loader":
        bits.append(f"ffcv/torchvision x{r.get('ffcv_over_torchvision')}")
    return f"{r.get('phase_s', '?')} s; " + "; ".join(b for b in bits if b)


def earlier_phases(path: Path, result: dict) -> dict:
    """The phases an earlier run wrote to ``path`` on the same card, torch and scale: a rerun of
    some phases (or one whose phase is skipped by the deadline) keeps them, marked ``kept_from_run``."""
    from imagenet_repro import files

    old = files.read_json(path) if path.is_file() else None
    env, old_env = result["environment"], (old or {}).get("environment") or {}
    if not old or old.get("scale") != result["scale"] or any(
            old_env.get(k) != env.get(k) for k in ("torch", "nvidia_smi", "machine")):
        return {}
    return {"_started": old.get("started"), **{p: old[p] for p in PHASE_NAMES if isinstance(old.get(p), dict)
                                                and not {"skipped", "error", "timed_out"} & set(old[p])}}


def parse_caps(text: str) -> dict[str, float]:
    caps = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or name not in PHASE_NAMES:
            raise ValueError(f"--caps: expected PHASE=SECONDS with PHASE in {','.join(PHASE_NAMES)} (got {item!r})")
        try:
            caps[name] = float(value)
        except ValueError:
            raise ValueError(f"--caps: {item!r}: seconds must be a number") from None
        if not (0 < caps[name] < 1e6):
            raise ValueError(f"--caps: {item!r}: seconds must be > 0")
    return caps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="every phase tiny (automatic without CUDA; GPU_BENCH_TINY=1)")
    ap.add_argument("--phases", default=",".join(PHASE_NAMES), help=f"subset of {','.join(PHASE_NAMES)} (run in that order)")
    ap.add_argument("--caps", default="", help="PHASE=SECONDS,... replacing the phases' own time caps")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help=f"end the whole run by then (default {GPU_DEADLINE_S} on CUDA, none tiny)")
    ap.add_argument("--out", default=None, help="JSON path (default results/bench/gpu.json; tiny: gpu_tiny.json)")
    ap.add_argument("--workdir", default=None, help="scratch folder, kept (a rerun reuses its data); "
                                                    "default a temp folder, removed at the end")
    ap.add_argument("--child", choices=PHASE_NAMES, help=argparse.SUPPRESS)
    ap.add_argument("--child-device", choices=("cuda", "cpu"), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tiny = args.tiny or os.environ.get("GPU_BENCH_TINY", "") not in ("", "0") or not torch.cuda.is_available()
    if args.child:
        return child_main(args.child, tiny, args.child_device, Path(args.workdir), Path(args.child_out))

    phases = [p for p in args.phases.split(",") if p]
    bad = [p for p in phases if p not in PHASE_NAMES]
    try:
        if bad:
            raise ValueError(f"unknown phase(s) {','.join(bad)}; choose from {','.join(PHASE_NAMES)}")
        caps = parse_caps(args.caps)
        if args.deadline_s is not None and not (0 < args.deadline_s < 1e6):
            raise ValueError(f"--deadline-s must be > 0 (got {args.deadline_s})")
    except ValueError as exc:  # bad input: one line, exit 2, nothing written
        print(f"gpu.py: {exc}", file=sys.stderr)
        return 2
    if any(p.needs_data for p in PHASES if p.name in phases) and "data" not in phases:
        phases.append("data")
    phases = [p for p in PHASE_NAMES if p in phases]  # value order
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and not args.tiny:
        print("gpu.py: no CUDA device: every phase runs tiny", file=sys.stderr, flush=True)
    sc = Scale(tiny)
    deadline_s = args.deadline_s if args.deadline_s is not None else (None if tiny else GPU_DEADLINE_S)
    result_path = Path(args.out) if args.out else ROOT / "results" / "bench" / ("gpu_tiny.json" if tiny else "gpu.json")
    t_start = time.perf_counter()
    result: dict = {"benchmark": "gpu", "scale": sc.name,
                    "command": " ".join(["python3", "benchmarks/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
                    "launcher": os.environ.get("GPU_BENCH_LAUNCHER"), "device_run": DEVICE_RUN,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "deadline_s": deadline_s,
                    "targets": TARGETS, "environment": environment(device, sc)}
    out_copy = Path(os.environ["OUT"]) / result_path.name if os.environ.get("OUT") else None

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    kept_copy = work / result_path.name  # on a warm GPU machine the workdir outlives the repo's copy
    earlier = earlier_phases(result_path if result_path.is_file() else kept_copy, result)

    def write() -> dict:
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        kept = {p: r for p, r in earlier.items() if p not in result or "skipped" in result[p]}
        whole = {**result, **{p: {**r, "kept_from_run": r.get("kept_from_run") or earlier["_started"]}
                              for p, r in kept.items() if p != "_started"}}
        for p in PHASE_NAMES:  # a phase that failed this time keeps the earlier run's finished one beside it
            if p in result and p in earlier and ("error" in result[p] or result[p].get("timed_out")):
                whole[p] = {**result[p], "earlier_run": {k: v for k, v in earlier[p].items() if k != "earlier_run"}}
        whole = {k: whole[k] for k in [*result, *(p for p in PHASE_NAMES if p in whole and p not in result)]}
        whole["target_checks"] = evaluate_targets(whole)
        _write_json(result_path, whole)
        if out_copy is not None:
            _write_json(out_copy, whole)
        _write_json(kept_copy, whole)
        return whole

    cap_of = {p.name: caps.get(p.name, TINY_CAP_S if tiny else p.cap_s) for p in PHASES}
    try:
        shown = write()
        for phase in phases:
            left = math.inf if deadline_s is None else deadline_s - (time.perf_counter() - t_start)
            cap = min(cap_of[phase], left)
            if left < (0 if tiny else MIN_PHASE_S) or left <= 0:
                result[phase] = {"skipped": f"skipped: deadline ({max(left, 0):.0f} s left of {deadline_s:.0f})"}
            elif phase != "data" and PHASES[PHASE_NAMES.index(phase)].needs_data and (result.get("data") or {}).get("exit") != 0:
                result[phase] = {"skipped": "skipped: the data phase did not complete"}
            else:
                print(f"gpu.py: {phase} (cap {cap:.0f} s) ...", flush=True)
                result[phase] = run_phase(phase, cap, tiny, device, work)
            print(f"gpu.py: {phase}: {headline(phase, result[phase])}", flush=True)
            shown = write()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ngpu.py: {sc.name} scale, {result['wall_s']} s; wrote {result_path}" + (f" and {out_copy}" if out_copy else ""))
    for phase in phases:
        kept = shown[phase].get("kept_from_run")
        print(f"  {phase:15s} {headline(phase, result[phase])}" + (f" (the run of {kept} kept)" if kept else ""))
    for phase in (p for p in PHASE_NAMES if p in shown and p not in phases):
        print(f"  {phase:15s} kept from the run of {shown[phase]['kept_from_run']}")
    for name, check in shown["target_checks"].items():
        print(f"  target {name}: {check['pass']} {check['values']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
