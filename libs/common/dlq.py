"""The dead-letter queue read back and replayed: what `python -m tools.replay` and the admin API's
DLQ endpoints (services.admin) share.

Each record goes back to the input of the stage that refused it: ingest's and validate's to the
raw topic (the start of the chain), enrich's to the validated topic, store's to the enriched
topic. Replaying a record twice is harmless: validate drops the duplicate and the table's
unique key keeps one row.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from libs.common.errors import BrokerUnavailable
from libs.common.kafka import Outgoing, make_consumer, produce_all
from libs.common.models import (
    HEADER_RECEIVED_AT,
    HEADER_SOURCE,
    HEADER_TRACE_ID,
    DeadLetter,
    Source,
    Stage,
)
from libs.common.service import RenewableProducer
from libs.common.settings import ConsumerSettings, PipelineSettings

log = structlog.get_logger(__name__)
# A scan waits this long for a partition's next records before it asks again.
POLL_TIMEOUT_MS = 500


@dataclass(frozen=True)
class Selection:
    """Which dead letters: each set empty means any; `limit` the first that many matches."""

    stages: frozenset[str] = frozenset()
    error_types: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    since: datetime | None = None
    limit: int | None = None
    # Letters by their place in the DLQ topic ("partition:offset", StoredLetter.id).
    ids: frozenset[str] = frozenset()

    def matches(self, stored: StoredLetter) -> bool:
        letter = stored.letter
        return (
            (not self.stages or letter.processing_stage.value in self.stages)
            and (not self.error_types or letter.error_type in self.error_types)
            and (not self.devices or (letter.device_id or "") in self.devices)
            and (self.since is None or letter.error_timestamp >= self.since)
            and (not self.ids or stored.id in self.ids)
        )


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """A dead letter and where it is in the DLQ topic."""

    partition: int
    offset: int
    letter: DeadLetter

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"


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


def replay_batches(
    letters: Iterable[DeadLetter], settings: PipelineSettings
) -> dict[str, list[Outgoing]]:
    """The records that replay `letters`, by the topic each goes to."""
    by_topic: dict[str, list[Outgoing]] = {}
    for letter in letters:
        topic, record = replay_record(letter, settings)
        by_topic.setdefault(topic, []).append(record)
    return by_topic


async def send_replays(
    producer: RenewableProducer, by_topic: dict[str, list[Outgoing]]
) -> Counter[str]:
    """Produce each topic's records and wait for Kafka's acknowledgement of all of them."""
    for topic, records in by_topic.items():
        await produce_all(producer.producer, topic, records)
        log.info("replayed", topic=topic, records=len(records))
    return Counter({topic: len(records) for topic, records in by_topic.items()})


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        # A consumer that subscribes to nothing has no topic's metadata yet, and aiokafka's
        # public topics() returns names only, not the partitions.
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(partitions or ())]


async def scan_dead_letters(
    settings: ConsumerSettings,
    selection: Selection | None = None,
    max_records: int | None = None,
) -> list[StoredLetter]:
    """The committed dead letters now in the DLQ topic that `selection` matches (a snapshot up
    to its current end), up to `selection.limit` of them; at most `max_records` records read.
    BrokerUnavailable when Kafka cannot be reached."""
    consumer = make_consumer(settings)
    try:
        await consumer.start()
        return await _scan(consumer, settings.topic_dlq, selection or Selection(), max_records)
    except KafkaError as error:
        raise BrokerUnavailable(f"reading the DLQ {settings.topic_dlq}: {error!r}") from error
    finally:
        await consumer.stop()


async def _scan(
    consumer: AIOKafkaConsumer, topic: str, selection: Selection, max_records: int | None
) -> list[StoredLetter]:
    tps = await _partitions(consumer, topic)
    found: list[StoredLetter] = []
    if not tps:
        return found
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    remaining = {tp for tp in tps if ends[tp] > 0}
    read = 0
    while remaining:
        for tp, records in (await consumer.getmany(*remaining, timeout_ms=POLL_TIMEOUT_MS)).items():
            for record in records:
                read += 1
                stored = _stored(tp, record.offset, record.value)
                if stored is not None and selection.matches(stored):
                    found.append(stored)
                if selection.limit is not None and len(found) >= selection.limit:
                    return found
        if max_records is not None and read >= max_records:
            log.warning("DLQ scan stopped at its bound", records=read, bound=max_records)
            return found
        remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    return found


def _stored(tp: TopicPartition, offset: int, value: bytes | None) -> StoredLetter | None:
    try:
        return StoredLetter(tp.partition, offset, DeadLetter.model_validate_json(value or b""))
    except ValidationError:
        log.warning("not a dead letter, skipped", partition=tp.partition, offset=offset)
        return None


def missing_ids(wanted: Collection[str], found: Iterable[StoredLetter]) -> list[str]:
    """The asked-for ids that are not among `found`, in the order asked."""
    have = {stored.id for stored in found}
    return [i for i in wanted if i not in have]
