"""The database roles' DSNs (libs.common.db_accounts, tools.db_accounts for the command line),
each client's role and its DSN when DATABASE_URL is unset, the warning for a DSN that does not
verify the server, and how libs.common.db hands TLS to asyncpg; no server needed."""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import certifi
import pytest
import structlog

from libs.common import db_accounts
from libs.common.db import dsn_and_tls, insecure_reason, tls_for
from libs.common.errors import ConfigurationError
from libs.common.settings import PipelineSettings
from services.enrich.settings import EnrichSettings
from services.store.settings import StoreSettings
from tools import db_accounts as cli_accounts
from tools.credentials import main
from tools.db_accounts import ROLES, dsn_for
from tools.setup import SetupSettings

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


def test_the_command_line_wrapper_is_the_library_itself() -> None:
    # One implementation, which the services may import (never tools.*).
    assert cli_accounts.dsn_for is db_accounts.dsn_for
    assert cli_accounts.ROLES is db_accounts.ROLES


@pytest.fixture
def local_secrets(secrets: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The role passwords where the local stack keeps them; no DATABASE_URL in the environment."""
    monkeypatch.setattr(db_accounts, "local_secrets_dir", lambda: secrets)
    for variable in ("DATABASE_URL", "DATABASE_URL_FILE", "DATABASE_ROLE", "PGSSLMODE"):
        monkeypatch.delenv(variable, raising=False)
    return secrets


@pytest.mark.parametrize(
    ("settings_class", "role"),
    [
        (PipelineSettings, "reader"),
        (StoreSettings, "store"),
        (EnrichSettings, "enrich"),
        (SetupSettings, "migrator"),
    ],
)
def test_without_database_url_each_client_connects_as_its_role_with_tls_verified(
    local_secrets: Path, settings_class: type[PipelineSettings], role: str
) -> None:
    settings = settings_class(tls_ca_file=SOME_CA_BUNDLE)
    url = urlsplit(settings.database_dsn().get_secret_value())
    assert (url.username, unquote(url.password or "")) == (role, f"pw/{role}@:?")
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", 5432, "/sensors")
    assert parse_qs(url.query)["sslmode"] == ["verify-full"]
    assert insecure_reason(settings.database_dsn().get_secret_value()) is None


def test_database_url_or_its_file_overrides_the_role(
    local_secrets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = "postgresql://someone:pw@db.example:5433/sensors?sslmode=verify-full"
    monkeypatch.setenv("DATABASE_URL", given)
    assert StoreSettings().database_dsn().get_secret_value() == given
    monkeypatch.delenv("DATABASE_URL")
    (tmp_path / "dsn").write_text(given + "\n")
    monkeypatch.setenv("DATABASE_URL_FILE", str(tmp_path / "dsn"))
    assert StoreSettings().database_dsn().get_secret_value() == given


def test_an_unknown_role_is_refused_and_a_missing_password_says_make_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="database_role must be one of"):
        PipelineSettings(database_role="postgres")
    monkeypatch.setattr(db_accounts, "local_secrets_dir", lambda: tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="'store'.*make up"):
        StoreSettings().database_dsn()


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("", "sslmode=prefer"),
        ("?sslmode=disable", "no TLS at all"),
        ("?sslmode=allow", "sslmode=allow"),
        ("?sslmode=prefer", "sslmode=prefer"),
        ("?sslmode=require", "no check of the server's certificate"),
        ("?sslmode=verify-ca", "not that it names the host"),
    ],
)
def test_a_database_url_that_does_not_verify_the_server_is_warned_about_at_start_up(
    query: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    monkeypatch.setattr("libs.common.db._WARNED", set())
    settings = PipelineSettings(
        service_name="store", database_url=f"postgresql://u:secret@127.0.0.1/db{query}"
    )
    with structlog.testing.capture_logs() as logs:
        dsn_and_tls(settings)
        dsn_and_tls(settings)  # once per process
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "does not verify the database server's identity" in warnings[0]["event"]
    assert why in warnings[0]["reason"] and warnings[0]["service"] == "store"
    assert "secret" not in str(warnings[0])  # the DSN itself is never logged


def test_verify_full_is_not_warned_about_and_pgsslmode_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql://u:p@127.0.0.1/db"
    assert insecure_reason(url + "?sslmode=verify-full&sslrootcert=/ca.crt") is None
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    assert insecure_reason(url) is None
    assert insecure_reason(url + "?sslmode=require") is not None
