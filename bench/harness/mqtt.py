"""Mosquitto's own C clients driven from the benchmark: a bare publisher fed line by line, the
persistent sessions that hold a pre-filled queue, and the bare C subscriber that drains one.

mosquitto_pub with -l publishes each stdin line as one message; it can lose the tail when stdin
closes while messages are in flight, so stdin stays open until every PUBACK was counted (from
its -d output) and only then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time

from bench.infra import MQTT_HOST, MQTT_PORT

_PUBACK = b"received PUBACK"
# Sessions the benchmark creates outlive a crash of the harness by at most this long.
SESSION_EXPIRY_S = 900
# In-flight QoS 1 messages the bare clients allow, as ingest's receive maximum does (2 x 500).
MAX_INFLIGHT = 1000


def _base(client_id: str | None) -> list[str]:
    args = ["-h", MQTT_HOST, "-p", str(MQTT_PORT), "-V", "mqttv5", "-q", "1"]
    return args + (["-i", client_id] if client_id else [])


class BarePublisher:
    """mosquitto_pub -l on a pipe: write lines, count the broker's acknowledgements."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.acked = 0
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # stdbuf: mosquitto_pub's -d lines go through stdio, block-buffered on a pipe, and the
        # last block would only arrive at exit; line-buffered, every PUBACK is seen when it comes.
        self._process = await asyncio.create_subprocess_exec(
            "stdbuf",
            "-oL",
            "mosquitto_pub",
            *_base(None),
            "-t",
            self.topic,
            "-l",
            "-d",
            "-M",
            str(MAX_INFLIGHT),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._reader = asyncio.create_task(self._count_acks())

    async def _count_acks(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        tail = b""
        while True:
            chunk = await self._process.stdout.read(1 << 16)
            if not chunk:
                return
            data = tail + chunk
            # Count in whole lines only, so a marker split across two reads counts once.
            cut = data.rfind(b"\n")
            if cut < 0:
                tail = data
                continue
            self.acked += data[:cut].count(_PUBACK)
            tail = data[cut + 1 :]

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def write(self, data: bytes) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(data)
        await self._process.stdin.drain()

    async def wait_acked(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.acked < count and time.monotonic() < deadline:
            if self._process is not None and self._process.returncode is not None:
                return False
            await asyncio.sleep(0.02)
        return self.acked >= count

    async def close(self) -> None:
        if self._process is None:
            return
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def publish_all(topic: str, lines: list[bytes], timeout_s: float = 300.0) -> float:
    """Publish every line (QoS 1) and return the seconds until the last PUBACK."""
    publisher = BarePublisher(topic)
    await publisher.start()
    started = time.perf_counter()
    try:
        chunk = 5000
        for i in range(0, len(lines), chunk):
            await publisher.write(b"\n".join(lines[i : i + chunk]) + b"\n")
        if not await publisher.wait_acked(len(lines), timeout_s):
            raise RuntimeError(f"mosquitto_pub: {publisher.acked} of {len(lines)} acknowledged")
        return time.perf_counter() - started
    finally:
        await publisher.close()


def open_session(client_id: str, topic_filter: str) -> None:
    """A persistent session subscribed to `topic_filter`, left offline: the broker queues for it."""
    subprocess.run(
        ["mosquitto_sub", *_base(client_id), "-c", "-x", str(SESSION_EXPIRY_S)]
        + ["-t", topic_filter, "-E"],
        check=True,
        timeout=30,
        capture_output=True,
    )


def close_session(client_id: str) -> None:
    """Connect once with a clean start and no expiry: the broker forgets the session."""
    subprocess.run(
        ["mosquitto_sub", *_base(client_id), "-t", "bench/none", "-E"],
        check=False,
        timeout=30,
        capture_output=True,
    )


def drain_session_c(client_id: str, topic_filter: str, count: int, timeout_s: float) -> float:
    """Seconds for mosquitto_sub (C) to receive `count` queued messages, connect included."""
    started = time.perf_counter()
    done = subprocess.run(
        ["mosquitto_sub", *_base(client_id), "-c", "-x", str(SESSION_EXPIRY_S)]
        + ["-t", topic_filter, "-C", str(count), "-W", str(int(timeout_s))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout_s + 10,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"mosquitto_sub exited {done.returncode}: {done.stderr[-300:]!r}")
    return elapsed
