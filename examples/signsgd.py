"""SignSGD with decoupled weight decay, an optimizer kept outside the package.

    x_{t+1} = x_t - γ_t λ x_t - γ_t · scale · sign(∇f(x_t))

Select it with `optim.imports: [examples/signsgd.py]` and `optim.name: signsgd`; add
`optim.corrected_decay: true` for the paper's λ·γ_t/γ_max on normalized layers.
"""
from dataclasses import dataclass

import torch

from imagenet_repro.optim import OptimConfig, register_optimizer, require


@dataclass
class SignSGDConfig(OptimConfig):
    name: str = "signsgd"
    scale: float = 1.0  # step length multiplier: an `optim.scale` key

    @classmethod
    def check(cls, o) -> None:  # the rules of its own keys, after the shared ones (lr, weight_decay)
        super().check(o)
        require(o.scale > 0, f"optim.scale must be > 0 (got {o.scale})")


@register_optimizer("signsgd", config=SignSGDConfig)
class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.01, weight_decay: float = 0.0, scale: float = 1.0) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, scale=scale))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
                signs = torch._foreach_sign([p.grad for p in params])
                torch._foreach_add_(params, signs, alpha=-group["lr"] * group["scale"])
        return loss
