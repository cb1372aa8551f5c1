r"""Update health of the normalized layers: how far one optimizer step turns and moves each weight.

One implementation, used by the trainer's :class:`~imagenet_repro.train.telemetry.Telemetry`
and by the public :class:`imagenet_repro.monitor.NormMonitor` for any loop.  On a per-layer
step, :meth:`UpdateHealth.before_step` (after ``backward()``, before ``optimizer.step()``)
copies each weight :math:`x_t` into a preallocated buffer, and :meth:`UpdateHealth.after_step`
computes, per layer, on the device and with no host sync (it returns a device tensor):

``angular_update``   the angle between :math:`x_t` and :math:`x_{t+1}` (radians)
``relative_update``  :math:`\|\Delta x\|/\|x_t\|`, with :math:`\Delta x = x_{t+1} - x_t`
``update_grad_cos``  :math:`\cos(-\Delta x, g_t)`, the whole step (decay included) against the
                     gradient (Molybog et al. 2023: Adam's updates decorrelate from the gradient
                     when many :math:`\sqrt{\hat v}` fall near :math:`\epsilon`); Adam-family only
``eps_fraction``     the fraction of the layer's coordinates with :math:`\sqrt{\hat v} < k\epsilon`
                     (:data:`EPS_MULTIPLE` :math:`k = 10`, :math:`\hat v = v/(1-\beta_2^t)` from the
                     optimizer's ``exp_avg_sq`` and ``step``); Adam-family only, else NaN

The angle is taken without the cancellation of ``arccos`` (θ ~ 1e-3 is below float32's
resolution of cos θ): with :math:`D = x_t - x_{t+1}` and :math:`y = x_{t+1}`,
:math:`\theta = \operatorname{atan2}(\|y\|\,\|D_\perp\|,\ \|y\|^2 + \langle y, D\rangle)`,
:math:`\|D_\perp\|^2 = \|D\|^2 - \langle y, D\rangle^2/\|y\|^2`, and
:math:`\|x_t\|^2 = \|y\|^2 + 2\langle y, D\rangle + \|D\|^2`.  The theory's values for these
columns are in :mod:`imagenet_repro.optim.equilibrium`.

Cost: the snapshot and the differences read the normalized weights about nine times (the
norms of :mod:`.telemetry` read weights and gradients once each), on per-layer steps only.
"""
from __future__ import annotations

import math

import torch

from imagenet_repro.train.norms import norm_pair

HEALTH_COLUMNS = ("angular_update", "relative_update", "update_grad_cos", "eps_fraction")
EPS_MULTIPLE = 10.0  # eps_fraction counts coordinates with sqrt(v̂) < EPS_MULTIPLE·ε


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    return (a * b).sum()  # channels_last weights on CUDA


class UpdateHealth:
    """Per-layer angular/relative update, update-gradient cosine and below-ε fraction of ``params``."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                 eps_multiple: float = EPS_MULTIPLE) -> None:
        self.params = list(params)
        self.optimizer = optimizer
        self.eps_multiple = float(eps_multiple)
        self._snapshot: list[torch.Tensor] | None = None
        self.armed = False  # a snapshot of this step waits for after_step
        self._index: dict[tuple[int, ...], torch.Tensor] = {}  # device index tensors, made once (no H2D copy per call)

    @torch.no_grad()
    def before_step(self) -> None:
        """Keep x_t (call after backward, before the optimizer's step)."""
        if not self.params:
            return
        if self._snapshot is None:
            self._snapshot = [torch.empty_like(p, memory_format=torch.preserve_format) for p in self.params]
        torch._foreach_copy_(self._snapshot, [p.detach() for p in self.params])
        self.armed = True

    def _adam_layers(self) -> dict[int, tuple[torch.Tensor, object, float, float]]:
        """Layer index -> (exp_avg_sq, step, β2, ε) for the layers an Adam-family optimizer keeps v for."""
        where = {id(p): i for i, p in enumerate(self.params)}
        out = {}
        for group in self.optimizer.param_groups:
            betas, eps = group.get("betas"), group.get("eps")
            if betas is None or eps is None:
                continue
            for p in group["params"]:
                i = where.get(id(p))
                state = self.optimizer.state.get(p) if i is not None else None
                if state and "exp_avg_sq" in state and "step" in state:
                    out[i] = (state["exp_avg_sq"], state["step"], float(betas[1]), float(eps))
        return out

    @torch.no_grad()
    def after_step(self, grad_norm: torch.Tensor) -> torch.Tensor:
        """A (4, n_layers) float32 device tensor, rows in :data:`HEALTH_COLUMNS` order.

        ``grad_norm``: the layers' ||g_t|| (the caller has them from its own norms)."""
        assert self.armed, "after_step without before_step"
        self.armed = False
        new = [p.detach() for p in self.params]
        diff = self._snapshot
        torch._foreach_sub_(diff, new)  # D = x_t - x_{t+1}, in place of the snapshot
        d_norm, y_norm = norm_pair(diff, new)
        dot = torch.stack([_dot(y, d) for y, d in zip(new, diff)]).float()
        y_sq, d_sq = y_norm.square(), d_norm.square()
        perp = (d_sq - dot.square() / y_sq.clamp_min(1e-30)).clamp_min(0.0).sqrt()
        angle = torch.atan2(y_norm * perp, y_sq + dot)
        x_norm = (y_sq + 2.0 * dot + d_sq).clamp_min(0.0).sqrt()
        relative = d_norm / x_norm
        n = len(self.params)
        cos = torch.full((n,), math.nan, device=d_norm.device)
        frac = torch.full((n,), math.nan, device=d_norm.device)
        adam = self._adam_layers()
        if adam:
            idx = sorted(adam)
            key = tuple(idx)
            if key not in self._index:
                self._index[key] = torch.tensor(idx, device=d_norm.device)
            where = self._index[key]
            grads = [self.params[i].grad for i in idx]
            if all(g is not None for g in grads):
                gd = torch.stack([_dot(diff[i], g) for i, g in zip(idx, grads)]).float()
                cos.index_copy_(0, where, gd / (d_norm[where] * grad_norm.float()[where]))
            counts = []
            for i in idx:
                v, step, beta2, eps = adam[i]
                step = step if isinstance(step, torch.Tensor) and step.device.type != "cpu" else float(step)
                threshold = (self.eps_multiple * eps) ** 2 * (1.0 - beta2 ** step)
                counts.append((v < threshold).sum().float() / v.numel())
            frac.index_copy_(0, where, torch.stack(counts).to(frac.device))
        return torch.stack([angle, relative, cos, frac])
