"""A run folder belongs to one config: starting or resuming there with another is refused.

The trainer writes the resolved config into ``<run>/config.yaml`` when it starts.  Before
anything else, :func:`check_run_folder` compares it with the config about to run (``repro
train`` and every sweep job through :func:`imagenet_repro.train.loop.run_training`, and the
launcher for every planned run before it submits anything): a difference in any key outside
:data:`imagenet_repro.config.NON_METRIC_KEYS` is a :class:`ConfigError` (one line, exit 2,
nothing written) naming each differing key with both values.  Without this a second ``repro
train --out runs/x`` with another ``optim.lr`` would print ``runs/x: done`` and train nothing,
and a half-finished run restarted with another config would resume from the first one's
checkpoint: one set of tables from two configs.

The number of DDP ranks belongs to a run too (the global batch is split over them, and
BatchNorm normalises each rank's share): :func:`check_world_size` refuses, the same way, to
start or resume a folder whose ``manifest.json`` records another world size, unless the
config sets ``checkpoint.accept_world_size_change`` (a key of :data:`NON_METRIC_KEYS`, left
out of the run id, so that a sweep finds the same folders).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from imagenet_repro import files, rundir
from imagenet_repro.config import NON_METRIC_KEYS, build_config
from imagenet_repro.errors import ConfigError, first_line

_ABSENT = "(absent)"
_SHOWN = 6  # differing keys spelled out in the message; the rest are counted


def _plain(cfg: DictConfig | dict) -> dict:
    """A resolved config as plain JSON types (choices as their strings, tuples as lists)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return json.loads(json.dumps(cfg))


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value; a list is one value (``model.widths``)."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def config_differences(folder: dict, given: dict) -> list[tuple[str, Any, Any]]:
    """``(key, value in the folder's config, value given)`` for every key that differs, the
    keys of :data:`NON_METRIC_KEYS` aside; a key missing on one side shows as ``(absent)``."""
    a, b = _flat(folder), _flat(given)
    keys = [k for k in a if k not in NON_METRIC_KEYS] + [k for k in b if k not in a and k not in NON_METRIC_KEYS]
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in keys if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def _folder_config(path: Path, text: str) -> dict:
    """The config a folder holds, completed with today's defaults (a key added since the run
    started is not a difference); as written when it no longer builds (e.g. a removed plugin)."""
    try:
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: unreadable ({first_line(exc)}): cannot tell which config this run folder "
                          f"belongs to; delete {path.parent} to start it over") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a config mapping: cannot tell which config this run folder belongs to; "
                          f"delete {path.parent} to start it over")
    try:
        return _plain(build_config(raw, check_paths=False))
    except ConfigError:
        return _plain(raw)


def _show(value: Any) -> str:
    return value if value == _ABSENT else json.dumps(value)


def check_run_folder(out: str | Path, cfg: DictConfig | dict) -> None:
    """Refuse (ConfigError, one line) to start or resume the run folder ``out`` with ``cfg``
    when its ``config.yaml`` holds another config; a folder without one accepts any."""
    out = Path(out)
    path = out / rundir.CONFIG
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc.__class__.__name__}): cannot tell which config this run "
                          f"folder belongs to; delete {out} to start it over") from None
    given = _plain(cfg)
    try:
        fast = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        fast = None
    if fast == given:  # the common case, without building a config
        return
    diffs = config_differences(_folder_config(path, text), given)
    if not diffs:
        return
    shown = "; ".join(f"{k}: {_show(a)} in the folder, {_show(b)} given" for k, a, b in diffs[:_SHOWN])
    more = f"; and {len(diffs) - _SHOWN} more key(s)" if len(diffs) > _SHOWN else ""
    raise ConfigError(f"{out} holds a run of another config ({shown}{more}): nothing done; to train this config "
                      f"use another --out (or folder), or delete {out} to start it over")


def recorded_world_size(out: str | Path) -> int | None:
    """The world size ``out``'s ``manifest.json`` records (the last start's); None when none is recorded."""
    manifest = files.read_json(Path(out) / rundir.MANIFEST) or {}
    value = manifest.get("world_size")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_world_size(out: str | Path, cfg: DictConfig | dict, world_size: int) -> None:
    """Refuse (ConfigError, one line) to start or resume the run folder ``out`` on
    ``world_size`` ranks when its manifest records another world size, unless ``cfg`` sets
    ``checkpoint.accept_world_size_change``; a folder without a recorded one accepts any."""
    out = Path(out)
    recorded = recorded_world_size(out)
    if recorded is None or recorded == world_size or cfg["checkpoint"]["accept_world_size_change"]:
        return
    batch = cfg["data"]["batch_size"]
    raise ConfigError(f"{out} was trained on {recorded} rank(s) (per-rank batch {batch / recorded:g}), not "
                      f"{world_size} (per-rank batch {batch / world_size:g}): nothing done; resume it on {recorded} "
                      f"rank(s), or set checkpoint.accept_world_size_change=true to go on with {world_size} "
                      f"(BatchNorm then sees another batch), or delete {out} to start it over")
