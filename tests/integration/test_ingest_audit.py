"""ingest's refusals in the audit log, against the real identity provider, Kafka, Mosquitto and
PostgreSQL: each 401, 403, device-bound token's reading of another device and MQTT reading of
another device than its topic's is a row, appended as audit_writer into the test's schema.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from libs.common.audit import audit_writer
from libs.common.tls import client_context
from services.ingest.settings import IngestSettings
from tests.conftest import connect_to_schema
from tests.e2e.processes import Service, drop_schema, prepare_topics_and_schema, start
from tests.integration.test_ingest_auth import (
    IDP,
    SCOPE,
    bearer,
    fleet_token,
    reading,
    require_identity_provider,
    scopeless_client,
)
from tests.integration.test_mqtt_ingest import running, short_sessions, wait_until
from tools.credentials import Client, access_token, client_credentials_token
from tools.mqtt_run_accounts import RunAccounts
from tools.names import Names
from tools.processes import free_port

pytestmark = pytest.mark.integration
__all__ = ["scopeless_client", "short_sessions"]  # fixtures, used by name
WAIT_S = 10.0


@pytest.fixture(scope="module")
def names(stack: None) -> Iterator[Names]:
    """The module's topics and migrated schema (one ingest serves every test here)."""
    names = Names(uuid.uuid4().hex[:12])

    asyncio.run(prepare_topics_and_schema(names, partitions=1))
    try:
        yield names
    finally:
        asyncio.run(drop_schema(names))


