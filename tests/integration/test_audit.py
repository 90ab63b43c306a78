"""libs.common.audit against the real server: rows as the audit_writer role appends them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client import REGISTRY

from libs.common.audit import AuditEvent, AuditWriter, append
from libs.common.errors import ConfigurationError
from tests.conftest import connect_to_schema
from tools.db_accounts import dsn_for

pytestmark = pytest.mark.integration


def refused_publish(
    device: str = "dev-1", reason: str = "not authorised", **extra: str
) -> AuditEvent:
    return AuditEvent(
        actor=device,
        actor_kind="device",
        action="mqtt.publish",
        outcome="refused",
        recorded_by="test",
        target="sensors/dev-2/readings",
        reason=reason,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
async def writer_conn(schema: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_to_schema(schema, dsn_for("audit_writer"))
    try:
        yield conn
    finally:
        await conn.close()


async def test_events_are_appended_with_every_column(
    writer_conn: asyncpg.Connection, db: asyncpg.Connection
) -> None:
    await append(writer_conn, [refused_publish(source_address="127.0.0.1:51234", request_id="r1")])
    row = await db.fetchrow("SELECT * FROM audit_log")
    assert row is not None
    assert (row["actor"], row["actor_kind"], row["action"], row["outcome"]) == (
        "dev-1",
        "device",
        "mqtt.publish",
        "refused",
    )
    assert (row["target"], row["reason"], row["source_address"], row["request_id"]) == (
        "sensors/dev-2/readings",
        "not authorised",
        "127.0.0.1:51234",
        "r1",
    )
    assert row["recorded_by"] == "test" and row["at"] is not None


async def test_a_hostile_long_value_is_cut_and_an_empty_actor_is_anonymous(
    writer_conn: asyncpg.Connection, db: asyncpg.Connection
) -> None:
    await append(writer_conn, [refused_publish("", reason="x" * 100_000)])
    row = await db.fetchrow("SELECT actor, actor_kind, length(reason) AS n FROM audit_log")
    assert row is not None
    assert (row["actor"], row["actor_kind"], row["n"]) == ("anonymous", "anonymous", 2048)


def test_an_action_that_is_not_component_verb_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="component.verb"):
        AuditEvent("a", "user", "Register Device", "allowed", "test")


async def test_the_writer_appends_what_was_recorded_and_the_rest_at_stop(
    writer_conn: asyncpg.Connection, db: asyncpg.Connection
) -> None:
    writer = AuditWriter(writer_conn, recorded_by="test", batch_size=7)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    for i in range(20):
        writer.record(refused_publish(f"dev-{i}"))
    for _ in range(100):
        if await db.fetchval("SELECT count(*) FROM audit_log") == 20:
            break
        await asyncio.sleep(0.05)
    for i in range(20, 25):
        writer.record(refused_publish(f"dev-{i}"))
    stop.set()
    await asyncio.wait_for(task, 10)
    actors = {r["actor"] for r in await db.fetch("SELECT actor FROM audit_log")}
    assert actors == {f"dev-{i}" for i in range(25)}


async def test_a_full_queue_drops_the_new_event_and_counts_it(
    writer_conn: asyncpg.Connection, db: asyncpg.Connection
) -> None:
    def dropped() -> float:
        value = REGISTRY.get_sample_value("pipeline_audit_dropped_total", {"recorded_by": "full"})
        return value or 0.0

    before = dropped()
    writer = AuditWriter(writer_conn, recorded_by="full", max_pending=3)
    for i in range(5):
        writer.record(refused_publish(f"dev-{i}"))
    assert writer.pending == 3
    assert dropped() - before == 2
    await writer.flush()
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 3
