"""The probe: an optimizer config judged, at config time, by the optimizer itself.

Config validation builds the optimizer exactly as a run does (:func:`~.factory.build_optimizer`:
the suite's parameter groups from the graph analysis, a partition's split, the correction
switch) on a tiny convolutional network, and takes one step the way the trainer takes it
(its :mod:`.capabilities`: a closure, gradients with their graph; a schedule-free optimizer
switched to ``eval()`` and back).  An exception of the constructor (the library's own checks
of its keys) or of that first step, or non-finite weights after it, becomes the one-line
ConfigError, so a library's optimizer is judged by its library and a setting it cannot
run ends before anything is written, never in a traceback mid-run.  A library default
that its library accepts is never refused.  (A tiny network is not every network: a
step that fails on the real model's non-finite numbers later ends that run ``diverged``,
:meth:`imagenet_repro.train.loop.Trainer.train_step`.)

The probe leaves the caller's RNG states alone (``fork_rng``) and runs once per distinct
``optim`` section in a process (a sweep validates many points that share it).
"""
from __future__ import annotations

import functools
import json
import warnings

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from imagenet_repro.errors import ConfigError, describe
from imagenet_repro.optim.capabilities import capabilities_of, has_modes
from imagenet_repro.optim.factory import build_optimizer
from imagenet_repro.optim.registry import optimizer_class


def probe_model() -> nn.Module:
    """Stem conv -> BN -> hidden conv -> BN -> pooled linear head: every kind of group
    (normalized, other, norm-affine, bias) and, for a partition, both sides."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def check_by_probe(cfg) -> None:
    """ConfigError (one line) when optimizer ``cfg`` (a run's ``optim`` section, DictConfig or
    plain mapping) cannot be built on the probe model or fails its first step there."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    cls = optimizer_class(container["name"], container.get("imports", []))
    problem = _probe(json.dumps(container, sort_keys=True, default=str), id(cls))
    if problem is not None:
        raise ConfigError(problem)


@functools.lru_cache(maxsize=512)
def _probe(section: str, class_id: int) -> str | None:
    """The probe of one ``optim`` section (JSON) for the class ``class_id`` names now (a test may
    register another class under the same name): its one-line problem, or None."""
    cfg = OmegaConf.create(json.loads(section))
    name = cfg.name
    caps = capabilities_of(optimizer_class(name, cfg.get("imports", [])))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run itself warns, once; not every validation of its config
        torch.manual_seed(0)
        model = probe_model()
        images, labels = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 0])
        try:
            optimizer = build_optimizer(model, cfg, example_input=images)
        except ConfigError as exc:
            return str(exc)
        except Exception as exc:  # the constructor's own checks (ValueError, TypeError, ...)
            return f"optim: {name} refuses these settings: {describe(exc)}"

        @torch.enable_grad()  # called inside the optimizer's no_grad step
        def loss_with_grad() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(images), labels)
            loss.backward(create_graph=caps.create_graph)
            return loss

        try:
            if has_modes(optimizer):
                optimizer.train()
            loss_with_grad()
            optimizer.step(loss_with_grad if caps.closure else None)
            if has_modes(optimizer):
                optimizer.eval()
                optimizer.train()
        except Exception as exc:
            return f"optim: {name} fails its first step on a probe network: {describe(exc)}"
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            return (f"optim: {name} diverges at its first step on a probe network (non-finite weights): "
                    f"these settings do not suit a convolutional network")
    return None
