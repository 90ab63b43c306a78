"""ingest's MQTT side (services/ingest/mqtt.py) against the real Mosquitto and Kafka: readings
reach the raw topic, bad messages reach the DLQ naming the device of their topic, and a broker
that is away is retried with the shared policy until stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest

from libs.common.audit import AuditWriter
from libs.common.health import Readiness
from libs.common.service import kafka_producer
from services.ingest import mqtt
from services.ingest.handover import Handover
from services.ingest.mqtt import MqttIngest, MqttLogin
from services.ingest.settings import IngestSettings
from tests.conftest import MQTT_HOST, Names
from tests.integration.kafka_helpers import read_topic, settle_and_read
from tools.mqtt_run_accounts import RunAccounts

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def short_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    # The broker forgets these tests' sessions a minute after they end, not a week.
    monkeypatch.setattr(mqtt, "SESSION_EXPIRY_S", 60)


@contextlib.asynccontextmanager
async def running(
    settings: IngestSettings, stop: asyncio.Event, audit: AuditWriter | None = None
) -> AsyncIterator[Readiness]:
    readiness = Readiness("ingest", "kafka", "mqtt")
    async with kafka_producer(settings) as producers:
        handover = Handover(producers, settings, stop)
        task = asyncio.create_task(
            MqttIngest(settings, handover, readiness, audit_writer=audit).run(stop)
        )
        try:
            yield readiness
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


async def wait_until(condition: object, timeout_s: float = 15) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_a_bad_mqtt_message_reaches_the_dlq_with_the_device_of_its_topic(
    topics: Names, mqtt_accounts: RunAccounts
) -> None:
    device = f"dev-{topics.run_id}"
    topic = mqtt_accounts.topic(device)
    settings = topics.settings_of(
        IngestSettings,
        **mqtt_accounts.ingest_settings(),
        mqtt_client_id=f"test-ingest-{topics.run_id}",
    )
    good = orjson.dumps({"device_id": device, "timestamp": 1, "temperature": 20.0})
    stop = asyncio.Event()
    async with running(settings, stop) as readiness:
        await wait_until(lambda: readiness.snapshot()["mqtt"])
        async with mqtt_accounts.fleet_client() as client:
            for payload in (b"not json", good, b'{"temperature": 20.0}'):
                await client.publish(topic, payload, qos=1)
        letters = [orjson.loads(r.value) for r in await read_topic(topics.dlq, 2)]
        raw = await read_topic(topics.raw, 1)
    # Dead letters are not keyed: they may come from different partitions in any order.
    assert sorted((d["error_type"], d["device_id"]) for d in letters) == [
        ("MissingDeviceId", device),
        ("NotJson", device),
    ]
    assert [r.value for r in raw] == [good]
    assert len(await settle_and_read(topics.dlq)) == 2


async def test_a_reading_of_another_device_than_its_topics_reaches_the_dlq_as_device_mismatch(
    topics: Names, mqtt_accounts: RunAccounts
) -> None:
    device = f"dev-{topics.run_id}"
    topic = mqtt_accounts.topic(device)
    settings = topics.settings_of(
        IngestSettings,
        **mqtt_accounts.ingest_settings(),
        mqtt_client_id=f"test-ingest-mismatch-{topics.run_id}",
    )
    own = orjson.dumps({"device_id": device, "timestamp": 1, "temperature": 20.0})
    other = orjson.dumps({"device_id": f"other-{topics.run_id}", "timestamp": 1})
    stop = asyncio.Event()
    async with running(settings, stop) as readiness:
        await wait_until(lambda: readiness.snapshot()["mqtt"])
        async with mqtt_accounts.fleet_client() as client:
            for payload in (other, own):
                await client.publish(topic, payload, qos=1)
        [letter] = [orjson.loads(r.value) for r in await read_topic(topics.dlq, 1)]
        raw = await read_topic(topics.raw, 1)
    assert (letter["error_type"], letter["device_id"]) == ("DeviceMismatch", device)
    assert f"other-{topics.run_id}" in letter["error_message"]
    assert [r.value for r in raw] == [own]
    assert len(await settle_and_read(topics.dlq)) == 1


async def test_an_unreachable_broker_is_retried_until_stopped_and_never_ready(
    topics: Names,
) -> None:
    settings = topics.settings_of(
        IngestSettings,
        mqtt_url=f"mqtt://{MQTT_HOST}:1",
        mqtt_client_id=f"test-ingest-{topics.run_id}",
        mqtt_reconnect_max_s=0.05,
    )
    stop = asyncio.Event()
    attempts: list[int] = []
    real_open = MqttIngest._open

    async def counted_open(self: MqttIngest, login: MqttLogin) -> object:
        attempts.append(1)
        return await real_open(self, login)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MqttIngest, "_open", counted_open)
        async with running(settings, stop) as readiness:
            await wait_until(lambda: len(attempts) >= 5)
            assert readiness.snapshot()["mqtt"] is False
    # Leaving `running` set stop: the loop returned (within its bound) instead of waiting on.
    assert readiness.snapshot()["mqtt"] is False
