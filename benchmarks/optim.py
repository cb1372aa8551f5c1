"""Step time of sgd/sgdc/adamw/adamc against torch.optim.SGD/AdamW on ResNet-50's parameters.

Ours are thin subclasses of torch.optim.SGD / AdamW whose decay is set per step by a
step pre-hook (optim/decay.py), so the ratio measures the hook's cost; "torch.AdamW+switch"
is torch's own AdamW with optim.corrected_decay's hooks (the path library optimizers take).

Every optimizer steps the same ResNet-50 parameters (torchvision, 25.6M values in 161
tensors) with the same fixed gradients and the same param groups (normalized / other /
norm-affine / bias, from ``param_groups``), changing the LR every step as a schedule
does.  Repetitions are interleaved (a shuffled round of one step per optimizer, many
rounds) so that load drifting on a shared machine hits all of them alike; the result is
the median step time of each, and the ratio ours / torch's measured in the same run.
Target: ratio <= 1.10 for the foreach paths (against torch's foreach=True).

    python benchmarks/optim.py [--device cpu|cuda] [--rounds N] [--threads 1]

Writes results/bench/optim.json, keeping the entries of other devices already there.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

import imagenet_repro  # noqa: F401  (torchvision shim)
from imagenet_repro.files import atomic_write_text
from imagenet_repro.optim.adamc import AdamC
from imagenet_repro.optim.adamw import AdamW
from imagenet_repro.optim.decay import correct
from imagenet_repro.optim.param_groups import param_groups
from imagenet_repro.optim.sgd import SGD
from imagenet_repro.optim.sgdc import SGDC

TARGET = 1.10
OUT = Path(__file__).resolve().parents[1] / "results" / "bench" / "optim.json"


def contenders(groups: list[dict]) -> dict[str, tuple[str, torch.optim.Optimizer]]:
    """name -> (baseline name, optimizer); every optimizer gets its own copies of the group dicts."""
    g = lambda: [dict(x) for x in groups]  # noqa: E731
    sgd = dict(lr=0.1, momentum=0.9)
    adam = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    return {
        "torch.SGD[foreach]": ("", torch.optim.SGD(g(), foreach=True, **sgd)),
        "sgd[foreach]": ("torch.SGD[foreach]", SGD(g(), foreach=True, **sgd)),
        "sgdc[foreach]": ("torch.SGD[foreach]", SGDC(g(), foreach=True, **sgd)),
        "torch.SGD[for-loop]": ("", torch.optim.SGD(g(), foreach=False, **sgd)),
        "sgd[for-loop]": ("torch.SGD[for-loop]", SGD(g(), foreach=False, **sgd)),
        "torch.AdamW[foreach]": ("", torch.optim.AdamW(g(), foreach=True, **adam)),
        "adamw[foreach]": ("torch.AdamW[foreach]", AdamW(g(), foreach=True, **adam)),
        "adamc[foreach]": ("torch.AdamW[foreach]", AdamC(g(), foreach=True, **adam)),
        "torch.AdamW+switch[foreach]": ("torch.AdamW[foreach]", correct(torch.optim.AdamW(g(), foreach=True, **adam))),
        "torch.AdamW[for-loop]": ("", torch.optim.AdamW(g(), foreach=False, **adam)),
        "adamw[for-loop]": ("torch.AdamW[for-loop]", AdamW(g(), foreach=False, **adam)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=0, help="0: 15 on cpu, 100 on cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on cpu")
    ap.add_argument("--only", default="", help="keep contenders whose name contains this (e.g. SGD)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (15 if device.type == "cpu" else 100)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().to(device)
    groups = param_groups(model, weight_decay=5e-5, peak_lr=0.1)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opts = {n: v for n, v in contenders(groups).items() if args.only.lower() in n.lower()}
    names = list(opts)
    times: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(0)
    for r in range(rounds + 3):  # 3 warm-up rounds (state allocation, kernel caches)
        lr = 0.1 * (1 - r / (rounds + 3))
        rng.shuffle(names)
        for n in names:
            opt = opts[n][1]
            for group in opt.param_groups:
                group["lr"] = lr if "SGD" in n or "sgd" in n else lr * 1e-2
            sync()
            t0 = time.perf_counter()
            opt.step()
            sync()
            if r >= 3:
                times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(ts) for n, ts in times.items()}
    ratios = {n: med[n] / med[base] for n, (base, _) in opts.items() if base}
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "rounds": rounds,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],  # a shared CPU host reads noisy
        "params": sum(p.numel() for p in model.parameters()),
        "tensors": sum(1 for _ in model.parameters()),
        "median_step_ms": {n: round(1e3 * med[n], 4) for n in opts},
        "ratio_vs_torch": {n: round(r, 4) for n, r in ratios.items()},
        "target": TARGET,
        "target_met": all(r <= TARGET for n, r in ratios.items() if "foreach" in n),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing[device.type] = result
    atomic_write_text(out, json.dumps(existing, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
