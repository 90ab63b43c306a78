"""The enrich stage's batch step: enriched outputs, and dead letters that name their reading."""

from __future__ import annotations

import orjson
from aiokafka import ConsumerRecord

from libs.common.models import DeadLetter, EnrichedReading
from services.enrich.registry import Device, DeviceRegistry
from services.enrich.service import make_step

TRACE = "0123456789abcdef0123456789abcdef"
VALIDATED = {
    "device_id": "dev-1",
    "time": "2026-11-27T05:00:00+00:00",
    "temperature": -19.6,
    "humidity": 53.0,
    "source": "mqtt",
    "received_at": "2026-11-27T05:00:01+00:00",
    "trace_id": TRACE,
}


def record(offset: int, value: bytes) -> ConsumerRecord:
    # As validate writes them: keyed by device_id, the lineage headers carried along.
    headers = [("source", b"mqtt"), ("trace_id", TRACE.encode())]
    return ConsumerRecord(
        "sensor-data-validated", 3, offset, 0, 0, b"dev-1", value, None, 5, len(value), headers
    )


def test_a_record_that_is_not_a_validated_reading_is_dead_lettered_with_trace_and_device() -> None:
    step = make_step(DeviceRegistry(), geohash_precision=6)
    result = step([record(7, b'{"device_id": "dev-1"'), record(8, orjson.dumps(VALIDATED))])

    (letter,) = [DeadLetter.model_validate(d) for d in result.dead_letters]
    assert (letter.trace_id, letter.device_id) == (TRACE, "dev-1")
    assert (letter.processing_stage.value, letter.error_type) == (
        "enrich",
        "MalformedValidatedRecord",
    )
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "sensor-data-validated",
        3,
        7,
    )
    assert letter.original_record == '{"device_id": "dev-1"'
    assert letter.error_message.startswith("not a validated reading: ")


def test_a_validated_reading_is_enriched_and_keeps_its_key_and_headers() -> None:
    registry = DeviceRegistry({"dev-1": Device("TH-200", "roof", "ops")})
    step = make_step(registry, geohash_precision=6)
    source = record(8, orjson.dumps(VALIDATED))
    (out,) = step([source]).outputs
    enriched = EnrichedReading.model_validate(orjson.loads(out.value))
    assert (enriched.model, enriched.heat_index) == ("TH-200", -19.6)
    assert (out.key, out.headers) == (source.key, source.headers)
