# Thin wrapper: every target calls a script in scripts/ or `repro <verb>`; the logic lives in the package.
.DEFAULT_GOAL := help
VENV ?= .venv
REPRO := $(VENV)/bin/repro
SPEC ?= sweeps/demo.yaml
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
MUTATION_ARGS ?=

.PHONY: help install lock demo test test-rehearsals lint rehearse sweep status aggregate figures report catalogue bench mutation slurm-up slurm-down

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install:  ## check (as root: install) the build's libraries, make the venv (VENV=DIR, default .venv): torch, requirements.lock, the package
	@VENV='$(VENV)' scripts/setup.sh

lock:  ## regenerate requirements.lock (every dependency but the torch variant, with hashes; needs uv)
	@scripts/lock.sh

demo: install  ## CPU demo: Fashion-MNIST (as root: installed) -> .beton -> sweep -> aggregate -> figures -> report in results/demo/
	@scripts/runtime-deps.sh demo
	$(REPRO) demo

test: install lint  ## lint, then the test suite on 2 workers (unit + end-to-end: FFCV, SLURM, DDP over gloo), ~13 min on 2 cores
	@scripts/runtime-deps.sh test
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-rehearsals: install  ## the long tests: rehearse every shipped spec, reproduce a committed demo run, the full fault/identity matrices (CI runs it after make test)
	@scripts/runtime-deps.sh test
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "rehearsal or reproduction or long" $(PYTEST_ARGS)

lint: install  ## ruff (pyflakes + import order) over the whole tree; the import graph has no cycles
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python scripts/import_graph.py --check

rehearse: install  ## run every distinct variant of SPEC small (kill + exact resume + figures) before launching it
	$(REPRO) sweep $(SPEC) --rehearse

sweep: install  ## launch the grid in SPEC (default sweeps/demo.yaml) on SLURM, or locally
	$(REPRO) sweep $(SPEC)

status: install  ## state of every run of SPEC
	$(REPRO) status $(SPEC)

aggregate: install  ## collect SPEC's runs into results/<sweep>/runs.parquet and summary.csv
	$(REPRO) aggregate $(SPEC)

figures: install  ## draw SPEC's figures into results/<sweep>/figures/
	$(REPRO) figures $(SPEC)

report: install  ## write results/<sweep>/report.html (status, best configs, paired stats, figures, theory)
	$(REPRO) report $(SPEC)

catalogue: install  ## try every optimizer of pytorch-optimizer and timm on the demo model (its data: make demo) -> docs/optimizer-catalogue.md
	$(REPRO) optimizers experiments/demo.yaml --table docs/optimizer-catalogue.md

bench: install  ## run benchmarks/ (JSON to results/bench/)
	$(REPRO) bench

mutation: install  ## mutation testing (mutmut, its own venv) of the science/bookkeeping modules: scores to results/mutation/ (not in make test)
	@VENV='$(VENV)' scripts/mutation.sh $(MUTATION_ARGS)

slurm-up:  ## install and start a single-node SLURM cluster on this machine (root)
	@scripts/slurm-up.sh

slurm-down:  ## stop the single-node SLURM cluster
	@scripts/slurm-down.sh
