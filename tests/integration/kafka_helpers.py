"""Small real-broker helpers for tests: produce records, read a topic to its end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from tests.conftest import KAFKA


async def produce(
    topic: str,
    values: Sequence[bytes],
    key: bytes | None = b"dev-1",
    headers: list[tuple[str, bytes]] | None = None,
    bootstrap: str = KAFKA,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


async def read_topic(
    topic: str, expect: int, timeout_s: float = 30.0, bootstrap: str = KAFKA
) -> list[ConsumerRecord]:
    """Read `topic` from the start until `expect` records arrived (or fail after the timeout)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"reader-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(records) < expect:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    except TimeoutError:
        raise AssertionError(f"{topic}: got {len(records)} records, expected {expect}") from None
    finally:
        await consumer.stop()
    return records


async def settle_and_read(
    topic: str, timeout_s: float = 3.0, bootstrap: str = KAFKA
) -> list[ConsumerRecord]:
    """Everything committed in `topic` now (to prove nothing more than expected arrived)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(timeout_s):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def committed_offsets(group: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # noqa: SLF001
        partitions = consumer.partitions_for_topic(topic) or set()
        result = {}
        for p in partitions:
            offset = await consumer.committed(TopicPartition(topic, p))
            result[p] = offset or 0
        return result
    finally:
        await consumer.stop()
