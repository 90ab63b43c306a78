"""store's count of silent devices, against the real TimescaleDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from libs.common.db import create_pool
from services.store.silence import count_silent_devices
from tests.conftest import Names


async def test_only_registered_devices_whose_newest_reading_is_too_old_count_as_silent(
    names: Names, db: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    await db.executemany(
        "INSERT INTO devices (device_id) VALUES ($1)", [("quiet",), ("chatty",), ("never",)]
    )
    await db.executemany(
        "INSERT INTO sensor_readings (time, device_id, source, received_at) "
        "VALUES ($1, $2, 'http', $1)",
        [
            (now - timedelta(hours=3), "quiet"),
            (now - timedelta(hours=2), "quiet"),
            (now - timedelta(hours=3), "chatty"),
            (now - timedelta(minutes=1), "chatty"),
            (now - timedelta(hours=5), "unregistered"),
        ],
    )
    pool = await create_pool(names.settings(database_role="store"), size=1)
    try:
        assert await count_silent_devices(pool, after_s=900) == 1
        assert await count_silent_devices(pool, after_s=30) == 2
        assert await count_silent_devices(pool, after_s=4 * 3600) == 0
    finally:
        await pool.close()
