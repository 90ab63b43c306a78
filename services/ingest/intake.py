"""The ingest stage's pure step: raw bytes in, records for Kafka or reasons for the DLQ out.

Only format checks here (UTF-8 JSON, an object, a device_id); the rules are validate's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from libs.common.errors import (
    DeviceMismatch,
    DeviceNotAllowed,
    MissingDeviceId,
    NotAnObject,
    NotJson,
    PayloadTooLarge,
    RecordError,
)
from libs.common.kafka import Outgoing
from libs.common.payload import parse_json

# The one limit on a record from either transport (IngestSettings.max_record_bytes).
MAX_RECORD_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that failed the format checks: its bytes as received, and why; the device
    that sent it when the transport says (an MQTT topic names it)."""

    index: int
    payload: bytes
    error: RecordError
    device_id: str | None = None

    @classmethod
    def of(
        cls,
        index: int,
        payload: bytes,
        error: RecordError,
        max_record_bytes: int,
        device_id: str | None = None,
    ) -> Rejected:
        """A reject whose kept bytes fit in one Kafka record: an over-size one keeps its first
        `max_record_bytes` (the whole of it could not be written to the DLQ at all)."""
        return cls(index, payload[:max_record_bytes], error, device_id)


def device_of_topic(topic: str) -> str | None:
    """The device of an MQTT topic `sensors/<device_id>/readings` (where devices publish, by
    the contract), also under a prefix of levels (`<prefix>/sensors/<device_id>/readings`: a
    deployment's mount point, a test run's topics); None for any other topic."""
    parts = topic.split("/")
    if len(parts) >= 3 and parts[-3] == "sensors" and parts[-1] == "readings" and parts[-2]:
        return parts[-2]
    return None


def check_size(payload: bytes, max_record_bytes: int) -> None:
    if len(payload) > max_record_bytes:
        raise PayloadTooLarge(
            f"record of {len(payload)} bytes is larger than the limit of {max_record_bytes}"
            f" (the DLQ keeps its first {max_record_bytes} bytes)"
        )


def check_object(data: Any, allowed_device: str | None = None) -> str:
    """The device_id of a reading object, or the reason it is not one; with `allowed_device`
    (the sender may speak for that device only), any other device's reading is refused."""
    if not isinstance(data, dict):
        raise NotAnObject(f"a reading must be a JSON object, got {_kind(data)}")
    device_id = data.get("device_id")
    if not isinstance(device_id, str) or not device_id.strip():
        raise MissingDeviceId("device_id is required and must be non-empty text")
    if allowed_device is not None and device_id != allowed_device:
        raise DeviceNotAllowed(
            f"reading of device {device_id!r}, but the token is bound to device {allowed_device!r}",
            device_id=device_id,
        )
    return device_id


def check_message(
    payload: bytes,
    max_record_bytes: int = MAX_RECORD_BYTES,
    allowed_device: str | None = None,
    topic_device: str | None = None,
) -> Outgoing:
    """One record (an MQTT message, an NDJSON line): a Kafka record keyed by device_id (bytes
    passed on unchanged). With `topic_device` (the device of the MQTT topic it came on), a
    reading of any other device is a DeviceMismatch."""
    check_size(payload, max_record_bytes)
    device_id = check_object(parse_json(payload), allowed_device)
    if topic_device is not None and device_id != topic_device:
        raise DeviceMismatch(
            f"reading of device {device_id!r} published to the topic of device {topic_device!r}",
            device_id=device_id,
        )
    return Outgoing(payload, device_id.encode())


def split_body(
    body: bytes, max_record_bytes: int = MAX_RECORD_BYTES, allowed_device: str | None = None
) -> tuple[list[Outgoing], list[Rejected]]:
    """An HTTP body (one object, an array of objects, or NDJSON) split into readings, each
    held to the same per-record limit as an MQTT message; with `allowed_device`, a reading of
    any other device is a DeviceNotAllowed reject."""
    accepted: list[Outgoing] = []
    rejected: list[Rejected] = []
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        if b"\n" not in body.strip():
            try:
                check_size(body, max_record_bytes)
                parse_json(body)
            except RecordError as error:
                rejected.append(Rejected.of(0, body, error, max_record_bytes))
            return accepted, rejected
        # Not one JSON document: NDJSON, a reading a line; each line stands on its own.
        lines = [line for line in body.split(b"\n") if line.strip()]
        for index, line in enumerate(lines):
            try:
                accepted.append(check_message(line, max_record_bytes, allowed_device))
            except RecordError as err:
                rejected.append(Rejected.of(index, line, err, max_record_bytes))
        return accepted, rejected
    items = data if isinstance(data, list) else [data]
    for index, item in enumerate(items):
        # A reading that cannot be written out again keeps the body as its original record.
        raw = body
        try:
            if items is data:
                raw = _reading_bytes(item)
            check_size(raw, max_record_bytes)
            device_id = check_object(item, allowed_device)
        except RecordError as err:
            rejected.append(Rejected.of(index, raw, err, max_record_bytes))
            continue
        accepted.append(Outgoing(raw, device_id.encode()))
    return accepted, rejected


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _reading_bytes(item: object) -> bytes:
    """One reading of an array as bytes of its own. orjson reads 1024 levels of nesting but writes
    only 254: a reading nested deeper is refused with that reason, not a crashed request."""
    try:
        return orjson.dumps(item)
    except orjson.JSONEncodeError as error:
        raise NotJson(f"reading nested too deeply to be kept: {error}") from error
