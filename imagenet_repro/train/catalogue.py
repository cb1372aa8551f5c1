"""The catalogue: every optimizer that pytorch-optimizer and timm list by name, tried on a run
config's model, in one process (``repro optimizers``).

Each name is tried the way a user would select it (``optim.name=<library>:<name>``) at the
library's own default LR and weight decay (a default of None, or none at all: 1e-3 and 0):

1. the config is built and validated (:func:`~imagenet_repro.config.build_config`: the
   one-line refusals, the optimizer's probe); a ConfigError is a *refusal*, grouped by
   its reason (:func:`reason_group`);
2. otherwise the model of the config is built (same seed for every optimizer) and trained
   for a few steps with the trainer's own pieces: the optimizer of
   :func:`~imagenet_repro.optim.factory.build_optimizer` (the suite's parameter groups, a
   partition's split), the LR schedule, the telemetry (norms, per-layer health), the
   step of :func:`~imagenet_repro.train.closure.optimizer_step` (its capabilities: a
   closure, ``create_graph``), then one evaluation inside the trainer's
   :class:`~imagenet_repro.train.modes.EvaluationPoint` (x for a schedule-free optimizer);
   it *works* when the telemetry and the evaluation loss are finite, else it *diverged*
   (as the trainer ends a run: also when a step raises on the non-finite numbers of an
   earlier one); any other exception there is a *failure* (what the suite must never show
   a user);
3. for one that works, whether ``optim.corrected_decay`` changes its step (a corrected
   variant): one step on the probe network at γ_t = γ_max/2 with λ = 0.1, with and without
   the switch, must move the normalized weights differently (an optimizer that reads its
   decay elsewhere than the group's ``weight_decay`` ignores the switch).

The batches are read once from the config's data (the first ``steps`` training batches of
epoch 0 and the first ``eval_images`` validation images) and shared by every optimizer.
:func:`markdown` writes the table of docs/optimizer-catalogue.md, with the libraries' versions.
"""
from __future__ import annotations

import importlib.metadata
import inspect
import math
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from imagenet_repro.config import build_config
from imagenet_repro.data.loaders import build_loaders
from imagenet_repro.errors import ConfigError, describe
from imagenet_repro.models import build_model
from imagenet_repro.optim.capabilities import capabilities_of, has_modes
from imagenet_repro.optim.factory import build_optimizer, predicted_ratio, predicted_rotation
from imagenet_repro.optim.library import library_optimizer
from imagenet_repro.optim.probe import probe_model
from imagenet_repro.optim.registry import optimizer_class
from imagenet_repro.train.closure import optimizer_step
from imagenet_repro.train.modes import EvaluationPoint
from imagenet_repro.train.schedule import LRSchedule
from imagenet_repro.train.telemetry import Telemetry

LIBRARIES = ("pytorch_optimizer", "timm")
OUTCOMES = ("works", "refused", "diverged", "failed")
FALLBACK_LR = 1e-3  # where the library's default LR is None (a relative step) or absent


def library_names(libraries: Iterable[str] = LIBRARIES) -> list[str]:
    """``<library>:<name>`` of every optimizer the libraries list by name: pytorch-optimizer's
    ``get_supported_optimizers()`` (by class, as ``pytorch_optimizer:<Class>`` selects it) and
    timm's ``list_optimizers()``."""
    names = []
    for library in libraries:
        if library == "pytorch_optimizer":
            import pytorch_optimizer

            names += [f"pytorch_optimizer:{pytorch_optimizer.load_optimizer(n).__name__}"
                      for n in pytorch_optimizer.get_supported_optimizers()]
        elif library == "timm":
            import timm.optim

            names += [f"timm:{n}" for n in timm.optim.list_optimizers()]
        else:
            raise ConfigError(f"--libraries: {library!r} is not one of {', '.join(LIBRARIES)}")
    return names


def library_versions(libraries: Iterable[str] = LIBRARIES) -> dict[str, str]:
    dists = {"pytorch_optimizer": "pytorch-optimizer", "timm": "timm"}
    return {dists[lib]: importlib.metadata.version(dists[lib]) for lib in libraries} | {
        "torch": torch.__version__}


