"""repro <verb>: the one command line of the suite (the Makefile only wraps it).

Every verb parses its arguments here and calls the library; the printing of tables
(``status``, ``inspect-model``) is done here too.  Each verb imports its modules when it
runs (the import graph's one wholesale exception), so ``repro --help`` and ``repro status``
never load torch, ffcv or seaborn.  Bad input raises
:class:`~imagenet_repro.errors.ConfigError`; it is printed as one line and the process
exits with code 2 before anything is written or submitted.  A file that cannot be written
(:class:`~imagenet_repro.errors.StorageError`: no space, read-only, no permission) is one
line too, exit 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imagenet_repro.errors import ConfigError, StorageError
from imagenet_repro.files import WRITE_ERRNOS
from imagenet_repro.paths import check_out_dir
from imagenet_repro.rundir import DEFAULT_RUNS_ROOT, FINAL_STATES


def _train(args: argparse.Namespace) -> int:
    from imagenet_repro.config import config_hash, load_config
    from imagenet_repro.train.loop import run_training

    if args.signal_delay_s is not None and not 0 < args.signal_delay_s < float("inf"):
        raise ConfigError(f"--signal-delay-s must be a number > 0 (got {args.signal_delay_s})")
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path(DEFAULT_RUNS_ROOT) / cfg.name / config_hash(cfg)
    check_out_dir(out, "--out" if args.out else "run folder")
    state = run_training(cfg, out, **({} if args.signal_delay_s is None else {"stop_within_s": args.signal_delay_s}))
    print(f"{out}: {state}")
    return 0 if state in FINAL_STATES else 1


def _data_write(args: argparse.Namespace) -> int:
    from imagenet_repro.data.datasets import WriteOptions, get_dataset

    try:
        dataset = get_dataset(args.source)  # its registry entry writes it
    except ConfigError as exc:
        raise ConfigError(f"--source: {exc}") from None
    dataset.write(args.src, args.out, WriteOptions(
        max_resolution=args.max_res, jpeg_quality=args.jpeg_quality, compress_probability=args.compress_probability,
        num_workers=args.num_workers, size=args.size))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    if args.rehearse:
        if args.dry_run or args.only:
            raise ConfigError("--rehearse picks its own variants and submits nothing of the real sweep: "
                              "drop --dry-run/--only")
        from imagenet_repro.sweep.rehearse import rehearse

        check_out_dir(args.rehearse_root, "--rehearse-root")
        return rehearse(args.spec, cluster=args.cluster, ranks=args.ranks, batch_per_rank=args.batch_per_rank,
                        root=args.rehearse_root, mode=args.variants)
    from imagenet_repro.sweep.launcher import launch

    return launch(args.spec, cluster=args.cluster, dry_run=args.dry_run, only=args.only, wait=args.wait,
                  stage=args.stage)


def _status(args: argparse.Namespace) -> int:
    from imagenet_repro.sweep.spec import load_spec
    from imagenet_repro.sweep.status import (
        array_line,
        classify_all,
        format_costs,
        format_counts,
        run_refs,
        run_table,
        status_refs,
        triage_lines,
    )

    spec = load_spec(args.spec)
    refs = run_refs(spec)
    states = classify_all(status_refs(spec, refs))
    staged = f" (staged: stage 1 and the runs launched of a {len(refs)}-run grid)" if spec.stages else ""
    print(f"sweep {spec.name}: {len(states)} runs{staged} in {spec.sweep_dir}: {format_counts(states)}")
    if args.counts_only or not states:
        return 0
    failed = [st for st in states if st.state == "failed"]
    if not args.failed:
        print(run_table(states))
        for line in [*format_costs(spec, refs, states), array_line(states)]:
            if line:
                print(line)
    elif failed:
        print(run_table(failed))
    if failed:
        print("failed runs:")
        for st in failed:
            print("\n".join(triage_lines(spec, st)))
    elif args.failed:
        print("no failed runs")
    return 0


def _analysed_sweep(args: argparse.Namespace):
    """The sweep an analysis verb reads, its description (:mod:`imagenet_repro.sweepdir`), after
    --results and the folders and files the analysis writes under it are checked, before any work.

    ``args.spec`` is a sweep spec or a sweep folder holding ``sweep.json``.  From a spec, the
    description is (re)written into the sweep folder when that folder exists and holds another
    or none (a folder launched before the launcher wrote ``sweep.json``); if it cannot be
    written there, a warning says so and the analysis goes on with the spec's description."""
    from imagenet_repro.paths import check_out_file
    from imagenet_repro.sweepdir import read_description, write_description

    if Path(args.spec).is_dir():
        sweep = read_description(args.spec)
    else:
        from imagenet_repro.sweep.spec import load_spec

        sweep = load_spec(args.spec).description()
    res = check_out_dir(args.results, "--results") / sweep.name
    check_out_dir(res, "results folder")
    check_out_dir(res / "figures", "figures folder")
    if args.verb == "report":
        check_out_file(res / "report.html", "report")
    if not Path(args.spec).is_dir() and sweep.folder.is_dir():
        try:
            write_description(sweep)
        except StorageError as exc:
            print(f"repro {args.verb}: warning: {exc}; the analysis reads the spec's description", file=sys.stderr)
    return sweep


