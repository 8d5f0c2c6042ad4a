# piblade — the two commands a new user needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# plotly.js for `piblade report`: fetched by name at a pinned version and SHA-512, never committed.
PLOTLY_JS := piblade/report/vendor/plotly-basic.min.js

.PHONY: demo test lint bench lock packages test-packages install install-test plotly clean

# Debian packages first (a fresh Debian has no python3-venv), then the venv.
packages:
	@bash scripts/ensure-packages.sh base

test-packages:
	@bash scripts/ensure-packages.sh test

# Installs come from the lock files only (exact versions, hashes); pyproject.toml keeps the ranges
# for people who `pip install piblade`. piblade itself goes in without build isolation, so the build
# uses the locked setuptools instead of downloading whatever is newest.
define install_locked
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(1)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
endef

$(PLOTLY_JS): scripts/plotly-bundle.sh | packages
	@bash scripts/plotly-bundle.sh
	@touch $(PLOTLY_JS)

plotly: $(PLOTLY_JS)

# What running piblade needs (make demo): no test tools on a Pi or a newcomer's laptop.
$(STAMP): requirements.lock pyproject.toml $(PLOTLY_JS) | packages
	$(call install_locked,requirements.lock)
	@rm -f $(TEST_STAMP)
	@touch $(STAMP)

# make test adds the test and tunnel extras.
$(TEST_STAMP): requirements-test.lock pyproject.toml $(PLOTLY_JS) | packages
	$(call install_locked,requirements-test.lock)
	@touch $(STAMP) $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

demo: packages install
	@bash scripts/demo.sh

# Lint and type-check first (seconds): an error fails the suite before minutes of tests.
test: packages test-packages install-test lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install-test
	$(PY) -m ruff check .
	$(PY) -m mypy

# Refresh the lock files from pyproject.toml's ranges (needs the test install, which has uv).
lock: install-test
	@bash scripts/lock.sh

bench: packages test-packages install-test
	@for b in bench/[a-z]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache piblade/report/vendor
