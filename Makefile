# margin: `make serve` (install + run the gateway) and `make test` (install + the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
LOCAL_STAMP := $(VENV)/.installed-local
TEST_STAMP := $(VENV)/.installed-test
ARGS ?=
# `make test` runs the suite's files in this many processes (pytest-xdist, one file to a process; 0: all in pytest's own)
TEST_WORKERS ?= 2

.PHONY: serve test system-deps focus-env lint typecheck unit integration bench bench-sweep clean

serve: $(LOCAL_STAMP)
	$(BIN)/margin serve $(ARGS)

test: $(TEST_STAMP) system-deps focus-env lint typecheck
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# Debian's chromium for the browser tests (Redis and PostgreSQL come from wheels in the test extra)
system-deps:
	@scripts/system_deps.sh

# focus-validator 2.2.1 needs Python >= 3.12: a private CPython 3.13 from Debian packages (scripts/focus_env.sh)
focus-env: $(TEST_STAMP)
	@scripts/focus_env.sh

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/lint-imports

typecheck: $(TEST_STAMP)
	$(BIN)/mypy src tests benchmarks scripts

unit: $(TEST_STAMP)
	$(BIN)/python -m pytest -m "not integration" $(ARGS)

integration: $(TEST_STAMP) focus-env
	$(BIN)/python -m pytest -m integration $(ARGS)

bench: $(TEST_STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/local_backend.py
	$(BIN)/python benchmarks/admission.py

# The gateway sweep's peer: LiteLLM's proxy in its own virtualenv (benchmark only; pinned, 1.107.0 was compromised)
LITELLM_VENV := benchmarks/.venv-litellm
$(LITELLM_VENV)/bin/litellm:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install -q --disable-pip-version-check 'litellm[proxy]==1.106.2'

bench-sweep: $(TEST_STAMP) $(LITELLM_VENV)/bin/litellm
	$(BIN)/python benchmarks/gateway_sweep.py $(ARGS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip

$(LOCAL_STAMP): pyproject.toml scripts/install.py | $(BIN)/python
	$(BIN)/python scripts/install.py
	touch $@

$(TEST_STAMP): pyproject.toml scripts/install.py | $(BIN)/python
	$(BIN)/python scripts/install.py --test
	touch $@ $(LOCAL_STAMP)

clean:
	rm -rf $(VENV) .venv-focus .mypy_cache .ruff_cache .pytest_cache
