"""The one MQTT adapter of ingest: a persistent MQTT v5 session whose QoS 1 messages are
acknowledged only when the caller says so (gmqtt underneath).

gmqtt was chosen by measurement (bench/steps/mqtt_clients.py): it receives about 0.95x what
Mosquitto's own C client does on this machine, paho 0.26x, aiomqtt 0.10x.

How acknowledgements work here, and why: gmqtt with `optimistic_acknowledgement=False` sends
the PUBACK when an *async* `on_message` returns, which costs a task a message and hides the
packet id. Instead we take QoS 1 messages one step earlier, where gmqtt has the packet id
(`_handle_qos_1_publish_packet`; with the connection's send and its transport, the private
parts used; gmqtt is pinned to the version tested, `check_client_hooks` and
`check_connection_hooks` stop the service with PrivateHookMissing when one is gone, and
tests/integration/test_mqtt_session.py checks the behaviour), and send the PUBACKs ourselves,
in the order the messages came, once their batch was handed over. A PUBACK belongs to the
connection that delivered the message: after a reconnect the broker sends the
unacknowledged messages again and may reuse their packet ids for others, so acknowledgements
for a lost connection are dropped, never sent on a new one.

Memory: the Receive Maximum should bound what the broker sends ahead of our PUBACKs, but
Mosquitto 2.0.11 exceeds it when it drains a backlog queued while we were away (it sent 24,500
of 30,000 queued with a Receive Maximum of 1,000; 2.0.13's "inflight quota management" fix
may be it, not tested). So we also stop reading from the socket while `receive_maximum`
messages wait here: TCP then holds the broker back, and the backlog stays in the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

import gmqtt
import structlog
from gmqtt.mqtt.constants import MQTTCommands, MQTTv50

from libs.common.errors import ConfigurationError, MqttUnavailable, PrivateHookMissing

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 10.0
# CONNACK reason codes of a refused login (MQTT v5: Bad User Name or Password, Not
# authorized; v3.1.1: 4 and 5): permanent, another try with the same credentials fails alike.
LOGIN_REFUSED = frozenset({0x86, 0x87, 4, 5})
# A SUBACK's "not authorized": the account may not read that topic filter, on every try.
NOT_AUTHORIZED = 0x87


@dataclass(slots=True)
class Delivery:
    """One message as the broker delivered it on one connection."""

    payload: bytes
    # The broker's packet id; None for QoS 0 (nothing to acknowledge).
    mid: int | None
    # The topic it was published to ("" when not UTF-8): names the device that sent it.
    topic: str = ""


class _Client(gmqtt.Client):
    """gmqtt's client without its own reconnect: the caller opens a new session instead.

    gmqtt would reconnect the same client after a fixed delay, even after disconnect() was
    asked for meanwhile; a second client with our id would then take the session over from
    the one the caller opened.
    """

    async def reconnect(self, delay: bool = False) -> None:
        return None


def check_client_hooks(client: gmqtt.Client) -> None:
    """The private parts of a new gmqtt client we replace or use, or PrivateHookMissing."""
    handler = getattr(client, "_package_handler", None)
    if not callable(getattr(handler, "_handle_qos_1_publish_packet", None)):
        raise PrivateHookMissing("gmqtt", "Client._package_handler._handle_qos_1_publish_packet")
    if not hasattr(client, "_connection"):
        raise PrivateHookMissing("gmqtt", "Client._connection")


def check_connection_hooks(connection: Any) -> None:
    """The private parts of a live gmqtt connection that flow control needs (they exist only
    once connected), or PrivateHookMissing: without them the memory bound would be gone."""
    transport = getattr(connection, "_transport", None)
    if not callable(getattr(transport, "pause_reading", None)):
        raise PrivateHookMissing("gmqtt", "MQTTConnection._transport")
    reader = getattr(getattr(connection, "_protocol", None), "_hard_reader", None)
    if reader is None:
        raise PrivateHookMissing("gmqtt", "MQTTConnection._protocol._hard_reader")
    if not isinstance(getattr(reader, "_paused", None), bool):
        raise PrivateHookMissing("python", "asyncio.StreamReader._paused")


class MqttSession:
    """One connection with our persistent session; open it, `take` messages, `ack` them.

    Not reusable: after `lost` is set, close it and open a new one.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        receive_maximum: int,
        session_expiry_s: int,
        tls: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        self.lost = asyncio.Event()
        self._pending: deque[Delivery] = deque()
        self._high_water = receive_maximum
        # Only once subscribed: a paused socket would hold back the SUBACK that open() awaits.
        self._flow_control = False
        self._reading_paused = False
        self._arrived = asyncio.Event()
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._client = _Client(
            client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            session_expiry_interval=session_expiry_s,
            # At most this many unacknowledged QoS 1 messages in flight to us: the broker
            # keeps the rest, which bounds our memory and is our backpressure.
            receive_maximum=receive_maximum,
        )
        check_client_hooks(self._client)
        if credentials is not None:
            self._client.set_auth_credentials(*credentials)
        self._client.on_message = self._on_message
        # Instead of gmqtt's own QoS 1 handling (which acknowledges when on_message is done).
        self._client._package_handler._handle_qos_1_publish_packet = self._on_qos1  # noqa: SLF001
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe

    # gmqtt's callbacks (plain functions: see the module docstring)
    def _on_qos1(self, mid: int, payload: bytes, topic: str | bytes, _properties: Any) -> None:
        # gmqtt passes the topic's bytes when they are not UTF-8.
        self._pending.append(Delivery(payload, mid, topic if isinstance(topic, str) else ""))
        self._arrived.set()
        if self._flow_control and len(self._pending) >= self._high_water:
            if not self._reading_paused:
                self._pause_reading(True)

    def _pause_reading(self, pause: bool) -> None:
        # gmqtt has no flow control of its own: pause its socket. Its asyncio StreamReader
        # also pauses the socket when its buffer is full and resumes it when the buffer has
        # drained, which would undo our pause: it is told the pause is not its own.
        # The hooks were checked when the connection was opened (check_connection_hooks).
        connection = self._client._connection  # noqa: SLF001
        if connection is None:
            return
        transport = connection._transport  # noqa: SLF001
        if transport.is_closing():
            return
        if pause:
            transport.pause_reading()
            connection._protocol._hard_reader._paused = False  # noqa: SLF001
        else:
            transport.resume_reading()
        self._reading_paused = pause

    def _on_message(
        self, _client: Any, topic: str | bytes, payload: bytes, _qos: int, _properties: Any
    ) -> None:
        # QoS 0 only (QoS 1 goes through _on_qos1; we subscribe with at most QoS 1).
        self._pending.append(Delivery(payload, None, topic if isinstance(topic, str) else ""))
        self._arrived.set()

    def _on_disconnect(self, _client: Any, _packet: Any, exc: Any = None) -> None:
        self.lost.set()
        self._arrived.set()
        for future in self._subacks.values():
            if not future.done():
                future.set_exception(MqttUnavailable("connection lost before SUBACK"))

    def _on_subscribe(self, _client: Any, mid: int, qos: list[int], _properties: Any) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(list(qos))

    async def open(self, topic: str) -> None:
        """Connect (clean start off) and subscribe with QoS 1; raises MqttUnavailable while
        the broker is away, ConfigurationError when it refuses our login or its certificate
        does not verify (permanent: retrying cannot help)."""
        try:
            await asyncio.wait_for(
                self._client.connect(self.host, self.port, ssl=self._tls or False, version=MQTTv50),
                CONNECT_TIMEOUT_S,
            )
            future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
            mid = self._client.subscribe(topic, qos=1)
            self._subacks[mid] = future
            granted = await asyncio.wait_for(future, CONNECT_TIMEOUT_S)
        except ssl.SSLCertVerificationError as error:
            self.lost.set()
            raise ConfigurationError(
                f"MQTT broker {self.host}:{self.port}: its TLS certificate does not verify "
                f"against TLS_CA_FILE ({error.verify_message}): check TLS_CA_FILE and MQTT_URL"
            ) from error
        except gmqtt.MQTTConnectError as error:
            self.lost.set()
            # gmqtt keeps the CONNACK's reason code only in a private attribute.
            code = getattr(error, "_code", None)
            if code in LOGIN_REFUSED:
                raise ConfigurationError(
                    f"MQTT broker {self.host}:{self.port} refused the login ({error}): check "
                    "MQTT_USERNAME and MQTT_PASSWORD (or MQTT_PASSWORD_FILE)"
                ) from error
            raise MqttUnavailable(f"{self.host}:{self.port}: {error!r}") from error
        except (OSError, TimeoutError) as error:
            self.lost.set()
            raise MqttUnavailable(f"{self.host}:{self.port}: {error!r}") from error
        # Not an outage: a library without the parts flow control needs stops the service.
        check_connection_hooks(self._client._connection)  # noqa: SLF001
        if granted and granted[0] == NOT_AUTHORIZED:
            self.lost.set()
            raise ConfigurationError(
                f"MQTT broker {self.host}:{self.port} does not let MQTT_USERNAME subscribe to "
                f"{topic} (not authorized): check MQTT_TOPIC and the account's role"
            )
        if not granted or granted[0] >= 0x80:
            self.lost.set()
            raise MqttUnavailable(f"subscription to {topic} refused: {granted}")
        self._flow_control = True
        if len(self._pending) >= self._high_water:
            self._pause_reading(True)

    async def take(self, max_count: int, max_wait_s: float) -> list[Delivery]:
        """Up to `max_count` messages, waiting for the first; then at most `max_wait_s` for
        more to gather. Empty once the connection is lost (what was taken stays unacknowledged,
        and the broker sends it again on the next connection).
        """
        while not self._pending:
            if self.lost.is_set():
                return []
            self._arrived.clear()
            await self._arrived.wait()
        if len(self._pending) < max_count and max_wait_s > 0:
            await asyncio.sleep(max_wait_s)
        count = min(max_count, len(self._pending))
        taken = [self._pending.popleft() for _ in range(count)]
        if self._reading_paused and len(self._pending) < self._high_water // 2:
            self._pause_reading(False)
        return taken

    def ack(self, deliveries: list[Delivery]) -> bool:
        """PUBACK each QoS 1 delivery on the connection that delivered it; False if that
        connection is gone (then nothing is sent: the broker delivers them again)."""
        if self.lost.is_set():
            return False
        connection = self._client._connection  # noqa: SLF001 - see the module docstring
        if connection is None or connection.is_closing():
            return False
        for delivery in deliveries:
            if delivery.mid is not None:
                connection.send_command_with_mid(MQTTCommands.PUBACK, delivery.mid, False)
        return True

    async def close(self) -> None:
        """Leave (DISCONNECT): the session and its unacknowledged messages stay with the broker."""
        self.lost.set()
        self._arrived.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.disconnect(), CONNECT_TIMEOUT_S)
