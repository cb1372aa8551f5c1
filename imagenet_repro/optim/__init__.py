"""Optimizers of the paper (SGD, SGDC, AdamW, AdamC) on torch.optim, the registry, library
optimizers by name, the corrected-decay switch, the parameter groups, and what an optimizer
needs beyond ``step()`` (:mod:`.capabilities`: ``Capabilities``, ``Partition``).

Importing this package (or :mod:`.registry`, what a config needs) does not import torch;
:func:`imagenet_repro.optim.factory.build_optimizer` builds a run's optimizer.
"""
from imagenet_repro.optim.capabilities import Capabilities, Partition  # noqa: F401
from imagenet_repro.optim.registry import (  # noqa: F401
    OptimConfig,
    available_optimizers,
    optimizer_config_class,
    register_optimizer,
    require,
    unregister_optimizer,
)
