"""sgd/adamw match torch.optim; sgdc/adamc (and the corrected_decay switch) match the paper's equations."""
from __future__ import annotations

import math

import pytest
import torch

from imagenet_repro.optim.adamc import AdamC
from imagenet_repro.optim.adamw import AdamW
from imagenet_repro.optim.decay import correct
from imagenet_repro.optim.sgd import SGD
from imagenet_repro.optim.sgdc import SGDC

STEPS = 20
LR_MAX = 0.1


def lr_at(t: int) -> float:
    """A changing LR: warm-up, then cosine down to 5% of the peak."""
    if t < 4:
        return LR_MAX * (t + 1) / 4
    return LR_MAX * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (t - 4) / (STEPS - 4))))


def make_params(dtype: torch.dtype = torch.float32, mixed: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 4, 3, 3), (16, 8), (16,), (5,)]
    ps = [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    if mixed:  # a float64 tensor among float32 ones: the foreach path must split by dtype
        ps[1] = ps[1].double()
    return ps


def groups_for(ps: list[torch.Tensor]) -> list[dict]:
    """Two groups like param_groups makes: normalized weights and the rest, with extra keys."""
    return [
        {"params": ps[:2], "names": ["conv.weight", "lin.weight"], "weight_decay": 5e-2, "peak_lr": LR_MAX,
         "normalized": True, "group": "normalized"},
        {"params": ps[2:], "names": ["bn.weight", "fc.bias"], "weight_decay": 1e-2, "peak_lr": LR_MAX,
         "normalized": False, "group": "other"},
    ]


def set_grads(ps: list[torch.Tensor], t: int) -> None:
    """Gradient of a quadratic at the current point plus noise, the same for every run."""
    g = torch.Generator().manual_seed(1000 + t)
    for i, p in enumerate(ps):
        noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
        p.grad = (0.5 + 0.1 * i) * p.detach() + noise


def run(opt_factory, ps: list[torch.Tensor]) -> list[torch.Tensor]:
    ps = [p.clone().requires_grad_(True) for p in ps]
    opt = opt_factory(groups_for(ps))
    for t in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lr_at(t)
        set_grads(ps, t)
        opt.step()
    return [p.detach() for p in ps]


def assert_all_close(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-6) -> None:
    for x, y in zip(a, b):
        assert x.dtype == y.dtype
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


SGD_VARIANTS = [dict(momentum=0.9), dict(momentum=0.9, nesterov=True), dict(momentum=0.8, dampening=0.3),
                dict(momentum=0.0)]


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("variant", SGD_VARIANTS, ids=["momentum", "nesterov", "dampening", "plain"])
def test_sgd_equals_torch_sgd(foreach, variant):
    ps = make_params(mixed=True)
    ours = run(lambda g: SGD(g, lr=LR_MAX, foreach=foreach, **variant), ps)
    ref = run(lambda g: torch.optim.SGD(g, lr=LR_MAX, foreach=foreach, **variant), ps)
    assert_all_close(ours, ref)
    assert not torch.allclose(ours[0].float(), ps[0].float())  # it moved


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
def test_adamw_equals_torch_adamw(foreach, betas):
    ps = make_params(mixed=True)
    ours = run(lambda g: AdamW(g, lr=LR_MAX, betas=betas, eps=1e-8, foreach=foreach), ps)
    ref = run(lambda g: torch.optim.AdamW(g, lr=LR_MAX, betas=betas, eps=1e-8, foreach=foreach), ps)
    assert_all_close(ours, ref)


def test_foreach_and_per_tensor_paths_agree_for_corrected_optimizers():
    ps = make_params()
    for cls, kw in ((SGDC, dict(momentum=0.9, nesterov=True)), (AdamC, {})):
        assert_all_close(run(lambda g: cls(g, lr=LR_MAX, foreach=True, **kw), ps),
                         run(lambda g: cls(g, lr=LR_MAX, foreach=False, **kw), ps), tol=1e-6)


# ---- the paper's equations, one tensor at a time, in float64 ------------------------------------

def sgdc_reference(ps, groups, momentum, dampening, nesterov) -> list[torch.Tensor]:
    out = []
    for i, x0 in enumerate(ps):
        group = groups[0] if i < 2 else groups[1]
        x, buf = x0.clone(), None
        for t in range(STEPS):
            lr = lr_at(t)
            lam_t = group["weight_decay"] * lr / LR_MAX if group["normalized"] else group["weight_decay"]
            g = _grad_like(x, i, t)
            d = g + lam_t * x
            buf = d.clone() if buf is None else momentum * buf + (1 - dampening) * d
            u = d + momentum * buf if nesterov else buf
            x = x - lr * u
        out.append(x)
    return out


def adamc_reference(ps, groups, beta1, beta2, eps) -> list[torch.Tensor]:
    out = []
    for i, x0 in enumerate(ps):
        group = groups[0] if i < 2 else groups[1]
        x, m, v = x0.clone(), torch.zeros_like(x0), torch.zeros_like(x0)
        for t in range(1, STEPS + 1):
            lr = lr_at(t - 1)
            lam_t = group["weight_decay"] * lr / LR_MAX if group["normalized"] else group["weight_decay"]
            g = _grad_like(x, i, t - 1)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
            x = x - lr * lam_t * x - lr * m_hat / (v_hat.sqrt() + eps)
        out.append(x)
    return out


def _grad_like(x: torch.Tensor, i: int, t: int) -> torch.Tensor:
    """What set_grads gives tensor i at step t (same generator stream)."""
    g = torch.Generator().manual_seed(1000 + t)
    shapes = [p.shape for p in make_params()]
    for j in range(i + 1):
        noise = torch.randn(shapes[j], generator=g, dtype=torch.float64)
    return (0.5 + 0.1 * i) * x + noise


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("variant", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                     dict(momentum=0.8, dampening=0.3)], ids=["momentum", "nesterov", "dampening"])
def test_sgdc_follows_the_papers_equations(foreach, variant):
    ps = make_params(torch.float64)
    full = dict(momentum=0.0, dampening=0.0, nesterov=False) | variant
    ref = sgdc_reference(ps, groups_for(ps), **full)
    ours = run(lambda g: SGDC(g, lr=LR_MAX, foreach=foreach, **variant), ps)
    assert_all_close(ours, ref, tol=1e-9)
    # the correction matters: uncorrected SGD differs on normalized tensors, not on the others
    plain = run(lambda g: SGD(g, lr=LR_MAX, foreach=foreach, **variant), ps)
    assert not torch.allclose(plain[0], ref[0], rtol=1e-6, atol=1e-6)
    assert_all_close(plain[2:], ref[2:], tol=1e-9)


