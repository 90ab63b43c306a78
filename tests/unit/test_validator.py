"""The validate step: what passes, what is rejected, and the reasons it gives."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from libs.common.errors import (
    ConfigurationError,
    MissingDeviceId,
    NotAnObject,
    NotJson,
    RuleViolation,
    SchemaViolation,
)
from libs.common.models import ValidatedReading
from services.validate.rules import Range, load_rules
from services.validate.validator import Context, Lineage, validate

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
RULES = load_rules()
LINEAGE = Lineage(source="mqtt", received_at=NOW.isoformat(), trace_id="t-1")


def ctx(**overrides: object) -> Context:
    values: dict[str, object] = {
        "rules": RULES,
        "now": NOW,
        "max_future_skew_s": 300.0,
        "min_time": datetime(2000, 1, 1, tzinfo=UTC),
    }
    values.update(overrides)
    return Context(**values)  # type: ignore[arg-type]


def reading(**fields: object) -> bytes:
    base: dict[str, object] = {
        "device_id": "dev-001",
        "timestamp": "2026-11-27T05:00:00Z",
        "temperature": 21.5,
        "humidity": 40.2,
        "pressure": 1013.2,
        "location": {"latitude": 52.52, "longitude": 13.40},
    }
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def test_the_architecture_example_reading_passes_and_matches_the_contract() -> None:
    out = validate(reading(), ctx(), LINEAGE)
    model = ValidatedReading.model_validate(out)
    assert model.device_id == "dev-001"
    assert model.time == datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
    assert (model.temperature, model.humidity, model.pressure) == (21.5, 40.2, 1013.2)
    assert (model.latitude, model.longitude) == (52.52, 13.40)
    assert model.source.value == "mqtt" and model.trace_id == "t-1"


def test_a_temperature_out_of_range_is_rejected_with_the_value() -> None:
    with pytest.raises(RuleViolation) as caught:
        validate(reading(temperature=150.0), ctx(), LINEAGE)
    assert caught.value.reasons == ["temperature out of range: 150.0 (allowed -50 .. 100)"]


def test_every_reason_of_a_bad_reading_is_reported_at_once() -> None:
    with pytest.raises(SchemaViolation) as caught:
        validate(reading(temperature=150, humidity="wet", pressure=True), ctx(), LINEAGE)
    reasons = caught.value.reasons
    assert "humidity must be a number, got 'wet'" in reasons
    assert "pressure must be a number, got bool" in reasons
    assert "temperature out of range: 150.0 (allowed -50 .. 100)" in reasons
    assert len(reasons) == 3


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"device_id":"d","timestamp":1,"temperature":NaN}', "NaN is not a JSON number"),
        (
            b'{"device_id":"d","timestamp":1,"temperature":Infinity}',
            "Infinity is not a JSON number",
        ),
        (b'{"device_id":"d", "temperature": 2', "not valid JSON"),
    ],
)
def test_bare_nan_infinity_and_broken_json_are_named(raw: bytes, reason: str) -> None:
    with pytest.raises(NotJson) as caught:
        validate(raw, ctx(), LINEAGE)
    assert reason in caught.value.reasons[0]


@pytest.mark.parametrize("text", ["NaN", "nan", "Infinity", "-inf"])
def test_nan_and_infinity_as_strings_are_type_errors(text: str) -> None:
    with pytest.raises(SchemaViolation) as caught:
        validate(reading(temperature=text), ctx(), LINEAGE)
    assert caught.value.reasons == [f"temperature must be a finite number, got {text!r}"]


def test_numeric_strings_are_accepted_as_numbers() -> None:
    out = validate(reading(temperature="21.5", humidity="40"), ctx(), LINEAGE)
    assert out["temperature"] == 21.5 and out["humidity"] == 40.0


def test_a_missing_measurement_stays_null_and_is_not_invented() -> None:
    out = validate(reading(humidity=..., pressure=None, location=...), ctx(), LINEAGE)
    assert out["humidity"] is None and out["pressure"] is None
    assert out["latitude"] is None and out["longitude"] is None
    assert out["temperature"] == 21.5


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2026-11-27T06:00:00+01:00", datetime(2026, 11, 27, 5, 0, tzinfo=UTC)),
        ("2026-11-27T05:00:00.250Z", datetime(2026, 11, 27, 5, 0, 0, 250000, tzinfo=UTC)),
        (1795755600, datetime(2026, 11, 27, 5, 0, tzinfo=UTC)),
        (1795755600000, datetime(2026, 11, 27, 5, 0, tzinfo=UTC)),
        (1795755600.5, datetime(2026, 11, 27, 5, 0, 0, 500000, tzinfo=UTC)),
        ("1795755600", datetime(2026, 11, 27, 5, 0, tzinfo=UTC)),
        (" 1795755600000 ", datetime(2026, 11, 27, 5, 0, tzinfo=UTC)),
        ("2026-11-27 06:00:00+01:00", datetime(2026, 11, 27, 5, 0, tzinfo=UTC)),
        ("2026-11-27T05:00:00+00:00", datetime(2026, 11, 27, 5, 0, tzinfo=UTC)),
    ],
)
def test_timestamps_are_normalised_to_utc(timestamp: object, expected: datetime) -> None:
    out = validate(reading(timestamp=timestamp), ctx(), LINEAGE)
    assert datetime.fromisoformat(out["time"]) == expected


def test_a_timestamp_without_offset_is_rejected_rather_than_guessed() -> None:
    with pytest.raises(SchemaViolation) as caught:
        validate(reading(timestamp="2026-11-27T05:00:00"), ctx(), LINEAGE)
    assert caught.value.reasons == ["timestamp has no UTC offset: '2026-11-27T05:00:00'"]


def test_a_timestamp_beyond_the_future_bound_is_rejected() -> None:
    with pytest.raises(RuleViolation) as caught:
        validate(reading(timestamp="2026-11-27T06:10:00Z"), ctx(), LINEAGE)
    assert caught.value.reasons[0].startswith("timestamp in the future")
    assert validate(reading(timestamp="2026-11-27T06:04:00Z"), ctx(), LINEAGE)["time"]


def test_a_timestamp_from_an_unset_clock_is_rejected() -> None:
    with pytest.raises(RuleViolation) as caught:
        validate(reading(timestamp=0), ctx(), LINEAGE)
    assert caught.value.reasons == ["timestamp too far in the past: 1970-01-01T00:00:00+00:00"]


def test_a_reading_without_device_id_is_rejected() -> None:
    with pytest.raises(MissingDeviceId):
        validate(reading(device_id=...), ctx(), LINEAGE)
    with pytest.raises(MissingDeviceId):
        validate(reading(device_id=""), ctx(), LINEAGE)


def test_a_json_array_is_not_a_reading() -> None:
    with pytest.raises(NotAnObject):
        validate(b"[1, 2]", ctx(), LINEAGE)


def test_further_numeric_fields_are_kept_and_text_fields_ignored() -> None:
    out = validate(reading(co2=415, battery=3.7, firmware="1.2.3"), ctx(), LINEAGE)
    assert out["extra"] == {"co2": 415.0, "battery": 3.7}


def test_a_rules_file_can_bound_further_fields(tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        "required: [device_id, timestamp, humidity]\nranges:\n  co2: {min: 0, max: 5000}\n"
    )
    rules = load_rules(rules_file)
    assert rules.ranges == {"co2": Range(0.0, 5000.0)}
    with pytest.raises(RuleViolation) as caught:
        validate(reading(co2=9000, humidity=...), ctx(rules=rules), LINEAGE)
    assert caught.value.reasons == [
        "humidity is required",
        "co2 out of range: 9000.0 (allowed 0 .. 5000)",
    ]
    # The default temperature range is not in this file, so 150 passes it.
    assert validate(reading(temperature=150), ctx(rules=rules), LINEAGE)["temperature"] == 150.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ranges: {temperature: {min: 5}}", "needs min and max"),
        ("ranges: {temperature: {min: 5, max: 1}}", "min <= max"),
        ("colour: blue", "unknown keys"),
        ("- just a list", "mapping at the top"),
        ("ranges: [", "not valid YAML"),
    ],
)
def test_a_wrong_rules_file_stops_start_up_with_the_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        load_rules(rules_file)


def test_location_out_of_range_and_half_locations_are_rejected() -> None:
    with pytest.raises(RuleViolation) as caught:
        validate(reading(location={"latitude": 95, "longitude": 13}), ctx(), LINEAGE)
    assert caught.value.reasons == ["location.latitude out of range: 95.0"]
    with pytest.raises(SchemaViolation) as half:
        validate(reading(location={"latitude": 52}), ctx(), LINEAGE)
    assert half.value.reasons == ["location needs both latitude and longitude"]
