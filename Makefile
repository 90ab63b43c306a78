# The two commands a newcomer types: `make run` and `make test`. Everything else is a step of theirs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv lock up down status rotate-certs setup lint unit test run soak tools bench

# The exact packages (with their hashes) of pyproject's dependencies and of its [test] extra:
# `make venv` and the Dockerfile install these, not whatever is newest that day.
RUNTIME_LOCK := requirements/runtime.lock
DEV_LOCK := requirements/dev.lock

$(STAMP): pyproject.toml $(DEV_LOCK)
	@test -x $(PY) || python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(DEV_LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

## The virtual environment in .venv with the project and its test tools, from the lock.
venv: $(STAMP)

# The lock is made by uv (in its own venv, not the project's), for CPython 3.11 on Linux x86-64.
UV_VERSION := 0.13.9
LOCK_VENV := .venv-lock
UV := $(LOCK_VENV)/bin/uv
LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu --generate-hashes \
	--custom-compile-command 'make lock' --quiet $(if $(UPGRADE),--upgrade)

## Recompile the locks after editing pyproject's dependencies (needs PyPI). Pins stay where they
## are unless they must move; `make lock UPGRADE=1` moves every pin to the newest allowed.
lock:
	@test -x $(UV) || { python3.11 -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet uv==$(UV_VERSION); }
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) -o $(RUNTIME_LOCK)
	$(UV) pip compile pyproject.toml --extra test -c $(RUNTIME_LOCK) $(LOCK_FLAGS) -o $(DEV_LOCK)

## Install (once, cached) and start Kafka, Mosquitto, PostgreSQL+TimescaleDB and Keycloak as local processes.
up:
	bash deploy/local/stack.sh up

## Stop what `make up` started (by pid).
down:
	bash deploy/local/stack.sh down

status:
	bash deploy/local/stack.sh status

## New server keys and certificates from the local CA (CA=1: a new CA too); lists what to restart.
rotate-certs:
	bash deploy/local/stack.sh rotate-certs $(if $(CA),--ca)

## Create the Kafka topics and apply the database migrations (idempotent).
setup: venv up
	$(PY) -m tools.setup

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

## Unit tests only: no servers needed.
unit: venv
	$(PY) -m pytest tests/unit

## Tools the tests call that are not Python packages (promtool, for the alert rules).
tools:
	bash deploy/prometheus/ensure-promtool.sh

## Everything: set-up on a fresh machine, lint, type checks, unit, integration, e2e and fault tests.
test: venv up setup lint tools
	$(PY) -m pytest

## The whole pipeline with a simulated fleet and a live view; Ctrl-C stops it.
run: venv up setup
	$(PY) -m tools.run

## The fault tests for longer: 5 minutes of random SIGKILLs, 60 s outages; prints the figures.
soak: venv up
	FAULT_DURATION_S=300 FAULT_OUTAGE_S=60 $(PY) -m pytest tests/fault

BENCH_STAMP := $(VENV)/.bench-installed
# The bench extra is not locked: its peers (quixstreams) are measured at what is current.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,bench]'
	@touch $(BENCH_STAMP)

## Benchmark against the local stack (about 6 min; BENCH_QUICK=1 about 2): bench/results/<date>.{json,md,png}
bench: $(BENCH_STAMP) up setup
	$(PY) -m bench.run
