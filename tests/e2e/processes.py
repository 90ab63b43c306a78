"""Running the services as real processes for end-to-end tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt

from libs.common.db import connect, migrate
from libs.common.db_accounts import dsn_for
from libs.common.kafka import ensure_topics
from services.enrich.settings import EnrichSettings
from services.store.settings import StoreSettings
from tools import mqtt_run_accounts as run_accounts
from tools.mqtt_accounts import MqttAccountsSettings
from tools.mqtt_run_accounts import blocking
from tools.names import Names
from tools.processes import REPO_ROOT as REPO_ROOT  # re-exported: tests find files by it
from tools.processes import ProcessError, ServiceProcess, free_port

# The database role each stage that uses PostgreSQL connects as: its settings' own default.
STAGE_ROLES: dict[str, str] = {
    "enrich": EnrichSettings.model_fields["database_role"].default,
    "store": StoreSettings.model_fields["database_role"].default,
}


class Service:
    """One stage of a test's chain: the shared process helper, with failures as assertions."""

    def __init__(self, stage: str, process: ServiceProcess) -> None:
        self.stage = stage
        self.proc = process

    @property
    def port(self) -> int:
        assert self.proc.port is not None
        return self.proc.port

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.proc.popen is not None
        return self.proc.popen

    @property
    def log_path(self) -> Path:
        return self.proc.log_path

    @property
    def url(self) -> str:
        return self.proc.url

    def log_tail(self, lines: int = 40) -> str:
        return self.proc.log_tail(lines)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        try:
            self.proc.wait_ready_sync(timeout_s)
        except ProcessError as error:
            raise AssertionError(f"{error}:\n{self.log_tail()}") from None

    def metrics(self) -> str:
        return self.proc.metrics_sync()

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait: the graceful path every service must take."""
        ended = self.proc.stop_sync(timeout_s)
        if ended.killed:
            raise AssertionError(
                f"{self.stage} ignored SIGTERM for {timeout_s}s:\n{self.log_tail(80)}"
            )
        assert ended.code is not None, f"{self.stage} was never started"
        return ended.code


def start(stage: str, port: int, env: dict[str, str], log_dir: Path, name: str = "") -> Service:
    process = ServiceProcess(
        name or stage,
        f"services.{stage}",
        log_dir / f"{name or stage}.log",
        env=env | {"LOG_LEVEL": "INFO"},
        port=port,
        # ingest's HTTPS port too is the test's own: tests run beside each other and `make run`.
        https_port=free_port() if stage == "ingest" and "HTTPS_PORT" not in env else None,
    )
    return Service(stage, process.start())


class Chain:
    """The four stages as processes on one test's topics and schema; each can be killed,
    stopped and started again on the same port (so its Kafka transactional id is the same)."""

    def __init__(
        self,
        suffix: str,
        env: dict[str, str],
        log_dir: Path,
        *,
        shared_topic: bool = False,
        mqtt: MqttAccountsSettings | None = None,
        database: Callable[[str], str] = dsn_for,
    ) -> None:
        self.suffix = suffix
        self.log_dir = log_dir
        # role -> DSN: each stage gets its own role's DATABASE_URL (the local stack's by
        # default; a private stack passes its own secrets), never one shared account.
        self.database = database
        # Devices' topics of this chain alone (t-<suffix>/sensors/<id>/readings), so that tests
        # running beside each other on one broker do not take each other's readings; a chain
        # with `shared_topic` (a private stack) uses the real topics. Either way over TLS,
        # with accounts of the chain's own whose roles allow exactly its topics
        # (tools.mqtt_run_accounts): ingest's, and a fleet account the tests publish with.
        self.topic_prefix = "" if shared_topic else f"t-{suffix}/"
        self._mqtt_settings = mqtt or MqttAccountsSettings()
        self.mqtt = blocking(
            run_accounts.create(f"chain-{suffix}", self.topic_prefix, self._mqtt_settings)
        )
        self.mqtt_client_id = f"ingest-{suffix}"
        self._mqtt_closed = False
        self.env = (
            env
            | self.mqtt.ingest_env()
            | {
                "MQTT_CLIENT_ID": self.mqtt_client_id,
                "CONSUMER_POLL_TIMEOUT_MS": "100",
                "REGISTRY_REFRESH_S": "1",
            }
        )
        self.services: dict[str, Service] = {}
        self._ports: dict[str, int] = {}
        self._stages: dict[str, str] = {}
        self._starts: dict[str, int] = {}

    def mqtt_topic(self, device_id: str) -> str:
        return f"{self.topic_prefix}sensors/{device_id}/readings"

    def start(self, name: str, stage: str | None = None, **env: str) -> Service:
        stage = stage or self._stages.get(name, name)
        port = self._ports.get(name) or free_port()
        self._ports[name], self._stages[name] = port, stage
        self._starts[name] = self._starts.get(name, 0) + 1
        log_name = f"{name}.{self._starts[name]}"
        role = STAGE_ROLES.get(stage)
        database = {"DATABASE_URL": self.database(role)} if role else {}
        service = start(stage, port, self.env | database | env, self.log_dir, log_name)
        self.services[name] = service
        return service

    def start_all(self, names: dict[str, str]) -> None:
        """Start `names` (name -> stage) and wait until each is ready."""
        for name, stage in names.items():
            self.start(name, stage)
        for name in names:
            self.services[name].wait_ready()

    def kill(self, name: str) -> None:
        self.services[name].proc.kill()

    def stop_all(self, timeout_s: float = 30.0) -> dict[str, int]:
        """Stop every service, then end ingest's broker session and delete the chain's
        accounts: a session left behind would stay in its shared subscription."""
        codes = {name: s.terminate(timeout_s) for name, s in self.services.items()}
        if not self._mqtt_closed:  # a test may stop the chain itself before its fixture does
            blocking(run_accounts.forget_session(self.mqtt, self.mqtt_client_id))
            blocking(run_accounts.delete(self.mqtt.run, self._mqtt_settings))
            self._mqtt_closed = True
        return codes

    def mqtt_client(self, **options: Any) -> aiomqtt.Client:
        """A client of the chain's fleet account on the TLS listener, for the devices."""
        return self.mqtt.fleet_client(**options)

    @property
    def ingest_url(self) -> str:
        return self.services["ingest"].url


async def prepare_topics_and_schema(names: Names, partitions: int = 3) -> None:
    """What the `topics` and `schema` fixtures do, for a fixture wider than one test."""
    await ensure_topics(names.settings(topic_partitions=partitions))
    conn = await connect(names.settings(database_role="migrator"))
    try:
        await migrate(conn, names.schema())
    finally:
        await conn.close()


async def drop_schema(names: Names) -> None:
    conn = await connect(names.settings(database_role="migrator"))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{names.schema()}" CASCADE')
    finally:
        await conn.close()
