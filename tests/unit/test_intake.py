"""ingest's format checks: what is handed to Kafka and what goes to the DLQ, byte for byte."""

from __future__ import annotations

import orjson
import pytest

from libs.common.errors import MissingDeviceId, NotAnObject, NotJson
from services.ingest.intake import check_message, split_body


def test_an_mqtt_message_is_passed_on_unchanged_keyed_by_device() -> None:
    payload = b'{"device_id": "dev-1", "timestamp": 1, "temperature": 150}'
    record = check_message(payload)
    assert record.value == payload
    assert record.key == b"dev-1"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"not json", NotJson),
        (b"\xff\xfe{}", NotJson),
        (b"[1,2]", NotAnObject),
        (b'"text"', NotAnObject),
        (b'{"timestamp": 1}', MissingDeviceId),
        (b'{"device_id": "  "}', MissingDeviceId),
        (b'{"device_id": 42}', MissingDeviceId),
    ],
)
def test_messages_failing_the_format_checks_are_refused(payload: bytes, error: type) -> None:
    with pytest.raises(error):
        check_message(payload)


def test_one_json_object_is_one_reading_with_its_bytes_kept() -> None:
    body = b'{"device_id": "a", "timestamp": 1}'
    accepted, rejected = split_body(body)
    assert [r.value for r in accepted] == [body]
    assert rejected == []


def test_a_json_array_is_split_and_bad_elements_are_reported_by_index() -> None:
    body = orjson.dumps([{"device_id": "a", "t": 1}, 5, {"x": 1}, {"device_id": "b"}])
    accepted, rejected = split_body(body)
    assert [orjson.loads(r.value)["device_id"] for r in accepted] == ["a", "b"]
    assert [(r.index, type(r.error).__name__) for r in rejected] == [
        (1, "NotAnObject"),
        (2, "MissingDeviceId"),
    ]
    assert rejected[0].payload == b"5"


def test_ndjson_lines_stand_on_their_own() -> None:
    body = b'{"device_id": "a"}\n{broken\n\n{"device_id": "b"}\n'
    accepted, rejected = split_body(body)
    assert [r.value for r in accepted] == [b'{"device_id": "a"}', b'{"device_id": "b"}']
    assert [(r.index, r.payload, type(r.error).__name__) for r in rejected] == [
        (1, b"{broken", "NotJson")
    ]


def test_a_body_that_is_not_json_at_all_is_one_rejection_with_its_bytes() -> None:
    accepted, rejected = split_body(b"\x00\xffgarbage")
    assert accepted == []
    assert len(rejected) == 1 and rejected[0].payload == b"\x00\xffgarbage"
