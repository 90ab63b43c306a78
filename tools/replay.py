"""`python -m tools.replay`: send chosen dead letters back into the chain once their cause is
fixed (rules widened, a device registered, a bug deployed away).

Each record goes back to the input of the stage that refused it: ingest's and validate's to the
raw topic (the start of the chain), enrich's to the validated topic, store's to the enriched
topic. Replaying a record twice is harmless: validate drops the duplicate and the table's
unique key keeps one row.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from libs.common.cli import argument_parser
from libs.common.kafka import Outgoing, produce_all
from libs.common.logs import configure_logging
from libs.common.models import (
    HEADER_RECEIVED_AT,
    HEADER_SOURCE,
    HEADER_TRACE_ID,
    DeadLetter,
    Source,
    Stage,
)
from libs.common.service import kafka_producer
from libs.common.settings import PipelineSettings

log = structlog.get_logger("replay")


@dataclass(frozen=True)
class Selection:
    stages: frozenset[str] = frozenset()
    error_types: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    since: datetime | None = None
    limit: int | None = None

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (not self.stages or letter.processing_stage.value in self.stages)
            and (not self.error_types or letter.error_type in self.error_types)
            and (not self.devices or (letter.device_id or "") in self.devices)
            and (self.since is None or letter.error_timestamp >= self.since)
        )


def target_topic(stage: Stage, settings: PipelineSettings) -> str:
    """The input topic of the stage that refused the record."""
    return {
        Stage.INGEST: settings.topic_raw,
        Stage.VALIDATE: settings.topic_raw,
        Stage.ENRICH: settings.topic_validated,
        Stage.STORE: settings.topic_enriched,
    }[stage]


def original_bytes(letter: DeadLetter) -> bytes:
    if letter.original_encoding == "base64":
        return base64.b64decode(letter.original_record)
    return letter.original_record.encode("utf-8")


def replay_record(letter: DeadLetter, settings: PipelineSettings) -> tuple[str, Outgoing]:
    payload = original_bytes(letter)
    device_id = letter.device_id
    if device_id is None:
        try:
            parsed = orjson.loads(payload)
            device_id = parsed.get("device_id") if isinstance(parsed, dict) else None
        except orjson.JSONDecodeError:
            device_id = None
    headers = [
        (HEADER_SOURCE, Source.REPLAY.value.encode()),
        (HEADER_RECEIVED_AT, datetime.now(UTC).isoformat().encode()),
        (HEADER_TRACE_ID, (letter.trace_id or uuid.uuid4().hex).encode()),
    ]
    key = device_id.encode() if isinstance(device_id, str) else None
    return target_topic(letter.processing_stage, settings), Outgoing(payload, key, headers)


async def dlq_partitions(settings: PipelineSettings) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([settings.topic_dlq])
    finally:
        await admin.close()
    return [TopicPartition(settings.topic_dlq, p["partition"]) for p in topic["partitions"]]


async def read_dead_letters(settings: PipelineSettings) -> list[DeadLetter]:
    """Every committed dead letter now in the DLQ topic (a snapshot up to its current end)."""
    tps = await dlq_partitions(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        if not tps:
            return letters
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            for tp, records in (await consumer.getmany(*remaining, timeout_ms=500)).items():
                for record in records:
                    try:
                        letters.append(DeadLetter.model_validate_json(record.value or b""))
                    except ValidationError:
                        log.warning(
                            "not a dead letter, skipped",
                            partition=tp.partition,
                            offset=record.offset,
                        )
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    return letters


async def replay(
    settings: PipelineSettings, selection: Selection, *, dry_run: bool
) -> Counter[str]:
    letters = [d for d in await read_dead_letters(settings) if selection.matches(d)]
    if selection.limit is not None:
        letters = letters[: selection.limit]
    by_topic: dict[str, list[Outgoing]] = {}
    for letter in letters:
        topic, record = replay_record(letter, settings)
        by_topic.setdefault(topic, []).append(record)
    counts = Counter({topic: len(records) for topic, records in by_topic.items()})
    log.info("selected", records=len(letters), by_topic=dict(counts), dry_run=dry_run)
    if dry_run or not letters:
        return counts
    async with kafka_producer(settings) as producers:
        for topic, records in by_topic.items():
            await produce_all(producers.producer, topic, records)
            log.info("replayed", topic=topic, records=len(records))
    return counts


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argument_parser(
        prog="python -m tools.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stage",
        action="append",
        default=[],
        choices=[s.value for s in Stage],
        help="only records this stage refused",
    )
    parser.add_argument(
        "--error-type",
        action="append",
        default=[],
        help="only this error type, e.g. RuleViolation (repeatable)",
    )
    parser.add_argument("--device", action="append", default=[], help="only this device_id")
    parser.add_argument(
        "--since",
        type=datetime.fromisoformat,
        help="only records dead-lettered at or after this ISO 8601 instant",
    )
    parser.add_argument("--limit", type=int, help="at most this many records")
    parser.add_argument("--dry-run", action="store_true", help="count, send nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = PipelineSettings(service_name="replay")
    configure_logging(settings.service_name, settings.log_level)
    since = args.since
    if since is not None and since.tzinfo is None:
        log.error("--since needs a UTC offset, e.g. 2026-11-27T05:00:00+00:00")
        return 2
    selection = Selection(
        frozenset(args.stage), frozenset(args.error_type), frozenset(args.device), since, args.limit
    )
    asyncio.run(replay(settings, selection, dry_run=args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