@pytest.mark.parametrize("foreach", [True, False])
def test_adamc_follows_the_papers_algorithm_1(foreach):
    ps = make_params(torch.float64)
    ref = adamc_reference(ps, groups_for(ps), 0.9, 0.999, 1e-8)
    ours = run(lambda g: AdamC(g, lr=LR_MAX, betas=(0.9, 0.999), eps=1e-8, foreach=foreach), ps)
    assert_all_close(ours, ref, tol=1e-9)
    plain = run(lambda g: AdamW(g, lr=LR_MAX, foreach=foreach), ps)
    assert not torch.allclose(plain[0], ref[0], rtol=1e-6, atol=1e-6)
    assert_all_close(plain[2:], ref[2:], tol=1e-9)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("pair", [(SGD, SGDC, dict(momentum=0.9, nesterov=True)), (AdamW, AdamC, {})],
                         ids=["sgd", "adamw"])
def test_corrected_equals_uncorrected_bit_for_bit_at_peak_lr(foreach, pair):
    base, corrected, kw = pair
    ps = [p.clone().requires_grad_(True) for p in make_params()]
    qs = [p.detach().clone().requires_grad_(True) for p in ps]
    lr = 0.0731  # an LR whose products with λ round: λ·γ/γ must still be exactly λ
    a = base(groups_for(ps), lr=lr, foreach=foreach, **kw)
    b = corrected(groups_for(qs), lr=lr, foreach=foreach, **kw)
    for opt in (a, b):
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] = lr
    for t in range(STEPS):
        set_grads(ps, t)
        set_grads(qs, t)
        a.step()
        b.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


