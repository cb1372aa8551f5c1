"""Run configuration: OmegaConf structured configs, YAML files and ``key=value`` overrides.

Every knob of a run is declared here, up front, with its default (as ffcv-imagenet's
``train_imagenet.py`` does).  A run is described by one :class:`RunConfig`; its ``optim``
section takes the config dataclass registered for the chosen optimizer, so each optimizer
declares its own hyper-parameters (see :mod:`imagenet_repro.optim.registry`).

``load_config(path, overrides)`` merges defaults <- YAML <- overrides and validates the
result; any problem raises :class:`ConfigError` with one precise line, which the CLI
prints and turns into exit code 2 before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from imagenet_repro.errors import ConfigError, first_line
from imagenet_repro.optim.registry import check_optim_config, optimizer_config_class


# Choice fields are StrEnums: OmegaConf rejects any other value when merging (one line,
# naming the key and the choices), and a member *is* its string, so comparisons, YAML
# output and the run-id hash are the same as with plain strings.
class Dataset(StrEnum):
    imagenet = "imagenet"
    fashion_mnist = "fashion_mnist"
    imagefolder = "imagefolder"


class Backend(StrEnum):
    ffcv = "ffcv"
    torchvision = "torchvision"


class Order(StrEnum):
    random = "random"
    quasi_random = "quasi_random"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ScheduleName(StrEnum):
    cosine = "cosine"
    flat = "flat"
    step = "step"


@dataclass
class DataConfig:
    dataset: Dataset = Dataset.imagenet  # imagenet | fashion_mnist | imagefolder (labels from folders)
    backend: Backend = Backend.ffcv  # ffcv | torchvision (ImageFolder + transforms.v2 + DataLoader)
    # ffcv backend: .beton files; torchvision backend: ImageFolder roots (train/ and val/)
    train_path: str = "data/imagenet/train.beton"
    val_path: str = "data/imagenet/val.beton"
    num_classes: int = 1000
    batch_size: int = 256  # global batch; divided across DDP ranks
    val_batch_size: int = 256
    num_workers: int = 8
    # Progressive resizing as in ffcv-imagenet: resolution ramps min_res -> max_res
    # linearly between epochs start_ramp and end_ramp (end_ramp=0: fixed max_res).
    min_res: int = 160
    max_res: int = 192
    start_ramp: int = 0
    end_ramp: int = 0
    val_res: int = 256  # val images are center-cropped (ratio 224/256) then resized to this
    rrc_scale_min: float = 0.08  # RandomResizedCrop scale lower bound
    order: Order = Order.random  # random | quasi_random (ffcv) ; both reseeded per run seed
    os_cache: bool = True  # True: rely on the OS page cache; False: ffcv's process cache
    train_subset: int = 0  # >0: train on the first N images only (smoke tests)
    val_subset: int = 0


@dataclass
class ModelConfig:
    name: str = "resnet50"  # torchvision name, "timm:<name>", or "small_resnet"
    widths: list[int] = field(default_factory=lambda: [8, 16, 32])  # small_resnet only
    blocks_per_stage: int = 1  # small_resnet only
    head_norm: bool = False  # small_resnet only: classifier = bias-free linear -> BatchNorm1d
    channels_last: bool = True  # used on CUDA only
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm:<name> only: passed to timm.create_model


@dataclass
class ScheduleConfig:
    name: ScheduleName = ScheduleName.cosine  # cosine | flat | step
    warmup_epochs: float = 0.0  # linear warmup from 0, stepped per iteration
    final_lr_fraction: float = 0.0  # cosine ends at lr * final_lr_fraction
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions
    step_gamma: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 16
    label_smoothing: float = 0.0
    device: Device = Device.auto  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast, CUDA only
    threads: int = 0  # torch.set_num_threads on CPU; 0 leaves torch's default
    steps_per_epoch: int = 0  # >0 caps the steps of each epoch (smoke tests)
    grad_clip: float = 0.0  # 0 disables; norms are logged before clipping
    progress: bool = True  # tqdm bar on rank 0
    deterministic: bool = False  # torch.use_deterministic_algorithms
    eval_every_steps: int = 0  # >0: also evaluate every N global steps (0: at epoch ends only)
    eval_subset: int = 0  # images of those intermediate evals (first N of val; 0: whole val set)
    tensorboard: bool = False  # TensorBoard scalars in <run>/tensorboard/, written at each telemetry flush


@dataclass
class TelemetryConfig:
    layer_every: int = 50  # per-layer norms every N steps (1 = every step)
    flush_every: int = 50  # sync device accumulators to the host every N steps


@dataclass
class CheckpointConfig:
    every_minutes: float = 30.0
    every_epoch: bool = True


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: Any = None  # the registered optimizer's config dataclass (see optim.registry)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override: {first_line(exc)}") from None


def read_yaml(path: str | Path, what: str = "config file") -> DictConfig:
    """A YAML mapping from ``path``; a missing file, bad YAML or a non-mapping is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {first_line(exc)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return loaded


def merge_error(exc: OmegaConfBaseException, prefix: str = "") -> ConfigError:
    key = getattr(exc, "full_key", None)
    if key and prefix and not str(key).startswith(prefix):
        key = prefix + str(key)
    text = first_line(exc)
    if type(exc).__name__ == "ConfigKeyError" and key:
        return ConfigError(f"unknown config key: {key}")
    if key:
        return ConfigError(f"bad value for {key}: {text}")
    return ConfigError(text)


def _without_optim(layer: DictConfig) -> DictConfig:
    if "optim" not in layer:
        return layer
    rest = layer.copy()
    rest.pop("optim")
    return rest


def _optim_section(layers: list[DictConfig]) -> Optional[DictConfig]:
    """The ``optim`` sections of ``layers`` merged in order, where a layer that switches to
    another optimizer drops the earlier layers' keys the new one does not declare.

    So ``repro train experiments/demo.yaml optim.name=adamw`` works although the YAML sets
    SGD's ``momentum``: the keys belong to the optimizer that was replaced.  Keys given in
    the same layer as the new name, or later, must be declared by it (else: unknown key)."""
    merged: Optional[DictConfig] = None
    name: Optional[str] = None
    for layer in layers:
        section = layer.get("optim") if "optim" in layer else None
        if section is None:
            continue
        if not isinstance(section, DictConfig):
            raise ConfigError("optim must be a mapping")
        new_name = section.get("name")
        if merged is not None and new_name is not None and str(new_name) != (name or "sgd"):
            imports = section.get("imports", merged.get("imports", []))
            declared = {f.name for f in fields(optimizer_config_class(str(new_name), imports))} | {"imports"}
            merged = OmegaConf.create({k: v for k, v in merged.items() if k in declared})
        merged = section if merged is None else OmegaConf.merge(merged, section)
        name = str(new_name) if new_name is not None else name
    return merged


def build_config(*layers: DictConfig | dict, check_paths: bool = True) -> DictConfig:
    """Merge layers (dicts or DictConfigs) over the structured defaults and validate.

    ``check_paths=False`` skips the data-path existence checks (a sweep's dry run plans
    cluster paths that need not exist on the submitting machine)."""
    layers = [OmegaConf.create(layer) for layer in layers]
    optim_raw = _optim_section(layers)
    raw = OmegaConf.merge(*[_without_optim(layer) for layer in layers]) if layers else OmegaConf.create()
    optim_name, optim_imports = "sgd", []
    if optim_raw is not None:
        optim_name = str(optim_raw.get("name", "sgd"))
        optim_imports = optim_raw.get("imports", [])
    optim_cls = optimizer_config_class(optim_name, optim_imports)  # raises ConfigError for an unknown name

    schema = OmegaConf.structured(RunConfig)
    schema.optim = OmegaConf.structured(optim_cls)
    try:
        cfg = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as exc:
        raise merge_error(exc) from None
    if optim_raw is not None:
        try:
            cfg.optim = OmegaConf.merge(cfg.optim, optim_raw)
        except OmegaConfBaseException as exc:
            raise merge_error(exc, prefix="optim.") from None
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise merge_error(exc) from None
    validate(cfg, check_paths=check_paths)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    layers: list[Any] = []
    if path is not None:
        layers.append(read_yaml(path))
    layers.append(_parse_overrides(list(overrides)))
    return build_config(*layers)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


CHOICES = {"data.dataset": Dataset, "data.backend": Backend, "data.order": Order, "train.device": Device,
           "schedule.name": ScheduleName}


def _leaves(node: Any, prefix: str = ""):
    """(dotted key, value) of every leaf of a config, lists included (``model.widths[0]``)."""
    if isinstance(node, (DictConfig, dict)):
        for key in node:
            yield from _leaves(node[key], f"{prefix}{key}.")
    elif isinstance(node, (ListConfig, list, tuple)):
        for i, item in enumerate(node):
            yield from _leaves(item, f"{prefix[:-1]}[{i}].")
    else:
        yield prefix[:-1], node


def _in(value: float, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> bool:
    return (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)


def _range(key: str, value: float, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    bounds = ", ".join(str(b) if isinstance(b, int) else f"{b:g}" for b in (lo, hi))
    _require(_in(value, lo, hi, lo_open, hi_open),
             f"{key} must be in {'(' if lo_open else '['}{bounds}{')' if hi_open else ']'} (got {value})")


def _at_least(key: str, value: float, lo: float) -> None:
    _require(value >= lo, f"{key} must be >= {lo:g} (got {value})")


class ContainerView(dict):
    """Attribute access over a resolved config's plain container, for :func:`validate`.

    The sweep planner types each grid point with OmegaConf (per axis value, once) and then
    validates hundreds of plain containers: wrapping each in a DictConfig would cost more
    than the rest of the plan.  Nothing is typed or converted here."""

    def __getattr__(self, item: str) -> Any:
        try:
            return self[item]
        except KeyError:
            raise AttributeError(item) from None

    def __getitem__(self, item: str) -> Any:
        value = dict.__getitem__(self, item)
        return ContainerView(value) if isinstance(value, dict) else value


def validate(cfg: DictConfig, check_paths: bool = True) -> None:
    """Every field of every section: finite numbers, ranges, lengths, cross-field rules.

    Types and the choice fields (StrEnums) are checked by OmegaConf when the layers are
    merged; this checks what types cannot express.  Raises ConfigError with one line.
    Rules that depend on the world size (batch vs ranks) are checked where it is known;
    the contents of the data files (labels vs ``data.num_classes``) by
    :func:`imagenet_repro.data.loaders.check_data` before any loader is built."""
    from imagenet_repro.models import (
        known_model,  # here: torch and torchvision load when a config is checked, not on import
    )

    for key, value in _leaves(cfg):
        if isinstance(value, float):
            _require(math.isfinite(value), f"{key} must be a finite number (got {value})")
    for key, choices in CHOICES.items():  # OmegaConf checks these on merge; plain containers get it here
        section, name = key.split(".")
        value = cfg[section][name]
        _require(value in set(choices), f"{key} must be one of {', '.join(choices)} (got {value!r})")

    _require(bool(cfg.name.strip()) and "/" not in cfg.name and cfg.name not in (".", ".."),
             f"name must be a non-empty folder name without '/' (got {cfg.name!r})")
    _range("seed", cfg.seed, 0, 2**32 - 1)  # numpy's seeds are 32-bit

    o = cfg.optim
    _require(o.lr > 0, f"optim.lr must be > 0 (got {o.lr})")
    _require(o.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {o.weight_decay})")
    if "momentum" in o:
        _require(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1) (got {o.momentum})")
    if "dampening" in o:
        _range("optim.dampening", o.dampening, 0, 1, hi_open=True)
    if o.get("nesterov"):
        _require(o.momentum > 0 and o.dampening == 0,
                 f"optim.nesterov needs optim.momentum > 0 and optim.dampening = 0 "
                 f"(got momentum {o.momentum}, dampening {o.dampening})")
    if "betas" in o:
        _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
                 f"optim.betas must be two numbers in [0, 1) (got {list(o.betas)})")
    if "eps" in o:
        _require(o.eps > 0, f"optim.eps must be > 0 (got {o.eps})")
    check_optim_config(o)  # normalized_rule, corrected_decay, and the optimizer's own checks
    t = cfg.train
    _require(t.epochs > 0, f"train.epochs must be > 0 (got {t.epochs})")
    _require(t.label_smoothing >= 0 and t.label_smoothing < 1,
             f"train.label_smoothing must be in [0, 1) (got {t.label_smoothing})")
    _at_least("train.threads", t.threads, 0)
    _at_least("train.steps_per_epoch", t.steps_per_epoch, 0)
    _at_least("train.grad_clip", t.grad_clip, 0)
    _at_least("train.eval_every_steps", t.eval_every_steps, 0)
    _at_least("train.eval_subset", t.eval_subset, 0)

    d = cfg.data
    _require(d.num_classes >= 2, f"data.num_classes must be >= 2 (got {d.num_classes})")
    _require(d.batch_size > 0, f"data.batch_size must be > 0 (got {d.batch_size})")
    _require(d.val_batch_size > 0, f"data.val_batch_size must be > 0 (got {d.val_batch_size})")
    _at_least("data.num_workers", d.num_workers, 0)
    _require(0 < d.rrc_scale_min <= 1, f"data.rrc_scale_min must be in (0, 1] (got {d.rrc_scale_min})")
    _require(0 < d.min_res <= d.max_res, f"data.min_res must be in (0, data.max_res] (got {d.min_res})")
    _require(d.val_res > 0, f"data.val_res must be > 0 (got {d.val_res})")
    _at_least("data.start_ramp", d.start_ramp, 0)
    _at_least("data.end_ramp", d.end_ramp, 0)
    if d.end_ramp > 0:
        _require(d.start_ramp <= d.end_ramp,
                 f"data.start_ramp must be <= data.end_ramp (got {d.start_ramp} > {d.end_ramp})")
    _at_least("data.train_subset", d.train_subset, 0)
    _at_least("data.val_subset", d.val_subset, 0)
    for key in ("train_path", "val_path"):
        _require(bool(d[key].strip()), f"data.{key} must not be empty")
    if check_paths:
        for key in ("train_path", "val_path"):
            _require(Path(d[key]).exists(), f"data.{key} does not exist: {d[key]}")

    m = cfg.model
    _require(known_model(m.name), f"unknown model name: {m.name!r}")
    _require(len(m.widths) > 0 and all(w > 0 for w in m.widths),
             f"model.widths must be a non-empty list of positive integers (got {list(m.widths)})")
    _require(m.blocks_per_stage >= 1, f"model.blocks_per_stage must be >= 1 (got {m.blocks_per_stage})")

    s = cfg.schedule
    _require(s.warmup_epochs >= 0, f"schedule.warmup_epochs must be >= 0 (got {s.warmup_epochs})")
    _require(s.warmup_epochs < t.epochs,
             f"schedule.warmup_epochs must be < train.epochs (got {s.warmup_epochs} >= {t.epochs})")
    _range("schedule.final_lr_fraction", s.final_lr_fraction, 0, 1)
    _require(all(0 < x < 1 for x in s.milestones) and all(a < b for a, b in zip(s.milestones, s.milestones[1:])),
             f"schedule.milestones must be increasing fractions of the run in (0, 1) (got {list(s.milestones)})")
    _range("schedule.step_gamma", s.step_gamma, 0, 1, lo_open=True)

    _require(cfg.telemetry.layer_every > 0, f"telemetry.layer_every must be > 0 (got {cfg.telemetry.layer_every})")
    _require(cfg.telemetry.flush_every > 0, f"telemetry.flush_every must be > 0 (got {cfg.telemetry.flush_every})")
    _at_least("checkpoint.every_minutes", cfg.checkpoint.every_minutes, 0)


def placement_problems(cfg: Any, world_size: int, has_gpu: bool) -> list[str]:
    """What a run of ``cfg`` would refuse at start on ``world_size`` ranks (one line each).

    The one source of the rules that depend on where a run is placed, not on the config
    alone: the trainer raises the first at start, and the sweep planner checks every grid
    point against the spec's resources (nodes x tasks per node, GPUs) before anything is
    submitted, so a run that cannot start is never queued.  ``cfg`` is a RunConfig or its
    plain-container form."""
    data, train = cfg["data"], cfg["train"]
    problems = []
    if data["order"] == "quasi_random" and world_size > 1:
        problems.append(f"data.order=quasi_random is not available with several ranks (ffcv 1.0; "
                        f"{world_size} ranks here): use data.order=random")
    batch = data["batch_size"]
    if batch < world_size:
        problems.append(f"data.batch_size={batch} gives a per-rank batch of 0 on {world_size} ranks")
    elif batch % world_size:
        problems.append(f"data.batch_size={batch} is not divisible by the {world_size} ranks "
                        f"(the per-rank batch would be {batch / world_size:g})")
    if train["device"] == "cuda" and not has_gpu:
        problems.append("train.device=cuda but the run has no GPU (give the job GPUs, or train.device=cpu)")
    return problems


def check_placement(cfg: Any, world_size: int, has_gpu: bool) -> None:
    """Raise ConfigError with the first of :func:`placement_problems`."""
    problems = placement_problems(cfg, world_size, has_gpu)
    if problems:
        raise ConfigError(problems[0])


# The keys that cannot change a metric of a run (its steps, layers and eval tables): a run
# folder is bound to its config (imagenet_repro.identity), and a restart there may differ
# from it in these only.  The one list: tests/test_identity.py trains every key changed
# mid-run and checks the tables equal the unchanged run's, and fails on a key it has no case for.
NON_METRIC_KEYS = ("name", "train.progress", "train.tensorboard", "checkpoint.every_minutes",
                   "checkpoint.every_epoch")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def config_hash(cfg: DictConfig | dict, length: int = 10) -> str:
    """Stable id of a resolved config (a DictConfig or its plain container): what the run
    computes, not where it is written.  The one run id of the suite (trainer and planner)."""
    if isinstance(cfg, dict):
        container = json.loads(json.dumps(cfg))  # a copy; StrEnum choices serialise as their strings
    else:
        container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # choices hash as plain strings
    container.pop("name", None)
    container.get("train", {}).pop("progress", None)
    blob = json.dumps(container, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
