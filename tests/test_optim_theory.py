"""The paper's steady state on a toy normalized layer: ||g||/||x|| -> sqrt(2λ(1-β)/γ).

A linear layer followed by BatchNorm (or LayerNorm) is scale-invariant in its weight.
The loss is the squared error of the normalized output against fresh random targets,
so the gradient never vanishes (there is nothing to learn) and its statistics at a given
weight direction do not change over training: only the weight norm moves, set by the
balance 2λγ||x||² = γ²||g||² (with momentum: γ → γ/(1-β), λγ → λγ/(1-β)).
With γλ/(1-β) = 0.05 the norm relaxes in ~10 steps, so a few hundred steps suffice.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from imagenet_repro.optim.sgd import SGD
from imagenet_repro.optim.sgdc import SGDC

LAM, LR_MAX, BETA = 0.05, 0.1, 0.9
PREDICTED_AT_PEAK = math.sqrt(2 * LAM * (1 - BETA) / LR_MAX)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(cls: type, steps: int, lr_at, norm: str = "batch", seed: int = 0) -> tuple[list[float], list[float], SGD]:
    """Squared norms of gradient and weight at every step (before the update)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    layer = nn.Linear(16, 32, bias=False)
    normalize = nn.BatchNorm1d(32, affine=False) if norm == "batch" else nn.LayerNorm(32, elementwise_affine=False)
    opt = cls([{"params": [layer.weight], "names": ["layer.weight"], "weight_decay": LAM, "peak_lr": LR_MAX,
                "normalized": True}], lr=LR_MAX, momentum=BETA)
    g2, x2 = [], []
    for t in range(steps):
        opt.param_groups[0]["lr"] = lr_at(t)
        x, y = torch.randn(64, 16, generator=gen), torch.randn(64, 32, generator=gen)
        loss = nn.functional.mse_loss(normalize(layer(x)), y)
        opt.zero_grad()
        loss.backward()
        g2.append(layer.weight.grad.pow(2).sum().item())
        x2.append(layer.weight.detach().pow(2).sum().item())
        opt.step()
    return g2, x2, opt


def rms_ratio(g2: list[float], x2: list[float], start: int, stop: int) -> float:
    """sqrt(mean ||g||²) / sqrt(mean ||x||²) over a window: the balance holds for squares."""
    n = stop - start
    return math.sqrt(sum(g2[start:stop]) / n) / math.sqrt(sum(x2[start:stop]) / n)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_flat_lr_ratio_converges_to_theory(norm):
    g2, x2, opt = train(SGD, 300, lambda t: LR_MAX, norm)
    predicted = opt.predicted_ratio(opt.param_groups[0])
    assert predicted == pytest.approx(PREDICTED_AT_PEAK)
    assert rms_ratio(g2, x2, 100, 300) == pytest.approx(predicted, rel=0.10)
    # it converged from elsewhere: the ratio at initialisation is far from the steady state
    assert abs(math.sqrt(g2[0] / x2[0]) / predicted - 1) > 0.5


def test_cosine_schedule_sgd_ratio_rises_sgdc_stays_flat():
    steps, window = 800, 40
    cosine = lambda t: LR_MAX * 0.5 * (1 + math.cos(math.pi * t / steps))  # noqa: E731  (-> 0)
    g2, x2, _ = train(SGD, steps, cosine)
    sgd_mid = rms_ratio(g2, x2, steps // 2 - window, steps // 2 + window)
    sgd_final = rms_ratio(g2, x2, steps - window, steps)
    assert sgd_final > 2 * sgd_mid

    g2, x2, opt = train(SGDC, steps, cosine)
    assert opt.predicted_ratio(opt.param_groups[0]) == pytest.approx(PREDICTED_AT_PEAK)
    assert rms_ratio(g2, x2, steps // 2 - window, steps // 2 + window) == pytest.approx(PREDICTED_AT_PEAK, rel=0.15)
    assert rms_ratio(g2, x2, steps - window, steps) == pytest.approx(PREDICTED_AT_PEAK, rel=0.15)
