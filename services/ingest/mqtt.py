"""The MQTT side of ingest: a shared QoS 1 subscription, acknowledged only after Kafka has it.

Messages are taken in small batches (up to `max_batch` or `max_wait_s`) so one Kafka round trip
covers many readings; each is acknowledged to the broker only after its batch was handed over.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from libs.common import metrics
from libs.common.errors import PayloadTooLarge, PipelineError, RecordError
from libs.common.health import Readiness
from libs.common.kafka import Outgoing
from libs.common.lifecycle import sleep_or_stop
from libs.common.models import Source, Stage
from services.ingest.handover import Handover
from services.ingest.intake import Rejected, check_message
from services.ingest.settings import IngestSettings

log = structlog.get_logger(__name__)
_STAGE = Stage.INGEST.value

# The broker keeps our session (subscription and unacknowledged QoS 1 messages) this long
# while no replica is connected, so readings published during a restart are not lost.
SESSION_EXPIRY_S = 7 * 24 * 3600


def _connect_properties(receive_maximum: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    # At most this many unacknowledged messages in flight to us: the broker holds the rest,
    # which is our backpressure while Kafka is slow.
    props.ReceiveMaximum = receive_maximum
    return props


class MqttIngest:
    def __init__(
        self,
        settings: IngestSettings,
        handover: Handover,
        readiness: Readiness,
        *,
        max_batch: int = 500,
        max_wait_s: float = 0.005,
    ) -> None:
        self.settings = settings
        self.handover = handover
        self.readiness = readiness
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s

    async def run(self, stop: asyncio.Event) -> None:
        """Stay subscribed until `stop`, reconnecting with backoff when the broker goes away."""
        url = urlsplit(self.settings.mqtt_url)
        delay = 0.2
        while not stop.is_set():
            try:
                client = aiomqtt.Client(
                    url.hostname or "127.0.0.1",
                    url.port or 1883,
                    identifier=self.settings.mqtt_client_id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    properties=_connect_properties(self.max_batch * 2),
                )
                # aiomqtt acknowledges on receipt; we must acknowledge after Kafka has the
                # reading, which paho (underneath) supports with manual acks.
                client._client.manual_ack_set(True)  # noqa: SLF001
                async with client:
                    await client.subscribe(self.settings.mqtt_topic, qos=1)
                    self.readiness.set("mqtt", True)
                    log.info("subscribed", topic=self.settings.mqtt_topic)
                    delay = 0.2
                    await self._consume(client, stop)
            except aiomqtt.MqttError as error:
                self.readiness.set("mqtt", False)
                log.warning("MQTT connection lost, reconnecting", error=str(error), sleep_s=delay)
                await sleep_or_stop(stop, delay)
                delay = min(delay * 2, self.settings.retry_max_wait_s)
        self.readiness.set("mqtt", False)

    async def _consume(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        messages = client.messages
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                first = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({first, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if first not in done:
                    first.cancel()
                    return
                batch = [first.result()]
                if len(messages) == 0:
                    # Give a burst a moment to gather. A sleep, never a receive with a timeout:
                    # a receive cancelled at the wrong moment drops a message it already took,
                    # which would then sit unacknowledged in our session.
                    await asyncio.sleep(self.max_wait_s)
                while len(batch) < self.max_batch and len(messages) > 0:
                    batch.append(await anext(messages))
                await self._hand_over(client, batch, stop)
        finally:
            stopping.cancel()

    async def _hand_over(
        self, client: aiomqtt.Client, batch: list[aiomqtt.Message], stop: asyncio.Event
    ) -> None:
        accepted: list[Outgoing] = []
        rejected: list[Rejected] = []
        for index, message in enumerate(batch):
            payload = _payload_bytes(message.payload)
            try:
                if len(payload) > self.settings.max_message_bytes:
                    raise PayloadTooLarge(
                        f"message of {len(payload)} bytes is larger than the limit of "
                        f"{self.settings.max_message_bytes}"
                    )
                accepted.append(check_message(payload))
            except RecordError as error:
                rejected.append(Rejected(index, payload, error))
        metrics.MESSAGES_IN.labels(_STAGE).inc(len(batch))
        send = functools.partial(self.handover.send, accepted, rejected, Source.MQTT)
        if not await _until_handed_over(send, stop):
            # Stopping while Kafka is away: unacknowledged, the broker keeps these messages in
            # our session and sends them again when a replica with our client id connects.
            log.info("stopping with an MQTT batch not handed over", messages=len(batch))
            return
        for message in batch:
            if message.qos > 0:
                client._client.ack(message.mid, message.qos)  # noqa: SLF001
        metrics.REQUESTS.labels(_STAGE, "mqtt", "accepted").inc(len(accepted))
        if rejected:
            metrics.REQUESTS.labels(_STAGE, "mqtt", "rejected").inc(len(rejected))


async def _until_handed_over(send: Callable[[], Awaitable[None]], stop: asyncio.Event) -> bool:
    """Keep trying while Kafka is away; False when told to stop before it worked.

    A live MQTT connection gets nothing re-sent until it reconnects, so giving up on the batch
    here would leave it stuck in our session: waiting is the only good answer.
    """
    delay = 0.2
    while True:
        try:
            await send()
            return True
        except PipelineError as error:
            if not error.retriable:
                raise
            metrics.RETRIES.labels(_STAGE, "handover").inc()
            log.warning("Kafka unavailable, holding MQTT batch", error=str(error), sleep_s=delay)
            await sleep_or_stop(stop, delay)
            if stop.is_set():
                return False
            delay = min(delay * 2, 10.0)


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()
