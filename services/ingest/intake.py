"""The ingest stage's pure step: raw bytes in, records for Kafka or reasons for the DLQ out.

Only format checks here (UTF-8 JSON, an object, a device_id); the rules are validate's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from libs.common.errors import MissingDeviceId, NotAnObject, NotJson, RecordError
from libs.common.kafka import Outgoing
from libs.common.payload import parse_json


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that failed the format checks: its bytes as received, and why."""

    index: int
    payload: bytes
    error: RecordError


def check_object(data: Any) -> str:
    """The device_id of a reading object, or the reason it is not one."""
    if not isinstance(data, dict):
        raise NotAnObject(f"a reading must be a JSON object, got {_kind(data)}")
    device_id = data.get("device_id")
    if not isinstance(device_id, str) or not device_id.strip():
        raise MissingDeviceId("device_id is required and must be non-empty text")
    return device_id


def check_message(payload: bytes) -> Outgoing:
    """One MQTT message: a Kafka record keyed by device_id (bytes passed on unchanged)."""
    device_id = check_object(parse_json(payload))
    return Outgoing(payload, device_id.encode())


def split_body(body: bytes) -> tuple[list[Outgoing], list[Rejected]]:
    """An HTTP body (one object, an array of objects, or NDJSON) split into readings."""
    accepted: list[Outgoing] = []
    rejected: list[Rejected] = []
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        if b"\n" not in body.strip():
            try:
                parse_json(body)
            except NotJson as not_json:
                rejected.append(Rejected(0, body, not_json))
            return accepted, rejected
        # Not one JSON document: NDJSON, a reading a line; each line stands on its own.
        lines = [line for line in body.split(b"\n") if line.strip()]
        for index, line in enumerate(lines):
            try:
                accepted.append(check_message(line))
            except RecordError as err:
                rejected.append(Rejected(index, line, err))
        return accepted, rejected
    items = data if isinstance(data, list) else [data]
    for index, item in enumerate(items):
        try:
            device_id = check_object(item)
        except RecordError as err:
            rejected.append(Rejected(index, orjson.dumps(item), err))
            continue
        raw = body if items is not data else orjson.dumps(item)
        accepted.append(Outgoing(raw, device_id.encode()))
    return accepted, rejected


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )
