"""NormMonitor in a timm-style loop: a timm ViT, timm's optimizer factory (AdamW), timm's
cosine scheduler stepped per update, as in timm's ``train.py``.

    python examples/monitor_timm_loop.py [--steps 300] [--log-dir runs/monitor_timm]

Needs timm (in this suite's lock; elsewhere ``pip install timm``).  A pre-norm transformer
has no linear->norm edge for the graph rule, so the monitor is told the paper's transformer
rule (every linear layer but the head).  Besides rotation vs theory (sqrt(2γ_tλ(1-β1)/(1+β1))
for AdamW), Adam's health: the cosine between the update and the gradient and the share of
coordinates whose sqrt(v̂) is below 10ε (Molybog et al. 2023).  Random 32x32 images, fixed
random labels: seconds on a CPU.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import imagenet_repro  # noqa: F401  (torchvision shim, before timm)
from imagenet_repro.monitor import NormMonitor


def main(steps: int = 300, log_dir: str | None = None, quiet: bool = False):
    import timm
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8,
                              embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)
    optimizer = create_optimizer_v2(model, "adamw", lr=2e-3, weight_decay=5.0)
    scheduler = CosineLRScheduler(optimizer, t_initial=steps, warmup_t=10, warmup_lr_init=1e-5, t_in_epochs=False)
    images, labels = torch.randn(512, 3, 32, 32), torch.randint(0, 10, (512,))
    monitor = NormMonitor(model, optimizer, every=10, layers="transformer", log_dir=log_dir)  # monitor
    for num_updates in range(1, steps + 1):
        idx = torch.randint(0, 512, (32,))
        loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        monitor.after_backward(loss, images=32)  # monitor
        optimizer.step()
        monitor.after_step()  # monitor
        scheduler.step_update(num_updates=num_updates)
    layers = monitor.frame()  # monitor
    monitor.close()
    if not quiet:
        cols = ["angular_update", "predicted_rotation", "update_grad_cos", "eps_fraction"]
        table = layers.groupby("step")[cols].median()
        print(f"{len(monitor.layer_names)} normalized layers (transformer rule)")
        print(table[table.index % 50 == 0].to_string(float_format="{:.4g}".format))
    return layers


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--log-dir", default=None, help="TensorBoard scalars here")
    a = p.parse_args()
    try:
        import timm  # noqa: F401
    except ImportError:
        raise SystemExit("this example needs timm: pip install timm")
    main(a.steps, a.log_dir)
