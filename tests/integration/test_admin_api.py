"""The admin API (services.admin) as a process against the real servers: tokens of the real
identity provider (Keycloak, realm sensor-pipeline) for the users viewer, operator and admin,
the real PostgreSQL (the admin_api login user, a private schema), Mosquitto's TLS listener
with its dynamic security plugin, and Kafka (private topics). Each role boundary, the refused
tokens, a device registered then connecting and revoked then refused, a DLQ browse and replay,
and the audit row each call leaves.

Its HTTPS certificate is made by deploy/local/certs.sh in a private STACK_DIR (a CA of the
test's own): the main stack gets its admin certificate at its next `make up`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import httpx
import pytest

from libs.common.db import connect, migrate
from libs.common.kafka import ensure_topics
from libs.common.models import HEADER_SOURCE, DeadLetter, Stage
from libs.common.tls import client_context
from tests.conftest import connect_to_schema
from tests.e2e.processes import Service, start
from tests.integration.kafka_helpers import produce, settle_and_read
from tests.unit.test_auth import JwksServer, Keys, sign
from tools.credentials import CredentialsSettings, client_credentials_token, fleet_client
from tools.credentials import user_token as keycloak_user_token
from tools.names import Names
from tools.processes import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CERTS_SH = ROOT / "deploy" / "local" / "certs.sh"
STACK_SH = ROOT / "deploy" / "local" / "stack.sh"
IDP = CredentialsSettings()
ISSUER = IDP.idp_url
AUDIT_WAIT_S = 10.0


@dataclass
class Admin:
    service: Service
    url: str
    tls: ssl.SSLContext

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.tls, timeout=30)


@pytest.fixture(scope="module")
def names(stack: None) -> Iterator[Names]:
    names = Names(uuid.uuid4().hex[:12])

    async def prepare() -> None:
        await ensure_topics(names.settings(topic_partitions=1))
        conn = await connect(names.settings(database_role="migrator"))
        try:
            await migrate(conn, names.schema())
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await connect(names.settings(database_role="migrator"))
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{names.schema()}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(prepare())
    try:
        yield names
    finally:
        asyncio.run(drop())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """certs.sh's CA and certificates (admin's among them) in a private STACK_DIR."""
    stack_dir = tmp_path_factory.mktemp("admin-stack")
    done = subprocess.run(
        ["bash", str(CERTS_SH), "ensure"],
        env={**os.environ, "STACK_DIR": str(stack_dir)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return stack_dir / "certs"


def start_admin(names: Names, certs: Path, log_dir: Path, **env: str) -> Admin:
    https_port = free_port()
    service = start(
        "admin",
        free_port(),
        names.env()
        | {
            "HTTPS_PORT": str(https_port),
            "HTTPS_CERT_FILE": str(certs / "admin.crt"),
            "HTTPS_KEY_FILE": str(certs / "admin.key"),
        }
        | env,
        log_dir,
    )
    service.wait_ready()
    return Admin(service, f"https://127.0.0.1:{https_port}", client_context(certs / "ca.crt"))


@pytest.fixture(scope="module")
def admin(names: Names, certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    # No DATABASE_URL: the service's default is the local stack's admin_api login user.
    admin = start_admin(names, certs, tmp_path_factory.mktemp("admin"))
    try:
        yield admin
    finally:
        assert admin.service.terminate() == 0


@pytest.fixture
def https(admin: Admin) -> Iterator[httpx.Client]:
    with admin.client() as client:
        yield client


@pytest.fixture(scope="module")
def tokens(stack: None) -> dict[str, str]:
    return {user: keycloak_user_token(IDP, user) for user in ("viewer", "operator", "admin")}


@pytest.fixture
async def db(names: Names) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_to_schema(names.schema())
    try:
        yield conn
    finally:
        await conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(
    https: httpx.Client, method: str, path: str, token: str | None = None, **kwargs: Any
) -> tuple[httpx.Response, str]:
    """One call with a fresh X-Request-ID; the answer and that id."""
    request_id = f"test-{uuid.uuid4().hex}"
    headers = {"X-Request-ID": request_id} | (bearer(token) if token else {})
    answer = https.request(method, path, headers=headers, **kwargs)
    assert answer.headers["x-request-id"] == request_id
    return answer, request_id


async def audit_row(db: asyncpg.Connection, request_id: str) -> asyncpg.Record:
    """The call's one audit row, once the writer appended it."""
    deadline = time.monotonic() + AUDIT_WAIT_S
    while time.monotonic() < deadline:
        rows = await db.fetch("SELECT * FROM audit_log WHERE request_id = $1", request_id)
        if rows:
            assert len(rows) == 1, rows
            return rows[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no audit row for request {request_id} within {AUDIT_WAIT_S}s")


def device_id() -> str:
    return f"test-admin-{uuid.uuid4().hex[:10]}"


# --- tokens ---------------------------------------------------------------------------------------


async def test_no_token_is_401_with_a_challenge_and_an_anonymous_audit_row(
    https: httpx.Client, db: asyncpg.Connection
) -> None:
    answer, request_id = call(https, "GET", "/v1/devices")
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == 'Bearer realm="sensor-pipeline"'
    row = await audit_row(db, request_id)
    assert (row["actor"], row["actor_kind"], row["action"], row["outcome"]) == (
        "anonymous",
        "anonymous",
        "devices.list",
        "refused",
    )
    assert row["reason"] == "no bearer token"
    assert row["recorded_by"] == "admin-api"
    assert row["source_address"] == "127.0.0.1"


async def test_a_token_for_another_audience_is_401_invalid_token(
    https: httpx.Client, db: asyncpg.Connection
) -> None:
    # The fleet's client-credentials token is for the ingest API only (audience ingest-api).
    with httpx.Client(timeout=10, verify=IDP.tls_verify()) as http:
        fleet = client_credentials_token(http, IDP, fleet_client(IDP), "readings:write")
    answer, request_id = call(https, "GET", "/v1/devices", fleet)
    assert answer.status_code == 401, answer.text
    challenge = answer.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge and "audience admin-api" in challenge
    row = await audit_row(db, request_id)
    assert (row["outcome"], row["actor"]) == ("refused", "anonymous")
    assert row["reason"] == "token is not for audience admin-api"


async def test_a_token_whose_signature_was_tampered_with_is_401(
    https: httpx.Client, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    header, payload, signature = tokens["admin"].split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    answer, request_id = call(https, "GET", "/v1/audit", forged)
    assert answer.status_code == 401, answer.text
    assert (await audit_row(db, request_id))["action"] == "audit.read"


async def test_an_expired_token_is_401_token_expired(
    names: Names, certs: Path, tmp_path: Path
) -> None:
    """Keycloak's tokens live 300 s: an expired one is signed here, by a key published on a
    JWKS endpoint of the test that a second admin API trusts (IDP_JWKS_URL)."""
    keys = Keys()
    keys.add("expiry-test")
    jwks = JwksServer(keys)
    jwks.thread.start()
    admin = start_admin(names, certs, tmp_path, IDP_JWKS_URL=jwks.url)
    try:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": "admin-api",
            "sub": "someone",
            "preferred_username": "admin",
            "realm_access": {"roles": ["admin"]},
            "iat": now - 900,
            "exp": now - 600,
        }
        with admin.client() as https:
            expired = sign(keys, claims, kid="expiry-test")
            answer, _ = call(https, "GET", "/v1/devices", expired)
            fresh, _ = call(
                https,
                "GET",
                "/v1/devices",
                sign(keys, claims | {"exp": now + 60}, kid="expiry-test"),
            )
        assert answer.status_code == 401, answer.text
        assert 'error_description="token expired"' in answer.headers["www-authenticate"]
        assert fresh.status_code == 200, fresh.text
    finally:
        admin.service.terminate()
        jwks.server.shutdown()
        jwks.server.server_close()


# --- roles --------------------------------------------------------------------------------------


async def test_a_viewer_lists_devices_but_cannot_register_one(
    https: httpx.Client, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    listed, list_id = call(https, "GET", "/v1/devices", tokens["viewer"])
    assert listed.status_code == 200, listed.text
    assert isinstance(listed.json()["devices"], list)
    dev = device_id()
    refused, refused_id = call(
        https, "POST", "/v1/devices", tokens["viewer"], json={"device_id": dev}
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["required_role"] == "operator"
    assert "needs role operator" in refused.json()["error"]
    row = await audit_row(db, refused_id)
    assert (row["actor"], row["actor_kind"], row["action"], row["outcome"]) == (
        "viewer",
        "user",
        "devices.register",
        "refused",
    )
    assert (await audit_row(db, list_id))["outcome"] == "allowed"
    assert await db.fetchval("SELECT count(*) FROM devices WHERE device_id = $1", dev) == 0


async def test_an_operator_cannot_read_the_audit_log_and_an_admin_can(
    https: httpx.Client, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    refused, refused_id = call(https, "GET", "/v1/audit", tokens["operator"])
    assert refused.status_code == 403, refused.text
    assert refused.json()["required_role"] == "admin"
    await audit_row(db, refused_id)
    read, read_id = call(
        https, "GET", "/v1/audit", tokens["admin"], params={"request_id": refused_id}
    )
    assert read.status_code == 200, read.text
    [event] = read.json()["events"]
    assert (event["actor"], event["action"], event["outcome"]) == (
        "operator",
        "audit.read",
        "refused",
    )
    row = await audit_row(db, read_id)
    assert (row["actor"], row["action"], row["outcome"]) == ("admin", "audit.read", "allowed")


async def test_the_audit_log_has_no_call_that_changes_it(
    https: httpx.Client, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    document = https.get("/openapi.json").json()
    assert set(document["paths"]["/v1/audit"]) == {"get"}
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        answer, request_id = call(https, method, "/v1/audit", tokens["admin"])
        assert answer.status_code == 405, (method, answer.text)
        assert (await audit_row(db, request_id))["outcome"] == "refused"


async def test_an_unknown_path_and_a_bad_parameter_are_audited_refusals(
    https: httpx.Client, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    missing, missing_id = call(https, "GET", "/v1/nothing-here", tokens["viewer"])
    assert missing.status_code == 404
    assert (await audit_row(db, missing_id))["action"] == "api.unrouted"
    bad, bad_id = call(https, "GET", "/v1/devices", tokens["viewer"], params={"limit": "0"})
    assert bad.status_code == 422, bad.text
    row = await audit_row(db, bad_id)
    assert (row["action"], row["outcome"], row["actor"]) == ("devices.list", "refused", "viewer")
    assert "limit" in row["reason"]


# --- devices ------------------------------------------------------------------------------------


async def mqtt_publish(credentials: dict[str, str], device: str) -> None:
    async with aiomqtt.Client(
        "127.0.0.1",
        int(credentials["mqtt_url"].rsplit(":", 1)[1]),
        username=credentials["username"],
        password=credentials["password"],
        identifier=f"{device}-{uuid.uuid4().hex[:6]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=client_context(Path(credentials["ca_file"])),
        timeout=10,
    ) as client:
        await client.publish(
            f"sensors/{device}/readings", b'{"device_id": "%s"}' % device.encode(), qos=1
        )


async def test_a_registered_device_connects_and_publishes_and_once_revoked_cannot_connect(
    https: httpx.Client, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    dev = device_id()
    body = {"device_id": dev, "model": "TH-1", "site": "lab", "metadata": {"floor": 2}}
    made, made_id = call(https, "POST", "/v1/devices", tokens["operator"], json=body)
    assert made.status_code == 201, made.text
    credentials = made.json()
    try:
        assert set(credentials) == {"device_id", "mqtt_url", "username", "password", "ca_file"}
        assert credentials["mqtt_url"] == "mqtts://127.0.0.1:8883"
        again, _ = call(https, "POST", "/v1/devices", tokens["operator"], json={"device_id": dev})
        assert again.status_code == 200 and again.json() == credentials
        await mqtt_publish(credentials, dev)
        row = await audit_row(db, made_id)
        assert (row["actor"], row["action"], row["target"], row["outcome"]) == (
            "operator",
            "devices.register",
            dev,
            "allowed",
        )
        shown, _ = call(https, "GET", f"/v1/devices/{dev}", tokens["viewer"])
        assert shown.json()["model"] == "TH-1" and shown.json()["metadata"] == {"floor": 2}
        assert shown.json()["revoked_at"] is None
        revoked, revoked_id = call(https, "DELETE", f"/v1/devices/{dev}", tokens["operator"])
        assert revoked.status_code == 200, revoked.text
        assert revoked.json() == {"device_id": dev, "revoked": True}
        with pytest.raises(aiomqtt.MqttError):
            await mqtt_publish(credentials, dev)
        row = await audit_row(db, revoked_id)
        assert (row["action"], row["target"], row["outcome"]) == ("devices.revoke", dev, "allowed")
        kept = await db.fetchrow("SELECT revoked_at FROM devices WHERE device_id = $1", dev)
        assert kept is not None and kept["revoked_at"] is not None
    finally:
        call(https, "POST", f"/v1/devices/{dev}/revoke", tokens["operator"])


async def test_an_operator_updates_a_device_and_an_unknown_one_is_404(
    https: httpx.Client, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    dev = device_id()
    await db.execute("INSERT INTO devices (device_id, site) VALUES ($1, 'old')", dev)
    changed, changed_id = call(
        https, "PATCH", f"/v1/devices/{dev}", tokens["operator"], json={"site": "new"}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["site"] == "new"
    assert (await audit_row(db, changed_id))["action"] == "devices.update"
    unknown = device_id()
    missing, missing_id = call(https, "GET", f"/v1/devices/{unknown}", tokens["viewer"])
    assert missing.status_code == 404, missing.text
    row = await audit_row(db, missing_id)
    assert (row["target"], row["outcome"]) == (unknown, "refused")
    assert "no device" in row["reason"]


async def test_a_service_account_name_cannot_be_registered_as_a_device(
    https: httpx.Client, tokens: dict[str, str], db: asyncpg.Connection
) -> None:
    answer, request_id = call(
        https, "POST", "/v1/devices", tokens["admin"], json={"device_id": "ingest"}
    )
    assert answer.status_code == 409, answer.text
    assert "service account" in answer.json()["error"]
    assert (await audit_row(db, request_id))["outcome"] == "refused"
    assert await db.fetchval("SELECT count(*) FROM devices WHERE device_id = 'ingest'") == 0


# --- the DLQ ------------------------------------------------------------------------------------


def letter(device: str, error_type: str, stage: Stage, value: float) -> bytes:
    reading = (
        f'{{"device_id": "{device}", "timestamp": "2026-11-27T05:00:00Z", "temperature": {value}}}'
    )
    return (
        DeadLetter(
            original_record=reading,
            error_message=f"temperature out of range: {value}",
            error_type=error_type,
            error_timestamp=datetime.now(UTC),
            processing_stage=stage,
            device_id=device,
        )
        .model_dump_json()
        .encode()
    )


async def test_dead_letters_are_browsed_by_device_and_replayed_by_id(
    https: httpx.Client, tokens: dict[str, str], names: Names, db: asyncpg.Connection
) -> None:
    dev, other = device_id(), device_id()
    await produce(
        names.dlq,
        [
            letter(dev, "RuleViolation", Stage.VALIDATE, 150.0),
            letter(dev, "SchemaViolation", Stage.VALIDATE, 151.0),
            letter(other, "RuleViolation", Stage.VALIDATE, 152.0),
        ],
    )
    browsed, browse_id = call(https, "GET", "/v1/dlq", tokens["viewer"], params={"device": dev})
    assert browsed.status_code == 200, browsed.text
    letters = browsed.json()["letters"]
    assert [(x["device_id"], x["error_type"]) for x in letters] == [
        (dev, "RuleViolation"),
        (dev, "SchemaViolation"),
    ]
    assert (await audit_row(db, browse_id))["action"] == "dlq.browse"
    refused, _ = call(
        https, "POST", "/v1/dlq/replay", tokens["viewer"], json={"ids": [letters[0]["id"]]}
    )
    assert refused.status_code == 403
    replayed, replay_id = call(
        https, "POST", "/v1/dlq/replay", tokens["operator"], json={"ids": [letters[0]["id"]]}
    )
    assert replayed.status_code == 200, replayed.text
    assert replayed.json() == {
        "replayed": 1,
        "ids": [letters[0]["id"]],
        "by_topic": {names.raw: 1},
        "dry_run": False,
    }
    raw = [r for r in await settle_and_read(names.raw) if dev.encode() in (r.value or b"")]
    assert [r.value for r in raw] == [letters[0]["original_record"].encode()]
    assert dict(raw[0].headers)[HEADER_SOURCE] == b"replay"
    row = await audit_row(db, replay_id)
    assert (row["actor"], row["action"], row["target"], row["outcome"]) == (
        "operator",
        "dlq.replay",
        names.dlq,
        "allowed",
    )


async def test_a_replay_naming_nothing_or_a_letter_not_there_sends_nothing(
    https: httpx.Client, tokens: dict[str, str], names: Names, db: asyncpg.Connection
) -> None:
    before = len(await settle_and_read(names.raw))
    empty, empty_id = call(https, "POST", "/v1/dlq/replay", tokens["operator"], json={})
    assert empty.status_code == 422, empty.text
    assert "name the letters" in (await audit_row(db, empty_id))["reason"]
    absent, absent_id = call(
        https, "POST", "/v1/dlq/replay", tokens["operator"], json={"ids": ["0:999999"]}
    )
    assert absent.status_code == 404, absent.text
    assert absent.json()["missing"] == ["0:999999"]
    assert (await audit_row(db, absent_id))["outcome"] == "refused"
    assert len(await settle_and_read(names.raw)) == before


# --- the realm ----------------------------------------------------------------------------------


def test_the_realm_update_of_make_up_finds_nothing_left_to_add(tokens: dict[str, str]) -> None:
    """stack.sh's keycloak_realm_update, as `make up` runs it: the running realm already has
    everything realm.json names (client admin-api, pipeline-cli's mappers, user viewer), so it
    adds nothing; and each user's token carries the audience and the user name."""
    done = subprocess.run(
        ["bash", "-c", '. "$1"; set -Eeuo pipefail; keycloak_realm_update', "stack", str(STACK_SH)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "realm sensor-pipeline current" in done.stdout, done.stdout
    for user, token in tokens.items():
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["aud"] == "admin-api" or "admin-api" in claims["aud"], user
        assert claims["preferred_username"] == user
        assert user in claims["realm_access"]["roles"]
