"""Run mutmut module by module and write the score of each to results/mutation/.

Called by scripts/mutation.sh (``make mutation``) with the mutation venv's python, where
mutmut is importable. Reads ``[tool.mutmut]`` of pyproject.toml: the modules (``only_mutate``)
and, per module, its fast tests (``tests_by_module``). Each module gets its own staging
folder ``build/mutation/<module>/`` (a copy of the package and tests/, and a pyproject.toml
whose ``[tool.mutmut]`` names that module and its tests only), so mutmut collects coverage
and runs mutants against those tests alone; ``mutmut run`` there (``--max-children`` workers;
its log: ``build/mutation/<module>.log``). Then it counts every mutant's verdict from mutmut's
``mutants/<module>.meta`` and writes

* ``scores.json``: per module killed / survived / timeout / no_tests / other / total and the score
  (killed + timeout) / total in %, with the names of the mutants not killed
  (``cd build/mutation/<module> && mutmut show NAME`` prints one's diff), and
* ``scores.md``: the same as a table.

A run of some modules replaces their rows and keeps the other modules' rows of the report
already in ``--out``; the total sums the rows.

``--keep`` reuses the staging folders of the previous run: only the mutants it did not kill
are run again, against the tests as they are now (mutmut collects coverage of new tests), and
the killed ones keep their verdict. That is right after tests were only added (a new test
cannot revive a killed mutant); after a change to the modules or to existing tests, run
without it.

Usage: python scripts/mutation_scores.py [--workers N] [--out DIR] [--keep | --no-run] [MODULE.py ...]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: mutmut's own dependency (requirements-mutation.txt)
    import toml as tomllib

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parent.parent
STAGING = ROOT / "build" / "mutation"
COUNTED = ("killed", "survived", "timeout", "no tests")
KILLED = ("killed", "timeout")


def pyproject() -> tuple[str, dict]:
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    return text, tomllib.loads(text)["tool"]["mutmut"]


def dotted(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def without_mutmut_tables(text: str) -> str:
    """pyproject.toml's text without its ``[tool.mutmut...]`` tables."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        header = re.match(r"\s*\[([^\]]+)\]", line)
        if header:
            skipping = header.group(1).strip().startswith("tool.mutmut")
        if not skipping:
            out.append(line)
    return "".join(out)


def stage(module: str, text: str, cfg: dict, fresh: bool) -> Path:
    """The staging folder of ``module``: the package, tests/ and [tool.mutmut] also_copy (always
    refreshed) and its own [tool.mutmut]."""
    folder = STAGING / dotted(module)
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source in cfg["source_paths"]:
        if not (folder / source).exists():
            shutil.copytree(ROOT / source, folder / source, ignore=ignore)
    for part in ("tests", *cfg.get("also_copy", [])):  # always refreshed: the tests as they are now
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, folder / part, ignore=ignore, dirs_exist_ok=True)
    own = {key: value for key, value in cfg.items() if key != "tests_by_module"}
    own["only_mutate"] = [module]
    own["pytest_add_cli_args_test_selection"] = list(cfg["tests_by_module"][module])
    table = "\n[tool.mutmut]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in own.items())
    (folder / "pyproject.toml").write_text(without_mutmut_tables(text) + table)
    return folder


def verdicts(folder: Path, module: str) -> dict[str, str]:
    """Mutant name -> mutmut's status (killed, survived, timeout, no tests, ...) for ``module``."""
    meta = json.loads((folder / "mutants" / (module + ".meta")).read_text("utf-8"))
    return {name: status_by_exit_code[code] for name, code in meta["exit_code_by_key"].items()}


def score_pct(counts: dict) -> float | None:
    """(killed + timeout) / total in %, one decimal; None for no mutants."""
    return round(100.0 * (counts["killed"] + counts["timeout"]) / counts["total"], 1) if counts["total"] else None


def score(statuses: dict[str, str]) -> dict:
    counts = Counter(statuses.values())
    total = len(statuses)
    row = {"killed": counts["killed"], "survived": counts["survived"], "timeout": counts["timeout"],
           "no_tests": counts["no tests"], "other": sum(v for k, v in counts.items() if k not in COUNTED),
           "total": total}
    row["score_pct"] = score_pct(row)
    row["not_killed"] = sorted(name for name, status in statuses.items() if status not in KILLED)
    return row