def test_predicted_ratio():
    p = torch.zeros(3, requires_grad=True)
    group = dict(params=[p], weight_decay=5e-4, peak_lr=0.4, normalized=True)
    sgd, sgdc = SGD([dict(group)], lr=0.4, momentum=0.9), SGDC([dict(group)], lr=0.4, momentum=0.9)
    for opt in (sgd, sgdc):
        opt.param_groups[0]["lr"] = 0.1
    assert sgd.predicted_ratio(sgd.param_groups[0]) == pytest.approx(math.sqrt(2 * 5e-4 * 0.1 / 0.1))
    assert sgdc.predicted_ratio(sgdc.param_groups[0]) == pytest.approx(math.sqrt(2 * 5e-4 * 0.1 / 0.4))
    sgdc.param_groups[0]["normalized"] = False
    assert math.isnan(sgdc.predicted_ratio(sgdc.param_groups[0]))
    assert math.isnan(AdamW([dict(group)], lr=0.4).predicted_ratio(group))


def test_bad_hyper_parameters_raise():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError):
        SGD(p, lr=-1.0)
    with pytest.raises(ValueError):
        SGD(p, lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError):
        SGDC([dict(params=p, peak_lr=0.0)], lr=0.1)
    with pytest.raises(ValueError, match="a normalized param group needs peak_lr"):  # γ_max is never guessed
        SGDC([dict(params=p, normalized=True)], lr=0.1)
    with pytest.raises(ValueError):
        AdamW(p, betas=(0.9, 1.0))


# ---- the correction as a switch: decay.correct on any optimizer ------------------------------------

@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("pair", [(SGD, SGDC, dict(momentum=0.9, nesterov=True)), (AdamW, AdamC, {}),
                                  (torch.optim.SGD, SGDC, dict(momentum=0.9)), (torch.optim.AdamW, AdamC, {})],
                         ids=["sgd", "adamw", "torch.SGD", "torch.AdamW"])
def test_switch_on_a_plain_optimizer_equals_the_corrected_one(foreach, pair):
    """correct(): our classes switch their decay hook, torch's get step hooks; both equal SGDC/AdamC."""
    plain, corrected, kw = pair
    ps = make_params(torch.float64)
    switched = run(lambda g: correct(plain(g, lr=LR_MAX, foreach=foreach, **kw)), ps)
    builtin = run(lambda g: corrected(g, lr=LR_MAX, foreach=foreach, **kw), ps)
    assert all(torch.equal(a, b) for a, b in zip(switched, builtin))


def test_corrected_decay_is_applied_per_step_and_the_groups_keep_the_nominal_decay():
    ps = [p.clone().requires_grad_(True) for p in make_params()]
    opt = correct(torch.optim.AdamW(groups_for(ps), lr=LR_MAX))
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append([g["weight_decay"] for g in o.param_groups]))
    for group in opt.param_groups:
        group["lr"] = LR_MAX / 4
    set_grads(ps, 0)
    opt.step()
    assert seen == [[5e-2 / 4, 1e-2]]  # during the step: λ·γ_t/γ_max on the normalized group only
    assert [g["weight_decay"] for g in opt.state_dict()["param_groups"]] == [5e-2, 1e-2]  # after: λ
    assert correct(opt) is opt and len(opt._optimizer_step_pre_hooks) == 2  # a second switch is a no-op


def test_a_step_that_raises_does_not_compound_the_correction():
    class Failing(torch.optim.SGD):
        fail = True

        def step(self, closure=None):
            if Failing.fail:
                raise RuntimeError("boom")
            return super().step(closure)

    ps = [p.clone().requires_grad_(True) for p in make_params()]
    opt = correct(Failing(groups_for(ps), lr=LR_MAX))
    for group in opt.param_groups:
        group["lr"] = LR_MAX / 2
    with pytest.raises(RuntimeError):
        opt.step()
    Failing.fail = False
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["weight_decay"]))
    set_grads(ps, 0)
    opt.step()
    # (the hooks may run twice: Failing.step and torch's SGD.step are both wrapped by torch)
    assert seen and set(seen) == {5e-2 / 2} and opt.param_groups[0]["weight_decay"] == 5e-2


def test_switch_predicted_ratio_follows_the_corrected_decay():
    p = torch.zeros(3, requires_grad=True)
    group = dict(params=[p], weight_decay=5e-4, peak_lr=0.4, normalized=True)
    sgd, sgdc = correct(SGD([dict(group)], lr=0.4, momentum=0.9)), SGDC([dict(group)], lr=0.4, momentum=0.9)
    for opt in (sgd, sgdc):
        opt.param_groups[0]["lr"] = 0.1
    assert sgd.predicted_ratio(sgd.param_groups[0]) == pytest.approx(sgdc.predicted_ratio(sgdc.param_groups[0]))
