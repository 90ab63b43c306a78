"""The validate stage wired up: raw readings in, validated ones out, bad ones to the DLQ."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from aiokafka import ConsumerRecord

from libs.common.errors import RecordError
from libs.common.health import Readiness
from libs.common.kafka import Outgoing, encode_json
from libs.common.models import (
    HEADER_RECEIVED_AT,
    HEADER_SOURCE,
    HEADER_TRACE_ID,
    Source,
    Stage,
    dead_letter,
)
from libs.common.runner import StepResult, pure_step
from libs.common.service import run_kafka_stage
from services.validate.dedup import Deduplicator, reading_key
from services.validate.rules import Rules, load_rules
from services.validate.settings import ValidateSettings
from services.validate.validator import Context, Lineage, validate

# Readings stamped before this are a device whose clock was never set.
MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)


def make_step(
    rules: Rules,
    dedup: Deduplicator,
    *,
    max_future_skew_s: float,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Callable[[Sequence[ConsumerRecord]], StepResult]:
    def step(records: Sequence[ConsumerRecord]) -> StepResult:
        now = clock()
        ctx = Context(rules=rules, now=now, max_future_skew_s=max_future_skew_s, min_time=MIN_TIME)
        default_source, default_received_at = Source.BATCH.value, now.isoformat()
        result = StepResult()
        batch_keys: dict[str, None] = {}
        for record in records:
            headers = dict(record.headers or ())
            lineage = Lineage(
                _text(headers.get(HEADER_SOURCE)) or default_source,
                _text(headers.get(HEADER_RECEIVED_AT)) or default_received_at,
                _text(headers.get(HEADER_TRACE_ID)) or f"kafka:{record.partition}:{record.offset}",
            )
            payload: bytes = record.value or b""
            try:
                reading = validate(payload, ctx, lineage)
            except RecordError as error:
                # The lineage's trace id: a record without the header still gets one.
                letter = dead_letter(
                    error, stage=Stage.VALIDATE, record=record, trace_id=lineage.trace_id
                )
                result.dead_letters.append(letter)
                continue
            key = reading_key(reading["device_id"], reading["time"])
            if key in dedup or key in batch_keys:
                result.duplicates += 1
                continue
            batch_keys[key] = None
            result.outputs.append(
                Outgoing(encode_json(reading), reading["device_id"].encode(), record.headers)
            )
        result.on_success = lambda: dedup.remember(batch_keys)
        return result

    return step


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value else None


async def run(settings: ValidateSettings, stop: asyncio.Event) -> None:
    rules = load_rules(settings.rules_file)
    step = make_step(
        rules, Deduplicator(settings.dedup_capacity), max_future_skew_s=settings.max_future_skew_s
    )

    await run_kafka_stage(
        settings,
        stop,
        input_topic=settings.topic_raw,
        output_topic=settings.topic_validated,
        step=pure_step(step),
        readiness=Readiness(settings.service_name, "kafka", "pipeline"),
    )
