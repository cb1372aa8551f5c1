"""``repro sweep SPEC --rehearse``: run every structurally distinct variant of a grid, small,
the way the real sweep will run it, before a GPU-hour is spent.

For a spec it:

1. plans the real grid (every point resolved and validated, and checked against the
   spec's resources by :func:`~imagenet_repro.sweep.placement.check_placements`, the rules the
   trainer applies at start);
2. picks the variants (:func:`choose_variants`): every optimizer (and every value of any
   other non-numeric axis) and the smallest and largest value of every numeric axis
   (lr, weight decay, ...); seeds do not change code paths and are not varied;
3. writes a small synthetic dataset shaped like the spec's (:func:`rehearsal_data`:
   photo-like JPEGs at ImageNet sizes with every one of ``data.num_classes`` classes, or
   small images for the datasets whose registry entry says ``small_images``) through the same writer as
   ``repro data write``, cached under the rehearsal root; the user's data is never read;
4. runs each variant's real resolved config (same model, optimizer, schedule, telemetry,
   data pipeline, DDP world size) with data, batch, steps and epochs shrunk
   (:func:`shrink`), through the executor the sweep would use (SLURM when it answers,
   else submitit's local executor), three times over two run folders:
   ``<name>/`` uninterrupted (the reference), and ``<name>-resume/`` first killed with
   SIGKILL right after a checkpoint forced mid-epoch, then resubmitted by the launcher
   like any failed run and resumed: its steps, per-layer and eval tables must equal the
   reference's exactly;
   With several ranks the first variant is also run a fourth time, ``<name>-signal/``: the
   time-limit signal (SIGUSR2) reaches the last rank at step ``KILL_AT_STEP`` and the others
   one step later each (as SLURM delivers it to the tasks moments apart and GPUs' host threads
   run steps apart): every rank must stop at the same step with one checkpoint, the job be
   requeued (or resubmitted) and resume exactly (:class:`SignalAtSteps`);
5. aggregates and draws the figures of the reference runs;
6. prints one table (variant | ranks | started | steps/s | resumed exactly | problems),
   the multi-rank signal's line, and returns 1 if any variant failed.

Without GPUs the runs are on CPU over gloo, with the spec's ranks capped by ``ranks``
(default 2), and what could not be rehearsed (CUDA, bf16 autocast, channels_last, NCCL,
the GPU FFCV pipeline) is printed.  Everything lives under ``<root>/`` (default
``rehearsal/``): runs in ``<root>/runs/``, data in ``<root>/data/``, tables and figures in
``<root>/results/``, apart from the real sweep's runs and results.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from imagenet_repro import files, rundir
from imagenet_repro.analysis.aggregate import aggregate_sweep
from imagenet_repro.analysis.figures import make_figures
from imagenet_repro.config import build_config, config_hash
from imagenet_repro.data.datasets import get_dataset
from imagenet_repro.data.synthetic import write_synthetic_imagefolder
from imagenet_repro.data.writer import write_imagefolder
from imagenet_repro.errors import ConfigError, describe
from imagenet_repro.models import fixed_input_size
from imagenet_repro.sweep.launcher import execute, pick_cluster
from imagenet_repro.sweep.spec import (
    LocalSpec,
    PlannedRun,
    SweepSpec,
    check_placements,
    grid_points,
    load_spec,
    resolve_runs,
)
from imagenet_repro.train.callbacks import Callback
from imagenet_repro.train.compare import compare_runs
from imagenet_repro.train.loop import run_training

DEFAULT_ROOT = "rehearsal"
STEPS_PER_EPOCH = 3
EPOCHS = 2
KILL_AT_STEP = STEPS_PER_EPOCH + 1  # mid-way through the second epoch
VAL_IMAGES = 8
CPU_MAX_RES = 64  # on CPU the largest resolution is scaled down to this (ResNet-50 at 192 px: ~9x the compute)
NOT_ON_CPU = "CUDA device placement, bf16 autocast, channels_last, NCCL, the GPU FFCV pipeline (ToDevice, normalisation on GPU)"


# ---------------------------------------------------------------------------- variants
def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def choose_variants(spec: SweepSpec, mode: str = "cover") -> list[dict]:
    """Grid points that together exercise every structurally distinct part of the grid.

    Non-numeric axes (the optimizer, a backend, a model name, ...) change code paths: every
    combination of their values is a variant.  Numeric axes (lr, weight decay, ...) change
    numbers, and their extremes are where runs break (divergence at the largest lr, no decay
    at the smallest): ``cover`` gives each numeric axis its minimum in one variant and its
    maximum in another, alternating over the non-numeric combinations, so every optimizer
    and every extreme appears at least once; ``corners`` runs every non-numeric combination
    at both the all-minimum and the all-maximum corner.  The seed axis is held at its first
    value.  A spec with several grids gets the variants of each.  Every variant is a point
    of the real grid."""
    if mode not in ("cover", "corners"):
        raise ConfigError(f"--variants must be cover or corners (got {mode!r})")
    return [p for grid in spec.grids for p in _grid_variants(grid.axes, mode)]


def _grid_variants(axes: dict, mode: str) -> list[dict]:
    categorical = {k: v for k, v in axes.items() if k != "seed" and not _numeric(v)}
    numeric = {k: v for k, v in axes.items() if k != "seed" and _numeric(v)}
    fixed = {k: v[0] for k, v in axes.items() if k == "seed"}
    combos = [dict(zip(categorical, c)) for c in _product(list(categorical.values()))]
    varied = [k for k, v in numeric.items() if min(v) != max(v)]
    ends = [{k: (min(v) if end == "min" else max(v)) for k, v in numeric.items()} for end in ("min", "max")]
    if not varied:
        picks = [(c, ends[0]) for c in combos]
    elif mode == "corners":
        picks = [(c, e) for c in combos for e in ends]
    else:
        picks = [(combos[i % len(combos)], ends[i % 2]) for i in range(max(len(combos), 2))]
    out = []
    for combo, extreme in picks:
        point = {**combo, **extreme, **fixed}
        out.append({k: point[k] for k in axes})
    return out


def _product(lists: list[list]) -> list[tuple]:
    import itertools

    return list(itertools.product(*lists))


# ---------------------------------------------------------------------------- data
def rehearsal_data(root: Path, cfg: dict, image_root_only: bool = False) -> tuple[str, str]:
    """(train_path, val_path) of a cached synthetic dataset shaped like ``cfg``'s data.

    One ImageFolder holding every one of ``data.num_classes`` classes (ImageNet-sized
    photo-like JPEGs; or images of ``data.max_res`` px for the small-image datasets), written
    to a ``.beton`` by :func:`imagenet_repro.data.writer.write_imagefolder` (what ``repro
    data write`` runs).  Train and val read the same images.  The torchvision backend gets
    the folder itself.  Built once per shape under ``root/data/``; a marker written last
    makes an interrupted build start again."""
    d = cfg["data"]
    classes = int(d["num_classes"])
    small = get_dataset(d["dataset"]).small_images
    side = int(d["max_res"])
    n_images = max(classes, 64)
    key = f"{'small' + str(side) if small else 'imagenet'}-{classes}c-{n_images}"
    folder = root / "data" / key
    images, beton, marker = folder / "images", folder / "data.beton", folder / "READY"
    if not marker.is_file():
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        size = dict(height=(side, side + 1), width=(side, side + 1)) if small else {}
        print(f"rehearsal: writing {n_images} synthetic images ({classes} classes) to {folder}/", flush=True)
        write_synthetic_imagefolder(images, n_images, classes, seed=0, **size)
        write_imagefolder(images, beton, max_resolution=256, jpeg_quality=90, compress_probability=0.5,
                          num_workers=2)
        files.atomic_write_text(marker, key + "\n")
    if d["backend"] == "torchvision" or image_root_only:
        return str(images), str(images)
    return str(beton), str(beton)


# ---------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class Scale:
    """How far a variant is shrunk: ranks, per-rank batch, and the device it runs on."""

    ranks: int
    batch_per_rank: int
    gpu: bool


def cpu_resolutions(config: dict) -> dict:
    """``data`` (and ``model``) overrides that scale a CPU rehearsal's resolutions down.

    The largest of ``min_res``/``max_res``/``val_res`` becomes :data:`CPU_MAX_RES` and the others
    keep their ratio to it (a ramp still ramps, val still differs from train), so the same decode,
    crop and resize ops run on a fraction of the pixels.  A model with one fixed input size (a timm
    ViT) is given the new size through ``model.kwargs.img_size``, where train and val share one
    resolution; otherwise its resolution is kept.  Small-image data sets are left as they are."""
    d = config["data"]
    top = max(int(d["min_res"]), int(d["max_res"]), int(d["val_res"]))
    if top <= CPU_MAX_RES:
        return {}
    if fixed_input_size(config["model"]["name"]):
        if not int(d["min_res"]) == int(d["max_res"]) == int(d["val_res"]):
            return {}
        kwargs = dict(config["model"].get("kwargs") or {}, img_size=CPU_MAX_RES)
        return {"data": dict(min_res=CPU_MAX_RES, max_res=CPU_MAX_RES, val_res=CPU_MAX_RES),
                "model": {"kwargs": kwargs}}
    return {"data": {k: max(1, round(int(d[k]) * CPU_MAX_RES / top)) for k in ("min_res", "max_res", "val_res")}}


def shrink(config: dict, data: tuple[str, str], scale: Scale) -> dict:
    """Overrides that make a resolved config a few-step rehearsal run; everything that
    selects code (model, optimizer, schedule kind, telemetry, backend, augmentation, a
    resolution ramp) is kept.  On CPU the resolutions are scaled down (:func:`cpu_resolutions`);
    on GPUs they are the spec's, so memory and speed are the real run's."""
    d, s, t = config["data"], config["schedule"], config["train"]
    per_rank = max(1, min(d["batch_size"] // scale.ranks or 1, scale.batch_per_rank))
    epochs = int(t["epochs"])
    over: dict[str, Any] = {
        "data": {"train_path": data[0], "val_path": data[1], "train_subset": 0, "val_subset": VAL_IMAGES,
                 "batch_size": per_rank * scale.ranks, "val_batch_size": min(int(d["val_batch_size"]), VAL_IMAGES),
                 "num_workers": 1},
        "train": {"epochs": EPOCHS, "steps_per_epoch": STEPS_PER_EPOCH, "progress": False},
        "checkpoint": {"every_minutes": 0.0, "every_epoch": True},
        "telemetry": {"layer_every": min(int(config["telemetry"]["layer_every"]), 2),
                      "flush_every": min(int(config["telemetry"]["flush_every"]), 2)},
        # the same share of the run warms up; a resolution ramp goes min -> max between the two epochs
        "schedule": {"warmup_epochs": float(s["warmup_epochs"]) * EPOCHS / max(epochs, 1)},
    }
    if int(d["end_ramp"]) > 0:
        over["data"].update(start_ramp=0, end_ramp=1)
    if not scale.gpu:
        over["train"].update(device="cpu", threads=1)
        smaller = cpu_resolutions(config)
        over["data"].update(smaller.get("data", {}))
        if "model" in smaller:
            over["model"] = smaller["model"]
    return over


def plan_variants(spec: SweepSpec, root: Path, scale: Scale, mode: str) -> list[tuple[PlannedRun, PlannedRun]]:
    """(reference run, resume run) per variant, in two rehearsal sweeps under ``root/runs``."""
    ref_sweep, res_sweep, _ = rehearsal_specs(spec, root, scale)
    real = {r.run_id: r for r in resolve_runs(spec, choose_variants(spec, mode))}
    pairs = []
    for run in real.values():
        data = rehearsal_data(root, run.config)
        cfg = build_config(run.config, shrink(run.config, data, scale))
        container = OmegaConf.to_container(cfg, resolve=True)
        run_id = config_hash(cfg)
        pairs.append((PlannedRun(run.point, container, run_id, ref_sweep.sweep_dir / run_id),
                      PlannedRun(run.point, container, run_id, res_sweep.sweep_dir / run_id)))
    return pairs


def rehearsal_specs(spec: SweepSpec, root: Path, scale: Scale) -> tuple[SweepSpec, SweepSpec, SweepSpec]:
    """The reference, the resume and the signal sweeps: the spec's scheduler settings, the
    rehearsal's resources (``scale.ranks`` tasks on one node; GPUs only with ``scale.gpu``), its
    own root."""
    slurm = dataclasses.replace(
        spec.slurm, nodes=1, tasks_per_node=scale.ranks, gpus_per_node=scale.ranks if scale.gpu else 0,
        cpus_per_task=spec.slurm.cpus_per_task if scale.gpu else 1,
        mem_gb=spec.slurm.mem_gb if scale.gpu else 4.0 * scale.ranks, timeout_min=30, signal_delay_s=10,
        array_parallelism=1, max_timeout_requeues=0)
    runs_root = (root / "runs").resolve()
    if runs_root == spec.runs_root.resolve():
        raise ConfigError(f"--rehearse-root {root} would put rehearsal runs beside the real sweep's ({spec.runs_root})")
    common = dict(runs_root=runs_root, slurm=slurm, local=LocalSpec(parallelism=1))
    return (dataclasses.replace(spec, name=spec.name, **common),
            dataclasses.replace(spec, name=f"{spec.name}-resume", **common),
            dataclasses.replace(spec, name=f"{spec.name}-signal", **common))


# ---------------------------------------------------------------------------- the kill
class KillAfterCheckpoint(Callback):
    """A sweep job's trainer that checkpoints at step ``step`` and SIGKILLs every rank there.

    Every rank runs the same hook; the barrier makes sure rank 0's checkpoint is on disk
    before any rank dies, so the run is left exactly as a node failure would leave it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, cfg, run_dir: Path) -> str:
        return run_training(cfg, run_dir, callbacks=[self])

    def on_step_end(self, trainer, images, labels) -> None:
        if trainer.step != self.step:
            return
        trainer.save_checkpoint()
        if trainer.dist.enabled:
            import torch.distributed

            torch.distributed.barrier()
        os.kill(os.getpid(), signal.SIGKILL)


