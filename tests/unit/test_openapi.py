"""ingest's OpenAPI document and the reading's published JSON Schema, read from the code.

tests/integration/test_ingest_openapi.py checks the same document against a live ingest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest

from libs.common import cli
from libs.common.auth import TokenVerifier
from libs.common.health import Readiness, health_app
from libs.common.models import RawReading, reading_json_schema
from libs.common.version import __version__
from services.ingest.handover import Handover
from services.ingest.http_api import ingest_app, readings_app
from services.ingest.settings import IngestSettings

ROOT = Path(__file__).resolve().parents[2]
READING = {"$ref": "#/components/schemas/RawReading"}
EXAMPLE = {
    "device_id": "dev-001",
    "timestamp": "2026-11-27T05:00:00Z",
    "temperature": 21.5,
    "humidity": 40.2,
    "pressure": 1013.2,
    "location": {"latitude": 52.52, "longitude": 13.40},
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    app = ingest_app(cast(Handover, None), IngestSettings())
    return health_app(Readiness("ingest"), app).openapi()


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_the_readings_body_is_one_reading_an_array_or_ndjson(document):
    body = document["paths"]["/v1/readings"]["post"]["requestBody"]
    assert body["required"] is True
    content = body["content"]
    assert set(content) == {"application/json", "application/x-ndjson"}
    assert content["application/json"]["schema"] == {
        "oneOf": [READING, {"type": "array", "items": READING}]
    }
    assert content["application/x-ndjson"]["schema"] == {"type": "array", "items": READING}


def test_the_reading_in_the_document_is_the_model_s_schema(document):
    schemas = document["components"]["schemas"]
    expected = RawReading.model_json_schema(ref_template="#/components/schemas/{model}")
    expected.pop("$defs")
    assert schemas["RawReading"] == expected
    assert schemas["RawReading"]["required"] == ["device_id", "timestamp"]
    assert "Location" in schemas


def test_every_reference_in_the_document_resolves(document):
    names = set(document["components"]["schemas"])
    found = refs(document)
    assert READING["$ref"] in found
    assert {r.removeprefix("#/components/schemas/") for r in found} <= names


def test_the_readings_answers_are_documented_with_their_models(document):
    responses = document["paths"]["/v1/readings"]["post"]["responses"]

    def schema_of(status: str) -> dict[str, Any]:
        return responses[status]["content"]["application/json"]["schema"]

    assert set(responses) == {"202", "400", "413", "503"}
    assert schema_of("202") == schema_of("400") == {"$ref": "#/components/schemas/ReadingsAnswer"}
    assert schema_of("413") == schema_of("503") == {"$ref": "#/components/schemas/ErrorAnswer"}
    assert responses["503"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
    answer = document["components"]["schemas"]["ReadingsAnswer"]
    assert answer["required"] == ["accepted", "rejected"]
    reject = document["components"]["schemas"]["Reject"]
    assert reject["required"] == ["index", "error_type", "reasons"]
    assert set(reject["properties"]["error_type"]["enum"]) == {
        "PayloadTooLarge",
        "NotJson",
        "NotAnObject",
        "MissingDeviceId",
    }


def test_the_document_carries_the_project_s_version(document):
    assert document["info"]["version"] == __version__


def test_health_readiness_and_metrics_are_in_the_document(document):
    paths = document["paths"]
    assert set(paths) == {"/v1/readings", "/healthz", "/readyz", "/metrics"}
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}


def test_docs_reading_schema_json_is_current():
    assert (ROOT / "docs/reading.schema.json").read_text() == cli.reading_schema(), (
        "docs/reading.schema.json is stale: "
        "python -m libs.common.cli --reading-schema > docs/reading.schema.json"
    )


def test_the_published_reading_schema_holds_the_documented_reading_and_refuses_a_nameless_one():
    schema = reading_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert schema["examples"] == [EXAMPLE]
    validator.validate(EXAMPLE)
    validator.validate({"device_id": "d", "timestamp": 1764219600, "co2": 415})
    for nameless in ({"timestamp": 1}, {"device_id": "", "timestamp": 1}):
        assert not validator.is_valid(nameless)
    assert not validator.is_valid({"device_id": "   ", "timestamp": 1})
    assert json.loads(cli.reading_schema()) == schema


def test_the_https_document_asks_for_a_bearer_token_and_answers_401_and_403():
    verifier = TokenVerifier(
        issuer="http://127.0.0.1:8180/realms/sensor-pipeline",
        audience="ingest-api",
        required_scope="readings:write",
        jwks_url="http://127.0.0.1:8180/realms/sensor-pipeline/protocol/openid-connect/certs",
    )
    secure = readings_app(cast(Handover, None), IngestSettings(), verifier).openapi()
    schemes = secure["components"]["securitySchemes"]
    assert schemes == {
        "HTTPBearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": schemes["HTTPBearer"]["description"],
        }
    }
    operation = secure["paths"]["/v1/readings"]["post"]
    assert operation["security"] == [{"HTTPBearer": []}]
    for status in ("401", "403"):
        assert "WWW-Authenticate" in operation["responses"][status]["headers"], status
    rejects = secure["components"]["schemas"]["TokenReject"]["properties"]["error_type"]["enum"]
    assert "DeviceNotAllowed" in rejects
    assert set(secure["paths"]) == {"/v1/readings"}, "the probes stay on the plain port"


def test_the_plain_document_asks_for_no_token(document):
    assert "securitySchemes" not in document.get("components", {})
    assert "security" not in document["paths"]["/v1/readings"]["post"]
