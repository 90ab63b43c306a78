"""Each stage alone, as the real service process, at saturation from a pre-filled input (a
Kafka topic, an MQTT session queue, or HTTP bodies sent as fast as the service takes them);
and the peers doing the same work in the same run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

from bench.harness import mqtt
from bench.harness.context import Bench, throughput_row
from bench.harness.report import Row
from bench.harness.stats import steady_throughput
from bench.infra import (
    KAFKA,
    MQTT_PLAIN_URL,
    MachineLoad,
    Proc,
    connect_db,
    create_schema,
    create_topics,
    free_port,
    produce,
    watch,
)

HTTP_BATCH = 1000  # readings per NDJSON body
HTTP_CONCURRENCY = 4  # bodies in flight, as a few gateways posting at once would


def pure_steps(bench: Bench, machine_busy: float) -> None:
    """The in-process ceiling: each stage's pure step alone, no Kafka, no database (timed while
    the dataset was made, so `machine_busy` is the machine's load then)."""
    names = {
        "validate": "validate step (make_step), in process",
        "enrich": "enrich step (make_step), in process",
        "store": "store to_row (decode + row), in process",
    }
    for stage, timing in bench.data.timings.items():
        bench.add(
            Row(
                f"pure.{stage}",
                "pure step",
                names[stage],
                timing.rate,
                cpu_per_1k=timing.cpu_per_1k,
                note=f"{timing.records:,} readings",
                machine_busy=machine_busy,
            )
        )


async def prepare(bench: Bench) -> None:
    """Topics pre-filled with the dataset at each stage's input, and the store's schema."""
    names = bench.names
    inputs = {"raw": bench.data.raw, "validated": bench.data.validated}
    inputs["enriched"] = bench.data.enriched
    scratch = ["out-validate", "out-enrich", "out-quix", "out-ingest-http", "out-ingest-mqtt"]
    topics = [names.topic(t) for t in [*inputs, *scratch, "dlq"]]
    await create_topics(topics)
    bench.topics.extend(topics)
    for what, records in inputs.items():
        seconds = await produce(names.topic(what), records)
        bench.say(f"    {names.topic(what)}: {len(records):,} records in {seconds:.1f} s")
    schema = names.schema("store")
    bench.schemas.append(schema)
    await create_schema(schema)
    await register_devices(bench, schema)


async def register_devices(bench: Bench, schema: str) -> None:
    conn = await connect_db(schema, role="admin_api")  # the registry's writer
    try:
        await conn.executemany(
            "INSERT INTO devices (device_id, model, site, owner) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT DO NOTHING",
            [(d, v.model, v.site, v.owner) for d, v in bench.data.devices.items()],
        )
    finally:
        await conn.close()


def env_for(bench: Bench, stage: str, group: str | None = None, **topics: str) -> dict[str, str]:
    names = bench.names
    group = group or names.group(stage)
    bench.groups.append(group)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA,
        "TOPIC_RAW": names.topic("raw"),
        "TOPIC_VALIDATED": names.topic("validated"),
        "TOPIC_ENRICHED": names.topic("enriched"),
        "TOPIC_DLQ": names.topic("dlq"),
        "DATABASE_SCHEMA": names.schema("store"),
        "CONSUMER_GROUP": group,
        "LOG_LEVEL": "INFO",
    }
    env.update({f"TOPIC_{k.upper()}": names.topic(v) for k, v in topics.items()})
    return env


async def measure(
    bench: Bench,
    proc: Proc,
    progress: Callable[[], Awaitable[int]],
    total: int,
    *,
    key: str,
    section: str,
    name: str,
    reference: str | None,
    service: str | None,
    load: Callable[[], Coroutine[Any, Any, None]] | None = None,
    note: str = "",
) -> Row:
    """Run `proc` until `total` records are done (or the timeout), then SIGTERM it."""
    proc.start()
    machine = MachineLoad()
    feeder: asyncio.Task[None] | None = None
    try:
        if load is not None:
            await proc.wait_ready()
            feeder = asyncio.create_task(load())
        samples = await watch(
            [proc],
            progress,
            total,
            timeout_s=bench.stage_timeout_s(),
            on_tick=bench.tick(name, total),
        )
    finally:
        if feeder is not None:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        code = proc.stop()
    if code not in (0, None):
        bench.say(f"[yellow]    {proc.name} exited {code}:[/yellow]\n{proc.log_tail(10)}")
    if service is not None:
        bench.note_rss(service, proc)
    busy = machine.busy_share()
    done = samples[-1].done if samples else 0
    measured = steady_throughput(samples, total)
    row = throughput_row(
        key,
        section,
        name,
        measured,
        reference=reference,
        done=done,
        total=total,
        note=note,
    )
    row.machine_busy = busy
    return bench.add(row)


async def kafka_stage(
    bench: Bench,
    stage: str,
    input_topic: str,
    *,
    label: str | None = None,
    extra_env: dict[str, str] | None = None,
    cwd: Path | None = None,
    **topics: str,
) -> Row:
    """`stage` draining `input_topic`; `label` names a variant (its own group, key and log);
    `cwd` another checkout whose code to run."""
    total = len(bench.data.raw)
    group = bench.names.group(label or stage)
    env = env_for(bench, stage, group, **topics) | (extra_env or {})
    proc = Proc(label or stage, f"services.{stage}", env, bench.log_dir, port=free_port())
    if cwd is not None:
        proc.cwd = cwd
    topic = bench.names.topic(input_topic)
    return await measure(
        bench,
        proc,
        lambda: bench.offsets.committed(group, topic),
        total,
        key=f"stage.{label or stage}",
        section="stage",
        name=f"{label or stage} service, from a pre-filled topic",
        reference="limit.pg_copy" if stage == "store" else "limit.kafka_consumer",
        service=stage,
    )


