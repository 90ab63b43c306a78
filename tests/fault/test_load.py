"""Overload and backpressure: a burst of ten times the sustained rate into a store that cannot
write (its table locked). Consumers wait instead of buffering without bound, memory stays under
the ceilings below, and nothing is dropped. And QoS 1 readings published while no ingest
replica runs are delivered when one comes back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import httpx
import orjson

from tests.conftest import Names, connect_to_schema
from tests.e2e.processes import Chain
from tests.fault.conftest import DATABASE_URL, KAFKA, record_figures
from tests.fault.traffic import Traffic, send_mqtt, settle

STAGES = {"ingest": "ingest", "validate": "validate", "enrich": "enrich", "store": "store"}
SUSTAINED_RATE = 200.0
# Peak resident memory per service under the burst: each holds at most a bounded batch and
# Kafka's fetch buffers (enrich also its compact place index, ~10 MB; validate its duplicate
# memory, bounded by DEDUP_CAPACITY).
RSS_CEILING_MB = {"ingest": 200, "validate": 200, "enrich": 200, "store": 200}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def sample_rss(chain: Chain, stop: asyncio.Event, peaks: dict[str, float]) -> None:
    while not stop.is_set():
        for name, service in chain.services.items():
            if service.process.poll() is None:
                peaks[name] = max(peaks.get(name, 0.0), rss_mb(service.process.pid))
        await asyncio.sleep(0.2)


async def test_a_burst_into_a_blocked_store_is_absorbed_within_memory_ceilings(
    fault_names: Names, fault_db: asyncpg.Connection, fault_chain: Chain
) -> None:
    burst_rate = 10 * SUSTAINED_RATE
    traffic, messages = Traffic.make(int(burst_rate * 10), devices=200, seed=5)
    fault_chain.start_all(STAGES)
    stop = asyncio.Event()
    peaks: dict[str, float] = {}
    sampler = asyncio.create_task(sample_rss(fault_chain, stop, peaks))
    locker = await connect_to_schema(fault_names.schema(), DATABASE_URL)
    lock = locker.transaction()
    await lock.start()
    await locker.execute("LOCK TABLE sensor_readings IN ACCESS EXCLUSIVE MODE")
    began = time.monotonic()
    http_part, mqtt_part = messages[: len(messages) * 3 // 4], messages[len(messages) * 3 // 4 :]
    async with httpx.AsyncClient(timeout=60) as http:

        async def post_all() -> None:
            for start in range(0, len(http_part), 500):
                body = b"\n".join(http_part[start : start + 500])
                answer = await http.post(f"{fault_chain.ingest_url}/v1/readings", content=body)
                assert answer.status_code == 202, answer.text
                await asyncio.sleep(500 / burst_rate)

        await asyncio.gather(post_all(), send_mqtt(fault_chain, mqtt_part, burst_rate / 4, traffic))
    burst_s = round(time.monotonic() - began, 1)
    await asyncio.sleep(max(0.0, 20 - burst_s))  # the store stays blocked a while longer
    blocked_rows = await fault_db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    )
    await lock.rollback()
    await locker.close()
    outcome = await settle(fault_db, fault_names.dlq, KAFKA, traffic, timeout_s=180)
    stop.set()
    await sampler
    figures = outcome.figures(traffic) | {
        "burst_readings_per_s": burst_rate,
        "burst_s": burst_s,
        "writers_waiting_on_the_lock": blocked_rows,
        "peak_rss_mb": {k: round(v, 1) for k, v in peaks.items()},
        "rss_ceiling_mb": RSS_CEILING_MB,
    }
    record_figures("burst_into_blocked_store", figures)
    assert outcome.lost == 0 and outcome.unexpected == 0, figures
    assert outcome.bad_missing_from_dlq == 0, figures
    assert blocked_rows >= 1, "the store was not blocked: the test did not test backpressure"
    for name, ceiling in RSS_CEILING_MB.items():
        assert peaks[name] < ceiling, figures


async def test_readings_published_while_ingest_is_down_arrive_when_it_returns(
    fault_names: Names, fault_db: asyncpg.Connection, fault_chain: Chain
) -> None:
    fault_chain.start_all(STAGES)
    assert fault_chain.services["ingest"].terminate() == 0
    readings = [
        orjson.dumps({"device_id": f"late-{i % 5}", "timestamp": 1795755600 + i, "temperature": 20})
        for i in range(200)
    ]
    async with fault_chain.mqtt_client() as mq:
        for payload in readings:
            device = orjson.loads(payload)["device_id"]
            await mq.publish(fault_chain.mqtt_topic(device), payload, qos=1)
    fault_chain.start("ingest").wait_ready()
    async with asyncio.timeout(60):
        while await fault_db.fetchval("SELECT count(*) FROM sensor_readings") < len(readings):
            await asyncio.sleep(0.5)
    await asyncio.sleep(2)
    assert await fault_db.fetchval("SELECT count(*) FROM sensor_readings") == len(readings)
