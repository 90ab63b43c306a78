"""MQTT accounts scoped to one run's topic prefix (a test, a benchmark), on the TLS listener.

Runs beside each other on one broker keep apart by a topic prefix (``t-<run>/sensors/<id>/
readings``), and ingest's own account may subscribe only to the real
``$share/ingest/sensors/+/readings``. So a run gets two accounts of its own from the dynamic
security plugin (tools.mqtt_accounts' admin connection), each with a role that allows exactly
its prefix:

- an ingest account: subscribe to ``$share/ingest/<prefix>sensors/+/readings`` and receive
  ``<prefix>sensors/+/readings``, what the real ingest account may on the real topics;
- a fleet account (a gateway for every device of the run): publish to
  ``<prefix>sensors/+/readings``.

Per-device accounts and their refusals are tests/integration/test_mqtt_auth.py's; a run's fleet
account lets a test send bad payloads and many devices' readings through TLS and a login.
``delete`` removes both (their sessions are cut).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt

from libs.common.tls import client_context
from tools.mqtt_accounts import Control, MqttAccountsSettings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RunAccounts:
    """The two accounts of a run and where they log in."""

    run: str
    prefix: str
    host: str
    port: int
    ca_file: Path
    ingest_username: str
    ingest_password: str
    fleet_username: str
    fleet_password: str
    group: str = "ingest"

    @property
    def url(self) -> str:
        return f"mqtts://{self.host}:{self.port}"

    @property
    def shared_topic(self) -> str:
        return f"$share/{self.group}/{self.prefix}sensors/+/readings"

    def topic(self, device_id: str) -> str:
        return f"{self.prefix}sensors/{device_id}/readings"

    def fleet_client(self, **options: Any) -> aiomqtt.Client:
        """A client of the run's fleet account (the devices), on the TLS listener."""
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.fleet_username,
            password=self.fleet_password,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=client_context(self.ca_file),
            **options,
        )

    def ingest_settings(self) -> dict[str, str]:
        """ingest_env as keyword arguments of IngestSettings (an ingest in the test process)."""
        return {name.lower(): value for name, value in self.ingest_env().items()}

    def ingest_env(self) -> dict[str, str]:
        """The settings that make an ingest subscribe as this run's ingest account."""
        return {
            "MQTT_URL": self.url,
            "MQTT_USERNAME": self.ingest_username,
            "MQTT_PASSWORD": self.ingest_password,
            "MQTT_TOPIC": self.shared_topic,
            "TLS_CA_FILE": str(self.ca_file),
        }


def _roles(run: str, prefix: str, group: str) -> dict[str, list[dict[str, object]]]:
    readings = f"{prefix}sensors/+/readings"
    return {
        f"run-ingest-{run}": [
            {"acltype": "subscribePattern", "topic": f"$share/{group}/{readings}", "allow": True},
            # Beyond the real ingest role: its topics without the shared subscription, for the
            # tests of the MQTT session itself (tests/integration/test_mqtt_session.py).
            {"acltype": "subscribePattern", "topic": readings, "allow": True},
            {"acltype": "publishClientReceive", "topic": readings, "allow": True},
            {"acltype": "unsubscribePattern", "topic": "#", "allow": True},
        ],
        f"run-fleet-{run}": [
            {"acltype": "publishClientSend", "topic": readings, "allow": True},
        ],
    }


async def create(
    run: str, prefix: str, settings: MqttAccountsSettings | None = None, *, group: str = "ingest"
) -> RunAccounts:
    """The run's accounts, made again from nothing (an older run's of the same name deleted).
    `group`: the share group of ingest's subscription; a run on the real topics of a shared
    broker takes one of its own, since the real group has `make run`'s session in it."""
    settings = settings or MqttAccountsSettings()
    passwords = {kind: secrets.token_urlsafe(18) for kind in ("ingest", "fleet")}
    async with Control(settings) as control:
        await _delete(control, run)
        for rolename, acls in _roles(run, prefix, group).items():
            await control.one({"command": "createRole", "rolename": rolename, "acls": acls})
        for kind, password in passwords.items():
            await control.one(
                {
                    "command": "createClient",
                    "username": f"run-{kind}-{run}",
                    "password": password,
                    "textName": f"run {run}'s {kind} account ({prefix or 'the real topics'})",
                    "roles": [{"rolename": f"run-{kind}-{run}"}],
                }
            )
    return RunAccounts(
        run=run,
        prefix=prefix,
        host=settings.mqtt_tls_host,
        port=settings.mqtt_tls_port,
        ca_file=settings.ca_file,
        ingest_username=f"run-ingest-{run}",
        ingest_password=passwords["ingest"],
        fleet_username=f"run-fleet-{run}",
        fleet_password=passwords["fleet"],
        group=group,
    )


async def _delete(control: Control, run: str) -> None:
    for kind in ("ingest", "fleet"):
        name = f"run-{kind}-{run}"
        await control.one({"command": "deleteClient", "username": name}, ok=("Client not found",))
        await control.one({"command": "deleteRole", "rolename": name}, ok=("Role not found",))


async def delete(run: str, settings: MqttAccountsSettings | None = None) -> None:
    async with Control(settings or MqttAccountsSettings()) as control:
        await _delete(control, run)


async def forget_session(accounts: RunAccounts, client_id: str) -> None:
    """End the broker's session of `client_id` (a stopped ingest of the run): connect once with
    a clean start and no expiry. A persistent session left behind stays a member of its shared
    subscription, and the broker goes on handing it its share of the readings until it
    expires (docs/operations.md, "Scaling ingest down")."""
    async with aiomqtt.Client(
        accounts.host,
        accounts.port,
        username=accounts.ingest_username,
        password=accounts.ingest_password,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        tls_context=client_context(accounts.ca_file),
    ):
        pass


def blocking(operation: Coroutine[Any, Any, T]) -> T:
    """Run `operation` to its end from synchronous code, even inside a running event loop (a
    pytest fixture, a benchmark step): in a thread with a loop of its own."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, operation).result()
