"""structlog set up to write one JSON object a line to stderr, for every service alike, and the
context (trace id, stage, topic, partition, offset) that ties a log line to one record."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import orjson
import structlog

from libs.common.models import HEADER_TRACE_ID

# Dead-letter fields (libs.common.models.DeadLetter) a log line carries, under the names that
# `record_context` uses for a record in flight, so one query finds both.
_DEAD_LETTER_FIELDS = {
    "trace_id": "trace_id",
    "processing_stage": "stage",
    "source_topic": "topic",
    "source_partition": "partition",
    "source_offset": "offset",
    "device_id": "device_id",
    "error_type": "error_type",
    "reasons": "reasons",
    "attempts": "attempts",
}


_stdlib_handler: logging.Handler | None = None


class KafkaRecord(Protocol):
    """What a log line needs of an aiokafka ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    headers: Sequence[tuple[str, bytes]]


def _dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(service: str, level: str = "INFO") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(shared, level)
    structlog.contextvars.bind_contextvars(service=service)


def _route_stdlib_logging(shared: list[structlog.types.Processor], level: str) -> None:
    # aiokafka, uvicorn and asyncpg log through the standard library: render their records as
    # the same JSON lines, so a log collector never meets a line it cannot parse.
    global _stdlib_handler
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(allow=("repeated",)),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    if _stdlib_handler is not None:
        root.removeHandler(_stdlib_handler)
    root.addHandler(handler)
    root.setLevel(level)
    _stdlib_handler = handler


class RepeatFilter(logging.Filter):
    """Lets a library's log line through once per `every_s` seconds, with how many times it
    came meanwhile (`repeated`).

    While Kafka is away, aiokafka's sender retries a pending batch's metadata without pause
    and logs "Unable connect to node" thousands of times a second; the first line says it all.
    Lines are the same when logger, level and message template are (arguments may differ).
    """

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.every_s:
            self._last[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.repeated = seen[1]
        if len(self._last) > 10_000:  # bounded: templates are few, but be safe
            self._last.clear()
        self._last[key] = (now, 0)
        return True


def record_context(record: KafkaRecord, stage: str | None = None) -> dict[str, Any]:
    """trace_id (when ingest set the header), stage, topic, partition and offset of a record."""
    context: dict[str, Any] = {}
    for name, value in record.headers or ():
        if name == HEADER_TRACE_ID and value:
            context["trace_id"] = value.decode("utf-8", "replace")
            break
    if stage is not None:
        context["stage"] = stage
    context |= {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    return context


@contextlib.contextmanager
def bound_record(record: KafkaRecord, stage: str | None = None) -> Iterator[None]:
    """Every log line inside the block carries the record's trace id, stage and position."""
    with structlog.contextvars.bound_contextvars(**record_context(record, stage)):
        yield


def dead_letter_context(dead_letter: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a dead letter that identify its record and say why it was rejected."""
    return {
        name: dead_letter[key]
        for key, name in _DEAD_LETTER_FIELDS.items()
        if dead_letter.get(key) is not None
    }


def log_dead_letters(logger: Any, dead_letters: Sequence[Mapping[str, Any]]) -> None:
    """One warning a rejected record, so its trace id leads from the DLQ to the logs."""
    for dead_letter in dead_letters:
        logger.warning("record sent to the DLQ", **dead_letter_context(dead_letter))
