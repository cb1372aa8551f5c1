"""Two-stage sweeps: search the grid with some seeds, then confirm the best configs with the rest.

A spec may declare its stages (exactly two)::

    axes:
      optimizer: [sgd, sgdc]
      optim.lr: [0.015625, ..., 1.0]
      optim.weight_decay: [5.0e-5, ..., 1.0e-2]
      seed: [0, 1, 2, 3, 4]
    stages:
      - {name: search, seeds: [0]}                              # stage 1: the whole grid at these seeds
      - {name: confirm, seeds: [1, 2, 3, 4], at: best}          # stage 2: the other seeds at each
                                                                #   optimizer's best (lr, wd) of stage 1
      # - {..., at: best, neighbours: true}                     #   ... and at the grid neighbours of that best
                                                                #   (one step in lr or in wd: up to 4 more)

Rules (checked when the spec is read; a bad stage spec is a one-line ConfigError):

* stage 1 has ``name`` and ``seeds`` (optionally ``at: grid``); stage 2 has ``name``,
  ``seeds``, ``at: best`` and optionally ``neighbours`` (true/false, default false);
* the spec has a ``seed`` axis and the two stages' seeds split it: no seed in both, none left out;
* the other axes are among optimizer, optim.lr and optim.weight_decay (the best config of an
  optimizer is a point in lr x wd);
* stage names are distinct words (letters, digits, ``_``, ``-``; not a number).

Stage 1 is the grid restricted to its seeds.  Stage 2 reads stage 1's runs with the
aggregation code (:func:`imagenet_repro.analysis.aggregate.aggregate_runs` then
:func:`~imagenet_repro.analysis.aggregate.select_best`: highest mean final top-1, a config
with a diverged seed is never the best) and is refused while any stage-1 run is not done or
diverged.  Every run keeps its grid run id (the config hash), so a stage-2 run is the same
folder as the corresponding point of the full grid, and ``repro status``, ``aggregate`` and
``figures`` see one sweep.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from imagenet_repro.analysis.aggregate import aggregate_runs, format_summary, select_best
from imagenet_repro.errors import ConfigError
from imagenet_repro.rundir import FINAL_STATES
from imagenet_repro.sweep.spec import PlannedRun, Stage, SweepSpec, run_hours, same_value
from imagenet_repro.sweep.status import RunRef, classify_all, format_counts, summary_of

ALL = "all"  # --stage all: the whole grid, ignoring the stages


def pick_stage(spec: SweepSpec, which: Optional[str]) -> Optional[Stage]:
    """The stage ``--stage`` names (1, 2, a stage name; None: stage 1); None for ``all``."""
    which = None if which is None else str(which)
    if not spec.stages:
        if which is None or which == ALL:
            return None
        raise ConfigError(f"{spec.path}: --stage {which}: this spec declares no stages (add a `stages:` section)")
    if which is None:
        return spec.stages[0]
    if which == ALL:
        return None
    for stage in spec.stages:
        if which in (str(stage.number), stage.name):
            return stage
    names = ", ".join(f"{s.number} ({s.name})" for s in spec.stages)
    raise ConfigError(f"--stage {which}: {spec.name} has stages {names}, or `all` for the whole grid")


# ---------------------------------------------------------------------------- selection
def _seed_of(run: PlannedRun) -> Any:
    return run.point["seed"]


def stage_one_runs(spec: SweepSpec, grid: list[PlannedRun]) -> list[PlannedRun]:
    seeds = spec.stages[0].seeds
    return [r for r in grid if any(same_value(_seed_of(r), s) for s in seeds)]


@dataclass
class StageTwoChoice:
    """What stage 1 chose: the best (lr, wd) per optimizer and the configs stage 2 runs."""

    best: dict  # optimizer -> {"optim.lr": lr, "optim.weight_decay": wd, "final_top1": mean}
    configs: list  # (optimizer, lr, wd) grid values confirmed in stage 2, in grid order
    notes: list  # one line each: optimizers without an eligible config, unreadable runs
    summary: str  # stage 1's aggregate summary table


def _axis(spec: SweepSpec, key: str, default: Any) -> list:
    return spec.axes.get(key, [default])


def choose_stage_two(spec: SweepSpec, grid: list[PlannedRun]) -> StageTwoChoice:
    """Aggregate stage 1's runs and pick each optimizer's best (lr, wd) (and its neighbours)."""
    first = stage_one_runs(spec, grid)
    agg = aggregate_runs([r.run_dir for r in first])
    best_rows = select_best(agg.configs)
    base = first[0].config["optim"]
    optimizers = _axis(spec, "optim.name", base["name"])
    lrs = _axis(spec, "optim.lr", base["lr"])
    wds = _axis(spec, "optim.weight_decay", base["weight_decay"])
    best: dict = {}
    chosen: list = []
    notes: list = []
    corrupt = agg.runs[agg.runs["state"] == "corrupt"]
    for _, row in corrupt.iterrows():
        notes.append(f"stage-1 run {row['run_id']} is unreadable ({row['problem']}): its config cannot be chosen")
    want_neighbours = spec.stages[1].neighbours
    for opt in optimizers:
        pick = best_rows[best_rows["optimizer"] == str(opt)]
        if pick.empty:
            notes.append(f"{opt}: no eligible config in stage 1 (every config diverged or unreadable): "
                         f"no stage-2 runs")
            continue
        p = pick.iloc[0]
        i = next(k for k, v in enumerate(lrs) if same_value(v, float(p["lr_max"])))
        j = next(k for k, v in enumerate(wds) if same_value(v, float(p["wd"])))
        best[str(opt)] = {"optim.lr": lrs[i], "optim.weight_decay": wds[j], "final_top1": float(p["final_top1_mean"])}
        cells = {(i, j)}
        if want_neighbours:
            cells |= {(i + d, j) for d in (-1, 1) if 0 <= i + d < len(lrs)}
            cells |= {(i, j + d) for d in (-1, 1) if 0 <= j + d < len(wds)}
        chosen += [(opt, lrs[a], wds[b]) for a, b in sorted(cells)]
    if not best:
        raise ConfigError(f"stage 2 of {spec.name}: stage 1 has no eligible config (every config diverged or "
                          f"unreadable); see `repro aggregate {spec.path}`")
    return StageTwoChoice(best, chosen, notes, format_summary(agg.summary))


def stage_two_runs(spec: SweepSpec, grid: list[PlannedRun], choice: StageTwoChoice) -> list[PlannedRun]:
    """The grid points at the chosen configs with stage 2's seeds, in grid order."""
    seeds = spec.stages[1].seeds
    base = grid[0].config["optim"]

    def key(run: PlannedRun) -> tuple:
        p = run.point
        return (p.get("optim.name", base["name"]), p.get("optim.lr", base["lr"]),
                p.get("optim.weight_decay", base["weight_decay"]))

    def chosen(run: PlannedRun) -> bool:
        k = key(run)
        return any(all(same_value(a, b) for a, b in zip(k, c)) for c in choice.configs)

    return [r for r in grid if chosen(r) and any(same_value(_seed_of(r), s) for s in seeds)]


