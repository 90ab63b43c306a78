"""Batched sending (`send_records`) against the real broker: same partitions as `send()`,
order kept, headers carried, batches split when full."""

from __future__ import annotations

from collections import defaultdict

from libs.common.kafka import Outgoing, make_producer, produce_all
from tests.conftest import Names
from tests.integration.kafka_helpers import produce, read_topic


async def test_records_land_where_send_puts_them_in_order_with_headers(topics: Names) -> None:
    keys = [f"device-{i:03d}".encode() for i in range(40)]
    # One-record-at-a-time send() of aiokafka's own default partitioner, as the reference.
    for key in keys:
        await produce(topics.validated, [b"probe"], key=key)
    reference = {r.key: r.partition for r in await read_topic(topics.validated, len(keys))}

    records = [
        Outgoing(
            f"{key.decode()}-{n}".encode(),
            key,
            # A consumed record's headers are a tuple: must be accepted as well as a list.
            (("trace_id", f"{n}".encode()),) if n % 2 else [("trace_id", f"{n}".encode())],
        )
        for n in range(25)
        for key in keys
    ]
    producer = make_producer(topics.settings())
    await producer.start()
    try:
        await produce_all(producer, topics.raw, records)
    finally:
        await producer.stop()

    got = await read_topic(topics.raw, len(records))
    assert len(got) == len(records)
    by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for r in got:
        assert r.partition == reference[r.key], r.key
        assert r.headers == (("trace_id", r.value.rsplit(b"-", 1)[1]),)
        by_key[r.key].append(r.value)
    for key in keys:
        assert by_key[key] == [f"{key.decode()}-{n}".encode() for n in range(25)]


async def test_a_batch_larger_than_one_producer_batch_is_split(topics: Names) -> None:
    # 16 KiB producer batches and 600 records of 1 KiB over 3 partitions: several batches per
    # partition, all delivered.
    settings = topics.settings(producer_max_batch_bytes=16 * 1024)
    producer = make_producer(settings)
    await producer.start()
    try:
        records = [Outgoing(bytes([65 + n % 26]) * 1024, f"k{n % 7}".encode()) for n in range(600)]
        await produce_all(producer, topics.raw, records)
    finally:
        await producer.stop()
    got = await read_topic(topics.raw, 600)
    assert sorted(r.value for r in got) == sorted(r.value for r in records)
