"""The whole chain as separate processes: MQTT and HTTP in, rows in TimescaleDB and reasons in
the DLQ out, through the real Kafka, Mosquitto and PostgreSQL of the local stack."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from libs.common.metrics import sample_sum
from libs.common.models import DeadLetter, EnrichedReading
from tests.conftest import Names
from tests.e2e.processes import Chain
from tests.integration.kafka_helpers import read_topic, settle_and_read

pytestmark = pytest.mark.e2e

T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)


def iso(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def f_to_c(f: float) -> float:
    return (f - 32) * 5 / 9


@pytest.fixture
def chain(topics: Names, schema: str, tmp_path: Path) -> Iterator[Chain]:
    chain = Chain(topics.run_id, topics.env(), tmp_path)
    try:
        chain.start_all(
            {
                "ingest": "ingest",
                "validate-1": "validate",
                "validate-2": "validate",
                "enrich": "enrich",
                "store": "store",
            }
        )
        yield chain
    finally:
        codes = chain.stop_all()
        assert codes == dict.fromkeys(codes, 0), "every service exits 0 on SIGTERM"


async def test_a_known_mix_ends_as_exactly_the_valid_unique_rows_and_the_bad_in_the_dlq(
    topics: Names, db: asyncpg.Connection, chain: Chain
) -> None:
    await db.execute(
        "INSERT INTO devices (device_id, model, site, owner) VALUES ($1, $2, $3, $4)",
        "e2e-a",
        "TH-200",
        "berlin-roof",
        "ops",
    )
    await asyncio.sleep(1.5)  # one registry refresh
    berlin = {"latitude": 52.52, "longitude": 13.40}
    # NWS heat index chart (shared/data/heat_index): 90 F at 50 % RH -> 95 F.
    v1 = {
        "device_id": "e2e-a",
        "timestamp": iso(0),
        "temperature": f_to_c(90),
        "humidity": 50,
        "pressure": 1010.0,
        "location": berlin,
    }
    # NOAA dew point calculator (weather.gov/epz/wxcalc_dewpoint): 30 C at 80 % RH -> 26.2 C.
    v2 = {
        "device_id": "e2e-a",
        "timestamp": iso(1),
        "temperature": 30,
        "humidity": 80,
        "location": berlin,
    }
    v3 = {
        "device_id": "e2e-b",
        "timestamp": T0.timestamp() + 120,
        "temperature": 18.0,
        "pressure": 990,
    }
    v4 = {
        "device_id": "e2e-c",
        "timestamp": int(T0.timestamp() * 1000) + 180_000,
        "temperature": "21.5",
        "humidity": "40",
        "co2": 415,
    }
    # A Chicago winter reading: the NWS/WPC calculator's heat index at or below 40 F is the air
    # temperature itself (it was once stored 4.5 C below it).
    v5 = {"device_id": "e2e-a", "timestamp": iso(4), "temperature": -19.6, "humidity": 53}
    http_valid = [
        {"device_id": f"e2e-{d}", "timestamp": iso(m), "temperature": 20 + m, "humidity": 50}
        for d in ("d", "e")
        for m in (10, 11)
    ]
    mqtt_messages = [
        ("e2e-a", orjson.dumps(v1)),
        ("e2e-a", orjson.dumps(v2)),
        ("e2e-b", orjson.dumps(v3)),
        ("e2e-c", orjson.dumps(v4)),
        ("e2e-a", orjson.dumps(v5)),
        ("e2e-a", orjson.dumps(v1)),  # duplicate of v1
        ("e2e-x", b"hello, not json"),
        ("e2e-x", b'{"timestamp": 1, "temperature": 20}'),
        ("e2e-x", orjson.dumps({"device_id": "e2e-x", "timestamp": iso(5), "temperature": 150})),
        (
            "e2e-x",
            orjson.dumps(
                {"device_id": "e2e-x", "timestamp": iso(6), "humidity": "wet", "pressure": True}
            ),
        ),
        ("e2e-x", b'{"device_id": "e2e-x", "timestamp": 1, "temperature": NaN}'),
    ]
    async with chain.mqtt_client() as mq:
        for device, payload in mqtt_messages:
            await mq.publish(chain.mqtt_topic(device), payload, qos=1)

    ingest = chain.services["ingest"].url
    async with httpx.AsyncClient(timeout=30) as http:
        array = http_valid[:2] + [
            {"device_id": "e2e-y", "timestamp": iso(7), "temperature": "NaN"},
            {"timestamp": iso(8), "temperature": 10},
        ]
        first = await http.post(f"{ingest}/v1/readings", content=orjson.dumps(array))
        ndjson = b"\n".join(orjson.dumps(r) for r in http_valid[2:]) + b"\n{broken\n"
        second = await http.post(
            f"{ingest}/v1/readings",
            content=ndjson,
            headers={"content-type": "application/x-ndjson"},
        )
        # A duplicate of an HTTP reading, same instant written with another offset.
        same_instant = dict(
            http_valid[0],
            timestamp=(T0 + timedelta(minutes=10))
            .astimezone(__import__("datetime").timezone(timedelta(hours=2)))
            .isoformat(),
        )
        third = await http.post(f"{ingest}/v1/readings", content=orjson.dumps(same_instant))
        too_large = await http.post(f"{ingest}/v1/readings", content=b" " * (10 * 1024 * 1024 + 1))
    assert first.status_code == 202 and first.json()["accepted"] == 3
    assert first.json()["rejected"] == [
        {
            "index": 3,
            "error_type": "MissingDeviceId",
            "reasons": ["device_id is required and must be non-empty text"],
        }
    ]
    assert second.status_code == 202 and second.json()["accepted"] == 2
    assert [r["error_type"] for r in second.json()["rejected"]] == ["NotJson"]
    assert third.status_code == 202
    assert too_large.status_code == 413 and "larger than" in too_large.json()["error"]

    expected_rows = 9
    async with asyncio.timeout(60):
        while await db.fetchval("SELECT count(*) FROM sensor_readings") < expected_rows:
            await asyncio.sleep(0.25)
    dead = [
        DeadLetter.model_validate(orjson.loads(r.value)) for r in await read_topic(topics.dlq, 8)
    ]
    await asyncio.sleep(2)  # anything extra would have arrived by now

    rows = {
        (r["device_id"], r["time"]): dict(r)
        for r in await db.fetch("SELECT * FROM sensor_readings")
    }
    expected_keys = {
        ("e2e-a", T0),
        ("e2e-a", T0 + timedelta(minutes=1)),
        ("e2e-b", T0 + timedelta(minutes=2)),
        ("e2e-c", T0 + timedelta(minutes=3)),
        ("e2e-a", T0 + timedelta(minutes=4)),
    } | {(f"e2e-{d}", T0 + timedelta(minutes=m)) for d in ("d", "e") for m in (10, 11)}
    assert set(rows) == expected_keys

    r1, r2 = rows[("e2e-a", T0)], rows[("e2e-a", T0 + timedelta(minutes=1))]
    assert abs(r1["heat_index"] - f_to_c(95)) <= 0.5
    assert abs(r2["dew_point"] - 26.2) <= 0.5
    assert (r1["device_known"], r1["model"], r1["site"], r1["owner"]) == (
        True,
        "TH-200",
        "berlin-roof",
        "ops",
    )
    assert (r1["country_code"], r1["source"]) == ("DE", "mqtt")
    assert r1["geohash"].startswith("u33d")  # Berlin Mitte's geohash cell
    r3 = rows[("e2e-b", T0 + timedelta(minutes=2))]
    assert r3["humidity"] is None and r3["dew_point"] is None and r3["heat_index"] is None
    assert r3["device_known"] is False and r3["model"] is None and r3["latitude"] is None
    r4 = rows[("e2e-c", T0 + timedelta(minutes=3))]
    assert (r4["temperature"], r4["humidity"]) == (21.5, 40.0)
    assert orjson.loads(r4["extra"]) == {"co2": 415.0}
    r5 = rows[("e2e-a", T0 + timedelta(minutes=4))]
    assert (r5["temperature"], r5["heat_index"]) == (-19.6, -19.6)
    http_rows = [r for (d, _), r in rows.items() if d in ("e2e-d", "e2e-e")]
    assert {r["source"] for r in http_rows} == {"http"}
    assert all(r["trace_id"] and r["received_at"] <= r["stored_at"] for r in rows.values())
    for row in rows.values():
        EnrichedReading.model_validate(row | {"time": row["time"], "extra": {}})
        assert row["heat_index"] is None or math.isfinite(row["heat_index"])

    by_stage = sorted((d.processing_stage.value, d.error_type) for d in dead)
    assert by_stage == sorted(
        [
            ("ingest", "NotJson"),
            ("ingest", "MissingDeviceId"),
            ("ingest", "NotJson"),
            ("ingest", "MissingDeviceId"),
            ("ingest", "NotJson"),
            ("validate", "RuleViolation"),
            ("validate", "SchemaViolation"),
            ("validate", "SchemaViolation"),
        ]
    )
    reasons = {r for d in dead for r in d.reasons}
    assert "temperature out of range: 150.0 (allowed -50 .. 100)" in reasons
    assert {
        "humidity must be a number, got 'wet'",
        "pressure must be a number, got bool",
    } <= reasons
    assert "temperature must be a finite number, got 'NaN'" in reasons
    assert "not valid JSON: NaN is not a JSON number" in reasons
    assert any(d.original_record == "hello, not json" for d in dead)
    assert len(await settle_and_read(topics.dlq)) == 8

    # Two validate replicas share the partitions: each took part of the stream.
    taken = [
        sample_sum(chain.services[n].metrics(), "pipeline_messages_in_total", stage="validate")
        for n in ("validate-1", "validate-2")
    ]
    assert sum(taken) >= 12 and all(t > 0 for t in taken), taken
    dropped = sum(
        sample_sum(chain.services[n].metrics(), "pipeline_duplicates_dropped_total")
        for n in ("validate-1", "validate-2")
    )
    assert dropped == 2
