"""The benchmark's I/O helpers: private topics and schemas, fast pre-filling, offset probes, the
services as measured processes, and Kafka's own command-line tools."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from bench.harness.parsing import runs_from_stack
from bench.harness.stats import Sample
from libs.common.db import connect, migrate
from libs.common.db_accounts import LOCAL_HOST, LOCAL_PORT
from libs.common.settings import PipelineSettings
from services.ingest.settings import IngestSettings
from tools import names
from tools.processes import ProcessError, ServiceProcess
from tools.processes import free_port as free_port  # re-exported: bench modules import it here

REPO_ROOT = Path(__file__).resolve().parents[1]
# The servers the services would use, from their own settings classes (the same variables and
# defaults), never from copies here.
_SETTINGS = IngestSettings()
KAFKA = _SETTINGS.kafka_bootstrap_servers
# What the services' producers compress with (PRODUCER_COMPRESSION or the default), so the
# pre-filled topics and the Java producer's limit are what the stages see and do.
PRODUCER_COMPRESSION = _SETTINGS.producer_compression
# Where PostgreSQL is: DATABASE_URL's host and port if set, else the local stack's. Each client
# here connects as its role of least privilege (connect_db), as the services do.
_DB = urlsplit(_SETTINGS.database_url.get_secret_value()) if _SETTINGS.database_url else None
DATABASE_ADDRESS = (
    (_DB.hostname or LOCAL_HOST, _DB.port or LOCAL_PORT) if _DB else (LOCAL_HOST, LOCAL_PORT)
)
_MQTT = urlsplit(_SETTINGS.mqtt_url)
MQTT_HOST = _MQTT.hostname or "127.0.0.1"
# The benchmark's own clients publish (and subscribe) where devices do: the anonymous
# plaintext listener (MQTT_PORT, as stack.sh's), not ingest's TLS one with accounts.
MQTT_PORT = int(os.environ.get("MQTT_PORT", "1883"))
# An ingest on a benchmark's private topic prefix: ingest's broker account may subscribe only
# to the real shared subscription, so such an ingest listens on the plaintext listener.
MQTT_PLAIN_URL = f"mqtt://{MQTT_HOST}:{MQTT_PORT}"
# As in production (tools/setup.py's default): the stages' parallelism is per partition.
PARTITIONS = 6
KAFKA_TOOL = REPO_ROOT / "deploy" / "local" / "kafka-tool.sh"

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]  # key, value, headers


@dataclass(frozen=True, slots=True)
class Names(names.Names):
    """The shared per-run names under the prefix `bench`: bench-<run_id>-<what>, ..."""

    prefix: str = "bench"


# ---------------------------------------------------------------------------------------- Kafka


async def create_topics(topics: Iterable[str], partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA, client_id="bench-admin")
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
        )
    finally:
        await admin.close()


async def delete_topics(topics: Sequence[str]) -> None:
    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA, client_id="bench-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [t for t in topics if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def produce(topic: str, records: Sequence[Record], partitions: int = PARTITIONS) -> float:
    """Write `records` to `topic` as fast as aiokafka allows; returns the seconds it took.

    Records are placed by the Java client's partitioner (murmur2 of the key), as the services'
    producers do, and sent as whole batches rather than one send() each: this is set-up, not
    a figure, and should take as little of the run's time as it can.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=KAFKA,
        acks="all",
        compression_type=PRODUCER_COMPRESSION,
        linger_ms=20,
        max_batch_size=1024 * 1024,
        client_id="bench-prefill",
    )
    await producer.start()
    started = time.perf_counter()
    try:
        all_partitions = list(range(partitions))
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for record in records:
            by_partition[DefaultPartitioner()(record[0], all_partitions, all_partitions)].append(
                record
            )
        pending: list[asyncio.Future[object]] = []
        for partition, items in by_partition.items():
            batch = producer.create_batch()
            for key, value, headers in items:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=partition))
            # Bound what is queued in memory: wait for a partition's batches before the next.
            await asyncio.gather(*pending)
            pending.clear()
    finally:
        await producer.stop()
    return time.perf_counter() - started


