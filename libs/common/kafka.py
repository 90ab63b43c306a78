"""Kafka clients built the one way this project wants them, and the shared topic set-up."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from libs.common.errors import BrokerUnavailable
from libs.common.settings import ConsumerSettings, PipelineSettings

log = structlog.get_logger(__name__)

# A list, or the tuple a consumed record carries.
Headers = Sequence[tuple[str, bytes]]
# How long produce_all waits for Kafka's acknowledgement: the producer's request timeout
# (30 s) and some slack.
DELIVERY_TIMEOUT_S = 35.0


@dataclass(slots=True)
class Outgoing:
    """One record to produce: the key orders a device's readings within a partition."""

    value: bytes
    key: bytes | None = None
    headers: Headers = field(default_factory=list)


def make_producer(settings: PipelineSettings, **overrides: Any) -> AIOKafkaProducer:
    # acks=all + idempotence: a retried send is written once, and only when every in-sync
    # replica has it, so a crash after a send was acknowledged cannot lose it.
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": settings.service_name,
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None
        if settings.producer_compression == "none"
        else settings.producer_compression,
        "linger_ms": settings.producer_linger_ms,
        "max_batch_size": settings.producer_max_batch_bytes,
        "request_timeout_ms": 30_000,
        "retry_backoff_ms": settings.producer_retry_backoff_ms,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(settings: ConsumerSettings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    # Offsets are committed by the runner only after the batch's output is acknowledged.
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": settings.service_name,
        "group_id": settings.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "fetch_max_bytes": 16 * 1024 * 1024,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def produce_all(
    producer: AIOKafkaProducer,
    topic: str,
    records: Sequence[Outgoing],
    timeout_s: float = DELIVERY_TIMEOUT_S,
) -> None:
    """Send every record and return once Kafka acknowledged all of them (one round trip per
    batch, not per record); BrokerUnavailable if that fails or takes longer than `timeout_s`.

    The deadline matters: a producer closed while the broker is away (RenewableProducer) can
    leave its batches' futures unresolved for good, and a caller waiting on one would never
    retry with the new producer.
    """
    try:
        async with asyncio.timeout(timeout_s):
            futures = await send_records(producer, topic, records)
            for future in futures:
                await future
    except KafkaError as error:
        raise BrokerUnavailable(
            f"Kafka did not acknowledge a write to {topic}: {error!r}"
        ) from error
    except TimeoutError as error:
        raise BrokerUnavailable(
            f"Kafka did not acknowledge a write to {topic} within {timeout_s:g} s"
        ) from error


async def send_records(
    producer: AIOKafkaProducer, topic: str, records: Sequence[Outgoing]
) -> list[asyncio.Future[Any]]:
    """Queue `records` as one record batch per partition; the futures resolve on delivery.

    The same partitions as `producer.send()` would choose (murmur2 of the key, the Java
    client's too), so a device's readings stay in order whichever way they were sent; but one
    `send_batch` per partition instead of one `send()` a record, which in aiokafka costs more
    than the rest of a stage's work on a reading.
    """
    if not records:
        return []
    partitions = sorted(await producer.partitions_for(topic))
    builders: dict[int, Any] = {}
    futures: list[asyncio.Future[Any]] = []
    for record in records:
        partition = _partition_of(record.key, len(partitions))
        if partition is None:
            partition = random.choice(partitions)
        else:
            partition = partitions[partition]
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = producer.create_batch()
        if _append(builder, record) is None:
            # Full: send it, and start the next batch of that partition with this record.
            futures.append(await producer.send_batch(builder, topic, partition=partition))
            # An empty batch always takes its first record, whatever its size (aiokafka's
            # builder), so this append cannot fail; what is too large for the broker is
            # refused per record before it gets here (ingest's max_record_bytes).
            builder = builders[partition] = producer.create_batch()
            _append(builder, record)
    for partition, builder in builders.items():
        futures.append(await producer.send_batch(builder, topic, partition=partition))
    for future in futures:
        # When one batch fails the caller stops awaiting the others; marking their outcome as
        # seen keeps asyncio from logging each of them as "never retrieved".
        future.add_done_callback(_seen)
    return futures


def _append(builder: Any, record: Outgoing) -> Any:
    headers = record.headers
    # aiokafka's C batch builder takes a list only (a consumed record's headers are a tuple).
    if type(headers) is not list:
        headers = list(headers) if headers else []
    return builder.append(timestamp=None, key=record.key, value=record.value, headers=headers)


@functools.lru_cache(maxsize=65_536)
def _partition_of(key: bytes | None, count: int) -> int | None:
    # The index DefaultPartitioner picks; cached, since murmur2 is pure Python (~3 µs) and a
    # fleet has far fewer devices than readings. None: no key, any partition will do.
    if key is None:
        return None
    return (murmur2(key) & 0x7FFFFFFF) % count


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def encode_json(obj: Any) -> bytes:
    return orjson.dumps(obj)


def pipeline_topics(settings: PipelineSettings) -> list[str]:
    return [
        settings.topic_raw,
        settings.topic_validated,
        settings.topic_enriched,
        settings.topic_dlq,
    ]


async def ensure_topics(
    settings: PipelineSettings,
    topics: Sequence[str] | None = None,
    *,
    partitions: int | None = None,
) -> list[str]:
    """Create the pipeline's topics that do not exist yet; returns the ones it created."""
    names = list(topics) if topics is not None else pipeline_topics(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.service_name}-admin",
    )
    try:
        await admin.start()
    except KafkaError as error:
        raise BrokerUnavailable(
            f"Kafka at {settings.kafka_bootstrap_servers}: {error!r}"
        ) from error
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name,
                num_partitions=partitions or settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
            )
            for name in names
            if name not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                # Another replica's set-up won the race; the topic is there, which is the point.
                pass
        return [t.name for t in wanted]
    except KafkaError as error:
        raise BrokerUnavailable(f"could not create topics: {error!r}") from error
    finally:
        await admin.close()
