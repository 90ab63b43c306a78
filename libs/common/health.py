"""/healthz, /readyz and /metrics for every service, and the uvicorn server that serves them."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import orjson
import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from libs.common import metrics
from libs.common.version import __version__


def json_response(
    content: object, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


class Readiness:
    """Named conditions a service needs (kafka, database, mqtt...); ready when all hold."""

    def __init__(self, stage: str, *names: str) -> None:
        self.stage = stage
        metrics.initialise(stage)
        self._checks: dict[str, bool] = dict.fromkeys(names, False)
        self._publish()

    def set(self, name: str, ok: bool) -> None:
        if self._checks.get(name) is not ok:
            self._checks[name] = ok
            self._publish()

    @property
    def ready(self) -> bool:
        return all(self._checks.values())

    def snapshot(self) -> dict[str, bool]:
        return dict(self._checks)

    def _publish(self) -> None:
        metrics.READY.labels(self.stage).set(1 if self.ready else 0)


class Alive(BaseModel):
    status: Literal["alive"]
    stage: str


class Ready(BaseModel):
    ready: bool
    checks: dict[str, bool] = Field(
        description="Each condition the service needs, and if it holds."
    )


_PROMETHEUS_TEXT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


def health_app(readiness: Readiness, app: FastAPI | None = None) -> FastAPI:
    """Add the three operational routes to `app` (a new one when None)."""
    app = app or FastAPI(
        title=f"sensor pipeline: {readiness.stage}", version=__version__, docs_url=None
    )

    @app.get("/healthz", response_class=Response, responses={200: {"model": Alive}})
    async def healthz() -> Response:
        """Alive: the process answers."""
        return json_response({"status": "alive", "stage": readiness.stage})

    @app.get(
        "/readyz",
        response_class=Response,
        responses={
            200: {"model": Ready, "description": "Every condition holds."},
            503: {"model": Ready, "description": "Not ready: see which check is false."},
        },
    )
    async def readyz() -> Response:
        """Ready: connected to everything the service needs."""
        checks = readiness.snapshot()
        return json_response(
            {"ready": readiness.ready, "checks": checks},
            status_code=200 if readiness.ready else 503,
        )

    @app.get("/metrics", response_class=Response, responses=_PROMETHEUS_TEXT)
    async def prometheus_metrics() -> Response:
        """The service's metrics (libs/common/metrics.py)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves SIGTERM/SIGINT to the service, which tells it when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_http(
    app: FastAPI, host: str, port: int, tls: ssl.SSLContext | None = None
) -> AsyncIterator[uvicorn.Server]:
    """Run uvicorn inside the current event loop; signals stay with the service, not uvicorn.
    With `tls`, HTTPS with that server context (libs.common.tls.server_context)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        # uvicorn's own logging config would give its loggers handlers of their own that do not
        # propagate: its lines would bypass the JSON rendering of libs.common.logs.
        log_config=None,
        access_log=False,
        lifespan="off",
        ssl_context_factory=None if tls is None else (lambda _config, _default: tls),
    )
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(), name=f"http:{port}")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"HTTP server on {host}:{port} exited at start-up")
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        await task
