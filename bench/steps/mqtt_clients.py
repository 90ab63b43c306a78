"""Receive rate of the Python MQTT clients ingest could use: paho-mqtt, gmqtt and aiomqtt.

`python -m bench.steps.mqtt_clients CLIENT CLIENT_ID COUNT` connects to an existing persistent
session (clean start off) whose queue the harness filled, receives COUNT QoS 1 messages,
acknowledging each on receipt (each client's fastest mode), and writes one JSON line: received,
seconds from the first message to the last, CPU seconds. Each runs in a process of its own, so
no client pays for another's imports or threads.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import orjson
import uvloop

from bench.harness.mqtt import MAX_INFLIGHT, SESSION_EXPIRY_S
from bench.infra import MQTT_HOST, MQTT_PORT

CLIENTS = ("paho", "gmqtt", "aiomqtt")


class Tally:
    def __init__(self, count: int) -> None:
        self.count = count
        self.received = 0
        self.first = 0.0
        self.last = 0.0

    def one(self) -> bool:
        """Count a message; True once all have arrived."""
        now = time.perf_counter()
        if self.received == 0:
            self.first = now
        self.received += 1
        self.last = now
        return self.received >= self.count


def _paho(client_id: str, tally: Tally, timeout_s: float) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    props.ReceiveMaximum = MAX_INFLIGHT

    def on_message(c: Any, _userdata: Any, _message: Any) -> None:
        if tally.one():
            c.disconnect()

    client.on_message = on_message
    client.connect(MQTT_HOST, MQTT_PORT, clean_start=False, properties=props)
    deadline = time.monotonic() + timeout_s
    while tally.received < tally.count and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()


async def _gmqtt(client_id: str, tally: Tally, timeout_s: float) -> None:
    import gmqtt

    done = asyncio.Event()
    client = gmqtt.Client(
        client_id,
        clean_session=False,
        session_expiry_interval=SESSION_EXPIRY_S,
        receive_maximum=MAX_INFLIGHT,
    )

    def on_message(_c: Any, _topic: str, _payload: bytes, _qos: int, _props: Any) -> int:
        if tally.one():
            done.set()
        return 0

    client.on_message = on_message
    await client.connect(MQTT_HOST, MQTT_PORT)
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
    except TimeoutError:
        pass
    await client.disconnect()


async def _aiomqtt(client_id: str, tally: Tally, timeout_s: float) -> None:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    props.ReceiveMaximum = MAX_INFLIGHT
    client = aiomqtt.Client(
        MQTT_HOST,
        MQTT_PORT,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=props,
    )

    async def receive() -> None:
        async for _message in client.messages:
            if tally.one():
                return

    async with client:
        try:
            await asyncio.wait_for(receive(), timeout_s)
        except TimeoutError:
            pass


def receive(client: str, client_id: str, count: int, timeout_s: float = 120.0) -> dict[str, Any]:
    tally = Tally(count)
    cpu = time.process_time()
    if client == "paho":
        _paho(client_id, tally, timeout_s)
    elif client == "gmqtt":
        uvloop.run(_gmqtt(client_id, tally, timeout_s))
    elif client == "aiomqtt":
        uvloop.run(_aiomqtt(client_id, tally, timeout_s))
    else:
        raise ValueError(f"unknown client {client!r}; one of {CLIENTS}")
    return {
        "client": client,
        "received": tally.received,
        "seconds": tally.last - tally.first,
        "cpu_s": time.process_time() - cpu,
    }


def main(argv: list[str]) -> int:
    client, client_id, count = argv[0], argv[1], int(argv[2])
    sys.stdout.buffer.write(orjson.dumps(receive(client, client_id, count)) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
