r"""Steady-state rotation of a normalized weight: the per-step angular and relative update.

A normalized (scale-invariant) weight :math:`x` has a gradient orthogonal to it.  Weight
decay shrinks :math:`\|x\|`, the gradient steps grow it (Pythagoras), and the norm settles
where the two balance ("rotational equilibrium", Kosson et al. 2024).  There the per-step
update :math:`\Delta x = x_{t+1} - x_t` has a predictable size relative to :math:`x`, and
since it is almost orthogonal to :math:`x`, the angle between :math:`x_t` and
:math:`x_{t+1}` is the same number to first order:

.. math::  \eta_t := \|\Delta x_t\|/\|x_t\| \approx \angle(x_t, x_{t+1}).

**Derivation.**  Write the step of any of this suite's optimizers as a linear filter of
the recent (normalized) gradients plus the decay,

.. math::  \Delta x_t = -\gamma_t \Big(\sum_{k\ge 0} a_k\, \tilde g_{t-k} + \lambda_t A_d\, x_t\Big),

where :math:`\tilde g` is the gradient (SGD) or the preconditioned gradient
:math:`g/(\sqrt{\hat v}+\epsilon)` (Adam), :math:`A = \sum_k a_k`, :math:`B = \sum_k a_k^2`,
and :math:`A_d` is how the decay enters (:math:`A_d = A` for SGD's coupled decay, which goes
through the momentum buffer; :math:`A_d = 1` for AdamW's decoupled decay).  Take the
:math:`\tilde g_t` uncorrelated across steps and orthogonal to :math:`x` (the random-walk
regime of Kosson et al.).  Over many steps the gradient part moves :math:`x` by
:math:`\gamma A\sum_t \tilde g_t`, so it adds :math:`\gamma^2 A^2 \|\tilde g\|^2` to
:math:`\|x\|^2` per step, and the decay removes :math:`2\gamma\lambda A_d \|x\|^2`:

.. math::  \|\tilde g\|^2/\|x\|^2 = 2\lambda A_d/(\gamma A^2)  \quad\text{at equilibrium.}

One step's update has :math:`\|\sum_k a_k \tilde g_{t-k}\|^2 = B\|\tilde g\|^2`, hence

.. math::  \eta^2 = \gamma^2 B \|\tilde g\|^2/\|x\|^2 = 2\gamma\lambda\, A_d B / A^2

(the radial decay part adds :math:`(\gamma\lambda A_d)^2`, second order, left out).  For the
optimizers here (:math:`\gamma = \gamma_t`, :math:`\lambda = \lambda_t`):

* **SGD**, PyTorch's convention (``torch.optim.SGD``: :math:`b_t = \beta b_{t-1} + (1-\tau)(g_t + \lambda x_t)`,
  :math:`\Delta x = -\gamma b_t`): :math:`a_k = (1-\tau)\beta^k`, :math:`A_d = A = (1-\tau)/(1-\beta)`,
  :math:`B = (1-\tau)^2/(1-\beta^2)`, so :math:`\eta = \sqrt{2\gamma\lambda(1-\tau)/(1+\beta)}`;
  with Nesterov (:math:`\tau = 0`, :math:`u_t = g_t + \beta b_t`): :math:`a_0 = 1+\beta`,
  :math:`a_k = \beta^{k+1}`, :math:`A = 1/(1-\beta)`, :math:`B = (1+\beta)^2 + \beta^4/(1-\beta^2)`,
  :math:`\eta = \sqrt{2\gamma\lambda(1-\beta)B}`.  Plain SGD (:math:`\beta = 0`) is exact:
  :math:`\|x_{t+1}\| = \|x_t\|` gives :math:`\|\Delta x\|^2/\|x\|^2 = 2\gamma\lambda` with no
  approximation.  The same balance gives the gradient ratio of :meth:`SGD.predicted_ratio`.
* **AdamW** (decoupled decay, :math:`\tilde g = g/(\sqrt{\hat v}+\epsilon)`, :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1)\tilde g_t`):
  :math:`a_k = (1-\beta_1)\beta_1^k`, :math:`A = 1`, :math:`A_d = 1`,
  :math:`B = (1-\beta_1)/(1+\beta_1)`, so :math:`\eta = \sqrt{2\gamma\lambda(1-\beta_1)/(1+\beta_1)}`.
* **Corrected decay** (SGDC, AdamC: :math:`\lambda_t = \lambda\gamma_t/\gamma_{\max}`):
  :math:`\eta_t = \gamma_t\sqrt{2\lambda C/\gamma_{\max}}` with :math:`C` the factor above:
  the rotation follows the schedule *linearly*, while the plain optimizers' falls only as
  :math:`\sqrt{\gamma_t}`.  The rotation is a normalized layer's effective learning rate.

**Cross-check with Kosson et al. (2024), Table 1**, whose SGDM is PyTorch's with
:math:`\tau = 0` and whose AdamW is the one above: SGDM :math:`\sqrt{2\eta\lambda/(1+\alpha)}`
and AdamW :math:`\sqrt{2\eta\lambda(1-\beta_1)/(1+\beta_1)}`, i.e. :math:`\sqrt{2\eta\lambda}`
without momentum, both equal to :func:`sgd_rotation` / :func:`adamw_rotation` (tested).

The prediction holds at equilibrium; it is reached after a few time constants
:math:`1/(2\gamma\lambda A_d/A)` of steps and lost again when :math:`\gamma_t` falls faster than
the weights can follow (the end of a cosine schedule), just as the gradient ratio's.
"""
from __future__ import annotations

