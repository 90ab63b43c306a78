"""Devices that stopped sending, counted from the table for the PipelineDeviceSilent alert.

Only registered devices count: one reading from a device nobody registered is no promise of
more. The newest reading of each is one index lookup on (device_id, time), not a scan.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from libs.common import metrics
from libs.common.db import CONNECTION_ERRORS
from libs.common.lifecycle import sleep_or_stop

log = structlog.get_logger(__name__)

SILENT_DEVICES_SQL = """
SELECT count(*)
FROM devices AS d
CROSS JOIN LATERAL (
    SELECT r.time FROM sensor_readings AS r
    WHERE r.device_id = d.device_id
    ORDER BY r.time DESC
    LIMIT 1
) AS newest
WHERE newest.time < now() - make_interval(secs => $1)
"""


async def count_silent_devices(pool: asyncpg.Pool, after_s: float) -> int:
    """Registered devices whose newest reading is older than `after_s` seconds."""
    count = await pool.fetchval(SILENT_DEVICES_SQL, float(after_s))
    return int(count)


async def watch_silent_devices(
    pool: asyncpg.Pool, stage: str, after_s: float, every_s: float, stop: asyncio.Event
) -> None:
    """Keep pipeline_devices_silent up to date until `stop`."""
    metrics.SILENCE_THRESHOLD.labels(stage).set(after_s)
    while not stop.is_set():
        try:
            metrics.DEVICES_SILENT.labels(stage).set(await count_silent_devices(pool, after_s))
        except (asyncpg.PostgresError, *CONNECTION_ERRORS) as error:
            # The gauge keeps its last value; the database alerts say why it is stale.
            log.warning("counting silent devices failed", error=repr(error))
        await sleep_or_stop(stop, every_s)
