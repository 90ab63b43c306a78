"""The device registry (table `devices`), held in memory and refreshed on an interval."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import structlog

from libs.common.db import CONNECTION_ERRORS
from libs.common.errors import DatabaseUnavailable
from libs.common.health import Readiness

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Device:
    model: str | None
    site: str | None
    owner: str | None


class DeviceRegistry:
    """A snapshot of `devices`; enrich looks devices up here, never in the database per record."""

    def __init__(self, devices: dict[str, Device] | None = None) -> None:
        self._devices = devices or {}

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def __len__(self) -> int:
        return len(self._devices)

    async def load(self, pool: asyncpg.Pool) -> None:
        try:
            rows = await pool.fetch("SELECT device_id, model, site, owner FROM devices")
        except CONNECTION_ERRORS as error:
            raise DatabaseUnavailable(f"device registry: {error!r}") from error
        # Swapped whole, so a lookup never sees a half-loaded registry.
        self._devices = {r["device_id"]: Device(r["model"], r["site"], r["owner"]) for r in rows}

    async def refresh_forever(
        self, pool: asyncpg.Pool, interval_s: float, readiness: Readiness
    ) -> None:
        """Reload every `interval_s`; while the database is away, keep the last snapshot."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.load(pool)
            except DatabaseUnavailable as error:
                readiness.set("database", False)
                log.warning("registry refresh failed, keeping the last snapshot", error=str(error))
            else:
                readiness.set("database", True)
                log.debug("registry refreshed", devices=len(self._devices))
