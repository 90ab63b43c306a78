"""PEER, not the product: the naive baseline, the original design's per-record style.

Raw readings from Kafka to rows in the table in one process, one record at a time: one JSON
decode (the standard library's json), one validation (the pydantic model RawReading plus the
rules' ranges), the same derived fields as enrich, and one INSERT ... ON CONFLICT DO NOTHING
per record, autocommitted. Offsets are committed after each fetched batch. This is the figure
the batched, staged pipeline is meant to beat. `python -m bench.peers.naive`; settings from the
services' environment variables (TOPIC_RAW, CONSUMER_GROUP, DATABASE_SCHEMA, DATABASE_URL;
without it, the registry is read as enrich's role and the rows written as store's).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from libs.common.db import connect
from libs.common.lifecycle import run
from libs.common.models import HEADER_RECEIVED_AT, HEADER_SOURCE, HEADER_TRACE_ID, RawReading
from libs.common.settings import ConsumerSettings
from services.enrich import geo
from services.enrich.enricher import enrich
from services.enrich.registry import DeviceRegistry
from services.store.writer import COLUMNS, to_row
from services.validate.rules import Rules, load_rules

_INSERT = (
    f"INSERT INTO sensor_readings ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(COLUMNS)))}) "
    "ON CONFLICT (device_id, time) DO NOTHING"
)


def check(payload: bytes, headers: dict[str, bytes], rules: Rules) -> dict[str, Any] | None:
    """The reading as a validated dict, or None when it breaks the model or a rule."""
    try:
        reading = RawReading.model_validate(json.loads(payload))
    except (ValueError, ValidationError):
        return None
    stamp = reading.timestamp
    if isinstance(stamp, str):
        when = datetime.fromisoformat(stamp)
    else:
        when = datetime.fromtimestamp(stamp / 1000 if stamp >= 1e11 else stamp, tz=UTC)
    data = reading.model_dump()
    for name, bounds in rules.ranges.items():
        value = data.get(name)
        if value is not None and not bounds.min <= value <= bounds.max:
            return None
    location = reading.location
    return {
        "device_id": reading.device_id,
        "time": when.astimezone(UTC).isoformat(),
        "temperature": reading.temperature,
        "humidity": reading.humidity,
        "pressure": reading.pressure,
        "latitude": location.latitude if location else None,
        "longitude": location.longitude if location else None,
        "message_id": reading.message_id,
        "schema_version": None if reading.schema_version is None else str(reading.schema_version),
        "extra": {},
        "source": headers.get(HEADER_SOURCE, b"batch").decode(),
        "received_at": headers.get(HEADER_RECEIVED_AT, b"").decode() or None,
        "trace_id": headers.get(HEADER_TRACE_ID, b"").decode() or None,
    }


async def main(settings: ConsumerSettings, stop: asyncio.Event) -> None:
    rules = load_rules()
    await asyncio.to_thread(geo.preload)
    # As the roles of least privilege the stages have: the registry read as enrich, the rows
    # written as store (one DATABASE_URL, if set, for both).
    registry_conn = await connect(settings.model_copy(update={"database_role": "enrich"}))
    registry = DeviceRegistry()
    try:
        # A Connection has fetch() as a Pool does, which is all load() uses.
        await registry.load(registry_conn)
    finally:
        await registry_conn.close()
    conn = await connect(settings.model_copy(update={"database_role": "store"}))
    consumer = AIOKafkaConsumer(
        settings.topic_raw,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            for records in batches.values():
                for record in records:
                    reading = check(record.value or b"", dict(record.headers or ()), rules)
                    if reading is None:
                        continue
                    row = to_row(enrich(reading, registry, geo.DEFAULT_PRECISION))
                    await conn.execute(_INSERT, *row)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
        await conn.close()


if __name__ == "__main__":
    settings = ConsumerSettings(service_name="naive")
    run(lambda stop: main(settings, stop))
