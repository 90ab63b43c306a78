"""The audit collector against real servers: a client refused by Mosquitto, Kafka's
authorizer or PostgreSQL is, within seconds, a row of the audit log with the right actor,
action, outcome and reason.

Each server is a private one started with stack.sh's own functions (as test_mqtt_auth.py and
test_kafka_auth.py start theirs), so that its log is this module's alone: Mosquitto with
MQTT_LOG_DENIALS=on, Kafka with deploy/local/kafka/log4j2.properties, PostgreSQL with
stack.sh's log_line_prefix. The collector (tools.audit_collector.run) follows their stack
folder and appends, as the local stack's audit_writer, into the test's schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka.errors import TopicAuthorizationFailedError

from libs.common.db import migrate
from libs.common.settings import PipelineSettings
from tests.integration.test_kafka_auth import Broker as KafkaBroker
from tests.integration.test_kafka_auth import broker as kafka_broker
from tests.integration.test_kafka_auth import produce
from tests.integration.test_mqtt_auth import (
    NOT_AUTHORIZED,
    Broker,
    Peer,
    stack_sh,
    trusting,
    which,
)
from tools.audit_collector import CollectorSettings, run
from tools.db_accounts import dsn_for
from tools.mqtt_accounts import register_device, revoke_device
from tools.processes import free_ports

pytestmark = pytest.mark.integration
__all__ = ["kafka_broker"]  # a fixture, used by name
WAIT_S = 10.0


@pytest.fixture(scope="module")
def mqtt_broker() -> Iterator[Broker]:
    """A private Mosquitto that logs the ACL's denials (MQTT_LOG_DENIALS=on)."""
    if not which("mosquitto"):
        pytest.fail("mosquitto not installed: run `make up` first", pytrace=False)
    stack_dir = Path(tempfile.mkdtemp(prefix="test-audit-mqtt-"))
    stack_dir.chmod(0o755)
    port, tls_port = free_ports(2)
    env = {
        "STACK_DIR": str(stack_dir),
        "MQTT_PORT": str(port),
        "MQTT_TLS_PORT": str(tls_port),
        "MQTT_LOG_DENIALS": "on",
        "STACK_START_TIMEOUT": "30",
    }
    try:
        started = stack_sh(
            env,
            'mkdir -p "$STACK" "$LOGS" "$RUN"; certs_ensure; '
            "server_start mosquitto; mosquitto_wait",
        )
        if started.returncode != 0:
            pytest.fail(f"mosquitto did not start:\n{started.stdout}\n{started.stderr}")
        yield Broker(stack_dir, port, tls_port, env)
    finally:
        stack_sh(env, "server_stop mosquitto || true")
        shutil.rmtree(stack_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_stack() -> Iterator[tuple[Path, int]]:
    """A private PostgreSQL cluster (its folder and port), migrated."""
    stack_dir = Path(tempfile.mkdtemp(prefix="test-audit-pg-"))
    stack_dir.chmod(0o755)
    (port,) = free_ports(1)
    env = {"STACK_DIR": str(stack_dir), "PG_PORT": str(port), "STACK_START_TIMEOUT": "60"}
    try:
        started = stack_sh(
            env,
            'mkdir -p "$STACK" "$LOGS" "$RUN"; certs_ensure; server_start postgres; postgres_wait',
        )
        if started.returncode != 0:
            pytest.fail(f"postgres did not start:\n{started.stdout}\n{started.stderr}")

        async def migrated() -> None:
            conn = await asyncpg.connect(f"postgresql://sensors:sensors@127.0.0.1:{port}/sensors")
            try:
                await migrate(conn)
            finally:
                await conn.close()

        asyncio.run(migrated())
        yield stack_dir, port
    finally:
        stack_sh(env, "server_stop postgres || true")
        shutil.rmtree(stack_dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def collector(stack_dir: Path, schema: str) -> AsyncIterator[None]:
    settings = CollectorSettings(
        audit_stack_dir=stack_dir, database_schema=schema, audit_poll_s=0.2, http_port=0
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def rows_until(
    db: asyncpg.Connection, count: int, where: str, *args: object
) -> list[asyncpg.Record]:
    async with asyncio.timeout(WAIT_S):
        while len(rows := await db.fetch(f"SELECT * FROM audit_log WHERE {where}", *args)) < count:
            await asyncio.sleep(0.2)
    return rows


async def test_mosquitto_s_refused_connects_and_denied_publish_are_rows(
    mqtt_broker: Broker, schema: str, db: asyncpg.Connection
) -> None:
    a, b = (f"test-dev-{uuid.uuid4().hex[:8]}" for _ in range(2))
    creds_a = await register_device(mqtt_broker.settings, a)
    creds_b = await register_device(mqtt_broker.settings, b)
    context = trusting(mqtt_broker.ca_file)
    async with collector(mqtt_broker.stack_dir, schema):
        for username, password in ((None, None), (a, "wrong")):
            peer = Peer(username, password)
            assert peer.connect(mqtt_broker.tls_port, context) == NOT_AUTHORIZED
            peer.close()
        peer = Peer(a, creds_a.password)
        assert peer.connect(mqtt_broker.tls_port, context) == 0
        assert peer.publish(f"sensors/{b}/readings", b"{}") == NOT_AUTHORIZED
        peer.close()
        await revoke_device(mqtt_broker.settings, b)
        revoked = Peer(b, creds_b.password)
        assert revoked.connect(mqtt_broker.tls_port, context) == NOT_AUTHORIZED
        revoked.close()
        [publish] = await rows_until(db, 1, "action = 'mqtt.publish'")
        connects = await rows_until(db, 3, "action = 'mqtt.connect'")
    assert (publish["actor"], publish["actor_kind"], publish["target"], publish["outcome"]) == (
        a,
        "device",
        f"sensors/{b}/readings",
        "refused",
    )
    assert publish["reason"].startswith(f"not authorised to publish to sensors/{b}/readings")
    assert publish["recorded_by"] == "mosquitto"
    # The start-up probe's anonymous connect too: a connect refused is a row whoever made it.
    assert len(connects) >= 3
    assert {(r["actor"], r["outcome"], r["source_address"]) for r in connects} == {
        ("unknown", "refused", "127.0.0.1")
    }
    assert all("not authorised (CONNACK 0x87" in r["reason"] for r in connects)


async def test_a_kafka_principal_writing_a_topic_it_may_not_is_a_row(
    kafka_broker: KafkaBroker, schema: str, db: asyncpg.Connection
) -> None:
    async with collector(kafka_broker.stack_dir, schema):
        with pytest.raises(TopicAuthorizationFailedError):
            await produce(kafka_broker.options("validate"), "sensor-data", b"x")
        [row] = await rows_until(db, 1, "actor = 'validate' AND action = 'kafka.write'")
    assert (row["actor_kind"], row["target"], row["outcome"], row["recorded_by"]) == (
        "service",
        "topic:sensor-data",
        "refused",
        "kafka",
    )
    assert row["reason"] == "WRITE on Topic sensor-data denied (Produce request, rule DefaultDeny)"


async def test_postgres_refusals_of_store_and_of_an_audit_log_update_are_rows(
    pg_stack: tuple[Path, int], schema: str, db: asyncpg.Connection
) -> None:
    stack_dir, port = pg_stack
    settings = PipelineSettings(
        database_url=f"postgresql://sensors:sensors@127.0.0.1:{port}/sensors",
        tls_ca_file=stack_dir / "certs" / "ca.crt",
    )
    secrets = stack_dir / "secrets"
    async with collector(stack_dir, schema):
        for role, sql in (
            ("store", "CREATE TABLE evil (x int)"),
            ("store", "UPDATE sensor_readings SET temperature = 0"),
            ("admin_api", "UPDATE audit_log SET reason = 'x'"),
        ):
            conn = await asyncpg.connect(dsn_for(role, settings, secrets))
            try:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
            finally:
                await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(dsn_for("store", settings, secrets).replace("store:", "store:x"))
        rows = await rows_until(db, 4, "recorded_by = 'postgres'")
    found = {(r["actor"], r["action"], r["target"], r["outcome"]) for r in rows}
    assert found == {
        ("store", "db.ddl", "public", "refused"),
        ("store", "db.update", "sensor_readings", "refused"),
        ("admin_api", "db.update", "audit_log", "refused"),
        ("store", "db.login", "sensors", "refused"),
    }
    login = next(r for r in rows if r["action"] == "db.login")
    assert login["reason"] == 'password authentication failed for user "store"'
    assert login["source_address"] == "127.0.0.1"


async def test_a_restarted_collector_neither_loses_nor_repeats_a_row(
    pg_stack: tuple[Path, int], schema: str, db: asyncpg.Connection
) -> None:
    stack_dir, port = pg_stack
    settings = CollectorSettings(audit_stack_dir=stack_dir, database_schema=schema, http_port=0)
    await run(settings, asyncio.Event(), once=True)
    before = await db.fetchval("SELECT count(*) FROM audit_log")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://nobody:x@127.0.0.1:{port}/sensors?sslmode=require")
    await asyncio.sleep(0.5)
    await run(settings, asyncio.Event(), once=True)
    await run(settings, asyncio.Event(), once=True)
    rows = await db.fetch("SELECT actor FROM audit_log ORDER BY id OFFSET $1", before)
    assert [r["actor"] for r in rows] == ["nobody"]
