"""libs/common: settings that refuse unsafe values, the retry policy, dead letters, JSON logs,
health routes."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr

import httpx
import pytest
import structlog
from aiokafka import ConsumerRecord
from pydantic import ValidationError

from libs.common.errors import (
    BrokerUnavailable,
    DatabaseUnavailable,
    NotJson,
    PipelineError,
    RecordError,
    RuleViolation,
    TransientError,
)
from libs.common.health import Readiness, health_app
from libs.common.logs import configure_logging
from libs.common.models import DeadLetter, Stage, dead_letter
from libs.common.retry import call_with_retry, is_transient
from libs.common.settings import PipelineSettings
from services.ingest.settings import IngestSettings


def test_the_defaults_point_at_the_local_stack_of_the_architecture(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in PipelineSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = PipelineSettings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    # No DATABASE_URL: a role's verify-full DSN of the local stack, resolved when connecting
    # (tests/unit/test_db_accounts.py); reader, SELECT only, unless the class names another.
    assert settings.database_url is None and settings.database_role == "reader"
    assert (
        settings.topic_raw,
        settings.topic_validated,
        settings.topic_enriched,
        settings.topic_dlq,
    ) == ("sensor-data", "sensor-data-validated", "sensor-data-enriched", "sensor-data-errors")
    assert "sensors:sensors" not in repr(settings)  # the URL is a secret, never logged


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("TOPIC_PARTITIONS", "12")
    settings = PipelineSettings()
    assert settings.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.topic_partitions == 12


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kafka_bootstrap_servers", "localhost", "is not host:port"),
        ("database_url", "mysql://x@y/z", "postgresql://"),
        ("producer_compression", "brotli", "producer_compression must be one of"),
        ("log_level", "LOUD", "log_level must be"),
        ("topic_partitions", 0, "greater than or equal to 1"),
        ("database_schema", "x; DROP TABLE y", "String should match pattern"),
    ],
)
def test_unsafe_settings_stop_start_up_with_a_clear_message(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        PipelineSettings.model_validate({field: value})


def test_an_mqtt_url_must_be_an_mqtt_url() -> None:
    with pytest.raises(ValidationError, match="mqtt://host:port"):
        IngestSettings(mqtt_url="http://127.0.0.1:1883")


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        PipelineSettings().topic_raw = "other"  # type: ignore[misc]


def test_errors_say_whether_waiting_can_fix_them() -> None:
    assert issubclass(BrokerUnavailable, TransientError) and BrokerUnavailable.retriable
    assert DatabaseUnavailable("x").retriable
    assert not RuleViolation(["a", "b"]).retriable
    assert RuleViolation(["a", "b"]).reasons == ["a", "b"]
    assert NotJson("x").error_type == "NotJson"
    assert all(issubclass(e, PipelineError) for e in (TransientError, RecordError))
    assert is_transient(DatabaseUnavailable("x")) and not is_transient(ValueError("x"))


def test_a_dead_letter_takes_position_trace_id_and_device_id_from_its_kafka_record() -> None:
    record = ConsumerRecord(
        "sensor-data", 4, 99, 0, 0, b"dev-9", b"\xff", None, 5, 1, [("trace_id", b"t-9")]
    )
    letter = DeadLetter.model_validate(
        dead_letter(RuleViolation(["a", "b"]), stage=Stage.ENRICH, record=record, attempts=2)
    )
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "sensor-data",
        4,
        99,
    )
    assert (letter.trace_id, letter.device_id, letter.attempts) == ("t-9", "dev-9", 2)
    assert (letter.error_type, letter.reasons, letter.error_message) == (
        "RuleViolation",
        ["a", "b"],
        "a; b",
    )
    assert (letter.original_record, letter.original_encoding) == ("/w==", "base64")


def test_a_dead_letters_explicit_trace_id_and_device_id_win_over_its_records() -> None:
    record = ConsumerRecord("t", 0, 1, 0, 0, b"key", b"{}", None, 3, 2, [("trace_id", b"h")])
    letter = dead_letter(
        NotJson("x"), stage=Stage.VALIDATE, record=record, trace_id="lineage", device_id="dev"
    )
    assert (letter["trace_id"], letter["device_id"]) == ("lineage", "dev")


async def test_transient_errors_are_retried_until_the_call_succeeds() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise DatabaseUnavailable("not yet")
        return "ok"

    assert await call_with_retry(flaky, max_delay_s=10, max_wait_s=0.01) == "ok"
    assert len(calls) == 3


async def test_permanent_errors_are_not_retried() -> None:
    calls: list[int] = []

    async def wrong() -> None:
        calls.append(1)
        raise RuleViolation("temperature out of range: 150.0")

    with pytest.raises(RuleViolation):
        await call_with_retry(wrong, max_delay_s=10, max_wait_s=0.01)
    assert len(calls) == 1


async def test_retries_stop_after_the_time_budget_with_the_last_error() -> None:
    async def away() -> None:
        raise BrokerUnavailable("still away")

    with pytest.raises(BrokerUnavailable, match="still away"):
        await call_with_retry(away, max_delay_s=0.05, max_wait_s=0.01)


def test_logs_are_one_json_object_a_line_with_the_service_name() -> None:
    stream = io.StringIO()
    with redirect_stderr(stream):
        configure_logging("validate", "INFO")
        structlog.get_logger("t").info("batch done", topic="sensor-data", partition=2, offset=7)
        structlog.get_logger("t").debug("not shown at INFO")
    structlog.reset_defaults()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0] | {"timestamp": None} == {
        "event": "batch done",
        "topic": "sensor-data",
        "partition": 2,
        "offset": 7,
        "service": "validate",
        "level": "info",
        "timestamp": None,
    }


async def test_readyz_answers_503_until_everything_needed_is_connected() -> None:
    readiness = Readiness("store", "kafka", "database")
    transport = httpx.ASGITransport(app=health_app(readiness))
    async with httpx.AsyncClient(transport=transport, base_url="http://store") as client:
        assert (await client.get("/healthz")).status_code == 200
        first = await client.get("/readyz")
        assert first.status_code == 503
        assert first.json() == {"ready": False, "checks": {"kafka": False, "database": False}}
        readiness.set("kafka", True)
        readiness.set("database", True)
        assert (await client.get("/readyz")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'pipeline_ready{stage="store"} 1.0' in metrics
        assert "process_resident_memory_bytes" in metrics