class SignalAtSteps(Callback):
    """A sweep job's trainer whose ranks get ``signum`` at different steps: the last rank at
    step ``step``, each lower rank one step later (rank 0 last), in the run's first attempt only
    (the requeued job resumes without a signal).  ``stop_within_s``: the spec's signal delay."""

    def __init__(self, step: int, stop_within_s: float, signum: int = signal.SIGUSR2) -> None:
        self.step, self.stop_within_s, self.signum = step, stop_within_s, int(signum)

    def __call__(self, cfg, run_dir: Path) -> str:
        return run_training(cfg, run_dir, callbacks=[self], stop_within_s=self.stop_within_s)

    def at(self, rank: int, world_size: int) -> int:
        return self.step + (world_size - 1 - rank)

    def on_step_end(self, trainer, images, labels) -> None:
        if trainer.first_step == 0 and trainer.step == self.at(trainer.dist.rank, trainer.dist.world_size):
            os.kill(os.getpid(), self.signum)


# ---------------------------------------------------------------------------- checks
def steps_per_second(run_dir: Path, global_batch: int) -> float:
    """Median training steps per second of a run (from its logged images/s)."""
    import pandas as pd

    try:
        steps = pd.read_parquet(run_dir / rundir.STEPS)
    except Exception:
        return math.nan
    rates = steps["images_per_s"].iloc[1:] if len(steps) > 1 else steps["images_per_s"]  # step 0 carries compilation
    return float(rates.median()) / global_batch if len(rates) else math.nan


