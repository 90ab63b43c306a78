"""store's step against the real TimescaleDB: what is stored, what goes to the DLQ."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
from aiokafka import ConsumerRecord

from libs.common import metrics
from libs.common.db import create_pool
from libs.common.health import Readiness
from libs.common.models import DeadLetter
from services.store.service import Store
from services.store.settings import StoreSettings
from services.store.writer import prepare_connection
from tests.conftest import Names
from tests.integration.test_database import enriched


@pytest.fixture
async def store(names: Names, schema: str) -> AsyncIterator[Store]:
    settings = names.settings_of(StoreSettings)
    pool = await create_pool(settings, size=2, init=prepare_connection)
    try:
        yield Store(pool, settings, Readiness("store", "database"))
    finally:
        await pool.close()


def records(readings: list[dict[str, object]], first_offset: int = 0) -> list[ConsumerRecord]:
    # Keyed and traced as enrich passes them on.
    return [
        ConsumerRecord(
            "enriched",
            0,
            first_offset + i,
            0,
            0,
            b"dev",
            orjson.dumps(r),
            None,
            3,
            0,
            [("trace_id", f"trace-{first_offset + i}".encode())],
        )
        for i, r in enumerate(readings)
    ]


def _stored_count() -> float:
    histogram = metrics.END_TO_END_SECONDS.labels("store", "received_at")
    return sum(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_count"))


async def test_a_row_the_database_refuses_goes_to_the_dlq_and_the_rest_are_stored(
    store: Store, db: asyncpg.Connection
) -> None:
    readings = [enriched("dev-1", m) for m in range(40)]
    readings[17] = enriched("dev-1", 17, place="bad\x00place")
    observed = _stored_count()
    result = await store.step(records(readings))
    assert [d["source_offset"] for d in result.dead_letters] == [17]
    (letter,) = [DeadLetter.model_validate(d) for d in result.dead_letters]
    assert (letter.processing_stage.value, letter.error_type) == ("store", "StorageRejected")
    # The letter names its reading: tools.replay --device and the log line's trace id find it.
    assert (letter.trace_id, letter.device_id) == ("trace-17", "dev")
    assert await db.fetchval("SELECT count(*) FROM sensor_readings") == 39
    # Latency is observed for the rows stored, not for the one refused.
    assert _stored_count() - observed == 39


async def test_a_batch_stored_again_after_a_restart_changes_nothing(
    store: Store, db: asyncpg.Connection
) -> None:
    batch = records([enriched(f"dev-{d}", m) for d in range(5) for m in range(200)])
    assert not (await store.step(batch[:600])).dead_letters
    before = await db.fetch("SELECT device_id, time, stored_at FROM sensor_readings")
    result = await store.step(batch)
    assert not result.dead_letters
    after = await db.fetch("SELECT device_id, time, stored_at FROM sensor_readings")
    assert len(after) == 1000
    assert set(before) <= set(after)


async def test_a_malformed_record_goes_to_the_dlq_without_stopping_the_batch(
    store: Store, db: asyncpg.Connection
) -> None:
    batch = records([enriched("dev-1", 0), enriched("dev-1", 1)])
    batch.insert(1, records([{"device_id": "dev-1"}], first_offset=99)[0])
    batch.insert(2, records([enriched("dev-1", 2, temperature="hot")], first_offset=98)[0])
    result = await store.step(batch)
    assert sorted(d["source_offset"] for d in result.dead_letters) == [98, 99]
    assert await db.fetchval("SELECT count(*) FROM sensor_readings") == 2


async def test_a_refused_row_early_in_a_long_batch_loses_none_of_the_rows_decoded_after_it(
    store: Store, db: asyncpg.Connection
) -> None:
    # Longer than one 512 KiB piece of the COPY: the server refuses row 100 while the rest of
    # the batch is still being decoded.
    readings = [enriched(f"dev-{m % 7}", m) for m in range(6000)]
    readings[100] = enriched("dev-2", 100, place="bad\x00place")
    batch = records(readings)
    batch[5800] = records([{"device_id": "dev-1"}], first_offset=5800)[0]
    result = await store.step(batch)
    assert sorted(d["source_offset"] for d in result.dead_letters) == [100, 5800]
    assert await db.fetchval("SELECT count(*) FROM sensor_readings") == 5998
