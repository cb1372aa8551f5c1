"""Telemetry overhead: a ResNet-50 training step with vs without norm telemetry.

The same model, optimizer and batch run alternately with and without
``Telemetry.record`` + ``Telemetry.after_step`` (``--layer-every 1``, the default: per-layer
norms and update health on every step, the worst case; the trainer's default is 50;
flushed every ``flush_every`` steps as in training).  The per-layer update health
(:mod:`imagenet_repro.train.health`) copies the normalized weights before the step and
reads them about nine times in all, on per-layer steps only.  The telemetry cost is fixed per
step (two foreach norms over all 25.6M weights and grads: memory-bound, ~20 ms on this CPU),
so the ratio depends on the step's size: ``--batch/--res`` choose it (default: batch 8 at
128 px on CPU, a quick run; the paper's per-GPU load is batch 32 at 160-192 px).  Rounds are interleaved in random
order so drift in machine load hits both arms alike.  Two views of the overhead: ``ratio``,
the medians' ratio end to end (noisy on a shared CPU, about ±2%), and
``record_share_of_step``, the mean time inside ``record`` + ``after_step`` over all the
telemetry steps divided by the median step without telemetry (the direct, low-noise
measure; a mean, so that with ``--layer-every 50`` it weighs the per-layer steps as
training does).  Target: ``record_share_of_step`` <= 0.02.  Writes results/bench/telemetry.json
under ``<device>_batch<B>_res<R>[_layer_every<N>]``.

Measured on this 2-core CPU (docs/benchmarks.md): the per-step norms are two foreach norms over
all weights and gradients, each tensor's reduction on one core and memory-bound; on CPU
:func:`imagenet_repro.train.norms.norm_pair` runs the weights' norms in a helper thread beside
the gradients' (bit-identical values; ~25 -> ~20 ms here, of which ~5 ms is torch's OpenMP
worker still spinning after backward, on one of the two cores).  The update health adds a
snapshot, a difference, two norms and a dot over the normalized weights on per-layer steps
only.  A BLAS dot per tensor would be faster than ``torch._foreach_norm``, but MKL's ``sdot``
changes its last bits with the thread count and the data's alignment.

On CUDA the step uses bf16 autocast and channels_last, as the trainer does, and times
with a synchronize at the end of each round (telemetry itself never synchronizes).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import imagenet_repro  # noqa: F401  (torchvision shim)
from imagenet_repro.config import build_config, read_yaml
from imagenet_repro.errors import ConfigError
from imagenet_repro.files import atomic_write_text
from imagenet_repro.models import build_model
from imagenet_repro.optim.factory import build_optimizer, predicted_ratio, predicted_rotation
from imagenet_repro.train.telemetry import Telemetry

OUT = Path(os.environ.get("TELEMETRY_BENCH_OUT", "results/bench/telemetry.json"))


def main() -> None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    default = (128, 224, 30, 10) if cuda else (8, 128, 12, 2)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=default[0])
    ap.add_argument("--res", type=int, default=default[1])
    ap.add_argument("--rounds", type=int, default=default[2])
    ap.add_argument("--steps-per-round", type=int, default=default[3])
    ap.add_argument("--layer-every", type=int, default=None,
                    help="per-layer norms and update health every N steps (default 1; with --config, the config's)")
    ap.add_argument("--config", help="a run config (experiments/*.yaml): time its model, optimizer, batch, "
                                     "resolution, train.threads and telemetry.layer_every instead of ResNet-50's")
    a = ap.parse_args()
    rounds, steps_per_round = a.rounds, a.steps_per_round
    torch.manual_seed(0)
    if a.config:
        try:
            cfg = build_config(read_yaml(a.config), check_paths=False)
        except ConfigError as exc:  # one line, exit 2, nothing written
            ap.exit(2, f"telemetry.py: {exc}\n")
        model_cfg, optim_cfg, num_classes = cfg.model, cfg.optim, cfg.data.num_classes
        batch, res = cfg.data.batch_size, cfg.data.max_res
        layer_every = a.layer_every or cfg.telemetry.layer_every
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        label = f"{cfg.name}_{model_cfg.name}"
    else:
        class model_cfg:  # noqa: N801  (a config section)
            name, widths, blocks_per_stage, head_norm = "resnet50", [], 1, False

        class optim_cfg:  # noqa: N801
            name, lr, weight_decay, decay_norm_and_bias, momentum, dampening, nesterov = (
                "sgd", 0.1, 5e-5, True, 0.9, 0.0, False)
        num_classes, batch, res, layer_every, label = 1000, a.batch, a.res, a.layer_every or 1, "resnet50"

    model = build_model(model_cfg, num_classes).to(
        device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    opt = build_optimizer(model, optim_cfg, example_input=torch.zeros(2, 3, res, res, device=device))
    index = {n: i for i, g in enumerate(opt.param_groups) for n in g["names"]}
    normalized = {n for g in opt.param_groups if g["normalized"] for n in g["names"]}
    tel = Telemetry(list(model.named_parameters()), normalized,
                    predicted=lambda n: predicted_ratio(opt, opt.param_groups[index[n]]),
                    layer_every=layer_every, flush_every=50, device=device, optimizer=opt,
                    predicted_rotation=lambda n: predicted_rotation(opt, opt.param_groups[index[n]]))
    x = torch.randn(batch, 3, res, res, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    step_no = 0
    record_s: list[float] = []  # per telemetry step: time inside record + after_step (a direct view of its cost)

    def run(with_telemetry: bool) -> float:
        nonlocal step_no
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps_per_round):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if with_telemetry:
                r0 = time.perf_counter()
                tel.record(step_no, 0, 0.1, loss, batch)
                if cuda:
                    torch.cuda.synchronize()
                record_s.append(time.perf_counter() - r0)
            opt.step()
            if with_telemetry:
                r0 = time.perf_counter()
                tel.after_step()
                if cuda:
                    torch.cuda.synchronize()
                record_s[-1] += time.perf_counter() - r0
                step_no += 1
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps_per_round

    run(False), run(True)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    order = [False, True] * rounds
    random.Random(0).shuffle(order)
    for arm in order:
        times[arm].append(run(arm))
    tel.flush()
    base, with_tel = statistics.median(times[False]), statistics.median(times[True])
    share = statistics.fmean(record_s) / base
    result = {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "model": label, "config": a.config, "batch": batch, "resolution": res, "rounds": rounds, "steps_per_round": steps_per_round,
        "layer_every": layer_every, "flush_every": 50, "normalized_layers": len(normalized),
        "step_s_without": base, "step_s_with": with_tel, "ratio": with_tel / base,
        "telemetry_steps": len(record_s), "per_layer_steps": sum(1 for i in range(len(record_s)) if i % layer_every == 0),
        "record_s_mean": statistics.fmean(record_s), "record_s_median": statistics.median(record_s),
        "record_share_of_step": share, "target_share": 0.02, "target_met": share <= 0.02,
        "note": "ratio: end-to-end medians, noisy on a shared CPU (about +-2%); record_share_of_step: mean time "
                "inside Telemetry.record + Telemetry.after_step (the update health) / median step time without it",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(OUT.read_text()) if OUT.exists() else {}
    key = (f"{'cuda' if cuda else 'cpu'}_" + (f"{cfg.name}_" if a.config else "") + f"batch{batch}_res{res}"
           + (f"_layer_every{layer_every}" if layer_every != 1 else ""))
    previous[key] = result
    atomic_write_text(OUT, json.dumps(previous, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
