"""The package's import graph: every module, what it imports of the package, and a check.

    python scripts/import_graph.py            # the graph, module by module and package by package, then the check
    python scripts/import_graph.py --check    # only the check (make lint runs it)

Read from the source (``ast``), not by importing, so it sees every import: those at the
top of a module and those inside functions.  The check fails (exit 1, one line per
problem) on an import cycle between modules, counting both kinds; on a cycle between
packages (``sweep`` -> ``analysis`` and ``analysis`` -> ``sweep``, through any of their
modules; a top-level module counts as a package of its own); and on a function-level
import of the package's own modules that :data:`DEFERRED` does not list with its reason.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "imagenet_repro"

# (importing module, imported module): why the import waits until a function runs.
DEFERRED = {
    ("imagenet_repro.cli", "*"): "each verb loads only what it uses: `repro status` and `--help` stay free of torch",
    ("imagenet_repro.config", "imagenet_repro.models"):
        "torch and torchvision load when a config is validated, not when a spec or status is read",
    ("imagenet_repro.config", "imagenet_repro.optim.probe"):
        "the optimizer's probe (torch) runs when a config is validated, not when a spec or status is read",
    ("imagenet_repro.data", "imagenet_repro.data.loaders"):
        "the loaders (torch) load on first use: `config` reads the package's dataset registry torch-free",
    ("imagenet_repro.data.loaders", "imagenet_repro.data.ffcv_backend"):
        "the configured backend only: ffcv and numba take seconds to import and may be missing",
    ("imagenet_repro.data.loaders", "imagenet_repro.data.torchvision_backend"): "the configured backend only",
    ("imagenet_repro.data.datasets.imagenet", "*"):
        "a dataset's writer and reader load ffcv, torch and OpenCV when called: the registry is read torch-free",
    ("imagenet_repro.data.datasets.fashion_mnist", "*"):
        "a dataset's writer and reader load ffcv, torch and OpenCV when called: the registry is read torch-free",
    ("imagenet_repro.sweep.job", "imagenet_repro.train.loop"):
        "the trainer loads in the job's process; the submitting one (a dry run, the launcher) never trains",
}


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _targets(node: ast.AST, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The package's modules an import statement loads (``from a import b``: ``a.b`` when it is a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parent = module.split(".") if is_package else module.split(".")[:-1]
            parent = parent[:len(parent) - (node.level - 1)]
            base = ".".join(parent + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith(PACKAGE) and name != module and name not in out:
            out.append(name)
    return out


def graph(root: Path) -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """(module -> modules imported at its top level, [(module, imported, line)] imported in functions)."""
    known = modules(root)
    top: dict[str, set[str]] = {m: set() for m in known}
    deferred: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, module: str, is_package: bool, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module, is_package, known):
                    if in_function:
                        deferred.append((module, target, child.lineno))
                    else:
                        top[module].add(target)
            visit(child, module, is_package,
                  in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    for module, path in known.items():
        visit(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py", False)
    return top, deferred


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def package_of(module: str) -> str:
    """``imagenet_repro.sweep.spec`` -> ``imagenet_repro.sweep``; a top-level module (or the package) is its own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph(every: dict[str, set[str]]) -> dict[str, set[str]]:
    """Package -> the other packages its modules import (top-level and function-level imports)."""
    out: dict[str, set[str]] = {}
    for module, targets in every.items():
        here = package_of(module)
        out.setdefault(here, set()).update(package_of(t) for t in targets if package_of(t) != here)
    return out


def all_imports(root: Path) -> dict[str, set[str]]:
    top, deferred = graph(root)
    every = {m: set(t) for m, t in top.items()}
    for module, target, _ in deferred:
        every[module].add(target)
    return every


def problems(root: Path) -> list[str]:
    _, deferred = graph(root)
    every = all_imports(root)
    out = [f"import cycle among: {', '.join(c)}" for c in cycles(every)]
    packages = package_graph(every)
    for cycle in cycles(packages):
        edges = []
        for a in cycle:
            for b in sorted(packages[a] & set(cycle)):
                m, t = min((m, t) for m, ts in every.items() for t in ts if package_of(m) == a and package_of(t) == b)
                edges.append(f"{m} imports {t}")
        out.append(f"package import cycle among: {', '.join(cycle)} ({'; '.join(edges)})")
    for module, target, line in deferred:
        if (module, target) not in DEFERRED and (module, "*") not in DEFERRED:
            out.append(f"{module}:{line}: imports {target} inside a function (move it to the top, or list it in "
                       f"DEFERRED with the reason)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print only the problems (none: exit 0)")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent / PACKAGE))
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not args.check:
        top, deferred = graph(root)
        short = lambda m: m.removeprefix(f"{PACKAGE}.") if m != PACKAGE else m  # noqa: E731
        for module in sorted(top):
            later = sorted({t for m, t, _ in deferred if m == module})
            line = f"{short(module)} -> {', '.join(short(t) for t in sorted(top[module])) or '(nothing)'}"
            print(line + (f"  [in functions: {', '.join(short(t) for t in later)}]" if later else ""))
        print(f"{len(top)} modules, {sum(map(len, top.values()))} top-level imports, "
              f"{len(deferred)} function-level imports of the package's own modules")
        print("packages (a top-level module is its own; function-level imports included):")
        packages = package_graph(all_imports(root))
        for package in sorted(packages):
            print(f"  {short(package)} => {', '.join(short(t) for t in sorted(packages[package])) or '(nothing)'}")
    found = problems(root)
    for problem in found:
        print(problem, file=sys.stderr)
    if not found:
        print("import graph: no cycles between modules or packages; every function-level import of the package is listed in DEFERRED")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
