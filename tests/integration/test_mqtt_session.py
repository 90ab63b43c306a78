"""ingest's MQTT adapter (services/ingest/mqtt_client.py) against the real Mosquitto: nothing
is acknowledged until the caller says so, the receive maximum bounds what is in flight, and an
acknowledgement never crosses to another connection."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from libs.common.errors import MqttUnavailable
from libs.common.tls import client_context
from services.ingest.mqtt_client import Delivery, MqttSession
from tests.integration.test_local_stack import HOST
from tools.mqtt_run_accounts import RunAccounts

pytestmark = pytest.mark.integration

# Sessions of these tests are forgotten by the broker a minute after their last connection.
EXPIRY_S = 60


def session(accounts: RunAccounts, client_id: str, receive_maximum: int = 100) -> MqttSession:
    """ingest's session, over TLS as the run's ingest account."""
    return MqttSession(
        accounts.host,
        accounts.port,
        client_id,
        receive_maximum=receive_maximum,
        session_expiry_s=EXPIRY_S,
        tls=client_context(accounts.ca_file),
        credentials=(accounts.ingest_username, accounts.ingest_password),
    )


async def publish(accounts: RunAccounts, topic: str, payloads: list[bytes]) -> None:
    async with accounts.fleet_client() as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


async def take_all(mqtt: MqttSession, count: int, timeout_s: float = 10) -> list[Delivery]:
    taken: list[Delivery] = []
    async with asyncio.timeout(timeout_s):
        while len(taken) < count:
            taken += await mqtt.take(count - len(taken), 0)
    return taken


async def nothing_arrives(mqtt: MqttSession, within_s: float = 0.5) -> bool:
    try:
        async with asyncio.timeout(within_s):
            await mqtt.take(1, 0)
    except TimeoutError:
        return True
    return False


Run = tuple[str, str, RunAccounts]


@pytest.fixture
def names(mqtt_accounts: RunAccounts) -> Run:
    run = uuid.uuid4().hex[:8]
    return f"test-mqtt-session-{run}", mqtt_accounts.topic(f"dev-{run}"), mqtt_accounts


async def test_a_message_not_acknowledged_is_delivered_again_on_the_next_connection(
    names: Run,
) -> None:
    client_id, topic, accounts = names
    payloads = [f"reading {i}".encode() for i in range(3)]
    first = session(accounts, client_id)
    await first.open(accounts.shared_topic)
    await publish(accounts, topic, payloads)
    assert [d.payload for d in await take_all(first, 3)] == payloads
    await first.close()

    second = session(accounts, client_id)
    await second.open(accounts.shared_topic)
    again = await take_all(second, 3)
    assert [d.payload for d in again] == payloads
    assert second.ack(again)
    await second.close()

    third = session(accounts, client_id)
    await third.open(accounts.shared_topic)
    try:
        assert await nothing_arrives(third)
    finally:
        await third.close()


async def test_the_broker_sends_no_more_than_the_receive_maximum_until_acknowledged(
    names: Run,
) -> None:
    client_id, topic, accounts = names
    mqtt = session(accounts, client_id, receive_maximum=5)
    await mqtt.open(topic)
    try:
        await publish(accounts, topic, [f"reading {i}".encode() for i in range(12)])
        first = await take_all(mqtt, 5)
        assert await nothing_arrives(mqtt)
        assert mqtt.ack(first)
        second = await take_all(mqtt, 5)
        assert [d.payload for d in second] == [f"reading {i}".encode() for i in range(5, 10)]
        mqtt.ack(second)
        mqtt.ack(await take_all(mqtt, 2))
    finally:
        await mqtt.close()


async def test_an_acknowledgement_for_a_lost_connection_is_never_sent_on_another(
    names: Run,
) -> None:
    client_id, topic, accounts = names
    old = session(accounts, client_id)
    await old.open(topic)
    await publish(accounts, topic, [b"reading 0"])
    taken = await take_all(old, 1)
    # A second connection with the same client id takes the session over: the old one is lost.
    new = session(accounts, client_id)
    await new.open(topic)
    try:
        async with asyncio.timeout(5):
            await old.lost.wait()
        assert not old.ack(taken)
        again = await take_all(new, 1)
        assert again[0].payload == b"reading 0"
        assert new.ack(again)
    finally:
        await old.close()
        await new.close()


async def test_an_unreachable_broker_is_reported_as_unavailable() -> None:
    mqtt = MqttSession(HOST, 1, "test-mqtt-session-nowhere", receive_maximum=10, session_expiry_s=0)
    with pytest.raises(MqttUnavailable):
        await mqtt.open("test/nowhere")
    assert mqtt.lost.is_set()
    await mqtt.close()


async def test_a_backlog_queued_while_away_waits_in_the_broker_not_in_memory(
    names: Run,
) -> None:
    client_id, topic, accounts = names
    first = session(accounts, client_id, receive_maximum=50)
    await first.open(topic)
    await first.close()
    backlog = [f"{i:05d}".encode() + b"x" * 1000 for i in range(3000)]
    await publish(accounts, topic, backlog)
    mqtt = session(accounts, client_id, receive_maximum=50)
    await mqtt.open(topic)
    received: list[bytes] = []
    try:
        # Acknowledging is what made Mosquitto 2.0.11 send past the receive maximum.
        for _ in range(3):
            batch = await take_all(mqtt, 50)
            received += [d.payload for d in batch]
            mqtt.ack(batch)
        await asyncio.sleep(1)
        # What waits here: the receive maximum and what was read from the socket before it
        # was paused (its buffers hold about 190 of these 1 KiB messages).
        assert len(mqtt._pending) < 400
        while len(received) < len(backlog):
            batch = await take_all(mqtt, 1)
            batch += await mqtt.take(500, 0)
            received += [d.payload for d in batch]
            mqtt.ack(batch)
        assert received == backlog
    finally:
        await mqtt.close()
