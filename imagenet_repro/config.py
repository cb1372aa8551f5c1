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

from imagenet_repro.bounds import MAX_BATCH, MAX_COUNT, MAX_EPOCHS, MAX_RES, MAX_WORKERS, NO_LIMIT, Bound, check_bounds
from imagenet_repro.data.datasets import get_dataset
from imagenet_repro.errors import ConfigError, first_line
from imagenet_repro.optim.capabilities import placement_problem
from imagenet_repro.optim.registry import (
    check_optim_config,
    library_keys,
    optimizer_capabilities,
    optimizer_config_class,
)
from imagenet_repro.paths import in_path_problem


# Choice fields are StrEnums: OmegaConf rejects any other value when merging (one line,
# naming the key and the choices), and a member *is* its string, so comparisons, YAML
# output and the run-id hash are the same as with plain strings.
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
    dataset: str = "imagenet"  # a registered dataset (imagenet | fashion_mnist | imagefolder, imagenet_repro.data.datasets) or FILE.py:NAME
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
    progress: bool = True  # rank 0: a tqdm bar on a terminal, else a plain line every 30 s (imagenet_repro.progress)
    deterministic: bool = False  # use_deterministic_algorithms + cuBLAS workspace (train/determinism.py)
    eval_every_steps: int = 0  # >0: also evaluate every N global steps (0: at epoch ends only)
    eval_subset: int = 0  # images of those intermediate evals (first N of val; 0: whole val set)
    tensorboard: bool = False  # TensorBoard scalars in <run>/tensorboard/, written at each telemetry flush
    collective_timeout_min: float = 10.0  # several ranks: a collective that waits this long on a peer raises (the peer is gone)


@dataclass
class TelemetryConfig:
    layer_every: int = 50  # per-layer norms every N steps (1 = every step)
    flush_every: int = 50  # sync device accumulators to the host every N steps


@dataclass
class CheckpointConfig:
    every_minutes: float = 30.0
    every_epoch: bool = True
    # the world size (DDP ranks) is part of a run's identity (imagenet_repro.identity): a run
    # resumes on the number of ranks manifest.json records, unless this says the user accepts
    # another (another per-rank batch for BatchNorm; manifest.json keeps each start's)
    accept_world_size_change: bool = False


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
    try:
        schema.optim = OmegaConf.structured(optim_cls)
    except OmegaConfBaseException as exc:  # a library's constructor default no config type holds
        raise ConfigError(f"optim: {optim_name}: its keys cannot be read as a config: {first_line(exc)}") from None
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


