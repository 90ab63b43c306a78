"""POST /v1/readings over real HTTP (a live uvicorn on a free port) with a fake hand-over."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import cast

import httpx
import orjson
import pydantic
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from libs.common import stack
from libs.common.errors import ConfigurationError
from libs.common.health import Readiness, health_app, serve_http
from libs.common.kafka import Outgoing
from libs.common.metrics import sample_sum
from libs.common.models import Source
from services.ingest import settings as ingest_settings
from services.ingest.handover import Handover
from services.ingest.http_api import ErrorAnswer, ReadingsAnswer, ingest_app
from services.ingest.intake import Rejected
from services.ingest.settings import IngestSettings


class HeldHandover:
    """Takes what it is given; holds every send until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.waiting = 0
        self.sent: list[tuple[list[Outgoing], list[Rejected]]] = []

    async def send(
        self, accepted: Sequence[Outgoing], rejected: Sequence[Rejected], source: Source
    ) -> None:
        self.waiting += 1
        await self.release.wait()
        self.sent.append((list(accepted), list(rejected)))


@pytest.fixture
def handover() -> HeldHandover:
    return HeldHandover()


@pytest.fixture
async def client(handover: HeldHandover, free_port: int) -> AsyncIterator[httpx.AsyncClient]:
    settings = IngestSettings(
        http_port=free_port, http_max_concurrency=2, max_record_bytes=1024, max_body_bytes=4096
    )
    app = health_app(Readiness("ingest"), ingest_app(cast(Handover, handover), settings))
    async with (
        serve_http(app, "127.0.0.1", free_port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{free_port}", timeout=10) as client,
    ):
        yield client


def busy_count() -> float:
    scraped = generate_latest().decode()
    return sample_sum(scraped, "pipeline_ingest_requests_total", transport="http", outcome="busy")


# Every answer POST /v1/readings counts: 202, 400, 413, 503 (Kafka down), 503 (concurrency limit),
# and over HTTPS 401 and 403.
HTTP_OUTCOMES = {
    "accepted",
    "rejected",
    "too_large",
    "unavailable",
    "busy",
    "unauthenticated",
    "forbidden",
}


def test_metrics_of_a_fresh_ingest_have_every_http_outcome_at_zero_busy_included() -> None:
    # A fresh interpreter: in this one other tests have already counted requests.
    code = (
        "from prometheus_client import generate_latest\n"
        "from libs.common import metrics\n"
        "metrics.initialise('ingest')\n"
        "print(generate_latest().decode())\n"
    )
    scraped = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    http = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "pipeline_ingest_requests_total" and sample.labels["transport"] == "http"
    }
    assert http == dict.fromkeys(HTTP_OUTCOMES, 0.0)


async def test_past_the_concurrency_limit_the_answer_is_503_with_retry_after(
    client: httpx.AsyncClient, handover: HeldHandover
) -> None:
    handover.release.clear()
    reading = {"device_id": "a", "timestamp": 1}
    held = [asyncio.create_task(client.post("/v1/readings", json=reading)) for _ in range(2)]
    while handover.waiting < 2:
        await asyncio.sleep(0.01)
    before = busy_count()
    busy = await client.post("/v1/readings", json=reading)
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1"
    assert busy_count() == before + 1
    # Probes are outside the limit.
    assert (await client.get("/healthz")).status_code == 200
    handover.release.set()
    assert [(await task).status_code for task in held] == [202, 202]
    assert (await client.post("/v1/readings", json=reading)).status_code == 202


async def test_an_over_size_reading_is_a_reject_with_its_reason_in_the_202_answer(
    client: httpx.AsyncClient, handover: HeldHandover
) -> None:
    small = {"device_id": "a", "timestamp": 1}
    big = {"device_id": "b", "note": "x" * 2000}
    answer = await client.post("/v1/readings", content=orjson.dumps([small, big]))
    assert answer.status_code == 202
    body = answer.json()
    assert body["accepted"] == 1
    assert [(r["index"], r["error_type"]) for r in body["rejected"]] == [(1, "PayloadTooLarge")]
    assert "larger than the limit of 1024" in body["rejected"][0]["reasons"][0]
    [(accepted, rejected)] = handover.sent
    assert [orjson.loads(r.value)["device_id"] for r in accepted] == ["a"]
    assert len(rejected[0].payload) == 1024


