"""Message contracts between the stages: the one place where a field is named.

The hot paths build plain dicts with these field names (orjson serialises them without a model
instance per record); tests check that those dicts validate against these models.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from libs.common.errors import PipelineError, RecordError


class Source(StrEnum):
    MQTT = "mqtt"
    HTTP = "http"
    BATCH = "batch"
    REPLAY = "replay"


class Stage(StrEnum):
    INGEST = "ingest"
    VALIDATE = "validate"
    ENRICH = "enrich"
    STORE = "store"


# Kafka header names set by ingest and carried to the table.
HEADER_SOURCE = "source"
HEADER_RECEIVED_AT = "received_at"
HEADER_TRACE_ID = "trace_id"

MEASUREMENTS = ("temperature", "humidity", "pressure")


class Location(BaseModel):
    """Where the device is, in WGS84 degrees."""

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


# Also the published JSON Schema of a reading: ingest's OpenAPI document and
# docs/reading.schema.json (python -m libs.common.cli --reading-schema). Ingest checks only that
# a reading is an object with a device_id; validate checks the rest and dead-letters what breaks.
class RawReading(BaseModel):
    """A reading as a device sends it (topic sensor-data carries these bytes as received)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "device_id": "dev-001",
                    "timestamp": "2026-11-27T05:00:00Z",
                    "temperature": 21.5,
                    "humidity": 40.2,
                    "pressure": 1013.2,
                    "location": {"latitude": 52.52, "longitude": 13.40},
                }
            ]
        },
    )

    # Not blank: ingest refuses a device_id of only whitespace (intake.check_object).
    device_id: str = Field(min_length=1, pattern=r"\S", description="The device's own id.")
    timestamp: str | float | int = Field(
        description="ISO 8601 text with an offset, or epoch seconds or milliseconds."
    )
    temperature: float | None = Field(default=None, description="Degrees Celsius.")
    humidity: float | None = Field(default=None, description="% relative humidity.")
    pressure: float | None = Field(default=None, description="hPa.")
    location: Location | None = None
    message_id: str | None = Field(
        default=None, description="Assigned by the device, unique per device."
    )
    schema_version: str | int | None = None


def reading_json_schema() -> dict[str, Any]:
    """RawReading's JSON Schema as published in docs/reading.schema.json."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema"
    } | RawReading.model_json_schema()


class Lineage(BaseModel):
    source: Source
    received_at: datetime
    trace_id: str


class ValidatedReading(Lineage):
    """Topic sensor-data-validated: typed, in range, UTC, one per (device_id, time)."""

    device_id: str
    time: datetime
    temperature: float | None = None
    humidity: float | None = None
    pressure: float | None = None
    latitude: float | None = None
    longitude: float | None = None
    message_id: str | None = None
    schema_version: str | None = None
    # Further numeric sensor fields the device sent, kept rather than dropped.
    extra: dict[str, float] = Field(default_factory=dict)


class EnrichedReading(ValidatedReading):
    """Topic sensor-data-enriched: the validated reading plus registry, place and physics."""

    heat_index: float | None = None
    dew_point: float | None = None
    device_known: bool = False
    model: str | None = None
    site: str | None = None
    owner: str | None = None
    country_code: str | None = None
    country: str | None = None
    region: str | None = None
    place: str | None = None
    geohash: str | None = None


class DeadLetter(BaseModel):
    """Topic sensor-data-errors: a record a stage could not process, and why."""

    original_record: str
    # "utf-8" when original_record is the payload's text, "base64" when it was not valid UTF-8.
    original_encoding: str = "utf-8"
    error_message: str
    error_type: str
    reasons: list[str] = Field(default_factory=list)
    error_timestamp: datetime
    processing_stage: Stage
    attempts: int = 1
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    trace_id: str | None = None
    device_id: str | None = None


def encode_original(payload: bytes) -> tuple[str, str]:
    """The payload as text when it is UTF-8, else base64, so the DLQ keeps it byte for byte."""
    try:
        return payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"


class SourceRecord(Protocol):
    """What a dead letter takes from the Kafka record it replaces (aiokafka's ConsumerRecord)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


def dead_letter(
    error: PipelineError,
    *,
    stage: Stage,
    record: SourceRecord | None = None,
    payload: bytes | None = None,
    reasons: list[str] | None = None,
    attempts: int = 1,
    trace_id: str | None = None,
    device_id: str | None = None,
) -> dict[str, Any]:
    """A DLQ record as a dict with the `DeadLetter` field names (the hot path's form): the one
    builder every stage uses, so every letter carries the same fields wherever they are known.

    From a Kafka `record` come the payload, the source topic, partition and offset, the trace
    id (its `trace_id` header) and the device id (its key); ingest, which has no record yet,
    passes `payload` and its `trace_id`. An explicit `trace_id` or `device_id` wins. `reasons`
    default to the error's own (a `RecordError` lists every one).
    """
    if reasons is None:
        reasons = error.reasons if isinstance(error, RecordError) else [str(error)]
    topic = partition = offset = None
    if record is not None:
        payload = record.value
        topic, partition, offset = record.topic, record.partition, record.offset
        if trace_id is None:
            trace_id = _header_text(record.headers, HEADER_TRACE_ID)
        if device_id is None and record.key:
            device_id = record.key.decode("utf-8", "replace")
    original, encoding = encode_original(payload or b"")
    return {
        "original_record": original,
        "original_encoding": encoding,
        "error_message": "; ".join(reasons),
        "error_type": error.error_type,
        "reasons": reasons,
        "error_timestamp": datetime.now(UTC).isoformat(),
        "processing_stage": stage.value,
        "attempts": attempts,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "trace_id": trace_id,
        "device_id": device_id,
    }


def _header_text(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value:
            return value.decode("utf-8", "replace")
    return None