@dataclass
class VariantResult:
    label: str
    ranks: int
    started: bool = False
    steps_per_s: float = math.nan
    resumed: str = "-"
    problems: list = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.started and not self.problems


def _status(run_dir: Path) -> dict:
    return files.read_json(run_dir / rundir.STATUS) or {}


def _check_variant(ref: PlannedRun, res: PlannedRun, ranks: int) -> VariantResult:
    out = VariantResult(ref.label(), ranks)
    a, b = _status(ref.run_dir), _status(res.run_dir)
    out.started = (ref.run_dir / rundir.STEPS).is_file()
    out.steps_per_s = steps_per_second(ref.run_dir, ref.config["data"]["batch_size"])
    for which, st in (("reference", a), ("resumed", b)):
        if st.get("state") not in ("done", "diverged"):
            out.problems.append(f"{which} run {st.get('state', 'never started')}: {st.get('reason', '')}".rstrip(": "))
    if a.get("state") == "diverged" and (a.get("step") or 0) < KILL_AT_STEP:
        out.resumed = f"n/a (diverged at step {a.get('step')})"
    elif not out.problems:
        if b.get("resumed_from_step") != KILL_AT_STEP:
            out.problems.append(f"the resumed run did not resume from step {KILL_AT_STEP} "
                                f"(resumed_from_step={b.get('resumed_from_step')})")
        diffs = compare_runs(ref.run_dir, res.run_dir)
        out.problems += diffs
        out.resumed = "yes" if not out.problems else "NO"
    return out