async def test_one_over_size_reading_alone_is_answered_400_and_dead_lettered(
    client: httpx.AsyncClient, handover: HeldHandover
) -> None:
    answer = await client.post("/v1/readings", json={"device_id": "b", "note": "x" * 2000})
    assert answer.status_code == 400
    assert answer.json()["rejected"][0]["error_type"] == "PayloadTooLarge"
    assert len(handover.sent[0][1]) == 1


async def test_a_body_over_the_whole_body_limit_is_still_413(
    client: httpx.AsyncClient, handover: HeldHandover
) -> None:
    answer = await client.post("/v1/readings", content=b"x" * 5000)
    assert answer.status_code == 413
    assert handover.sent == []


async def test_the_answers_are_the_documented_models_with_every_reject_type(
    client: httpx.AsyncClient,
) -> None:
    mixed = b"\n".join(
        [
            b'{"device_id": "a", "timestamp": 1}',
            b"{broken",
            b"[1]",
            b'{"device_id": " "}',
            b'{"device_id": "b", "note": "' + b"x" * 2000 + b'"}',
        ]
    )
    answer = await client.post("/v1/readings", content=mixed)
    assert answer.status_code == 202
    body = ReadingsAnswer.model_validate_json(answer.content, strict=True)
    assert body.accepted == 1
    assert [(r.index, r.error_type) for r in body.rejected] == [
        (1, "NotJson"),
        (2, "NotAnObject"),
        (3, "MissingDeviceId"),
        (4, "PayloadTooLarge"),
    ]
    nothing_usable = await client.post("/v1/readings", content=b"not json")
    assert nothing_usable.status_code == 400
    ReadingsAnswer.model_validate_json(nothing_usable.content, strict=True)
    too_large = await client.post("/v1/readings", content=b"x" * 5000)
    ErrorAnswer.model_validate_json(too_large.content, strict=True)


def test_a_renamed_setting_stops_the_service_with_its_new_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MQTT_BATCH_MAX", "100")
    with pytest.raises(pydantic.ValidationError, match="MQTT_BATCH_MAX is now MQTT_MAX_RECORDS"):
        IngestSettings()
    monkeypatch.delenv("MQTT_BATCH_MAX")
    monkeypatch.setenv("MQTT_MAX_RECORDS", "100")
    assert IngestSettings().mqtt_max_records == 100


def test_mqtts_is_the_default_with_ingests_account_and_plain_mqtt_stays_possible() -> None:
    settings = IngestSettings()
    assert (settings.mqtt_url, settings.mqtt_username) == ("mqtts://127.0.0.1:8883", "ingest")
    assert settings.mqtt_tls and settings.mqtt_password is None
    assert not IngestSettings(mqtt_url="mqtt://broker.example:1883").mqtt_tls


def test_an_mqtt_password_set_is_the_login_over_tls_and_plaintext() -> None:
    for url in ("mqtts://broker.example:8883", "mqtt://broker.example:1883"):
        settings = IngestSettings(mqtt_url=url, mqtt_username="me", mqtt_password="pw")
        assert settings.mqtt_credentials() == ("me", "pw")


def test_plaintext_mqtt_without_a_password_sends_none() -> None:
    # Never the local stack's password in clear by default.
    assert IngestSettings(mqtt_url="mqtt://broker.example:1883").mqtt_credentials() is None


TLS_URL = "mqtts://127.0.0.1:8883"


def test_over_tls_the_default_password_is_the_local_stacks_generated_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password_file = tmp_path / ".stack" / "secrets" / "mqtt-ingest.password"
    monkeypatch.setattr(stack, "REPO_ROOT", tmp_path)
    with pytest.raises(ConfigurationError, match="MQTT_PASSWORD or MQTT_PASSWORD_FILE.*make up"):
        IngestSettings(mqtt_url=TLS_URL).mqtt_credentials()
    password_file.parent.mkdir(parents=True)
    password_file.write_text("")
    with pytest.raises(ConfigurationError, match="is empty"):
        IngestSettings(mqtt_url=TLS_URL).mqtt_credentials()
    password_file.write_text("generated\n")
    assert IngestSettings(mqtt_url=TLS_URL).mqtt_credentials() == ("ingest", "generated")
    # The path is resolved at run time from the checkout, never a default of the settings.
    assert ingest_settings.local_mqtt_password_file() == password_file


def test_the_mqtt_password_file_setting_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    monkeypatch.setenv("MQTT_PASSWORD_FILE", str(secret))
    assert IngestSettings().mqtt_credentials() == ("ingest", "from-file")


def test_an_mqtt_url_of_another_scheme_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="mqtts://host:port"):
        IngestSettings(mqtt_url="tcp://broker.example:1883")
