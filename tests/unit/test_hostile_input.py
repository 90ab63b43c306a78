"""Hostile input into the pure steps: whatever arrives, a typed reason or a storable reading.

Property-based (hypothesis): no input makes a step crash, and what passes validation is
something the database accepts (no NUL characters, finite numbers, a real instant).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.errors import NotJson, RecordError
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


# Random bytes, and bytes made of JSON fragments and line breaks so that arrays, NDJSON and
# half-valid documents come up too, not only garbage.
fragments = st.sampled_from(
    [
        b'{"device_id": "d-1", "timestamp": 1795755600}',
        b'{"device_id": ""}',
        b"[1]",
        b'"x"',
        b"null",
        b"NaN",
        b"\n",
        b"\r\n",
        b" ",
        b",",
        b"[",
        b"]",
        b"{",
        b"}",
        b"\xff",
        b"\x00",
    ]
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(fragments, st.binary(max_size=8)), max_size=12).map(b"".join),
)


def outcome(step: Any, payload: bytes) -> RecordError | None:
    """None when `step` accepts `payload`, the error when it rejects it."""
    try:
        step(payload)
    except RecordError as error:
        return error
    return None


def assert_named_reason(error: RecordError) -> None:
    assert type(error) is not RecordError and error.error_type == type(error).__name__
    assert error.reasons and all(isinstance(r, str) and r.strip() for r in error.reasons)


def is_json(payload: bytes) -> bool:
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_any_bytes_get_exactly_one_outcome_and_every_reject_a_named_reason(
    payload: bytes,
) -> None:
    by_validate = outcome(lambda p: validate(p, CTX, LINEAGE), payload)
    by_ingest = outcome(check_message, payload)
    for error in (by_validate, by_ingest):
        if error is not None:
            assert_named_reason(error)
    if not is_json(payload):
        assert isinstance(by_validate, NotJson) and isinstance(by_ingest, NotJson)
    # What validate would store, ingest lets through.
    assert by_ingest is None or by_validate is not None

    accepted, rejected = split_body(payload)
    for reject in rejected:
        assert_named_reason(reject.error)
    if is_json(payload):
        data = orjson.loads(payload)
        expected = len(data) if isinstance(data, list) else 1
        assert len(accepted) + len(rejected) == expected
        assert sorted(r.index for r in rejected) == sorted({r.index for r in rejected})
        assert all(0 <= r.index < expected for r in rejected)
    elif b"\n" not in payload.strip():
        # One document that is not JSON: one reject, the bytes kept as they came.
        [reject] = rejected
        assert accepted == [] and reject.payload == payload and isinstance(reject.error, NotJson)
    else:
        # NDJSON: each non-blank line is a record of its own, kept as it came when rejected.
        lines = [line for line in payload.split(b"\n") if line.strip()]
        assert len(accepted) + len(rejected) == len(lines)
        assert [lines[r.index] for r in rejected] == [r.payload for r in rejected]
        assert [r.index for r in rejected] == [
            i for i, line in enumerate(lines) if outcome(check_message, line) is not None
        ]


def nested(depth: int) -> bytes:
    """A reading whose extra field `x` is `depth` arrays deep (the reading itself is one more)."""
    return (
        b'{"device_id": "d", "timestamp": 1795755600, "temperature": 20, "x": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )


# orjson parses at most 1024 levels of arrays and objects.
TOO_DEEP = nested(1024)


def test_nesting_deeper_than_the_parser_takes_is_rejected_as_not_json_with_the_depth() -> None:
    reason = "not valid JSON: depth limit exceeded at position "
    for step in (lambda p: validate(p, CTX, LINEAGE), check_message):
        with pytest.raises(NotJson) as raised:
            step(TOO_DEEP)
        [why] = raised.value.reasons
        assert why.startswith(reason), why
    for body in (TOO_DEEP, b"[" + TOO_DEEP + b"]", TOO_DEEP + b"\n" + TOO_DEEP):
        accepted, rejected = split_body(body)
        assert accepted == [] and rejected
        assert all(isinstance(r.error, NotJson) for r in rejected)
        assert all(r.error.reasons[0].startswith(reason) for r in rejected)


def test_nesting_the_parser_takes_is_a_reading_whose_non_numeric_field_is_not_kept() -> None:
    deep = nested(1023)
    out = validate(deep, CTX, LINEAGE)
    assert (out["device_id"], out["temperature"], out["extra"]) == ("d", 20.0, {})
    assert check_message(deep).value == deep
    accepted, rejected = split_body(deep + b"\n" + deep)
    assert (len(accepted), rejected) == (2, [])


def test_an_http_array_holding_a_deeply_nested_reading_is_split_not_crashed() -> None:
    accepted, rejected = split_body(b"[" + nested(300) + b"]")
    assert accepted == []
    assert [type(r.error).__name__ for r in rejected] == ["NotJson"]
    assert "nested too deeply" in str(rejected[0].error)


def test_sql_and_shell_looking_device_ids_are_just_names() -> None:
    for device_id in ("'; DROP TABLE sensor_readings; --", "$(rm -rf /)", "`reboot`"):
        payload = orjson.dumps({"device_id": device_id, "timestamp": 1795755600})
        out = validate(payload, CTX, LINEAGE)
        assert out["device_id"] == device_id
