"""The enrich stage wired up: validated readings in, enriched ones out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import orjson
from aiokafka import ConsumerRecord

from libs.common.db import close_pool, create_pool
from libs.common.errors import MalformedValidatedRecord
from libs.common.health import Readiness
from libs.common.kafka import Outgoing, encode_json
from libs.common.models import Stage, dead_letter
from libs.common.retry import call_with_retry
from libs.common.runner import StepResult, pure_step
from libs.common.service import STARTUP_WAIT_S, background, run_kafka_stage
from services.enrich import geo
from services.enrich.enricher import enrich
from services.enrich.registry import DeviceRegistry
from services.enrich.settings import EnrichSettings


def make_step(
    registry: DeviceRegistry, geohash_precision: int
) -> Callable[[Sequence[ConsumerRecord]], StepResult]:
    def step(records: Sequence[ConsumerRecord]) -> StepResult:
        result = StepResult()
        for record in records:
            payload: bytes = record.value or b""
            try:
                reading = orjson.loads(payload)
                enriched = enrich(reading, registry, geohash_precision)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                # validate wrote this record, so this is a bug or a foreign producer: say so.
                malformed = MalformedValidatedRecord(f"not a validated reading: {error!r}")
                result.dead_letters.append(
                    dead_letter(malformed, stage=Stage.ENRICH, record=record)
                )
                continue
            result.outputs.append(Outgoing(encode_json(enriched), record.key, record.headers))
        return result

    return step


async def run(settings: EnrichSettings, stop: asyncio.Event) -> None:
    readiness = Readiness(settings.service_name, "kafka", "database", "pipeline")
    # The place dataset takes a moment to load: do it before the first batch, not during it.
    await asyncio.to_thread(geo.preload)
    pool = await call_with_retry(
        lambda: create_pool(settings, size=2), STARTUP_WAIT_S, name="database_connect"
    )
    registry = DeviceRegistry()
    await call_with_retry(lambda: registry.load(pool), STARTUP_WAIT_S, name="registry_load")
    readiness.set("database", True)
    step = make_step(registry, settings.geohash_precision)

    try:
        async with background(
            registry.refresh_forever(pool, settings.registry_refresh_s, readiness)
        ):
            await run_kafka_stage(
                settings,
                stop,
                input_topic=settings.topic_validated,
                output_topic=settings.topic_enriched,
                step=pure_step(step),
                readiness=readiness,
            )
    finally:
        await close_pool(pool, settings.shutdown_timeout_s / 2)
