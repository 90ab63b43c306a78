"""Hostile input into the pure steps: whatever arrives, a typed reason or a storable reading.

Property-based (hypothesis): no input makes a step crash, and what passes validation is
something the database accepts (no NUL characters, finite numbers, a real instant).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.errors import RecordError
from libs.common.models import ValidatedReading
from services.ingest.intake import check_message, split_body
from services.validate.rules import load_rules
from services.validate.validator import Context, Lineage, validate

CTX = Context(
    rules=load_rules(),
    now=datetime(2026, 11, 27, 6, 0, tzinfo=UTC),
    max_future_skew_s=300.0,
    min_time=datetime(2000, 1, 1, tzinfo=UTC),
)
LINEAGE = Lineage(source="http", received_at="2026-11-27T06:00:00+00:00", trace_id="t")

hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "'; DROP TABLE sensor_readings; --",
            "$(rm -rf /)",
            "`reboot`",
            "\x00",
            "a\x00b",
            "NaN",
            "-Infinity",
            "1e999",
            "21.5",
            " 21.5 ",
            "0x1A",
            "",
            " ",
            "\u202e",
            "\ud7ff",
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+14:00",
            "2026-11-27T05:00:00",
            "2026-02-30T00:00:00Z",
            "1795755600",
            "-1",
            "1e20",
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(hostile_text, inner, max_size=3)
    ),
    max_leaves=8,
)
readings = st.fixed_dictionaries(
    {},
    optional={
        "device_id": st.one_of(hostile_text, scalars),
        "timestamp": st.one_of(scalars, st.integers(min_value=-(10**20), max_value=10**20)),
        "temperature": values,
        "humidity": values,
        "pressure": values,
        "location": st.one_of(
            values, st.fixed_dictionaries({}, optional={"latitude": values, "longitude": values})
        ),
        "message_id": values,
        "schema_version": values,
    },
).flatmap(lambda d: st.dictionaries(hostile_text, values, max_size=3).map(lambda e: e | d))


def assert_storable(out: dict[str, Any]) -> None:
    ValidatedReading.model_validate(out)
    for key, value in out.items():
        if isinstance(value, str):
            assert "\x00" not in value, key
        if isinstance(value, float):
            assert math.isfinite(value), key
    for key, value in out["extra"].items():
        assert "\x00" not in key and math.isfinite(value)
    datetime.fromisoformat(out["time"]).astimezone(UTC)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(readings)
def test_any_json_object_is_either_a_storable_reading_or_a_typed_rejection(
    data: dict[str, Any],
) -> None:
    try:
        payload = orjson.dumps(data)
    except (TypeError, orjson.JSONEncodeError):
        return  # not representable as JSON (e.g. a lone surrogate): cannot arrive as JSON
    try:
        out = validate(payload, CTX, LINEAGE)
    except RecordError as error:
        assert error.reasons and all(isinstance(r, str) and r for r in error.reasons)
        return
    assert_storable(out)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_either_accepted_or_rejected_with_a_reason(payload: bytes) -> None:
    for step in (lambda p: validate(p, CTX, LINEAGE), check_message):
        try:
            step(payload)
        except RecordError as error:
            assert error.reasons[0]
    accepted, rejected = split_body(payload)
    assert all(r.error.reasons for r in rejected)
    assert len(accepted) + len(rejected) >= (1 if payload.strip() else 0)


def test_deep_nesting_is_rejected_not_a_crash() -> None:
    deep = b'{"device_id": "d", "timestamp": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for step in (lambda p: validate(p, CTX, LINEAGE), check_message):
        try:
            step(deep)
        except RecordError as error:
            assert "not valid JSON" in error.reasons[0]
    accepted, rejected = split_body(b"[" * 5000 + b"]" * 5000)
    assert accepted == [] and len(rejected) == 1


def test_sql_and_shell_looking_device_ids_are_just_names() -> None:
    for device_id in ("'; DROP TABLE sensor_readings; --", "$(rm -rf /)", "`reboot`"):
        payload = orjson.dumps({"device_id": device_id, "timestamp": 1795755600})
        out = validate(payload, CTX, LINEAGE)
        assert out["device_id"] == device_id
