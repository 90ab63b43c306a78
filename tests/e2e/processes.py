"""Running the services as real processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from libs.common.db import connect, migrate
from libs.common.kafka import ensure_topics
from tests.conftest import Names

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    stage: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.stage} exited {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.stage} not ready after {timeout_s}s:\n{self.log_tail()}")

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5).text

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait: the graceful path every service must take."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                # Ask it what it is waiting on (the service logs every task's stack), then kill.
                self.process.send_signal(signal.SIGUSR1)
                time.sleep(1)
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"{self.stage} ignored SIGTERM for {timeout_s}s:\n{self.log_tail(80)}"
                ) from None
        return self.process.returncode


def start(stage: str, port: int, env: dict[str, str], log_dir: Path, name: str = "") -> Service:
    log_path = log_dir / f"{name or stage}.log"
    full_env = os.environ | env | {"HTTP_PORT": str(port), "LOG_LEVEL": "INFO"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{stage}"],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Service(stage, port, process, log_path)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    found = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return found


class Chain:
    """The four stages as processes on one test's topics and schema; each can be killed,
    stopped and started again on the same port (so its Kafka transactional id is the same)."""

    def __init__(self, suffix: str, env: dict[str, str], log_dir: Path) -> None:
        self.suffix = suffix
        self.log_dir = log_dir
        self.env = env | {
            "MQTT_TOPIC": f"$share/ingest/t-{suffix}/sensors/+/readings",
            "MQTT_CLIENT_ID": f"ingest-{suffix}",
            "CONSUMER_POLL_TIMEOUT_MS": "100",
            "REGISTRY_REFRESH_S": "1",
        }
        self.services: dict[str, Service] = {}
        self._ports: dict[str, int] = {}
        self._stages: dict[str, str] = {}
        self._starts: dict[str, int] = {}

    def mqtt_topic(self, device_id: str) -> str:
        return f"t-{self.suffix}/sensors/{device_id}/readings"

    def start(self, name: str, stage: str | None = None, **env: str) -> Service:
        stage = stage or self._stages.get(name, name)
        port = self._ports.get(name) or free_ports(1)[0]
        self._ports[name], self._stages[name] = port, stage
        self._starts[name] = self._starts.get(name, 0) + 1
        log_name = f"{name}.{self._starts[name]}"
        service = start(stage, port, self.env | env, self.log_dir, log_name)
        self.services[name] = service
        return service

    def start_all(self, names: dict[str, str]) -> None:
        """Start `names` (name -> stage) and wait until each is ready."""
        for name, stage in names.items():
            self.start(name, stage)
        for name in names:
            self.services[name].wait_ready()

    def kill(self, name: str) -> None:
        service = self.services[name]
        service.process.kill()
        service.process.wait()

    def stop_all(self, timeout_s: float = 30.0) -> dict[str, int]:
        return {name: s.terminate(timeout_s) for name, s in self.services.items()}

    @property
    def ingest_url(self) -> str:
        return self.services["ingest"].url


async def prepare_topics_and_schema(names: Names, partitions: int = 3) -> None:
    """What the `topics` and `schema` fixtures do, for a fixture wider than one test."""
    await ensure_topics(names.settings(topic_partitions=partitions))
    conn = await connect(names.settings())
    try:
        await migrate(conn, names.schema)
    finally:
        await conn.close()


async def drop_schema(names: Names) -> None:
    conn = await connect(names.settings())
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{names.schema}" CASCADE')
    finally:
        await conn.close()
