"""The wheel builds from the files the Dockerfile copies and runs with the runtime lock alone.

What the image does, without Docker: the project's files are copied to a scratch directory,
`pip wheel --no-deps` builds the wheel there, and a virtual environment without pip gets
requirements/runtime.lock (hash-checked) and then the wheel with --no-deps. Every service must
import there and every console script the image can run must answer --version: no test or tools
extra is needed at run time. Needs PyPI (or pip's cache) for the locked packages and for
setuptools, the build backend; about 35 s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.unit.test_lock import RUNTIME_LOCK, parse_lock

ROOT = Path(__file__).resolve().parents[2]
# The build context of the Dockerfile's project layer (COPY lines), nothing else.
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE", "NOTICE", "libs", "services", "tools")
SERVICES = ("ingest", "validate", "enrich", "store")
# Only in extras: none of them may be needed (or present) at run time.
NOT_AT_RUNTIME = (
    "pytest",
    "hypothesis",
    "rich",
    "mypy",
    "ruff",
    "numpy",
    "scipy",
    "reverse_geocode",
)
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pip(*args: str | Path, timeout: float = 300) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"


def run(command: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=env,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


class Built:
    def __init__(self, wheel: Path, prefix: Path) -> None:
        self.wheel = wheel
        self.prefix = prefix
        self.python = prefix / "bin" / "python"
        # Away from the checkout: nothing may come from the source tree instead of the venv.
        self.cwd = prefix.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PROJECT_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    pip("wheel", "--no-deps", "--quiet", "-w", base / "dist", source)
    [wheel] = (base / "dist").glob("*.whl")
    prefix = base / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(prefix)
    python = prefix / "bin" / "python"
    pip("--python", python, "install", "--quiet", "--require-hashes", "-r", RUNTIME_LOCK)
    pip("--python", python, "install", "--quiet", "--no-deps", wheel)
    return Built(wheel, prefix)


def test_the_wheel_carries_the_package_data_and_the_licence_files(built: Built) -> None:
    version = PROJECT["version"]
    assert built.wheel.name == f"sensor_pipeline-{version}-py3-none-any.whl"
    names = set(zipfile.ZipFile(built.wheel).namelist())
    dist_info = f"sensor_pipeline-{version}.dist-info"
    assert {f"{dist_info}/licenses/LICENSE", f"{dist_info}/licenses/NOTICE"} <= names
    assert any(re.fullmatch(r"libs/common/migrations/.+\.sql", name) for name in names)
    assert any(name.startswith("services/enrich/data/") for name in names)
    assert "services/validate/default_rules.yaml" in names
    assert not [name for name in names if name.startswith("tests/") or "__pycache__" in name]


def test_the_runtime_venv_holds_exactly_the_runtime_lock_and_the_project(built: Built) -> None:
    names = "print('\\n'.join(d.metadata['Name'] for d in importlib.metadata.distributions()))"
    listed = run([built.python, "-c", f"import importlib.metadata; {names}"], cwd=built.cwd)
    installed = {canonicalize_name(name) for name in listed.split()}
    expected = set(parse_lock(RUNTIME_LOCK.read_text())) | {canonicalize_name(PROJECT["name"])}
    assert installed == expected


def test_every_service_imports_with_the_runtime_dependencies_alone(built: Built) -> None:
    modules = ", ".join(f"services.{name}.service" for name in SERVICES)
    probe = (
        f"import importlib.util, {modules}, tools.setup, tools.simulate, tools.replay\n"
        "from libs.common.db import migration_files\n"
        "assert migration_files()\n"
        f"print([m for m in {NOT_AT_RUNTIME!r} if importlib.util.find_spec(m)])\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    assert run([built.python, "-I", "-c", probe], cwd=built.cwd, env=env).strip() == "[]"


@pytest.mark.parametrize(
    "script",
    # sensor-run is the live view of the [tools] extra (rich): not in the image.
    sorted(name for name in PROJECT["scripts"] if name != "sensor-run"),
)
def test_each_console_script_answers_version_in_the_runtime_venv(built: Built, script: str) -> None:
    executable = built.prefix / "bin" / script
    assert executable.is_file(), script
    assert (
        run([executable, "--version"], cwd=built.cwd).strip()
        == f"sensor-pipeline {PROJECT['version']}"
    )


def test_sensor_run_without_the_tools_extra_says_which_extra_it_needs(built: Built) -> None:
    done = subprocess.run(
        [str(built.prefix / "bin" / "sensor-run"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=built.cwd,
    )
    assert done.returncode == 1
    assert "pip install 'sensor-pipeline[tools]'" in done.stderr
    assert "Traceback" not in done.stderr
