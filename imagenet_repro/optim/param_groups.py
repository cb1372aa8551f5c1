"""Parameter groups: which weights are "normalized", and the decay each group gets.

The paper's correction applies to *normalized* weights: a conv/linear weight whose
output goes straight into a normalization layer (BatchNorm, LayerNorm, GroupNorm,
InstanceNorm).  Such a weight is scale-invariant, so its gradient is orthogonal to it
and weight decay alone sets its norm.  Detection reads the model graph:

1. ``torch.fx`` symbolic tracing (conv/linear/norm modules kept as leaves): a layer is
   normalized when every use of its output is a norm layer (module or ``F.*_norm``).
2. Models fx cannot trace: one forward pass in eval mode on an example input, with
   forward hooks on every conv/linear/norm module recording, in execution order, the
   autograd node of each call's output.  The consumers of a node are read off the
   autograd graph; a layer is normalized when every consumer of its output is a norm
   module's node (every call of a shared layer must qualify).

That is ``optim.normalized_rule: graph`` (the default), right for ResNets.  In a
pre-norm transformer the norm comes *before* each linear layer, so the graph rule finds
almost none; ``optim.normalized_rule: transformer`` is the paper's rule for them (Sec. 6):
every linear layer except the network's output layer.

Groups (each a dict for ``torch.optim``): ``normalized`` (decay λ, corrected to
λ·γ_t/γ_max by SGDC/AdamC or ``optim.corrected_decay``), ``other`` (λ), ``norm-affine`` and ``bias`` (λ if
``decay_norm_and_bias`` else 0).  Every group has ``params``, ``names`` (same order),
``weight_decay``, ``peak_lr``, ``normalized`` and ``group`` (its kind).

A partition-based optimizer (the Muon family, :class:`Sides`) gets each kind split in two:
the *matrix* side, the weights of the hidden conv/linear layers (every one but the stem,
the first layer the forward pass calls, and the output layer: the same graph analysis),
and the *other* side (stem, output layer, biases, norms), with its own peak LR and decay;
each group carries the library's flag (``use_muon``) and ``side``.  The paper's correction
still applies by kind: a normalized weight is normalized on either side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx, nn

from imagenet_repro.errors import ConfigError

NORMS: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
LAYERS: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)
_NORM_FUNCTIONS = (torch.nn.functional.batch_norm, torch.nn.functional.layer_norm,
                   torch.nn.functional.group_norm, torch.nn.functional.instance_norm)
KINDS = ("normalized", "other", "norm-affine", "bias")


class _LeafTracer(fx.Tracer):
    """fx tracer that never traces into conv/linear/norm modules (also custom subclasses)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LAYERS + NORMS) or super().is_leaf_module(m, qualname)


def _is_norm_node(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), NORMS)
    if node.op == "call_function":
        return node.target in _NORM_FUNCTIONS and len(node.args) > 0
    return False


def _normalized_by_fx(model: nn.Module) -> set[str]:
    graph = _LeafTracer().trace(model)
    modules = dict(model.named_modules())
    verdict: dict[str, bool] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), LAYERS):
            continue
        users = list(node.users)
        ok = bool(users) and all(_is_norm_node(u, modules) and u.args[0] is node for u in users)
        verdict[str(node.target)] = verdict.get(str(node.target), True) and ok
    return {name for name, ok in verdict.items() if ok}


