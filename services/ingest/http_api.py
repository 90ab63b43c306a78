"""POST /v1/readings: one JSON reading, a JSON array of them, or NDJSON.

Two apps serve it: `readings_app` over HTTPS with an OAuth 2.0 bearer token (scope
readings:write; 401/403 with WWW-Authenticate as RFC 6750 words them), and, while
HTTP_PLAIN_READINGS is on, `ingest_app` on the plain service port beside the probes, without one.
A token bound to a device (claim device_id) may send only that device's readings: each other
one is a DeviceNotAllowed reject, in the answer and in the DLQ.

Answers 202 only after Kafka acknowledged every accepted reading (and every reject reached the
DLQ); 503 with Retry-After when Kafka is away or too many requests are in flight, so the device
sends again instead of the reading vanishing; 413 for a body over `max_body_bytes`. A reading
over `max_record_bytes` is one reject of the 202 answer, as over MQTT.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from libs.common import metrics
from libs.common.audit import AuditWriter
from libs.common.auth import Principal, TokenVerifier
from libs.common.errors import (
    BodyTooLarge,
    BrokerUnavailable,
    Forbidden,
    KeysUnavailable,
    Unauthenticated,
)
from libs.common.health import json_response
from libs.common.models import RawReading, Source, Stage
from libs.common.version import __version__
from services.ingest import audit
from services.ingest.handover import Handover
from services.ingest.intake import split_body
from services.ingest.settings import IngestSettings

_STAGE = Stage.INGEST.value
# Seconds a device is told to wait: Kafka outages last seconds; a burst of requests less.
RETRY_AFTER_KAFKA_S = 5
RETRY_AFTER_BUSY_S = 1
REALM = "sensor-pipeline"
SCOPE = "readings:write"
# RFC 6750's error_description: printable ASCII without the double quote and the backslash.
_NOT_IN_DESCRIPTION = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")
# A refusal's id, in its answer and its audit row: the client's X-Request-ID when it sent a
# usable one, else a new one.
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"declared body of {declared} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body past {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def get_handover(request: Request) -> Handover:
    handover: Handover = request.app.state.handover
    return handover


def get_settings(request: Request) -> IngestSettings:
    settings: IngestSettings = request.app.state.settings
    return settings


_BEARER = HTTPBearer(
    bearerFormat="JWT",
    description=f"An OAuth 2.0 access token of the identity provider with scope {SCOPE} "
    "(`python -m tools.credentials token --scope readings:write`).",
    auto_error=False,
)


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> Principal:
    """The token's principal; Unauthenticated or Forbidden (answered by `_refused`)."""
    if credentials is None:
        raise Unauthenticated("no bearer token", missing=True)
    verifier: TokenVerifier = request.app.state.verifier
    return await verifier.verify_token(credentials.credentials)


HandoverDep = Annotated[Handover, Depends(get_handover)]
SettingsDep = Annotated[IngestSettings, Depends(get_settings)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
plain_router = APIRouter()
router = APIRouter()


# The answers' models, for the OpenAPI document: the handler writes the same fields as plain
# dicts (orjson, no model instance per request).
class Reject(BaseModel):
    """One reading of the body that failed ingest's format checks; it went to the DLQ."""

    index: int = Field(
        ge=0, description="Its place in the body: array index, or NDJSON line (non-blank ones)."
    )
    # The RecordErrors that services.ingest.intake raises.
    error_type: Literal["PayloadTooLarge", "NotJson", "NotAnObject", "MissingDeviceId"]
    reasons: list[str]


class ReadingsAnswer(BaseModel):
    accepted: int = Field(ge=0, description="Readings Kafka acknowledged.")
    rejected: list[Reject]


class TokenReject(Reject):
    """A reject of the HTTPS API, where a device-bound token adds one reason: a reading of
    another device (DeviceNotAllowed)."""

    error_type: Literal[  # type: ignore[assignment]
        "PayloadTooLarge", "NotJson", "NotAnObject", "MissingDeviceId", "DeviceNotAllowed"
    ]


class TokenReadingsAnswer(BaseModel):
    accepted: int = Field(ge=0, description="Readings Kafka acknowledged.")
    rejected: list[TokenReject]


class ErrorAnswer(BaseModel):
    error: str


_READING = {"$ref": "#/components/schemas/RawReading"}
# POST /v1/readings reads its body itself (size limits, NDJSON), so FastAPI knows nothing of it:
# the request is described here, the reading's schema comes from RawReading (_openapi).
_READINGS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "One reading, a JSON array of readings, or NDJSON (one reading a line); ingest "
            "tells them apart by the body, not by Content-Type. Ingest checks only that each "
            "reading is a JSON object with a device_id; the rest of the schema is validate's, "
            "and a reading that breaks it goes to the DLQ, not back to you."
        ),
        "content": {
            "application/json": {
                "schema": {"oneOf": [_READING, {"type": "array", "items": _READING}]}
            },
            # No schema language describes a stream of lines: the readings as an array, each
            # item one line of the body.
            "application/x-ndjson": {"schema": {"type": "array", "items": _READING}},
        },
    }
}
_READINGS_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "model": ReadingsAnswer,
        "description": "Kafka has every accepted reading; each reject is in the DLQ (an "
        "empty array accepts nothing, and is a 202 too).",
    },
    400: {
        "model": ReadingsAnswer,
        "description": "Not one usable reading: every record was rejected, or the body is not "
        "JSON (an empty body neither). The rejects are in the DLQ.",
    },
    413: {
        "model": ErrorAnswer,
        "description": "The body is over MAX_BODY_BYTES; nothing was accepted. A reading over "
        "MAX_RECORD_BYTES is a PayloadTooLarge reject instead.",
    },
    503: {
        "model": ErrorAnswer,
        "description": "Kafka is unavailable, or too many requests are in flight; nothing was "
        "accepted: send again after Retry-After.",
        "headers": {
            "Retry-After": {
                "description": f"Seconds to wait: {RETRY_AFTER_KAFKA_S} when Kafka is away, "
                f"{RETRY_AFTER_BUSY_S} when busy.",
                "schema": {"type": "integer", "minimum": 0},
            }
        },
    },
}


