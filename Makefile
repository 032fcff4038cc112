# The two commands of the README's quickstart: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test lint typecheck bench bench-quick faults-long clean venv

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "openkvs needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		echo "python3 -m venv failed: installing python3-venv"; \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi; \
		$(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,dev]'
	@touch $@ $(STAMP_RUN)

venv: $(STAMP_RUN)

run: $(STAMP_RUN)
	$(BIN)/openkvs serve $(ARGS)

test: $(STAMP_TEST)
	@if [ -f package-lock.json ] && command -v npm >/dev/null 2>&1 && [ ! -d node_modules ]; then \
		npm ci --no-audit --no-fund --loglevel=error; fi
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

faults-long: $(STAMP_TEST)
	OPENKVS_LONG_FAULTS=1 $(BIN)/python -m pytest tests/faults -p no:xdist -s $(PYTEST_ARGS)

lint: $(STAMP_TEST)
	$(BIN)/ruff check src tests
	$(BIN)/mypy

bench: $(STAMP_TEST)
	$(BIN)/python -m bench $(ARGS)

bench-quick: $(STAMP_TEST)
	$(BIN)/python -m bench --quick $(ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
