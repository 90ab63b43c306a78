"""Migrations and the store's idempotent writer, against the real PostgreSQL + TimescaleDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from libs.common.db import connect, create_pool, migrate
from libs.common.errors import StorageRejected
from services.store.writer import prepare_connection, to_row, write_rows
from tests.conftest import Names


async def test_the_readings_table_is_a_hypertable_on_time_and_device_id(
    db: asyncpg.Connection, schema: str
) -> None:
    dims = await db.fetch(
        """SELECT column_name, dimension_type FROM timescaledb_information.dimensions
           WHERE hypertable_schema = $1 AND hypertable_name = 'sensor_readings'
           ORDER BY dimension_number""",
        schema,
    )
    assert [(d["column_name"], d["dimension_type"]) for d in dims] == [
        ("time", "Time"),
        ("device_id", "Space"),
    ]


async def test_migrating_twice_changes_nothing(names: Names, schema: str) -> None:
    conn = await connect(names.settings(database_role="migrator"))
    try:
        assert await migrate(conn, schema) == []
    finally:
        await conn.close()


def enriched(device: str, minute: int, **fields: object) -> dict[str, object]:
    base = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
    reading: dict[str, object] = {
        "device_id": device,
        "time": (base + timedelta(minutes=minute)).isoformat(),
        "temperature": 30.0,
        "humidity": 60.0,
        "source": "mqtt",
        "received_at": base.isoformat(),
        "trace_id": f"trace-{device}-{minute}",
        "extra": {"co2": 415.0},
        "device_known": False,
    }
    reading.update(fields)
    return reading


async def test_writing_the_same_batch_twice_stores_each_reading_once(
    names: Names, db: asyncpg.Connection
) -> None:
    settings = names.settings(database_role="store")
    pool = await create_pool(settings, size=2, init=prepare_connection)
    rows = [to_row(enriched(f"dev-{d}", m)) for d in range(3) for m in range(100)]
    try:
        assert await write_rows(pool, rows) == 300
        assert await write_rows(pool, rows[:150]) == 0
        assert await write_rows(pool, rows + [to_row(enriched("dev-new", 0))]) == 1
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM sensor_readings") == 301
    row = await db.fetchrow(
        "SELECT * FROM sensor_readings WHERE device_id='dev-1' AND time='2026-11-27T05:07:00Z'"
    )
    assert row["trace_id"] == "trace-dev-1-7" and row["source"] == "mqtt"
    assert row["stored_at"] > row["received_at"]
    assert '"co2"' in row["extra"]


async def test_a_row_the_database_refuses_is_a_permanent_error(names: Names, schema: str) -> None:
    settings = names.settings(database_role="store")
    pool = await create_pool(settings, size=1, init=prepare_connection)
    try:
        with pytest.raises(StorageRejected):
            await write_rows(pool, [to_row(enriched("dev-1", 0, device_id="x\x00y"))])
    finally:
        await pool.close()


async def test_a_batch_written_again_leaves_every_row_as_it_was(
    names: Names, db: asyncpg.Connection
) -> None:
    pool = await create_pool(names.settings(database_role="store"), size=1, init=prepare_connection)
    rows = [to_row(enriched("dev-1", m)) for m in range(50)]
    try:
        assert await write_rows(pool, rows) == 50
        before = await db.fetch("SELECT * FROM sensor_readings ORDER BY time")
        assert await write_rows(pool, rows) == 0
        after = await db.fetch("SELECT * FROM sensor_readings ORDER BY time")
    finally:
        await pool.close()
    assert [dict(r) for r in after] == [dict(r) for r in before]


async def test_a_reading_twice_in_one_batch_is_stored_once(
    names: Names, db: asyncpg.Connection
) -> None:
    pool = await create_pool(names.settings(database_role="store"), size=1, init=prepare_connection)
    rows = [to_row(enriched("dev-1", m)) for m in range(10)]
    try:
        assert await write_rows(pool, rows + rows[3:4]) == 10
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM sensor_readings") == 10


async def test_a_value_of_the_wrong_type_is_a_permanent_error(names: Names, schema: str) -> None:
    pool = await create_pool(names.settings(database_role="store"), size=1, init=prepare_connection)
    try:
        with pytest.raises(StorageRejected):
            await write_rows(pool, [to_row(enriched("dev-1", 0, temperature="hot"))])
        assert await write_rows(pool, [to_row(enriched("dev-1", 0))]) == 1
    finally:
        await pool.close()
