"""What each admin call does, between its route (http_api) and the edges it uses: the registry
(PostgreSQL), the devices' MQTT accounts (Mosquitto's dynamic security), the DLQ (Kafka)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from libs.common.dlq import (
    Selection,
    StoredLetter,
    missing_ids,
    replay_batches,
    scan_dead_letters,
    send_replays,
)
from libs.common.mqtt_accounts import MqttAccountsSettings, register_device, revoke_device
from libs.common.service import RenewableProducer
from services.admin import registry
from services.admin.errors import BadRequest, NotFound
from services.admin.models import DeviceRegistration, ReplayRequest
from services.admin.settings import AdminSettings


@dataclass(frozen=True, slots=True)
class Backends:
    """What the calls use: the database pool, the MQTT accounts' settings, the producer of
    replays, and the service's settings."""

    pool: asyncpg.Pool
    mqtt: MqttAccountsSettings
    producer: RenewableProducer
    settings: AdminSettings


def _page(backends: Backends, limit: int) -> int:
    return min(limit, backends.settings.max_page)


async def list_devices(backends: Backends, limit: int, offset: int) -> dict[str, Any]:
    devices = await registry.list_devices(backends.pool, _page(backends, limit), offset)
    return {"devices": devices}


async def get_device(backends: Backends, device_id: str) -> dict[str, Any]:
    device = await registry.get_device(backends.pool, device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r} in the registry")
    return device


async def register(
    backends: Backends, registration: DeviceRegistration
) -> tuple[dict[str, str], bool]:
    """The device's MQTT credentials (its account first: a name the broker refuses leaves no
    row behind), then its registry row; True when the row is new."""
    credentials = await register_device(backends.mqtt, registration.device_id)
    fields = registration.model_dump(exclude={"device_id"}, exclude_unset=True)
    _, created = await registry.register(backends.pool, registration.device_id, fields)
    return credentials.as_json(), created


async def update(backends: Backends, device_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    device = await registry.update(backends.pool, device_id, changes)
    if device is None:
        raise NotFound(f"no device {device_id!r} in the registry")
    return device


async def revoke(backends: Backends, device_id: str) -> dict[str, Any]:
    """Delete the device's MQTT account (the broker cuts its session) and mark its row."""
    if await registry.get_device(backends.pool, device_id) is None:
        raise NotFound(f"no device {device_id!r} in the registry")
    revoked = await revoke_device(backends.mqtt, device_id)
    await registry.mark_revoked(backends.pool, device_id)
    return {"device_id": device_id, "revoked": revoked}


def letter_json(stored: StoredLetter) -> dict[str, Any]:
    return {
        "id": stored.id,
        "partition": stored.partition,
        "offset": stored.offset,
        **stored.letter.model_dump(),
    }


async def browse(
    backends: Backends,
    devices: Sequence[str] | None,
    error_types: Sequence[str] | None,
    stages: Sequence[str] | None,
    since: datetime | None,
    limit: int,
) -> dict[str, Any]:
    selection = Selection(
        stages=frozenset(stages or ()),
        error_types=frozenset(error_types or ()),
        devices=frozenset(devices or ()),
        since=since,
        limit=_page(backends, limit),
    )
    found = await scan_dead_letters(
        backends.settings, selection, backends.settings.dlq_scan_max_records
    )
    return {"letters": [letter_json(stored) for stored in found]}


def selection_of(request: ReplayRequest) -> Selection:
    """The letters a replay asks for; BadRequest for one that names none (it would be the
    whole DLQ) or ids that are not partition:offset."""
    if not (request.ids or request.devices or request.error_types or request.stages):
        if request.since is None:
            raise BadRequest(
                "name the letters to replay: ids, or at least one of devices, error_types, "
                "stages, since"
            )
    bad = [i for i in request.ids if not _is_letter_id(i)]
    if bad:
        raise BadRequest(f"not a letter id (partition:offset): {', '.join(bad[:10])}")
    return Selection(
        stages=frozenset(stage.value for stage in request.stages),
        error_types=frozenset(request.error_types),
        devices=frozenset(request.devices),
        since=request.since,
        limit=request.limit,
        ids=frozenset(request.ids),
    )


def _is_letter_id(value: str) -> bool:
    partition, _, offset = value.partition(":")
    return partition.isdigit() and offset.isdigit()


async def replay(backends: Backends, request: ReplayRequest) -> dict[str, Any]:
    """Replay the chosen letters; NotFound (nothing sent) when some asked-for ids are not in
    the DLQ."""
    selection = selection_of(request)
    settings = backends.settings
    found = await scan_dead_letters(settings, selection, settings.dlq_scan_max_records)
    missing = missing_ids(request.ids, found)
    if missing:
        raise NotFound("dead letters not in the DLQ; nothing replayed", missing=missing)
    by_topic = replay_batches([stored.letter for stored in found], settings)
    counts = {topic: len(records) for topic, records in by_topic.items()}
    if not request.dry_run and by_topic:
        counts = dict(await send_replays(backends.producer, by_topic))
    return {
        "replayed": sum(counts.values()),
        "ids": [stored.id for stored in found],
        "by_topic": counts,
        "dry_run": request.dry_run,
    }


async def read_audit(backends: Backends, where: registry.AuditFilter) -> dict[str, Any]:
    limited = registry.AuditFilter(
        where.actor,
        where.action,
        where.outcome,
        where.since,
        where.request_id,
        _page(backends, where.limit),
    )
    return {"events": await registry.read_audit(backends.pool, limited)}
