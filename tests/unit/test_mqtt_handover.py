"""ingest's MQTT hand-over retry (services/ingest/mqtt.py): while Kafka is away a batch is
tried again for as long as it takes, counted as a hand-over retry, until the service stops."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

import pytest
import structlog.testing

from libs.common import metrics
from libs.common.errors import BrokerUnavailable, PayloadTooLarge
from libs.common.health import Readiness
from libs.common.kafka import Outgoing
from libs.common.models import Source
from services.ingest.handover import Handover
from services.ingest.intake import Rejected
from services.ingest.mqtt import MqttIngest, MqttLogin
from services.ingest.settings import IngestSettings


class FlakyHandover:
    """Fails `failures` times with `error`, then takes the batch."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or BrokerUnavailable("Kafka away (test)")
        self.calls = 0

    async def send(
        self, accepted: Sequence[Outgoing], rejected: Sequence[Rejected], source: Source
    ) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error


def ingest(handover: FlakyHandover) -> MqttIngest:
    settings = IngestSettings(retry_max_wait_s=0.01)
    fake: Handover = handover  # type: ignore[assignment]
    return MqttIngest(settings, fake, Readiness("ingest", "kafka", "mqtt"))


def handover_retries() -> float:
    value: float = metrics.RETRIES.labels("ingest", "handover")._value.get()
    return value


async def test_a_batch_is_handed_over_once_kafka_is_back_each_retry_counted() -> None:
    handover = FlakyHandover(failures=5)
    before = handover_retries()
    assert await ingest(handover)._until_handed_over([], [], asyncio.Event())
    assert handover.calls == 6
    assert handover_retries() - before == 5


async def test_a_batch_waits_while_kafka_is_away_until_the_service_stops() -> None:
    handover = FlakyHandover(failures=10**9)
    stop = asyncio.Event()
    waiting = asyncio.create_task(ingest(handover)._until_handed_over([], [], stop))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    calls = handover.calls
    assert calls > 5  # still trying, not given up after a budget
    stop.set()
    assert await asyncio.wait_for(waiting, 2) is False


async def test_a_permanent_hand_over_error_is_raised_not_retried() -> None:
    handover = FlakyHandover(failures=1, error=PayloadTooLarge("too large"))
    with pytest.raises(PayloadTooLarge):
        await ingest(handover)._until_handed_over([], [], asyncio.Event())
    assert handover.calls == 1


async def test_plaintext_mqtt_is_warned_about_at_start_up_and_tls_is_not() -> None:
    for url, warned in (("mqtt://127.0.0.1:1883", True), ("mqtts://127.0.0.1:8883", False)):
        settings = IngestSettings(mqtt_url=url)
        tls = ssl.create_default_context() if settings.mqtt_tls else None
        login = MqttLogin(tls, None)
        fake: Handover = FlakyHandover(0)  # type: ignore[assignment]
        stopped = asyncio.Event()
        stopped.set()  # stop at once: only what run() says before connecting
        with structlog.testing.capture_logs() as logs:
            await MqttIngest(settings, fake, Readiness("ingest", "mqtt"), login=login).run(stopped)
        events = [entry["event"] for entry in logs if entry["log_level"] == "warning"]
        assert ("plaintext MQTT (development only)" in events) is warned, url
