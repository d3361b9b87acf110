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

.PHONY: demo ui test lint bench clean postgresql chromium kafka

# Production mode keeps Dagster's instance file in deploy/dagster (PostgreSQL).
ifeq ($(ASTRID_ENV),prod)
export DAGSTER_HOME := $(CURDIR)/deploy/dagster
export ASTRID_S3_PREFIX ?= astrid
export ASTRID_S3_REGION ?= auto
export ASTRID_PG_PORT ?= 5432
export ASTRID_PG_DB ?= astrid
export ASTRID_DAGSTER_LOG_PREFIX ?= $(ASTRID_S3_PREFIX)/dagster-logs
export AWS_REQUEST_CHECKSUM_CALCULATION ?= when_required
export AWS_RESPONSE_CHECKSUM_VALIDATION ?= when_required
endif
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

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

# The production-mode tests start a real PostgreSQL server of their own;
# Debian's package provides it where it is missing.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql; }

# The review app's browser test drives Debian's chromium through Playwright
# (executable /usr/bin/chromium; Playwright downloads no browser of its own).
chromium:
	@test -x /usr/bin/chromium || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

# The Kafka ingest test runs a real Apache Kafka broker (KRaft, one node) from its
# jars, fetched once by Maven into .cache/kafka/lib.
KAFKA_VERSION := 4.1.1
KAFKA_LIB := .cache/kafka/lib
kafka: $(KAFKA_LIB)/.complete

$(KAFKA_LIB)/.complete:
	rm -rf $(KAFKA_LIB) && mkdir -p $(KAFKA_LIB)
	printf '%s\n' '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>' \
		'<groupId>astrid</groupId><artifactId>kafka-broker</artifactId><version>0</version>' \
		'<dependencies><dependency><groupId>org.apache.kafka</groupId>' \
		'<artifactId>kafka_2.13</artifactId><version>$(KAFKA_VERSION)</version></dependency>' \
		'</dependencies></project>' > .cache/kafka/pom.xml
	mvn -q -B -f .cache/kafka/pom.xml dependency:copy-dependencies \
		-DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(KAFKA_LIB)
	touch $@

test: $(STAMP) postgresql chromium
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
