"""The services' and tools' --help and --version, the generated settings reference and the build
info."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from libs.common import cli, metrics
from libs.common.version import __version__

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "validate", "enrich", "store")
TOOLS = ("setup", "replay", "simulate", "run", "credentials")
# Addresses where nothing listens: a tool that started its work would fail or hang, and log it.
NOWHERE = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "DATABASE_URL": "postgresql://nobody:nothing@127.0.0.1:9/none",
    "MQTT_URL": "mqtt://127.0.0.1:9",
}


def run_module(module: str, *args: str, env: dict[str, str] | None = None):
    """`python -m module args...` from the checkout; one that started would hit the timeout."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("stage", STAGES)
def test_a_service_answers_help_with_its_settings_and_starts_nothing(stage):
    started = time.monotonic()
    # A service that started would bind its port and run until stopped: the timeout catches it.
    answer = run_module(f"services.{stage}", "--help")
    assert answer.returncode == 0, answer.stderr
    assert time.monotonic() - started < 15
    assert __version__ in answer.stdout
    assert "KAFKA_BOOTSTRAP_SERVERS   = 127.0.0.1:9092" in answer.stdout
    assert "DATABASE_URL" in answer.stdout
    assert "sensors:sensors" not in answer.stdout  # the DSN's password stays hidden
    assert answer.stderr == ""  # nothing logged: logging was never configured


@pytest.mark.parametrize("stage", STAGES)
def test_a_service_answers_version(stage):
    answer = run_module(f"services.{stage}", "--version")
    assert (answer.returncode, answer.stdout.strip()) == (0, f"sensor-pipeline {__version__}")


@pytest.mark.parametrize("tool", TOOLS)
def test_each_tool_answers_help_with_its_version_and_starts_nothing(tool: str) -> None:
    done = run_module(f"tools.{tool}", "--help", env=os.environ | NOWHERE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m tools.{tool}")
    assert f"version {__version__}" in done.stdout
    assert done.stderr == ""  # no log line: nothing was connected to or started


@pytest.mark.parametrize("tool", TOOLS)
def test_each_tool_prints_its_version(tool: str) -> None:
    done = run_module(f"tools.{tool}", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sensor-pipeline {__version__}"


def test_docs_settings_md_is_current():
    assert (ROOT / "docs/settings.md").read_text() == cli.settings_markdown(), (
        "docs/settings.md is stale: python -m libs.common.cli --markdown > docs/settings.md"
    )


def test_env_example_is_current():
    assert (ROOT / ".env.example").read_text() == cli.env_example(), (
        ".env.example is stale: python -m libs.common.cli --env-example > .env.example"
    )


def test_secrets_are_marked_and_their_defaults_never_shown():
    from services.ingest.settings import IngestSettings

    rows = {env: default for env, default, _ in cli.settings_rows(IngestSettings)}
    assert rows["DATABASE_URL"] == cli.SECRET
    assert "sensors:sensors" not in cli.settings_markdown() + cli.env_example()


def test_build_info_carries_the_version_and_the_image_s_commit(monkeypatch):
    monkeypatch.setenv("PIPELINE_COMMIT", "0123abc")
    metrics.initialise("validate")
    scraped = generate_latest().decode()
    assert (
        metrics.sample_sum(
            scraped, "pipeline_build_info", stage="validate", version=__version__, commit="0123abc"
        )
        == 1
    )


def test_build_commit_falls_back_to_git_in_a_checkout(monkeypatch):
    monkeypatch.delenv("PIPELINE_COMMIT", raising=False)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    assert metrics.build_commit() == (head or "unknown")


def test_a_bad_setting_is_named_by_its_variable_without_a_traceback_or_the_secret() -> None:
    env = os.environ | {"HTTP_PORT": "eighty", "DATABASE_URL": "mysql://u:hunter2@h/db"}
    done = run_module("services.store", env=env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "HTTP_PORT: Input should be a valid integer" in done.stderr
    assert "(got 'eighty')" in done.stderr
    assert "DATABASE_URL: database_url must be a postgresql:// URL" in done.stderr
    assert "hunter2" not in done.stderr
