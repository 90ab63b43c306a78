"""requirements/*.lock agree with pyproject.toml (no network: nothing is recompiled here).

runtime.lock pins [project.dependencies], dev.lock those and the [test] extra (what `make venv`
installs); `make lock` regenerates both. Each dependency pyproject names must be pinned in the
lock at a version its specifier allows, every pin carries hashes (pip then checks every file it
downloads), and dev.lock pins the runtime packages at the runtime lock's versions.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
DEV_LOCK = ROOT / "requirements" / "dev.lock"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*\\)?$")


def parse_lock(text: str) -> dict[str, Version]:
    """name -> pinned version of each `name==version` line of a pip requirements lock."""
    pins: dict[str, Version] = {}
    for line in text.splitlines():
        match = _PIN.match(line.strip())
        if match:
            name = canonicalize_name(match.group(1))
            assert name not in pins, f"{name} pinned twice"
            pins[name] = Version(match.group(2))
    return pins


def unhashed_pins(text: str) -> list[str]:
    """The pins not followed by a --hash line (pip's hash-checking mode refuses them)."""
    lines = [line.strip() for line in text.splitlines()]
    return [
        line.split("==")[0]
        for index, line in enumerate(lines)
        if _PIN.match(line)
        and not (index + 1 < len(lines) and lines[index + 1].startswith("--hash=sha256:"))
    ]


def requirements_of(project: dict, extras: tuple[str, ...] = ()) -> list[Requirement]:
    """[project.dependencies] and the extras given, self-references (name[extra]) expanded."""
    own = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    found: list[Requirement] = []
    todo, seen = list(extras), set()
    for text in project.get("dependencies", []):
        found.append(Requirement(text))
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == own:
                todo.extend(requirement.extras)
            else:
                found.append(requirement)
    return [r for r in found if r.marker is None or r.marker.evaluate({"python_version": "3.11"})]


def stale(requirements: list[Requirement], pins: dict[str, Version]) -> list[str]:
    """Why the lock does not satisfy the requirements; [] when it does."""
    problems = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement.name} is not in the lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement.name}=={pins[name]} is outside {requirement.specifier}")
    return problems


def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


HOW = "stale: run `make lock` and commit requirements/"


def test_runtime_lock_pins_every_dependency_within_its_specifier() -> None:
    pins = parse_lock(RUNTIME_LOCK.read_text())
    assert stale(requirements_of(project()), pins) == [], HOW


def test_dev_lock_pins_the_dependencies_and_the_test_extra_within_their_specifiers() -> None:
    pins = parse_lock(DEV_LOCK.read_text())
    requirements = requirements_of(project(), ("test",))
    assert {"pytest", "mypy", "ruff"} <= {canonicalize_name(r.name) for r in requirements}
    assert stale(requirements, pins) == [], HOW


def test_dev_lock_pins_the_runtime_packages_at_the_runtime_versions() -> None:
    runtime, dev = parse_lock(RUNTIME_LOCK.read_text()), parse_lock(DEV_LOCK.read_text())
    assert runtime
    assert {name: dev.get(name) for name in runtime} == runtime


def test_every_pin_carries_hashes() -> None:
    for lock in (RUNTIME_LOCK, DEV_LOCK):
        text = lock.read_text()
        assert parse_lock(text), lock.name
        assert unhashed_pins(text) == [], lock.name


def test_the_lock_check_finds_a_missing_a_stale_and_an_unhashed_pin() -> None:
    lock = "aiokafka==0.14.0 \\\n    --hash=sha256:00\nstructlog==25.5.0\n"
    pins = parse_lock(lock)
    assert pins == {"aiokafka": Version("0.14.0"), "structlog": Version("25.5.0")}
    assert unhashed_pins(lock) == ["structlog"]
    fake = {
        "name": "sensor-pipeline",
        "dependencies": ["aiokafka[lz4]>=0.12,<0.15", "structlog>=26"],
        "optional-dependencies": {"test": ["sensor-pipeline[tools]"], "tools": ["rich>=13"]},
    }
    assert stale(requirements_of(fake, ("test",)), pins) == [
        "structlog==25.5.0 is outside >=26",
        "rich is not in the lock",
    ]


def test_make_venv_installs_from_the_dev_lock_and_the_image_from_the_runtime_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "DEV_LOCK := requirements/dev.lock" in makefile
    assert "pip install --quiet -r $(DEV_LOCK)" in makefile
    assert "pip install --quiet --no-deps -e ." in makefile
    assert re.search(r"^lock:", makefile, re.MULTILINE)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements/runtime.lock" in dockerfile
    assert re.search(r"pip install .*--require-hashes.* -r \S*runtime\.lock", dockerfile)
    assert re.search(r"pip install .*--no-deps", dockerfile)