CHOICES = {"data.backend": Backend, "data.order": Order, "train.device": Device,
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


# Every numeric knob of a RunConfig outside ``optim`` (each optimizer's checks are its own, in
# optim.registry; the library optimizers are probed with the settings).  One entry per int or
# float field: tests/test_bounds.py fails on a field missing here.  ``model.widths[]`` is
# every element of the list.  Cross-field rules (min_res <= max_res, ramps within the run,
# warmup < epochs, the loaders' memory against the machine) follow in :func:`validate`.
BOUNDS: dict[str, Bound] = {
    "seed": Bound(0, 2**32 - 1, interval=True),  # numpy's seeds are 32-bit
    "data.num_classes": Bound(2, 1_000_000, "the classifier has num_classes x features weights"),
    "data.batch_size": Bound(0, MAX_BATCH, "a batch is allocated whole", lo_open=True),
    "data.val_batch_size": Bound(0, MAX_BATCH, "a batch is allocated whole", lo_open=True),
    "data.num_workers": Bound(0, MAX_WORKERS, "no node has that many cores"),
    "data.min_res": Bound(0, MAX_RES, "the decoders' buffers grow with res^2", lo_open=True),
    "data.max_res": Bound(0, MAX_RES, "the decoders' buffers grow with res^2", lo_open=True),
    "data.val_res": Bound(0, MAX_RES, "the decoders' buffers grow with res^2", lo_open=True),
    "data.start_ramp": Bound(0, MAX_EPOCHS, "see train.epochs"),
    "data.end_ramp": Bound(0, MAX_EPOCHS, "see train.epochs"),
    "data.rrc_scale_min": Bound(0, 1, lo_open=True, interval=True),
    "data.train_subset": Bound(0, MAX_COUNT, "ffcv's sample indices are 32-bit"),
    "data.val_subset": Bound(0, MAX_COUNT, "ffcv's sample indices are 32-bit"),
    "model.widths[]": Bound(1, 4096, "a 3x3 convolution of that width holds 150M weights"),
    "model.blocks_per_stage": Bound(1, 64, "deeper than any ResNet"),
    "schedule.warmup_epochs": Bound(0, MAX_EPOCHS, "see train.epochs"),
    "schedule.final_lr_fraction": Bound(0, 1, interval=True),
    "schedule.milestones[]": Bound(0, 1, lo_open=True, hi_open=True, interval=True),
    "schedule.step_gamma": Bound(0, 1, lo_open=True, interval=True),
    "train.epochs": Bound(0, MAX_EPOCHS, "a typo: the longest shipped recipe has 300 epochs", lo_open=True),
    "train.label_smoothing": Bound(0, 1, hi_open=True, interval=True),
    "train.threads": Bound(0, MAX_WORKERS, "no node has that many cores"),
    "train.steps_per_epoch": Bound(0, MAX_COUNT, "step counts are 32-bit in the loaders"),
    "train.grad_clip": Bound(0, NO_LIMIT),
    "train.eval_every_steps": Bound(0, MAX_COUNT, "step counts are 32-bit in the loaders"),
    "train.eval_subset": Bound(0, MAX_COUNT, "ffcv's sample indices are 32-bit"),
    "train.collective_timeout_min": Bound(0, 24 * 60, "a day: a job's time limit ends the wait first", lo_open=True),
    "telemetry.layer_every": Bound(0, MAX_COUNT, "step counts are 32-bit in the loaders", lo_open=True),
    "telemetry.flush_every": Bound(0, 100_000, "the telemetry buffers hold flush_every steps on the device",
                                   lo_open=True),
    "checkpoint.every_minutes": Bound(0, NO_LIMIT),
}


class ContainerView(dict):
    """Attribute access over a resolved config's plain container, for :func:`validate`.

    The sweep planner types each grid point with OmegaConf (per axis value, once) and then
    validates hundreds of plain containers: wrapping each in a DictConfig would cost more
    than the rest of the plan.  Nothing is typed or converted here: :func:`validate` reads
    a plain container through it (the container is not copied)."""

    def __getattr__(self, item: str) -> Any:
        try:
            return self[item]
        except KeyError:
            raise AttributeError(item) from None

    def __getitem__(self, item: str) -> Any:
        value = dict.__getitem__(self, item)
        return ContainerView(value) if isinstance(value, dict) else value


def validate(cfg: DictConfig | dict, check_paths: bool = True) -> None:
    """Every field of every section: finite numbers, ranges, lengths, cross-field rules.

    ``cfg``: a RunConfig or its resolved plain container (a sweep's grid point).

    Types and the choice fields (StrEnums) are checked by OmegaConf when the layers are
    merged; this checks what types cannot express.  Raises ConfigError with one line.
    Rules that depend on the world size (batch vs ranks) are checked where it is known;
    the contents of the data files (labels vs ``data.num_classes``) by
    :func:`imagenet_repro.data.loaders.check_data` before any loader is built."""
    from imagenet_repro.models import (
        known_model,  # here: torch and torchvision load when a config is checked, not on import
    )
    from imagenet_repro.optim.probe import check_by_probe  # (torch, as models)

    if isinstance(cfg, dict) and not isinstance(cfg, ContainerView):
        cfg = ContainerView(cfg)
    leaves = dict(_leaves(cfg))
    libraries = {f"optim.{k}" for k in library_keys(cfg.optim.name)}  # a library's own keys: its say (the probe)
    for key, value in leaves.items():
        if isinstance(value, float) and key.split("[")[0] not in libraries:
            _require(math.isfinite(value), f"{key} must be a finite number (got {value})")
    for key, choices in CHOICES.items():  # OmegaConf checks these on merge; plain containers get it here
        section, name = key.split(".")
        value = cfg[section][name]
        _require(value in set(choices), f"{key} must be one of {', '.join(choices)} (got {value!r})")
    try:
        dataset = get_dataset(cfg.data.dataset)  # its registry entry (imagenet_repro.data.datasets)
    except ConfigError as exc:
        raise ConfigError(f"bad value for data.dataset: {exc}") from None

    _require(bool(cfg.name.strip()) and "/" not in cfg.name and cfg.name not in (".", ".."),
             f"name must be a non-empty folder name without '/' (got {cfg.name!r})")
    # rules over several values first (their message says more than one value's bound would)
    d, m, s, t = cfg.data, cfg.model, cfg.schedule, cfg.train
    _require(0 < d.min_res <= d.max_res, f"data.min_res must be in (0, data.max_res] (got {d.min_res})")
    _require(len(m.widths) > 0 and all(w > 0 for w in m.widths),
             f"model.widths must be a non-empty list of positive integers (got {list(m.widths)})")
    _require(len(m.widths) <= 11, f"model.widths must have at most 11 stages (got {len(m.widths)}): each halves "
                                  f"the resolution, and 2^11 = {MAX_RES} px is data.max_res's bound")
    _require(all(0 < x < 1 for x in s.milestones) and all(a < b for a, b in zip(s.milestones, s.milestones[1:])),
             f"schedule.milestones must be increasing fractions of the run in (0, 1) (got {list(s.milestones)})")
    check_bounds(leaves, BOUNDS)  # every numeric knob's own range (the table above)
    _require(dataset.num_classes in (None, d.num_classes),
             f"data.num_classes must be {dataset.num_classes} for data.dataset={dataset.name} (got {d.num_classes})")

    check_optim_config(cfg.optim)  # the optimizer's own keys (its config's check), normalized_rule, corrected_decay
    check_by_probe(cfg.optim)  # built and stepped once on a tiny network: the optimizer's own say

    if d.end_ramp > 0:
        _require(d.start_ramp <= d.end_ramp,
                 f"data.start_ramp must be <= data.end_ramp (got {d.start_ramp} > {d.end_ramp})")
        _require(d.end_ramp <= t.epochs, f"data.end_ramp must be <= train.epochs (got {d.end_ramp} > {t.epochs}): "
                                         f"the ramp would never reach data.max_res")
    for key in ("train_path", "val_path"):
        _require(bool(d[key].strip()), f"data.{key} must not be empty")
    if check_paths:
        for key in ("train_path", "val_path"):
            problem = data_path_problem(cfg, key)
            _require(problem is None, f"data.{key} {problem}: {d[key]}")
    _require(known_model(m.name), f"unknown model name: {m.name!r}")
    _require(s.warmup_epochs < t.epochs,
             f"schedule.warmup_epochs must be < train.epochs (got {s.warmup_epochs} >= {t.epochs})")


def data_path_kind(cfg: Any) -> str:
    """What ``data.train_path``/``val_path`` must be: a ``.beton`` file (ffcv), an ImageFolder
    root (torchvision), or either (the data set's registry entry says: Fashion-MNIST's is a folder of
    idx files, else found)."""
    if cfg["data"]["backend"] == "ffcv":
        return "file"
    return get_dataset(cfg["data"]["dataset"]).path_kind


def data_path_problem(cfg: Any, key: str) -> Optional[str]:
    """Why ``data.<key>`` of ``cfg`` cannot be read here (missing, wrong kind, unreadable), or None."""
    return in_path_problem(cfg["data"][key], data_path_kind(cfg))


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
    optim = cfg["optim"]
    why = placement_problem(optimizer_capabilities(optim["name"], optim.get("imports", [])), world_size)
    if why:
        problems.append(f"optim.name={optim['name']} {why} ({world_size} ranks here)")
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
                   "checkpoint.every_epoch", "train.collective_timeout_min", "checkpoint.accept_world_size_change")

# The keys left out of a run's id (:func:`config_hash`): its name (a label), the progress bar,
# and the non-metric keys added after run ids were first published, so that adding them kept
# every earlier id (and so every sweep folder and committed table) what it was; a run resumed
# on another world size with checkpoint.accept_world_size_change must find its own folder.  The
# older non-metric keys stay in the id for the same reason.
RUN_ID_EXCLUDED = ("name", "train.progress", "train.collective_timeout_min", "checkpoint.accept_world_size_change")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def config_hash(cfg: DictConfig | dict, length: int = 10) -> str:
    """Stable id of a resolved config (a DictConfig or its plain container): what the run
    computes, not where it is written.  The one run id of the suite (trainer and planner)."""
    if isinstance(cfg, dict):
        container = json.loads(json.dumps(cfg))  # a copy; StrEnum choices serialise as their strings
    else:
        container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # choices hash as plain strings
    for key in RUN_ID_EXCLUDED:
        *sections, last = key.split(".")
        node = container
        for section in sections:
            node = node.get(section, {})
        node.pop(last, None)
    blob = json.dumps(container, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
