# piblade — the two commands a new user needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIBLADE := $(VENV)/bin/piblade
STAMP := $(VENV)/.installed

.PHONY: demo test bench install redis-server clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# redis-server comes from Debian; install it when we may, otherwise say how.
redis-server:
	@bash scripts/ensure-packages.sh redis-server

demo: install redis-server
	@bash scripts/demo.sh

test: install redis-server
	@bash scripts/ensure-packages.sh test
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install redis-server
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
