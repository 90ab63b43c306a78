"""POST /v1/readings: one JSON reading, a JSON array of them, or NDJSON.

Answers 202 only after Kafka acknowledged every accepted reading (and every reject reached the
DLQ); 503 when Kafka is away, so the device sends again instead of the reading vanishing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response

from libs.common import metrics
from libs.common.errors import BrokerUnavailable
from libs.common.health import json_response
from libs.common.models import Source, Stage
from services.ingest.handover import Handover
from services.ingest.intake import split_body

_STAGE = Stage.INGEST.value


class BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def get_handover(request: Request) -> Handover:
    handover: Handover = request.app.state.handover
    return handover


def get_body_limit(request: Request) -> int:
    limit: int = request.app.state.max_body_bytes
    return limit


HandoverDep = Annotated[Handover, Depends(get_handover)]
BodyLimitDep = Annotated[int, Depends(get_body_limit)]
router = APIRouter()


@router.post("/v1/readings", status_code=202)
async def post_readings(
    request: Request, handover: HandoverDep, max_body_bytes: BodyLimitDep
) -> Response:
    try:
        body = await _read_body(request, max_body_bytes)
    except BodyTooLarge:
        metrics.REQUESTS.labels(_STAGE, "http", "too_large").inc()
        return json_response(
            {"error": f"body larger than {max_body_bytes} bytes; send smaller batches"},
            status_code=413,
        )
    accepted, rejected = split_body(body)
    metrics.MESSAGES_IN.labels(_STAGE).inc(len(accepted) + len(rejected))
    try:
        await handover.send(accepted, rejected, Source.HTTP)
    except BrokerUnavailable:
        metrics.REQUESTS.labels(_STAGE, "http", "unavailable").inc()
        return json_response(
            {"error": "Kafka is unavailable; nothing was accepted, send again"},
            status_code=503,
            headers={"Retry-After": "5"},
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


def ingest_app(handover: Handover, max_body_bytes: int) -> FastAPI:
    app = FastAPI(title="sensor pipeline: ingest", docs_url="/docs")
    app.state.handover = handover
    app.state.max_body_bytes = max_body_bytes
    app.include_router(router)
    return app
