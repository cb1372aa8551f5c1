"""Property-based test of the whole input surface: run configs and sweep specs drawn inside
and outside the schema, each run through the real command line (``repro train`` for a few
steps on a tiny ``.beton``, ``repro sweep --dry-run`` and, for some valid specs, a real
sweep on the debug executor).  The property: exit 0 (a run ``done`` or ``diverged``), or exit
2 with one line on stderr and nothing written; never a traceback (an exception out of
``main``), another exit code, a hang (see ``HANG_CPU_S``) or a folder left behind.

The drawing knows nothing of :data:`imagenet_repro.config.BOUNDS`: "outside" values are
the ones a user could type (negative, zero, huge, NaN, a word) and "inside" ones are small
values a tiny run can take, so the same test runs against an older checkout.

Budget: ``HYPOTHESIS_PROFILE`` unset (``make test``): a fixed number of examples, derandomized
(the same examples every run: 8 train configs, 12 specs), under a minute; ``HYPOTHESIS_PROFILE=long``: 150 and 250.
``PROPERTY_STATS=FILE`` appends one JSON line per example (kind, exit code, first line);
``PROPERTY_COLLECT=FILE`` and ``PROPERTY_SCHEMA=0``: see below (for counting an older checkout's bugs).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagenet_repro.cli import main

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
# PROPERTY_SCHEMA=0: do not fail on an "outside" value that is accepted (to run the test
# against an older checkout, whose schema was looser, and count only crashes)
SCHEMA = os.environ.get("PROPERTY_SCHEMA", "1") != "0"
TRAIN_EXAMPLES = 150 if LONG else 8
SPEC_EXAMPLES = 250 if LONG else 12
# a hang: an example using more than HANG_CPU_S of CPU (a run that never ends), or waiting
# more than HANG_WALL_S (a deadlock); CPU time, so that a loaded machine is no hang
HANG_CPU_S = float(os.environ.get("PROPERTY_HANG_CPU_S", 150))
HANG_WALL_S = 1800
# PROPERTY_COLLECT=FILE: record each violation there and go on (to list an older checkout's
# bugs in one run); unset, a violation fails the test
COLLECT = os.environ.get("PROPERTY_COLLECT")
COMMON = dict(derandomize=True, deadline=None, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))

IMAGES, CLASSES, SIDE = 32, 4, 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """32 synthetic 32 px images of 4 classes as an ImageFolder and a ``.beton``."""
    from imagenet_repro.data.synthetic import write_synthetic_imagefolder
    from imagenet_repro.data.writer import write_imagefolder

    root = tmp_path_factory.mktemp("tiny")
    write_synthetic_imagefolder(root / "images", IMAGES, CLASSES, seed=0, height=(SIDE, SIDE + 1),
                                width=(SIDE, SIDE + 1))
    with contextlib.redirect_stdout(io.StringIO()):
        write_imagefolder(root / "images", root / "tiny.beton", max_resolution=SIDE, num_workers=1)
    return root


def base_config(tiny: Path) -> dict:
    return {
        "name": "p",
        "data": {"dataset": "imagefolder", "backend": "ffcv", "num_classes": CLASSES, "batch_size": 8,
                 "val_batch_size": 16, "num_workers": 1, "min_res": 32, "max_res": 32, "val_res": 32,
                 "train_path": str(tiny / "tiny.beton"), "val_path": str(tiny / "tiny.beton")},
        "model": {"name": "small_resnet", "widths": [4, 8]},
        "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 5e-4},
        "train": {"epochs": 1, "steps_per_epoch": 2, "threads": 1, "progress": False},
        "telemetry": {"layer_every": 1, "flush_every": 2},
        "checkpoint": {"every_minutes": 0.0},
    }


# ---------------------------------------------------------------------------- values
def _ints(lo: int, hi: int):
    return st.integers(lo, hi)


NEG = st.integers(-10**12, -1)
HUGE = st.integers(10**7, 10**15)
BAD_FLOAT = st.sampled_from([math.nan, math.inf, -math.inf])
WORD = st.sampled_from(["many", "1e3x", "[]", "{a: 1}"])


def frac(lo: float = 0.0, hi: float = 1.0):
    return st.floats(lo, hi, allow_nan=False)


# key -> (inside: small values a tiny run takes, outside: what a user could mistype)
KNOBS: dict[str, tuple] = {
    "seed": (_ints(0, 2**32 - 1), st.one_of(NEG, st.integers(2**32, 10**20), WORD)),
    "data.num_classes": (_ints(CLASSES, 12), st.one_of(_ints(-5, CLASSES - 1), HUGE, WORD)),
    "data.batch_size": (_ints(1, 16), st.one_of(_ints(-5, 0), _ints(IMAGES + 1, 10**4), HUGE, WORD)),
    "data.val_batch_size": (_ints(1, 64), st.one_of(_ints(-5, 0), HUGE)),
    "data.num_workers": (_ints(0, 2), st.one_of(NEG, HUGE)),
    "data.max_res": (_ints(32, 48), st.one_of(_ints(-5, 0), st.integers(10**4, 10**7), WORD)),
    "data.min_res": (_ints(8, 32), st.one_of(_ints(-5, 0), st.integers(10**4, 10**7))),
    "data.val_res": (_ints(8, 48), st.one_of(_ints(-5, 0), st.integers(10**4, 10**7))),
    "data.start_ramp": (_ints(0, 1), NEG),
    "data.end_ramp": (_ints(0, 1), st.one_of(NEG, HUGE)),
    "data.rrc_scale_min": (frac(0.05, 1.0), st.one_of(frac(-5, 0), frac(1.01, 50), BAD_FLOAT)),
    "data.train_subset": (_ints(0, 64), st.one_of(NEG, st.integers(2**40, 2**70))),
    "data.val_subset": (_ints(0, 64), st.one_of(NEG, st.integers(2**40, 2**70))),
    "data.order": (st.sampled_from(["random", "quasi_random"]), st.sampled_from(["sorted", "", "1"])),
    "data.os_cache": (st.booleans(), WORD),
    "model.widths": (st.lists(_ints(1, 12), min_size=1, max_size=3),
                     st.one_of(st.just([]), st.lists(st.one_of(_ints(-5, 0), HUGE), min_size=1, max_size=2),
                               st.lists(_ints(1, 4), min_size=12, max_size=14))),
    "model.blocks_per_stage": (_ints(1, 2), st.one_of(_ints(-3, 0), HUGE)),
    "model.name": (st.sampled_from(["small_resnet"]), st.sampled_from(["resnet51", "timm:nonet", ""])),
    "schedule.name": (st.sampled_from(["cosine", "flat", "step"]), st.sampled_from(["linear", "COSINE"])),
    "schedule.warmup_epochs": (frac(0.0, 0.9), st.one_of(frac(-5, -0.01), frac(3.0, 1e6), BAD_FLOAT)),
    "schedule.final_lr_fraction": (frac(), st.one_of(frac(-5, -0.01), frac(1.01, 5), BAD_FLOAT)),
    "schedule.step_gamma": (frac(0.01, 1.0), st.one_of(frac(-5, 0), frac(1.01, 5))),
    "train.epochs": (_ints(1, 2), st.one_of(_ints(-5, 0), st.integers(10**6, 10**15), WORD)),
    "train.steps_per_epoch": (_ints(1, 3), NEG),
    "train.threads": (_ints(0, 2), st.one_of(NEG, st.integers(10**5, 10**9))),
    "train.grad_clip": (frac(0.0, 10.0), st.one_of(frac(-5, -0.01), BAD_FLOAT)),
    "train.eval_every_steps": (_ints(0, 3), NEG),
    "train.eval_subset": (_ints(0, 20), st.one_of(NEG, st.integers(2**40, 2**70))),
    "train.label_smoothing": (frac(0.0, 0.5), st.one_of(frac(1.0, 5), frac(-5, -0.01), BAD_FLOAT)),
    "train.device": (st.sampled_from(["cpu", "auto"]), st.sampled_from(["tpu", "gpu"])),
    "telemetry.layer_every": (_ints(1, 5), st.one_of(_ints(-5, 0), st.integers(2**40, 2**70))),
    "telemetry.flush_every": (_ints(1, 5), st.one_of(_ints(-5, 0), st.integers(10**8, 10**12))),
    "checkpoint.every_minutes": (frac(0.0, 1.0), st.one_of(frac(-5, -0.01), BAD_FLOAT)),
    "optim.lr": (st.one_of(frac(1e-4, 1.0), st.just(1e30)), st.one_of(frac(-5, 0), BAD_FLOAT, WORD)),
    "optim.weight_decay": (frac(0.0, 0.1), st.one_of(frac(-5, -1e-6), BAD_FLOAT)),
    "optim.momentum": (frac(0.0, 0.99), st.one_of(frac(1.0, 5), frac(-5, -0.01))),
}


@st.composite
def perturbations(draw, max_knobs: int = 3) -> list[tuple[str, object, bool]]:
    """0..max_knobs (key, value, inside) over distinct knobs."""
    keys = draw(st.lists(st.sampled_from(sorted(KNOBS)), max_size=max_knobs, unique=True))
    out = []
    for key in keys:
        inside = draw(st.booleans())
        out.append((key, draw(KNOBS[key][0 if inside else 1]), inside))
    return out


def _override(key: str, value: object) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("\n..."):
        text = text[:-4].strip()
    return f"{key}={text}" if not isinstance(value, str) else f"{key}={value}"


# ---------------------------------------------------------------------------- the property
class _Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise _Hang


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def violation(message: str) -> None:
    if COLLECT:
        with open(COLLECT, "a") as fh:
            fh.write(message.replace("\n", "\\n")[:3000] + "\n")
        raise _Collected
    pytest.fail(message, pytrace=False)


class _Collected(Exception):
    pass


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """``main(argv)`` in ``cwd``: (exit code, stdout, stderr); an exception or a hang is a violation."""
    out, err = io.StringIO(), io.StringIO()
    old_cwd = os.getcwd()
    handlers = {sig: signal.signal(sig, _alarm) for sig in (signal.SIGALRM, signal.SIGPROF)}
    os.chdir(cwd)
    signal.alarm(HANG_WALL_S)
    signal.setitimer(signal.ITIMER_PROF, HANG_CPU_S)
    problem = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except _Hang:
        problem = f"hang: still running after {HANG_CPU_S:g} CPU-s or {HANG_WALL_S} s"
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # a traceback
        problem = f"traceback: {type(exc).__name__}: {str(exc).strip().splitlines()[:1]}"
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.alarm(0)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        os.chdir(old_cwd)
    if problem is not None:
        violation(f"repro {' '.join(argv)}: {problem}")
    return code, out.getvalue(), err.getvalue()


def record(kind: str, code: int, err: str, draws) -> None:
    path = os.environ.get("PROPERTY_STATS")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"kind": kind, "code": code, "err": err.strip().splitlines()[:1],
                                 "draws": repr(draws)[:400]}) + "\n")


def check(ok: bool, message: str) -> None:
    if not ok:
        violation(message)


def assert_refused_cleanly(code: int, err: str, before: set[str], after: set[str], argv: list[str]) -> None:
    where = f"repro {' '.join(argv)}"
    check(code == 2, f"{where}: exit {code}; stderr: {err[-1500:]}")
    check(err.count("\n") == 1 and err.startswith("repro: error: "), f"{where}: not one line: {err[-1500:]!r}")
    check(after == before, f"{where}: written although refused: {sorted(after - before)[:5]} ({err.strip()})")


OUT_KINDS = ["new", "new", "new", "nested", "file", "under_file", "empty_name"]


@settings(max_examples=TRAIN_EXAMPLES, **COMMON)
@given(data=st.data())
def test_repro_train_exit_0_or_one_line_exit_2(tiny, data):
    """``repro train`` of a drawn config and ``--out``."""
    with contextlib.suppress(_Collected):
        _train_example(tiny, data)


def _train_example(tiny, data):
    changes = data.draw(perturbations(), label="overrides")
    out_kind = data.draw(st.sampled_from(OUT_KINDS), label="out")
    work = Path(tempfile.mkdtemp(prefix="prop-train-"))
    cfg = work / "exp.yaml"
    cfg.write_text(yaml.safe_dump(base_config(tiny)))
    (work / "afile").write_text("x")
    out = {"new": "run", "nested": "a/b/run", "file": "afile", "under_file": "afile/run",
           "empty_name": "x" * 300}[out_kind]
    argv = ["train", str(cfg), *[_override(k, v) for k, v, _ in changes], "--out", out]
    before = tree(work)
    code, _, err = run_cli(argv, work)
    record("train", code, err, (changes, out_kind))
    if code == 0:
        status = json.loads((work / out / "status.json").read_text())
        check(status["state"] in ("done", "diverged"), f"repro {' '.join(argv)}: exit 0 but {status}")
        check(not SCHEMA or (all(inside for _, _, inside in changes) and out_kind in ("new", "nested")),
              f"accepted: {changes} --out {out_kind}")
    else:
        assert_refused_cleanly(code, err, before, tree(work), argv)


SLURM_KNOBS: dict[str, tuple] = {
    "nodes": (_ints(1, 1), st.one_of(_ints(-3, 0), HUGE)),
    "gpus_per_node": (_ints(0, 0), st.one_of(NEG, HUGE)),
    "tasks_per_node": (_ints(0, 1), st.one_of(NEG, HUGE)),
    "cpus_per_task": (_ints(0, 4), st.one_of(NEG, HUGE)),
    "mem_gb": (frac(0.0, 64.0), st.one_of(frac(-5, -0.01), BAD_FLOAT, st.just(1e12))),
    "timeout_min": (_ints(10, 600), st.one_of(_ints(-3, 0), HUGE)),
    "array_parallelism": (_ints(1, 64), st.one_of(_ints(-3, 0), HUGE)),
    "signal_delay_s": (_ints(0, 300), st.one_of(NEG, HUGE)),
    "max_timeout_requeues": (_ints(0, 5), st.one_of(NEG, HUGE)),
}
TOP_KNOBS: dict[str, tuple] = {
    "gpu_hours_per_run": (frac(0.0, 100.0), st.one_of(frac(-5, -0.01), BAD_FLOAT, st.just(1e300))),
    "target_top1": (frac(0.01, 1.0), st.one_of(frac(-5, 0), frac(1.01, 100), BAD_FLOAT)),
}
ROOT_KINDS = ["ok", "ok", "ok", "file", "under_file", "proc", "long_name"]


@st.composite
def specs(draw) -> tuple[dict, list, str]:
    changes: list = []
    spec: dict = {"name": "ps", "base": "BASE"}
    name_ok = draw(st.integers(0, 5)) > 0
    if not name_ok:
        spec["name"] = draw(st.sampled_from(["", "a/b", ".hidden"]))
        changes.append(("name", spec["name"], False))
    root = draw(st.sampled_from(ROOT_KINDS))
    changes.append(("runs_root", root, root == "ok"))
    seeds = draw(st.one_of(st.lists(_ints(0, 3), min_size=1, max_size=2, unique=True),
                           st.just([]), st.lists(NEG, min_size=1, max_size=1)))
    changes.append(("axes.seed", seeds, bool(seeds) and min(seeds) >= 0))
    spec["axes"] = {"seed": seeds}
    if draw(st.booleans()):
        lrs = draw(st.lists(st.one_of(frac(0.01, 1.0), frac(-1, 0)), min_size=1, max_size=2, unique=True))
        spec["axes"]["optim.lr"] = lrs
        changes.append(("axes.optim.lr", lrs, min(lrs) > 0))
    overrides = draw(perturbations(max_knobs=2))
    if overrides:
        spec["overrides"] = {k: v for k, v, _ in overrides}
        changes += overrides
    slurm = {}
    for key in draw(st.lists(st.sampled_from(sorted(SLURM_KNOBS)), max_size=3, unique=True)):
        inside = draw(st.booleans())
        slurm[key] = draw(SLURM_KNOBS[key][0 if inside else 1])
        changes.append((f"slurm.{key}", slurm[key], inside))
    if slurm:
        spec["slurm"] = slurm
    for key in draw(st.lists(st.sampled_from(sorted(TOP_KNOBS)), max_size=1, unique=True)):
        inside = draw(st.booleans())
        spec[key] = draw(TOP_KNOBS[key][0 if inside else 1])
        changes.append((key, spec[key], inside))
    if draw(st.booleans()):
        inside = draw(st.booleans())
        spec["local"] = {"parallelism": draw(_ints(1, 2) if inside else st.one_of(_ints(-3, 0), HUGE))}
        changes.append(("local.parallelism", spec["local"]["parallelism"], inside))
    return spec, changes, root


@settings(max_examples=SPEC_EXAMPLES, **COMMON)
@given(drawn=specs(), real=st.integers(0, 5))
def test_repro_sweep_exit_0_or_one_line_exit_2(tiny, drawn, real):
    """``repro sweep --dry-run`` of a drawn spec; a valid small one is also swept for real (debug executor)."""
    with contextlib.suppress(_Collected):
        _sweep_example(tiny, drawn, real)


def _sweep_example(tiny, drawn, real):
    spec, changes, root = drawn
    work = Path(tempfile.mkdtemp(prefix="prop-sweep-"))
    (work / "afile").write_text("x")
    cfg = work / "exp.yaml"
    cfg.write_text(yaml.safe_dump(base_config(tiny)))
    spec = {**spec, "base": str(cfg),
            "runs_root": {"ok": str(work / "runs"), "file": str(work / "afile"), "under_file": str(work / "afile/r"),
                          "proc": "/proc/no/runs", "long_name": str(work / ("r" * 300))}[root]}
    path = work / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    valid = all(inside for _, _, inside in changes)
    for argv in (["sweep", str(path), "--dry-run", "--cluster", "local"],
                 ["sweep", str(path), "--cluster", "debug"]):
        before = tree(work)
        code, out, err = run_cli(argv, work)
        record("sweep" + (" dry-run" if "--dry-run" in argv else ""), code, err, changes)
        if code != 0:
            assert_refused_cleanly(code, err, before, tree(work), argv)
            return
        check(valid or not SCHEMA, f"accepted: {changes}")
        if "--dry-run" in argv:
            check(out.startswith(f"sweep {spec['name']}: ") and tree(work) == before,
                  f"repro {' '.join(argv)}: dry run printed {out[:200]!r} or wrote {sorted(tree(work) - before)[:5]}")
            if real or len(spec["axes"]["seed"]) * len(spec["axes"].get("optim.lr", [0])) > 2:
                return  # a real sweep for one valid spec in six, of at most two runs
        else:
            check(f"sweep {spec['name']}: " in out and "done" in out.splitlines()[-1],
                  f"repro {' '.join(argv)}: {out[-1000:]}")
