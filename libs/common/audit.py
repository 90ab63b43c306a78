"""The audit log's one writer: the table of migration 0004_audit.sql (append-only in the
database), docs/security.md "Audit log".

Every component that records an admin call or a refusal (the admin API, ingest, the audit
collector of the servers' logs) builds `AuditEvent`s and hands them to an `AuditWriter`,
which appends them in batches without making a request wait for the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import asyncpg
import structlog
from prometheus_client import Counter

from libs.common.db import CONNECTION_ERRORS
from libs.common.errors import ConfigurationError, DatabaseUnavailable
from libs.common.retry import until_stopped

log = structlog.get_logger(__name__)

ActorKind = Literal["user", "client", "device", "service", "anonymous"]
Outcome = Literal["allowed", "refused", "failed"]

ACTION = re.compile(r"^[a-z_]+\.[a-z_]+$")
# The columns' bounds (0004_audit.sql): a longer value is cut, never refused, so that a hostile
# client's 1 MB user name still leaves a row saying it was refused.
LIMITS = {"actor": 256, "target": 512, "reason": 2048, "source_address": 256, "request_id": 128}

EVENTS = Counter(
    "pipeline_audit_events_total",
    "Audit events appended to the audit log.",
    ["recorded_by", "outcome"],
)
DROPPED = Counter(
    "pipeline_audit_dropped_total",
    "Audit events dropped because the writer's queue was full (the database slower than the "
    "events, or unreachable for long).",
    ["recorded_by"],
)

INSERT = """INSERT INTO audit_log
    (at, actor, actor_kind, action, target, outcome, reason, source_address, request_id,
     recorded_by)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"""


def _clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row: who (`actor`, of `actor_kind`) did `action` ("component.verb") to `target`,
    with `outcome` and, for a refusal or a failure, `reason`; recorded by `recorded_by`."""

    actor: str
    actor_kind: ActorKind
    action: str
    outcome: Outcome
    recorded_by: str
    target: str | None = None
    reason: str | None = None
    source_address: str | None = None
    request_id: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if not ACTION.match(self.action):
            raise ConfigurationError(f"audit action {self.action!r} is not component.verb")
        if not self.actor:
            object.__setattr__(self, "actor", "anonymous")
            object.__setattr__(self, "actor_kind", "anonymous")
        for name, limit in LIMITS.items():
            object.__setattr__(self, name, _clip(getattr(self, name), limit))

    def row(self) -> tuple[object, ...]:
        return (
            self.at,
            self.actor,
            self.actor_kind,
            self.action,
            self.target,
            self.outcome,
            self.reason,
            self.source_address,
            self.request_id,
            self.recorded_by,
        )


async def append(db: asyncpg.Pool | asyncpg.Connection, events: Sequence[AuditEvent]) -> None:
    """Append the events in one statement batch; DatabaseUnavailable when the server is gone."""
    if not events:
        return
    try:
        await db.executemany(INSERT, [event.row() for event in events])
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailable(f"audit log: {error!r}") from error
    for event in events:
        EVENTS.labels(event.recorded_by, event.outcome).inc()


class AuditWriter:
    """A bounded queue of events and the task that appends them.

    `record` never waits: a request handler or a log reader hands its event over and goes
    on. `run` appends what is queued in batches of up to `batch_size`, retrying a database
    outage with backoff (libs.common.retry) until it is back or `stop` is set; after `stop`,
    what is still queued is written once more before `run` returns. A full queue drops the
    new event, with a log line and `pipeline_audit_dropped_total`: memory stays bounded under
    a flood of refusals, and the drop itself is visible.
    """

    def __init__(
        self,
        db: asyncpg.Pool | asyncpg.Connection,
        *,
        recorded_by: str,
        max_pending: int = 10_000,
        batch_size: int = 500,
    ) -> None:
        self._db = db
        self._recorded_by = recorded_by
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(max_pending)
        self._batch_size = batch_size

    def record(self, event: AuditEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            DROPPED.labels(self._recorded_by).inc()
            log.error(
                "audit event dropped: the writer's queue is full",
                action=event.action,
                actor=event.actor,
                outcome=event.outcome,
            )

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _take(self) -> list[AuditEvent]:
        events: list[AuditEvent] = []
        while len(events) < self._batch_size and not self._queue.empty():
            events.append(self._queue.get_nowait())
        return events

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            waiter = asyncio.ensure_future(self._queue.get())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not waiter.done():
                waiter.cancel()
                break
            events = [waiter.result(), *self._take()]
            try:
                appended = await until_stopped(self._appender(events), stop, name="audit_append")
            except asyncpg.PostgresError as error:
                # Refused, not unreachable (no table, no grant, a bad password): waiting will
                # not help, and the writer must live on for the next events.
                DROPPED.labels(self._recorded_by).inc(len(events))
                log.error(
                    "audit events refused by the database", count=len(events), error=str(error)
                )
                continue
            if appended is None:
                self._requeue(events)
        await self.flush()

    def _appender(self, events: Sequence[AuditEvent]) -> Callable[[], Awaitable[bool]]:
        async def append_them() -> bool:
            await append(self._db, events)
            return True

        return append_them

    def _requeue(self, events: Sequence[AuditEvent]) -> None:
        for event in events:
            self.record(event)

    async def flush(self) -> None:
        """Append everything queued now, once; a failure is logged with the count lost."""
        while events := self._take():
            try:
                await append(self._db, events)
            except (DatabaseUnavailable, asyncpg.PostgresError) as error:
                DROPPED.labels(self._recorded_by).inc(len(events) + self._queue.qsize())
                log.error("audit events lost at stop", count=len(events), error=str(error))
                return


@contextlib.asynccontextmanager
async def audit_writer(
    dsn: str,
    *,
    schema: str,
    recorded_by: str,
    max_pending: int = 10_000,
    stop_timeout_s: float = 15.0,
) -> AsyncIterator[AuditWriter]:
    """An AuditWriter appending over its own small pool, its task running until the block
    ends; then what is queued is written once more, within `stop_timeout_s` (a database that
    is away must not hold up a service's stop: what is lost is counted and logged).

    The pool opens no connection up front (min_size 0): a component starts, and keeps going,
    while the database is away; the writer's retries connect when it is back.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=1,
        timeout=10,
        server_settings={"search_path": f"{schema},public", "application_name": recorded_by},
    )
    assert pool is not None
    writer = AuditWriter(pool, recorded_by=recorded_by, max_pending=max_pending)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        yield writer
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, stop_timeout_s)
        except TimeoutError:
            DROPPED.labels(recorded_by).inc(writer.pending)
            log.error(
                "audit events lost at stop: the database did not answer in time",
                count=writer.pending,
            )
        try:
            await asyncio.wait_for(pool.close(), 5)
        except TimeoutError:
            pool.terminate()
