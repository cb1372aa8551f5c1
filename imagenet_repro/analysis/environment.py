"""The environment a sweep's runs were made in (``manifest.json``'s ``environment``, written by
:func:`imagenet_repro.train.manifest.environment`): what they share, and where they differ.

Runs of one sweep compare fairly only when made with the same packages, CPU kernels (or CUDA
device, driver, CUDA and cuDNN) and thread counts: ``repro aggregate`` writes the comparison to
``environment.json`` beside the tables and warns, one line per differing key, when they are not.
The number of DDP ranks (``manifest.json``'s ``world_size``) and so each rank's share of the
batch are compared apart (:func:`compare_world_sizes`, under ``ranks`` in ``environment.json``):
one warning line when the runs differ in them, one per run resumed on another world size.

Whether a machine should give a committed sweep's numbers exactly (:func:`reproduction_verdict`,
``repro environment``, ``tests/test_reproduction.py``): only when every field of :data:`DECIDING`
matches an environment known to give them -- the one the runs recorded, or one listed in
``environment.json``'s ``reproduced_on`` (a machine on which a committed run was trained again
and came out equal) -- else within the spread measured across environments (docs/reproducing.md).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Iterable, Mapping

import yaml

from imagenet_repro import files, rundir
from imagenet_repro.errors import ConfigError
from imagenet_repro.train.manifest import environment, runtime_packages_sha256

# What decides a run's numbers besides its config and code (flattened keys of a manifest's
# ``environment``; a key ending in "." stands for every key under it): the CPU and the kernels
# torch, oneDNN and MKL pick on it, torch's build, the libraries FFCV decodes and resizes with,
# the runtime packages (one hash: the lock's test tools and pip are left out), Python, the
# kernel environment variables, the thread count, the CUDA stack.
DECIDING = ("python", "machine", "cpu.vendor", "cpu.model", "cpu.isa_flags", "cpu_capability",
            "torch_build.", "ffcv_libraries.", "runtime_packages_sha256", "kernel_env.", "torch_threads", "cuda")
RUNTIME_HASH = "runtime_packages_sha256"
NOT_RECORDED = "(not recorded)"


def read_environment(run_dir: Path) -> tuple[dict[str, str] | None, list[dict]]:
    """(the run's flattened environment or None for a run with none recorded, its resume changes)."""
    manifest = files.read_json(Path(run_dir) / rundir.MANIFEST) or {}
    env = manifest.get("environment")
    return (rundir.flatten_environment(env) if isinstance(env, dict) else None,
            list(manifest.get("environment_changes") or []))


def compare_environments(run_dirs: Iterable[Path]) -> dict:
    """``{"runs": n, "common": {key: value}, "differs": {key: {value: [run ids]}},
    "changed_on_resume": {run id: [keys]}, "unrecorded": [run ids]}`` over the runs that recorded one."""
    envs, changed, unrecorded = {}, {}, []
    for run_dir in run_dirs:
        env, changes = read_environment(run_dir)
        if env is None:
            if (Path(run_dir) / rundir.MANIFEST).exists():
                unrecorded.append(Path(run_dir).name)
            continue
        envs[Path(run_dir).name] = env
        if changes:
            changed[Path(run_dir).name] = sorted({k for c in changes for k in c.get("keys", [])})
    keys = sorted({k for env in envs.values() for k in env})
    common, differs = {}, {}
    for key in keys:
        by_value: dict[str, list[str]] = defaultdict(list)
        for run_id, env in sorted(envs.items()):
            by_value[env.get(key, "(absent)")].append(run_id)
        if len(by_value) == 1:
            common[key] = next(iter(by_value))
        else:
            differs[key] = dict(sorted(by_value.items(), key=lambda kv: -len(kv[1])))
    return {"runs": len(envs), "common": common, "differs": differs, "changed_on_resume": changed,
            "unrecorded": unrecorded}


def environment_warnings(sweep: str, comparison: dict) -> list[str]:
    """One line per key in which the runs differ (and per run whose environment changed on resume)."""
    lines = []
    for key, by_value in comparison["differs"].items():
        values = ", ".join(f"{value} ({len(ids)} run{'s' * (len(ids) != 1)})" for value, ids in by_value.items())
        lines.append(f"warning: the runs of {sweep} differ in {key}: {values}; their numbers may not compare")
    for run_id, keys in comparison["changed_on_resume"].items():
        lines.append(f"warning: run {run_id} of {sweep} was resumed in another environment ({', '.join(keys)})")
    if comparison["unrecorded"]:
        lines.append(f"warning: {len(comparison['unrecorded'])} run(s) of {sweep} recorded no environment "
                     f"(made before it was recorded): {', '.join(comparison['unrecorded'][:3])}")
    return lines


# ---------------------------------------------------------------------------- ranks
def read_world_size(run_dir: Path) -> tuple[int | None, int | None, list[int]]:
    """(the world size the run's ``manifest.json`` records or None, its per-rank batch (the
    config's global ``data.batch_size`` over it) or None, the world size of each start that
    recorded one)."""
    manifest = files.read_json(Path(run_dir) / rundir.MANIFEST) or {}
    world = manifest.get("world_size")
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        return None, None, []
    starts = [s["world_size"] for s in manifest.get("starts") or [] if isinstance(s, dict)
              and isinstance(s.get("world_size"), int)]
    try:
        config = yaml.load((Path(run_dir) / rundir.CONFIG).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        batch = config["data"]["batch_size"]
        per_rank = batch // world if isinstance(batch, int) and batch % world == 0 else None
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        per_rank = None
    return world, per_rank, starts


def compare_world_sizes(run_dirs: Iterable[Path]) -> dict:
    """``{"runs": n, "world_size": {ranks: [run ids]}, "per_rank_batch": {images: [run ids]},
    "changed_on_resume": {run id: [world sizes in the order of its starts]}}`` over the runs whose manifest
    records a world size (keys as strings, for JSON)."""
    world_sizes: dict[str, list[str]] = defaultdict(list)
    per_rank: dict[str, list[str]] = defaultdict(list)
    changed: dict[str, list[int]] = {}
    for run_dir in sorted(Path(d) for d in run_dirs):
        world, batch, starts = read_world_size(run_dir)
        if world is None:
            continue
        world_sizes[str(world)].append(run_dir.name)
        per_rank[str(batch) if batch is not None else "(unknown)"].append(run_dir.name)
        if len(set(starts)) > 1:
            changed[run_dir.name] = [size for size, _ in groupby(starts)]
    order = lambda d: dict(sorted(d.items(), key=lambda kv: -len(kv[1])))  # noqa: E731
    return {"runs": sum(len(v) for v in world_sizes.values()), "world_size": order(world_sizes),
            "per_rank_batch": order(per_rank), "changed_on_resume": changed}


def world_size_warnings(sweep: str, comparison: dict) -> list[str]:
    """A line when the runs were made on different numbers of ranks (so with other per-rank
    batches, which BatchNorm normalises over), and one per run resumed on another number.
    Per-rank batches that differ on one world size come from a swept ``data.batch_size``: no line."""
    def counted(by_value: dict, unit: str) -> str:
        return ", ".join(f"{value}{unit} ({len(ids)} run{'s' * (len(ids) != 1)})" for value, ids in by_value.items())

    lines = []
    if len(comparison["world_size"]) > 1:
        lines.append(f"warning: the runs of {sweep} differ in world size: {counted(comparison['world_size'], ' ranks')};"
                     f" per-rank batch {counted(comparison['per_rank_batch'], '')}: BatchNorm sees another batch, "
                     f"their numbers may not compare")
    for run_id, starts in comparison["changed_on_resume"].items():
        lines.append(f"warning: run {run_id} of {sweep} was resumed on another world size "
                     f"({' then '.join(map(str, starts))} ranks)")
    return lines


# ---------------------------------------------------------------------------- equality or spread
def deciding_fields(flat: Mapping[str, str]) -> dict[str, str]:
    """The fields of a flattened environment that decide the numbers (:data:`DECIDING`); the
    runtime packages' hash derived from the recorded ``packages.*`` where it was not recorded
    (environments recorded before it was)."""
    fields = {k: v for k, v in flat.items()
              if any(k == d or (d.endswith(".") and k.startswith(d)) or k.startswith(d + ".") for d in DECIDING)}
    if RUNTIME_HASH not in fields:
        packages = {k[len("packages."):]: v for k, v in flat.items() if k.startswith("packages.")}
        if packages:
            fields[RUNTIME_HASH] = str(runtime_packages_sha256(packages))
    return dict(sorted(fields.items()))


def _differences(reference: Mapping[str, str], mine: Mapping[str, str]) -> list[tuple[str, str, str]]:
    keys = sorted(reference.keys() | mine.keys())
    return [(k, reference.get(k, NOT_RECORDED), mine.get(k, NOT_RECORDED)) for k in keys
            if reference.get(k, NOT_RECORDED) != mine.get(k, NOT_RECORDED)]


@dataclass
class Verdict:
    """``expect`` "equality" (every deciding field matches ``reference``) or "spread";
    ``differences``: (key, reference's value, this one's) against the closest known environment."""
    expect: str
    reference: str
    differences: list[tuple[str, str, str]] = field(default_factory=list)

    def line(self) -> str:
        if self.expect == "equality":
            return f"equality expected: every field that decides the numbers matches {self.reference}"
        shown = "; ".join(f"{k}: {ref} there vs {here} here" for k, ref, here in self.differences[:6])
        more = f"; and {len(self.differences) - 6} more" if len(self.differences) > 6 else ""
        return f"spread expected (docs/reproducing.md): {len(self.differences)} field(s) differ from " \
               f"{self.reference}: {shown}{more}"


def known_environments(comparison: Mapping) -> list[tuple[str, dict[str, str]]]:
    """The environments an ``environment.json`` knows to give its numbers exactly, as (label,
    deciding fields): the one its runs recorded (their ``common`` fields; none when they differ),
    then each ``reproduced_on`` entry."""
    known = []
    if not comparison.get("differs"):
        known.append((f"the {comparison.get('runs', '?')} runs' own record", deciding_fields(comparison["common"])))
    for entry in comparison.get("reproduced_on") or []:
        known.append((f"the machine that reproduced them ({entry.get('how', 'reproduced_on')})",
                      deciding_fields(entry["environment"])))
    return known


def reproduction_verdict(comparison: Mapping, mine: Mapping[str, str]) -> Verdict:
    """Equality when ``mine`` (a flattened environment) matches one of the environments the
    ``environment.json`` ``comparison`` knows to give its numbers (:func:`known_environments`) in
    every deciding field; else spread, with the differences from the closest of them."""
    here = deciding_fields(mine)
    known = known_environments(comparison)
    if not known:
        return Verdict("spread", "no single recorded environment (the runs differ)",
                       [(k, "several", here.get(k, NOT_RECORDED)) for k in comparison.get("differs", {})])
    scored = sorted(((len(_differences(fields, here)), i, label, fields) for i, (label, fields) in enumerate(known)))
    count, _, label, fields = scored[0]
    return Verdict("equality" if count == 0 else "spread", label, _differences(fields, here))


def this_machine(threads: int | None = None, device: str = "cpu") -> dict[str, str]:
    """This machine's flattened environment, as a run's manifest records it, with torch's thread
    count set to ``threads`` first (a run sets it from its config's ``train.threads``)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return rundir.flatten_environment(environment(torch.device(device)))


def read_comparison(results_dir: Path) -> dict:
    """A sweep's ``environment.json`` (written by ``repro aggregate``); ConfigError when there is none."""
    path = Path(results_dir) / rundir.ENVIRONMENT if Path(results_dir).is_dir() else Path(results_dir)
    comparison = files.read_json(path)
    if not isinstance(comparison, dict) or "common" not in comparison:
        raise ConfigError(f"{path}: no environment record of a sweep here (`repro aggregate SPEC` writes one "
                          f"beside its tables, e.g. results/demo/environment.json)")
    return comparison


def environment_report(results_dir: Path, device: str = "cpu") -> list[str]:
    """``repro environment``: this machine's fields that decide the numbers, and whether a run of
    the sweep in ``results_dir`` should give its committed numbers exactly here (the
    reproduction test's own decision, :func:`reproduction_verdict`) or within the spread."""
    comparison = read_comparison(results_dir)
    threads = comparison["common"].get("torch_threads")
    mine = this_machine(int(threads) if threads and threads.isdigit() else None, device)
    fields = deciding_fields(mine)
    width = max(map(len, fields))
    lines = [f"this machine: what decides a run's numbers (threads as {results_dir}'s runs set them)"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in fields.items()]
    lines.append(f"  {'lock_sha256'.ljust(width)}  {mine.get('lock_sha256')} (the whole lock: informational)")
    verdict = reproduction_verdict(comparison, mine)
    lines.append(f"{results_dir}: {verdict.expect} expected" + (
        f" (every field matches {verdict.reference})" if verdict.expect == "equality" else
        f" (docs/reproducing.md): {len(verdict.differences)} field(s) differ from {verdict.reference}:"))
    lines += [f"  {k}: {ref} there, {here} here" for k, ref, here in verdict.differences]
    return lines


# ---------------------------------------------------------------------------- the spread, measured
SPREAD_METRICS = ("final_top1", "final_top5", "final_eval_loss", "grad_norm_tail_ratio", "ratio_tail_ratio",
                  "weight_norm_tail_ratio")
RUN_POINT = ["optimizer", "lr_max", "wd", "seed"]  # what pairs a run with its twin in another environment


def spread_report(reference: Path, others: list[Path]) -> list[str]:
    """``repro environment REF --spread OTHER...``: how far another environment moved each run of
    the same sweep (runs paired by optimizer, lr, wd and seed in the ``runs.parquet`` tables of
    ``repro aggregate``): the largest and mean |change| per metric; then the paired verdicts
    (``paired.csv``: does the SGDC - SGD interval exclude 0?) side by side, marking those that
    do not carry from ``reference`` to every other."""
    import pandas as pd

    def runs(folder: Path) -> pd.DataFrame:
        path = Path(folder) / rundir.RUNS_TABLE
        if not path.is_file():
            raise ConfigError(f"{path}: no runs table (`repro aggregate SPEC` writes it)")
        table = pd.read_parquet(path)
        return table[table["state"] == "done"].set_index(RUN_POINT)

    ref = runs(reference)
    lines = [f"the spread: |change| of one run from {reference} ({len(ref)} runs), runs paired by "
             f"{', '.join(RUN_POINT)}", "metric".ljust(24) + "".join(f"{Path(o).name:>40}" for o in others)]
    moved = {}
    for other in others:
        table = runs(other)
        both = ref.index.intersection(table.index)
        moved[other] = (len(both), (table.loc[both, list(SPREAD_METRICS)] - ref.loc[both, list(SPREAD_METRICS)]).abs())
    lines.append("runs paired".ljust(24) + "".join(f"{moved[o][0]:>40}" for o in others))
    for metric in SPREAD_METRICS:
        cells = [f"max {moved[o][1][metric].max():.4f}  mean {moved[o][1][metric].mean():.4f}" for o in others]
        lines.append(metric.ljust(24) + "".join(f"{c:>40}" for c in cells))

    verdicts = {}
    for folder in [reference, *others]:
        path = Path(folder) / rundir.PAIRED_TABLE
        if path.is_file():
            table = pd.read_csv(path)
            table = table[table["comparison"] == "same (lr, wd)"]
            verdicts[folder] = {(r.metric, r.plain_wd): (r.mean_diff, r.ci_low, r.ci_high, bool(r.includes_zero))
                                for r in table.itertuples()}
    if reference in verdicts:
        lines.append(f"paired verdicts (SGDC - SGD, same lr and wd; mean [95% interval]; '*' where the "
                     f"interval's verdict on 0 differs from {reference}'s)")
        shown = [f for f in [reference, *others] if f in verdicts]
        lines.append("metric, wd".ljust(30) + "".join(f"{Path(f).name:>36}" for f in shown))
        for key, (_, _, _, ref_zero) in sorted(verdicts[reference].items()):
            cells = []
            for folder in shown:
                if key not in verdicts[folder]:
                    cells.append("-")
                    continue
                mean, low, high, zero = verdicts[folder][key]
                cells.append(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]{'*' if zero != ref_zero else ' '}")
            lines.append(f"{key[0]}, {key[1]:g}".ljust(30) + "".join(f"{c:>36}" for c in cells))
    return lines
