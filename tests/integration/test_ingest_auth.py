"""ingest's HTTPS readings API against the real identity provider (Keycloak, realm
sensor-pipeline) and the real Kafka: the tokens it takes, the ones it refuses and how, TLS
against the local CA, and the plain :8080 readings API behind HTTP_PLAIN_READINGS.

Nothing here starts Keycloak: a realm that does not answer is a failure that says to run
`make up`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from libs.common.kafka import ensure_topics
from libs.common.tls import client_context
from tests.e2e.processes import Service, start
from tests.integration.kafka_helpers import settle_and_read
from tools.credentials import (
    Client,
    CredentialsError,
    CredentialsSettings,
    access_token,
    client_credentials_token,
    fleet_client,
    realm_admin,
    refusal,
)
from tools.names import Names
from tools.processes import free_port

pytestmark = pytest.mark.integration

IDP = CredentialsSettings()
VERIFY = IDP.tls_verify()
SCOPE = "readings:write"


def require_identity_provider() -> None:
    """Fails (never skips) when the realm does not answer."""
    url = f"{IDP.idp_url}/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=10, verify=VERIFY)
    except httpx.HTTPError as exc:
        pytest.fail(f"the identity provider does not answer at {url} ({exc}): run `make up` first")
    if response.status_code != 200:
        pytest.fail(f"{url} answered {response.status_code}: run `make up` first")


@pytest.fixture(scope="module")
def names(stack: None) -> Names:
    names = Names(uuid.uuid4().hex[:12])
    asyncio.run(ensure_topics(names.settings(topic_partitions=1)))
    return names


def start_ingest(names: Names, log_dir: Path, **env: str) -> Service:
    """ingest as a process on the module's topics, its own free ports; MQTT off."""
    service = start("ingest", free_port(), names.env() | {"MQTT_ENABLED": "false"} | env, log_dir)
    service.wait_ready()
    return service


@pytest.fixture(scope="module")
def ingest(names: Names, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    require_identity_provider()
    service = start_ingest(names, tmp_path_factory.mktemp("ingest"))
    try:
        yield service
    finally:
        service.terminate()


@pytest.fixture(scope="module")
def https(ingest: Service) -> Iterator[httpx.Client]:
    """A client of the HTTPS port that trusts the local stack's CA only."""
    with httpx.Client(base_url=ingest.proc.https_url, verify=client_context(), timeout=10) as c:
        yield c


def reading(device_id: str) -> dict[str, Any]:
    return {"device_id": device_id, "timestamp": "2026-11-27T05:00:00Z", "temperature": 21.5}


def device() -> str:
    return f"test-dev-{uuid.uuid4().hex[:8]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fleet_token(scope: str | None = SCOPE) -> str:
    with httpx.Client(timeout=10, verify=VERIFY) as http:
        return client_credentials_token(http, IDP, fleet_client(IDP), scope)


async def records_of(topic: str, device_id: str) -> list[dict[str, Any]]:
    return [
        orjson.loads(r.value)
        for r in await settle_and_read(topic)
        if device_id.encode() in (r.value or b"")
    ]


async def test_a_fleet_token_posts_a_reading_that_reaches_the_raw_topic(
    https: httpx.Client, names: Names
) -> None:
    dev = device()
    answer = https.post("/v1/readings", json=[reading(dev)], headers=bearer(fleet_token()))
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"accepted": 1, "rejected": []}
    assert [r["device_id"] for r in await records_of(names.raw, dev)] == [dev]


def test_no_token_is_401_with_a_challenge_and_no_error_code(https: httpx.Client) -> None:
    answer = https.post("/v1/readings", json=reading(device()))
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == 'Bearer realm="sensor-pipeline"'
    assert answer.json() == {"error": "no bearer token"}


def test_a_garbage_token_is_401_invalid_token(https: httpx.Client) -> None:
    answer = https.post("/v1/readings", json=reading(device()), headers=bearer("garbage"))
    assert answer.status_code == 401, answer.text
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="sensor-pipeline", error="invalid_token"')
    assert 'error_description="malformed token' in challenge


