"""ingest's format checks: what is handed to Kafka and what goes to the DLQ, byte for byte."""

from __future__ import annotations

import orjson
import pytest

from libs.common.errors import (
    DeviceMismatch,
    MissingDeviceId,
    NotAnObject,
    NotJson,
    PayloadTooLarge,
)
from services.ingest.intake import check_message, device_of_topic, split_body


def test_an_mqtt_message_is_passed_on_unchanged_keyed_by_device() -> None:
    payload = b'{"device_id": "dev-1", "timestamp": 1, "temperature": 150}'
    record = check_message(payload)
    assert record.value == payload
    assert record.key == b"dev-1"


def test_an_mqtt_reading_of_another_device_than_its_topics_is_a_device_mismatch() -> None:
    payload = b'{"device_id": "dev-2", "timestamp": 1}'
    with pytest.raises(DeviceMismatch, match="'dev-2' published to the topic of device 'dev-1'"):
        check_message(payload, topic_device="dev-1")
    assert check_message(payload, topic_device="dev-2").key == b"dev-2"


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


LIMIT = 1024


def _reading_of(size: int) -> bytes:
    body = b'{"device_id": "big", "note": ""}'
    return body[:-2] + b"x" * (size - len(body)) + b'"}'


def test_a_reading_over_the_record_limit_is_refused_whichever_transport_brings_it() -> None:
    big = _reading_of(LIMIT + 10)  # + 10: an array element is re-serialised without spaces
    with pytest.raises(PayloadTooLarge):
        check_message(big, LIMIT)
    for body in (big, b"[" + big + b"]", b'{"device_id": "a"}\n' + big + b"\n"):
        accepted, rejected = split_body(body, LIMIT)
        assert [(r.index, type(r.error).__name__) for r in rejected] == [
            (len(accepted), "PayloadTooLarge")
        ]


def test_a_reading_at_the_record_limit_passes() -> None:
    exact = _reading_of(LIMIT)
    assert check_message(exact, LIMIT).value == exact
    accepted, rejected = split_body(exact, LIMIT)
    assert [r.value for r in accepted] == [exact] and rejected == []


def test_an_over_size_reject_keeps_only_what_fits_in_a_dead_letter() -> None:
    garbage = b"\xff" * (LIMIT * 10)
    _, rejected = split_body(garbage, LIMIT)
    assert type(rejected[0].error).__name__ == "PayloadTooLarge"
    assert rejected[0].payload == garbage[:LIMIT]


def test_a_body_of_many_small_readings_is_not_held_to_the_record_limit() -> None:
    body = orjson.dumps([{"device_id": f"d{i}", "temperature": 20.0} for i in range(100)])
    assert len(body) > LIMIT
    accepted, rejected = split_body(body, LIMIT)
    assert len(accepted) == 100 and rejected == []


@pytest.mark.parametrize(
    ("topic", "device"),
    [
        ("sensors/dev-001/readings", "dev-001"),
        ("sensors//readings", None),
        ("sensors/dev-001/status", None),
        ("other/dev-001/readings", None),
        ("sensors/a/b/readings", None),
        ("t-run1/sensors/dev-001/readings", "dev-001"),
        ("site/a/sensors/dev-001/readings", "dev-001"),
        ("t-run1/sensors//readings", None),
        ("", None),
    ],
)
def test_the_device_is_named_by_the_topic_devices_publish_to(topic: str, device: str | None):
    assert device_of_topic(topic) == device


def test_a_device_bound_body_rejects_each_reading_of_another_device_with_the_reason():
    array = b'[{"device_id": "dev-1"}, {"device_id": "dev-2"}, {"device_id": "dev-1"}]'
    ndjson = b'{"device_id": "dev-2"}\n{"device_id": "dev-1"}\n'
    for body, kept, bad in ((array, 2, [1]), (ndjson, 1, [0])):
        accepted, rejected = split_body(body, allowed_device="dev-1")
        assert [r.key for r in accepted] == [b"dev-1"] * kept
        assert [r.index for r in rejected] == bad
        assert [type(r.error).__name__ for r in rejected] == ["DeviceNotAllowed"]
        assert rejected[0].error.reasons == [
            "reading of device 'dev-2', but the token is bound to device 'dev-1'"
        ]
    accepted, rejected = split_body(array)
    assert len(accepted) == 3 and not rejected
