# The two commands of the README's quickstart: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test fuzz lint typecheck bench bench-quick faults-long clean venv system-packages \
	npm-packages

# Every test runs: a missing tool is an error, never a skip (tests/support.py reads CI).
TEST_ENV := CI=$${CI:-true}

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

run: $(STAMP_RUN) console
	@.ci/system-packages run
	$(BIN)/openkvs serve $(ARGS)

# The web console (/console/): the lockfile's npm packages (npm ci) and our sources, bundled by
# esbuild into src/openkvs/web/console/dist (git-ignored). Without npm the server still runs and
# /console/ says how to build it.
.PHONY: console
console:
	@if command -v npm >/dev/null 2>&1; then \
		if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then \
			npm ci --no-audit --no-fund --loglevel=error; fi && \
		node src/openkvs/web/console/build.mjs || echo "the web console (/console/) was not built"; \
	else echo "npm is not installed: the web console (/console/) is not built (apt-get install npm)"; fi

# FFmpeg, coturn, Chromium, Node.js/npm, Redis, PostgreSQL (Debian packages); only looks when all
# are there.
system-packages:
	@.ci/system-packages test

# The npm packages of the browser and JS SDK tests, again when package-lock.json changed.
npm-packages: system-packages
	@if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then \
		npm ci --no-audit --no-fund --loglevel=error; fi

test: $(STAMP_TEST) system-packages npm-packages
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(TEST_ENV) $(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

# The fuzz suites with many more cases than the test run gives them (OPENKVS_FUZZ_EXAMPLES).
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP_TEST)
	OPENKVS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(TEST_ENV) $(BIN)/python -m pytest -p no:xdist \
		-m fuzz --timeout 0 -q $(PYTEST_ARGS) tests/fuzz

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
