"""A known stream of readings for the fault tests, sent the way a real device sends: MQTT QoS 1
and HTTP, each re-sent until the pipeline has acknowledged it, whatever is down meanwhile."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiomqtt
import asyncpg
import httpx
import orjson

from libs.common.models import DeadLetter
from tests.e2e.processes import Chain
from tests.integration.kafka_helpers import settle_and_read

BAD_KINDS = (
    lambda i: orjson.dumps(
        {"device_id": f"bad-{i}", "timestamp": 1795755600 + i, "temperature": 150 + i}
    ),
    lambda i: orjson.dumps(
        {"device_id": f"bad-{i}", "timestamp": 1795755600 + i, "humidity": f"wet-{i}"}
    ),
    lambda i: f"not json {i}".encode(),
    lambda i: orjson.dumps({"timestamp": 1795755600 + i, "temperature": i}),
)


@dataclass
class Traffic:
    """What was sent: valid unique readings, duplicates of them, and bad payloads."""

    valid: dict[tuple[str, datetime], bytes] = field(default_factory=dict)
    bad: set[bytes] = field(default_factory=set)
    duplicates: int = 0
    resends: int = 0
    http_503: int = 0
    # When Mosquitto acknowledged each MQTT payload (monotonic clock; the last time if sent
    # more than once).
    mqtt_acked_at: dict[bytes, float] = field(default_factory=dict)

    @classmethod
    def make(
        cls,
        count: int,
        devices: int = 20,
        bad_share: float = 0.05,
        duplicate_share: float = 0.03,
        seed: int = 7,
    ) -> tuple[Traffic, list[bytes]]:
        rng = random.Random(seed)
        traffic = cls()
        t0 = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
        messages: list[bytes] = []
        for i in range(count):
            roll = rng.random()
            if roll < bad_share:
                payload = BAD_KINDS[i % len(BAD_KINDS)](i)
                traffic.bad.add(payload)
            elif roll < bad_share + duplicate_share and traffic.valid:
                payload = rng.choice(list(traffic.valid.values()))
                traffic.duplicates += 1
            else:
                device = f"dev-{i % devices:03d}"
                when = t0 + timedelta(milliseconds=10 * i)
                payload = orjson.dumps(
                    {
                        "device_id": device,
                        "timestamp": when.isoformat(),
                        "temperature": round(15 + 10 * rng.random(), 2),
                        "humidity": round(30 + 50 * rng.random(), 1),
                        "pressure": 1000.0,
                        "location": {"latitude": 41.88, "longitude": -87.63},
                    }
                )
                traffic.valid[(device, when)] = payload
            messages.append(payload)
        return traffic, messages


async def send_mqtt(chain: Chain, messages: list[bytes], rate: float, traffic: Traffic) -> None:
    """Publish each message with QoS 1; after a lost connection, publish it again."""
    pending = list(messages)
    while pending:
        try:
            async with chain.mqtt_client(timeout=5) as client:
                while pending:
                    payload = pending[0]
                    device = _device(payload)
                    await client.publish(chain.mqtt_topic(device), payload, qos=1, timeout=5)
                    traffic.mqtt_acked_at[payload] = time.monotonic()
                    pending.pop(0)
                    await asyncio.sleep(1 / rate)
        except aiomqtt.MqttError:
            traffic.resends += 1
            await asyncio.sleep(0.5)


async def send_http(
    chain: Chain, messages: list[bytes], rate: float, traffic: Traffic, batch: int = 10
) -> None:
    """POST NDJSON batches; on a connection error or 503, send the same batch again."""
    async with httpx.AsyncClient(timeout=10) as http:
        for start in range(0, len(messages), batch):
            body = b"\n".join(messages[start : start + batch])
            while True:
                try:
                    answer = await http.post(f"{chain.ingest_url}/v1/readings", content=body)
                    if answer.status_code in (202, 400):
                        break
                    traffic.http_503 += 1
                except httpx.HTTPError:
                    traffic.resends += 1
                await asyncio.sleep(0.5)
            await asyncio.sleep(batch / rate)


def _device(payload: bytes) -> str:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "garbled"
    device = data.get("device_id") if isinstance(data, dict) else None
    return device if isinstance(device, str) and device else "anonymous"


@dataclass
class Outcome:
    stored: int
    lost: int
    unexpected: int
    dlq_records: int
    dlq_distinct: int
    bad_missing_from_dlq: int
    dlq_not_bad: int
    lost_sample: list[str] = field(default_factory=list)
    lost_payloads: list[bytes] = field(default_factory=list)
    bad_missing: list[bytes] = field(default_factory=list)

    def figures(self, traffic: Traffic) -> dict[str, object]:
        return {
            "sent_valid_unique": len(traffic.valid),
            "sent_bad": len(traffic.bad),
            "sent_duplicates": traffic.duplicates,
            "device_resends": traffic.resends,
            "http_503": traffic.http_503,
            "stored": self.stored,
            "lost": self.lost,
            "duplicated_in_table": self.unexpected,
            "dlq_records": self.dlq_records,
            "dlq_repeated": self.dlq_records - self.dlq_distinct,
            "bad_missing_from_dlq": self.bad_missing_from_dlq,
        } | ({"lost_sample": self.lost_sample} if self.lost_sample else {})


async def settle(
    db: asyncpg.Connection, topic_dlq: str, bootstrap: str, traffic: Traffic, timeout_s: float = 120
) -> Outcome:
    """Wait until the table holds every valid reading and the DLQ every bad one (or time out),
    then compare what arrived with what was sent."""
    want_rows = len(traffic.valid)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    dead: list[DeadLetter] = []
    while True:
        rows = await db.fetchval("SELECT count(*) FROM sensor_readings")
        dead = [
            DeadLetter.model_validate_json(r.value)
            for r in await settle_and_read(topic_dlq, timeout_s=10, bootstrap=bootstrap)
        ]
        originals = {d.original_record.encode() for d in dead}
        if (rows >= want_rows and traffic.bad <= originals) or loop.time() > deadline:
            break
        await asyncio.sleep(1)
    await asyncio.sleep(2)  # anything extra would arrive now
    stored = {
        (r["device_id"], r["time"])
        for r in await db.fetch("SELECT device_id, time FROM sensor_readings")
    }
    total = await db.fetchval("SELECT count(*) FROM sensor_readings")
    dead = [
        DeadLetter.model_validate_json(r.value)
        for r in await settle_and_read(topic_dlq, timeout_s=10, bootstrap=bootstrap)
    ]
    letters = [d.original_record.encode() for d in dead]
    lost = sorted(set(traffic.valid) - stored)
    return Outcome(
        lost_sample=[traffic.valid[key].decode() for key in lost[:5]],
        lost_payloads=[traffic.valid[key] for key in lost],
        bad_missing=sorted(traffic.bad - set(letters)),
        stored=total,
        lost=len(set(traffic.valid) - stored),
        unexpected=total - len(stored & set(traffic.valid)),
        dlq_records=len(letters),
        dlq_distinct=len(set(letters)),
        bad_missing_from_dlq=len(traffic.bad - set(letters)),
        dlq_not_bad=len(set(letters) - traffic.bad),
    )
