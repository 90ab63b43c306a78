"""The MQTT side of ingest: a shared QoS 1 subscription, acknowledged only after Kafka has it.

Messages are taken in batches (up to `max_records`, or what arrived within `batch_max_wait_ms`
after the first, as the runner polls) so one Kafka round trip covers many readings; up to
`mqtt_max_concurrency` batches are handed over at the same time, and each message is
acknowledged to the broker only after its batch was handed over, in the order the messages came.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog

from libs.common import metrics
from libs.common.audit import AuditWriter
from libs.common.errors import ConfigurationError, MqttUnavailable, RecordError
from libs.common.health import Readiness
from libs.common.kafka import Outgoing
from libs.common.lifecycle import sleep_or_stop
from libs.common.models import Source, Stage
from libs.common.retry import until_stopped
from libs.common.tls import client_context
from services.ingest.audit import mismatched_readings
from services.ingest.handover import Handover
from services.ingest.intake import Rejected, check_message, device_of_topic
from services.ingest.mqtt_client import Delivery, MqttSession
from services.ingest.settings import IngestSettings

log = structlog.get_logger(__name__)
_STAGE = Stage.INGEST.value

# The broker keeps our session (subscription and unacknowledged QoS 1 messages) this long
# while no replica is connected, so readings published during a restart are not lost.
SESSION_EXPIRY_S = 7 * 24 * 3600
RECONNECT_MIN_S = 0.1
HANDOVER_RETRY_MIN_S = 0.2


@dataclass(frozen=True, slots=True)
class MqttLogin:
    """How ingest connects to the broker: the TLS context (None: plaintext) and the account."""

    tls: ssl.SSLContext | None
    credentials: tuple[str, str] | None


def mqtt_login(settings: IngestSettings) -> MqttLogin:
    """The TLS context and account of MQTT_URL; ConfigurationError when the CA or the password
    file is missing (read once, before connecting, so the service stops at start-up)."""
    tls = client_context(settings.tls_ca_file) if settings.mqtt_tls else None
    return MqttLogin(tls, settings.mqtt_credentials())


class MqttIngest:
    def __init__(
        self,
        settings: IngestSettings,
        handover: Handover,
        readiness: Readiness,
        *,
        batch_max_wait_ms: int = 5,
        login: MqttLogin | None = None,
        audit_writer: AuditWriter | None = None,
    ) -> None:
        self.settings = settings
        self.audit_writer = audit_writer
        self.handover = handover
        self.readiness = readiness
        self.max_records = settings.mqtt_max_records
        self.batch_max_wait_ms = batch_max_wait_ms
        self._login = login

    def _session(self, login: MqttLogin) -> MqttSession:
        url = urlsplit(self.settings.mqtt_url)
        return MqttSession(
            url.hostname or "127.0.0.1",
            url.port or (8883 if login.tls is not None else 1883),
            self.settings.mqtt_client_id,
            receive_maximum=self.settings.mqtt_receive_maximum,
            session_expiry_s=SESSION_EXPIRY_S,
            tls=login.tls,
            credentials=login.credentials,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Stay subscribed until `stop`, reconnecting with backoff when the broker goes away;
        a refused login or certificate (ConfigurationError) stops it."""
        login = self._login or mqtt_login(self.settings)
        if login.tls is None:
            log.warning(
                "plaintext MQTT (development only)",
                url=self.settings.mqtt_url,
                login=login.credentials is not None,
            )
        while not stop.is_set():
            session = await until_stopped(
                lambda: self._open(login),
                stop,
                name="mqtt_connect",
                initial_s=RECONNECT_MIN_S,
                max_wait_s=self.settings.mqtt_reconnect_max_s,
            )
            if session is None:
                break
            self.readiness.set("mqtt", True)
            log.info("subscribed", topic=self.settings.mqtt_topic)
            try:
                await self._consume(session, stop)
            finally:
                await session.close()
            if not stop.is_set():
                self.readiness.set("mqtt", False)
                log.warning("MQTT connection lost, reconnecting", sleep_s=RECONNECT_MIN_S)
                # A pause even though the broker answered last time: a connection that is
                # dropped at once (another client with our id) must not reconnect in a spin.
                await sleep_or_stop(stop, RECONNECT_MIN_S)
        self.readiness.set("mqtt", False)

    async def _open(self, login: MqttLogin) -> MqttSession:
        """A subscribed session; raises MqttUnavailable (not ready meanwhile), or
        ConfigurationError when the broker refuses our login or certificate."""
        session = self._session(login)
        try:
            await session.open(self.settings.mqtt_topic)
        except (MqttUnavailable, ConfigurationError):
            await session.close()
            self.readiness.set("mqtt", False)
            raise
        return session

    async def _consume(self, session: MqttSession, stop: asyncio.Event) -> None:
        """Take batches until stopped or the connection is lost; return once every batch taken
        was handed over (or given up because of `stop`)."""
        in_flight: set[asyncio.Task[None]] = set()
        previous: asyncio.Task[None] | None = None
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set() and not session.lost.is_set():
                # Cancelling a take is safe: it removes messages only after its last await.
                taking = asyncio.create_task(
                    session.take(self.max_records, self.batch_max_wait_ms / 1000)
                )
                await asyncio.wait({taking, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not taking.done():
                    taking.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await taking
                    break
                batch = taking.result()
                if not batch:
                    break
                while len(in_flight) >= self.settings.mqtt_max_concurrency:
                    done, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        task.result()
                previous = asyncio.create_task(self._hand_over(session, batch, previous, stop))
                in_flight.add(previous)
        finally:
            stopping.cancel()
            # Every batch taken finishes before the connection is closed (its PUBACKs need it).
            results = await asyncio.gather(*in_flight, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _hand_over(
        self,
        session: MqttSession,
        batch: list[Delivery],
        previous: asyncio.Task[None] | None,
        stop: asyncio.Event,
    ) -> None:
        accepted: list[Outgoing] = []
        rejected: list[Rejected] = []
        limit = self.settings.max_record_bytes
        for index, message in enumerate(batch):
            payload = message.payload
            # The topic names the device (the broker lets a device publish only to its own),
            # even when the payload cannot say; a payload naming another is a DeviceMismatch.
            device_id = device_of_topic(message.topic)
            try:
                accepted.append(check_message(payload, limit, topic_device=device_id))
            except RecordError as error:
                rejected.append(Rejected.of(index, payload, error, limit, device_id))
        metrics.MESSAGES_IN.labels(_STAGE).inc(len(batch))
        if not await self._until_handed_over(accepted, rejected, stop):
            # Stopping while Kafka is away: unacknowledged, the broker keeps these messages in
            # our session and sends them again when a replica with our client id connects.
            log.info("stopping with an MQTT batch not handed over", messages=len(batch))
            return
        if previous is not None:
            # PUBACKs go out in the order the messages came (MQTT v5, 4.6).
            with contextlib.suppress(Exception):
                await previous
        if not session.ack(batch):
            log.info("MQTT connection lost before the acknowledgement", messages=len(batch))
        metrics.REQUESTS.labels(_STAGE, "mqtt", "accepted").inc(len(accepted))
        if rejected:
            metrics.REQUESTS.labels(_STAGE, "mqtt", "rejected").inc(len(rejected))
            # Once handed over, so that a batch sent again after a reconnect is not recorded
            # twice in the usual case.
            if self.audit_writer is not None:
                for event in mismatched_readings(rejected):
                    self.audit_writer.record(event)

    async def _until_handed_over(
        self, accepted: list[Outgoing], rejected: list[Rejected], stop: asyncio.Event
    ) -> bool:
        """Keep trying while Kafka is away; False when told to stop before it worked.

        A live MQTT connection gets nothing re-sent until it reconnects, so giving up on the
        batch here would leave it stuck in our session: waiting is the only good answer.
        """

        async def send() -> bool:
            await self.handover.send(accepted, rejected, Source.MQTT)
            return True

        handed_over = await until_stopped(
            send,
            stop,
            name="handover",
            initial_s=HANDOVER_RETRY_MIN_S,
            max_wait_s=self.settings.retry_max_wait_s,
            stage=_STAGE,
        )
        return handed_over is not None