def library_defaults(name: str) -> dict:
    """The library's default ``lr`` and ``weight_decay`` of ``name`` as suite keys (see the module docstring)."""
    try:
        params = inspect.signature(library_optimizer(name)).parameters
    except (ConfigError, TypeError, ValueError):
        return {"lr": FALLBACK_LR, "weight_decay": 0.0}
    lr = params["lr"].default if "lr" in params else None
    wd = params["weight_decay"].default if "weight_decay" in params else None
    return {"lr": float(lr) if isinstance(lr, (int, float)) and lr > 0 else FALLBACK_LR,
            "weight_decay": float(wd) if isinstance(wd, (int, float)) and wd >= 0 else 0.0}


def reason_group(message: str) -> str:
    """The kind of a refusal line, for the table's counts."""
    groups = (("CUDA required", "needs CUDA (bitsandbytes, APEX)"),
              ("ImportError", "needs a package that is not installed"),
              ("takes the model", "takes the model, not parameter groups"),
              ("wraps another optimizer", "wraps another optimizer"),
              ("torch.distributed process group", "needs its own process group"),
              ("Missing mandatory value", "a required key with no default"),
              ("fails its first step", "its first step fails on the probe network"),
              ("refuses these settings", "its constructor refuses (the suite's groups or its own defaults)"),
              ("ranks here", "one rank only"))
    return next((group for pattern, group in groups if pattern in message), "other")


@dataclass
class Trial:
    name: str
    outcome: str  # one of OUTCOMES
    reason: str = ""  # the refusal's one line, or the failure
    needs: list[str] = field(default_factory=list)  # capabilities: closure, create_graph, partition, modes
    corrected: Optional[bool] = None  # optim.corrected_decay changes its step (None: not tried)
    lr: float = math.nan
    weight_decay: float = math.nan
    final_loss: float = math.nan
    eval_top1: float = math.nan
    seconds: float = 0.0

    @property
    def group(self) -> str:
        return reason_group(self.reason) if self.outcome == "refused" else ""


@dataclass
class Batches:
    train: list[tuple[torch.Tensor, torch.Tensor]]
    val: list[tuple[torch.Tensor, torch.Tensor]]


def read_batches(cfg: DictConfig, steps: int, eval_images: int) -> Batches:
    """The first ``steps`` training batches of epoch 0 and the first ``eval_images`` val images
    of ``cfg``'s data, on the CPU, cloned (FFCV reuses its buffers)."""
    train_loader, val_loader = build_loaders(cfg, torch.device("cpu"))
    if len(train_loader) < steps:
        raise ConfigError(f"--steps {steps}: {cfg.data.train_path} gives {len(train_loader)} batches per epoch")
    train = []
    it = train_loader.epoch(0)
    try:
        for images, labels in it:
            train.append((images.clone(), labels.clone()))
            if len(train) == steps:
                break
    finally:
        it.close()
    val, seen = [], 0
    it = iter(val_loader)
    try:
        for images, labels in it:
            val.append((images[: eval_images - seen].clone(), labels[: eval_images - seen].clone()))
            seen += val[-1][1].shape[0]
            if seen >= eval_images:
                break
    finally:
        if hasattr(it, "close"):
            it.close()
    return Batches(train, val)


def _telemetry(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: DictConfig) -> Telemetry:
    """The trainer's telemetry (loop.Trainer builds it the same way), every step a per-layer step."""
    index = {n: i for i, g in enumerate(optimizer.param_groups) for n in g.get("names", [])}
    normalized = {n for g in optimizer.param_groups if g.get("normalized") for n in g["names"]}
    return Telemetry(list(model.named_parameters()), normalized,
                     predicted=lambda n: predicted_ratio(optimizer, optimizer.param_groups[index[n]]),
                     layer_every=1, flush_every=cfg.telemetry.flush_every, device=torch.device("cpu"),
                     optimizer=optimizer,
                     predicted_rotation=lambda n: predicted_rotation(optimizer, optimizer.param_groups[index[n]]))


