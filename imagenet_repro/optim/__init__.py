"""Optimizers of the paper (SGD, SGDC, AdamW, AdamC), their registry and parameter groups."""
from imagenet_repro.optim.registry import (  # noqa: F401
    OptimConfig,
    available_optimizers,
    build_optimizer,
    optimizer_class,
    optimizer_config_class,
    predicted_ratio,
    register_optimizer,
    unregister_optimizer,
)
