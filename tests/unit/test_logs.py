"""Log lines that tie to one record: its trace id, stage, topic, partition and offset, as JSON,
whether the line comes from structlog or from a library logging through the standard library."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import redirect_stderr
from typing import Any

import pytest
import structlog
from aiokafka import ConsumerRecord

from libs.common.errors import NotJson, RuleViolation
from libs.common.logs import (
    bound_record,
    configure_logging,
    dead_letter_context,
    log_dead_letters,
    record_context,
)
from libs.common.models import DeadLetter, Stage, dead_letter

TRACE = "0123456789abcdef0123456789abcdef"


def consumer_record(headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="sensor-data",
        partition=2,
        offset=41,
        timestamp=0,
        timestamp_type=0,
        key=b"dev-1",
        value=b"{}",
        checksum=None,
        serialized_key_size=5,
        serialized_value_size=2,
        headers=headers,
    )


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    with redirect_stderr(stream):
        configure_logging("validate", "INFO")
        yield stream
    reset_logging()


def reset_logging() -> None:
    """Undo configure_logging, so later tests log where pytest expects."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
            root.removeHandler(handler)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_records_context_is_its_trace_id_stage_topic_partition_and_offset() -> None:
    record = consumer_record([("source", b"mqtt"), ("trace_id", TRACE.encode())])
    assert record_context(record, "validate") == {
        "trace_id": TRACE,
        "stage": "validate",
        "topic": "sensor-data",
        "partition": 2,
        "offset": 41,
    }


def test_a_record_without_a_trace_header_is_still_located_by_its_position() -> None:
    assert record_context(consumer_record([])) == {
        "topic": "sensor-data",
        "partition": 2,
        "offset": 41,
    }


def test_every_line_inside_bound_record_carries_the_records_context(
    log_lines: io.StringIO,
) -> None:
    log = structlog.get_logger("t")
    with bound_record(consumer_record([("trace_id", TRACE.encode())]), "validate"):
        log.info("looked up the device")
    log.info("batch done")
    inside, after = parsed(log_lines)
    assert inside | {"timestamp": None} == {
        "event": "looked up the device",
        "service": "validate",
        "trace_id": TRACE,
        "stage": "validate",
        "topic": "sensor-data",
        "partition": 2,
        "offset": 41,
        "level": "info",
        "timestamp": None,
    }
    assert "trace_id" not in after and after["service"] == "validate"


def test_a_dead_letter_is_logged_with_its_trace_id_source_position_and_reasons(
    log_lines: io.StringIO,
) -> None:
    letter = dead_letter(
        RuleViolation("temperature out of range: 150.0 (allowed -50 .. 100)"),
        stage=Stage.VALIDATE,
        record=consumer_record([("trace_id", TRACE.encode())]),
    )
    DeadLetter.model_validate(letter)
    log_dead_letters(structlog.get_logger("t"), [letter])
    [line] = parsed(log_lines)
    assert line | {"timestamp": None} == {
        "event": "record sent to the DLQ",
        "level": "warning",
        "service": "validate",
        "trace_id": TRACE,
        "stage": "validate",
        "topic": "sensor-data",
        "partition": 2,
        "offset": 41,
        "device_id": "dev-1",
        "error_type": "RuleViolation",
        "reasons": ["temperature out of range: 150.0 (allowed -50 .. 100)"],
        "attempts": 1,
        "timestamp": None,
    }


def test_a_dead_letter_from_ingest_has_no_kafka_position_to_log() -> None:
    letter = dead_letter(NotJson("not JSON"), stage=Stage.INGEST, payload=b"hello", trace_id=TRACE)
    assert dead_letter_context(letter) == {
        "trace_id": TRACE,
        "stage": "ingest",
        "error_type": "NotJson",
        "reasons": ["not JSON"],
        "attempts": 1,
    }


def test_standard_library_log_records_are_json_lines_with_the_service_too(
    log_lines: io.StringIO,
) -> None:
    logging.getLogger("aiokafka.consumer").warning("heartbeat failed for group %s", "store")
    logging.getLogger("aiokafka.consumer").debug("not shown at INFO")
    [line] = parsed(log_lines)
    assert line | {"timestamp": None} == {
        "event": "heartbeat failed for group store",
        "logger": "aiokafka.consumer",
        "level": "warning",
        "service": "validate",
        "timestamp": None,
    }


def test_configuring_twice_leaves_one_json_line_per_standard_library_record() -> None:
    stream = io.StringIO()
    with redirect_stderr(stream):
        configure_logging("validate", "INFO")
        configure_logging("validate", "INFO")
        logging.getLogger("uvicorn.error").error("bind failed")
    reset_logging()
    assert [line["event"] for line in parsed(stream)] == ["bind failed"]
