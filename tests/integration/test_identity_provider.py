"""The local identity provider (Keycloak, realm sensor-pipeline) that `make up` starts, through
`python -m tools.credentials token`: the tokens the HTTP API will check, and the refusals.

Nothing here starts Keycloak: a realm that does not answer is a failure that says to run
`make up`. The settings are the tool's (IDP_URL, IDP_SECRETS_DIR for a stack elsewhere).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tools.credentials import (
    CredentialsError,
    CredentialsSettings,
    client_credentials_token,
    device_client,
    remove_device_client,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = CredentialsSettings()
# An https IDP_URL: trust only the configured (or the local stack's) CA, as the tool does.
VERIFY = SETTINGS.tls_verify()
SSL_CONTEXT = VERIFY if isinstance(VERIFY, ssl.SSLContext) else None


def discovery() -> dict[str, Any]:
    """The realm's OpenID configuration; fails (never skips) when the realm does not answer."""
    url = f"{SETTINGS.idp_url}/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=10, verify=VERIFY)
    except httpx.HTTPError as exc:
        pytest.fail(f"the identity provider does not answer at {url} ({exc}): run `make up` first")
    if response.status_code != 200:
        pytest.fail(f"{url} answered {response.status_code}: run `make up` first")
    config: dict[str, Any] = response.json()
    return config


def credentials(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.credentials", *args],
        cwd=ROOT,
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def verified(token: str) -> dict[str, Any]:
    """The token's claims once its signature is checked against the realm's JWKS, with its
    issuer, audience and expiry required, as the ingest API checks them."""
    config = discovery()
    key = jwt.PyJWKClient(config["jwks_uri"], ssl_context=SSL_CONTEXT).get_signing_key_from_jwt(
        token
    )
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        audience="ingest-api",
        issuer=config["issuer"],
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    return claims


def token(*args: str) -> str:
    discovery()
    done = credentials("token", "--scope", "readings:write", *args)
    assert done.returncode == 0, f"tools.credentials token failed:\n{done.stderr}"
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    return lines[0]


def test_a_fleet_token_verifies_against_the_realms_keys_with_issuer_audience_and_scope() -> None:
    claims = verified(token())
    assert claims["iss"] == SETTINGS.idp_url
    assert "readings:write" in claims["scope"].split()
    assert claims["azp"] == SETTINGS.idp_fleet_client_id
    assert "device_id" not in claims, claims


def test_a_token_whose_claims_were_changed_does_not_verify() -> None:
    header, _, signature = token().split(".")
    claims = verified(token()) | {"device_id": "someone-else"}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidSignatureError):
        verified(f"{header}.{payload}.{signature}")


def test_a_device_token_is_bound_to_that_device_and_its_client_is_made_once() -> None:
    device = f"test-dev-{uuid.uuid4().hex[:8]}"
    first = verified(token("--device", device))
    again = verified(token("--device", device))
    assert first["device_id"] == again["device_id"] == device
    assert first["azp"] == again["azp"] == f"device-{device}"
    assert first["sub"] == again["sub"], "the second call made another client"
    with httpx.Client(timeout=10, verify=VERIFY) as http:
        remove_device_client(http, SETTINGS, device)
    assert "readings:write" in first["scope"].split()


def test_a_removed_device_client_gets_no_more_tokens() -> None:
    discovery()
    device = f"test-dev-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=10, verify=VERIFY) as http:
        client = device_client(http, SETTINGS, device)
        assert verified(client_credentials_token(http, SETTINGS, client, "readings:write"))
        assert remove_device_client(http, SETTINGS, device) is True
        with pytest.raises(CredentialsError, match="refused a token"):
            client_credentials_token(http, SETTINGS, client, "readings:write")
        assert remove_device_client(http, SETTINGS, device) is False


def test_a_wrong_client_secret_is_refused_with_exit_2_and_the_reason() -> None:
    discovery()
    done = credentials(
        "token", "--scope", "readings:write", env={"IDP_FLEET_CLIENT_SECRET": "not-the-secret"}
    )
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert "refused" in done.stderr and SETTINGS.idp_fleet_client_id in done.stderr, done.stderr
    assert "Invalid client" in done.stderr, done.stderr
    assert "not-the-secret" not in done.stderr


def test_a_scope_the_realm_does_not_have_is_refused_with_exit_2() -> None:
    discovery()
    done = credentials("token", "--scope", "readings:delete")
    assert done.returncode == 2, done
    assert "invalid_scope" in done.stderr, done.stderr


def user_token(username: str) -> dict[str, Any]:
    """An access token of a realm user (password grant through the public pipeline-cli client),
    its signature checked; its audience is not the ingest API."""
    config = discovery()
    password = (SETTINGS.secrets_dir() / f"{username}.password").read_text().strip()
    response = httpx.post(
        config["token_endpoint"],
        data={
            "grant_type": "password",
            "client_id": "pipeline-cli",
            "username": username,
            "password": password,
        },
        timeout=10,
        verify=VERIFY,
    )
    assert response.status_code == 200, response.text
    raw = response.json()["access_token"]
    key = jwt.PyJWKClient(config["jwks_uri"], ssl_context=SSL_CONTEXT).get_signing_key_from_jwt(raw)
    claims: dict[str, Any] = jwt.decode(
        raw, key.key, algorithms=["RS256"], issuer=config["issuer"], options={"verify_aud": False}
    )
    return claims


@pytest.mark.parametrize(
    ("username", "roles", "not_roles"),
    [
        ("operator", {"viewer", "operator"}, {"admin"}),
        ("admin", {"viewer", "operator", "admin"}, set()),
    ],
)
def test_the_operator_and_admin_users_get_their_realm_roles(
    username: str, roles: set[str], not_roles: set[str]
) -> None:
    claims = user_token(username)
    granted = set(claims["realm_access"]["roles"])
    assert roles <= granted, granted
    assert not (not_roles & granted), granted
    assert claims["azp"] == "pipeline-cli"


def test_a_user_with_a_wrong_password_gets_no_token() -> None:
    config = discovery()
    response = httpx.post(
        config["token_endpoint"],
        data={
            "grant_type": "password",
            "client_id": "pipeline-cli",
            "username": "operator",
            "password": "not-the-password",
        },
        timeout=10,
        verify=VERIFY,
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_grant"
