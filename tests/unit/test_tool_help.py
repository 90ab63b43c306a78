"""Every tool answers --help with its version, without starting anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from libs.common.version import __version__

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("setup", "replay", "simulate", "run")
# Addresses where nothing listens: a tool that started its work would fail or hang, and log it.
NOWHERE = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "DATABASE_URL": "postgresql://nobody:nothing@127.0.0.1:9/none",
    "MQTT_URL": "mqtt://127.0.0.1:9",
}


@pytest.mark.parametrize("tool", TOOLS)
def test_each_tool_answers_help_with_its_version_and_starts_nothing(tool: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"tools.{tool}", "--help"],
        cwd=REPO_ROOT,
        env=os.environ | NOWHERE,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m tools.{tool}")
    assert f"version {__version__}" in done.stdout
    assert done.stderr == ""  # no log line: nothing was connected to or started


@pytest.mark.parametrize("tool", TOOLS)
def test_each_tool_prints_its_version(tool: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"tools.{tool}", "--version"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sensor-pipeline {__version__}"
