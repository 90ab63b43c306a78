"""Device accounts of Mosquitto's TLS listener, kept by its dynamic security plugin (used by
the admin API, services.admin, and by tools.credentials through tools.mqtt_accounts).

The local stack (deploy/local/stack.sh up) makes the plugin's first accounts file: an admin
account, ingest's account, the group ``devices`` and nothing allowed by default. This module
is the admin's client of the plugin's control topic ``$CONTROL/dynamic-security/v1``: it
registers a device (an account named after its id, in the group ``devices``, with a role of
its own that may publish only to ``sensors/<id>/readings``) and revokes one (the account and
its role deleted; a connected session of it is cut at once). Both take effect without
restarting the broker.

Mosquitto 2.0.11's plugin has no ``%u``/``%c`` substitution in ACL topics, hence the role per
device rather than one role for all. A device's generated password is kept in
``<stack>/secrets/devices/<id>.password`` (0600), so asking again for the same device gives
the same working credentials and never cuts a device that is connected with them.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.errors import AccountError, MqttUnavailable
from libs.common.stack import local_stack_dir, read_secret
from libs.common.tls import client_context

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
DEVICES_GROUP = "devices"
READINGS_TOPIC = "sensors/{device_id}/readings"
# A device id becomes an account name and a topic level: no `/`, `+`, `#`, spaces or `$`.
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class MqttAccountsSettings(BaseSettings):
    """Where the TLS listener and the local stack's files are; the defaults find `make up`'s."""

    model_config = SettingsConfigDict(extra="ignore")

    stack_dir: Path = Field(
        default_factory=local_stack_dir,
        description="The local stack's state folder (as stack.sh's).",
    )
    mqtt_tls_host: str = "127.0.0.1"
    mqtt_tls_port: int = Field(8883, description="Mosquitto's TLS listener.")
    mqtt_admin_username: str = "admin"
    mqtt_admin_password: SecretStr | None = Field(
        None, description="Default: the stack's secrets/mqtt-admin.password."
    )
    # As PipelineSettings.tls_ca_file, but the default follows STACK_DIR (a stack elsewhere has
    # its own CA).
    tls_ca_file: Path | None = Field(None, description="Default: the stack's certs/ca.crt.")
    mqtt_control_timeout_s: float = Field(10.0, gt=0)
    # Where each device's generated password is kept (0600), so that asking again gives the same
    # one. None: the stack's secrets/devices (a volume of its own where the admin API runs).
    device_passwords_dir: Path | None = None

    @property
    def ca_file(self) -> Path:
        return self.tls_ca_file or self.stack_dir / "certs" / "ca.crt"

    @property
    def devices_dir(self) -> Path:
        return self.device_passwords_dir or self.stack_dir / "secrets" / "devices"

    @property
    def mqtt_url(self) -> str:
        return f"mqtts://{self.mqtt_tls_host}:{self.mqtt_tls_port}"

    def admin_password(self) -> str:
        if self.mqtt_admin_password is not None:
            return self.mqtt_admin_password.get_secret_value()
        path = self.stack_dir / "secrets" / "mqtt-admin.password"
        return read_secret(path, "the MQTT admin password").get_secret_value()


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    device_id: str
    mqtt_url: str
    username: str
    password: str
    ca_file: str

    def as_json(self) -> dict[str, str]:
        return {
            "device_id": self.device_id,
            "mqtt_url": self.mqtt_url,
            "username": self.username,
            "password": self.password,
            "ca_file": self.ca_file,
        }


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID.fullmatch(device_id):
        raise AccountError(
            f"not a usable device id: {device_id!r} (letters, digits, '.', '_', ':', '-'; "
            "at most 128, starting with a letter or digit)"
        )
    return device_id


def device_role(device_id: str) -> str:
    return f"device-{device_id}"


def stored_password(devices_dir: Path, device_id: str) -> tuple[str, bool]:
    """The device's kept password and False, or a new one (written 0600) and True. Two callers
    at once agree: the file is created exclusively and the loser reads the winner's."""
    devices_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = devices_dir / f"{device_id}.password"
    password = secrets.token_urlsafe(24)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        kept = path.read_text().strip()
        if kept:
            return kept, False
        path.write_text(password)
        return password, True
    with os.fdopen(fd, "w") as file:
        file.write(password)
    return password, True


