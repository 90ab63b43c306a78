"""The validate stage's pure step: one raw reading in, a validated reading or every reason out.

No I/O and no state here; duplicate detection lives in `dedup.py`, the Kafka loop in the runner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from libs.common.errors import (
    MissingDeviceId,
    NotAnObject,
    RuleViolation,
    SchemaViolation,
)
from libs.common.models import MEASUREMENTS
from libs.common.payload import parse_json
from services.validate.rules import Rules

MAX_DEVICE_ID_LENGTH = 128
# Epoch numbers above this are milliseconds: as seconds it would be the year 5138.
_EPOCH_MS_THRESHOLD = 100_000_000_000
_TIME_FORMS = "ISO 8601 text with an offset or epoch seconds/milliseconds"
_KNOWN = frozenset(
    {"device_id", "timestamp", "location", "message_id", "schema_version", *MEASUREMENTS}
)


@dataclass(frozen=True, slots=True)
class Context:
    """What the step needs besides the payload, the same for a whole batch: rules and the
    clock's bounds."""

    rules: Rules
    now: datetime
    max_future_skew_s: float
    min_time: datetime
    # The latest time accepted: now + max_future_skew_s.
    max_time: datetime = field(init=False)

    def __post_init__(self) -> None:
        latest = self.now + timedelta(seconds=self.max_future_skew_s)
        object.__setattr__(self, "max_time", latest)


class Lineage(NamedTuple):
    """Where one reading came from, carried into its output unchanged."""

    source: str
    received_at: str
    trace_id: str


def validate(payload: bytes, ctx: Context, lineage: Lineage) -> dict[str, Any]:
    """Return the validated reading (ValidatedReading's fields) or raise with every reason."""
    data = parse_json(payload)
    if not isinstance(data, dict):
        raise NotAnObject(f"a reading must be a JSON object, got {type(data).__name__}")
    return validate_object(data, ctx, lineage)


def validate_object(data: dict[str, Any], ctx: Context, lineage: Lineage) -> dict[str, Any]:
    """The validated reading of one JSON object, or a SchemaViolation / RuleViolation that
    lists every reason (type errors first, then rule violations, in field order)."""
    type_errors: list[str] = []
    rule_errors: list[str] = []
    device_id = _device_id(data.get("device_id"), type_errors)
    time = _timestamp(data.get("timestamp"), ctx, type_errors, rule_errors)

    # Key order is the output's field order.
    out: dict[str, Any] = {
        "device_id": device_id,
        "time": time.isoformat() if time else None,
        "source": lineage.source,
        "received_at": lineage.received_at,
        "trace_id": lineage.trace_id,
    }
    for name in MEASUREMENTS:
        out[name] = _number(name, data.get(name), type_errors)
    out["latitude"], out["longitude"] = _location(data.get("location"), type_errors, rule_errors)
    out["message_id"] = _optional_text("message_id", data.get("message_id"), type_errors)
    out["schema_version"] = _optional_text(
        "schema_version", data.get("schema_version"), type_errors
    )
    out["extra"] = extra = _extra_numbers(data, type_errors)
    _check_rules(ctx.rules, data, out, extra, rule_errors)

    if type_errors:
        raise SchemaViolation(type_errors + rule_errors)
    if rule_errors:
        raise RuleViolation(rule_errors)
    return out


def _device_id(value: Any, type_errors: list[str]) -> Any:
    # Without a device_id there is nothing to name the reading by: no further reasons.
    if value is None or value == "":
        raise MissingDeviceId("device_id is required")
    if not isinstance(value, str):
        type_errors.append(f"device_id must be a string, got {_kind(value)}")
    elif len(value) > MAX_DEVICE_ID_LENGTH or not value.isprintable():
        type_errors.append(
            f"device_id must be printable and at most {MAX_DEVICE_ID_LENGTH} characters"
        )
    return value


def _location(
    value: Any, type_errors: list[str], rule_errors: list[str]
) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        type_errors.append(f"location must be an object, got {_kind(value)}")
        return None, None
    if value.get("latitude") is None or value.get("longitude") is None:
        type_errors.append("location needs both latitude and longitude")
    latitude = _number("location.latitude", value.get("latitude"), type_errors)
    longitude = _number("location.longitude", value.get("longitude"), type_errors)
    if latitude is not None and not -90 <= latitude <= 90:
        rule_errors.append(f"location.latitude out of range: {latitude}")
    if longitude is not None and not -180 <= longitude <= 180:
        rule_errors.append(f"location.longitude out of range: {longitude}")
    return latitude, longitude


