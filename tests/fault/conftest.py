"""Fault tests run on a private stack of the same servers (.stack/fault, other ports), so they
can stop, kill and restart Kafka, PostgreSQL and Mosquitto without disturbing anything else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from libs.common.db import connect, migrate
from libs.common.db_accounts import role_dsn
from libs.common.kafka import ensure_topics
from libs.common.settings import PipelineSettings
from tests.conftest import Names, connect_to_schema
from tests.e2e.processes import REPO_ROOT, Chain
from tools.mqtt_accounts import MqttAccountsSettings

STACK_DIR = REPO_ROOT / ".stack" / "fault"
FIGURES = STACK_DIR / "figures"
PORTS = {
    "KAFKA_PORT": 29092,
    "KAFKA_CONTROLLER_PORT": 29093,
    "KAFKA_SASL_PORT": 29094,
    "MQTT_PORT": 21883,
    "MQTT_TLS_PORT": 28883,
    "PG_PORT": 25432,
}
KAFKA = f"127.0.0.1:{PORTS['KAFKA_PORT']}"
FAULT_CA = STACK_DIR / "certs" / "ca.crt"
# This stack's development owner (a well-known password), verified against this stack's CA: the
# tests' own look at the tables. The stages connect as their roles, with this stack's secrets.
DATABASE_URL = (
    f"postgresql://sensors:sensors@127.0.0.1:{PORTS['PG_PORT']}/sensors"
    f"?sslmode=verify-full&sslrootcert={FAULT_CA}"
)


def fault_dsn(role: str) -> str:
    """A role's DSN on this stack: its password from this stack's secrets folder (its `up`
    generated them), TLS verified against this stack's CA."""
    return role_dsn(
        role, port=PORTS["PG_PORT"], ca_file=FAULT_CA, secrets_dir=STACK_DIR / "secrets"
    )


SERVERS = ("kafka", "mosquitto", "postgres")


class FaultStack:
    """The private stack: started by stack.sh, its servers stopped by pid and started again."""

    env = {"STACK_DIR": str(STACK_DIR), **{k: str(v) for k, v in PORTS.items()}}
    client_env = {
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA,
        "TLS_CA_FILE": str(FAULT_CA),
    }

    def _stack(self, command: str) -> None:
        result = subprocess.run(
            # Only its own servers: the identity provider is not part of the fault tests.
            ["bash", "deploy/local/stack.sh", command, *SERVERS],
            cwd=REPO_ROOT,
            env=os.environ | self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"stack.sh {command} failed:\n{result.stdout}\n{result.stderr}", pytrace=False
            )

    def up(self) -> None:
        self._stack("up")

    def down(self) -> None:
        self._stack("down")

    def pid(self, server: str) -> int:
        return int((STACK_DIR / "run" / f"{server}.pid").read_text().split()[0])

    def stop(self, server: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop one server and wait until its process is gone."""
        assert server in SERVERS
        pid = self.pid(server)
        # PostgreSQL's fast shutdown is SIGINT: SIGTERM waits for every client to leave.
        os.kill(pid, signal.SIGINT if server == "postgres" and sig == signal.SIGTERM else sig)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        pytest.fail(f"{server} (pid {pid}) did not stop", pytrace=False)


@pytest.fixture(scope="session")
def fault_stack() -> Iterator[FaultStack]:
    stack = FaultStack()
    for old in FIGURES.glob("*.json"):
        old.unlink()
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture
async def fault_names(fault_stack: FaultStack, names: Names) -> AsyncIterator[Names]:
    settings = names.settings(
        kafka_bootstrap_servers=KAFKA,
        database_url=fault_dsn("migrator"),
        tls_ca_file=FAULT_CA,
        topic_partitions=6,
    )
    await ensure_topics(settings)
    conn = await connect(settings)
    try:
        await migrate(conn, names.schema())
    finally:
        await conn.close()
    yield names
    # A connection of its own: the test may have restarted PostgreSQL meanwhile.
    conn = await connect(settings)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{names.schema()}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def fault_db(fault_names: Names) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_to_schema(fault_names.schema(), DATABASE_URL)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def fault_chain(fault_names: Names, request: pytest.FixtureRequest) -> Iterator[Chain]:
    # The services' logs stay in .stack/fault/service-logs/<test> after the run, to read
    # when a figure is off.
    log_dir = STACK_DIR / "service-logs" / request.node.name
    if log_dir.exists():
        for old in log_dir.glob("*.log"):
            old.unlink()
    log_dir.mkdir(parents=True, exist_ok=True)
    # The real topics and shared subscription (a private stack), over TLS with accounts.
    chain = Chain(
        fault_names.run_id,
        fault_names.env() | FaultStack.client_env,
        log_dir,
        shared_topic=True,
        mqtt=MqttAccountsSettings(stack_dir=STACK_DIR, mqtt_tls_port=PORTS["MQTT_TLS_PORT"]),
        database=fault_dsn,
    )
    try:
        yield chain
    finally:
        chain.stop_all()


def fault_settings(names: Names, role: str = "reader") -> PipelineSettings:
    return names.settings(
        kafka_bootstrap_servers=KAFKA, database_url=fault_dsn(role), tls_ca_file=FAULT_CA
    )


def record_figures(name: str, figures: dict[str, Any]) -> None:
    """Keep a test's figures for the summary at the end of the run and docs/reliability.md."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES.exists():
        return
    files = sorted(FIGURES.glob("*.json"))
    if files:
        terminalreporter.section("fault test figures")
        for path in files:
            terminalreporter.write_line(f"{path.stem}: {path.read_text()}")