class Control:
    """One admin connection to the plugin's control topic; `run` sends commands and returns the
    plugin's responses in order (each a dict with `command`, and `error` or `data`)."""

    def __init__(self, settings: MqttAccountsSettings) -> None:
        self._settings = settings
        self._client = aiomqtt.Client(
            settings.mqtt_tls_host,
            settings.mqtt_tls_port,
            username=settings.mqtt_admin_username,
            password=settings.admin_password(),
            identifier=f"credentials-{uuid.uuid4().hex[:12]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=client_context(settings.ca_file),
            timeout=settings.mqtt_control_timeout_s,
        )

    async def __aenter__(self) -> Control:
        where = f"{self._settings.mqtt_tls_host}:{self._settings.mqtt_tls_port}"
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttCodeError as exc:
            raise AccountError(f"Mosquitto at {where} refused the admin account: {exc}") from None
        except (aiomqtt.MqttError, OSError) as exc:
            raise MqttUnavailable(f"cannot reach Mosquitto's TLS listener {where}: {exc}") from exc
        await self._client.subscribe(RESPONSE_TOPIC, qos=1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(None, None, None)

    async def run(self, *commands: dict[str, Any]) -> list[dict[str, Any]]:
        tag = uuid.uuid4().hex
        tagged = [
            {**command, "correlationData": f"{tag}-{i}"} for i, command in enumerate(commands)
        ]
        await self._client.publish(CONTROL_TOPIC, orjson.dumps({"commands": tagged}), qos=1)
        try:
            async with asyncio.timeout(self._settings.mqtt_control_timeout_s):
                async for message in self._client.messages:
                    body = orjson.loads(bytes(message.payload))
                    responses = body.get("responses") or []
                    if responses and responses[0].get("correlationData") == f"{tag}-0":
                        return list(responses)
        except TimeoutError:
            pass
        raise MqttUnavailable("Mosquitto's dynamic security plugin did not answer in time")

    async def one(self, command: dict[str, Any], *, ok: tuple[str, ...] = ()) -> dict[str, Any]:
        """Run one command; an error other than those in `ok` raises AccountError."""
        [response] = await self.run(command)
        error = response.get("error")
        if error and error not in ok:
            raise AccountError(f"{command['command']} refused by Mosquitto: {error}")
        return response


async def _client_info(control: Control, username: str) -> dict[str, Any] | None:
    response = await control.one(
        {"command": "getClient", "username": username}, ok=("Client not found",)
    )
    if response.get("error"):
        return None
    client = (response.get("data") or {}).get("client")
    return client if isinstance(client, dict) else None


def _is_device(client: dict[str, Any]) -> bool:
    return any(group.get("groupname") == DEVICES_GROUP for group in client.get("groups") or [])


async def register_device(settings: MqttAccountsSettings, device_id: str) -> DeviceCredentials:
    """The device's credentials; its account and role first if it has none (idempotent)."""
    check_device_id(device_id)
    role = device_role(device_id)
    async with Control(settings) as control:
        client = await _client_info(control, device_id)
        if client is not None and not _is_device(client):
            raise AccountError(f"{device_id!r} is a service account, not a device")
        if client is not None and client.get("disabled"):
            raise AccountError(f"device {device_id!r} is disabled: revoke it, then register it")
        password, new = stored_password(settings.devices_dir, device_id)
        await control.one(
            {
                "command": "createRole",
                "rolename": role,
                "textname": f"device {device_id}: publishes its readings only",
                "acls": [
                    {
                        "acltype": "publishClientSend",
                        "topic": READINGS_TOPIC.format(device_id=device_id),
                        "allow": True,
                    }
                ],
            },
            ok=("Role already exists",),
        )
        if client is None:
            await control.one(
                {
                    "command": "createClient",
                    "username": device_id,
                    "password": password,
                    "textname": f"device {device_id}",
                    "roles": [{"rolename": role}],
                    "groups": [{"groupname": DEVICES_GROUP}],
                },
                ok=("Client already exists",),  # registered by another caller just now
            )
        else:
            if role not in {r.get("rolename") for r in client.get("roles") or []}:
                await control.one(
                    {"command": "addClientRole", "username": device_id, "rolename": role}
                )
            if new:  # the account outlived its kept password: the new one replaces it
                await control.one(
                    {"command": "setClientPassword", "username": device_id, "password": password}
                )
    return DeviceCredentials(
        device_id=device_id,
        mqtt_url=settings.mqtt_url,
        username=device_id,
        password=password,
        ca_file=str(settings.ca_file),
    )


async def revoke_device(settings: MqttAccountsSettings, device_id: str) -> bool:
    """Delete the device's account (its open session is cut), its role and its kept password;
    False when it had no account."""
    check_device_id(device_id)
    async with Control(settings) as control:
        client = await _client_info(control, device_id)
        if client is not None and not _is_device(client):
            raise AccountError(f"{device_id!r} is a service account, not a device")
        if client is not None:
            await control.one({"command": "deleteClient", "username": device_id})
        await control.one(
            {"command": "deleteRole", "rolename": device_role(device_id)}, ok=("Role not found",)
        )
    (settings.devices_dir / f"{device_id}.password").unlink(missing_ok=True)
    return client is not None
