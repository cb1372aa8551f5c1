"""Optimizers of the paper (SGD, SGDC, AdamW, AdamC) on torch.optim, the registry, library
optimizers by name, the corrected-decay switch and the parameter groups."""
from imagenet_repro.optim.registry import (  # noqa: F401
    OptimConfig,
    available_optimizers,
    build_optimizer,
    optimizer_config_class,
    predicted_ratio,
    register_optimizer,
    unregister_optimizer,
)