def check_signal_run(ref: PlannedRun, run: PlannedRun, ranks: int, trainer: SignalAtSteps) -> list[str]:
    """The problems of the multi-rank signal run: it must have stopped once, on every rank at
    the first signal's step (the status of the resumed attempt keeps the stop's reason in
    ``resumed_after``), and resumed from there to the reference's tables."""
    st, name = _status(run.run_dir), signal.Signals(trainer.signum).name
    if st.get("state") not in ("done", "diverged"):
        return [f"signalled run {st.get('state', 'never started')}: {st.get('reason', '')}".rstrip(": ")]
    first = trainer.at(ranks - 1, ranks)
    expected = (f"interrupted by {name} at step {first} (seen by rank {ranks - 1} of {ranks}); "
                f"resumes from its checkpoint")
    problems = []
    if st.get("resumed_after") != expected:
        problems.append(f"the signalled run did not stop once at step {first} on every rank "
                        f"(status before its resume: {st.get('resumed_after')!r})")
    if st.get("resumed_from_step") != first:
        problems.append(f"the signalled run did not resume from step {first} "
                        f"(resumed_from_step={st.get('resumed_from_step')})")
    return problems + compare_runs(ref.run_dir, run.run_dir)


def format_table(results: list[VariantResult]) -> str:
    header = ["variant", "ranks", "started", "steps/s", "resumed exactly", "problems"]
    rows = [[r.label, str(r.ranks), "yes" if r.started else "NO",
             "-" if math.isnan(r.steps_per_s) else f"{r.steps_per_s:.2f}", r.resumed,
             "; ".join(r.problems) or "none"] for r in results]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


