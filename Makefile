# piblade — the two commands a new user needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench packages test-packages install clean

# Debian packages first (a fresh Debian has no python3-venv), then the venv.
packages:
	@bash scripts/ensure-packages.sh base

test-packages:
	@bash scripts/ensure-packages.sh test

$(STAMP): pyproject.toml | packages
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: packages install
	@bash scripts/demo.sh

# Lint and type-check first (seconds): an error fails the suite before minutes of tests.
test: packages test-packages install lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: packages test-packages install
	@for b in bench/[a-z]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