def _example_input(model: nn.Module) -> torch.Tensor:
    first = next((m for m in model.modules() if isinstance(m, LAYERS)), None)
    p = next(model.parameters())
    if isinstance(first, nn.Linear):
        return torch.randn(2, first.in_features, device=p.device)
    if isinstance(first, nn.modules.conv._ConvNd):
        spatial = (64,) * (first.weight.ndim - 2)
        return torch.randn(2, first.in_channels, *spatial, device=p.device)
    raise ConfigError("cannot guess an example input for this model; pass example_input")


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _normalized_by_hooks(model: nn.Module, example_input: Optional[torch.Tensor]) -> set[str]:
    x = _example_input(model) if example_input is None else example_input
    calls: list[tuple[str, nn.Module, object]] = []  # (name, module, autograd node of its output), in order
    names = {m: n for n, m in model.named_modules()}

    def record(mod: nn.Module, inputs: tuple, out: object) -> None:
        outs = _tensors(out)
        # read the node now: a later in-place op (ReLU(inplace=True), +=) rebinds the tensor's grad_fn
        calls.append((names[mod], mod, outs[0].grad_fn if len(outs) == 1 else None))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, LAYERS + NORMS)]
    was_training = model.training
    try:
        model.eval()  # no running-stat updates
        with torch.enable_grad():
            roots = [t.grad_fn for t in _tensors(model(x)) if t.grad_fn is not None]
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    consumers: dict[object, list[object]] = {}  # autograd node -> the nodes that use its output
    seen, stack = set(), list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                consumers.setdefault(child, []).append(node)
                stack.append(child)
    norm_nodes = {node for _, mod, node in calls if isinstance(mod, NORMS) and node is not None}
    verdict: dict[str, bool] = {}
    for name, mod, node in calls:
        if isinstance(mod, LAYERS):
            users = consumers.get(node, []) if node is not None else []
            ok = bool(users) and all(u in norm_nodes for u in users)
            verdict[name] = verdict.get(name, True) and ok
    return {name for name, ok in verdict.items() if ok}


def output_layer(model: nn.Module) -> Optional[str]:
    """Name of the network's output layer: timm's ``get_classifier()``, else the last
    ``nn.Linear`` registered (torchvision's ``fc`` / ``heads.head``)."""
    names = {m: n for n, m in model.named_modules()}
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Linear) and head in names:
            return names[head]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def normalized_layers(model: nn.Module, example_input: Optional[torch.Tensor] = None,
                      rule: str = "graph") -> tuple[set[str], str]:
    """Names of the modules whose weights count as normalized, and how they were found.

    ``graph``: conv/linear modules whose output feeds a norm layer (fx, else hooks).
    ``transformer``: the paper's rule for transformers (Sec. 6), every ``nn.Linear``
    except the output layer (:func:`output_layer`); convolutions (a ViT's patch
    embedding) are not linear layers and do not count."""
    if rule == "transformer":
        head = output_layer(model)
        linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != head}
        return linears, f"the transformer rule (every linear layer except the output layer {head!r})"
    if rule != "graph":
        raise ConfigError(f"normalized rule must be graph or transformer (got {rule!r})")
    try:
        return _normalized_by_fx(model), "fx"
    except Exception:  # data-dependent control flow, unsupported ops...: trace by running it
        return _normalized_by_hooks(model, example_input), "hooks"


def classify(model: nn.Module, example_input: Optional[torch.Tensor] = None,
             rule: str = "graph") -> list[tuple[str, nn.Parameter, str]]:
    """(name, parameter, kind) for every trainable parameter, kind in :data:`KINDS`."""
    return classify_by(model, normalized_layers(model, example_input, rule)[0])


