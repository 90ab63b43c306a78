"""Every service's /metrics after a known mix of readings over MQTT and HTTP: each metric family
the operators' dashboards and alerts use is there, with counts equal to what was sent, and the
log lines of rejected records carry the trace id of their dead letter.

The chain runs once for the module; each test checks one thing of that run.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.common.metrics import sample_sum
from libs.common.models import DeadLetter
from tests.conftest import Names, connect_to_schema
from tests.e2e.processes import Chain, drop_schema, prepare_topics_and_schema
from tests.integration.kafka_helpers import read_topic

pytestmark = pytest.mark.e2e

STAGES = ("ingest", "validate", "enrich", "store")
MAX_BODY_BYTES = 65536

# What is sent (see `send`), and what each stage must have counted.
MQTT_MESSAGES = 11  # 6 valid, 1 duplicate, 2 ingest rejects, 2 validate rejects
MQTT_ACCEPTED, MQTT_REJECTED = 9, 2
HTTP_RECORDS = 10  # in the bodies ingest could split: 5 + 4 + 1
HTTP_ACCEPTED_RECORDS = 7
INGEST_DLQ = {"NotJson": 2, "MissingDeviceId": 2, "NotAnObject": 1}
VALIDATE_DLQ = {"RuleViolation": 1, "SchemaViolation": 1}
DUPLICATES = 2
ROWS = 12
HTTP_REQUESTS = {"accepted": 2, "rejected": 1, "too_large": 1, "unavailable": 0, "busy": 0}
# Readings are stamped this long before they are sent: the end-to-end latency from the device
# timestamp is at least this.
STAMPED_AGO_S = 30


@dataclass(frozen=True)
class Run:
    names: Names
    scrapes: dict[str, str]
    logs: dict[str, list[dict[str, Any]]]
    non_json_lines: dict[str, list[str]]
    dead_letters: list[DeadLetter]
    rows: int
    exit_codes: dict[str, int]

    def value(self, service: str, name: str, /, **labels: str) -> float:
        """The sum of `name`'s samples with `labels` in the scrape of `service`."""
        return sample_sum(self.scrapes[service], name, **labels)

    def samples(self, service: str, name: str) -> list[tuple[dict[str, str], float]]:
        return [
            (sample.labels, sample.value)
            for family in text_string_to_metric_families(self.scrapes[service])
            for sample in family.samples
            if sample.name == name
        ]


def readings(now: datetime) -> tuple[list[tuple[str, bytes]], list[bytes], dict[str, Any]]:
    """MQTT messages (device, payload), HTTP bodies, and the reading HTTP sends twice."""
    stamp = now - timedelta(seconds=STAMPED_AGO_S)

    def reading(device: str, seconds: int, **fields: Any) -> dict[str, Any]:
        return {
            "device_id": device,
            "timestamp": (stamp - timedelta(seconds=seconds)).isoformat(),
            "temperature": 21.5,
            "humidity": 40.0,
            "pressure": 1010.0,
            "location": {"latitude": 52.52, "longitude": 13.40},
        } | fields

    valid_mqtt = [reading(f"met-m{i % 3}", i) for i in range(6)]
    mqtt = [(r["device_id"], orjson.dumps(r)) for r in valid_mqtt] + [
        ("met-m0", orjson.dumps(valid_mqtt[0])),  # duplicate
        ("met-x", b"not json at all"),  # ingest: NotJson
        ("met-x", b'{"timestamp": 1, "temperature": 20}'),  # ingest: MissingDeviceId
        ("met-x", orjson.dumps(reading("met-x", 1, temperature=150))),  # validate: RuleViolation
        ("met-x", orjson.dumps(reading("met-x", 2, humidity="wet"))),  # validate: SchemaViolation
    ]
    http = [reading(f"met-h{i % 2}", i) for i in range(6)]
    array = orjson.dumps([*http[:4], {"timestamp": 1, "temperature": 1}])  # + MissingDeviceId
    ndjson = b"\n".join(
        [orjson.dumps(http[4]), orjson.dumps(http[5]), orjson.dumps(http[0]), b"{broken"]
    )  # 2 valid, 1 duplicate of the array's first, 1 NotJson
    nothing_usable = b'"a string, not a reading"'  # NotAnObject: answered 400
    return mqtt, [array, ndjson, nothing_usable], http[0]


async def send(chain: Chain) -> None:
    mqtt, bodies, _ = readings(datetime.now(UTC).replace(microsecond=0))
    assert len(mqtt) == MQTT_MESSAGES
    async with chain.mqtt_client() as client:
        for device, payload in mqtt:
            await client.publish(chain.mqtt_topic(device), payload, qos=1)
    async with httpx.AsyncClient(timeout=30) as http:
        url = f"{chain.ingest_url}/v1/readings"
        answers = [(await http.post(url, content=body)).status_code for body in bodies]
        too_large = await http.post(url, content=b" " * (MAX_BODY_BYTES + 1))
    assert answers == [202, 202, 400]
    assert too_large.status_code == 413


