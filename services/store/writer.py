"""Writing enriched readings into `sensor_readings`: COPY into a staging table, then one
INSERT ... ON CONFLICT DO NOTHING, so a batch written twice leaves the table as it was."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from libs.common.db import CONNECTION_ERRORS
from libs.common.errors import DatabaseUnavailable, StorageRejected

# Columns written by store, in COPY order; stored_at is the database's now().
COLUMNS: tuple[str, ...] = (
    "time",
    "device_id",
    "temperature",
    "humidity",
    "pressure",
    "latitude",
    "longitude",
    "heat_index",
    "dew_point",
    "device_known",
    "model",
    "site",
    "owner",
    "country_code",
    "country",
    "region",
    "place",
    "geohash",
    "message_id",
    "schema_version",
    "extra",
    "source",
    "received_at",
    "trace_id",
)
_TIMES = frozenset({"time", "received_at"})
_STAGING = "sensor_readings_staging"
# After an outage the pool may hand out no connection for a while; waiting longer than this
# counts as the database being away (the batch is retried), not as a hang.
ACQUIRE_TIMEOUT_S = 30.0

Row = tuple[Any, ...]


def to_row(reading: dict[str, Any]) -> Row:
    """A row in COPY order from an EnrichedReading dict; raises KeyError/ValueError if malformed."""
    row: list[Any] = []
    for column in COLUMNS:
        value = reading.get(column)
        if column in _TIMES:
            value = datetime.fromisoformat(value) if value is not None else None
        elif column == "extra":
            value = orjson.dumps(value).decode() if value else None
        elif column == "device_known":
            value = bool(value)
        row.append(value)
    if row[0] is None or not row[1]:
        raise ValueError("time and device_id are required")
    return tuple(row)


async def prepare_connection(conn: asyncpg.Connection) -> None:
    # One staging table per connection, emptied at each commit; it never reaches the WAL twice.
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} "
        "(LIKE sensor_readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )


async def write_rows(pool: asyncpg.Pool, rows: Sequence[Row]) -> int:
    """Write rows idempotently; returns how many were new. Raises typed errors only."""
    columns = ", ".join(COLUMNS)
    try:
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
            await conn.copy_records_to_table(_STAGING, records=rows, columns=COLUMNS)
            status = await conn.execute(
                f"INSERT INTO sensor_readings ({columns}) "
                f"SELECT {columns} FROM {_STAGING} "
                "ON CONFLICT (device_id, time) DO NOTHING"
            )
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailable(f"writing {len(rows)} rows: {error!r}") from error
    except asyncpg.PostgresError as error:
        if _is_transient(error):
            raise DatabaseUnavailable(f"writing {len(rows)} rows: {error!r}") from error
        raise StorageRejected(f"{type(error).__name__}: {error}") from error
    return int(status.rsplit(" ", 1)[-1])


def _is_transient(error: asyncpg.PostgresError) -> bool:
    # Class 08 connection exceptions, 40 rollbacks (serialization, deadlock), 53 resources,
    # 57 operator intervention (shutdown, cancel), 55P03 lock not available.
    state = getattr(error, "sqlstate", "") or ""
    return state[:2] in {"08", "40", "53", "57"} or state == "55P03"