import math

import torch

from imagenet_repro.optim.decay import corrected_weight_decay


def _factor(momentum: float, dampening: float, nesterov: bool) -> float:
    """SGD's :math:`A_d B/A^2` (see the module docstring)."""
    if nesterov:
        b = (1.0 + momentum) ** 2 + momentum**4 / (1.0 - momentum**2)
        return (1.0 - momentum) * b
    return (1.0 - dampening) / (1.0 + momentum)


def sgd_rotation(lr: float, weight_decay: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False) -> float:
    """Steady-state ||Δx||/||x|| per step of ``torch.optim.SGD`` (coupled decay λ = ``weight_decay``)."""
    if lr < 0 or weight_decay < 0:
        return math.nan
    return math.sqrt(2.0 * lr * weight_decay * _factor(momentum, dampening, nesterov))


def adamw_rotation(lr: float, weight_decay: float, beta1: float) -> float:
    """Steady-state ||Δx||/||x|| per step of AdamW (decoupled decay: x ← x - γλx - γ m̂/(√v̂+ε))."""
    if lr < 0 or weight_decay < 0:
        return math.nan
    return math.sqrt(2.0 * lr * weight_decay * (1.0 - beta1) / (1.0 + beta1))


def kosson_sgdm(lr: float, weight_decay: float, momentum: float) -> float:
    """Kosson et al. (2024), Table 1, SGDM: sqrt(2ηλ/(1+α)) (their cross-check value)."""
    return math.sqrt(2.0 * lr * weight_decay / (1.0 + momentum))


def kosson_adamw(lr: float, weight_decay: float, beta1: float) -> float:
    """Kosson et al. (2024), Table 1, AdamW: sqrt(2ηλ(1-β1)/(1+β1)); sqrt(2ηλ) at β1 = 0."""
    return math.sqrt(2.0 * lr * weight_decay * (1.0 - beta1) / (1.0 + beta1))


def predicted_rotation_of(optimizer, group: dict) -> float:
    """The steady-state rotation of a normalized weight in ``group``, at the group's current LR.

    An optimizer with a ``predicted_rotation(group)`` method answers itself (this suite's
    do); a ``torch.optim.SGD`` or ``torch.optim.AdamW`` (or a class named ``AdamW``, e.g.
    timm's) gets the formula above with its group's ``weight_decay`` (NaN otherwise)."""
    fn = getattr(optimizer, "predicted_rotation", None)
    if fn is not None:
        return float(fn(group))
    lr, wd = float(group.get("lr", math.nan)), _decay(optimizer, group)
    if isinstance(optimizer, torch.optim.SGD):
        return sgd_rotation(lr, wd, group.get("momentum", 0.0), group.get("dampening", 0.0),
                            bool(group.get("nesterov", False)))
    if isinstance(optimizer, torch.optim.AdamW) or type(optimizer).__name__.lower() == "adamw":
        return adamw_rotation(lr, wd, float(group["betas"][0]))
    return math.nan


def _decay(optimizer, group: dict) -> float:
    """λ_t: the corrected λ·γ_t/γ_max for an optimizer switched by ``optim.decay.correct``."""
    if getattr(optimizer, "corrects_decay", False) and "peak_lr" in group:
        return float(corrected_weight_decay(group))
    return float(group.get("weight_decay", 0.0))


def predicted_ratio_of(optimizer, group: dict) -> float:
    """The steady-state ||g||/||x|| of a normalized weight in ``group``: the optimizer's own
    ``predicted_ratio(group)`` if it has one, else for a ``torch.optim.SGD`` sqrt(2λ(1-β)/γ_t)
    (the same balance as the rotation's; NaN for Adam-family optimizers: no closed form)."""
    fn = getattr(optimizer, "predicted_ratio", None)
    if fn is not None:
        return float(fn(group))
    lr = float(group.get("lr", math.nan))
    if isinstance(optimizer, torch.optim.SGD) and lr > 0:
        return math.sqrt(2.0 * _decay(optimizer, group) * (1.0 - group.get("momentum", 0.0)) / lr)
    return math.nan
