"""produce_all never waits forever: a delivery future that is never resolved (a producer
closed while the broker was away leaves them so) ends in BrokerUnavailable at the deadline,
and the caller retries with a new producer. The delivery itself against the real broker is in
tests/integration/test_kafka_send.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from libs.common.errors import BrokerUnavailable
from libs.common.kafka import Outgoing, produce_all


class Builder:
    def append(self, **_record: Any) -> object:
        return object()


class ForgottenProducer:
    """Takes batches and never answers for them, like a producer abandoned mid-outage."""

    async def partitions_for(self, _topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> Builder:
        return Builder()

    async def send_batch(self, _batch: Builder, _topic: str, *, partition: int) -> Any:
        return asyncio.get_running_loop().create_future()


async def test_an_unanswered_delivery_is_a_broker_outage_at_the_deadline() -> None:
    records = [Outgoing(b"{}", f"dev-{i}".encode()) for i in range(10)]
    with pytest.raises(BrokerUnavailable, match="within 0.2 s"):
        await produce_all(ForgottenProducer(), "raw", records, timeout_s=0.2)
