"""SAM over SGD with momentum (Foret et al., 2021): a wrapper, and an optimizer that needs a closure.

A library's wrapper (pytorch-optimizer's SAM takes the optimizer it wraps as a class) cannot be
selected by name: a name does not say what it wraps.  This file registers the pair under one
name, with its keys, and declares what its step needs beyond ``step()``: a closure, which
evaluates the step's batch again at the perturbed weights (the trainer makes it:
imagenet_repro/train/closure.py).

Select it with ``optim.imports: [examples/sam_sgd.py]`` and ``optim.name: sam_sgd``; add
``optim.corrected_decay: true`` for the paper's λ·γ_t/γ_max on normalized layers (the two
optimizers share their parameter groups, so the switch reaches SGD's decay).
"""
from dataclasses import dataclass

import torch
from pytorch_optimizer import SAM

from imagenet_repro.optim import Capabilities, OptimConfig, register_optimizer, require


@dataclass
class SAMSGDConfig(OptimConfig):
    name: str = "sam_sgd"
    momentum: float = 0.9
    rho: float = 0.05  # the radius of the neighbourhood whose worst loss SAM descends

    @classmethod
    def check(cls, o) -> None:
        super().check(o)
        require(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1) (got {o.momentum})")
        require(o.rho > 0, f"optim.rho must be > 0 (got {o.rho})")


@register_optimizer("sam_sgd", config=SAMSGDConfig)
class SAMSGD(SAM):
    capabilities = Capabilities(closure=True)  # step(closure): the loss and gradients again, at x + ε

    def __init__(self, params, lr: float = 0.1, weight_decay: float = 0.0, momentum: float = 0.9,
                 rho: float = 0.05) -> None:
        super().__init__(params, torch.optim.SGD, rho=rho, lr=lr, weight_decay=weight_decay, momentum=momentum)