def _aggregate(args: argparse.Namespace) -> int:
    from imagenet_repro.analysis.aggregate import aggregate_sweep

    aggregate_sweep(_analysed_sweep(args), results_root=args.results)
    return 0


def _figures(args: argparse.Namespace) -> int:
    from imagenet_repro.analysis.figures import make_figures

    make_figures(_analysed_sweep(args), results_root=args.results)
    return 0


def _report(args: argparse.Namespace) -> int:
    from imagenet_repro.analysis.report import make_report

    make_report(_analysed_sweep(args), results_root=args.results)
    return 0


def _inspect_model(args: argparse.Namespace) -> int:
    """Every parameter of a named model with its group and decay rule."""
    from imagenet_repro.config import ModelConfig
    from imagenet_repro.models import build_model, known_model
    from imagenet_repro.optim.param_groups import KINDS, classify_by, decay_rule, normalized_layers

    if not known_model(args.model):
        raise ConfigError(f"unknown model name: {args.model!r}")
    if args.num_classes <= 0:
        raise ConfigError(f"--num-classes must be > 0 (got {args.num_classes})")
    decays = not args.no_decay_norm_and_bias
    model = build_model(ModelConfig(name=args.model), args.num_classes)
    normalized, method = normalized_layers(model, rule=args.rule)
    classified = classify_by(model, normalized)
    rows = [(name, "x".join(map(str, p.shape)), kind, decay_rule(kind, decays)) for name, p, kind in classified]
    print(_table(("parameter", "shape", "group", "weight decay"), rows))
    print(f"\n{args.model}: normalized_rule={args.rule}; normalized layers from {method}")
    for kind in KINDS:
        sel = [p for _, p, k in classified if k == kind]
        print(f"  {kind:<12} {len(sel):4d} tensors {sum(p.numel() for p in sel):>12,d} values"
              f"  decay {decay_rule(kind, decays)}")
    return 0


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns two spaces apart, the last one unpadded."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]) for r in [header, *rows])


def _optimizers(args: argparse.Namespace) -> int:
    """Every library optimizer (or --only) tried on a config's model: one line each, counts, the table."""
    import json

    from imagenet_repro.config import load_config
    from imagenet_repro.files import atomic_write_text
    from imagenet_repro.paths import check_out_file
    from imagenet_repro.train.catalogue import counts, library_names, markdown, run_catalogue

    if args.steps <= 0 or args.eval_images <= 0:
        raise ConfigError(f"--steps and --eval-images must be > 0 (got {args.steps}, {args.eval_images})")
    outputs = [check_out_file(path, flag) for path, flag in ((args.table, "--table"), (args.json, "--json")) if path]
    cfg = load_config(args.config, args.overrides)
    names = args.only or library_names(args.libraries)

    def report(trial) -> None:
        why = f": {trial.reason}" if trial.reason else ""
        print(f"{trial.name}: {trial.outcome}{why} ({trial.seconds:.1f} s)", flush=True)

    trials = run_catalogue(cfg, names, steps=args.steps, eval_images=args.eval_images, report=report)
    c = counts(trials)
    print(f"{len(trials)} optimizers: " + ", ".join(f"{c[o]} {o}" for o in ("works", "refused", "diverged", "failed"))
          + "; refused: " + (", ".join(f"{n} {g}" for g, n in c["refused_by_reason"].items()) or "none"))
    if args.table:
        atomic_write_text(outputs[0], markdown(trials, " ".join([args.config, *args.overrides]), args.steps,
                                               args.libraries))
    if args.json:
        from imagenet_repro.train.catalogue import as_records

        atomic_write_text(outputs[-1], json.dumps(as_records(trials), indent=1, default=str) + "\n")
    return 1 if c["failed"] else 0  # a traceback is the suite's bug; a divergence is reported


