"""The admin API's database edge: the device registry (table devices) and the audit log's
reading (table audit_log; rows are appended only through libs.common.audit)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import orjson

from libs.common.db import CONNECTION_ERRORS
from libs.common.errors import DatabaseUnavailable

T = TypeVar("T")
DEVICE_COLUMNS = "device_id, model, site, owner, installed_at, metadata, updated_at, revoked_at"
# What PATCH may change: the descriptive columns, never the id or the timestamps.
UPDATABLE = ("model", "site", "owner", "installed_at", "metadata")

# An existing device keeps what the registration leaves out; registering a revoked device
# again gives it an account again. xmax = 0 only for a row this statement inserted.
REGISTER = f"""INSERT INTO devices (device_id, model, site, owner, installed_at, metadata)
    VALUES ($1, $2, $3, $4, $5, COALESCE($6, '{{}}'::jsonb))
    ON CONFLICT (device_id) DO UPDATE SET
        model = COALESCE(EXCLUDED.model, devices.model),
        site = COALESCE(EXCLUDED.site, devices.site),
        owner = COALESCE(EXCLUDED.owner, devices.owner),
        installed_at = COALESCE(EXCLUDED.installed_at, devices.installed_at),
        metadata = COALESCE($6, devices.metadata),
        revoked_at = NULL,
        updated_at = now()
    RETURNING {DEVICE_COLUMNS}, (xmax = 0) AS created"""

AUDIT_COLUMNS = (
    "id, at, actor, actor_kind, action, target, outcome, reason, source_address, request_id, "
    "recorded_by"
)
READ_AUDIT = f"""SELECT {AUDIT_COLUMNS} FROM audit_log
    WHERE ($1::text IS NULL OR actor = $1)
      AND ($2::text IS NULL OR action = $2)
      AND ($3::text IS NULL OR outcome = $3)
      AND ($4::timestamptz IS NULL OR at >= $4)
      AND ($5::text IS NULL OR request_id = $5)
    ORDER BY at DESC, id DESC
    LIMIT $6"""


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb in and out as Python objects (orjson)."""
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def _db(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailable(f"PostgreSQL: {error!r}") from error


def _device(row: asyncpg.Record | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {name: row[name] for name in DEVICE_COLUMNS.split(", ")}


async def list_devices(pool: asyncpg.Pool, limit: int, offset: int) -> list[dict[str, Any]]:
    rows = await _db(
        lambda: pool.fetch(
            f"SELECT {DEVICE_COLUMNS} FROM devices ORDER BY device_id LIMIT $1 OFFSET $2",
            limit,
            offset,
        )
    )
    return [d for d in map(_device, rows) if d is not None]


async def get_device(pool: asyncpg.Pool, device_id: str) -> dict[str, Any] | None:
    row = await _db(
        lambda: pool.fetchrow(
            f"SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1", device_id
        )
    )
    return _device(row)


async def register(
    pool: asyncpg.Pool, device_id: str, fields: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """The device's row, inserted or brought back from revoked; True when it was new."""
    row = await _db(
        lambda: pool.fetchrow(
            REGISTER,
            device_id,
            fields.get("model"),
            fields.get("site"),
            fields.get("owner"),
            fields.get("installed_at"),
            fields.get("metadata"),
        )
    )
    assert row is not None
    device = _device(row)
    assert device is not None
    return device, bool(row["created"])


async def update(
    pool: asyncpg.Pool, device_id: str, changes: dict[str, Any]
) -> dict[str, Any] | None:
    """The device after `changes` (UPDATABLE columns only); None when there is no such device."""
    columns = [name for name in UPDATABLE if name in changes]
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(columns, start=2))
    sets = f"{assignments}, updated_at = now()" if columns else "updated_at = updated_at"
    sql = f"UPDATE devices SET {sets} WHERE device_id = $1 RETURNING {DEVICE_COLUMNS}"
    row = await _db(lambda: pool.fetchrow(sql, device_id, *(changes[n] for n in columns)))
    return _device(row)


async def mark_revoked(pool: asyncpg.Pool, device_id: str) -> dict[str, Any] | None:
    row = await _db(
        lambda: pool.fetchrow(
            "UPDATE devices SET revoked_at = COALESCE(revoked_at, now()), updated_at = now() "
            f"WHERE device_id = $1 RETURNING {DEVICE_COLUMNS}",
            device_id,
        )
    )
    return _device(row)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    request_id: str | None = None
    limit: int = 100


async def read_audit(pool: asyncpg.Pool, where: AuditFilter) -> list[dict[str, Any]]:
    """The newest audit rows that match, newest first."""
    rows = await _db(
        lambda: pool.fetch(
            READ_AUDIT,
            where.actor,
            where.action,
            where.outcome,
            where.since,
            where.request_id,
            where.limit,
        )
    )
    return [dict(row) for row in rows]
