"""tools.credentials without an identity provider: its command line, its settings, and what it
says when the provider is not there or a secret is missing (the real Keycloak:
tests/integration/test_identity_provider.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from libs.common.errors import ConfigurationError
from tools.credentials import (
    DEVICE_CLAIM,
    CredentialsError,
    CredentialsSettings,
    device_client,
    device_client_representation,
)

ROOT = Path(__file__).resolve().parents[2]
# Nothing listens on port 9: a tool that reached out would fail to connect.
NOWHERE = "http://127.0.0.1:9/realms/sensor-pipeline"


def credentials(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.credentials", *args],
        cwd=ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_token_help_names_the_scope_and_the_device_options() -> None:
    done = credentials("token", "--help", env={"IDP_URL": NOWHERE})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m tools.credentials token")
    for option in ("--scope", "--device"):
        assert option in done.stdout


def test_the_tool_help_lists_the_token_command() -> None:
    done = credentials("--help", env={"IDP_URL": NOWHERE})
    assert done.returncode == 0, done.stderr
    assert "token" in done.stdout and "readings:write" in done.stdout


def test_a_missing_scope_is_a_usage_error() -> None:
    done = credentials("token", env={"IDP_URL": NOWHERE})
    assert done.returncode == 2
    assert "--scope" in done.stderr


def test_an_unreachable_identity_provider_exits_1_and_says_to_start_the_stack() -> None:
    env = {"IDP_URL": NOWHERE, "IDP_FLEET_CLIENT_SECRET": "a-secret"}
    done = credentials("token", "--scope", "readings:write", env=env)
    assert done.returncode == 1, done
    assert "cannot reach the identity provider" in done.stderr and "make up" in done.stderr
    assert "a-secret" not in done.stderr
    assert done.stdout == ""


def test_a_missing_secret_file_exits_2_naming_the_file(tmp_path: Path) -> None:
    env = {"IDP_URL": NOWHERE, "IDP_SECRETS_DIR": str(tmp_path)}
    done = credentials("token", "--scope", "readings:write", env=env)
    assert done.returncode == 2, done
    assert str(tmp_path / "fleet-simulator.secret") in done.stderr
    assert "make up" in done.stderr


def test_the_admin_api_is_the_realms_url_under_admin() -> None:
    settings = CredentialsSettings(idp_url="https://idp.example:8443/realms/sensor-pipeline/")
    assert settings.admin_url() == "https://idp.example:8443/admin/realms/sensor-pipeline"
    assert settings.token_endpoint() == (
        "https://idp.example:8443/realms/sensor-pipeline/protocol/openid-connect/token"
    )


def test_a_device_client_puts_the_device_id_in_its_access_tokens_only() -> None:
    client = device_client_representation("dev-7")
    assert client["clientId"] == "device-dev-7"
    assert client["serviceAccountsEnabled"] and not client["publicClient"]
    assert not client["standardFlowEnabled"] and not client["directAccessGrantsEnabled"]
    [mapper] = client["protocolMappers"]
    assert mapper["config"]["claim.name"] == DEVICE_CLAIM
    assert mapper["config"]["claim.value"] == "dev-7"
    assert mapper["config"]["access.token.claim"] == "true"


@pytest.mark.parametrize("device_id", ["", "dev/1", "dev 1", "-dev", "x" * 101, "dév"])
def test_a_device_id_that_cannot_name_a_client_is_refused_before_asking(device_id: str) -> None:
    settings = CredentialsSettings(idp_url=NOWHERE, idp_provisioner_client_secret="s")
    with pytest.raises(CredentialsError, match="cannot name a client"):
        device_client(None, settings, device_id)  # type: ignore[arg-type]


def test_a_plain_http_idp_url_needs_no_ca_file(tmp_path: Path) -> None:
    settings = CredentialsSettings(idp_url=NOWHERE, idp_ca_file=tmp_path / "none.crt")
    assert settings.tls_verify() is True


def test_an_https_idp_url_with_a_missing_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    settings = CredentialsSettings(
        idp_url="https://127.0.0.1:9/realms/sensor-pipeline", idp_ca_file=tmp_path / "none.crt"
    )
    with pytest.raises(ConfigurationError, match="IDP_CA_FILE"):
        settings.tls_verify()