@pytest.fixture(scope="module")
def ingest(names: Names, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    require_identity_provider()
    log_dir = tmp_path_factory.mktemp("ingest")
    service = start("ingest", free_port(), names.env() | {"MQTT_ENABLED": "false"}, log_dir)
    service.wait_ready()
    try:
        yield service
    finally:
        service.terminate()


@pytest.fixture(scope="module")
def https(ingest: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ingest.proc.https_url, verify=client_context(), timeout=10) as c:
        yield c


@pytest.fixture
async def audit_db(names: Names) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_to_schema(names.schema())
    try:
        yield conn
    finally:
        await conn.close()


async def row_of(db: asyncpg.Connection, request_id: str) -> asyncpg.Record:
    """The one row of that request, within WAIT_S (the writer appends in the background)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            rows = await db.fetch("SELECT * FROM audit_log WHERE request_id = $1", request_id)
            if rows:
                assert len(rows) == 1, rows
                return rows[0]
            await asyncio.sleep(0.1)


def post(https: httpx.Client, body: Any, token: str | None) -> tuple[httpx.Response, str]:
    request_id = f"test-{uuid.uuid4().hex}"
    headers = {"X-Request-ID": request_id} | (bearer(token) if token is not None else {})
    return https.post("/v1/readings", json=body, headers=headers), request_id


def device() -> str:
    return f"test-dev-{uuid.uuid4().hex[:8]}"


async def test_a_request_without_a_token_is_an_anonymous_refusal_with_its_reason_and_peer(
    https: httpx.Client, audit_db: asyncpg.Connection
) -> None:
    answer, request_id = post(https, reading(device()), None)
    assert answer.status_code == 401
    assert answer.headers["x-request-id"] == request_id
    row = await row_of(audit_db, request_id)
    assert (row["actor"], row["actor_kind"], row["action"], row["outcome"]) == (
        "anonymous",
        "anonymous",
        "readings.post",
        "refused",
    )
    assert (row["reason"], row["recorded_by"], row["target"]) == ("no bearer token", "ingest", None)
    assert row["source_address"].startswith("127.0.0.1:")


async def test_a_token_for_another_audience_is_recorded_with_the_client_it_claims(
    https: httpx.Client, audit_db: asyncpg.Connection
) -> None:
    answer, request_id = post(https, reading(device()), fleet_token(None))
    assert answer.status_code == 401
    row = await row_of(audit_db, request_id)
    assert (row["actor"], row["actor_kind"]) == ("fleet-simulator", "client")
    # Keycloak leaves aud out of a token for no audience of ours.
    assert row["reason"] == answer.json()["error"] == "token has no aud claim"


async def test_a_forged_token_is_recorded_with_the_reason_it_did_not_hold(
    https: httpx.Client, audit_db: asyncpg.Connection
) -> None:
    header, payload, signature = fleet_token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["device_id"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    answer, request_id = post(https, reading(device()), f"{header}.{forged}.{signature}")
    assert answer.status_code == 401
    row = await row_of(audit_db, request_id)
    # What the token claims, unverified: the reason says it did not hold.
    assert (row["actor"], row["actor_kind"], row["target"]) == (
        "someone-else",
        "device",
        "someone-else",
    )
    assert row["reason"] == "token signature does not verify"


async def test_a_token_without_the_scope_is_a_403_refusal_of_its_client(
    https: httpx.Client, audit_db: asyncpg.Connection, scopeless_client: Client
) -> None:
    with httpx.Client(timeout=10, verify=IDP.tls_verify()) as http:
        token = client_credentials_token(http, IDP, scopeless_client, None)
    answer, request_id = post(https, reading(device()), token)
    assert answer.status_code == 403
    row = await row_of(audit_db, request_id)
    assert (row["actor"], row["actor_kind"]) == (scopeless_client.client_id, "client")
    assert row["reason"] == "token lacks scope readings:write"


async def test_a_device_token_s_readings_of_another_device_are_one_row_naming_that_device(
    https: httpx.Client, audit_db: asyncpg.Connection
) -> None:
    mine, other = device(), device()
    token = access_token(IDP, SCOPE, mine)
    answer, request_id = post(https, [reading(mine), reading(other), reading(other)], token)
    assert answer.status_code == 202
    assert answer.json()["accepted"] == 1
    row = await row_of(audit_db, request_id)
    assert (row["actor"], row["actor_kind"], row["target"]) == (mine, "device", other)
    assert row["reason"] == answer.json()["rejected"][0]["reasons"][0]


async def test_an_accepted_reading_leaves_no_row(
    https: httpx.Client, audit_db: asyncpg.Connection
) -> None:
    answer, request_id = post(https, reading(device()), fleet_token())
    assert answer.status_code == 202
    # A refusal sent after it is appended; the accepted request before it left nothing.
    refused, refused_id = post(https, reading(device()), None)
    assert refused.status_code == 401
    await row_of(audit_db, refused_id)
    assert (
        await audit_db.fetchval("SELECT count(*) FROM audit_log WHERE request_id = $1", request_id)
        == 0
    )


async def test_an_mqtt_reading_of_another_device_than_its_topic_s_is_recorded(
    names: Names, audit_db: asyncpg.Connection, mqtt_accounts: RunAccounts
) -> None:
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    topic = mqtt_accounts.topic(device_id)
    settings = names.settings_of(
        IngestSettings,
        **mqtt_accounts.ingest_settings(),
        mqtt_client_id=f"test-ingest-audit-{device_id}",
    )
    other = f"other-{device_id}"
    stop = asyncio.Event()
    async with (
        audit_writer(settings.audit_dsn(), schema=names.schema(), recorded_by="ingest") as writer,
        running(settings, stop, audit=writer) as readiness,
    ):
        await wait_until(lambda: readiness.snapshot()["mqtt"])
        async with mqtt_accounts.fleet_client() as client:
            await client.publish(topic, orjson.dumps({"device_id": other}), qos=1)
        async with asyncio.timeout(WAIT_S):
            while not (
                rows := await audit_db.fetch("SELECT * FROM audit_log WHERE actor = $1", device_id)
            ):
                await asyncio.sleep(0.1)
    [row] = rows
    assert (row["actor_kind"], row["action"], row["target"], row["outcome"]) == (
        "device",
        "mqtt.publish",
        other,
        "refused",
    )
    assert row["reason"] == (
        f"reading of device {other!r} published to the topic of device {device_id!r}"
    )


def test_the_audit_writer_s_default_is_the_local_stack_s_verify_full_login() -> None:
    dsn = IngestSettings().audit_dsn()
    assert dsn.startswith("postgresql://audit_writer:")
    assert "sslmode=verify-full" in dsn
    assert Path(dsn.rsplit("sslrootcert=", 1)[1]).is_file()