_CHALLENGE = {
    "WWW-Authenticate": {
        "description": f'`Bearer realm="{REALM}"`, with `error` and `error_description` '
        "(RFC 6750) when a token was sent.",
        "schema": {"type": "string"},
    }
}
_REFUSAL_HEADERS = _CHALLENGE | {
    "X-Request-ID": {
        "description": "The refusal's id in the audit log: the request's X-Request-ID when it "
        "sent one (1 to 128 of A-Z a-z 0-9 . _ : -), else a new one.",
        "schema": {"type": "string"},
    }
}
_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorAnswer,
        "description": "No bearer token, or one that is malformed, forged, expired, or of "
        "another issuer or audience; nothing was read.",
        "headers": _REFUSAL_HEADERS,
    },
    403: {
        "model": ErrorAnswer,
        "description": f"A valid token without scope {SCOPE}; nothing was read.",
        "headers": _REFUSAL_HEADERS,
    },
}
_SECURE_RESPONSES = _READINGS_RESPONSES | _AUTH_RESPONSES
for _status in (202, 400):
    _SECURE_RESPONSES[_status] = _READINGS_RESPONSES[_status] | {"model": TokenReadingsAnswer}
_SECURE_RESPONSES[503] = _READINGS_RESPONSES[503] | {
    "description": "Kafka or the identity provider's signing keys are unavailable, or too "
    "many requests are in flight; nothing was accepted: send again after Retry-After."
}


