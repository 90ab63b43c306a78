"""The database roles' DSNs (tools.db_accounts) and how libs.common.db hands TLS to asyncpg;
no server needed."""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import certifi
import pytest

from libs.common.db import tls_for
from libs.common.errors import ConfigurationError
from libs.common.settings import PipelineSettings
from tools.credentials import main
from tools.db_accounts import ROLES, dsn_for

SOME_CA_BUNDLE = Path(certifi.where())


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    for role in ROLES:
        (tmp_path / f"postgres-{role}.password").write_text(f"pw/{role}@:?\n")
    return tmp_path


def test_a_roles_dsn_has_its_user_its_password_and_verify_full_against_the_ca(
    secrets: Path,
) -> None:
    settings = PipelineSettings(
        database_url="postgresql://sensors:sensors@127.0.0.1:6543/sensors",
        tls_ca_file=SOME_CA_BUNDLE,
    )
    url = urlsplit(dsn_for("reader", settings, secrets))
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "postgresql",
        "127.0.0.1",
        6543,
        "/sensors",
    )
    assert url.username == "reader"
    assert unquote(url.password or "") == "pw/reader@:?"
    assert parse_qs(url.query) == {
        "sslmode": ["verify-full"],
        "sslrootcert": [str(SOME_CA_BUNDLE)],
    }


def test_an_unknown_role_or_a_missing_password_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown database role"):
        dsn_for("superuser", PipelineSettings(), tmp_path)
    with pytest.raises(ConfigurationError, match="make up"):
        dsn_for("store", PipelineSettings(), tmp_path)


def test_the_credentials_command_prints_the_dsn_or_exits_2_with_why(
    secrets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["database", "--role", "enrich", "--secrets-dir", str(secrets)]) == 0
    assert capsys.readouterr().out.startswith("postgresql://enrich:")
    empty = tmp_path / "none"
    assert main(["database", "--role", "enrich", "--secrets-dir", str(empty)]) == 2
    assert "cannot read the password" in capsys.readouterr().err


def test_a_dsn_with_sslrootcert_or_without_sslmode_leaves_tls_to_asyncpg() -> None:
    for query in ("", "?sslmode=verify-full&sslrootcert=/some/ca.crt", "?sslmode=require"):
        settings = PipelineSettings(database_url=f"postgresql://u:p@127.0.0.1/db{query}")
        assert tls_for(settings) is None


def test_verify_full_without_a_root_certificate_verifies_against_tls_ca_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    settings = PipelineSettings(
        database_url="postgresql://u:p@127.0.0.1/db?sslmode=verify-full",
        tls_ca_file=SOME_CA_BUNDLE,
    )
    context = tls_for(settings)
    assert context is not None
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
