"""What an optimizer needs from the trainer beyond ``zero_grad(); loss.backward(); step()``.

Declared in one place, per optimizer class (:func:`capabilities_of`):

* ``closure``: its ``step(closure)`` calls the closure, which evaluates the loss again at
  the current weights, with gradients (SAM and its family, L-BFGS, AliG).  The trainer's
  closure re-runs forward and backward on the step's batch with the BatchNorm running
  statistics left alone (the step's first forward updated them), and with several ranks
  returns the loss averaged over the ranks, so that every rank takes the same decisions.
* ``create_graph``: the gradients must keep their graph, ``loss.backward(create_graph=True)``
  (Hessian estimators: AdaHessian, Sophia-H).  One rank only: DDP averages the gradients
  but not the Hessian-vector products the optimizer draws from them, so each rank would
  precondition with its own (refused in one line at placement, :func:`placement_problem`).
* ``partition``: the optimizer treats groups differently by a flag in each group (the Muon
  family: ``use_muon``); :class:`Partition` says which flag, its value on the matrix side
  (hidden conv/linear weights), and which ``optim`` keys give the other side (stem, head,
  biases, norms) its peak LR and weight decay.  :mod:`.param_groups` splits the groups.
* ``refused``: why the class cannot run here at all (one line, said at config time).

Where the declaration comes from, first match wins: the class's own ``capabilities``
attribute (a :class:`Capabilities`; the way for a user's optimizer, see docs/optimizers.md),
the :data:`LIBRARY` table below (library classes, by defining module and name, for every
class of their MRO), the constructor's signature (a first parameter ``model``, or a
``base_optimizer``/``optimizer`` argument: refused), and timm's convention, a class attribute
``is_second_order = True`` (create_graph).  *Modes* are not declared but read off the class: an optimizer with its
own ``train()``/``eval()`` methods (schedule-free) is evaluated at its average x
(:mod:`imagenet_repro.train.modes`).

torch-free at import (config validation reads it).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Partition:
    """How a partition-based optimizer wants its groups: each group carries ``flag``, with
    ``matrix`` for hidden conv/linear weights (the optimizer's own update, e.g. Muon's
    orthogonalised one; convolutions are passed 4-D, the libraries flatten them) and
    ``not matrix`` for the rest (stem, output layer, biases, norms, embeddings: its
    fallback, e.g. AdamW).  ``other_lr`` / ``other_weight_decay`` name the ``optim`` keys
    that are the fallback side's peak LR and weight decay (None: ``optim.lr`` /
    ``optim.weight_decay``, when the library scales the fallback itself)."""

    flag: str
    matrix: Any = True
    other_lr: Optional[str] = None
    other_weight_decay: Optional[str] = None

    @property
    def other(self) -> Any:
        return not self.matrix


@dataclass(frozen=True)
class Capabilities:
    closure: bool = False
    create_graph: bool = False
    partition: Optional[Partition] = None
    refused: Optional[str] = None

    def needs(self) -> list[str]:
        """The capabilities in words (the catalogue's table)."""
        out = [k for k in ("closure", "create_graph") if getattr(self, k)]
        if self.partition is not None:
            out.append(f"partition ({self.partition.flag})")
        return out


PLAIN = Capabilities()
_MUON = Partition("use_muon", True, other_lr="adamw_lr", other_weight_decay="adamw_wd")
_SINGLE_RANK_WHY = ("needs gradients with their graph (create_graph), which DDP does not average into "
                    "its Hessian-vector products")

# Library classes, by "<defining module>.<qualname>" (so each alias and subclass of a class is covered).
LIBRARY: dict[str, Capabilities] = {
    # the Muon family of pytorch-optimizer: `use_muon` groups, AdamW (adamw_lr, adamw_wd) on the rest
    "pytorch_optimizer.optimizer.muon.muon.Muon": Capabilities(partition=_MUON),
    "pytorch_optimizer.optimizer.muon.adamuon.AdaMuon": Capabilities(partition=_MUON),
    "pytorch_optimizer.optimizer.muon.normuon.NorMuon": Capabilities(partition=_MUON),
    "pytorch_optimizer.optimizer.muon.adago.AdaGO": Capabilities(partition=_MUON),
    # timm's Muon (and AdaMuon, NAdaMuon: the same class): `use_fallback` groups, the fallback's LR is
    # its own lr x fallback_lr_scale, so both sides follow optim.lr
    "timm.optim.muon.Muon": Capabilities(partition=Partition("use_fallback", False)),
    # Hessian estimators (Hutchinson): gradients with their graph
    "pytorch_optimizer.optimizer.adahessian.AdaHessian": Capabilities(create_graph=True),
    "pytorch_optimizer.optimizer.sophia.SophiaH": Capabilities(create_graph=True),
    "timm.optim.adahessian.Adahessian": Capabilities(create_graph=True),
    # step(closure) evaluates the loss (and gradients) again
    "pytorch_optimizer.optimizer.sam.BSAM": Capabilities(closure=True),
    "pytorch_optimizer.optimizer.alig.AliG": Capabilities(closure=True),
    "torch.optim.lbfgs.LBFGS": Capabilities(closure=True),
    "pytorch_optimizer.optimizer.muon.distributed_muon.DistributedMuon": Capabilities(
        refused="shards its work over an initialised torch.distributed process group (DDP's ranks are not "
                "handed to it): use pytorch_optimizer:Muon"),
}


def _class_of(cls: Any) -> Any:
    """The class behind a ``functools.partial`` (timm's registry gives partials)."""
    while isinstance(cls, functools.partial):
        cls = cls.func
    return cls


def _signature_refusal(cls: Any) -> Optional[str]:
    """Why a constructor cannot take this suite's parameter groups (None when it can)."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return None
    first = params[0].name if params else ""
    if first == "model":
        return ("takes the model, not parameter groups: the suite's groups (normalized layers, each "
                "group's peak LR, the correction) cannot be handed to it")
    if first in ("optimizer", "base_optimizer") or any(p.name == "base_optimizer" for p in params):
        return ("wraps another optimizer, which a name cannot give: register the pair in your own file "
                "(docs/optimizers.md, 'Wrappers')")
    return None


def capabilities_of(cls: Any) -> Capabilities:
    """The declared :class:`Capabilities` of an optimizer class (see the module docstring)."""
    cls = _class_of(cls)
    own = getattr(cls, "capabilities", None)
    if isinstance(own, Capabilities):
        return own
    for klass in getattr(cls, "__mro__", (cls,)):
        found = LIBRARY.get(f"{klass.__module__}.{klass.__qualname__}")
        if found is not None:
            return found
    why = _signature_refusal(cls)
    if why:
        return Capabilities(refused=why)
    if getattr(cls, "is_second_order", False) is True:
        return Capabilities(create_graph=True)  # timm's convention for a second-order optimizer
    return PLAIN


def has_modes(optimizer_or_class: Any) -> bool:
    """An optimizer with its own ``train()`` and ``eval()`` (schedule-free): it trains at y and
    must be evaluated at its average x.  ``torch.optim.Optimizer`` itself has neither."""
    cls = _class_of(optimizer_or_class if inspect.isclass(optimizer_or_class) or
                    isinstance(optimizer_or_class, functools.partial) else type(optimizer_or_class))
    return all(callable(getattr(cls, m, None)) for m in ("train", "eval"))


def placement_problem(caps: Capabilities, world_size: int) -> Optional[str]:
    """Why an optimizer with ``caps`` cannot run on ``world_size`` ranks (None when it can)."""
    if world_size > 1 and caps.create_graph:
        return f"{_SINGLE_RANK_WHY}: run it on one rank"
    return None
