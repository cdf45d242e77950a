# The training-run diagnostic workbooks. `make` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
# pip's notes about this machine's extra package indexes, filtered out of set-up output
QUIET  := { grep -v -e 'is ignored: it is neither a file nor a directory' || true; }
# Make the venv's `python3` kernel win over any user-level kernelspec of that name.
export JUPYTER_PATH := $(abspath $(VENV))/share/jupyter
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# Compiled modules are cached (__pycache__, git-ignored) even where the shell says not to write them:
# every kernel and test worker would otherwise compile helpers/ and pytest re-rewrite tests/ (4-5 s a worker).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help setup run compare test lab data bench course student clean distclean

# make run [RUN=manifest.yaml] [SCHEDULER=host:port] [FORCE=1]; make compare A=run1 B=run2
RUN       ?= manifests/samples.yaml
SCHEDULER ?=
FORCE     ?=

help: ## list the targets
	@echo "Training-run diagnostic workbooks"
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: python3.11 not found (set PYTHON=...)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
		|| { echo "error: $(PYTHON) is not Python 3.11 (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | $(QUIET)
	$(PY) -m pip install --quiet -e '.[dev,teaching]' 2>&1 | $(QUIET)
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (workbooks)" >/dev/null
	$(PY) -m helpers.runner.kernel >/dev/null
	touch $(STAMP)

setup: $(STAMP) ## create .venv, install helpers (editable) and the python3 kernel; idempotent

run: setup ## execute a manifest (RUN=, default the sample runs) on dask into reports/<run>/<notebook>/
	$(VENV)/bin/workbooks run $(RUN) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(if $(FORCE),--force)

compare: setup ## the findings whose status changed between two runs: make compare A=run1 B=run2
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make compare A=run1 B=run2"; exit 2; }
	$(VENV)/bin/workbooks compare $(A) $(B)

test: setup ## lint, import contracts, unit tests and notebook executions on both cores
	$(VENV)/bin/ruff check helpers tests bench notebooks
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -n 2 --dist loadgroup

lab: setup ## open JupyterLab on this environment
	$(VENV)/bin/jupyter lab notebooks

data: setup ## regenerate data_samples/ from the seeded simulators
	$(VENV)/bin/workbooks data data_samples

bench: setup ## speed and memory ratios against same-run baselines; table in reports/bench.md
	$(PY) bench/run.py

course: setup ## the nbgrader course in course/: source/, release/ (no solutions), gradebook, index.ipynb
	$(VENV)/bin/workbooks course

student: course ## the same as `make course` (the student copies are course/release/)

clean: ## remove generated reports, the course build and caches (keeps .venv and collected student work)
	rm -rf reports student bench/results .pytest_cache .ruff_cache
	@if [ -d course/submitted ] || [ -d course/autograded ]; then \
		rm -rf course/source course/release course/index.ipynb; \
		echo "kept course/ submissions, grades and gradebook (collected student work); remove them by hand"; \
	else rm -rf course; fi
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

distclean: clean ## clean, and remove .venv
	rm -rf $(VENV)
