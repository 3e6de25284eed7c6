# Two commands on a fresh machine: `make run` (set up + analyze the sample ideas on the embedded model), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch for tests and the transformers backend on CPU; on a GPU machine install the
# CUDA build of your choice first (see README) and this pin is satisfied or skipped.
TORCH_SPEC ?= torch==2.13.0
IDEAS ?= examples/business_ideas.csv
OUT ?= runs/business_ideas

.PHONY: setup setup-dev run test lint audit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[openai,server]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $@

setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev

run: setup
	$(BIN)/agentic config
	$(BIN)/agentic analyze $(IDEAS) --out $(OUT)

test: setup-dev
	$(BIN)/python -m pytest

lint: setup-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# Known advisories in the installed packages. Needs PyPI's per-version JSON API and OSV: not reachable from
# this project's CI machines (only the package index is), so it is not part of `make lint` (see README).
audit: setup-dev
	$(BIN)/pip-audit --strict --skip-editable

bench: setup-dev
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV)