# ---------------------------------------------------------------------------- entry point
def rehearse(spec_path: str | Path, cluster: str = "auto", ranks: int = 2, batch_per_rank: int = 4,
             root: str | Path = DEFAULT_ROOT, mode: str = "cover", gpu: Optional[bool] = None,
             poll_s: float = 1.0) -> int:
    """Rehearse the sweep of ``spec_path``; the exit code of ``repro sweep --rehearse``."""
    t0 = time.monotonic()
    if ranks < 1:
        raise ConfigError(f"--ranks must be >= 1 (got {ranks})")
    if batch_per_rank < 1:
        raise ConfigError(f"--batch-per-rank must be >= 1 (got {batch_per_rank})")
    spec = load_spec(spec_path)
    check_placements(spec, resolve_runs(spec, grid_points(spec)))  # the real grid on the real resources
    chosen = pick_cluster(cluster)
    if gpu is None:  # on the spec's GPUs only when this machine has one (else CPU over gloo)
        import torch

        gpu = torch.cuda.is_available()
    world = min(spec.slurm.world_size, ranks)
    scale = Scale(ranks=world, batch_per_rank=batch_per_rank, gpu=gpu)
    root = Path(root)
    pairs = plan_variants(spec, root, scale, mode)
    ref_sweep, res_sweep, sig_sweep = rehearsal_specs(spec, root, scale)
    signalled = None
    if world > 1:  # the first variant once more, its ranks signalled at different steps
        ref0 = pairs[0][0]
        signalled = dataclasses.replace(ref0, run_dir=sig_sweep.sweep_dir / ref0.run_id)
    print(f"rehearsal of {spec.name}: {len(pairs)} variants x (reference, kill at step {KILL_AT_STEP} + resume)"
          + (" + a multi-rank signal" if signalled else "")
          + f", {world} rank(s) {'on GPU' if gpu else 'on CPU over gloo'} (spec: {spec.slurm.world_size}), "
          f"{batch_per_rank} images per rank, {EPOCHS} epochs x {STEPS_PER_EPOCH} steps, cluster {chosen}; "
          f"runs in {ref_sweep.sweep_dir} and {res_sweep.sweep_dir}", flush=True)
    for old in (ref_sweep.sweep_dir, res_sweep.sweep_dir, sig_sweep.sweep_dir):  # a rehearsal always starts from scratch
        if old.is_dir():
            import shutil

            shutil.rmtree(old)
    refs = [p[0] for p in pairs]
    resumes = [p[1] for p in pairs]
    print("rehearsal: reference runs", flush=True)
    execute(ref_sweep, refs, chosen, poll_s=poll_s, progress=False, announce=False)
    print(f"rehearsal: runs killed at step {KILL_AT_STEP}", flush=True)
    for run in resumes:  # one job each: the kill ends the whole job (a local lane would lose its other runs)
        execute(res_sweep, [run], chosen, trainer=KillAfterCheckpoint(KILL_AT_STEP), poll_s=poll_s, progress=False, announce=False)
    print("rehearsal: the killed runs resubmitted (they resume from their checkpoint)", flush=True)
    execute(res_sweep, resumes, chosen, poll_s=poll_s, progress=False, announce=False)
    results = [_check_variant(a, b, world) for a, b in pairs]
    signal_line, signal_problems = None, []
    if signalled is not None:
        trainer = SignalAtSteps(KILL_AT_STEP, sig_sweep.slurm.signal_delay_s)
        print(f"rehearsal: SIGUSR2 to rank {world - 1} at step {KILL_AT_STEP}, then to each lower rank one step "
              f"later; requeued (or resubmitted), resumed", flush=True)
        execute(sig_sweep, [signalled], chosen, trainer=trainer, poll_s=poll_s, progress=False, announce=False)
        execute(sig_sweep, [signalled], chosen, poll_s=poll_s, progress=False, announce=False)  # a failed run resubmitted
        signal_problems = check_signal_run(pairs[0][0], signalled, world, trainer)
        signal_line = (f"multi-rank signal ({signalled.label()}, {world} ranks, SIGUSR2 at steps "
                       f"{', '.join(str(trainer.at(r, world)) for r in range(world))} of ranks 0..{world - 1}): "
                       + ("every rank stopped at step " + str(KILL_AT_STEP) + ", one checkpoint, resumed exactly"
                          if not signal_problems else "FAILED: " + "; ".join(signal_problems)))

    analysis = []
    try:
        aggregate_sweep(ref_sweep.sweep_dir, results_root=root / "results", quiet=True)  # its sweep.json
        files = make_figures(ref_sweep.sweep_dir, results_root=root / "results", quiet=True)
        analysis.append(f"aggregate + figures: {len(files)} files in {root / 'results' / spec.name}/")
    except Exception as exc:  # reported in the table's verdict, not raised
        analysis.append(f"aggregate/figures FAILED: {describe(exc)}")
    print(format_table(results))
    if signal_line:
        print(signal_line)
    for line in analysis:
        print(line)
    if not gpu and spec.slurm.gpus_per_node > 0:
        print(f"not rehearsed here (no GPU): {NOT_ON_CPU}")
    first = resolve_runs(spec, choose_variants(spec, mode)[:1])[0].config["data"]
    small = pairs[0][0].config["data"]
    if (first["max_res"], first["val_res"]) != (small["max_res"], small["val_res"]):
        res = "{min_res}-{max_res} px train, {val_res} px val".format
        print(f"resolutions: the spec's {res(**first)} scaled to {res(**small)} on CPU (on GPUs: the spec's)")
    if spec.slurm.world_size > world:
        print(f"ranks: the spec runs {spec.slurm.world_size} ranks; rehearsed with {world} (--ranks)")
    failed = [r for r in results if not r.ok] + [a for a in analysis if "FAILED" in a] + signal_problems
    verdict = "FAILED" if failed else "passed"
    print(f"rehearsal of {spec.name} {verdict}: {len(results) - sum(not r.ok for r in results)}/{len(results)} variants "
          f"clean in {time.monotonic() - t0:.0f} s")
    return 1 if failed else 0


__all__ = ["choose_variants", "rehearsal_data", "shrink", "rehearse", "KillAfterCheckpoint", "SignalAtSteps"]
