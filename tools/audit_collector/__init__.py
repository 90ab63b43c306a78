"""The audit collector: the refusals the servers make themselves, which our code never sees
(Mosquitto's refused logins and ACL denials, Kafka's authorizer, PostgreSQL's refused logins
and privileges), read from the local stack's server logs into the audit log.

`python -m tools.audit_collector` follows .stack/logs/{mosquitto,kafka-authorizer,postgres}.log
(docs/security.md, "Audit log"). A tool of the local stack rather than a pipeline service: it
reads files that only the local stack writes where it can find them; a deployment's servers log
to its platform's log pipeline, which is where their refusals are collected there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import asyncpg
import structlog
from prometheus_client import Counter, Gauge
from pydantic import Field, SecretStr

from libs.common.audit import AuditEvent, append
from libs.common.retry import until_stopped
from libs.common.settings import PipelineSettings
from libs.common.stack import local_stack_dir
from tools.audit_collector.follow import Follower
from tools.audit_collector.patterns import KafkaParser, MosquittoParser, PostgresParser
from tools.db_accounts import dsn_for

log = structlog.get_logger(__name__)

LINES = Counter(
    "pipeline_audit_collector_lines_total",
    "Server log lines read by the audit collector.",
    ["source"],
)
LAG = Gauge(
    "pipeline_audit_collector_last_batch_timestamp_seconds",
    "When the audit collector last appended a batch (or found nothing new), per source.",
    ["source"],
)


class Parser(Protocol):
    recorded_by: str

    def feed(self, line: str) -> list[AuditEvent]: ...

    def flush(self) -> list[AuditEvent]: ...


# The log of each server, under the stack folder, and its parser.
SOURCES: dict[str, tuple[str, Callable[[], Parser]]] = {
    "mosquitto": ("logs/mosquitto.log", MosquittoParser),
    "kafka": ("logs/kafka-authorizer.log", KafkaParser),
    "postgres": ("logs/postgres.log", PostgresParser),
}


class CollectorSettings(PipelineSettings):
    service_name: str = "audit-collector"
    # /healthz, /readyz and /metrics (the collector's progress), next to the stages' 8080-8083.
    http_port: int = Field(default=8089, ge=0, le=65535)
    # The stack whose logs are followed; its audit-collector/ folder keeps the offsets.
    audit_stack_dir: Path = Field(default_factory=local_stack_dir)
    # As ingest's: None is the local stack's audit_writer login over verify-full.
    audit_database_url: SecretStr | None = None
    audit_poll_s: float = Field(default=1.0, gt=0)

    def audit_dsn(self) -> str:
        if self.audit_database_url is not None:
            return self.audit_database_url.get_secret_value()
        return dsn_for("audit_writer", self)


@dataclass
class Source:
    name: str
    follower: Follower
    parser: Parser


def sources(stack_dir: Path, names: tuple[str, ...] = tuple(SOURCES)) -> list[Source]:
    state = stack_dir / "audit-collector"
    return [
        Source(name, Follower(stack_dir / SOURCES[name][0], state / f"{name}.offset"), parser())
        for name in names
        for parser in (SOURCES[name][1],)
    ]


async def collect_once(db: asyncpg.Pool | asyncpg.Connection, source: Source) -> int:
    """Read what is new in one log, append its refusals, then save the offset; the number of
    events appended. DatabaseUnavailable leaves the offset where it was: the lines are read
    again once the database is back, so nothing is lost and nothing appended twice."""
    total = 0
    while lines := source.follower.read():
        events = [event for line in lines for event in source.parser.feed(line)]
        events += source.parser.flush()
        await append(db, events)
        source.follower.commit()
        LINES.labels(source.name).inc(len(lines))
        total += len(events)
        log.info("audit batch", source=source.name, lines=len(lines), events=len(events))
    LAG.labels(source.name).set(time.time())
    return total


async def run(settings: CollectorSettings, stop: asyncio.Event, *, once: bool = False) -> int:
    """Follow every source until `stop` (or one pass with `once`); the events appended."""
    followed = sources(settings.audit_stack_dir)
    log.info(
        "following the servers' logs",
        stack_dir=str(settings.audit_stack_dir),
        sources=[s.name for s in followed],
    )
    total = 0
    async with _pool(settings) as pool:
        while True:
            for source in followed:
                result = await until_stopped(
                    functools.partial(collect_once, pool, source),
                    stop,
                    name=f"audit_collect_{source.name}",
                )
                total += result or 0
            if once or stop.is_set():
                return total
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.audit_poll_s)


@contextlib.asynccontextmanager
async def _pool(settings: CollectorSettings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        settings.audit_dsn(),
        min_size=0,
        max_size=1,
        timeout=10,
        server_settings={
            "search_path": f"{settings.database_schema},public",
            "application_name": settings.service_name,
        },
    )
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()