async def validate(bench: Bench) -> None:
    await kafka_stage(bench, "validate", "raw", validated="out-validate")


async def enrich(bench: Bench) -> None:
    await kafka_stage(bench, "enrich", "validated", enriched="out-enrich")


async def store(bench: Bench) -> None:
    await kafka_stage(bench, "store", "enriched")


async def ingest_http(bench: Bench) -> None:
    raw = bench.data.raw
    bodies = [
        b"\n".join(value for _, value, _ in raw[i : i + HTTP_BATCH])
        for i in range(0, len(raw), HTTP_BATCH)
    ]
    total = len(raw)
    env = env_for(bench, "ingest-http", raw="out-ingest-http") | {"MQTT_ENABLED": "false"}
    proc = Proc("ingest-http", "services.ingest", env, bench.log_dir, port=free_port())
    accepted = 0

    async def load() -> None:
        nonlocal accepted
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        url = f"http://127.0.0.1:{proc.port}/v1/readings"

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal accepted
            while not queue.empty():
                body = queue.get_nowait()
                response = await client.post(url, content=body)
                if response.status_code != 202:
                    raise RuntimeError(f"ingest answered {response.status_code}: {response.text}")
                accepted += int(response.json()["accepted"])

        limits = httpx.Limits(max_connections=HTTP_CONCURRENCY)
        async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
            await asyncio.gather(*(worker(client) for _ in range(HTTP_CONCURRENCY)))

    async def progress() -> int:
        return accepted

    await measure(
        bench,
        proc,
        progress,
        total,
        key="stage.ingest_http",
        section="stage",
        name=f"ingest over HTTP, NDJSON bodies of {HTTP_BATCH:,}",
        reference="limit.kafka_producer",
        service="ingest",
        load=load,
        note=f"{HTTP_CONCURRENCY} bodies in flight; the client runs on the same cores",
    )


async def ingest_mqtt(bench: Bench) -> None:
    """ingest draining its own persistent session, filled while it was away."""
    n = bench.plan.mqtt_records
    prefix = f"bench-{bench.names.run_id}-ingest"
    client_id = f"{prefix}-client"
    env = env_for(bench, "ingest-mqtt", raw="out-ingest-mqtt") | {
        "MQTT_CLIENT_ID": client_id,
        "MQTT_TOPIC": f"$share/ingest/{prefix}/sensors/+/readings",
        # A private topic prefix, which ingest's TLS account may not subscribe to.
        "MQTT_URL": MQTT_PLAIN_URL,
    }
    bench.mqtt_sessions.append(client_id)
    # Once to subscribe (the broker keeps the session), then away while the queue fills.
    first = Proc("ingest-mqtt-subscribe", "services.ingest", env, bench.log_dir, port=free_port())
    first.start()
    try:
        await first.wait_ready()
    finally:
        first.stop()
    lines = [value for _, value, _ in bench.data.raw[:n]]
    seconds = await mqtt.publish_all(f"{prefix}/sensors/sim/readings", lines)
    bench.say(f"    queued {n:,} readings for ingest in {seconds:.1f} s")
    topic = bench.names.topic("out-ingest-mqtt")
    proc = Proc("ingest-mqtt", "services.ingest", env, bench.log_dir, port=free_port())
    await measure(
        bench,
        proc,
        lambda: bench.offsets.end(topic),
        n,
        key="stage.ingest_mqtt",
        section="stage",
        name="ingest over MQTT, from a pre-filled session",
        reference="limit.mqtt_sub",
        service="ingest",
    )


async def quix_validate(bench: Bench) -> None:
    total = len(bench.data.raw)
    group = bench.names.group("quix-validate")
    env = env_for(bench, "quix-validate", validated="out-quix")
    proc = Proc("quix-validate", "bench.peers.quix_validate", env, bench.log_dir)
    topic = bench.names.topic("raw")
    await measure(
        bench,
        proc,
        lambda: bench.offsets.committed(group, topic),
        total,
        key="peer.quix_validate",
        section="peer",
        name="PEER Quix Streams validate (same rules)",
        reference="stage.validate",
        service=None,
        note="commit_interval 1 s",
    )


async def naive(bench: Bench) -> None:
    total = bench.plan.naive_records
    group = bench.names.group("naive")
    schema = bench.names.schema("naive")
    bench.schemas.append(schema)
    await create_schema(schema)
    await register_devices(bench, schema)
    env = env_for(bench, "naive") | {"DATABASE_SCHEMA": schema}
    proc = Proc("naive", "bench.peers.naive", env, bench.log_dir)
    topic = bench.names.topic("raw")
    await measure(
        bench,
        proc,
        lambda: bench.offsets.committed(group, topic),
        total,
        key="peer.naive",
        section="peer",
        name="PEER naive per-record, raw topic to table",
        reference=None,
        service=None,
        note=f"{total:,} readings",
    )