async def stored_rows(names: Names, expected: int, timeout_s: float = 60) -> int:
    conn = await connect_to_schema(names.schema(), role="reader")
    try:
        async with asyncio.timeout(timeout_s):
            while (n := await conn.fetchval("SELECT count(*) FROM sensor_readings")) < expected:
                await asyncio.sleep(0.25)
        return int(n)
    finally:
        await conn.close()


async def settled_scrapes(chain: Chain) -> dict[str, str]:
    # The counters move after each stage's transaction committed, a moment after the rows are
    # visible: wait until the last stage counted everything, then give the rest a moment more,
    # so a count above the expected one would show.
    async with asyncio.timeout(30):
        while sample_sum(chain.services["store"].metrics(), "pipeline_messages_out_total") < ROWS:
            await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)
    return {stage: chain.services[stage].metrics() for stage in STAGES}


def read_logs(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    parsed, other = [], []
    for line in path.read_text(errors="replace").splitlines():
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            other.append(line)
    return parsed, other


@pytest.fixture(scope="module")
def run(stack: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    names = Names(uuid.uuid4().hex[:12])
    asyncio.run(prepare_topics_and_schema(names))
    chain = Chain(
        names.run_id,
        names.env() | {"MAX_BODY_BYTES": str(MAX_BODY_BYTES)},
        tmp_path_factory.mktemp("metrics"),
    )
    try:
        chain.start_all({stage: stage for stage in STAGES})
        asyncio.run(send(chain))
        rows = asyncio.run(stored_rows(names, ROWS))
        scrapes = asyncio.run(settled_scrapes(chain))
        dead = asyncio.run(read_topic(names.dlq, sum(INGEST_DLQ.values()) + len(VALIDATE_DLQ)))
    finally:
        codes = chain.stop_all()
        asyncio.run(drop_schema(names))
    logs, other = {}, {}
    for stage in STAGES:
        logs[stage], other[stage] = read_logs(chain.services[stage].log_path)
    yield Run(
        names,
        scrapes,
        logs,
        other,
        [DeadLetter.model_validate(orjson.loads(d.value)) for d in dead],
        rows,
        codes,
    )


def test_the_chain_stored_exactly_the_valid_unique_readings_and_stopped_cleanly(run: Run) -> None:
    assert run.rows == ROWS
    assert run.exit_codes == dict.fromkeys(STAGES, 0)


def test_records_in_and_out_of_each_stage_equal_what_was_sent(run: Run) -> None:
    ingest_in = MQTT_MESSAGES + HTTP_RECORDS
    ingest_out = MQTT_ACCEPTED + HTTP_ACCEPTED_RECORDS
    validated = ingest_out - DUPLICATES - sum(VALIDATE_DLQ.values())
    assert validated == ROWS
    expected = {
        "ingest": (ingest_in, ingest_out),
        "validate": (ingest_out, validated),
        "enrich": (validated, validated),
        "store": (validated, ROWS),
    }
    counted = {
        stage: (
            run.value(stage, "pipeline_messages_in_total", stage=stage),
            run.value(stage, "pipeline_messages_out_total", stage=stage),
        )
        for stage in STAGES
    }
    assert counted == expected


def test_dlq_records_and_errors_are_counted_by_stage_and_error_type(run: Run) -> None:
    for stage, expected in (("ingest", INGEST_DLQ), ("validate", VALIDATE_DLQ)):
        for metric in ("pipeline_dlq_records_total", "pipeline_errors_total"):
            counted = {
                labels["error_type"]: value
                for labels, value in run.samples(stage, metric)
                if labels["stage"] == stage
            }
            assert counted == expected, (stage, metric)
    for stage in ("enrich", "store"):
        assert run.value(stage, "pipeline_dlq_records_total") == 0
        assert run.value(stage, "pipeline_errors_total") == 0
    by_stage = sorted((d.processing_stage.value, d.error_type) for d in run.dead_letters)
    expected_letters = [("ingest", t) for t, n in INGEST_DLQ.items() for _ in range(n)]
    expected_letters += [("validate", t) for t, n in VALIDATE_DLQ.items() for _ in range(n)]
    assert by_stage == sorted(expected_letters)


def test_validation_success_rate_and_duplicates_dropped_follow_from_the_counts(run: Run) -> None:
    valid = run.value("validate", "pipeline_messages_out_total", stage="validate")
    invalid = run.value("validate", "pipeline_dlq_records_total", stage="validate")
    assert valid / (valid + invalid) == ROWS / (ROWS + sum(VALIDATE_DLQ.values()))
    assert (
        run.value("validate", "pipeline_duplicates_dropped_total", stage="validate") == DUPLICATES
    )


def test_ingest_counts_mqtt_messages_and_http_requests_by_outcome(run: Run) -> None:
    def requests(transport: str, outcome: str) -> float:
        return run.value(
            "ingest", "pipeline_ingest_requests_total", transport=transport, outcome=outcome
        )

    assert requests("mqtt", "accepted") == MQTT_ACCEPTED
    assert requests("mqtt", "rejected") == MQTT_REJECTED
    assert {outcome: requests("http", outcome) for outcome in HTTP_REQUESTS} == HTTP_REQUESTS


def test_every_stage_times_its_batches_and_counts_their_sizes(run: Run) -> None:
    for stage in STAGES:
        taken = run.value(stage, "pipeline_messages_in_total", stage=stage)
        batches = run.value(stage, "pipeline_processing_seconds_count", stage=stage)
        seconds = run.value(stage, "pipeline_processing_seconds_sum", stage=stage)
        assert 1 <= batches <= taken, stage
        assert 0 < seconds / batches < 10, stage
        assert run.value(stage, "pipeline_batch_size_count", stage=stage) == batches, stage
        assert run.value(stage, "pipeline_batch_size_sum", stage=stage) == taken, stage


def test_store_measures_database_writes_and_end_to_end_latency_of_every_row(run: Run) -> None:
    writes = run.value("store", "pipeline_db_write_seconds_count", stage="store")
    assert 1 <= writes <= ROWS
    assert 0 < run.value("store", "pipeline_db_write_seconds_sum") / writes < 5
    for since, low, high in (("device_timestamp", STAMPED_AGO_S, 300), ("received_at", 0, 30)):
        count = run.value("store", "pipeline_end_to_end_seconds_count", since=since)
        total = run.value("store", "pipeline_end_to_end_seconds_sum", since=since)
        assert count == ROWS, since
        assert low <= total / count < high, since
        within = run.value("store", "pipeline_end_to_end_seconds_bucket", since=since, le="300.0")
        assert within == ROWS, since


def test_store_exports_the_silent_device_count_and_its_threshold(run: Run) -> None:
    # No device of this run is registered, so none can count as silent.
    assert run.samples("store", "pipeline_devices_silent") == [({"stage": "store"}, 0.0)]
    assert run.value("store", "pipeline_device_silence_threshold_seconds", stage="store") == 900


def test_consumer_lag_is_reported_per_partition_and_caught_up_after_the_drain(run: Run) -> None:
    topics = {"validate": run.names.raw, "enrich": run.names.validated, "store": run.names.enriched}
    for stage, topic in topics.items():
        lags = {
            labels["partition"]: value
            for labels, value in run.samples(stage, "pipeline_consumer_lag")
            if labels["topic"] == topic and labels["stage"] == stage
        }
        assert lags and set(lags) <= {"0", "1", "2"}, stage
        # A transactional topic ends in a commit marker that takes an offset but is no record.
        assert all(0 <= lag <= 1 for lag in lags.values()), (stage, lags)


def test_retries_are_exported_as_zero_when_nothing_failed(run: Run) -> None:
    for stage in STAGES:
        retries = run.samples(stage, "pipeline_retries_total")
        operation = "handover" if stage == "ingest" else "batch"
        assert retries == [({"stage": stage, "operation": operation}, 0.0)], stage


def test_every_service_reports_ready_and_its_process_cpu_and_memory(run: Run) -> None:
    for stage in STAGES:
        assert run.value(stage, "pipeline_ready", stage=stage) == 1, stage
        assert run.value(stage, "process_cpu_seconds_total") > 0, stage
        assert 20e6 < run.value(stage, "process_resident_memory_bytes") < 2e9, stage


def test_every_log_line_is_json_with_the_service_name(run: Run) -> None:
    for stage in STAGES:
        assert run.non_json_lines[stage] == [], stage
        assert run.logs[stage] and all(line["service"] == stage for line in run.logs[stage])


def test_a_rejected_record_is_logged_with_its_dead_letters_trace_id_and_source_position(
    run: Run,
) -> None:
    letters = {d.trace_id: d for d in run.dead_letters}
    for stage, expected in (("ingest", INGEST_DLQ), ("validate", VALIDATE_DLQ)):
        logged = [line for line in run.logs[stage] if line["event"] == "record sent to the DLQ"]
        assert sorted(line["error_type"] for line in logged) == sorted(
            t for t, n in expected.items() for _ in range(n)
        ), stage
        for line in logged:
            assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"]), line
            assert line["stage"] == stage
            letter = letters[line["trace_id"]]
            assert letter.error_type == line["error_type"]
            if stage == "validate":
                assert (line["topic"], line["partition"], line["offset"]) == (
                    letter.source_topic,
                    letter.source_partition,
                    letter.source_offset,
                )
                assert line["topic"] == run.names.raw
