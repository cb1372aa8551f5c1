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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A user-facing configuration problem; the message is one line."""


@dataclass
class DataConfig:
    dataset: str = "imagenet"  # imagenet | fashion_mnist | imagefolder (labels from folders)
    backend: str = "ffcv"  # ffcv | torchvision (ImageFolder + transforms.v2 + DataLoader)
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
    order: str = "random"  # random | quasi_random (ffcv) ; both reseeded per run seed
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


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | flat | step
    warmup_epochs: float = 0.0  # linear warmup from 0, stepped per iteration
    final_lr_fraction: float = 0.0  # cosine ends at lr * final_lr_fraction
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions
    step_gamma: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 16
    label_smoothing: float = 0.0
    device: str = "auto"  # auto | cpu | cuda
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


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return msg[0] if msg else type(exc).__name__


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override: {_one_line(exc)}") from None


def read_yaml(path: str | Path, what: str = "config file") -> DictConfig:
    """A YAML mapping from ``path``; a missing file, bad YAML or a non-mapping is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {_one_line(exc)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return loaded


def _merge_error(exc: OmegaConfBaseException, prefix: str = "") -> ConfigError:
    key = getattr(exc, "full_key", None)
    if key and prefix and not str(key).startswith(prefix):
        key = prefix + str(key)
    text = _one_line(exc)
    if type(exc).__name__ == "ConfigKeyError" and key:
        return ConfigError(f"unknown config key: {key}")
    if key:
        return ConfigError(f"bad value for {key}: {text}")
    return ConfigError(text)


def build_config(*layers: DictConfig | dict, check_paths: bool = True) -> DictConfig:
    """Merge layers (dicts or DictConfigs) over the structured defaults and validate.

    ``check_paths=False`` skips the data-path existence checks (a sweep's dry run plans
    cluster paths that need not exist on the submitting machine)."""
    from imagenet_repro.optim.registry import optimizer_config_class

    raw = OmegaConf.merge(*[OmegaConf.create(layer) for layer in layers]) if layers else OmegaConf.create()
    optim_raw = raw.pop("optim", None) if "optim" in raw else None
    optim_name = "sgd"
    if optim_raw is not None:
        if not isinstance(optim_raw, DictConfig):
            raise ConfigError("optim must be a mapping")
        optim_name = str(optim_raw.get("name", "sgd"))
    optim_cls = optimizer_config_class(optim_name)  # raises ConfigError for an unknown name

    schema = OmegaConf.structured(RunConfig)
    schema.optim = OmegaConf.structured(optim_cls)
    try:
        cfg = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as exc:
        raise _merge_error(exc) from None
    if optim_raw is not None:
        try:
            cfg.optim = OmegaConf.merge(cfg.optim, optim_raw)
        except OmegaConfBaseException as exc:
            raise _merge_error(exc, prefix="optim.") from None
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise _merge_error(exc) from None
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


def validate(cfg: DictConfig, check_paths: bool = True) -> None:
    """Semantic checks the type system cannot express. Raises ConfigError."""
    from imagenet_repro.models import known_model

    o = cfg.optim
    _require(o.lr > 0, f"optim.lr must be > 0 (got {o.lr})")
    _require(o.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {o.weight_decay})")
    if "momentum" in o:
        _require(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1) (got {o.momentum})")
    if "betas" in o:
        _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
                 f"optim.betas must be two numbers in [0, 1) (got {list(o.betas)})")
    t = cfg.train
    _require(t.epochs > 0, f"train.epochs must be > 0 (got {t.epochs})")
    _require(t.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda (got {t.device!r})")
    _require(t.label_smoothing >= 0 and t.label_smoothing < 1,
             f"train.label_smoothing must be in [0, 1) (got {t.label_smoothing})")
    _require(t.eval_every_steps >= 0, f"train.eval_every_steps must be >= 0 (got {t.eval_every_steps})")
    _require(t.eval_subset >= 0, f"train.eval_subset must be >= 0 (got {t.eval_subset})")
    d = cfg.data
    _require(d.backend in ("ffcv", "torchvision"), f"data.backend must be ffcv or torchvision (got {d.backend!r})")
    _require(d.dataset in ("imagenet", "fashion_mnist", "imagefolder"),
             f"data.dataset must be imagenet, fashion_mnist or imagefolder (got {d.dataset!r})")
    _require(d.batch_size > 0, f"data.batch_size must be > 0 (got {d.batch_size})")
    _require(d.order in ("random", "quasi_random"), f"data.order must be random or quasi_random (got {d.order!r})")
    _require(0 < d.rrc_scale_min <= 1, f"data.rrc_scale_min must be in (0, 1] (got {d.rrc_scale_min})")
    _require(0 < d.min_res <= d.max_res, f"data.min_res must be in (0, data.max_res] (got {d.min_res})")
    if check_paths:
        for key in ("train_path", "val_path"):
            _require(Path(d[key]).exists(), f"data.{key} does not exist: {d[key]}")
    _require(known_model(cfg.model.name), f"unknown model name: {cfg.model.name!r}")
    s = cfg.schedule
    _require(s.name in ("cosine", "flat", "step"), f"schedule.name must be cosine, flat or step (got {s.name!r})")
    _require(s.warmup_epochs >= 0, f"schedule.warmup_epochs must be >= 0 (got {s.warmup_epochs})")
    _require(cfg.telemetry.layer_every > 0, f"telemetry.layer_every must be > 0 (got {cfg.telemetry.layer_every})")
    _require(cfg.telemetry.flush_every > 0, f"telemetry.flush_every must be > 0 (got {cfg.telemetry.flush_every})")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def config_hash(cfg: DictConfig, length: int = 10) -> str:
    """Stable id of a resolved config: what the run computes, not where it is written."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("name", None)
    container.get("train", {}).pop("progress", None)
    blob = json.dumps(container, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def get(cfg: DictConfig, dotted: str, default: Optional[Any] = None) -> Any:
    return OmegaConf.select(cfg, dotted, default=default)
