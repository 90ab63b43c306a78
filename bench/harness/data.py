"""The benchmark's data: one seeded fleet's readings as every stage sees them (raw with the
lineage headers ingest sets, validated, enriched, table rows), made by the stages' own pure
steps, which are timed on the way: the in-process ceiling of each step."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from bench.infra import Record
from libs.common.kafka import Outgoing
from libs.common.models import HEADER_RECEIVED_AT, HEADER_SOURCE, HEADER_TRACE_ID
from services.enrich import geo
from services.enrich.registry import Device, DeviceRegistry
from services.enrich.service import make_step as make_enrich_step
from services.store.writer import Row, to_row
from services.validate.dedup import Deduplicator
from services.validate.rules import load_rules
from services.validate.service import make_step as make_validate_step
from services.validate.settings import ValidateSettings
from tools.fleet import FleetConfig, ReadingGenerator

# The runner's batch (consumer_max_records): steps are timed a batch at a time, the outputs of
# one batch dropped before the next, as in a service. One call over the whole dataset would
# also time the allocator and the garbage collector working on a heap a service never has
# (orjson's output bytes, kept by the hundred thousand, cost several times their encoding).
STEP_BATCH = 2000
# Enough stations that a batch holds many devices, few enough that enrich's place cache is
# warm, as with a real fleet whose stations do not move.
DEVICES = 500
SEED = 20261127


@dataclass(frozen=True, slots=True)
class StepTiming:
    records: int
    seconds: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu_s / self.records * 1000


@dataclass(slots=True)
class Dataset:
    raw: list[Record]
    validated: list[Record]
    enriched: list[Record]
    rows: list[Row]
    devices: dict[str, Device]
    timings: dict[str, StepTiming]


def fleet_devices(count: int = DEVICES) -> dict[str, Device]:
    """A registry entry for every simulated station, so enrich's lookups hit as in production."""
    return {
        f"sim-{i + 1:04d}": Device(model="TH-200", site=f"site-{i % 40:02d}", owner="bench")
        for i in range(count)
    }


def raw_payloads(count: int, seed: int = SEED) -> list[tuple[str, bytes]]:
    """(device_id, payload) of `count` valid, unique readings stamped now."""
    generator = ReadingGenerator(
        FleetConfig(devices=DEVICES, bad_share=0.0, duplicate_share=0.0, late_share=0.0, seed=seed)
    )
    return [(e.device_id, e.payload) for e in generator.batch(count, datetime.now(UTC))]


def lineage_headers(received_at: bytes) -> list[tuple[str, bytes]]:
    """The headers ingest sets (services/ingest/handover.py): source, receive time, trace id."""
    return [
        (HEADER_SOURCE, b"mqtt"),
        (HEADER_RECEIVED_AT, received_at),
        (HEADER_TRACE_ID, uuid.uuid4().hex.encode()),
    ]


def consumer_records(topic: str, records: Sequence[Record]) -> list[ConsumerRecord[Any, Any]]:
    return [
        ConsumerRecord(topic, i % 6, i, 0, 0, key, value, None, 0, len(value), headers)
        for i, (key, value, headers) in enumerate(records)
    ]


def time_batches(step: Callable[[Sequence[Any]], Any], inputs: Sequence[Any]) -> StepTiming:
    """Run `step` over `inputs` a runner's batch at a time, dropping each batch's result."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(inputs), STEP_BATCH):
        step(inputs[i : i + STEP_BATCH])
    return StepTiming(len(inputs), time.perf_counter() - wall, time.process_time() - cpu)


def _records(outputs: Sequence[Outgoing]) -> list[Record]:
    return [(o.key, o.value, list(o.headers)) for o in outputs]


def make_dataset(count: int, seed: int = SEED) -> Dataset:
    """`count` readings through the real pure steps of validate, enrich and store's to_row."""
    received_at = datetime.now(UTC).isoformat().encode()
    raw: list[Record] = [
        (device.encode(), payload, lineage_headers(received_at))
        for device, payload in raw_payloads(count, seed)
    ]
    timings: dict[str, StepTiming] = {}

    settings = ValidateSettings()

    def validate_step() -> Callable[[Sequence[Any]], Any]:
        dedup = Deduplicator(settings.dedup_capacity)
        step = make_validate_step(load_rules(), dedup, max_future_skew_s=settings.max_future_skew_s)

        def remembering(records: Sequence[Any]) -> Any:
            result = step(records)
            if result.on_success is not None:
                result.on_success()  # as the runner does once the batch is committed
            return result

        return remembering

    inputs = consumer_records("raw", raw)
    result = validate_step()(inputs)
    if result.dead_letters or result.duplicates:
        raise RuntimeError(f"validate rejected generated readings: {result.dead_letters[:1]}")
    validated = _records(result.outputs)
    timings["validate"] = time_batches(validate_step(), inputs)

    devices = fleet_devices()
    geo.preload()
    enrich = make_enrich_step(DeviceRegistry(devices), geo.DEFAULT_PRECISION)
    inputs = consumer_records("validated", validated)
    enriched = _records(enrich(inputs).outputs)
    timings["enrich"] = time_batches(enrich, inputs)

    values = [v for _, v, _ in enriched]
    rows = [to_row(orjson.loads(v)) for v in values]
    timings["store"] = time_batches(lambda vs: [to_row(orjson.loads(v)) for v in vs], values)
    return Dataset(raw, validated, enriched, rows, devices, timings)