@torch.no_grad()
def _evaluate(model: torch.nn.Module, val: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    model.eval()
    hits = loss = count = 0.0
    for images, labels in val:
        logits = model(images).float()
        hits += float((logits.argmax(1) == labels).sum())
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        count += labels.shape[0]
    model.train()
    return hits / count, loss / count


def _train(cfg: DictConfig, batches: Batches) -> tuple[float, float, float, Optional[int]]:
    """A few steps of ``cfg``'s model and optimizer, as the trainer takes them: (final loss,
    eval top-1, eval loss, the first step with a non-finite loss or norm: None if none)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.data.num_classes)
    optimizer = build_optimizer(model, cfg.optim, example_input=batches.train[0][0][:2])
    caps = capabilities_of(type(optimizer))
    steps = len(batches.train)
    schedule = LRSchedule(optimizer, cfg.schedule, cfg.optim.lr, steps, steps)
    telemetry = _telemetry(model, optimizer, cfg)
    point = EvaluationPoint(model, optimizer, lambda epoch: (images for images, _ in batches.train),
                            torch.device("cpu"))
    for step, (images, labels) in enumerate(batches.train):
        lr = schedule.apply(step)

        def forward_loss() -> torch.Tensor:
            return F.cross_entropy(model(images), labels, label_smoothing=cfg.train.label_smoothing)

        loss = forward_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward(create_graph=caps.create_graph)
        telemetry.record(step, 0, lr, loss, images.shape[0])
        try:
            optimizer_step(optimizer, caps, model, forward_loss, world_size=1)
        except Exception:  # as the trainer: a step that meets the numbers of a diverged run ends it diverged
            if not telemetry.flush():
                return math.nan, math.nan, math.nan, telemetry.diverged_at
            raise
        telemetry.after_step()
    if not telemetry.flush():
        return telemetry.last["loss"], math.nan, math.nan, telemetry.diverged_at
    with point(0):
        top1, eval_loss = _evaluate(model, batches.val)
    return telemetry.last["loss"], top1, eval_loss, None if math.isfinite(eval_loss) else steps


def corrected_variant(cfg: DictConfig, steps: int = 8) -> bool:
    """Whether ``optim.corrected_decay`` changes ``cfg``'s optimizer's steps (see the module docstring):
    ``steps`` steps on the probe network, as some optimizers take no step at first (RAdam's
    rectification, ADOPT's and SOAP's first step only initialise their statistics)."""
    out = []
    for switch in (False, True):
        section = OmegaConf.to_container(cfg.optim, resolve=True) | {"weight_decay": 0.1, "corrected_decay": switch}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = probe_model()
            images, labels = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 0])
            optimizer = build_optimizer(model, OmegaConf.create(section), example_input=images)
            caps = capabilities_of(type(optimizer))

            def forward_loss() -> torch.Tensor:
                return F.cross_entropy(model(images), labels)

            for _ in range(steps):
                for group in optimizer.param_groups:
                    group["lr"] = group["peak_lr"] / 2
                optimizer.zero_grad(set_to_none=True)
                forward_loss().backward(create_graph=caps.create_graph)
                optimizer_step(optimizer, caps, model, forward_loss, world_size=1)
            out.append([p.detach().clone() for g in optimizer.param_groups if g["normalized"] for p in g["params"]])
    return any(not torch.equal(a, b) for a, b in zip(*out))


def try_optimizer(base: DictConfig, name: str, batches: Batches) -> Trial:
    """One name of the catalogue (see the module docstring); never raises for the optimizer's sake."""
    start = time.perf_counter()
    defaults = library_defaults(name)
    trial = Trial(name, "refused", lr=defaults["lr"], weight_decay=defaults["weight_decay"])
    base_container = OmegaConf.to_container(base, resolve=True)
    suite = {k: base_container["optim"][k] for k in ("decay_norm_and_bias", "normalized_rule") if k in base_container["optim"]}
    base_container["optim"] = {"name": name, **suite, **defaults}  # the base's own optimizer keys are not this one's
    try:
        cls = optimizer_class(name)
        trial.needs = capabilities_of(cls).needs() + (["modes"] if has_modes(cls) else [])
    except ConfigError:
        pass  # the library cannot give the class here (bitsandbytes without CUDA): refused below, in one line
    try:
        cfg = build_config(base_container)
    except ConfigError as exc:
        trial.reason = str(exc)
        trial.seconds = time.perf_counter() - start
        return trial
    except Exception as exc:  # a traceback where the config is built: the suite's bug, shown
        trial.outcome, trial.reason = "failed", f"building the config: {describe(exc)}"
        trial.seconds = time.perf_counter() - start
        return trial
    try:
        trial.final_loss, trial.eval_top1, _, diverged_at = _train(cfg, batches)
        trial.outcome = "works" if diverged_at is None else "diverged"
        if diverged_at is not None:
            trial.reason = (f"non-finite loss or gradient at step {diverged_at}" if diverged_at < len(batches.train)
                            else "non-finite evaluation loss")
        elif "weight_decay" in inspect.signature(library_optimizer(name)).parameters:
            trial.corrected = corrected_variant(cfg)
    except Exception as exc:  # the suite's bug or the optimizer's: shown, never hidden
        trial.outcome, trial.reason = "failed", describe(exc)
    trial.seconds = time.perf_counter() - start
    return trial


def run_catalogue(base: DictConfig, names: Iterable[str], steps: int = 8, eval_images: int = 500,
                  report=None) -> list[Trial]:
    """Try each of ``names`` on ``base``'s model (a built RunConfig) in this process; ``report(trial)``
    is called after each."""
    batches = read_batches(base, steps, eval_images)
    if base.train.threads > 0:
        torch.set_num_threads(base.train.threads)  # as the trainer (after the loader, which sets its own)
    trials = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 230 libraries' deprecation notes would bury the table
        for name in names:
            trials.append(try_optimizer(base, name, batches))
            if report is not None:
                report(trials[-1])
    return trials


def counts(trials: list[Trial]) -> dict:
    """Outcomes and refusal reasons, counted."""
    out: dict = {o: sum(t.outcome == o for t in trials) for o in OUTCOMES}
    out["refused_by_reason"] = {}
    for t in trials:
        if t.outcome == "refused":
            out["refused_by_reason"][t.group] = out["refused_by_reason"].get(t.group, 0) + 1
    out["corrected_variant"] = sum(t.corrected is True for t in trials)
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(trials: list[Trial], config: str, steps: int, libraries: Iterable[str] = LIBRARIES) -> str:
    """The catalogue's page: how it was made, the counts, one row per optimizer."""
    versions = ", ".join(f"{k} {v}" for k, v in library_versions(libraries).items())
    c = counts(trials)
    reasons = "; ".join(f"{n} {g}" for g, n in sorted(c["refused_by_reason"].items(), key=lambda kv: -kv[1]))
    lines = [
        "# Optimizer catalogue",
        "",
        "Generated by `repro optimizers " + config + f" --table docs/optimizer-catalogue.md` (do not edit by hand): "
        f"every optimizer that {' and '.join(libraries)} list by name, {steps} steps each on that config's model at "
        f"the library's own default LR and weight decay (1e-3 and 0 where it has none), on "
        f"{platform.machine()} CPU without CUDA ({versions}). `imagenet_repro/train/catalogue.py` says how each is tried.",
        "",
        f"**{len(trials)} optimizers: {c['works']} work, {c['refused']} are refused at config time in one line, "
        f"{c['diverged']} diverged, {c['failed']} failed.** Refusals by reason: {reasons or 'none'}. "
        f"{c['corrected_variant']} have a corrected variant (`optim.corrected_decay: true` changes their step).",
        "",
        "| optimizer | outcome | needs | corrected variant | default LR, λ | why refused, or diverged |",
        "|---|---|---|---|---|---|",
    ]
    for t in trials:
        corrected = {True: "yes", False: "no (its decay ignores the group's weight_decay)", None: "-"}[t.corrected]
        needs = ", ".join(t.needs) or "-"
        why = _cell(t.reason)
        lines.append(f"| `{t.name}` | {t.outcome} | {needs} | {corrected} | {t.lr:g}, {t.weight_decay:g} | {why} |")
    return "\n".join(lines) + "\n"


def as_records(trials: list[Trial]) -> list[dict]:
    return [asdict(t) | {"group": t.group} for t in trials]
