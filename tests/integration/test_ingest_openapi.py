"""ingest's OpenAPI document against ingest itself: schemathesis sends what the document allows
(and what it does not) to a real ingest process on the real Kafka, and checks every answer's
status, content type and body against the document."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.processes import Service, start
from tests.integration.kafka_helpers import settle_and_read
from tools.names import Names
from tools.processes import REPO_ROOT, free_port

pytestmark = pytest.mark.integration

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
# Generated cases per operation in the fuzzing phase; the examples and coverage phases add their
# own (about 350 cases in all, 25 s on the 2-core machine).
MAX_EXAMPLES = 40
# Limits low enough that generated bodies reach them: the 413 and the PayloadTooLarge reject.
LIMITS = {"MAX_BODY_BYTES": "4096", "MAX_RECORD_BYTES": "512"}


@pytest.fixture
def ingest(topics: Names, tmp_path: Path) -> Iterator[Service]:
    """ingest as a process on the test's own topics; MQTT off, so it joins no shared
    subscription of the real broker."""
    service = start(
        "ingest", free_port(), topics.env() | LIMITS | {"MQTT_ENABLED": "false"}, tmp_path
    )
    try:
        service.wait_ready()
        yield service
    finally:
        service.terminate()


def schemathesis(
    location: str, base_url: str, report: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """One `schemathesis run`, its JSON report written to `report`."""
    if importlib.util.find_spec("schemathesis") is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[test]'", pytrace=False)
    # Without its cache of earlier failures (a .schemathesis/ in the checkout, replayed first):
    # each run stands on its own.
    config = report.with_name("schemathesis.toml")
    config.write_text("[cache]\nenabled = false\n")
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        location,
        "--url",
        base_url,
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        *options,
    ]
    env = os.environ | {"SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks"}
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def counter(metrics: str, name: str) -> float:
    """The sum of a Prometheus counter's samples for stage "ingest"."""
    pattern = rf'^{name}{{[^}}]*stage="ingest"[^}}]*}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, re.MULTILINE))


async def test_ingest_answers_as_its_openapi_document_says(
    ingest: Service, topics: Names, tmp_path: Path
) -> None:
    run = schemathesis(f"{ingest.url}/openapi.json", ingest.url, tmp_path / "report.json")
    assert run.returncode == 0, f"{run.stdout[-20000:]}\n{run.stderr[-5000:]}\n{ingest.log_tail()}"
    report = json.loads((tmp_path / "report.json").read_text())
    # Every operation tested, none skipped (an NDJSON body without its serializer would be).
    assert report["operations"]["tested"] == 4, report["operations"]
    assert report["test_cases"]["generated"] >= 100, report["test_cases"]

    # What ingest accepted went to this test's private topics, and all of it arrived there.
    metrics = ingest.metrics()
    accepted = counter(metrics, "pipeline_messages_out_total")
    dead_letters = counter(metrics, "pipeline_dlq_records_total")
    assert accepted > 0 and dead_letters > 0, (accepted, dead_letters, report)
    assert len(await settle_and_read(topics.raw)) == accepted
    assert len(await settle_and_read(topics.dlq)) == dead_letters, report["test_cases"]


async def test_an_answer_the_document_leaves_out_fails_the_run(
    ingest: Service, tmp_path: Path
) -> None:
    """The run above can fail: against a document without the 400 answer (every record bad),
    schemathesis finds ingest answering a status the document does not have."""
    document = httpx.get(f"{ingest.url}/openapi.json", timeout=5).json()
    del document["paths"]["/v1/readings"]["post"]["responses"]["400"]
    wrong = tmp_path / "openapi.json"
    wrong.write_text(json.dumps(document))
    run = schemathesis(
        str(wrong),
        ingest.url,
        tmp_path / "report.json",
        *("--include-path", "/v1/readings", "--phases", "coverage", "--max-failures", "1"),
    )
    assert run.returncode != 0, run.stdout[-5000:]
    failures = json.loads((tmp_path / "report.json").read_text())["failures"]
    assert [(f["type"], f["operations"]) for f in failures] == [
        ("UndefinedStatusCode", ["POST /v1/readings"])
    ], run.stdout[-5000:]
