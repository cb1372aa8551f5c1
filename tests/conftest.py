"""Shared fixtures: the real Fashion-MNIST .beton files, written once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fmnist_betons(tmp_path_factory) -> Path:
    """train.beton (60000) and val.beton (10000), 32x32 RGB, from Debian's dataset-fashion-mnist."""
    from imagenet_repro.data.writer import write_fashion_mnist

    out = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(out, num_workers=2)
    return out


@pytest.fixture(scope="session")
def fmnist_tiny(fmnist_betons) -> list[str]:
    """Overrides for a tiny, fast run of experiments/demo.yaml on the real FFCV files."""
    return [
        f"data.train_path={fmnist_betons / 'train.beton'}",
        f"data.val_path={fmnist_betons / 'val.beton'}",
        "data.train_subset=2048", "data.val_subset=1000", "data.batch_size=128",
        "train.epochs=2", "train.threads=1", "train.progress=false",
        "telemetry.layer_every=4", "telemetry.flush_every=8",
        # pinned here, so tests do not move when the demo's tuning does
        "optim.lr=0.1", "optim.weight_decay=0.005", "optim.momentum=0.9", "model.head_norm=false",
    ]