@router.post(
    "/v1/readings",
    status_code=202,
    summary="Send readings",
    response_class=Response,
    responses=_SECURE_RESPONSES,
    openapi_extra=_READINGS_BODY,
)
async def post_readings(
    request: Request, handover: HandoverDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    return await _take_readings(request, handover, settings, principal.device_id)


def request_id(request: Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def _audit(request: Request) -> AuditWriter | None:
    writer: AuditWriter | None = getattr(request.app.state, "audit", None)
    return writer


@plain_router.post(
    "/v1/readings",
    status_code=202,
    summary="Send readings (development: plaintext, no token)",
    response_class=Response,
    responses=_READINGS_RESPONSES,
    openapi_extra=_READINGS_BODY,
)
async def post_plain_readings(
    request: Request, handover: HandoverDep, settings: SettingsDep
) -> Response:
    return await _take_readings(request, handover, settings, None)


async def _take_readings(
    request: Request, handover: Handover, settings: IngestSettings, device_id: str | None
) -> Response:
    max_body_bytes = settings.max_body_bytes
    try:
        body = await _read_body(request, max_body_bytes)
    except BodyTooLarge:
        metrics.REQUESTS.labels(_STAGE, "http", "too_large").inc()
        return json_response(
            {"error": f"body larger than {max_body_bytes} bytes; send smaller batches"},
            status_code=413,
        )
    accepted, rejected = split_body(body, settings.max_record_bytes, device_id)
    metrics.MESSAGES_IN.labels(_STAGE).inc(len(accepted) + len(rejected))
    writer = _audit(request)
    if device_id is not None and rejected and writer is not None:
        for event in audit.refused_devices(request, device_id, rejected, request_id(request)):
            writer.record(event)
    try:
        await handover.send(accepted, rejected, Source.HTTP)
    except BrokerUnavailable:
        metrics.REQUESTS.labels(_STAGE, "http", "unavailable").inc()
        return json_response(
            {"error": "Kafka is unavailable; nothing was accepted, send again"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_KAFKA_S)},
        )
    metrics.REQUESTS.labels(_STAGE, "http", "accepted" if accepted else "rejected").inc()
    return json_response(
        {
            "accepted": len(accepted),
            "rejected": [
                {"index": r.index, "error_type": r.error.error_type, "reasons": r.error.reasons}
                for r in rejected
            ],
        },
        # Nothing usable in the body at all is the client's error; a partial batch is not.
        status_code=202 if accepted or not rejected else 400,
    )


class ConcurrencyLimit:
    """Past `limit` requests to the readings API in flight, answer 503 with Retry-After at once:
    a device sends again later instead of the service holding bodies without bound. Health and
    metrics stay outside the limit, so probes are answered under a burst too.

    In the app rather than uvicorn's `limit_concurrency`, whose 503 carries no Retry-After.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            metrics.REQUESTS.labels(_STAGE, "http", "busy").inc()
            busy = json_response(
                {"error": f"more than {self.limit} requests in flight; send again later"},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_BUSY_S)},
            )
            await busy(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def ingest_app(handover: Handover, settings: IngestSettings) -> FastAPI:
    """The plain service port's app: the probes are added to it (health_app), and the
    unauthenticated readings API while HTTP_PLAIN_READINGS is on."""
    app = FastAPI(
        title="sensor pipeline: ingest",
        version=__version__,
        description="Probes and metrics; while HTTP_PLAIN_READINGS is on, readings over plain "
        "HTTP without a token, for development (docs/api.md).",
        docs_url="/docs",
    )
    app.state.handover = handover
    app.state.settings = settings
    if settings.http_plain_readings:
        app.include_router(plain_router)
        app.add_middleware(ConcurrencyLimit, limit=settings.http_max_concurrency)
    _openapi(app)
    return app


def readings_app(
    handover: Handover,
    settings: IngestSettings,
    verifier: TokenVerifier,
    audit_writer: AuditWriter | None = None,
) -> FastAPI:
    """The HTTPS port's app: readings with a bearer token, checked by `verifier`; each refusal
    recorded by `audit_writer` (None: AUDIT_ENABLED off)."""
    app = FastAPI(
        title="sensor pipeline: ingest readings API",
        version=__version__,
        description=f"Readings over HTTPS with an OAuth 2.0 bearer token (scope {SCOPE}), "
        "handed to Kafka (docs/api.md).",
        docs_url="/docs",
    )
    app.state.handover = handover
    app.state.settings = settings
    app.state.verifier = verifier
    app.state.audit = audit_writer
    app.include_router(router)
    app.add_exception_handler(Unauthenticated, _refused)
    app.add_exception_handler(Forbidden, _refused)
    app.add_exception_handler(KeysUnavailable, _keys_unavailable)
    app.add_middleware(ConcurrencyLimit, limit=settings.http_max_concurrency)
    _openapi(app)
    return app


def challenge(error: Unauthenticated | Forbidden) -> str:
    """The WWW-Authenticate value of a refusal (RFC 6750 section 3): no error code when no
    token was sent at all."""
    parts = [f'Bearer realm="{REALM}"']
    if isinstance(error, Forbidden):
        parts.append('error="insufficient_scope"')
    elif not error.missing:
        parts.append('error="invalid_token"')
    if not (isinstance(error, Unauthenticated) and error.missing):
        description = _NOT_IN_DESCRIPTION.sub("?", error.reason)
        parts.append(f'error_description="{description}"')
    if isinstance(error, Forbidden):
        parts.append(f'scope="{error.scope}"')
    return ", ".join(parts)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Unauthenticated | Forbidden)
    forbidden = isinstance(exc, Forbidden)
    metrics.REQUESTS.labels(_STAGE, "http", "forbidden" if forbidden else "unauthenticated").inc()
    rid = request_id(request)
    writer = _audit(request)
    if writer is not None:
        writer.record(audit.refused_request(request, exc, rid))
    return json_response(
        {"error": exc.reason},
        status_code=403 if forbidden else 401,
        headers={"WWW-Authenticate": challenge(exc), REQUEST_ID_HEADER: rid},
    )


async def _keys_unavailable(request: Request, exc: Exception) -> Response:
    metrics.REQUESTS.labels(_STAGE, "http", "unavailable").inc()
    return json_response(
        {"error": "the identity provider's signing keys are unavailable; send again"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_KAFKA_S)},
    )


def reading_components() -> dict[str, Any]:
    """RawReading's JSON Schema and the models it refers to, as OpenAPI components."""
    schema = RawReading.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs", {}), "RawReading": schema}


def _openapi(app: FastAPI) -> None:
    """The app's document plus the reading's schema, which no route declares."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            document.setdefault("components", {}).setdefault("schemas", {}).update(
                reading_components()
            )
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