def classify_by(model: nn.Module, normalized: set[str]) -> list[tuple[str, nn.Parameter, str]]:
    """:func:`classify` given the names of the normalized layers."""
    owner = {}
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            owner.setdefault(id(p), (mname, pname, mod))
    out, seen = [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        mname, pname, mod = owner[id(p)]
        if isinstance(mod, NORMS):
            kind = "norm-affine"
        elif pname == "weight" and mname in normalized:
            kind = "normalized"
        elif pname.endswith("bias") or p.ndim <= 1:
            kind = "bias"
        else:
            kind = "other"
        out.append((name, p, kind))
    return out


@dataclass(frozen=True)
class Sides:
    """The groups of a partition-based optimizer (the Muon family: :class:`.capabilities.Partition`):
    each group also carries ``flag``, ``matrix`` on hidden conv/linear weights and ``other``
    on the rest, whose peak LR and (decaying kinds') weight decay are ``other_peak_lr`` and
    ``other_weight_decay``."""

    flag: str
    matrix: Any
    other: Any
    other_peak_lr: float
    other_weight_decay: float


def layer_order(model: nn.Module, example_input: Optional[torch.Tensor] = None) -> list[str]:
    """The conv/linear modules in the order the forward pass calls them (fx, else hooks)."""
    modules = dict(model.named_modules())
    try:
        graph = _LeafTracer().trace(model)
        order = [str(n.target) for n in graph.nodes
                 if n.op == "call_module" and isinstance(modules.get(str(n.target)), LAYERS)]
    except Exception:  # as normalized_layers: run it when fx cannot trace it
        names = {m: n for n, m in modules.items()}
        order = []
        hooks = [m.register_forward_hook(lambda mod, i, o: order.append(names[mod]))
                 for m in model.modules() if isinstance(m, LAYERS)]
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(_example_input(model) if example_input is None else example_input)
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
    return list(dict.fromkeys(order))


def matrix_layers(model: nn.Module, example_input: Optional[torch.Tensor] = None) -> set[str]:
    """The hidden conv/linear layers: every one but the stem (the first the forward pass calls)
    and the output layer (:func:`output_layer`), whose weights the Muon family orthogonalises."""
    order = layer_order(model, example_input)
    edges = {order[0]} if order else set()
    edges.add(output_layer(model))
    return {name for name in order if name not in edges}


def param_groups(model: nn.Module, weight_decay: float, peak_lr: float, decay_norm_and_bias: bool = True,
                 example_input: Optional[torch.Tensor] = None, rule: str = "graph",
                 sides: Optional[Sides] = None) -> list[dict]:
    """Optimizer parameter groups (non-empty ones, in the order of :data:`KINDS`); with ``sides``,
    each kind split into its matrix side then its other side (:class:`Sides`)."""
    buckets: dict[tuple[str, bool], list[tuple[str, nn.Parameter]]] = {}
    matrix = matrix_layers(model, example_input) if sides is not None else set()
    owner = {id(p): (m, n) for m, mod in model.named_modules() for n, p in mod.named_parameters(recurse=False)}
    for name, p, kind in classify(model, example_input, rule):
        mname, pname = owner[id(p)]
        on_matrix = sides is not None and mname in matrix and pname == "weight" and p.ndim >= 2
        buckets.setdefault((kind, on_matrix), []).append((name, p))
    groups = []
    for kind in KINDS:
        for on_matrix in (True, False):
            members = buckets.get((kind, on_matrix))
            if not members:
                continue
            decays = kind in ("normalized", "other") or decay_norm_and_bias
            group = {"params": [p for _, p in members], "names": [n for n, _ in members],
                     "weight_decay": float(weight_decay) if decays else 0.0, "peak_lr": float(peak_lr),
                     "normalized": kind == "normalized", "group": kind}
            if sides is not None:
                group[sides.flag] = sides.matrix if on_matrix else sides.other
                group["side"] = "matrix" if on_matrix else "other"
                if not on_matrix:
                    group.update(peak_lr=float(sides.other_peak_lr),
                                 weight_decay=float(sides.other_weight_decay) if decays else 0.0)
            groups.append(group)
    return groups


def group_summary(optimizer: torch.optim.Optimizer) -> dict:
    """Tensors and values per group kind (and side, for a partition: ``normalized (matrix)``), and
    the normalized tensors' names (for the run's manifest)."""
    out: dict = {}
    for g in optimizer.param_groups:
        kind = g.get("group", "normalized" if g.get("normalized") else "other")
        if "side" in g:
            kind = f"{kind} ({g['side']})"
        entry = out.setdefault(kind, {"tensors": 0, "values": 0})
        entry["tensors"] += len(g["params"])
        entry["values"] += sum(p.numel() for p in g["params"])
        if g.get("normalized"):
            entry.setdefault("names", []).extend(g.get("names", []))
    return out


def decay_rule(kind: str, decay_norm_and_bias: bool) -> str:
    """The decay a group of ``kind`` gets, in words (``repro inspect-model``)."""
    if kind == "normalized":
        return "λ; λ·γ_t/γ_max when corrected (sgdc, adamc, optim.corrected_decay)"
    if kind == "other" or decay_norm_and_bias:
        return "λ"
    return "0"