def test_a_token_whose_payload_was_changed_is_401(https: httpx.Client) -> None:
    header, payload, signature = fleet_token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["device_id"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    answer = https.post(
        "/v1/readings", json=reading(device()), headers=bearer(f"{header}.{forged}.{signature}")
    )
    assert answer.status_code == 401, answer.text
    assert (
        'error_description="token signature does not verify"'
        in (answer.headers["www-authenticate"])
    )


def test_a_fleet_token_without_the_scope_is_not_for_this_api_401(https: httpx.Client) -> None:
    """The realm puts ingest-api in a token's audience only with scope readings:write: without
    it the token is for no audience of ours, which is an invalid token here (401), not 403."""
    answer = https.post("/v1/readings", json=reading(device()), headers=bearer(fleet_token(None)))
    assert answer.status_code == 401, answer.text
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


@pytest.fixture(scope="module")
def scopeless_client() -> Iterator[Client]:
    """A client of the realm, made for this test, whose tokens name ingest-api as their
    audience but carry no scope readings:write: what 403 is for."""
    require_identity_provider()
    client_id = f"test-noscope-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=10, verify=VERIFY) as http:
        admin, headers = realm_admin(http, IDP)
        created = http.post(
            f"{admin}/clients",
            headers=headers,
            json={
                "clientId": client_id,
                "enabled": True,
                "protocol": "openid-connect",
                "publicClient": False,
                "serviceAccountsEnabled": True,
                "standardFlowEnabled": False,
                "defaultClientScopes": ["basic"],
                "optionalClientScopes": [],
                "protocolMappers": [
                    {
                        "name": "ingest-api audience",
                        "protocol": "openid-connect",
                        "protocolMapper": "oidc-audience-mapper",
                        "config": {
                            "included.client.audience": "ingest-api",
                            "access.token.claim": "true",
                        },
                    }
                ],
            },
        )
        assert created.status_code == 201, refusal(created)
        uid = created.headers["location"].rsplit("/", 1)[1]
        try:
            secret = http.get(f"{admin}/clients/{uid}/client-secret", headers=headers)
            assert secret.status_code == 200, refusal(secret)
            yield Client(client_id, SecretStr(secret.json()["value"]))
        finally:
            http.delete(f"{admin}/clients/{uid}", headers=headers)


def test_a_token_for_this_api_without_the_scope_is_403_naming_it(
    https: httpx.Client, scopeless_client: Client
) -> None:
    with httpx.Client(timeout=10, verify=VERIFY) as http:
        token = client_credentials_token(http, IDP, scopeless_client, None)
    answer = https.post("/v1/readings", json=reading(device()), headers=bearer(token))
    assert answer.status_code == 403, answer.text
    assert answer.headers["www-authenticate"] == (
        'Bearer realm="sensor-pipeline", error="insufficient_scope", '
        'error_description="token lacks scope readings:write", scope="readings:write"'
    )


def test_the_scopeless_client_cannot_simply_ask_for_the_scope(scopeless_client: Client) -> None:
    """The 403 above is not for want of asking: the realm does not give that client the scope."""
    with httpx.Client(timeout=10, verify=VERIFY) as http, pytest.raises(CredentialsError):
        client_credentials_token(http, IDP, scopeless_client, SCOPE)


async def test_a_device_token_s_reading_of_another_device_is_rejected_to_the_dlq(
    https: httpx.Client, names: Names
) -> None:
    mine, other = device(), device()
    token = access_token(IDP, SCOPE, mine)
    answer = https.post("/v1/readings", json=[reading(mine), reading(other)], headers=bearer(token))
    assert answer.status_code == 202, answer.text
    assert answer.json() == {
        "accepted": 1,
        "rejected": [
            {
                "index": 1,
                "error_type": "DeviceNotAllowed",
                "reasons": [
                    f"reading of device {other!r}, but the token is bound to device {mine!r}"
                ],
            }
        ],
    }
    only_other = https.post("/v1/readings", json=reading(other), headers=bearer(token))
    assert only_other.status_code == 400, only_other.text
    assert len(await records_of(names.raw, mine)) == 1
    assert await records_of(names.raw, other) == []
    letters = await records_of(names.dlq, other)
    assert [d["error_type"] for d in letters] == ["DeviceNotAllowed"] * 2, letters
    assert {d["processing_stage"] for d in letters} == {"ingest"}


def other_ca(folder: Path) -> Path:
    """A CA of this test's own, which signed nothing ingest serves."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the stack's CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / "other-ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_client_trusting_another_ca_does_not_connect(ingest: Service, tmp_path: Path) -> None:
    context = client_context(other_ca(tmp_path))
    with pytest.raises(httpx.ConnectError) as failed:
        httpx.post(f"{ingest.proc.https_url}/v1/readings", json={}, verify=context, timeout=10)
    cause = ssl_failure(failed.value)
    assert isinstance(cause, ssl.SSLCertVerificationError), repr(failed.value)


def ssl_failure(error: BaseException) -> BaseException | None:
    """The ssl module's error under an httpx error, if there is one."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    return cause


# Asking for TLS 1.0/1.1 on purpose, to see them refused: the deprecation is the point.
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_the_https_port_refuses_tls_older_than_1_2(ingest: Service) -> None:
    context = client_context()
    # This client may speak TLS 1.0 and 1.1 (OpenSSL's security level 0): the refusal is the
    # server's.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(httpx.ConnectError) as failed:
        httpx.get(f"{ingest.proc.https_url}/v1/readings", verify=context, timeout=10)
    # The server ends the handshake (its minimum is TLS 1.2); a TCP refusal would not be SSL.
    assert ssl_failure(failed.value) is not None, repr(failed.value)


async def test_the_plain_port_takes_readings_without_a_token_while_plain_readings_is_on(
    ingest: Service, names: Names
) -> None:
    dev = device()
    answer = httpx.post(f"{ingest.url}/v1/readings", json=reading(dev), timeout=10)
    assert answer.status_code == 202, answer.text
    assert len(await records_of(names.raw, dev)) == 1
    assert "plaintext, unauthenticated readings API on :" in ingest.log_tail(200)


def test_with_plain_readings_off_the_plain_port_has_probes_only(
    names: Names, tmp_path: Path
) -> None:
    require_identity_provider()
    service = start_ingest(names, tmp_path, HTTP_PLAIN_READINGS="false")
    try:
        plain = httpx.post(f"{service.url}/v1/readings", json=reading(device()), timeout=10)
        assert plain.status_code in (404, 405), plain.text
        assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200
        assert "/v1/readings" not in httpx.get(f"{service.url}/openapi.json").json()["paths"]
        with httpx.Client(verify=client_context(), timeout=10) as https:
            answer = https.post(
                f"{service.proc.https_url}/v1/readings",
                json=reading(device()),
                headers=bearer(fleet_token()),
            )
        assert answer.status_code == 202, answer.text
        assert "plaintext, unauthenticated" not in service.log_tail(200)
    finally:
        service.terminate()


def test_a_missing_certificate_stops_ingest_at_start_up_naming_the_file(
    names: Names, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such.crt"
    service = start(
        "ingest",
        free_port(),
        names.env() | {"MQTT_ENABLED": "false", "HTTPS_CERT_FILE": str(missing)},
        tmp_path,
    )
    try:
        code = service.process.wait(timeout=60)
    finally:
        service.proc.kill()
    assert code != 0
    assert f"TLS certificate file {missing} does not exist" in service.log_tail(), (
        service.log_tail()
    )


def test_with_https_off_ingest_needs_no_certificate_and_listens_on_no_https_port(
    names: Names, tmp_path: Path
) -> None:
    service = start_ingest(
        names, tmp_path, HTTPS_ENABLED="false", HTTPS_CERT_FILE=str(tmp_path / "no-such.crt")
    )
    try:
        assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{service.proc.https_url}/v1/readings", verify=client_context(), timeout=5)
        assert "HTTPS readings API off" in service.log_tail(200)
    finally:
        service.terminate()