def markdown(report: dict) -> str:
    lines = [f"# Mutation scores ({report['tool']})", "",
             "score = (killed + timeout) / total; survived: no test failed; no tests: no selected test runs "
             "the mutated function.", "",
             "| module | tests | killed | survived | timeout | no tests | other | total | score | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for module, r in report["modules"].items():
        tests = ", ".join(Path(t).name for t in r["tests"])
        lines.append(f"| `{module}` | {tests} | {r['killed']} | {r['survived']} | {r['timeout']} | {r['no_tests']} | "
                     f"{r['other']} | {r['total']} | {r['score_pct']} % | {'-' if r['seconds'] is None else r['seconds']}"
                     f"{' (re-ran the not killed)' if r['rerun_only_not_killed'] else ''} |")
    t = report["all"]
    lines.append(f"| **all** | | {t['killed']} | {t['survived']} | {t['timeout']} | {t['no_tests']} | {t['other']} | "
                 f"{t['total']} | **{t['score_pct']} %** | |")
    lines += ["", f"pytest {' '.join(report['pytest_args'])}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="paths as in [tool.mutmut] only_mutate (default: all of them)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "mutation")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the last run's staging folders: re-run only the mutants it did not kill")
    parser.add_argument("--no-run", action="store_true",
                        help="run nothing: score the verdicts the last run left in the staging folders")
    args = parser.parse_args(argv)
    text, cfg = pyproject()
    configured = list(cfg["only_mutate"])
    unknown = [m for m in args.modules if m not in configured]
    if unknown or args.workers < 1:
        what = f"not in [tool.mutmut] only_mutate: {', '.join(unknown)}" if unknown else "--workers must be >= 1"
        print(f"mutation: {what}", file=sys.stderr)
        return 2
    missing = [m for m in configured if m not in cfg.get("tests_by_module", {})]
    if missing:
        print(f"mutation: [tool.mutmut.tests_by_module] names no tests for {', '.join(missing)}", file=sys.stderr)
        return 2
    modules = args.modules or configured
    report = {"tool": f"mutmut {version('mutmut')}", "pytest_args": cfg.get("pytest_add_cli_args", []),
              "workers": args.workers, "modules": earlier_rows(args.out, configured, modules)}
    for module in modules:
        start = time.monotonic()
        meta = STAGING / dotted(module) / "mutants" / (module + ".meta")
        if args.no_run and not meta.is_file():
            print(f"mutation: no verdicts of {module} in {meta.parent.parent}", file=sys.stderr)
            return 2
        keep = (args.keep or args.no_run) and meta.is_file()
        folder = stage(module, text, cfg, fresh=not keep)
        names = [dotted(module) + ".*"]
        if keep:
            names = [n for n, status in verdicts(folder, module).items() if status not in KILLED]
        if args.no_run:
            names = []
        log = STAGING / (dotted(module) + ".log")
        what = ("the last run's verdicts" if args.no_run else
                f"the {len(names)} not killed before" if keep else "all mutants")
        print(f"mutation: {module}: {what} (log: {log.relative_to(ROOT)})", flush=True)
        proc = None
        if names:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as fh:
                proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.workers),
                                       *names], cwd=folder, stdout=fh, stderr=subprocess.STDOUT)
        if proc is not None and proc.returncode != 0:
            print(f"mutation: mutmut failed on {module} (exit {proc.returncode}); see {log}", file=sys.stderr)
            return 1
        statuses = verdicts(folder, module)
        seconds = None if args.no_run else round(time.monotonic() - start)
        row = {"tests": cfg["tests_by_module"][module], **score(statuses), "seconds": seconds,
               "rerun_only_not_killed": keep and not args.no_run}
        report["modules"][module] = row
        print(f"mutation: {module}: {row['killed']} killed, {row['survived']} survived, {row['timeout']} timeout, "
              f"{row['no_tests']} no tests of {row['total']}: {row['score_pct']} %"
              + ("" if seconds is None else f" ({seconds} s)"), flush=True)
        write_report(report, args.out, configured)  # after each module: an interrupted run keeps what it measured
    print(markdown(report))
    return 0


def earlier_rows(out: Path, configured: list[str], modules: list[str]) -> dict:
    """The rows of the modules not scored in this run, kept from the report already in `out`
    (a run of some modules updates their rows and keeps the others), in only_mutate's order."""
    try:
        earlier = json.loads((out / "scores.json").read_text("utf-8"))["modules"]
    except (OSError, ValueError, KeyError):
        return {}
    return {m: earlier[m] for m in configured if m in earlier and m not in modules}


def write_report(report: dict, out: Path, configured: list[str]) -> None:
    order = {m: i for i, m in enumerate(configured)}
    report["modules"] = dict(sorted(report["modules"].items(), key=lambda kv: order.get(kv[0], len(order))))
    rows = report["modules"].values()
    total = {k: sum(r[k] for r in rows) for k in ("killed", "survived", "timeout", "no_tests", "other", "total")}
    total["score_pct"] = score_pct(total)
    report["all"] = total
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "scores.md").write_text(markdown(report))


if __name__ == "__main__":
    sys.exit(main())
