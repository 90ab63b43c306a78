"""PostgreSQL connections for the pipeline and the idempotent migration command."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import structlog

from libs.common.errors import ConfigurationError, DatabaseUnavailable
from libs.common.settings import PipelineSettings
from libs.common.tls import client_context

log = structlog.get_logger(__name__)

# Shipped inside the package, so an installed service (a container) finds them too.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any number will do as long as nothing else in the database uses it for a lock.
_MIGRATION_LOCK = 727_001

# Errors that mean "the server is away", not "this statement is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    TimeoutError,
)


def _server_settings(settings: PipelineSettings) -> dict[str, str]:
    # The extension's functions live in public; the pipeline's tables in the chosen schema.
    return {
        "search_path": f"{settings.database_schema},public",
        "application_name": settings.service_name,
    }


def tls_for(settings: PipelineSettings) -> ssl.SSLContext | None:
    """The `ssl` argument for asyncpg: None leaves TLS to the DSN, as libpq reads it.

    asyncpg (0.32) honours `sslmode` and `sslrootcert` in the DSN: verify-full checks the
    chain and the host name, TLS 1.2 at least. Only `sslmode=verify-full` without a root
    certificate (neither `sslrootcert` nor PGSSLROOTCERT) is taken differently: asyncpg would
    look for ~/.postgresql/root.crt; here it means the CA of TLS_CA_FILE (the local stack's by
    default), with libs.common.tls's context, which checks the same things.
    """
    query = parse_qs(urlsplit(settings.database_url.get_secret_value()).query)
    if (
        query.get("sslmode") == ["verify-full"]
        and "sslrootcert" not in query
        and not os.environ.get("PGSSLROOTCERT")
    ):
        return client_context(settings.tls_ca_file)
    return None


def _untrusted(error: ssl.SSLCertVerificationError) -> ConfigurationError:
    # An OSError, but no outage: the server's certificate is not one the configured CA
    # signed (or not for that host), and waiting will not change it.
    return ConfigurationError(
        f"PostgreSQL: the server's certificate does not verify ({error.verify_message}): "
        "check TLS_CA_FILE or sslrootcert in DATABASE_URL, and the host name"
    )


async def connect(settings: PipelineSettings) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(
            settings.database_url.get_secret_value(),
            server_settings=_server_settings(settings),
            timeout=10,
            ssl=tls_for(settings),
        )
    except ssl.SSLCertVerificationError as error:
        raise _untrusted(error) from error
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailable(f"PostgreSQL: {error!r}") from error


async def create_pool(
    settings: PipelineSettings, *, size: int = 4, init: Callable[..., Any] | None = None
) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            settings.database_url.get_secret_value(),
            min_size=1,
            max_size=size,
            server_settings=_server_settings(settings),
            timeout=10,
            init=init,
            ssl=tls_for(settings),
        )
    except ssl.SSLCertVerificationError as error:
        raise _untrusted(error) from error
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailable(f"PostgreSQL: {error!r}") from error
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool, timeout_s: float) -> None:
    """Close gracefully within a bound, else terminate: after an outage a pool can wait for
    connections that never come back, and a service must still stop when told."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        log.warning("database pool did not close in time; terminating it", timeout_s=timeout_s)
        pool.terminate()


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))


async def migrate(conn: asyncpg.Connection, schema: str = "public") -> list[str]:
    """Apply the migrations this schema lacks, each in its own transaction; returns their names.

    An advisory lock makes concurrent runs (several replicas starting at once) take turns.
    """
    applied_now: list[str] = []
    notices: list[str] = []
    conn.add_log_listener(lambda _c, message: notices.append(str(message.message)))
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute(f'SET search_path TO "{schema}", public')
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version text PRIMARY KEY,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for path in migration_files():
            if path.stem in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.stem)
            applied_now.append(path.stem)
            log.info("migration applied", version=path.stem, schema=schema)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    for notice in notices:
        log.info("database notice", notice=notice)
    return applied_now
