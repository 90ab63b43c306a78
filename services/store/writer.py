"""Writing enriched readings into `sensor_readings`: one binary COPY straight into the table;
when some rows are there already, COPY into a staging table and INSERT ... ON CONFLICT DO
NOTHING instead, so a batch written twice leaves the table as it was."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
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
_TABLE = "sensor_readings"
_STAGING = "sensor_readings_staging"
# After an outage the pool may hand out no connection for a while; waiting longer than this
# counts as the database being away (the batch is retried), not as a hang.
ACQUIRE_TIMEOUT_S = 30.0

Row = tuple[Any, ...]

_fromisoformat = datetime.fromisoformat
_dumps = orjson.dumps


def to_row(reading: dict[str, Any]) -> Row:
    """A row in COPY order from an EnrichedReading dict; raises KeyError/ValueError if malformed."""
    # One tuple built at once: this runs for every reading (a loop over COLUMNS cost a third
    # more). tests/unit/test_store_rows.py holds it to COLUMNS.
    get = reading.get
    time, device_id = get("time"), get("device_id")
    if time is None or not device_id:
        raise ValueError("time and device_id are required")
    extra, received_at = get("extra"), get("received_at")
    return (
        _fromisoformat(time),
        device_id,
        get("temperature"),
        get("humidity"),
        get("pressure"),
        get("latitude"),
        get("longitude"),
        get("heat_index"),
        get("dew_point"),
        bool(get("device_known")),
        get("model"),
        get("site"),
        get("owner"),
        get("country_code"),
        get("country"),
        get("region"),
        get("place"),
        get("geohash"),
        get("message_id"),
        get("schema_version"),
        _dumps(extra).decode() if extra else None,
        get("source"),
        _fromisoformat(received_at) if received_at is not None else None,
        get("trace_id"),
    )


async def prepare_connection(conn: asyncpg.Connection) -> None:
    # One staging table per connection, emptied at each commit; it never reaches the WAL twice.
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} "
        "(LIKE sensor_readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )


async def write_rows(pool: asyncpg.Pool, rows: Iterable[Row]) -> int:
    """Write rows idempotently; returns how many were new. Raises typed errors only.

    `rows` may be lazy (a generator decoding them): asyncpg sends the COPY in pieces of
    512 KiB, so the server inserts the first rows while the next are being made.
    """
    source = iter(rows)
    taken: list[Row] = []
    try:
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            try:
                # The common case, no row there yet: one binary COPY straight into the table,
                # the fastest write PostgreSQL has (a COPY is one statement: all rows or none).
                await conn.copy_records_to_table(
                    _TABLE, records=_kept(source, taken), columns=COLUMNS
                )
                return len(taken)
            except asyncpg.UniqueViolationError:
                # Some rows are there already (a batch written again after a restart, or two
                # equal keys in one batch): merge, skipping what the table holds.
                taken.extend(source)
                return await _merge(conn, taken)
    except (TypeError, ValueError) as error:
        # The binary codec refused a value of the wrong type before it left (asyncpg's own
        # DataError is one of these, so this comes before CONNECTION_ERRORS).
        raise StorageRejected(f"{type(error).__name__}: {error}") from error
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailable(f"writing {len(taken)}+ rows: {error!r}") from error
    except asyncpg.PostgresError as error:
        if _is_transient(error):
            raise DatabaseUnavailable(f"writing {len(taken)}+ rows: {error!r}") from error
        raise StorageRejected(f"{type(error).__name__}: {error}") from error


def _kept(rows: Iterator[Row], taken: list[Row]) -> Iterator[Row]:
    # The rows the COPY took, for a merge if it fails.
    for row in rows:
        taken.append(row)
        yield row


async def _merge(conn: asyncpg.Connection, rows: Sequence[Row]) -> int:
    columns = ", ".join(COLUMNS)
    async with conn.transaction():
        await conn.copy_records_to_table(_STAGING, records=rows, columns=COLUMNS)
        status = await conn.execute(
            f"INSERT INTO {_TABLE} ({columns}) "
            f"SELECT {columns} FROM {_STAGING} "
            "ON CONFLICT (device_id, time) DO NOTHING"
        )
    return int(status.rsplit(" ", 1)[-1])


def _is_transient(error: asyncpg.PostgresError) -> bool:
    # Class 08 connection exceptions, 40 rollbacks (serialization, deadlock), 53 resources,
    # 57 operator intervention (shutdown, cancel), 55P03 lock not available.
    state = getattr(error, "sqlstate", "") or ""
    return state[:2] in {"08", "40", "53", "57"} or state == "55P03"
