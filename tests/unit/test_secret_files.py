"""A secret setting read from the file `<NAME>_FILE` names (Kubernetes and Docker secret mounts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.errors import ConfigurationError
from libs.common.settings import PipelineSettings

URL = "postgresql://store:s3cret@db.example:5432/sensors"


def test_a_secret_comes_from_its_file_without_the_trailing_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "database_url"
    secret.write_text(URL + "\n")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL_FILE", str(secret))
    url = PipelineSettings().database_url
    assert url is not None and url.get_secret_value() == URL


def test_the_file_value_is_validated_like_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "database_url"
    secret.write_text("mysql://u:p@h/db")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL_FILE", str(secret))
    with pytest.raises(ValueError, match="database_url must be a postgresql:// URL"):
        PipelineSettings()


def test_both_the_variable_and_its_file_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "database_url"
    secret.write_text(URL)
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.setenv("DATABASE_URL_FILE", str(secret))
    with pytest.raises(ConfigurationError, match="DATABASE_URL and DATABASE_URL_FILE"):
        PipelineSettings()


def test_a_missing_file_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigurationError, match="DATABASE_URL_FILE: No such file"):
        PipelineSettings()


def test_only_secrets_have_a_file_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    level = tmp_path / "log_level"
    level.write_text("DEBUG")
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    monkeypatch.setenv("LOG_LEVEL_FILE", str(level))
    assert PipelineSettings().log_level == "INFO"
