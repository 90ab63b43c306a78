"""store's pure parts: an enriched reading to a row in COPY order (or a dead letter), and the
batch latency."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import cast

import asyncpg
import orjson
import pytest
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry, Histogram

from libs.common.health import Readiness
from libs.common.metrics import LATENCY_BUCKETS
from libs.common.models import DeadLetter
from services.store.latency import observe_ages
from services.store.service import Store
from services.store.settings import StoreSettings
from services.store.writer import COLUMNS, to_row

READING = {
    "device_id": "dev-1",
    "time": "2026-11-27T05:00:00+00:00",
    "source": "mqtt",
    "received_at": "2026-11-27T05:00:01.250000+00:00",
    "trace_id": "t-1",
    "temperature": 21.5,
    "humidity": 40.2,
    "pressure": 1013.2,
    "latitude": 52.52,
    "longitude": 13.4,
    "message_id": "m-1",
    "schema_version": "1",
    "extra": {"co2": 415.0},
    "heat_index": 21.1,
    "dew_point": 7.4,
    "device_known": True,
    "model": "TH-200",
    "site": "site-00",
    "owner": "ops",
    "country_code": "DE",
    "country": "Germany",
    "region": "Berlin",
    "place": "Mitte",
    "geohash": "u33dc0",
}


def test_a_row_holds_every_column_in_copy_order() -> None:
    row = dict(zip(COLUMNS, to_row(READING), strict=True))
    assert row["time"] == datetime(2026, 11, 27, 5, tzinfo=UTC)
    assert row["received_at"] == datetime(2026, 11, 27, 5, 0, 1, 250000, tzinfo=UTC)
    assert row["extra"] == '{"co2":415.0}'
    for column in set(COLUMNS) - {"time", "received_at", "extra"}:
        assert row[column] == READING[column], column


def test_missing_optional_fields_stay_null_and_an_empty_extra_is_null() -> None:
    sparse = {k: READING[k] for k in ("device_id", "time", "source", "received_at")}
    row = dict(zip(COLUMNS, to_row(sparse | {"extra": {}}), strict=True))
    assert row["temperature"] is None and row["extra"] is None and row["model"] is None
    assert row["device_known"] is False


@pytest.mark.parametrize("missing", [{"time": None}, {"device_id": ""}, {"device_id": None}])
def test_a_reading_without_time_or_device_is_malformed(missing: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        to_row(READING | missing)


def test_a_time_that_is_not_a_timestamp_is_malformed() -> None:
    with pytest.raises(ValueError):
        to_row(READING | {"time": "yesterday"})
    with pytest.raises(TypeError):
        to_row(READING | {"received_at": 5})


async def test_a_record_that_is_not_an_enriched_reading_is_dead_lettered_with_trace_and_device():
    # Nothing in this batch decodes, so the step never reaches for the database (there is none).
    store = Store(cast(asyncpg.Pool, None), StoreSettings(), Readiness("store", "database"))
    headers = [("source", b"mqtt"), ("trace_id", b"t-1")]
    malformed = orjson.dumps(READING | {"time": "yesterday"})
    source = ConsumerRecord(
        "sensor-data-enriched", 1, 12, 0, 0, b"dev-1", malformed, None, 5, len(malformed), headers
    )
    result = await store.step([source])
    (letter,) = [DeadLetter.model_validate(d) for d in result.dead_letters]
    assert (letter.trace_id, letter.device_id) == ("t-1", "dev-1")
    assert (letter.processing_stage.value, letter.error_type) == (
        "store",
        "MalformedEnrichedRecord",
    )
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "sensor-data-enriched",
        1,
        12,
    )
    assert letter.original_record == malformed.decode()


def _exposed(histogram: Histogram) -> dict[str, float]:
    return {
        f"{s.name}{s.labels.get('le', '')}": s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_a_batch_observed_at_once_exports_what_one_observation_a_row_would() -> None:
    now = datetime(2026, 11, 27, 5, tzinfo=UTC)
    rng = random.Random(7)
    # Ages spread over every bucket, some in the future (counted as 0), none on a bound.
    ages = [rng.uniform(-2, 400) for _ in range(3000)] + [0.0003, 61.0, 299.9]
    stamps = [now - timedelta(seconds=age) for age in ages]
    one_by_one = Histogram("a", "a", registry=CollectorRegistry(), buckets=LATENCY_BUCKETS)
    for stamp in stamps:
        one_by_one.observe(max(0.0, (now - stamp).total_seconds()))
    batched = Histogram("a", "a", registry=CollectorRegistry(), buckets=LATENCY_BUCKETS)
    observe_ages(batched, now, iter(stamps))
    expected, got = _exposed(one_by_one), _exposed(batched)
    assert got.keys() == expected.keys()
    # The counts are exact; the sum within a microsecond a row (a float sum of epoch seconds).
    assert got.pop("a_sum") == pytest.approx(expected.pop("a_sum"), abs=1e-6 * len(ages))
    assert got == expected


def test_an_empty_batch_observes_nothing() -> None:
    histogram = Histogram("a", "a", registry=CollectorRegistry(), buckets=LATENCY_BUCKETS)
    observe_ages(histogram, datetime.now(UTC), [])
    assert _exposed(histogram)["a_count"] == 0
