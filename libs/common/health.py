"""/healthz, /readyz and /metrics for every service, and the uvicorn server that serves them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import orjson
import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from libs.common import metrics


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


def health_app(readiness: Readiness, app: FastAPI | None = None) -> FastAPI:
    """Add the three operational routes to `app` (a new one when None)."""
    app = app or FastAPI(title=f"sensor pipeline: {readiness.stage}", docs_url=None)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return json_response({"status": "alive", "stage": readiness.stage})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        checks = readiness.snapshot()
        return json_response(
            {"ready": readiness.ready, "checks": checks},
            status_code=200 if readiness.ready else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves SIGTERM/SIGINT to the service, which tells it when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_http(app: FastAPI, host: str, port: int) -> AsyncIterator[uvicorn.Server]:
    """Run uvicorn inside the current event loop; signals stay with the service, not uvicorn."""
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
