# AstrID: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/astrid demo

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
