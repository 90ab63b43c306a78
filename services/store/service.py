"""The store stage wired up: enriched readings in, rows in `sensor_readings`, offsets committed
only after the database committed them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter

import asyncpg
import orjson
import structlog
from aiokafka import ConsumerRecord

from libs.common import metrics
from libs.common.db import close_pool, create_pool
from libs.common.errors import MalformedEnrichedRecord, StorageRejected
from libs.common.health import Readiness
from libs.common.models import Stage, dead_letter
from libs.common.retry import call_with_retry
from libs.common.runner import StepResult
from libs.common.service import STARTUP_WAIT_S, background, run_kafka_stage
from services.store.latency import observe_ages
from services.store.settings import StoreSettings
from services.store.silence import watch_silent_devices
from services.store.writer import COLUMNS, Row, prepare_connection, to_row, write_rows

log = structlog.get_logger(__name__)
_RECEIVED_AT = COLUMNS.index("received_at")


class Store:
    def __init__(self, pool: asyncpg.Pool, settings: StoreSettings, readiness: Readiness) -> None:
        self.pool = pool
        self.settings = settings
        self.readiness = readiness

    async def step(self, records: Sequence[ConsumerRecord]) -> StepResult:
        result = StepResult()
        rows: list[Row] = []
        sources: list[ConsumerRecord] = []
        decoded = self._decode(records, rows, sources, result)
        first = next(decoded, None)
        if first is None:
            return result
        started = time.perf_counter()
        written: list[Sequence[Row]] = []
        try:
            # Decoding goes on while the COPY streams: the server inserts what it has.
            # A DatabaseUnavailable escapes to the runner, which retries the whole batch.
            await write_rows(self.pool, chain((first,), decoded))
            written.append(rows)
        except StorageRejected:
            for _ in decoded:  # decodes what the failed COPY had not taken yet into rows
                pass
            await self._write(rows, sources, result, written)
        metrics.DB_WRITE_SECONDS.labels(Stage.STORE.value).observe(time.perf_counter() - started)
        self.readiness.set("database", True)
        self._observe_latency(written)
        return result

    def _decode(
        self,
        records: Sequence[ConsumerRecord],
        rows: list[Row],
        sources: list[ConsumerRecord],
        out: StepResult,
    ) -> Iterator[Row]:
        """Rows of the records that decode, kept in `rows` with their record in `sources`;
        the others go to `out` as dead letters."""
        for record in records:
            try:
                row = to_row(orjson.loads(record.value or b""))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
                malformed = MalformedEnrichedRecord(repr(e))
                out.dead_letters.append(dead_letter(malformed, stage=Stage.STORE, record=record))
                continue
            rows.append(row)
            sources.append(record)
            yield row

    async def _write(
        self,
        rows: list[Row],
        sources: list[ConsumerRecord],
        out: StepResult,
        written: list[Sequence[Row]],
    ) -> None:
        try:
            await write_rows(self.pool, rows)
            written.append(rows)
        except StorageRejected as error:
            if len(rows) == 1:
                letter = dead_letter(error, stage=Stage.STORE, record=sources[0])
                out.dead_letters.append(letter)
                return
            # One bad row fails the whole COPY: halve until it is found, write the rest.
            middle = len(rows) // 2
            await self._write(rows[:middle], sources[:middle], out, written)
            await self._write(rows[middle:], sources[middle:], out, written)

    def _observe_latency(self, written: list[Sequence[Row]]) -> None:
        # Only rows the database took: a refused one was never stored.
        now = datetime.now(UTC)
        for since, column in (("device_timestamp", 0), ("received_at", _RECEIVED_AT)):
            histogram = metrics.END_TO_END_SECONDS.labels(Stage.STORE.value, since)
            pick = itemgetter(column)
            observe_ages(histogram, now, chain.from_iterable(map(pick, rows) for rows in written))


async def run(settings: StoreSettings, stop: asyncio.Event) -> None:
    readiness = Readiness(settings.service_name, "kafka", "database", "pipeline")
    pool = await call_with_retry(
        lambda: create_pool(settings, size=settings.db_pool_size, init=prepare_connection),
        STARTUP_WAIT_S,
        name="database_connect",
    )
    readiness.set("database", True)
    store = Store(pool, settings, readiness)
    silence = watch_silent_devices(
        pool,
        settings.service_name,
        settings.silent_device_after_s,
        settings.silent_check_interval_s,
        stop,
    )
    try:
        async with background(silence):
            await run_kafka_stage(
                settings,
                stop,
                input_topic=settings.topic_enriched,
                output_topic=None,
                step=store.step,
                readiness=readiness,
                batch_max_wait_ms=settings.batch_max_wait_ms,
                max_records=settings.batch_max_rows,
            )
    finally:
        await close_pool(pool, settings.shutdown_timeout_s / 2)