class Offsets:
    """Cheap probes of how far a topic was written and how far a group has committed."""

    def __init__(self) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA, client_id="bench-probe")
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=KAFKA, enable_auto_commit=False, client_id="bench-probe"
        )
        self._partitions: dict[str, list[TopicPartition]] = {}

    async def start(self) -> None:
        await self._admin.start()
        await self._consumer.start()

    async def close(self) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def _tps(self, topic: str) -> list[TopicPartition]:
        if topic not in self._partitions:
            parts = self._consumer.partitions_for_topic(topic)
            if not parts:
                await self._consumer._client.force_metadata_update()  # noqa: SLF001
                parts = self._consumer.partitions_for_topic(topic) or set()
            self._partitions[topic] = [TopicPartition(topic, p) for p in sorted(parts)]
        return self._partitions[topic]

    async def end(self, topic: str) -> int:
        """Sum over partitions of the end offsets: records written (plus any txn markers)."""
        ends = await self._consumer.end_offsets(await self._tps(topic))
        return int(sum(ends.values()))

    async def committed(self, group: str, topic: str) -> int:
        try:
            offsets = await self._admin.list_consumer_group_offsets(group)
        except KafkaError:
            return 0
        return sum(max(0, o.offset) for tp, o in offsets.items() if tp.topic == topic)


