"""The services' command line: ``--help`` and ``--version`` answer without starting anything.

``--help`` lists a service's settings with their environment variables and defaults, from the
settings classes themselves; ``python -m libs.common.cli --markdown`` writes docs/settings.md and
``--env-example`` writes .env.example from the same listing; ``--reading-schema`` writes
docs/reading.schema.json from the reading's model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

from libs.common.errors import ConfigurationError
from libs.common.settings import PipelineSettings, is_secret
from libs.common.version import __version__

SECRET = "(secret)"
S = TypeVar("S", bound=PipelineSettings)


def settings_rows(settings_class: type[BaseSettings]) -> list[tuple[str, str, str]]:
    """(environment variable, default, description) of each setting; secrets' values hidden."""
    rows = []
    for name, field in settings_class.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr) or is_secret(field):
            shown = SECRET
        elif default is None:
            shown = ""
        else:
            shown = str(default.value if hasattr(default, "value") else default)
        rows.append((name.upper(), shown, (field.description or "").strip()))
    return rows


def help_text(description: str, settings_class: type[BaseSettings]) -> str:
    rows = settings_rows(settings_class)
    width = max(len(env) for env, _, _ in rows)
    lines = [
        f"sensor-pipeline {__version__}: {description}",
        "",
        "Settings come from the environment (name = default; secrets are not shown, and each"
        " can be read from a file named by <NAME>_FILE):",
    ]
    lines += [f"  {env:<{width}} = {default}" for env, default, _ in rows]
    return "\n".join(lines)


def argument_parser(prog: str, description: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """The one argparse start of every service and tool: its help ends with the project's version
    and it answers `--version`."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=f"version {__version__}", **kwargs
    )
    parser.add_argument("--version", action="version", version=f"sensor-pipeline {__version__}")
    return parser


def parse(description: str, settings_class: type[BaseSettings], argv: Sequence[str]) -> None:
    """Answer --help / --version and exit 0; return when the service should run."""
    parser = argument_parser(
        f"sensor-{settings_class.model_fields['service_name'].default}",
        help_text(description, settings_class),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)


def serve(
    description: str,
    settings_class: type[S],
    run_service: Callable[[S, asyncio.Event], Coroutine[Any, Any, None]],
    argv: Sequence[str] | None = None,
) -> None:
    """A service's ``__main__``: parse the command line, build the settings, run until SIGTERM."""
    parse(description, settings_class, sys.argv[1:] if argv is None else argv)
    # Imported here so that --help never configures logging or touches the event loop.
    from libs.common.lifecycle import run
    from libs.common.logs import configure_logging

    settings = read_settings(settings_class)
    configure_logging(settings.service_name, settings.log_level)
    run(lambda stop: run_service(settings, stop), settings.shutdown_timeout_s)


def settings_problems(error: ValidationError, settings_class: type[BaseSettings]) -> str:
    """One line per bad setting, by its environment variable, for people (no traceback); a
    secret's value is never shown."""
    secrets = {name for name, shown, _ in settings_rows(settings_class) if shown == SECRET}
    lines = []
    for problem in error.errors(include_url=False):
        name = "_".join(str(part) for part in problem["loc"]).upper()
        message = problem["msg"].removeprefix("Value error, ")
        got = problem.get("input")
        shown = (
            f" (got {got!r})"
            if name and name not in secrets and isinstance(got, str | int | float)
            else ""
        )
        lines.append(f"  {name}: {message}{shown}" if name else f"  {message}")
    return "\n".join(lines)


def read_settings(settings_class: type[S]) -> S:
    """The settings from the environment; a bad one exits 2 with what is wrong and where."""
    try:
        return settings_class()
    except ConfigurationError as error:
        sys.stderr.write(f"{settings_class.__name__}: bad settings\n  {error}\n")
        raise SystemExit(2) from None
    except ValidationError as error:
        sys.stderr.write(
            f"{error.title}: bad settings\n{settings_problems(error, settings_class)}\n"
        )
        raise SystemExit(2) from None


def _service_settings() -> dict[str, type[PipelineSettings]]:
    # Imported on demand: each service's module only needs its own class.
    from services.admin.settings import AdminSettings
    from services.enrich.settings import EnrichSettings
    from services.ingest.settings import IngestSettings
    from services.store.settings import StoreSettings
    from services.validate.settings import ValidateSettings

    return {
        "ingest": IngestSettings,
        "validate": ValidateSettings,
        "enrich": EnrichSettings,
        "store": StoreSettings,
        "admin": AdminSettings,
    }


def settings_markdown() -> str:
    """docs/settings.md: every service's settings, as its --help lists them."""
    lines = [
        "# Settings reference",
        "",
        "Generated by `python -m libs.common.cli --markdown > docs/settings.md` from the settings",
        "classes (a unit test fails when this file is stale). Every setting is an environment",
        f"variable; {SECRET} marks a secret, whose default is not shown. A secret can also come",
        "from a file: `<NAME>_FILE=/path` (a Kubernetes or Docker secret mount) reads it from",
        "there; setting both is refused.",
    ]
    for stage, settings_class in _service_settings().items():
        lines += ["", f"## {stage} (`python -m services.{stage}`)", ""]
        lines += ["| variable | default |", "| --- | --- |"]
        for env, default, _ in settings_rows(settings_class):
            cell = f"`{default}`" if default and default != SECRET else default
            lines.append(f"| `{env}` | {cell} |")
    return "\n".join(lines) + "\n"


def env_example() -> str:
    """.env.example: each variable once, commented out at its default; secrets left empty."""
    lines = [
        "# Every setting of the services with its default (python -m libs.common.cli",
        "# --env-example > .env.example). Uncomment to change; secrets are left empty on purpose.",
    ]
    seen: set[str] = set()
    for stage, settings_class in _service_settings().items():
        lines += ["", f"# {stage}"]
        for env, default, _ in settings_rows(settings_class):
            if env in seen or env == "SERVICE_NAME":
                continue
            seen.add(env)
            if default == SECRET:
                lines.append(f"# {env}=   # secret")
            else:
                lines.append(f"# {env}={default}")
    return "\n".join(lines) + "\n"


def reading_schema() -> str:
    """docs/reading.schema.json: a reading's JSON Schema (libs.common.models.RawReading)."""
    from libs.common.models import reading_json_schema

    return json.dumps(reading_json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description="Write a generated reference file to stdout.")
    _which = _parser.add_mutually_exclusive_group(required=True)
    _which.add_argument("--markdown", action="store_true", help="docs/settings.md")
    _which.add_argument("--env-example", action="store_true", help=".env.example")
    _which.add_argument("--reading-schema", action="store_true", help="docs/reading.schema.json")
    _args = _parser.parse_args()
    if _args.markdown:
        sys.stdout.write(settings_markdown())
    elif _args.env_example:
        sys.stdout.write(env_example())
    else:
        sys.stdout.write(reading_schema())
