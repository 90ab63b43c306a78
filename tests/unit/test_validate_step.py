"""The validate stage's batch step: outputs, dead letters and duplicates of one batch."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from aiokafka import ConsumerRecord

from libs.common.models import DeadLetter, ValidatedReading
from services.validate.dedup import Deduplicator
from services.validate.rules import load_rules
from services.validate.service import make_step

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


def record(offset: int, value: bytes, key: bytes | None = b"dev-1") -> ConsumerRecord:
    headers = [
        ("source", b"http"),
        ("received_at", NOW.isoformat().encode()),
        ("trace_id", f"trace-{offset}".encode()),
    ]
    return ConsumerRecord("sensor-data", 0, offset, 0, 0, key, value, None, len(value), 0, headers)


def good(ts: str) -> bytes:
    return orjson.dumps({"device_id": "dev-1", "timestamp": ts, "temperature": 20})


def test_a_batch_splits_into_valid_dead_and_duplicate_and_dedup_waits_for_success() -> None:
    dedup = Deduplicator(1000)
    step = make_step(load_rules(), dedup, max_future_skew_s=300, clock=lambda: NOW)
    batch = [
        record(0, good("2026-11-27T05:00:00Z")),
        record(1, good("2026-11-27T06:00:00+01:00")),  # same instant: a duplicate
        record(2, b"{oops"),
        record(3, good("2026-11-27T05:01:00Z")),
    ]
    result = step(batch)
    assert result.duplicates == 1
    outs = [ValidatedReading.model_validate(orjson.loads(o.value)) for o in result.outputs]
    assert [o.trace_id for o in outs] == ["trace-0", "trace-3"]
    assert all(o.source.value == "http" for o in outs)
    (dead,) = [DeadLetter.model_validate(d) for d in result.dead_letters]
    assert dead.original_record == "{oops" and dead.source_offset == 2
    assert dead.processing_stage.value == "validate" and dead.error_type == "NotJson"
    assert (dead.trace_id, dead.device_id) == ("trace-2", "dev-1")
    # Nothing is remembered until the outputs are acknowledged: a retried batch is not lost.
    assert len(dedup) == 0
    assert len(step(batch).outputs) == 2
    assert result.on_success is not None
    result.on_success()
    assert step(batch).outputs == []
