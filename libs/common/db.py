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


def insecure_reason(dsn: str) -> str | None:
    """Why a DSN does not check the server's identity, or None for sslmode=verify-full.

    sslmode as asyncpg reads it: the DSN's, else PGSSLMODE, else asyncpg's default `prefer`.
    """
    query = parse_qs(urlsplit(dsn).query)
    mode = (query.get("sslmode") or [os.environ.get("PGSSLMODE") or "prefer"])[-1]
    if mode == "verify-full":
        return None
    if mode == "verify-ca":
        return (
            "sslmode=verify-ca checks the certificate's chain but not that it names the host "
            "connected to"
        )
    if mode == "disable":
        return "sslmode=disable: no TLS at all, the password and the data cross in plaintext"
    return (
        f"sslmode={mode}: TLS, if any, with no check of the server's certificate, so any "
        "server (a man in the middle) is taken for the database"
    )


_WARNED: set[str] = set()


def warn_if_insecure(dsn: str, service: str) -> None:
    """Once per process and reason: a DATABASE_URL that does not verify the server is a
    development switch, and start-up says so."""
    reason = insecure_reason(dsn)
    if reason is None or reason in _WARNED:
        return
    _WARNED.add(reason)
    log.warning(
        "DATABASE_URL does not verify the database server's identity: use it for development "
        "only; give sslmode=verify-full (and sslrootcert or TLS_CA_FILE), or unset DATABASE_URL "
        "to connect as DATABASE_ROLE with TLS verified",
        reason=reason,
        service=service,
    )


def _tls_for_dsn(dsn: str, ca: Path | None) -> ssl.SSLContext | None:
    query = parse_qs(urlsplit(dsn).query)
    if (
        query.get("sslmode") == ["verify-full"]
        and "sslrootcert" not in query
        and not os.environ.get("PGSSLROOTCERT")
    ):
        return client_context(ca)
    return None


def tls_for(settings: PipelineSettings) -> ssl.SSLContext | None:
    """The `ssl` argument for asyncpg: None leaves TLS to the DSN, as libpq reads it.

    asyncpg (0.32) honours `sslmode` and `sslrootcert` in the DSN: verify-full checks the
    chain and the host name, TLS 1.2 at least (the roles' DSNs of libs.common.db_accounts carry
    both). Only `sslmode=verify-full` without a root certificate (neither `sslrootcert` nor
    PGSSLROOTCERT) is taken differently: asyncpg would look for ~/.postgresql/root.crt; here it
    means the CA of TLS_CA_FILE (the local stack's by default), with libs.common.tls's context,
    which checks the same things.
    """
    return _tls_for_dsn(settings.database_dsn().get_secret_value(), settings.tls_ca_file)


def dsn_and_tls(settings: PipelineSettings) -> tuple[str, ssl.SSLContext | None]:
    """The DSN a client of these settings connects with (DATABASE_URL, else its role's), with
    the warning when it does not verify the server, and asyncpg's `ssl` argument for it."""
    dsn = settings.database_dsn().get_secret_value()
    warn_if_insecure(dsn, settings.service_name)
    return dsn, _tls_for_dsn(dsn, settings.tls_ca_file)


def _untrusted(error: ssl.SSLCertVerificationError) -> ConfigurationError:
    # An OSError, but no outage: the server's certificate is not one the configured CA
    # signed (or not for that host), and waiting will not change it.
    return ConfigurationError(
        f"PostgreSQL: the server's certificate does not verify ({error.verify_message}): "
        "check TLS_CA_FILE or sslrootcert in DATABASE_URL, and the host name"
    )


async def connect(settings: PipelineSettings) -> asyncpg.Connection:
    dsn, tls = dsn_and_tls(settings)
    try:
        return await asyncpg.connect(
            dsn,
            server_settings=_server_settings(settings),
            timeout=10,
            ssl=tls,
        )
    except ssl.SSLCertVerificationError as error:
        raise _untrusted(error) from error
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailable(f"PostgreSQL: {error!r}") from error


async def create_pool(
    settings: PipelineSettings, *, size: int = 4, init: Callable[..., Any] | None = None
) -> asyncpg.Pool:
    dsn, tls = dsn_and_tls(settings)
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=size,
            server_settings=_server_settings(settings),
            timeout=10,
            init=init,
            ssl=tls,
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
