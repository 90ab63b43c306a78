# The two commands a newcomer types: `make run` and `make test`. Everything else is a step of theirs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv up down status setup test lint unit

$(STAMP): pyproject.toml
	@test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

## Install (once, cached) and start Kafka, Mosquitto and PostgreSQL+TimescaleDB as local processes.
up:
	bash deploy/local/stack.sh up

## Stop what `make up` started (by pid).
down:
	bash deploy/local/stack.sh down

status:
	bash deploy/local/stack.sh status
