"""NormMonitor in a plain PyTorch loop: a small BatchNorm CNN, torch.optim.SGD, cosine LR.

    python examples/monitor_plain_loop.py [--steps 300] [--log-dir runs/monitor_plain]

The four lines marked ``# monitor`` are all a loop needs (imagenet_repro.monitor).  The
data are random 32x32 images with fixed random labels, so the example runs anywhere in
seconds; the weight decay is large (λγ = 0.005) so the normalized layers reach their
steady state within a hundred steps.  It prints, every 50 steps, the measured rotation per
step (median over the normalized layers) next to the theory's sqrt(2γ_tλ/(1+β)).
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import imagenet_repro  # noqa: F401  (torchvision shim)
from imagenet_repro.monitor import NormMonitor


def make_model() -> nn.Module:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def main(steps: int = 300, log_dir: str | None = None, quiet: bool = False):
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    images, labels = torch.randn(512, 3, 32, 32), torch.randint(0, 10, (512,))
    monitor = NormMonitor(model, optimizer, every=10, log_dir=log_dir)  # monitor
    for step in range(steps):
        idx = torch.randint(0, 512, (32,))
        loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        monitor.after_backward(loss, images=32)  # monitor
        optimizer.step()
        monitor.after_step()  # monitor
        schedule.step()
    layers = monitor.frame()  # monitor
    monitor.close()
    if not quiet:
        table = layers.groupby("step")[["angular_update", "predicted_rotation", "ratio", "predicted_ratio"]].median()
        print(f"{len(monitor.layer_names)} normalized layers: {', '.join(monitor.layer_names)}")
        print(table[table.index % 50 == 0].to_string(float_format="{:.4g}".format))
    return layers


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--log-dir", default=None, help="TensorBoard scalars here")
    a = p.parse_args()
    main(a.steps, a.log_dir)
