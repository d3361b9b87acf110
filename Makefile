# AstrID: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# One Dagster instance for `make demo`, `make ui` and the `astrid` command:
# dagster.yaml here, runs, event logs and AstrID's own store under ASTRID_HOME.
# The `astrid` command fills in the same defaults itself; `dagster dev` reads them
# from here.
export DAGSTER_HOME := $(CURDIR)
export ASTRID_HOME ?= $(CURDIR)/astrid_home
export ASTRID_DAGSTER_STORAGE ?= $(ASTRID_HOME)/dagster
export ASTRID_DAGSTER_LOGS ?= $(ASTRID_HOME)/dagster/logs
export ASTRID_MAX_RUNS ?= 2

.PHONY: demo ui test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/astrid demo

# The Dagster UI (and a daemon) over what `make demo` and `astrid backfill` made.
ui: $(STAMP)
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

test: $(STAMP)
	$(BIN)/ruff check astrid_assets astrid_assets_tests benchmarks
	$(BIN)/ruff format --check astrid_assets astrid_assets_tests benchmarks
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check --fix astrid_assets astrid_assets_tests benchmarks
	$(BIN)/ruff format astrid_assets astrid_assets_tests benchmarks

bench: $(STAMP)
	bash benchmarks/peers/setup_peers.sh
	$(BIN)/python benchmarks/bench_subtraction.py
	$(BIN)/python benchmarks/completeness.py --fields 2 --nights 4

clean:
	rm -rf $(VENV) .venv-peers .pytest_cache .ruff_cache out
