"""Fixtures shared by the integration and end-to-end tests: the real local stack, and fresh
uuid-named topics, consumer groups and database schemas for each test."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from libs.common.db import connect, migrate
from libs.common.db_accounts import dsn_for
from libs.common.kafka import ensure_topics
from libs.common.settings import DEFAULT_DATABASE_URL
from tools import mqtt_run_accounts as run_accounts
from tools.mqtt_run_accounts import RunAccounts
from tools.names import Names
from tools.processes import free_port as any_free_port

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
# Mosquitto's TLS listener with accounts (as stack.sh's MQTT_TLS_PORT): every test's MQTT.
MQTT_HOST, MQTT_TLS_PORT = "127.0.0.1", int(os.environ.get("MQTT_TLS_PORT", "8883"))
# The local stack's development owner (docs/security.md), for the tests of that contract; every
# other connection of the tests is a role's of least privilege (libs.common.db_accounts), as in
# production: schemas are migrated by the migrator, stages connect as their own roles.
DATABASE_URL = DEFAULT_DATABASE_URL
PG = urlsplit(DATABASE_URL)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def stack() -> None:
    """The local stack must be up; a test that needs it fails loudly when it is not."""
    host, _, port = KAFKA.split(",")[0].rpartition(":")
    missing = [
        name
        for name, h, p in (
            ("Kafka", host, int(port)),
            ("Mosquitto", MQTT_HOST, MQTT_TLS_PORT),
            ("PostgreSQL", PG.hostname or "127.0.0.1", PG.port or 5432),
        )
        if not _reachable(h, p)
    ]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not reachable: start the stack with `make up`", pytrace=False
        )


@pytest.fixture
def names() -> Names:
    return Names(uuid.uuid4().hex[:12])


@pytest.fixture
async def topics(stack: None, names: Names) -> Names:
    settings = names.settings(topic_partitions=3)
    created = await ensure_topics(settings)
    assert len(created) == 4
    return names


@pytest.fixture
async def schema(stack: None, names: Names) -> AsyncIterator[str]:
    # As tools.setup does: the migrator creates the schema and owns its tables; the stages'
    # roles get their grants from the migrations.
    settings = names.settings(database_role="migrator")
    conn = await connect(settings)
    try:
        await migrate(conn, names.schema())
        yield names.schema()
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{names.schema()}" CASCADE')
        await conn.close()


async def connect_to_schema(
    schema: str, url: str | None = None, *, role: str = "migrator"
) -> asyncpg.Connection:
    """A connection that finds the pipeline's tables in `schema` (and TimescaleDB in public):
    to `url`, else as `role`'s login user over verified TLS (the migrator, which owns the
    tables, arranges data; reader checks what the stages wrote)."""
    return await asyncpg.connect(
        url or dsn_for(role), server_settings={"search_path": f"{schema},public"}
    )


@pytest.fixture
async def db(schema: str) -> AsyncIterator[asyncpg.Connection]:
    """The tables' owner (the migrator) in the test's schema: arranges and checks data."""
    conn = await connect_to_schema(schema)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def mqtt_accounts(stack: None, names: Names) -> AsyncIterator[RunAccounts]:
    """This test's MQTT accounts on the TLS listener, for its topics `t-<run>/sensors/...`:
    an ingest that may subscribe to them, and a fleet that may publish there."""
    accounts = await run_accounts.create(f"test-{names.run_id}", f"t-{names.run_id}/")
    try:
        yield accounts
    finally:
        await run_accounts.delete(accounts.run)


@pytest.fixture
def free_port() -> int:
    return any_free_port()