# ---------------------------------------------------------------------------- plan
def _hours(spec: SweepSpec, runs: list[PlannedRun]) -> Optional[float]:
    hours = [run_hours(spec, r) for r in runs]
    return None if any(h is None for h in hours) else float(sum(hours))


def _gpu_h(value: Optional[float]) -> str:
    return "no cost estimate in the spec" if value is None else f"{value:,.1f} GPU-hours"


def _seeds(seeds: tuple) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)}"


def plan_stage(spec: SweepSpec, grid: list[PlannedRun], which: Optional[str], dry_run: bool
               ) -> tuple[Optional[list[PlannedRun]], str]:
    """Print the stages (runs and GPU-hours each, saving versus the whole grid) and return the
    runs of the selected stage and a label for the plan, or (None, reason) for a dry run of
    stage 2 while stage 1 is unfinished.  A real launch of stage 2 then is a ConfigError."""
    stage = pick_stage(spec, which)
    lines: list[str] = []  # printed once the stage is known to be launchable (a refusal is one line)
    say = lines.append
    if stage is None:
        print(f"sweep {spec.name}: --stage all: the whole grid, {len(grid)} runs, ignoring the stages")
        return grid, ""
    one, two = spec.stages
    first = stage_one_runs(spec, grid)
    per_run = _hours(spec, grid[:1])
    grid_h = _hours(spec, grid)
    first_h = _hours(spec, first)
    n_opt = len(_axis(spec, "optim.name", None))
    per_config = 1 + (4 if two.neighbours else 0)
    most = n_opt * per_config * len(two.seeds)
    say(f"sweep {spec.name}: 2 stages over the grid of {len(grid)} runs ({_gpu_h(grid_h)})")
    say(f"  {one.title()}: {len(first)} runs, the whole lr x wd grid at {_seeds(one.seeds)}: {_gpu_h(first_h)}")
    what = "each optimizer's best (lr, wd)" + (" and its grid neighbours in lr and in wd" if two.neighbours else "")
    states = classify_all([RunRef(r.run_id, r.run_dir, r.point, summary_of(r.config)) for r in first])
    unfinished = [s for s in states if s.state not in FINAL_STATES]
    second: Optional[list[PlannedRun]] = None
    choice = None
    if not unfinished:
        choice = choose_stage_two(spec, grid)
        second = stage_two_runs(spec, grid, choice)
        second_h = _hours(spec, second)
        say(f"  {two.title()}: {len(second)} runs, {_seeds(two.seeds)} at {what} from stage 1: {_gpu_h(second_h)}")
        for opt, b in choice.best.items():
            say(f"    {opt}: best lr={b['optim.lr']} wd={b['optim.weight_decay']} "
                  f"(stage-1 final top-1 {100 * b['final_top1']:.2f} %)")
        for note in choice.notes:
            say(f"    note: {note}")
        n_two = len(second)
    else:
        second_h = None if per_run is None else per_run * most
        bound = "at most " if two.neighbours else ""
        say(f"  {two.title()}: {bound}{most} runs, {_seeds(two.seeds)} at {what} from stage 1: "
              f"{bound}{_gpu_h(second_h)} (chosen when stage 1 is complete)")
        n_two = most
    if grid_h is not None and first_h is not None and second_h is not None:
        total = first_h + second_h
        saving = grid_h - total
        say(f"  two stages: {len(first) + n_two} runs, {total:,.1f} GPU-hours; the whole grid: {len(grid)} runs, "
              f"{grid_h:,.1f} GPU-hours; saving {len(grid) - len(first) - n_two} runs, {saving:,.1f} GPU-hours "
              f"({100 * saving / grid_h:.1f} %)")
    else:
        say(f"  two stages: {len(first) + n_two} runs; the whole grid: {len(grid)} runs")
    if stage.number == 1:
        if not unfinished:
            say(f"  stage 1 is complete: next `repro sweep {spec.path} --stage 2`")
        elif which is None:
            say(f"  (no --stage given: stage 1; after it, `repro sweep {spec.path} --stage 2`)")
        print("\n".join(lines))
        return first, f"{one.title()} at {_seeds(one.seeds)}"
    if unfinished:
        reason = (f"{two.title()} waits for {one.title()}: {len(unfinished)} of its {len(first)} runs are not done "
                  f"or diverged ({format_counts(states)}); run `repro sweep {spec.path} --stage 1`")
        if dry_run:
            print("\n".join([*lines, f"  {reason}"]))
            return None, reason
        raise ConfigError(reason)
    say(f"  stage 1's aggregate ({_seeds(one.seeds)} of each config):")
    for line in choice.summary.splitlines():
        say(f"    {line}")
    print("\n".join(lines))
    return second, f"{two.title()} at {_seeds(two.seeds)}, best configs of stage 1"
