"""The limits of this machine, measured with the same data in the same run: Kafka's own Java
producer and consumer performance tools, binary COPY into the same hypertable, Mosquitto with
bare C clients, and the Python MQTT clients ingest could use."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import orjson
import psutil

from bench.harness import mqtt
from bench.harness.context import Bench
from bench.harness.parsing import parse_consumer_perf, parse_producer_perf
from bench.harness.report import Row
from bench.infra import (
    KAFKA,
    PRODUCER_COMPRESSION,
    connect_db,
    create_schema,
    create_topics,
    kafka_tool,
)
from bench.steps.mqtt_clients import CLIENTS
from services.store.writer import COLUMNS

# The services' producer settings (libs/common/kafka.py and settings.py), so the Java tool is
# measured doing what ingest, validate and enrich ask of Kafka.
PRODUCER_PROPS = (
    "acks=all",
    "enable.idempotence=true",
    f"compression.type={PRODUCER_COMPRESSION}",
    "linger.ms=5",
    "batch.size=524288",
)
COPY_BATCH = 5000  # store's batch_max_rows default: the same batches as the stage writes


async def kafka_tools(bench: Bench) -> None:
    n = bench.plan.kafka_perf_records
    topic = bench.names.topic("limit-kafka")
    await create_topics([topic])
    bench.topics.append(topic)
    payloads = bench.log_dir / "payloads.ndjson"
    payloads.write_bytes(b"\n".join(value for _, value, _ in bench.data.raw[:50_000]))
    output = await asyncio.to_thread(
        kafka_tool,
        "producer-perf",
        "--bootstrap-server",
        KAFKA,
        "--topic",
        topic,
        "--num-records",
        str(n),
        "--throughput",
        "-1",
        "--payload-file",
        str(payloads),
        # Keyed like the readings (by device), over as many keys as the fleet has devices.
        "--record-key-range",
        "500",
        "--key-distribution",
        "random",
        "--command-property",
        *PRODUCER_PROPS,
    )
    bench.add(
        Row(
            "limit.kafka_producer",
            "limit",
            f"Kafka producer-perf (Java, acks=all, idempotent, {PRODUCER_COMPRESSION})",
            parse_producer_perf(output),
            note=f"{n:,} readings",
        )
    )
    group = bench.names.group("consumer-perf")
    bench.groups.append(group)
    output = await asyncio.to_thread(
        kafka_tool,
        "consumer-perf",
        "--bootstrap-server",
        KAFKA,
        "--topic",
        topic,
        "--num-records",
        str(n),
        "--group",
        group,
        "--command-property",
        "isolation.level=read_committed",
    )
    _overall, fetching = parse_consumer_perf(output)
    bench.add(
        Row(
            "limit.kafka_consumer",
            "limit",
            "Kafka consumer-perf (Java, read_committed)",
            fetching,
            note="group join excluded",
        )
    )


async def pg_copy(bench: Bench) -> None:
    """Binary COPY of the store stage's own rows straight into a fresh copy of the hypertable."""
    schema = bench.names.schema("copy")
    bench.schemas.append(schema)
    await create_schema(schema)
    rows = bench.data.rows
    conn = await connect_db(schema, role="store")
    try:
        backend = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()"))
        cpu_before = _cpu(backend)
        started = time.perf_counter()
        for i in range(0, len(rows), COPY_BATCH):
            await conn.copy_records_to_table(
                "sensor_readings", records=rows[i : i + COPY_BATCH], columns=COLUMNS
            )
        seconds = time.perf_counter() - started
        cpu = _cpu(backend) - cpu_before
    finally:
        await conn.close()
    bench.add(
        Row(
            "limit.pg_copy",
            "limit",
            "PostgreSQL binary COPY into the hypertable (asyncpg)",
            len(rows) / seconds,
            cpu_per_1k=cpu / len(rows) * 1000,
            note=f"{len(rows):,} rows, {COPY_BATCH:,} a COPY; CPU = the server backend's",
        )
    )


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def mosquitto(bench: Bench) -> None:
    """Bare C publisher and subscriber, then each Python client, on pre-filled sessions."""
    n = bench.plan.mqtt_records
    lines = [value for _, value, _ in bench.data.raw[:n]]
    prefix = f"bench-{bench.names.run_id}"
    publish_rates: list[float] = []
    for client in ("c", *CLIENTS):
        client_id = f"{prefix}-{client}"
        topic_filter = f"{prefix}/{client}/#"
        mqtt.open_session(client_id, topic_filter)
        bench.mqtt_sessions.append(client_id)
        seconds = await mqtt.publish_all(f"{prefix}/{client}/readings", lines)
        publish_rates.append(n / seconds)
        bench.say(f"    queued {n:,} for {client} at {n / seconds:,.0f}/s")
        if client == "c":
            seconds = await asyncio.to_thread(
                mqtt.drain_session_c, client_id, topic_filter, n, bench.plan.stage_timeout_s
            )
            bench.add(
                Row(
                    "limit.mqtt_sub",
                    "limit",
                    "Mosquitto, bare C subscriber (mosquitto_sub, QoS 1)",
                    n / seconds,
                    note=f"{n:,} queued in a session; connect included",
                )
            )
        else:
            result = await asyncio.to_thread(_python_client, client, client_id, n)
            received, seconds = int(result["received"]), float(result["seconds"])
            rate = received / seconds if seconds > 0 else float("nan")
            bench.add(
                Row(
                    f"client.{client}",
                    "MQTT client",
                    f"{client} receiving (Python, QoS 1, ack on receipt)",
                    rate,
                    cpu_per_1k=float(result["cpu_s"]) / max(received, 1) * 1000,
                    reference="limit.mqtt_sub",
                    note="" if received >= n else f"incomplete: {received:,} of {n:,}",
                )
            )
    publish_rates.sort()
    bench.add(
        Row(
            "limit.mqtt_pub",
            "limit",
            "Mosquitto, bare C publisher (mosquitto_pub, QoS 1)",
            publish_rates[len(publish_rates) // 2],
            note=f"median of {len(publish_rates)} runs of {n:,}",
        )
    )


def _python_client(client: str, client_id: str, count: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.steps.mqtt_clients", client, client_id, str(count)],
        capture_output=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"{client} receiver exited {done.returncode}: {done.stderr[-400:]!r}")
    result: dict[str, float] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return result
