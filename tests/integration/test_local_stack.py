"""The local server stack that `make up` (deploy/local/stack.sh) starts.

These tests talk to the running stack and never start it: a server that does not answer is a
failure that says to run `make up`. Ports come from the same environment variables as the
stack's (KAFKA_PORT, MQTT_TLS_PORT, PG_PORT).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import aiomqtt
import asyncpg
import pytest

from libs.common.tls import client_context
from tools.mqtt_run_accounts import RunAccounts

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STACK_SH = ROOT / "deploy" / "local" / "stack.sh"
KAFKA_TOOL = ROOT / "deploy" / "local" / "kafka-tool.sh"
PID_FILES = {
    name: ROOT / ".stack" / "run" / f"{name}.pid"
    for name in ("kafka", "mosquitto", "postgres", "keycloak")
}

HOST = "127.0.0.1"
KAFKA_PORT = int(os.environ.get("KAFKA_PORT", "9092"))
PG_PORT = int(os.environ.get("PG_PORT", "5432"))
DATABASE_URL = f"postgresql://sensors:sensors@{HOST}:{PG_PORT}/sensors"


def require_server(what: str, port: int) -> None:
    """Fail (never skip) when a server of the stack does not accept connections."""
    try:
        with socket.create_connection((HOST, port), timeout=3):
            return
    except OSError as exc:
        pytest.fail(f"{what} is not reachable on {HOST}:{port} ({exc}): run `make up` first")


def read_pids() -> dict[str, str]:
    missing = [str(path) for path in PID_FILES.values() if not path.is_file()]
    if missing:
        pytest.fail(f"no pid file {', '.join(missing)}: run `make up` first")
    return {name: path.read_text().strip() for name, path in PID_FILES.items()}


def test_broker_on_the_kafka_port_is_apache_kafka() -> None:
    require_server("Kafka", KAFKA_PORT)
    result = subprocess.run(
        [
            "bash",
            str(KAFKA_TOOL),
            "org.apache.kafka.tools.BrokerApiVersionsCommand",
            "--bootstrap-server",
            f"{HOST}:{KAFKA_PORT}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"api versions tool failed:\n{result.stdout}\n{result.stderr}"
    out = result.stdout
    assert f"{HOST}:{KAFKA_PORT} (id: 1" in out, out
    for api in ("Produce(0)", "Fetch(1)", "ApiVersions(18)", "CreateTopics(19)"):
        assert api in out, f"{api} missing from the broker's API versions:\n{out}"


def test_running_up_again_keeps_every_server_process_and_is_quick() -> None:
    before = read_pids()
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(STACK_SH), "up"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, f"second `up` failed:\n{result.stdout}\n{result.stderr}"
    assert read_pids() == before, f"`up` restarted a server:\n{result.stdout}"
    for name, pid in before.items():
        assert Path(f"/proc/{pid}").exists(), f"{name} (pid {pid}) is gone after `up`"
    assert elapsed < 60, f"a warm `up` took {elapsed:.0f}s:\n{result.stdout}"


async def test_mosquitto_delivers_a_qos1_message_over_mqtt_v5_and_tls(
    mqtt_accounts: RunAccounts,
) -> None:
    topic = mqtt_accounts.topic(f"dev-{uuid.uuid4().hex[:8]}")
    payload = uuid.uuid4().bytes
    subscriber = aiomqtt.Client(
        mqtt_accounts.host,
        mqtt_accounts.port,
        username=mqtt_accounts.ingest_username,
        password=mqtt_accounts.ingest_password,
        identifier=f"test-local-stack-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=client_context(mqtt_accounts.ca_file),
        timeout=10,
    )
    async with asyncio.timeout(20), subscriber, mqtt_accounts.fleet_client(timeout=10) as fleet:
        await subscriber.subscribe(topic, qos=1)
        await fleet.publish(topic, payload, qos=1)
        async for message in subscriber.messages:
            assert message.topic.matches(topic)
            assert message.payload == payload
            assert message.qos == 1
            break


async def test_sensors_database_has_timescaledb_2_preloaded() -> None:
    require_server("PostgreSQL", PG_PORT)
    conn = await asyncpg.connect(DATABASE_URL, timeout=10)
    try:
        version = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        )
        preload = await conn.fetchval("SHOW shared_preload_libraries")
    finally:
        await conn.close()
    assert version is not None, "extension timescaledb is not created in database sensors"
    assert version.startswith("2."), version
    assert "timescaledb" in preload, preload
