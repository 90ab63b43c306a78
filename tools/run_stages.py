"""The four services as tools.run starts them: each one's address from its own settings, and what
to check before starting them, so start-up does not fail slowly and vaguely."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from libs.common.db_accounts import LOCAL_HOST, LOCAL_PORT
from libs.common.errors import ConfigurationError
from libs.common.settings import PipelineSettings
from tools.processes import ServiceProcess


def stage_services(log_dir: Path) -> list[ServiceProcess]:
    """The four services, in pipeline order, each at the address its own settings give (so
    HTTP_PORT and friends agree); each has its own session and dies with tools.run."""
    from services.enrich.settings import EnrichSettings
    from services.ingest.settings import IngestSettings
    from services.store.settings import StoreSettings
    from services.validate.settings import ValidateSettings

    services = []
    for name, settings in (
        ("ingest", IngestSettings()),
        ("validate", ValidateSettings()),
        ("enrich", EnrichSettings()),
        ("store", StoreSettings()),
    ):
        host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "", "::") else settings.http_host
        services.append(
            ServiceProcess(
                name,
                f"services.{name}",
                log_dir / f"{name}.log",
                port=settings.http_port,
                # ingest's HTTPS readings port, where the simulator posts.
                https_port=settings.https_port
                if isinstance(settings, IngestSettings) and settings.https_enabled
                else None,
                host=host,
                # Its own session: a Ctrl-C in the terminal reaches tools.run only, which then
                # stops the services in order instead of all at once.
                own_session=True,
                # No orphan keeps its port when tools.run dies, even by SIGKILL.
                die_with_parent=True,
            )
        )
    return services


async def _reachable(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _database_logins() -> list[str]:
    """Each stage's database DSN resolves (its role's password is there, or DATABASE_URL)."""
    from services.enrich.settings import EnrichSettings
    from services.store.settings import StoreSettings

    problems = []
    for name, settings in (("enrich", EnrichSettings()), ("store", StoreSettings())):
        try:
            settings.database_dsn()
        except ConfigurationError as error:
            problems.append(f"{name}: {error}")
    return problems


async def preflight(services: Sequence[ServiceProcess]) -> list[str]:
    """Problems that would make start-up fail slowly and vaguely: say them at once."""
    problems: list[str] = []
    for service in services:
        for number in (service.port, service.https_port):
            if number is not None and await _reachable(service.host, number):
                problems.append(
                    f"port {number} ({service.name}) is already in use: is another "
                    "`make run` (or a service) still running?"
                )
    settings = PipelineSettings()
    needs = [("Kafka", settings.kafka_bootstrap_servers.split(",")[0].strip())]
    db = urlsplit(settings.database_dsn().get_secret_value()) if settings.database_url else None
    db_address = f"{db.hostname or LOCAL_HOST}:{db.port or LOCAL_PORT}" if db else None
    needs.append(("PostgreSQL", db_address or f"{LOCAL_HOST}:{LOCAL_PORT}"))
    problems += _database_logins()
    from services.ingest.settings import IngestSettings

    mqtt = urlsplit(IngestSettings().mqtt_url)
    needs.append(("Mosquitto", f"{mqtt.hostname or '127.0.0.1'}:{mqtt.port or 1883}"))
    for what, address in needs:
        host, _, port = address.rpartition(":")
        if not await _reachable(host, int(port)):
            problems.append(f"{what} at {address} is not reachable: start the stack (`make up`)")
    return problems