def kafka_tool(*args: str, timeout_s: float = 300.0) -> str:
    """Run one of Kafka's own tools from the jars (deploy/local/kafka-tool.sh); its stdout."""
    done = subprocess.run(
        ["bash", str(KAFKA_TOOL), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kafka-tool {args[0]} exited {done.returncode}: {done.stderr[-800:]}")
    return done.stdout


def delete_groups(groups: Sequence[str]) -> None:
    if groups:
        args = ["consumer-groups", "--bootstrap-server", KAFKA, "--delete"]
        for group in groups:
            args += ["--group", group]
        try:
            kafka_tool(*args, timeout_s=120)
        except RuntimeError:
            # A group that never committed does not exist; the others are gone all the same.
            pass


# ------------------------------------------------------------------------------------ database


async def connect_db(schema: str | None = None, role: str = "reader") -> asyncpg.Connection:
    """A connection as `role` (DATABASE_URL if set), TLS verified, in `schema` (else public):
    reader to read results, migrator for schemas, store and admin_api to pre-fill."""
    settings = PipelineSettings(
        service_name="bench", database_role=role, database_schema=schema or "public"
    )
    return await connect(settings)


async def create_schema(schema: str) -> None:
    conn = await connect_db(role="migrator")
    try:
        await migrate(conn, schema)
    finally:
        await conn.close()


async def drop_schemas(schemas: Sequence[str]) -> None:
    if not schemas:
        return
    conn = await connect_db(role="migrator")
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


# ----------------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A measured process: a service or a peer, started with `python -m <module>` by the shared
    helper (tools/processes.py); this adds what it cost in CPU and memory."""

    name: str
    module: str
    env: dict[str, str]
    log_dir: Path
    port: int | None = None
    peak_rss: int = 0
    # Where `python -m` finds the module: another checkout runs that checkout's code.
    cwd: Path = REPO_ROOT
    _service: ServiceProcess | None = field(default=None, repr=False)
    _ps: psutil.Process | None = field(default=None, repr=False)

    def start(self) -> Proc:
        self._service = ServiceProcess(
            self.name,
            self.module,
            self.log_dir / f"{self.name}.log",
            env=self.env,
            port=self.port,
            # ingest's HTTPS port too is the run's own, so it never meets `make run`'s 8443.
            https_port=free_port() if self.module == "services.ingest" else None,
            cwd=self.cwd,
            append_log=True,
        ).start()
        assert self._service.popen is not None
        self._ps = psutil.Process(self._service.popen.pid)
        return self

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._service.popen if self._service else None

    @property
    def alive(self) -> bool:
        return self._service is not None and self._service.alive

    def usage(self) -> tuple[float, int]:
        """CPU seconds so far and resident bytes now (0, 0 once it has exited)."""
        if self._ps is None:
            return 0.0, 0
        try:
            with self._ps.oneshot():
                cpu = self._ps.cpu_times()
                rss = int(self._ps.memory_info().rss)
        except psutil.Error:
            return 0.0, 0
        self.peak_rss = max(self.peak_rss, rss)
        return cpu.user + cpu.system, rss

    def log_tail(self, lines: int = 30) -> str:
        return self._service.log_tail(lines) if self._service else ""

    async def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Until /readyz answers 200 (services) or, without a port, until the process runs."""
        assert self._service is not None
        try:
            await self._service.wait_ready(timeout_s)
        except ProcessError as error:
            raise RuntimeError(f"{error}:\n{self.log_tail()}") from None

    async def metrics(self) -> str:
        assert self._service is not None
        return await self._service.metrics()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, as an orchestrator would; SIGKILL only if it does not drain in time."""
        return self._service.stop_sync(timeout_s).code if self._service else None


async def watch(
    procs: Sequence[Proc],
    progress: Callable[[], Awaitable[int]],
    total: int,
    *,
    timeout_s: float,
    interval_s: float = 0.1,
    on_tick: Callable[[int, float], None] | None = None,
) -> list[Sample]:
    """Sample progress, CPU and RSS of `procs` every `interval_s` until `total` is done.

    Returns the samples; stops early (with what it has) when the timeout passes or a process
    exits, so a broken stage costs the run at most `timeout_s`.
    """
    samples: list[Sample] = []
    started = time.monotonic()
    last_tick = started
    while True:
        done = await progress()
        usage = [p.usage() for p in procs]
        now = time.monotonic()
        samples.append(Sample(now, done, sum(u[0] for u in usage), sum(u[1] for u in usage)))
        if on_tick is not None and now - last_tick >= 2.0:
            on_tick(done, now - started)
            last_tick = now
        if done >= total or now - started > timeout_s or not all(p.alive for p in procs):
            return samples
        await asyncio.sleep(interval_s)


def server_processes() -> dict[str, list[psutil.Process]]:
    """This checkout's servers (`make up` runs them from .stack/), by what they are, to charge
    them their CPU. Another checkout's stack on the same machine is someone else's load."""
    stack = str(REPO_ROOT / ".stack")
    found: dict[str, list[psutil.Process]] = {"kafka": [], "postgres": [], "mosquitto": []}
    for process in psutil.process_iter(["name", "cmdline"]):
        name = process.info["name"] or ""
        cmdline = " ".join(process.info["cmdline"] or ())
        if not runs_from_stack(cmdline, stack):
            continue
        if name == "java" and "kafka.Kafka" in cmdline:
            found["kafka"].append(process)
        elif name == "mosquitto":
            found["mosquitto"].append(process)
        elif name == "postgres":
            # The postmaster names the data directory; its backends and workers do not.
            found["postgres"].append(process)
            found["postgres"].extend(process.children(recursive=True))
    return found


@contextlib.contextmanager
def checkout_of(ref: str | None) -> Iterator[Path | None]:
    """The code of commit `ref` in a temporary git worktree (None: no `ref`), removed after."""
    if ref is None:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="bench-base-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], check=False)


class MachineLoad:
    """How busy the whole machine was between two calls: other people's work included."""

    def __init__(self) -> None:
        self._last = psutil.cpu_times()

    def busy_share(self) -> float:
        now = psutil.cpu_times()
        total = sum(now) - sum(self._last)
        idle = (now.idle + getattr(now, "iowait", 0.0)) - (
            self._last.idle + getattr(self._last, "iowait", 0.0)
        )
        self._last = now
        return 1.0 - idle / total if total > 0 else 0.0


def cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def read_timestamps(topic: str, since_ms: int, header: str = "trace_id") -> dict[bytes, int]:
    """{header value: record timestamp (ms)} of every record of `topic` written since `since_ms`.

    The records' CreateTime is when the producing stage handed the record to its producer,
    so it marks when a reading left that stage.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    await consumer.start()
    out: dict[bytes, int] = {}
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        remaining = set()
        for tp in tps:
            found = starts.get(tp)
            if found is None:
                continue
            consumer.seek(tp, found.offset)
            remaining.add(tp)
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batches.values():
                for record in records:
                    value = dict(record.headers or ()).get(header)
                    if value is not None:
                        out[value] = record.timestamp
            for tp in list(remaining):
                position = await consumer.position(tp)
                # A transaction's commit marker takes the last offset and is never returned.
                if position >= ends[tp] or (not batches and position >= ends[tp] - 1):
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out
