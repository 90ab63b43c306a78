# syntax=docker/dockerfile:1
# One image for every stage of the sensor pipeline and for the setup step; the command picks
# which one runs (docker-compose.yml, deploy/k8s/):
#   python -m services.ingest | services.validate | services.enrich | services.store
#   python -m tools.setup        (create the Kafka topics, apply the migrations; idempotent)
#
#   docker build -t sensor-pipeline:dev .

# An exact patch release on an exact Debian: an image built next month starts from the same
# Python. Moving it is an edit here (the major.minor is pyproject's requires-python, checked by
# tests/unit/test_deploy_consistency.py).
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

# --- build: install the project and its dependencies into a virtualenv -------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The dependencies first, exactly as locked (versions and hashes: `make lock`), in a layer of
# their own that a code change does not rebuild.
COPY requirements/runtime.lock ./requirements/
RUN pip install --require-hashes -r requirements/runtime.lock
# Then the project alone (--no-deps: nothing beyond the lock). README.m[d]: the readme of
# pyproject.toml, copied when present (a glob may match nothing); LICENSE and NOTICE are its
# license-files, which the build needs.
COPY pyproject.toml README.m[d] LICENSE NOTICE ./
COPY libs ./libs
COPY services ./services
COPY tools ./tools
RUN pip install --no-deps .

# --- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# OCI annotations (https://specs.opencontainers.org/image-spec/annotations/): title, description,
# licence and version are pyproject's (a test keeps them equal); where the source lives and
# which commit was built are given by whoever builds and publishes the image:
#   docker build --build-arg SOURCE_URL=<repository URL> --build-arg REVISION=$(git rev-parse HEAD) .
ARG SOURCE_URL=""
ARG REVISION=""
LABEL org.opencontainers.image.title="sensor-pipeline" \
      org.opencontainers.image.description="Sensor readings over MQTT/HTTP, validated, enriched and stored in TimescaleDB, stage by stage over Kafka." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${REVISION}"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HTTP_HOST=0.0.0.0

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin app

COPY --from=build /opt/venv /opt/venv

# The code, the migrations (libs/common/migrations) and the default rules are package data of
# the installed project in /opt/venv, read-only for the user that runs it.
WORKDIR /app
USER 10001:10001

# ingest (HTTP API), validate, enrich, store: /healthz, /readyz, /metrics
EXPOSE 8080 8081 8082 8083

# exec form: python is PID 1 and gets SIGTERM itself (graceful shutdown).
CMD ["python", "-m", "services.ingest"]