def _extra_numbers(data: dict[str, Any], type_errors: list[str]) -> dict[str, float]:
    extra: dict[str, float] = {}
    for name, value in data.items():
        # Further numeric sensor fields are kept; other unknown fields (text, objects) are
        # metadata this pipeline does not store, and are no reason to reject a reading.
        if name not in _KNOWN and _is_number_like(value) and "\x00" not in name:
            number = _number(name, value, type_errors)
            if number is not None:
                extra[name] = number
    return extra


def _check_rules(
    rules: Rules,
    data: dict[str, Any],
    out: dict[str, Any],
    extra: dict[str, float],
    rule_errors: list[str],
) -> None:
    """The rules file's required fields and ranges, over the known fields and the extra ones."""
    for name in rules.required:
        if name in ("device_id", "timestamp"):
            continue  # checked above with a more precise message
        if out.get(name, extra.get(name)) is None and data.get(name) in (None, ""):
            rule_errors.append(f"{name} is required")
    for name, bounds in rules.ranges.items():
        value = out.get(name) if name in out else extra.get(name)
        if isinstance(value, float) and not bounds.min <= value <= bounds.max:
            rule_errors.append(
                f"{name} out of range: {value} (allowed {bounds.min:g} .. {bounds.max:g})"
            )


def _timestamp(
    value: Any, ctx: Context, type_errors: list[str], rule_errors: list[str]
) -> datetime | None:
    if value is None or value == "":
        rule_errors.append("timestamp is required")
        return None
    if isinstance(value, bool):
        type_errors.append(
            "timestamp must be ISO 8601 text or epoch seconds/milliseconds, got bool"
        )
        return None
    # Epoch seconds as text; an ISO 8601 time always has its "T" (or a space) and is not all
    # digits, so the common case skips the digit test.
    if (
        isinstance(value, str)
        and "T" not in value
        and value.strip().lstrip("-").replace(".", "", 1).isdigit()
    ):
        value = float(value)
    if isinstance(value, int | float):
        parsed = _epoch_time(value, type_errors, rule_errors)
    elif isinstance(value, str):
        parsed = _iso_time(value, type_errors, rule_errors)
    else:
        type_errors.append(f"timestamp must be {_TIME_FORMS}, got {_kind(value)}")
        return None
    if parsed is None:
        return None
    if parsed < ctx.min_time:
        rule_errors.append(f"timestamp too far in the past: {parsed.isoformat()}")
    elif parsed > ctx.max_time:
        rule_errors.append(f"timestamp in the future: {parsed.isoformat()}")
    return parsed


def _epoch_time(value: float, type_errors: list[str], rule_errors: list[str]) -> datetime | None:
    if not math.isfinite(value):
        type_errors.append(f"timestamp is not a finite number: {value}")
        return None
    seconds = value / 1000 if abs(value) >= _EPOCH_MS_THRESHOLD else value
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        rule_errors.append(f"timestamp out of range: {value}")
        return None


def _iso_time(value: str, type_errors: list[str], rule_errors: list[str]) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        type_errors.append(f"timestamp is not ISO 8601: {value[:64]!r}")
        return None
    if parsed.tzinfo is None:
        type_errors.append(f"timestamp has no UTC offset: {value[:64]!r}")
        return None
    if parsed.tzinfo is not UTC:  # "Z" already parses as UTC
        try:
            parsed = parsed.astimezone(UTC)
        except OverflowError:
            rule_errors.append(f"timestamp out of range: {value[:64]!r}")
            return None
    return parsed


def _number(name: str, value: Any, errors: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        errors.append(f"{name} must be a number, got bool")
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            errors.append(f"{name} must be a number, got {value[:32]!r}")
            return None
    else:
        errors.append(f"{name} must be a number, got {_kind(value)}")
        return None
    if not math.isfinite(number):
        errors.append(f"{name} must be a finite number, got {value!r}")
        return None
    return number


def _optional_text(name: str, value: Any, errors: list[str]) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        # PostgreSQL text cannot hold NUL; say so here rather than fail at the store.
        if "\x00" in value:
            errors.append(f"{name} must not contain NUL characters")
            return None
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    errors.append(f"{name} must be text, got {_kind(value)}")
    return None


def _is_number_like(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_KIND_NAMES: dict[type, str] = {dict: "object", list: "array", str: "string"}


def _kind(value: Any) -> str:
    return _KIND_NAMES.get(type(value), type(value).__name__)
