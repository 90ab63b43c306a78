"""RenewableProducer.renew (libs/common/service.py) against the real Kafka: a renewal gives a
fresh producer that writes; while Kafka is away it retries with the shared policy until stopped;
callers that saw the same failure renew once."""

from __future__ import annotations

import asyncio

import pytest

from libs.common.kafka import Outgoing, produce_all
from libs.common.service import RenewableProducer
from tests.conftest import Names
from tests.integration.kafka_helpers import read_topic

pytestmark = pytest.mark.integration


async def test_a_renewed_producer_is_a_new_one_that_writes(topics: Names) -> None:
    producers = RenewableProducer(topics.settings())
    await producers.start()
    try:
        old = producers.producer
        seen = producers.generation
        renewed = await asyncio.gather(
            producers.renew(asyncio.Event(), seen), producers.renew(asyncio.Event(), seen)
        )
        assert renewed[0] is renewed[1] is producers.producer is not old
        assert producers.generation == seen + 1  # one renewal for both callers
        await produce_all(producers.producer, topics.raw, [Outgoing(b"after renewal", b"dev-1")])
        assert [r.value for r in await read_topic(topics.raw, 1)] == [b"after renewal"]
    finally:
        await producers.stop()


async def test_a_renewal_waits_while_kafka_is_away_until_stopped(names: Names) -> None:
    settings = names.settings(
        kafka_bootstrap_servers="127.0.0.1:1", retry_max_wait_s=0.05, shutdown_timeout_s=1
    )
    producers = RenewableProducer(settings)
    attempts: list[int] = []
    real_start = producers._start_new

    async def counted_start() -> object:
        attempts.append(1)
        return await real_start()

    producers._start_new = counted_start  # type: ignore[method-assign]
    stop = asyncio.Event()
    renewal = asyncio.create_task(producers.renew(stop))
    async with asyncio.timeout(20):
        while len(attempts) < 3:
            await asyncio.sleep(0.05)
    assert not renewal.done()
    stop.set()
    assert await asyncio.wait_for(renewal, 10) is None
    assert producers.generation == 0