def _demo(args: argparse.Namespace) -> int:
    from imagenet_repro.demo import run_demo

    return run_demo(args.spec, cluster=args.cluster)


def _environment(args: argparse.Namespace) -> int:
    from imagenet_repro.analysis.environment import environment_report, spread_report

    if args.spread:
        print("\n".join(spread_report(Path(args.results), [Path(p) for p in args.spread])))
    else:
        print("\n".join(environment_report(Path(args.results), device=args.device)))
    return 0


def _bench(args: argparse.Namespace) -> int:
    import subprocess

    folder = Path(args.dir)
    scripts = [folder / f"{n}.py" for n in args.names] if args.names else sorted(folder.glob("*.py"))
    for script in scripts:
        if not script.is_file():
            raise ConfigError(f"no such benchmark: {script}")
    failed = []
    for script in scripts:  # one process each: no thread-count or memory state leaks between them
        print(f"== {script}", flush=True)
        if subprocess.run([sys.executable, str(script)]).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"repro bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repro", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    t = sub.add_parser("train", help="train one run into a run directory (resumes if it has a checkpoint)")
    t.add_argument("config", help="experiment YAML, e.g. experiments/demo.yaml")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.2 seed=3")
    t.add_argument("--out", help="run directory (default: runs/<name>/<config hash>)")
    t.add_argument("--signal-delay-s", type=float, default=None, metavar="S",
                   help="seconds between a stop signal and the kill (SLURM's --signal=USR2@S; default 30, "
                        "torchrun's grace after Ctrl-C): with several ranks they agree on stopping often enough "
                        "to checkpoint within it")
    t.set_defaults(fn=_train)

    d = sub.add_parser("data", help="prepare datasets")
    dsub = d.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    from imagenet_repro.data.datasets import available_datasets, get_dataset  # torch-free: the registry only

    w = dsub.add_parser("write", help="write a dataset (an ImageFolder, Fashion-MNIST, ...) to FFCV .beton files")
    names = [get_dataset(n).cli_name for n in available_datasets()]
    w.add_argument("--source", required=True, metavar="DATASET",
                   help=f"a registered dataset ({', '.join(names)}) or FILE.py:NAME (docs/datasets.md)")
    w.add_argument("src", nargs="?", help="imagefolder, imagenet: the class-folder root; fashion-mnist: idx folder "
                   "(default: $FASHION_MNIST_DIR, else Debian's, else torchvision's download into data/)")
    w.add_argument("--out", required=True, help="imagefolder, imagenet: FILE.beton; fashion-mnist: folder for "
                                                "train.beton and val.beton")
    w.add_argument("--max-res", type=int, default=256, help="longest image side kept (imagefolder)")
    w.add_argument("--jpeg-quality", type=int, default=90)
    w.add_argument("--compress-probability", type=float, default=0.5, help="share of images stored as JPEG (rest raw)")
    w.add_argument("--num-workers", type=int, default=2)
    w.add_argument("--size", type=int, default=32, help="fashion-mnist: image side in pixels")
    w.set_defaults(fn=_data_write)

    s = sub.add_parser("sweep", help="launch a grid of runs (SLURM job arrays, or submitit's local executor)")
    s.add_argument("spec", help="grid spec YAML, e.g. sweeps/demo.yaml")
    s.add_argument("--cluster", choices=["auto", "slurm", "local", "debug"], default="auto")
    s.add_argument("--dry-run", action="store_true", help="print the plan and the cost estimate, submit nothing")
    s.add_argument("--only", nargs="+", default=[], metavar="KEY=VAL", help="restrict to grid points with these values")
    s.add_argument("--no-wait", dest="wait", action="store_false", help="return after submitting")
    s.add_argument("--stage", metavar="N", help="a spec with `stages:`: 1 (the default), 2 (after stage 1), a stage "
                                                "name, or all (the whole grid)")
    r = s.add_argument_group("rehearsal (--rehearse: run every distinct variant small, kill, resume, aggregate; "
                             "submits nothing of the real sweep)")
    r.add_argument("--rehearse", action="store_true", help="rehearse the grid end to end before launching it")
    r.add_argument("--ranks", type=int, default=2, help="cap on the DDP ranks of each rehearsal run (default 2)")
    r.add_argument("--batch-per-rank", type=int, default=4, help="images per rank in a rehearsal step (default 4)")
    r.add_argument("--variants", choices=["cover", "corners"], default="cover",
                   help="cover: each optimizer and each lr/wd extreme at least once; corners: every optimizer at both")
    r.add_argument("--rehearse-root", default="rehearsal", help="folder for rehearsal data, runs and results")
    s.set_defaults(fn=_sweep, wait=True)

    st = sub.add_parser("status", help="counts by state, a per-run table, measured costs and failed runs' logs")
    st.add_argument("spec")
    shown = st.add_mutually_exclusive_group()
    shown.add_argument("--counts-only", action="store_true")
    shown.add_argument("--failed", action="store_true",
                       help="only the failed runs: each one's reason and its scheduler log's path and last lines")
    st.set_defaults(fn=_status)

    for verb, fn, text in (("aggregate", _aggregate, "collect a sweep's runs into results/<sweep>/ tables"),
                           ("figures", _figures, "draw the paper's figures from the aggregated tables"),
                           ("report", _report, "write results/<sweep>/report.html: one self-contained page")):
        a = sub.add_parser(verb, help=text)
        a.add_argument("spec", help="the sweep spec, or the sweep folder (<runs_root>/<name>, holding sweep.json)")
        a.add_argument("--results", default="results", help="results root (default: results)")
        a.set_defaults(fn=fn)

    i = sub.add_parser("inspect-model", help="table of parameters, their group and decay rule")
    i.add_argument("model", help="e.g. resnet50, small_resnet, timm:resnet50")
    i.add_argument("--num-classes", type=int, default=1000)
    i.add_argument("--no-decay-norm-and-bias", action="store_true")
    i.add_argument("--rule", choices=["graph", "transformer"], default="graph",
                   help="which weights count as normalized (optim.normalized_rule; default: graph)")
    i.set_defaults(fn=_inspect_model)

    o = sub.add_parser("optimizers", help="try every optimizer pytorch-optimizer and timm list by name (or --only) "
                                          "on a config's model: works, refused (why), diverged, failed")
    o.add_argument("config", help="experiment YAML whose model and data are used, e.g. experiments/demo.yaml")
    o.add_argument("overrides", nargs="*", help="key=value overrides")
    o.add_argument("--only", nargs="+", metavar="NAME", help="these optimizer names only, e.g. pytorch_optimizer:Muon")
    o.add_argument("--libraries", nargs="+", choices=["pytorch_optimizer", "timm"], default=["pytorch_optimizer", "timm"])
    o.add_argument("--steps", type=int, default=8, help="training steps per optimizer (default 8)")
    o.add_argument("--eval-images", type=int, default=500, help="val images of the evaluation (default 500)")
    o.add_argument("--table", metavar="FILE.md", help="write the catalogue's table (docs/optimizer-catalogue.md)")
    o.add_argument("--json", metavar="FILE.json", help="write every trial as JSON")
    o.set_defaults(fn=_optimizers)

    dm = sub.add_parser("demo", help="Fashion-MNIST -> .beton -> sweep -> aggregate -> figures -> report, on CPU")
    dm.add_argument("--spec", default="sweeps/demo.yaml")
    dm.add_argument("--cluster", choices=["auto", "slurm", "local"], default="auto")
    dm.set_defaults(fn=_demo)

    e = sub.add_parser("environment", help="this machine's fields that decide the numbers, and whether it should "
                                           "give a committed sweep's numbers exactly (equality) or within the spread")
    e.add_argument("results", nargs="?", default="results/demo",
                   help="a sweep's results folder holding environment.json (default: results/demo)")
    e.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the device its runs train on")
    e.add_argument("--spread", nargs="+", metavar="RESULTS",
                   help="instead: how far the same sweep's runs in these results folders (another environment) "
                        "moved from it, per metric, and whether its paired verdicts carry")
    e.set_defaults(fn=_environment)

    b = sub.add_parser("bench", help="run the benchmarks (JSON to results/bench/)")
    b.add_argument("names", nargs="*", help="benchmark names (default: all)")
    b.add_argument("--dir", default="benchmarks")
    b.set_defaults(fn=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except ConfigError as exc:
        print(f"repro: error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # a file could not be written: one line (what, where, what is kept)
        print(f"repro: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a library's own write (submitit, matplotlib...) on a full or read-only disk
        if exc.errno not in WRITE_ERRNOS:
            raise
        print(f"repro: error: could not write {exc.filename or 'a file'}: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
